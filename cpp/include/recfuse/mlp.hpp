// A fused MLP scorer on the CPU (the contract of recfuse.reference.mlp_*).
//
// A model is a stack of dense layers h_{l+1} = act(W_l h_l + b_l), W_l (out x in) row-major
// like torch.nn.Linear. The weights are packed once, at construction, into panels of
// kMlpPanel output columns (float32, and bfloat16 pairs along the input dimension for the
// bfloat16 kernels). Candidates are scored in blocks of kMlpBlockRows rows that stay in
// L1/L2: each block's input rows are gathered by id into a small per-thread buffer, then
// every layer runs on the block with bias and activation applied in the GEMM epilogue.
//
// The first layer is split by input blocks. For candidate c of user u with item i,
//   W1·[u | uf | i | if | cf] + b1 = (W1u·u + W1uf·uf + b1)      once per user and call
//                                  + (W1i·i + W1if·if)           per item: gathered in the
//                                     kernel, or precomputed once (MlpItemPart) and added
//                                  + W1cf·cf                     per candidate
// so only the columns after the user blocks (after the item blocks, when an item part is
// given) are multiplied per candidate.
//
// Under bfloat16 the layers between the first and the last run on a bfloat16 kernel
// (weights packed as bfloat16 pairs, activations rounded, float32 accumulation); the first
// layer and the last stay float32 (rounding raw features costs the most accuracy for the
// least work, and the last layer is a dot product).
//
// Under int8 the same middle layers run on integers: each weight row (output column j) is
// quantized symmetrically once, s_j = max_k |W[j][k]| / 127, q = rint(W[j][k] · 127 / max),
// and each candidate's input row of such a layer per call, the same way (a row holding NaN
// or inf gets scale NaN, so its score is NaN); the products are summed exactly in int32
// and the layer's output is float(Σ q_x q_w) · (s_x · s_j) + bias, activated, in float32
// (recfuse.reference.quantize_int8_rows states the rule). The AVX2 kernel multiplies the
// int8 values as 16-bit pairs (vpmaddwd: 16 multiply-adds an instruction, an FMA does 8; a
// Zen 3 issues one a cycle against two FMAs, so there int8 runs at float32's speed); other
// CPUs run a scalar kernel.
//
// rank under bfloat16 or int8 scores every candidate in a rougher pass (on the AVX512-BF16
// kernel the first layer's per-candidate columns in bfloat16 too), then rescores a band of
// each user's best candidates exactly in float32 and ranks those by their float32 scores
// (recfuse.reference.mlp_rank_rescored, with the rough pass's scores): the band starts at
// max(2k, 16) candidates (repeated ids included) and doubles until the float32 k-th score
// beats the band's lowest rough score by more than kMlpRescoreMargin times the largest
// rough-pass error seen in the band (or the band holds every candidate).
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace recfuse {

enum class MlpActivation : int { Identity = 0, Relu = 1, Gelu = 2, Sigmoid = 3, Tanh = 4 };
enum class MlpPrecision : int { Float32 = 0, Bfloat16 = 1, Int8 = 2 };
// Which kernels compute the layers. Float32 and Int8 use the runtime SIMD level
// (simd_level(): the int8 kernel is AVX2's from that level up, scalar below).
enum class MlpKernel : int { Float32 = 0, Avx512Bf16 = 1, Amx = 2, Int8 = 3 };

constexpr int kMlpPanel = 32;       // output columns per packed weight panel
constexpr int kMlpBlockRows = 64;   // candidates per block (a multiple of 32: AMX tiles)
constexpr int kMlpRescoreMinBand = 16;    // bfloat16/int8 rank: the first band, at least
constexpr double kMlpRescoreMargin = 4.0; // bfloat16/int8 rank: safety factor on the seen error

// The activation of a name (inline: the CUDA module, which does not link the CPU library,
// parses layers too).
inline MlpActivation parse_mlp_activation(const std::string& name) {
  if (name == "relu") return MlpActivation::Relu;
  if (name == "gelu") return MlpActivation::Gelu;
  if (name == "sigmoid") return MlpActivation::Sigmoid;
  if (name == "tanh") return MlpActivation::Tanh;
  if (name == "identity") return MlpActivation::Identity;
  throw std::invalid_argument(
      "activation must be one of relu, gelu, sigmoid, tanh, identity; got '" + name + "'");
}
// Whether none of x[0..n) is NaN or inf: one pass at the SIMD level, for the per-call check
// of a scorer's float inputs at the Python boundary (NumPy's isfinite(x).all() writes and
// reads a temporary: 4.7 µs of CPU time for 1,000 x 32 candidate features, against 2.3 µs
// here, call included).
bool mlp_all_finite(const float* x, int64_t n);
const char* mlp_kernel_name(MlpKernel kernel);
MlpKernel parse_mlp_kernel(const std::string& name);
// Whether this CPU and build can run `kernel`; `why` gets the reason when not.
bool mlp_kernel_supported(MlpKernel kernel, std::string* why = nullptr);

struct MlpLayer {
  const float* weight;  // out x in, row-major
  const float* bias;    // out, or null
  int out;
  int in;
  MlpActivation activation;
};

// A block of input columns: rows x width floats, row-major (the row count is implied).
struct MlpBlock {
  const float* data;
  int width;
};

// Candidates of a call. The input row of candidate c (of user u, item id ids[c]) is the
// concatenation, in this order, of the user blocks' row u, the item blocks' row ids[c] and
// the candidate block's row c; the widths must add up to the model's input width.
struct MlpCandidates {
  int64_t users = 0;
  const int64_t* indptr = nullptr;  // users + 1 offsets; user u owns rows indptr[u]..
  const int64_t* ids = nullptr;     // indptr[users] item ids in [0, items); null: no item blocks
  int64_t items = 0;
  std::vector<MlpBlock> user_blocks;
  std::vector<MlpBlock> item_blocks;  // data may be null when item_part covers them
  MlpBlock candidate_block{nullptr, 0};
  // items x part_width() floats: the precomputed W1i·i + W1if·if (MlpModel::item_part).
  const float* item_part = nullptr;
};

// Per user, the k best distinct candidate ids by scores computed elsewhere: MlpModel::rank's
// float32 rule (score descending, ties by smaller id, each id once at its best score, NaN
// and -inf dropped), recfuse.reference.mlp_rank_scores on float32. For the backends that
// score on a device and rank on the host. ids and out are users x k, padded with -1 / -inf.
void mlp_rank_scores(int64_t users, const int64_t* indptr, const int64_t* candidate_ids,
                     const float* scores, int k, int num_threads, int64_t* ids, float* out);

class MlpModel {
 public:
  // The last layer must have one output (the score). Throws std::invalid_argument for
  // layers that do not chain or a kernel this CPU cannot run.
  MlpModel(const std::vector<MlpLayer>& layers, MlpPrecision precision, MlpKernel kernel);

  int input_width() const { return layers_.front().in; }
  int layer_count() const { return static_cast<int>(layers_.size()); }
  MlpPrecision precision() const { return precision_; }
  MlpKernel kernel() const { return kernel_; }
  // Row width of an item part: the first layer's output width padded to kMlpPanel.
  int part_width() const { return layers_.front().panels * kMlpPanel; }

  // out[r]: the score of each of the n rows of X (n x input_width()).
  void score(const float* X, int64_t n, int num_threads, float* out) const;
  // out[c]: the score of every candidate. rough (bfloat16 only): the scores of rank's first
  // pass instead, which also runs the first layer's per-candidate columns in bfloat16.
  void score_candidates(const MlpCandidates& candidates, int num_threads, float* out,
                        bool rough = false) const;
  // Per user, the k best candidates (score descending, ties by smaller id, each id once at
  // its best score, NaN and -inf dropped), padded with -1 / -inf: ids and scores are
  // users x k. Under bfloat16 and int8 the candidates are chosen and ordered by float32 scores of a
  // rescored band (see above), and the scores returned are float32's.
  void rank(const MlpCandidates& candidates, int k, int num_threads, int64_t* ids,
            float* scores) const;
  // out (items x part_width()): the first layer's item contribution, for item blocks that
  // start at input column `column`.
  void item_part(const std::vector<MlpBlock>& item_blocks, int64_t items, int column,
                 int num_threads, float* out) const;

 private:
  struct Packed {
    int in = 0, out = 0, panels = 0;
    MlpActivation activation = MlpActivation::Identity;
    std::vector<float> bias;        // panels * kMlpPanel, zero padded
    std::vector<float> f32;         // panel p, row k, column j: (p * in + k) * kMlpPanel + j
    int bf16_pairs = 0;             // pair rows per bfloat16 panel (zero padded)
    std::vector<uint16_t> bf16;     // ((p * bf16_pairs + k / 2) * kMlpPanel + j) * 2 + k % 2
    int int8_pairs = 0;             // pair rows per int8 panel ((in + 1) / 2)
    std::vector<int16_t> int8;      // int8 values as int16, laid out as bf16
    std::vector<float> int8_scale;  // per output column (panels * kMlpPanel; 0 beyond out)
    std::vector<float> first_t;     // layer 0 only: Wᵀ (in x panels * kMlpPanel) for user parts
    std::vector<float> dot;         // a final layer with one output: its weights
  };
  struct CallPlan;  // what the blocks of one call share (mlp.cpp)
  struct Scratch;   // one thread's block buffers (mlp.cpp)
  void check(const MlpCandidates& candidates) const;
  CallPlan plan(const MlpCandidates& candidates, int threads, bool rough) const;
  // Scores the rows s.rows[0..count) (candidate positions, of users s.users[..]) into out.
  // reduced: the middle layers in the model's precision (bfloat16 or int8), else float32.
  void run_block(const MlpCandidates& c, const CallPlan& plan, Scratch& s, int count,
                 bool reduced, float* out) const;
  // Called once per user with candidates, by the thread that scored its last one.
  using UserDone = std::function<void(int64_t user, Scratch& scratch)>;
  // out[i]: the score of candidate i, every candidate, blocks spread over threads.
  void score_all(const MlpCandidates& c, const CallPlan& plan, int threads, bool reduced,
                 float* out, const UserDone& user_done = nullptr) const;
  // Float32 scores of candidates rows[0..count) of user u (the thread's own buffers when s
  // is null).
  void rescore_rows(const MlpCandidates& c, const CallPlan& plan, int64_t u, const int64_t* rows,
                    int64_t count, float* out, Scratch* s = nullptr) const;
  // rank's work for user u once all[] holds its scores: ids and scores are its k slots.
  void rank_user(const MlpCandidates& c, const CallPlan& plan, int k, const float* all,
                 int64_t u, Scratch& s, int64_t* ids, float* scores) const;

  std::vector<Packed> layers_;
  MlpPrecision precision_;
  MlpKernel kernel_;
  int max_padded_width_ = 0;
};

}  // namespace recfuse

// A fused MLP scorer on a CUDA device: the contract of recfuse.reference.mlp_* and of the CPU
// class recfuse::MlpModel, whose layer, block and candidate structs (recfuse/mlp.hpp) it takes.
// A plain C++ header (no CUDA types) so that the pybind11 module compiles with the host
// compiler; everything CUDA is in mlp.cu.
//
// As on the CPU the first layer is split by input blocks: per call, b1 + W1u·[u | uf] once per
// user (the user part); W1i·[i | if] gathered per candidate, or precomputed once per item
// (item_part(), kept on the device); only the remaining "x" columns are multiplied per
// candidate. Under bfloat16 the layers between the first and the last run on tensor cores
// (weights and inputs rounded to bfloat16, float32 accumulation); the first and the last
// stay float32 (FMA).
//
// Two paths for the layers (MlpPath; Auto picks per call):
//   fused   one kernel runs the whole MLP for 32 candidates per block: the candidates' x
//           columns are gathered by id into shared memory, every layer's activations stay in
//           shared memory, the last layer writes the score. Needs the x columns and every
//           hidden width <= kMlpFusedMaxWidth, and the shared memory for them on the device.
//   tiled   any widths: one tiled GEMM kernel per layer (64 x 64 output tiles, inputs staged
//           16 columns at a time, the gather inside the first), activations in device memory.
// rank() scores on the device and keeps each user's k best there (the contract of
// recfuse::MlpModel::rank, except that a bfloat16 model ranks its bfloat16 scores as they are:
// the float32 rescoring of the band around the k-th score is done by the caller,
// recfuse._mlp.cuda, which therefore never calls rank on a bfloat16 model). A user with at
// most kMlpRankSharedMax candidates is sorted by
// one block in shared memory (topk_select.cuh's bitonic sort), a longer list by CUB's
// segmented radix sort; only the k results per user come back to the host.
//
// Memory: calls run in chunks of candidates and users whose scratch (inputs, user parts,
// scores, activations, rank buffers) stays within kMlpScratchBudgetBytes of device memory
// and kMlpStagingBudgetBytes of pinned host memory per workspace, except a single user's list
// in rank (it is ranked whole) and a raw (unprepared) item table, which is uploaded whole
// for each call. At most kMlpMaxWorkspaces calls of one model run at once (others wait).
//
// Host arrays in and out; every argument is checked on the host before any CUDA call. Bad
// arguments throw std::invalid_argument (Python ValueError), CUDA failures
// std::runtime_error with the CUDA error's name and text. Methods may be called from several
// threads at once; each call synchronises before it returns.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "recfuse/mlp.hpp"

namespace recfuse {
namespace cuda {

constexpr int kMlpFusedMaxWidth = 256;  // widest x block / hidden layer of the fused path
constexpr int kMlpFusedRows = 32;       // candidates per block of the fused kernel
constexpr int kMlpRankSharedMax = 8192; // longer candidate lists are ranked by a segmented sort
constexpr int64_t kMlpScratchBudgetBytes = int64_t(256) << 20;
constexpr int64_t kMlpStagingBudgetBytes = int64_t(64) << 20;
constexpr int kMlpMaxWorkspaces = 4;

enum class MlpPath : int { Auto = 0, Fused = 1, Tiled = 2 };

const char* mlp_path_name(MlpPath path);
MlpPath parse_mlp_path(const std::string& name);  // "auto", "fused" or "tiled"

// A part of a call: users [user_begin, user_end) and candidates [cand_begin, cand_end).
struct MlpChunk {
  int64_t user_begin, user_end, cand_begin, cand_end;
};

// Splits the candidates of indptr (users + 1 offsets) into chunks of at most max_candidates
// candidates and max_users users (both >= 1), in order. whole_users = false (scoring): the
// chunks cover every candidate once; a chunk's users are those from the owner of its first
// candidate to the owner of its last (users without candidates in between included).
// whole_users = true (rank): the chunks cover every user once, each with all its candidates;
// a user with more than max_candidates candidates forms a chunk of its own. Host only.
std::vector<MlpChunk> mlp_plan_chunks(const int64_t* indptr, int64_t users,
                                      int64_t max_candidates, int64_t max_users,
                                      bool whole_users);

// For tests: caps on the candidates and users of a chunk (0: none), process-wide, so that
// small calls run in several chunks (and a user's list is scored in parts).
void set_mlp_chunk_limits(int64_t max_candidates, int64_t max_users) noexcept;

// Dynamic shared memory of the fused kernel for x_width multiplied columns per candidate and
// hidden layers padded to width_max (a multiple of 16). Host only.
size_t mlp_fused_shared_bytes(int x_width, int width_max);

class MlpModelCuda;

// A first-layer item part (items x part_width floats) resident on the model's device: made
// by MlpModelCuda::item_part or uploaded; used by the calls of the model that made it.
class MlpItemPartCuda {
 public:
  ~MlpItemPartCuda();
  int64_t items() const { return items_; }
  int columns() const { return columns_; }  // input columns it covers (item vector + features)

 private:
  friend class MlpModelCuda;
  struct State;
  MlpItemPartCuda(const void* owner, int64_t items, int columns, std::unique_ptr<State> state);
  const void* owner_;
  int64_t items_;
  int columns_;
  std::unique_ptr<State> state_;
};

class MlpModelCuda {
 public:
  // Checks the layers (chain, finite, last out = 1, widths <= 2**20) on the host, then packs
  // them onto the current device. path = Fused throws when a hidden layer is wider than
  // kMlpFusedMaxWidth; a call that does not fit the fused kernel then throws too.
  MlpModelCuda(const std::vector<MlpLayer>& layers, MlpPrecision precision, MlpPath path);
  ~MlpModelCuda();
  MlpModelCuda(const MlpModelCuda&) = delete;
  MlpModelCuda& operator=(const MlpModelCuda&) = delete;

  int input_width() const;
  int part_width() const;  // the first layer's width padded to kMlpPanel
  MlpPrecision precision() const;
  MlpPath path() const;    // as asked for (Auto: chosen per call)
  int device() const;

  // The path a call with x_width multiplied columns per candidate takes (Fused or Tiled);
  // with path = Fused, throws when the call does not fit the fused kernel.
  MlpPath path_for(int x_width) const;

  // out[r]: the score of each of the n rows of X (n x input_width()).
  void score(const float* X, int64_t n, float* out) const;
  // out[c]: the score of every candidate. candidates.item_part must be null: a precomputed
  // item part is passed as `part` (then candidates.item_blocks is one block {nullptr,
  // part->columns()}).
  void score_candidates(const MlpCandidates& candidates, const MlpItemPartCuda* part,
                        float* out) const;
  // Per user, the k best candidates (score descending, ties by smaller id, each id once, NaN
  // and -inf dropped), padded with -1 / -inf: ids and scores are users x k. No candidate
  // block (std::invalid_argument): a repeated id's own features would score it apart.
  void rank(const MlpCandidates& candidates, const MlpItemPartCuda* part, int k, int64_t* ids,
            float* scores) const;
  // The first layer's item contribution of item blocks that start at input column `column`:
  // kept on the device (returned) and copied to host_out (items x part_width(), zero padded).
  std::shared_ptr<MlpItemPartCuda> item_part(const std::vector<MlpBlock>& item_blocks,
                                             int64_t items, int column, float* host_out) const;
  // An item part computed elsewhere (items x part_width() host floats covering `columns`
  // input columns), copied to the device.
  std::shared_ptr<MlpItemPartCuda> upload_item_part(const float* part, int64_t items,
                                                    int columns) const;

  // For benchmarks: the device time in microseconds of each of `repeats` runs of a call's
  // kernels (user part, layers and, when k >= 1, the ranking) on inputs uploaded once. The
  // call must fit one chunk.
  std::vector<double> time_device(const MlpCandidates& candidates, const MlpItemPartCuda* part,
                                  int k, int repeats) const;

 private:
  struct State;
  // A call's item part as the call planning reads it (none: given = false).
  struct PartView {
    bool given = false;
    const void* owner = nullptr;
    int64_t items = 0;
    int columns = 0;
    const float* data = nullptr;  // device
  };
  static PartView view(const MlpItemPartCuda* part);
  std::unique_ptr<State> state_;
};

}  // namespace cuda
}  // namespace recfuse

// The fused MLP scorer (see recfuse/mlp.hpp): packing, the per-block pipeline, threads,
// and the per-user top-k of rank.
#include "recfuse/mlp.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "mlp_kernels.hpp"

namespace recfuse {

namespace {

using kernels::MlpLayerArgs;
using kernels::to_bfloat16;  // packing

void expect(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

int round_up(int x, int m) { return (x + m - 1) / m * m; }

kernels::MlpLayerFunction float32_layer() {
  return for_level(&kernels::generic::mlp_layer_float32, &kernels::avx2::mlp_layer_float32, &kernels::avx512::mlp_layer_float32)();
}

kernels::MlpDotFunction float32_dot() {
  return for_level(&kernels::generic::mlp_dot_float32, &kernels::avx2::mlp_dot_float32, &kernels::avx512::mlp_dot_float32)();
}

kernels::MlpAllFiniteFunction float32_all_finite() {
  return for_level(&kernels::generic::mlp_all_finite, &kernels::avx2::mlp_all_finite, &kernels::avx512::mlp_all_finite)();
}

kernels::MlpLayerFunction int8_layer() {
  return for_level(&kernels::generic::mlp_layer_int8, &kernels::avx2::mlp_layer_int8, &kernels::avx512::mlp_layer_int8)();
}

kernels::MlpQuantizeFunction int8_quantize() {
  return for_level(&kernels::generic::mlp_quantize_int8, &kernels::avx2::mlp_quantize_int8, &kernels::avx512::mlp_quantize_int8)();
}

float activate_scalar(MlpActivation activation, float x) {
  switch (activation) {
    case MlpActivation::Relu: return x < 0.0f ? 0.0f : x;
    case MlpActivation::Gelu: return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    case MlpActivation::Sigmoid: return 1.0f / (1.0f + std::exp(-x));
    case MlpActivation::Tanh: return std::tanh(x);
    case MlpActivation::Identity: return x;
  }
  return x;
}

// Candidate lists' offsets: users + 1 of them, from 0, not decreasing.
void check_offsets(int64_t users, const int64_t* indptr) {
  expect(users >= 0 && indptr != nullptr, "candidates need users >= 0 and an indptr");
  expect(indptr[0] == 0, "indptr must hold users + 1 offsets starting at 0");
  bool ordered = true;
  for (int64_t u = 0; u < users; ++u) ordered &= indptr[u] <= indptr[u + 1];
  expect(ordered, "indptr must not decrease");
}

}  // namespace

bool mlp_all_finite(const float* x, int64_t n) { return float32_all_finite()(x, n); }

const char* mlp_kernel_name(MlpKernel kernel) {
  switch (kernel) {
    case MlpKernel::Float32: return "float32";
    case MlpKernel::Avx512Bf16: return "avx512bf16";
    case MlpKernel::Amx: return "amx";
    case MlpKernel::Int8: return "int8";
  }
  return "unknown";
}

MlpKernel parse_mlp_kernel(const std::string& name) {
  if (name == "float32") return MlpKernel::Float32;
  if (name == "avx512bf16") return MlpKernel::Avx512Bf16;
  if (name == "amx") return MlpKernel::Amx;
  if (name == "int8") return MlpKernel::Int8;
  throw std::invalid_argument("MLP kernel must be one of float32, avx512bf16, amx, int8; got '" +
                              name + "'");
}

bool mlp_kernel_supported(MlpKernel kernel, std::string* why) {
  std::string reason;
  switch (kernel) {
    case MlpKernel::Float32:
    case MlpKernel::Int8:  // scalar below the avx2 level
      return true;
    case MlpKernel::Avx512Bf16:
      if (kernels::mlp_layer_avx512bf16() == nullptr) reason = "not built (not x86-64)";
      else if (!cpu_supports_avx512bf16()) reason = "this CPU lacks avx512_bf16";
      break;
    case MlpKernel::Amx:
      if (kernels::mlp_layer_amx() == nullptr) reason = "not built (not x86-64)";
      else if (!cpu_supports_avx512bf16()) reason = "this CPU lacks avx512_bf16 (used beside AMX)";
      else if (!kernels::mlp_request_amx())
        reason = "this CPU lacks amx_tile/amx_bf16 or Linux refused tile data (arch_prctl)";
      break;
  }
  if (why != nullptr) *why = reason;
  return reason.empty();
}

MlpModel::MlpModel(const std::vector<MlpLayer>& layers, MlpPrecision precision,
                   MlpKernel kernel)
    : precision_(precision), kernel_(kernel) {
  expect(!layers.empty(), "an MLP needs at least one layer");
  expect(layers.back().out == 1, "the last layer must have one output (the score), got " +
                                     std::to_string(layers.back().out));
  const bool bf16 = precision == MlpPrecision::Bfloat16;
  const bool int8 = precision == MlpPrecision::Int8;
  const MlpPrecision computed = kernel == MlpKernel::Float32 ? MlpPrecision::Float32
                                : kernel == MlpKernel::Int8  ? MlpPrecision::Int8
                                                             : MlpPrecision::Bfloat16;
  expect(computed == precision,
         std::string("kernel ") + mlp_kernel_name(kernel) + " does not compute " +
             (bf16 ? "bfloat16" : int8 ? "int8" : "float32"));
  std::string why;  // filled before the message is built (argument order is unspecified)
  const bool supported = mlp_kernel_supported(kernel, &why);
  expect(supported,
         std::string("MLP kernel ") + mlp_kernel_name(kernel) + " is unavailable: " + why);
  const int count = static_cast<int>(layers.size());
  for (int l = 0; l < count; ++l) {
    const MlpLayer& layer = layers[l];
    const std::string name = "layer " + std::to_string(l);
    expect(layer.in >= 1 && layer.out >= 1, name + " must have at least one input and output");
    if (l > 0 && layer.in != layers[l - 1].out)  // the message reads layers[l - 1]: l > 0
      expect(false, name + " takes " + std::to_string(layer.in) + " inputs but layer " +
                        std::to_string(l - 1) + " gives " + std::to_string(layers[l - 1].out));
    bool finite = true;  // one message, built only on failure
    for (int64_t i = 0; i < static_cast<int64_t>(layer.out) * layer.in; ++i)
      finite &= std::isfinite(layer.weight[i]);
    expect(finite, name + " weights must be finite");
    for (int i = 0; layer.bias != nullptr && i < layer.out; ++i)
      finite &= std::isfinite(layer.bias[i]);
    expect(finite, name + " bias must be finite");

    Packed p;
    p.in = layer.in;
    p.out = layer.out;
    p.panels = (layer.out + kMlpPanel - 1) / kMlpPanel;
    p.activation = layer.activation;
    const int width = p.panels * kMlpPanel;
    p.bias.assign(width, 0.0f);
    if (layer.bias != nullptr) std::copy(layer.bias, layer.bias + layer.out, p.bias.begin());
    auto w = [&](int out, int in) {
      return out < layer.out ? layer.weight[static_cast<int64_t>(out) * layer.in + in] : 0.0f;
    };
    if (l > 0 && l == count - 1) {  // one output: a dot product per row
      p.dot.resize(layer.in);
      for (int k = 0; k < layer.in; ++k) p.dot[k] = w(0, k);
    } else {
      p.f32.resize(static_cast<size_t>(p.panels) * layer.in * kMlpPanel);
      for (int q = 0; q < p.panels; ++q)
        for (int k = 0; k < layer.in; ++k)
          for (int j = 0; j < kMlpPanel; ++j)
            p.f32[(static_cast<size_t>(q) * layer.in + k) * kMlpPanel + j] = w(q * kMlpPanel + j, k);
      if (bf16 && l < count - 1) {
        // Zero pair rows beyond the inputs let a kernel start at any even column and read
        // whole 32-column steps (AMX).
        p.bf16_pairs = (round_up(layer.in, 32) + 32) / 2;
        p.bf16.assign(static_cast<size_t>(p.panels) * p.bf16_pairs * 2 * kMlpPanel, 0);
        for (int q = 0; q < p.panels; ++q)
          for (int k = 0; k < layer.in; ++k)
            for (int j = 0; j < kMlpPanel; ++j)
              p.bf16[((static_cast<size_t>(q) * p.bf16_pairs + k / 2) * kMlpPanel + j) * 2 +
                     k % 2] = to_bfloat16(w(q * kMlpPanel + j, k));
      }
      if (int8 && l > 0 && l < count - 1) {  // each output column's weights: one int8 row
        expect(static_cast<int64_t>(layer.in) * 127 * 127 <= INT32_MAX,
               name + " has " + std::to_string(layer.in) +
                   " inputs: int8 layers take at most 133144 (their sums must fit int32)");
        p.int8_pairs = (layer.in + 1) / 2;
        p.int8.assign(static_cast<size_t>(p.panels) * p.int8_pairs * 2 * kMlpPanel, 0);
        p.int8_scale.assign(width, 0.0f);
        std::vector<int16_t> row(2 * p.int8_pairs);
        for (int j = 0; j < layer.out; ++j) {
          kernels::quantize_int8_row(layer.weight + static_cast<int64_t>(j) * layer.in,
                                     layer.in, row.data(), p.int8_scale[j]);
          const int q = j / kMlpPanel, jj = j % kMlpPanel;
          for (int k = 0; k < layer.in; ++k)
            p.int8[((static_cast<size_t>(q) * p.int8_pairs + k / 2) * kMlpPanel + jj) * 2 +
                   k % 2] = row[k];
        }
      }
      max_padded_width_ = std::max(max_padded_width_, width);
    }
    if (l == 0) {
      p.first_t.resize(static_cast<size_t>(layer.in) * width);
      for (int k = 0; k < layer.in; ++k)
        for (int j = 0; j < width; ++j) p.first_t[static_cast<size_t>(k) * width + j] = w(j, k);
    }
    layers_.push_back(std::move(p));
  }
}

// Checked once per call, so no message is built unless a check fails.
void MlpModel::check(const MlpCandidates& c) const {
  check_offsets(c.users, c.indptr);
  int width = c.candidate_block.width;
  for (const MlpBlock& b : c.user_blocks) {
    expect(b.data != nullptr && b.width >= 0, "user blocks need data");
    width += b.width;
  }
  for (const MlpBlock& b : c.item_blocks) {
    expect(b.width >= 0 && (b.data != nullptr || c.item_part != nullptr),
           "item blocks need data unless an item part covers them");
    width += b.width;
  }
  expect(width == input_width(), "the input blocks add up to " + std::to_string(width) +
                                     " columns; the model takes " +
                                     std::to_string(input_width()));
  expect(c.candidate_block.width == 0 || c.candidate_block.data != nullptr,
         "the candidate block needs data");
  const bool gathers = !c.item_blocks.empty() || c.item_part != nullptr;
  expect(!gathers || c.ids != nullptr, "item blocks need candidate ids");
  if (c.ids != nullptr) {
    const int64_t total = c.indptr[c.users];
    int64_t low = 0, high = 0;
    for (int64_t i = 0; i < total; ++i) {
      low = std::min(low, c.ids[i]);
      high = std::max(high, c.ids[i]);
    }
    expect(low >= 0 && (total == 0 || high < c.items),
           "candidate id " + std::to_string(low < 0 ? low : high) + " is outside [0, " +
               std::to_string(c.items) + ")");
  }
}

// What every block of one call shares.
struct MlpModel::CallPlan {
  std::vector<float> user_part;  // users x part: b1 + W1u·[u | uf] (float32)
  int part = 0;                  // row width of user and item parts
  int start = 0;                 // first input column multiplied per candidate
  int x_cols = 0, x_stride = 0;  // multiplied columns, and the gather buffer's row stride
  kernels::MlpLayerFunction f32_gemm = nullptr, bf16_gemm = nullptr, int8_gemm = nullptr;
  kernels::MlpQuantizeFunction int8_quantize = nullptr;
  kernels::MlpDotFunction f32_dot = nullptr;
  // rank's first pass under bfloat16: the first layer's per-candidate columns in bfloat16
  // too (the user and item parts stay float32). Its scores only choose the band.
  bool first_bf16 = false;
};

// One thread's block buffers. Kept per thread between calls (thread_local, grown when a
// model needs more): zero-filling ~200 KB per thread per call cost about 10 µs.
struct MlpModel::Scratch {
  std::vector<float> x_f32, h_f32[2];
  std::vector<uint16_t> x_bf16, h_bf16[2];
  std::vector<int16_t> h_int8;  // an int8 layer's quantized input
  float int8_scale[kMlpBlockRows];
  std::vector<float> last;  // a final GEMM layer's float outputs
  int64_t rows[kMlpBlockRows];   // candidate positions of the block's rows
  int64_t users[kMlpBlockRows];  // and their users
  const float* add0[kMlpBlockRows];
  const float* add1[kMlpBlockRows];
  const float* bias_rows[kMlpBlockRows];
};

namespace {

template <typename T>
void grow(std::vector<T>& buffer, size_t size) {
  if (buffer.size() < size) buffer.resize(size);
}

}  // namespace

MlpModel::CallPlan MlpModel::plan(const MlpCandidates& c, int threads, bool rough) const {
  CallPlan p;
  const Packed& first = layers_.front();
  p.part = part_width();
  p.f32_gemm = float32_layer();
  p.f32_dot = float32_dot();
  p.bf16_gemm =
      kernel_ == MlpKernel::Amx ? kernels::mlp_layer_amx() : kernels::mlp_layer_avx512bf16();
  p.int8_gemm = int8_layer();
  p.int8_quantize = int8_quantize();
  // Input columns: [user blocks | item blocks | candidate block]. Per candidate the kernel
  // multiplies the columns from `start` (after the item blocks when an item part covers
  // them).
  int user_width = 0, item_width = 0;
  for (const MlpBlock& b : c.user_blocks) user_width += b.width;
  for (const MlpBlock& b : c.item_blocks) item_width += b.width;
  p.start = user_width + (c.item_part != nullptr ? item_width : 0);
  p.x_cols = input_width() - p.start;
  p.x_stride = round_up(std::max(p.x_cols, 1), 32);
  // The bfloat16 panels hold column pairs: the per-candidate columns must start on a pair.
  // Not with AMX, which reads whole 32-column steps of the (unzeroed) gather buffer.
  p.first_bf16 = rough && kernel_ == MlpKernel::Avx512Bf16 && p.start % 2 == 0 &&
                 !layers_.front().bf16.empty() && p.x_cols > 0;
  const int part = p.part;
  p.user_part.resize(static_cast<size_t>(c.users) * part);
#pragma omp parallel for num_threads(threads) schedule(static) if (c.users * user_width > 65536)
  for (int64_t u = 0; u < c.users; ++u) {
    float* z = p.user_part.data() + u * part;
    std::copy(first.bias.begin(), first.bias.end(), z);
    int column = 0;
    for (const MlpBlock& b : c.user_blocks) {
      const float* x = b.data + u * b.width;
      for (int k = 0; k < b.width; ++k, ++column) {
        const float xk = x[k];
        const float* w = first.first_t.data() + static_cast<size_t>(column) * part;
        for (int j = 0; j < part; ++j) z[j] += xk * w[j];
      }
    }
  }
  return p;
}

void MlpModel::run_block(const MlpCandidates& c, const CallPlan& plan, Scratch& s, int rows,
                         bool reduced, float* out) const {
  const int count = layer_count();
  const bool bf16 = reduced && precision_ == MlpPrecision::Bfloat16;
  const bool int8 = reduced && precision_ == MlpPrecision::Int8;
  // Under bfloat16 the layers between the first and the last run on the bfloat16 kernel;
  // the first (raw features) and the last stay float32 (see recfuse/mlp.hpp), except that
  // rank's first pass (plan.first_bf16) runs the first layer's multiplied columns too.
  // Under int8 the same middle layers quantize their float32 input and output float32.
  auto bf16_layer = [&](int l) {
    return bf16 && l < count - 1 && (l > 0 || plan.first_bf16);
  };
  auto int8_layer = [&](int l) { return int8 && l > 0 && l < count - 1; };
  const size_t h_size = static_cast<size_t>(kMlpBlockRows) * std::max(max_padded_width_, 32);
  grow(s.x_f32, static_cast<size_t>(kMlpBlockRows) * plan.x_stride);
  grow(s.h_f32[0], h_size);
  grow(s.h_f32[1], h_size);
  if (bf16) {
    grow(s.h_bf16[0], h_size);
    grow(s.h_bf16[1], h_size);
  }
  if (int8) grow(s.h_int8, h_size);
  grow(s.last, static_cast<size_t>(kMlpBlockRows) * kMlpPanel);
  const int part = plan.part;
  for (int i = 0; i < rows; ++i) {
    s.add0[i] = plan.user_part.data() + s.users[i] * part;
    s.add1[i] = c.item_part != nullptr ? c.item_part + c.ids[s.rows[i]] * part : nullptr;
  }
  // Gather the multiplied columns of each row into the block buffer.
  for (int i = 0; i < rows; ++i) {
    const int64_t r = s.rows[i];
    float* x = s.x_f32.data() + static_cast<size_t>(i) * plan.x_stride;
    if (c.item_part == nullptr) {
      for (const MlpBlock& b : c.item_blocks) {
        std::memcpy(x, b.data + c.ids[r] * b.width, sizeof(float) * b.width);
        x += b.width;
      }
    }
    if (c.candidate_block.width > 0)
      std::memcpy(x, c.candidate_block.data + r * c.candidate_block.width,
                  sizeof(float) * c.candidate_block.width);
    // The bfloat16 kernel multiplies pairs: the column after an odd count must be finite
    // (a stale NaN item value there would leak into this row).
    if (plan.x_cols % 2 == 1) s.x_f32[static_cast<size_t>(i) * plan.x_stride + plan.x_cols] = 0.0f;
  }
  // Layer after layer on the block.
  const void* A = s.x_f32.data();
  int lda = plan.x_stride;
  if (bf16_layer(0)) {
    grow(s.x_bf16, static_cast<size_t>(kMlpBlockRows) * plan.x_stride);
    kernels::mlp_rows_to_bfloat16(s.x_f32.data(), s.x_bf16.data(),
                                  static_cast<int64_t>(rows) * plan.x_stride);
    A = s.x_bf16.data();
  }
  for (int l = 0; l < count; ++l) {
    const Packed& p = layers_[l];
    if (!p.dot.empty()) {  // the final one-output layer: a dot product per row
      // Its input is float32: the last layer is never a bfloat16 one.
      plan.f32_dot(static_cast<const float*>(A), lda, rows, p.in, p.dot.data(), out);
      for (int i = 0; i < rows; ++i) out[i] = activate_scalar(p.activation, out[i] + p.bias[0]);
      return;
    }
    MlpLayerArgs g;
    g.A = A;
    g.lda = lda;
    g.rows = rows;
    g.activation = p.activation;
    g.panels = p.panels;
    if (l == 0) {
      g.K = plan.x_cols;
      g.add0 = s.add0;
      g.add1 = c.item_part != nullptr ? s.add1 : nullptr;
    } else {
      g.K = p.in;
      for (int i = 0; i < rows; ++i) s.bias_rows[i] = p.bias.data();
      g.add0 = s.bias_rows;
      g.add1 = nullptr;
    }
    if (int8_layer(l)) {  // quantize the float32 input rows, then the integer products
      const int ldq = round_up(p.in, 2);
      plan.int8_quantize(static_cast<const float*>(A), lda, rows, p.in, s.h_int8.data(), ldq,
                         s.int8_scale);
      g.A = s.h_int8.data();
      g.lda = ldq;
      g.a_scale = s.int8_scale;
      g.w_scale = p.int8_scale.data();
      g.packed = p.int8.data();
      g.panel_stride = static_cast<int64_t>(p.int8_pairs) * 2 * kMlpPanel;
      g.ldc = p.panels * kMlpPanel;
      g.c_bf16 = false;
      g.C = s.h_f32[l % 2].data();
      plan.int8_gemm(g);
      A = g.C;
      lda = g.ldc;
      continue;
    }
    const bool in_bf16 = bf16_layer(l);
    if (in_bf16) {
      g.packed = p.bf16.data() + static_cast<size_t>(l == 0 ? plan.start : 0) * kMlpPanel;
      g.panel_stride = static_cast<int64_t>(p.bf16_pairs) * 2 * kMlpPanel;
    } else {
      g.packed = p.f32.data() + static_cast<size_t>(l == 0 ? plan.start : 0) * kMlpPanel;
      g.panel_stride = static_cast<int64_t>(p.in) * kMlpPanel;
    }
    if (l == count - 1) {  // a single-layer model: float outputs, column 0 is the score
      g.C = s.last.data();
      g.ldc = kMlpPanel;
      g.c_bf16 = false;
      plan.f32_gemm(g);
      for (int i = 0; i < rows; ++i) out[i] = s.last[static_cast<size_t>(i) * kMlpPanel];
      return;
    }
    const bool out_bf16 = bf16_layer(l + 1);
    g.ldc = p.panels * kMlpPanel;
    g.c_bf16 = out_bf16 && in_bf16;
    g.C = g.c_bf16 ? static_cast<void*>(s.h_bf16[l % 2].data()) : s.h_f32[l % 2].data();
    (in_bf16 ? plan.bf16_gemm : plan.f32_gemm)(g);
    if (out_bf16 && !in_bf16) {  // float32 layer before a bfloat16 one
      kernels::mlp_rows_to_bfloat16(s.h_f32[l % 2].data(), s.h_bf16[l % 2].data(),
                                    static_cast<int64_t>(rows) * g.ldc);
      g.C = s.h_bf16[l % 2].data();
    }
    A = g.C;
    lda = g.ldc;
  }
}

namespace {

// Asks for the item rows of candidates [begin, end) in L2: they are gathered by id from a
// table that is often far larger than the caches (64 users x 1,000 candidates read 64 MB of
// a prepared table), so the next block's rows are fetched while a block runs.
void prefetch_item_rows(const MlpCandidates& c, int part, int64_t begin, int64_t end) {
  if (c.ids == nullptr) return;
  for (int64_t r = begin; r < end; ++r) {
    if (c.item_part != nullptr) {
      const char* row = reinterpret_cast<const char*>(c.item_part + c.ids[r] * part);
      for (int64_t byte = 0; byte < static_cast<int64_t>(sizeof(float)) * part; byte += 64)
        __builtin_prefetch(row + byte, 0, 2);
      continue;
    }
    for (const MlpBlock& b : c.item_blocks) {
      const char* row = reinterpret_cast<const char*>(b.data + c.ids[r] * b.width);
      for (int64_t byte = 0; byte < static_cast<int64_t>(sizeof(float)) * b.width; byte += 64)
        __builtin_prefetch(row + byte, 0, 2);
    }
  }
}

}  // namespace

void MlpModel::score_all(const MlpCandidates& c, const CallPlan& plan, int threads, bool reduced,
                         float* out, const UserDone& user_done) const {
  const int64_t total = c.indptr[c.users];
  // With a user_done hook: candidates not yet scored per user; the thread that scores a
  // user's last one calls the hook (no barrier between scoring and ranking).
  std::unique_ptr<std::atomic<int64_t>[]> remaining;
  if (user_done) {
    remaining.reset(new std::atomic<int64_t>[c.users]);
    for (int64_t u = 0; u < c.users; ++u) remaining[u].store(c.indptr[u + 1] - c.indptr[u]);
  }
  // Blocks of at most kMlpBlockRows rows, as even as whole tiles of 8 rows allow (the
  // kernels' row tile), so that a short call splits evenly over the threads: 1,000 rows
  // become 13 blocks of 64 and 3 of 56, not 15 of 64 and one of 40.
  constexpr int64_t kTile = 8;
  const int64_t tiles = (total + kTile - 1) / kTile;
  const int64_t blocks = (total + kMlpBlockRows - 1) / kMlpBlockRows;
  auto block_start = [&](int64_t block) {
    return std::min(total, kTile * (block * tiles / blocks));
  };
  // Threads take runs of two blocks, so that each knows its next block (to prefetch);
  // short runs keep the threads balanced when one of them is descheduled.
  constexpr int64_t kRun = 2;
  const int64_t runs = (blocks + kRun - 1) / kRun;
  const int used = static_cast<int>(std::min<int64_t>(threads, runs));
#pragma omp parallel num_threads(used) if (used > 1)
  {
    thread_local Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t run = 0; run < runs; ++run) {
      const int64_t last = std::min(blocks, (run + 1) * kRun);
      prefetch_item_rows(c, plan.part, block_start(run * kRun), block_start(run * kRun + 1));
      for (int64_t block = run * kRun; block < last; ++block) {
        const int64_t r0 = block_start(block);
        const int rows = static_cast<int>(block_start(block + 1) - r0);
        if (block + 1 < last)
          prefetch_item_rows(c, plan.part, r0 + rows, block_start(block + 2));
        // The user of each row (users without candidates are skipped).
        int64_t u = std::upper_bound(c.indptr, c.indptr + c.users + 1, r0) - c.indptr - 1;
        for (int i = 0; i < rows; ++i) {
          while (c.indptr[u + 1] <= r0 + i) ++u;
          s.rows[i] = r0 + i;
          s.users[i] = u;
        }
        run_block(c, plan, s, rows, reduced, out + r0);
        if (!user_done) continue;
        const int64_t first = s.users[0], last_user = s.users[rows - 1];  // the hook reuses s
        for (u = first; u <= last_user; ++u) {
          const int64_t mine = std::min(c.indptr[u + 1], r0 + rows) - std::max(c.indptr[u], r0);
          if (mine > 0 && remaining[u].fetch_sub(mine, std::memory_order_acq_rel) == mine)
            user_done(u, s);
        }
      }
    }
  }
}

void MlpModel::score(const float* X, int64_t n, int num_threads, float* out) const {
  MlpCandidates c;
  const int64_t indptr[2] = {0, n};
  c.users = 1;
  c.indptr = indptr;
  c.candidate_block = {X, input_width()};
  score_candidates(c, num_threads, out);
}

void MlpModel::score_candidates(const MlpCandidates& c, int num_threads, float* out,
                                bool rough) const {
  check(c);
  if (c.indptr[c.users] == 0) return;
  const int threads = resolve_threads(num_threads);
  const bool reduced = precision_ != MlpPrecision::Float32;
  score_all(c, plan(c, threads, rough && reduced), threads, reduced, out);
}

namespace {

// Writes to `best` the first `want` rows (candidate positions, or places of a band) of
// `order` with distinct ids, ordered by `better` (a strict total order: score descending,
// then smaller id, then smaller row), and returns how many (fewer when `order` runs out). A
// repeated id counts once, at its first (best) place; repeats differ in score when their
// candidate features do. Sorts a prefix of `order` (all of it when repeats require).
template <class Better, class IdOf>
int64_t first_distinct(std::vector<int64_t>& order, const Better& better, const IdOf& id_of,
                       int64_t want, int64_t* best) {
  // Few wanted (the usual k): a scan of those found; many: a hash set, made for the call (a
  // thread_local one would keep the buckets of its largest call, and clear() walks them).
  constexpr int64_t kScanned = 64;
  std::unordered_set<int64_t> taken;
  auto first_time = [&](int64_t id, int64_t found) {
    if (want > kScanned) return taken.insert(id).second;
    for (int64_t j = 0; j < found; ++j)
      if (id_of(best[j]) == id) return false;
    return true;
  };
  const int64_t size = static_cast<int64_t>(order.size());
  int64_t sorted = std::min(want, size), found = 0;
  while (true) {
    std::partial_sort(order.begin(), order.begin() + sorted, order.end(), better);
    taken.clear();
    found = 0;
    for (int64_t i = 0; i < sorted && found < want; ++i)
      if (first_time(id_of(order[i]), found)) best[found++] = order[i];
    if (found == want || sorted == size) return found;
    sorted = std::min(2 * sorted, size);  // repeats left fewer than `want` ids: sort deeper
  }
}

// Rows ordered by score descending, then smaller id, then smaller row.
struct BetterRow {
  const float* score;
  const int64_t* ids;
  bool operator()(int64_t a, int64_t b) const {
    if (score[a] != score[b]) return score[a] > score[b];
    return ids[a] != ids[b] ? ids[a] < ids[b] : a < b;
  }
};

// The first `want` rows of `order` by BetterRow (repeated ids included) copied to `best`;
// returns how many (fewer when `order` runs out).
int64_t best_rows(std::vector<int64_t>& order, const float* score, const int64_t* ids,
                  int64_t want, int64_t* best) {
  const int64_t found = std::min<int64_t>(want, static_cast<int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + found, order.end(), BetterRow{score, ids});
  std::copy(order.begin(), order.begin() + found, best);
  return found;
}

// The k best distinct ids of a band by their float32 scores `exact` (aligned with the band;
// NaN and -inf dropped), score descending then smaller id, each id at its best place:
// writes their places in the band to `top` and returns how many.
int64_t top_of_band(const int64_t* band, const float* exact, int64_t size, const int64_t* ids,
                    int64_t k, std::vector<int64_t>& places, int64_t* top) {
  places.clear();
  for (int64_t i = 0; i < size; ++i)
    if (exact[i] > -std::numeric_limits<float>::infinity()) places.push_back(i);
  auto id_of = [&](int64_t place) { return ids[band[place]]; };
  auto better = [&](int64_t a, int64_t b) {
    if (exact[a] != exact[b]) return exact[a] > exact[b];
    return id_of(a) != id_of(b) ? id_of(a) < id_of(b) : a < b;
  };
  return first_distinct(places, better, id_of, k, top);
}

// order = user u's rows (indptr[u]..) whose score in `all` is neither NaN nor -inf.
void ranked_rows(const int64_t* indptr, const float* all, int64_t u,
                 std::vector<int64_t>& order) {
  order.clear();
  for (int64_t r = indptr[u]; r < indptr[u + 1]; ++r)
    if (all[r] > -std::numeric_limits<float>::infinity()) order.push_back(r);  // not NaN
}

// The float32 rule for one user whose scores (rows indptr[u].. of `all`) are known: its k
// best distinct ids into ids / scores (k slots, already padded); `order` is scratch.
void rank_scored_user(const int64_t* indptr, const int64_t* candidate_ids, const float* all,
                      int64_t u, int k, std::vector<int64_t>& order, std::vector<int64_t>& top,
                      int64_t* ids, float* scores) {
  top.resize(k);
  ranked_rows(indptr, all, u, order);
  const int64_t found =
      first_distinct(order, BetterRow{all, candidate_ids},
                     [&](int64_t row) { return candidate_ids[row]; }, k, top.data());
  for (int64_t i = 0; i < found; ++i) {
    ids[i] = candidate_ids[top[i]];
    scores[i] = all[top[i]];
  }
}

// ids / scores (users x k) all -1 / -inf: the padding of every ranking.
void pad_ranking(int64_t users, int k, int64_t* ids, float* scores) {
  std::fill(ids, ids + users * k, int64_t{-1});
  std::fill(scores, scores + users * k, -std::numeric_limits<float>::infinity());
}

}  // namespace

void mlp_rank_scores(int64_t users, const int64_t* indptr, const int64_t* candidate_ids,
                     const float* scores, int k, int num_threads, int64_t* ids, float* out) {
  expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
  check_offsets(users, indptr);
  pad_ranking(users, k, ids, out);
  const int64_t total = indptr[users];
  if (total == 0) return;
  // About 1 µs a user per 1,000 candidates: threads only where there is work for them.
  const int threads = static_cast<int>(
      std::min<int64_t>(resolve_threads(num_threads), std::max<int64_t>(1, total / 16384)));
#pragma omp parallel num_threads(threads)
  {
    std::vector<int64_t> order, top;
#pragma omp for schedule(dynamic, 8)
    for (int64_t u = 0; u < users; ++u)
      rank_scored_user(indptr, candidate_ids, scores, u, k, order, top, ids + u * k,
                       out + u * k);
  }
}

void MlpModel::rank(const MlpCandidates& c, int k, int num_threads, int64_t* ids,
                    float* scores) const {
  expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
  check(c);
  expect(c.ids != nullptr, "rank needs candidate ids");
  const int64_t total = c.indptr[c.users];
  const int threads = resolve_threads(num_threads);
  const bool reduced = precision_ != MlpPrecision::Float32;
  pad_ranking(c.users, k, ids, scores);  // users with candidates fill theirs
  if (total == 0) return;
  const CallPlan call_plan = plan(c, threads, reduced);
  // bfloat16 or int8: the rough scores that choose the band; float32: the scores.
  std::vector<float> all(static_cast<size_t>(total));
  // Each user is ranked by the thread that scores its last candidate.
  score_all(c, call_plan, threads, reduced, all.data(), [&](int64_t u, Scratch& s) {
    rank_user(c, call_plan, k, all.data(), u, s, ids + u * k, scores + u * k);
  });
}

void MlpModel::rescore_rows(const MlpCandidates& c, const CallPlan& plan, int64_t u,
                            const int64_t* rows, int64_t count, float* out, Scratch* s) const {
  thread_local Scratch own;
  Scratch& scratch = s != nullptr ? *s : own;
  for (int64_t i = 0; i < count; i += kMlpBlockRows) {
    const int n = static_cast<int>(std::min<int64_t>(kMlpBlockRows, count - i));
    for (int j = 0; j < n; ++j) {
      scratch.rows[j] = rows[i + j];
      scratch.users[j] = u;
    }
    run_block(c, plan, scratch, n, false, out + i);
  }
}

namespace {

// A thread keeps its rank buffers between users (no allocation per user), but not past a
// call that grew them beyond this many entries: it would hold its largest call's buffers
// (4M candidates: 30-170 MB) for its whole life.
constexpr size_t kKeptRankEntries = size_t(1) << 16;

template <class T>
void release_if_large(std::vector<T>& buffer) {
  if (buffer.capacity() > kKeptRankEntries) std::vector<T>().swap(buffer);
}

}  // namespace

void MlpModel::rank_user(const MlpCandidates& c, const CallPlan& plan, int k, const float* all,
                         int64_t u, Scratch& s, int64_t* ids, float* scores) const {
  thread_local std::vector<int64_t> order, band, picked, top;
  thread_local std::vector<float> exact;  // float32 scores of the band's rows, by place
  struct ReleaseAtExit {
    ~ReleaseAtExit() {
      release_if_large(order);
      release_if_large(band);
      release_if_large(picked);
      release_if_large(top);
      release_if_large(exact);
    }
  } release_at_exit;
  if (precision_ == MlpPrecision::Float32)
    return rank_scored_user(c.indptr, c.ids, all, u, k, order, top, ids, scores);
  top.resize(k);
  ranked_rows(c.indptr, all, u, order);
  // Rescore a band of the best rough (bfloat16 or int8) rows in float32, widening it until no row outside
  // can reach the float32 k-th score (see recfuse/mlp.hpp).
  int64_t want = std::max<int64_t>(2 * static_cast<int64_t>(k), kMlpRescoreMinBand);
  int64_t rescored = 0, found = 0;
  while (true) {
    band.resize(want);
    const int64_t size = best_rows(order, all, c.ids, want, band.data());
    exact.resize(size);
    // Rows already rescored keep their place: a wider band only extends the order. With one
    // user the band is the call's last work: half of its rows go to a task, which a thread
    // idle at the end of the scoring picks up (1 x 1,000: 2% less time; with many users
    // the other threads are busy and the split cost 1%).
    const bool split = c.users == 1 && size - rescored >= 16;
    const int64_t half = split ? rescored + (size - rescored) / 2 : rescored;
    if (half > rescored) {
      // Pointers taken here: band and exact are this thread's (thread_local).
      const int64_t* task_rows = band.data() + rescored;
      float* task_out = exact.data() + rescored;
      const int64_t task_count = half - rescored;
#pragma omp task default(shared) firstprivate(task_rows, task_out, task_count)
      rescore_rows(c, plan, u, task_rows, task_count, task_out);
    }
    rescore_rows(c, plan, u, band.data() + half, size - half, exact.data() + half, &s);
#pragma omp taskwait
    rescored = size;
    found = top_of_band(band.data(), exact.data(), size, c.ids, k, picked, top.data());
    if (size < want) break;  // the band holds every candidate
    double error = 0.0;
    for (int64_t i = 0; i < size; ++i) {
      const double gap = std::fabs(static_cast<double>(all[band[i]]) - exact[i]);
      if (std::isfinite(gap)) error = std::max(error, gap);
    }
    if (found == k) {
      const double kth = exact[top[k - 1]];
      const double boundary = all[band[size - 1]];
      if (kth - boundary > kMlpRescoreMargin * error) break;
    }
    want *= 2;
  }
  for (int64_t i = 0; i < found; ++i) {
    ids[i] = c.ids[band[top[i]]];
    scores[i] = exact[top[i]];
  }
}

void MlpModel::item_part(const std::vector<MlpBlock>& item_blocks, int64_t items, int column,
                         int num_threads, float* out) const {
  int64_t total = 0;  // int64 sum and a comparison that cannot overflow int near 2^31
  for (const MlpBlock& b : item_blocks) {
    expect(b.data != nullptr && b.width >= 0, "item blocks need data");
    total += b.width;
  }
  expect(column >= 0 && total <= input_width() - static_cast<int64_t>(column),
         "item blocks at column " + std::to_string(column) + " with " + std::to_string(total) +
             " columns do not fit the model's " + std::to_string(input_width()) + " inputs");
  const int width = static_cast<int>(total);
  const Packed& first = layers_.front();
  const int part = part_width();
  const std::vector<float> zeros(part, 0.0f);
  const kernels::MlpLayerFunction gemm = float32_layer();
  const int64_t blocks = (items + kMlpBlockRows - 1) / kMlpBlockRows;
  const int used = static_cast<int>(std::min<int64_t>(resolve_threads(num_threads), std::max<int64_t>(blocks, 1)));
  const int stride = round_up(std::max(width, 1), 32);
#pragma omp parallel num_threads(used)
  {
    std::vector<float> x(static_cast<size_t>(kMlpBlockRows) * stride, 0.0f);
    const float* zero_rows[kMlpBlockRows];
    for (int i = 0; i < kMlpBlockRows; ++i) zero_rows[i] = zeros.data();
#pragma omp for schedule(dynamic, 4)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t r0 = block * kMlpBlockRows;
      const int rows = static_cast<int>(std::min<int64_t>(kMlpBlockRows, items - r0));
      for (int i = 0; i < rows; ++i) {
        int col = 0;
        for (const MlpBlock& b : item_blocks) {
          std::memcpy(x.data() + static_cast<size_t>(i) * stride + col,
                      b.data + (r0 + i) * b.width, sizeof(float) * b.width);
          col += b.width;
        }
      }
      MlpLayerArgs g;
      g.A = x.data();
      g.lda = stride;
      g.rows = rows;
      g.K = width;
      g.packed = first.f32.data() + static_cast<size_t>(column) * kMlpPanel;
      g.panel_stride = static_cast<int64_t>(first.in) * kMlpPanel;
      g.panels = first.panels;
      g.add0 = zero_rows;
      g.add1 = nullptr;
      g.activation = MlpActivation::Identity;
      g.C = out + r0 * part;
      g.ldc = part;
      g.c_bf16 = false;
      gemm(g);
    }
  }
}

}  // namespace recfuse

// The fused MLP scorer (see recfuse/mlp.hpp): packing, the per-block pipeline, threads,
// and the per-user top-k of rank.
#include "recfuse/mlp.hpp"

#include <omp.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "mlp_kernels.hpp"

namespace recfuse {

namespace {

using kernels::from_bfloat16;
using kernels::MlpLayerArgs;
using kernels::to_bfloat16;  // packing

void expect(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

int round_up(int x, int m) { return (x + m - 1) / m * m; }

int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : omp_get_max_threads();
}

kernels::MlpLayerFunction float32_layer() {
  switch (simd_level()) {
    case SimdLevel::Avx512: return kernels::avx512::mlp_layer_float32();
    case SimdLevel::Avx2: return kernels::avx2::mlp_layer_float32();
    default: return kernels::generic::mlp_layer_float32();
  }
}

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return ((eax >> 5) & 1u) && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
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

// Storage of one thread's block: the gathered first-layer inputs and two activation
// buffers, as float or as bfloat16 (uint16_t).
struct Scratch {
  std::vector<float> x_f32, h_f32[2];
  std::vector<uint16_t> h_bf16[2];
  std::vector<float> last;  // a final GEMM layer's float outputs
  const float* add0[kMlpBlockRows];
  const float* add1[kMlpBlockRows];
  const float* bias_rows[kMlpBlockRows];
};

}  // namespace

MlpActivation parse_mlp_activation(const std::string& name) {
  if (name == "relu") return MlpActivation::Relu;
  if (name == "gelu") return MlpActivation::Gelu;
  if (name == "sigmoid") return MlpActivation::Sigmoid;
  if (name == "tanh") return MlpActivation::Tanh;
  if (name == "identity") return MlpActivation::Identity;
  throw std::invalid_argument(
      "activation must be one of relu, gelu, sigmoid, tanh, identity; got '" + name + "'");
}

const char* mlp_kernel_name(MlpKernel kernel) {
  switch (kernel) {
    case MlpKernel::Float32: return "float32";
    case MlpKernel::Avx512Bf16: return "avx512bf16";
    case MlpKernel::Amx: return "amx";
  }
  return "unknown";
}

MlpKernel parse_mlp_kernel(const std::string& name) {
  if (name == "float32") return MlpKernel::Float32;
  if (name == "avx512bf16") return MlpKernel::Avx512Bf16;
  if (name == "amx") return MlpKernel::Amx;
  throw std::invalid_argument("MLP kernel must be one of float32, avx512bf16, amx; got '" +
                              name + "'");
}

bool mlp_kernel_supported(MlpKernel kernel, std::string* why) {
  std::string reason;
  switch (kernel) {
    case MlpKernel::Float32: return true;
    case MlpKernel::Avx512Bf16:
      if (kernels::mlp_layer_avx512bf16() == nullptr) reason = "not built (not x86-64)";
      else if (!cpu_has_avx512bf16()) reason = "this CPU lacks avx512_bf16";
      break;
    case MlpKernel::Amx:
      if (kernels::mlp_layer_amx() == nullptr) reason = "not built (not x86-64)";
      else if (!cpu_has_avx512bf16()) reason = "this CPU lacks avx512_bf16 (used beside AMX)";
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
  expect(bf16 == (kernel != MlpKernel::Float32),
         std::string("kernel ") + mlp_kernel_name(kernel) + " does not compute " +
             (bf16 ? "bfloat16" : "float32"));
  std::string why;
  expect(mlp_kernel_supported(kernel, &why),
         std::string("MLP kernel ") + mlp_kernel_name(kernel) + " is unavailable: " + why);
  const int count = static_cast<int>(layers.size());
  for (int l = 0; l < count; ++l) {
    const MlpLayer& layer = layers[l];
    const std::string name = "layer " + std::to_string(l);
    expect(layer.in >= 1 && layer.out >= 1, name + " must have at least one input and output");
    expect(l == 0 || layer.in == layers[l - 1].out,
           name + " takes " + std::to_string(layer.in) + " inputs but layer " +
               std::to_string(l - 1) + " gives " + std::to_string(layers[l - 1].out));
    for (int64_t i = 0; i < static_cast<int64_t>(layer.out) * layer.in; ++i)
      if (!std::isfinite(layer.weight[i])) expect(false, name + " weights must be finite");
    for (int i = 0; layer.bias != nullptr && i < layer.out; ++i)
      if (!std::isfinite(layer.bias[i])) expect(false, name + " bias must be finite");

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
      if (bf16 && l > 0 && l < count - 1) {
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

void MlpModel::check(const MlpCandidates& c) const {
  expect(c.users >= 0 && c.indptr != nullptr, "candidates need users >= 0 and an indptr");
  expect(c.indptr[0] == 0, "indptr must start at 0");
  // The per-entry loops test first and build a message only for a bad entry: a message
  // built for every entry cost as much as a serving batch's whole first layer.
  for (int64_t u = 0; u < c.users; ++u)
    if (c.indptr[u] > c.indptr[u + 1]) expect(false, "indptr must not decrease");
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
    for (int64_t i = 0; i < total; ++i)
      if (c.ids[i] < 0 || c.ids[i] >= c.items)
        expect(false, "candidate id " + std::to_string(c.ids[i]) + " is outside [0, " +
                          std::to_string(c.items) + ")");
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

void MlpModel::score_candidates(const MlpCandidates& c, int num_threads, float* out) const {
  check(c);
  const int64_t total = c.indptr[c.users];
  if (total == 0) return;
  const Packed& first = layers_.front();
  const int part = part_width();
  const int count = layer_count();
  // Under bfloat16 the layers between the first and the last run on the bfloat16 kernel;
  // the first (raw features) and the last stay float32 (see recfuse/mlp.hpp).
  const bool bf16 = precision_ == MlpPrecision::Bfloat16;
  auto bf16_layer = [&](int l) { return bf16 && l > 0 && l < count - 1; };
  const kernels::MlpLayerFunction f32_gemm = float32_layer();
  const kernels::MlpLayerFunction bf16_gemm =
      kernel_ == MlpKernel::Amx ? kernels::mlp_layer_amx() : kernels::mlp_layer_avx512bf16();

  // Input columns: [user blocks | item blocks | candidate block]. Per candidate the kernel
  // multiplies the columns from `start` (after the item blocks when an item part covers
  // them).
  int user_width = 0, item_width = 0;
  for (const MlpBlock& b : c.user_blocks) user_width += b.width;
  for (const MlpBlock& b : c.item_blocks) item_width += b.width;
  const int start = user_width + (c.item_part != nullptr ? item_width : 0);
  const int x_cols = input_width() - start;
  const int x_stride = round_up(std::max(x_cols, 1), 32);

  // The user part of every user: b1 + W1u·[u | uf] (float32), one row of `part` floats.
  std::vector<float> user_part(static_cast<size_t>(c.users) * part);
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static) if (c.users * user_width > 65536)
  for (int64_t u = 0; u < c.users; ++u) {
    float* z = user_part.data() + u * part;
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

  const int64_t blocks = (total + kMlpBlockRows - 1) / kMlpBlockRows;
  const int used = static_cast<int>(std::min<int64_t>(threads, blocks));
#pragma omp parallel num_threads(used)
  {
    Scratch s;
    const size_t h_size = static_cast<size_t>(kMlpBlockRows) * std::max(max_padded_width_, 32);
    s.x_f32.assign(static_cast<size_t>(kMlpBlockRows) * x_stride, 0.0f);
    s.h_f32[0].assign(h_size, 0.0f);
    s.h_f32[1].assign(h_size, 0.0f);
    if (bf16) {
      s.h_bf16[0].assign(h_size, 0);
      s.h_bf16[1].assign(h_size, 0);
    }
    s.last.assign(static_cast<size_t>(kMlpBlockRows) * kMlpPanel, 0.0f);
#pragma omp for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t r0 = block * kMlpBlockRows;
      const int rows = static_cast<int>(std::min<int64_t>(kMlpBlockRows, total - r0));
      // The user of each row (users without candidates are skipped).
      int64_t u = std::upper_bound(c.indptr, c.indptr + c.users + 1, r0) - c.indptr - 1;
      for (int i = 0; i < rows; ++i) {
        const int64_t r = r0 + i;
        while (c.indptr[u + 1] <= r) ++u;
        s.add0[i] = user_part.data() + u * part;
        s.add1[i] = c.item_part != nullptr ? c.item_part + c.ids[r] * part : nullptr;
      }
      // Gather the multiplied columns of each row into the block buffer.
      for (int i = 0; i < rows; ++i) {
        const int64_t r = r0 + i;
        float* x = s.x_f32.data() + static_cast<size_t>(i) * x_stride;
        if (c.item_part == nullptr) {
          for (const MlpBlock& b : c.item_blocks) {
            std::memcpy(x, b.data + c.ids[r] * b.width, sizeof(float) * b.width);
            x += b.width;
          }
        }
        if (c.candidate_block.width > 0)
          std::memcpy(x, c.candidate_block.data + r * c.candidate_block.width,
                      sizeof(float) * c.candidate_block.width);
      }
      // Layer after layer on the block.
      const void* A = s.x_f32.data();
      bool a_bf16 = false;
      int lda = x_stride;
      for (int l = 0; l < count; ++l) {
        const Packed& p = layers_[l];
        if (!p.dot.empty()) {  // the final one-output layer: a dot product per row
          for (int i = 0; i < rows; ++i) {
            float z = p.bias[0];
            if (a_bf16) {
              const uint16_t* h = static_cast<const uint16_t*>(A) + static_cast<size_t>(i) * lda;
              for (int k = 0; k < p.in; ++k) z += from_bfloat16(h[k]) * p.dot[k];
            } else {
              const float* h = static_cast<const float*>(A) + static_cast<size_t>(i) * lda;
              for (int k = 0; k < p.in; ++k) z += h[k] * p.dot[k];
            }
            out[r0 + i] = activate_scalar(p.activation, z);
          }
          break;
        }
        MlpLayerArgs g;
        g.A = A;
        g.lda = lda;
        g.rows = rows;
        g.activation = p.activation;
        g.panels = p.panels;
        if (l == 0) {
          g.K = x_cols;
          g.add0 = s.add0;
          g.add1 = c.item_part != nullptr ? s.add1 : nullptr;
        } else {
          g.K = p.in;
          for (int i = 0; i < rows; ++i) s.bias_rows[i] = p.bias.data();
          g.add0 = s.bias_rows;
          g.add1 = nullptr;
        }
        const bool in_bf16 = bf16_layer(l);
        if (in_bf16) {
          g.packed = p.bf16.data();
          g.panel_stride = static_cast<int64_t>(p.bf16_pairs) * 2 * kMlpPanel;
        } else {
          g.packed = p.f32.data() + static_cast<size_t>(l == 0 ? start : 0) * kMlpPanel;
          g.panel_stride = static_cast<int64_t>(p.in) * kMlpPanel;
        }
        if (l == count - 1) {  // a single-layer model: float outputs, column 0 is the score
          g.C = s.last.data();
          g.ldc = kMlpPanel;
          g.c_bf16 = false;
          f32_gemm(g);
          for (int i = 0; i < rows; ++i) out[r0 + i] = s.last[static_cast<size_t>(i) * kMlpPanel];
          break;
        }
        const bool out_bf16 = bf16_layer(l + 1);
        g.ldc = p.panels * kMlpPanel;
        g.c_bf16 = out_bf16 && in_bf16;
        g.C = g.c_bf16 ? static_cast<void*>(s.h_bf16[l % 2].data()) : s.h_f32[l % 2].data();
        (in_bf16 ? bf16_gemm : f32_gemm)(g);
        if (out_bf16 && !in_bf16) {  // float32 layer before a bfloat16 one
          kernels::mlp_rows_to_bfloat16(s.h_f32[l % 2].data(), s.h_bf16[l % 2].data(),
                                        static_cast<int64_t>(rows) * g.ldc);
          g.C = s.h_bf16[l % 2].data();
        }
        A = g.C;
        a_bf16 = out_bf16;
        lda = g.ldc;
      }
    }
  }
}

void MlpModel::rank(const MlpCandidates& c, int k, int num_threads, int64_t* ids,
                    float* scores) const {
  expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
  check(c);
  expect(c.ids != nullptr, "rank needs candidate ids");
  const int64_t total = c.indptr[c.users];
  std::vector<float> all(static_cast<size_t>(total));
  score_candidates(c, num_threads, all.data());
  const int threads = resolve_threads(num_threads);
#pragma omp parallel num_threads(threads) if (c.users > 1)
  {
    std::vector<int64_t> order;
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < c.users; ++u) {
      const int64_t begin = c.indptr[u], end = c.indptr[u + 1];
      order.clear();
      for (int64_t r = begin; r < end; ++r)
        if (all[r] > -std::numeric_limits<float>::infinity()) order.push_back(r);  // not NaN
      // Better: higher score, then smaller id; a repeated candidate has the same score
      // (the same inputs give the same bits), so repeats sort next to each other.
      auto better = [&](int64_t a, int64_t b) {
        return all[a] > all[b] || (all[a] == all[b] && c.ids[a] < c.ids[b]);
      };
      // Take the best `want` in order; grow `want` when repeats left fewer than k ids.
      int64_t want = std::min<int64_t>(k, static_cast<int64_t>(order.size()));
      int found = 0;
      while (true) {
        std::partial_sort(order.begin(), order.begin() + want, order.end(), better);
        found = 0;
        for (int64_t i = 0; i < want && found < k; ++i) {
          if (found > 0 && c.ids[order[i]] == ids[u * k + found - 1]) continue;
          ids[u * k + found] = c.ids[order[i]];
          scores[u * k + found] = all[order[i]];
          ++found;
        }
        if (found == k || want == static_cast<int64_t>(order.size())) break;
        want = std::min<int64_t>(2 * want, static_cast<int64_t>(order.size()));
      }
      for (int i = found; i < k; ++i) {
        ids[u * k + i] = -1;
        scores[u * k + i] = -std::numeric_limits<float>::infinity();
      }
    }
  }
}

void MlpModel::item_part(const std::vector<MlpBlock>& item_blocks, int64_t items, int column,
                         int num_threads, float* out) const {
  int width = 0;
  for (const MlpBlock& b : item_blocks) {
    expect(b.data != nullptr && b.width >= 0, "item blocks need data");
    width += b.width;
  }
  expect(column >= 0 && column + width <= input_width(),
         "item blocks at column " + std::to_string(column) + " with " + std::to_string(width) +
             " columns do not fit the model's " + std::to_string(input_width()) + " inputs");
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

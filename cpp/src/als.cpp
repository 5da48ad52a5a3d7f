// Thread layout and dispatch for the ALS kernels; the row math lives in als_kernels_impl.inc.
#include "recfuse/als.hpp"
#include "recfuse/memory.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "als_kernels.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {

namespace {

template <class T>
const kernels::AlsRowKernels<T>& row_kernels(int k);

template <>
const kernels::AlsRowKernels<float>& row_kernels<float>(int k) {
  return for_level(&kernels::generic::als_kernels_float, &kernels::avx2::als_kernels_float,
                   &kernels::avx512::als_kernels_float)(k);
}

template <>
const kernels::AlsRowKernels<double>& row_kernels<double>(int k) {
  return for_level(&kernels::generic::als_kernels_double, &kernels::avx2::als_kernels_double,
                   &kernels::avx512::als_kernels_double)(k);
}

// The batched Cholesky keeps vectors in its scratch: start it on a 64-byte boundary.
template <class T>
T* aligned_scratch(std::vector<T>& scratch) {
  const auto address = reinterpret_cast<uintptr_t>(scratch.data());
  const uintptr_t aligned = (address + 63) & ~static_cast<uintptr_t>(63);
  return reinterpret_cast<T*>(aligned);
}

}  // namespace

namespace {

// A copy of an array on transparent huge pages (when `worth_it` and huge_page_alloc gives
// them), made with `threads` threads; otherwise data() is the original array.
template <class T>
class HugePageCopy {
 public:
  HugePageCopy(const T* source, size_t count, bool worth_it, int threads)
      : source_(source), bytes_(count * sizeof(T)) {
    T* copy = worth_it ? static_cast<T*>(huge_page_alloc(bytes_)) : nullptr;
    if (copy == nullptr) return;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t i = 0; i < count; ++i) copy[i] = source[i];
    copy_ = copy;
  }
  ~HugePageCopy() { huge_page_free(copy_, bytes_); }
  HugePageCopy(const HugePageCopy&) = delete;
  HugePageCopy& operator=(const HugePageCopy&) = delete;
  const T* data() const { return copy_ != nullptr ? copy_ : source_; }

 private:
  const T* source_;
  size_t bytes_;
  T* copy_ = nullptr;
};

// Threads for a call of about `flops` multiply-adds: the requested number (0: all), but no
// more than keeps ~1 MFLOP per thread, so tiny calls do not pay for waking and joining
// threads (costly when the machine is oversubscribed).
int thread_count(int requested, double flops) {
  const int wanted = resolve_threads(requested);
  const double useful = flops / 1e6;
  return useful < 1 ? 1 : (useful < wanted ? static_cast<int>(useful) : wanted);
}

template <class T>
void check_csr(const CsrView<T>& R, int num_threads) {
  if (R.rows < 0 || R.cols < 0) throw std::invalid_argument("CSR shape must be non-negative");
  if (R.indptr[0] != 0) throw std::invalid_argument("CSR indptr must start at 0");
  for (int64_t u = 0; u < R.rows; ++u) {
    if (R.indptr[u + 1] < R.indptr[u]) {
      throw std::invalid_argument("CSR indptr must be non-decreasing (row " + std::to_string(u) +
                                  ")");
    }
  }
  const int64_t nnz = R.indptr[R.rows];
  bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static) \
    num_threads(resolve_threads(num_threads)) if (nnz > (1 << 20))
  for (int64_t t = 0; t < nnz; ++t) bad = bad || R.indices[t] < 0 || R.indices[t] >= R.cols;
  if (bad) {
    throw std::invalid_argument("CSR column index out of range [0, " + std::to_string(R.cols) +
                                ")");
  }
}

template <class T>
std::vector<T> regularised_gram(const T* Y, int64_t n, int k, const T* gram_or_null, T reg,
                                int num_threads) {
  std::vector<T> G(static_cast<size_t>(k) * k);
  if (gram_or_null != nullptr) {
    for (size_t i = 0; i < G.size(); ++i) G[i] = gram_or_null[i];
  } else {
    gram(Y, n, k, G.data(), num_threads);
  }
  for (int a = 0; a < k; ++a) G[static_cast<size_t>(a) * k + a] += reg;
  return G;
}

// Rows with at most this many entries are solved by the Woodbury identity (the kernels'
// solve_woodbury): about n²k/2 + n³/6 multiply-adds against nk²/2 + k³/6 for building and
// factoring the k x k system, but the batched k x k solve runs nearer the machine's peak.
// Measured on a 5M-entry power-law set (2 threads, Zen 4): k = 128 gained most with rows up to
// 128 entries (half-sweeps 1.9 + 1.7 s -> 1.05 + 1.30 s), k = 64 with rows up to 32 (a few
// percent); k²/128 gives both. Rechecked after the tiled build and the dot blocks: k²/64 and
// k²/256 were 2-20% slower at both sizes.
int64_t woodbury_limit(int k) { return static_cast<int64_t>(k) * k / 128; }

// L⁻¹ (lower triangular, row-major, in T) for G = LLᵀ, computed in double; empty when G is not
// positive definite or its condition number (1-norm) is above what the Woodbury identity
// tolerates in T: it subtracts a correction from G⁻¹b, so G's conditioning multiplies the
// rounding errors. The condition is taken over the dimensions Y uses: a zero column of Y
// (G: λ on the diagonal, zeros beside it; the padding of recfuse._als.cpu.training_width)
// takes no part in any row's solve, whose solution there is exactly 0, but with λ small
// against YᵀY it would make G look ill conditioned and turn the Woodbury path off.
template <class T>
std::vector<T> inverse_factor_if_well_conditioned(const std::vector<T>& G, int k, T reg) {
  const double limit = sizeof(T) == 4 ? 1e3 : 1e10;
  const size_t kk = static_cast<size_t>(k);
  std::vector<size_t> used;  // the dimensions of Y's nonzero columns
  for (size_t a = 0; a < kk; ++a) {
    bool zero_column = G[a * kk + a] == reg;
    for (size_t b = 0; b < kk && zero_column; ++b) zero_column = b == a || G[a * kk + b] == 0;
    if (!zero_column) used.push_back(a);
  }
  std::vector<double> Lf(kk * kk, 0.0), Li(kk * kk, 0.0);
  for (size_t j = 0; j < kk; ++j) {  // G = LLᵀ
    for (size_t i = j; i < kk; ++i) {
      double value = static_cast<double>(G[i * kk + j]);
      for (size_t p = 0; p < j; ++p) value -= Lf[i * kk + p] * Lf[j * kk + p];
      if (i == j) {
        if (!(value > 0)) return {};
        Lf[j * kk + j] = std::sqrt(value);
      } else {
        Lf[i * kk + j] = value / Lf[j * kk + j];
      }
    }
  }
  for (size_t c = 0; c < kk; ++c) {  // column c of L⁻¹: L y = e_c
    for (size_t i = c; i < kk; ++i) {
      double value = i == c ? 1.0 : 0.0;
      for (size_t p = c; p < i; ++p) value -= Lf[i * kk + p] * Li[p * kk + c];
      Li[i * kk + c] = value / Lf[i * kk + i];
    }
  }
  // ‖G‖₁ ‖G⁻¹‖₁ over the used dimensions (G and G⁻¹ have no entries between them and the
  // others), with G⁻¹ = L⁻ᵀL⁻¹: entry (a, c) = Σ_{p >= max(a, c)} Li[p][a] Li[p][c].
  double norm = 0, inverse_norm = 0;
  for (const size_t c : used) {
    double column = 0, inverse_column = 0;
    for (const size_t a : used) {
      column += std::fabs(static_cast<double>(G[a * kk + c]));
      double entry = 0;
      for (size_t p = a > c ? a : c; p < kk; ++p) entry += Li[p * kk + a] * Li[p * kk + c];
      inverse_column += std::fabs(entry);
    }
    norm = column > norm ? column : norm;
    inverse_norm = inverse_column > inverse_norm ? inverse_column : inverse_norm;
  }
  if (!(norm * inverse_norm <= limit)) return {};
  std::vector<T> out(kk * kk);
  for (size_t i = 0; i < kk * kk; ++i) out[i] = static_cast<T>(Li[i]);
  return out;
}

// Solves the rows of R whose entries are few enough for the Woodbury identity (kernels'
// solve_woodbury) into X, when the kernels have it, G = YᵀY + λI is well conditioned and the
// work it saves is worth the table W = Y L⁻ᵀ it needs (cols x k² multiply-adds to make);
// returns the other rows, to be solved the usual way (those with a negative weight among them).
template <class T>
std::vector<int64_t> solve_short_rows(const CsrView<T>& R, const T* Y, const std::vector<T>& G,
                                      int k, const AlsParams<T>& params,
                                      const kernels::AlsRowKernels<T>& kern, int threads, T* X) {
  std::vector<int64_t> rest, short_rows;
  const int64_t limit = kern.solve_woodbury != nullptr ? woodbury_limit(k) : -1;
  const double kd = k;
  double saved = 0;
  for (int64_t u = 0; u < R.rows; ++u) {
    const double n = static_cast<double>(R.indptr[u + 1] - R.indptr[u]);
    if (n <= limit) {
      short_rows.push_back(u);
      saved += n * kd * kd / 2 + kd * kd * kd / 6 - n * n * kd / 2 - n * n * n / 6;
    } else {
      rest.push_back(u);
    }
  }
  const std::vector<T> L_inverse =
      !short_rows.empty() && saved > 2 * R.cols * kd * kd
          ? inverse_factor_if_well_conditioned(G, k, params.regularization)
          : std::vector<T>();
  if (L_inverse.empty()) {
    rest.resize(static_cast<size_t>(R.rows));
    for (int64_t u = 0; u < R.rows; ++u) rest[u] = u;
    return rest;
  }
  std::vector<T> L_inverse_t(L_inverse.size());  // (L⁻¹)ᵀ, for multiply_rows
  for (int a = 0; a < k; ++a) {
    for (int c = 0; c < k; ++c) {
      L_inverse_t[static_cast<size_t>(c) * k + a] = L_inverse[static_cast<size_t>(a) * k + c];
    }
  }
  T* const given = params.woodbury_table;
  LargeArray<T> W_array(given != nullptr ? 0 : static_cast<size_t>(R.cols) * k,
                        R.indptr[R.rows] > 4 * R.cols);
  T* W = given != nullptr ? given : W_array.get();  // row i: L⁻¹ y_i
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t begin = 0; begin < R.cols; begin += 256) {
    const int64_t end = begin + 256 < R.cols ? begin + 256 : R.cols;
    kern.multiply_rows(L_inverse_t.data(), Y, begin, end, W);
  }
  const int64_t count = static_cast<int64_t>(short_rows.size());
  std::vector<char> solved(static_cast<size_t>(count));
  const bool raw = params.confidence == Confidence::Raw;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> scratch(static_cast<size_t>(kernels::woodbury_scratch(limit, k)));
#pragma omp for schedule(dynamic, 64)
    for (int64_t s = 0; s < count; ++s) {
      const int64_t u = short_rows[s], start = R.indptr[u];
      if (s + 1 < count) kernels::prefetch_row_start(R, short_rows[s + 1], W, k);
      solved[s] = kern.solve_woodbury(R.indices + start, R.data + start, R.indptr[u + 1] - start,
                                      W, L_inverse.data(), params.alpha, raw, X + u * k,
                                      scratch.data());
    }
  }
  for (int64_t s = 0; s < count; ++s) {
    if (!solved[s]) rest.push_back(short_rows[s]);
  }
  return rest;
}

}  // namespace

template <class T>
void gram(const T* Y, int64_t n, int k, T* G, int num_threads) {
  if (k <= 0) throw std::invalid_argument("factors must be positive");
  const auto& kern = row_kernels<T>(k);
  for (int64_t i = 0; i < static_cast<int64_t>(k) * k; ++i) G[i] = 0;
  // Each thread owns the bands of 16 output rows b = t, t + threads, ...; every element is
  // summed over i in ascending order, so the result does not depend on the thread count.
  constexpr int band = 16;
  const int bands = (k + band - 1) / band;
  const int by_work = thread_count(num_threads, static_cast<double>(n) * k * k / 2);
  const int threads = by_work < bands ? by_work : bands;
  const int64_t block = 256;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    for (int64_t begin = 0; begin < n; begin += block) {
      const int64_t end = begin + block < n ? begin + block : n;
      for (int b = t; b < bands; b += nt) {
        kern.gram_rows(Y, begin, end, k, b * band, (b + 1) * band < k ? (b + 1) * band : k, G);
      }
    }
  }
  for (int a = 0; a < k; ++a) {
    for (int b = 0; b < a; ++b) G[static_cast<int64_t>(a) * k + b] = G[static_cast<int64_t>(b) * k + a];
  }
}

template <class T>
int64_t als_half_sweep(const CsrView<T>& R, const T* Y_in, int k, const T* gram_or_null, T* X,
                       const AlsParams<T>& params) {
  if (k <= 0) throw std::invalid_argument("factors must be positive");
  if (params.cg_steps < 0) throw std::invalid_argument("cg_steps must be >= 0");
  check_csr(R, params.num_threads);
  const auto& kern = row_kernels<T>(k);
  const std::vector<T> G =
      regularised_gram(Y_in, R.cols, k, gram_or_null, params.regularization, params.num_threads);
  // Every stored entry reads its factor row from a random place: on huge pages those reads
  // stop missing the TLB, which more than pays for one copy of Y.
  const size_t y_count = static_cast<size_t>(R.cols) * k;
  const bool huge = params.huge_page_copy && R.indptr[R.rows] > 4 * R.cols;
  const int copy_threads = thread_count(params.num_threads, static_cast<double>(y_count));
  const bool raw = params.confidence == Confidence::Raw;
  const bool cholesky = params.solver == Solver::Cholesky;
  const double work = static_cast<double>(R.rows) * k * k * (cholesky ? k / 3.0 : 4.0) +
                      static_cast<double>(R.indptr[R.rows]) * k * (cholesky ? k : 8.0);
  int64_t failed = 0;
  if (cholesky) {
    const int threads = thread_count(params.num_threads, work);
    // Rows with few entries first, by the Woodbury identity; its table is freed before the
    // huge-page copy of Y is made for the rest, so the two are never held together.
    const std::vector<int64_t> rows = solve_short_rows(R, Y_in, G, k, params, kern, threads, X);
    HugePageCopy<T> Y_copy(Y_in, y_count, huge, copy_threads);
    const T* Y = Y_copy.data();
    const int batch = kern.cholesky_rows;
    const int64_t total = static_cast<int64_t>(rows.size());
    const int64_t blocks = (total + batch - 1) / batch;
    const size_t scratch_size = static_cast<size_t>(kernels::cholesky_scratch<T>(k, batch));
#pragma omp parallel num_threads(threads) reduction(+ : failed)
    {
      std::vector<T> scratch(scratch_size);
      T* aligned = aligned_scratch(scratch);
#pragma omp for schedule(dynamic, 8)
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * batch;
        const int count = static_cast<int>(total - first < batch ? total - first : batch);
        failed += kern.solve_cholesky_rows(R, rows.data() + first, count, Y, G.data(), k,
                                           params.alpha, raw, X, aligned);
      }
    }
    return failed;
  }
  HugePageCopy<T> Y_copy(Y_in, y_count, huge, copy_threads);
  const T* Y = Y_copy.data();
  // Rows short enough for the batched CG go kern.cg_rows at a time (in row order, so a row's
  // batch does not depend on the thread count); the others, and every row of the runtime-k
  // kernels, one at a time.
  std::vector<int64_t> batched, alone;
  const int64_t batch_longest =
      kern.solve_cg_rows != nullptr ? kernels::cg_longest_row<T>(k) : -1;
  int64_t longest = 0;
  for (int64_t u = 0; u < R.rows; ++u) {
    const int64_t length = R.indptr[u + 1] - R.indptr[u];
    longest = length > longest ? length : longest;
    (length <= batch_longest ? batched : alone).push_back(u);
  }
  const int64_t cap = kernels::kMaxGatherBytes / (static_cast<int64_t>(k) * sizeof(T));
  const int64_t gather_rows = longest < cap ? longest : cap;
  const int batch = kern.cg_rows > 0 ? kern.cg_rows : 1;
  const int64_t batches = (static_cast<int64_t>(batched.size()) + batch - 1) / batch;
  const int64_t items = batches + static_cast<int64_t>(alone.size());
  const size_t single_size = 4 * static_cast<size_t>(k) + static_cast<size_t>(gather_rows) * k;
  const size_t batch_size =
      batches > 0 ? static_cast<size_t>(kernels::cg_batch_scratch<T>(k, batch)) : 0;
#pragma omp parallel num_threads(thread_count(params.num_threads, work)) reduction(+ : failed)
  {
    std::vector<T> scratch(single_size > batch_size ? single_size : batch_size);
#pragma omp for schedule(dynamic, 64)
    for (int64_t item = 0; item < items; ++item) {
      if (item < batches) {
        const int64_t first = item * batch;
        const int64_t left = static_cast<int64_t>(batched.size()) - first;
        const int count = static_cast<int>(left < batch ? left : batch);
        if (item + 1 < batches) kernels::prefetch_row_start(R, batched[first + count], Y, k);
        failed += kern.solve_cg_rows(R, batched.data() + first, count, Y, G.data(),
                                     params.alpha, raw, params.cg_steps, X, scratch.data());
        continue;
      }
      const int64_t next = item - batches + 1;
      if (next < static_cast<int64_t>(alone.size())) {
        kernels::prefetch_row_start(R, alone[next], Y, k);
      }
      const int64_t u = alone[item - batches], start = R.indptr[u];
      failed += !kern.solve_cg(R.indices + start, R.data + start, R.indptr[u + 1] - start, Y,
                               G.data(), k, params.alpha, raw, params.cg_steps, X + u * k,
                               scratch.data(), gather_rows);
    }
  }
  return failed;
}

template <class T>
double als_data_loss(const CsrView<T>& R, const T* X, const T* Y, int k, const T* gram_or_null,
                     T alpha, Confidence confidence, int num_threads) {
  if (k <= 0) throw std::invalid_argument("factors must be positive");
  check_csr(R, num_threads);
  const auto& kern = row_kernels<T>(k);
  const std::vector<T> G = regularised_gram(Y, R.cols, k, gram_or_null, T(0), num_threads);
  std::vector<double> per_row(static_cast<size_t>(R.rows));
  const bool raw = confidence == Confidence::Raw;
  const double work = static_cast<double>(R.rows) * k * k + static_cast<double>(R.indptr[R.rows]) * k;
#pragma omp parallel num_threads(thread_count(num_threads, work))
  {
    std::vector<T> scratch(static_cast<size_t>(k));
#pragma omp for schedule(dynamic, 256)
    for (int64_t u = 0; u < R.rows; ++u) {
      const int64_t start = R.indptr[u];
      per_row[u] = kern.data_loss_row(R.indices + start, R.data + start, R.indptr[u + 1] - start,
                                      Y, G.data(), k, alpha, raw, X + u * k, scratch.data());
    }
  }
  double total = 0;  // summed in row order: the same for any thread count
  for (double v : per_row) total += v;
  return total;
}

#define RECFUSE_INSTANTIATE(T)                                                              \
  template void gram<T>(const T*, int64_t, int, T*, int);                                   \
  template int64_t als_half_sweep<T>(const CsrView<T>&, const T*, int, const T*, T*,        \
                                     const AlsParams<T>&);                                  \
  template double als_data_loss<T>(const CsrView<T>&, const T*, const T*, int, const T*, T, \
                                   Confidence, int);
RECFUSE_INSTANTIATE(float)
RECFUSE_INSTANTIATE(double)
#undef RECFUSE_INSTANTIATE

}  // namespace recfuse

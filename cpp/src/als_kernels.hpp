// Per-row ALS kernels, compiled once per SIMD level (als_kernels_<level>.cpp defines
// RECFUSE_KERNEL_NS and its compiler flags). Plain loops with `omp simd` so that the
// compiler vectorises them for the level's instruction set. This header must use no
// inline library templates: a copy compiled with AVX-512 flags could otherwise be the one
// the linker keeps for every caller.
#pragma once
#include <cstdint>
#include <limits>

#include "recfuse/als.hpp"

namespace recfuse {
namespace kernels {

// Most bytes of per-thread scratch the CG kernels use to copy a row's factor rows.
constexpr long kMaxGatherBytes = 64L << 20;

// Function table filled by each SIMD level; fixed-size versions for k in {32, 64, 128}.
template <class T>
struct AlsRowKernels {
  // x (k) updated in place; scratch holds at least 4k + gather_rows * k values. False, x
  // untouched, when the row fails (recfuse.reference.conjugate_gradient: a step's p·Ap not
  // a positive finite number, or a result that is not finite).
  bool (*solve_cg)(const int32_t* cols, const T* vals, int64_t nnz, const T* Y, const T* G_reg,
                   int k, T alpha, bool raw, int steps, T* x, T* scratch, int64_t gather_rows);
  // The same CG for the rows rows[0 .. count) of R into X, count <= cg_rows, each with at most
  // cg_longest_row<T>(k) entries, in lockstep; scratch >= cg_batch_scratch<T>(k, cg_rows).
  // A row's result does not depend on the other rows of its batch. Rows that fail are left
  // unchanged; returns their number. Null for the runtime-k kernels and where it does not pay.
  int64_t (*solve_cg_rows)(const CsrView<T>& R, const int64_t* rows, int count, const T* Y,
                           const T* G_reg, T alpha, bool raw, int steps, T* X, T* scratch);
  int cg_rows;  // rows in one solve_cg_rows call
  // Exact solves for the rows rows[0 .. count) of R into X, count <= cholesky_rows.
  // Rows whose system is not positive definite, or whose solution is not finite, are left
  // unchanged; returns their number.
  // scratch holds at least cholesky_scratch<T>(k, cholesky_rows) values.
  int64_t (*solve_cholesky_rows)(const CsrView<T>& R, const int64_t* rows, int count,
                                 const T* Y, const T* G_reg, int k, T alpha, bool raw, T* X,
                                 T* scratch);
  int cholesky_rows;  // rows solved together (SIMD lanes of the batched solver)
  // The exact solve of one row by the Woodbury identity around G_reg = LLᵀ (W: the rows of Y
  // times L⁻ᵀ, from multiply_rows; L_inverse: L⁻¹); false, x untouched, where it does not
  // apply (a negative weight) or fails. scratch >= woodbury_scratch(nnz, k). Null for the
  // runtime-k kernels.
  bool (*solve_woodbury)(const int32_t* cols, const T* vals, int64_t nnz, const T* W,
                         const T* L_inverse, T alpha, bool raw, T* x, T* scratch);
  // out[i] = Gᵀ Y[i] for the rows [begin, end), G k x k row-major. Null likewise.
  void (*multiply_rows)(const T* G, const T* Y, int64_t begin, int64_t end, T* out);
  // G[a][a:] += Σ_{i in [begin, end)} Y[i][a] * Y[i][a:] for the rows a in [row_begin, row_end)
  // (row_begin a multiple of 16; entries of G left of the diagonal may be written too).
  void (*gram_rows)(const T* Y, int64_t begin, int64_t end, int k, int row_begin, int row_end,
                    T* G);
  // One row's term of als_data_loss; scratch >= k.
  double (*data_loss_row)(const int32_t* cols, const T* vals, int64_t nnz, const T* Y,
                          const T* G, int k, T alpha, bool raw, const T* x, T* scratch);
};

// Prefetches the factor rows of row u's first stored entries into L2: called for the next row
// while the current one is solved, since the kernels' own prefetching only looks ahead within
// a row. Static: the kernels of every SIMD level call it, and each file keeps its own copy
// (an inline one could be merged with the copy compiled with AVX-512 flags).
template <class T>
static inline void prefetch_row_start(const CsrView<T>& R, int64_t u, const T* Y, int k) {
  constexpr int64_t kRowsAhead = 16;
  const int64_t begin = R.indptr[u];
  const int64_t end = R.indptr[u + 1] < begin + kRowsAhead ? R.indptr[u + 1] : begin + kRowsAhead;
  const int64_t bytes = static_cast<int64_t>(k) * static_cast<int64_t>(sizeof(T));
  for (int64_t t = begin; t < end; ++t) {
    const char* row = reinterpret_cast<const char*>(Y + static_cast<int64_t>(R.indices[t]) * k);
    for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(row + line, 0, 2);
  }
}

// solve_woodbury's layout for a row of n entries: S's rows are woodbury_ld(n) values apart (n
// rounded up to whole vectors of every SIMD level) and its scaled table rows are padded to
// woodbury_rows(n) (whole blocks of dot products). Static: each SIMD-level file keeps its own
// copy, so none compiled with AVX-512 flags can be the one the linker keeps.
static constexpr long woodbury_ld(long n) { return (n + 15) / 16 * 16; }
static constexpr long woodbury_rows(long n) { return (n + 3) / 4 * 4; }

// Values of T solve_woodbury needs as scratch for a row of n entries: S (n x woodbury_ld(n)),
// two vectors of woodbury_ld(n), K values and the row's scaled table rows.
inline long woodbury_scratch(long n, int k) {
  const long ld = woodbury_ld(n);
  return n * ld + 2 * ld + k + woodbury_rows(n) * k;
}

// Bytes of one row's factor rows that the batched CG copies (longer rows run alone).
constexpr long kCgCopyBytes = 128L << 10;

// The longest row the batched CG takes (kernels use it as a constant).
template <class T>
constexpr long cg_longest_row(int k) { return kCgCopyBytes / (static_cast<long>(k) * sizeof(T)); }

template <class T>
inline long cg_batch_scratch(int k, int rows) {
  return 4L * rows * k + rows * cg_longest_row<T>(k) * k;
}

// Bytes of weighted factor rows the Cholesky build stages at a time, a quarter of L1 (the
// rows themselves are read in place).
constexpr int kStageBytes = 8192;

// Entries the Cholesky build stages at a time: kStageBytes of weighted rows, at least four
// (kernels use it as a constant).
template <class T>
constexpr int staged_entries(int k) {
  return kStageBytes / (k * static_cast<int>(sizeof(T))) > 4
             ? kStageBytes / (k * static_cast<int>(sizeof(T)))
             : 4;
}

// Values of T in the batched Cholesky's scratch (fixed k) for `rows` rows solved together.
template <class T>
inline long cholesky_scratch(int k, int rows) {
  const long kk = static_cast<long>(k) * k;
  // The stage, the interleaved systems (K x K, then two K-vectors, per row), each row's own
  // system and right-hand side; + 64: to align the interleaved batch.
  return static_cast<long>(staged_entries<T>(k)) * k + (kk + 2L * k) * rows + (kk + k) * rows +
         64;
}

#define RECFUSE_DECLARE_LEVEL(ns)                       \
  namespace ns {                                        \
  const AlsRowKernels<float>& als_kernels_float(int k);      \
  const AlsRowKernels<double>& als_kernels_double(int k);    \
  }
RECFUSE_DECLARE_LEVEL(generic)
RECFUSE_DECLARE_LEVEL(avx2)
RECFUSE_DECLARE_LEVEL(avx512)
#undef RECFUSE_DECLARE_LEVEL

}  // namespace kernels
}  // namespace recfuse

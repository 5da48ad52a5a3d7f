// Implicit-feedback ALS on the CPU: the contract is recfuse.reference (Python).
//
// A half-sweep re-solves every row u of X against fixed factors Y:
//   (YᵀY + λI + Σ_i w_ui y_i y_iᵀ) x_u = Σ_i q_ui y_i
// where, for a stored value r: Linear confidence c = 1 + alpha r, Raw confidence c = |r|;
// w = c - 1 and q = c when r > 0, else 0.
#pragma once
#include <cstddef>
#include <cstdint>

namespace recfuse {

enum class Confidence { Linear, Raw };
enum class Solver { ConjugateGradient, Cholesky };

// A CSR matrix in canonical form (sorted, unique column indices per row).
template <class T>
struct CsrView {
  const int64_t* indptr;
  const int32_t* indices;
  const T* data;
  int64_t rows;
  int64_t cols;
};

template <class T>
struct AlsParams {
  T regularization = T(0.01);
  T alpha = T(1);
  Confidence confidence = Confidence::Linear;
  Solver solver = Solver::ConjugateGradient;
  int cg_steps = 3;
  int num_threads = 0;  // 0: OpenMP's default
  // Whether a half-sweep may first copy Y onto transparent huge pages (when its rows are read
  // often enough to pay for it). False when Y already lives there (huge_page_alloc): a fit
  // that keeps both tables on huge pages pays no copy, and no fresh pages, per half-sweep.
  bool huge_page_copy = true;
  // Cholesky: room for at least Y's rows x k values that the rows solved by the Woodbury
  // identity use for their table (L⁻¹ y_i), or nullptr (each half-sweep maps its own). A
  // fit passes one it keeps, so that no half-sweep pays for fresh pages.
  T* woodbury_table = nullptr;
};

// G = YᵀY (k x k, full symmetric, row-major). Deterministic for any thread count.
template <class T>
void gram(const T* Y, int64_t n, int k, T* G, int num_threads);

// Re-solve every row of X (rows x k, in/out; the CG start) against Y (cols x k).
// `gram_or_null` may pass a precomputed YᵀY. Returns the number of rows that failed
// (recfuse.reference: a Cholesky system not positive definite, a CG step's p·Ap not a
// positive finite number, or a non-finite solution); those rows are left unchanged.
template <class T>
int64_t als_half_sweep(const CsrView<T>& R, const T* Y, int k, const T* gram_or_null, T* X,
                       const AlsParams<T>& params);

// Σ_u [x_uᵀ YᵀY x_u + Σ_i (q_ui - 2 q_ui d_ui + w_ui d_ui²)], d_ui = x_u·y_i, in double:
// the unnormalised, unregularised part of the loss in recfuse.reference.als_loss.
template <class T>
double als_data_loss(const CsrView<T>& R, const T* X, const T* Y, int k, const T* gram_or_null,
                     T alpha, Confidence confidence, int num_threads);

}  // namespace recfuse

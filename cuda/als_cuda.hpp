// Implicit-feedback ALS on a CUDA device: the same contract as recfuse/als.hpp (CPU) and
// recfuse.reference (Python). A plain C++ header (no CUDA types) so that the pybind11
// module compiles with the host compiler; everything CUDA lives in als.cu.
//
// Host-array functions (gram, als_half_sweep, als_data_loss) copy their inputs to the
// current device, run there and copy the results back; they synchronise before returning.
// AlsTrainer keeps both CSR matrices and both factor matrices resident on the device.
//
// Errors: bad arguments throw std::invalid_argument (Python ValueError), CUDA failures
// throw std::runtime_error carrying the CUDA error name and string.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "recfuse/als.hpp"

namespace recfuse {
namespace cuda {

// Number of CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count() noexcept;

// Why device_count() is 0 ("" when it is not): the CUDA runtime's error, or a missing driver.
std::string device_error() noexcept;

// The device's name; throws std::invalid_argument for an index out of range.
std::string device_name(int index);

// CG keeps a row's factors in registers: k <= cg_max_factors().
constexpr int cg_max_factors() { return 1024; }

// Cholesky keeps the k x k system in shared memory: the largest k that fits on the current
// device for float (double_precision = false) or double.
int cholesky_max_factors(bool double_precision);

// G = YᵀY (k x k, row-major) for host Y (n x k).
template <class T>
void gram(const T* Y, int64_t n, int k, T* G);

// Re-solve every row of host X (rows x k, in/out) against host Y (cols x k); the contract
// of recfuse::als_half_sweep. params.num_threads is ignored. Returns the number of rows that
// failed (recfuse.reference: a Cholesky system not positive definite, a CG step's p·Ap not
// a positive finite number, or a non-finite solution); those rows are left unchanged.
template <class T>
int64_t als_half_sweep(const CsrView<T>& R, const T* Y, int k, const T* gram_or_null, T* X,
                       const AlsParams<T>& params);

// The contract of recfuse::als_data_loss, accumulated in double on the device.
template <class T>
double als_data_loss(const CsrView<T>& R, const T* X, const T* Y, int k, const T* gram_or_null,
                     T alpha, Confidence confidence);

// Device-resident training state. `item_users` must be the transpose of `user_items`
// (checked: shapes and nnz). The host arrays are only read during construction.
// Methods may be called from any thread (they serialise on an internal mutex) and
// synchronise the device before returning.
template <class T>
class AlsTrainer {
 public:
  using value_type = T;

  AlsTrainer(const CsrView<T>& user_items, const CsrView<T>& item_users, const T* X,
             const T* Y, int k, const AlsParams<T>& params);
  ~AlsTrainer();
  AlsTrainer(const AlsTrainer&) = delete;
  AlsTrainer& operator=(const AlsTrainer&) = delete;

  int64_t sweep_users();  // X <- solve against Y (user_items)
  int64_t sweep_items();  // Y <- solve against X (item_users)
  double data_loss();     // als_data_loss(user_items, X, Y)
  void factors(T* X, T* Y);  // copy both to host buffers (users x k, items x k)

  int64_t users() const;
  int64_t items() const;
  int k() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cuda
}  // namespace recfuse

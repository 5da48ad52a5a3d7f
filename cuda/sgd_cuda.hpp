// Funk SVD by batch-Hogwild SGD on a CUDA device. NOT YET RUN ON A GPU: this code has only
// been compiled (nvcc 13, sm_80 and sm_90); tests/test_gpu_sgd.py is its first check on a
// device. recfuse.SVD does not use it yet (the "sgd" backend family has no cuda entry).
//
// A plain C++ header (no CUDA types), so the pybind11 module compiles with the host compiler.
//
// Each warp takes a batch of `batch` consecutive ratings and runs their updates one after
// the other, the k factors spread over the 32 lanes (k <= kSvdCudaMaxFactors); the warps run
// their batches at the same time without locks (Hogwild: two warps may update the same row
// at once, and the last write wins). The update rule is recfuse.reference.svd_sgd_epoch's.
// When one warp holds every rating (batch >= nnz) an epoch is the sequential reference over
// the ratings in array order, up to the rounding of the warp's tree-summed dot product.
#pragma once
#include <cstdint>

#include "recfuse/sgd.hpp"

namespace recfuse {
namespace cuda {

constexpr int kSvdCudaMaxFactors = 256;

// Runs `epochs` epochs in place on host arrays: the ratings (users, items, ratings; nnz
// entries, visited in array order within each batch), the biases and P (n_users x k),
// Q (n_items x k) are uploaded once and the model is downloaded at the end. Throws
// std::invalid_argument for bad arguments (ids out of range, k too large, batch < 1) and
// std::runtime_error for CUDA failures.
template <class T>
void svd_epochs_hogwild(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz,
                        T global_mean, T* user_bias, T* item_bias, T* P, T* Q, int64_t n_users,
                        int64_t n_items, int k, const SgdRates<T>& rates, bool biased,
                        int epochs, int batch);

}  // namespace cuda
}  // namespace recfuse

// Batch-Hogwild Funk SVD on a CUDA device (see sgd_cuda.hpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "cuda_common.hpp"
#include "sgd_cuda.hpp"

namespace recfuse {
namespace cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// One warp per batch of ratings; lane l holds factors l, l + 32, ... (PerLane of them).
// Factors and biases are read and written through L2 (__ldcg / __stcg): an SM's L1 is not
// kept coherent with the other SMs' writes, and rows read through it went stale for the
// whole epoch on small tables (each SM then trained its own copy; seen on an H200).
template <class T, int PerLane>
__global__ void svd_hogwild_kernel(const int32_t* __restrict__ users,
                                   const int32_t* __restrict__ items,
                                   const T* __restrict__ ratings, int64_t nnz, T mu, T* bu,
                                   T* bi, T* P, T* Q, int k, SgdRates<T> r, bool biased,
                                   int batch) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t start = warp * batch; start < nnz; start += warps * batch) {
    const int64_t stop = start + batch < nnz ? start + batch : nnz;
    for (int64_t t = start; t < stop; ++t) {
      const int64_t u = users[t], i = items[t];
      T* p = P + u * k;
      T* q = Q + i * k;
      T pv[PerLane], qv[PerLane];
      T dot = 0;
#pragma unroll
      for (int j = 0; j < PerLane; ++j) {
        const int f = lane + 32 * j;
        pv[j] = f < k ? __ldcg(p + f) : T(0);
        qv[j] = f < k ? __ldcg(q + f) : T(0);
        dot += pv[j] * qv[j];
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        dot += __shfl_xor_sync(kFullMask, dot, offset);
      }
      T err = 0;
      if (lane == 0) {
        const T b_u = __ldcg(bu + u), b_i = __ldcg(bi + i);
        err = ratings[t] - (mu + b_u + b_i + dot);
        if (biased) {
          __stcg(bu + u, b_u + r.lr_bu * (err - r.reg_bu * b_u));
          __stcg(bi + i, b_i + r.lr_bi * (err - r.reg_bi * b_i));
        }
      }
      err = __shfl_sync(kFullMask, err, 0);
#pragma unroll
      for (int j = 0; j < PerLane; ++j) {
        const int f = lane + 32 * j;
        if (f < k) {
          __stcg(p + f, pv[j] + r.lr_pu * (err * qv[j] - r.reg_pu * pv[j]));
          __stcg(q + f, qv[j] + r.lr_qi * (err * pv[j] - r.reg_qi * qv[j]));
        }
      }
      __syncwarp();  // this rating's writes land before the warp reads the next rows
    }
  }
}

template <class T, int PerLane>
void launch(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz, T mu,
            T* bu, T* bi, T* P, T* Q, int k, const SgdRates<T>& rates, bool biased, int batch,
            int blocks) {
  svd_hogwild_kernel<T, PerLane><<<blocks, 256>>>(users, items, ratings, nnz, mu, bu, bi, P, Q,
                                                  k, rates, biased, batch);
  RECFUSE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

// The device copies of one fit: ratings, biases and factors.
template <class T>
struct SvdHogwild<T>::State {
  int64_t nnz = 0, n_users = 0, n_items = 0;
  int k = 0, blocks = 1;
  int device = 0;  // where the buffers live: epochs and download run there
  DeviceBuffer<int32_t> users, items;
  DeviceBuffer<T> ratings, bu, bi, P, Q;
};

template <class T>
SvdHogwild<T>::SvdHogwild(const int32_t* users, const int32_t* items, const T* ratings,
                          int64_t nnz, const T* user_bias, const T* item_bias, const T* P,
                          const T* Q, int64_t n_users, int64_t n_items, int k)
    : state_(std::make_unique<State>()) {
  if (k < 1 || k > kSvdCudaMaxFactors) {
    throw std::invalid_argument("factors must be in [1, " + std::to_string(kSvdCudaMaxFactors) +
                                "] on the GPU, got " + std::to_string(k));
  }
  if (nnz < 0 || n_users < 0 || n_items < 0) throw std::invalid_argument("negative sizes");
  bool in_range = true;  // one message, after the loop
  for (int64_t t = 0; t < nnz; ++t)
    in_range &= users[t] >= 0 && users[t] < n_users && items[t] >= 0 && items[t] < n_items;
  if (!in_range) {
    throw std::invalid_argument("a user or item id is outside [0, " + std::to_string(n_users) +
                                ") x [0, " + std::to_string(n_items) + ")");
  }
  State& s = *state_;
  s.nnz = nnz;
  s.n_users = n_users;
  s.n_items = n_items;
  s.k = k;
  // Everything on the legacy default stream, in order (kernels wait for these copies).
  const auto size = [](int64_t count) { return static_cast<size_t>(count); };
  s.users.allocate(size(nnz));
  s.items.allocate(size(nnz));
  s.ratings.allocate(size(nnz));
  s.bu.allocate(size(n_users));
  s.bi.allocate(size(n_items));
  s.P.allocate(size(n_users * k));
  s.Q.allocate(size(n_items * k));
  s.users.upload(users, s.users.size(), nullptr);
  s.items.upload(items, s.items.size(), nullptr);
  s.ratings.upload(ratings, s.ratings.size(), nullptr);
  s.bu.upload(user_bias, s.bu.size(), nullptr);
  s.bi.upload(item_bias, s.bi.size(), nullptr);
  s.P.upload(P, s.P.size(), nullptr);
  s.Q.upload(Q, s.Q.size(), nullptr);
  // The host arrays may change once this returns: a pageable copy can return before its DMA.
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
  int sms = 1;
  RECFUSE_CUDA_CHECK(cudaGetDevice(&s.device));
  RECFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, s.device));
  const int64_t resident_blocks = 32LL * sms;  // enough resident warps to hide memory latency
  // Hogwild assumes that two warps seldom update one row at the same time: at most one warp
  // in flight per kRowsPerWarp rows of the smaller side (else, on a small table, most
  // updates of a row overwrite each other and training stalls).
  constexpr int64_t kRowsPerWarp = 16;
  const int64_t spread_blocks = (std::min(n_users, n_items) / kRowsPerWarp + 7) / 8;
  s.blocks = static_cast<int>(std::max<int64_t>(1, std::min(resident_blocks, spread_blocks)));
}

template <class T>
SvdHogwild<T>::~SvdHogwild() = default;

template <class T>
void SvdHogwild<T>::epochs(T global_mean, const SgdRates<T>& rates, bool biased, int epochs,
                           int batch) {
  if (batch < 1) throw std::invalid_argument("batch must be >= 1");
  if (epochs < 0) throw std::invalid_argument("epochs must be >= 0");
  State& s = *state_;
  const DeviceGuard device_guard(s.device);
  const int64_t batches = (s.nnz + batch - 1) / batch;
  // 8 warps per block of 256 threads; no more warps than batches.
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(s.blocks, (batches + 7) / 8)));
  for (int epoch = 0; epoch < epochs && s.nnz > 0; ++epoch) {
    const auto args = [&](auto launcher) {
      launcher(s.users.get(), s.items.get(), s.ratings.get(), s.nnz, global_mean, s.bu.get(),
               s.bi.get(), s.P.get(), s.Q.get(), s.k, rates, biased, batch, blocks);
    };
    if (s.k <= 32) {
      args(launch<T, 1>);
    } else if (s.k <= 64) {
      args(launch<T, 2>);
    } else if (s.k <= 128) {
      args(launch<T, 4>);
    } else {
      args(launch<T, 8>);
    }
  }
}

template <class T>
void SvdHogwild<T>::download(T* user_bias, T* item_bias, T* P, T* Q) const {
  const State& s = *state_;
  const DeviceGuard device_guard(s.device);
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(nullptr));  // the epochs are done (errors surface)
  s.bu.download(user_bias, s.bu.size(), nullptr);
  s.bi.download(item_bias, s.bi.size(), nullptr);
  s.P.download(P, s.P.size(), nullptr);
  s.Q.download(Q, s.Q.size(), nullptr);
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

template <class T>
int64_t SvdHogwild<T>::users() const {
  return state_->n_users;
}

template <class T>
int64_t SvdHogwild<T>::items() const {
  return state_->n_items;
}

template <class T>
int SvdHogwild<T>::factors() const {
  return state_->k;
}

template <class T>
void svd_epochs_hogwild(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz,
                        T global_mean, T* user_bias, T* item_bias, T* P, T* Q, int64_t n_users,
                        int64_t n_items, int k, const SgdRates<T>& rates, bool biased,
                        int epochs, int batch) {
  SvdHogwild<T> fit(users, items, ratings, nnz, user_bias, item_bias, P, Q, n_users, n_items, k);
  fit.epochs(global_mean, rates, biased, epochs, batch);
  fit.download(user_bias, item_bias, P, Q);
}

template class SvdHogwild<float>;
template class SvdHogwild<double>;
template void svd_epochs_hogwild<float>(const int32_t*, const int32_t*, const float*, int64_t,
                                        float, float*, float*, float*, float*, int64_t, int64_t,
                                        int, const SgdRates<float>&, bool, int, int);
template void svd_epochs_hogwild<double>(const int32_t*, const int32_t*, const double*, int64_t,
                                         double, double*, double*, double*, double*, int64_t,
                                         int64_t, int, const SgdRates<double>&, bool, int, int);

}  // namespace cuda
}  // namespace recfuse

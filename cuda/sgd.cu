// Batch-Hogwild Funk SVD on a CUDA device (see sgd_cuda.hpp). NOT YET RUN ON A GPU.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_common.hpp"
#include "sgd_cuda.hpp"

namespace recfuse {
namespace cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// One warp per batch of ratings; lane l holds factors l, l + 32, ... (PerLane of them).
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
        pv[j] = f < k ? p[f] : T(0);
        qv[j] = f < k ? q[f] : T(0);
        dot += pv[j] * qv[j];
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        dot += __shfl_xor_sync(kFullMask, dot, offset);
      }
      T err = 0;
      if (lane == 0) {
        const T b_u = bu[u], b_i = bi[i];
        err = ratings[t] - (mu + b_u + b_i + dot);
        if (biased) {
          bu[u] = b_u + r.lr_bu * (err - r.reg_bu * b_u);
          bi[i] = b_i + r.lr_bi * (err - r.reg_bi * b_i);
        }
      }
      err = __shfl_sync(kFullMask, err, 0);
#pragma unroll
      for (int j = 0; j < PerLane; ++j) {
        const int f = lane + 32 * j;
        if (f < k) {
          p[f] = pv[j] + r.lr_pu * (err * qv[j] - r.reg_pu * pv[j]);
          q[f] = qv[j] + r.lr_qi * (err * pv[j] - r.reg_qi * qv[j]);
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

template <class T>
void svd_epochs_hogwild(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz,
                        T global_mean, T* user_bias, T* item_bias, T* P, T* Q, int64_t n_users,
                        int64_t n_items, int k, const SgdRates<T>& rates, bool biased,
                        int epochs, int batch) {
  if (k < 1 || k > kSvdCudaMaxFactors) {
    throw std::invalid_argument("factors must be in [1, " + std::to_string(kSvdCudaMaxFactors) +
                                "] on the GPU, got " + std::to_string(k));
  }
  if (batch < 1) throw std::invalid_argument("batch must be >= 1");
  if (epochs < 0) throw std::invalid_argument("epochs must be >= 0");
  for (int64_t t = 0; t < nnz; ++t) {
    if (users[t] < 0 || users[t] >= n_users || items[t] < 0 || items[t] >= n_items) {
      throw std::invalid_argument("a user or item id is outside [0, " + std::to_string(n_users) +
                                  ") x [0, " + std::to_string(n_items) + ")");
    }
  }
  // Everything on the legacy default stream, in order; the last download is waited for.
  const auto size = [](int64_t count) { return static_cast<size_t>(count); };
  DeviceBuffer<int32_t> d_users(size(nnz)), d_items(size(nnz));
  DeviceBuffer<T> d_ratings(size(nnz)), d_bu(size(n_users)), d_bi(size(n_items)),
      d_P(size(n_users * k)), d_Q(size(n_items * k));
  d_users.upload(users, d_users.size(), nullptr);
  d_items.upload(items, d_items.size(), nullptr);
  d_ratings.upload(ratings, d_ratings.size(), nullptr);
  d_bu.upload(user_bias, d_bu.size(), nullptr);
  d_bi.upload(item_bias, d_bi.size(), nullptr);
  d_P.upload(P, d_P.size(), nullptr);
  d_Q.upload(Q, d_Q.size(), nullptr);
  int device = 0, sms = 1;
  RECFUSE_CUDA_CHECK(cudaGetDevice(&device));
  RECFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t batches = (nnz + batch - 1) / batch;
  const int64_t wanted_blocks = (batches + 7) / 8;  // 8 warps per block of 256 threads
  const int64_t most_blocks = 32LL * sms;  // enough resident warps to hide memory latency
  const int blocks = static_cast<int>(
      wanted_blocks < 1 ? 1 : (wanted_blocks < most_blocks ? wanted_blocks : most_blocks));
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto args = [&](auto launcher) {
      launcher(d_users.get(), d_items.get(), d_ratings.get(), nnz, global_mean, d_bu.get(),
               d_bi.get(), d_P.get(), d_Q.get(), k, rates, biased, batch, blocks);
    };
    if (k <= 32) {
      args(launch<T, 1>);
    } else if (k <= 64) {
      args(launch<T, 2>);
    } else if (k <= 128) {
      args(launch<T, 4>);
    } else {
      args(launch<T, 8>);
    }
  }
  RECFUSE_CUDA_CHECK(cudaDeviceSynchronize());
  d_bu.download(user_bias, d_bu.size(), nullptr);
  d_bi.download(item_bias, d_bi.size(), nullptr);
  d_P.download(P, d_P.size(), nullptr);
  d_Q.download(Q, d_Q.size(), nullptr);
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

template void svd_epochs_hogwild<float>(const int32_t*, const int32_t*, const float*, int64_t,
                                        float, float*, float*, float*, float*, int64_t, int64_t,
                                        int, const SgdRates<float>&, bool, int, int);
template void svd_epochs_hogwild<double>(const int32_t*, const int32_t*, const double*, int64_t,
                                         double, double*, double*, double*, double*, int64_t,
                                         int64_t, int, const SgdRates<double>&, bool, int, int);

}  // namespace cuda
}  // namespace recfuse

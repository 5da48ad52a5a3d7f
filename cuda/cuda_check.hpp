// Error handling shared by the CUDA translation units: a failed CUDA call throws
// std::runtime_error with the CUDA error's name and text (Python RuntimeError), a bad
// argument std::invalid_argument (Python ValueError).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace recfuse {
namespace cuda {

inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that later calls start clean
  throw std::runtime_error(std::string("CUDA error in ") + what + ": " +
                           cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
}

inline void expect(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace cuda
}  // namespace recfuse

#define RECFUSE_CUDA_CHECK(expr) ::recfuse::cuda::check((expr), #expr)

// What the CUDA translation units share: error handling (a failed CUDA call throws
// std::runtime_error with the CUDA error's name and text, Python RuntimeError; a bad
// argument std::invalid_argument, Python ValueError) and RAII owners of device memory and
// streams.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

// Throws the error of a failed allocation of `bytes` by `what` (cudaMalloc, ...).
[[noreturn]] inline void allocation_failed(cudaError_t status, const char* what, size_t bytes) {
  cudaGetLastError();
  throw std::runtime_error(std::string("CUDA error in ") + what + " of " +
                           std::to_string(bytes) + " bytes: " + cudaGetErrorName(status) + ": " +
                           cudaGetErrorString(status));
}

}  // namespace cuda
}  // namespace recfuse

#define RECFUSE_CUDA_CHECK(expr) ::recfuse::cuda::check((expr), #expr)

namespace recfuse {
namespace cuda {

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device (above the
// default 48 KiB it needs cudaFuncAttributeMaxDynamicSharedMemorySize). The attribute belongs
// to the kernel and device, not to a call, and calls run on several threads at once: it is
// only ever raised, to the largest size asked for so far. (Setting each call's own size let a
// call that needs less lower it between another thread's setting and launch, whose launch then
// failed with cudaErrorInvalidValue.)
inline void raise_dynamic_shared(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int device = 0;
  RECFUSE_CUDA_CHECK(cudaGetDevice(&device));
  // never destroyed: exit() runs static destructors while a daemon thread (a MicroBatcher
  // worker) may still be in a native call that launches a kernel
  static std::mutex& mutex = *new std::mutex;
  static auto& raised = *new std::map<std::pair<const void*, int>, size_t>;  // (kernel, device)
  std::lock_guard<std::mutex> lock(mutex);
  size_t& current = raised[{kernel, device}];
  if (bytes <= current) return;
  RECFUSE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  current = bytes;
}

// raise_dynamic_shared for a __global__ function, as the kernels' launch code passes it.
template <class Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  raise_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
}

// Makes `device` current for a scope and gives the caller's current device back after it:
// objects are placed on the current device (prepare, AlsTrainer, svd_hogwild), so a call on
// an object of another device must not move the caller's later objects there.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    RECFUSE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) RECFUSE_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }  // never throws
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// A device array of T, freed on destruction (never throws from the destructor).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { allocate(count); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Replaces the array by an uninitialised one of `count` values.
  void allocate(size_t count) {
    release();
    if (count == 0) return;
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, count * sizeof(T));
    if (status != cudaSuccess) allocation_failed(status, "cudaMalloc", count * sizeof(T));
    ptr_ = static_cast<T*>(p);
    count_ = count;
  }

  void upload(const T* host, size_t count, cudaStream_t stream) {
    if (count == 0) return;
    RECFUSE_CUDA_CHECK(
        cudaMemcpyAsync(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice, stream));
  }

  void download(T* host, size_t count, cudaStream_t stream) const {
    if (count == 0) return;
    RECFUSE_CUDA_CHECK(
        cudaMemcpyAsync(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// Freed scratch that recfuse's memory pool of a device keeps for the next call instead of
// returning it to the driver at the next synchronisation (above it, the rest goes back).
constexpr uint64_t kScratchPoolKeepBytes = uint64_t(256) << 20;

// recfuse's stream-ordered memory pool on the current device (made on first use, kept for
// the process). Allocating from it costs no cudaMalloc and freeing no device-wide
// synchronisation (cudaFree waits for the whole device), once a call of the same size ran.
// Null on a device without memory pools (cudaDevAttrMemoryPoolsSupported 0: some virtualised
// set-ups), where StreamBuffer falls back to cudaMalloc and cudaFree.
inline cudaMemPool_t scratch_pool() {
  // never destroyed, as raise_dynamic_shared's: a search may still take scratch at exit
  static std::mutex& mutex = *new std::mutex;
  static auto& pools = *new std::vector<cudaMemPool_t>;  // by device; null until made
  int device = 0;
  RECFUSE_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (pools.size() <= static_cast<size_t>(device)) pools.resize(device + 1, nullptr);
  if (pools[device] == nullptr) {
    int supported = 0;
    RECFUSE_CUDA_CHECK(
        cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device));
    if (!supported) return nullptr;
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    RECFUSE_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = kScratchPoolKeepBytes;
    RECFUSE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[device] = pool;
  }
  return pools[device];
}

// Scratch device memory for work on one stream: allocated from scratch_pool() in the
// stream's order and freed in that order when it goes out of scope (the stream must outlive
// it: declare it after the stream). Never throws from the destructor.
template <class T>
class StreamBuffer {
 public:
  StreamBuffer(size_t count, cudaStream_t stream) : stream_(stream) {
    if (count == 0) return;
    void* p = nullptr;
    cudaMemPool_t pool = scratch_pool();
    pooled_ = pool != nullptr;
    const cudaError_t status = pooled_
        ? cudaMallocFromPoolAsync(&p, count * sizeof(T), pool, stream)
        : cudaMalloc(&p, count * sizeof(T));
    if (status != cudaSuccess) {
      allocation_failed(status, pooled_ ? "cudaMallocFromPoolAsync" : "cudaMalloc",
                        count * sizeof(T));
    }
    ptr_ = static_cast<T*>(p);
  }
  ~StreamBuffer() {  // cudaFree waits for the device, so it is in the stream's order too
    if (ptr_ != nullptr) pooled_ ? cudaFreeAsync(ptr_, stream_) : cudaFree(ptr_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t stream_;
  bool pooled_ = true;
};

// A non-blocking stream, destroyed on destruction.
class Stream {
 public:
  Stream() { RECFUSE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const { RECFUSE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace cuda
}  // namespace recfuse

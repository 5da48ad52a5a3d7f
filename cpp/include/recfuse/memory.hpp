// Memory for large arrays: on transparent huge pages where Linux gives them. Tables that a
// kernel reads in random order (ALS factor rows, scatter targets) or streams end to end (the
// top-k item panels) otherwise miss the TLB every 4 KiB; where the kernel's policy is
// "madvise", only memory that asks for huge pages gets them (NumPy asks for its own arrays).
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

namespace recfuse {

// Memory for `bytes` on transparent huge pages where that applies (Linux, 4 MiB or more:
// mmap + madvise(MADV_HUGEPAGE); page aligned, zero filled); nullptr otherwise, and the caller
// uses ordinary memory. Release it with huge_page_free(pointer, bytes).
void* huge_page_alloc(std::size_t bytes);
void huge_page_free(void* pointer, std::size_t bytes);
// Give back the physical pages of huge_page_alloc memory past its first `keep` bytes (the
// whole pages there; the mapping stays, and those pages read as zeros if touched again).
void huge_page_release_tail(void* pointer, std::size_t bytes, std::size_t keep);

// Heap memory for `bytes`, 64-byte aligned (std::free releases it); throws std::bad_alloc.
void* aligned_heap_alloc(std::size_t bytes);

// `count` values of a trivial type, 64-byte aligned and not initialised: on huge pages
// (huge_page_alloc) when `huge` and they are given, else on the heap. Movable, not copyable.
template <class T>
class LargeArray {
  static_assert(std::is_trivial_v<T>, "LargeArray holds plain values");

 public:
  LargeArray() = default;
  explicit LargeArray(std::size_t count, bool huge = true) : bytes_(count * sizeof(T)) {
    if (huge) data_ = static_cast<T*>(huge_page_alloc(bytes_));
    mapped_ = data_ != nullptr;
    if (!mapped_) data_ = static_cast<T*>(aligned_heap_alloc(bytes_));
  }
  ~LargeArray() { release(); }
  LargeArray(LargeArray&& other) noexcept { *this = std::move(other); }
  LargeArray& operator=(LargeArray&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      mapped_ = std::exchange(other.mapped_, false);
    }
    return *this;
  }
  LargeArray(const LargeArray&) = delete;
  LargeArray& operator=(const LargeArray&) = delete;

  T* get() const { return data_; }
  T& operator[](std::size_t i) const { return data_[i]; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  void release();
  T* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool mapped_ = false;
};

void release_large_array(void* data, std::size_t bytes, bool mapped);

template <class T>
void LargeArray<T>::release() {
  release_large_array(data_, bytes_, mapped_);
  data_ = nullptr;
}

}  // namespace recfuse

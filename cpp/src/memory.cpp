// See recfuse/memory.hpp.
#include "recfuse/memory.hpp"

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <cstdlib>
#include <new>

namespace recfuse {

void* huge_page_alloc(std::size_t bytes) {
#ifdef __linux__
  if (bytes < (std::size_t{4} << 20)) return nullptr;
  void* memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return nullptr;
  madvise(memory, bytes, MADV_HUGEPAGE);  // advice: without it the memory still works
  return memory;
#else
  (void)bytes;
  return nullptr;
#endif
}

void huge_page_release_tail(void* pointer, std::size_t bytes, std::size_t keep) {
#ifdef __linux__
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t from = (keep + page - 1) / page * page;
  if (pointer != nullptr && from < bytes)
    madvise(static_cast<char*>(pointer) + from, bytes - from, MADV_DONTNEED);
#else
  (void)pointer;
  (void)bytes;
  (void)keep;
#endif
}

void huge_page_free(void* pointer, std::size_t bytes) {
#ifdef __linux__
  if (pointer != nullptr) munmap(pointer, bytes);
#else
  (void)pointer;
  (void)bytes;
#endif
}

void* aligned_heap_alloc(std::size_t bytes) {
  const std::size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
  void* memory = std::aligned_alloc(64, rounded);
  if (memory == nullptr) throw std::bad_alloc();
  return memory;
}

void release_large_array(void* data, std::size_t bytes, bool mapped) {
  if (mapped)
    huge_page_free(data, bytes);
  else
    std::free(data);
}

}  // namespace recfuse

// Event log -> (user, item) pairs: a counting sort by user, a sort of each user's items,
// then one pass that combines each pair's events. O(events) memory on top of the output.
#include "recfuse/interactions.hpp"

#include <omp.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace recfuse {

namespace {

int thread_count(int requested, int64_t work) {
  int threads = requested > 0 ? requested : omp_get_max_threads();
  // Below ~64k events per thread the fork costs more than it saves.
  const int64_t useful = std::max<int64_t>(1, work / 65536);
  return static_cast<int>(std::min<int64_t>(threads, useful));
}

// Uninitialised scratch for `count` values, on transparent huge pages where Linux gives them:
// the scatter writes to random places of these arrays, and with 4 KiB pages nearly every
// write also misses the TLB (NumPy's own large arrays get huge pages the same way).
template <class T>
class Scratch {
 public:
  explicit Scratch(size_t count) : bytes_(count * sizeof(T)) {
    if (count == 0) return;
#ifdef __linux__
    if (bytes_ >= (size_t{4} << 20)) {
      void* memory = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
      if (memory != MAP_FAILED) {
        madvise(memory, bytes_, MADV_HUGEPAGE);
        data_ = static_cast<T*>(memory);
        mapped_ = true;
        return;
      }
    }
#endif
    data_ = new T[count];
  }
  ~Scratch() {
#ifdef __linux__
    if (mapped_) {
      munmap(data_, bytes_);
      return;
    }
#endif
    delete[] data_;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return data_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  size_t bytes_;
  T* data_ = nullptr;
  bool mapped_ = false;
};

}  // namespace

GroupedPairs group_events(const int32_t* users, const int32_t* items, const double* values,
                          const int64_t* times, const int64_t* multiplicity, int64_t n_events,
                          int64_t n_users, int64_t n_items, Combine combine, int num_threads) {
  if (n_events < 0 || n_users < 0 || n_items < 0 ||
      n_items > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("group_events: bad sizes");
  GroupedPairs out;
  out.indptr.assign(static_cast<size_t>(n_users) + 1, 0);

  // The event range is cut into one contiguous chunk per thread; each thread counts and
  // later scatters its own chunk, so a user's events keep their input order. Per-thread
  // counters cost threads x n_users; more threads than that memory allows are not used.
  const int threads = thread_count(num_threads, n_events);
  const int scatter_threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(threads, n_events / std::max<int64_t>(n_users, 1))));
  auto chunk_begin = [&](int t) { return n_events * t / scatter_threads; };

  // Pass 1: events per user and chunk (and range checks).
  const size_t counters = static_cast<size_t>(scatter_threads) * n_users;
  Scratch<int64_t> offsets(counters);
  std::fill(offsets.get(), offsets.get() + counters, 0);
  int64_t bad_event = -1;
#pragma omp parallel num_threads(scatter_threads)
  {
    const int t = omp_get_thread_num();
    int64_t* count = offsets.get() + static_cast<int64_t>(t) * n_users;
    for (int64_t e = chunk_begin(t); e < chunk_begin(t + 1); ++e) {
      const int32_t u = users[e], i = items[e];
      if (u < 0 || u >= n_users || i < 0 || i >= n_items) {
#pragma omp critical
        bad_event = bad_event < 0 ? e : std::min(bad_event, e);
        break;
      }
      ++count[u];
    }
  }
  if (bad_event >= 0)
    throw std::invalid_argument(
        "group_events: event " + std::to_string(bad_event) + " has user code " +
        std::to_string(users[bad_event]) + " (users: " + std::to_string(n_users) +
        ") and item code " + std::to_string(items[bad_event]) + " (items: " +
        std::to_string(n_items) + ")");
  // Row starts, and each chunk's first slot within each row.
  std::vector<int64_t> start(static_cast<size_t>(n_users) + 1, 0);
  for (int64_t u = 0, running = 0; u < n_users; ++u) {
    start[u] = running;
    for (int t = 0; t < scatter_threads; ++t) {
      int64_t& slot = offsets[static_cast<int64_t>(t) * n_users + u];
      const int64_t count = slot;
      slot = running;
      running += count;
    }
    if (running - start[u] > std::numeric_limits<uint32_t>::max())
      throw std::invalid_argument("group_events: a user has more than 2^32 events");
    start[u + 1] = running;
  }

  // Pass 2: scatter the events by user (sequential reads; later passes touch one user's
  // events as one contiguous block). key = item << 32 | position in the row, so sorting a
  // row's keys orders it by item and keeps input order within a pair.
  // Scratch left uninitialised: every slot is written once below.
  const auto scratch = [n_events](bool wanted) { return static_cast<size_t>(wanted ? n_events : 0); };
  Scratch<uint64_t> keys(scratch(true));
  Scratch<double> row_values(scratch(values));
  Scratch<int64_t> row_times(scratch(times));
  Scratch<int64_t> row_multiplicity(scratch(multiplicity));
#pragma omp parallel num_threads(scatter_threads)
  {
    const int t = omp_get_thread_num();
    int64_t* next = offsets.get() + static_cast<int64_t>(t) * n_users;
    for (int64_t e = chunk_begin(t); e < chunk_begin(t + 1); ++e) {
      const int32_t u = users[e];
      const int64_t slot = next[u]++;
      keys[slot] = (static_cast<uint64_t>(items[e]) << 32) | static_cast<uint64_t>(slot - start[u]);
      if (values) row_values[slot] = values[e];
      if (times) row_times[slot] = times[e];
      if (multiplicity) row_multiplicity[slot] = multiplicity[e];
    }
  }

  // Pass 3: sort each row's keys and count its distinct items.
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads)
  for (int64_t u = 0; u < n_users; ++u) {
    uint64_t* first = keys.get() + start[u];
    uint64_t* last = keys.get() + start[u + 1];
    std::sort(first, last);
    int64_t distinct = 0;
    for (uint64_t* it = first; it != last; ++it)
      if (it == first || (*it >> 32) != (*(it - 1) >> 32)) ++distinct;
    out.indptr[u + 1] = distinct;
  }
  for (int64_t u = 0; u < n_users; ++u) out.indptr[u + 1] += out.indptr[u];

  const int64_t nnz = out.indptr[n_users];
  out.indices.resize(static_cast<size_t>(nnz));
  out.values.resize(static_cast<size_t>(nnz));
  out.counts.resize(static_cast<size_t>(nnz));
  if (times) out.times.resize(static_cast<size_t>(nnz));

  // Pass 4: combine each pair's events (in double; stored as float).
  bool count_overflow = false;
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads) reduction(|| : count_overflow)
  for (int64_t u = 0; u < n_users; ++u) {
    int64_t pair = out.indptr[u] - 1;
    int32_t current = -1;
    double value_sum = 0;
    int64_t count = 0, best_time = 0;
    auto store = [&] {
      if (pair < out.indptr[u]) return;
      out.values[pair] = static_cast<float>(value_sum);
      out.counts[pair] = static_cast<int32_t>(count);
      count_overflow = count_overflow || count > std::numeric_limits<int32_t>::max();
      if (times) out.times[pair] = best_time;
    };
    for (int64_t s = start[u]; s < start[u + 1]; ++s) {
      const int32_t item = static_cast<int32_t>(keys[s] >> 32);
      const int64_t e = start[u] + static_cast<int64_t>(keys[s] & 0xffffffffu);
      const double value = values ? row_values[e] : 1.0;
      const int64_t weight = multiplicity ? row_multiplicity[e] : 1;
      const int64_t time = times ? row_times[e] : 0;
      if (item != current) {  // first event of a new pair
        store();
        current = item;
        ++pair;
        out.indices[pair] = item;
        value_sum = combine == Combine::Count ? static_cast<double>(weight) : value;
        count = weight;
        best_time = time;
        continue;
      }
      count += weight;
      switch (combine) {
        case Combine::Sum: value_sum += value; break;
        case Combine::Max: value_sum = std::max(value_sum, value); break;
        case Combine::Count: value_sum += static_cast<double>(weight); break;
        case Combine::Last:
          // Events of a pair come in input order: a later one wins unless it is older.
          if (time >= best_time) value_sum = value;
          break;
      }
      if (time >= best_time) best_time = time;
    }
    store();
  }
  if (count_overflow)
    throw std::invalid_argument("group_events: a pair has 2^31 events or more");
  return out;
}

}  // namespace recfuse

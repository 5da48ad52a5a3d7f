// Event log -> (user, item) pairs: a counting sort by user, a sort of each user's items,
// then one pass that combines each pair's events. O(events) memory on top of the output.
#include "recfuse/interactions.hpp"

#include <omp.h>

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

}  // namespace

GroupedPairs group_events(const int32_t* users, const int32_t* items, const double* values,
                          const int64_t* times, const int64_t* multiplicity, int64_t n_events,
                          int64_t n_users, int64_t n_items, Combine combine, int num_threads) {
  if (n_events < 0 || n_users < 0 || n_items < 0 ||
      n_items > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("group_events: bad sizes");
  GroupedPairs out;
  out.indptr.assign(static_cast<size_t>(n_users) + 1, 0);

  // Pass 1: events per user (and range checks).
  std::vector<int64_t> start(static_cast<size_t>(n_users) + 1, 0);
  for (int64_t e = 0; e < n_events; ++e) {
    const int32_t u = users[e], i = items[e];
    if (u < 0 || u >= n_users)
      throw std::invalid_argument("group_events: user code " + std::to_string(u) +
                                  " outside [0, " + std::to_string(n_users) + ")");
    if (i < 0 || i >= n_items)
      throw std::invalid_argument("group_events: item code " + std::to_string(i) +
                                  " outside [0, " + std::to_string(n_items) + ")");
    ++start[u + 1];
  }
  for (int64_t u = 0; u < n_users; ++u) {
    if (start[u + 1] > std::numeric_limits<uint32_t>::max())
      throw std::invalid_argument("group_events: a user has more than 2^32 events");
    start[u + 1] += start[u];
  }

  // Pass 2: scatter the events by user, in input order (sequential reads, and later passes
  // touch one user's events as one contiguous block). key = item << 32 | position in the
  // row, so sorting a row's keys orders it by item and keeps input order within a pair.
  // Scratch left uninitialised: every slot is written once below.
  const auto scratch = [n_events](bool wanted) { return static_cast<size_t>(wanted ? n_events : 0); };
  std::unique_ptr<uint64_t[]> keys(new uint64_t[scratch(true)]);
  std::unique_ptr<double[]> row_values(new double[scratch(values)]);
  std::unique_ptr<int64_t[]> row_times(new int64_t[scratch(times)]);
  std::unique_ptr<int64_t[]> row_multiplicity(new int64_t[scratch(multiplicity)]);
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < n_events; ++e) {
      const int32_t u = users[e];
      const int64_t slot = next[u]++;
      keys[slot] = (static_cast<uint64_t>(items[e]) << 32) | static_cast<uint64_t>(slot - start[u]);
      if (values) row_values[slot] = values[e];
      if (times) row_times[slot] = times[e];
      if (multiplicity) row_multiplicity[slot] = multiplicity[e];
    }
  }

  // Pass 3: sort each row's keys and count its distinct items.
  const int threads = thread_count(num_threads, n_events);
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

  // Pass 4: combine each pair's events.
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads)
  for (int64_t u = 0; u < n_users; ++u) {
    int64_t pair = out.indptr[u] - 1;
    int32_t current = -1;
    int64_t best_time = 0;
    for (int64_t s = start[u]; s < start[u + 1]; ++s) {
      const int32_t item = static_cast<int32_t>(keys[s] >> 32);
      const int64_t e = start[u] + static_cast<int64_t>(keys[s] & 0xffffffffu);
      const double value = values ? row_values[e] : 1.0;
      const int64_t weight = multiplicity ? row_multiplicity[e] : 1;
      const int64_t time = times ? row_times[e] : 0;
      if (item != current) {  // first event of a new pair
        current = item;
        ++pair;
        out.indices[pair] = item;
        out.values[pair] = combine == Combine::Count ? static_cast<double>(weight) : value;
        out.counts[pair] = weight;
        if (times) out.times[pair] = time;
        best_time = time;
        continue;
      }
      out.counts[pair] += weight;
      switch (combine) {
        case Combine::Sum: out.values[pair] += value; break;
        case Combine::Max: out.values[pair] = std::max(out.values[pair], value); break;
        case Combine::Count: out.values[pair] += static_cast<double>(weight); break;
        case Combine::Last:
          // Events of a pair come in input order: a later one wins unless it is older.
          if (time >= best_time) out.values[pair] = value;
          break;
      }
      if (time >= best_time) best_time = time;
      if (times) out.times[pair] = best_time;
    }
  }
  return out;
}

}  // namespace recfuse

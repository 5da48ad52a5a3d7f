// Event log -> (user, item) pairs: a counting sort by user, a sort of each user's items,
// then one pass that combines each pair's events. O(events) memory on top of the output.
// Also the numbering of string ids (factorize_strings): one hash pass over the column, then
// a sort of the distinct values only.
#include "recfuse/interactions.hpp"
#include "recfuse/memory.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace recfuse {

namespace {

int thread_count(int requested, int64_t work) {
  int threads = resolve_threads(requested);
  // Below ~64k events per thread the fork costs more than it saves.
  const int64_t useful = std::max<int64_t>(1, work / 65536);
  return static_cast<int>(std::min<int64_t>(threads, useful));
}

// ---------------------------------------------------------------- string ids
// The first kInline bytes of a string as words, zero-padded. Two strings of one size with
// equal heads are equal up to kInline bytes; the head is also what the hash starts from, so
// each string's bytes are loaded once.
constexpr int64_t kInline = 24;
struct Head {
  uint64_t words[kInline / 8];
  Head() : words{} {}
  Head(const uint8_t* bytes, int64_t size) : words{} {
    if (size > 0) std::memcpy(words, bytes, static_cast<size_t>(std::min(size, kInline)));
  }
  bool operator==(const Head& other) const {
    return words[0] == other.words[0] && words[1] == other.words[1] &&
           words[2] == other.words[2];
  }
};

// 64-bit hash: the size, then the head's words and any further 8-byte words, each mixed in
// by a multiply and a rotation; MurmurHash3's 64-bit finaliser makes the low bits, which
// pick the bucket, depend on every byte. Unkeyed: ids are data, not an attacker's choice.
inline uint64_t hash_string(const Head& head, const uint8_t* bytes, int64_t size) {
  constexpr uint64_t kMultiplier = 0x9E3779B97F4A7C15ull, kRound = 0xC2B2AE3D27D4EB4Full;
  uint64_t hash = static_cast<uint64_t>(size) * kMultiplier;
  auto mix = [&hash](uint64_t word) {
    hash ^= word * kRound;
    hash = ((hash << 31) | (hash >> 33)) * kMultiplier;
  };
  for (uint64_t word : head.words) mix(word);
  for (int64_t at = kInline; at < size; at += 8) {
    uint64_t word = 0;
    std::memcpy(&word, bytes + at, static_cast<size_t>(std::min<int64_t>(8, size - at)));
    mix(word);
  }
  hash ^= hash >> 33;
  hash *= 0xFF51AFD7ED558CCDull;
  hash ^= hash >> 33;
  hash *= 0xC4CEB9FE1A85EC53ull;
  return hash ^ (hash >> 33);
}

struct DistinctString {
  const uint8_t* bytes;
  int64_t size;
  uint64_t hash;
  int64_t first;  // position of its first occurrence
};

// Open addressing with linear probing, at most half full. A slot (32 bytes, half a cache
// line) holds the string's size and head besides its index, so a lookup of an id of up to
// 24 bytes touches one slot and nothing else; longer ones compare their tails against the
// source bytes.
class StringTable {
 public:
  // Starts small and doubles: sizing it for many distinct values up front made columns
  // with few (a sparse table, out of cache) slower than the rebuilds cost.
  StringTable() { rebuild(size_t{1} << 12); }

  void prefetch(uint64_t hash) const { __builtin_prefetch(&slots_[hash & mask_]); }

  // The index of the string among the distinct strings seen so far, adding it if new.
  int32_t index_of(const Head& head, const uint8_t* bytes, int64_t size, uint64_t hash,
                   int64_t position) {
    if (2 * (distinct_.size() + 1) > slots_.size()) rebuild(2 * slots_.size());
    for (size_t bucket = hash & mask_;; bucket = (bucket + 1) & mask_) {
      Slot& slot = slots_[bucket];
      if (slot.index_plus_one == 0) {
        if (distinct_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max()))
          throw std::invalid_argument("factorize_strings: more than 2^31 - 1 distinct values");
        distinct_.push_back({bytes, size, hash, position});
        slot = {static_cast<uint32_t>(distinct_.size()), static_cast<uint32_t>(size), head};
        return static_cast<int32_t>(distinct_.size() - 1);
      }
      if (slot.size != static_cast<uint32_t>(size) || !(slot.head == head)) continue;
      const int32_t index = static_cast<int32_t>(slot.index_plus_one - 1);
      if (size <= kInline) return index;
      const DistinctString& known = distinct_[index];  // a long string: compare the rest
      if (known.size == size && std::memcmp(known.bytes + kInline, bytes + kInline,
                                            static_cast<size_t>(size - kInline)) == 0)
        return index;
    }
  }

  const std::vector<DistinctString>& distinct() const { return distinct_; }

 private:
  struct alignas(32) Slot {
    uint32_t index_plus_one;  // 0: empty
    uint32_t size;            // the low 32 bits (longer strings also compare their full size)
    Head head;
  };
  static_assert(sizeof(Slot) == 32, "a slot is half a cache line");

  void rebuild(size_t buckets) {
    slots_.assign(buckets, Slot{0, 0, Head()});
    mask_ = buckets - 1;
    constexpr size_t kAhead = 16;  // prefetch the slot of a later string: overlapped misses
    for (size_t index = 0; index < distinct_.size(); ++index) {
      if (index + kAhead < distinct_.size()) prefetch(distinct_[index + kAhead].hash);
      const DistinctString& known = distinct_[index];
      size_t bucket = known.hash & mask_;
      while (slots_[bucket].index_plus_one != 0) bucket = (bucket + 1) & mask_;
      slots_[bucket] = {static_cast<uint32_t>(index + 1), static_cast<uint32_t>(known.size),
                        Head(known.bytes, known.size)};
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  std::vector<DistinctString> distinct_;
};

template <class Offset>
void code_chunk(const StringChunk& chunk, const Offset* offsets, int64_t position,
                StringTable& table, int32_t* codes) {
  // Blocks of strings: hash a block and prefetch its buckets, then look them up, so that
  // the cache misses of a block overlap instead of coming one after another.
  constexpr int64_t kBlock = 16;
  Head heads[kBlock];
  uint64_t hashes[kBlock];
  for (int64_t block = 0; block < chunk.length; block += kBlock) {
    const int64_t count = std::min(kBlock, chunk.length - block);
    for (int64_t k = 0; k < count; ++k) {
      const int64_t s = block + k;
      const int64_t begin = offsets[s], end = offsets[s + 1];
      if (begin < 0 || end < begin || end > chunk.data_size)
        throw std::invalid_argument(
            "factorize_strings: string " + std::to_string(position + s) + " spans bytes [" +
            std::to_string(begin) + ", " + std::to_string(end) + ") of a chunk of " +
            std::to_string(chunk.data_size) + " bytes");
      heads[k] = Head(chunk.data + begin, end - begin);
      hashes[k] = hash_string(heads[k], chunk.data + begin, end - begin);
      table.prefetch(hashes[k]);
    }
    for (int64_t k = 0; k < count; ++k) {
      const int64_t s = block + k, begin = offsets[s];
      codes[s] = table.index_of(heads[k], chunk.data + begin, offsets[s + 1] - begin,
                                hashes[k], position + s);
    }
  }
}

// Sorting the distinct strings: a key of the first 16 bytes (big-endian, zero-padded, so
// that integer order is byte order) and the size decides every pair of strings of up to 16
// bytes without touching their bytes; longer ones that tie on it compare all their bytes.
struct SortKey {
  uint64_t high, low;
  int64_t size;
  int32_t index;
};

inline uint64_t big_endian(const uint8_t* bytes, int64_t size) {
  uint64_t word = 0;
  for (int64_t k = 0; k < std::min<int64_t>(size, 8); ++k)
    word |= static_cast<uint64_t>(bytes[k]) << (56 - 8 * k);
  return word;
}

}  // namespace

FactorizedStrings factorize_strings(const std::vector<StringChunk>& chunks) {
  int64_t total = 0;
  for (const StringChunk& chunk : chunks) {
    if (chunk.length < 0 || (chunk.offsets32 == nullptr) == (chunk.offsets64 == nullptr))
      throw std::invalid_argument("factorize_strings: a chunk needs a length >= 0 and one "
                                  "offsets array");
    total += chunk.length;
  }
  FactorizedStrings out;
  out.codes.resize(static_cast<size_t>(total));
  StringTable table;
  int64_t position = 0;
  for (const StringChunk& chunk : chunks) {
    int32_t* codes = out.codes.data() + position;
    if (chunk.offsets32) code_chunk(chunk, chunk.offsets32, position, table, codes);
    else code_chunk(chunk, chunk.offsets64, position, table, codes);
    position += chunk.length;
  }

  // Sort the distinct values, then renumber the codes by rank.
  const std::vector<DistinctString>& distinct = table.distinct();
  std::vector<SortKey> order(distinct.size());
  for (size_t index = 0; index < distinct.size(); ++index) {
    const DistinctString& value = distinct[index];
    order[index] = {big_endian(value.bytes, value.size),
                    value.size > 8 ? big_endian(value.bytes + 8, value.size - 8) : 0,
                    value.size, static_cast<int32_t>(index)};
  }
  std::sort(order.begin(), order.end(), [&distinct](const SortKey& a, const SortKey& b) {
    if (a.high != b.high) return a.high < b.high;
    if (a.low != b.low) return a.low < b.low;
    if (a.size <= 16 || b.size <= 16) return a.size < b.size;
    const int rest = std::memcmp(distinct[a.index].bytes + 16, distinct[b.index].bytes + 16,
                                 static_cast<size_t>(std::min(a.size, b.size) - 16));
    return rest != 0 ? rest < 0 : a.size < b.size;
  });
  std::vector<int32_t> rank(distinct.size());
  out.first.resize(distinct.size());
  for (size_t r = 0; r < order.size(); ++r) {
    rank[order[r].index] = static_cast<int32_t>(r);
    out.first[r] = distinct[order[r].index].first;
  }
  for (int32_t& code : out.codes) code = rank[code];
  return out;
}

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
  LargeArray<int64_t> offsets(counters);
  std::fill(offsets.get(), offsets.get() + counters, 0);
  int64_t bad_event = -1;
  // Chunks are taken in a loop rather than one per omp_get_thread_num(): OpenMP may give
  // fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC), and every chunk must be done.
#pragma omp parallel num_threads(scatter_threads)
  for (int t = omp_get_thread_num(); t < scatter_threads; t += omp_get_num_threads()) {
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
  LargeArray<uint64_t> keys(scratch(true));
  LargeArray<double> row_values(scratch(values));
  LargeArray<int64_t> row_times(scratch(times));
  LargeArray<int64_t> row_multiplicity(scratch(multiplicity));
#pragma omp parallel num_threads(scatter_threads)
  for (int t = omp_get_thread_num(); t < scatter_threads; t += omp_get_num_threads()) {
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
        case Combine::Max:  // +0.0 beats -0.0, so the stored bits do not hang on order
          if (value > value_sum || (value == value_sum && std::signbit(value_sum)))
            value_sum = value;
          break;
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

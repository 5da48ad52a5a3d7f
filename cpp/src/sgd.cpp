// Block scheduling and dispatch for the SGD kernels; the per-rating math lives in
// sgd_kernels_impl.inc. See recfuse/sgd.hpp for the schedule and why it has no races.
#include "recfuse/random.hpp"
#include "recfuse/sgd.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "recfuse/simd.hpp"
#include "sgd_kernels.hpp"

namespace recfuse {

namespace {

template <class T>
const kernels::SgdKernels<T>& sgd_kernels(int k);

template <>
const kernels::SgdKernels<float>& sgd_kernels<float>(int k) {
  return for_level(&kernels::generic::sgd_kernels_float, &kernels::avx2::sgd_kernels_float,
                   &kernels::avx512::sgd_kernels_float)(k);
}

template <>
const kernels::SgdKernels<double>& sgd_kernels<double>(int k) {
  return for_level(&kernels::generic::sgd_kernels_double, &kernels::avx2::sgd_kernels_double,
                   &kernels::avx512::sgd_kernels_double)(k);
}

// Threads for an epoch of `updates` row updates. An explicit request is honoured (at most one
// thread per block of a diagonal). With 0 (automatic): all cores, but no more than keeps
// ~50k updates per thread per diagonal: shorter stretches lose more to handing blocks over
// than they gain, and far more when the machine is oversubscribed. (The Python models pass
// an explicit count: they time epochs on one thread and on all, recfuse._sgd.common.)
int thread_count(int requested, int grid, double updates) {
  int wanted = resolve_threads(requested);
  if (wanted > grid) wanted = grid;
  if (requested > 0) return wanted;
  const double useful = updates / grid / 5e4;
  if (useful < wanted) wanted = useful < 1 ? 1 : static_cast<int>(useful);
  return wanted;
}

void check_layout(const BlockLayout& L, int64_t n_users, int64_t n_items, int k,
                  int num_threads) {
  if (k <= 0) throw std::invalid_argument("factors must be positive, got " + std::to_string(k));
  if (L.grid <= 0) throw std::invalid_argument("grid must be positive");
  const int64_t blocks = static_cast<int64_t>(L.grid) * L.grid;
  if (L.offsets[0] != 0) throw std::invalid_argument("block offsets must start at 0");
  for (int64_t b = 0; b < blocks; ++b) {
    if (L.offsets[b + 1] < L.offsets[b]) {
      throw std::invalid_argument("block offsets must be non-decreasing (block " +
                                  std::to_string(b) + ")");
    }
  }
  const int64_t nnz = L.offsets[blocks];
  // Branch-free (a negative id is a huge unsigned one), so that the loop vectorises: it runs
  // every epoch.
  const uint64_t users = static_cast<uint64_t>(n_users), items = static_cast<uint64_t>(n_items);
  unsigned bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) \
    num_threads(resolve_threads(num_threads)) if (nnz > (1 << 20))
  for (int64_t t = 0; t < nnz; ++t) {
    bad |= static_cast<unsigned>(static_cast<uint32_t>(L.users[t]) >= users) |
           static_cast<unsigned>(static_cast<uint32_t>(L.items[t]) >= items);
  }
  if (bad) {
    throw std::invalid_argument("a user or item id is outside [0, " + std::to_string(n_users) +
                                ") x [0, " + std::to_string(n_items) + ")");
  }
}

// A CSR pattern (rows x cols) whose indices the kernels will follow.
void check_pattern(const int64_t* indptr, const int32_t* indices, int64_t rows, int64_t cols,
                   const char* name) {
  if (indptr[0] != 0) throw std::invalid_argument(std::string(name) + " indptr must start at 0");
  unsigned decreasing = 0, outside = 0;  // branch-free, so that the loops vectorise
  for (int64_t u = 0; u < rows; ++u) decreasing |= static_cast<unsigned>(indptr[u + 1] < indptr[u]);
  if (decreasing) throw std::invalid_argument(std::string(name) + " indptr must be non-decreasing");
  const uint64_t limit = static_cast<uint64_t>(cols);
  for (int64_t t = 0; t < indptr[rows]; ++t) {
    outside |= static_cast<unsigned>(static_cast<uint32_t>(indices[t]) >= limit);
  }
  if (outside) {
    throw std::invalid_argument(std::string(name) + " index out of range [0, " +
                                std::to_string(cols) + ")");
  }
}

// Runs body(block, begin, end) on every block, with the result of running them diagonal by
// diagonal (the blocks of one diagonal share no row or column bin), but without a barrier per
// diagonal. Block (r, s) (row bin r, diagonal s, column bin (r + s) mod grid) touches row bin
// r, last touched by (r, s − 1), and column bin r + s, last touched by (r + 1, s − 1): waiting
// for those two is enough, as every earlier block that touches either bin comes before one of
// them (by induction on s), and no later block that touches them can start before it is
// done. Each thread owns a contiguous range of row bins and takes its blocks diagonal by
// diagonal, so it only ever waits for the owner of the row bin after its range, whose first
// block of the diagonal before is the one needed: a thread may run up to a diagonal ahead of
// its neighbour, and one that loses its core for a moment holds the other up only once that
// slack is spent (with a barrier per diagonal, every such moment stalled both).
template <class Body>
void for_each_block(const BlockLayout& L, int threads, const Body& body) {
  const int grid = L.grid;
  std::vector<std::atomic<int>> finished(grid);  // per row bin: diagonals done
  for (auto& count : finished) count.store(0, std::memory_order_relaxed);
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num(), team = omp_get_num_threads();
    const int first = static_cast<int>(static_cast<int64_t>(grid) * thread / team);
    const int last = static_cast<int>(static_cast<int64_t>(grid) * (thread + 1) / team);
    for (int s = 0; s < grid; ++s) {
      for (int r = first; r < last; ++r) {
        const std::atomic<int>& before = finished[(r + 1) % grid];
        for (int spins = 0; before.load(std::memory_order_acquire) < s; ++spins) {
          if (spins >= 64) std::this_thread::yield();  // let the thread we wait for have the core
        }
        const int64_t block = static_cast<int64_t>(s) * grid + r;
        body(block, L.offsets[block], L.offsets[block + 1]);
        finished[r].store(s + 1, std::memory_order_release);
      }
    }
  }
}

// Whether the sorted row [row, row + n) holds item: halving by conditional moves, no early
// exit (the comparisons of a search in random data are coin flips; branches on them
// mispredicted half the time).
inline bool sorted_row_contains(const int32_t* row, int64_t n, int32_t item) {
  if (n == 0) return false;
  while (n > 1) {
    const int64_t half = n / 2;
    row = row[half] <= item ? row + half : row;
    n -= half;
  }
  return *row == item;
}

// "Has user u seen item j?" by binary search of the user's sorted row of the seen pattern.
// seen_in_batch answers it for a batch of (user, item) questions at once: the searches run
// side by side, so their chains of dependent loads overlap.
struct SeenRows {
  static constexpr int kBatch = 8;
  const int64_t* indptr;
  const int32_t* indices;

  bool contains(int32_t u, int32_t j) const {
    return sorted_row_contains(indices + indptr[u], indptr[u + 1] - indptr[u], j);
  }
  void seen_in_batch(const int32_t* users, const int32_t* items, int batch, bool* seen) const {
    static const int32_t kNoItem = -1;  // stands for an empty row
    const int32_t* row[kBatch];
    int64_t left[kBatch];
    int64_t longest = 1;
    for (int a = 0; a < batch; ++a) {
      const int64_t first = indptr[users[a]], length = indptr[users[a] + 1] - first;
      row[a] = length > 0 ? indices + first : &kNoItem;
      left[a] = length > 0 ? length : 1;
      longest = left[a] > longest ? left[a] : longest;
    }
    for (int64_t span = longest; span > 1; span -= span / 2) {  // as many steps as the longest
      for (int a = 0; a < batch; ++a) {
        const int64_t half = left[a] / 2;
        row[a] = row[a][half] <= items[a] ? row[a] + half : row[a];
        left[a] -= half;
      }
    }
    for (int a = 0; a < batch; ++a) seen[a] = *row[a] == items[a];
  }
};

// The same question from a bit matrix (users x items, each row padded to whole words): one
// load per question. Built per epoch when it is small next to the pattern (see bpr_epoch).
struct SeenBits {
  static constexpr int kBatch = 8;
  std::vector<uint64_t> bits;
  int64_t words_per_row = 0;

  SeenBits(const int64_t* indptr, const int32_t* indices, int64_t rows, int64_t cols,
           int threads)
      : bits(static_cast<size_t>(rows) * static_cast<size_t>((cols + 63) / 64), 0),
        words_per_row((cols + 63) / 64) {
    uint64_t* data = bits.data();
    const int64_t stride = words_per_row;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t u = 0; u < rows; ++u) {
      uint64_t* row = data + u * stride;
      for (int64_t t = indptr[u]; t < indptr[u + 1]; ++t) {
        row[indices[t] >> 6] |= uint64_t{1} << (indices[t] & 63);
      }
    }
  }
  bool contains(int32_t u, int32_t j) const {
    return (bits[static_cast<size_t>(u) * words_per_row + (j >> 6)] >> (j & 63)) & 1;
  }
  void seen_in_batch(const int32_t* users, const int32_t* items, int batch, bool* seen) const {
    for (int a = 0; a < batch; ++a) seen[a] = contains(users[a], items[a]);
  }

  // Built when clearing and filling it costs less than the searches it saves: at most 256 bits
  // per entry of the pattern (or 64 kbit in all), and at most 32 MB. (ml-100k, 943 x 1682 with
  // 44k entries, 36 bits per entry: epoch 2.2 -> 1.9 ms against the batched searches.)
  static bool pays(int64_t rows, int64_t cols, int64_t entries) {
    const double size = static_cast<double>(rows) * static_cast<double>((cols + 63) / 64 * 64);
    return size <= 256.0 * static_cast<double>(entries) + 65536.0 && size <= 8.0 * (32 << 20);
  }
};

// The negatives of one block's entries [begin, end) (reference.bpr_sample_negatives): the
// block's stream draws candidates[x mod count] until one is not in the user's seen row, at
// most max_tries times (then -1). Returns the number of entries left without one.
//
// Most first draws are unseen, so the first draws of a batch of entries are made and looked up
// together, as if none were seen (their lookups are independent, so their memory reads
// overlap). The batch is kept up to its first seen draw, which continues one draw at a time;
// the next batch starts at the stream position that leaves, so every draw is the one the
// sequential definition makes.
template <class Seen>
int64_t sample_block_negatives(const int32_t* users, int64_t begin, int64_t end, const Seen& seen,
                               const int32_t* candidates, int64_t count, uint64_t stream,
                               int max_tries, int32_t* negatives) {
  if (count == 0) {  // nothing to draw from: no draw is made
    for (int64_t t = begin; t < end; ++t) negatives[t] = -1;
    return end - begin;
  }
  constexpr int kBatch = Seen::kBatch;
  const uint64_t n = static_cast<uint64_t>(count);
  uint64_t position = 0;  // draws made so far
  int64_t missed = 0;
  for (int64_t t = begin; t < end;) {
    const int batch = end - t < kBatch ? static_cast<int>(end - t) : kBatch;
    int32_t drawn[kBatch];
    bool hit[kBatch];
    for (int a = 0; a < batch; ++a) {
      drawn[a] = candidates[splitmix64_draw(stream, position + a + 1) % n];
    }
    seen.seen_in_batch(users + t, drawn, batch, hit);
    int kept = 0;
    while (kept < batch && !hit[kept]) {
      negatives[t + kept] = drawn[kept];
      ++kept;
    }
    position += kept;
    t += kept;
    if (kept == batch) continue;
    // Entry t's first draw (position + 1) was seen: redraw it on its own.
    int32_t negative = -1;
    position += 1;
    for (int attempt = 1; attempt < max_tries; ++attempt) {
      const int32_t j = candidates[splitmix64_draw(stream, ++position) % n];
      if (!seen.contains(users[t], j)) {
        negative = j;
        break;
      }
    }
    negatives[t] = negative;
    missed += negative < 0;
    ++t;
  }
  return missed;
}

}  // namespace

void sgd_block_layout(const int64_t* users, const int64_t* items, const int64_t* order,
                      int64_t n, const int64_t* user_bin, int64_t n_users,
                      const int64_t* item_bin, int64_t n_items, int grid, int32_t* users_out,
                      int32_t* items_out, int64_t* order_out, int64_t* offsets, int num_threads) {
  if (grid < 1) throw std::invalid_argument("grid must be >= 1, got " + std::to_string(grid));
  const int64_t blocks = static_cast<int64_t>(grid) * grid;
  for (int64_t b = 0; b < n_users; ++b) {
    if (user_bin[b] < 0 || user_bin[b] >= grid) throw std::invalid_argument("user bin out of range");
  }
  for (int64_t b = 0; b < n_items; ++b) {
    if (item_bin[b] < 0 || item_bin[b] >= grid) throw std::invalid_argument("item bin out of range");
  }
  // The positions are cut into `parts` contiguous ranges, each counted, then placed, by one
  // thread: a range's entries of a block follow those of the ranges before it, so the sort
  // stays stable for any thread count. (Ranges follow `parts`, not the team OpenMP gives, so
  // both passes cut them alike.)
  // From 2^18 entries two threads paid (1M entries: 43 -> 25 ms); below, one.
  const int parts = n < (1 << 18) ? 1 : resolve_threads(num_threads);
  std::vector<int32_t> block_of(static_cast<size_t>(n));
  std::vector<int64_t> counts(static_cast<size_t>(parts) * blocks, 0);
  unsigned bad = 0;
#pragma omp parallel num_threads(parts) reduction(| : bad)
  for (int part = omp_get_thread_num(); part < parts; part += omp_get_num_threads()) {
    const int64_t first = n * part / parts, last = n * (part + 1) / parts;
    int64_t* count = counts.data() + static_cast<size_t>(part) * blocks;
    for (int64_t t = first; t < last; ++t) {
      const int64_t i = order[t];
      if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(n)) {
        bad |= 1;
        continue;
      }
      const int64_t u = users[i], j = items[i];
      if (static_cast<uint64_t>(u) >= static_cast<uint64_t>(n_users) ||
          static_cast<uint64_t>(j) >= static_cast<uint64_t>(n_items)) {
        bad |= 2;
        continue;
      }
      const int64_t row = user_bin[u], column = item_bin[j];
      int64_t diagonal = column - row;  // (column - row) mod grid, without a division
      diagonal += diagonal < 0 ? grid : 0;
      const int64_t block = diagonal * grid + row;
      block_of[t] = static_cast<int32_t>(block);
      ++count[block];
    }
  }
  if (bad & 1) throw std::invalid_argument("order must hold indices in [0, " + std::to_string(n) + ")");
  if (bad & 2) throw std::invalid_argument("a user or item id is out of range");
  // Cursors: block by block, range by range.
  int64_t position = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    offsets[b] = position;
    for (int part = 0; part < parts; ++part) {
      int64_t& count = counts[static_cast<size_t>(part) * blocks + b];
      const int64_t next = position + count;
      count = position;
      position = next;
    }
  }
  offsets[blocks] = position;
#pragma omp parallel num_threads(parts)
  for (int part = omp_get_thread_num(); part < parts; part += omp_get_num_threads()) {
    const int64_t first = n * part / parts, last = n * (part + 1) / parts;
    int64_t* cursor = counts.data() + static_cast<size_t>(part) * blocks;
    for (int64_t t = first; t < last; ++t) {
      const int64_t i = order[t], p = cursor[block_of[t]]++;
      users_out[p] = static_cast<int32_t>(users[i]);
      items_out[p] = static_cast<int32_t>(items[i]);
      order_out[p] = i;
    }
  }
}

void sgd_shuffle_blocks(uint64_t seed, const int64_t* offsets, int64_t blocks, int32_t* users,
                        int32_t* items, int64_t* order, int num_threads) {
  const int64_t n = blocks > 0 ? offsets[blocks] : 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (offsets[b + 1] - offsets[b] >= (int64_t(1) << 32)) {
      throw std::invalid_argument("a block of 2^32 entries or more cannot be shuffled");
    }
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(resolve_threads(num_threads)) \
    if (n >= (1 << 18))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = offsets[b];
    for (int64_t i = offsets[b + 1] - begin - 1; i > 0; --i) {
      const uint64_t p = static_cast<uint64_t>(begin + i);
      const int64_t j = static_cast<int64_t>(((splitmix64_draw(seed, p + 1) >> 32) *
                                              static_cast<uint64_t>(i + 1)) >> 32);
      std::swap(users[begin + i], users[begin + j]);
      std::swap(items[begin + i], items[begin + j]);
      std::swap(order[begin + i], order[begin + j]);
    }
  }
}

int64_t pairs_pattern(const int64_t* rows, const int64_t* cols, int64_t n, int64_t n_rows,
                      int64_t n_cols, int64_t* indptr, int32_t* indices) {
  if (n_rows < 0 || n_cols < 0 || n_cols > INT32_MAX)
    throw std::invalid_argument("pairs_pattern: bad sizes");
  for (int64_t t = 0; t < n; ++t) {
    if (static_cast<uint64_t>(rows[t]) >= static_cast<uint64_t>(n_rows) ||
        static_cast<uint64_t>(cols[t]) >= static_cast<uint64_t>(n_cols))
      throw std::invalid_argument("pair " + std::to_string(t) + " is (" + std::to_string(rows[t]) +
                                  ", " + std::to_string(cols[t]) + "), outside " +
                                  std::to_string(n_rows) + " x " + std::to_string(n_cols));
  }
  // Two counting sorts: the rows bucketed by column, then those buckets, in column order,
  // scattered by row. Each row's columns come out ascending, repeats side by side.
  std::vector<int64_t> start(static_cast<size_t>(n_cols) + 1, 0);
  for (int64_t t = 0; t < n; ++t) ++start[cols[t] + 1];
  for (int64_t c = 0; c < n_cols; ++c) start[c + 1] += start[c];
  std::vector<int32_t> rows_by_col(static_cast<size_t>(n));
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < n; ++t) rows_by_col[cursor[cols[t]]++] = static_cast<int32_t>(rows[t]);
  }
  std::fill(indptr, indptr + n_rows + 1, 0);
  for (int64_t t = 0; t < n; ++t) ++indptr[rows[t] + 1];
  for (int64_t r = 0; r < n_rows; ++r) indptr[r + 1] += indptr[r];
  std::vector<int64_t> cursor(indptr, indptr + n_rows);
  for (int64_t c = 0; c < n_cols; ++c) {
    for (int64_t e = start[c]; e < start[c + 1]; ++e) indices[cursor[rows_by_col[e]]++] = static_cast<int32_t>(c);
  }
  // Repeats dropped, rows closed up in place.
  int64_t kept = 0;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t begin = indptr[r], end = indptr[r + 1];
    indptr[r] = kept;
    for (int64_t e = begin; e < end; ++e) {
      if (e == begin || indices[e] != indices[e - 1]) indices[kept++] = indices[e];
    }
  }
  indptr[n_rows] = kept;
  return kept;
}

template <class T>
void rows_in_id_order(T* data, int64_t rows, int64_t ld, int k, const int32_t* rows_at) {
  if (k < 0 || ld < k) throw std::invalid_argument("rows_in_id_order needs 0 <= k <= ld");
  // trained_at[id]: the row that holds id's values (rows_at inverted), -1 until seen
  std::vector<int32_t> trained_at(static_cast<size_t>(rows), -1);
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t id = rows_at[t];
    if (id < 0 || id >= rows || trained_at[id] >= 0)
      throw std::invalid_argument("rows_at must be a permutation of 0.." + std::to_string(rows - 1) +
                                  ", got " + std::to_string(id) + " at " + std::to_string(t));
    trained_at[id] = static_cast<int32_t>(t);
  }
  const size_t width = static_cast<size_t>(k);
  if (ld != k) {  // packed first: row t moves down (t·k <= t·ld), so forward order is safe
    for (int64_t t = 1; t < rows; ++t)
      std::memmove(data + t * k, data + t * ld, width * sizeof(T));
  }
  // Then each cycle of the permutation, pulling: the row that belongs at `at` is copied
  // there from trained_at[at], so each row moves once (`carry` holds the cycle's first).
  std::vector<T> carry(width);
  for (int64_t start = 0; start < rows; ++start) {
    if (trained_at[start] < 0 || trained_at[start] == start) continue;  // placed, or in place
    std::copy_n(data + start * k, width, carry.data());
    int64_t at = start;
    for (int64_t from = trained_at[at]; from != start; at = from, from = trained_at[at]) {
      std::copy_n(data + from * k, width, data + at * k);
      trained_at[at] = -1;
    }
    std::copy_n(carry.data(), width, data + at * k);
    trained_at[at] = -1;
  }
}

template <class T>
void svd_epoch(const BlockLayout& L, const T* ratings, T global_mean, T* user_bias, T* item_bias,
               T* P, T* Q, int64_t n_users, int64_t n_items, int k, const SgdRates<T>& rates,
               bool biased, int num_threads) {
  check_layout(L, n_users, n_items, k, num_threads);
  const auto& kern = sgd_kernels<T>(k);
  const int64_t nnz = L.offsets[static_cast<int64_t>(L.grid) * L.grid];
  const int threads = thread_count(num_threads, L.grid, static_cast<double>(nnz));
  for_each_block(L, threads, [&](int64_t, int64_t begin, int64_t end) {
    kern.svd_range(L.users, L.items, ratings, begin, end, global_mean, user_bias, item_bias, P, Q,
                   k, rates, biased);
  });
}

template <class T>
void svdpp_epoch(const BlockLayout& L, const T* ratings, T global_mean, T* user_bias,
                 T* item_bias, T* P, T* Q, T* Y, int64_t n_users, int64_t n_items, int k,
                 const int64_t* implicit_indptr, const int32_t* implicit_indices,
                 const SgdRates<T>& rates) {
  check_layout(L, n_users, n_items, k, 1);  // the epoch itself is sequential
  check_pattern(implicit_indptr, implicit_indices, n_users, n_items, "implicit");
  const auto& kern = sgd_kernels<T>(k);
  const int64_t nnz = L.offsets[static_cast<int64_t>(L.grid) * L.grid];
  std::vector<T> scratch(2 * static_cast<size_t>(k));
  for (int64_t begin = 0; begin < nnz;) {
    const int32_t u = L.users[begin];
    int64_t end = begin + 1;
    while (end < nnz && L.users[end] == u) ++end;
    const int64_t start = implicit_indptr[u];
    kern.svdpp_pass(L.items, ratings, begin, end, u, global_mean, user_bias, item_bias, P, Q, Y,
                    implicit_indices + start, implicit_indptr[u + 1] - start, k, rates,
                    scratch.data());
    begin = end;
  }
}

template <class T>
int64_t bpr_epoch(const BlockLayout& L, const int64_t* seen_indptr, const int32_t* seen_indices,
                  const int32_t* bin_items, const int64_t* bin_offsets, T* P, T* Q, T* item_bias,
                  int64_t n_users, int64_t n_items, int k, T lr, T reg, uint64_t seed,
                  int max_tries, int32_t* negatives_out, int num_threads) {
  check_layout(L, n_users, n_items, k, num_threads);
  if (max_tries < 1) throw std::invalid_argument("max_tries must be >= 1");
  check_pattern(seen_indptr, seen_indices, n_users, n_items, "seen");
  check_pattern(bin_offsets, bin_items, L.grid, n_items, "bin");
  const auto& kern = sgd_kernels<T>(k);
  const int grid = L.grid;
  const int64_t nnz = L.offsets[static_cast<int64_t>(grid) * grid];
  // A pair costs about two SVD updates (three rows and a negative draw; the cap is in updates).
  const int threads = thread_count(num_threads, grid, 2.0 * static_cast<double>(nnz));
  std::vector<int64_t> skipped_by_block(static_cast<size_t>(grid) * grid, 0);
  auto train = [&](const auto& seen) {
    for_each_block(L, threads, [&](int64_t block, int64_t begin, int64_t end) {
      const int s = static_cast<int>(block / grid), r = static_cast<int>(block % grid);
      const int c = (r + s) % grid;
      const uint64_t stream = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(block + 1));
      skipped_by_block[block] = sample_block_negatives(
          L.users, begin, end, seen, bin_items + bin_offsets[c],
          bin_offsets[c + 1] - bin_offsets[c], stream, max_tries, negatives_out);
      kern.bpr_range(L.users, L.items, negatives_out, begin, end, P, Q, item_bias, k, lr, reg);
    });
  };
  if (SeenBits::pays(n_users, n_items, seen_indptr[n_users])) {
    train(SeenBits(seen_indptr, seen_indices, n_users, n_items, threads));
  } else {
    train(SeenRows{seen_indptr, seen_indices});
  }
  int64_t skipped = 0;
  for (int64_t v : skipped_by_block) skipped += v;
  return skipped;
}


template <class T>
int64_t explicit_als_half_sweep(const int64_t* indptr, const int32_t* indices, const T* data,
                                int64_t rows, int64_t cols, const T* Y, const T* other_bias,
                                T global_mean, int k, T reg, T reg_bias, T* X, T* own_bias,
                                int num_threads) {
  if (k <= 0) throw std::invalid_argument("factors must be positive, got " + std::to_string(k));
  if ((other_bias == nullptr) != (own_bias == nullptr)) {
    throw std::invalid_argument("other_bias and own_bias must both be given or both be null");
  }
  check_pattern(indptr, indices, rows, cols, "ratings");
  const auto& kern = sgd_kernels<T>(k);
  // Threads: the requested number, but no more than keeps ~1M multiply-adds per thread.
  const double d = k + 1.0;
  const double work = static_cast<double>(indptr[rows]) * d * d / 2 + rows * d * d * d / 6;
  int threads = resolve_threads(num_threads);
  if (work / 1e6 < threads) threads = work < 1e6 ? 1 : static_cast<int>(work / 1e6);
  const size_t scratch_size = static_cast<size_t>(kernels::explicit_als_scratch(k));
  int64_t failed = 0;
#pragma omp parallel num_threads(threads) reduction(+ : failed)
  {
    std::vector<T> scratch(scratch_size);
#pragma omp for schedule(dynamic, 16)
    for (int64_t u = 0; u < rows; ++u) {
      const int64_t start = indptr[u];
      const bool ok = kern.explicit_als_row(indices + start, data + start, indptr[u + 1] - start,
                                            Y, other_bias, global_mean, k, reg, reg_bias,
                                            X + u * k, own_bias == nullptr ? nullptr : own_bias + u,
                                            scratch.data());
      failed += ok ? 0 : 1;
    }
  }
  return failed;
}

#define RECFUSE_INSTANTIATE(T)                                                                   \
  template void rows_in_id_order<T>(T*, int64_t, int64_t, int, const int32_t*);                  \
  template void svd_epoch<T>(const BlockLayout&, const T*, T, T*, T*, T*, T*, int64_t, int64_t,  \
                             int, const SgdRates<T>&, bool, int);                                \
  template void svdpp_epoch<T>(const BlockLayout&, const T*, T, T*, T*, T*, T*, T*, int64_t,     \
                               int64_t, int, const int64_t*, const int32_t*,                     \
                               const SgdRates<T>&);                                              \
  template int64_t bpr_epoch<T>(const BlockLayout&, const int64_t*, const int32_t*,              \
                                const int32_t*, const int64_t*, T*, T*, T*, int64_t, int64_t,    \
                                int, T, T, uint64_t, int, int32_t*, int);                        \
  template int64_t explicit_als_half_sweep<T>(const int64_t*, const int32_t*, const T*, int64_t, \
                                              int64_t, const T*, const T*, T, int, T, T, T*, T*, \
                                              int);
RECFUSE_INSTANTIATE(float)
RECFUSE_INSTANTIATE(double)
#undef RECFUSE_INSTANTIATE

}  // namespace recfuse

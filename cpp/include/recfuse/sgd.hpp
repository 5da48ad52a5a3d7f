// Stochastic gradient descent factorization on the CPU: Funk SVD, SVD++ and BPR. The
// contract is recfuse.reference (svd_sgd_epoch, svdpp_sgd_epoch, bpr_sgd_epoch).
//
// Parallel SGD without races (FPSGD-style block scheduling): users fall into `grid` row bins
// and items into `grid` column bins, so the ratings fall into grid x grid blocks. A pass over
// diagonal s processes the blocks (r, (r + s) mod grid) for r = 0 .. grid-1; they share no
// user and no item, so threads take them in any order and the result is the same as doing
// them one after the other. The caller stores the ratings grouped by block in schedule order
// (block index s * grid + r); the epoch then equals the sequential reference over the
// ratings in array order, whatever the number of threads. grid = 1 is plain sequential SGD.
// Threads take the blocks without a barrier per diagonal: a block waits only for the two
// blocks before it that touch its row bin and its column bin, which gives the same result.
#pragma once
#include <cstdint>

namespace recfuse {

// Ratings (or positive pairs) grouped by block in schedule order.
struct BlockLayout {
  const int32_t* users;
  const int32_t* items;
  const int64_t* offsets;  // grid * grid + 1 entries; block b is [offsets[b], offsets[b + 1])
  int grid;
};

// Learning rates and regularisation per term (Surprise's lr_bu, lr_bi, ..., reg_yj).
template <class T>
struct SgdRates {
  T lr_bu, lr_bi, lr_pu, lr_qi, lr_yj;
  T reg_bu, reg_bi, reg_pu, reg_qi, reg_yj;
};

// The block layout of recfuse._sgd.common.make_blocks: the entry order[t] of the caller's
// arrays (user users[order[t]] in row bin user_bin[user], item in column bin item_bin[item])
// goes to block ((column − row) mod grid) · grid + row, and the entries of a block keep their
// order in `order` (a stable counting sort). For position p of the result it writes
// users_out[p], items_out[p] and order_out[p] (the index into the caller's arrays), and the
// block offsets (grid · grid + 1). Throws std::invalid_argument on an id or order value out
// of range, before writing anything.
void sgd_block_layout(const int64_t* users, const int64_t* items, const int64_t* order,
                      int64_t n, const int64_t* user_bin, int64_t n_users,
                      const int64_t* item_bin, int64_t n_items, int grid, int32_t* users_out,
                      int32_t* items_out, int64_t* order_out, int64_t* offsets, int num_threads);

// Shuffles the entries of each block [offsets[b], offsets[b + 1]) of a block layout in place
// (users, items and order alike; offsets[blocks] entries in all): a Fisher-Yates shuffle in
// which the position at p = offsets[b] + i, for i from the block's last down to 1, swaps with
// offsets[b] + j, j = ((splitmix64_draw(seed, p + 1) >> 32) * (i + 1)) >> 32
// (recfuse._sgd.common.shuffle_blocks is the same in NumPy). The same result for any thread
// count. Throws std::invalid_argument, before shuffling, for a block of 2^32 entries or more.
void sgd_shuffle_blocks(uint64_t seed, const int64_t* offsets, int64_t blocks, int32_t* users,
                        int32_t* items, int64_t* order, int num_threads);

// The sparsity pattern of the pairs (rows[t], cols[t]): CSR row starts (indptr, n_rows + 1)
// and each row's distinct columns ascending (indices, room for n). Returns the number of
// distinct pairs. Throws std::invalid_argument on an id out of range, before writing.
int64_t pairs_pattern(const int64_t* rows, const int64_t* cols, int64_t n, int64_t n_rows,
                      int64_t n_cols, int64_t* indptr, int32_t* indices);

// The end of a fit that trained on renumbered rows (recfuse._sgd.common.Blocks.renumbered):
// data holds `rows` rows of stride ld, row t being id rows_at[t]'s, and rows_at is a
// permutation of 0 .. rows - 1. Afterwards data's first rows · k values are the rows' first
// k values packed (stride k) in id order. In place, because a fresh table was the largest
// allocation of a small fit, and first touches of new pages cost more than the moves where
// page faults are slow (a VM: 4 ms of a 35 ms SVD fit on ml-latest-small).
// Throws std::invalid_argument, before moving anything, when rows_at is not a permutation.
template <class T>
void rows_in_id_order(T* data, int64_t rows, int64_t ld, int k, const int32_t* rows_at);

// One Funk SVD epoch in place. P: n_users x k, Q: n_items x k; biased = false leaves the
// biases alone (the caller passes global_mean = 0).
template <class T>
void svd_epoch(const BlockLayout& L, const T* ratings, T global_mean, T* user_bias, T* item_bias,
               T* P, T* Q, int64_t n_users, int64_t n_items, int k, const SgdRates<T>& rates,
               bool biased, int num_threads);

// One SVD++ epoch in place (reference.svdpp_sgd_epoch) over the entries in array order, by
// user passes (runs of one user's ratings). A pass reads and writes the y_j of all the
// user's items, so passes cannot share a diagonal of blocks: this epoch is sequential and
// L.grid only has to describe the array. N(u) is row u of the users x items pattern
// (implicit_indptr, implicit_indices).
template <class T>
void svdpp_epoch(const BlockLayout& L, const T* ratings, T global_mean, T* user_bias,
                 T* item_bias, T* P, T* Q, T* Y, int64_t n_users, int64_t n_items, int k,
                 const int64_t* implicit_indptr, const int32_t* implicit_indices,
                 const SgdRates<T>& rates);

// One BPR epoch in place. L holds the positive (user, item) pairs. For each pair a negative
// item is drawn uniformly from the column bin of its block (bin_items[bin_offsets[c] ..
// bin_offsets[c + 1]]) and redrawn until it is not in the user's row of the seen matrix
// (seen_indptr, seen_indices: sorted per row); after max_tries draws the pair is skipped.
// Draws come from a generator seeded by (seed, block), so the result does not depend on the
// thread count. negatives_out (nnz entries) receives each pair's negative, or -1 when skipped.
// Returns the number of skipped pairs.
template <class T>
int64_t bpr_epoch(const BlockLayout& L, const int64_t* seen_indptr, const int32_t* seen_indices,
                  const int32_t* bin_items, const int64_t* bin_offsets, T* P, T* Q, T* item_bias,
                  int64_t n_users, int64_t n_items, int k, T lr, T reg, uint64_t seed,
                  int max_tries, int32_t* negatives_out, int num_threads);

// One explicit (ratings) ALS half-sweep with weighted-λ regularisation, in place
// (reference.explicit_als_half_sweep): every row u of the CSR ratings matrix (indptr,
// indices, data; rows x cols) solves (Σ z zᵀ + n_u diag(reg, …, reg, reg_bias)) w = Σ (r − μ − b_i) z
// with z = (y_i, 1) and w = (x_u, b_u) when other_bias/own_bias are given (biased), z = y_i and
// w = x_u when they are null. Rows without entries get zeros. Returns the number of rows whose
// system was not positive definite (left unchanged).
template <class T>
int64_t explicit_als_half_sweep(const int64_t* indptr, const int32_t* indices, const T* data,
                                int64_t rows, int64_t cols, const T* Y, const T* other_bias,
                                T global_mean, int k, T reg, T reg_bias, T* X, T* own_bias,
                                int num_threads);

}  // namespace recfuse

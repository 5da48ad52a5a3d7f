// Bindings of the SGD kernels (recfuse/sgd.hpp): svd_epoch, svdpp_epoch and bpr_epoch.
// Arrays arrive with the exact dtype and C order (noconvert); the factor arrays are updated
// in place. The GIL is released around the kernels.
#pragma once
#include <array>
#include <optional>
#include <string>

#include "als_bindings.hpp"
#include "recfuse/random.hpp"
#include "recfuse/sgd.hpp"

namespace recfuse {
namespace bindings {

inline BlockLayout block_layout(const Array<int32_t>& users, const Array<int32_t>& items,
                                const Array<int64_t>& offsets, int grid) {
  expect(grid >= 1, "grid must be >= 1, got " + std::to_string(grid));
  const int64_t blocks = static_cast<int64_t>(grid) * grid;
  expect(offsets.ndim() == 1 && offsets.size() == blocks + 1,
         "offsets must have grid * grid + 1 = " + std::to_string(blocks + 1) +
             " entries, got shape " + shape_of(offsets));
  expect(users.ndim() == 1 && items.ndim() == 1 && users.size() == items.size() &&
             users.size() == offsets.at(blocks),
         "users and items must be 1-d with offsets[-1] = " + std::to_string(offsets.at(blocks)) +
             " entries, got shapes " + shape_of(users) + " and " + shape_of(items));
  return {users.data(), items.data(), offsets.data(), grid};
}

// Checks a factor matrix (rows x k) and returns its row count.
template <class T>
int64_t factor_rows(Array<T>& M, int64_t k, const char* name) {
  expect(M.ndim() == 2 && M.shape(1) == k,
         std::string(name) + " must be 2-d with " + std::to_string(k) + " columns, got shape " +
             shape_of(M));
  expect(M.writeable(), std::string(name) + " must be writeable");
  return M.shape(0);
}

template <class T>
void check_vector(Array<T>& v, int64_t n, const char* name) {
  expect(v.ndim() == 1 && v.size() == n,
         std::string(name) + " must have shape (" + std::to_string(n) + ",), got " + shape_of(v));
  expect(v.writeable(), std::string(name) + " must be writeable");
}

// The model tables of the SVD-style bindings, checked: P (n_users x k) and Q (n_items x k)
// writeable, one writeable bias per row of each. Returns {k, n_users, n_items}.
struct SvdShape {
  int64_t k, n_users, n_items;
};

template <class T>
SvdShape svd_shape(Array<T>& P, Array<T>& Q, Array<T>& user_bias, Array<T>& item_bias) {
  expect(P.ndim() == 2, "P must be 2-d, got shape " + shape_of(P));
  const int64_t k = P.shape(1);
  const int64_t n_users = factor_rows(P, k, "P"), n_items = factor_rows(Q, k, "Q");
  check_vector(user_bias, n_users, "user_bias");
  check_vector(item_bias, n_items, "item_bias");
  return {k, n_users, n_items};
}

template <class T>
SgdRates<T> sgd_rates(const std::array<double, 5>& lr, const std::array<double, 5>& reg) {
  return {static_cast<T>(lr[0]),  static_cast<T>(lr[1]),  static_cast<T>(lr[2]),
          static_cast<T>(lr[3]),  static_cast<T>(lr[4]),  static_cast<T>(reg[0]),
          static_cast<T>(reg[1]), static_cast<T>(reg[2]), static_cast<T>(reg[3]),
          static_cast<T>(reg[4])};
}

inline void bind_sgd_helpers(py::module_& m) {
  m.def(
      "sgd_block_layout",
      [](const Array<int64_t>& users, const Array<int64_t>& items, const Array<int64_t>& order,
         const Array<int64_t>& user_bin, const Array<int64_t>& item_bin, int grid,
         int num_threads, std::optional<uint64_t> shuffle_seed) {
        const int64_t n = order.size();
        expect(users.ndim() == 1 && items.ndim() == 1 && order.ndim() == 1 &&
                   users.size() == n && items.size() == n,
               "users, items and order must be 1-d of one length, got shapes " +
                   shape_of(users) + ", " + shape_of(items) + " and " + shape_of(order));
        expect(user_bin.ndim() == 1 && item_bin.ndim() == 1, "user_bin and item_bin must be 1-d");
        expect(grid >= 1 && grid <= 1024, "grid must be in [1, 1024], got " + std::to_string(grid));
        py::array_t<int32_t> users_out(n), items_out(n);
        py::array_t<int64_t> order_out(n), offsets(static_cast<int64_t>(grid) * grid + 1);
        int32_t *u = users_out.mutable_data(), *i = items_out.mutable_data();
        int64_t *o = order_out.mutable_data(), *b = offsets.mutable_data();
        {
          ReleaseGil release;
          recfuse::sgd_block_layout(users.data(), items.data(), order.data(), n,
                                    user_bin.data(), user_bin.size(), item_bin.data(),
                                    item_bin.size(), grid, u, i, o, b, num_threads);
          if (shuffle_seed) {
            recfuse::sgd_shuffle_blocks(*shuffle_seed, b, static_cast<int64_t>(grid) * grid, u,
                                        i, o, num_threads);
          }
        }
        return py::make_tuple(users_out, items_out, order_out, offsets);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("order").noconvert(),
      py::arg("user_bin").noconvert(), py::arg("item_bin").noconvert(), py::arg("grid"),
      py::arg("num_threads") = 0, py::arg("shuffle_seed") = py::none(),
      "(users int32, items int32, order int64, offsets int64) of recfuse._sgd.common."
      "make_blocks: entries grouped by block in schedule order, a stable counting sort, then "
      "each block shuffled (recfuse::sgd_shuffle_blocks) when shuffle_seed is given.");

  m.def(
      "pairs_pattern",
      [](const Array<int64_t>& rows, const Array<int64_t>& cols, int64_t n_rows, int64_t n_cols) {
        expect(rows.ndim() == 1 && cols.ndim() == 1 && rows.size() == cols.size(),
               "rows and cols must be 1-d of one length, got shapes " + shape_of(rows) + " and " +
                   shape_of(cols));
        expect(n_rows >= 0 && n_cols >= 0 && n_cols <= INT32_MAX,
               "n_rows and n_cols must be >= 0 (n_cols < 2^31), got " + std::to_string(n_rows) +
                   " and " + std::to_string(n_cols));
        const int64_t n = rows.size();
        py::array_t<int64_t> indptr(n_rows + 1);
        py::array_t<int32_t> indices(n);
        int64_t kept;
        {
          ReleaseGil release;
          kept = recfuse::pairs_pattern(rows.data(), cols.data(), n, n_rows, n_cols,
                                        indptr.mutable_data(), indices.mutable_data());
        }
        indices.resize({kept}, false);
        return py::make_tuple(indptr, indices);
      },
      py::arg("rows").noconvert(), py::arg("cols").noconvert(), py::arg("n_rows"),
      py::arg("n_cols"),
      "(indptr int64, indices int32): the CSR pattern of the pairs (rows[t], cols[t]), each "
      "row's distinct columns ascending (recfuse._sgd.common.Pattern.from_pairs).");
}

template <class T>
void bind_sgd_functions(py::module_& m) {
  m.def(
      "normal_rows",
      [](uint64_t seed, Array<T>& out, int k, double mean, double std,
         const std::optional<Array<int64_t>>& source, int num_threads) {
        expect(out.ndim() == 2 && out.shape(1) >= k && k >= 0,
               "out must be 2-d with at least k = " + std::to_string(k) +
                   " >= 0 columns, got shape " + shape_of(out));
        const int64_t rows = out.shape(0);
        const int64_t* src = nullptr;
        if (source) {
          expect(source->ndim() == 1 && source->shape(0) == rows,
                 "source must be 1-d with one entry per row of out (" + std::to_string(rows) +
                     "), got shape " + shape_of(*source));
          src = source->data();
          bool ok = true;  // one message, after the loop
          for (int64_t r = 0; r < rows; ++r) ok &= src[r] >= 0;
          expect(ok, "source rows must be >= 0");
        }
        T* o = out.mutable_data();
        ReleaseGil release;
        recfuse::normal_rows<T>(seed, src, rows, k, out.shape(1), static_cast<T>(mean),
                                static_cast<T>(std), o, num_threads);
      },
      py::arg("seed"), py::arg("out").noconvert(), py::arg("k"), py::arg("mean"), py::arg("std"),
      py::arg("source") = py::none(), py::arg("num_threads") = 0,
      "Fills out (rows x width) in place: out[r, c] = mean + std * normal_at(seed, source[r] * k "
      "+ c) for c < k, 0 beyond (recfuse.reference.normal_draws; source None: source[r] = r).");
  m.def(
      "rows_in_id_order",
      [](Array<T>& data, int k, const Array<int32_t>& rows_at) {
        expect(data.ndim() == 2 && k >= 0 && data.shape(1) >= k,
               "data must be 2-d with at least k = " + std::to_string(k) +
                   " >= 0 columns, got shape " + shape_of(data));
        expect(data.writeable(), "data must be writeable");
        expect(rows_at.ndim() == 1 && rows_at.shape(0) == data.shape(0),
               "rows_at must be 1-d with one entry per row of data (" +
                   std::to_string(data.shape(0)) + "), got shape " + shape_of(rows_at));
        T* d = data.mutable_data();
        ReleaseGil release;
        recfuse::rows_in_id_order<T>(d, data.shape(0), data.shape(1), k, rows_at.data());
      },
      py::arg("data").noconvert(), py::arg("k"), py::arg("rows_at").noconvert(),
      "Rearranges data (rows x width; row t is id rows_at[t]'s) in place so that its first "
      "rows * k values are the rows' first k columns packed in id order "
      "(recfuse._sgd.common.trained_rows_in_id_order).");
  m.def(
      "svd_epoch",
      [](const Array<int32_t>& users, const Array<int32_t>& items, const Array<T>& ratings,
         const Array<int64_t>& offsets, int grid, double global_mean, Array<T>& user_bias,
         Array<T>& item_bias, Array<T>& P, Array<T>& Q, const std::array<double, 5>& lr,
         const std::array<double, 5>& reg, bool biased, int num_threads) {
        const BlockLayout L = block_layout(users, items, offsets, grid);
        expect(ratings.ndim() == 1 && ratings.size() == users.size(),
               "ratings must have one entry per user id, got shape " + shape_of(ratings));
        const auto [k, n_users, n_items] = svd_shape(P, Q, user_bias, item_bias);
        const auto rates = sgd_rates<T>(lr, reg);
        const T* r = ratings.data();
        T *bu = user_bias.mutable_data(), *bi = item_bias.mutable_data();
        T *p = P.mutable_data(), *q = Q.mutable_data();
        ReleaseGil release;
        recfuse::svd_epoch<T>(L, r, static_cast<T>(global_mean), bu, bi, p, q, n_users, n_items,
                              static_cast<int>(k), rates, biased, num_threads);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("ratings").noconvert(),
      py::arg("offsets").noconvert(), py::arg("grid"), py::arg("global_mean"),
      py::arg("user_bias").noconvert(), py::arg("item_bias").noconvert(),
      py::arg("P").noconvert(), py::arg("Q").noconvert(), py::arg("lr"), py::arg("reg"),
      py::arg("biased"), py::arg("num_threads") = 0,
      "One Funk SVD epoch in place over ratings grouped by block (recfuse.reference."
      "svd_sgd_epoch in array order). lr and reg: (bu, bi, pu, qi, unused).");

  m.def(
      "svdpp_epoch",
      [](const Array<int32_t>& users, const Array<int32_t>& items, const Array<T>& ratings,
         const Array<int64_t>& offsets, int grid, double global_mean, Array<T>& user_bias,
         Array<T>& item_bias, Array<T>& P, Array<T>& Q, Array<T>& Y,
         const Array<int64_t>& implicit_indptr, const Array<int32_t>& implicit_indices,
         const std::array<double, 5>& lr, const std::array<double, 5>& reg) {
        const BlockLayout L = block_layout(users, items, offsets, grid);
        expect(ratings.ndim() == 1 && ratings.size() == users.size(),
               "ratings must have one entry per user id, got shape " + shape_of(ratings));
        const auto [k, n_users, n_items] = svd_shape(P, Q, user_bias, item_bias);
        expect(factor_rows(Y, k, "Y") == n_items, "Y must have as many rows as Q");
        expect(implicit_indptr.ndim() == 1 && implicit_indptr.size() == n_users + 1 &&
                   implicit_indices.ndim() == 1 &&
                   implicit_indices.size() == implicit_indptr.at(n_users),
               "implicit must be a CSR pattern with n_users + 1 indptr entries");
        const auto rates = sgd_rates<T>(lr, reg);
        const T* r = ratings.data();
        T *bu = user_bias.mutable_data(), *bi = item_bias.mutable_data();
        T *p = P.mutable_data(), *q = Q.mutable_data(), *y = Y.mutable_data();
        ReleaseGil release;
        recfuse::svdpp_epoch<T>(L, r, static_cast<T>(global_mean), bu, bi, p, q, y, n_users,
                                n_items, static_cast<int>(k), implicit_indptr.data(),
                                implicit_indices.data(), rates);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("ratings").noconvert(),
      py::arg("offsets").noconvert(), py::arg("grid"), py::arg("global_mean"),
      py::arg("user_bias").noconvert(), py::arg("item_bias").noconvert(),
      py::arg("P").noconvert(), py::arg("Q").noconvert(), py::arg("Y").noconvert(),
      py::arg("implicit_indptr").noconvert(), py::arg("implicit_indices").noconvert(),
      py::arg("lr"), py::arg("reg"),
      "One SVD++ epoch in place by user passes, sequential (recfuse.reference.svdpp_sgd_epoch "
      "in array order). lr and reg: (bu, bi, pu, qi, yj).");

  m.def(
      "bpr_epoch",
      [](const Array<int32_t>& users, const Array<int32_t>& items, const Array<int64_t>& offsets,
         int grid, const Array<int64_t>& seen_indptr, const Array<int32_t>& seen_indices,
         const Array<int32_t>& bin_items, const Array<int64_t>& bin_offsets, Array<T>& P,
         Array<T>& Q, Array<T>& item_bias, double lr, double reg, uint64_t seed, int max_tries,
         Array<int32_t>& negatives, int num_threads) {
        const BlockLayout L = block_layout(users, items, offsets, grid);
        expect(P.ndim() == 2, "P must be 2-d, got shape " + shape_of(P));
        const int64_t k = P.shape(1);
        const int64_t n_users = factor_rows(P, k, "P"), n_items = factor_rows(Q, k, "Q");
        check_vector(item_bias, n_items, "item_bias");
        check_vector(negatives, users.size(), "negatives");
        expect(seen_indptr.ndim() == 1 && seen_indptr.size() == n_users + 1 &&
                   seen_indices.ndim() == 1 && seen_indices.size() == seen_indptr.at(n_users),
               "seen must be a CSR pattern with n_users + 1 indptr entries");
        expect(bin_offsets.ndim() == 1 && bin_offsets.size() == grid + 1 && bin_items.ndim() == 1 &&
                   bin_items.size() == bin_offsets.at(grid),
               "bin_offsets must have grid + 1 entries ending at len(bin_items)");
        T *p = P.mutable_data(), *q = Q.mutable_data(), *b = item_bias.mutable_data();
        int32_t* out = negatives.mutable_data();
        ReleaseGil release;
        return recfuse::bpr_epoch<T>(L, seen_indptr.data(), seen_indices.data(), bin_items.data(),
                                     bin_offsets.data(), p, q, b, n_users, n_items,
                                     static_cast<int>(k), static_cast<T>(lr), static_cast<T>(reg),
                                     seed, max_tries, out, num_threads);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("offsets").noconvert(),
      py::arg("grid"), py::arg("seen_indptr").noconvert(), py::arg("seen_indices").noconvert(),
      py::arg("bin_items").noconvert(), py::arg("bin_offsets").noconvert(),
      py::arg("P").noconvert(), py::arg("Q").noconvert(), py::arg("item_bias").noconvert(),
      py::arg("lr"), py::arg("reg"), py::arg("seed"), py::arg("max_tries"),
      py::arg("negatives").noconvert(), py::arg("num_threads") = 0,
      "One BPR epoch in place over positive pairs grouped by block; negatives drawn from the "
      "block's column bin, verified unseen, written to `negatives` (-1: skipped). Returns the "
      "number of skipped pairs.");
  m.def(
      "explicit_als_half_sweep",
      [](const Array<int64_t>& indptr, const Array<int32_t>& indices, const Array<T>& data,
         const Array<T>& Y, Array<T>& X, std::optional<Array<T>> other_bias,
         std::optional<Array<T>> own_bias, double global_mean, double reg, double reg_bias,
         int num_threads) {
        expect(Y.ndim() == 2, "Y must be 2-d, got shape " + shape_of(Y));
        const int64_t k = Y.shape(1);
        const auto R = csr_view<T>(indptr, indices, data, Y.shape(0), "the ratings matrix's");
        expect(factor_rows(X, k, "X") == R.rows,
               "X must have one row per matrix row (" + std::to_string(R.rows) + "), got shape " +
                   shape_of(X));
        expect(other_bias.has_value() == own_bias.has_value(),
               "other_bias and own_bias must both be given (biased) or both be None");
        const T* ob = nullptr;
        T* wb = nullptr;
        if (other_bias) {
          expect(other_bias->ndim() == 1 && other_bias->size() == R.cols,
                 "other_bias must have shape (" + std::to_string(R.cols) + ",), got " +
                     shape_of(*other_bias));
          check_vector(*own_bias, R.rows, "own_bias");
          ob = other_bias->data();
          wb = own_bias->mutable_data();
        }
        const T* y = Y.data();
        T* x = X.mutable_data();
        ReleaseGil release;
        return recfuse::explicit_als_half_sweep<T>(
            R.indptr, R.indices, R.data, R.rows, R.cols, y, ob, static_cast<T>(global_mean),
            static_cast<int>(k), static_cast<T>(reg), static_cast<T>(reg_bias), x, wb,
            num_threads);
      },
      py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("data").noconvert(),
      py::arg("Y").noconvert(), py::arg("X").noconvert(),
      py::arg("other_bias").noconvert() = py::none(), py::arg("own_bias").noconvert() = py::none(),
      py::arg("global_mean"), py::arg("reg"), py::arg("reg_bias"),
      py::arg("num_threads") = 0,
      "One explicit (ratings) ALS half-sweep with weighted-lambda regularisation, in place "
      "(recfuse.reference.explicit_als_half_sweep). Returns the number of rows whose system "
      "was not positive definite (left unchanged).");
}

}  // namespace bindings
}  // namespace recfuse

// recfuse._core bindings of the evaluation kernels (recfuse/metrics.hpp). Arrays arrive with
// the exact dtype and C order (noconvert); the GIL is released around the kernels.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "als_bindings.hpp"
#include "recfuse/metrics.hpp"

namespace recfuse {
namespace bindings {

template <class T>
void bind_intra_list_diversity(py::module_& m) {
  m.def(
      "intra_list_diversity",
      [](const Array<int64_t>& recommended, const Array<T>& vectors, int num_threads) {
        expect(recommended.ndim() == 2, "recommended must be 2-d, got " + shape_of(recommended));
        expect(vectors.ndim() == 2, "vectors must be 2-d, got " + shape_of(vectors));
        const int64_t n_rows = recommended.shape(0);
        Array<double> out({static_cast<py::ssize_t>(n_rows)});
        const int64_t* ids = recommended.data();
        const T* v = vectors.data();
        double* o = out.mutable_data();
        const int k = static_cast<int>(recommended.shape(1));
        const int64_t n_items = vectors.shape(0), dim = vectors.shape(1);
        {
          ReleaseGil release;
          recfuse::intra_list_diversity<T>(ids, n_rows, k, v, n_items, dim, o, num_threads);
        }
        return out;
      },
      py::arg("recommended").noconvert(), py::arg("vectors").noconvert(),
      py::arg("num_threads") = 0,
      "Mean pairwise (1 - cosine) of each row's recommended items; NaN below two items.");
}

inline void bind_metrics_functions(py::module_& m) {
  m.def(
      "ranking_metrics",
      [](const Array<int64_t>& recommended, const Array<int64_t>& rows,
         const Array<int64_t>& test_indptr, const Array<int32_t>& test_indices, int64_t n_items,
         int num_threads) {
        expect(recommended.ndim() == 2 && recommended.shape(1) >= 1,
               "recommended must be 2-d with at least one column, got " + shape_of(recommended));
        const int64_t n_rows = recommended.shape(0);
        expect(rows.ndim() == 1 && rows.size() == n_rows,
               "rows must be 1-d of length " + std::to_string(n_rows) + ", got " + shape_of(rows));
        expect(test_indptr.ndim() == 1 && test_indptr.size() >= 1,
               "test indptr must be 1-d and non-empty, got " + shape_of(test_indptr));
        const int64_t n_test_rows = test_indptr.size() - 1;
        expect(test_indices.ndim() == 1 && test_indices.size() == test_indptr.at(n_test_rows),
               "test indices must be 1-d of length indptr[-1]");
        Array<double> out({static_cast<py::ssize_t>(n_rows),
                           static_cast<py::ssize_t>(recfuse::kRankingColumns)});
        const int64_t* ids = recommended.data();
        const int64_t* r = rows.data();
        const int64_t* indptr = test_indptr.data();
        const int32_t* indices = test_indices.data();
        double* o = out.mutable_data();
        const int k = static_cast<int>(recommended.shape(1));
        {
          ReleaseGil release;
          recfuse::ranking_metrics(ids, n_rows, k, r, indptr, indices, n_test_rows, n_items, o,
                                   num_threads);
        }
        return out;
      },
      py::arg("recommended").noconvert(), py::arg("rows").noconvert(),
      py::arg("test_indptr").noconvert(), py::arg("test_indices").noconvert(),
      py::arg("n_items"), py::arg("num_threads") = 0,
      "Per-row ranking metrics (n_rows x 8: hits, relevant, AP, NDCG, AUC, RR, recall, hit); "
      "see recfuse.reference_data.ranking_metrics.");
  bind_intra_list_diversity<float>(m);
  bind_intra_list_diversity<double>(m);
}

}  // namespace bindings
}  // namespace recfuse

// The top-k item table as a Python class, for any backend: `Index` is constructed from
// (items, n, d, bias, scale, num_threads, bfloat16) on the host and has
//   void search(const T* queries, int64_t m, int k, const recfuse::TopkFilters&,
//               int num_threads, int64_t* ids, T* scores) const;
// Arrays arrive with the exact dtype and C order (noconvert); the GIL is released while
// packing and searching.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "als_bindings.hpp"
#include "recfuse/topk.hpp"

namespace recfuse {
namespace bindings {

template <class T>
const T* optional_vector(const std::optional<Array<T>>& v, int64_t n, const char* name) {
  if (!v) return nullptr;
  expect(v->ndim() == 1 && v->shape(0) == n, std::string(name) + " must have shape (" +
                                                   std::to_string(n) + ",), got " + shape_of(*v));
  return v->data();
}

template <class Index, class T>
void bind_topk_index(py::module_& m, const char* class_name, const std::string& note) {
  py::class_<Index>(m, class_name, ("Packed item table for exact top-k." + note).c_str())
      .def(py::init([](const Array<T>& items, const std::optional<Array<T>>& bias,
                       const std::optional<Array<T>>& scale, int num_threads, bool bfloat16) {
             expect(items.ndim() == 2 && items.shape(1) >= 1,
                    "items must be 2-d with at least one column, got shape " + shape_of(items));
             const int64_t n = items.shape(0);
             expect(n <= INT32_MAX, "items must have at most 2**31 - 1 rows");
             const int d = static_cast<int>(items.shape(1));
             const T* b = optional_vector<T>(bias, n, "bias");
             const T* s = optional_vector<T>(scale, n, "scale");
             const T* v = items.data();
             ReleaseGil release;
             return new Index(v, n, d, b, s, num_threads, bfloat16);
           }),
           py::arg("items").noconvert(), py::arg("bias").noconvert() = py::none(),
           py::arg("scale").noconvert() = py::none(), py::arg("num_threads") = 0,
           py::arg("bfloat16") = false,
           // bfloat16 storage scores its survivors again from `items`: keep it alive.
           py::keep_alive<1, 2>())
      .def(
          "search",
          [](const Index& index, const Array<T>& queries, int k,
             const std::optional<Array<int64_t>>& exclude_indptr,
             const std::optional<Array<int32_t>>& exclude_indices,
             const std::optional<Array<uint8_t>>& mask, int num_threads) {
            expect(queries.ndim() == 2 && queries.shape(1) == index.d(),
                   "queries must have shape (m, " + std::to_string(index.d()) + "), got " +
                       shape_of(queries));
            expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
            const int64_t m = queries.shape(0);
            TopkFilters filters;
            expect(exclude_indptr.has_value() == exclude_indices.has_value(),
                   "exclude_indptr and exclude_indices go together");
            if (exclude_indptr) {
              expect(exclude_indptr->ndim() == 1 && exclude_indptr->shape(0) == m + 1,
                     "exclude_indptr must have shape (" + std::to_string(m + 1) + ",), got " +
                         shape_of(*exclude_indptr));
              const int64_t* ptr = exclude_indptr->data();
              const int64_t nnz = exclude_indices->ndim() == 1 ? exclude_indices->shape(0) : -1;
              expect(ptr[0] == 0 && ptr[m] == nnz, "exclude_indptr must run from 0 to len(exclude_indices)");
              for (int64_t r = 0; r < m; ++r)  // the message only for a bad row
                if (ptr[r] > ptr[r + 1]) expect(false, "exclude_indptr must not decrease");
              filters.exclude_indptr = ptr;
              filters.exclude_indices = exclude_indices->data();
            }
            if (mask) {
              expect(mask->ndim() == 1 && mask->shape(0) == index.n(),
                     "mask must have shape (" + std::to_string(index.n()) + ",), got " +
                         shape_of(*mask));
              filters.mask = mask->data();
            }
            Array<int64_t> ids({m, static_cast<int64_t>(k)});
            Array<T> scores({m, static_cast<int64_t>(k)});
            const T* q = queries.data();
            int64_t* out_ids = ids.mutable_data();
            T* out_scores = scores.mutable_data();
            {
              ReleaseGil release;
              index.search(q, m, k, filters, num_threads, out_ids, out_scores);
            }
            return py::make_tuple(ids, scores);
          },
          py::arg("queries").noconvert(), py::arg("k"),
          py::arg("exclude_indptr").noconvert() = py::none(),
          py::arg("exclude_indices").noconvert() = py::none(),
          py::arg("mask").noconvert() = py::none(), py::arg("num_threads") = 0,
          "(ids int64 m x k, scores m x k): the k best qualifying items per query, padded "
          "with -1 / -inf. Excluded ids must be sorted within each query's row.")
      .def_property_readonly("bfloat16", &Index::bfloat16)
      .def_property_readonly("n", &Index::n)
      .def_property_readonly("d", &Index::d);
}

}  // namespace bindings
}  // namespace recfuse

// recfuse._core: the only place Python meets the C++ core. Arrays must arrive with the
// exact dtype and C order (noconvert): the Python layer converts visibly, once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "array_checks.hpp"
#include "recfuse/als.hpp"
#include "recfuse/simd.hpp"

namespace py = pybind11;
using namespace recfuse::bindings;

namespace {

template <class T>
void bind_dtype(py::module_& m) {
  m.def(
      "gram",
      [](const Array<T>& Y, int num_threads) {
        expect(Y.ndim() == 2, "Y must be 2-d, got shape " + shape_of(Y));
        const int k = static_cast<int>(Y.shape(1));
        Array<T> G({k, k});
        const T* y = Y.data();
        T* g = G.mutable_data();
        {
          py::gil_scoped_release release;
          recfuse::gram(y, Y.shape(0), k, g, num_threads);
        }
        return G;
      },
      py::arg("Y").noconvert(), py::arg("num_threads") = 0, "YᵀY (k x k).");

  m.def(
      "als_half_sweep",
      [](const Array<int64_t>& indptr, const Array<int32_t>& indices, const Array<T>& data,
         const Array<T>& Y, Array<T>& X, const std::optional<Array<T>>& gram, double regularization,
         double alpha, bool raw_confidence, bool cholesky, int cg_steps, int num_threads) {
        expect(Y.ndim() == 2 && X.ndim() == 2, "Y and X must be 2-d");
        expect(X.shape(1) == Y.shape(1), "X has " + std::to_string(X.shape(1)) +
                                             " columns but Y has " + std::to_string(Y.shape(1)));
        expect(X.writeable(), "X must be writeable");
        auto R = csr_view<T>(indptr, indices, data, Y.shape(0), "the matrix's");
        expect(X.shape(0) == R.rows, "X has " + std::to_string(X.shape(0)) +
                                         " rows but the matrix has " + std::to_string(R.rows));
        const int k = static_cast<int>(Y.shape(1));
        const T* g = optional_gram<T>(gram, k);
        const auto params = make_params<T>(regularization, alpha, raw_confidence, cholesky,
                                           cg_steps, num_threads);
        const T* y = Y.data();
        T* x = X.mutable_data();
        py::gil_scoped_release release;
        return recfuse::als_half_sweep(R, y, k, g, x, params);
      },
      py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("data").noconvert(),
      py::arg("Y").noconvert(), py::arg("X").noconvert(), py::arg("gram").noconvert() = py::none(),
      py::arg("regularization"), py::arg("alpha"), py::arg("raw_confidence"), py::arg("cholesky"),
      py::arg("cg_steps"), py::arg("num_threads") = 0,
      "Re-solve every row of X in place; returns the number of rows left unchanged because "
      "their system was not positive definite.");

  m.def(
      "als_data_loss",
      [](const Array<int64_t>& indptr, const Array<int32_t>& indices, const Array<T>& data,
         const Array<T>& X, const Array<T>& Y, const std::optional<Array<T>>& gram, double alpha,
         bool raw_confidence, int num_threads) {
        expect(Y.ndim() == 2 && X.ndim() == 2 && X.shape(1) == Y.shape(1),
               "X and Y must be 2-d with the same number of columns");
        auto R = csr_view<T>(indptr, indices, data, Y.shape(0), "the matrix's");
        expect(X.shape(0) == R.rows, "X rows must match the matrix rows");
        const int k = static_cast<int>(Y.shape(1));
        const T* g = optional_gram<T>(gram, k);
        const T* x = X.data();
        const T* y = Y.data();
        py::gil_scoped_release release;
        return recfuse::als_data_loss(
            R, x, y, k, g, static_cast<T>(alpha),
            raw_confidence ? recfuse::Confidence::Raw : recfuse::Confidence::Linear, num_threads);
      },
      py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("data").noconvert(),
      py::arg("X").noconvert(), py::arg("Y").noconvert(), py::arg("gram").noconvert() = py::none(),
      py::arg("alpha"), py::arg("raw_confidence"), py::arg("num_threads") = 0);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "recfuse native CPU kernels (C++17, OpenMP, runtime SIMD dispatch)";
  bind_dtype<float>(m);
  bind_dtype<double>(m);
  m.def("simd_level", [] { return std::string(recfuse::simd_level_name(recfuse::simd_level())); });
  m.def(
      "set_simd_level",
      [](const std::string& name) { recfuse::set_simd_level(recfuse::parse_simd_level(name)); },
      py::arg("level"));
  m.def("supported_simd_levels", [] {
    std::vector<std::string> names;
    for (auto level : recfuse::supported_simd_levels()) names.emplace_back(recfuse::simd_level_name(level));
    return names;
  });
}

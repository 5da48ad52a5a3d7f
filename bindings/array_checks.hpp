// Argument checks shared by the pybind11 modules (recfuse._core and recfuse._cuda): arrays
// arrive with the exact dtype and C order; these helpers check shapes and build the views
// the C++ and CUDA cores take. Errors are std::invalid_argument (ValueError in Python).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "recfuse/als.hpp"

namespace recfuse {
namespace bindings {

namespace py = pybind11;

template <class T>
using Array = py::array_t<T, py::array::c_style>;

inline void expect(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

inline std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
recfuse::CsrView<T> csr_view(const Array<int64_t>& indptr, const Array<int32_t>& indices,
                             const Array<T>& data, int64_t cols, const char* name) {
  const std::string what(name);
  expect(indptr.ndim() == 1 && indptr.size() >= 1,
         what + " indptr must be 1-d with at least one entry, got shape " + shape_of(indptr));
  expect(indices.ndim() == 1 && data.ndim() == 1,
         what + " indices and data must be 1-d, got shapes " + shape_of(indices) + " and " +
             shape_of(data));
  const int64_t rows = indptr.size() - 1;
  const int64_t nnz = indptr.at(rows);
  expect(indices.size() == nnz && data.size() == nnz,
         what + " indptr[-1] (" + std::to_string(nnz) + "), len(indices) (" +
             std::to_string(indices.size()) + ") and len(data) (" + std::to_string(data.size()) +
             ") must agree");
  return {indptr.data(), indices.data(), data.data(), rows, cols};
}

template <class T>
const T* optional_gram(const std::optional<Array<T>>& gram, int k) {
  if (!gram) return nullptr;
  expect(gram->ndim() == 2 && gram->shape(0) == k && gram->shape(1) == k,
         "gram must have shape (" + std::to_string(k) + ", " + std::to_string(k) + "), got " +
             shape_of(*gram));
  return gram->data();
}

template <class T>
recfuse::AlsParams<T> make_params(double regularization, double alpha, bool raw_confidence,
                                  bool cholesky, int cg_steps, int num_threads = 0) {
  recfuse::AlsParams<T> params;
  params.regularization = static_cast<T>(regularization);
  params.alpha = static_cast<T>(alpha);
  params.confidence = raw_confidence ? recfuse::Confidence::Raw : recfuse::Confidence::Linear;
  params.solver = cholesky ? recfuse::Solver::Cholesky : recfuse::Solver::ConjugateGradient;
  params.cg_steps = cg_steps;
  params.num_threads = num_threads;
  return params;
}

}  // namespace bindings
}  // namespace recfuse

// What the pybind11 modules recfuse._core and recfuse._cuda share: argument checks and the
// three host-array ALS functions (gram, als_half_sweep, als_data_loss), bound once for any
// backend. Arrays arrive with the exact dtype and C order (noconvert); errors are
// std::invalid_argument (ValueError in Python). The GIL is released around the kernels.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "recfuse/als.hpp"

namespace recfuse {
namespace bindings {

namespace py = pybind11;

template <class T>
using Array = py::array_t<T, py::array::c_style>;

inline void expect(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// Releases the GIL for the scope of a native call, as py::gil_scoped_release (which the
// bindings use only through this). A thread whose call ends while the interpreter is
// finalizing (a daemon thread, e.g. a MicroBatcher worker, still in a native call at exit)
// must not take the GIL back: CPython ends such a thread with pthread_exit, whose unwinding
// through gil_scoped_release's noexcept destructor calls std::terminate ("terminate called
// without an active exception", the process aborted with status 134 after a clean exit). It
// waits here for the process to end instead (what CPython 3.14 does itself). The check and
// the re-acquisition are not atomic: a finalization that starts while the thread already
// waits for the GIL still ends it as before, a window as long as that wait (long when several
// threads contend). recfuse's own worker threads (MicroBatcher) are therefore ended before
// finalization (batching.py, _close_at_exit); a user's daemon thread can still meet it. The thread
// that finalizes (the main thread, under Py_RunMain) is not ended: a call it makes then (a
// __del__ run by the last collection) takes the GIL back; waiting there hung the exit.
class ReleaseGil {
 public:
  ReleaseGil() = default;
  ReleaseGil(const ReleaseGil&) = delete;
  ReleaseGil& operator=(const ReleaseGil&) = delete;
  ~ReleaseGil() {  // runs before release_'s destructor takes the GIL back
    if (finalizing() && PyThread_get_thread_ident() != main_thread_ident())
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }

  // Each module's init records the main thread (threading.main_thread(), whichever thread
  // imports the module); until then no thread counts as the main one.
  static unsigned long& main_thread_ident() {
    static unsigned long ident = 0;
    return ident;
  }
  static void record_main_thread() {
    main_thread_ident() =
        py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  }

 private:
  static bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
  }
  py::gil_scoped_release release_;
};

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

// Binds gram, als_half_sweep and als_data_loss for element type T. `Kernels` provides
// static gram, half_sweep and data_loss with the signatures of recfuse/als.hpp (including
// num_threads, which a device backend may ignore); `note` is appended to the docstrings.
template <class T, class Kernels>
void bind_als_functions(py::module_& m, const std::string& note) {
  m.def(
      "gram",
      [](const Array<T>& Y, int num_threads) {
        expect(Y.ndim() == 2, "Y must be 2-d, got shape " + shape_of(Y));
        const int k = static_cast<int>(Y.shape(1));
        Array<T> G({k, k});
        const T* y = Y.data();
        T* g = G.mutable_data();
        {
          ReleaseGil release;
          Kernels::gram(y, Y.shape(0), k, g, num_threads);
        }
        return G;
      },
      py::arg("Y").noconvert(), py::arg("num_threads") = 0, ("YᵀY (k x k)." + note).c_str());

  m.def(
      "als_half_sweep",
      [](const Array<int64_t>& indptr, const Array<int32_t>& indices, const Array<T>& data,
         const Array<T>& Y, Array<T>& X, const std::optional<Array<T>>& gram, double regularization,
         double alpha, bool raw_confidence, bool cholesky, int cg_steps, int num_threads,
         bool huge_page_copy, std::optional<Array<T>>& woodbury_table) {
        expect(Y.ndim() == 2 && X.ndim() == 2,
               "Y and X must be 2-d, got shapes " + shape_of(Y) + " and " + shape_of(X));
        expect(X.shape(1) == Y.shape(1), "X has " + std::to_string(X.shape(1)) +
                                             " columns but Y has " + std::to_string(Y.shape(1)));
        expect(X.writeable(), "X must be writeable");
        const auto R = csr_view<T>(indptr, indices, data, Y.shape(0), "the matrix's");
        expect(X.shape(0) == R.rows, "X has " + std::to_string(X.shape(0)) +
                                         " rows but the matrix has " + std::to_string(R.rows));
        const int k = static_cast<int>(Y.shape(1));
        const T* g = optional_gram<T>(gram, k);
        auto params = make_params<T>(regularization, alpha, raw_confidence, cholesky, cg_steps,
                                     num_threads);
        params.huge_page_copy = huge_page_copy;
        if (woodbury_table) {
          expect(woodbury_table->writeable() && woodbury_table->size() >= Y.size(),
                 "woodbury_table must be writeable with room for Y's " +
                     std::to_string(Y.size()) + " values, got shape " +
                     shape_of(*woodbury_table));
          params.woodbury_table = woodbury_table->mutable_data();
        }
        const T* y = Y.data();
        T* x = X.mutable_data();
        ReleaseGil release;
        return Kernels::half_sweep(R, y, k, g, x, params);
      },
      py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("data").noconvert(),
      py::arg("Y").noconvert(), py::arg("X").noconvert(), py::arg("gram").noconvert() = py::none(),
      py::arg("regularization"), py::arg("alpha"), py::arg("raw_confidence"), py::arg("cholesky"),
      py::arg("cg_steps"), py::arg("num_threads") = 0, py::arg("huge_page_copy") = true,
      py::arg("woodbury_table").noconvert() = py::none(),
      ("Re-solve every row of X in place; returns the number of rows left unchanged because "
       "their solve failed (recfuse.reference). CPU layout hints: huge_page_copy=False: Y "
       "already lives on huge pages (huge_page_table), do not copy it there; woodbury_table: "
       "scratch of at least Y.size values that the Cholesky solver's Woodbury rows use instead "
       "of fresh memory." + note).c_str());

  m.def(
      "als_data_loss",
      [](const Array<int64_t>& indptr, const Array<int32_t>& indices, const Array<T>& data,
         const Array<T>& X, const Array<T>& Y, const std::optional<Array<T>>& gram, double alpha,
         bool raw_confidence, int num_threads) {
        expect(Y.ndim() == 2 && X.ndim() == 2 && X.shape(1) == Y.shape(1),
               "X and Y must be 2-d with the same number of columns, got shapes " + shape_of(X) +
                   " and " + shape_of(Y));
        const auto R = csr_view<T>(indptr, indices, data, Y.shape(0), "the matrix's");
        expect(X.shape(0) == R.rows, "X has " + std::to_string(X.shape(0)) +
                                         " rows but the matrix has " + std::to_string(R.rows));
        const int k = static_cast<int>(Y.shape(1));
        const T* g = optional_gram<T>(gram, k);
        const T* x = X.data();
        const T* y = Y.data();
        ReleaseGil release;
        return Kernels::data_loss(
            R, x, y, k, g, static_cast<T>(alpha),
            raw_confidence ? recfuse::Confidence::Raw : recfuse::Confidence::Linear, num_threads);
      },
      py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("data").noconvert(),
      py::arg("X").noconvert(), py::arg("Y").noconvert(), py::arg("gram").noconvert() = py::none(),
      py::arg("alpha"), py::arg("raw_confidence"), py::arg("num_threads") = 0,
      ("Σ_u [x_uᵀ YᵀY x_u + Σ_i (q − 2 q d + w d²)], accumulated in float64." + note).c_str());
}

}  // namespace bindings
}  // namespace recfuse

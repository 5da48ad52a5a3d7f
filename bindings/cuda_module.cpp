// recfuse._cuda: the CUDA ALS kernels for Python. The same conventions as recfuse._core:
// arrays must arrive with the exact dtype and C order (noconvert); they are host NumPy
// arrays, copied to the device and back. The GIL is released during device work.
// Importing this module touches no CUDA API, so it works on machines without a driver.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

#include "als_cuda.hpp"
#include "als_bindings.hpp"
#include "mlp_cuda_bindings.hpp"
#include "sgd_bindings.hpp"
#include "sgd_cuda.hpp"
#include "topk_bindings.hpp"
#include "topk_cuda.hpp"

namespace py = pybind11;
namespace rc = recfuse::cuda;
using namespace recfuse::bindings;

namespace {

// One Python class for both precisions; the constructor's dtype picks the instantiation.
class AlsTrainer {
 public:
  template <class T>
  explicit AlsTrainer(std::unique_ptr<rc::AlsTrainer<T>> trainer) : impl_(std::move(trainer)) {}

  int64_t sweep_users() {
    return std::visit(
        [](auto& t) {
          ReleaseGil release;
          return t->sweep_users();
        },
        impl_);
  }

  int64_t sweep_items() {
    return std::visit(
        [](auto& t) {
          ReleaseGil release;
          return t->sweep_items();
        },
        impl_);
  }

  double data_loss() {
    return std::visit(
        [](auto& t) {
          ReleaseGil release;
          return t->data_loss();
        },
        impl_);
  }

  py::tuple factors() {
    return std::visit(
        [](auto& t) -> py::tuple {
          using T = typename std::remove_reference_t<decltype(*t)>::value_type;
          Array<T> X({static_cast<py::ssize_t>(t->users()), static_cast<py::ssize_t>(t->k())});
          Array<T> Y({static_cast<py::ssize_t>(t->items()), static_cast<py::ssize_t>(t->k())});
          T* x = X.mutable_data();
          T* y = Y.mutable_data();
          {
            ReleaseGil release;
            t->factors(x, y);
          }
          return py::make_tuple(std::move(X), std::move(Y));
        },
        impl_);
  }

  std::string dtype() const {
    return impl_.index() == 0 ? "float32" : "float64";
  }
  int64_t users() const {
    return std::visit([](const auto& t) { return t->users(); }, impl_);
  }
  int64_t items() const {
    return std::visit([](const auto& t) { return t->items(); }, impl_);
  }
  int k() const {
    return std::visit([](const auto& t) { return t->k(); }, impl_);
  }

 private:
  std::variant<std::unique_ptr<rc::AlsTrainer<float>>, std::unique_ptr<rc::AlsTrainer<double>>>
      impl_;
};

template <class T>
std::unique_ptr<AlsTrainer> make_trainer(
    const Array<int64_t>& user_indptr, const Array<int32_t>& user_indices,
    const Array<T>& user_data, const Array<int64_t>& item_indptr,
    const Array<int32_t>& item_indices, const Array<T>& item_data, const Array<T>& X,
    const Array<T>& Y, double regularization, double alpha, bool raw_confidence, bool cholesky,
    int cg_steps) {
  expect(X.ndim() == 2 && Y.ndim() == 2,
         "X and Y must be 2-d, got shapes " + shape_of(X) + " and " + shape_of(Y));
  expect(X.shape(1) == Y.shape(1), "X has " + std::to_string(X.shape(1)) +
                                       " columns but Y has " + std::to_string(Y.shape(1)));
  const int64_t users = X.shape(0), items = Y.shape(0);
  const auto R = csr_view<T>(user_indptr, user_indices, user_data, items, "user_items");
  const auto Rt = csr_view<T>(item_indptr, item_indices, item_data, users, "item_users");
  expect(R.rows == users, "X has " + std::to_string(users) + " rows but user_items has " +
                              std::to_string(R.rows));
  expect(Rt.rows == items, "Y has " + std::to_string(items) + " rows but item_users has " +
                               std::to_string(Rt.rows));
  const int k = static_cast<int>(X.shape(1));
  const auto params = make_params<T>(regularization, alpha, raw_confidence, cholesky, cg_steps);
  const T* x = X.data();
  const T* y = Y.data();
  std::unique_ptr<rc::AlsTrainer<T>> trainer;
  {
    ReleaseGil release;
    trainer = std::make_unique<rc::AlsTrainer<T>>(R, Rt, x, y, k, params);
  }
  return std::make_unique<AlsTrainer>(std::move(trainer));
}

// The device kernels as bind_als_functions expects them (host arrays in and out;
// num_threads does not apply).
struct DeviceKernels {
  template <class T>
  static void gram(const T* Y, int64_t n, int k, T* G, int) {
    rc::gram(Y, n, k, G);
  }
  template <class T>
  static int64_t half_sweep(const recfuse::CsrView<T>& R, const T* Y, int k, const T* gram,
                            T* X, const recfuse::AlsParams<T>& params) {
    return rc::als_half_sweep(R, Y, k, gram, X, params);
  }
  template <class T>
  static double data_loss(const recfuse::CsrView<T>& R, const T* X, const T* Y, int k,
                          const T* gram, T alpha, recfuse::Confidence confidence, int) {
    return rc::als_data_loss(R, X, Y, k, gram, alpha, confidence);
  }
};

template <class T>
void bind_dtype(py::module_& m, py::class_<AlsTrainer>& trainer) {
  bind_als_functions<T, DeviceKernels>(m, " Runs on the device; num_threads is ignored.");
  trainer.def(py::init(&make_trainer<T>), py::arg("user_indptr").noconvert(),
              py::arg("user_indices").noconvert(), py::arg("user_data").noconvert(),
              py::arg("item_indptr").noconvert(), py::arg("item_indices").noconvert(),
              py::arg("item_data").noconvert(), py::arg("X").noconvert(),
              py::arg("Y").noconvert(), py::arg("regularization"), py::arg("alpha"),
              py::arg("raw_confidence"), py::arg("cholesky"), py::arg("cg_steps"));
}

// Batch-Hogwild Funk SVD (cuda/sgd.cu): host arrays in; the function updates them in place,
// the class keeps one fit on the device between epochs.
template <class T>
void bind_svd_hogwild(py::module_& m, const char* class_name) {
  const auto check_ratings = [](const Array<int32_t>& users, const Array<int32_t>& items,
                                const Array<T>& ratings) {
    expect(users.ndim() == 1 && items.ndim() == 1 && ratings.ndim() == 1 &&
               users.size() == items.size() && users.size() == ratings.size(),
           "users, items and ratings must be 1-d of one length, got shapes " + shape_of(users) +
               ", " + shape_of(items) + " and " + shape_of(ratings));
  };
  m.def(
      "svd_epochs_hogwild",
      [check_ratings](const Array<int32_t>& users, const Array<int32_t>& items,
                      const Array<T>& ratings, double global_mean, Array<T>& user_bias,
                      Array<T>& item_bias, Array<T>& P, Array<T>& Q,
                      const std::array<double, 5>& lr, const std::array<double, 5>& reg,
                      bool biased, int epochs, int batch) {
        check_ratings(users, items, ratings);
        const auto [k, n_users, n_items] = svd_shape(P, Q, user_bias, item_bias);
        const auto rates = sgd_rates<T>(lr, reg);
        const int32_t* u = users.data();
        const int32_t* i = items.data();
        const T* r = ratings.data();
        T *bu = user_bias.mutable_data(), *bi = item_bias.mutable_data();
        T *p = P.mutable_data(), *q = Q.mutable_data();
        ReleaseGil release;
        rc::svd_epochs_hogwild<T>(u, i, r, users.size(), static_cast<T>(global_mean), bu, bi, p,
                                  q, n_users, n_items, static_cast<int>(k), rates, biased,
                                  epochs, batch);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("ratings").noconvert(),
      py::arg("global_mean"), py::arg("user_bias").noconvert(), py::arg("item_bias").noconvert(),
      py::arg("P").noconvert(), py::arg("Q").noconvert(), py::arg("lr"), py::arg("reg"),
      py::arg("biased"), py::arg("epochs"), py::arg("batch") = 256,
      "`epochs` Funk SVD epochs by batch-Hogwild SGD on the current device, in place (one warp "
      "per batch of consecutive ratings; not deterministic unless one warp holds them all). "
      "lr and reg: (bu, bi, pu, qi, unused).");

  using Fit = rc::SvdHogwild<T>;
  py::class_<Fit>(m, class_name,
                  "One Funk SVD fit on the current device (batch-Hogwild): the ratings, biases "
                  "and factors are uploaded once, trained by epochs() and copied back by "
                  "download(). Make one with svd_hogwild(...).")
      .def("epochs",
           [](Fit& fit, double global_mean, const std::array<double, 5>& lr,
              const std::array<double, 5>& reg, bool biased, int epochs, int batch) {
             const auto rates = sgd_rates<T>(lr, reg);
             ReleaseGil release;
             fit.epochs(static_cast<T>(global_mean), rates, biased, epochs, batch);
           },
           py::arg("global_mean"), py::arg("lr"), py::arg("reg"), py::arg("biased"),
           py::arg("epochs"), py::arg("batch") = 256,
           "Runs `epochs` epochs on the device (lr and reg: (bu, bi, pu, qi, unused)).")
      .def("download",
           [](const Fit& fit, Array<T>& user_bias, Array<T>& item_bias, Array<T>& P,
              Array<T>& Q) {
             // The shapes are the constructor's: download() writes that many values.
             const auto [k, n_users, n_items] = svd_shape(P, Q, user_bias, item_bias);
             expect(k == fit.factors() && n_users == fit.users() && n_items == fit.items(),
                    "download needs arrays of the fit's shapes: P " +
                        std::to_string(fit.users()) + " x " + std::to_string(fit.factors()) +
                        ", Q " + std::to_string(fit.items()) + " x " +
                        std::to_string(fit.factors()) + ", got " + shape_of(P) + " and " +
                        shape_of(Q));
             T *bu = user_bias.mutable_data(), *bi = item_bias.mutable_data();
             T *p = P.mutable_data(), *q = Q.mutable_data();
             ReleaseGil release;
             fit.download(bu, bi, p, q);
           },
           py::arg("user_bias").noconvert(), py::arg("item_bias").noconvert(),
           py::arg("P").noconvert(), py::arg("Q").noconvert(),
           "Copies the current biases and factors into these arrays (the constructor's shapes).");
  m.def(
      "svd_hogwild",
      [check_ratings](const Array<int32_t>& users, const Array<int32_t>& items,
                      const Array<T>& ratings, Array<T>& user_bias, Array<T>& item_bias,
                      Array<T>& P, Array<T>& Q) {
        check_ratings(users, items, ratings);
        const auto [k, n_users, n_items] = svd_shape(P, Q, user_bias, item_bias);
        ReleaseGil release;
        return std::make_unique<Fit>(users.data(), items.data(), ratings.data(), users.size(),
                                     user_bias.data(), item_bias.data(), P.data(), Q.data(),
                                     n_users, n_items, static_cast<int>(k));
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(), py::arg("ratings").noconvert(),
      py::arg("user_bias").noconvert(), py::arg("item_bias").noconvert(),
      py::arg("P").noconvert(), py::arg("Q").noconvert(),
      "A device-resident Funk SVD fit of these ratings from these starting biases and "
      "factors (float32 or float64 throughout).");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  recfuse::bindings::ReleaseGil::record_main_thread();
  m.doc() =
      "recfuse CUDA kernels: implicit ALS (CG and Cholesky), gram and data loss, exact top-k, "
      "batch-Hogwild SVD and the fused MLP scorer on the device";

  m.def("device_count", &rc::device_count,
        "Number of CUDA devices; 0 when there is no driver or no device (never raises).");
  m.def("device_error", &rc::device_error,
        "Why device_count() is 0, or '' when a device is there (never raises).");
  m.def("device_name", &rc::device_name, py::arg("index") = 0, "The name of CUDA device `index`.");
  m.def("cholesky_max_factors", &rc::cholesky_max_factors, py::arg("double_precision") = false,
        "The largest k solver='cholesky' supports on the current device.");
  m.attr("CG_MAX_FACTORS") = rc::cg_max_factors();

  py::class_<AlsTrainer> trainer(
      m, "AlsTrainer",
      "Device-resident ALS state: both CSR matrices and both factor matrices stay on the GPU.\n"
      "AlsTrainer(user_indptr, user_indices, user_data, item_indptr, item_indices, item_data,\n"
      "           X, Y, regularization, alpha, raw_confidence, cholesky, cg_steps)\n"
      "with the item CSR the transpose of the user CSR; float32 or float64 throughout.");
  bind_dtype<float>(m, trainer);
  bind_dtype<double>(m, trainer);
  trainer
      .def("sweep_users", &AlsTrainer::sweep_users,
           "Re-solve X against Y; returns rows left unchanged (failed solves).")
      .def("sweep_items", &AlsTrainer::sweep_items,
           "Re-solve Y against X; returns rows left unchanged (failed solves).")
      .def("data_loss", &AlsTrainer::data_loss, "The data loss of the current factors (float64).")
      .def("factors", &AlsTrainer::factors, "(X, Y) copied to new NumPy arrays.")
      .def_property_readonly("dtype", &AlsTrainer::dtype)
      .def_property_readonly("users", &AlsTrainer::users)
      .def_property_readonly("items", &AlsTrainer::items)
      .def_property_readonly("factors_count", &AlsTrainer::k);

  // Exact top-k (cuda/topk.cu): the item table stays on the device.
  const std::string topk_note =
      " Kept on the current CUDA device; num_threads is ignored. Scratch device memory of a"
      " search is bounded by TOPK_SEARCH_BUDGET_BYTES (queries run in chunks).";
  bind_topk_index<rc::TopkItems<float>, float>(m, "TopkItemsFloat32", topk_note);
  bind_topk_index<rc::TopkItems<double>, double>(m, "TopkItemsFloat64", topk_note);
  m.attr("TOPK_SEARCH_BUDGET_BYTES") = rc::kTopkSearchBudgetBytes;
  m.attr("TOPK_FUSED_MAX_K") = rc::kFusedMaxK;
  bind_svd_hogwild<float>(m, "SvdHogwildFloat32");
  bind_svd_hogwild<double>(m, "SvdHogwildFloat64");
  m.attr("SVD_MAX_FACTORS") = rc::kSvdCudaMaxFactors;
  m.def(
      "set_topk_path",
      [](const std::string& path) {
        if (path == "auto") rc::set_topk_path(rc::TopkPath::Auto);
        else if (path == "simple") rc::set_topk_path(rc::TopkPath::Simple);
        else if (path == "fused") rc::set_topk_path(rc::TopkPath::Fused);
        else throw std::invalid_argument("path must be 'auto', 'simple' or 'fused', got '" + path + "'");
      },
      py::arg("path"),
      "For tests: 'auto' (fused when min(k, n) <= TOPK_FUSED_MAX_K), 'simple' (radix select,"
      " any k) or 'fused' (falls back to simple when k is larger). Process-wide.");
  m.def(
      "topk_path",
      []() -> std::string {
        switch (rc::topk_path()) {
          case rc::TopkPath::Simple: return "simple";
          case rc::TopkPath::Fused: return "fused";
          default: return "auto";
        }
      },
      "The current top-k path ('auto', 'simple' or 'fused').");

  // The fused MLP scorer (cuda/mlp.cu; compiled, not yet run on a GPU).
  bind_mlp_cuda(m);
}

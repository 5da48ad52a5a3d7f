// recfuse._core: the only place Python meets the C++ core. Arrays must arrive with the
// exact dtype and C order (noconvert): the Python layer converts visibly, once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "als_bindings.hpp"
#include "sgd_bindings.hpp"
#include "mlp_bindings.hpp"
#include "data_bindings.hpp"
#include "metrics_bindings.hpp"
#include "recfuse/als.hpp"
#include "recfuse/memory.hpp"
#include "recfuse/mlp.hpp"
#include "recfuse/simd.hpp"
#include "recfuse/threads.hpp"
#include "recfuse/topk.hpp"
#include "recfuse/validation.hpp"
#include "topk_bindings.hpp"

namespace py = pybind11;
using namespace recfuse::bindings;

namespace {

// The memory of a huge_page_table, held by the capsule that is its arrays' base.
struct HugePageMapping {
  void* memory;
  size_t bytes;
};
constexpr const char* kHugePageCapsule = "recfuse.huge_page_table";

// The CPU kernels as bind_als_functions expects them.
struct CpuKernels {
  template <class T>
  static void gram(const T* Y, int64_t n, int k, T* G, int num_threads) {
    recfuse::gram(Y, n, k, G, num_threads);
  }
  template <class T>
  static int64_t half_sweep(const recfuse::CsrView<T>& R, const T* Y, int k, const T* gram,
                            T* X, const recfuse::AlsParams<T>& params) {
    return recfuse::als_half_sweep(R, Y, k, gram, X, params);
  }
  template <class T>
  static double data_loss(const recfuse::CsrView<T>& R, const T* X, const T* Y, int k,
                          const T* gram, T alpha, recfuse::Confidence confidence,
                          int num_threads) {
    return recfuse::als_data_loss(R, X, Y, k, gram, alpha, confidence, num_threads);
  }
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  recfuse::bindings::ReleaseGil::record_main_thread();
  m.doc() = "recfuse native CPU kernels (C++17, OpenMP, runtime SIMD dispatch)";
  bind_als_functions<float, CpuKernels>(m, "");
  bind_als_functions<double, CpuKernels>(m, "");
  bind_topk_index<recfuse::TopkItems<float>, float>(m, "TopkItemsFloat32", "");
  bind_topk_index<recfuse::TopkItems<double>, double>(m, "TopkItemsFloat64", "");
  bind_sgd_helpers(m);
  bind_sgd_functions<float>(m);
  bind_sgd_functions<double>(m);
  bind_mlp(m);
  bind_data_functions(m);
  bind_metrics_functions(m);
  m.def(
      "all_finite",
      [](const Array<float>& array) { return recfuse::mlp_all_finite(array.data(), array.size()); },
      py::arg("array").noconvert(),
      "Whether every element of a C-contiguous float32 array is finite (one pass, no "
      "temporary; recfuse._validation.all_finite).");
  m.def(
      "id_bounds",
      [](const Array<int64_t>& ids) {
        expect(ids.size() >= 1, "id_bounds needs at least one id");
        int64_t low = 0, high = 0;
        recfuse::id_bounds(ids.data(), ids.size(), &low, &high);
        return py::make_tuple(low, high);
      },
      py::arg("ids").noconvert(),
      "(smallest, largest) of a non-empty C-contiguous int64 array, in one pass "
      "(recfuse._validation.id_bounds).");
  m.def(
      "huge_page_table",
      [](int64_t rows, int64_t cols, const std::string& dtype) -> py::object {
        expect(rows >= 0 && cols >= 0, "rows and cols must be >= 0, got " +
                                           std::to_string(rows) + " and " + std::to_string(cols));
        expect(dtype == "float32" || dtype == "float64",
               "dtype must be 'float32' or 'float64', got '" + dtype + "'");
        const py::ssize_t item = dtype == "float32" ? 4 : 8;
        const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(cols) * item;
        void* memory = recfuse::huge_page_alloc(bytes);
        if (memory == nullptr) return py::none();
        py::capsule owner(new HugePageMapping{memory, bytes}, kHugePageCapsule,
                          [](PyObject* capsule) {
                            auto* mapping = static_cast<HugePageMapping*>(
                                PyCapsule_GetPointer(capsule, kHugePageCapsule));
                            recfuse::huge_page_free(mapping->memory, mapping->bytes);
                            delete mapping;
                          });
        return py::array(py::dtype(dtype), {rows, cols}, {cols * item, item}, memory, owner);
      },
      py::arg("rows"), py::arg("cols"), py::arg("dtype"),
      "An uninitialised C-order (rows, cols) table of 'float32' or 'float64' on transparent "
      "huge pages (recfuse::huge_page_alloc; freed with the last array using it), or None "
      "where that does not apply (not Linux, under 4 MiB): ALS fits keep their factor tables "
      "there so that the half-sweeps' random row reads stop missing the TLB without a copy "
      "per half-sweep (als_half_sweep(..., huge_page_copy=False)).");
  m.def(
      "release_table_tail",
      [](const py::capsule& owner, int64_t keep_bytes) {
        expect(std::string(owner.name() == nullptr ? "" : owner.name()) == kHugePageCapsule,
               "release_table_tail takes the base of a huge_page_table");
        expect(keep_bytes >= 0, "keep_bytes must be >= 0");
        auto* mapping = static_cast<HugePageMapping*>(owner.get_pointer());
        recfuse::huge_page_release_tail(mapping->memory, mapping->bytes,
                                        static_cast<size_t>(keep_bytes));
      },
      py::arg("owner"), py::arg("keep_bytes"),
      "Give back the memory of a huge_page_table (given by its base, the capsule that unmaps "
      "it) past its first keep_bytes: whole pages only, and no array may read there again "
      "(an ALS fit's padded tables once their first k columns are moved to the front).");
  m.def("default_threads", &recfuse::available_threads,
        "The threads num_threads=0 stands for in every native call: OpenMP's default capped "
        "at the processors this process may use; 1 in a process forked after native threads "
        "had started (recfuse/threads.hpp).");
  m.def("cgroup_cpu_limit", &recfuse::cgroup_cpu_limit, py::arg("root"), py::arg("self_cgroup"),
        "The CPUs a cgroup CPU quota allows under `root` (normally /sys/fs/cgroup) for the "
        "groups listed in `self_cgroup` (normally /proc/self/cgroup), rounded up; 0 for none "
        "(recfuse/threads.hpp; read once for num_threads=0).");
  m.def("forked_after_threads", &recfuse::forked_after_threads,
        "Whether this process was forked after native calls had started threads, so that "
        "every native call here runs on one thread (GNU libgomp's threads do not survive "
        "fork).");
  m.def("note_thread_team", &recfuse::note_thread_team,
        "Record that GNU libgomp may hold a thread pool started by another of its users "
        "(numba's omp layer), so that a forked child runs native calls on one thread.");
  m.def("simd_level", [] { return std::string(recfuse::simd_level_name(recfuse::simd_level())); });
  m.def(
      "set_simd_level",
      [](const std::string& name) { recfuse::set_simd_level(recfuse::parse_simd_level(name)); },
      py::arg("level"));
  m.def("set_topk_bfloat16_kernel", &recfuse::set_topk_bfloat16_kernel, py::arg("name"),
        "For tests and measurements: bfloat16 item storage's kernel, 'auto' (AVX512-BF16 dot "
        "products at the avx512 SIMD level on a CPU with avx512_bf16; the default) or 'widen' "
        "(bfloat16 widened to float at any level). Process-wide.");
  m.def("topk_bfloat16_kernel", &recfuse::topk_bfloat16_kernel,
        "The kernel bfloat16 item storage uses now: 'dot' or 'widen'.");
  m.def("topk_bfloat16_rescored", &recfuse::topk_bfloat16_rescored,
        "Candidates bfloat16 item storage has scored exactly so far, all searches together "
        "(for measurements).");
  m.def("topk_bfloat16_scanned", &recfuse::topk_bfloat16_scanned,
        "(query, block of 32 items) pairs bfloat16 item storage has scored so far, all "
        "searches together; the other blocks were ruled out by their bound (for measurements).");
  m.def("supported_simd_levels", [] {
    std::vector<std::string> names;
    for (auto level : recfuse::supported_simd_levels()) names.emplace_back(recfuse::simd_level_name(level));
    return names;
  });
}

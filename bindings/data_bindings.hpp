// recfuse._core bindings of the ingestion kernel (recfuse/interactions.hpp). Arrays arrive
// with the exact dtype and C order (noconvert); the GIL is released around the kernel.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "als_bindings.hpp"
#include "recfuse/interactions.hpp"

namespace recfuse {
namespace bindings {

// A NumPy array that owns `vector`'s buffer (no copy).
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& vector) {
  auto* owner = new std::vector<T>(std::move(vector));
  py::capsule free_owner(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, owner->data(), free_owner);
}

inline void bind_data_functions(py::module_& m) {
  m.def(
      "group_events",
      [](const Array<int32_t>& users, const Array<int32_t>& items,
         const std::optional<Array<double>>& values, const std::optional<Array<int64_t>>& times,
         const std::optional<Array<int64_t>>& multiplicity, int64_t n_users, int64_t n_items,
         const std::string& combine, int num_threads) {
        const int64_t n = users.size();
        expect(users.ndim() == 1 && items.ndim() == 1 && items.size() == n,
               "users and items must be 1-d of one length, got shapes " + shape_of(users) +
                   " and " + shape_of(items));
        auto optional_data = [n](const auto& array, const char* name) {
          if (!array) return decltype(array->data())(nullptr);
          expect(array->ndim() == 1 && array->size() == n,
                 std::string(name) + " must be 1-d of length " + std::to_string(n) + ", got " +
                     shape_of(*array));
          return array->data();
        };
        const double* v = optional_data(values, "values");
        const int64_t* t = optional_data(times, "times");
        const int64_t* w = optional_data(multiplicity, "multiplicity");
        Combine mode;
        if (combine == "sum") mode = Combine::Sum;
        else if (combine == "max") mode = Combine::Max;
        else if (combine == "last") mode = Combine::Last;
        else if (combine == "count") mode = Combine::Count;
        else throw std::invalid_argument("combine must be sum, max, last or count, got " + combine);
        const int32_t* u = users.data();
        const int32_t* i = items.data();
        GroupedPairs pairs;
        {
          ReleaseGil release;
          pairs = group_events(u, i, v, t, w, n, n_users, n_items, mode, num_threads);
        }
        py::object grouped_times = py::none();
        if (t) grouped_times = to_numpy(std::move(pairs.times));
        return py::make_tuple(to_numpy(std::move(pairs.indptr)), to_numpy(std::move(pairs.indices)),
                              to_numpy(std::move(pairs.values)), to_numpy(std::move(pairs.counts)),
                              grouped_times);
      },
      py::arg("users").noconvert(), py::arg("items").noconvert(),
      py::arg("values").noconvert() = py::none(), py::arg("times").noconvert() = py::none(),
      py::arg("multiplicity").noconvert() = py::none(), py::arg("n_users"), py::arg("n_items"),
      py::arg("combine") = "sum", py::arg("num_threads") = 0,
      "Group events into (user, item) pairs: returns (indptr, indices, values, counts, times "
      "or None); see recfuse.reference_data.group_events.");

  m.def(
      "factorize_strings",
      [](const std::vector<py::array>& offsets, const std::vector<Array<uint8_t>>& data) {
        expect(offsets.size() == data.size(),
               "offsets and data need one array per chunk, got " +
                   std::to_string(offsets.size()) + " and " + std::to_string(data.size()));
        std::vector<StringChunk> chunks;
        for (size_t c = 0; c < offsets.size(); ++c) {
          const py::array& chunk_offsets = offsets[c];
          const std::string which = "[" + std::to_string(c) + "]";
          expect(chunk_offsets.ndim() == 1 && chunk_offsets.size() >= 1,
                 "offsets" + which + " must be 1-d with at least one entry, got shape " +
                     shape_of(chunk_offsets));
          expect(data[c].ndim() == 1, "data" + which + " must be 1-d, got shape " +
                                          shape_of(data[c]));
          StringChunk chunk{data[c].data(), data[c].size(), nullptr, nullptr,
                            chunk_offsets.size() - 1};
          if (py::isinstance<Array<int32_t>>(chunk_offsets))
            chunk.offsets32 = static_cast<const int32_t*>(chunk_offsets.data());
          else if (py::isinstance<Array<int64_t>>(chunk_offsets))
            chunk.offsets64 = static_cast<const int64_t*>(chunk_offsets.data());
          else
            throw py::type_error("offsets" + which + " must be a C-contiguous int32 or int64 "
                                 "array, got dtype " + std::string(py::str(chunk_offsets.dtype())));
          chunks.push_back(chunk);
        }
        FactorizedStrings result;
        {
          ReleaseGil release;
          result = factorize_strings(chunks);
        }
        return py::make_tuple(to_numpy(std::move(result.codes)), to_numpy(std::move(result.first)));
      },
      py::arg("offsets"), py::arg("data").noconvert(),
      "Number the strings of a column given as Arrow-style chunks (offsets: int32 or int64, "
      "len + 1 each; data: uint8 bytes) in sorted order: returns (int32 codes, int64 position "
      "of the first occurrence of each distinct value, in sorted order).");
}

}  // namespace bindings
}  // namespace recfuse

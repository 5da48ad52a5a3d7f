// recfuse._cuda.MlpModel and MlpItemPart: the CUDA MLP scorer (cuda/mlp_cuda.hpp) for Python,
// with the conventions of recfuse._core.MlpModel (mlp_bindings.hpp, whose call checks it
// reuses): C-contiguous float32 / int64 host arrays (noconvert), the GIL released while the
// device works. A model checks its layers, and a call its arguments, before any CUDA call.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mlp_bindings.hpp"
#include "mlp_cuda.hpp"

namespace recfuse {
namespace bindings {

// A call's candidates, checked against the arrays' shapes; `part` replaces the item blocks.
inline MlpCall mlp_cuda_call(const Array<int64_t>& indptr, const std::optional<Array<int64_t>>& ids,
                             int64_t items, const std::vector<Array<float>>& user_blocks,
                             const std::vector<Array<float>>& item_blocks,
                             const std::optional<Array<float>>& candidate_block,
                             const cuda::MlpItemPartCuda* part, int part_width) {
  MlpCall call = mlp_call(indptr, ids, items, user_blocks, item_blocks, candidate_block,
                          std::nullopt, 0, part_width);
  if (part != nullptr) {
    expect(item_blocks.empty(), "an item part replaces the item blocks: pass none");
    call.candidates.item_blocks.push_back({nullptr, part->columns()});
  }
  return call;
}

inline void bind_mlp_cuda(py::module_& m) {
  namespace rc = recfuse::cuda;
  using Blocks = std::vector<Array<float>>;
  using Part = rc::MlpItemPartCuda;

  m.attr("MLP_FUSED_MAX_WIDTH") = rc::kMlpFusedMaxWidth;
  m.attr("MLP_FUSED_ROWS") = rc::kMlpFusedRows;
  m.attr("MLP_RANK_SHARED_MAX") = rc::kMlpRankSharedMax;
  m.attr("MLP_SCRATCH_BUDGET_BYTES") = rc::kMlpScratchBudgetBytes;
  m.attr("MLP_STAGING_BUDGET_BYTES") = rc::kMlpStagingBudgetBytes;
  m.def(
      "mlp_plan_chunks",
      [](const Array<int64_t>& indptr, int64_t max_candidates, int64_t max_users,
         bool whole_users) {
        expect(indptr.ndim() == 1 && indptr.shape(0) >= 1,
               "indptr must be 1-d with at least one entry, got shape " + shape_of(indptr));
        const int64_t users = indptr.shape(0) - 1;
        const int64_t* p = indptr.data();
        expect(p[0] == 0, "indptr must start at 0");
        for (int64_t u = 0; u < users; ++u) expect(p[u] <= p[u + 1], "indptr must not decrease");
        const std::vector<rc::MlpChunk> chunks =
            rc::mlp_plan_chunks(p, users, max_candidates, max_users, whole_users);
        Array<int64_t> out({static_cast<int64_t>(chunks.size()), int64_t(4)});
        int64_t* o = out.mutable_data();
        for (size_t i = 0; i < chunks.size(); ++i) {
          o[4 * i] = chunks[i].user_begin;
          o[4 * i + 1] = chunks[i].user_end;
          o[4 * i + 2] = chunks[i].cand_begin;
          o[4 * i + 3] = chunks[i].cand_end;
        }
        return out;
      },
      py::arg("indptr").noconvert(), py::arg("max_candidates"), py::arg("max_users"),
      py::arg("whole_users"),
      "For tests (host only): the chunks (user_begin, user_end, cand_begin, cand_end) a call "
      "with these candidate offsets runs in.");
  m.def("set_mlp_chunk_limits", &rc::set_mlp_chunk_limits, py::arg("max_candidates") = 0,
        py::arg("max_users") = 0,
        "For tests: caps on the candidates and users of a chunk (0: none), process-wide, so "
        "that small calls run in several chunks.");
  m.def("mlp_fused_shared_bytes", &rc::mlp_fused_shared_bytes, py::arg("x_width"),
        py::arg("width_max"),
        "Host only: the fused kernel's shared memory for x_width multiplied columns per "
        "candidate and hidden layers padded to width_max.");

  py::class_<Part, std::shared_ptr<Part>>(
      m, "MlpItemPart",
      "A first-layer item part kept on the device by the MlpModel that made it.")
      .def_property_readonly("items", &Part::items)
      .def_property_readonly("columns", &Part::columns);

  py::class_<rc::MlpModelCuda>(
      m, "MlpModel",
      "A packed MLP scorer on the current CUDA device (see recfuse.ranking.MLPScorer).\n"
      "MlpModel(weights, biases, activations, precision, kernel): kernel 'auto' (fused where the\n"
      "call fits, else tiled), 'fused' or 'tiled'.")
      .def(py::init([](const MlpWeights& weights, const MlpBiases& biases,
                       const std::vector<std::string>& activations, const std::string& precision,
                       const std::string& kernel) {
             const std::vector<MlpLayer> layers = mlp_layers(weights, biases, activations);
             const MlpPrecision p = mlp_precision(precision);
             expect(p != MlpPrecision::Int8,
                    "precision 'int8' has no CUDA kernel yet: use float32 or bfloat16 here");
             const rc::MlpPath path = rc::parse_mlp_path(kernel);
             ReleaseGil release;
             return new rc::MlpModelCuda(layers, p, path);
           }),
           py::arg("weights").noconvert(), py::arg("biases").noconvert(), py::arg("activations"),
           py::arg("precision"), py::arg("kernel"))
      .def_property_readonly("input_width", &rc::MlpModelCuda::input_width)
      .def_property_readonly("part_width", &rc::MlpModelCuda::part_width)
      .def_property_readonly("device", &rc::MlpModelCuda::device)
      .def_property_readonly("kernel",
                             [](const rc::MlpModelCuda& model) {
                               return std::string(rc::mlp_path_name(model.path()));
                             })
      .def(
          "path_for",
          [](const rc::MlpModelCuda& model, int x_width) {
            return std::string(rc::mlp_path_name(model.path_for(x_width)));
          },
          py::arg("x_width"),
          "'fused' or 'tiled': the path of a call that multiplies x_width input columns per "
          "candidate (raises for kernel='fused' when it does not fit).")
      .def(
          "score",
          [](const rc::MlpModelCuda& model, const Array<float>& X) {
            expect(X.ndim() == 2 && X.shape(1) == model.input_width(),
                   "inputs must have shape (n, " + std::to_string(model.input_width()) +
                       "), got " + shape_of(X));
            const int64_t n = X.shape(0);
            Array<float> out(n);
            const float* x = X.data();
            float* o = out.mutable_data();
            ReleaseGil release;
            model.score(x, n, o);
            return out;
          },
          py::arg("inputs").noconvert())
      .def(
          "score_candidates",
          [](const rc::MlpModelCuda& model, const Array<int64_t>& indptr,
             const std::optional<Array<int64_t>>& ids, int64_t items, const Blocks& user_blocks,
             const Blocks& item_blocks, const std::optional<Array<float>>& candidate_block,
             const Part* part) {
            MlpCall call = mlp_cuda_call(indptr, ids, items, user_blocks, item_blocks,
                                         candidate_block, part, model.part_width());
            Array<float> out(call.total);
            float* o = out.mutable_data();
            ReleaseGil release;
            model.score_candidates(call.candidates, part, o);
            return out;
          },
          py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("items"),
          py::arg("user_blocks").noconvert(), py::arg("item_blocks").noconvert(),
          py::arg("candidate_block").noconvert(), py::arg("item_part").none(true))
      .def(
          "rank",
          [](const rc::MlpModelCuda& model, const Array<int64_t>& indptr,
             const std::optional<Array<int64_t>>& ids, int64_t items, const Blocks& user_blocks,
             const Blocks& item_blocks, const std::optional<Array<float>>& candidate_block,
             const Part* part, int k) {
            expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
            MlpCall call = mlp_cuda_call(indptr, ids, items, user_blocks, item_blocks,
                                         candidate_block, part, model.part_width());
            const int64_t users = call.candidates.users;
            Array<int64_t> out_ids({users, static_cast<int64_t>(k)});
            Array<float> out_scores({users, static_cast<int64_t>(k)});
            int64_t* i = out_ids.mutable_data();
            float* s = out_scores.mutable_data();
            {
              ReleaseGil release;
              model.rank(call.candidates, part, k, i, s);
            }
            return py::make_tuple(out_ids, out_scores);
          },
          py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("items"),
          py::arg("user_blocks").noconvert(), py::arg("item_blocks").noconvert(),
          py::arg("candidate_block").noconvert(), py::arg("item_part").none(true),
          py::arg("k"))
      .def(
          "item_part",
          [](const rc::MlpModelCuda& model, const Blocks& item_blocks, int column) {
            expect(!item_blocks.empty(), "item_part needs at least one item block");
            const Array<float>& front = item_blocks.front();
            const int64_t items = front.ndim() == 2 ? front.shape(0) : -1;
            std::vector<MlpBlock> blocks;
            for (const Array<float>& b : item_blocks) {
              expect(b.ndim() == 2 && b.shape(0) == items,
                     "item blocks must be 2-d with the same rows, got shape " + shape_of(b));
              blocks.push_back({b.data(), static_cast<int>(b.shape(1))});
            }
            Array<float> host({items, static_cast<int64_t>(model.part_width())});
            float* o = host.mutable_data();
            std::shared_ptr<Part> part;
            {
              ReleaseGil release;
              part = model.item_part(blocks, items, column, o);
            }
            return py::make_tuple(host, part);
          },
          py::arg("item_blocks").noconvert(), py::arg("column"),
          "(host array items x part_width, MlpItemPart on the device): the first layer's "
          "contribution of item blocks that start at input column `column`.")
      .def(
          "upload_item_part",
          [](const rc::MlpModelCuda& model, const Array<float>& part, int columns) {
            expect(part.ndim() == 2 && part.shape(1) == model.part_width(),
                   "an item part must have shape (items, " + std::to_string(model.part_width()) +
                       "), got " + shape_of(part));
            const float* p = part.data();
            const int64_t items = part.shape(0);
            ReleaseGil release;
            return model.upload_item_part(p, items, columns);
          },
          py::arg("part").noconvert(), py::arg("columns"),
          "An item part computed elsewhere, copied to the device.")
      .def(
          "time_device",
          [](const rc::MlpModelCuda& model, const Array<int64_t>& indptr,
             const std::optional<Array<int64_t>>& ids, int64_t items, const Blocks& user_blocks,
             const Blocks& item_blocks, const std::optional<Array<float>>& candidate_block,
             const Part* part, int k, int repeats) {
            MlpCall call = mlp_cuda_call(indptr, ids, items, user_blocks, item_blocks,
                                         candidate_block, part, model.part_width());
            ReleaseGil release;
            return model.time_device(call.candidates, part, k, repeats);
          },
          py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("items"),
          py::arg("user_blocks").noconvert(), py::arg("item_blocks").noconvert(),
          py::arg("candidate_block").noconvert(), py::arg("item_part").none(true),
          py::arg("k") = 0, py::arg("repeats") = 10,
          "For benchmarks: device microseconds of each of `repeats` runs of the call's kernels "
          "(scoring and, when k >= 1, ranking) on inputs uploaded once; the call must fit one "
          "chunk.");
}

}  // namespace bindings
}  // namespace recfuse

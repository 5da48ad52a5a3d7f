// recfuse._core.MlpModel: the fused MLP scorer (recfuse/mlp.hpp) as a Python class. Arrays
// arrive as C-contiguous float32 / int64 (noconvert); the Python layer (recfuse.ranking)
// has already validated them, the checks here are the cheap invariants. The GIL is released
// while packing, scoring and ranking; the arguments keep the arrays alive meanwhile.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "als_bindings.hpp"
#include "recfuse/mlp.hpp"

namespace recfuse {
namespace bindings {

using MlpWeights = std::vector<Array<float>>;
using MlpBiases = std::vector<std::optional<Array<float>>>;

// The layers of Python's (weights, biases, activations) lists, checked (views: the arrays
// must outlive them), for recfuse._core.MlpModel and recfuse._cuda.MlpModel alike.
inline std::vector<MlpLayer> mlp_layers(const MlpWeights& weights, const MlpBiases& biases,
                                        const std::vector<std::string>& activations) {
  expect(weights.size() == biases.size() && weights.size() == activations.size(),
         "weights, biases and activations must have the same length");
  std::vector<MlpLayer> layers;
  for (size_t l = 0; l < weights.size(); ++l) {
    const Array<float>& w = weights[l];
    expect(w.ndim() == 2, "weights must be 2-d, got shape " + shape_of(w));
    const int out = static_cast<int>(w.shape(0)), in = static_cast<int>(w.shape(1));
    const float* b = nullptr;
    if (biases[l]) {
      expect(biases[l]->ndim() == 1 && biases[l]->shape(0) == out,
             "bias must have shape (" + std::to_string(out) + ",), got " + shape_of(*biases[l]));
      b = biases[l]->data();
    }
    layers.push_back({w.data(), b, out, in, parse_mlp_activation(activations[l])});
  }
  return layers;
}

inline MlpPrecision mlp_precision(const std::string& precision) {
  expect(precision == "float32" || precision == "bfloat16" || precision == "int8",
         "precision must be float32, bfloat16 or int8, got '" + precision + "'");
  return precision == "float32"    ? MlpPrecision::Float32
         : precision == "bfloat16" ? MlpPrecision::Bfloat16
                                   : MlpPrecision::Int8;
}

// The candidates of one call, checked against the arrays' shapes.
struct MlpCall {
  MlpCandidates candidates;
  int64_t total = 0;
};

inline MlpCall mlp_call(const Array<int64_t>& indptr, const std::optional<Array<int64_t>>& ids,
                        int64_t items, const std::vector<Array<float>>& user_blocks,
                        const std::vector<Array<float>>& item_blocks,
                        const std::optional<Array<float>>& candidate_block,
                        const std::optional<Array<float>>& item_part, int item_part_columns,
                        int part_width) {
  MlpCall call;
  MlpCandidates& c = call.candidates;
  expect(indptr.ndim() == 1 && indptr.shape(0) >= 1,
         "indptr must be 1-d with at least one entry, got shape " + shape_of(indptr));
  c.users = indptr.shape(0) - 1;
  c.indptr = indptr.data();
  call.total = indptr.data()[c.users];
  expect(call.total >= 0, "indptr[-1] must be >= 0");
  if (ids) {
    expect(ids->ndim() == 1 && ids->shape(0) == call.total,
           "ids must have shape (" + std::to_string(call.total) + ",), got " + shape_of(*ids));
    c.ids = ids->data();
  }
  c.items = items;
  for (const Array<float>& b : user_blocks) {
    expect(b.ndim() == 2 && b.shape(0) == c.users,
           "user blocks must have " + std::to_string(c.users) + " rows, got shape " + shape_of(b));
    c.user_blocks.push_back({b.data(), static_cast<int>(b.shape(1))});
  }
  for (const Array<float>& b : item_blocks) {
    expect(b.ndim() == 2 && b.shape(0) == items,
           "item blocks must have " + std::to_string(items) + " rows, got shape " + shape_of(b));
    c.item_blocks.push_back({b.data(), static_cast<int>(b.shape(1))});
  }
  if (candidate_block) {
    expect(candidate_block->ndim() == 2 && candidate_block->shape(0) == call.total,
           "the candidate block must have " + std::to_string(call.total) + " rows, got shape " +
               shape_of(*candidate_block));
    c.candidate_block = {candidate_block->data(), static_cast<int>(candidate_block->shape(1))};
  }
  if (item_part) {
    expect(item_part->ndim() == 2 && item_part->shape(0) == items &&
               item_part->shape(1) == part_width,
           "item_part must have shape (" + std::to_string(items) + ", " +
               std::to_string(part_width) + "), got " + shape_of(*item_part));
    expect(item_blocks.empty() && item_part_columns >= 0,
           "an item part replaces the item blocks: pass none, and the columns it covers");
    c.item_part = item_part->data();
    c.item_blocks.push_back({nullptr, item_part_columns});
  }
  return call;
}

inline void bind_mlp(py::module_& m) {
  m.def(
      "mlp_rank_scores",
      [](const Array<int64_t>& indptr, const Array<int64_t>& ids, const Array<float>& scores,
         int k, int num_threads) {
        expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
        expect(indptr.ndim() == 1 && indptr.shape(0) >= 1,
               "indptr must be 1-d with at least one entry, got shape " + shape_of(indptr));
        const int64_t users = indptr.shape(0) - 1, total = indptr.data()[users];
        expect(ids.ndim() == 1 && ids.shape(0) == total,
               "ids must have shape (" + std::to_string(total) + ",), got " + shape_of(ids));
        expect(scores.ndim() == 1 && scores.shape(0) == total,
               "scores must have shape (" + std::to_string(total) + ",), got " +
                   shape_of(scores));
        Array<int64_t> out_ids({users, static_cast<int64_t>(k)});
        Array<float> out_scores({users, static_cast<int64_t>(k)});
        int64_t* i = out_ids.mutable_data();
        float* s = out_scores.mutable_data();
        {
          ReleaseGil release;
          mlp_rank_scores(users, indptr.data(), ids.data(), scores.data(), k, num_threads, i, s);
        }
        return py::make_tuple(out_ids, out_scores);
      },
      py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("scores").noconvert(),
      py::arg("k"), py::arg("num_threads") = 0,
      "(ids int64 users x k, scores float32 users x k): each user's k best distinct candidate "
      "ids by the given float32 scores (recfuse.reference.mlp_rank_scores; padded with -1 / "
      "-inf). The host ranking of backends that score elsewhere.");
  m.def(
      "mlp_kernels",
      [] {
        std::vector<py::tuple> rows;
        for (MlpKernel kernel :
             {MlpKernel::Float32, MlpKernel::Avx512Bf16, MlpKernel::Amx, MlpKernel::Int8}) {
          std::string why;
          const bool ok = mlp_kernel_supported(kernel, &why);
          rows.push_back(py::make_tuple(mlp_kernel_name(kernel), ok, why));
        }
        return rows;
      },
      "[(name, supported, why not)] for the MLP kernels float32, avx512bf16, amx, int8.");

  using Blocks = std::vector<Array<float>>;
  py::class_<MlpModel>(m, "MlpModel", "A packed MLP scorer (see recfuse.ranking.MLPScorer).")
      .def(py::init([](const MlpWeights& weights, const MlpBiases& biases,
                       const std::vector<std::string>& activations, const std::string& precision,
                       const std::string& kernel) {
             const std::vector<MlpLayer> layers = mlp_layers(weights, biases, activations);
             const MlpPrecision p = mlp_precision(precision);
             const MlpKernel k = parse_mlp_kernel(kernel);
             ReleaseGil release;
             return new MlpModel(layers, p, k);
           }),
           py::arg("weights").noconvert(), py::arg("biases").noconvert(), py::arg("activations"),
           py::arg("precision"), py::arg("kernel"))
      .def_property_readonly("input_width", &MlpModel::input_width)
      .def_property_readonly("part_width", &MlpModel::part_width)
      .def_property_readonly("kernel", [](const MlpModel& model) {
        return std::string(mlp_kernel_name(model.kernel()));
      })
      .def(
          "score",
          [](const MlpModel& model, const Array<float>& X, int num_threads) {
            expect(X.ndim() == 2 && X.shape(1) == model.input_width(),
                   "inputs must have shape (n, " + std::to_string(model.input_width()) +
                       "), got " + shape_of(X));
            const int64_t n = X.shape(0);
            Array<float> out(n);
            const float* x = X.data();
            float* o = out.mutable_data();
            ReleaseGil release;
            model.score(x, n, num_threads, o);
            return out;
          },
          py::arg("inputs").noconvert(), py::arg("num_threads") = 0)
      .def(
          "score_candidates",
          [](const MlpModel& model, const Array<int64_t>& indptr,
             const std::optional<Array<int64_t>>& ids, int64_t items, const Blocks& user_blocks,
             const Blocks& item_blocks, const std::optional<Array<float>>& candidate_block,
             const std::optional<Array<float>>& item_part, int item_part_columns,
             int num_threads, bool rough) {
            MlpCall call = mlp_call(indptr, ids, items, user_blocks, item_blocks,
                                    candidate_block, item_part, item_part_columns,
                                    model.part_width());
            Array<float> out(call.total);
            float* o = out.mutable_data();
            ReleaseGil release;
            model.score_candidates(call.candidates, num_threads, o, rough);
            return out;
          },
          py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("items"),
          py::arg("user_blocks").noconvert(), py::arg("item_blocks").noconvert(),
          py::arg("candidate_block").noconvert(), py::arg("item_part").noconvert(),
          py::arg("item_part_columns") = 0, py::arg("num_threads") = 0,
          py::arg("rough") = false,
          "rough=True (bfloat16): the scores of rank's first pass, which choose its band.")
      .def(
          "rank",
          [](const MlpModel& model, const Array<int64_t>& indptr,
             const std::optional<Array<int64_t>>& ids, int64_t items, const Blocks& user_blocks,
             const Blocks& item_blocks, const std::optional<Array<float>>& candidate_block,
             const std::optional<Array<float>>& item_part, int item_part_columns, int k,
             int num_threads) {
            expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
            MlpCall call = mlp_call(indptr, ids, items, user_blocks, item_blocks,
                                    candidate_block, item_part, item_part_columns,
                                    model.part_width());
            const int64_t users = call.candidates.users;
            Array<int64_t> out_ids({users, static_cast<int64_t>(k)});
            Array<float> out_scores({users, static_cast<int64_t>(k)});
            int64_t* i = out_ids.mutable_data();
            float* s = out_scores.mutable_data();
            {
              ReleaseGil release;
              model.rank(call.candidates, k, num_threads, i, s);
            }
            return py::make_tuple(out_ids, out_scores);
          },
          py::arg("indptr").noconvert(), py::arg("ids").noconvert(), py::arg("items"),
          py::arg("user_blocks").noconvert(), py::arg("item_blocks").noconvert(),
          py::arg("candidate_block").noconvert(), py::arg("item_part").noconvert(),
          py::arg("item_part_columns") = 0, py::arg("k") = 1, py::arg("num_threads") = 0)
      .def(
          "item_part",
          [](const MlpModel& model, const Blocks& item_blocks, int column, int num_threads) {
            expect(!item_blocks.empty(), "item_part needs at least one item block");
            const int64_t items = item_blocks.front().ndim() == 2 ? item_blocks.front().shape(0) : -1;
            std::vector<MlpBlock> blocks;
            for (const Array<float>& b : item_blocks) {
              expect(b.ndim() == 2 && b.shape(0) == items,
                     "item blocks must be 2-d with the same rows, got shape " + shape_of(b));
              blocks.push_back({b.data(), static_cast<int>(b.shape(1))});
            }
            Array<float> out({items, static_cast<int64_t>(model.part_width())});
            float* o = out.mutable_data();
            ReleaseGil release;
            model.item_part(blocks, items, column, num_threads, o);
            return out;
          },
          py::arg("item_blocks").noconvert(), py::arg("column"), py::arg("num_threads") = 0);
}

}  // namespace bindings
}  // namespace recfuse

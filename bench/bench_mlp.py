"""Ranking with a fused MLP: recfuse vs PyTorch and ONNX Runtime, in one run.

Model: [user 64 | item 64 | 32 candidate features] -> 256 -> 128 -> 64 -> 1 (ReLU, ReLU,
ReLU, sigmoid), random weights; item table 100,000 x 64; each user has 1,000 random
candidates. Cases: 1 user x 1,000 candidates and 64 users x 1,000 candidates.

Each row is one way to get the scores of the case, timed as p50 over repeats (rounds
interleave the methods so drift hits them alike):

- recfuse f32 / bf16 / int8, gather: ``MLPScorer.score_candidates(users, ids, item_table,
  candidate_features=...)``: gather by id, every layer, in one native call;
- recfuse f32 / bf16 / int8, prepared: the same with ``prepare_items`` done once at load (the first
  layer's item columns precomputed per item), so per candidate only the 32 feature columns
  of the first layer are multiplied;
- recfuse rank: the prepared call with the top-10 per user fused in;
- torch eager: the module on a ready concatenated float32 input (no gather);
- torch gather+concat: ``torch.cat([users.repeat_interleave, items[ids], features])`` then the
  module (the usual serving path);
- onnxruntime: the same model exported as an ONNX graph (Gemm/Relu/Sigmoid) on a ready input
  (intra_op_num_threads = threads, inter_op 1, sequential, all graph optimisations);
- onnxruntime gather+concat: NumPy ``take`` + ``concatenate`` then the session.
- onnxruntime split: a graph built the way recfuse's prepared call computes, so that the
  comparison is of kernels, not of arithmetic skipped: the first layer's item columns
  precomputed per item (with its bias) as an initializer the graph gathers by id (Gather),
  the user's columns multiplied once per user and broadcast, only the 32 feature columns per
  candidate; inputs u (users x 64), ids (users x candidates, int64), features
  (users·candidates x 32).

All peers use the same thread count (``RECFUSE_BENCH_THREADS``, default 2; torch through
``torch.set_num_threads``, under ``torch.inference_mode``). GFLOP/s counts the full model's
flops per candidate (2·(160·256 + 256·128 + 128·64 + 64)), whatever a method skips; the
machine's float32 GEMM rate is NumPy's (OpenBLAS) on 2048³ in the same run. bf16 (int8)
agreement: the share of the 64 users whose bf16 (int8) top-10 list (``rank``, which rescores
a band in float32) equals float32's, where two items whose float32 scores lie within 1e-3
count as a tie (either order, or either one, is equal); beside it, the same share for the
top 10 of the bf16 (int8) scores alone (``score_candidates``, no rescoring). bf16 rows need
AVX512-BF16 or AMX; int8 runs on any CPU (AVX2 kernel, scalar without AVX2).

    python bench/bench_mlp.py            # about a minute
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

from bench_args import (bench_threads, check_writable, non_negative_float, positive_int,
                        write_json)
from openblas_env import prefer_avx512_openblas  # noqa: E402

THREADS = bench_threads()

prefer_avx512_openblas()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(THREADS)

import numpy as np  # noqa: E402

import recfuse  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
WIDTHS = [160, 256, 128, 64, 1]
ACTIVATIONS = ["relu", "relu", "relu", "sigmoid"]
FLOPS_PER_CANDIDATE = 2 * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
ITEMS, DIM, FEATURES, CANDIDATES = 100_000, 64, 32, 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--min-time", type=non_negative_float, default=0.3,
                        help="seconds per method and round (at least one timed call each)")
    parser.add_argument("--output", default=os.path.join(RESULTS, "mlp.json"))
    args = parser.parse_args(argv)
    check_writable(args.output, parser)
    return args


def make_layers(rng):
    layers = []
    for i, activation in enumerate(ACTIVATIONS):
        W = (rng.standard_normal((WIDTHS[i + 1], WIDTHS[i])) * np.sqrt(2.0 / WIDTHS[i])).astype(np.float32)
        b = (0.05 * rng.standard_normal(WIDTHS[i + 1])).astype(np.float32)
        layers.append((W, b, activation))
    return layers


def torch_module(layers):
    import torch

    modules = []
    for W, b, activation in layers:
        linear = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        modules += [linear, torch.nn.ReLU() if activation == "relu" else torch.nn.Sigmoid()]
    return torch.nn.Sequential(*modules).eval()


def onnx_session(layers, path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "x"
    for i, (W, b, activation) in enumerate(layers):
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        nodes.append(helper.make_node("Relu" if activation == "relu" else "Sigmoid", [f"z{i}"], [f"h{i}"]))
        current = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 160])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])


def onnx_split_session(layers, items, path):
    """The graph of "onnxruntime split" (module docstring). Two-dimensional where it can be
    (candidates x width: ONNX Runtime's Gemm path; its batched MatMul on three dimensions
    was 2-5x slower here), the user's columns broadcast over that user's candidates."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    (W1, b1, _), *rest = layers
    width = W1.shape[0]
    table = (items @ W1[:, DIM:2 * DIM].T + b1).astype(np.float32)  # per item: W1i·i + b1
    inits = [numpy_helper.from_array(table, "P"),
             numpy_helper.from_array(np.ascontiguousarray(W1[:, :DIM]), "W1u"),
             numpy_helper.from_array(np.ascontiguousarray(W1[:, 2 * DIM:]), "W1f"),
             numpy_helper.from_array(np.zeros(width, np.float32), "zero"),
             numpy_helper.from_array(np.array([0, 1, width], np.int64), "by_user"),
             numpy_helper.from_array(np.array([-1, width], np.int64), "flat")]
    nodes = [helper.make_node("Gemm", ["u", "W1u", "zero"], ["zu"], transB=1),  # users x width
             helper.make_node("Reshape", ["zu", "by_user"], ["zu3"]),  # users x 1 x width
             helper.make_node("Gather", ["P", "ids"], ["zi"], axis=0),  # users x C x width
             helper.make_node("Add", ["zi", "zu3"], ["ziu"]),
             helper.make_node("Reshape", ["ziu", "flat"], ["ziu2"]),  # candidates x width
             helper.make_node("Gemm", ["f", "W1f", "ziu2"], ["z0"], transB=1),
             helper.make_node("Relu", ["z0"], ["h0"])]
    current = "h0"
    for i, (W, b, activation) in enumerate(rest, start=1):
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"z{i}"], transB=1),
                  helper.make_node("Relu" if activation == "relu" else "Sigmoid", [f"z{i}"],
                                   [f"h{i}"])]
        current = f"h{i}"
    inputs = [helper.make_tensor_value_info("u", TensorProto.FLOAT, [None, DIM]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None]),
              helper.make_tensor_value_info("f", TensorProto.FLOAT, [None, FEATURES])]
    graph = helper.make_graph(nodes, "mlp_split", inputs, [helper.make_tensor_value_info(
        current, TensorProto.FLOAT, [None, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])


def session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def gemm_rate() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def agreement(ids32, scores32_all, ids16, tie=1e-3) -> float:
    """Share of users whose bf16 top-10 equals float32's, float32 ties within `tie` equal."""
    equal = 0
    for u in range(ids32.shape[0]):
        lookup = scores32_all[u]
        same = all(a == b or abs(lookup[a] - lookup[b]) <= tie for a, b in zip(ids32[u], ids16[u]))
        equal += same
    return equal / ids32.shape[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    layers = make_layers(rng)
    items = rng.standard_normal((ITEMS, DIM)).astype(np.float32)
    f32 = recfuse.MLPScorer(layers, precision="float32", backend="cpu")
    prepared32 = f32.prepare_items(items, item_column=DIM)
    reduced = {}  # short name: (scorer, its prepared items)
    for short, precision in (("bf16", "bfloat16"), ("int8", "int8")):
        try:  # bfloat16 needs AVX512-BF16 or AMX on the cpu backend
            model = recfuse.MLPScorer(layers, precision=precision, backend="cpu")
            reduced[short] = (model, model.prepare_items(items, item_column=DIM))
        except ValueError as error:
            print(f"{precision} rows skipped: {error}", file=sys.stderr)

    peers = {}
    try:
        import torch

        torch.set_num_threads(THREADS)
        peers["torch"] = torch.__version__
        module = torch_module(layers)
        items_t = torch.from_numpy(items)
    except ImportError:
        torch = None
        print("torch not installed: PyTorch rows skipped", file=sys.stderr)
    try:
        import onnxruntime

        with tempfile.TemporaryDirectory() as folder:
            session = onnx_session(layers, os.path.join(folder, "mlp.onnx"))
            split_session = onnx_split_session(layers, items, os.path.join(folder, "split.onnx"))
        peers["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        session = split_session = None
        print("onnxruntime not installed: ONNX Runtime rows skipped", file=sys.stderr)

    rows = []
    agreements = {}  # short name: (rank's share, the rough scores' share)
    for users in (1, 64):
        U = rng.standard_normal((users, DIM)).astype(np.float32)
        ids = rng.integers(0, ITEMS, (users, CANDIDATES))
        features = rng.standard_normal((users * CANDIDATES, FEATURES)).astype(np.float32)
        X = np.concatenate([np.repeat(U, CANDIDATES, axis=0), items[ids.ravel()], features], axis=1)
        methods = {
            "recfuse f32 gather": lambda: f32.score_candidates(U, ids, items, candidate_features=features),
            "recfuse f32 prepared": lambda: f32.score_candidates(U, ids, prepared32, candidate_features=features),
            "recfuse f32 prepared + rank10": lambda: f32.rank(U, ids, prepared32, candidate_features=features, k=10),
        }
        for short, (model, prepared) in reduced.items():
            methods[f"recfuse {short} gather"] = (lambda model=model: model.score_candidates(
                U, ids, items, candidate_features=features))
            methods[f"recfuse {short} prepared"] = (
                lambda model=model, prepared=prepared: model.score_candidates(
                    U, ids, prepared, candidate_features=features))
            methods[f"recfuse {short} prepared + rank10"] = (
                lambda model=model, prepared=prepared: model.rank(
                    U, ids, prepared, candidate_features=features, k=10))
        if torch is not None:
            X_t, U_t, ids_t, F_t = (torch.from_numpy(X), torch.from_numpy(U),
                                    torch.from_numpy(ids.ravel()), torch.from_numpy(features))

            def torch_eager():
                with torch.inference_mode():
                    return module(X_t)

            def torch_gather():
                with torch.inference_mode():
                    inputs = torch.cat([U_t.repeat_interleave(CANDIDATES, dim=0),
                                        items_t.index_select(0, ids_t), F_t], dim=1)
                    return module(inputs)

            methods["torch eager"] = torch_eager
            methods["torch gather+concat"] = torch_gather
        if session is not None:
            methods["onnxruntime"] = lambda: session.run(None, {"x": X})
            methods["onnxruntime gather+concat"] = lambda: session.run(None, {"x": np.concatenate(
                [np.repeat(U, CANDIDATES, axis=0), items.take(ids.ravel(), axis=0), features], axis=1)})
            split_inputs = {"u": U, "ids": ids.astype(np.int64), "f": features}
            methods["onnxruntime split"] = lambda: split_session.run(None, split_inputs)
        # Check every method gives the same scores before timing.
        reference = f32.score_candidates(U, ids, items, candidate_features=features).ravel()
        if torch is not None:
            np.testing.assert_allclose(torch_gather().numpy()[:, 0], reference, atol=1e-5)
        if session is not None:
            np.testing.assert_allclose(methods["onnxruntime"]()[0][:, 0], reference, atol=1e-5)
            np.testing.assert_allclose(methods["onnxruntime split"]()[0].ravel(), reference,
                                       atol=1e-5)
        # recfuse's own timed float32 paths too (bf16 and int8 are judged by the agreement below)
        np.testing.assert_allclose(methods["recfuse f32 prepared"]().ravel(), reference, atol=1e-5)
        best = np.full((users, ITEMS), -np.inf, np.float32)  # an id's best score (rank's rule)
        np.maximum.at(best, (np.repeat(np.arange(users), CANDIDATES), ids.ravel()), reference)
        top_ids, top_scores = methods["recfuse f32 prepared + rank10"]()
        expected = -np.sort(-best, axis=1)[:, :10]  # the 10 best distinct ids' scores
        np.testing.assert_allclose(top_scores, expected, atol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(best, top_ids, 1), top_scores, atol=1e-5)
        times = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, method in methods.items():
                method()
                deadline = time.perf_counter() + args.min_time
                taken = 0
                while taken == 0 or time.perf_counter() < deadline:
                    start = time.perf_counter()
                    method()
                    times[name].append(time.perf_counter() - start)
                    taken += 1
        flops = FLOPS_PER_CANDIDATE * users * CANDIDATES
        base = statistics.median(times["onnxruntime"]) if session is not None else None
        split = statistics.median(times["onnxruntime split"]) if session is not None else None
        for name in methods:
            p50 = statistics.median(times[name])
            rows.append(dict(case=f"{users} x {CANDIDATES}", method=name, p50_ms=p50 * 1e3,
                             gflops=flops / p50 / 1e9, vs_onnxruntime=(base / p50) if base else None,
                             vs_onnxruntime_split=(split / p50) if split else None,
                             samples=len(times[name])))
        top32, _ = f32.rank(U, ids, prepared32, candidate_features=features, k=10)
        for short, (model, prepared) in reduced.items():
            if users != 64:
                continue
            top, _ = model.rank(U, ids, prepared, candidate_features=features, k=10)
            # an id repeated among a user's candidates (about 5 per 1,000 here) counts at its
            # best score, as rank keeps it (`best`); a plain assignment kept the last repeat's
            rough = model.score_candidates(U, ids, prepared, candidate_features=features)
            order = np.lexsort((ids, -rough), axis=1)[:, :10]  # score, then smaller id
            agreements[short] = (agreement(top32, best, top),
                                 agreement(top32, best, np.take_along_axis(ids, order, 1)))

    rate = gemm_rate()
    load = os.getloadavg()
    print(f"threads {THREADS}; load average before timing {load[0]:.2f}; NumPy float32 GEMM "
          f"{rate:.0f} GFLOP/s; {platform.processor() or platform.machine()}")
    print("| case | method | p50 ms | GFLOP/s (full model) | x ONNX Runtime | x ONNX Runtime split |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        ratios = [f"{row[key]:.2f}" if row[key] else "-"
                  for key in ("vs_onnxruntime", "vs_onnxruntime_split")]
        print(f"| {row['case']} | {row['method']} | {row['p50_ms']:.3f} | {row['gflops']:.0f} | "
              f"{ratios[0]} | {ratios[1]} |")
    for short, (ranked, alone) in agreements.items():
        print(f"{short} top-10 equal to float32's (ties within 1e-3): {100 * ranked:.1f}% "
              f"of 64 users ({short} scores alone, no rescoring: {100 * alone:.1f}%)")
    report = dict(rows=rows, gemm_gflops=rate, **{
                  f"{short}_top10_agreement": ranked for short, (ranked, _) in agreements.items()},
                  **{f"{short}_scores_alone_top10_agreement": alone
                     for short, (_, alone) in agreements.items()},
                  threads=THREADS, load_average=load, versions=dict(
                      recfuse=recfuse.__version__, numpy=np.__version__, python=platform.python_version(),
                      **peers), kernels=dict(f32=f32.kernel, **{
                      short: model.kernel for short, (model, _) in reduced.items()}))
    write_json(args.output, report, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Adversarial hunt on ``MLPScorer.from_onnx`` (python/recfuse/ranking.py: ``from_onnx``,
``layers_from_onnx``, ``_onnx_bias``, ``_onnx_constant``), checked against ONNX Runtime.

The contract used here (the from_onnx and MLPScorer docstrings, the module docstring of
ranking.py): a graph of the shape of an ``nn.Sequential`` of Linear and activation layers
(Gemm with transA=0, alpha=beta=1 and any transB, or MatMul, each optionally followed by Adds
of constant biases, then Relu, Gelu (exact, opset 20 or com.microsoft), Sigmoid or Tanh;
Identity nodes skipped wherever they stand; weights as initializers or Constants) loads and
scores what ONNX Runtime computes on the same rows (float32: ~1e-5 relative), and so do
``score_candidates`` and ``rank`` (score descending, ties to the smaller id, each id once).
Anything else is refused with an error that names the node, the operator or the problem:
a ValueError for a file that is not a readable model (the CLI and ``serve``'s reload catch
ValueError, not protobuf's or onnx's own exception types), never a crash, never an unpickled
object. NaN or inf weights are refused (the MLPScorer contract).

Graphs are built with ``onnx.helper`` (PyTorch is not needed). The ten bugs the hunt found
are fixed; their tests are the last section.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfuse import MLPScorer
from conftest import backend_params

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ort.set_default_logger_severity(3)  # no shape-merge warnings on stderr

HOST = backend_params(("cpu", "numba", "numpy"), family="mlp")
BACKENDS = [p.values[0] for p in HOST if not p.marks]
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])
ONNX_ACTIVATIONS = {"relu": "Relu", "gelu": "Gelu", "sigmoid": "Sigmoid", "tanh": "Tanh",
                    "identity": None}
ENCODINGS = ["gemm_t", "gemm_t_nobias", "gemm_n", "gemm_t_add", "gemm_scalar", "gemm_row",
             "matmul", "matmul_add", "matmul_add_first"]


# ------------------------------------------------------------------------------ helpers


def _model(nodes, arrays, *, in_width=4, opset=20, elem=TensorProto.FLOAT, domains=(),
           inputs=None, outputs=None, output="y"):
    graph = helper.make_graph(
        nodes, "g",
        inputs if inputs is not None else [helper.make_tensor_value_info("x", elem, ["n", in_width])],
        outputs if outputs is not None else [helper.make_tensor_value_info(output, elem, ["n", 1])],
        [a if isinstance(a, TensorProto) else numpy_helper.from_array(np.asarray(a), name)
         for name, a in arrays.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


def _save(tmp_path, name, model, **kwargs):
    path = tmp_path / name
    onnx.save(model, str(path), **kwargs)
    return path


def _ort(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: X})[0].reshape(len(X))


def _close(got, expected, rtol=1e-5):
    """float32 scores against ONNX Runtime's: relative to the scale of the scores."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


def _weights(rng, out, inp):
    return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)


def _two_layers(rng, in_width=4, hidden=6):
    """W0 (hidden, in), b0 (hidden,), W1 (1, hidden): the small model most tests vary."""
    return (_weights(rng, hidden, in_width), rng.standard_normal(hidden).astype(np.float32),
            _weights(rng, 1, hidden))


def _plain_nodes(activation="Relu"):
    return [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
            helper.make_node(activation, ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]


def _plain(tmp_path, rng, name="m.onnx", **save_kwargs):
    W0, b0, W1 = _two_layers(rng)
    model = _model(_plain_nodes(), {"W0": W0, "b0": b0, "W1": W1})
    return _save(tmp_path, name, model, **save_kwargs), (W0, b0, W1)


def build_chain(widths, activations, encodings, rng, *, opset=20, constants=False,
                identities=False, gelu_domain=""):
    """An ONNX model of the layers, each written in one of ENCODINGS, and the layers as
    (W (out, in), b or None, activation) for the oracle."""
    nodes, inits, counter = [], {}, [0]
    state = {"value": "x"}

    def fresh(prefix):
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const(array, prefix):
        name = fresh(prefix)
        if constants:
            nodes.append(helper.make_node("Constant", [], [name],
                                          value=numpy_helper.from_array(array, name + "_v")))
        else:
            inits[name] = array
        return name

    def node(op, ins, **attrs):
        out = fresh("t")
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        state["value"] = out
        if identities:
            passed = fresh("i")
            nodes.append(helper.make_node("Identity", [out], [passed]))
            state["value"] = passed

    layers = []
    for i, (activation, encoding) in enumerate(zip(activations, encodings)):
        W = _weights(rng, widths[i + 1], widths[i])
        b = rng.standard_normal(widths[i + 1]).astype(np.float32)
        bias, x = b, state["value"]
        if encoding == "gemm_t":
            node("Gemm", [x, const(W, "W"), const(b, "b")], transB=1)
        elif encoding == "gemm_t_nobias":
            node("Gemm", [x, const(W, "W")], transB=1)
            bias = None
        elif encoding == "gemm_n":
            node("Gemm", [x, const(W.T.copy(), "W"), const(b, "b")])
        elif encoding == "gemm_t_add":
            extra = rng.standard_normal(widths[i + 1]).astype(np.float32)
            node("Gemm", [x, const(W, "W"), const(b, "b")], transB=1)
            node("Add", [state["value"], const(extra.reshape(1, -1), "c")])
            bias = b + extra
        elif encoding == "gemm_scalar":
            s = np.array(rng.standard_normal(), np.float32)
            node("Gemm", [x, const(W, "W"), const(s, "b")], transB=1)
            bias = np.full(widths[i + 1], s, np.float32)
        elif encoding == "gemm_row":
            node("Gemm", [x, const(W, "W"), const(b.reshape(1, -1), "b")], transB=1)
        elif encoding == "matmul":
            node("MatMul", [x, const(W.T.copy(), "W")])
            bias = None
        elif encoding == "matmul_add":
            node("MatMul", [x, const(W.T.copy(), "W")])
            node("Add", [state["value"], const(b, "b")])
        elif encoding == "matmul_add_first":
            node("MatMul", [x, const(W.T.copy(), "W")])
            node("Add", [const(b, "b"), state["value"]])
        else:
            raise AssertionError(encoding)
        if ONNX_ACTIVATIONS[activation]:
            node(ONNX_ACTIVATIONS[activation], [state["value"]],
                 **({"domain": gelu_domain} if activation == "gelu" and gelu_domain else {}))
        layers.append((W, bias, activation))
    model = _model(nodes, inits, in_width=widths[0], opset=opset, output=state["value"],
                   domains=[gelu_domain] if gelu_domain else ())
    return model, layers


# ------------------------------------------------------------------------------ loads and scores


@pytest.mark.parametrize("backend", HOST)
@HYPOTHESIS
@given(data=st.data())
def test_random_chains_score_as_onnxruntime(backend, data):
    """Every documented way to write a layer (Gemm transB 0/1 with a (n,), (1, n) or scalar
    bias or none, Gemm + Add, MatMul with or without an Add on either side), weights as
    initializers or Constant nodes, Identity nodes after every node, opsets 13 to 21: the
    scorer scores what ONNX Runtime computes."""
    depth = data.draw(st.integers(1, 4), label="depth")
    widths = [data.draw(st.integers(1, 9)) for _ in range(depth)] + [1]
    opset = data.draw(st.sampled_from([13, 17, 20, 21]), label="opset")
    choices = list(ONNX_ACTIVATIONS) if opset >= 20 else ["relu", "sigmoid", "tanh", "identity",
                                                          "gelu"]
    activations = data.draw(st.lists(st.sampled_from(choices), min_size=depth, max_size=depth))
    encodings = data.draw(st.lists(st.sampled_from(ENCODINGS), min_size=depth, max_size=depth))
    gelu_domain = "com.microsoft" if opset < 20 else data.draw(st.sampled_from(["",
                                                                                 "com.microsoft"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    model, layers = build_chain(widths, activations, encodings, rng, opset=opset,
                                constants=data.draw(st.booleans(), label="constants"),
                                identities=data.draw(st.booleans(), label="identities"),
                                gelu_domain=gelu_domain)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "chain.onnx")
        onnx.save(model, path)
        X = (rng.standard_normal((13, widths[0])) * 2).astype(np.float32)
        expected = _ort(path, X)
        scorer = MLPScorer.from_onnx(path, backend=backend)
    assert scorer.backend == backend
    assert [a for _, _, a in scorer.layers] == activations
    for (W, b, _), (W_read, b_read, _) in zip(layers, scorer.layers):
        np.testing.assert_array_equal(W_read, W)
        assert (b is None) == (b_read is None)
        if b is not None:
            np.testing.assert_allclose(b_read, b, rtol=1e-6)
    _close(scorer.score(X), expected)
    _close([scorer.score(row) for row in X[:3]], expected[:3])  # a single row


@HYPOTHESIS
@given(data=st.data())
def test_score_candidates_and_rank_follow_onnxruntime_scores(data):
    """Small integer weights and inputs: ONNX Runtime's scores and the scorer's are exact, so
    rank must equal a full sort of ORT's scores: descending, ties to the smaller id, each id
    once, padded with -1 / -inf."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    users, items, c = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 8)), \
        data.draw(st.integers(1, 10))
    k = data.draw(st.integers(1, 12), label="k")
    W0 = rng.integers(-2, 3, (5, 6)).astype(np.float32)
    W1 = rng.integers(-2, 3, (1, 5)).astype(np.float32)
    b0 = rng.integers(-2, 3, 5).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "W0t"], ["m"]),
                    helper.make_node("Add", ["m", "b0"], ["z"]),
                    helper.make_node("Relu", ["z"], ["r"]),
                    helper.make_node("MatMul", ["r", "W1t"], ["y"])],
                   {"W0t": W0.T.copy(), "b0": b0, "W1t": W1.T.copy()}, in_width=6)
    U = rng.integers(-2, 3, (users, 2)).astype(np.float32)
    T = rng.integers(-2, 3, (items, 3)).astype(np.float32)
    F = rng.integers(-2, 3, (users * c, 1)).astype(np.float32)
    ids = rng.integers(0, items, (users, c))
    rows = np.hstack([np.repeat(U, c, axis=0), T[ids.reshape(-1)], F])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        onnx.save(model, path)
        expected = _ort(path, rows).reshape(users, c)
        scorer = MLPScorer.from_onnx(path)
    np.testing.assert_array_equal(scorer.score_candidates(U, ids, T, candidate_features=F),
                                  expected)
    got_ids, got_scores = scorer.rank(U, ids, T, candidate_features=F, k=k)
    for u in range(users):
        best = {}
        for i, s in zip(ids[u], expected[u]):
            best[int(i)] = max(best.get(int(i), -np.inf), float(s))
        order = sorted(best, key=lambda i: (-best[i], i))[:k]
        want_ids = order + [-1] * (k - len(order))
        want_scores = [best[i] for i in order] + [-np.inf] * (k - len(order))
        assert got_ids[u].tolist() == want_ids
        np.testing.assert_array_equal(got_scores[u], want_scores)


def test_weights_as_graph_inputs_with_initializers_are_read(tmp_path):
    """Weights listed as graph inputs too (an overridable default, as older exporters wrote
    them): the initializer is read, one data input remains."""
    rng = np.random.default_rng(1)
    W0, b0, W1 = _two_layers(rng)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
              helper.make_tensor_value_info("W0", TensorProto.FLOAT, [6, 4]),
              helper.make_tensor_value_info("b0", TensorProto.FLOAT, [6]),
              helper.make_tensor_value_info("W1", TensorProto.FLOAT, [1, 6])]
    path = _save(tmp_path, "m.onnx", _model(_plain_nodes(), {"W0": W0, "b0": b0, "W1": W1},
                                            inputs=inputs, opset=11))
    X = rng.standard_normal((20, 4)).astype(np.float32)
    _close(MLPScorer.from_onnx(path).score(X), _ort(path, X))


def test_float64_and_float16_models_load_as_float32(tmp_path):
    """A double or half model: the weights are read into float32 (the scorer's arithmetic),
    within float32 (double) or float16 (half) rounding of what ONNX Runtime computes."""
    rng = np.random.default_rng(2)
    W0, b0, W1 = _two_layers(rng)
    X = rng.standard_normal((30, 4)).astype(np.float32)
    for dtype, elem, rtol in [(np.float64, TensorProto.DOUBLE, 1e-5),
                              (np.float16, TensorProto.FLOAT16, 5e-3)]:
        path = _save(tmp_path, f"{np.dtype(dtype).name}.onnx", _model(
            _plain_nodes("Tanh"), {"W0": W0.astype(dtype), "b0": b0.astype(dtype),
                                   "W1": W1.astype(dtype)}, elem=elem))
        scorer = MLPScorer.from_onnx(path)
        assert scorer.layers[0][0].dtype == np.float32
        np.testing.assert_array_equal(scorer.layers[0][0], W0.astype(dtype).astype(np.float32))
        _close(scorer.score(X), _ort(path, X.astype(dtype)), rtol=rtol)


def test_options_go_to_the_scorer(tmp_path):
    """precision and backend reach MLPScorer: int8 scores within its documented 1e-2 of the
    scale; bfloat16 on the cpu backend is refused by name on a CPU without AVX512-BF16."""
    rng = np.random.default_rng(3)
    model, _ = build_chain([6, 16, 8, 1], ["relu", "tanh", "identity"],
                           ["gemm_t", "matmul_add", "gemm_t"], rng)
    path = _save(tmp_path, "m.onnx", model)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    expected = _ort(path, X)
    int8 = MLPScorer.from_onnx(path, precision="int8")
    assert int8.precision == "int8"
    _close(int8.score(X), expected, rtol=1e-2)
    numpy_bf16 = MLPScorer.from_onnx(path, precision="bfloat16", backend="numpy")
    _close(numpy_bf16.score(X), expected, rtol=1e-2)
    try:
        MLPScorer.from_onnx(path, precision="bfloat16", backend="cpu")
    except ValueError as error:
        assert "bfloat16" in str(error) and "AVX512-BF16" in str(error)
    else:
        pytest.skip("this CPU runs bfloat16 natively")
    with pytest.raises(ValueError, match="precision must be one of"):
        MLPScorer.from_onnx(path, precision="float16")


def test_str_path_and_bytes_paths_read_the_same_model(tmp_path):
    rng = np.random.default_rng(4)
    path, (W0, _, _) = _plain(tmp_path, rng)

    class BytesPath:
        def __fspath__(self):
            return os.fsencode(str(path))

    for given_path in (path, str(path), os.fsencode(str(path)), BytesPath()):
        np.testing.assert_array_equal(MLPScorer.from_onnx(given_path).layers[0][0], W0)
    for wrong in (None, 3, bytearray(os.fsencode(str(path)))):
        with pytest.raises(TypeError):
            MLPScorer.from_onnx(wrong)


def test_external_data_loads_from_the_models_folder(tmp_path, monkeypatch):
    """A model saved with save_as_external_data, loaded by str or Path from another cwd."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "model"
    folder.mkdir()
    path, (W0, b0, W1) = _plain(folder, rng, save_as_external_data=True,
                                all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    assert (folder / "w.bin").exists()
    monkeypatch.chdir(tmp_path)
    X = rng.standard_normal((10, 4)).astype(np.float32)
    for given_path in (path, str(path)):
        scorer = MLPScorer.from_onnx(given_path)
        np.testing.assert_array_equal(scorer.layers[1][0], W1)
        _close(scorer.score(X), _ort(path, X))


# ------------------------------------------------------------------------------ refused models


def test_non_finite_weights_and_biases_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    W0, b0, W1 = _two_layers(rng)
    nan_w = W0.copy()
    nan_w[2, 1] = np.nan
    for name, arrays in [("nan_w", {"W0": nan_w, "b0": b0, "W1": W1}),
                         ("inf_b", {"W0": W0, "b0": np.full(6, np.inf, np.float32), "W1": W1})]:
        path = _save(tmp_path, f"{name}.onnx", _model(_plain_nodes(), arrays))
        with pytest.raises(ValueError, match="must be finite"):
            MLPScorer.from_onnx(path)
    # a NaN bias added after the Gemm sums into the bias: refused too
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
             helper.make_node("Add", ["h", "c"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    path = _save(tmp_path, "nan_add.onnx", _model(nodes, {
        "W0": W0, "b0": b0, "W1": W1, "c": np.array([np.nan], np.float32)}))
    with pytest.raises(ValueError, match="bias must be finite"):
        MLPScorer.from_onnx(path)


@pytest.mark.parametrize("op, extra, attrs", [
    ("LeakyRelu", [], {"alpha": 0.1}),
    ("Softmax", [], {"axis": 1}),
    ("Elu", [], {}),
    ("Dropout", [], {}),
    ("Cast", [], {"to": TensorProto.FLOAT}),
    ("Flatten", [], {"axis": 1}),
    ("Softplus", [], {}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_unsupported_operators_are_refused_by_name(tmp_path, op, extra, attrs):
    rng = np.random.default_rng(7)
    W0, b0, W1 = _two_layers(rng)
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
             helper.make_node(op, ["h"] + extra, ["r"], **attrs),
             helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    path = _save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "b0": b0, "W1": W1}))
    X = rng.standard_normal((3, 4)).astype(np.float32)
    _ort(path, X)  # a valid model: ONNX Runtime runs it
    with pytest.raises(ValueError, match=rf"node 1 \({op} ''\) is not supported"):
        MLPScorer.from_onnx(path)


def test_input_side_and_quantized_graphs_are_refused_by_name(tmp_path):
    """Reshape or Flatten at the input, Conv, BatchNormalization, a QuantizeLinear /
    DequantizeLinear (int8) graph: refused, naming the operator."""
    rng = np.random.default_rng(8)
    W0, b0, W1 = _two_layers(rng)
    base = {"W0": W0, "b0": b0, "W1": W1}
    tail = [helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    cases = {
        "Reshape": ([helper.make_node("Reshape", ["x", "shape"], ["x2"]),
                     helper.make_node("Gemm", ["x2", "W0", "b0"], ["h"], transB=1)] + tail,
                    {"shape": np.array([-1, 4], np.int64)}),
        "BatchNormalization": ([helper.make_node("Gemm", ["x", "W0", "b0"], ["g"], transB=1),
                                helper.make_node("BatchNormalization",
                                                 ["g", "s", "bb", "mu", "var"], ["h"])] + tail,
                               {n: np.ones(6, np.float32) for n in ("s", "bb", "mu", "var")}),
        "QuantizeLinear": ([helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"]),
                            helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["x2"]),
                            helper.make_node("Gemm", ["x2", "W0", "b0"], ["h"], transB=1)] + tail,
                           {"sc": np.array(0.05, np.float32), "zp": np.array(0, np.int8)}),
        "DequantizeLinear": ([helper.make_node("DequantizeLinear", ["Wq", "sc"], ["W0d"]),
                              helper.make_node("Gemm", ["x", "W0d", "b0"], ["h"], transB=1)] + tail,
                             {"Wq": np.round(W0 / 0.05).astype(np.int8),
                              "sc": np.array(0.05, np.float32)}),
    }
    for op, (nodes, arrays) in cases.items():
        path = _save(tmp_path, f"{op}.onnx", _model(nodes, {**base, **arrays}))
        _ort(path, rng.standard_normal((3, 4)).astype(np.float32))
        with pytest.raises(ValueError, match=rf"\({op} ''\)"):
            MLPScorer.from_onnx(path)
    conv = _model([helper.make_node("Conv", ["x", "K"], ["h"]),
                   helper.make_node("Relu", ["h"], ["y"])],
                  {"K": np.ones((1, 1, 3), np.float32)},
                  inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])])
    with pytest.raises(ValueError, match=r"\(Conv ''\) is not supported"):
        MLPScorer.from_onnx(_save(tmp_path, "conv.onnx", conv))
    ml = _model([helper.make_node("LinearRegressor", ["x"], ["y"], domain="ai.onnx.ml",
                                  coefficients=[1.0, 2.0, 3.0, 4.0])], {},
                domains=["ai.onnx.ml"])
    with pytest.raises(ValueError, match="of domain 'ai.onnx.ml', which is not supported"):
        MLPScorer.from_onnx(_save(tmp_path, "ml.onnx", ml))


def test_gelu_patterns_of_older_exporters_are_refused_with_the_opset_hint(tmp_path):
    """The erf GELU an exporter writes below opset 20 (Div, Erf, Add, Mul, Mul) and the tanh
    approximation (Mul, Pow, ...) are refused; the erf one says to export at opset 20."""
    rng = np.random.default_rng(9)
    W0, b0, W1 = _two_layers(rng)
    consts = {"W0": W0, "b0": b0, "W1": W1, "sqrt2": np.array(np.sqrt(2), np.float32),
              "one": np.array(1, np.float32), "half": np.array(0.5, np.float32),
              "three": np.array(3, np.float32)}
    erf = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
           helper.make_node("Div", ["h", "sqrt2"], ["d"]),
           helper.make_node("Erf", ["d"], ["e"]),
           helper.make_node("Add", ["e", "one"], ["a"]),
           helper.make_node("Mul", ["h", "a"], ["m"]),
           helper.make_node("Mul", ["m", "half"], ["r"]),
           helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    path = _save(tmp_path, "erf.onnx", _model(erf, consts, opset=17))
    X = rng.standard_normal((3, 4)).astype(np.float32)
    _ort(path, X)
    with pytest.raises(ValueError, match=r"Div ''\) is not supported.*opset_version=20"):
        MLPScorer.from_onnx(path)
    tanh = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
            helper.make_node("Pow", ["h", "three"], ["p"]),
            helper.make_node("Mul", ["p", "half"], ["r"]),
            helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    with pytest.raises(ValueError, match=r"Pow ''\) is not supported"):
        MLPScorer.from_onnx(_save(tmp_path, "tanh.onnx", _model(tanh, consts, opset=17)))


def test_gemm_attributes_other_than_the_linear_ones_are_refused(tmp_path):
    rng = np.random.default_rng(10)
    W0, b0, W1 = _two_layers(rng)
    for attrs, match in [({"beta": 0.0}, "beta=0.0"), ({"alpha": 0.5}, "alpha=0.5"),
                         ({"transA": 1}, "transA=1")]:
        nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1, **attrs)] + \
            _plain_nodes()[1:]
        with pytest.raises(ValueError, match=match):
            MLPScorer.from_onnx(_save(tmp_path, "m.onnx", _model(nodes, {
                "W0": W0, "b0": b0, "W1": W1})))
    # Gemm(W, x): the chain's value second
    nodes = [helper.make_node("Gemm", ["W0", "x", "b0"], ["h"], transB=1)] + _plain_nodes()[1:]
    with pytest.raises(ValueError, match=r"only Gemm\(x, W, b\)"):
        MLPScorer.from_onnx(_save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "b0": b0,
                                                                   "W1": W1})))
    nodes = [helper.make_node("MatMul", ["W0", "x"], ["h"])] + _plain_nodes()[1:]
    with pytest.raises(ValueError, match=r"only MatMul\(x, W\)"):
        MLPScorer.from_onnx(_save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "W1": W1})))


def test_graphs_that_are_not_chains_are_refused(tmp_path):
    rng = np.random.default_rng(11)
    W0, b0, W1 = _two_layers(rng)
    arrays = {"W0": W0, "b0": b0, "W1": W1}
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])
    # two outputs
    two = _model(_plain_nodes(), arrays, outputs=[y, helper.make_tensor_value_info(
        "h", TensorProto.FLOAT, ["n", 6])])
    with pytest.raises(ValueError, match="one input and one output"):
        MLPScorer.from_onnx(_save(tmp_path, "two_out.onnx", two))
    # a weight fed at run time: two data inputs
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
              helper.make_tensor_value_info("W1", TensorProto.FLOAT, [1, 6])]
    fed = _model(_plain_nodes(), {"W0": W0, "b0": b0}, inputs=inputs)
    with pytest.raises(ValueError, match=r"one input and one output, got inputs \['x', 'W1'\]"):
        MLPScorer.from_onnx(_save(tmp_path, "fed.onnx", fed))
    # a branch: h used twice (a residual)
    branch = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
              helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("Add", ["r", "h"], ["s"]),
              helper.make_node("Gemm", ["s", "W1"], ["y"], transB=1)]
    with pytest.raises(ValueError, match="not a graph with branches"):
        MLPScorer.from_onnx(_save(tmp_path, "branch.onnx", _model(branch, arrays)))
    # widths that do not chain (6 out, 5 in)
    bad = {"W0": W0, "b0": b0, "W1": _weights(rng, 1, 5)}
    with pytest.raises(ValueError, match=r"layers\[1\] takes 5 inputs but layers\[0\] gives 6"):
        MLPScorer.from_onnx(_save(tmp_path, "widths.onnx", _model(_plain_nodes(), bad)))
    # a last layer of 3 outputs
    wide = {"W0": W0, "b0": b0, "W1": _weights(rng, 3, 6)}
    with pytest.raises(ValueError, match="last layer must have one output"):
        MLPScorer.from_onnx(_save(tmp_path, "wide.onnx", _model(_plain_nodes(), wide)))
    # a bias of the wrong width, and a bias that is a column
    for name, bias in [("b_width", np.ones(5, np.float32)), ("b_col", np.ones((6, 1), np.float32))]:
        with pytest.raises(ValueError, match=r"a bias must have 6 values"):
            MLPScorer.from_onnx(_save(tmp_path, f"{name}.onnx", _model(
                _plain_nodes(), {**arrays, "b0": bias})))
    # a chain that stops short of the output
    short = _plain_nodes() + [helper.make_node("Sigmoid", ["r"], ["unused"])]
    with pytest.raises(ValueError):
        MLPScorer.from_onnx(_save(tmp_path, "short.onnx", _model(short, arrays)))


def test_empty_and_layerless_graphs_are_refused(tmp_path):
    empty = _model([], {}, outputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                  ["n", 4])])
    with pytest.raises(ValueError, match="no Gemm or MatMul"):
        MLPScorer.from_onnx(_save(tmp_path, "empty.onnx", empty))
    only = _model([helper.make_node("Identity", ["x"], ["i"]),
                   helper.make_node("Identity", ["i"], ["y"])], {})
    with pytest.raises(ValueError, match="no Gemm or MatMul"):
        MLPScorer.from_onnx(_save(tmp_path, "identity.onnx", only))
    activation_first = _model([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("MatMul", ["r", "W"], ["y"])],
                              {"W": np.ones((4, 1), np.float32)})
    with pytest.raises(ValueError, match="an activation must follow a Gemm or MatMul"):
        MLPScorer.from_onnx(_save(tmp_path, "first.onnx", activation_first))


def test_nodes_out_of_topological_order_are_refused_not_misread(tmp_path):
    """ONNX requires topologically sorted nodes (ONNX Runtime sorts them itself); from_onnx
    refuses them with a ValueError that says so (it said 'not a graph with branches')
    rather than reading a different chain."""
    rng = np.random.default_rng(12)
    W0, b0, W1 = _two_layers(rng)
    nodes = _plain_nodes()
    shuffled = [nodes[1], nodes[0], nodes[2]]
    with pytest.raises(ValueError, match="reads 'h', which node 1 writes later.*topological"):
        MLPScorer.from_onnx(_save(tmp_path, "m.onnx", _model(shuffled, {
            "W0": W0, "b0": b0, "W1": W1})))


def test_constants_out_of_order_and_shared_initializers_are_read(tmp_path):
    """A Constant written after the node that reads it, and one initializer used as the bias
    of a Gemm and in an Add: read without changing the shared array."""
    rng = np.random.default_rng(13)
    W0 = _weights(rng, 3, 4)
    W1 = _weights(rng, 3, 3)
    W2 = _weights(rng, 1, 3)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W0", "b"], ["h"], transB=1),
             helper.make_node("Add", ["h", "b"], ["h2"]),
             helper.make_node("Tanh", ["h2"], ["r"]),
             helper.make_node("Gemm", ["r", "W1", "b"], ["g"], transB=1),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("MatMul", ["s", "W2t"], ["y"]),
             helper.make_node("Constant", [], ["W2t"], value=numpy_helper.from_array(
                 W2.T.copy(), "W2t_value"))]
    path = _save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "W1": W1, "b": b}))
    scorer = MLPScorer.from_onnx(path)
    np.testing.assert_allclose(scorer.layers[0][1], 2 * b, rtol=1e-6)
    np.testing.assert_array_equal(scorer.layers[1][1], b)
    X = rng.standard_normal((25, 4)).astype(np.float32)
    # ONNX Runtime wants the Constant first: score against the sorted graph
    sorted_path = _save(tmp_path, "sorted.onnx", _model([nodes[-1]] + nodes[:-1], {
        "W0": W0, "W1": W1, "b": b}))
    _close(scorer.score(X), _ort(sorted_path, X))


# ------------------------------------------------------------------------------ files


def test_missing_paths_and_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        MLPScorer.from_onnx(tmp_path / "absent.onnx")
    with pytest.raises(OSError):
        MLPScorer.from_onnx(tmp_path)


def test_a_pickle_is_refused_as_not_onnx_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("ranker.onnx", "ranker.pkl", "ranker"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Payload(), protocol=pickle.HIGHEST_PROTOCOL))
        with pytest.raises(ValueError, match="not a readable ONNX model|holds no ONNX graph"):
            MLPScorer.from_onnx(path)
    assert not marker.exists()


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_random_bytes_are_a_value_error(tmp_path, blob):
    path = tmp_path / "random.onnx"
    path.write_bytes(blob)
    with pytest.raises(ValueError):
        MLPScorer.from_onnx(path)


def test_mutated_models_never_crash_and_fail_with_value_errors(tmp_path):
    """1200 truncations, byte flips, insertions and deletions of a valid model, loaded in a
    child process: it must survive them all, and every refusal is a ValueError (a tensor of
    an undefined or unknown element type raised TypeError or KeyError before the fix of
    test_unknown_tensor_element_types_are_a_value_error)."""
    rng = np.random.default_rng(14)
    model, _ = build_chain([5, 7, 3, 1], ["relu", "gelu", "sigmoid"],
                           ["gemm_t", "matmul_add", "gemm_n"], rng)
    source = tmp_path / "m.onnx"
    onnx.save(model, str(source))
    code = textwrap.dedent(f"""
        import json, sys, warnings
        import numpy as np, onnx
        from recfuse import MLPScorer
        warnings.simplefilter("ignore")
        data = open({str(source)!r}, "rb").read()
        rng = np.random.default_rng(15)
        path = {str(tmp_path / "fuzz.onnx")!r}
        counts, others = {{}}, []
        for trial in range(1200):
            b = bytearray(data)
            op = rng.integers(4)
            if op == 0:
                b = b[:rng.integers(len(b))]
            elif op == 1:
                for _ in range(rng.integers(1, 4)):
                    b[rng.integers(len(b))] = rng.integers(256)
            elif op == 2:
                i = rng.integers(len(b))
                b[i:i] = bytes(rng.integers(0, 256, rng.integers(1, 8), dtype=np.uint8))
            else:
                i = rng.integers(len(b))
                del b[i:i + rng.integers(1, 10)]
            open(path, "wb").write(bytes(b))
            try:
                MLPScorer.from_onnx(path)
                kind = "loaded"
            except ValueError:
                kind = "ValueError"
            except Exception as error:
                kind = type(error).__name__
                others.append(f"{{kind}}: {{error}}"[:200])
            counts[kind] = counts.get(kind, 0) + 1
        print(json.dumps({{"counts": counts, "others": others}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["counts"].get("ValueError", 0) > 600
    assert result["others"] == []


def test_options_are_not_applied_to_a_refused_file(tmp_path):
    """A bad file is reported as such, whatever the options (read before the scorer is
    built)."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12\x03abc\xff")
    with pytest.raises(ValueError, match="bad.onnx"):
        MLPScorer.from_onnx(bad, precision="int8")


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path):
    """An initializer that declares 10^10 values but holds 24, external data whose length
    or offset points far past the file: a ValueError, at once (nothing that size is
    allocated: the machine could not)."""
    rng = np.random.default_rng(16)
    model = _model(_plain_nodes(), dict(zip(("W0", "b0", "W1"), _two_layers(rng))))
    model.graph.initializer[0].dims[:] = [100_000, 100_000]
    with pytest.raises(ValueError, match="reshape"):
        MLPScorer.from_onnx(_save(tmp_path, "dims.onnx", model))
    folder = tmp_path / "external"
    folder.mkdir()
    path, _ = _plain(folder, rng, save_as_external_data=True, all_tensors_to_one_file=True,
                     location="w.bin", size_threshold=0)
    for key in ("length", "offset"):
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == key:
                    entry.value = str(10**12)
        onnx.save(model, str(folder / f"{key}.onnx"))
        with pytest.raises(ValueError, match=f"External data {key}"):
            MLPScorer.from_onnx(folder / f"{key}.onnx")


def test_a_loaded_scorer_pickles_and_keeps_its_weights_read_only(tmp_path):
    rng = np.random.default_rng(17)
    path, (W0, b0, W1) = _plain(tmp_path, rng)
    scorer = MLPScorer.from_onnx(path)
    X = rng.standard_normal((8, 4)).astype(np.float32)
    copy = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(copy.score(X), scorer.score(X))
    with pytest.raises(ValueError):
        scorer.layers[0][0][0, 0] = 1.0
    assert scorer.source is None  # load_scorer sets it; from_onnx leaves it


def test_load_scorer_reads_onnx_by_suffix(tmp_path):
    from recfuse.ranking import load_scorer

    rng = np.random.default_rng(18)
    path, (W0, _, _) = _plain(tmp_path, rng, name="ranker.ONNX")
    scorer = load_scorer(os.fsencode(str(path)))
    np.testing.assert_array_equal(scorer.layers[0][0], W0)
    assert scorer.source == str(path)


# ------------------------------------------------------------------------------ bugs


def test_bytes_path_reads_external_data_from_the_models_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(20)
    folder = tmp_path / "model"
    folder.mkdir()
    path, (W0, b0, W1) = _plain(folder, rng, save_as_external_data=True,
                                all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # a file of the same name in the cwd, holding other numbers
    size = (folder / "w.bin").stat().st_size
    (elsewhere / "w.bin").write_bytes(np.arange(size // 4, dtype=np.float32).tobytes())
    monkeypatch.chdir(elsewhere)
    scorer = MLPScorer.from_onnx(os.fsencode(str(path)))
    np.testing.assert_array_equal(scorer.layers[0][0], W0)
    np.testing.assert_array_equal(scorer.layers[1][0], W1)


@pytest.mark.parametrize("case", ["missing", "absolute", "outside", "symlink", "folder"])
def test_bad_external_data_is_a_value_error(tmp_path, case):
    """The model's external data file missing, named by an absolute path, outside the
    model's folder, a symbolic link or a folder: refused with a ValueError (or
    FileNotFoundError) naming the file, as ``recfuse serve --ranker`` catches it."""
    rng = np.random.default_rng(21)
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = _plain(folder, rng, save_as_external_data=True, all_tensors_to_one_file=True,
                     location="w.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    location = {"missing": "gone.bin", "absolute": str(folder / "w.bin"),
                "outside": "../model/w.bin", "symlink": "link.bin", "folder": "sub"}[case]
    os.symlink(folder / "w.bin", folder / "link.bin")
    (folder / "sub").mkdir()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    with pytest.raises((ValueError, FileNotFoundError), match=location.split("/")[-1]):
        MLPScorer.from_onnx(path)


@pytest.mark.parametrize("data_type", [0, 36])
def test_unknown_tensor_element_types_are_a_value_error(tmp_path, data_type):
    """A corrupt data_type (found by the mutation test: one flipped byte does it) is a file
    that is not a readable model: a ValueError naming it (the CLI's ``serve --ranker``
    prints a KeyError traceback today)."""
    rng = np.random.default_rng(22)
    W0, b0, W1 = _two_layers(rng)
    junk = numpy_helper.from_array(np.zeros(3, np.float32), "junk")
    junk.data_type = data_type
    path = _save(tmp_path, "m.onnx", _model(_plain_nodes(), {"W0": W0, "b0": b0, "W1": W1,
                                                             "junk": junk}))
    with pytest.raises(ValueError, match="m.onnx|junk"):
        MLPScorer.from_onnx(path)


def test_sparse_constant_weights_load_or_are_refused_clearly(tmp_path):
    """ONNX Runtime runs a model whose weight is a Constant(sparse_value=...): from_onnx
    should read it densely, or refuse it with a ValueError that says sparse."""
    rng = np.random.default_rng(23)
    W0, b0, W1 = _two_layers(rng)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(W1.ravel().copy(), "values"),
                                       numpy_helper.from_array(np.arange(6, dtype=np.int64),
                                                               "indices"), [1, 6])
    nodes = _plain_nodes()[:2] + [
        helper.make_node("Constant", [], ["W1"], sparse_value=sparse),
        helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
    path = _save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "b0": b0}))
    X = rng.standard_normal((10, 4)).astype(np.float32)
    expected = _ort(path, X)
    try:
        scorer = MLPScorer.from_onnx(path)
    except ValueError as error:
        assert "sparse" in str(error).lower()
    else:
        _close(scorer.score(X), expected)


def test_identity_of_a_weight_is_skipped(tmp_path):
    """Exporters write Identity(initializer) for tied or renamed weights; ONNX Runtime runs
    it. The docstring skips Identity nodes wherever they stand: the weight is still one."""
    rng = np.random.default_rng(24)
    W0, b0, W1 = _two_layers(rng)
    nodes = [helper.make_node("Identity", ["W0"], ["W0_alias"]),
             helper.make_node("Gemm", ["x", "W0_alias", "b0"], ["h"], transB=1)] + \
        _plain_nodes()[1:]
    path = _save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "b0": b0, "W1": W1}))
    X = rng.standard_normal((10, 4)).astype(np.float32)
    _close(MLPScorer.from_onnx(path).score(X), _ort(path, X))


def test_declared_input_width_must_match_the_first_layer(tmp_path):
    rng = np.random.default_rng(25)
    W0, b0, W1 = _two_layers(rng)  # W0 takes 4 inputs
    path = _save(tmp_path, "m.onnx", _model(_plain_nodes(), {"W0": W0, "b0": b0, "W1": W1},
                                            in_width=7))
    with pytest.raises(Exception):  # noqa: B017 - the invalid model, as ONNX Runtime sees it
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="7"):
        MLPScorer.from_onnx(path)


@pytest.mark.parametrize("kind", ["string", "int8", "int64"])
def test_weights_of_another_element_type_than_the_input_are_refused(tmp_path, kind):
    """Gemm and MatMul take operands of one type: a float input with string or integer
    weights is a type error in ONNX Runtime. from_onnx reads numeric strings and bare int8
    codes (no scale: a quantized weight half-exported) as float weights instead."""
    rng = np.random.default_rng(26)
    W0, b0, W1 = _two_layers(rng)
    weight = {"string": helper.make_tensor("W0", TensorProto.STRING, [6, 4],
                                           [str(v).encode() for v in W0.ravel()]),
              "int8": np.round(W0 * 20).astype(np.int8),
              "int64": np.round(W0 * 20).astype(np.int64)}[kind]
    path = _save(tmp_path, "m.onnx", _model(_plain_nodes(), {"W0": weight, "b0": b0, "W1": W1}))
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's type error
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises((ValueError, TypeError), match="W0"):
        MLPScorer.from_onnx(path)


@pytest.mark.parametrize("suffix", [".json", ".textproto", ".prototxt"])
def test_unreadable_text_named_files_are_a_value_error(tmp_path, suffix):
    """onnx.load picks a text parser from the file name; what it raises for a file that is
    not a model must still be the ValueError naming the file."""
    path = tmp_path / f"ranker{suffix}"
    path.write_text("this is not a model {")
    with pytest.raises(ValueError, match=f"ranker{suffix}"):
        MLPScorer.from_onnx(path)


@pytest.mark.parametrize("case", ["float64_weight", "bias_sum"])
def test_overflow_to_float32_is_refused_without_a_warning(tmp_path, case):
    """_check_layers converts under np.errstate(over="ignore") and refuses the inf with a
    ValueError ("must be finite"); from_onnx converts (``_onnx_constant``) and sums biases
    before that, without it. This suite turns warnings into errors (pyproject), as a
    service run with -W error does: the refusal must still be the ValueError."""
    rng = np.random.default_rng(27)
    W0, b0, W1 = _two_layers(rng)
    if case == "float64_weight":
        nodes = _plain_nodes()
        arrays = {"W0": W0.astype(np.float64) * 1e300, "b0": b0.astype(np.float64),
                  "W1": W1.astype(np.float64)}
        elem = TensorProto.DOUBLE
    else:
        nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
                 helper.make_node("Add", ["h", "c"], ["z"]),
                 helper.make_node("Relu", ["z"], ["r"]),
                 helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)]
        arrays = {"W0": W0, "b0": np.full(6, 3e38, np.float32), "W1": W1,
                  "c": np.full(6, 3e38, np.float32)}
        elem = TensorProto.FLOAT
    path = _save(tmp_path, "m.onnx", _model(nodes, arrays, elem=elem))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="must be finite"):
            MLPScorer.from_onnx(path)


@pytest.mark.parametrize("case", ["gemm", "matmul", "add", "constant"])
def test_nodes_missing_inputs_or_outputs_are_a_value_error(tmp_path, case):
    """A node short of its inputs (a hand-edited or corrupt file) is refused by name; the
    index into node.input / node.output escapes as IndexError today (the CLI does not
    catch it)."""
    rng = np.random.default_rng(28)
    W0, b0, W1 = _two_layers(rng)
    last = helper.make_node("Gemm", ["h", "W1"], ["y"], transB=1)
    nodes = {"gemm": [helper.make_node("Gemm", ["x"], ["h"]), last],
             "matmul": [helper.make_node("MatMul", ["x"], ["h"]), last],
             "add": [helper.make_node("Gemm", ["x", "W0"], ["g"], transB=1),
                     helper.make_node("Add", ["g"], ["h"]), last],
             "constant": [helper.make_node("Constant", [], [], value_float=1.0),
                          helper.make_node("Gemm", ["x", "W0"], ["h"], transB=1), last]}[case]
    path = _save(tmp_path, "m.onnx", _model(nodes, {"W0": W0, "W1": W1}))
    with pytest.raises(ValueError, match="node"):
        MLPScorer.from_onnx(path)


# ------------------------------------------------------------- from the notes' suspicions


def test_gelu_under_an_opset_before_20_is_refused(tmp_path):
    """Gelu joined the standard domain in opset 20: a model importing opset 17 with one is
    invalid (ONNX Runtime refuses it), and from_onnx says so instead of loading it."""
    rng = np.random.default_rng(40)
    W0, b0, W1 = _two_layers(rng)
    path = _save(tmp_path, "m.onnx", _model(_plain_nodes("Gelu"), {"W0": W0, "b0": b0,
                                                                   "W1": W1}, opset=17))
    with pytest.raises(Exception):  # noqa: B017 - the invalid model, as ONNX Runtime sees it
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="opset 20 and later.*imports opset 17"):
        MLPScorer.from_onnx(path)
    X = rng.standard_normal((5, 4)).astype(np.float32)
    good = _save(tmp_path, "g.onnx", _model(_plain_nodes("Gelu"), {"W0": W0, "b0": b0,
                                                                   "W1": W1}, opset=20))
    _close(MLPScorer.from_onnx(good).score(X), _ort(good, X))

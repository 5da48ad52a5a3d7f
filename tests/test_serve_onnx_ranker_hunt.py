"""Adversarial hunt on ``recfuse serve MODEL --ranker ranker.onnx`` as a real process.

The contract used (python/recfuse/server.py module docstring and ``create_app``;
python/recfuse/cli.py ``_serve`` and ``_ranker_file``; python/recfuse/ranking.py
``load_scorer``, ``MLPScorer.from_onnx``, ``rank``; python/recfuse/serving.py module
docstring, ``swap_model``):

- the ranker's input row is ``[user vector | context | item vector]``, so an ONNX chain of
  input width ``2 * factors + c`` gives ``c`` context columns; /recommend answers equal an
  in-process ``Recommender(model, MLPScorer.from_onnx(path))`` (and, by hand, the ONNX
  Runtime scores of those rows over the recalled candidates, best first, ties by the
  smaller id, NaN dropped); a score that is not finite is null; /health names the ranker
  (``ranker``, ``ranker_source``, ``context_width``);
- ``POST /reload`` re-reads the model and the ranker file, atomically: a ranker file that
  fails to load (truncated, random bytes, a pickle, a folder, external data missing, a
  wrong declared width, NaN weights, opset-17 Gelu, ...) answers 422 with a one-line
  ``{"error"}`` and the old model and ranker keep serving; a good replacement is picked up;
  /recommend during /reload is answered wholly by one version (model and ranker together);
- ``--ranker-precision int8`` returns float32's ranking (a rescored band); bfloat16 needs
  AVX512-BF16 (absent here) and is refused at start in one line; a bad ranker at start:
  ``recfuse serve: error: ...`` on one line, exit status 2, no traceback.

Bugs found, since fixed (their tests are the file's last ones): a 1-d or scalar weight was
an IndexError (a 500 at /reload, a traceback at start); a line break in the file's own
strings split the one-line refusal; a FIFO at the ranker path blocked /reload and the
writer thread; a scorer file saved in bfloat16 was refused at start whatever
--ranker-precision asked. A folder or a missing file at the ranker path is now refused
before onnx opens it ("no model file at ...", as recfuse.load says).

Every server is started with OMP_* and RECFUSE_* stripped from its environment and killed in
teardown. There are no timing assertions: deadlines only stop a hang.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import MLPScorer
from test_server_process_hunt import Served as ProcessServed
from test_server_process_hunt import _child_env

pytest.importorskip("uvicorn", reason="the [serve] extra (uvicorn) is not installed")
pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="POSIX processes and signals")

N_USERS, N_ITEMS, F, C, K = 40, 30, 4, 2, 5
CANDIDATES = 40  # more than the items: recall hands every unseen item to the ranker
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------ files


def _chain(path, layers, *, opset=20, declared=None, external=None) -> None:
    """An ONNX chain: per layer Gemm(x, W (out, in), b, transB=1) then the activation
    (None: none); ``declared``: the input width the graph declares; ``external``: a file
    name beside ``path`` for the weights. Written via a temporary file and os.replace."""
    nodes, inits, current = [], [], "x"
    for position, (W, b, activation) in enumerate(layers):
        inits += [numpy_helper.from_array(np.asarray(W), f"W{position}"),
                  numpy_helper.from_array(np.asarray(b), f"b{position}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{position}", f"b{position}"],
                                      [f"h{position}"], transB=1))
        current = f"h{position}"
        if activation:
            nodes.append(helper.make_node(activation, [current], [f"a{position}"]))
            current = f"a{position}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    width = layers[0][0].shape[1] if declared is None else declared
    graph = helper.make_graph(
        nodes, "ranker", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    temporary = f"{path}.{uuid.uuid4().hex[:6]}.tmp"
    if external:
        onnx.save(model, temporary, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external, size_threshold=0)
    else:
        onnx.save(model, temporary)
    os.replace(temporary, path)


def _layers(seed: int, width: int, hidden=(6, 3), scale: float = 1.0) -> list:
    rng = np.random.default_rng(seed)
    sizes = [width, *hidden, 1]
    acts = ["Relu", "Tanh", "Sigmoid"]
    return [((scale * rng.normal(size=(out, inp))).astype(np.float32),
             rng.normal(size=out).astype(np.float32) * 0.1,
             acts[position % 3] if position < len(sizes) - 2 else None)
            for position, (inp, out) in enumerate(zip(sizes, sizes[1:]))]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-onnx")
    seen = sp.random(N_USERS, N_ITEMS, density=0.15, format="csr", random_state=1,
                     dtype=np.float32)
    seen = sp.diags((np.arange(N_USERS) != 7).astype(np.float32)) @ seen  # user 7: no history
    seen = sp.csr_matrix(seen)
    seen.eliminate_zeros()
    paths = {"folder": folder}
    for name, factors in (("model", F), ("model3", 3)):
        paths[name] = folder / f"{name}.npz"
        recfuse.ALS(factors=factors, iterations=3, random_state=0).fit(seen).save(paths[name])
    paths["seen"] = seen
    # kept copies of good files: the served names are overwritten by the tests
    for name, seed, width in (("A", 0, 2 * F + C), ("B", 1, 2 * F + C), ("A3", 2, 2 * 3 + C),
                              ("wide", 3, 2 * F + C + 1)):
        paths[name] = folder / f"good-{name}.onnx"
        _chain(paths[name], _layers(seed, width))
    # all candidates tie: no weight on the item columns
    tie = _layers(4, 2 * F + C)
    tie[0][0][:, F + C:] = 0.0
    paths["tie"] = folder / "good-tie.onnx"
    _chain(paths["tie"], tie)
    return paths


def _install(files, name: str, served_name: str) -> str:
    """Copy the kept ranker ``name`` over the served ranker file (atomically)."""
    target = files["folder"] / served_name
    temporary = f"{target}.{uuid.uuid4().hex[:6]}.tmp"
    shutil.copyfile(files[name], temporary)
    os.replace(temporary, target)
    return str(target)


# ------------------------------------------------------------------------------ the server


class Served(ProcessServed):
    """``recfuse serve MODEL --ranker R --port 0`` in a child process, ready once /health
    answers (tests/test_server_process_hunt.py's server, started in ``folder``)."""

    def __init__(self, folder, *arguments):
        self.log = folder / f"serve-{uuid.uuid4().hex[:8]}.log"
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recfuse", "serve", *map(str, arguments), "--port", "0",
                 "--threads", "1", "--k", str(K), "--candidates", str(CANDIDATES)],
                stdout=subprocess.DEVNULL, stderr=stderr, env=_child_env(), cwd=folder)
        self.client = None
        try:
            self.port = self._ready()
        except BaseException:
            self.kill()
            raise
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                   limits=httpx.Limits(max_connections=32))

    def recommend(self, user, context, k=None, exclude=None) -> dict:
        body = {"user": user, "context": context}
        if k is not None:
            body["k"] = k
        if exclude is not None:
            body["exclude"] = exclude
        reply = self.client.post("/recommend", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()



@pytest.fixture(scope="module")
def server(files):
    """float32; its ranker file ``served.onnx`` starts as A and is put back after each test
    that replaces it (``restore``)."""
    _install(files, "A", "served.onnx")
    served = Served(files["folder"], files["model"], "--ranker", "served.onnx")
    yield served
    served.kill()


@pytest.fixture(scope="module")
def int8_server(files):
    _install(files, "A", "served8.onnx")
    shutil.copyfile(files["model"], files["folder"] / "served8.npz")
    served = Served(files["folder"], "served8.npz", "--ranker", "served8.onnx",
                    "--ranker-precision", "int8")
    yield served
    served.kill()


@pytest.fixture
def restore(server, files):
    """Put the good ranker A back (and reload) after a test that replaced it."""
    yield
    target = files["folder"] / "served.onnx"
    if target.is_dir():
        shutil.rmtree(target)
    _install(files, "A", "served.onnx")
    reply = server.client.post("/reload")
    assert reply.status_code == 200, reply.text
    assert server.client.get("/health").json()["context_width"] == C


def _oracle(model, ranker, precision="float32") -> recfuse.Recommender:
    return recfuse.Recommender(str(model), MLPScorer.from_onnx(str(ranker), precision=precision),
                               candidates=CANDIDATES, k=K, num_threads=1)


def _same(answer: dict, expected, rtol=0.0) -> None:
    """A /recommend answer equals an in-process Recommendation (padding dropped; a score
    that is not finite is null)."""
    keep = expected.ids >= 0
    assert answer["items"] == expected.ids[keep].tolist(), (answer, expected)
    assert answer["stages"] == expected.stages[keep].tolist()
    scores = expected.scores[keep].astype(float)
    assert [s is None for s in answer["scores"]] == (~np.isfinite(scores)).tolist()
    finite = np.isfinite(scores)
    got = np.array([s for s in answer["scores"] if s is not None])
    if rtol == 0:  # the same kernel on the same rows: the same float32 values
        assert got.tolist() == scores[finite].tolist(), (answer, expected)
    np.testing.assert_allclose(got, scores[finite], rtol=rtol)


def _onnxruntime_list(files, ranker, user, context, k, exclude=()):
    """The list by hand: every unseen, not excluded item scored by ONNX Runtime on
    [user vector | context | item vector], best first, ties by the smaller id."""
    model = recfuse.load(str(files["model"]))
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    seen = set(files["seen"][user].indices.tolist()) | set(exclude)
    candidates = np.array([i for i in range(N_ITEMS) if i not in seen])
    rows = np.hstack([np.repeat(users[user][None, :], candidates.size, 0),
                      np.repeat(np.asarray(context, np.float32)[None, :], candidates.size, 0),
                      items[candidates]]).astype(np.float32)
    session = ort.InferenceSession(str(ranker), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"x": rows})[0].reshape(-1)
    order = np.lexsort((candidates, -scores.astype(np.float64)))[:k]
    return candidates[order], scores[order]


# ------------------------------------------------------------------------------ answers


def test_health_names_the_onnx_ranker_and_its_context_width(server):
    health = server.client.get("/health").json()
    assert health["ranker"] is True
    assert health["ranker_source"] == "served.onnx"
    assert health["context_width"] == C and health["factors"] == F
    assert "ranked by served.onnx (2 context columns)" in server.stderr()


_CONTEXT_VALUES = st.one_of(
    st.floats(-1e3, 1e3, width=32),
    st.sampled_from([0.0, -0.0, 1e-40, -1e-45, 3.4e38, -3.4e38, 1e20]),
    st.integers(-10**6, 10**6))


@HYPOTHESIS
@given(user=st.integers(0, N_USERS + 3), k=st.integers(1, N_ITEMS + 2),
       exclude=st.one_of(st.none(), st.lists(st.integers(0, N_ITEMS + 5), max_size=8)),
       context=st.lists(_CONTEXT_VALUES, min_size=C, max_size=C))
def test_recommend_equals_the_in_process_recommender(server, files, user, k, exclude, context):
    oracle = _oracle(files["model"], files["A"])
    answer = server.recommend(user, context, k, exclude)
    assert answer["user"] == user
    _same(answer, oracle.recommend(user, k, exclude, context_features=context))


@pytest.mark.parametrize("user, context, exclude", [
    (3, [0.5, 1.0], ()), (11, [-2.0, 0.0], (0, 1, 2, 5)), (0, [100.0, -100.0], ()),
    (25, [0.0, 0.0], tuple(range(0, N_ITEMS, 2)))])
def test_recommend_follows_onnxruntime_scores_by_hand(server, files, user, context, exclude):
    ids, scores = _onnxruntime_list(files, files["A"], user, context, N_ITEMS, exclude)
    answer = server.recommend(user, context, N_ITEMS, list(exclude))
    assert set(answer["stages"]) == {"rank"}
    assert len(answer["items"]) == ids.size  # every unseen, not excluded item
    # by position: ids may swap only between near-equal scores (float32 sums differ)
    np.testing.assert_allclose(answer["scores"], scores, rtol=1e-5, atol=1e-6)
    by_id = dict(zip(ids.tolist(), scores.tolist()))
    np.testing.assert_allclose([by_id[i] for i in answer["items"]], answer["scores"],
                               rtol=1e-5, atol=1e-6)


def test_a_batch_equals_the_single_requests(server):
    users = [3, 11, 7, 0, 45, 3]
    contexts = [[0.5, 1.0], [-2.0, 0.0], [1.0, 1.0], [100.0, -100.0], [0.0, 0.0], [9.0, -9.0]]
    excludes = [[1], None, [], [2, 3, 99], None, None]
    reply = server.client.post("/recommend", json={"users": users, "contexts": contexts,
                                                   "excludes": excludes, "k": 7})
    assert reply.status_code == 200, reply.text
    for result, user, context, exclude in zip(reply.json()["results"], users, contexts,
                                              excludes):
        single = server.recommend(user, context, 7, exclude)
        assert {key: result[key] for key in ("user", "items", "scores", "stages")} == \
            {key: single[key] for key in ("user", "items", "scores", "stages")}


@pytest.mark.parametrize("body, message", [
    ({"user": 3}, "context is required"),
    ({"user": 3, "context": [1.0]}, "list of 2 finite numbers"),
    ({"user": 3, "context": [1.0, 2.0, 3.0]}, "list of 2 finite numbers"),
    ({"user": 3, "context": [1.0, True]}, "list of 2 finite numbers"),
    ({"user": 3, "context": [1.0, "2"]}, "list of 2 finite numbers"),
    ({"user": 3, "context": [1.0, 1e39]}, "within float32's range"),
    ({"user": 3, "context": [1.0, 10**400]}, "within float32's range"),
    ({"user": 3, "context": {"a": 1}}, "list of 2 finite numbers"),
    ({"users": [3, 4]}, "contexts are required"),
    ({"users": [3, 4], "contexts": [[1.0, 2.0]]}, "one list per user"),
    ({"users": [3], "contexts": [[1.0, None]]}, "contexts[0]"),
])
def test_a_wrong_context_is_a_422_naming_what_was_expected(server, body, message):
    reply = server.client.post("/recommend", json=body)
    assert reply.status_code == 422 and message in reply.json()["error"], reply.text


def test_non_finite_context_tokens_are_refused(server):
    for token in (b"NaN", b"Infinity", b"-Infinity"):
        reply = server.client.post("/recommend", content=b'{"user": 3, "context": [1.0, '
                                   + token + b"]}")
        assert reply.status_code == 422 and "finite" in reply.json()["error"], reply.text


# ------------------------------------------------------------------------------ /reload


def _one_line_refusal(reply) -> str:
    assert reply.status_code == 422, reply.text
    message = reply.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    assert "not reloaded" in message and "still serving" in message
    return message


def _external_missing(path, files):
    _chain(path, _layers(0, 2 * F + C), external="served.data")
    os.remove(path.parent / "served.data")


def _truncated(path, files):
    data = files["A"].read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _directory(path, files):
    os.remove(path)
    os.mkdir(path)


def _nan_weights(path, files):
    layers = _layers(0, 2 * F + C)
    layers[1][0][0, 0] = np.nan
    _chain(path, layers)


def _inf_bias(path, files):
    layers = _layers(0, 2 * F + C)
    layers[0] = (layers[0][0].astype(np.float64), np.full(6, 1e300), layers[0][2])
    _chain(path, layers)


def _huge_declared_tensor(path, files):
    tensor = TensorProto(name="W0", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20],
                         raw_data=b"\0" * 16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1 << 20])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W0"], ["y"])], "g", [x], [y],
                              [tensor])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


BAD_RANKERS = {
    "truncated": (_truncated, "not a readable ONNX model"),
    "random-bytes": (lambda p, f: p.write_bytes(np.random.default_rng(0).bytes(600)),
                     "not a readable ONNX model"),
    "pickle": (lambda p, f: p.write_bytes(pickle.dumps({"W": np.ones((3, 3))})),
               "not a readable ONNX model"),
    "empty": (lambda p, f: p.write_bytes(b""), "holds no ONNX graph"),
    "directory": (_directory, "it is a folder"),
    "missing": (lambda p, f: os.remove(p), "no model file at"),
    "external-data-missing": (_external_missing, "external data"),
    "declared-width": (lambda p, f: _chain(p, _layers(0, 2 * F + C), declared=2 * F + C + 1),
                       "declared 11 wide"),
    "narrower-than-vectors": (lambda p, f: _chain(p, _layers(0, 2 * F - 1)),
                              "fewer than user + item vectors"),
    "nan-weights": (_nan_weights, "must be finite"),
    "inf-bias": (_inf_bias, "must be finite"),
    "gelu-opset-17": (lambda p, f: _chain(p, [(np.ones((3, 2 * F + C), np.float32),
                                               np.zeros(3, np.float32), "Gelu"),
                                              (np.ones((1, 3), np.float32),
                                               np.zeros(1, np.float32), None)], opset=17),
                      "opset 20"),
    "two-outputs": (lambda p, f: _chain(p, _layers(0, 2 * F + C, hidden=(4,))[:1]
                                        + [(np.ones((2, 4), np.float32),
                                            np.zeros(2, np.float32), None)]),
                    "one output"),
    "huge-declared-tensor": (_huge_declared_tensor, "cannot be read"),
    "saved-model-not-a-ranker": (lambda p, f: shutil.copyfile(f["model"], p),
                                 "not a readable ONNX model"),
}


@pytest.mark.parametrize("kind", list(BAD_RANKERS))
def test_a_bad_ranker_file_at_reload_keeps_the_old_model_and_ranker(server, files, restore,
                                                                    kind):
    make, message = BAD_RANKERS[kind]
    oracle = _oracle(files["model"], files["A"])
    before = server.client.get("/health").json()
    make(files["folder"] / "served.onnx", files)
    assert message in _one_line_refusal(server.client.post("/reload"))
    assert server.process.poll() is None
    after = server.client.get("/health").json()
    assert after["version"] == before["version"] and after["ranker_source"] == "served.onnx"
    for user, context in ((3, [0.5, 1.0]), (7, [1.0, 1.0]), (19, [-3.0, 2.0])):
        _same(server.recommend(user, context, 8), oracle.recommend(user, 8,
                                                                    context_features=context))


def _low_rank_weight(path, kind: str) -> None:
    """A chain whose weight is 1-d or a scalar (ORT refuses such a Gemm or MatMul too)."""
    width = 2 * F + C
    ones = lambda name, *shape: numpy_helper.from_array(np.ones(shape, np.float32), name)
    nodes, inits, declared = {
        # a 1-d weight beside a declared input width
        "gemm-1d-weight": ([helper.make_node("Gemm", ["x", "W"], ["y"])], [ones("W", width)],
                           width),
        # a scalar weight with a bias
        "gemm-scalar-weight-and-bias": ([helper.make_node("Gemm", ["x", "W", "b"], ["y"])],
                                        [ones("W"), ones("b", 1)], None),
        # a Constant of value_float as MatMul's weight
        "matmul-value-float": ([helper.make_node("Constant", [], ["W"], value_float=2.0),
                                helper.make_node("MatMul", ["x", "W"], ["y"])], [], width),
    }[kind]
    dims = ["n", declared if declared is not None else "w"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


LOW_RANK = ["gemm-1d-weight", "gemm-scalar-weight-and-bias", "matmul-value-float"]


@pytest.mark.parametrize("kind", LOW_RANK)
def test_a_weight_of_rank_below_2_at_reload_is_a_422(server, files, restore, kind):
    _low_rank_weight(files["folder"] / "served.onnx", kind)
    message = _one_line_refusal(server.client.post("/reload"))
    assert "2-d" in message or "weight" in message


FORGED = "\nrecfuse serve: error: forged"  # a second line, written by the file's content


def _newline_in_file(path, kind: str, good) -> None:
    """A ranker file whose own strings hold a line break: the external data's location (the
    data missing) or a node's op_type."""
    model = onnx.load(str(good))
    if kind == "external-data-location":
        for tensor in model.graph.initializer:
            tensor.data_location = TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
            tensor.external_data.add(key="location", value="missing" + FORGED)
    else:
        model.graph.node[1].op_type = "Relu" + FORGED
    onnx.save(model, str(path))


NEWLINES = ["external-data-location", "op-type"]


@pytest.mark.parametrize("kind", NEWLINES)
def test_a_line_break_in_the_file_never_splits_the_reload_message(server, files, restore, kind):
    _newline_in_file(files["folder"] / "served.onnx", kind, files["A"])
    _one_line_refusal(server.client.post("/reload"))


def test_a_weight_of_rank_below_2_at_reload_never_stops_the_server(server, files, restore):
    """Whatever its status today (500, the IndexError above), the server keeps serving the
    old model and ranker."""
    oracle = _oracle(files["model"], files["A"])
    version = server.client.get("/health").json()["version"]
    for kind in LOW_RANK:
        _low_rank_weight(files["folder"] / "served.onnx", kind)
        assert server.client.post("/reload").status_code >= 400
    assert server.process.poll() is None
    assert server.client.get("/health").json()["version"] == version
    _same(server.recommend(19, [-3.0, 2.0], 8),
          oracle.recommend(19, 8, context_features=[-3.0, 2.0]))


@HYPOTHESIS
@given(edits=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_a_mutated_ranker_file_at_reload_is_installed_or_refused_never_500(server, files,
                                                                          restore, edits):
    data = bytearray(files["A"].read_bytes())
    for operation, where, value in edits:
        at = int(where * (len(data) - 1))
        if operation == 0:
            data[at] = value
        elif operation == 1:
            data[at] ^= 1 << (value % 8)
        else:
            del data[at: at + 1 + value % 8]
    target = files["folder"] / "served.onnx"
    target.write_bytes(bytes(data))
    reply = server.client.post("/reload")
    assert reply.status_code in (200, 422), reply.text
    if reply.status_code == 422:
        _one_line_refusal(reply)
    assert server.client.get("/health").json()["ranker_source"] == "served.onnx"


def test_a_fifo_at_the_ranker_path_is_refused_not_waited_on(server, files, restore):
    target = files["folder"] / "served.onnx"
    os.remove(target)
    os.mkfifo(target)
    try:
        reply = server.client.post("/reload", timeout=3)
        assert reply.status_code == 422 and "\n" not in reply.json()["error"], reply.text
    finally:  # a reader blocked in open() gets end of file: "holds no ONNX graph"
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing waits on it
            pass
        os.remove(target)
        time.sleep(0.2)
        assert server.client.post("/events", json={"user": 1, "item": 2}).status_code == 200
        assert server.client.delete("/events").status_code == 200


def test_a_bad_model_file_with_a_good_new_ranker_changes_neither(server, files, restore):
    """Atomic: the ranker read first is not installed when the model then fails."""
    oracle = _oracle(files["model"], files["A"])
    _install(files, "B", "served.onnx")
    saved = files["model"].read_bytes()
    try:
        files["model"].write_bytes(saved[:100])
        _one_line_refusal(server.client.post("/reload"))
    finally:
        files["model"].write_bytes(saved)
    _same(server.recommend(3, [0.5, 1.0], 8), oracle.recommend(3, 8, context_features=[0.5, 1.0]))


def test_a_good_replacement_ranker_is_picked_up(server, files, restore):
    version = server.client.get("/health").json()["version"]
    _install(files, "B", "served.onnx")
    reply = server.client.post("/reload")
    assert reply.status_code == 200 and reply.json()["model_version"] == version + 1
    oracle = _oracle(files["model"], files["B"])
    for user, context in ((3, [0.5, 1.0]), (7, [1.0, 1.0]), (19, [-3.0, 2.0])):
        answer = server.recommend(user, context, 8)
        assert answer["model_version"] == version + 1
        _same(answer, oracle.recommend(user, 8, context_features=context))


def test_a_replacement_with_new_external_data_is_picked_up(server, files, restore):
    target = files["folder"] / "served.onnx"
    for seed in (5, 6):  # the second reload changes only the data file's numbers
        _chain(target, _layers(seed, 2 * F + C), external="served.data")
        kept = files["folder"] / f"kept-{seed}.onnx"
        _chain(kept, _layers(seed, 2 * F + C))
        assert server.client.post("/reload").status_code == 200
        oracle = _oracle(files["model"], kept)
        _same(server.recommend(19, [-3.0, 2.0], 8),
              oracle.recommend(19, 8, context_features=[-3.0, 2.0]))


def test_a_replacement_with_another_context_width_changes_what_requests_give(server, files,
                                                                            restore):
    _install(files, "wide", "served.onnx")
    assert server.client.post("/reload").status_code == 200
    assert server.client.get("/health").json()["context_width"] == C + 1
    reply = server.client.post("/recommend", json={"user": 3, "context": [0.5, 1.0]})
    assert reply.status_code == 422 and "list of 3 finite numbers" in reply.json()["error"]
    oracle = _oracle(files["model"], files["wide"])
    _same(server.recommend(3, [0.5, 1.0, 2.0], 8),
          oracle.recommend(3, 8, context_features=[0.5, 1.0, 2.0]))


def test_requests_during_reloads_that_change_the_context_width_are_200_or_422(server, files,
                                                                            restore):
    """Rankers A (2 context columns) and "wide" (3) alternate: a request checked against one
    width and answered by the other is a 422 naming the width, never a 500; a 200 is
    answered by A (the only ranker taking 2 columns), and its version installed A."""
    oracle = _oracle(files["model"], files["A"])
    expected = oracle.recommend(3, 5, context_features=[1.0, 2.0])
    stop, seen, wrong = threading.Event(), [], []

    def ask(context):
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
            while not stop.is_set():
                for body in ({"user": 3, "context": context, "k": 5},
                             {"users": [3, 3], "contexts": [context, context], "k": 5}):
                    reply = client.post("/recommend", json=body)
                    if reply.status_code == 200:
                        answer = reply.json()
                        seen.append((len(context), answer.get("results", [answer])[0],
                                     answer["model_version"]))
                    elif reply.status_code != 422 or "finite numbers" not in reply.text \
                            and "context" not in reply.text:
                        wrong.append(reply.text)

    installed = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = [pool.submit(ask, [1.0, 2.0]), pool.submit(ask, [1.0, 2.0, 3.0])]
        try:
            for name in ("wide", "A", "wide", "A", "wide", "A"):
                _install(files, name, "served.onnx")
                reply = server.client.post("/reload")
                assert reply.status_code == 200, reply.text
                installed[reply.json()["model_version"]] = name
                time.sleep(0.1)
        finally:
            stop.set()
            for future in running:
                future.result(timeout=120)
    assert not wrong, wrong[:3]
    for width, answer, version in seen:
        assert installed.get(version, "A") == ("A" if width == C else "wide")
        if width == C:
            _same(answer, expected)


def test_a_model_of_other_factors_with_its_ranker_is_installed_together(server, files,
                                                                        restore):
    saved = files["model"].read_bytes()
    try:
        shutil.copyfile(files["model3"], files["model"])
        _install(files, "A3", "served.onnx")
        assert server.client.post("/reload").status_code == 200
        health = server.client.get("/health").json()
        assert health["factors"] == 3 and health["context_width"] == C
        _same(server.recommend(3, [0.5, 1.0], 8),
              _oracle(files["model3"], files["A3"]).recommend(3, 8, context_features=[0.5, 1.0]))
    finally:
        files["model"].write_bytes(saved)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_all_tied_candidates_come_by_smaller_id(server, int8_server, files, restore,
                                                precision):
    served, name = (server, "served.onnx") if precision == "float32" else \
        (int8_server, "served8.onnx")
    _install(files, "tie", name)
    try:
        assert served.client.post("/reload").status_code == 200
        for user, exclude in ((3, []), (11, [0, 4, 9]), (0, list(range(10)))):
            answer = served.recommend(user, [0.5, -1.0], 12, exclude)
            skip = set(files["seen"][user].indices.tolist()) | set(exclude)
            assert answer["items"] == [i for i in range(N_ITEMS) if i not in skip][:12]
            assert len(set(answer["scores"])) == 1 and set(answer["stages"]) == {"rank"}
    finally:
        _install(files, "A", name)
        assert served.client.post("/reload").status_code == 200


def test_an_overflowing_ranker_answers_null_or_drops_as_in_process(server, files, restore):
    """Scores past float32's range: inf is null in JSON, NaN is dropped."""
    layers = [(np.full((2, 2 * F + C), 1e30, np.float32), np.zeros(2, np.float32), "Relu"),
              (np.array([[1e30, -1e30]], np.float32), np.zeros(1, np.float32), None)]
    _chain(files["folder"] / "served.onnx", layers)
    kept = files["folder"] / "overflow.onnx"
    _chain(kept, layers)
    assert server.client.post("/reload").status_code == 200
    oracle = _oracle(files["model"], kept)
    for context in ([1.0, 0.0], [-1e9, 1e9], [0.0, 0.0]):
        answer = server.recommend(3, context, 10)
        _same(answer, oracle.recommend(3, 10, context_features=context))


def test_events_and_added_items_rank_as_in_process(server, files, restore):
    """Items first met in /events are ranked from their own table and merged."""
    oracle = _oracle(files["model"], files["A"])
    events = {"user": [3, 3, 5, 5, 3], "item": [N_ITEMS, N_ITEMS + 1, N_ITEMS, 2, 4],
              "weight": [1.0, 2.0, 1.0, 1.0, 1.0]}
    try:
        reply = server.client.post("/events", json=events)
        assert reply.status_code == 200, reply.text
        oracle.observe(events)
        for user in (3, 5, 6):
            _same(server.recommend(user, [0.5, 1.0], N_ITEMS + 2),
                  oracle.recommend(user, N_ITEMS + 2, context_features=[0.5, 1.0]))
    finally:  # the log cleared, the reload (restore) starts from the saved model again
        assert server.client.delete("/events").status_code == 200


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.integers(0, N_USERS + 4), st.integers(0, N_ITEMS + 3),
                                 st.sampled_from([0.5, 1.0, 3.0])), min_size=1, max_size=12),
       context=st.lists(st.floats(-5, 5, width=32), min_size=C, max_size=C))
def test_random_events_then_recommend_rank_as_in_process(server, files, restore, events,
                                                         context):
    oracle = _oracle(files["model"], files["A"])
    body = {"user": [u for u, _, _ in events], "item": [i for _, i, _ in events],
            "weight": [w for _, _, w in events]}
    try:
        reply = server.client.post("/events", json=body)
        assert reply.status_code == 200, reply.text
        oracle.observe(body)
        for user in sorted({u for u, _, _ in events} | {3}):
            _same(server.recommend(user, context, N_ITEMS + 4),
                  oracle.recommend(user, N_ITEMS + 4, context_features=context))
    finally:  # an empty log: the reload starts from the saved model again
        assert server.client.delete("/events").status_code == 200
        assert server.client.post("/reload").status_code == 200


# ------------------------------------------------------------------------------ int8


def test_int8_answers_equal_the_in_process_int8_and_float32_rankings(int8_server, files):
    int8 = _oracle(files["model"], files["A"], "int8")
    float32 = _oracle(files["model"], files["A"])
    for user, context in ((3, [0.5, 1.0]), (7, [1.0, 1.0]), (19, [-3.0, 2.0]), (0, [9.0, 9.0])):
        answer = int8_server.recommend(user, context, 10)
        _same(answer, int8.recommend(user, 10, context_features=context))
        _same(answer, float32.recommend(user, 10, context_features=context), rtol=1e-5)


def test_int8_reload_refuses_a_middle_layer_too_wide_for_int8_and_keeps_serving(int8_server,
                                                                                files):
    """precision int8 is applied again at /reload: a middle layer of 133,145 inputs (fine in
    float32) is refused, and the int8 ranker keeps serving."""
    oracle = _oracle(files["model"], files["A"], "int8")
    wide = 133_145
    layers = [(np.full((wide, 2 * F + C), 1e-3, np.float32), np.zeros(wide, np.float32), "Relu"),
              (np.full((2, wide), 1e-3, np.float32), np.zeros(2, np.float32), "Tanh"),
              (np.ones((1, 2), np.float32), np.zeros(1, np.float32), None)]
    target = files["folder"] / "served8.onnx"
    try:
        _chain(target, layers)
        message = _one_line_refusal(int8_server.client.post("/reload"))
        assert "at most 133144 inputs" in message
        _same(int8_server.recommend(19, [-3.0, 2.0], 8),
              oracle.recommend(19, 8, context_features=[-3.0, 2.0]))
    finally:
        _install(files, "A", "served8.onnx")
        assert int8_server.client.post("/reload").status_code == 200


def test_recommend_during_reloads_is_answered_by_one_model_and_ranker(int8_server, files):
    """Reloads alternate (model F, ranker A) and (model 3 factors, ranker A3) while
    clients ask: each answer equals the in-process answer of the pair its version names."""
    model = files["folder"] / "served8.npz"
    pairs = {"F": (files["model"], "A"), "3": (files["model3"], "A3")}
    asks = [(3, [0.5, 1.0]), (19, [-3.0, 2.0]), (11, [1.0, -1.0])]
    expected = {}
    for label, (source, name) in pairs.items():
        oracle = _oracle(source, files[name], "int8")
        expected[label] = [oracle.recommend(u, 6, context_features=c) for u, c in asks]
    installed = {int8_server.client.get("/health").json()["version"]: "F"}
    stop, answers, errors = threading.Event(), [], []

    def ask():
        with httpx.Client(base_url=f"http://127.0.0.1:{int8_server.port}", timeout=60) as c:
            while not stop.is_set():
                for position, (user, context) in enumerate(asks):
                    reply = c.post("/recommend", json={"user": user, "context": context, "k": 6})
                    if reply.status_code != 200:
                        errors.append(reply.text)
                    else:
                        answers.append((position, reply.json()))
                reply = c.post("/recommend", json={"users": [u for u, _ in asks], "k": 6,
                                                   "contexts": [x for _, x in asks]})
                if reply.status_code != 200:
                    errors.append(reply.text)
                else:  # one version for the whole batch
                    for position, result in enumerate(reply.json()["results"]):
                        answers.append((position, {**result, "model_version":
                                                   reply.json()["model_version"]}))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(ask) for _ in range(3)]
        try:
            for label in ["3", "F", "3", "F"]:
                source, name = pairs[label]
                temporary = f"{model}.tmp"
                shutil.copyfile(source, temporary)
                os.replace(temporary, model)
                _install(files, name, "served8.onnx")
                reply = int8_server.client.post("/reload")
                assert reply.status_code == 200, reply.text
                installed[reply.json()["model_version"]] = label
                time.sleep(0.2)
        finally:
            stop.set()
            for future in running:
                future.result(timeout=120)
    assert not errors, errors[:3]
    assert {installed[a["model_version"]] for _, a in answers} == {"F", "3"}
    for position, answer in answers:
        _same(answer, expected[installed[answer["model_version"]]][position])


# ------------------------------------------------------------------------------ startup


def _starts(folder, *arguments) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recfuse", "serve", *map(str, arguments),
                             "--port", "0", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_child_env(), cwd=folder)


STARTUP_FAILURES = ["pickle", "directory", "external-data-missing", "narrower-than-vectors",
                    "gelu-opset-17"]


def test_a_bad_ranker_at_startup_exits_2_with_one_line(files, tmp_path):
    started = []
    for kind in STARTUP_FAILURES:
        folder = tmp_path / kind
        folder.mkdir()
        path = folder / "r.onnx"
        shutil.copyfile(files["A"], path)
        BAD_RANKERS[kind][0](path, files)
        started.append((kind, _starts(folder, files["model"], "--ranker", "r.onnx")))
    folder = tmp_path / "bf16"
    folder.mkdir()
    shutil.copyfile(files["A"], folder / "r.onnx")
    with open("/proc/cpuinfo") as cpuinfo:
        bfloat16 = "avx512_bf16" in cpuinfo.read()
    if not bfloat16:
        started.append(("bfloat16", _starts(folder, files["model"], "--ranker", "r.onnx",
                                            "--ranker-precision", "bfloat16")))
    try:
        for kind, process in started:
            out, err = process.communicate(timeout=60)
            text = err.decode(errors="replace")
            assert process.returncode == 2, (kind, process.returncode, text)
            assert "Traceback" not in text, (kind, text)
            lines = text.splitlines()
            assert len(lines) == 1 and lines[0].startswith("recfuse serve: error: "), (kind, text)
            if kind in BAD_RANKERS:
                assert BAD_RANKERS[kind][1] in lines[0], (kind, text)
            else:
                assert "AVX512-BF16" in lines[0], text
            assert out == b""
    finally:
        for _, process in started:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def test_a_weight_of_rank_below_2_at_startup_exits_2_with_one_line(files, tmp_path):
    _low_rank_weight(tmp_path / "r.onnx", "gemm-1d-weight")
    process = _starts(tmp_path, files["model"], "--ranker", "r.onnx")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    text = err.decode(errors="replace")
    assert process.returncode == 2 and "Traceback" not in text, text
    assert len(text.splitlines()) == 1 and text.startswith("recfuse serve: error: "), text


def test_a_line_break_in_the_file_never_splits_the_startup_refusal(files, tmp_path):
    started = []
    for kind in NEWLINES:
        (tmp_path / kind).mkdir()
        _newline_in_file(tmp_path / kind / "r.onnx", kind, files["A"])
        started.append(_starts(tmp_path / kind, files["model"], "--ranker", "r.onnx"))
    texts = []
    try:
        for process in started:
            _, err = process.communicate(timeout=60)
            texts.append((process.returncode, err.decode(errors="replace")))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    for status, text in texts:
        assert status == 2 and "Traceback" not in text, text
    for status, text in texts:
        assert len(text.splitlines()) == 1 and "forged" in text, text


def _has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return "avx512_bf16" in cpuinfo.read()
    except OSError:
        return True  # unknown: the test below would not show the bug


@pytest.mark.skipif(_has_bf16(), reason="this CPU runs bfloat16: the file loads as saved")
def test_a_bfloat16_scorer_file_serves_at_the_precision_asked(files, tmp_path):
    """--ranker-precision float32 of a scorer saved in bfloat16 (its numpy emulation): what
    recfuse.load(path, precision="float32") does on this CPU, and what the refusal itself
    advises ("use precision='float32'")."""
    MLPScorer.from_onnx(str(files["A"]), precision="bfloat16", backend="numpy").save(
        tmp_path / "bf16.npz")
    assert recfuse.load(str(tmp_path / "bf16.npz"), precision="float32").precision == "float32"
    served = None
    try:
        served = Served(tmp_path, files["model"], "--ranker", "bf16.npz",
                        "--ranker-precision", "float32")
        oracle = _oracle(files["model"], files["A"])
        _same(served.recommend(3, [0.5, 1.0], 8), oracle.recommend(3, 8,
                                                                   context_features=[0.5, 1.0]))
    finally:
        if served is not None:
            served.kill()


def test_the_ranker_options_need_a_ranker_and_a_known_precision(files, tmp_path):
    no_ranker = _starts(tmp_path, files["model"], "--ranker-precision", "int8")
    unknown = _starts(tmp_path, files["model"], "--ranker", str(files["A"]),
                      "--ranker-precision", "float16")
    for process, message in ((no_ranker, "--ranker-precision needs --ranker"),
                             (unknown, "invalid choice")):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2 and message in err.decode(), err
        assert b"Traceback" not in err

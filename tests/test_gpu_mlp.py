"""The CUDA MLP backend (recfuse._cuda.MlpModel, cuda/mlp.cu) against recfuse.reference.mlp_*.

Written before the kernels ever ran on a GPU: these tests are their first check. The tests
marked ``gpu`` skip, with the backend's own reason, where it is not available; they run with
kernel="auto" (the fused kernel wherever the call fits it) and kernel="tiled" (one GEMM per
layer), in float32 and bfloat16, with the tolerances of tests/test_mlp.py (whose helpers
they use). The tests without the mark run everywhere: the chunk planning, the fused
kernel's shared memory against sm_80/sm_86/sm_90 limits, and the checks that happen on the
host before any CUDA call.
"""

from __future__ import annotations

import concurrent.futures
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recfuse
from conftest import examples
from recfuse import reference
from recfuse._mlp import cuda as cuda_mlp
from recfuse.ranking import MLPScorer
from test_mlp import (_reference_scores, assert_scores_close, candidate_calls,
                      check_candidates_and_rank, error_bound, models, random_layers)

KERNELS = [pytest.param(name, id=name, marks=pytest.mark.gpu) for name in ("auto", "tiled")]
PRECISIONS = ["float32", "bfloat16"]
ISSUE_WIDTHS = [160, 256, 128, 64, 1]  # [user 64 | item 64 | 32 features] -> 256 -> 128 -> 64 -> 1


def _cuda_module():
    try:
        from recfuse import _cuda
    except ImportError:
        return None
    return _cuda


def scorer(layers, kernel="auto", precision="float32") -> MLPScorer:
    available, reason = cuda_mlp.availability()
    if not available:
        pytest.skip(f"cuda: {reason}")
    return MLPScorer(layers, precision=precision, backend="cuda", kernel=kernel)


@contextlib.contextmanager
def chunk_limits(max_candidates, max_users):
    """Small chunks for the calls inside (process-wide)."""
    cuda = _cuda_module()
    cuda.set_mlp_chunk_limits(max_candidates, max_users)
    try:
        yield
    finally:
        cuda.set_mlp_chunk_limits(0, 0)


def issue_model(seed=0):
    rng = np.random.default_rng(seed)
    return random_layers(rng, ISSUE_WIDTHS, ["relu", "relu", "relu", "sigmoid"])


# ---------------------------------------------------------------------- against the reference


@st.composite
def score_cases(draw):
    """A model with widths 1..1024 and 1..10,000 rows (fewer for the wide models)."""
    layers, width = draw(models(max_width=1024))
    widest = max(max(W.shape) for W, _, _ in layers)
    rows = draw(st.one_of(st.integers(1, 100),
                          st.sampled_from([31, 32, 33, 64, 65, 1000, 10_000])))
    rows = min(rows, max(1, 400_000 // widest))
    return layers, width, rows, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=examples(12))
@given(case=score_cases())
def test_score_matches_reference(kernel, precision, case):
    layers, width, rows, seed = case
    model = scorer(layers, kernel, precision)
    X = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    scores = model.score(X)
    assert scores.shape == (rows,) and scores.dtype == np.float32
    expected = reference.mlp_forward(layers, X, precision)[:, 0]
    bound = error_bound(layers, X, precision)
    assert_scores_close(scores, expected, bound, f"{kernel} {precision}")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=examples(12))
@given(call=candidate_calls(), k=st.integers(1, 12))
def test_candidates_and_rank_match_reference(kernel, precision, call, k):
    check_candidates_and_rank(scorer(call[0], kernel, precision), scorer(call[0], kernel),
                              call, k, same_bits=True)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_issue_model_fused_and_tiled(precision):
    """The issue's model: fused and tiled both match the reference; the fused path is taken
    for it, and kernel='fused' refuses what it cannot run, naming 'tiled'."""
    layers = issue_model()
    rng = np.random.default_rng(1)
    users = rng.standard_normal((3, 64)).astype(np.float32)
    items = rng.standard_normal((500, 64)).astype(np.float32)
    ids = rng.integers(0, 500, (3, 700))
    features = rng.standard_normal((3 * 700, 32)).astype(np.float32)
    indptr = np.arange(4) * 700
    data = dict(user_vectors=users, item_table=items, user_features=None, item_features=None,
                candidate_features=features)
    expected, bound = _reference_scores(layers, indptr, ids.ravel(), data, precision)
    for kernel in ("fused", "tiled", "auto"):
        model = scorer(layers, kernel, precision)
        prepared = model.prepare_items(items, item_column=64)
        for table in (items, prepared):
            scores = model.score_candidates(users, ids, table, candidate_features=features)
            assert_scores_close(scores.ravel(), expected, bound, kernel)
    native = scorer(layers, "auto", precision)._model
    assert native.path_for(32) == "fused" and native.path_for(96) == "fused"
    assert native.path_for(300) == "tiled"
    with pytest.raises(ValueError, match="tiled"):
        scorer(layers, "fused", precision)._model.path_for(300)
    wide = random_layers(rng, [8, 300, 1], ["relu", "identity"])
    with pytest.raises(ValueError, match="at most 256 wide.*tiled"):
        scorer(wide, "fused", precision)
    assert scorer(wide, "auto", precision)._model.path_for(0) == "tiled"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("limits", [None, (1000, 3)], ids=["one-chunk", "small-chunks"])
def test_ragged_users_long_lists_and_chunks(kernel, limits):
    """Empty users, lists around the tile sizes, lists longer than MLP_RANK_SHARED_MAX (the
    sorted path), k beyond the lists; with small chunks, a long list is scored in parts."""
    model = scorer(random_layers(np.random.default_rng(2), [24, 40, 16, 1],
                                 ["gelu", "tanh", "sigmoid"]), kernel)
    rng = np.random.default_rng(3)
    counts = [0, 1, 31, 32, 33, 500, 0, 9000, 64, 0, 20_000, 2]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = rng.standard_normal((3000, 8)).astype(np.float32)
    ids = rng.integers(0, 3000, indptr[-1])
    data = dict(user_vectors=rng.standard_normal((len(counts), 8)).astype(np.float32),
                item_table=items, user_features=None, item_features=None,
                candidate_features=rng.standard_normal((indptr[-1], 8)).astype(np.float32))
    expected, bound = _reference_scores(model.layers, indptr, ids, data, "float32")
    with contextlib.ExitStack() as stack:
        if limits is not None:
            stack.enter_context(chunk_limits(*limits))
        scores = model.score_candidates(candidate_ids=(indptr, ids), **data)
        assert_scores_close(scores, expected, bound)
        for k in (1, 10, 600, 25_000):
            top, values = model.rank(candidate_ids=(indptr, ids), k=k, **data)
            assert top.shape == (len(counts), k)
            want_ids, want_values = reference.mlp_rank_scores(indptr, ids, scores, k)
            np.testing.assert_array_equal(top, want_ids)
            np.testing.assert_array_equal(values, want_values.astype(np.float32))


@pytest.mark.parametrize("kernel", KERNELS)
def test_ties_repeats_and_nan(kernel):
    """Every score ties (relu of a negative sum): ids ascending, each once; NaN item rows are
    never ranked; a tied list longer than MLP_RANK_SHARED_MAX goes through the sorted path."""
    W1 = -np.ones((4, 4), np.float32)
    layers = [(W1, None, "relu"), (np.ones((1, 4), np.float32), np.array([0.25], np.float32),
                                   "identity")]
    model = scorer(layers, kernel)
    items = np.ones((20_000, 2), np.float32)
    items[7] = np.nan
    short = np.array([9, 3, 7, 3, 5, 7, 7])
    rng = np.random.default_rng(4)
    long = rng.integers(0, 20_000, 30_000)
    ids = np.concatenate([short, long])
    indptr = np.array([0, short.size, ids.size])
    users = np.ones((2, 2), np.float32)
    top, values = model.rank(users, (indptr, ids), items, k=6)
    np.testing.assert_array_equal(top[0], [3, 5, 9, -1, -1, -1])
    np.testing.assert_array_equal(values[0], [0.25] * 3 + [-np.inf] * 3)
    valid = np.unique(long[long != 7])
    np.testing.assert_array_equal(top[1], valid[:6])
    np.testing.assert_array_equal(values[1], [0.25] * 6)
    scores = model.score_candidates(users, (indptr, ids), items)
    assert np.isnan(scores[ids == 7]).all() and (scores[ids != 7] == 0.25).all()
    top, _ = model.rank(users, (indptr, ids), items, k=30_000)
    np.testing.assert_array_equal(top[1][:valid.size], valid)
    assert (top[1][valid.size:] == -1).all()


@pytest.mark.gpu
def test_prepared_items_stay_on_the_device():
    layers = issue_model(5)
    model = scorer(layers)
    rng = np.random.default_rng(5)
    items = rng.standard_normal((1000, 64)).astype(np.float32)
    prepared = model.prepare_items(items, item_column=64)
    assert isinstance(prepared.part, cuda_mlp.DeviceItemPart)
    assert prepared.part.device_part is not None and not prepared.part.flags.writeable
    assert prepared.part.shape == (1000, model._module.part_width(model._model))
    assert (prepared.part[:, 256:] == 0).all()
    expected = items @ layers[0][0][:, 64:128].T
    np.testing.assert_allclose(prepared.part[:, :256], expected, rtol=1e-4, atol=1e-4)
    user = rng.standard_normal(64).astype(np.float32)
    ids = rng.integers(0, 1000, 1000)
    features = rng.standard_normal((1000, 32)).astype(np.float32)
    scores = model.score_candidates(user, ids, prepared, candidate_features=features)
    # A host copy of the part (no device copy) is uploaded per call: the same bits.
    host = prepared._replace(part=np.array(prepared.part))
    np.testing.assert_array_equal(
        model.score_candidates(user, ids, host, candidate_features=features), scores)


@pytest.mark.gpu
def test_empty_calls_and_tables():
    model = scorer(random_layers(np.random.default_rng(6), [6, 5, 1], ["relu", "sigmoid"]))
    users = np.ones((3, 2), np.float32)
    items = np.ones((4, 2), np.float32)
    features = np.ones((0, 2), np.float32)
    indptr = np.zeros(4, np.int64)
    empty = np.zeros(0, np.int64)
    assert model.score_candidates(users, (indptr, empty), items,
                                  candidate_features=features).shape == (0,)
    top, values = model.rank(users, (indptr, empty), items, candidate_features=features, k=3)
    assert (top == -1).all() and np.isneginf(values).all() and top.shape == (3, 3)
    assert model.score(np.ones((0, 6), np.float32)).shape == (0,)
    part = model.prepare_items(np.ones((0, 2), np.float32), item_column=2)
    assert part.part.shape[0] == 0


@pytest.mark.parametrize("kernel", KERNELS)
def test_concurrent_calls(kernel):
    """More threads than workspaces (MlpModel keeps at most 4): same results as serial."""
    model = scorer(issue_model(7), kernel, "bfloat16")
    rng = np.random.default_rng(7)
    users = rng.standard_normal((8, 64)).astype(np.float32)
    items = model.prepare_items(rng.standard_normal((2000, 64)).astype(np.float32),
                                item_column=64)
    ids = rng.integers(0, 2000, (8, 300))
    features = rng.standard_normal((8 * 300, 32)).astype(np.float32)
    serial = model.rank(users, ids, items, candidate_features=features, k=10)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda _: model.rank(users, ids, items, candidate_features=features, k=10), range(24)))
    for top, values in results:
        np.testing.assert_array_equal(top, serial[0])
        np.testing.assert_array_equal(values, serial[1])


@pytest.mark.gpu
def test_native_checks_and_timing():
    """recfuse._cuda.MlpModel re-checks what the Python layer validated, before any CUDA call,
    and still works afterwards; time_device measures one-chunk calls only."""
    scorer_ = scorer(random_layers(np.random.default_rng(8), [6, 5, 1], ["relu", "identity"]))
    native = scorer_._model
    indptr = np.array([0, 3], np.int64)
    ids = np.array([1, 2, 3], np.int64)
    users = [np.ones((1, 2), np.float32)]
    items = [np.ones((10, 2), np.float32)]
    features = np.ones((3, 2), np.float32)
    good = native.score_candidates(indptr, ids, 10, users, items, features, None)
    cases = [
        (dict(ids=np.array([1, 2, 10], np.int64)), r"outside \[0, 10\)"),
        (dict(ids=np.array([-1, 2, 3], np.int64)), r"outside \[0, 10\)"),
        (dict(indptr=np.array([0, 4], np.int64)), "ids must have shape"),
        (dict(features=np.ones((3, 3), np.float32)), "add up to 7 columns"),
        (dict(items=[np.ones((9, 2), np.float32)]), "must have 10 rows"),
    ]
    for change, match in cases:
        arguments = dict(indptr=indptr, ids=ids, users=users, items=items, features=features)
        arguments.update(change)
        with pytest.raises(ValueError, match=match):
            native.score_candidates(arguments["indptr"], arguments["ids"], 10, arguments["users"],
                                    arguments["items"], arguments["features"], None)
    with pytest.raises(ValueError, match="k must be >= 1"):
        native.rank(indptr, ids, 10, users, items, features, None, k=0)
    # the device top-k drops a repeat only next to itself: repeats with their own features
    # (ids [5, 7, 5] scoring [3, 2, 1] gave [5, 7, 5]) are ranked on the host instead
    with pytest.raises(ValueError, match="rank takes no candidate block"):
        native.rank(indptr, ids, 10, users, items, features, None, k=2)
    other = scorer(random_layers(np.random.default_rng(9), [6, 5, 1], ["relu", "identity"]))
    foreign = other._model.item_part(items, 2)[1]
    with pytest.raises(ValueError, match="another model"):
        native.score_candidates(indptr, ids, 10, users, [], features, foreign)
    np.testing.assert_array_equal(
        native.score_candidates(indptr, ids, 10, users, items, features, None), good)
    micros = native.time_device(indptr, ids, 10, users, items, features, None, k=2, repeats=3)
    assert len(micros) == 3 and min(micros) > 0
    with chunk_limits(2, 0), pytest.raises(ValueError, match="one chunk"):
        native.time_device(indptr, ids, 10, users, items, features, None, k=0, repeats=1)


# ---------------------------------------------------------------------- host only (no device)


class _HostPart:
    """Stands in for recfuse._cuda.MlpItemPart: a prepared item part and the model it is
    for."""

    def __init__(self, owner, host, columns):
        self.owner, self.host, self.columns = owner, np.array(host), columns


class _HostMlpModel:
    """Stands in for recfuse._cuda.MlpModel on the host (recfuse._mlp.common's NumPy
    arithmetic): what the cuda backend's Python side does with it can run without a device.
    Like the native model, it refuses an item part made for another model and has no
    bfloat16 rescoring of its own."""

    def __init__(self, weights, biases, activations, precision, kernel):
        from recfuse._mlp import common
        self._common = common
        self._model = common.prepare(np, list(zip(weights, biases, activations)), precision)
        self.kernel, self.part_width = kernel, common.part_width(self._model)

    def _call(self, indptr, ids, items, user_blocks, item_blocks, candidate_block, part):
        from recfuse._mlp import Candidates
        if part is not None:
            assert part.owner is self, "the item part was made by another model"
        return Candidates(indptr, ids, items, user_blocks, item_blocks, candidate_block,
                          None if part is None else part.host, 0 if part is None else part.columns)

    def score_candidates(self, *arguments):
        return self._common.score_candidates(self._model, self._call(*arguments))

    def rank(self, *arguments, k):
        assert self._model.precision == "float32", "bfloat16 ranking must rescore"
        call = self._call(*arguments)
        return self._common.rank_scores(call.indptr, call.ids,
                                        self._common.score_candidates(self._model, call), k)

    def item_part(self, item_blocks, column):
        host = self._common.item_part(self._model, item_blocks, column)
        return host, _HostPart(self, host, sum(b.shape[1] for b in item_blocks))

    def upload_item_part(self, host, columns):
        return _HostPart(self, host, columns)


def test_bfloat16_rank_rescores_in_float32_on_the_host_side(monkeypatch):
    """The cuda backend's bfloat16 rank (Python side, over a host stand-in for the native
    model): the rule of reference.mlp_rank_rescored with a float32 twin, for raw and prepared
    item tables, equal to the numpy backend's float32 ranking."""
    import types

    from recfuse._mlp import Candidates
    from recfuse._mlp import numpy_backend

    monkeypatch.setattr(cuda_mlp, "_module", lambda: types.SimpleNamespace(MlpModel=_HostMlpModel))
    rng = np.random.default_rng(7)  # test_mlp's draw where bfloat16 alone reorders lists
    layers = [(W * np.float32(1.5), b, activation) for W, b, activation in
              random_layers(rng, [48, 256, 128, 1], ["relu", "relu", "sigmoid"])]
    users = rng.standard_normal((8, 16)).astype(np.float32)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = np.stack([rng.choice(3000, 500, replace=False) for _ in range(8)]).ravel()
    features = rng.standard_normal((8 * 500, 16)).astype(np.float32)
    indptr = np.arange(9, dtype=np.int64) * 500
    raw = Candidates(indptr, ids, 3000, [users], [items], features, None, 0)
    exact = numpy_backend.prepare(layers, "float32")
    want = numpy_backend.rank(exact, raw, 10)
    fast = cuda_mlp.prepare(layers, "bfloat16")
    rough = reference.mlp_rank_scores(
        indptr, ids, numpy_backend.score_candidates(numpy_backend.prepare(layers, "bfloat16"),
                                                    raw), 10)
    assert (rough[0] != want[0]).any(), "bfloat16 alone already gives float32's lists"
    part = cuda_mlp.item_part(fast, [items], 16)
    prepared = raw._replace(item_blocks=[], item_part=part, item_part_columns=16)
    for call in (raw, prepared):
        top, values = cuda_mlp.rank(fast, call, 10)
        np.testing.assert_array_equal(top, want[0])
        np.testing.assert_allclose(values, want[1], rtol=1e-6)
    plain = cuda_mlp.prepare(layers, "float32")  # float32 ranks on the "device", no twin
    np.testing.assert_array_equal(cuda_mlp.rank(plain, raw, 10)[0], want[0])


def test_registered_with_a_reason():
    """'cuda' is the mlp family's first choice; when unusable it says why, and asking for it
    by name raises with that reason while auto falls back."""
    table = {info.name: info for info in recfuse.backends("mlp")}
    assert next(iter(table)) == "cuda"
    available, reason = cuda_mlp.availability()
    assert table["cuda"].available == available
    layers = random_layers(np.random.default_rng(0), [3, 2, 1], ["relu", "identity"])
    if available:
        assert MLPScorer(layers).backend == "cuda"
        return
    assert reason and reason == table["cuda"].detail
    assert "CUDA" in reason or "cuda" in reason
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        MLPScorer(layers, backend="cuda")
    assert MLPScorer(layers).backend != "cuda"


def test_kernel_name_checked_before_cuda():
    layers = random_layers(np.random.default_rng(0), [3, 2, 1], ["relu", "identity"])
    with pytest.raises(ValueError, match="kernel must be one of"):
        cuda_mlp.prepare(layers, "float32", "avx512bf16")


@pytest.mark.parametrize("weights, biases, activations, precision, kernel, match", [
    ([np.ones((4, 3), np.float32), np.ones((1, 5), np.float32)], [None, None], ["relu", "sigmoid"],
     "float32", "auto", "layer 1 takes 5 inputs but layer 0 gives 4"),
    ([np.ones((4, 3), np.float32), np.ones((2, 4), np.float32)], [None, None], ["relu", "sigmoid"],
     "float32", "auto", "last layer must have one output"),
    ([np.full((1, 3), np.nan, np.float32)], [None], ["relu"], "float32", "auto",
     "weights must be finite"),
    ([np.ones((1, 3), np.float32)], [np.array([np.inf], np.float32)], ["relu"], "float32", "auto",
     "bias must be finite"),
    ([np.ones((1, 3), np.float32)], [None], ["softplus"], "float32", "auto", "activation must be"),
    ([np.ones((1, 3), np.float32)], [None], ["relu"], "int4", "auto", "precision must be"),
    ([np.ones((1, 3), np.float32)], [None], ["relu"], "int8", "auto",
     "precision 'int8' has no CUDA kernel yet"),
    ([np.ones((1, 3), np.float32)], [None], ["relu"], "float32", "fast", "'auto', 'fused' or"),
    ([np.ones((300, 3), np.float32), np.ones((1, 300), np.float32)], [None, None],
     ["relu", "identity"], "float32", "fused", "at most 256 wide"),
])
def test_native_layer_checks_come_before_any_cuda_call(weights, biases, activations, precision,
                                                         kernel, match):
    """With or without a device, bad layers are a ValueError (a CUDA call would have raised
    RuntimeError 'no CUDA device' here)."""
    cuda = _cuda_module()
    if cuda is None:
        pytest.skip("recfuse._cuda was not built (no nvcc at build time)")
    with pytest.raises(ValueError, match=match):
        cuda.MlpModel(weights, biases, activations, precision, kernel)
    if cuda.device_count() == 0:  # good layers reach the device check
        with pytest.raises(RuntimeError, match="no CUDA device"):
            cuda.MlpModel([np.ones((1, 3), np.float32)], [None], ["relu"], "float32", "auto")


@settings(max_examples=examples(200))
@given(counts=st.lists(st.one_of(st.just(0), st.integers(1, 12), st.integers(30, 80)), max_size=30),
       max_candidates=st.integers(1, 70), max_users=st.integers(1, 8), whole=st.booleans())
def test_chunk_plans(counts, max_candidates, max_users, whole):
    """mlp_plan_chunks covers every candidate (scoring) or every user with all its candidates
    (ranking) once, in order, within the limits; a chunk's users own its candidates."""
    cuda = _cuda_module()
    if cuda is None:
        pytest.skip("recfuse._cuda was not built (no nvcc at build time)")
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    users, total = len(counts), int(indptr[-1])
    chunks = cuda.mlp_plan_chunks(indptr, max_candidates, max_users, whole)
    assert chunks.shape[1] == 4
    if whole:
        assert chunks[:, 0].tolist() == ([0] + chunks[:-1, 1].tolist() if users else [])
        assert (chunks[-1, 1] == users) if users else chunks.shape[0] == 0
        for u0, u1, c0, c1 in chunks:
            assert 1 <= u1 - u0 <= max_users
            assert (c0, c1) == (indptr[u0], indptr[u1])
            assert c1 - c0 <= max_candidates or u1 - u0 == 1
        return
    assert chunks[:, 2].tolist() == ([0] + chunks[:-1, 3].tolist() if total else [])
    assert (chunks[-1, 3] == total) if total else chunks.shape[0] == 0
    for u0, u1, c0, c1 in chunks:
        assert 1 <= c1 - c0 <= max_candidates and 1 <= u1 - u0 <= max_users
        assert indptr[u0] <= c0 < indptr[u0 + 1]  # the first user owns the first candidate
        assert c1 <= indptr[u1]


def test_fused_shared_memory_fits_the_architectures():
    """The fused kernel's largest layout fits every sm_80+ device's opt-in shared memory
    (sm_86/sm_89: 99 KiB; sm_80: 163 KiB; sm_90: 227 KiB), so 'auto' never needs the tiled
    path for widths <= 256 there."""
    cuda = _cuda_module()
    if cuda is None:
        pytest.skip("recfuse._cuda was not built (no nvcc at build time)")
    widest = cuda.mlp_fused_shared_bytes(cuda.MLP_FUSED_MAX_WIDTH, cuda.MLP_FUSED_MAX_WIDTH)
    assert widest <= 99 * 1024
    issue = cuda.mlp_fused_shared_bytes(32, 256)  # prepared items, 32 features, 256 wide
    assert issue < widest and issue <= 227 * 1024 // 2  # two blocks per H100 SM
    assert cuda.mlp_fused_shared_bytes(0, 16) > 0

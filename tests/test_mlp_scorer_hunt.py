"""Hunt: the ranking stage's scorer (recfuse.MLPScorer, its cpu / numba / numpy backends,
save / load, load_scorer) against a plain NumPy oracle written from the documented contract.

Oracle (recfuse/ranking.py and reference.py's comments, restated here independently): a
layer is h' = act(h @ W.T + b), W (out, in); the input row of candidate c of user u with item
i is [user_vectors[u] | user_features[u] | item_table[i] | item_features[i] |
candidate_features[c]]; float32 is computed here in float64 from the float32 values; int8
quantizes the inputs and weight rows of the layers between the first and the last (m = max |x|,
q = rint(x * (127 / m)) clipped to +-127, scale m / 127, rows below 2**-120 are zeros, rows
with NaN / inf get scale NaN) and sums the products exactly; bfloat16 rounds the same layers'
weights and inputs to bfloat16 (nearest even). rank: score descending, ties by the smaller
id, each id once at its best score, NaN and -inf dropped, padded with -1 / -inf.

Tolerances are worst-case bounds (sums of |terms|), so they only catch real departures:
float32 accumulation (in + 4) * 2**-24 of the sum of |w * h| per layer, one quantization step
(int8) or 2**-8 (bfloat16) of each middle-layer input where float32 rounding may push an
input across a rounding boundary, 1e-6 for the activations' approximations; errors pass
through later layers by |W| times the activation's slope.

The five bugs the hunt found are fixed; their tests stay as regressions.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

import recfuse
from recfuse.ranking import MLPScorer, PreparedItems, load_scorer

from conftest import backend_params

BACKENDS = backend_params(("cpu", "numba", "numpy"))
WIDTHS = [1, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 128, 129]
ACTIVATIONS = ["relu", "gelu", "sigmoid", "tanh", "identity"]
SLOPE = {"relu": 1.0, "identity": 1.0, "tanh": 1.0, "sigmoid": 0.25, "gelu": 1.13}
EPS32 = 2.0**-24


def _bf16_on_cpu() -> bool:
    from recfuse import _core

    return dict((name, ok) for name, ok, _ in _core.mlp_kernels())["avx512bf16"]


def unsupported(backend, precision) -> bool:
    return backend == "cpu" and precision == "bfloat16" and not _bf16_on_cpu()


def make(layers, backend, precision="float32", **options) -> MLPScorer:
    if unsupported(backend, precision):
        pytest.skip("precision='bfloat16' on the cpu backend needs AVX512-BF16 (refusal tested)")
    return MLPScorer(layers, precision=precision, backend=backend, **options)


# ---------------------------------------------------------------------- the oracle


def o_act(name, z):
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "relu":
            return np.where(z < 0, 0.0, z)
        if name == "gelu":
            return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))
        if name == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        if name == "tanh":
            return np.tanh(z)
        assert name == "identity"
        return z


def o_quantize(x):
    """(q float64, scale float32) of the rows of the float32 matrix x (documented rule)."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        m = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
        finite = np.isfinite(x).all(axis=1)
        ok = finite & (m >= np.float32(2.0**-120))
        inverse = np.float32(127) / np.where(ok, m, np.float32(1))
        q = np.clip(np.rint(x * inverse[:, None]), -127, 127).astype(np.float64)
    q[~ok] = 0
    scale = np.where(ok, m / np.float32(127), np.where(finite, 0.0, np.nan)).astype(np.float32)
    return q, scale


def o_bfloat16(x):
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def o_forward(layers, X, precision="float32"):
    """Scores (n,) float64, and a per-row worst-case tolerance for a float32 backend."""
    h = np.asarray(X, np.float32).astype(np.float64)
    e = np.zeros_like(h)
    count = len(layers)
    for position, (W, b, activation) in enumerate(layers):
        W = np.asarray(W, np.float32)
        W64 = W.astype(np.float64)
        middle = 0 < position < count - 1
        magnitude = np.abs(h) @ np.abs(W64).T
        step = 0.0
        if precision == "int8" and middle:
            q, scale = o_quantize(h.astype(np.float32))
            q_w, scale_w = o_quantize(W)
            with np.errstate(invalid="ignore"):
                z = (q @ q_w.T) * (scale[:, None].astype(np.float64) * scale_w[None, :])
            # an input one rounding away from a boundary may quantize one step apart
            step = (np.abs(h).max(axis=1, keepdims=True) / 127 + e.max(axis=1, keepdims=True)) \
                * (np.abs(W64).sum(axis=1)[None, :] + W.shape[1] * scale_w[None, :])
        elif precision == "bfloat16" and middle:
            z = o_bfloat16(h.astype(np.float32)).astype(np.float64) @ \
                o_bfloat16(W).astype(np.float64).T
            step = 2.0**-8 * magnitude
        else:
            z = h @ W64.T
        if b is not None:
            z = z + np.asarray(b, np.float32).astype(np.float64)
        error = np.abs(e) @ np.abs(W64).T + (W.shape[1] + 4) * EPS32 * (magnitude + np.abs(z)) \
            + step
        e = SLOPE[activation] * error + 1e-6 * (1 + np.abs(z))
        h = o_act(activation, z)
    return h[:, 0], 2 * e[:, 0] + 1e-6


def o_gather(U, indptr, ids, I, UF=None, IF=None, C=None):
    owner = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    blocks = [np.asarray(U, np.float32)[owner]]
    if UF is not None:
        blocks.append(np.asarray(UF, np.float32)[owner])
    blocks.append(np.asarray(I, np.float32)[ids])
    if IF is not None:
        blocks.append(np.asarray(IF, np.float32)[ids])
    if C is not None:
        C = np.asarray(C, np.float32)
        blocks.append(C.reshape(len(ids), C.shape[-1]))
    return np.concatenate(blocks, axis=1)


def o_rank(indptr, ids, scores, k):
    """Full sort: score descending, smaller id first, each id once at its best, NaN / -inf
    dropped, padded with -1 / -inf."""
    users = len(indptr) - 1
    top = np.full((users, k), -1, np.int64)
    values = np.full((users, k), -np.inf)
    for u in range(users):
        cand = np.asarray(ids[indptr[u]:indptr[u + 1]], np.int64)
        s = np.asarray(scores[indptr[u]:indptr[u + 1]], np.float64)
        keep = s > -np.inf
        cand, s = cand[keep], s[keep]
        best: dict[int, float] = {}
        for i, v in zip(cand.tolist(), s.tolist()):
            best[i] = max(best.get(i, -np.inf), v)
        order = sorted(best, key=lambda i: (-best[i], i))[:k]
        top[u, :len(order)] = order
        values[u, :len(order)] = [best[i] for i in order]
    return top, values


def random_layers(rng, widths, activations, scale=1.0, biases=True):
    layers = []
    for i, activation in enumerate(activations):
        W = (scale * rng.standard_normal((widths[i + 1], widths[i])) / math.sqrt(widths[i]))
        b = 0.1 * rng.standard_normal(widths[i + 1]) if biases and i % 2 == 0 else None
        layers.append((W.astype(np.float32), None if b is None else b.astype(np.float32),
                       activation))
    return layers


def assert_within(got, expected, bound, what=""):
    got = np.asarray(got, np.float64)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    both_nan = np.isnan(got) & np.isnan(expected)
    difference = np.where(both_nan, 0.0, np.abs(got - expected))
    bad = ~(difference <= bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} rows off, first {int(np.argmax(bad))}: "
                           f"{got[bad][:3]} vs {expected[bad][:3]} (bound {bound[bad][:3]})")


# ---------------------------------------------------------------------- score against the oracle


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.sampled_from(WIDTHS), min_size=1, max_size=4),
       activations=st.lists(st.sampled_from(ACTIVATIONS), min_size=4, max_size=4),
       rows=st.sampled_from([0, 1, 7, 1000, 1025]),
       precision=st.sampled_from(["float32", "int8", "bfloat16"]),
       scale=st.sampled_from([0.5, 1.0, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_score_matches_the_oracle_across_simd_and_tile_widths(backend, widths, activations,
                                                              rows, precision, scale, seed):
    """One layer or many, widths that cross the 8/16-lane vectors, the 32-column panels and
    the 6-row tiles, 0 to 1,025 rows, on each backend and precision."""
    rng = np.random.default_rng(seed)
    sizes = widths + [1]
    layers = random_layers(rng, sizes, activations[:len(widths)], scale)
    if unsupported(backend, precision):  # documented: refused, never chosen silently
        with pytest.raises(ValueError, match="needs AVX512-BF16.*avx512_bf16"):
            MLPScorer(layers, precision=precision, backend=backend)
        return
    model = make(layers, backend, precision)
    X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
    scores = model.score(X)
    assert scores.shape == (rows,) and scores.dtype == np.float32
    expected, bound = o_forward(layers, X, precision)
    assert_within(scores, expected, bound, f"{backend} {precision} {sizes}")


@pytest.mark.parametrize("level", ["generic", "avx2"])
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_every_width_at_every_simd_level(level, precision):
    """The cpu kernels at the scalar and the AVX2 level: every hunted width as the first,
    a middle and the last layer's input, 1,025 rows (16 blocks and a tail)."""
    from recfuse import _core

    if level not in _core.supported_simd_levels():
        pytest.skip(f"this CPU lacks {level}")
    before = _core.simd_level()
    rng = np.random.default_rng(5)
    try:
        _core.set_simd_level(level)
        for width in WIDTHS:
            layers = random_layers(rng, [width, width, 17, 1], ["gelu", "tanh", "sigmoid"])
            model = MLPScorer(layers, precision=precision, backend="cpu")
            X = rng.standard_normal((1025, width)).astype(np.float32)
            expected, bound = o_forward(layers, X, precision)
            assert_within(model.score(X), expected, bound, f"{level} {precision} {width}")
            one = MLPScorer(layers[:1] + [(np.ones((1, width), np.float32), None, "identity")],
                            precision=precision, backend="cpu")
            expected, bound = o_forward(one.layers, X[:7], precision)
            assert_within(one.score(X[:7]), expected, bound, f"{level} two layers {width}")
    finally:
        _core.set_simd_level(before)


# ---------------------------------------------------------------------- candidates and rank


@st.composite
def candidate_calls(draw):
    widths = {name: draw(st.integers(0, 5)) for name in ("u", "uf", "i", "if", "c")}
    widths["u"] = max(widths["u"], 1)
    lengths = draw(st.lists(st.sampled_from([0, 1, 3, 7, 64, 65]), min_size=1, max_size=4))
    items = draw(st.integers(1, 40))
    hidden = draw(st.lists(st.sampled_from([1, 7, 9, 33]), min_size=0, max_size=2))
    activations = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=3, max_size=3))
    return widths, lengths, items, hidden, activations, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(call=candidate_calls(), precision=st.sampled_from(["float32", "int8", "bfloat16"]),
       form=st.sampled_from(["tuple", "list", "dense"]), prepared=st.booleans(),
       k=st.sampled_from([1, 3, 16, 70]))
def test_candidates_and_rank_match_the_oracle(backend, call, precision, form, prepared, k):
    """Every block present or absent (width 0), users without candidates, repeated ids, the
    tuple / list / dense forms and prepared items: scores within the bound of the oracle's;
    rank equals a full sort of the scorer's own float32 scores (under int8: the same ranking,
    scores within float32 rounding)."""
    widths, lengths, items, hidden, activations, seed = call
    rng = np.random.default_rng(seed)
    if form == "dense":
        lengths = [lengths[0]] * len(lengths)
    users = len(lengths)
    width = sum(widths.values())
    layers = random_layers(rng, [width] + hidden + [1], activations[:len(hidden) + 1])
    U = rng.standard_normal((users, widths["u"])).astype(np.float32)
    UF = rng.standard_normal((users, widths["uf"])).astype(np.float32) if widths["uf"] else None
    I = rng.standard_normal((items, widths["i"])).astype(np.float32)
    IF = rng.standard_normal((items, widths["if"])).astype(np.float32) if widths["if"] else None
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, items, int(indptr[-1]))
    C = rng.standard_normal((ids.size, widths["c"])).astype(np.float32) if widths["c"] else None
    if form == "tuple":
        candidates = (indptr, ids)
    elif form == "list":
        candidates = [ids[indptr[u]:indptr[u + 1]] for u in range(users)]
    else:
        candidates = ids.reshape(users, lengths[0])
    if unsupported(backend, precision):
        return  # refusal: test_score_matches_the_oracle_across_simd_and_tile_widths
    model = make(layers, backend, precision)
    float32 = make(layers, backend)
    table, item_features = I, IF
    if prepared:
        column = widths["u"] + widths["uf"]
        table, item_features = model.prepare_items(I, IF, item_column=column), None
    scores = model.score_candidates(U, candidates, table, UF, item_features, C)
    assert scores.dtype == np.float32
    assert scores.shape == ((users, lengths[0]) if form == "dense" else (ids.size,))
    X = o_gather(U, indptr, ids, I, UF, IF, C)
    expected, bound = o_forward(layers, X, precision)
    assert_within(scores.reshape(-1), expected, bound, f"{backend} {precision} {form}")

    top, values = model.rank(U, candidates, table, UF, item_features, C, k=k)
    assert top.shape == values.shape == (users, k)
    assert top.dtype == np.int64 and values.dtype == np.float32
    if prepared:
        table = float32.prepare_items(I, IF, item_column=widths["u"] + widths["uf"])
    exact = float32.score_candidates(U, candidates, table, UF, item_features, C).reshape(-1)
    want_top, want_values = o_rank(indptr, ids, exact, k)
    if precision == "float32" or backend == "cpu":  # documented: float32's ranking
        np.testing.assert_array_equal(top, want_top)
        np.testing.assert_array_equal(values, want_values.astype(np.float32))
    else:  # a BLAS backend rescores a sub-call: float32 rounding may differ in the last bit
        np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-6)
        tie = np.isclose(values, want_values, rtol=1e-5, atol=1e-6)
        assert ((top == want_top) | tie).all()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       items=st.integers(1, 12), k=st.integers(1, 20), seed=st.integers(0, 2**32 - 1),
       precision=st.sampled_from(["float32", "int8"]))
def test_exact_arithmetic_ties_go_to_the_smaller_id(backend, lengths, items, k, seed, precision):
    """Weights and inputs of a few bits: every backend computes the oracle's scores exactly,
    so ties are real ties; rank must break them by the smaller id, keep each id once at its
    best (repeats with their own candidate features) and pad."""
    rng = np.random.default_rng(seed)
    quarters = lambda shape: (rng.integers(-4, 5, shape) / 4).astype(np.float32)  # noqa: E731
    layers = [(quarters((6, 4)), quarters(6), "relu"), (quarters((3, 6)), None, "relu"),
              (quarters((1, 3)), quarters(1), "identity")]
    users = len(lengths)
    U = quarters((users, 1))
    I = quarters((items, 2))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, items, int(indptr[-1]))
    C = quarters((ids.size, 1))
    model = make(layers, backend, precision)
    expected, _ = o_forward(layers, o_gather(U, indptr, ids, I, C=C))
    float32 = make(layers, backend).score_candidates(U, (indptr, ids), I, candidate_features=C)
    np.testing.assert_array_equal(float32, expected.astype(np.float32))
    top, values = model.rank(U, (indptr, ids), I, candidate_features=C, k=k)
    want_top, want_values = o_rank(indptr, ids, expected, k)
    if precision == "float32":
        np.testing.assert_array_equal(top, want_top)
        np.testing.assert_array_equal(values, want_values.astype(np.float32))
    else:  # float32 scores of band members, in the documented order
        for u in range(users):
            got = top[u][top[u] >= 0]
            assert len(set(got.tolist())) == got.size
            mine = ids[indptr[u]:indptr[u + 1]]
            for i, v in zip(got, values[u][:got.size]):
                assert v in expected[indptr[u]:indptr[u + 1]][mine == i].astype(np.float32)
            order = sorted(range(got.size), key=lambda j: (-values[u][j], got[j]))
            assert order == list(range(got.size))


def test_identical_candidates_tie_and_go_by_id_on_the_cpu_backend():
    """1,025 candidates of one user whose item rows are bit-identical (a catalogue's cold
    items with zero vectors, say) score the same, so rank returns the smallest ids. (The
    numba and numpy backends give them scores that differ in the last bit, by OpenBLAS's
    row position: see the notes, "Suspicious".)"""
    rng = np.random.default_rng(0)
    for width in (7, 33, 65, 129):
        layers = random_layers(rng, [12, width, 17, 1], ["gelu", "tanh", "identity"])
        items = np.tile(rng.standard_normal(8).astype(np.float32), (1100, 1))
        user = rng.standard_normal(4).astype(np.float32)
        for precision in ("float32", "int8"):
            model = MLPScorer(layers, precision=precision, backend="cpu")
            scores = model.score_candidates(user, np.arange(1025), items)
            assert np.unique(scores).size == 1
            top, values = model.rank(user, np.arange(1025)[::-1], items, k=5)
            np.testing.assert_array_equal(top, [0, 1, 2, 3, 4])
            X = np.tile(np.concatenate([user, items[0]]), (1025, 1))
            assert np.unique(model.score(X)).size == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_zero_scores_tie(backend):
    """Scores 0.0 and -0.0 are equal: the smaller id goes first whatever their signs."""
    model = MLPScorer([(np.ones((1, 1), np.float32), None, "identity")], backend=backend)
    items = np.array([[0.0], [-0.0], [0.0], [-0.0], [-1e-45]], np.float32)
    top, values = model.rank(np.zeros(0, np.float32), np.array([3, 1, 2, 0, 4]), items, k=5)
    np.testing.assert_array_equal(top, [0, 1, 2, 3, 4])
    assert (values[:4] == 0).all() and values[4] == np.float32(-1e-45)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_empty_users_empty_calls_and_padding(backend, precision):
    rng = np.random.default_rng(1)
    model = make(random_layers(rng, [3, 9, 4, 1], ["relu", "tanh", "identity"]), backend,
                 precision)
    items = rng.standard_normal((10, 2)).astype(np.float32)
    one = np.ones(1, np.float32)
    assert model.score(np.zeros((0, 3), np.float32)).shape == (0,)
    assert model.score_candidates(one, np.zeros(0, np.int64), items).shape == (0,)
    top, values = model.rank(one, np.zeros(0, np.int64), items, k=3)
    np.testing.assert_array_equal(top, [-1, -1, -1])
    assert np.isneginf(values).all() and values.dtype == np.float32
    users = np.ones((3, 1), np.float32)
    assert model.score_candidates(users, np.zeros((3, 0), np.int64), items).shape == (3, 0)
    top, values = model.rank(np.ones((0, 1), np.float32), [], items, k=2)
    assert top.shape == values.shape == (0, 2)
    top, values = model.rank(users, [np.array([], np.int64), np.array([4, 4, 2]),
                                     np.array([], np.int64)], items, k=4)
    np.testing.assert_array_equal(top[[0, 2]], -1)
    assert set(top[1, :2].tolist()) == {2, 4} and (top[1, 2:] == -1).all()
    assert np.isfinite(values[1, :2]).all() and np.isneginf(values[1, 2:]).all()


# ---------------------------------------------------------------------- non-finite and extremes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_non_finite_item_rows_are_never_ranked_as_nan(backend, precision):
    """NaN / inf item rows (not checked per call) give IEEE's scores; rank never returns a
    NaN or -inf score and still returns the finite candidates in order."""
    rng = np.random.default_rng(2)
    layers = random_layers(rng, [4, 16, 8, 1], ["relu", "sigmoid", "identity"])
    model = make(layers, backend, precision)
    items = rng.standard_normal((40, 3)).astype(np.float32)
    items[[3, 7]] = np.nan
    items[11, 0], items[12, 2] = np.inf, -np.inf
    user = rng.standard_normal(1).astype(np.float32)
    ids = np.arange(40)
    top, values = model.rank(user, ids, items, k=40)
    assert not np.isnan(values).any()
    assert not ({3, 7} & set(top.tolist()))
    finite = [i for i in range(40) if i not in (3, 7, 11, 12)]
    clean = make(layers, backend).score_candidates(user, np.array(finite), items)
    want = [finite[j] for j in np.lexsort((finite, -clean.astype(np.float64)))]
    returned = [int(i) for i in top if i in finite]
    assert returned == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_must_be_finite_and_name_the_argument(backend):
    model = MLPScorer([(np.ones((1, 4), np.float32), None, "identity")], backend=backend)
    items = np.ones((5, 1), np.float32)
    good = dict(user_vectors=np.ones(1, np.float32), candidate_ids=np.array([0, 1]),
                item_table=items, user_features=np.ones(1, np.float32),
                candidate_features=np.ones((2, 1), np.float32))
    for name, value in [("user_vectors", np.array([np.nan], np.float32)),
                        ("user_features", np.array([np.inf])),
                        ("candidate_features", np.array([[1.0], [-np.inf]])),
                        ("candidate_features", np.array([[1.0], [1e39]]))]:
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            model.score_candidates(**dict(good, **{name: value}))
    with pytest.raises(ValueError, match="inputs must be finite"):
        model.score(np.array([1.0, np.nan, 0, 0]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflow_denormals_and_signed_zero(backend):
    """Huge finite weights overflow float32 to +-inf (IEEE); rank keeps +inf first, drops
    -inf and NaN; denormal inputs and weights are not flushed to zero."""
    big = np.float32(3e38)
    steep = MLPScorer([(np.array([[big, big], [big, -big]], np.float32), None, "relu"),
                       (np.array([[1.0, -1.0]], np.float32), None, "identity")], backend=backend)
    X = np.array([[1, 1], [1, 0], [0.5, 0.5], [1, -1], [-1, -1]], np.float32)
    np.testing.assert_array_equal(steep.score(X), [np.inf, 0.0, big, -np.inf, 0.0])
    top, values = steep.rank(np.zeros(0, np.float32), np.arange(5), X, k=5)
    np.testing.assert_array_equal(top, [0, 2, 1, 4, -1])
    np.testing.assert_array_equal(values, [np.inf, big, 0, 0, -np.inf])
    tiny = MLPScorer([(np.array([[1e-40, 1.0]], np.float32), np.array([0.0], np.float32),
                       "relu"), (np.array([[3.0]], np.float32), None, "identity")],
                     backend=backend)
    X = np.array([[1.0, 0.0], [0.0, 1e-40], [0.0, 1e-45], [0.0, -1e-45], [0.0, -0.0]],
                 np.float32)
    expected, _ = o_forward(tiny.layers, X)
    np.testing.assert_array_equal(tiny.score(X), expected.astype(np.float32))
    assert tiny.score(X)[1] > 0 and tiny.score(X)[2] > 0


# ---------------------------------------------------------------------- layouts and dtypes


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_and_dtypes_give_the_same_bits(backend):
    """Fortran order, strided views, read-only arrays, float64 / float16 / int inputs and
    weights give the bits of their float32 C-contiguous conversion."""
    rng = np.random.default_rng(3)
    layers = random_layers(rng, [6, 17, 1], ["gelu", "identity"])
    model = MLPScorer(layers, backend=backend)
    X = rng.standard_normal((40, 6))
    base = model.score(X.astype(np.float32))
    wide = np.zeros((40, 12))
    wide[:, ::2] = X
    read_only = X.astype(np.float32)
    read_only.flags.writeable = False
    for variant in (np.asfortranarray(X), wide[:, ::2], read_only, X.astype(np.float32)[::1]):
        np.testing.assert_array_equal(model.score(variant), base)
    for dtype in (np.float16, np.int32, np.uint8, np.int64):
        np.testing.assert_array_equal(model.score(X.astype(dtype)),
                                      model.score(X.astype(dtype).astype(np.float32)))
    # the weights: any real dtype and layout, copied to float32 C order
    fortran = [(np.asfortranarray(W.astype(np.float64)), b, a) for W, b, a in layers]
    np.testing.assert_array_equal(MLPScorer(fortran, backend=backend).score(X), base)
    # candidates: a Fortran / strided item table, int32 ids, a read-only feature block
    items = rng.standard_normal((30, 4))
    ids = rng.integers(0, 30, 50).astype(np.int32)
    user = rng.standard_normal(2).astype(np.float32)
    want = model.score_candidates(user, ids.astype(np.int64), items.astype(np.float32))
    wide_items = np.zeros((30, 8))
    wide_items[:, 1::2] = items
    for table in (np.asfortranarray(items), wide_items[:, 1::2], items.astype(np.float32)):
        np.testing.assert_array_equal(model.score_candidates(user, ids, table), want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_weights_changed_after_construction_change_nothing(backend, precision):
    rng = np.random.default_rng(4)
    layers = random_layers(rng, [5, 33, 9, 1], ["relu", "tanh", "identity"])
    model = make(layers, backend, precision)
    items = rng.standard_normal((20, 3)).astype(np.float32)
    prepared = model.prepare_items(items, item_column=2)
    user = rng.standard_normal(2).astype(np.float32)
    before = (model.score_candidates(user, np.arange(20), prepared),
              model.rank(user, np.arange(20), items, k=5))
    for W, b, _ in layers:
        W[...] = -W * 7
        if b is not None:
            b += 3
    after = (model.score_candidates(user, np.arange(20), prepared),
             model.rank(user, np.arange(20), items, k=5))
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1][0], before[1][0])
    np.testing.assert_array_equal(after[1][1], before[1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_items_are_the_first_layers_item_part_zero_padded(backend):
    rng = np.random.default_rng(6)
    for out in (1, 31, 32, 33, 65):
        layers = random_layers(rng, [9, out, 1], ["relu", "identity"])
        model = MLPScorer(layers, backend=backend)
        items, features = rng.standard_normal((70, 3)), rng.standard_normal((70, 2))
        prepared = model.prepare_items(items, features, item_column=2)
        assert isinstance(prepared, PreparedItems) and prepared.items == 70
        width = -(-out // 32) * 32
        assert prepared.part.shape == (70, width) and prepared.part.dtype == np.float32
        W = layers[0][0].astype(np.float64)
        expected = np.hstack([items.astype(np.float32), features.astype(np.float32)]) @ W[:, 2:7].T
        bound = 8 * EPS32 * (np.abs(np.hstack([items, features])) @ np.abs(W[:, 2:7]).T) + 1e-7
        assert (np.abs(prepared.part[:, :out] - expected) <= bound).all()
        assert (prepared.part[:, out:] == 0).all()


# ---------------------------------------------------------------------- threads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_thread_counts_give_the_same_bits(backend, precision):
    rng = np.random.default_rng(8)
    model = make(random_layers(rng, [10, 65, 17, 1], ["gelu", "relu", "sigmoid"]), backend,
                 precision)
    items = rng.standard_normal((500, 4)).astype(np.float32)
    users = rng.standard_normal((3, 4)).astype(np.float32)
    lengths = [1025, 0, 7]
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, 500, indptr[-1])
    features = rng.standard_normal((ids.size, 2)).astype(np.float32)
    X = rng.standard_normal((1025, 10)).astype(np.float32)
    runs = []
    for threads in (0, 1, 2, 3, 64):
        prepared = model.prepare_items(items, item_column=4, num_threads=threads)
        runs.append((model.score(X, num_threads=threads), prepared.part,
                     model.score_candidates(users, (indptr, ids), prepared,
                                            candidate_features=features, num_threads=threads),
                     *model.rank(users, (indptr, ids), items, candidate_features=features, k=9,
                                 num_threads=threads)))
    for run in runs[1:]:
        for got, want in zip(run, runs[0]):
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_errors_naming_them(backend):
    model = MLPScorer([(np.ones((3, 3), np.float32), None, "relu"),
                       (np.ones((1, 3), np.float32), None, "identity")], backend=backend)
    user, items = np.ones(1, np.float32), np.ones((5, 2), np.float32)
    cases = [
        (lambda: model.rank(user, np.array([5]), items, k=1), ValueError, "candidate_ids"),
        (lambda: model.rank(user, np.array([-3]), items, k=1), ValueError, "candidate_ids"),
        (lambda: model.rank(user, np.array([2**62]), items, k=1), ValueError, "candidate_ids"),
        (lambda: model.rank(user, np.array([1.5]), items, k=1), TypeError, "candidate_ids"),
        (lambda: model.rank(user, np.array([1]), items, k=0), ValueError, "k must be"),
        (lambda: model.rank(user, np.array([1]), items, k=1.0), TypeError, "k must be"),
        (lambda: model.rank(user, np.array([1]), items, k=1, num_threads=-1), ValueError,
         "num_threads"),
        (lambda: model.score(np.ones((2, 4))), ValueError, "inputs must have 3 columns"),
        (lambda: model.score(np.ones((2, 3), bool)), TypeError, "inputs must hold real"),
        (lambda: model.score(np.ones((2, 3), complex)), TypeError, "inputs must hold real"),
        (lambda: model.score_candidates(user, np.array([1]), np.ones((5, 3))), ValueError,
         "columns wide"),
        (lambda: model.score_candidates(user, np.array([1]), items,
                                        candidate_features=np.ones((2, 1))), ValueError,
         "candidate_features must have 1 rows"),
        (lambda: model.prepare_items(items, item_column=2), ValueError, "item_column"),
        (lambda: MLPScorer(model.layers, backend=backend, precision="float16"), ValueError,
         "precision"),
    ]
    if not _bf16_on_cpu():  # documented: refused with the reason, never chosen silently
        cases.append((lambda: MLPScorer(model.layers, precision="bfloat16", backend="cpu"),
                      ValueError, "needs AVX512-BF16.*avx512_bf16"))
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_onnx_import_without_the_onnx_package_says_what_to_install(tmp_path):
    try:
        import onnx  # noqa: F401
        pytest.skip("onnx is installed: tests/test_mlp.py covers from_onnx")
    except ImportError:
        pass
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match="pip install onnx"):
        load_scorer(path)
    with pytest.raises(ImportError, match="pip install onnx"):
        MLPScorer.from_onnx(path)
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            MLPScorer.from_torch(object())


# ---------------------------------------------------------------------- files


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8", "bfloat16"])
def test_save_load_round_trip_is_bit_exact(tmp_path, backend, precision):
    rng = np.random.default_rng(9)
    layers = random_layers(rng, [7, 33, 9, 1], ["gelu", "tanh", "sigmoid"])
    layers[0][0][0, :3] = [1e-40, -0.0, 3e38]  # denormal, signed zero, huge
    model = make(layers, backend, precision)
    path = tmp_path / "scorer.npz"
    model.save(path)
    X = rng.standard_normal((100, 7)).astype(np.float32)
    for loaded in (load_scorer(path, backend=backend),
                   recfuse.load(path, backend=backend, mmap=True)):
        assert isinstance(loaded, MLPScorer) and loaded.precision == precision
        for (W, b, a), (W2, b2, a2) in zip(model.layers, loaded.layers):
            assert W.tobytes() == W2.tobytes() and a == a2 and W2.dtype == np.float32
            assert (b is None) == (b2 is None) and (b is None or b.tobytes() == b2.tobytes())
        np.testing.assert_array_equal(loaded.score(X), model.score(X))
    mapped = recfuse.load(path, backend=backend, mmap=True)
    before = mapped.score(X)
    MLPScorer([(np.ones((1, 7), np.float32), None, "identity")]).save(path)  # replaced
    np.testing.assert_array_equal(mapped.score(X), before)


def test_damaged_or_forged_files_are_refused_with_the_file_named(tmp_path):
    from recfuse.persistence import save_model

    rng = np.random.default_rng(10)
    layers = random_layers(rng, [3, 4, 1], ["relu", "sigmoid"])
    model = MLPScorer(layers)
    path = tmp_path / "scorer.npz"
    model.save(path)
    raw = path.read_bytes()
    damaged = tmp_path / "damaged.npz"
    for cut in (0, 1, 22, 100, len(raw) // 2, len(raw) - 22, len(raw) - 1):
        damaged.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="damaged.npz"):
            load_scorer(damaged)
    X = rng.standard_normal((5, 3)).astype(np.float32)
    for offset in range(0, len(raw), 37):  # a flipped byte: refused, or the same scorer
        flipped = bytearray(raw)
        flipped[offset] ^= 0x5A
        damaged.write_bytes(bytes(flipped))
        try:
            loaded = load_scorer(damaged)
        except ValueError as error:
            assert "damaged.npz" in str(error)
            continue
        np.testing.assert_array_equal(loaded.score(X), model.score(X))
    good = {"weight_0": layers[0][0], "bias_0": layers[0][1], "weight_1": layers[1][0]}
    params = {"precision": "float32", "activations": ["relu", "sigmoid"], "biases": [True, False]}
    forged = [
        (dict(params, activations=["relu", "softplus"]), good, "activation"),
        (dict(params, activations=["relu", 5]), good, "activation"),
        (dict(params, biases=[1, 0]), good, "bias flags"),
        (dict(params, biases=[True, True]), good, "bias_1"),
        (dict(params, activations="relu"), good, "one activation"),
        (dict(params, precision="int4"), good, "precision"),
        (dict(params, kernel="amx"), good, "amx"),
        (params, dict(good, weight_1=np.full((1, 4), np.nan, np.float32)), "finite"),
        (params, dict(good, weight_1=np.ones((1, 5), np.float32)), "takes 5 inputs"),
        (params, dict(good, weight_1=np.ones((1, 4, 1), np.float32)), "2-d"),
        (params, dict(good, weight_1=np.ones((1, 4), bool)), "bool"),
        (params, dict(good, extra=np.ones(1)), "do not use"),
        (params, {"weight_0": layers[0][0], "bias_0": layers[0][1]}, "weight_1"),
    ]
    for number, (header, arrays, match) in enumerate(forged):
        target = tmp_path / f"forged{number}.npz"
        save_model(target, "MLPScorer", header, arrays)
        with pytest.raises(ValueError, match=match) as caught:
            load_scorer(target)
        assert f"forged{number}.npz" in str(caught.value)
    pickled = tmp_path / "pickled.npz"
    header = np.frombuffer(b'{"format": "recfuse", "version": 1, "model": "MLPScorer", '
                           b'"params": {}}', np.uint8)
    np.savez(pickled, __recfuse__=header, weight_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_scorer(pickled)
    als = tmp_path / "als.npz"
    import scipy.sparse as sp

    recfuse.ALS(factors=2, iterations=1).fit(sp.eye(4, format="csr", dtype=np.float32)).save(als)
    with pytest.raises(ValueError, match="not a ranker"):
        load_scorer(als)


# ---------------------------------------------------------------------- the hunt's bugs, fixed


def test_weights_beyond_float32_range_are_a_named_value_error_without_warning(tmp_path):
    from recfuse.persistence import save_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"layers\[0\] weight must be finite"):
            MLPScorer([(np.array([[1e39, 1.0]]), None, "identity")])
        with pytest.raises(ValueError, match=r"layers\[0\] bias must be finite"):
            MLPScorer([(np.ones((1, 2)), np.array([-1e39]), "identity")])
        path = tmp_path / "huge.npz"
        save_model(path, "MLPScorer", {"activations": ["identity"], "biases": [False]},
                   {"weight_0": np.array([[1e39, 1.0]])})
        with pytest.raises(ValueError, match="huge.npz"):
            load_scorer(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_given_as_an_array_is_refused_naming_the_layer(backend):
    W = np.ones((1, 2), np.float32)
    for activation in (np.array(["relu"]), np.array(["relu", "relu"])):
        with pytest.raises((TypeError, ValueError), match=r"layers\[0\] activation"):
            MLPScorer([(W, None, activation)], backend=backend)


def test_ragged_float_arguments_are_named():
    model = MLPScorer([(np.ones((1, 2), np.float32), None, "identity")])
    items = np.ones((3, 1), np.float32)
    cases = [("inputs", lambda: model.score([[1.0, 2.0], [3.0]])),
             ("user_vectors", lambda: model.score_candidates(
                 [[1.0], [2.0, 3.0]], [np.array([0]), np.array([1])], items)),
             ("item_table", lambda: model.score_candidates([1.0], [0], [[1.0], [2.0, 3.0]])),
             ("candidate_features", lambda: model.score_candidates(
                 [1.0], [0, 1], np.ones((3, 0)), candidate_features=[[1.0, 2.0], [3.0]])),
             (r"layers\[0\] weight", lambda: MLPScorer([([[1.0, 2.0], [3.0]], None, "relu")]))]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()


def _huge_id_call():
    """20 users whose candidates carry ids near 2**60: legal ids of a zero-width item table
    (a model of user and candidate features only, ids as labels)."""
    rng = np.random.default_rng(12)
    layers = random_layers(rng, [3, 8, 4, 1], ["relu", "relu", "identity"])
    items = np.empty((2**60, 0), np.float32)
    users = rng.standard_normal((20, 1)).astype(np.float32)
    ids = np.tile([2**60 - 1, 5, 7], (20, 1))
    features = rng.standard_normal((60, 2)).astype(np.float32)
    return layers, users, ids, items, features


@pytest.mark.parametrize("backend", ["cpu", "numba", "numpy"])
def test_int8_rank_with_huge_ids_keeps_every_users_list(backend):
    layers, users, ids, items, features = _huge_id_call()
    int8 = MLPScorer(layers, precision="int8", backend=backend)
    float32 = MLPScorer(layers, backend=backend)
    top, values = int8.rank(users, ids, items, candidate_features=features, k=3)
    want, want_values = float32.rank(users, ids, items, candidate_features=features, k=3)
    assert (top >= 0).all(), f"users without results: {np.flatnonzero((top < 0).any(axis=1))}"
    np.testing.assert_array_equal(top, want)
    np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-6)


def test_numba_read_only_item_features_score_without_warnings():
    """Run in a fresh interpreter: numba warns once per process, when it first compiles the
    cast, so the check must not depend on what ran before it."""
    import subprocess
    import sys
    import textwrap

    if not {info.name: info.available for info in recfuse.backends("mlp")}["numba"]:
        pytest.skip("numba is not available")

    script = textwrap.dedent("""
        import warnings
        import numpy as np
        from recfuse.ranking import MLPScorer
        model = MLPScorer([(np.ones((1, 4), np.float32), None, "identity")], backend="numba")
        items = np.ones((4, 2), np.float32)
        features = np.full((4, 1), 2.0, np.float32)
        features.flags.writeable = False  # as np.load(..., mmap_mode="r") gives it
        warnings.simplefilter("error")
        scores = model.score_candidates(np.ones(1, np.float32), [0, 1], items,
                                        item_features=features)
        assert scores.tolist() == [5.0, 5.0], scores
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONWARNINGS="default"))
    assert done.returncode == 0, done.stderr[-600:]

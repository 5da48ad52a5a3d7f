"""The MLP scorer (recfuse.MLPScorer) on every backend and precision against
recfuse.reference.mlp_*.

Tolerances (``error_bound``): rounding errors are treated as independent, so they add up
as root sums of squares. Each layer adds, relative to the root sum of squares of its
products w·h, 4·√in·2⁻²⁴ (float32 accumulation) plus, in the layers that bfloat16 rounds
(between the first and the last), 2⁻⁹ (either side may round an input the other way when
it lies near a rounding boundary), in the layers that int8 quantizes one quantization step of
the input row times the root sum of squares of the weight row (the same reason), and 1e-6
for the activations' polynomial approximations; errors pass
through later layers by |W| (root sum of squares) times the activation's slope (≤ 1.13).
The bound is four times that, plus 1e-6: about 1e-5 of the output scale in float32 and
5e-3 in bfloat16. (A worst-case bound would be vacuous for deep wide models.)
"""

from __future__ import annotations

import concurrent.futures
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from recfuse.ranking import MLPScorer

from conftest import backend_params, examples, numba_cache_counts

BACKENDS = backend_params(("cpu", "numba", "cupy", "numpy"))
PRECISIONS = ["float32", "bfloat16", "int8"]
SLOPE = {"relu": 1.0, "identity": 1.0, "tanh": 1.0, "sigmoid": 0.25, "gelu": 1.13}


def _native():
    try:
        from recfuse import _core
    except ImportError:
        return None
    return _core


def _bf16_on_cpu() -> tuple[bool, str]:
    core = _native()
    if core is None:
        return False, "recfuse._core is not built"
    table = {name: (ok, why) for name, ok, why in core.mlp_kernels()}
    return table["avx512bf16"]


def scorer(layers, backend, precision="float32", **options) -> MLPScorer:
    if backend == "cpu" and precision == "bfloat16":
        ok, why = _bf16_on_cpu()
        if not ok:
            pytest.skip(f"bfloat16 on the cpu backend: {why}")
    if backend == "cuda" and precision == "int8":
        pytest.skip("int8 has no CUDA kernel (tested: test_int8_is_refused_by_the_cuda_backend)")
    return MLPScorer(layers, precision=precision, backend=backend, **options)


def random_layers(rng, widths, activations):
    layers = []
    for i, activation in enumerate(activations):
        W = (rng.standard_normal((widths[i + 1], widths[i])) / math.sqrt(widths[i])).astype(np.float32)
        b = (0.1 * rng.standard_normal(widths[i + 1])).astype(np.float32)
        layers.append((W, b if i % 2 == 0 else None, activation))
    return layers


def error_bound(layers, X, precision):
    """Per row: how far a backend may be from the reference (see the module docstring)."""
    h = np.asarray(X, np.float64)
    e = np.zeros_like(h)
    for position, (W, b, activation) in enumerate(layers):
        W64 = W.astype(np.float64)
        rms = np.sqrt(np.square(h) @ np.square(W64).T)  # the typical size of the sum's terms
        middle = 0 < position < len(layers) - 1
        rounded = precision == "bfloat16" and middle
        relative = 4 * math.sqrt(W.shape[1]) * 2.0**-24 + (2.0**-9 if rounded else 0)
        step = 0.0  # int8: one quantization step of each input row, through the weight rows
        if precision == "int8" and middle:
            step = (np.abs(h).max(axis=1, keepdims=True) / 127) * np.sqrt(
                np.square(W64).sum(axis=1))[None, :]
        e = SLOPE[activation] * (np.sqrt(np.square(e) @ np.square(W64).T) + relative * rms
                                 + step + 1e-6)
        h = reference.mlp_activation(activation, h @ W64.T + (0 if b is None else b))
    return 4.0 * e[:, 0] + 1e-6


def assert_scores_close(scores, expected, bound, context=""):
    scores = np.asarray(scores, np.float64)
    difference = np.abs(scores - expected)
    worst = int(np.argmax(difference - bound)) if difference.size else 0
    assert (difference <= bound).all(), (
        f"{context}: row {worst} differs by {difference[worst]:.3g} > bound {bound[worst]:.3g}")


@st.composite
def models(draw, max_width=1024, max_layers=4):
    """(layers, input width) with widths 1..max_width (mostly small, some of 64..1024)."""
    count = draw(st.integers(1, max_layers))
    width = st.one_of(st.integers(1, 40), st.sampled_from([31, 33, 64, 100, 256, max_width]))
    widths = [draw(width) for _ in range(count)] + [1]
    activations = [draw(st.sampled_from(reference.MLP_ACTIVATIONS)) for _ in range(count)]
    seed = draw(st.integers(0, 2**32 - 1))
    return random_layers(np.random.default_rng(seed), widths, activations), widths[0]


# ---------------------------------------------------------------------- reference


def test_reference_matches_closed_forms():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_allclose(reference.mlp_activation("gelu", x),
                               [x_ * 0.5 * (1 + math.erf(x_ / math.sqrt(2))) for x_ in x])
    np.testing.assert_allclose(reference.mlp_activation("sigmoid", x), 1 / (1 + np.exp(-x)))
    assert reference.round_to_bfloat16(np.float32(1.0 + 2.0**-8))[()] == 1.0  # tie to even
    assert reference.round_to_bfloat16(np.float32(1.0 + 3 * 2.0**-8))[()] == 1.0 + 2.0**-6
    W = np.array([[1.0, 2.0]], np.float32)
    assert reference.mlp_forward([(W, np.array([0.5], np.float32), "identity")],
                                 [[1.0, 1.0]])[0, 0] == 3.5


def test_reference_rank_is_a_full_sort_with_ties_and_repeats():
    indptr = np.array([0, 5, 5, 8])
    ids = np.array([4, 2, 4, 9, 1, 3, 3, 0])
    scores = np.array([1.0, 2.0, 1.0, 2.0, np.nan, -np.inf, 0.0, 0.0])
    top, values = reference.mlp_rank_scores(indptr, ids, scores, 3)
    np.testing.assert_array_equal(top, [[2, 9, 4], [-1, -1, -1], [0, 3, -1]])
    np.testing.assert_array_equal(values, [[2, 2, 1], [-np.inf] * 3, [0, 0, -np.inf]])
    # a repeat that scores differently (its own candidate features) counts at its best
    top, values = reference.mlp_rank_scores([0, 4], [7, 1, 7, 2], [3.0, 0.5, 0.0, 2.0], 4)
    np.testing.assert_array_equal(top, [[7, 2, 1, -1]])


_SCORE_VALUES = [0.0, -0.0, 1.0, 1.0, -2.5, 3.0e38, -3.0e38, np.inf, -np.inf, np.nan, 1e-45]


@st.composite
def _scored_lists(draw):
    """(indptr, ids, float32 scores, k): empty users, repeated ids, tied and special scores."""
    sizes = draw(st.lists(st.integers(0, 40), min_size=0, max_size=6))
    total = sum(sizes)
    ids = np.array(draw(st.lists(st.integers(0, draw(st.integers(0, 50))), min_size=total,
                                 max_size=total)), dtype=np.int64)
    scores = np.array(draw(st.lists(st.one_of(st.sampled_from(_SCORE_VALUES),
                                              st.floats(-10, 10, width=32)),
                                    min_size=total, max_size=total)), dtype=np.float32)
    indptr = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    return indptr, ids, scores, draw(st.integers(1, 60))


@settings(max_examples=examples(200), deadline=None)
@given(_scored_lists(), st.sampled_from([1, 2]))
def test_native_rank_of_given_scores_matches_reference(lists, num_threads):
    """_core.mlp_rank_scores (how the cuda, cupy, numba and numpy backends rank scores on
    the host) is the reference's full sort to the bit: ties by id, repeats at their best,
    NaN and -inf dropped, short lists padded."""
    from recfuse import _core

    indptr, ids, scores, k = lists
    top, values = _core.mlp_rank_scores(indptr, ids, scores, k, num_threads)
    want_top, want_values = reference.mlp_rank_scores(indptr, ids, scores, k)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(values, want_values.astype(np.float32))
    assert top.shape == values.shape == (indptr.size - 1, k) and values.dtype == np.float32


def test_native_rank_of_given_scores_refuses_bad_input():
    from recfuse import _core

    indptr, ids, scores = np.array([0, 2], np.int64), np.array([1, 2], np.int64), np.ones(2,
                                                                                      np.float32)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _core.mlp_rank_scores(indptr, ids, scores, 0)
    with pytest.raises(ValueError, match=r"ids must have shape \(2,\), got \(3,\)"):
        _core.mlp_rank_scores(indptr, np.arange(3), scores, 1)
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        _core.mlp_rank_scores(indptr, ids, np.ones(1, np.float32), 1)
    with pytest.raises(ValueError, match="must not decrease"):
        _core.mlp_rank_scores(np.array([0, 2, 1, 2], np.int64), ids, scores, 1)
    with pytest.raises(ValueError, match="starting at 0"):
        _core.mlp_rank_scores(np.array([1, 2], np.int64), ids, scores, 1)
    with pytest.raises(TypeError):  # float64 scores are not converted silently
        _core.mlp_rank_scores(indptr, ids, np.ones(2), 1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, n_items", [(4, 5), (80, 150)])  # few results, and many
def test_rank_counts_a_repeated_id_once_at_its_best(backend, precision, k, n_items):
    """Repeats of an id with their own candidate features score differently: rank keeps each
    id once, at its best score, wherever the repeats sit in the list."""
    rng = np.random.default_rng(11)
    layers = random_layers(rng, [3, 8, 1], ["relu", "identity"])
    model = scorer(layers, backend, precision)
    items = rng.standard_normal((n_items, 1)).astype(np.float32)
    users = rng.standard_normal((3, 1)).astype(np.float32)
    ids = rng.integers(0, n_items, (3, 8 * n_items))
    features = rng.standard_normal((3, 8 * n_items, 1)).astype(np.float32)
    float32 = scorer(layers, backend)  # bfloat16's rank returns float32's ranking
    scores = float32.score_candidates(users, ids, items, candidate_features=features)
    top, values = model.rank(users, ids, items, candidate_features=features, k=k)
    for u in range(3):
        best = {int(i): max(scores[u][ids[u] == i]) for i in np.unique(ids[u])}
        want = sorted(best, key=lambda i: (-best[i], i))[:k]
        assert len(set(top[u].tolist())) == k
        assert_rank_close(top[u], values[u], np.array(want), np.array([best[i] for i in want]))


# ---------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=examples(15))
@given(model=models(), rows=st.integers(1, 150), seed=st.integers(0, 2**32 - 1))
def test_score_matches_reference(backend, precision, model, rows, seed):
    layers, width = model
    X = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    scores = scorer(layers, backend, precision).score(X)
    assert scores.shape == (rows,) and scores.dtype == np.float32
    expected = reference.mlp_forward(layers, X, precision)[:, 0]
    assert_scores_close(scores, expected, error_bound(layers, X, precision), backend)


@st.composite
def candidate_calls(draw):
    """A model and a ragged call: users with 0.. candidates, blocks of random widths."""
    widths = {name: draw(st.integers(lo, 24)) for name, lo in
              [("user", 1), ("user_features", 0), ("item", 1), ("item_features", 0),
               ("candidate", 0)]}
    hidden = [draw(st.one_of(st.integers(1, 40), st.just(256))) for _ in range(draw(st.integers(0, 2)))]
    activations = [draw(st.sampled_from(reference.MLP_ACTIVATIONS)) for _ in range(len(hidden) + 1)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = random_layers(rng, [sum(widths.values())] + hidden + [1], activations)
    users = draw(st.integers(1, 5))
    items = draw(st.integers(1, 60))
    counts = [draw(st.sampled_from([0, 1, 7, 64, 65, 130])) for _ in range(users)]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = rng.integers(0, items, indptr[-1])
    def block(rows, name):
        return rng.standard_normal((rows, widths[name])).astype(np.float32) if widths[name] else None
    data = dict(user_vectors=block(users, "user"), item_table=block(items, "item"),
                user_features=block(users, "user_features"),
                item_features=block(items, "item_features"),
                candidate_features=block(int(indptr[-1]), "candidate"))
    return layers, indptr, ids, data


def _reference_scores(layers, indptr, ids, data, precision):
    X = reference.mlp_gather(data["user_vectors"], indptr, ids, data["item_table"],
                             data["user_features"], data["item_features"],
                             data["candidate_features"])
    return reference.mlp_forward(layers, X, precision)[:, 0], error_bound(layers, X, precision)


def prepared_arguments(scorer_, data):
    """A call's keyword arguments ``data`` with the item table (and item features) replaced
    by ``scorer_``'s prepared items."""
    item_column = data["user_vectors"].shape[1] + (
        0 if data["user_features"] is None else data["user_features"].shape[1])
    table = scorer_.prepare_items(data["item_table"], data["item_features"],
                                  item_column=item_column)
    return dict(data, item_table=table, item_features=None)


def check_candidates_and_rank(model, float32_model, call, k, same_bits):
    """score_candidates against the reference, with raw and with prepared item tables; rank
    on each == score + full sort (ties by smaller id, repeats once) under float32, and under
    bfloat16 the rescoring rule on the bfloat16 pass's scores and ``float32_model``'s (the
    same layers in float32, its item tables prepared by itself). ``same_bits``: whether a
    one-user sub-call scores its rows bit for bit as the full call does (else the lists
    must agree up to ties and the scores to 1e-5)."""
    layers, indptr, ids, data = call
    candidate_ids = (indptr, ids)
    expected, bound = _reference_scores(layers, indptr, ids, data, model.precision)
    scores = model.score_candidates(candidate_ids=candidate_ids, **data)
    assert scores.shape == (indptr[-1],)
    assert_scores_close(scores, expected, bound, "gathered")

    def prepared_by(scorer_):
        return prepared_arguments(scorer_, data)

    # The item part precomputed once gives the same scores.
    prepared = prepared_by(model)
    assert_scores_close(model.score_candidates(candidate_ids=candidate_ids, **prepared),
                        expected, bound, "prepared items")
    for arguments, exact_arguments in ((prepared, None), (data, data)):
        top, values = model.rank(candidate_ids=candidate_ids, k=k, **arguments)
        if model.precision == "float32":
            own = model.score_candidates(candidate_ids=candidate_ids, **arguments)
            want_ids, want_values = reference.mlp_rank_scores(indptr, ids, own, k)
        else:
            exact = float32_model.score_candidates(
                candidate_ids=candidate_ids, **(exact_arguments or prepared_by(float32_model)))
            want_ids, want_values = reference.mlp_rank_rescored(
                indptr, ids, rank_pass_scores(model, candidate_ids, arguments),
                lambda rows: exact[rows], k)
        if same_bits:
            np.testing.assert_array_equal(top, want_ids)
            np.testing.assert_array_equal(values, want_values.astype(np.float32))
        else:
            assert_rank_close(top, values, want_ids, want_values)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=examples(15))
@given(call=candidate_calls(), k=st.integers(1, 12))
def test_candidates_and_rank_match_reference(backend, precision, call, k):
    # a BLAS backend's one-user sub-call may differ from the full call in the last bit
    check_candidates_and_rank(scorer(call[0], backend, precision), scorer(call[0], backend),
                              call, k, same_bits=backend == "cpu" or precision == "float32")


def rank_pass_scores(model, candidate_ids, arguments):
    """The bfloat16 scores that choose rank's band: score_candidates's, except on the cpu
    backend, whose rank runs the first layer's per-candidate columns in bfloat16 too."""
    if model.backend != "cpu":
        return model.score_candidates(candidate_ids=candidate_ids, **arguments)
    from recfuse._mlp import cpu

    call, _, _ = model._candidates(arguments["user_vectors"], candidate_ids,
                                   arguments["item_table"], arguments.get("user_features"),
                                   arguments.get("item_features"),
                                   arguments.get("candidate_features"))
    return model._model.score_candidates(*cpu._arguments(call), rough=True)


def assert_rank_close(top, values, want_ids, want_values, tolerance=1e-5):
    """Scores within ``tolerance`` (relative); ids equal except where the scores tie."""
    np.testing.assert_allclose(values, want_values, rtol=tolerance, atol=tolerance)
    tie = np.isclose(values, want_values, rtol=tolerance, atol=tolerance)
    assert ((top == want_ids) | tie).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_batch_and_forms(backend):
    """10,000 candidates of one user; the 1-d, 2-d, list and tuple forms agree."""
    rng = np.random.default_rng(7)
    layers = random_layers(rng, [40, 64, 32, 1], ["relu", "relu", "sigmoid"])
    model = scorer(layers, backend)
    user = rng.standard_normal(16).astype(np.float32)
    items = rng.standard_normal((5000, 16)).astype(np.float32)
    ids = rng.integers(0, 5000, 10_000)
    features = rng.standard_normal((10_000, 8)).astype(np.float32)
    scores = model.score_candidates(user, ids, items, candidate_features=features)
    expected, bound = _reference_scores(layers, np.array([0, 10_000]), ids, dict(
        user_vectors=user[None], item_table=items, user_features=None, item_features=None,
        candidate_features=features), "float32")
    assert scores.shape == (10_000,)
    assert_scores_close(scores, expected, bound)
    two = model.score_candidates(np.stack([user, user]), np.stack([ids[:50], ids[50:100]]),
                                 items, candidate_features=features[:100].reshape(2, 50, 8))
    assert two.shape == (2, 50)
    ragged = model.score_candidates(np.stack([user, user]), [ids[:50], ids[50:100]], items,
                                    candidate_features=features[:100])
    np.testing.assert_array_equal(two.ravel(), ragged)
    top, values = model.rank(user, ids, items, candidate_features=features, k=10)
    assert top.shape == values.shape == (10,)
    order = np.lexsort((ids, -scores))
    first = np.ones(order.size, bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    np.testing.assert_array_equal(top, ids[order][first][:10])


@pytest.mark.parametrize("backend", backend_params(("cuda", "cpu", "numba", "cupy", "numpy"),
                                                   family="mlp"))
def test_bfloat16_rank_returns_float32_ranking(backend):
    """Under bfloat16, rank rescores a band in float32: on lists where bfloat16 alone
    reorders the top 10, the ids and scores are float32's, and the band widens when the
    bfloat16 error is large against the gaps."""
    rng = np.random.default_rng(7)  # a draw where bfloat16 alone changes 2 of 8 lists
    layers = [(W * np.float32(1.5), b, activation) for W, b, activation in
              random_layers(rng, [48, 256, 128, 1], ["relu", "relu", "sigmoid"])]
    fast, exact = scorer(layers, backend, "bfloat16"), scorer(layers, backend)
    users = rng.standard_normal((8, 16)).astype(np.float32)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = np.stack([rng.choice(3000, 500, replace=False) for _ in range(8)])
    features = rng.standard_normal((8 * 500, 16)).astype(np.float32)
    top, values = fast.rank(users, ids, items, candidate_features=features, k=10)
    want, want_values = exact.rank(users, ids, items, candidate_features=features, k=10)
    if backend == "cpu":  # the same float32 kernel, row by row: the same bits
        np.testing.assert_array_equal(top, want)
        np.testing.assert_array_equal(values, want_values)
    else:
        assert_rank_close(top, values, want, want_values)
    rough = fast.score_candidates(users, ids, items, candidate_features=features)
    rough_top = np.take_along_axis(ids, np.argsort(-rough, axis=1, kind="stable")[:, :10], 1)
    assert (rough_top != want).any(), "bfloat16 alone already gives float32's lists"
    # Scores 1 + 1e-5·id: the middle layer's bfloat16 input rounds them all to 1 (a tie,
    # ordered by id), so the band must widen to every candidate; float32 orders them.
    steep = [(np.array([[1e-5]], np.float32), np.array([1.0], np.float32), "identity"),
             (np.ones((1, 1), np.float32), None, "identity"),
             (np.ones((1, 1), np.float32), None, "identity")]
    ladder = np.arange(100, dtype=np.float32)[:, None]
    order = rng.permutation(100)
    top, values = scorer(steep, backend, "bfloat16").rank(np.zeros((1, 0), np.float32), order,
                                                          ladder, k=5)
    np.testing.assert_array_equal(top, [[99, 98, 97, 96, 95]])
    np.testing.assert_array_equal(values, scorer(steep, backend).rank(
        np.zeros((1, 0), np.float32), order, ladder, k=5)[1])


def test_ties_go_to_the_smaller_id():
    # relu of a negative sum: every candidate scores the final bias exactly.
    W1 = -np.ones((4, 4), np.float32)
    layers = [(W1, None, "relu"), (np.ones((1, 4), np.float32), np.array([0.25], np.float32), "identity")]
    for backend in ("cpu", "numba", "numpy"):
        if backend not in [b.name for b in recfuse.backends() if b.available]:
            continue
        model = MLPScorer(layers, backend=backend)
        ids, scores = model.rank(np.ones(2, np.float32), np.array([9, 3, 7, 3, 5]),
                                 np.ones((10, 2), np.float32), k=6)
        np.testing.assert_array_equal(ids, [3, 5, 7, 9, -1, -1])
        np.testing.assert_array_equal(scores, [0.25] * 4 + [-np.inf] * 2)


# ---------------------------------------------------------------------- native kernels


def test_every_simd_level_and_kernel():
    core = _native()
    if core is None:
        pytest.skip("recfuse._core is not built")
    rng = np.random.default_rng(3)
    layers = random_layers(rng, [70, 96, 33, 1], ["gelu", "tanh", "sigmoid"])
    X = rng.standard_normal((200, 70)).astype(np.float32)
    expected = reference.mlp_forward(layers, X)[:, 0]
    before = core.simd_level()
    try:
        for level in core.supported_simd_levels():
            core.set_simd_level(level)
            scores = MLPScorer(layers, backend="cpu").score(X)
            assert_scores_close(scores, expected, error_bound(layers, X, "float32"), level)
    finally:
        core.set_simd_level(before)
    int8 = reference.mlp_forward(layers, X, "int8")[:, 0]
    try:
        for level in core.supported_simd_levels():  # the int8 kernel: scalar, then AVX2
            core.set_simd_level(level)
            scores = MLPScorer(layers, backend="cpu", precision="int8").score(X)
            assert_scores_close(scores, int8, error_bound(layers, X, "int8"), "int8 " + level)
    finally:
        core.set_simd_level(before)
    for name, ok, why in core.mlp_kernels():
        if name in ("float32", "int8"):
            continue
        if not ok:
            with pytest.raises(ValueError, match="unavailable|needs"):
                MLPScorer(layers, backend="cpu", precision="bfloat16", kernel=name)
            continue
        model = MLPScorer(layers, backend="cpu", precision="bfloat16", kernel=name)
        assert model.kernel == name
        assert_scores_close(model.score(X), reference.mlp_forward(layers, X, "bfloat16")[:, 0],
                            error_bound(layers, X, "bfloat16"), name)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=examples(10))
@given(width=st.sampled_from([1, 2, 3, 15, 16, 17, 33, 64, 255, 1024]),
       rows=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_int8_layers_quantize_exactly_as_the_reference(backend, width, rows, seed):
    """With an identity first layer the int8 layer's input rows are the given floats, so
    every backend quantizes exactly the reference's values (no rounding boundary to fall on
    either side of) and only float32 rounding separates it from the reference; the int8
    answer itself is far from float32's (the kernel did quantize). Rows include zeros, one
    value, ties at a rounding boundary (x.5 steps) and extreme magnitudes."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, width)).astype(np.float32)
    X[0] = 0.0  # a zero row: scale 0
    if rows > 1:
        X[1] = 0.0
        X[1, -1] = -3.0  # one value: q = -127
    if rows > 2:  # m = 127, so x · 127 / m = x: exact halves, rounded to even
        X[2] = (np.arange(width) % 7 - 3.5).astype(np.float32)
        X[2, 0] = 127.0
    if rows > 3:
        X[3] *= np.float32(1e30)
    if rows > 4:
        X[4] *= np.float32(1e-30)
    W2 = (rng.standard_normal((40, width)) / math.sqrt(width)).astype(np.float32)
    layers = [(np.eye(width, dtype=np.float32), None, "identity"),
              (W2, (0.1 * rng.standard_normal(40)).astype(np.float32), "identity"),
              ((rng.standard_normal((1, 40)) / 7).astype(np.float32), None, "identity")]
    scale = 1.0 + np.abs(X).max(axis=1).astype(np.float64)  # the scores' size
    got = scorer(layers, backend, "int8").score(X) / scale
    want = reference.mlp_forward(layers, X, "int8")[:, 0] / scale
    float32 = reference.mlp_forward(layers, X)[:, 0] / scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * math.sqrt(width))
    q, row_scale = reference.quantize_int8_rows(X)
    assert (np.abs(q) <= 127).all() and row_scale[0] == 0 and not q[0].any()
    if rows > 1:
        assert q[1, -1] == -127 and not q[1, :-1].any() and row_scale[1] == np.float32(3 / 127)
    if rows > 2:
        even = {-3.5: -4, -2.5: -2, -1.5: -2, -0.5: 0, 0.5: 0, 1.5: 2, 2.5: 2}
        assert [even[x] for x in X[2, 1:].tolist()] == q[2, 1:].tolist()
    if rows > 6 and width > 15:
        assert np.abs(want - float32).max() > 1e-3  # the int8 answer is not float32's


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_rows_holding_nan_or_inf_score_nan(backend):
    """A middle layer's input row holding NaN or inf quantizes to zeros with scale NaN: its
    score is NaN (float32 may give inf there; the module docstring lets precisions differ on
    non-finite item rows), rank drops it, and no warning is raised."""
    rng = np.random.default_rng(5)
    layers = random_layers(rng, [4, 8, 6, 1], ["identity", "relu", "sigmoid"])
    model = scorer(layers, backend, "int8")
    items = rng.standard_normal((5, 2)).astype(np.float32)
    items[1, 0], items[3, 1] = np.inf, np.nan
    user = np.ones(2, np.float32)
    scores = model.score_candidates(user, np.arange(5), items)
    assert np.isnan(scores[[1, 3]]).all() and np.isfinite(scores[[0, 2, 4]]).all()
    top, values = model.rank(user, np.arange(5), items, k=5)
    assert set(top[:3].tolist()) == {0, 2, 4} and (top[3:] == -1).all()


def test_int8_kernel_and_precision_must_agree():
    if _native() is None:
        pytest.skip("recfuse._core is not built")
    with pytest.raises(ValueError, match="kernel float32 does not compute int8"):
        MLPScorer(_small(), precision="int8", backend="cpu", kernel="float32")
    with pytest.raises(ValueError, match="kernel int8 does not compute float32"):
        MLPScorer(_small(), precision="float32", backend="cpu", kernel="int8")
    assert MLPScorer(_small(), precision="int8", backend="cpu").kernel == "int8"


def test_int8_is_refused_by_the_cuda_backend():
    """No CUDA int8 kernel yet: the cuda backend says so before it touches a device."""
    from recfuse._mlp import cuda

    with pytest.raises(ValueError, match="precision='int8' has no CUDA kernel yet"):
        cuda.prepare([(np.ones((1, 2), np.float32), None, "identity")], "int8")


@pytest.mark.parametrize("backend", backend_params(("numba",), family="mlp"))
def test_numba_kernel_loads_from_the_disk_cache_in_a_new_process(backend):
    """The second process to score finds the kernel in Numba's disk cache (compiled once,
    ~8 s here): a kernel that captured its helpers as closure variables hashed to a new
    cache key in every process, compiled again and added one more entry to the cache."""
    code = (
        "import numpy as np, recfuse\n"
        "from recfuse._mlp import numba_backend\n"
        "layers = [(np.ones((3, 2), np.float32), None, 'gelu'),\n"
        "          (np.ones((1, 3), np.float32), None, 'identity')]\n"
        "recfuse.MLPScorer(layers, backend='numba').score(np.ones((4, 2), np.float32))\n"
        "stats = numba_backend._kernels()[1].stats\n"
        "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))\n"
    )
    runs = numba_cache_counts(code)
    assert runs[1] == ["1", "0"], runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls(backend):
    rng = np.random.default_rng(11)
    layers = random_layers(rng, [24, 48, 1], ["relu", "sigmoid"])
    model = scorer(layers, backend)
    users = rng.standard_normal((8, 8)).astype(np.float32)
    items = rng.standard_normal((300, 16)).astype(np.float32)
    ids = rng.integers(0, 300, (8, 200))
    serial = [model.rank(users, ids, items, k=5) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: model.rank(users, ids, items, k=5, num_threads=2),
                                range(16)))
    for top, values in results:
        np.testing.assert_array_equal(top, serial[0][0])
        np.testing.assert_array_equal(values, serial[0][1])


# ---------------------------------------------------------------------- bad input


def _small():
    rng = np.random.default_rng(0)
    return random_layers(rng, [6, 5, 1], ["relu", "identity"])


@pytest.mark.parametrize("layers, error, match", [
    ([], TypeError, "non-empty"),
    ([(np.ones((5, 6)), None)], TypeError, "triple"),
    ([(np.ones((5, 6)), None, "relu"), (np.ones((1, 4)), None, "identity")], ValueError,
     r"layers\[1\] takes 4 inputs but layers\[0\] gives 5"),
    ([(np.full((1, 6), np.nan), None, "relu")], ValueError, r"layers\[0\] weight must be finite"),
    ([(np.ones((1, 6)), np.array([np.inf]), "relu")], ValueError, "bias must be finite"),
    ([(np.ones((1, 6)), np.ones(2), "relu")], ValueError, r"bias must be a real array of shape \(1,\)"),
    ([(np.ones((1, 6)), None, "softplus")], ValueError, "activation must be one of"),
    ([(np.ones((2, 6)), None, "relu")], ValueError, "last layer must have one output"),
    ([(np.ones(6), None, "relu")], ValueError, "2-d"),
])
def test_bad_layers(layers, error, match):
    with pytest.raises(error, match=match):
        MLPScorer(layers)


def test_bad_options():
    with pytest.raises(ValueError, match="precision must be one of"):
        MLPScorer(_small(), precision="int4")
    with pytest.raises(ValueError, match="backend must be"):
        MLPScorer(_small(), backend="tpu")
    with pytest.raises(ValueError, match="kernel"):
        MLPScorer(_small(), backend="numpy", kernel="amx")
    core = _native()
    amx = None if core is None else {n: why for n, ok, why in core.mlp_kernels() if not ok}.get("amx")
    if amx:  # the message says why, from the CPU probe
        with pytest.raises(ValueError, match=f"MLP kernel amx is unavailable: {re.escape(amx)}"):
            MLPScorer(_small(), precision="bfloat16", backend="cpu", kernel="amx")
    for options, error, match in [
            (dict(hidden=8), TypeError, "hidden must be a sequence"),
            (dict(hidden=np.array(8)), TypeError, "hidden must be a sequence"),  # 0-d
            (dict(hidden={32, 16}), TypeError, "hidden must be a sequence"),  # no order
            # an array compared elementwise: ambiguous truth value, or (one element) passed
            (dict(activation=np.array(["relu", "relu"])), TypeError, "activation must be one of"),
            (dict(activation=np.array(["relu"])), TypeError, "activation must be one of"),
            (dict(random_state=-1), ValueError, "random_state must be >= 0"),
            (dict(random_state=1.5), TypeError, "random_state must be an integer")]:
        with pytest.raises(error, match=match):
            recfuse.MLPRanker(**options)


def test_bad_candidates():
    model = MLPScorer(_small())
    user = np.ones(2, np.float32)
    items = np.ones((10, 2), np.float32)
    features = np.ones((3, 2), np.float32)
    ids = np.array([1, 2, 3])
    good = model.score_candidates(user, ids, items, candidate_features=features)
    assert good.shape == (3,)
    cases = [
        (dict(candidate_ids=np.array([1, 2, 10])), ValueError, r"in \[0, 10\).*got 10"),
        (dict(candidate_ids=np.array([-1, 2, 3])), ValueError, r"in \[0, 10\).*got -1"),
        (dict(candidate_ids=np.array([1.0, 2.0, 3.0])), TypeError, "integers"),
        (dict(candidate_features=np.ones((3, 3), np.float32)), ValueError,
         r"7 columns wide .* takes 6"),
        (dict(candidate_features=np.ones((4, 2), np.float32)), ValueError,
         "must have 3 rows"),
        (dict(item_features=np.ones((9, 1), np.float32), candidate_features=np.ones((3, 1))),
         ValueError, "item_features must have 10 rows"),
        (dict(user_vectors=np.array([np.nan, 1.0])), ValueError, "user_vectors must be finite"),
        (dict(user_vectors=np.ones((2, 2))), ValueError, "1-d candidate_ids is one user's"),
        (dict(candidate_ids=(np.array([0, 2]), ids)), ValueError, "end at len"),
        (dict(candidate_ids=(np.array([0, 4]), ids)), ValueError, "malformed indptr"),
        (dict(candidate_ids=np.array([2**63, 1, 2], np.uint64)), ValueError,
         r"within int64 \(ids below 2\*\*63\), got 9223372036854775808"),
        (dict(user_vectors=np.ones((2, 2)), candidate_ids=[[0, 1], 2]), ValueError,
         "ragged sequence"),
        (dict(user_vectors=np.ones((2, 2)), candidate_ids=np.array([[0, 1, 2], [3, 4, 5]]),
          candidate_features=np.ones((3, 2, 2), np.float32)), ValueError,
         r"shape \(2, 3, 'f'\) \(users x candidates x features\), got \(3, 2, 2\)"),
        (dict(item_table=np.ones(10)), ValueError, "item_table must be 2-d"),
    ]
    for change, error, match in cases:
        arguments = dict(user_vectors=user, candidate_ids=ids, item_table=items,
                         candidate_features=features)
        arguments.update(change)
        with pytest.raises(error, match=match):
            model.score_candidates(**arguments)
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.rank(user, ids, items, candidate_features=features, k=0)
    with pytest.raises(ValueError, match="k must be <= 2147483647"):  # the kernels' int32
        model.rank(user, ids, items, candidate_features=features, k=2**40)
    with pytest.raises(ValueError, match="num_threads must be <= 65536"):
        model.rank(user, ids, items, candidate_features=features, k=2, num_threads=2**40)
    prepared = MLPScorer(_small()).prepare_items(items, item_column=2)
    with pytest.raises(ValueError, match="another MLPScorer"):
        model.score_candidates(user, ids, prepared, candidate_features=features)
    mine = model.prepare_items(items, item_column=2)
    with pytest.raises(ValueError, match="item_features are already part"):
        model.score_candidates(user, ids, mine, item_features=items, candidate_features=features)
    with pytest.raises(ValueError, match="item_column must be <= 4"):
        model.prepare_items(items, item_column=5)
    # The scorer still works after the errors.
    np.testing.assert_array_equal(
        model.score_candidates(user, ids, items, candidate_features=features), good)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scorer_keeps_its_own_copy_of_the_weights(backend, tmp_path):
    """Weights and biases changed in place after construction change nothing: the numpy and
    numba backends used to score with the caller's arrays (the cpu backend with its packed
    copy), and ``save`` wrote whatever they held by then."""
    rng = np.random.default_rng(21)
    layers = random_layers(rng, [6, 5, 1], ["relu", "identity"])
    originals = [(W.copy(), None if b is None else b.copy(), a) for W, b, a in layers]
    model = scorer(layers, backend)
    X = rng.standard_normal((4, 6)).astype(np.float32)
    before = model.score(X)
    for W, b, _ in layers:
        W *= 3
        if b is not None:
            b += 1
    np.testing.assert_array_equal(model.score(X), before)
    model.save(tmp_path / "scorer.npz")
    for (W, b, _), (W0, b0, _) in zip(recfuse.load(tmp_path / "scorer.npz").layers, originals):
        np.testing.assert_array_equal(W, W0)
        assert (b is None) == (b0 is None) and (b is None or np.array_equal(b, b0))



@pytest.mark.parametrize("backend", BACKENDS)
def test_scorer_layers_are_read_only(backend, tmp_path):
    """``layers`` used to hand out the arrays the numpy and numba backends score with (the
    cpu backend keeps a packed copy): a weight changed in place through it changed what
    ``layers`` and ``save`` showed and, on some backends only, the scores. Writes raise."""
    rng = np.random.default_rng(22)
    model = scorer(random_layers(rng, [6, 5, 1], ["relu", "identity"]), backend)
    X = rng.standard_normal((4, 6)).astype(np.float32)
    before = model.score(X)
    expected = reference.mlp_forward(model.layers, X)[:, 0]
    for W, b, _ in model.layers:
        assert not W.flags.writeable and (b is None or not b.flags.writeable)
        with pytest.raises(ValueError, match="read-only"):
            W *= 3
        with pytest.raises(ValueError, match="read-only"):
            W[0, 0] = 1.0
        if b is not None:
            with pytest.raises(ValueError, match="read-only"):
                b += 1
    with pytest.raises(TypeError):
        model.layers[0] = model.layers[1]
    np.testing.assert_array_equal(model.score(X), before)
    np.testing.assert_allclose(before, expected, rtol=1e-5, atol=1e-6)
    # A scorer built from them (or saved and loaded) has its own writable copies.
    copy = MLPScorer(model.layers, backend=model.backend)
    np.testing.assert_array_equal(copy.score(X), before)
    model.save(tmp_path / "scorer.npz")
    # on the same backend: a scorer file keeps no backend, and backends round differently
    # (on a GPU machine "auto" loaded this cupy scorer onto cuda: last-bit differences)
    loaded = recfuse.load(tmp_path / "scorer.npz", backend=model.backend)
    np.testing.assert_array_equal(loaded.score(X), before)


def test_errors_say_what_the_input_is():
    """A float64 input beyond float32's range is named as such (it was "got NaN or inf",
    with a RuntimeWarning, for finite values); item blocks wider than the whole first layer
    say so (it was "item_column must be <= -2, got 0")."""
    model = MLPScorer(_small())
    user = np.full(2, 1e39)
    items = np.ones((10, 2), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning on the way
        with pytest.raises(ValueError, match=r"user_vectors must be finite in float32, got "
                                             r"values beyond its range \(±3.4e\+38\)"):
            model.score_candidates(user, np.array([1]), items,
                                   candidate_features=np.ones((1, 2)))
        with pytest.raises(ValueError, match=r"inputs must be finite, got NaN or inf$"):
            model.score(np.array([1.0, 2, 3, np.inf, 5, 6]))
    with pytest.raises(ValueError, match="item_table is 8 columns wide, but the model's first "
                                         "layer takes 6 inputs in all"):
        model.prepare_items(np.ones((10, 8), np.float32), item_column=0)
    with pytest.raises(ValueError, match="item_table and item_features are 7 columns wide"):
        model.prepare_items(items, np.ones((10, 5)), item_column=0)


@settings(max_examples=examples(60))
@given(size=st.integers(0, 200),
       bad=st.lists(st.tuples(st.integers(0, 199), st.sampled_from(
           [np.nan, np.inf, -np.inf, 3.4e38, -0.0, 1e-45, -1e-45])), max_size=3),
       layout=st.sampled_from(["float32", "strided", "float64", "2-d"]))
def test_all_finite_matches_numpy(size, bad, layout):
    """The one-pass check rank uses on its float inputs (native at the SIMD level for
    C-contiguous float32, NumPy otherwise) says what np.isfinite(x).all() says, wherever
    the NaN or inf lies (the vector body or the scalar tail)."""
    from recfuse import _validation

    values = np.ones(2 * size, np.float32)
    for position, value in bad:
        if position < size:
            values[2 * position] = value
    array = {"float32": values[::2].copy(), "strided": values[::2],
             "float64": values[::2].astype(np.float64),
             "2-d": values[::2].copy().reshape(-1, 1)}[layout]
    assert _validation.all_finite(array) == bool(np.isfinite(array).all())


def test_all_finite_at_every_simd_level():
    core = _native()
    if core is None:
        pytest.skip("recfuse._core is not built")
    before = core.simd_level()
    try:
        for level in core.supported_simd_levels():
            core.set_simd_level(level)
            for size in (0, 1, 15, 16, 63, 64, 65, 200):
                values = np.ones(size, np.float32)
                assert core.all_finite(values), (level, size)
                for position in ({0, size // 2, size - 1} if size else set()):
                    for bad in (np.nan, np.inf, -np.inf):
                        changed = values.copy()
                        changed[position] = bad
                        assert not core.all_finite(changed), (level, size, position, bad)
    finally:
        core.set_simd_level(before)


@settings(max_examples=examples(40))
@given(ids=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=100),
       layout=st.sampled_from(["int64", "strided", "int32"]))
def test_id_bounds_matches_numpy(ids, layout):
    from recfuse import _validation

    array = np.array(ids, np.int64)
    if layout == "strided":
        array = np.repeat(array, 2)[::2]
    elif layout == "int32":
        array = np.clip(array, -2**31, 2**31 - 1).astype(np.int32)
    assert _validation.id_bounds(array) == (array.min(), array.max())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_threads_split_the_rows_without_changing_scores(precision):
    """Blocks are cut as evenly as 8-row tiles allow (1,000 rows: 13 of 64 and 3 of 56);
    any thread count gives the same bits, row by row, and the same ranking."""
    if _native() is None:
        pytest.skip("recfuse._core is not built")
    rng = np.random.default_rng(11)
    layers = random_layers(rng, [24, 64, 32, 1], ["relu", "relu", "sigmoid"])
    model = scorer(layers, "cpu", precision)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    prepared = model.prepare_items(items, item_column=8)
    for total in [1, 7, 8, 9, 56, 63, 64, 65, 127, 129, 1000, 1001]:
        ids = rng.integers(0, 300, total)
        users = rng.standard_normal((2, 8)).astype(np.float32)
        split = total // 3
        candidates = (np.array([0, split, total]), ids)
        features = rng.standard_normal((total, 8)).astype(np.float32)
        runs = [(model.score_candidates(users, candidates, prepared,
                                        candidate_features=features, num_threads=threads),
                 model.rank(users, candidates, prepared, candidate_features=features, k=5,
                            num_threads=threads))
                for threads in (1, 2, 3)]
        for scores, (top, values) in runs[1:]:
            np.testing.assert_array_equal(scores, runs[0][0], err_msg=f"{total} rows")
            np.testing.assert_array_equal(top, runs[0][1][0], err_msg=f"{total} rows")
            np.testing.assert_array_equal(values, runs[0][1][1], err_msg=f"{total} rows")


# ---------------------------------------------------------------------- import


def test_from_torch_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    torch.manual_seed(0)
    nn = torch.nn
    module = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 33),
                           nn.GELU(), nn.Linear(33, 16), nn.Tanh(), nn.Linear(16, 1),
                           nn.Sigmoid()).eval()
    X = torch.randn(500, 20)
    with torch.no_grad():
        expected = module(X).numpy()[:, 0].astype(np.float64)
    model = MLPScorer.from_torch(module)
    layers = model.layers
    assert [a for _, _, a in layers] == ["relu", "gelu", "tanh", "sigmoid"]
    assert_scores_close(model.score(X.numpy()), expected, error_bound(layers, X.numpy(), "float32"))
    with pytest.raises(ValueError, match=r"module \[1\] LayerNorm is not supported"):
        MLPScorer.from_torch(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1)))
    with pytest.raises(ValueError, match="approximate='tanh'"):
        MLPScorer.from_torch(nn.Sequential(nn.Linear(4, 1), nn.GELU(approximate="tanh")))
    with pytest.raises(TypeError, match="Sequential"):
        MLPScorer.from_torch(nn.Linear(4, 1))


def test_from_torch_skips_identity_wherever_it_stands():
    """nn.Identity is a no-op like Dropout: between a Linear and its activation it must not
    close the layer (the activation after it was refused)."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    torch.manual_seed(1)
    nn = torch.nn
    module = nn.Sequential(nn.Identity(), nn.Linear(6, 8), nn.Identity(), nn.ReLU(),
                           nn.Identity(), nn.Linear(8, 1), nn.Identity(), nn.Sigmoid()).eval()
    X = torch.randn(50, 6)
    with torch.no_grad():
        expected = module(X).numpy()[:, 0]
    model = MLPScorer.from_torch(module)
    assert [a for _, _, a in model.layers] == ["relu", "sigmoid"]
    np.testing.assert_allclose(model.score(X.numpy()), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"module \[2\] Tanh: an activation must follow"):
        MLPScorer.from_torch(nn.Sequential(nn.Linear(6, 1), nn.ReLU(), nn.Tanh()))


def _onnx_chain(tmp_path, rng, ops):
    """An ONNX file: x -> Gemm/MatMul+Add layers with activations, and the layers."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from onnx import TensorProto, helper, numpy_helper

    widths = [12, 40, 17, 1]
    nodes, inits = [], []
    current = "x"
    for i, op in enumerate(ops):
        W = rng.standard_normal((widths[i + 1], widths[i])).astype(np.float32) / 3
        b = rng.standard_normal(widths[i + 1]).astype(np.float32)
        inits += [numpy_helper.from_array(W if i != 1 else W.T.copy(), f"W{i}"),
                  numpy_helper.from_array(b, f"b{i}")]
        if i == 1:  # MatMul + Add, weights stored (in, out)
            nodes += [helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"])]
        else:
            nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"z{i}"], transB=1))
        nodes.append(helper.make_node(op, [f"z{i}"], [f"h{i}"]))
        current = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 12])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [None, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    return path


def test_from_onnx_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    rng = np.random.default_rng(5)
    path = _onnx_chain(tmp_path, rng, ["Relu", "Gelu", "Sigmoid"])
    model = MLPScorer.from_onnx(path)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": X})[0][:, 0].astype(np.float64)
    assert_scores_close(model.score(X), expected, error_bound(model.layers, X, "float32"))
    bad = _onnx_chain(tmp_path, rng, ["Relu", "Softplus", "Sigmoid"])
    with pytest.raises(ValueError, match=r"Softplus.*is not supported"):
        MLPScorer.from_onnx(bad)


def test_from_onnx_follows_the_data_flow(tmp_path):
    """A 2-d (1, out) bias and a Constant scalar bias are read; a node off the chain (an
    unused branch) is refused rather than folded into the model."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    W0 = rng.standard_normal((5, 3)).astype(np.float32)
    b0 = rng.standard_normal((1, 5)).astype(np.float32)
    W1 = rng.standard_normal((5, 1)).astype(np.float32)

    def save(nodes, name):
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
            [numpy_helper.from_array(W0, "W0"), numpy_helper.from_array(b0, "b0"),
             numpy_helper.from_array(W1, "W1")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        model.ir_version = 9
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    chain = save([helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
                  helper.make_node("Relu", ["h"], ["r"]),
                  helper.make_node("Constant", [], ["c"], value_float=0.25),
                  helper.make_node("MatMul", ["r", "W1"], ["m"]),
                  helper.make_node("Add", ["m", "c"], ["y"])], "chain.onnx")
    X = rng.standard_normal((50, 3)).astype(np.float32)
    expected = ort.InferenceSession(str(chain), providers=["CPUExecutionProvider"]).run(
        None, {"x": X})[0][:, 0]
    model = MLPScorer.from_onnx(chain)
    np.testing.assert_allclose(model.score(X), expected, rtol=1e-5, atol=1e-5)
    branch = save([helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
                   helper.make_node("Sigmoid", ["h"], ["unused"]),
                   helper.make_node("MatMul", ["h", "W1"], ["y"])], "branch.onnx")
    with pytest.raises(ValueError, match="must read the chain's value 'unused'"):
        MLPScorer.from_onnx(branch)


def _save_onnx(tmp_path, name, nodes, arrays, *, in_width, opset=20, domains=()):
    """An ONNX file of ``nodes`` from x (n, in_width) to y (n, 1), ``arrays`` as initializers."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", in_width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


def _onnxruntime_scores(path, X):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})[0][:, 0]


def test_from_onnx_reads_string_attributes_and_skips_identity(tmp_path):
    """Gelu's approximate attribute (a string: bytes in the proto) given as 'none' is the
    exact form, 'tanh' is refused by name; Identity nodes (which exporters put before
    outputs) are skipped wherever they stand, also between a MatMul and its Add."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from onnx import helper

    rng = np.random.default_rng(11)
    arrays = {"W0": rng.standard_normal((8, 5)).astype(np.float32),
              "b0": rng.standard_normal(8).astype(np.float32),
              "W1": rng.standard_normal((8, 1)).astype(np.float32),
              "b1": rng.standard_normal(1).astype(np.float32)}

    def nodes(approximate):
        return [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
                helper.make_node("Identity", ["h"], ["h1"]),
                helper.make_node("Gelu", ["h1"], ["g"], approximate=approximate),
                helper.make_node("Identity", ["g"], ["g1"]),
                helper.make_node("MatMul", ["g1", "W1"], ["m"]),
                helper.make_node("Identity", ["m"], ["m1"]),
                helper.make_node("Add", ["m1", "b1"], ["z"]),
                helper.make_node("Sigmoid", ["z"], ["s"]),
                helper.make_node("Identity", ["s"], ["y"])]

    exact = _save_onnx(tmp_path, "exact.onnx", nodes("none"), arrays, in_width=5)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    model = MLPScorer.from_onnx(exact)
    assert [a for _, _, a in model.layers] == ["gelu", "sigmoid"]
    assert model.layers[1][1] is not None  # the Add after Identity is the bias
    np.testing.assert_allclose(model.score(X), _onnxruntime_scores(exact, X), rtol=1e-5,
                               atol=1e-6)
    tanh = _save_onnx(tmp_path, "tanh.onnx", nodes("tanh"), arrays, in_width=5)
    with pytest.raises(ValueError, match=r"Gelu\(approximate='tanh'\) is not supported"):
        MLPScorer.from_onnx(tanh)


def test_from_onnx_refuses_other_domains_and_names_gemm_attributes(tmp_path):
    """An operator of another domain is not the standard one of its name: refused, naming
    the domain (com.microsoft's Gelu, the exact form, is read); a Gemm with alpha, beta or
    transA other than the defaults is refused, saying what it has."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from onnx import helper

    rng = np.random.default_rng(12)
    arrays = {"W0": rng.standard_normal((6, 4)).astype(np.float32),
              "W1": rng.standard_normal((1, 6)).astype(np.float32)}

    def save(name, activation, domain="", **gemm):
        return _save_onnx(tmp_path, name, [
            helper.make_node("Gemm", ["x", "W0"], ["h"], transB=1, **gemm),
            helper.make_node(activation, ["h"], ["r"], domain=domain),
            helper.make_node("Gemm", ["r", "W1"], ["y"], transB=1)], arrays, in_width=4,
            opset=17, domains=[domain] if domain else ())

    with pytest.raises(ValueError, match=r"Relu ''\) is of domain 'example.custom'"):
        MLPScorer.from_onnx(save("custom.onnx", "Relu", "example.custom"))
    microsoft = save("microsoft.onnx", "Gelu", "com.microsoft")
    X = rng.standard_normal((40, 4)).astype(np.float32)
    model = MLPScorer.from_onnx(microsoft)
    assert [a for _, _, a in model.layers] == ["gelu", "identity"]
    np.testing.assert_allclose(model.score(X), _onnxruntime_scores(microsoft, X), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"got Gemm\(x, W0\) with transA=0, alpha=2.0, beta=1"):
        MLPScorer.from_onnx(save("alpha.onnx", "Relu", alpha=2.0))
    with pytest.raises(ValueError, match="transA=1"):
        MLPScorer.from_onnx(save("trans.onnx", "Relu", transA=1))
    with pytest.raises(ValueError, match=r"Erf '.*export with opset_version=20"):
        MLPScorer.from_onnx(save("erf.onnx", "Erf"))  # how an old exporter's GELU starts


def test_from_onnx_adds_an_add_after_a_gemm_to_its_bias(tmp_path):
    """Exporters write a layer's bias as Gemm(x, W) then Add, and some add a second bias to
    a Gemm's own: each Add before the activation sums into the layer's bias (as ONNX
    Runtime computes it). An Add after the activation is no layer's bias: refused."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from onnx import helper

    rng = np.random.default_rng(13)
    arrays = {"W0": rng.standard_normal((6, 4)).astype(np.float32),
              "b0": rng.standard_normal(6).astype(np.float32),
              "c0": rng.standard_normal((1, 6)).astype(np.float32),
              "W1": rng.standard_normal((1, 6)).astype(np.float32),
              "b1": rng.standard_normal(1).astype(np.float32)}
    X = rng.standard_normal((40, 4)).astype(np.float32)
    no_bias = _save_onnx(tmp_path, "no_bias.onnx", [
        helper.make_node("Gemm", ["x", "W0"], ["h"], transB=1),
        helper.make_node("Add", ["b0", "h"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Gemm", ["r", "W1"], ["g"], transB=1),
        helper.make_node("Add", ["g", "b1"], ["y"])], arrays, in_width=4)
    two_biases = _save_onnx(tmp_path, "two_biases.onnx", [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
        helper.make_node("Add", ["h", "c0"], ["z"]),
        helper.make_node("Tanh", ["z"], ["r"]),
        helper.make_node("Gemm", ["r", "W1", "b1"], ["y"], transB=1)], arrays, in_width=4)
    for path in (no_bias, two_biases):
        model = MLPScorer.from_onnx(path)
        assert all(b is not None for _, b, _ in model.layers)
        np.testing.assert_allclose(model.score(X), _onnxruntime_scores(path, X), rtol=1e-5,
                                   atol=1e-5)
    np.testing.assert_allclose(MLPScorer.from_onnx(two_biases).layers[0][1],
                               arrays["b0"] + arrays["c0"][0], rtol=1e-6)
    after = _save_onnx(tmp_path, "after.onnx", [
        helper.make_node("Gemm", ["x", "W0", "b0"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["r", "c0"], ["z"]),
        helper.make_node("Gemm", ["z", "W1"], ["y"], transB=1)], arrays, in_width=4)
    with pytest.raises(ValueError, match=r"Add ''\) is not supported.*between a Gemm or "
                                         r"MatMul and its activation"):
        MLPScorer.from_onnx(after)


def test_from_onnx_refuses_unreadable_files_with_a_value_error(tmp_path):
    """A truncated, foreign or empty .onnx is a ValueError naming the file (it was protobuf's
    DecodeError, which ``recfuse serve``'s reload and the CLI do not catch)."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    from recfuse.ranking import load_scorer

    path = _onnx_chain(tmp_path, np.random.default_rng(13), ["Relu", "Tanh", "Sigmoid"])
    data = path.read_bytes()
    assert MLPScorer.from_onnx(path).input_width == 12
    for name, content, match in [("truncated.onnx", data[:len(data) // 2], "not a readable"),
                                 ("foreign.onnx", b"PK\x03\x04 not a model" * 8, "not a readable"),
                                 ("empty.onnx", b"", "holds no ONNX graph")]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"{re.escape(repr(str(bad)))} .*{match}"):
            load_scorer(bad)


# ---------------------------------------------------------------------- MLPRanker


def test_ranker_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    for activation in ("relu", "tanh", "gelu"):
        ranker = recfuse.MLPRanker(hidden=(5, 3), activation=activation, random_state=0)
        ranker.weights = [rng.standard_normal((5, 4)).astype(np.float32),
                          rng.standard_normal((3, 5)).astype(np.float32),
                          rng.standard_normal((1, 3)).astype(np.float32)]
        ranker.biases = [rng.standard_normal(w).astype(np.float32) for w in (5, 3, 1)]
        X = rng.standard_normal((16, 4)).astype(np.float32)
        y = (rng.random(16) < 0.5).astype(np.float32)
        _, grads = ranker._loss_and_gradients(X, y)
        parameter, grad = ranker.weights[0], grads[0]
        for index in [(0, 0), (2, 3), (4, 1)]:
            saved = parameter[index]
            parameter[index] = saved + 1e-2
            up = ranker._loss_and_gradients(X, y)[0]
            parameter[index] = saved - 1e-2
            down = ranker._loss_and_gradients(X, y)[0]
            parameter[index] = saved
            assert abs((up - down) / 2e-2 - grad[index]) < 2e-3, (activation, index)


def test_ranker_fits_confident_logits_without_overflow():
    """Logits far below zero (large factors) are ordinary: the gradient's sigmoid was
    1 / (1 + exp(-logit)), whose exp overflowed (a RuntimeWarning, an error here) below -88;
    it gives the same probabilities without."""
    import scipy.sparse as sp

    rng = np.random.default_rng(14)
    seen = sp.random(50, 40, density=0.2, format="csr", random_state=0, dtype=np.float32)
    P, Q = rng.standard_normal((50, 8)) * 30, rng.standard_normal((40, 8)) * 30
    ranker = recfuse.MLPRanker(hidden=(16,), epochs=2, learning_rate=1e-2, random_state=0)
    ranker.fit(seen, P, Q)
    X = np.concatenate([np.repeat(P, 40, 0), np.tile(Q, (50, 1))], 1).astype(np.float32)
    assert ranker.predict_logits(X).min() < -89  # the range the old form overflowed in
    assert np.isfinite(ranker.losses).all()
    from scipy.special import expit

    linear = recfuse.MLPRanker(hidden=())  # logit = x: the bias gradient is mean(sigmoid - y)
    linear.weights, linear.biases = [np.ones((1, 1), np.float32)], [np.zeros(1, np.float32)]
    logits = np.array([-1000, -89, -10, 0, 10, 89, 1000], np.float32)
    _, grads = linear._loss_and_gradients(logits[:, None], np.zeros(7, np.float32))
    np.testing.assert_allclose(grads[-1], [expit(logits.astype(np.float64)).mean()], rtol=1e-6)


def test_ranker_learns_and_exports():
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    users, items, dim = 200, 150, 8
    P, Q = rng.standard_normal((users, dim)), rng.standard_normal((items, dim))
    affinity = P @ Q.T
    seen = sp.csr_matrix((affinity > np.quantile(affinity, 0.9)).astype(np.float32))
    ranker = recfuse.MLPRanker(hidden=(32,), epochs=8, learning_rate=3e-3, random_state=0)
    ranker.fit(seen, P, Q)
    assert ranker.losses[-1] < 0.7 * ranker.losses[0]
    scorer = ranker.to_scorer(backend="numpy")
    ids = np.arange(items)
    scores = scorer.score_candidates(P[:20].astype(np.float32), np.tile(ids, (20, 1)), Q)
    logits = ranker.predict_logits(np.concatenate([np.repeat(P[:20], items, 0), np.tile(Q, (20, 1))], 1))
    np.testing.assert_allclose(scores.ravel(), 1 / (1 + np.exp(-logits)), atol=1e-5)
    # Seen items rank above the rest more often than not (training AUC; an MLP learns a
    # dot product of its inputs only slowly).
    positive = scores[seen[:20].toarray() > 0]
    negative = scores[seen[:20].toarray() == 0]
    assert (positive[:, None] > negative[None, :]).mean() > 0.65  # chance: 0.5
    with pytest.raises(ValueError, match="must have 200 rows"):
        recfuse.MLPRanker().fit(seen, P[:10], Q)
    with pytest.raises(TypeError, match="user_factors must be a 2-d array, got None"):
        recfuse.MLPRanker().fit(seen, recfuse.ALS().user_factors, Q)  # a model not fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        recfuse.MLPRanker().to_scorer()


def test_ranker_repr_shows_its_settings_and_fitted_layers():
    # every other public object has one (MLPScorer's shows its widths); the ranker printed
    # as <recfuse.ranker.MLPRanker object at 0x...>
    import scipy.sparse as sp

    ranker = recfuse.MLPRanker(hidden=(8, 4), epochs=1, learning_rate=1e-2, random_state=0)
    assert repr(ranker) == ("MLPRanker(hidden=(8, 4), activation='relu', negatives=4, "
                            "epochs=1, batch_size=1024, learning_rate=0.01, l2=0.0)")
    # get_params, as the factor models have: the settings of an unfitted twin
    twin = recfuse.MLPRanker(**ranker.get_params())
    assert repr(twin) == repr(ranker) and twin.get_params() == ranker.get_params()
    assert ranker.get_params()["random_state"] == 0 and type(
        recfuse.MLPRanker(random_state=np.int64(3)).get_params()["random_state"]) is int
    rng = np.random.default_rng(0)
    seen = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    ranker.fit(seen, rng.standard_normal((30, 3)), rng.standard_normal((20, 3)))
    assert repr(ranker).endswith("l2=0.0, fitted: 6 -> 8 -> 4 -> 1)")
    # PreparedItems printed its whole table and the scorer's packed model, as a tuple does
    prepared = ranker.to_scorer(backend="numpy").prepare_items(
        rng.standard_normal((20, 3)).astype(np.float32), item_column=3)
    assert repr(prepared) == "PreparedItems(20 items, item_column=3, columns=3)"


def test_ranker_fits_interactions_as_the_models_do():
    # every factor model's fit takes a recfuse.Interactions (its matrix); the ranker that
    # trains on the same data refused it ("must be a scipy.sparse CSR matrix")
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    seen = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    P, Q = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
    from_matrix = recfuse.MLPRanker(hidden=(4,), epochs=2, random_state=0).fit(seen, P, Q)
    from_log = recfuse.MLPRanker(hidden=(4,), epochs=2, random_state=0).fit(
        recfuse.Interactions.from_matrix(seen), P, Q)
    assert from_log.losses == from_matrix.losses
    for mine, theirs in zip(from_log.weights, from_matrix.weights):
        np.testing.assert_array_equal(mine, theirs)


def test_ranker_negatives_are_items_the_user_has_not_seen(monkeypatch):
    """One-hot factors name each training row's (user, item): every negative is unseen, and a
    user who has seen every item trains on positives only."""
    import scipy.sparse as sp

    users, items = 12, 9
    dense = sp.random(users, items, density=0.5, random_state=1).toarray() > 0
    dense[3] = True  # user 3 has seen everything
    dense[5] = False
    dense[5, 0] = True  # user 5: one item
    seen = sp.csr_matrix(dense.astype(np.float32))
    batches = []
    original = recfuse.MLPRanker._loss_and_gradients

    def recording(self, X, y):
        batches.append((X.copy(), y.copy()))
        return original(self, X, y)

    monkeypatch.setattr(recfuse.MLPRanker, "_loss_and_gradients", recording)
    recfuse.MLPRanker(hidden=(4,), epochs=3, negatives=4, batch_size=25,
                      random_state=0).fit(seen, np.eye(users), np.eye(items))
    X = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    u, i = X[:, :users].argmax(1), X[:, users:].argmax(1)
    assert dense[u[y == 1], i[y == 1]].all() and (y == 1).sum() == 3 * seen.nnz
    assert not dense[u[y == 0], i[y == 0]].any()  # no seen item among the negatives
    assert (y == 0).sum() > 0.95 * 4 * 3 * (seen.nnz - users)  # few dropped (user 3's)
    assert not ((u == 3) & (y == 0)).any()
    assert ((u == 5) & (y == 0)).sum() == 3 * 4  # every draw redrawn until unseen


def test_ranker_fit_that_fails_keeps_the_trained_ranker(monkeypatch):
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    seen = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    P, Q = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    ranker = recfuse.MLPRanker(hidden=(8,), epochs=3, batch_size=40, random_state=0)
    ranker.fit(seen, P, Q)
    weights, biases, losses = ([w.copy() for w in ranker.weights],
                               [b.copy() for b in ranker.biases], list(ranker.losses))

    def unchanged():
        assert all(np.array_equal(a, b) for a, b in zip(weights, ranker.weights))
        assert all(np.array_equal(a, b) for a, b in zip(biases, ranker.biases))
        assert ranker.losses == losses

    # bad input found after the checks of the factors
    with pytest.raises(ValueError, match="no stored entries"):
        ranker.fit(sp.csr_matrix((30, 20), dtype=np.float32), P, Q)
    unchanged()
    # interrupted part-way (Ctrl-C during the second step)
    adam, steps = recfuse.MLPRanker._adam, []

    def interrupted(self, *arguments):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return adam(self, *arguments)

    monkeypatch.setattr(recfuse.MLPRanker, "_adam", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ranker.fit(seen, P * 2, Q)
    monkeypatch.setattr(recfuse.MLPRanker, "_adam", adam)
    unchanged()
    # stopped by its callback after the first epoch
    def stop(epoch, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ranker.fit(seen, P * 2, Q, callback=stop)
    unchanged()
    with pytest.raises(TypeError, match="callback must be callable"):
        ranker.fit(seen, P, Q, callback=1)
    with pytest.raises(TypeError, match="show_progress"):
        ranker.fit(seen, P, Q, show_progress="no")
    unchanged()
    # a fit that diverges raises instead of keeping NaN weights
    diverging = recfuse.MLPRanker(hidden=(8,), epochs=3, learning_rate=1e30, random_state=0)
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="diverged"):
        diverging.fit(seen, P * 1e30, Q * 1e30)
    assert diverging.weights == [] and diverging.losses == []
    unchanged()
    assert ranker.to_scorer(backend="numpy").input_width == 8


def test_ranker_fit_reports_progress_and_each_epochs_loss(capsys):
    import scipy.sparse as sp

    rng = np.random.default_rng(4)
    seen = sp.random(40, 25, density=0.2, format="csr", random_state=1, dtype=np.float32)
    P, Q = rng.standard_normal((40, 4)), rng.standard_normal((25, 4))
    options = dict(hidden=(6,), epochs=3, batch_size=25, random_state=0)
    quiet = recfuse.MLPRanker(**options).fit(seen, P, Q)
    assert capsys.readouterr().err == ""
    reported = []
    shown = recfuse.MLPRanker(**options).fit(seen, P, Q, show_progress=True,
                                             callback=lambda e, loss: reported.append((e, loss)))
    batches = 3 * -(-seen.nnz // (25 // 5))  # positives per batch: batch_size / (1 + 4)
    assert f"{batches}/{batches}" in capsys.readouterr().err
    assert reported == list(enumerate(shown.losses)) and len(reported) == 3
    # neither changes the training
    assert shown.losses == quiet.losses
    assert all(np.array_equal(a, b) for a, b in zip(shown.weights, quiet.weights))


def test_ranker_fit_refuses_sizes_beyond_memory():
    """Widths or negatives far beyond memory are a MemoryError naming them, before any
    allocation (an allocation that fits the address space is one the system kills the
    process for), and leave a fitted ranker as it was."""
    import scipy.sparse as sp

    from recfuse._validation import physical_memory

    if physical_memory() is None:
        pytest.skip("this system does not say how much memory it has")
    rng = np.random.default_rng(3)
    seen = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    P, Q = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    ranker = recfuse.MLPRanker(hidden=(8,), epochs=1, random_state=0).fit(seen, P, Q)
    weights = [w.copy() for w in ranker.weights]
    for options, match in [(dict(hidden=(2**40,)), "weights of hidden"),
                           (dict(hidden=(2**20, 2**20, 2**20)), "weights of hidden"),
                           (dict(negatives=2**40), "1 \\+ negatives"),
                           (dict(negatives=2**62), "1 \\+ negatives")]:
        with pytest.raises(MemoryError, match=match):
            recfuse.MLPRanker(**options).fit(seen, P, Q)
        for name, value in options.items():
            setattr(ranker, name, value)
        with pytest.raises(MemoryError, match=match):
            ranker.fit(seen, P, Q)
        ranker.hidden, ranker.negatives = (8,), 4
        assert all(np.array_equal(a, b) for a, b in zip(weights, ranker.weights))
    # a batch_size beyond the positives is only as large as they are
    recfuse.MLPRanker(hidden=(8,), epochs=1, batch_size=2**62).fit(seen, P, Q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_item_rows_score_nan_and_are_never_ranked(backend):
    rng = np.random.default_rng(4)
    layers = random_layers(rng, [8, 16, 1], ["relu", "sigmoid"])
    model = scorer(layers, backend)
    items = rng.standard_normal((6, 4)).astype(np.float32)
    items[2, 1] = np.nan
    user = rng.standard_normal(4).astype(np.float32)
    ids = np.array([0, 2, 5, 2])
    scores = model.score_candidates(user, ids, items)
    assert np.isnan(scores[[1, 3]]).all() and np.isfinite(scores[[0, 2]]).all()
    top, values = model.rank(user, ids, items, k=4)
    assert set(top[:2]) == {0, 5} and (top[2:] == -1).all() and np.isneginf(values[2:]).all()
    with pytest.raises(ValueError, match="item_table must be finite"):
        model.prepare_items(items, item_column=4)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_item_rows_follow_ieee_without_warnings(backend, precision):
    """Item rows holding inf, or values whose products overflow, score what IEEE arithmetic
    makes of them on every backend, silently (warnings are errors here): the numpy backend
    warned on overflow and inf * 0, and bfloat16 ranking (numba, numpy) on inf - inf when
    two candidates scored +inf."""
    W = np.array([[1.0, 2.0]], np.float32)  # score = 1 + 2 * item: 2 * 3e38 overflows
    steep = [(W, None, "identity"), (np.ones((1, 1), np.float32), None, "identity"),
             (np.ones((1, 1), np.float32), None, "identity")]
    model = scorer(steep, backend, precision)
    items = np.array([[np.inf], [1.0], [2.0], [np.inf], [3e38], [-np.inf]], np.float32)
    user = np.ones(1, np.float32)
    ids = np.arange(6)
    scores = model.score_candidates(user, ids, items)
    np.testing.assert_array_equal(scores, [np.inf, 3, 5, np.inf, np.inf, -np.inf])
    top, values = model.rank(user, ids, items, k=5)
    np.testing.assert_array_equal(top, [0, 3, 4, 2, 1])
    np.testing.assert_array_equal(values, [np.inf, np.inf, np.inf, 5, 3])
    rng = np.random.default_rng(15)
    layers = random_layers(rng, [4, 8, 6, 1], ["gelu", "relu", "sigmoid"])
    model = scorer(layers, backend, precision)
    items = rng.standard_normal((5, 2)).astype(np.float32)
    items[1, 0], items[3] = np.inf, 3e38  # inf * 0 (NaN) and overflow in the first layer
    model.rank(np.ones(2, np.float32), ids[:5], items, k=5)


def test_bfloat16_rank_pass_keeps_rows_apart():
    """The cpu rank's first pass multiplies column pairs in bfloat16: a NaN item value left
    in a thread's buffer by one call must not reach the rows of a later call whose column
    count is odd, and NaN rows are never ranked."""
    ok, why = _bf16_on_cpu()
    if not ok:
        pytest.skip(f"bfloat16 on the cpu backend: {why}")
    rng = np.random.default_rng(6)
    wide = MLPScorer(random_layers(rng, [8, 40, 16, 1], ["relu", "relu", "sigmoid"]),
                     precision="bfloat16", backend="cpu")
    odd = MLPScorer(random_layers(rng, [7, 40, 16, 1], ["relu", "relu", "sigmoid"]),
                    precision="bfloat16", backend="cpu")
    items = rng.standard_normal((50, 6)).astype(np.float32)
    items[:, 5] = np.nan  # column 5 of every gathered row: the pad column of the odd call
    user = rng.standard_normal(2).astype(np.float32)
    ids = rng.integers(0, 50, 200)
    top, values = wide.rank(user, ids, items, k=5, num_threads=1)
    assert (top == -1).all() and np.isneginf(values).all()
    clean = np.ascontiguousarray(items[:, :5])
    top, values = odd.rank(user, ids, clean, k=5, num_threads=1)
    want, want_values = MLPScorer(odd.layers, backend="cpu").rank(user, ids, clean, k=5)
    np.testing.assert_array_equal(top, want)
    np.testing.assert_array_equal(values, want_values)


def test_save_and_load_give_the_same_scorer(tmp_path):
    from recfuse.ranking import load_scorer

    rng = np.random.default_rng(8)
    layers = [(rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(5), "gelu"),
              (rng.standard_normal((3, 5)).astype(np.float32), None, "tanh"),
              (rng.standard_normal((1, 3)).astype(np.float32), np.zeros(1), "sigmoid")]
    scorer = MLPScorer(layers)
    path = tmp_path / "ranker.npz"
    scorer.save(path)
    loaded = recfuse.load(path)
    assert isinstance(loaded, MLPScorer) and loaded.precision == "float32"
    for (W, b, a), (W2, b2, a2) in zip(scorer.layers, loaded.layers):
        np.testing.assert_array_equal(W, W2)
        assert a == a2 and (b is None) == (b2 is None)
        if b is not None:
            np.testing.assert_array_equal(b, b2)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.score(X), scorer.score(X))
    assert load_scorer(path, backend="numpy").backend == "numpy"
    # foreign, truncated and factor-model files are refused with the file named
    als_path = tmp_path / "als.npz"
    recfuse.ALS(factors=2, iterations=1).fit(
        __import__("scipy.sparse").sparse.eye(4, format="csr", dtype=np.float32)).save(als_path)
    with pytest.raises(ValueError, match="not a ranker"):
        load_scorer(als_path)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable recfuse model"):
        load_scorer(truncated)
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path / "missing.npz")


@settings(max_examples=examples(60), deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=8), k=st.integers(1, 12),
       noise=st.sampled_from([0.0, 1e-3, 0.5]), seed=st.integers(0, 2**32 - 1))
def test_batched_rescoring_is_the_reference_rule(lengths, k, noise, seed):
    """common.rank_candidates (every user's band in one float32 call per round) returns what
    reference.mlp_rank_rescored (one call per user and band) does: ties, repeated ids,
    -inf and NaN rough scores, empty users, and bands that must double (large noise)."""
    from recfuse._mlp import Candidates, common

    rng = np.random.default_rng(seed)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(indptr[-1])
    ids = rng.integers(0, 25, total).astype(np.int64)  # repeats on purpose
    exact = np.round(rng.standard_normal(total), 1).astype(np.float32)  # ties on purpose
    exact[rng.random(total) < 0.05] = -np.inf
    rough = (exact + noise * rng.standard_normal(total)).astype(np.float32)
    rough[rng.random(total) < 0.05] = -np.inf
    rough[rng.random(total) < 0.02] = np.nan
    call = Candidates(indptr=indptr, ids=ids, items=25, user_blocks=[np.zeros((len(lengths), 1),
                      np.float32)], item_blocks=[], candidate_block=exact[:, None],
                      item_part=None, item_part_columns=0)
    calls = []

    def score_float32(sub):
        calls.append(sub.indptr.size - 1)
        return sub.candidate_block[:, 0]

    got_ids, got_scores = common.rank_candidates(call, rough, k, "bfloat16", score_float32)
    want_ids, want_scores = reference.mlp_rank_rescored(indptr, ids, rough,
                                                        lambda rows: exact[rows], k)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_scores, want_scores.astype(np.float32))
    assert len(calls) <= 1 + math.ceil(math.log2(max(total, 1)))  # rounds, not users


def test_reference_rescored_rank_takes_infinite_scores_silently():
    """The reference's bfloat16 ranking rule with two candidates at +inf: their gap is
    inf - inf, a NaN to drop (it warned, an error where warnings are), and the tie goes to
    the smaller id."""
    n = 2 * reference.MLP_RESCORE_MIN_BAND  # more than the first band
    rough = np.r_[np.inf, np.inf, np.arange(n - 2.0)]
    ids, scores = reference.mlp_rank_rescored(np.array([0, n]), np.r_[6, 5, 10 + np.arange(n - 2)],
                                              rough, lambda positions: rough[positions], 3)
    np.testing.assert_array_equal(ids, [[5, 6, 10 + n - 3]])
    np.testing.assert_array_equal(scores, [[np.inf, np.inf, n - 3.0]])


def test_ranker_overflow_message_names_the_dtype():
    import scipy.sparse as sp

    from recfuse.ranker import MLPRanker

    seen = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    users = np.ones((30, 4))
    users[0, 0] = 1e300  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"NaN/inf as float32 \(values beyond its range"):
        MLPRanker(epochs=1).fit(seen, users, np.ones((20, 4)))

"""recfuse.compat.implicit against implicit 0.7 itself: same data, same starting factors,
same answers."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import scipy.sparse as sp

implicit = pytest.importorskip(
    "implicit", minversion="0.7",
    reason="implicit (0.7) is not installed: these tests compare the adapter with it",
)
from implicit.cpu.als import AlternatingLeastSquares as ImplicitALS  # noqa: E402
from implicit.cpu.topk import topk as implicit_topk  # noqa: E402

import recfuse  # noqa: E402
from recfuse.compat import implicit as compat  # noqa: E402
from recfuse.compat.implicit import AlternatingLeastSquares  # noqa: E402
from recfuse.datasets import synthetic_implicit  # noqa: E402

# implicit warns once per process about multi-threaded BLAS; that is its advice, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore:.*(OpenBLAS|MKL|BLAS library).*:RuntimeWarning")

N_USERS, N_ITEMS, K = 70, 50, 6
SETTINGS = dict(factors=K, regularization=0.05, alpha=2.0, iterations=6, num_threads=1)

# Largest factor difference relative to the largest factor, after 6 iterations from the same
# well-scaled start (N(0, 0.3²) entries, see `starting_factors`), on the liked-only and the
# partly disliked matrix. Bounds keep a margin of >= 15x over what this machine shows, for
# other SIMD levels and BLAS builds.
#  * Cholesky: both solve the same SPD systems exactly; what differs is float32 rounding in
#    forming YᵀY + Yᵀ(C−I)Y and in the factorisation (recfuse's SIMD kernels vs implicit's
#    BLAS calls), a few ulps scaled by the systems' conditioning and carried through the
#    sweeps: observed <= 5e-6, bound 2e-4.
#  * CG: 3 unconverged steps per row and sweep. The same rounding differences change the
#    Krylov iterates, and the unconverged result is the next sweep's start, so they add up
#    over the iterations: observed <= 6e-5, bound 1e-3. That is still 50x below the
#    difference between a CG and a Cholesky fit of the same data (checked below), and
#    `test_implicits_own_initialisation_fit_cg` covers the badly conditioned start.
#  * float64: the same arguments with 2^-52 rounding: observed 1e-14 (Cholesky) and 2e-9
#    (CG; implicit's native float64 CG itself differs from its Python CG by ~1e-8), bounds
#    1e-10 and 1e-7.
TOLERANCE = {
    (np.float32, False): 2e-4,
    (np.float32, True): 1e-3,
    (np.float64, False): 1e-10,
    (np.float64, True): 1e-7,
}


def relative_difference(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def starting_factors(dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((N_USERS, K)) * 0.3).astype(dtype)
    Y = (rng.standard_normal((N_ITEMS, K)) * 0.3).astype(dtype)
    return X, Y


@pytest.fixture(scope="module")
def matrix():
    return synthetic_implicit(N_USERS, N_ITEMS, 700, seed=11)  # float32 counts >= 1


@pytest.fixture(scope="module")
def disliked(matrix):
    """implicit's convention: a negative value is a dislike with confidence |value|."""
    m = matrix.copy()
    m.data[::4] *= -1
    return m


def cpu_model(cls, **kwargs):
    """Our model pinned to the CPU (where the tolerances below were measured), or implicit's
    CPU model."""
    if cls is AlternatingLeastSquares:
        kwargs.setdefault("use_gpu", False)
    return cls(**kwargs)


def fit_pair(matrix, *, use_cg, dtype=np.float32, seed=0, use_gpu=False, **overrides):
    """Our model and implicit's (CPU), fitted on the same matrix from the same factors."""
    settings = dict(SETTINGS, use_cg=use_cg, dtype=dtype, **overrides)
    X, Y = starting_factors(dtype, seed)
    ours = AlternatingLeastSquares(use_gpu=use_gpu, **settings)
    theirs = ImplicitALS(**settings)
    for model in (ours, theirs):
        model.user_factors, model.item_factors = X.copy(), Y.copy()
        model.fit(matrix, show_progress=False)
    return ours, theirs


@pytest.fixture(scope="module")
def pair(matrix):
    """A fitted implicit model and ours holding exactly its factors (retrieval tests)."""
    _, theirs = fit_pair(matrix, use_cg=False)
    ours = AlternatingLeastSquares(use_gpu=False, **dict(SETTINGS, use_cg=False))
    ours.user_factors = theirs.user_factors.copy()
    ours.item_factors = theirs.item_factors.copy()
    return ours, theirs


def assert_same_results(ours, theirs, *, atol=0.0, rtol=1e-6):
    """(ids, scores) agree: same shapes and dtypes, close scores, and the same ids wherever
    the score is not tied (within the tolerance) with another score of the row. Tied groups
    must hold the same ids unless the group reaches the end of the row (then the ids beyond
    the row decide which of the tied items are in it)."""
    ids_a, scores_a = ours
    ids_b, scores_b = theirs
    assert ids_a.shape == ids_b.shape and scores_a.shape == scores_b.shape
    assert ids_a.dtype == ids_b.dtype and scores_a.dtype == scores_b.dtype
    np.testing.assert_allclose(scores_a, scores_b, rtol=rtol, atol=atol)
    ids_a, ids_b = np.atleast_2d(ids_a), np.atleast_2d(ids_b)
    scores_b = np.atleast_2d(scores_b).astype(np.float64)
    width = 2 * atol + 2 * rtol * np.abs(scores_b)
    for row in range(ids_b.shape[0]):
        start = 0
        n = ids_b.shape[1]
        while start < n:
            end = start + 1
            while end < n and abs(scores_b[row, end] - scores_b[row, end - 1]) <= width[row, end]:
                end += 1
            if end - start == 1:
                assert ids_a[row, start] == ids_b[row, start], (row, start)
            elif end < n:
                assert sorted(ids_a[row, start:end]) == sorted(ids_b[row, start:end]), (row, start)
            start = end


# ---------------------------------------------------------------------------- fitting
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("use_cg", [False, True], ids=["cholesky", "cg"])
def test_factors_agree_with_implicit(matrix, use_cg, dtype):
    ours, theirs = fit_pair(matrix, use_cg=use_cg, dtype=dtype)
    assert ours.user_factors.dtype == theirs.user_factors.dtype == np.dtype(dtype)
    tolerance = TOLERANCE[dtype, use_cg]
    assert relative_difference(ours.user_factors, theirs.user_factors) < tolerance
    assert relative_difference(ours.item_factors, theirs.item_factors) < tolerance


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("use_cg", [False, True], ids=["cholesky", "cg"])
def test_disliked_items_give_implicits_factors(disliked, use_cg, dtype):
    ours, theirs = fit_pair(disliked, use_cg=use_cg, dtype=dtype)
    tolerance = TOLERANCE[dtype, use_cg]
    assert relative_difference(ours.user_factors, theirs.user_factors) < tolerance
    assert relative_difference(ours.item_factors, theirs.item_factors) < tolerance
    # and the dislikes matter: the same magnitudes as likes give other factors
    liked, _ = fit_pair(abs(disliked), use_cg=use_cg, dtype=dtype)
    assert relative_difference(liked.user_factors, theirs.user_factors) > 100 * tolerance


@pytest.mark.parametrize("use_cg", [False, True], ids=["cholesky", "cg"])
def test_users_and_items_without_entries_get_zero_factors(matrix, use_cg):
    """implicit's solvers set the factors of a row without stored entries to zero in every
    sweep (so such an item scores 0 and is similar to nothing). With Cholesky the rest still
    agrees within the usual bound; with CG implicit zeroes the item in every sweep and the
    adapter after the fit (see the module docstring), so there only the zeros are compared."""
    holes = matrix.tolil()
    holes[3, :] = 0
    holes[:, 8] = 0
    holes = holes.tocsr()
    holes.eliminate_zeros()
    ours, theirs = fit_pair(holes, use_cg=use_cg)
    for model in (ours, theirs):
        assert not model.user_factors[3].any() and not model.item_factors[8].any()
    if not use_cg:
        tolerance = TOLERANCE[np.float32, False]
        assert relative_difference(ours.user_factors, theirs.user_factors) < tolerance
        assert relative_difference(ours.item_factors, theirs.item_factors) < tolerance
    drawn = AlternatingLeastSquares(**dict(SETTINGS, use_cg=use_cg), use_gpu=False, random_state=3)
    drawn.fit(holes, show_progress=False)
    assert not drawn.user_factors[3].any() and not drawn.item_factors[8].any()
    # without iterations implicit keeps the starting factors, those rows included
    ours, theirs = fit_pair(holes, use_cg=use_cg, iterations=0)
    np.testing.assert_array_equal(ours.user_factors, theirs.user_factors)
    np.testing.assert_array_equal(ours.item_factors, theirs.item_factors)


@pytest.mark.gpu
@pytest.mark.skipif(not compat.HAS_CUDA, reason="recfuse's cuda backend is not available")
@pytest.mark.parametrize("use_cg", [False, True], ids=["cholesky", "cg"])
def test_cuda_backend_factors_agree_with_implicit(matrix, disliked, use_cg):
    """use_gpu=True fits with recfuse's cuda backend; implicit's CPU model is the reference
    (the same systems, so the CPU bounds apply)."""
    for data in (matrix, disliked):
        ours, theirs = fit_pair(data, use_cg=use_cg, use_gpu=True)
        tolerance = TOLERANCE[np.float32, use_cg]
        assert relative_difference(ours.user_factors, theirs.user_factors) < tolerance
        assert relative_difference(ours.item_factors, theirs.item_factors) < tolerance


def test_integer_matrix_and_alpha_one(matrix):
    counts = matrix.astype(np.int64)  # implicit casts to float32 before scaling; so does fit
    ours, theirs = fit_pair(counts, use_cg=False, alpha=1.0)
    assert relative_difference(ours.user_factors, theirs.user_factors) < TOLERANCE[np.float32, False]


def test_use_native_false_is_the_reference_backend(matrix):
    """use_native=False: recfuse's NumPy reference kernels (implicit: its Python solvers)."""
    native, theirs = fit_pair(matrix, use_cg=False, iterations=2)
    reference, _ = fit_pair(matrix, use_cg=False, iterations=2, use_native=False)
    assert reference._backend_name() == "numpy"
    assert relative_difference(reference.user_factors, theirs.user_factors) < TOLERANCE[np.float32, False]
    assert relative_difference(reference.user_factors, native.user_factors) < TOLERANCE[np.float32, False]


def test_the_tolerances_separate_solvers(matrix):
    cg, _ = fit_pair(matrix, use_cg=True)
    cholesky, _ = fit_pair(matrix, use_cg=False)
    assert relative_difference(cg.user_factors, cholesky.user_factors) > 50 * TOLERANCE[np.float32, True]


def test_implicits_own_initialisation_fit_cg(matrix):
    """From implicit's own initialisation the bounds above do not hold, for either library:
    uniform [0, 0.01) factors all point near the same direction, so after the first sweep the
    factors are nearly rank one and the systems of the second sweep are badly conditioned;
    3 float32 CG steps on them turn ulp-level differences into percent-level ones. In this
    setting recfuse's native and NumPy backends differ from each other by ~3e-2, implicit's
    native and Python solvers by ~5e-3, and the adapter from implicit by ~2e-2 (6e-2 for
    other seeds). The bounds are therefore 0.1 on the factors and 1% on the training loss
    (observed 2e-3), the quantity CG is meant to get right."""
    losses = {}
    models = {}
    for name, cls in (("ours", AlternatingLeastSquares), ("implicit", ImplicitALS)):
        record = []
        model = cpu_model(cls, random_state=3, calculate_training_loss=True, use_cg=True,
                          **SETTINGS)
        model.fit(matrix, show_progress=False, callback=lambda i, t, loss: record.append(loss))
        losses[name], models[name] = np.array(record), model
    assert relative_difference(models["ours"].user_factors, models["implicit"].user_factors) < 0.1
    np.testing.assert_allclose(losses["ours"], losses["implicit"], rtol=1e-2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("seed", [0, 12345])
def test_initial_factors_are_implicits(matrix, dtype, seed):
    ours = AlternatingLeastSquares(factors=K, iterations=0, dtype=dtype, random_state=seed)
    theirs = ImplicitALS(factors=K, iterations=0, dtype=dtype, random_state=seed)
    ours.fit(matrix, show_progress=False)
    theirs.fit(matrix, show_progress=False)
    assert ours.user_factors.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ours.user_factors, theirs.user_factors)
    np.testing.assert_array_equal(ours.item_factors, theirs.item_factors)


def test_generator_state_advances_like_implicits(matrix):
    ours = AlternatingLeastSquares(factors=K, iterations=0, random_state=np.random.default_rng(5))
    theirs = ImplicitALS(factors=K, iterations=0, random_state=np.random.default_rng(5))
    for _ in range(2):  # the second fit draws new factors from the advanced generator
        for model in (ours, theirs):
            model.user_factors = model.item_factors = None
            model.fit(matrix, show_progress=False)
        np.testing.assert_array_equal(ours.user_factors, theirs.user_factors)
        np.testing.assert_array_equal(ours.item_factors, theirs.item_factors)


def test_a_refused_fit_leaves_the_generator_where_it_was(matrix):
    """The user table is drawn before the set item table's shape is checked: the refusal
    must put the caller's Generator back, so that the next fit draws what it would have."""
    generator = np.random.default_rng(5)
    model = AlternatingLeastSquares(factors=K, iterations=0, random_state=generator)
    model.item_factors = np.zeros((N_ITEMS + 1, K), dtype=np.float32)
    before = generator.bit_generator.state
    with pytest.raises(ValueError, match="item_factors was set with"):
        model.fit(matrix, show_progress=False)
    assert generator.bit_generator.state == before
    model.item_factors = None
    model.fit(matrix, show_progress=False)
    fresh = AlternatingLeastSquares(factors=K, iterations=0, random_state=np.random.default_rng(5))
    fresh.fit(matrix, show_progress=False)
    np.testing.assert_array_equal(model.user_factors, fresh.user_factors)
    np.testing.assert_array_equal(model.item_factors, fresh.item_factors)


def test_set_factors_are_kept_and_the_other_side_drawn(matrix):
    X, _ = starting_factors(np.float32)
    ours = AlternatingLeastSquares(factors=K, iterations=0, random_state=9)
    theirs = ImplicitALS(factors=K, iterations=0, random_state=9)
    for model in (ours, theirs):
        model.user_factors = X.copy()
        model.fit(matrix, show_progress=False)
    np.testing.assert_array_equal(ours.user_factors, X)
    # implicit draws the item factors first from the generator when the users are set
    np.testing.assert_array_equal(ours.item_factors, theirs.item_factors)


def test_random_state_as_randomstate(matrix):
    """implicit 0.7.3's check_random_state calls RandomState.rand_int, which does not exist,
    so implicit fails; the adapter seeds with RandomState.randint(2**31) as intended."""
    ours = AlternatingLeastSquares(factors=K, iterations=0, random_state=np.random.RandomState(4))
    ours.fit(matrix, show_progress=False)
    expected = np.random.default_rng(np.random.RandomState(4).randint(2**31))
    np.testing.assert_array_equal(
        ours.user_factors, expected.random((N_USERS, K), dtype=np.float32) * 0.01)
    theirs = ImplicitALS(factors=K, iterations=0, random_state=np.random.RandomState(4))
    try:
        theirs.fit(matrix, show_progress=False)
    except AttributeError as error:
        assert "rand_int" in str(error)
    else:  # a fixed implicit: then both must agree
        np.testing.assert_array_equal(ours.user_factors, theirs.user_factors)


def test_callback_like_implicits(matrix):
    calls = []
    model = cpu_model(AlternatingLeastSquares, **SETTINGS)
    model.fit(matrix, show_progress=False, callback=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == list(range(SETTINGS["iterations"]))
    assert all(isinstance(c[1], float) and c[1] >= 0 and c[2] is None for c in calls)
    # fit_callback is used when no callback is passed (implicit's older API)
    model.fit_callback = lambda *args: calls.append(args)
    model.fit(matrix, show_progress=False)
    assert len(calls) == 2 * SETTINGS["iterations"]


@pytest.mark.parametrize("which", ["liked", "disliked"])
def test_training_loss_is_implicits(matrix, disliked, which):
    """implicit 0.7.3 adds c for every stored entry where the exact loss has c·p², so a
    disliked entry contributes |r| more than in recfuse.reference.als_loss; the adapter
    reports implicit's number. (With Cholesky the factors agree to ~1e-4: so do the losses.)"""
    data = matrix if which == "liked" else disliked
    losses = {}
    X, Y = starting_factors(np.float32)
    for name, cls in (("ours", AlternatingLeastSquares), ("implicit", ImplicitALS)):
        record = []
        model = cpu_model(cls, calculate_training_loss=True, use_cg=False, **SETTINGS)
        model.user_factors, model.item_factors = X.copy(), Y.copy()
        model.fit(data, show_progress=False, callback=lambda i, t, loss: record.append(loss))
        losses[name] = record
    np.testing.assert_allclose(losses["ours"], losses["implicit"], rtol=1e-4)


# ---------------------------------------------------------------------------- recommend
USERS = np.arange(0, N_USERS, 3)
RECOMMEND_CASES = {
    "plain": dict(),
    "keep-liked": dict(filter_already_liked_items=False),
    "filter-items": dict(filter_items=[0, 3, 7, 11, 40]),
    "items": dict(items=[44, 2, 17, 5, 30, 9, 21, 13, 1, 38, 27, 8]),
    "items-keep-liked": dict(items=[44, 2, 17, 5, 30, 9], filter_already_liked_items=False),
    "recalculate": dict(recalculate_user=True),
    "N-beyond-items": dict(N=N_ITEMS + 7),
}


@pytest.mark.parametrize("case", list(RECOMMEND_CASES))
@pytest.mark.parametrize("batch", [False, True], ids=["scalar", "array"])
def test_recommend_same_factors(pair, matrix, case, batch):
    """With implicit's factors the results are implicit's: ids (ties included), scores,
    shapes and dtypes."""
    ours, theirs = pair
    kwargs = dict(RECOMMEND_CASES[case])
    userid = USERS if batch else 4
    rows = matrix[USERS] if batch else matrix[4]
    got = ours.recommend(userid, rows, **kwargs)
    expected = theirs.recommend(userid, rows, **kwargs)
    assert got[0].ndim == (2 if batch else 1)
    assert_same_results(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("case", ["plain", "keep-liked", "filter-items", "items"])
@pytest.mark.parametrize("batch", [False, True], ids=["scalar", "array"])
def test_recommend_independent_fits(matrix, case, batch):
    """Fitted separately (Cholesky): the top ids agree wherever the scores are not within
    the factors' difference of each other."""
    ours, theirs = fit_pair(matrix, use_cg=False)
    kwargs = dict(RECOMMEND_CASES[case], N=12)
    userid = USERS if batch else 10
    rows = matrix[USERS] if batch else matrix[10]
    got = ours.recommend(userid, rows, **kwargs)
    expected = theirs.recommend(userid, rows, **kwargs)
    scale = float(np.abs(expected[1][expected[1] > -1e30]).max())
    assert_same_results(got, expected, rtol=0, atol=1e-3 * scale)


def test_excluded_items_and_padding_like_implicit(pair, matrix):
    """implicit keeps excluded items in the results with score -FLT_MAX and pads past the
    candidates with id 0, score 0; the adapter returns the same."""
    ours, theirs = pair
    got = ours.recommend(4, matrix[4], N=N_ITEMS + 3, filter_items=[1, 2])
    expected = theirs.recommend(4, matrix[4], N=N_ITEMS + 3, filter_items=[1, 2])
    lowest = -np.finfo(np.float32).max
    excluded = matrix[4].indices.size + 2
    assert np.sum(got[1] == lowest) == excluded
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[0][N_ITEMS:], 0)
    np.testing.assert_array_equal(got[1][N_ITEMS:], 0)


def tied_model_pair(n_users=12, n_items=30):
    """Factors of 0s and 1s: many exactly equal scores, to compare the tie order."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, size=(n_users, 3)).astype(np.float32)
    Y = rng.integers(0, 2, size=(n_items, 3)).astype(np.float32)
    ours = AlternatingLeastSquares(factors=3, use_gpu=False)
    theirs = ImplicitALS(factors=3)
    for model in (ours, theirs):
        model.user_factors, model.item_factors = X.copy(), Y.copy()
    return ours, theirs


@pytest.mark.parametrize("N", [1, 4, 9, 30, 35])
def test_ties_come_out_in_implicits_order(N):
    ours, theirs = tied_model_pair()
    liked = sp.random(12, 30, density=0.2, format="csr", random_state=2, dtype=np.float32)
    users = np.arange(12)
    for kwargs in (dict(), dict(filter_items=[3, 4]), dict(items=[29, 0, 5, 6, 7, 11, 12, 20])):
        got = ours.recommend(users, liked, N=N, **kwargs)
        expected = theirs.recommend(users, liked, N=N, **kwargs)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    for kwargs in (dict(), dict(filter_items=[3]), dict(items=[29, 3, 5, 6, 1])):
        got = ours.similar_items(np.arange(30), N=N, **kwargs)
        with np.errstate(over="ignore"):  # implicit: -FLT_MAX / norm < 1 overflows to -inf
            expected = theirs.similar_items(np.arange(30), N=N, **kwargs)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


def test_selection_is_implicits_topk():
    """The heap selection against implicit's topk on score rows full of ties."""
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(40, 25)).astype(np.float32)
    for k in (1, 2, 5, 13, 25, 30):
        ids, best = implicit_topk(np.eye(25, dtype=np.float32), scores, k)
        got_ids, got_best = compat._heap_select(scores.copy(), k)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_best, best)


# ---------------------------------------------------------------------------- similar
SIMILAR_CASES = {
    "plain": dict(),
    "filter": dict(filter_items=[0, 5, 9]),
    "subset": dict(items=[30, 4, 12, 7, 44, 19, 2]),
    "N-beyond": dict(N=N_ITEMS + 2),
}


@pytest.mark.parametrize("case", list(SIMILAR_CASES))
@pytest.mark.parametrize("batch", [False, True], ids=["scalar", "array"])
def test_similar_items_same_factors(pair, case, batch):
    ours, theirs = pair
    kwargs = SIMILAR_CASES[case]
    itemid = np.arange(0, N_ITEMS, 4) if batch else 6
    got = ours.similar_items(itemid, **kwargs)
    expected = theirs.similar_items(itemid, **kwargs)
    assert_same_results(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [False, True], ids=["scalar", "array"])
def test_similar_items_recalculated(pair, matrix, batch):
    ours, theirs = pair
    item_users = matrix.T.tocsr()
    itemid = np.array([3, 8, 20]) if batch else 8
    rows = item_users[itemid] if batch else item_users[8]
    got = ours.similar_items(itemid, recalculate_item=True, item_users=rows)
    expected = theirs.similar_items(itemid, recalculate_item=True, item_users=rows)
    assert_same_results(got, expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("kwargs", [dict(), dict(filter_users=[0, 2, 9]),
                                    dict(users=[50, 2, 9, 33, 61, 5, 17]), dict(N=N_USERS + 1)],
                         ids=["plain", "filter", "subset", "N-beyond"])
@pytest.mark.parametrize("batch", [False, True], ids=["scalar", "array"])
def test_similar_users_same_factors(pair, kwargs, batch):
    ours, theirs = pair
    userid = np.arange(0, N_USERS, 7) if batch else 9
    got = ours.similar_users(userid, **kwargs)
    expected = theirs.similar_users(userid, **kwargs)
    assert_same_results(got, expected, rtol=1e-5, atol=1e-6)


def test_similar_independent_fits(matrix):
    ours, theirs = fit_pair(matrix, use_cg=False)
    for method in ("similar_items", "similar_users"):
        got = getattr(ours, method)(np.arange(0, 40, 5), N=8)
        expected = getattr(theirs, method)(np.arange(0, 40, 5), N=8)
        assert_same_results(got, expected, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------- partial fits
@pytest.mark.parametrize("use_cg", [False, True], ids=["cholesky", "cg"])
def test_recalculate_like_implicit(pair, matrix, use_cg):
    """implicit recalculates with an exact solve from zero whatever use_cg says."""
    ours, theirs = pair
    ours = ours.to_cpu()
    ours.use_cg = use_cg
    scale = np.abs(theirs.user_factors).max()
    np.testing.assert_allclose(ours.recalculate_user(5, matrix[5]),
                               theirs.recalculate_user(5, matrix[5]), atol=1e-4 * scale)
    users = np.array([1, 5, 60, 3])
    got = ours.recalculate_user(users, matrix[users])
    assert got.shape == (4, K)
    np.testing.assert_allclose(got, theirs.recalculate_user(users, matrix[users]),
                               atol=1e-4 * scale)
    item_users = matrix.T.tocsr()
    items = np.array([0, 7, 49])
    np.testing.assert_allclose(ours.recalculate_item(items, item_users[items]),
                               theirs.recalculate_item(items, item_users[items]),
                               atol=1e-4 * np.abs(theirs.item_factors).max())


def test_recalculate_user_does_not_depend_on_blas_threads():
    """The gram of recalculate_user / partial_fit_users came from NumPy's BLAS (``table.T @
    table``), whose sums OpenBLAS orders by its own thread count: the vectors changed in
    their last bits with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS. It is the native gram now."""
    from threadpoolctl import threadpool_limits

    data = synthetic_implicit(300, 1200, 6000, seed=2).astype(np.float32)
    model = AlternatingLeastSquares(factors=32, iterations=1, random_state=0)
    model.fit(data, show_progress=False)
    users = np.arange(40)
    solved = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            # a copy: its gram is not cached yet
            solved.append(model.to_cpu().recalculate_user(users, data[users]))
    np.testing.assert_array_equal(solved[0], solved[1])


def test_partial_fit_users_and_items_like_implicit(pair, matrix, disliked):
    ours, theirs = pair
    ours, theirs = ours.to_cpu(), ImplicitALS(**dict(SETTINGS, use_cg=False))
    theirs.user_factors = ours.user_factors.copy()
    theirs.item_factors = ours.item_factors.copy()
    # two known users (one with changed, partly disliked items) and two new ones, 73 > 70
    userids = np.array([2, 72, 10, 70])
    rows = sp.vstack([matrix[2], disliked[5], disliked[10], matrix[3]], format="csr")
    for model in (ours, theirs):
        model.partial_fit_users(userids, rows)
    assert ours.user_factors.shape == theirs.user_factors.shape == (73, K)
    np.testing.assert_array_equal(ours.user_factors[71], 0)
    scale = np.abs(theirs.user_factors).max()
    np.testing.assert_allclose(ours.user_factors, theirs.user_factors, atol=1e-4 * scale)

    # the training matrix from before the new users: fewer columns than users, as implicit allows
    item_users = matrix.T.tocsr()
    itemids = np.array([4, 51])
    for model in (ours, theirs):
        model.partial_fit_items(itemids, item_users[[4, 9]])
    assert ours.item_factors.shape == theirs.item_factors.shape == (52, K)
    np.testing.assert_allclose(ours.item_factors, theirs.item_factors,
                               atol=1e-4 * np.abs(theirs.item_factors).max())
    # and the grown model recommends like implicit's
    got = ours.recommend(72, disliked[5], N=8)
    expected = theirs.recommend(72, disliked[5], N=8)
    assert_same_results(got, expected, rtol=0, atol=1e-3 * float(np.abs(expected[1][:3]).max()))


# ---------------------------------------------------------------------------- explain
# Differences relative to the largest contribution, over every (user, item) pair of the
# liked-only, partly disliked and integer matrices with implicit's factors. implicit forms
# each (c − 1) y yᵀ in float32 and adds it in float64; the adapter forms them in float64:
# observed <= 2.6e-6 (float32 factors) and 2e-14 (float64), bounds 1e-4 and 1e-10. The
# order of the contributions was the same everywhere.
EXPLAIN_TOLERANCE = {np.float32: 1e-4, np.float64: 1e-10}


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["float32", "float64"])
def explain_pair(request, matrix):
    """A fitted implicit model of dtype request.param and ours holding exactly its factors."""
    dtype = request.param
    _, theirs = fit_pair(matrix, use_cg=False, dtype=dtype)
    ours = AlternatingLeastSquares(use_gpu=False, **dict(SETTINGS, use_cg=False, dtype=dtype))
    ours.user_factors = theirs.user_factors.copy()
    ours.item_factors = theirs.item_factors.copy()
    return ours, theirs, EXPLAIN_TOLERANCE[dtype]


def assert_same_explanation(got, expected, rtol, user_weights=True):
    total, top, weights = got
    total_b, top_b, weights_b = expected
    scale = max([abs(s) for _, s in top_b] + [1e-30])
    assert isinstance(total, float) and abs(total - total_b) <= rtol * scale
    assert isinstance(top, list) and [i for i, _ in top] == [i for i, _ in top_b]
    assert all(isinstance(i, np.integer) and isinstance(s, float) for i, s in top)
    np.testing.assert_allclose([s for _, s in top], [s for _, s in top_b], rtol=0,
                               atol=rtol * scale)
    if user_weights:  # cho_factor's (factor, lower): the factor's other triangle is A itself
        assert weights[1] == weights_b[1] and weights[0].shape == weights_b[0].shape
        np.testing.assert_allclose(weights[0], weights_b[0], rtol=0,
                                   atol=rtol * np.abs(weights_b[0]).max())


@pytest.mark.parametrize("N", [1, 3, 10, N_ITEMS + 5])
@pytest.mark.parametrize("which", ["liked", "disliked", "int64", "float64"])
def test_explain_like_implicit(explain_pair, matrix, disliked, which, N):
    """Liked, never seen and recommended items, N below and beyond the user's items; the
    disliked items (confidence < 0) shape the system but are not contributions. As in
    implicit, confidences keep the matrix's dtype (float64 for integers): not rounded to
    float32 as for fitting (the float64 case would show it)."""
    ours, theirs, rtol = explain_pair
    user_items = {"liked": matrix, "disliked": disliked, "int64": matrix.astype(np.int64),
                  "float64": disliked.astype(np.float64) / 3}[which]
    for userid in (0, 4, 33, 69):
        row = user_items[userid]
        unseen = np.setdiff1d(np.arange(N_ITEMS), row.indices)[:2]
        top_rec = theirs.recommend(userid, row, N=1)[0][0]
        for itemid in (row.indices[0], row.indices[-1], *unseen, top_rec):
            got = ours.explain(userid, user_items, itemid, N=N)
            expected = theirs.explain(userid, user_items, itemid, N=N)
            assert_same_explanation(got, expected, rtol)
            assert len(got[1]) == min(N, int((row.data >= 0).sum()))
            assert not {i for i, _ in got[1]} & set(row.indices[row.data < 0])


def test_explain_total_is_the_recalculated_score(explain_pair, disliked):
    """total_score is the item's score for the user recalculated from the same row."""
    ours, theirs, _ = explain_pair
    for userid in (2, 5, 40):
        row = disliked[userid]
        x = ours.recalculate_user(userid, row)
        ids, scores = theirs.recommend(userid, row, N=N_ITEMS, filter_already_liked_items=False,
                                       recalculate_user=True)
        for itemid, score in zip(ids[:4], scores[:4]):
            total, top, _ = ours.explain(userid, disliked, itemid, N=0)
            assert top == []
            np.testing.assert_allclose(total, x @ ours.item_factors[itemid], rtol=1e-4)
            np.testing.assert_allclose(total, score, rtol=1e-4)


def test_explain_user_weights_are_reused_and_interchangeable(explain_pair, disliked):
    ours, theirs, rtol = explain_pair
    userid = 7
    _, _, mine = ours.explain(userid, disliked, 3)
    _, _, implicits = theirs.explain(userid, disliked, 3)
    assert mine[0].dtype == implicits[0].dtype == np.float64
    for itemid in (3, 11, 48):
        expected = theirs.explain(userid, disliked, itemid, N=2)
        for weights in (mine, implicits, list(mine)):
            got = ours.explain(userid, disliked, itemid, user_weights=weights, N=2)
            assert got[2][0] is weights[0]  # returned as given, not recomputed
            assert_same_explanation(got, expected, rtol, user_weights=False)
        assert_same_explanation(theirs.explain(userid, disliked, itemid, user_weights=mine,
                                               N=2), expected, rtol)


def test_explain_users_without_items_or_outside_the_model(explain_pair, matrix):
    """Only user_items is read, not the user's factors: an empty row gives (0.0, []) and
    YᵀY + λI's factor, a row past the model's users is explained like any other."""
    ours, theirs, rtol = explain_pair
    user_items = sp.vstack([matrix, sp.csr_matrix((1, N_ITEMS)), matrix[9]], format="csr")
    for userid in (N_USERS, N_USERS + 1):
        got = ours.explain(userid, user_items, 5)
        expected = theirs.explain(userid, user_items, 5)
        assert_same_explanation(got, expected, rtol)
    assert ours.explain(N_USERS, user_items, 5)[:2] == (0.0, [])
    # a matrix from before items were added (fewer columns) is fine, as in implicit
    narrow = matrix[:, :40].tocsr()
    assert_same_explanation(ours.explain(3, narrow, 45), theirs.explain(3, narrow, 45), rtol)


def test_explain_ties_and_zero_confidences():
    """Equal contributions come out larger itemid first (implicit's heap of (score, id)
    pairs); a stored 0 is a contribution of 0 and counts as confidence 0 in the system."""
    ours, theirs = tied_model_pair()
    for model in (ours, theirs):
        model.regularization = 1.0
    user_items = sp.csr_matrix(np.array([[2, 2, 0, 2, 1, 1, 0, 2, 0, 0, 3] + [0] * 19],
                                        dtype=np.float32))
    user_items.data[user_items.indices == 4] = 0  # an explicitly stored zero
    for itemid in range(30):
        for N in (4, 10):
            got = ours.explain(0, user_items, itemid, N=N)
            expected = theirs.explain(0, user_items, itemid, N=N)
            assert_same_explanation(got, expected, 1e-5)
    assert (4, 0.0) in ours.explain(0, user_items, 0, N=10)[1]


def test_explain_coo_input_warns_like_implicit(pair, matrix):
    ours, theirs = pair
    with pytest.warns(compat.ParameterWarning):
        got = ours.explain(1, matrix.tocoo(), 2)
    assert_same_explanation(got, theirs.explain(1, matrix, 2), 1e-4)


def test_explain_validation(pair, matrix):
    ours, theirs = pair
    # implicit raised IndexError (row past user_items, item past the model), TypeError or
    # ValueError (arrays, malformed user_weights): both kinds still catch ours
    for error in (IndexError, ValueError):
        with pytest.raises(error, match="userid must be < 70"):
            ours.explain(N_USERS, matrix, 0)
        with pytest.raises(error, match="userid must be < 1"):
            ours.explain(4, matrix[4], 0)  # explain wants the whole matrix, not the row
        with pytest.raises(error, match="itemid must be < 50"):
            ours.explain(0, matrix, N_ITEMS)
    with pytest.raises(IndexError):
        theirs.explain(N_USERS, matrix, 0)
    for error in (TypeError, ValueError):
        with pytest.raises(error, match="userid must be a single id"):
            ours.explain([0, 1], matrix, 0)
        with pytest.raises(error, match="itemid must be a single id"):
            ours.explain(0, matrix, np.array([1, 2]))
        with pytest.raises(error, match="user_weights must be the .factor, lower. pair"):
            ours.explain(0, matrix, 1, user_weights=np.eye(K))
    with pytest.raises(ValueError, match=r"user_weights\[0\] must have shape \(6, 6\)"):
        ours.explain(0, matrix, 1, user_weights=(np.eye(K + 1), False))
    with pytest.raises(TypeError, match="lower"):
        ours.explain(0, matrix, 1, user_weights=(np.eye(K), "no"))
    # SciPy >= 1.18's cho_factor returns lower as a 0-d bool array: the same as the bool
    factor = ours.explain(0, matrix, 1)[2][0]
    assert ours.explain(0, matrix, 1, user_weights=(factor, np.array(False)))[:2] == \
        ours.explain(0, matrix, 1, user_weights=(factor, False))[:2]
    with pytest.raises(TypeError, match="lower"):  # per-user flags are not one flag
        ours.explain(0, matrix, 1, user_weights=(factor, np.array([False])))
    with pytest.raises(ValueError, match="userid must be >= 0"):
        ours.explain(-1, matrix, 0)
    with pytest.raises(ValueError, match="N must be >= 0"):
        ours.explain(0, matrix, 0, N=-1)
    with pytest.raises(TypeError, match="N must be an integer"):
        ours.explain(0, matrix, 0, N=2.5)
    with pytest.raises(TypeError, match="user_items"):
        ours.explain(0, matrix.toarray(), 0)
    with pytest.raises(ValueError, match="columns"):
        ours.explain(0, sp.hstack([matrix, matrix], format="csr"), 0)
    with pytest.raises(RuntimeError, match="item_factors"):
        AlternatingLeastSquares(use_gpu=False).explain(0, matrix, 0)


# ---------------------------------------------------------------------------- deprecated
def warning_of(call):
    """(result, the one DeprecationWarning's message) of call()."""
    with pytest.warns(DeprecationWarning) as record:
        result = call()
    deprecations = [w for w in record if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    return result, str(deprecations[0].message)


@pytest.mark.parametrize("selected", [[44, 2, 17, 5, 30, 9], list(range(49, 20, -2)),
                                      [4, 8, 8, 1]], ids=["six", "fifteen", "repeated"])
@pytest.mark.parametrize("recalculate_user", [False, True])
def test_rank_items_like_implicit(pair, matrix, selected, recalculate_user):
    """implicit 0.7.3 forwards to recommend with items= and its default N=10: more selected
    items than that are cut to the best 10; the user's own items are not filtered."""
    ours, theirs = pair
    got, message = warning_of(lambda: ours.rank_items(4, matrix[4], selected, recalculate_user))
    expected, implicits = warning_of(
        lambda: theirs.rank_items(4, matrix[4], selected, recalculate_user))
    assert message == implicits
    assert got[0].shape == (min(10, len(selected)),)
    assert_same_results(got, expected, rtol=1e-5, atol=1e-5 if recalculate_user else 1e-6)


@pytest.mark.parametrize("kwargs", [dict(), dict(N=4, filter_already_liked_items=False),
                                    dict(filter_items=[0, 3, 7]), dict(recalculate_user=True),
                                    dict(users_items_offset=30, N=3,
                                         filter_already_liked_items=False)],
                         ids=["plain", "keep-liked", "filter-items", "recalculate", "offset"])
def test_recommend_all_like_implicit(pair, matrix, kwargs):
    """The ids of recommend for every row of user_items (the users from the offset on)."""
    ours, theirs = pair
    rows = matrix[:40] if "users_items_offset" in kwargs else matrix
    got, message = warning_of(lambda: ours.recommend_all(rows, **kwargs))
    expected, implicits = warning_of(lambda: theirs.recommend_all(rows, **kwargs))
    assert message == implicits
    assert got.dtype == expected.dtype and got.shape == (40 if rows is not matrix else N_USERS,
                                                         kwargs.get("N", 10))
    if kwargs.get("recalculate_user"):  # recalculated factors: near-equal scores may swap
        assert (got == expected).mean() > 0.95
    else:
        np.testing.assert_array_equal(got, expected)


def test_recommend_all_validation(pair, matrix):
    ours, theirs = pair
    # implicit's padded user_items then has more rows than users: ValueError in both
    for model in (ours, theirs):
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError):
            model.recommend_all(matrix[:40], users_items_offset=30)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="users_items_offset"):
        ours.recommend_all(matrix[:40], users_items_offset=30, filter_already_liked_items=False,
                           recalculate_user=True)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="users_items_offset"):
        ours.recommend_all(matrix, users_items_offset=-1, filter_already_liked_items=False)
    for error in (IndexError, ValueError):  # more rows than users
        with pytest.warns(DeprecationWarning), pytest.raises(error, match="userid"):
            ours.recommend_all(sp.vstack([matrix, matrix[:2]], format="csr"))
    for error in (TypeError, ValueError):
        with pytest.warns(DeprecationWarning), pytest.raises(error, match="user_items"):
            ours.recommend_all(matrix.toarray())
        with pytest.warns(DeprecationWarning), pytest.raises(error, match="CSR"):
            ours.recommend_all(matrix.tocoo())  # recommend wants CSR when filtering


# ---------------------------------------------------------------------------- persistence
def test_save_load_round_trip(matrix, tmp_path):
    model, _ = fit_pair(matrix, use_cg=True, calculate_training_loss=True, random_state=21)
    model.cg_steps = 4
    model.save(tmp_path / "model")  # ".npz" is appended, as numpy.savez does for implicit
    assert os.path.isfile(tmp_path / "model.npz")
    for source in (tmp_path / "model", str(tmp_path / "model.npz")):
        loaded = AlternatingLeastSquares.load(source)
        np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
        np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
        for name in ("factors", "regularization", "alpha", "dtype", "use_native", "use_cg",
                     "use_gpu", "iterations", "calculate_training_loss", "num_threads",
                     "random_state", "cg_steps"):
            assert getattr(loaded, name) == getattr(model, name), name
        for got, expected in zip(loaded.recommend(USERS, matrix[USERS]),
                                 model.recommend(USERS, matrix[USERS])):
            np.testing.assert_array_equal(got, expected)

    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    loaded = AlternatingLeastSquares.load(buffer)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)

    # the file is a recfuse model file: recfuse.load reads it as recfuse.ALS
    plain = recfuse.load(tmp_path / "model.npz")
    assert isinstance(plain, recfuse.ALS) and plain.confidence == "raw"
    np.testing.assert_array_equal(plain.user_factors, model.user_factors)
    assert plain.get_params() == dict(model.to_recfuse().get_params(), backend="auto")


def test_load_reads_implicits_files(pair, tmp_path):
    _, theirs = pair
    theirs.save(str(tmp_path / "implicit_model"))
    loaded = AlternatingLeastSquares.load(str(tmp_path / "implicit_model"))
    np.testing.assert_array_equal(loaded.user_factors, theirs.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, theirs.item_factors)
    assert (loaded.factors, loaded.alpha, loaded.use_cg) == (K, 2.0, False)


def test_implicit_reads_our_files_with_the_models_settings(matrix, tmp_path):
    """A model saved here and loaded by implicit itself (training moved to recfuse, serving
    left on implicit): implicit's load sets every member of the archive as an attribute of
    a default model, and the file held only the factor tables, so the loaded model had
    factors=100, regularization=0.01, alpha=1.0... and its recalculate_user /
    partial_fit_users solved other systems than the trained model's."""
    model, _ = fit_pair(matrix, use_cg=False, random_state=5)
    model.cg_steps = 2
    model.save(tmp_path / "ours.npz")
    theirs = ImplicitALS.load(str(tmp_path / "ours.npz"))
    for name in ("factors", "regularization", "alpha", "use_native", "use_cg", "cg_steps",
                 "iterations", "calculate_training_loss", "num_threads", "random_state"):
        assert getattr(theirs, name) == getattr(model, name), name
    assert theirs.dtype == model.dtype
    np.testing.assert_array_equal(theirs.user_factors, model.user_factors)
    rows = matrix[USERS]
    np.testing.assert_allclose(theirs.recalculate_user(USERS, rows),
                               model.recalculate_user(USERS, rows), rtol=1e-4, atol=1e-5)
    assert_same_results(model.recommend(USERS, rows, recalculate_user=True),
                        theirs.recommend(USERS, rows, recalculate_user=True), atol=1e-5,
                        rtol=1e-4)
    # still a recfuse model file (numbers only: recfuse.load refuses text and bool arrays)
    assert isinstance(recfuse.load(tmp_path / "ours.npz"), recfuse.ALS)


def test_unfitted_round_trip_and_bad_files(tmp_path):
    AlternatingLeastSquares(factors=3, random_state=4).save(tmp_path / "empty.npz")
    loaded = AlternatingLeastSquares.load(tmp_path / "empty.npz")
    assert loaded.user_factors is None and loaded.random_state == 4
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable model file"):
        AlternatingLeastSquares.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        AlternatingLeastSquares.load(tmp_path / "missing.npz")


def test_to_cpu_copies_and_to_gpu(pair):
    ours, _ = pair
    copy = ours.to_cpu()
    assert copy.use_gpu is False and copy.user_factors is not ours.user_factors
    np.testing.assert_array_equal(copy.user_factors, ours.user_factors)
    if compat.HAS_CUDA:
        assert ours.to_gpu().use_gpu is True
    else:
        with pytest.raises(ValueError, match="cuda"):
            ours.to_gpu()


# ---------------------------------------------------------------------------- validation
def test_constructor_validation():
    with pytest.raises(TypeError, match="factors"):
        AlternatingLeastSquares(factors="8")
    with pytest.raises(ValueError, match="factors"):
        AlternatingLeastSquares(factors=0)
    with pytest.raises(ValueError, match="regularization"):
        AlternatingLeastSquares(regularization=-1)
    with pytest.raises(TypeError, match="dtype"):
        AlternatingLeastSquares(dtype=np.float16)
    with pytest.raises(TypeError, match="use_cg"):
        AlternatingLeastSquares(use_cg="yes")
    with pytest.raises(TypeError, match="random_state"):
        AlternatingLeastSquares(random_state="seed")
    assert AlternatingLeastSquares().use_gpu is compat.HAS_CUDA


def test_fit_validation(matrix):
    model = AlternatingLeastSquares(factors=K, iterations=1)
    with pytest.raises(TypeError, match="user_items"):
        model.fit(matrix.toarray(), show_progress=False)
    model.user_factors = np.zeros((N_USERS + 1, K), dtype=np.float32)
    with pytest.raises(ValueError, match="user_factors"):
        model.fit(matrix, show_progress=False)
    assert model.item_factors is None  # nothing changed
    model.user_factors = None
    with pytest.raises(TypeError, match="callback"):
        model.fit(matrix, show_progress=False, callback=3)
    with pytest.warns(compat.ParameterWarning):  # implicit converts other formats, warning
        model.fit(matrix.tocoo(), show_progress=False)
    assert model.user_factors.shape == (N_USERS, K)


def test_retrieval_validation(pair, matrix):
    ours, theirs = pair
    # implicit raised ValueError / IndexError in these cases: both still catch them
    for error in (TypeError, ValueError):
        with pytest.raises(error, match="user_items"):
            ours.recommend(0, None)
    with pytest.raises(ValueError, match="1 row for every user"):
        ours.recommend(0, matrix[:2])
    for error in (IndexError, ValueError):
        with pytest.raises(error, match="userid"):
            ours.recommend(N_USERS, matrix[0])
        with pytest.raises(error, match="items"):
            ours.recommend(0, matrix[0], items=[1, N_ITEMS])
    with pytest.raises(ValueError, match="userid must be >= 0"):
        ours.similar_users(-1)
    # implicit raises IndexError for negative ids in items too: ours is both kinds
    with pytest.raises(IndexError):
        theirs.recommend(0, matrix[0], items=[1, -1])
    for error in (IndexError, ValueError):
        with pytest.raises(error, match="items must be >= 0"):
            ours.recommend(0, matrix[0], items=[1, -1])
        with pytest.raises(error, match="itemid must be >= 0"):
            ours.similar_items(-1)
    with pytest.raises(ValueError, match="Can't set both"):
        ours.recommend(0, matrix[0], items=[1, 2], filter_items=np.array([3, 4]))
    with pytest.raises(ValueError, match="N"):
        ours.recommend(0, matrix[0], N=0)
    with pytest.raises(ValueError, match="one row for every id"):
        ours.recalculate_user([0, 1], matrix[0])
    with pytest.raises(ValueError, match="columns"):
        ours.recalculate_user(0, sp.hstack([matrix[0], matrix[0]], format="csr"))
    with pytest.raises(RuntimeError, match="not fitted"):
        AlternatingLeastSquares().recommend(0, matrix[0])


def test_gram_refuses_a_thread_count_set_after_construction():
    from recfuse.compat.implicit import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=4)
    model.item_factors = np.ones((5, 4), dtype=np.float32)
    for value, error in ((-3, ValueError), ("2", TypeError), (2.5, TypeError)):
        model.num_threads = value
        with pytest.raises(error, match="num_threads"):
            model.YtY
    model.num_threads = 2
    np.testing.assert_array_equal(model.YtY, np.full((4, 4), 5, dtype=np.float32))

"""recfuse.SVD and recfuse.SVDpp end to end: training equals the reference epochs, same
model for any thread count, Surprise's fallbacks for unknown ids, recommend, persistence,
bad input, and MovieLens 100K quality."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import recfuse
from conftest import examples
from recfuse import reference
from recfuse._sgd.common import Pattern

MODELS = [pytest.param(recfuse.SVD, id="SVD"), pytest.param(recfuse.SVDpp, id="SVDpp")]


def test_svd_fit_is_the_reference_epochs_in_the_given_order(ratings):
    users, items, values = ratings
    rng = np.random.default_rng(1)
    P0, Q0 = rng.normal(0, 0.1, (120, 6)), rng.normal(0, 0.1, (80, 6))
    model = recfuse.SVD(factors=6, epochs=3, lr=0.01, reg=0.05, lr_bi=0.02, reg_qi=0.1, grid=1,
                        shuffle=False, dtype=np.float64, backend="cpu")
    model.fit(users, items, values, initial_factors=(P0, Q0))
    state = (np.zeros(120), np.zeros(80), P0, Q0)
    for _ in range(3):
        state = reference.svd_sgd_epoch(users, items, values, values.mean(), *state,
                                        lr=(0.01, 0.02, 0.01, 0.01), reg=(0.05, 0.05, 0.05, 0.1))
    for got, expected in zip((model.user_bias, model.item_bias, model.user_factors,
                              model.item_factors), state):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_svdpp_fit_is_the_reference_epochs_user_by_user(ratings):
    users, items, values = ratings
    order = np.argsort(users, kind="stable")  # one user pass per user, users ascending
    users, items, values = users[order], items[order], values[order]
    rng = np.random.default_rng(2)
    start = [rng.normal(0, 0.1, (n, 5)) for n in (120, 80, 80)]
    model = recfuse.SVDpp(factors=5, epochs=2, shuffle=False, dtype=np.float64, backend="cpu",
                          random_state=0)
    # shuffle=False keeps each user's ratings as given; the order of users is random, so
    # rebuild it from the model's layout instead of guessing it.
    model.fit(users, items, values, initial_factors=start)
    implicit = Pattern.from_pairs(users, items, 120, 80).to_scipy(80)
    from recfuse._sgd.common import user_major_order

    rng = np.random.default_rng(0)
    layout = user_major_order(users, 120, rng, shuffle=False)
    state = (np.zeros(120), np.zeros(80), *start)
    for _ in range(2):
        state = reference.svdpp_sgd_epoch(users, items, values, values.mean(), *state, implicit,
                                          lr=0.007, reg=0.02, order=layout)
    for got, expected in zip((model.user_bias, model.item_bias, model.user_factors,
                              model.item_factors, model.implicit_factors), state):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", MODELS)
def test_same_seed_same_model_for_any_thread_count_and_rmse_falls(ratings, cls):
    users, items, values = ratings
    runs = []
    for threads in (1, 2, 0):  # 0: the fit times epochs on one and on all threads
        history = []
        model = cls(factors=8, epochs=6, random_state=3, num_threads=threads, grid=4)
        model.fit(users, items, values, callback=lambda epoch, rmse: history.append(rmse))
        runs.append((model, history))
    for model, _ in runs[1:]:
        np.testing.assert_array_equal(model.user_factors, runs[0][0].user_factors)
        np.testing.assert_array_equal(model.item_bias, runs[0][0].item_bias)
    history = runs[0][1]
    assert len(history) == 6 and history[-1] < history[0]
    assert all(np.isfinite(v) for v in history)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("backend", ["numba", "numpy"])
# The native fit pads rows to whole cache lines: 20 -> 24 and 100 -> 104 doubles, each with
# its own fixed-width kernel; 4 -> 8 takes the runtime-width one.
@pytest.mark.parametrize("factors", [4, 20, 100])
def test_fallback_backends_train_the_same_model(ratings, cls, backend, factors):
    users, items, values = ratings[0][:600], ratings[1][:600], ratings[2][:600]
    kwargs = dict(factors=factors, epochs=2, random_state=5, dtype=np.float64, grid=3)
    native = cls(backend="cpu", **kwargs).fit(users, items, values)
    other = cls(backend=backend, **kwargs).fit(users, items, values)
    np.testing.assert_allclose(other.user_factors, native.user_factors, atol=1e-10)
    np.testing.assert_allclose(other.predict(users, items), native.predict(users, items), atol=1e-10)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("factors", [20, 100])  # float32 rows padded to 32 and 112
def test_float32_native_fit_follows_the_numpy_backend(ratings, cls, factors):
    users, items, values = ratings
    kwargs = dict(factors=factors, epochs=2, random_state=4, grid=2)
    native = cls(backend="cpu", **kwargs).fit(users, items, values)
    other = cls(backend="numpy", **kwargs).fit(users, items, values)
    assert native.user_factors.shape == (120, factors) and native.user_factors.dtype == np.float32
    np.testing.assert_allclose(native.user_factors, other.user_factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(native.predict(users, items), other.predict(users, items),
                               rtol=1e-5)


def test_starting_draws_are_standard_normal():
    """reference.normal_draws (the starting factors' generator): mean, spread, the mass
    within one and two standard deviations, symmetric tails, bounded, and a pure function
    of (seed, index)."""
    from scipy import stats

    z = reference.normal_draws(12345, np.arange(400_001)).astype(np.float64)  # odd count
    assert np.isfinite(z).all() and np.abs(z).max() < 5.8
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.005
    assert abs(np.mean(np.abs(z) < 2) - 0.9545) < 0.003
    assert abs(np.mean(z > 1) - np.mean(z < -1)) < 0.005
    assert stats.kstest(z, "norm").pvalue > 1e-4
    picked = np.array([400_000, 7, 8, 0, 7])
    np.testing.assert_array_equal(reference.normal_draws(12345, picked),
                                  z[picked].astype(np.float32))
    other = reference.normal_draws(12346, np.arange(1000))
    assert abs(np.corrcoef(other, z[:1000])[0, 1]) < 0.15  # another seed, other draws


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=examples(25), deadline=None)
@given(seed=st.integers(0, 2**64 - 1), rows=st.integers(0, 40), k=st.integers(0, 37),
       pad=st.integers(0, 20), mean=st.sampled_from([0.0, 0.5, -3.0]),
       std=st.sampled_from([0.1, 1.0, 1e-30]))
def test_native_normal_rows_are_the_reference_at_every_simd_level(dtype, seed, rows, k, pad,
                                                                   mean, std):
    """_core.normal_rows draws the reference's values bit for bit, at every SIMD level, in
    any row order (odd k puts a row's first draw at either half of a pair), zero-padded."""
    _core = pytest.importorskip("recfuse._core")
    table = reference.normal_table(seed, rows, k, mean, std, dtype)
    order = np.random.default_rng(seed % 1000).permutation(rows).astype(np.int64)
    original = _core.simd_level()
    try:
        for level in _core.supported_simd_levels():
            _core.set_simd_level(level)
            out = np.full((rows, k + pad), np.nan, dtype=dtype)
            _core.normal_rows(seed, out, k, mean, std, order)
            np.testing.assert_array_equal(out[:, :k], table[order])
            assert not out[:, k:].any()
            whole = np.empty((rows, k), dtype=dtype)
            _core.normal_rows(seed, whole, k, mean, std)  # no source: row r is table row r
            np.testing.assert_array_equal(whole, table)
    finally:
        _core.set_simd_level(original)


def test_normal_rows_rejects_bad_arguments():
    _core = pytest.importorskip("recfuse._core")
    out = np.empty((4, 3), np.float32)
    with pytest.raises(ValueError, match="at least k"):
        _core.normal_rows(1, out, 5, 0.0, 1.0)
    with pytest.raises(ValueError, match="one entry per row"):
        _core.normal_rows(1, out, 3, 0.0, 1.0, np.arange(3, dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        _core.normal_rows(1, out, 3, 0.0, 1.0, np.array([0, 1, -2, 3], dtype=np.int64))
    with pytest.raises(TypeError):
        _core.normal_rows(-1, out, 3, 0.0, 1.0)  # seeds are unsigned 64-bit
    with pytest.raises(TypeError):
        _core.normal_rows(1, out.astype(np.float64).T, 3, 0.0, 1.0)  # not C-contiguous


@pytest.mark.parametrize("alignment", [0, 64])
def test_normal_training_rows_are_the_table_laid_out(alignment):
    """normal_training_rows(seed, rows, ...) is training_rows(normal_table(seed, ...), rows):
    the native backend's padded, aligned layout and a plain one."""
    from types import SimpleNamespace

    from recfuse._sgd.common import normal_table, normal_training_rows, training_rows

    backend = SimpleNamespace(ROW_ALIGNMENT=alignment) if alignment else SimpleNamespace()
    rows = np.random.default_rng(0).permutation(53)
    for k, dtype in ((13, np.float32), (100, np.float32), (8, np.float64)):
        table = reference.normal_table(99, 53, k, 0.0, 0.1, dtype)
        np.testing.assert_array_equal(normal_table(99, 53, k, 0.0, 0.1, dtype), table)
        expected = training_rows(table, rows, backend)
        got = normal_training_rows(99, rows, k, 0.0, 0.1, dtype, backend)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        if alignment:
            assert got.ctypes.data % alignment == 0 and got.strides[0] % alignment == 0


def test_unknown_ids_fall_back_like_surprise():
    users, items, values = np.array([0, 0, 1, 3]), np.array([0, 1, 1, 2]), np.array([5.0, 3, 4, 1])
    model = recfuse.SVD(factors=3, epochs=5, random_state=0).fit(users, items, values,
                                                                  rating_scale=(1, 5))
    mu = values.mean()
    bu, bi = model.user_bias.astype(float), model.item_bias.astype(float)
    # user 2 has no ratings (unknown), user 9 is beyond the ids, item 3 was never rated
    np.testing.assert_allclose(model.predict([2, 9, 0, 9], [1, 1, 3, 7]),
                               [mu + bi[1], mu + bi[1], mu + bu[0], mu], rtol=1e-6)
    known = model.predict(0, 0, clip=False)
    assert known == pytest.approx(mu + bu[0] + bi[0] + model.user_factors[0] @ model.item_factors[0],
                                  rel=1e-5)
    unbiased = recfuse.SVD(factors=3, epochs=5, biased=False, random_state=0).fit(users, items, values)
    assert unbiased.predict(9, 0) == pytest.approx(mu)
    assert unbiased.predict(0, 0, clip=False) == pytest.approx(
        float(unbiased.user_factors[0] @ unbiased.item_factors[0]), rel=1e-5)
    assert np.all(unbiased.user_bias == 0)


@pytest.mark.parametrize("cls", MODELS)
def test_predict_in_chunks_equals_the_formula(ratings, cls, monkeypatch):
    """predict gathers factor rows a chunk of pairs at a time (bounded memory on large
    calls); chunk edges must not change a value, known and unknown ids mixed."""
    from recfuse.models import sgd

    users, items, values = ratings
    model = cls(factors=6, epochs=3, random_state=2).fit(users, items, values)
    rng = np.random.default_rng(3)
    ask_users, ask_items = rng.integers(0, 130, 500), rng.integers(0, 90, 500)
    whole = model.predict(ask_users, ask_items, clip=False)
    monkeypatch.setattr(sgd, "_ESTIMATE_CHUNK", 7)
    np.testing.assert_array_equal(model.predict(ask_users, ask_items, clip=False), whole)
    P = sgd._user_vectors(model._fitted).astype(np.float64)
    Q = model.item_factors.astype(np.float64)
    known = (ask_users < 120) & (ask_items < 80)
    known[known] &= (model._fitted.user_counts[ask_users[known]] > 0) & (
        model._fitted.item_counts[ask_items[known]] > 0)
    u, i = ask_users[known], ask_items[known]
    expected = (model.global_mean + model.user_bias[u] + model.item_bias[i]
                + np.einsum("nk,nk->n", P[u], Q[i]))
    np.testing.assert_allclose(whole[known], expected, rtol=1e-6)


def test_predict_clips_to_the_rating_scale():
    model = recfuse.SVD(factors=2, epochs=30, lr=0.05, random_state=0)
    model.fit([0, 1], [0, 1], [5.0, 1.0], rating_scale=(1, 5))
    high = model.predict([0], [0], clip=False)
    assert model.predict(0, 0) <= 5 and model.predict(1, 1) >= 1
    assert isinstance(model.predict(0, 0), float) and high.shape == (1,)


@pytest.mark.parametrize("cls", MODELS)
def test_recommend_ranks_by_predicted_rating_without_seen_items(ratings, cls):
    users, items, values = ratings
    model = cls(factors=8, epochs=5, random_state=0).fit(users, items, values)
    ids, scores = model.recommend(4, k=10)
    seen = set(items[users == 4].tolist())
    assert not seen & set(ids.tolist()) and len(set(ids.tolist())) == 10
    np.testing.assert_allclose(scores, model.predict(np.full(10, 4), ids, clip=False), rtol=1e-5)
    assert np.all(np.diff(scores) <= 0)
    batch_ids, _ = model.recommend([4, 5], k=10, filter_seen=False, exclude_items=[ids[0]])
    assert batch_ids.shape == (2, 10) and ids[0] not in batch_ids[0]
    only, _ = model.recommend(4, k=3, filter_seen=False, items=[1, 2])
    assert sorted(only[:2].tolist()) == [1, 2] and only[2] == -1


def test_svd_builds_the_seen_items_on_first_use(ratings):
    """fit leaves N(u) to the first recommend (or save, or pickle): then it is the pattern
    of the training pairs, the same for concurrent first uses, and the caller's arrays may
    change after fit."""
    import pickle
    import threading

    users, items, values = (np.array(a) for a in ratings)
    model = recfuse.SVD(factors=8, epochs=2, random_state=0).fit(users, items, values)
    expected = Pattern.from_pairs(users, items, 120, 80)
    lazy = model._fitted.seen
    assert lazy._pattern is None  # not built by fit
    users[:] = 0  # the pattern is of the pairs fit saw
    results = []
    threads = [threading.Thread(target=lambda: results.append(lazy.pattern)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result is results[0] for result in results) and len(results) == 4
    for got in (lazy, pickle.loads(pickle.dumps(lazy))):
        np.testing.assert_array_equal(got.indptr, expected.indptr)
        np.testing.assert_array_equal(got.indices, expected.indices)
    ids, _ = model.recommend(4, k=70)
    assert not set(ids.tolist()) & set(expected.indices[expected.indptr[4]:expected.indptr[5]])


@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.ExplicitALS])
def test_unbiased_recommend_scores_unknown_items_and_users_as_predict(ratings, cls):
    """Unbiased: q_i·p_u for a known user and item, μ otherwise (Surprise's fallback), in
    recommend as in predict, for items and users without training ratings too."""
    users, items, values = ratings
    model = cls(factors=4, biased=False, random_state=0).fit(users, items, values, n_users=125,
                                                            n_items=85)
    for user in (4, 122):  # known, then without ratings
        ids, scores = model.recommend(user, k=85, filter_seen=False)
        np.testing.assert_allclose(scores, model.predict(np.full(85, user), ids, clip=False),
                                   rtol=1e-5)
        assert sorted(ids.tolist()) == list(range(85))
    ids, scores = model.recommend(122, k=4, items=[84, 3, 81, 7])
    np.testing.assert_array_equal(ids, [3, 7, 81, 84])  # all tie at μ: id order
    np.testing.assert_allclose(scores, model.global_mean)
    both, _ = model.recommend([4, 122], k=5)
    np.testing.assert_array_equal(both[0], model.recommend(4, k=5)[0])
    np.testing.assert_array_equal(both[1], model.recommend(122, k=5)[0])


@pytest.mark.parametrize("cls", MODELS)
def test_a_diverging_fit_or_unrepresentable_ratings_raise(ratings, cls):
    users, items, values = ratings
    model = cls(factors=4, epochs=2, random_state=0).fit(users, items, values)
    before = model.user_factors.copy()
    with pytest.raises(ValueError, match="diverged: the trained values hold NaN or inf"):
        cls(factors=4, epochs=20, lr=50.0, random_state=0).fit(users, items, values)
    with pytest.raises(ValueError, match="beyond its range"):
        model.fit(users, items, np.where(values == 5, 1e300, values))
    np.testing.assert_array_equal(model.user_factors, before)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("backend", ["cpu", "numba", "numpy"])
def test_divergence_is_the_documented_error_on_every_backend_whatever_numpys_error_mode(
        ratings, cls, backend):
    # The numpy backend ran the reference epochs under the caller's NumPy error mode: under
    # np.seterr(all="raise") a diverging fit raised FloatingPointError, under -W error a
    # RuntimeWarning, where the native and Numba backends gave the documented ValueError.
    if not next(b for b in recfuse.backends("sgd") if b.name == backend).available:
        pytest.skip(f"{backend} is not available")
    users, items, values = ratings
    model = cls(factors=4, epochs=2, random_state=0, backend=backend).fit(users, items, values)
    before = model.predict(users, items)
    for raise_or_warn in ("raise", "warn"):
        with np.errstate(all=raise_or_warn), warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="diverged: the trained values hold NaN or inf"):
                model.fit(users, items, values * 1e30)
    np.testing.assert_array_equal(model.predict(users, items), before)


@pytest.mark.parametrize("field, value, match", [
    ("user_bias", lambda a: a[:-1], "saved user_bias must hold"),
    ("item_bias", lambda a: np.where(np.arange(a.size) == 0, np.nan, a), "saved item_bias"),
    ("global_mean", lambda a: np.array([np.inf]), "saved global_mean"),
    ("user_counts", lambda a: a - 10**6, "non-negative"),
    ("seen_indices", lambda a: np.where(np.arange(a.size) == 0, 10**8, a), "column indices"),
    ("seen_indptr", lambda a: a[::-1].copy(), "malformed indptr"),
    # counts that wrapped to negatives in int64, and counts that disagreed with the seen
    # matrix (users with seen items treated as unknown), loaded without a word
    ("item_counts", lambda a: a.astype(np.uint64) + np.uint64(2**63), "within int64"),
    ("user_counts", lambda a: np.where(np.arange(a.size) == 4, 0, a),
     r"user_counts must be > 0 exactly where the saved seen matrix has entries, got "
     r"user_counts\[4\] = 0"),
    ("item_counts", lambda a: np.where(np.arange(a.size) == 0, 0, a),
     "item_counts must be > 0 exactly"),
])
def test_a_tampered_model_file_is_refused(tmp_path, ratings, field, value, match):
    from recfuse import persistence

    users, items, values = ratings
    model = recfuse.SVDpp(factors=4, epochs=2, random_state=0).fit(users, items, values)
    model.save(tmp_path / "good.npz")
    header, arrays = persistence.read_model(tmp_path / "good.npz")
    arrays = dict(arrays)
    arrays[field] = value(np.asarray(arrays[field]))
    persistence.save_model(tmp_path / "bad.npz", "SVDpp", model.get_params(), arrays)
    with pytest.raises(ValueError, match=match):
        recfuse.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", MODELS)
def test_save_and_load_round_trip(tmp_path, ratings, cls, dtype):
    users, items, values = ratings
    model = cls(factors=4, epochs=3, random_state=0, dtype=dtype).fit(users, items, values)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = recfuse.load(path)
    assert type(loaded) is cls and loaded.get_params() == model.get_params()
    assert loaded.global_mean == model.global_mean  # float64 in both (float32 rounded it)
    probe_users, probe_items = np.array([0, 5, 500]), np.array([3, 79, 2])
    np.testing.assert_array_equal(loaded.predict(probe_users, probe_items),
                                  model.predict(probe_users, probe_items))
    np.testing.assert_array_equal(loaded.recommend(3)[0], model.recommend(3)[0])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or foreign"):
        recfuse.load(path)


@pytest.mark.parametrize("cls", MODELS)
def test_bad_input_raises_and_leaves_the_model_alone(ratings, cls):
    users, items, values = ratings
    model = cls(factors=4, epochs=2, random_state=0).fit(users, items, values)
    before = model.user_factors.copy()
    cases = [
        ((users, items, np.where(values == 5, np.nan, values)), {}, ValueError, "finite"),
        ((users, items, values), {"rating_scale": (1, 4)}, ValueError, "rating_scale"),
        ((users[:-1], items, values), {}, ValueError, "same length"),
        ((users - 1, items, values), {}, ValueError, "users must be >= 0"),
        ((users, items.astype(float), values), {}, TypeError, "items must hold integers"),
        ((users, items, values), {"rating_scale": (5, 1)}, ValueError, "lowest < highest"),
        ((users, items, values), {"n_users": 3}, ValueError, "n_users must be >="),
        (([], [], []), {}, ValueError, "at least one rating"),
        ((users, items, values), {"initial_factors": (before,)}, TypeError, "initial_factors"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            model.fit(*args, **kwargs)
    np.testing.assert_array_equal(model.user_factors, before)
    for kwargs, message in [({"lr": 0}, "lr must be > 0"), ({"lr": -1}, "lr must be > 0"),
                            ({"reg": -0.1}, "reg must be >= 0"), ({"factors": 0}, "factors"),
                            ({"lr_bu": 0.0}, "lr_bu must be > 0"), ({"epochs": 1.5}, "epochs"),
                            ({"dtype": np.int32}, "float32 or float64")]:
        with pytest.raises((ValueError, TypeError), match=message):
            cls(**kwargs)
    with pytest.raises(ValueError, match="same length"):
        model.predict([1, 2], [1])
    with pytest.raises(ValueError, match="users must be >= 0"):
        model.predict(-1, 0)
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().predict(0, 0)
    if not next(b for b in recfuse.backends() if b.name == "cuda").available:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            cls(backend="cuda").fit(users, items, values)


@pytest.mark.parametrize("cls", MODELS + [pytest.param(recfuse.ExplicitALS, id="ExplicitALS")])
def test_flags_are_bools_and_initial_factors_errors_say_what_came(ratings, cls):
    # predict(clip=...) and fit(show_progress=...) were read by truth value: clip="no" or
    # clip=None chose silently (a string clipped), clip=np.array([True, False]) failed with
    # NumPy's "truth value of an array is ambiguous"; a wrong count of initial_factors did
    # not say what came.
    users, items, values = ratings
    model = cls(factors=2, random_state=0).fit(users, items, values)
    before = model.user_factors.copy()
    probe = (np.array([0, 1, 2]), np.array([3, 4, 5]))
    for clip in ("no", None, np.array([True, False]), 2, 0.0):
        with pytest.raises(TypeError, match="clip must be a bool, got"):
            model.predict(*probe, clip=clip)
    for clip in (True, np.True_, 1):
        np.testing.assert_array_equal(model.predict(*probe, clip=clip), model.predict(*probe))
    np.testing.assert_array_equal(model.predict(*probe, clip=0),
                                  model.predict(*probe, clip=False))
    for show_progress in ("no", None):
        with pytest.raises(TypeError, match="show_progress must be a bool, got"):
            model.fit(users, items, values, show_progress=show_progress)
    for given, got in (((before,), r"got tuple of 1 arrays"),
                       ({"P": before}, r"got dict$"),
                       ([before] * 4, r"got list of 4 arrays")):
        with pytest.raises(TypeError, match=r"initial_factors must be a tuple \(.*\), " + got):
            model.fit(users, items, values, initial_factors=given)
    np.testing.assert_array_equal(model.user_factors, before)


@pytest.mark.parametrize("cls", MODELS)
def test_rating_scale_may_be_a_numpy_pair(ratings, cls):
    users, items, values = ratings
    model = cls(factors=2, epochs=1, random_state=0)
    model.fit(users, items, values, rating_scale=np.array([1, 5]))
    assert model.rating_scale == (1.0, 5.0)
    with pytest.raises(TypeError, match="rating_scale must be a pair"):
        model.fit(users, items, values, rating_scale=np.array([1, 3, 5]))


@pytest.mark.parametrize("args, message", [
    ((np.ones((3, 3)),), r"got users \(numpy.ndarray\) without items and ratings; a dense "
                         r"matrix is not read as ratings"),
    ((np.arange(3), np.arange(3)), r"got users \(numpy.ndarray\) without ratings$"),
])
def test_fit_without_all_three_arrays_says_what_came(args, message):
    with pytest.raises(TypeError, match=message):
        recfuse.SVD().fit(*args)
    with pytest.raises(TypeError, match=message):
        recfuse.ExplicitALS().fit(*args)


def movielens_folds(path):
    raw = np.loadtxt(os.path.join(path, "u.data"), dtype=np.int64)
    users, items, values = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 2].astype(np.float64)
    return users, items, values, np.random.default_rng(0).permutation(values.size) % 5


@pytest.mark.parametrize("cls, band", [(recfuse.SVD, (0.92, 0.938)), (recfuse.SVDpp, (0.905, 0.924))])
def test_movielens_100k_five_fold_rmse(movielens_100k, cls, band):
    # Surprise's published 5-fold figures: SVD 0.934, SVD++ 0.919 (ours measured 0.933 and
    # 0.919 with these seeds). The band catches a broken kernel, not a small regression.
    users, items, values, folds = movielens_folds(movielens_100k)
    errors = []
    for fold in range(5):
        train, test = folds != fold, folds == fold
        model = cls(random_state=0).fit(users[train], items[train], values[train],
                                        rating_scale=(1, 5))
        predicted = model.predict(users[test], items[test])
        errors.append(np.sqrt(np.mean((predicted - values[test]) ** 2)))
    assert band[0] <= np.mean(errors) <= band[1], errors


def test_tuned_recipe_reaches_0_905(movielens_100k):
    # The README's tuned recipe; measured 0.9023 (0.9023-0.9024 with other seeds).
    users, items, values, folds = movielens_folds(movielens_100k)
    errors = []
    for fold in range(5):
        train, test = folds != fold, folds == fold
        model = recfuse.SVD(factors=100, epochs=50, lr=0.01, reg=0.08, reg_bu=0.02, reg_bi=0.02,
                            init_std=0.01, random_state=fold)
        model.fit(users[train], items[train], values[train], rating_scale=(1, 5))
        predicted = model.predict(users[test], items[test])
        errors.append(np.sqrt(np.mean((predicted - values[test]) ** 2)))
    assert 0.895 <= np.mean(errors) <= 0.905, errors


def test_one_ratings_matrix_trains_one_model_whatever_its_format():
    """The ratings go in row-major order for any compressed format or storage order
    (unsorted CSR indices, CSC), so the same matrix gives the same model; a COO matrix is
    taken in its own order, as the three arrays it holds would be."""
    rng = np.random.default_rng(0)
    matrix = sp.random(50, 40, density=0.3, format="csr", random_state=0,
                       data_rvs=lambda n: rng.integers(1, 6, n).astype(float))
    unsorted = matrix.copy()
    for row in range(unsorted.shape[0]):
        span = slice(unsorted.indptr[row], unsorted.indptr[row + 1])
        unsorted.indices[span], unsorted.data[span] = (unsorted.indices[span][::-1].copy(),
                                                       unsorted.data[span][::-1].copy())
    unsorted.has_sorted_indices = False
    want = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(matrix, rating_scale=(1, 5))
    for other in (unsorted, matrix.tocsc(), matrix.tocsc().todok()):
        got = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(other, rating_scale=(1, 5))
        np.testing.assert_array_equal(got.user_factors, want.user_factors)


@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.ExplicitALS])
def test_counts_below_the_ratings_matrix_shape_are_refused(cls):
    """n_users / n_items smaller than a ratings matrix's shape (but above its largest rated
    id) dropped its last, empty rows or columns without a word."""
    matrix = sp.csr_matrix(np.array([[5.0, 0, 3], [0, 4, 0], [0, 0, 0]]))
    model = cls(factors=2, random_state=0)
    for given, message in [({"n_users": 2}, r"n_users must be at least the ratings matrix's "
                                            r"rows \(3\), got 2"),
                           ({"n_items": 2}, r"n_items must be at least the ratings matrix's "
                                            r"columns \(3\), got 2")]:
        with pytest.raises(ValueError, match=message):
            model.fit(matrix, **given)
    assert model.fit(matrix, n_users=4).user_factors.shape == (4, 2)  # more ids: as asked


@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.SVDpp])
def test_a_start_beyond_the_dtype_is_refused_by_name(cls):
    """init_std too large for float32 made infinite starting factors, which fit refused
    as a divergence ("lower lr or raise reg"), naming neither parameter."""
    with pytest.raises(ValueError, match="init_std must keep the starting factors finite in "
                                         "float32"):
        cls(init_std=1e38)
    with pytest.raises(ValueError, match="finite in float64"):
        cls(init_mean=-1e308, init_std=1e308, dtype=np.float64)
    assert cls(init_std=1e38, dtype=np.float64).init_std == 1e38


def test_declared_sizes_beyond_memory_are_refused_before_allocating():
    """n_users / n_items (declared, or a ratings matrix's shape) whose tables cannot fit this
    machine's memory are a MemoryError naming them, before anything is allocated: they were
    NumPy's "Unable to allocate 16.0 GiB" (after ~30 s of work for n_users=2**28) or, below
    the system's overcommit limit, tables the OOM killer ends the process for. The model is
    left as it was. Run under an 6 GiB address-space limit (and a machine taken to have
    8 GiB), so that a missing check fails there instead of filling memory."""
    from conftest import run_python

    run_python("""
import resource
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import numpy as np, scipy.sparse as sp, pytest, recfuse
import recfuse._validation as check
check.physical_memory = lambda: 8 << 30
rng = np.random.default_rng(0)
u, i, r = rng.integers(0, 30, 300), rng.integers(0, 20, 300), rng.integers(1, 6, 300) * 1.0
for cls, options in ((recfuse.SVD, {"epochs": 1}), (recfuse.SVDpp, {"epochs": 1}),
                     (recfuse.ExplicitALS, {"iterations": 1})):
    model = cls(factors=8, random_state=0, **options).fit(u, i, r)
    before = model.predict(u, i)
    for sizes, match in (({"n_users": 2**31 - 1}, "n_users = 2147483647"),
                         ({"n_items": 2**31 - 1}, "n_items = 2147483647"),
                         ({"n_users": 2**27, "n_items": 2**27}, "n_users = 134217728 and "
                                                                "n_items = 134217728")):
        with pytest.raises(MemoryError, match=match):
            model.fit(u, i, r, **sizes)
    wide = sp.csr_matrix((np.ones(3), ([0, 1, 2], [0, 1, 2**31 - 2])), shape=(3, 2**31 - 1))
    with pytest.raises(MemoryError, match="n_items = 2147483647"):
        model.fit(wide)
    np.testing.assert_array_equal(model.predict(u, i), before)
""")


@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS])
def test_ratings_whose_sum_overflows_float64_keep_a_finite_global_mean(cls):
    """Ratings near float64's largest value: the global mean was ``values.mean()``, whose
    sum overflowed to inf (NaN with both signs) with NumPy's RuntimeWarning, and the model
    was presented as fitted with every prediction inf or NaN (SVD with epochs=0, or unbiased;
    with training, a "diverged" error for a model whose errors r - μ are all 0). The mean of
    finite ratings lies between them: it is computed without overflowing. (ExplicitALS
    refuses such ratings up front: its normal equations would overflow float64.)"""
    users, items = np.arange(6) % 3, np.arange(6) % 2
    options = {"iterations": 0} if cls is recfuse.ExplicitALS else {"epochs": 0}
    for ratings in (np.full(6, 1.7e308), np.array([1.7e308, -1.7e308] * 3)):
        model = cls(factors=2, dtype=np.float64, random_state=0, **options)
        try:
            model.fit(users, items, ratings)
        except ValueError as error:  # a refusal is fine; an inf or NaN model is not
            assert "diverged" in str(error) or (
                cls is recfuse.ExplicitALS and "too large for dtype=float64" in str(error))
            continue
        assert np.isfinite(model.global_mean)
        assert model.global_mean == pytest.approx(ratings.mean(dtype=np.longdouble)
                                                  if ratings[0] == ratings[1] else 0.0,
                                                  abs=1e292)
        assert np.isfinite(model.predict(users, items)).all()
    if cls is recfuse.ExplicitALS:
        return
    same = cls(factors=2, dtype=np.float64, random_state=0, **options).fit(
        users, items, np.full(6, 1.7e308))
    assert same.global_mean == 1.7e308
    if cls is not recfuse.ExplicitALS:  # no error to learn from: predicts the ratings
        assert same.predict(0, 0) == 1.7e308

"""Adversarial hunt on the query side of the rating models (``SVD``, ``SVDpp``,
``ExplicitALS``): ``predict`` (Surprise's fallbacks for ids without training ratings,
clipping, scalar and array forms, result types), ``recommend`` (the documented estimate of
every item, seen items filtered, ties by the smaller id, padding), ``recommend_all`` in
memory and to Parquet, ``similar_items`` / ``similar_users`` (cosine of the vectors
``recommend`` scores with, zero for ids without ratings), ``save`` -> ``load`` (copied and
memory-mapped) followed by the same queries, and ``set_params`` / refits.

The oracle is a brute-force NumPy computation from the docstrings, read off the model's
public attributes (``global_mean``, ``user_bias``, ``item_bias``, ``user_factors``,
``item_factors``, ``implicit_factors``):

    r̂_ui = μ + b_u [u known] + b_i [i known] + q_i·(p_u + z_u) [both known]
    z_u = |N(u)|^-1/2 Σ_{j∈N(u)} y_j (SVD++ only; N(u) the set of items u rated)
    unbiased models: q_i·p_u when both are known, μ otherwise

Tiny models with integer starting factors and no training step (``epochs=0`` /
``iterations=0``: the start is kept) make every score exact, so ties are exact too.

The two bugs found are fixed (their tests are at the end): ``recfuse.load(path,
biased=...)`` flipped a fitted model's biased flag that ``set_params`` refuses to change,
changing its answers; a ragged id list given to predict / recommend / similar_* raised
NumPy's unnamed error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from topk_checks import oracle_topk

import recfuse

FEW = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
NAMES = ["SVD", "SVD-unbiased", "SVDpp", "ExplicitALS", "ExplicitALS-unbiased"]
F = 2  # factors


# ---------------------------------------------------------------------- data and models
class Data:
    """Ratings (users, items, ratings) of ``NU`` x ``NI`` declared ids; ``scale`` the
    rating_scale given to fit (None: inferred)."""

    def __init__(self, users, items, ratings, NU, NI, scale):
        self.users = np.asarray(users, np.int64)
        self.items = np.asarray(items, np.int64)
        self.ratings = np.asarray(ratings, np.float64)
        self.NU, self.NI, self.scale = NU, NI, scale

    @property
    def seen(self) -> np.ndarray:
        seen = np.zeros((self.NU, self.NI), bool)
        seen[self.users, self.items] = True
        return seen


@st.composite
def rating_data(draw, max_users=5, max_items=6):
    """Ratings with repeated pairs, values at the scale's bounds (1 and 5), maybe a user
    who rated every item, and maybe users and items declared beyond the rated ones."""
    nu, ni = draw(st.integers(1, max_users)), draw(st.integers(1, max_items))
    pairs = draw(st.lists(st.tuples(st.integers(0, nu - 1), st.integers(0, ni - 1)),
                          min_size=1, max_size=14))
    if draw(st.booleans()):  # a user who rated everything
        pairs += [(0, i) for i in range(ni)]
    values = draw(st.lists(st.sampled_from([1.0, 2.5, 3.0, 5.0]), min_size=len(pairs),
                           max_size=len(pairs)))
    users, items = zip(*pairs)
    NU = nu + draw(st.integers(0, 2))  # declared users without ratings
    NI = ni + draw(st.integers(0, 2))
    scale = draw(st.sampled_from([None, (1.0, 5.0), (0.0, 10.0)]))
    return Data(users, items, values, NU, NI, scale)


def make_model(name, data, hand, dtype=np.float32, seed=0):
    """``hand``: integer starting factors kept as they are (no training step; SVD++'s y_j
    small integers); else two trained steps from the seeded start."""
    cls = getattr(recfuse, name.split("-")[0])
    kwargs = {"biased": False} if name.endswith("unbiased") else {}
    kwargs["iterations" if cls is recfuse.ExplicitALS else "epochs"] = 0 if hand else 2
    model = cls(factors=F, random_state=seed, num_threads=1, dtype=dtype, **kwargs)
    start = None
    if hand:
        rng = np.random.default_rng(seed)
        start = [rng.integers(-2, 3, (n, F)).astype(dtype) for n in (data.NU, data.NI)]
        if cls is recfuse.SVDpp:
            start.append(rng.integers(-1, 2, (data.NI, F)).astype(dtype))
    return model.fit(data.users, data.items, data.ratings, n_users=data.NU, n_items=data.NI,
                     rating_scale=data.scale, initial_factors=start)


def oracle_estimates(model, data, extra=0):
    """The documented estimate, unclipped, for users [0, NU + extra) x items [0, NI + extra)
    (ids past the declared ones are unknown), in float64."""
    NU, NI = data.NU, data.NI
    known_u = np.zeros(NU + extra, bool)
    known_i = np.zeros(NI + extra, bool)
    known_u[data.users] = True
    known_i[data.items] = True
    P = np.zeros((NU + extra, F))
    Q = np.zeros((NI + extra, F))
    P[:NU] = model.user_factors.astype(np.float64)
    Q[:NI] = model.item_factors.astype(np.float64)
    if isinstance(model, recfuse.SVDpp):
        N = data.seen.astype(np.float64)  # N(u): a set, repeated ratings once
        count = N.sum(axis=1)
        Z = N @ model.implicit_factors.astype(np.float64)
        Z[count > 0] /= np.sqrt(count[count > 0])[:, None]
        P[:NU] += Z
    both = np.outer(known_u, known_i)
    dots = np.where(both, P @ Q.T, 0.0)
    if not getattr(model, "biased", True):
        return np.where(both, dots, model.global_mean)
    bu = np.zeros(NU + extra)
    bi = np.zeros(NI + extra)
    bu[:NU] = model.user_bias.astype(np.float64)
    bi[:NI] = model.item_bias.astype(np.float64)
    return (model.global_mean + (bu * known_u)[:, None] + (bi * known_i)[None, :]) + dots


def exact_scores(model, data, hand) -> bool:
    """Whether the model's computed scores are the oracle's exactly: integer factors and no
    training step, and for SVD++ no irrational |N(u)|^-1/2 of a nonzero sum."""
    if not hand:
        return False
    if isinstance(model, recfuse.SVDpp):
        counts = data.seen.sum(axis=1)
        return bool(np.all(np.isin(counts, [0, 1, 4])) or not model.implicit_factors.any())
    return True


def check_topk(ids, got, scores, allowed, k, exact, dtype):
    """``exact``: the ids and the scores (in the model's dtype) are the oracle's; else the
    scores match it to rounding and the order follows the returned scores."""
    assert ids.shape == got.shape == (len(scores), k)
    assert ids.dtype == np.int64 and got.dtype == np.dtype(dtype)
    want_ids, want = oracle_topk(scores, allowed, k)
    valid = ids >= 0
    np.testing.assert_array_equal(valid, want_ids >= 0)
    assert np.all(np.isneginf(got[~valid]))
    if exact:
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(got[valid], want[valid].astype(dtype))
        return
    tol = dict(rtol=1e-5, atol=1e-5) if np.dtype(dtype) == np.float32 else \
        dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got[valid], want[valid], **tol)
    for r in range(len(ids)):
        row, s = ids[r, valid[r]], got[r, valid[r]]
        assert np.unique(row).size == row.size and allowed[r, row].all()
        np.testing.assert_allclose(s, scores[r, row], **tol)
        assert np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (row[:-1] < row[1:])))


def id_form(draw, ids):
    """``ids`` (a list) as one of the forms an id list may take."""
    form = draw(st.sampled_from(["list", "int64", "int32", "uint16", "tuple", "objects"]))
    if form == "list":
        return list(ids)
    if form == "tuple":
        return tuple(ids)
    if form == "objects":  # a list of NumPy scalars and 0-d arrays
        return [np.int64(i) if t % 2 else np.array(i) for t, i in enumerate(ids)]
    return np.array(ids, dtype=form)


def scalar_form(draw, value):
    form = draw(st.sampled_from(["int", "int64", "uint8", "0-d"]))
    return {"int": int, "int64": np.int64, "uint8": np.uint8,
            "0-d": np.array}[form](value)


# ---------------------------------------------------------------------- predict
@FEW
@given(data=st.data(), name=st.sampled_from(NAMES), hand=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_predict_is_the_documented_estimate_in_every_id_form(data, name, hand, dtype):
    ratings = data.draw(rating_data())
    model = make_model(name, ratings, hand, dtype)
    extra = 3  # ids past the declared ones: unknown, the fallback
    want = oracle_estimates(model, ratings, extra)
    n = data.draw(st.integers(0, 12))
    us = data.draw(st.lists(st.integers(0, ratings.NU + extra - 1), min_size=n, max_size=n))
    its = data.draw(st.lists(st.integers(0, ratings.NI + extra - 1), min_size=n, max_size=n))
    clip = data.draw(st.booleans())
    got = model.predict(id_form(data.draw, us), id_form(data.draw, its), clip=clip)
    expected = want[us, its]
    if clip:
        expected = np.clip(expected, *model.rating_scale)
    assert isinstance(got, np.ndarray) and got.shape == (n,) and got.dtype == np.float64
    if exact_scores(model, ratings, hand):
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    if n:  # one pair: a Python float, the array form's value
        one = model.predict(scalar_form(data.draw, us[0]), scalar_form(data.draw, its[0]),
                            clip=clip)
        assert type(one) is float and one == got[0]


@pytest.mark.parametrize("name", NAMES)
def test_predict_fallbacks_and_clip_bounds(name):
    """Ratings 1 and 5 only (the inferred scale's bounds): unknown ids (declared without
    ratings, past the declared, far past int32) fall back to μ plus the known side's bias
    (unbiased: μ); clip=True bounds every estimate to the scale, clip=False does not."""
    data = Data([0, 0, 1, 1, 1], [0, 1, 1, 0, 1], [5, 1, 5, 5, 1], 3, 3, None)
    model = make_model(name, data, hand=True)
    assert model.rating_scale == (1.0, 5.0)
    big = 2**40
    users = np.array([2, 7, big, 0, 2, big, 0, 1])
    items = np.array([0, 0, 1, 2, 2, big, 1, 0])
    got = model.predict(users, items, clip=False)
    mu = model.global_mean
    assert mu == pytest.approx(17 / 5)
    bu, bi = model.user_bias.astype(float), model.item_bias.astype(float)
    if getattr(model, "biased", True):
        fallback = [mu + bi[0], mu + bi[0], mu + bi[1], mu + bu[0], mu, mu]
    else:
        fallback = [mu] * 6
    np.testing.assert_allclose(got[:6], fallback, rtol=1e-12)
    clipped = model.predict(users, items)
    np.testing.assert_array_equal(clipped, np.clip(got, 1.0, 5.0))
    assert np.all((clipped >= 1) & (clipped <= 5))
    for u, i in ((0, 0), (0, 1), (1, 0), (1, 1)):
        assert model.predict(u, i) == float(np.clip(model.predict(u, i, clip=False), 1, 5))


@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_predict_refuses_bad_ids_by_name(name):
    model = make_model(name, Data([0, 1], [1, 0], [1.0, 4.0], 2, 2, None), hand=True)
    cases = [
        (ValueError, r"\busers must be >= 0", lambda: model.predict(-1, 0)),
        (ValueError, r"\bitems must be >= 0", lambda: model.predict([0, 1], [0, -3])),
        (TypeError, r"\busers must hold integers", lambda: model.predict(np.nan, 0)),
        (TypeError, r"\bitems must hold integers", lambda: model.predict([0], [np.nan])),
        (TypeError, r"\busers must hold integers", lambda: model.predict(1.0, 0)),
        (TypeError, r"\busers must hold integers", lambda: model.predict(True, 0)),
        (TypeError, r"\busers must hold integers", lambda: model.predict(None, 0)),
        (ValueError, r"\busers must hold integers within int64", lambda: model.predict(2**63, 0)),
        (ValueError, r"\busers\b.*1-d", lambda: model.predict([[0]], [[0]])),
        (ValueError, r"users and items must have the same length",
         lambda: model.predict([0, 1], [0])),
        (TypeError, r"\bclip must be a bool", lambda: model.predict(0, 0, clip=None)),
        (TypeError, r"\bclip must be a bool", lambda: model.predict(0, 0, clip="no")),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


# ---------------------------------------------------------------------- recommend
@FEW
@given(data=st.data(), name=st.sampled_from(NAMES), hand=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_recommend_is_the_oracle_top_k_of_the_estimates(data, name, hand, dtype):
    ratings = data.draw(rating_data())
    model = make_model(name, ratings, hand, dtype)
    scores = oracle_estimates(model, ratings)
    NU, NI = ratings.NU, ratings.NI
    ids = data.draw(st.lists(st.integers(0, NU - 1), min_size=1, max_size=5))
    k = data.draw(st.sampled_from([1, NI, NI + 5, data.draw(st.integers(1, NI + 2))]))
    filter_seen = data.draw(st.booleans())
    item = st.integers(0, NI - 1)
    items = data.draw(st.one_of(st.none(), st.lists(item, max_size=2 * NI)))
    exclude = data.draw(st.one_of(st.none(), st.lists(item, max_size=NI)))
    got_ids, got = model.recommend(id_form(data.draw, ids), k=k, filter_seen=filter_seen,
                                   items=None if items is None else id_form(data.draw, items),
                                   exclude_items=exclude)
    allowed = np.ones((len(ids), NI), bool)
    if filter_seen:
        allowed &= ~ratings.seen[ids]
    if items is not None:
        allowed &= np.isin(np.arange(NI), items)
    if exclude is not None:
        allowed &= ~np.isin(np.arange(NI), exclude)
    check_topk(got_ids, got, scores[ids], allowed, k, exact_scores(model, ratings, hand),
               dtype)
    # a returned score is the unclipped prediction of that pair, rounded to the dtype
    for r, user in enumerate(ids):
        row = got_ids[r][got_ids[r] >= 0]
        if row.size:
            np.testing.assert_allclose(got[r][:row.size],
                                       model.predict(np.full(row.size, user), row, clip=False),
                                       rtol=1e-5 if dtype == np.float32 else 1e-9, atol=1e-5)
    one_ids, one = model.recommend(scalar_form(data.draw, ids[0]), k=k,
                                   filter_seen=filter_seen, items=items, exclude_items=exclude)
    assert one_ids.shape == one.shape == (k,)
    np.testing.assert_array_equal(one_ids, got_ids[0])
    np.testing.assert_array_equal(one, got[0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recommend_ties_go_by_id_and_k_beyond_the_catalogue_pads(name, dtype):
    """Every factor zero: all scores tie within a user (μ + b_u; unbiased μ): the lists are
    the allowed ids in order, padded; a user who rated everything gets nothing, a user
    without ratings everything (its estimates are μ + b_i with b_i = 0 here)."""
    NU, NI = 3, 5
    users = [0] * NI + [1, 1, 1]  # user 0 rated everything, user 2 nothing
    items = list(range(NI)) + [3, 3, 0]  # user 1 rated item 3 twice
    data = Data(users, items, [1.0, 5.0, 2.5, 1.0, 5.0, 3.0, 3.0, 1.0], NU, NI, None)
    cls = getattr(recfuse, name.split("-")[0])
    start = [np.zeros((NU, F), dtype), np.zeros((NI, F), dtype)]
    if cls is recfuse.SVDpp:
        start.append(np.zeros((NI, F), dtype))
    kwargs = {"biased": False} if name.endswith("unbiased") else {}
    kwargs["iterations" if cls is recfuse.ExplicitALS else "epochs"] = 0
    model = cls(factors=F, num_threads=1, dtype=dtype, **kwargs).fit(
        data.users, data.items, data.ratings, n_users=NU, initial_factors=start)
    for k in (1, NI - 1, NI, NI + 5):
        ids, scores = model.recommend([0, 1, 2, 1], k=k)
        width = min(k, NI)
        np.testing.assert_array_equal(ids[0], [-1] * k)
        np.testing.assert_array_equal(ids[1], ([1, 2, 4] + [-1] * k)[:k])
        np.testing.assert_array_equal(ids[2], (list(range(NI)) + [-1] * k)[:k])
        np.testing.assert_array_equal(ids[3], ids[1])
        assert np.all(np.isneginf(scores[2, width:]))
        assert np.all(scores[2, :width] == np.asarray(model.global_mean, dtype))
        ids, _ = model.recommend(1, k=k, filter_seen=False, items=[4, 4, 3, 0],
                                 exclude_items=[0, 2])
        np.testing.assert_array_equal(ids, ([3, 4] + [-1] * k)[:k])


@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_recommend_refuses_unknown_and_bad_user_ids_by_name(name):
    """recommend takes the model's users only (predict's fallback is for pairs)."""
    model = make_model(name, Data([0, 1], [1, 0], [1.0, 4.0], 3, 2, None), hand=True)
    model.recommend(2, k=2)  # declared, without ratings: served
    cases = [
        (ValueError, r"\buser_ids must be < 3", lambda: model.recommend(3)),
        (ValueError, r"\buser_ids must be >= 0", lambda: model.recommend([-1])),
        (TypeError, r"\buser_ids must hold integers", lambda: model.recommend(np.nan)),
        (TypeError, r"\buser_ids must hold integers", lambda: model.recommend([0, np.nan])),
        (ValueError, r"\bitems must be < 2", lambda: model.recommend(0, items=[2])),
        (ValueError, r"\bexclude_items must be >= 0", lambda: model.recommend(0,
                                                                               exclude_items=-1)),
        (TypeError, r"\bk must be an integer", lambda: model.recommend(0, k=2.0)),
        (TypeError, r"\bfilter_seen must be a bool", lambda: model.recommend(0,
                                                                             filter_seen=None)),
        (ValueError, r"\bitem_ids must be < 2", lambda: model.similar_items(2)),
        (ValueError, r"\buser_ids must be < 3", lambda: model.similar_users([0, 3])),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


# ---------------------------------------------------------------------- similar_*
def cosine_rows(V, rows):
    V = np.asarray(V, np.float64)
    lengths = np.linalg.norm(V, axis=1)
    norms = np.outer(lengths[rows], lengths)
    return np.divide(V[rows] @ V.T, norms, out=np.zeros_like(norms), where=norms > 0)


@FEW
@given(data=st.data(), name=st.sampled_from(NAMES), side=st.sampled_from(["items", "users"]))
def test_similar_lists_are_the_cosine_of_the_scoring_vectors(data, name, side):
    """Users: p_u (SVD++: p_u + z_u); items: q_i; ids without training ratings are zero
    vectors (every score 0), whatever their starting factors."""
    ratings = data.draw(rating_data())
    model = make_model(name, ratings, hand=True, dtype=np.float64)
    if side == "items":
        V = model.item_factors * np.isin(np.arange(ratings.NI), ratings.items)[:, None]
    else:
        V = model.user_factors.astype(np.float64)
        if isinstance(model, recfuse.SVDpp):
            N = ratings.seen.astype(np.float64)
            count = np.maximum(N.sum(axis=1), 1)
            V = V + (N @ model.implicit_factors) / np.sqrt(count)[:, None]
        V = V * np.isin(np.arange(ratings.NU), ratings.users)[:, None]
    call = model.similar_items if side == "items" else model.similar_users
    rows = data.draw(st.lists(st.integers(0, len(V) - 1), min_size=1, max_size=4))
    k = data.draw(st.integers(1, len(V) + 2))
    ids, scores = call(rows, k=k)
    want = cosine_rows(V, rows)
    assert ids.shape == scores.shape == (len(rows), k)
    valid = ids >= 0
    assert valid.sum(axis=1).tolist() == [min(k, len(V))] * len(rows)
    for r in range(len(rows)):
        row, s = ids[r, valid[r]], scores[r, valid[r]]
        np.testing.assert_allclose(s, want[r, row], atol=1e-9)
        assert np.unique(row).size == row.size
        # the order follows the returned scores, ties by id
        assert np.all((s[:-1] > s[1:]) | ((s[:-1] == s[1:]) & (row[:-1] < row[1:])))
        # the k best: nothing left out scores above the last one returned
        left = np.setdiff1d(np.arange(len(V)), row)
        if left.size:
            assert want[r, left].max() <= s[-1] + 1e-9
        if not V[rows[r]].any():  # no training ratings (or a zero vector): similar to none
            assert np.all(s == 0) and np.array_equal(row, np.arange(row.size))
    one_ids, one = call(np.array(rows[0]), k=k)
    assert one_ids.shape == (k,)
    np.testing.assert_array_equal(one_ids, ids[0])


# ---------------------------------------------------------------------- recommend_all
def tiny(name, dtype=np.float32, hand=False):
    """Users 0..4 and items 0..5; user 5 and item 6 declared without ratings; user 1 rated
    everything rated; a repeated pair; ratings at both bounds of (1, 5)."""
    data = Data([0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 4, 4],
                [0, 1, 0, 1, 2, 3, 4, 5, 0, 0, 3, 2, 5, 1],
                [5, 3, 4, 1, 2, 5, 1, 3, 2, 2, 5, 4, 1, 5], 6, 7, (1, 5))
    return make_model(name, data, hand, dtype), data


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recommend_all_in_memory_and_parquet_are_per_user_recommend(name, dtype, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    model, data = tiny(name, dtype)
    for k, filter_seen in ((1, True), (data.NI + 5, True), (3, False)):
        want_ids, want = model.recommend(np.arange(data.NU), k=k, filter_seen=filter_seen)
        chunks = list(model.recommend_all(k, batch_size=np.int64(4), filter_seen=filter_seen))
        assert [u.tolist() for u, _, _ in chunks] == [[0, 1, 2, 3], [4, 5]]
        np.testing.assert_array_equal(np.concatenate([i for _, i, _ in chunks]), want_ids)
        np.testing.assert_array_equal(np.concatenate([s for _, _, s in chunks]), want)
        assert all(s.dtype == np.dtype(dtype) for _, _, s in chunks)
        path = tmp_path / f"{k}-{filter_seen}.parquet"
        rows = model.recommend_all(k, batch_size=2, filter_seen=filter_seen, path=str(path))
        table = pq.read_table(path)
        keep = want_ids >= 0
        assert rows == table.num_rows == keep.sum()
        np.testing.assert_array_equal(table.column("user").to_numpy(),
                                      np.repeat(np.arange(data.NU), k)[keep.ravel()])
        np.testing.assert_array_equal(table.column("rank").to_numpy(),
                                      np.tile(np.arange(k), data.NU)[keep.ravel()])
        np.testing.assert_array_equal(table.column("item").to_numpy(), want_ids[keep])
        score = table.column("score").to_numpy()
        assert score.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(score, want[keep])
    # user 1 rated every rated item: only item 6 (no ratings) is left for it
    ids, _ = model.recommend(1, k=3)
    np.testing.assert_array_equal(ids, [6, -1, -1])


@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS-unbiased"])
def test_recommend_all_iterator_keeps_the_model_of_its_call(name):
    """recommend_all's docstring: every chunk from the model as it was at this call."""
    model, data = tiny(name)
    want = model.recommend(np.arange(data.NU), k=3)
    chunks = model.recommend_all(3, batch_size=2)
    model.fit([0, 1], [1, 0], [2.0, 4.0])  # another shape, other factors
    got = list(chunks)
    np.testing.assert_array_equal(np.concatenate([i for _, i, _ in got]), want[0])
    np.testing.assert_array_equal(np.concatenate([s for _, _, s in got]), want[1])
    assert [len(u) for u, _, _ in model.recommend_all(3, batch_size=2)] == [2]


# ---------------------------------------------------------------------- save and load
def all_queries(model, data):
    users = np.arange(data.NU)
    out = [model.predict(np.repeat(np.arange(data.NU + 2), data.NI + 2),
                         np.tile(np.arange(data.NI + 2), data.NU + 2), clip=False),
           model.predict(np.repeat(np.arange(data.NU), data.NI), np.tile(np.arange(data.NI),
                                                                          data.NU)),
           np.array([model.predict(1, 2), model.predict(data.NU + 9, 0)])]
    for k in (1, 3, data.NI + 2):
        for filter_seen in (True, False):
            out += model.recommend(users, k=k, filter_seen=filter_seen)
    last_user, last_item, one = data.NU - 1, data.NI - 1, 1 % data.NI
    out += model.recommend([last_user, 0, last_user], k=4, items=[last_item, 0, one, one],
                           exclude_items=[one])
    out += model.similar_items(np.arange(data.NI), k=data.NI + 1)
    out += model.similar_users(np.arange(data.NU), k=3)
    for _, ids, scores in model.recommend_all(2, batch_size=4):
        out += [ids, scores]
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_then_every_query_is_the_same(name, dtype, mmap, tmp_path):
    model, data = tiny(name, dtype)
    want = all_queries(model, data)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = recfuse.load(path, mmap=mmap)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert loaded.rating_scale == model.rating_scale == (1.0, 5.0)
    assert loaded.global_mean == model.global_mean
    for got, expected in zip(all_queries(loaded, data), want, strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    # saved again over the file it is mapped from, and loaded once more: the same
    loaded.save(path)
    again = recfuse.load(path, mmap=mmap)
    for got, expected in zip(all_queries(again, data), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(all_queries(loaded, data), want, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["SVD", "ExplicitALS"])
def test_a_loaded_model_refits_and_then_answers_for_the_new_fit(name, tmp_path):
    model, data = tiny(name)
    model.save(tmp_path / "m.npz")
    loaded = recfuse.load(tmp_path / "m.npz", mmap=True)
    loaded.recommend(0, k=2), loaded.similar_items(0, k=2)  # caches of the loaded state
    fresh = type(model)(**model.get_params())
    for m in (loaded, fresh):
        m.fit([0, 0, 1], [0, 2, 1], [1.0, 5.0, 3.0])
    for got, expected in zip(all_queries(loaded, Data([0, 0, 1], [0, 2, 1], [1, 5, 3], 2, 3,
                                                      None)),
                             all_queries(fresh, Data([0, 0, 1], [0, 2, 1], [1, 5, 3], 2, 3,
                                                     None)), strict=True):
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------- set_params, refit
@pytest.mark.parametrize("name", NAMES)
def test_set_params_on_a_fitted_model_leaves_its_answers(name):
    """Settings read at the next fit change no answer; backend and num_threads are read at
    once (the numpy backend ranks exactly as the cpu one on exact scores); the settings that
    shape the tables are refused by name and change nothing."""
    # SVD++'s |N(u)|^-1/2 makes scores inexact: backends may round a near tie apart
    model, data = tiny(name, hand=name != "SVDpp")
    want = all_queries(model, data)
    steps = "iterations" if isinstance(model, recfuse.ExplicitALS) else "epochs"
    model.set_params(**{steps: 7}, reg=0.5, random_state=3, num_threads=2)
    for got, expected in zip(all_queries(model, data), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    model.set_params(backend="numpy")
    for got, expected in zip(all_queries(model, data), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    refused = {"factors": F + 1, "dtype": "float64"}
    if hasattr(model, "biased"):
        refused["biased"] = not model.biased
    for setting, value in refused.items():
        with pytest.raises(ValueError, match=rf"\b{setting}\b"):
            model.set_params(**{setting: value})
    for got, expected in zip(all_queries(model, data), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_refit_replaces_every_answer(name):
    """After queries have built the model's search indexes, a refit on other ratings (other
    counts of users and items) answers as a fresh model of the same settings does."""
    model, data = tiny(name, hand=True)
    all_queries(model, data)
    other = Data([0, 1, 1, 2], [1, 0, 2, 2], [2.0, 4.0, 1.0, 5.0], 3, 4, None)
    refit = make_model(name, other, hand=True, seed=5)
    start = [refit.user_factors, refit.item_factors]
    if isinstance(refit, recfuse.SVDpp):
        start.append(refit.implicit_factors)
    model.fit(other.users, other.items, other.ratings, n_users=3, n_items=4,
              initial_factors=start)
    for got, expected in zip(all_queries(model, other), all_queries(refit, other),
                             strict=True):
        np.testing.assert_array_equal(got, expected)
    want = oracle_estimates(model, other, extra=2)
    np.testing.assert_allclose(all_queries(model, other)[0], want.ravel(), rtol=1e-6)


@pytest.mark.parametrize("name", ["SVD", "ExplicitALS"])
def test_a_refused_fit_leaves_every_answer(name):
    """fit's docstring: on bad input the model is left as it was; a diverging fit (a
    ValueError too) likewise. The indexes built from the fitted state still serve."""
    model, data = tiny(name)
    want = all_queries(model, data)
    refusals = [
        (ValueError, "rating_scale", lambda: model.fit([0, 1], [0, 1], [1.0, 9.0],
                                                       rating_scale=(1, 5))),
        (ValueError, "ratings", lambda: model.fit([0, 1], [0, 1], [1.0, np.nan])),
        (ValueError, "items", lambda: model.fit([0, 1], [0, -1], [1.0, 2.0])),
    ]
    if name == "SVD":
        def diverge():
            model.set_params(lr=1e18, epochs=50)
            try:
                model.fit([0, 0, 1], [0, 1, 1], [1.0, 5.0, 3.0])
            finally:
                model.set_params(lr=0.005, epochs=2)
        refusals.append((ValueError, "diverged", diverge))
    for error, match, call in refusals:
        with pytest.raises(error, match=match):
            call()
        for got, expected in zip(all_queries(model, data), want, strict=True):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["SVD", "ExplicitALS"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recommend_all_to_parquet_with_no_rows_keeps_the_schema(name, dtype, tmp_path):
    """Every user rated every item: filter_seen leaves nothing; the file holds no row and
    the score column's type is the model's dtype, as with rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    model = make_model(name, Data([0, 0, 1, 1], [0, 1, 0, 1], [1.0, 5.0, 3.0, 2.0], 2, 2,
                                  None), hand=False, dtype=dtype)
    assert model.recommend_all(3, path=tmp_path / "none.parquet") == 0
    assert model.recommend_all(3, filter_seen=False, path=tmp_path / "all.parquet") == 4
    empty, full = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("none", "all"))
    assert empty.num_rows == 0 and empty.schema.equals(full.schema)
    assert full.column("score").to_numpy().dtype == np.dtype(dtype)


def test_ragged_item_lists_are_refused_by_name():
    """The id arguments that are read through the shared checks name themselves for a
    ragged nesting (``_validation.array_of``)."""
    model, _ = tiny("SVD")
    ragged = [[0], [0, 1]]
    for match, call in (("items", lambda: model.predict([0, 1], ragged)),
                        ("items", lambda: model.recommend(0, items=ragged)),
                        ("exclude_items", lambda: model.recommend(0, exclude_items=ragged))):
        with pytest.raises(ValueError, match=rf"\b{match} must be an array of integers, got a "
                                             r"ragged sequence"):
            call()


# ---------------------------------------------------------------------- found bugs
@pytest.mark.parametrize("call", ["predict-users", "predict-items", "recommend",
                                  "similar_items", "similar_users"])
@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_a_ragged_id_list_is_refused_by_name(name, call):
    model, _ = tiny(name)
    ragged = [[0], [0, 1]]
    calls = {
        "predict-users": ("users", lambda: model.predict(ragged, [0, 1])),
        "predict-items": ("items", lambda: model.predict(0, ragged)),
        "recommend": ("user_ids", lambda: model.recommend(ragged, k=2)),
        "similar_items": ("item_ids", lambda: model.similar_items(ragged, k=2)),
        "similar_users": ("user_ids", lambda: model.similar_users(ragged, k=2)),
    }
    argument, function = calls[call]
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        function()


@pytest.mark.parametrize("name", ["SVD", "SVD-unbiased", "ExplicitALS", "ExplicitALS-unbiased"])
def test_load_with_a_biased_override_keeps_the_saved_answers_or_refuses(name, tmp_path):
    model, data = tiny(name)
    path = tmp_path / "model.npz"
    model.save(path)
    flipped = not model.biased
    try:
        loaded = recfuse.load(path, biased=flipped)
    except ValueError as error:  # refused, by name: acceptable
        assert "biased" in str(error)
        return
    # accepted: a load must not change the model's answers, and the documented state
    # ("user_bias: zeros when unbiased") must hold
    if not loaded.biased:
        assert not loaded.user_bias.any() and not loaded.item_bias.any()
    for got, expected in zip(all_queries(loaded, data), all_queries(model, data),
                             strict=True):
        np.testing.assert_array_equal(got, expected)

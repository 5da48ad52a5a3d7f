"""Review hunt over today's commits to python/ (cf825ab..d9976cf, suffix -ad).

The contract used here (commit messages and the docstrings they changed):

* Popularity (serving.item_popularity / popular_items, Recommender's cold start, the CLI's
  baseline): an item's count of positive entries for ALS and BPR (a stored zero or a
  dislike is seen, not liked), of rated pairs whatever the rating for SVD, SVDpp and
  ExplicitALS; a repeated pair counts once; ties by smaller id.
* persistence.read_model: a zip naming one member twice is refused.
* split: the seeds' default is a sentinel; seed given beside random_state is refused;
  drop_cold is checked as a bool; min_train may be past int64.
* metrics: evaluate sizes its lists by min(k, items) and refuses differing id maps and a
  model of another item count up front; intra_list_diversity lies in [0, 2]; rmse and mae
  "stay exact wherever they are" (_errors' docstring).
* compat.implicit: query flags checked as bools; csr_array taken.
* Rerank.allows / mask: checked input, "uint8 mask of the ids [first, first + count)";
  Rerank and IdMap copies and pickles rebuilt (read-only, equal); IdMap of bools differs
  from one of ints; Interactions pickles without its cached matrices; ItemIndex and
  MLPScorer copies keep their subclass; Recommendation / Events compare with a bool;
  repr survives hand-assigned settings.
* settings a model's dtype cannot hold are refused by name (settings_fit_dtype).
* The cg solver: "refuses confidences past the cube root of the dtype's largest value in
  fit, update_users and observe: a CG step's p.Ap overflowed, the step became 0 and rows
  kept their old or random vectors silently"; Recommender.observe: "with the cg solver its
  confidence at most the cube root ... All are checked first".
* Failed-systems advice "never advises float64 to a float64 model".
* caller_stacklevel: warnings name the caller's line through any depth of recfuse frames.
* Progress bars are skipped without a stderr; the CLI with stdout closed exits cleanly;
  numpy backends ignore every NumPy FP error.
* Interactions combine="max": +0.0 beats -0.0, natively and in the reference.

Oracles: bincount/lexsort for popularity, exact Fraction/Decimal arithmetic for rmse/mae,
the reference's group_events, the limit of a user's solve as its confidence grows.
Notes: /work/notes/hunt-recent-changes-ad.md.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
import zipfile
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
import recfuse.ranking
from recfuse import Interactions, ItemIndex, Rerank, reference_data, split
from recfuse.interactions import IdMap, group_events
from recfuse.metrics import evaluate, intra_list_diversity, mae, rmse
from recfuse.models.als import CG_CONFIDENCE_BOUNDS, check_cg_confidences, failed_systems_advice
from recfuse.serving import Events, Recommendation, UserEventError

HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
C32 = CG_CONFIDENCE_BOUNDS[np.dtype(np.float32)]
C64 = CG_CONFIDENCE_BOUNDS[np.dtype(np.float64)]
HERE = os.path.basename(__file__)


def _small_matrix(seed=0, users=20, items=10, ratings=False):
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.4).astype(np.float64)
    if ratings:
        dense *= rng.integers(1, 6, (users, items))
    return sp.csr_matrix(dense)


def _raw_csr(entries, shape):
    """A CSR matrix whose repeated (row, col) entries are kept apart (non-canonical)."""
    entries = sorted(entries, key=lambda e: e[0])
    counts = np.bincount([e[0] for e in entries], minlength=shape[0])
    indptr = np.r_[0, np.cumsum(counts)]
    return sp.csr_matrix((np.array([e[2] for e in entries], float),
                          np.array([e[1] for e in entries], np.int32), indptr), shape=shape)


# ---------------------------------------------------------------------------- popularity
# item 0: three likes; item 1: two pairs whose events cancel (2 - 2) and one like; item 2:
# five stored zeros; item 3: five dislikes; item 4: two likes; item 5: one like
_POPULARITY_ENTRIES = [(0, 0, 1), (1, 0, 1), (2, 0, 1),
                       (0, 1, 2), (0, 1, -2), (1, 1, 2), (1, 1, -2), (3, 1, 1),
                       (0, 2, 0), (1, 2, 0), (2, 2, 0), (3, 2, 0), (4, 2, 0),
                       (0, 3, -1), (1, 3, -1), (2, 3, -1), (3, 3, -1), (4, 3, -1),
                       (4, 4, 1), (5, 4, 1), (5, 5, 1)]


def _oracle_popular(matrix, positive_only):
    summed = matrix.copy()
    summed.sum_duplicates()
    counted = summed.indices[summed.data > 0] if positive_only else summed.indices
    counts = np.bincount(counted, minlength=matrix.shape[1])
    return np.lexsort((np.arange(matrix.shape[1]), -counts))


@pytest.mark.parametrize("name", ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"])
def test_cold_start_popular_list_of_non_canonical_training(name):
    matrix = _raw_csr(_POPULARITY_ENTRIES, (6, 6))
    assert not matrix.has_canonical_format
    model = {"ALS": lambda: recfuse.ALS(factors=2, iterations=2, confidence="raw", random_state=0),
             "BPR": lambda: recfuse.BPR(factors=2, iterations=2, random_state=0),
             "SVD": lambda: recfuse.SVD(factors=2, epochs=2, random_state=0),
             "SVDpp": lambda: recfuse.SVDpp(factors=2, epochs=2, random_state=0),
             "ExplicitALS": lambda: recfuse.ExplicitALS(factors=2, iterations=2,
                                                        random_state=0)}[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(matrix.copy())
    answer = recfuse.Recommender(model, k=6).recommend(100)  # a user the model does not know
    want = _oracle_popular(matrix, positive_only=name in ("ALS", "BPR"))
    assert answer.ids.tolist() == want.tolist()
    assert set(answer.stages.tolist()) == {"popular"}


def test_cli_baseline_counts_positive_entries():
    from recfuse.cli import _Popularity

    train = _raw_csr([(0, 0, 1), (0, 2, -3), (0, 3, 0), (1, 0, 2), (2, 1, 5), (2, 2, -1)],
                     (3, 4))  # canonical, with a stored zero
    assert train.nnz == 6
    baseline = _Popularity(train)
    assert baseline.item_popularity.tolist() == [2, 1, 0, 0]
    ids = np.asarray(baseline.recommend(np.array([1]), train[[1]], k=3)[0])
    assert ids.ravel().tolist() == [1, 2, 3]  # item 0 seen; ties by smaller id


# ---------------------------------------------------------------------------- model files
def test_read_model_refuses_a_member_named_twice(tmp_path):
    path = str(tmp_path / "als.npz")
    recfuse.ALS(factors=2, iterations=1, random_state=0).fit(_small_matrix()).save(path)
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if not n.startswith("__recfuse__"))
        payload = archive.read(member)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(member, payload)
    with pytest.raises(ValueError, match="more than one member named"):
        recfuse.load(path)
    # "x" and "x.npy" name one array too
    path2 = str(tmp_path / "als2.npz")
    recfuse.ALS(factors=2, iterations=1, random_state=0).fit(_small_matrix()).save(path2)
    with zipfile.ZipFile(path2, "a") as archive:
        archive.writestr(member[:-4] if member.endswith(".npy") else member + ".npy", payload)
    with pytest.raises(ValueError, match="more than one member named"):
        recfuse.load(path2)


# ---------------------------------------------------------------------------- split
def _log():
    return Interactions.from_events(
        {"user": [1, 1, 1, 2, 2, 3, 3, 3], "item": [1, 2, 3, 1, 4, 2, 3, 4],
         "t": [1, 2, 3, 4, 5, 6, 7, 8]}, timestamp="t")


SPLITS = [split.random_split, split.per_user_split, split.leave_last_n]


def _same(first, second):
    return all((a.matrix != b.matrix).nnz == 0 for a, b in zip(first, second))


@pytest.mark.parametrize("func", SPLITS, ids=lambda f: f.__name__)
def test_seed_sentinel(func):
    data = _log()
    default = inspect.signature(func).parameters["seed"].default
    assert repr(default) == "0" and default == 0
    assert _same(func(data), func(data, seed=0))
    assert _same(func(data, random_state=3), func(data, seed=3))
    assert _same(func(data, seed=default, random_state=3), func(data, seed=3))
    for given in (0, np.int64(0), None):
        with pytest.raises(TypeError, match="not both"):
            func(data, seed=given, random_state=3)


@pytest.mark.parametrize("func", SPLITS, ids=lambda f: f.__name__)
def test_seed_sentinel_survives_copies(func):
    data = _log()
    default = inspect.signature(func).parameters["seed"].default
    for copied in (copy.deepcopy(default), pickle.loads(pickle.dumps(default))):
        assert _same(func(data, seed=copied, random_state=3), func(data, seed=3))


@pytest.mark.parametrize("func", SPLITS + [split.temporal_split], ids=lambda f: f.__name__)
def test_drop_cold_checked(func):
    extra = {"test_fraction": 0.3} if func is split.temporal_split else {}
    for bad in ("no", None, np.array([True]), 2):
        with pytest.raises(TypeError, match="drop_cold"):
            func(_log(), drop_cold=bad, **extra)
    func(_log(), drop_cold=np.bool_(True), **extra)


@pytest.mark.parametrize("huge", [2**63, 2**70, np.uint64(2**64 - 1)])
def test_min_train_past_int64(huge):
    data = _log()
    for func in (split.per_user_split, split.leave_last_n):
        train, test = func(data, min_train=huge)
        assert test.nnz == 0 and train.nnz == data.nnz
    train, test = split.leave_last_n(data, n=2**70)
    assert test.nnz == 0


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_huge_k_and_id_map_checks():
    data = _log()
    train, test = split.random_split(data, 0.4, seed=1)
    model = recfuse.ALS(factors=2, iterations=2, random_state=0).fit(train)
    small = evaluate(model, train, test, k=2**31 - 1)  # check_k's largest
    assert small["k"] == 2**31 - 1 and 0 <= small["precision"] <= 1
    # maps equal but not the same object: accepted
    rebuilt = Interactions.from_events({"user": [1, 2], "item": [1, 4]},
                                       user_ids=IdMap(np.array(train.user_ids.ids)),
                                       item_ids=IdMap(np.array(train.item_ids.ids)))
    assert rebuilt.user_ids is not train.user_ids and rebuilt.item_ids is not train.item_ids
    assert rebuilt.user_ids == train.user_ids and rebuilt.item_ids == train.item_ids
    evaluate(model, train, rebuilt, k=3)
    # one shape, other ids behind the ints: refused
    other = Interactions.from_events({"user": [7, 8, 9, 9], "item": [5, 6, 7, 8]})
    assert other.matrix.shape == train.matrix.shape
    with pytest.raises(ValueError, match="share their id maps"):
        evaluate(model, train, other, k=3)
    # a model of another item count
    wide = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(
        sp.csr_matrix(np.ones((3, 5))))
    with pytest.raises(ValueError, match="the model knows 5"):
        evaluate(wide, train.matrix, test.matrix, k=3)


def test_diversity_within_zero_and_two():
    vectors = np.array([[0.1, 0.7, 0.3], [0.1, 0.7, 0.3], [-0.1, -0.7, -0.3]], np.float32)
    same = intra_list_diversity(np.array([[0, 1]]), vectors)
    opposite = intra_list_diversity(np.array([[0, 2]]), vectors)
    assert 0.0 <= same <= 1e-6 and 2 - 1e-6 <= opposite <= 2.0


# ---------------------------------------------------------------------------- rmse / mae
def _exact(truth, predicted):
    errors = [Fraction(a) - Fraction(b) for a, b in zip(truth, predicted)]
    mean_abs = sum(abs(e) for e in errors) / len(errors)
    mean_sq = sum(e * e for e in errors) / len(errors)
    with localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, 10**6, -10**6
        root = (Decimal(mean_sq.numerator) / Decimal(mean_sq.denominator)).sqrt()
        return float(root), float(Decimal(mean_abs.numerator) / Decimal(mean_abs.denominator))


def _close(got, want):
    return abs(got - want) <= 1e-12 * abs(want) + 2e-323


@HYPOTHESIS
@given(st.lists(st.tuples(st.floats(-8e307, 8e307), st.floats(-8e307, 8e307)),
                min_size=1, max_size=6))
def test_rmse_mae_exact_where_the_errors_are_finite(pairs):
    truth, predicted = zip(*pairs)
    want_rmse, want_mae = _exact(truth, predicted)
    assert _close(rmse(truth, predicted), want_rmse)
    assert _close(mae(truth, predicted), want_mae)


def test_rmse_mae_tiny_errors():
    assert _close(rmse([1e-160, 3e-160], [0, 0]), math.hypot(1e-160, 3e-160) / math.sqrt(2))
    assert mae([3e-170, -1e-170], [0, 0]) == pytest.approx(2e-170, rel=1e-15)
    assert rmse([5e-324], [0]) == 5e-324


def test_rmse_mae_of_an_overflowing_error_with_a_finite_mean():
    truth, predicted = [1e308, 0.0], [-1e308, 0.0]
    # errors 2e308 and 0: rmse = 2e308 / sqrt(2) = 1.414e308, mae = 1e308 (both finite)
    assert rmse(truth, predicted) == pytest.approx(2 / math.sqrt(2) * 1e308, rel=1e-12)
    assert mae(truth, predicted) == pytest.approx(1e308, rel=1e-12)


# ---------------------------------------------------------------------------- compat.implicit
def test_compat_flags_checked_and_csr_array_taken():
    from recfuse.compat.implicit import AlternatingLeastSquares

    matrix = _small_matrix().astype(np.float32)
    model = AlternatingLeastSquares(factors=3, iterations=2, random_state=0)
    model.fit(matrix, show_progress=False)
    ids, _ = model.recommend(np.arange(3), matrix[:3], N=3)
    again, _ = model.recommend(np.arange(3), sp.csr_array(matrix[:3]), N=3)
    assert np.array_equal(ids, again)
    for bad in ("yes", None, np.array([True]), 2):
        with pytest.raises(TypeError, match="filter_already_liked_items"):
            model.recommend(0, matrix[0], filter_already_liked_items=bad)
        with pytest.raises(TypeError, match="recalculate_user"):
            model.recommend(0, matrix[0], recalculate_user=bad)
        with pytest.raises(TypeError, match="recalculate_item"):
            model.similar_items(0, recalculate_item=bad)
    model.recommend(0, matrix[0], filter_already_liked_items=np.bool_(False))


def test_compat_cg_refusal_names_its_own_setting():
    from recfuse.compat.implicit import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=2, iterations=1, random_state=0)
    matrix = sp.csr_matrix(np.array([[1e13, 1, 0], [0, 1, 1]], np.float32))
    with pytest.raises(ValueError) as refused:
        model.fit(matrix, show_progress=False)
    assert "use_cg" in str(refused.value)


# ---------------------------------------------------------------------------- Rerank
def test_rerank_allows_and_mask_checked():
    rules = Rerank(allow=[1, 2, 3], deny=[2])
    assert rules.allows([1, 2, 5]).tolist() == [True, False, False]
    assert rules.allows(np.array([1, 3], ">i8")).tolist() == [True, True]
    assert rules.allows(np.array([], float)).shape == (0,)
    for bad in ([1.0], [True], ["1"], np.array([1], object)):
        with pytest.raises(TypeError, match="ids"):
            rules.allows(bad)
    assert rules.mask(np.int64(1), np.uint8(3)).tolist() == [1, 0, 1]
    with pytest.raises(TypeError, match="first"):
        rules.mask(True, 3)
    with pytest.raises(ValueError, match="count"):
        rules.mask(0, -1)


def test_rerank_copies_rebuilt_read_only():
    rules = Rerank(diversity=0.5, item_categories=[0, 1, 1], category_cap=1, allow=[0, 1],
                   deny=[])
    for copied in (copy.copy(rules), copy.deepcopy(rules), pickle.loads(pickle.dumps(rules))):
        assert copied == rules and hash(copied) == hash(rules)
        for array in (copied.allow, copied.deny, copied.item_categories):
            assert not array.flags.writeable


def test_rerank_mask_near_int64_top():
    top = 2**63 - 1
    rules = Rerank(deny=[top - 1])
    assert rules.mask(top - 3, 4).tolist() == [1, 1, 0, 1]  # ids top-3 .. top


def test_rerank_mask_of_an_impossible_count():
    with pytest.raises((ValueError, MemoryError), match="count"):
        Rerank(deny=[1]).mask(0, 2**63)


# ---------------------------------------------------------------------------- IdMap, Interactions
def test_idmap_equality_and_pickles():
    ints, bools = IdMap(np.array([1, 0])), IdMap(np.array([True, False]))
    assert ints != bools and not (bools == ints)
    assert IdMap(np.array([1, 2])) == IdMap(np.array([1, 2]))
    dates = IdMap(np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"))
    assert not (dates == IdMap(np.array([1, 2])))  # no exception from array_equal
    for id_map in (ints, bools, dates, IdMap(np.array(["a", "b"])), IdMap(np.array([1.5, 2.0]))):
        for copied in (copy.copy(id_map), copy.deepcopy(id_map),
                       pickle.loads(pickle.dumps(id_map))):
            assert copied == id_map and copied.kind == id_map.kind
            assert not copied.ids.flags.writeable
            assert copied.to_internal(id_map.ids[::-1]).tolist() == [1, 0]


def test_idmap_pickle_of_arrow_backed_map():
    pa = pytest.importorskip("pyarrow")
    for array in (pa.array(["x", "y", "x", "z"]), pa.array(["x", "y", "x", "z"], pa.large_string())):
        id_map, codes = IdMap.from_values(pa.chunked_array([array]))
        copied = pickle.loads(pickle.dumps(id_map))
        assert copied == id_map and copied.kind == "string" == id_map.kind
        assert copied.to_internal(["z", "x"]).tolist() == id_map.to_internal(["z", "x"]).tolist()
        assert not copied.ids.flags.writeable


def test_interactions_pickles_without_caches():
    data = Interactions.from_events({"user": ["a", "b", "a", "c"], "item": [1, 2, 3, 1],
                                     "weight": [1.0, 2.0, 3.0, 4.0]})
    matrix = data.matrix  # builds the cache
    assert data.__getstate__()["_matrix"] is None
    for copied in (copy.copy(data), copy.deepcopy(data), pickle.loads(pickle.dumps(data))):
        rebuilt = copied.matrix
        assert (rebuilt != matrix).nnz == 0 and rebuilt.shape == matrix.shape
        assert copied.user_ids == data.user_ids and copied.item_ids == data.item_ids
    assert data.matrix is matrix  # the original keeps its cache


# ---------------------------------------------------------------------------- subclasses, ==
class _Index(ItemIndex):
    pass


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_item_index_copies_keep_subclass_and_answers(metric):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((40, 6)).astype(np.float32)
    items[3] *= 1e37  # a row the cosine index scales down
    index = _Index(items, item_bias=rng.standard_normal(40), metric=metric)
    queries = rng.standard_normal((3, 6)).astype(np.float32)
    ids, scores = index.search(queries, 7)
    for copied in (copy.copy(index), copy.deepcopy(index), pickle.loads(pickle.dumps(index))):
        assert type(copied) is _Index
        got_ids, got_scores = copied.search(queries, 7)
        assert np.array_equal(got_ids, ids) and np.array_equal(got_scores, scores)


class _Scorer(recfuse.ranking.MLPScorer):
    pass


def test_mlp_scorer_copies_keep_subclass():
    W1 = np.array([[1.0, -1.0], [0.5, 0.5]], np.float32)
    W2 = np.array([[1.0, 2.0]], np.float32)
    scorer = _Scorer([(W1, None, "relu"), (W2, np.zeros(1, np.float32), "identity")])
    scorer.source = "here"
    for copied in (copy.copy(scorer), copy.deepcopy(scorer), pickle.loads(pickle.dumps(scorer))):
        assert type(copied) is _Scorer and copied.source == "here"
        assert copied.score(np.array([[2.0, 1.0]], np.float32)).tolist() == [4.0]


def test_recommendation_and_events_equality():
    first = Recommendation(np.array([1, 2]), np.array([0.5, -np.inf], np.float32),
                           np.array(["recall", ""]), 1)
    second = Recommendation(*(np.array(field) for field in first[:3]), 1)
    assert first == second and not first != second
    assert first != second._replace(version=2)
    assert first != tuple(second)  # another type
    assert first != Recommendation(*(np.atleast_2d(f) for f in first[:3]), 1)
    assert first in [second]
    events = Events(np.array([1]), np.array([2]), np.array([1.0]))
    assert events == events._replace() and events != events._replace(calls=np.array([0]))
    assert events._replace(calls=np.array([0])) == events._replace(calls=np.array([0]))


# ---------------------------------------------------------------------------- repr, settings
def _models():
    from recfuse.compat.implicit import AlternatingLeastSquares

    return [recfuse.ALS(), recfuse.BPR(), recfuse.SVD(), recfuse.SVDpp(), recfuse.ExplicitALS(),
            AlternatingLeastSquares()]


@pytest.mark.parametrize("index", range(6))
def test_repr_survives_hand_assigned_settings(index):
    model = _models()[index]
    for name in inspect.signature(type(model)).parameters:
        for value in (None, "garbage", object(), np.array([1, 2]), 1e300, -1, True, {"a": 1}):
            changed = copy.copy(model)
            try:
                setattr(changed, name, value)
            except (AttributeError, TypeError, ValueError):
                continue
            assert isinstance(repr(changed), str)


SETTINGS = [(recfuse.ALS, "alpha"), (recfuse.ALS, "regularization"), (recfuse.BPR, "lr"),
            (recfuse.BPR, "reg"), (recfuse.SVD, "lr"), (recfuse.SVD, "reg_qi"),
            (recfuse.SVDpp, "reg_yj"), (recfuse.ExplicitALS, "reg"),
            (recfuse.ExplicitALS, "reg_bias")]


@pytest.mark.parametrize("cls,name", SETTINGS, ids=lambda v: getattr(v, "__name__", v))
def test_settings_the_dtype_cannot_hold(cls, name):
    with pytest.raises(ValueError, match=name):
        cls(**{name: 1e39, "dtype": np.float32})
    cls(**{name: 3e38, "dtype": np.float32})  # within float32
    model = cls(**{name: 1e300, "dtype": np.float64})
    with pytest.raises(ValueError, match=name):
        model.set_params(dtype=np.float32)
    assert model.dtype == np.float64 and getattr(model, name) == 1e300  # nothing changed
    model = cls(dtype=np.float32, random_state=0)
    setattr(model, name, 1e300)  # by hand: the fit checks it
    with pytest.raises(ValueError, match=name):
        model.fit(_small_matrix(ratings=True))


# ---------------------------------------------------------------------------- the cg bound
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cg_bound_exact_limit_and_one_ulp_past(dtype):
    from recfuse._als.common import AlsParams

    bound = CG_CONFIDENCE_BOUNDS[np.dtype(dtype)]
    assert bound == float(np.cbrt(np.finfo(dtype).max))
    past = float(np.nextafter(dtype(bound), dtype(np.inf)))
    raw = AlsParams(regularization=0.1, alpha=1.0, confidence="raw", solver="cg", cg_steps=3,
                    num_threads=1)
    check_cg_confidences(np.array([bound, -bound]), raw, dtype, "v")  # at the bound: taken
    for value in (past, -past):
        with pytest.raises(ValueError, match="cg solver"):
            check_cg_confidences(np.array([value]), raw, dtype, "v")
    chol = AlsParams(regularization=0.1, alpha=1.0, confidence="raw", solver="cholesky",
                     cg_steps=3, num_threads=1)
    check_cg_confidences(np.array([1e300]), chol, dtype, "v")  # not the cg solver's bound
    zero_alpha = AlsParams(regularization=0.1, alpha=0.0, confidence="linear", solver="cg",
                           cg_steps=3, num_threads=1)
    check_cg_confidences(np.array([1e300]), zero_alpha, dtype, "v")  # confidence 1


def test_cg_bound_in_fit_counts_negative_raw_values():
    matrix = _small_matrix().tolil()
    matrix[0, 0] = -float(np.nextafter(np.float32(C32), np.float32(np.inf)))
    matrix = matrix.tocsr()
    model = recfuse.ALS(factors=2, iterations=1, confidence="raw", dtype=np.float32,
                        random_state=0)
    with pytest.raises(ValueError, match="cg solver"):
        model.fit(matrix)
    assert model.user_factors is None  # nothing changed
    recfuse.ALS(factors=2, iterations=1, confidence="raw", solver="cholesky", dtype=np.float32,
                random_state=0).fit(sp.csr_matrix(np.array([[1.0, 0], [0, 1]])))


def test_observe_cg_weight_at_the_bound_is_checked_up_front():
    matrix = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], float))
    model = recfuse.ALS(factors=2, iterations=2, solver="cg", confidence="linear", alpha=1.0,
                        dtype=np.float32, random_state=0).fit(matrix)
    served = recfuse.Recommender(model)
    weight = C32 - 1  # confidence 1 + weight = the bound itself, in float64
    try:
        served.observe({"user": [0], "item": [2], "weight": [weight]})
    except UserEventError:
        pass  # refused by the up-front check, naming the user: fine too


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_cg_fold_in_below_the_bound_is_not_silently_kept(backend):
    if backend not in [b.name for b in recfuse.backends("als") if b.available]:
        pytest.skip(f"{backend} backend not available")
    matrix = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]], float))
    items = np.array([[2.0, 1.0], [1.0, -2.0], [-1.5, 2.0], [2.0, 2.0]], np.float32)
    model = recfuse.ALS(factors=2, iterations=0, solver="cg", confidence="raw",
                        dtype=np.float32, backend=backend, regularization=0.1).fit(
        matrix, initial_factors=(np.full((3, 2), 0.5, np.float32), items))
    # a tenth of the bound gives (0.4, 0.2), the limit y0 / |y0|^2; half of it, within
    # the bound, must too (or be refused), not the new user's starting zeros
    tenth = model.update_users([3], sp.csr_matrix(np.array([[C32 / 10, 0, 1, 0]])))[0]
    assert np.allclose(tenth, [0.4, 0.2], atol=1e-3)
    try:
        half = model.update_users([4], sp.csr_matrix(np.array([[C32 / 2, 0, 1, 0]])))[0]
    except ValueError:
        return
    assert np.allclose(half, [0.4, 0.2], atol=1e-3)


# ---------------------------------------------------------------------------- advice wording
def test_failed_systems_advice_never_advises_float64_to_float64():
    assert "dtype=np.float64" not in failed_systems_advice(0.1, np.float64, "x")
    assert "dtype=np.float64" in failed_systems_advice(0.1, np.float32, "x")
    assert failed_systems_advice(0.0, np.float64, "x").startswith("use regularization > 0 (or")
    assert "lower alpha" in failed_systems_advice(0.0, np.float64, "x")


def test_als_failed_rows_hint_of_a_float64_model():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 12)) < 0.4).astype(np.float64)
    dense[0, 0] = C64  # at the cg bound: accepted, then the CG steps of some rows overflow
    model = recfuse.ALS(factors=3, iterations=3, solver="cg", confidence="raw",
                        dtype=np.float64, backend="numpy", random_state=1)
    with pytest.warns(RuntimeWarning, match="not positive definite") as caught:
        model.fit(sp.csr_matrix(dense))
    assert "dtype=np.float64" not in str(caught[0].message)
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()


# ---------------------------------------------------------------------------- warnings' lines
def _warning_lines(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [(os.path.basename(w.filename), w.lineno) for w in caught
            if not issubclass(w.category, DeprecationWarning)]


def test_caller_stacklevel_from_threads_and_callbacks():
    from recfuse.compat.implicit import AlternatingLeastSquares

    coo = _small_matrix().astype(np.float32).tocoo()

    def fit_coo():
        AlternatingLeastSquares(factors=2, iterations=1, random_state=0).fit(
            coo, show_progress=False)
    line = inspect.getsourcelines(fit_coo)[1] + 1
    assert _warning_lines(fit_coo) == [(HERE, line)]

    def in_thread():
        worker = threading.Thread(target=fit_coo)
        worker.start()
        worker.join()
    assert _warning_lines(in_thread) == [(HERE, line)]

    def in_callback():  # a recfuse fit's callback calls recfuse again
        recfuse.ALS(factors=2, iterations=1).fit(_small_matrix(), callback=lambda *_: fit_coo())
    assert _warning_lines(in_callback) == [(HERE, line)]


def test_caller_stacklevel_of_an_unavailable_backend(tmp_path):
    path = str(tmp_path / "m.npz")
    model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(_small_matrix())
    model.backend = "cuda"
    model.save(path)
    if any(b.name == "cuda" and b.available for b in recfuse.backends("als")):
        pytest.skip("cuda is available here: no warning")
    served = recfuse.Recommender(recfuse.ALS(factors=2, iterations=1, random_state=0)
                                 .fit(_small_matrix()))
    for call in (lambda: recfuse.load(path), lambda: recfuse.Recommender(path),
                 lambda: served.swap_model(path)):
        lines = _warning_lines(call)
        assert lines and all(name == HERE for name, _ in lines), lines


# ---------------------------------------------------------------------------- no stderr/stdout
def _child(code, timeout=240, shell_suffix=None):
    if shell_suffix is None:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    return subprocess.run(f'"{sys.executable}" -c "$CODE" {shell_suffix}', shell=True,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CODE": code})


def test_progress_bars_without_stderr():
    code = textwrap.dedent("""
        import sys
        sys.stderr = None
        import numpy as np, scipy.sparse as sp, recfuse
        from recfuse.metrics import evaluate
        from recfuse.ranker import MLPRanker
        from recfuse.compat.implicit import AlternatingLeastSquares
        rng = np.random.default_rng(0)
        M = sp.csr_matrix((rng.random((30, 12)) < 0.4) * rng.integers(1, 6, (30, 12)) * 1.0)
        recfuse.BPR(factors=2, iterations=2).fit(M, show_progress=True)
        recfuse.SVD(factors=2, epochs=2).fit(M, show_progress=True)
        recfuse.SVDpp(factors=2, epochs=2).fit(M, show_progress=True)
        recfuse.ExplicitALS(factors=2, iterations=2).fit(M, show_progress=True)
        als = recfuse.ALS(factors=2, iterations=2).fit(M, show_progress=True)
        evaluate(als, M, M, show_progress=True)
        als.recommend_all(show_progress=True)
        MLPRanker(epochs=1).fit(M, als.user_factors, als.item_factors, show_progress=True)
        AlternatingLeastSquares(factors=2, iterations=2, calculate_training_loss=True).fit(
            M.astype(np.float32))
        print("done")
    """)
    done = _child(code)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stdout + done.stderr


def test_cli_with_stdout_closed():
    done = _child("import sys; from recfuse.cli import main; sys.exit(main())",
                  shell_suffix="info >&-")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = _child("import sys; from recfuse.cli import main; sys.exit(main())",
                  shell_suffix="demo --users 40 --items 25 --events 600 --json >&-")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_numpy_backends_ignore_fp_errors():
    tiny = _small_matrix(ratings=True)
    tiny.data *= 1e-30  # products underflow
    with np.errstate(all="raise"):
        for dtype in (np.float32, np.float64):
            fits = [recfuse.ALS(factors=3, iterations=2, backend="numpy", dtype=dtype),
                    recfuse.ALS(factors=3, iterations=2, solver="cholesky", backend="numpy",
                                dtype=dtype),
                    recfuse.BPR(factors=3, iterations=2, backend="numpy", dtype=dtype),
                    recfuse.SVD(factors=3, epochs=2, backend="numpy", dtype=dtype),
                    recfuse.SVDpp(factors=3, epochs=2, backend="numpy", dtype=dtype),
                    recfuse.ExplicitALS(factors=3, iterations=2, backend="numpy", dtype=dtype)]
            for model in fits:
                model.set_params(random_state=0).fit(tiny, callback=lambda *_: None)
            served = recfuse.Recommender(fits[0])
            served.observe({"user": [0, 31], "item": [1, 2], "weight": [1e-30, 1e-30]})
            served.recommend(0)


def test_svdpp_reference_decay_power_overflows_to_diverged():
    with pytest.raises(ValueError, match="diverged"):
        recfuse.SVDpp(factors=3, epochs=30, lr=5.0, reg=5.0, backend="numpy",
                      random_state=0).fit(_small_matrix(ratings=True))


# ---------------------------------------------------------------------------- combine="max"
@HYPOTHESIS
@given(st.lists(st.sampled_from([0.0, -0.0, -1.0, -2.5, 3.0]), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_combine_max_signed_zeros_order_free(values, rnd):
    order = list(range(len(values)))
    rnd.shuffle(order)
    shuffled = [values[i] for i in order]
    n = len(values)
    zeros = np.zeros(n, np.int64)
    native = [group_events(zeros, zeros, np.array(v), n_users=1, n_items=1, combine="max")[2]
              for v in (values, shuffled)]
    reference = reference_data.group_events(zeros, zeros, np.array(values), n_users=1,
                                            n_items=1, combine="max")[2]
    assert native[0].tobytes() == native[1].tobytes()
    assert native[0].tobytes() == reference.astype(np.float32).tobytes()
    want = max(values)
    if want == 0:
        want = -0.0 if all(math.copysign(1, v) < 0 for v in values if v == 0) else 0.0
    assert math.copysign(1, float(native[0][0])) == math.copysign(1, want)
    assert float(native[0][0]) == want


def test_combine_max_signed_zeros_through_interactions():
    stored = []
    for order in itertools.permutations([0.0, -0.0, -1.0]):
        data = Interactions.from_events({"user": [1, 1, 1], "item": [2, 2, 2],
                                         "weight": list(order)}, combine="max")
        stored.append(data.matrix.data.tobytes())
    assert len(set(stored)) == 1 and not np.signbit(np.frombuffer(stored[0], np.float32)).any()

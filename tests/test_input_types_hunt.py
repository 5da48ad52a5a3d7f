"""Adversarial hunt on the array-like inputs the public methods take: ids, vectors and
ratings given as Python lists and tuples, ranges, NumPy scalars and 0-d arrays, pandas
Series/Index (nullable Int64, categorical), polars Series, pyarrow arrays and ChunkedArrays,
memoryviews, array.array, other integer dtypes, big-endian, negative-stride, read-only and
unaligned arrays, and what must be refused (bools, floats, strings, None, sets, generators,
missing values, ints past int64).

The contract used (docstrings of ``recommend``/``similar_*``/``predict``/``update_users``/
``fit``, ``_validation.check_ids``, ``ItemIndex.search``, ``MLPScorer``, ``Recommender``,
``metrics``, ``Interactions.from_arrays``, and the README):

- an accepted form gives exactly the answer of the equivalent C-contiguous int64 (ids) or
  float32/float64 (values) NumPy array;
- one id (a Python or NumPy integer, or a 0-d integer array) gives 1-d results, a sequence of
  ids (even of one) 2-d results, in every factor model; ``predict`` of one pair is a float;
- ids are integers: bools, floats (3.0 as 3.5), strings, None and unordered containers are
  refused with a TypeError/ValueError that names the argument and says what was expected and
  what came ("Strings are not ratings": ``tests/test_metrics.py``; IdMap and
  ``Interactions`` refuse True among ints, and ``ItemIndex``'s allow/deny name a set or a
  generator); a refused call changes nothing.
"""

from __future__ import annotations

import array
import copy
import decimal

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import metrics

pd = pytest.importorskip("pandas")

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
N_USERS, N_ITEMS, F = 12, 9, 3
MODELS = ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"]


# ---------------------------------------------------------------------- fixtures


def _data():
    rng = np.random.default_rng(0)
    R = sp.random(N_USERS, N_ITEMS, density=0.3, format="csr", random_state=1,
                  dtype=np.float32)
    R.data[:] = rng.integers(1, 4, R.nnz)
    coo = R.tocoo()
    return R, coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)


R, USERS, ITEMS, RATINGS = _data()


def _fit(name):
    common = dict(factors=F, random_state=0, num_threads=1)
    if name == "ALS":
        return recfuse.ALS(iterations=2, **common).fit(R)
    if name == "BPR":
        return recfuse.BPR(iterations=2, **common).fit(R)
    cls = {"SVD": recfuse.SVD, "SVDpp": recfuse.SVDpp, "ExplicitALS": recfuse.ExplicitALS}[name]
    extra = dict(iterations=2) if name == "ExplicitALS" else dict(epochs=2)
    return cls(**extra, **common).fit(USERS, ITEMS, RATINGS)


@pytest.fixture(scope="module")
def models():
    return {name: _fit(name) for name in MODELS}


@pytest.fixture(scope="module")
def index():
    items = np.random.default_rng(0).integers(-3, 4, (N_ITEMS, 3)).astype(np.float32)
    return recfuse.ItemIndex(items, backend="cpu")


@pytest.fixture(scope="module")
def scorer():
    rng = np.random.default_rng(0)
    W1 = rng.integers(-2, 3, (4, 6)).astype(np.float32)
    W2 = rng.integers(-2, 3, (1, 4)).astype(np.float32)
    return recfuse.MLPScorer([(W1, None, "relu"), (W2, None, "identity")], backend="cpu")


TABLE = np.random.default_rng(1).integers(-2, 3, (N_ITEMS, 3)).astype(np.float32)
USER_VECTORS = np.random.default_rng(2).integers(-2, 3, (2, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def recommender(models):
    return recfuse.Recommender(models["ALS"], k=3)


TEST = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32))
VECTORS = np.array([[1, 0], [0, 1], [1, 1], [1, -1]], np.float32)


# ---------------------------------------------------------------------- the forms


def _unaligned(a):
    a = np.ascontiguousarray(a)
    buffer = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buffer.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


def _read_only(a):
    out = np.array(a)
    out.flags.writeable = False
    return out


def _negative_stride(a):
    return np.ascontiguousarray(a[::-1])[::-1]


def _polars(a):
    pl = pytest.importorskip("polars")
    return pl.Series(a)


def _arrow(a):
    pa = pytest.importorskip("pyarrow")
    return pa.array(a)


def _chunked(a):
    pa = pytest.importorskip("pyarrow")
    return pa.chunked_array([a[: len(a) // 2], a[len(a) // 2:]], type=pa.int64())


# Each: int64 ids (1-d, >= 0, < 256) -> the same ids in another accepted form.
ID_FORMS = {
    "list": lambda a: a.tolist(),
    "tuple": lambda a: tuple(a.tolist()),
    "int32": lambda a: a.astype(np.int32),
    "uint8": lambda a: a.astype(np.uint8),
    "uint64": lambda a: a.astype(np.uint64),
    "big-endian": lambda a: a.astype(">i8"),
    "negative-stride": _negative_stride,
    "strided": lambda a: np.repeat(a, 2)[::2],
    "read-only": _read_only,
    "unaligned": _unaligned,
    "memoryview": lambda a: memoryview(np.ascontiguousarray(a)),
    "array.array": lambda a: array.array("q", a.tolist()),
    "pandas": lambda a: pd.Series(a, index=np.arange(len(a)) + 5),
    "pandas-index": lambda a: pd.Index(a),
    "pandas-Int64": lambda a: pd.Series(a, dtype="Int64"),
    "pandas-arrow": lambda a: pd.Series(a, dtype="int64[pyarrow]"),
    "pandas-categorical": lambda a: pd.Series(a).astype("category"),
    "object-python-ints": lambda a: np.array(a.tolist(), dtype=object),
    "polars": _polars,
    "pyarrow": _arrow,
    "pyarrow-chunked": _chunked,
}
FORM_NAMES = sorted(ID_FORMS)

# Each: float64 values (1-d) -> the same values in another accepted form.
VALUE_FORMS = {
    "list": lambda a: a.tolist(),
    "tuple": lambda a: tuple(a.tolist()),
    "float32": lambda a: a.astype(np.float32),
    "big-endian": lambda a: a.astype(">f8"),
    "negative-stride": _negative_stride,
    "read-only": _read_only,
    "unaligned": _unaligned,
    "memoryview": lambda a: memoryview(np.ascontiguousarray(a)),
    "array.array": lambda a: array.array("d", a.tolist()),
    "pandas": lambda a: pd.Series(a),
    "pandas-Float64": lambda a: pd.Series(a, dtype="Float64"),
    "polars": _polars,
    "pyarrow": _arrow,
}


def _same(a, b):
    """Equal results, tuple by tuple, bit for bit (NaN equal to NaN)."""
    if a is None or b is None:
        return a is b
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


ids_of = st.lists(st.integers(0, N_USERS - 1), min_size=1, max_size=6).map(
    lambda v: np.array(v, np.int64))
items_of = st.lists(st.integers(0, N_ITEMS - 1), min_size=1, max_size=6).map(
    lambda v: np.array(v, np.int64))
forms = st.sampled_from(FORM_NAMES)


# ---------------------------------------------------------------------- accepted forms


@HYPOTHESIS
@given(name=st.sampled_from(MODELS), ids=ids_of, items=items_of, form=forms,
       call=st.sampled_from(["recommend", "items", "exclude_items", "similar_users",
                             "similar_items", "predict"]))
def test_every_accepted_id_form_gives_the_int64_answer(models, name, ids, items, form, call):
    model = models[name]
    convert = ID_FORMS[form]

    def run(f):
        if call == "recommend":
            return model.recommend(f(ids), k=4)
        if call == "items":
            return model.recommend(ids, k=4, items=f(items))
        if call == "exclude_items":
            return model.recommend(ids, k=4, exclude_items=f(items))
        if call == "similar_users":
            return model.similar_users(f(ids), k=4)
        if call == "similar_items":
            return model.similar_items(f(items), k=4)
        if name == "ALS" or name == "BPR":
            return None
        return model.predict(f(ids), f(np.resize(items, ids.size)))

    assert _same(run(convert), run(lambda a: a))


@HYPOTHESIS
@given(ids=ids_of, form=forms)
def test_fold_in_ids_in_any_form_give_the_int64_fold_in(models, ids, form):
    ids = np.unique(ids)
    rows = R[ids]
    want, want_table = _fold(models["ALS"], ids, rows)
    got, got_table = _fold(models["ALS"], ID_FORMS[form](ids), rows)
    assert _same(got, want) and _same(got_table, want_table)


def _fold(model, ids, rows):
    model = copy.deepcopy(model)
    return model.update_users(ids, rows), model.user_factors


@pytest.mark.parametrize("form", FORM_NAMES + ["values"])
@pytest.mark.parametrize("name", ["SVD", "ExplicitALS"])
def test_fit_on_arrays_in_any_form_is_the_int64_fit(models, name, form):
    """fit(users, items, ratings): the same model from every accepted form of the three."""
    if form == "values":
        fitted = [_fit_with(name, USERS, ITEMS, VALUE_FORMS[v](RATINGS)) for v in VALUE_FORMS]
    else:
        convert = ID_FORMS[form]
        fitted = [_fit_with(name, convert(USERS), convert(ITEMS), RATINGS)]
    for model in fitted:
        assert _same(model.user_factors, models[name].user_factors)
        assert _same(model.item_factors, models[name].item_factors)
        assert model.rating_scale == models[name].rating_scale


def _fit_with(name, users, items, ratings):
    cls = {"SVD": recfuse.SVD, "ExplicitALS": recfuse.ExplicitALS}[name]
    extra = dict(iterations=2) if name == "ExplicitALS" else dict(epochs=2)
    return cls(factors=F, random_state=0, num_threads=1, **extra).fit(users, items, ratings)


@HYPOTHESIS
@given(allow=items_of, deny=items_of, form=forms,
       queries=st.lists(st.integers(-3, 3), min_size=3, max_size=3))
def test_topk_allow_and_deny_in_any_form(index, allow, deny, form, queries):
    q = np.array(queries, np.float32)
    want = index.search(q, 5, allow=allow, deny=deny)
    got = index.search(q, 5, allow=ID_FORMS[form](allow), deny=ID_FORMS[form](deny))
    assert _same(got, want)
    mask = np.zeros(N_ITEMS, bool)
    mask[allow] = True
    for as_mask in (mask.tolist(), pd.Series(mask), _arrow(mask), _polars(mask)):
        assert _same(index.search(q, 5, allow=as_mask, deny=deny), want)


@pytest.mark.parametrize("form", sorted(VALUE_FORMS) + ["pandas-frame", "fortran-2d",
                                                          "negative-stride-2d", "int-list"])
def test_queries_in_any_form(index, form):
    q = np.array([[1.0, 2.0, -1.0], [0.0, -1.0, 3.0]])
    want = index.search(q.astype(np.float32), 4)
    if form == "pandas-frame":
        got = index.search(pd.DataFrame(q), 4)
    elif form == "fortran-2d":
        got = index.search(np.asfortranarray(q), 4)
    elif form == "negative-stride-2d":
        got = index.search(q[::-1].copy()[::-1], 4)
    elif form == "int-list":
        got = index.search(q.astype(int).tolist(), 4)
    else:  # one query at a time: 1-d results
        got = tuple(np.stack(part) for part in zip(*(index.search(VALUE_FORMS[form](row), 4)
                                                    for row in q)))
    assert _same(got, want)


@HYPOTHESIS
@given(rows=st.lists(st.lists(st.integers(0, N_ITEMS - 1), min_size=3, max_size=3),
                     min_size=2, max_size=2), form=forms)
def test_candidate_ids_in_any_form(scorer, rows, form):
    C = np.array(rows, np.int64)
    convert = ID_FORMS[form]
    want_scores = scorer.score_candidates(USER_VECTORS, C, TABLE)
    want = scorer.rank(USER_VECTORS, C, TABLE, k=2)
    # the ragged forms: (indptr, ids) and one sequence per user give flat scores
    indptr = np.array([0, 3, 6])
    assert _same(scorer.rank(USER_VECTORS, (convert(indptr), convert(C.ravel())), TABLE, k=2),
                 want)
    assert _same(scorer.rank(USER_VECTORS, [convert(C[0]), convert(C[1])], TABLE, k=2), want)
    assert _same(scorer.score_candidates(USER_VECTORS, [convert(C[0]), convert(C[1])], TABLE),
                 want_scores.ravel())
    # one user, 1-d: 1-d scores and a (k,) list; a tuple is always (indptr, ids)
    if form == "tuple":
        with pytest.raises(ValueError, match="candidate_ids as a tuple must be"):
            scorer.rank(USER_VECTORS[0], convert(C[0]), TABLE, k=2)
        return
    one = scorer.rank(USER_VECTORS[0], convert(C[0]), TABLE, k=2)
    assert _same(one, tuple(part[0] for part in scorer.rank(USER_VECTORS[:1], C[:1], TABLE,
                                                            k=2)))


@pytest.mark.parametrize("form", sorted(VALUE_FORMS))
def test_mlp_vectors_in_any_form(scorer, form):
    C = np.array([0, 4, 2])
    want = scorer.score_candidates(USER_VECTORS[0], C, TABLE)
    assert _same(scorer.score_candidates(VALUE_FORMS[form](USER_VECTORS[0].astype(float)), C,
                                         TABLE), want)
    inputs = np.hstack([USER_VECTORS[0], TABLE[4]]).astype(float)
    assert _same(scorer.score(VALUE_FORMS[form](inputs)),
                 scorer.score(inputs.astype(np.float32)))


@HYPOTHESIS
@given(ids=ids_of, exclude=items_of, form=forms)
def test_recommender_users_and_excludes_in_any_form(recommender, ids, exclude, form):
    convert = ID_FORMS[form]
    want = recommender.recommend_batch(ids, excludes=[exclude] * ids.size)
    got = recommender.recommend_batch(convert(ids), excludes=[convert(exclude)] * ids.size)
    assert _same((got.ids, got.scores), (want.ids, want.scores))
    one = recommender.recommend(int(ids[0]), exclude=convert(exclude))
    assert _same((one.ids, one.scores), (want.ids[0], want.scores[0]))


@pytest.mark.parametrize("form", FORM_NAMES)
def test_observe_events_in_any_form(models, form):
    convert = ID_FORMS[form]
    users, items = np.array([2, 5, 2]), np.array([4, 1, 7])
    weights = np.array([1.0, 2.0, 3.0])
    results = []
    for u, i, w in ((users, items, weights), (convert(users), convert(items), weights.tolist())):
        rec = recfuse.Recommender(models["ALS"], k=3)
        assert rec.observe({"user": u, "item": i, "weight": w}) == 3
        r = rec.recommend_batch([2, 5])
        results.append((r.ids, r.scores, *rec.pending_events()[:3]))
    assert _same(results[0], results[1])


@pytest.mark.parametrize("form", [f for f in FORM_NAMES if f != "object-python-ints"])
def test_metrics_lists_in_any_form(form):
    recs = np.array([[3, 1], [2, 0]])
    want = (metrics.ranking_metrics(recs, TEST), metrics.catalog_coverage(recs, 4),
            metrics.novelty(recs, TEST), metrics.intra_list_diversity(recs, VECTORS))
    convert = ID_FORMS[form]
    if form.startswith(("pandas", "polars", "pyarrow", "memoryview", "array")):
        got_recs = np.stack([np.asarray(convert(row)) for row in recs])
    else:
        got_recs = np.stack([convert(row) for row in recs]) if not form.startswith(
            ("list", "tuple")) else [convert(row) for row in recs]
    got = (metrics.ranking_metrics(got_recs, TEST), metrics.catalog_coverage(got_recs, 4),
           metrics.novelty(got_recs, TEST), metrics.intra_list_diversity(got_recs, VECTORS))
    assert got == want
    if form in ("list", "tuple", "pandas", "polars", "pyarrow", "array.array"):  # 1-d forms
        assert metrics.catalog_coverage(convert(recs.ravel()), 4) == want[1]


@pytest.mark.parametrize("form", sorted(VALUE_FORMS))
def test_rating_errors_take_any_numeric_form(form):
    truth, predicted = np.array([1.0, 2.0, 4.5]), np.array([1.5, 2.0, 3.0])
    convert = VALUE_FORMS[form]
    assert metrics.rmse(convert(truth), convert(predicted)) == metrics.rmse(truth, predicted)
    assert metrics.mae(convert(truth), predicted) == metrics.mae(truth, predicted)


@pytest.mark.parametrize("form", FORM_NAMES)
def test_interactions_from_arrays_in_any_form(form):
    users, items = np.array([3, 1, 3, 7]), np.array([10, 20, 20, 10])
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    want = recfuse.Interactions.from_arrays(users, items, weights)
    convert = ID_FORMS[form]
    got = recfuse.Interactions.from_arrays(convert(users), convert(items), weights.tolist())
    assert (got.matrix != want.matrix).nnz == 0
    assert [int(v) for v in got.user_ids.ids] == [int(v) for v in want.user_ids.ids]
    assert [int(v) for v in got.item_ids.ids] == [int(v) for v in want.item_ids.ids]


# ---------------------------------------------------------------------- result shapes


ONE_ID = {"int": 2, "np.int64": np.int64(2), "np.uint8": np.uint8(2), "0-d": np.array(2),
          "0-d-object": np.array(2, dtype=object)}


@pytest.mark.parametrize("one", sorted(ONE_ID))
@pytest.mark.parametrize("name", MODELS)
def test_one_id_gives_1d_results_and_a_list_of_one_2d(models, name, one):
    model = models[name]
    for call in (lambda u: model.recommend(u, k=4), lambda u: model.similar_users(u, k=4),
                 lambda u: model.similar_items(u, k=4)):
        single, batch, empty = call(ONE_ID[one]), call([2]), call([])
        assert single[0].shape == single[1].shape == (4,)
        assert batch[0].shape == batch[1].shape == (1, 4)
        assert empty[0].shape == empty[1].shape == (0, 4)
        assert single[0].dtype == batch[0].dtype == empty[0].dtype == np.int64
        assert single[1].dtype == batch[1].dtype == empty[1].dtype == model.dtype
        assert _same(single, (batch[0][0], batch[1][0]))
    if name not in ("ALS", "BPR"):
        assert type(model.predict(ONE_ID[one], ONE_ID[one])) is float
        assert model.predict([2], 2).shape == model.predict(2, [2]).shape == (1,)


def test_recommender_takes_one_integer_user_and_the_scorer_one_row(recommender, scorer):
    for one in ONE_ID.values():
        if isinstance(one, np.ndarray) and one.dtype == object:
            continue  # not an integer id: an object
        r = recommender.recommend(one)
        assert r.ids.shape == r.scores.shape == r.stages.shape == (3,)
    assert isinstance(scorer.score(np.ones(6, np.float32)), np.float32)
    assert scorer.score(np.ones((1, 6), np.float32)).shape == (1,)
    assert scorer.score_candidates(USER_VECTORS[:1], np.array([1, 2]), TABLE).shape == (1, 2)
    assert scorer.score_candidates(USER_VECTORS[0], np.array([1, 2]), TABLE).shape == (2,)


# ---------------------------------------------------------------------- refused forms


BAD_IDS = {
    "float-integral": ([3.0], TypeError), "float": ([3.5], TypeError),
    "np.float64": (np.float64(3.0), TypeError), "bool": (True, TypeError),
    "bool-list": ([True, False], TypeError), "string": ("3", TypeError),
    "bytes": (b"3", TypeError), "string-list": (["3"], TypeError),
    "None": (None, TypeError), "None-list": ([1, None], TypeError),
    "complex": ([1 + 0j], TypeError), "timedelta": (np.array([1], "m8[s]"), TypeError),
    "float16": (np.array([1], np.float16), TypeError), "Decimal": (decimal.Decimal(3), TypeError),
    "2-d": ([[1, 2]], ValueError), "past-int64": ([2**64], ValueError),
    "past-int64-uint64": (np.array([2**63], np.uint64), ValueError),
    "below-int64": (-(2**63) - 1, ValueError), "negative": ([-1], ValueError),
    "ragged": ([[1], [2, 3]], ValueError),
}


@pytest.mark.parametrize("bad", sorted(BAD_IDS))
@pytest.mark.parametrize("name", MODELS)
def test_bad_ids_are_refused_by_name(models, name, bad):
    value, error = BAD_IDS[bad]
    model = models[name]
    calls = [("user_ids", lambda: model.recommend(value)),
             ("item_ids", lambda: model.similar_items(value)),
             ("items", lambda: model.recommend(1, items=value)),
             ("exclude_items", lambda: model.recommend(1, exclude_items=value))]
    if name not in ("ALS", "BPR"):
        calls.append(("users", lambda: model.predict(value, 1)))
    for argument, call in calls:
        if value is None and argument in ("items", "exclude_items"):
            continue  # None there means no restriction
        with pytest.raises(error, match=argument) as caught:
            call()
        assert "numpy" not in str(caught.value).lower()  # not NumPy's own message


@pytest.mark.parametrize("bad", ["float-integral", "bool-list", "string-list", "2-d",
                                 "past-int64", "negative"])
def test_refused_fold_in_changes_nothing(models, bad):
    model = copy.deepcopy(models["ALS"])
    before = (model.user_factors.copy(), model.recommend([0, 1, 2]))
    value, error = BAD_IDS[bad]
    with pytest.raises(error, match="user_ids"):
        model.update_users(value, R[[1]])
    assert _same(model.user_factors, before[0])
    assert _same(model.recommend([0, 1, 2]), before[1])


@pytest.mark.parametrize("bad", ["float-integral", "float", "bool", "string", "None", "2-d",
                                 "past-int64", "negative", "np.float64"])
def test_recommender_refuses_bad_users_and_excludes_by_name(recommender, bad):
    value, error = BAD_IDS[bad]
    with pytest.raises((TypeError, ValueError), match="user"):
        recommender.recommend(value)
    if bad not in ("None",):  # exclude=None is no exclusion
        with pytest.raises((TypeError, ValueError), match="exclude"):
            recommender.recommend(1, exclude=value)


def test_refused_observe_applies_nothing(models):
    rec = recfuse.Recommender(models["ALS"], k=3)
    before = rec.recommend_batch([2, 5])
    for events, argument in (({"user": [2.0], "item": [1]}, "events user"),
                             ({"user": [2], "item": ["1"]}, "events item"),
                             ({"user": [2], "item": [1], "weight": [True]}, "weight"),
                             ({"user": [2], "item": [1], "weight": ["1"]}, "weight")):
        with pytest.raises(TypeError, match=argument):
            rec.observe(events)
    after = rec.recommend_batch([2, 5])
    assert _same((after.ids, after.scores), (before.ids, before.scores))
    assert rec.pending_events().users.size == 0


@pytest.mark.parametrize("ratings", [np.array(["1", "2"]), [True, "x"], np.array([1 + 0j, 2]),
                                     np.array([[1.0], [2.0]])])
def test_fit_refuses_ratings_that_are_not_real_numbers(ratings):
    with pytest.raises((TypeError, ValueError), match="ratings"):
        recfuse.SVD(factors=F, epochs=1).fit([0, 1], [0, 1], ratings)


def test_queries_and_vectors_of_the_wrong_kind_are_named(index, scorer):
    for bad in (np.array([True, False, True]), ["1", "2", "3"], [1 + 0j, 0, 0], None,
                np.array([1.0, 2.0, 3.0], dtype=object)):
        with pytest.raises(TypeError, match="queries"):
            index.search(bad, 2)
        with pytest.raises(TypeError, match="user_vectors"):
            scorer.score_candidates(bad, [0], TABLE)
    with pytest.raises(ValueError, match="queries"):
        index.search(pd.Series([1.0, None, 2.0], dtype="Float64"), 2)


# ---------------------------------------------------------------------- bugs
# 1. A bool among integer ids is read as the id 1 (or 0): NumPy makes [2, True] an int64
#    array [2, 1]. A list of bools alone is refused ("must hold integers, got dtype bool"),
#    as are True and np.True_; IdMap.to_internal and Interactions.from_arrays refuse True
#    among ints ("mixes id types"). The same True in a list of ids passes everywhere below.


def _bool_sites():
    """(argument the error must name, call(models, index, scorer, recommender))."""
    return {
        "ALS.recommend": ("user_ids", lambda m, *_: m["ALS"].recommend([2, True])),
        "SVD.recommend": ("user_ids", lambda m, *_: m["SVD"].recommend([2, True])),
        "BPR.similar_items": ("item_ids", lambda m, *_: m["BPR"].similar_items([2, True])),
        "ExplicitALS.similar_users": ("user_ids",
                                      lambda m, *_: m["ExplicitALS"].similar_users([True, 3])),
        "SVDpp.predict": ("users", lambda m, *_: m["SVDpp"].predict([2, True], [1, 1])),
        "ALS.recommend items": ("items", lambda m, *_: m["ALS"].recommend(2, items=[4, True])),
        "SVD.recommend exclude_items": (
            "exclude_items", lambda m, *_: m["SVD"].recommend(2, exclude_items=[4, True])),
        "ALS.update_users": ("user_ids", lambda m, *_: copy.deepcopy(m["ALS"]).update_users(
            [True, 3], R[[1, 3]])),
        "SVD.fit": ("users", lambda *_: recfuse.SVD(factors=F, epochs=1).fit(
            [True, 0, 2], [0, 1, 2], [1.0, 2.0, 3.0])),
        "ItemIndex.search allow": ("allow", lambda m, index, *_: index.search(
            [1.0, 2.0, -1.0], 3, allow=[6, True])),
        "topk deny": ("deny", lambda *_: recfuse.topk(
            [1.0, 0.0], np.eye(2, dtype=np.float32), 2, deny=[1, True])),
        "MLPScorer.rank": ("candidate_ids", lambda m, index, scorer, *_: scorer.rank(
            USER_VECTORS, [[0, True, 2], [4, 3, 2]], TABLE, k=2)),
        "Recommender.recommend exclude": ("exclude", lambda m, i, s, rec: rec.recommend(
            2, exclude=[4, True])),
        "Recommender.recommend_batch": ("users", lambda m, i, s, rec: rec.recommend_batch(
            [2, True])),
        "Recommender.observe": ("events user", lambda m, *_: recfuse.Recommender(
            m["ALS"], k=3).observe({"user": [2, True], "item": [5, 5]})),
        "Rerank deny": ("deny", lambda *_: recfuse.Rerank(deny=[13, True])),
        "Rerank item_categories": ("item_categories", lambda *_: recfuse.Rerank(
            item_categories=[0, True, 2], category_cap=1)),
        "ranking_metrics": ("recommended", lambda *_: metrics.ranking_metrics(
            [[3, True], [2, 0]], TEST)),
        "catalog_coverage": ("recommended", lambda *_: metrics.catalog_coverage([3, True], 4)),
        "intra_list_diversity": ("recommended", lambda *_: metrics.intra_list_diversity(
            [[3, True], [2, 0]], VECTORS)),
        "IdMap.to_external": ("codes", lambda *_: recfuse.Interactions.from_arrays(
            [3, 1, 7], [1, 1, 1]).user_ids.to_external([0, True])),
    }


BOOL_SITES = _bool_sites()


@pytest.mark.parametrize("site", sorted(BOOL_SITES))
def test_a_bool_among_integer_ids_is_refused(models, index, scorer, recommender, site):
    argument, call = BOOL_SITES[site]
    with pytest.raises(TypeError, match=argument):
        call(models, index, scorer, recommender)


def test_bools_alone_and_in_id_maps_are_refused(models, index):
    """The consistent half of the bool rule (regressions)."""
    with pytest.raises(TypeError, match="user_ids"):
        models["ALS"].recommend([True, False])
    with pytest.raises(TypeError, match="mixes id types"):
        recfuse.Interactions.from_arrays([3, 1, True], [1, 1, 1])
    log = recfuse.Interactions.from_arrays([3, 1, 7], [1, 1, 1])
    with pytest.raises(TypeError, match="mix types"):
        log.user_ids.to_internal([1, True])
    # a list of bools of the catalogue's length is a mask, as documented
    mask = [False] * N_ITEMS
    mask[4] = True
    assert index.search([1.0, 2.0, -1.0], 2, allow=mask)[0].tolist() == [4, -1]


# 2. rmse/mae read strings as numbers when they come in an object container: pandas 3's
#    default str Series, an object array, a pyarrow StringArray. A list of strings or a
#    polars str Series is refused ("Strings are not ratings", tests/test_metrics.py).

STRING_RATINGS = {
    "object-array": lambda: np.array(["3", "4"], dtype=object),
    "pandas-str": lambda: pd.Series(["3", "4"]),
    "pandas-object": lambda: pd.Series(["3", "4"], dtype=object),
    "pyarrow-string": lambda: _arrow(["3", "4"]),
    "object-bytes": lambda: np.array([b"3", b"4"], dtype=object),
}


@pytest.mark.parametrize("form", sorted(STRING_RATINGS))
@pytest.mark.parametrize("function", [metrics.rmse, metrics.mae])
def test_rating_errors_refuse_strings_in_any_container(function, form):
    with pytest.raises(TypeError, match="y_true"):
        function(STRING_RATINGS[form](), [3.0, 5.0])


@pytest.mark.parametrize("strings", [["3", "4"], np.array(["3", "4"]), "polars"])
def test_rating_errors_refuse_a_list_or_array_of_strings(strings):
    if isinstance(strings, str):
        strings = _polars(["3", "4"])
    with pytest.raises(TypeError, match="y_true"):
        metrics.rmse(strings, [3.0, 5.0])


# 3. A set, a generator or a dict view given as ids: "must hold integers, got dtype object"
#    (the set holds integers; NumPy made a 0-d object array of it). ItemIndex's allow/deny
#    name a set, a dict or a generator and say what to pass; dict views slip past that check.

CONTAINERS = {"set": lambda: {2, 3}, "frozenset": lambda: frozenset([2, 3]),
              "generator": lambda: (i for i in [2, 3]), "dict_keys": lambda: {2: 0, 3: 0}.keys()}

CONTAINER_SITES = {
    "ALS.recommend": ("user_ids", lambda m, i, rec, ids: m["ALS"].recommend(ids)),
    "SVD.similar_items": ("item_ids", lambda m, i, rec, ids: m["SVD"].similar_items(ids)),
    "SVD.predict": ("users", lambda m, i, rec, ids: m["SVD"].predict(ids, [1, 2])),
    "ItemIndex.search allow": ("allow", lambda m, index, rec, ids: index.search(
        [1.0, 2.0, -1.0], 3, allow=ids)),
    "Recommender.recommend exclude": ("exclude", lambda m, i, rec, ids: rec.recommend(
        2, exclude=ids)),
    "Recommender.observe": ("events user", lambda m, i, rec, ids: rec.observe(
        {"user": ids, "item": [1, 2]})),
    "Interactions.from_arrays": ("users", lambda m, i, rec, ids: recfuse.Interactions
                                 .from_arrays(ids, [1, 2])),
}


def _container_cases():
    return [pytest.param(site, container, id=f"{site}-{container}")
            for site in sorted(CONTAINER_SITES) for container in sorted(CONTAINERS)]


@pytest.mark.parametrize(("site", "container"), _container_cases())
def test_containers_without_an_order_are_refused_by_type(models, index, site, container):
    argument, call = CONTAINER_SITES[site]
    rec = recfuse.Recommender(models["ALS"], k=3)
    with pytest.raises(TypeError, match=argument) as caught:
        call(models, index, rec, CONTAINERS[container]())
    assert type(CONTAINERS[container]()).__name__ in str(caught.value)
    assert rec.pending_events().users.size == 0


# 4. Integer ids with a missing value (pandas Int64 with pd.NA, a polars or pyarrow null):
#    "must hold integers, got dtype float64" (or "dtype object" for a nullable bool mask),
#    a dtype the caller never had. Interactions says "users has 1 missing values".

MISSING = {"pandas-Int64": lambda: pd.array([2, None], dtype="Int64"),
           "polars-null": lambda: _polars([2, None]),
           "pyarrow-null": lambda: _arrow([2, None])}


@pytest.mark.parametrize("form", sorted(MISSING))
@pytest.mark.parametrize("call", ["recommend", "predict", "allow-mask"])
def test_missing_ids_are_refused_as_missing(models, index, form, call):
    with pytest.raises((TypeError, ValueError), match=r"(?i)missing|null|\bNA\b") as caught:
        if call == "recommend":
            models["ALS"].recommend(MISSING[form]())
        elif call == "predict":
            models["SVD"].predict(MISSING[form](), [1, 2])
        else:  # a nullable boolean mask
            mask = [False] * (N_ITEMS - 1) + [None]
            index.search([1.0, 2.0, -1.0], 3,
                         allow=pd.array(mask, dtype="boolean") if form == "pandas-Int64"
                         else _polars(mask) if form == "polars-null" else _arrow(mask))
    assert "float64" not in str(caught.value)


def test_interactions_name_missing_ids(models):
    for form in MISSING.values():
        with pytest.raises(ValueError, match="users has 1 missing values"):
            recfuse.Interactions.from_arrays(form(), [1, 2])


# ---------------------------------------------------------------------- crashes


def test_unaligned_arrays_reach_the_native_kernels_safely():
    """Unaligned (but C-contiguous) arrays pass NumPy's contiguity checks as they are:
    run in a child, so that an aligned SIMD load on one could not take the suite down."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numpy as np, scipy.sparse as sp, recfuse
        from recfuse import metrics
        def unaligned(a):
            a = np.ascontiguousarray(a)
            buf = np.zeros(a.nbytes + 1, np.uint8)
            out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
            out[...] = a
            assert not out.flags.aligned
            return out
        rng = np.random.default_rng(0)
        items = rng.standard_normal((3000, 64)).astype(np.float32)
        q = rng.standard_normal((5, 64)).astype(np.float32)
        for storage in ("native", "bfloat16"):
            a = recfuse.topk(q, items, 10, storage=storage, backend="cpu")
            b = recfuse.topk(unaligned(q), unaligned(items), 10, storage=storage, backend="cpu")
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        W = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in [(32, 128), (16, 32), (1, 16)]]
        s = recfuse.MLPScorer([(W[0], None, "relu"), (W[1], None, "relu"), (W[2], None, "identity")],
                              backend="cpu")
        C = rng.integers(0, 3000, (5, 100))
        a = s.rank(q, C, items, k=5)
        b = s.rank(unaligned(q), unaligned(C), unaligned(items), k=5)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        R = sp.random(200, 150, density=0.05, format="csr", random_state=0, dtype=np.float32)
        U = sp.csr_matrix((unaligned(R.data), unaligned(R.indices), unaligned(R.indptr)), shape=R.shape)
        for solver in ("cg", "cholesky"):
            a = recfuse.ALS(factors=16, iterations=2, random_state=0, solver=solver).fit(R)
            b = recfuse.ALS(factors=16, iterations=2, random_state=0, solver=solver).fit(U)
            assert np.array_equal(a.user_factors, b.user_factors)
        coo = R.tocoo()
        u, i, r = coo.row.astype(np.int64), coo.col.astype(np.int64), np.round(coo.data * 4 + 1)
        for cls in (recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS):
            a = cls(factors=16, random_state=0).fit(u, i, r)
            b = cls(factors=16, random_state=0).fit(unaligned(u), unaligned(i), unaligned(r))
            assert np.array_equal(a.user_factors, b.user_factors)
        recs = np.argsort(rng.random((50, 100)), axis=1)[:, :10]
        assert metrics.intra_list_diversity(recs, items[:100]) == metrics.intra_list_diversity(
            unaligned(recs), unaligned(items[:100]))
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-2000:]


def test_masked_ids_are_refused_not_read_through_the_mask(models):
    """np.asarray drops a mask: recommend(np.ma.array([1, 2], mask=[0, 1])) answered for the
    masked id 2 too. A masked array with masked entries is refused; one without is an array."""
    with pytest.raises(TypeError, match=r"user_ids .*masked"):
        models["ALS"].recommend(np.ma.array([1, 2], mask=[0, 1]))
    unmasked = models["ALS"].recommend(np.ma.array([1, 2]))
    assert np.array_equal(unmasked[0], models["ALS"].recommend([1, 2])[0])


def test_object_arrays_of_numpy_integers_are_ids_like_python_ints():
    """An object array of NumPy integers (e.g. ids gathered from several arrays into a list
    and then np.array(..., dtype=object)) means the same ids as one of Python ints."""
    seen = sp.random(8, 6, density=0.5, format="csr", random_state=0, dtype=np.float32)
    model = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(seen)
    want = model.recommend(np.array([1, 4]), k=3)
    got = model.recommend(np.array([np.int64(1), np.uint8(4)], dtype=object), k=3)
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(TypeError, match="must hold integers"):
        model.recommend(np.array([np.bool_(True)], dtype=object), k=3)

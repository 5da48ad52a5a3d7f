"""Adversarial hunt on recfuse's objects under Python's object protocols: pickle (protocols 0
to 5, in memory), copy.copy / copy.deepcopy, sklearn.base.clone and get_params/set_params,
repr/str, ==, hash, dict keys and sets, weakref, and transport to a "spawn" worker.

The contract used here:
- README "Processes": "Models, ``ItemIndex`` and ``MLPScorer`` pickle (in memory) for
  "spawn" pools"; README design notes and ``FactorRetrieval``: models pickle (deepcopy,
  multiprocessing, Surprise's parallel ``cross_validate``) without their lock and index
  caches, which are made anew. ``ItemIndex.__reduce__`` / ``MLPScorer.__reduce__``: pickled
  and copied as the table / layers and settings. A copy answers bit for bit as the original,
  fits, folds in, saves and loads as it would, and shares no array with it that either side
  writes into.
- ``Recommender``, ``MicroBatcher`` and ``PreparedItems`` are not pickled or copied: a
  TypeError naming the class (their ``__reduce__``).
- ``IdMap``: "Immutable", its ``ids`` "read-only"; ``__eq__`` compares the ids.
  ``Interactions``: "Immutable"; ``matrix`` "shares its arrays with these Interactions ...
  its values are read-only arrays". ``Rerank``: "The rules are fixed at construction: the
  arrays are read-only copies. Two Rerank are equal (and hash alike) when their rules are."
- Every model follows scikit-learn's get_params/set_params (README), so
  ``sklearn.base.clone`` works: an unfitted model of equal parameters.
- The hunt's own standards: repr()/str() never raise (before fit, after a failed fit, with
  odd attribute values, which "the next fit checks"), are short and equal for equal
  objects; == never raises numpy's ambiguous-truth-value error; objects that must not be
  pickled refuse with a clear TypeError, never hang.
"""

from __future__ import annotations

import copy
import io
import operator
import pickle
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import csr_matrices

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])

PROTOCOLS = list(range(pickle.HIGHEST_PROTOCOL + 1))
HOWS = [f"pickle{p}" for p in PROTOCOLS] + ["deepcopy"]


def twin_of(obj, how: str):
    """A copy of ``obj`` by ``how``: "pickleN" (protocol N, in memory), "deepcopy", "copy"."""
    if how == "deepcopy":
        return copy.deepcopy(obj)
    if how == "copy":
        return copy.copy(obj)
    return pickle.loads(pickle.dumps(obj, protocol=int(how[len("pickle"):])))


def arrays_of(obj, path="", seen=None, out=None):
    """{path: ndarray} of every array an object holds (attributes, dicts, lists, tuples,
    sparse matrices), by path."""
    if seen is None:
        seen, out = set(), {}
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        out[path] = obj
    elif sp.issparse(obj):
        for name in ("data", "indices", "indptr"):
            arrays_of(getattr(obj, name), f"{path}.{name}", seen, out)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            arrays_of(value, f"{path}[{key!r}]", seen, out)
    elif isinstance(obj, (list, tuple)):
        for position, value in enumerate(obj):
            arrays_of(value, f"{path}[{position}]", seen, out)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("recfuse"):
        for key, value in vars(obj).items():
            arrays_of(value, f"{path}.{key}", seen, out)
    return out


def shared_arrays(a, b) -> list[str]:
    mine, theirs = arrays_of(a), arrays_of(b)
    return [path for path, array in mine.items()
            if any(np.shares_memory(array, other) for other in theirs.values())]


def same(x, y) -> bool:
    """Bitwise equality of (tuples of) arrays."""
    if isinstance(x, tuple):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
    x, y = np.asarray(x), np.asarray(y)
    return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")


# --------------------------------------------------------------------------- data

_RNG = np.random.default_rng(11)
X = sp.random(40, 30, density=0.2, format="csr", random_state=3, dtype=np.float32)
X.data[:] = np.round(X.data * 4) + 1  # ratings 1..5 (ties among scores too)
X2 = sp.random(40, 30, density=0.25, format="csr", random_state=4, dtype=np.float32)
X2.data[:] = np.round(X2.data * 4) + 1
U_FEATURES = _RNG.standard_normal((40, 3))
V_FEATURES = _RNG.standard_normal((30, 3))

MODELS = {
    "ALS-cg": lambda: recfuse.ALS(factors=4, iterations=2, random_state=0),
    "ALS-cholesky": lambda: recfuse.ALS(factors=4, iterations=2, solver="cholesky",
                                        random_state=0),
    "BPR": lambda: recfuse.BPR(factors=4, iterations=2, random_state=0),
    "SVD": lambda: recfuse.SVD(factors=4, epochs=2, random_state=0),
    "SVDpp": lambda: recfuse.SVDpp(factors=4, epochs=2, random_state=0),
    "ExplicitALS": lambda: recfuse.ExplicitALS(factors=4, iterations=2, random_state=0),
}


@pytest.fixture(scope="module")
def fitted():
    return {name: make().fit(X) for name, make in MODELS.items()}


def answers(model) -> tuple:
    """Everything a fitted model answers, as one tuple of arrays."""
    out = model.recommend(np.arange(40), k=7) + model.recommend(np.arange(40), k=7,
                                                                  filter_seen=False)
    out += model.similar_items(np.arange(30), k=4) + model.similar_users([0, 5, 39], k=4)
    if hasattr(model, "predict"):
        out += (model.predict(np.arange(40), np.arange(40) % 30),
                model.predict([41, 0], [0, 31]))  # unknown ids fall back
    return out


def tables(model) -> tuple:
    return (model.user_factors, model.item_factors)


# ------------------------------------------------------------------- factor models


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("name", list(MODELS))
def test_fitted_model_copies_answer_alike_and_stay_independent(name, how, fitted, tmp_path):
    original = copy.deepcopy(fitted[name])
    before, tables_before = answers(original), tuple(t.copy() for t in tables(original))
    twin = twin_of(original, how)
    assert type(twin) is type(original) and repr(twin) == repr(original)
    assert twin.get_params() == original.get_params()
    assert same(answers(twin), before)
    assert not shared_arrays(twin, original), shared_arrays(twin, original)
    assert twin._lock is not original._lock and not twin._lock.locked()
    # the copy saves and loads as the original does
    twin.save(tmp_path / "twin.npz")
    original.save(tmp_path / "orig.npz")
    assert same(answers(recfuse.load(tmp_path / "twin.npz")),
                answers(recfuse.load(tmp_path / "orig.npz")))
    # mutate the copy every way there is: in place, set_params, fold-ins, a refit
    twin.user_factors[:] = 7.0
    twin.set_params(num_threads=1, backend="numpy")
    if hasattr(twin, "update_users"):
        twin.update_users([0, 3], X2[[0, 3]])
        twin.update_items([1], X2[:, [1]].T.tocsr())
    twin.fit(X2)
    assert same(answers(original), before)
    assert same(tables(original), tables_before)
    # and the copy refits as the original refits (same seed, same data)
    assert same(tables(twin.set_params(backend="auto", num_threads=0).fit(X)),
                tables(copy.deepcopy(original).fit(X)))


@pytest.mark.parametrize("how", HOWS + ["copy"])
@pytest.mark.parametrize("name", list(MODELS))
def test_unfitted_model_copies_fit_to_the_same_tables(name, how):
    original = MODELS[name]()
    twin = twin_of(original, how)
    assert repr(twin) == repr(original) and twin.get_params() == original.get_params()
    assert same(tables(twin.fit(X)), tables(original.fit(X)))


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_generator_seeded_copies_fit_as_the_original(how):
    """A Generator random_state travels with its state: the copy's fit draws what the
    original's draws."""
    original = recfuse.ALS(factors=4, iterations=2, random_state=np.random.default_rng(5))
    twin = twin_of(original, how)
    if how == "copy":  # a shallow copy shares the Generator (Python's shallow copy)
        assert twin.random_state is original.random_state
        return
    assert same(tables(twin.fit(X)), tables(original.fit(X)))


def test_als_fold_ins_of_a_pickled_copy_equal_the_originals(fitted):
    for how in HOWS:
        a, b = copy.deepcopy(fitted["ALS-cg"]), twin_of(fitted["ALS-cg"], how)
        assert same(a.update_users([1, 2, 39], X2[[1, 2, 39]]),
                    b.update_users([1, 2, 39], X2[[1, 2, 39]])), how
        assert same(answers(a), answers(b)), how


@pytest.mark.parametrize("name", list(MODELS))
def test_shallow_copy_leaves_the_original_whole(name, fitted):
    """copy.copy shares the arrays (Python's shallow copy): nothing the copy does through
    the API writes into them, and the copy gets its own (free) lock."""
    original = copy.deepcopy(fitted[name])
    before, tables_before = answers(original), tuple(t.copy() for t in tables(original))
    twin = copy.copy(original)
    assert twin._lock is not original._lock and not twin._lock.locked()
    assert same(answers(twin), before)
    twin.set_params(num_threads=1)
    if hasattr(twin, "update_users"):
        twin.update_users([0, 3], X2[[0, 3]])
        twin.update_items([2], X2[:, [2]].T.tocsr())
    twin.fit(X2)
    assert original.num_threads == 0
    assert same(answers(original), before) and same(tables(original), tables_before)


@HYPOTHESIS
@given(matrix=csr_matrices(max_rows=10, max_cols=8), protocol=st.sampled_from(PROTOCOLS),
       solver=st.sampled_from(["cg", "cholesky"]), k=st.integers(1, 10))
def test_pickled_als_answers_every_matrix_alike(matrix, protocol, solver, k):
    """Random matrices (empty rows and columns, nnz 0, 1x1, large values): the pickled
    model's recommend (ties, padding), similar_items and fold-ins are the original's."""
    model = recfuse.ALS(factors=3, iterations=2, solver=solver, random_state=0)
    try:
        model.fit(matrix.astype(np.float32))
    except ValueError:  # a refused fit (a diverging one): nothing to copy
        return
    twin = pickle.loads(pickle.dumps(model, protocol=protocol))
    users = np.arange(matrix.shape[0])
    for filter_seen in (True, False):
        assert same(twin.recommend(users, k=k, filter_seen=filter_seen),
                    model.recommend(users, k=k, filter_seen=filter_seen))
    assert same(twin.similar_items(np.arange(matrix.shape[1]), k=k),
                model.similar_items(np.arange(matrix.shape[1]), k=k))
    rows = matrix[:1].astype(np.float32)
    assert same(twin.update_users([0], rows), model.update_users([0], rows))


def test_a_copy_taken_in_a_fit_callback_does_not_hang_and_is_the_model_before_the_fit():
    """A callback that keeps snapshots (early stopping) copies the model mid-fit: no
    deadlock on the writer lock; the snapshot is a consistent model."""
    code = textwrap.dedent("""
        import copy, pickle, faulthandler, numpy as np, scipy.sparse as sp, recfuse
        faulthandler.dump_traceback_later(60, exit=True)
        X = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
        for model in (recfuse.ALS(factors=3, iterations=2, random_state=0),
                      recfuse.BPR(factors=3, iterations=2, random_state=0),
                      recfuse.SVD(factors=3, epochs=2, random_state=0)):
            model.fit(X)
            snaps = []
            model.fit(X, callback=lambda *a: snaps.append(
                (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), copy.copy(model))))
            for snap in snaps:
                for s in snap:
                    s.recommend([0, 1], k=3)
                    s.fit(X)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr[-2000:]


# ----------------------------------------------------------------- ItemIndex, MLPScorer


@pytest.mark.parametrize("how", HOWS + ["copy"])
@pytest.mark.parametrize("backend", ["cpu", "numba", "numpy"])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_item_index_copies_search_alike(metric, backend, how):
    rng = np.random.default_rng(2)
    items = np.round(rng.standard_normal((60, 5)) * 2).astype(np.float32)  # ties
    items[3] = 0.0
    bias = None
    if metric == "cosine":
        items[7] = [3e38, 3e38, 0, 0, 0]  # a row a cosine index scales down exactly
    else:
        bias = np.round(rng.standard_normal(60)).astype(np.float32)
    index = recfuse.ItemIndex(items, item_bias=bias, metric=metric, backend=backend)
    queries = np.vstack([items[:6], np.zeros((1, 5), np.float32)])
    exclude = sp.random(7, 60, density=0.2, format="csr", random_state=1)
    want = index.search(queries, 9, exclude=exclude, deny=[0, 5])
    twin = twin_of(index, how)
    assert type(twin) is recfuse.ItemIndex and repr(twin) == repr(index)
    assert same(twin.search(queries, 9, exclude=exclude, deny=[0, 5]), want)
    if how != "copy":
        assert not shared_arrays(twin, index)
    assert same(index.search(queries, 9, exclude=exclude, deny=[0, 5]), want)


def _scorer_layers():
    rng = np.random.default_rng(4)
    return [(rng.standard_normal((8, 6)).astype(np.float32),
             rng.standard_normal(8).astype(np.float32), "gelu"),
            (rng.standard_normal((4, 8)).astype(np.float32), None, "tanh"),
            (rng.standard_normal((1, 4)).astype(np.float32), np.float32([0.5]), "sigmoid")]


@pytest.mark.parametrize("how", HOWS + ["copy"])
@pytest.mark.parametrize("backend,precision", [
    ("cpu", "float32"), ("cpu", "int8"), ("numba", "float32"), ("numba", "bfloat16"),
    ("numpy", "int8"), ("numpy", "bfloat16")])
def test_mlp_scorer_copies_score_and_rank_alike(backend, precision, how):
    scorer = recfuse.MLPScorer(_scorer_layers(), precision=precision, backend=backend)
    rng = np.random.default_rng(5)
    inputs = rng.standard_normal((25, 6)).astype(np.float32)
    users = rng.standard_normal((3, 2)).astype(np.float32)
    items = rng.standard_normal((20, 4)).astype(np.float32)
    candidates = rng.integers(0, 20, (3, 10))
    twin = twin_of(scorer, how)
    assert type(twin) is recfuse.MLPScorer and repr(twin) == repr(scorer)
    assert twin.kernel == scorer.kernel and twin.precision == scorer.precision
    assert same(twin.score(inputs), scorer.score(inputs))
    assert same(twin.rank(users, candidates, items, k=5), scorer.rank(users, candidates, items, k=5))
    assert all(not W.flags.writeable for W, _, _ in twin.layers)  # weights stay read-only
    prepared = twin.prepare_items(items, item_column=2)  # the copy prepares its own
    assert same(twin.rank(users, candidates, prepared, k=5),
                scorer.rank(users, candidates, scorer.prepare_items(items, item_column=2), k=5))


class _MyIndex(recfuse.ItemIndex):
    pass


class _MyScorer(recfuse.MLPScorer):
    pass


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle5"])
def test_copies_of_index_and_scorer_subclasses_keep_their_class(how):
    index = _MyIndex(np.eye(3, dtype=np.float32))
    scorer = _MyScorer([(np.ones((1, 3), np.float32), None, "identity")])
    assert type(twin_of(index, how)) is _MyIndex
    assert type(twin_of(scorer, how)) is _MyScorer


class _MyALS(recfuse.ALS):
    pass


def test_models_subclasses_keep_their_class():
    for how in ("copy", "deepcopy", "pickle5"):
        assert type(twin_of(_MyALS(factors=3), how)) is _MyALS


# ------------------------------------------------------------------------ MLPRanker


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_mlp_ranker_copies_before_and_after_fit(how):
    unfitted = recfuse.MLPRanker(hidden=(5, 3), epochs=2, random_state=0)
    twin = twin_of(unfitted, how)
    assert repr(twin) == repr(unfitted) and twin.get_params() == unfitted.get_params()
    ranker = unfitted.fit(X, U_FEATURES, V_FEATURES)
    assert twin.fit(X, U_FEATURES, V_FEATURES).weights[0].tobytes() == ranker.weights[0].tobytes()
    inputs = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    before = ranker.to_scorer().score(inputs)
    weights = [w.copy() for w in ranker.weights]
    copied = twin_of(ranker, how)
    assert repr(copied) == repr(ranker)
    assert same(copied.to_scorer().score(inputs), before)
    if how != "copy":
        assert not shared_arrays(copied, ranker)
    copied.fit(X2, U_FEATURES, V_FEATURES)  # a refit of the copy
    assert same(ranker.to_scorer().score(inputs), before)
    assert all(same(a, b) for a, b in zip(ranker.weights, weights))


# ------------------------------------------------------------ Interactions and IdMap


def _interactions():
    coo = X.tocoo()
    return recfuse.Interactions.from_arrays([f"u{u}" for u in coo.row], coo.col * 10,
                                            coo.data, timestamps=np.arange(coo.nnz))


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_interactions_copies_are_equal_and_independent(how):
    inter = _interactions()
    inter.matrix  # built and cached before the copy
    twin = twin_of(inter, how)
    assert repr(twin) == repr(inter)
    assert twin.user_ids == inter.user_ids and twin.item_ids == inter.item_ids
    assert (twin.matrix != inter.matrix).nnz == 0 and (twin.transpose != inter.transpose).nnz == 0
    assert same(twin.counts, inter.counts) and same(twin.timestamps, inter.timestamps)
    grown = twin.add(users=["u0", "new"], items=[10, 99999], weights=[1.0, 2.0],
                     timestamps=[10**6, 10**6])
    assert grown.shape == (41, 31) and inter.shape == twin.shape == (40, 30)
    assert same(twin.user_ids.to_internal(["u3", "u7"]), inter.user_ids.to_internal(["u3", "u7"]))


def test_arrow_backed_interactions_pickle_at_every_protocol():
    pa = pytest.importorskip("pyarrow")
    coo = X.tocoo()
    table = pa.table({"user": pa.array([f"u{u}" for u in coo.row]),
                      "item": pa.array([f"i{i}" for i in coo.col]), "w": pa.array(coo.data)})
    inter = recfuse.Interactions.from_events(table, weight="w")
    for how in HOWS:
        twin = twin_of(inter, how)
        assert (twin.matrix != inter.matrix).nnz == 0 and twin.user_ids == inter.user_ids
        assert same(twin.item_ids.to_internal(["i3", "i0"]), inter.item_ids.to_internal(["i3", "i0"]))


@pytest.mark.parametrize("how", ["deepcopy", "pickle2", "pickle5"])
def test_interactions_copy_keeps_matrix_values_read_only_and_shared(how):
    """``matrix``: "Read-only: it shares its arrays with these Interactions ... its values
    are read-only arrays"; it holds for the original, and must for the copy."""
    inter = _interactions()
    assert not inter.matrix.data.flags.writeable
    assert np.shares_memory(inter.matrix.data, inter._values)
    twin = twin_of(inter, how)
    assert not twin.matrix.data.flags.writeable
    assert not twin.transpose.data.flags.writeable
    assert np.shares_memory(twin.matrix.data, twin._values)


def test_interactions_pickle_does_not_grow_with_its_caches():
    rng = np.random.default_rng(0)
    n = 50_000
    inter = recfuse.Interactions.from_arrays(rng.integers(0, 2000, n), rng.integers(0, 1000, n),
                                             np.ones(n, np.float32))
    fresh = len(pickle.dumps(inter, protocol=5))
    inter.matrix, inter.transpose
    assert len(pickle.dumps(inter, protocol=5)) <= 1.05 * fresh


_ID_VALUES = st.one_of(
    st.lists(st.integers(-2**63, 2**63 - 1), unique=True, max_size=8).map(np.array),
    st.lists(st.text(max_size=5), unique=True, max_size=8).map(lambda v: np.array(v, dtype=object)),
    # (NumPy's str arrays drop trailing NULs: "" and "\x00" would be one id there)
    st.lists(st.text(st.characters(blacklist_characters="\x00"), max_size=5), unique=True,
             min_size=1, max_size=8).map(np.array),
    st.lists(st.floats(allow_nan=False, width=32).filter(lambda v: v != 0) | st.just(0.0),
             unique=True, max_size=8).map(lambda v: np.array(v, dtype=np.float32)),
    st.lists(st.integers(0, 2**64 - 1), unique=True, max_size=8).map(
        lambda v: np.array(v, dtype=np.uint64)),
    st.lists(st.integers(-100, 100), unique=True, max_size=8).map(
        lambda v: np.array(v, dtype=">i4")),
)


@HYPOTHESIS
@given(ids=_ID_VALUES, how=st.sampled_from(HOWS + ["copy"]))
def test_idmap_copies_look_up_alike(ids, how):
    id_map = recfuse.IdMap(ids)
    twin = twin_of(id_map, how)
    assert twin == id_map and repr(twin) == repr(id_map) and twin.kind == id_map.kind
    if len(id_map):
        assert same(twin.to_internal(id_map.ids), id_map.to_internal(id_map.ids))
    assert same(twin.ids, id_map.ids)


@pytest.mark.parametrize("how", ["deepcopy", "pickle2", "pickle4"])
def test_idmap_copy_stays_immutable(how):
    id_map = recfuse.IdMap(np.array(["a", "b", "c"]))
    id_map.to_internal(["a"])  # the lookup table is built
    twin = twin_of(id_map, how)
    assert not twin.ids.flags.writeable
    assert not twin_of(_interactions(), how).user_ids.ids.flags.writeable


def test_equal_id_maps_look_up_alike():
    ints, bools = recfuse.IdMap([1, 0]), recfuse.IdMap([True, False])
    if ints == bools:  # equal maps must be interchangeable
        assert same(ints.to_internal([1], missing="ignore"),
                    bools.to_internal([1], missing="ignore"))
    assert ints != bools  # they are not: [1] is 0 in one, missing in the other


def test_idmap_equality_never_raises_and_is_unhashable_clearly():
    a = recfuse.IdMap(["a", "b"])
    for other in (recfuse.IdMap([1, 2]), recfuse.IdMap(["a"]), recfuse.IdMap([]),
                  recfuse.IdMap(np.array(["2020-01-01"], dtype="datetime64[D]")),
                  recfuse.IdMap([b"a", b"b"]), 1, None, "a", np.array(["a", "b"]), ["a", "b"]):
        assert (a == other) is False and (a != other) is True
    assert a == recfuse.IdMap(np.array(["a", "b"], dtype=object))
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)
    assert weakref.ref(a)() is a


# --------------------------------------------------------- Rerank, Recommendation, Events


def _rerank():
    return recfuse.Rerank(diversity=0.5, item_categories=np.arange(30) % 3, category_cap=2,
                          allow=[3, 1, 2, 2], deny=[4])


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_rerank_copies_are_equal_and_hash_alike(how):
    rules = _rerank()
    twin = twin_of(rules, how)
    assert twin == rules and hash(twin) == hash(rules) and repr(twin) == repr(rules)
    assert len({rules, twin, recfuse.Rerank()}) == 2
    assert {rules: 1}[twin] == 1
    assert same(twin.allows(np.arange(6)), rules.allows(np.arange(6)))


@pytest.mark.parametrize("how", ["deepcopy", "pickle0", "pickle4"])
def test_rerank_copies_keep_their_rules_read_only(how):
    twin = twin_of(_rerank(), how)
    for name in ("item_categories", "allow", "deny"):
        assert not getattr(twin, name).flags.writeable, name


def test_rerank_equality_follows_the_rules():
    assert recfuse.Rerank(allow=np.array([1, 2], np.int32)) == recfuse.Rerank(allow=[2, 1, 1])
    assert recfuse.Rerank(allow=[1]) != recfuse.Rerank(deny=[1])
    assert recfuse.Rerank(allow=[]) != recfuse.Rerank()
    assert recfuse.Rerank(diversity=1) == recfuse.Rerank(diversity=1.0)
    assert (recfuse.Rerank(item_categories=np.array([1, 2], np.uint8), category_cap=1)
            == recfuse.Rerank(item_categories=[1, 2], category_cap=1))
    assert (recfuse.Rerank() == 0) is False and (recfuse.Rerank() == None) is False  # noqa: E711


def _recommendation(scores=(1.0, 0.5)):
    return recfuse.Recommendation(np.array([3, 1]), np.array(scores, np.float32),
                                  np.array(["recall", "rank"]), 2)


@pytest.mark.parametrize("how", HOWS)
def test_answer_tuples_pickle(how):
    rec = _recommendation()
    twin = twin_of(rec, how)
    assert type(twin) is recfuse.Recommendation and twin.version == 2
    assert all(same(a, b) for a, b in zip(twin[:3], rec[:3]))
    events = recfuse.Events(np.array([1, 2]), np.array([3, 4]), np.array([1.0, 2.0]))
    again = twin_of(events, how)
    assert type(again) is recfuse.Events and again.calls is None and same(again.items, events.items)


def test_answer_tuples_compare_with_a_bool():
    assert (_recommendation() == _recommendation()) is True
    assert (_recommendation() != _recommendation(scores=(1.0, 0.25))) is True
    assert _recommendation() in [_recommendation()]
    a = recfuse.Events(np.array([1, 2]), np.array([3, 4]), np.array([1.0, 2.0]))
    b = recfuse.Events(np.array([1, 2]), np.array([3, 4]), np.array([1.0, 2.0]))
    assert (a == b) is True


# ------------------------------------------------------------- compat and distributed


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_compat_implicit_model_copies(how):
    from recfuse.compat.implicit import AlternatingLeastSquares

    unfitted = AlternatingLeastSquares(factors=4, iterations=2, random_state=0, use_gpu=False)
    twin = twin_of(unfitted, how)
    assert repr(twin) == repr(unfitted)
    model = unfitted
    model.fit(X, show_progress=False)  # implicit's fit returns None
    twin.fit(X, show_progress=False)
    assert same(twin.user_factors, model.user_factors)
    users = np.arange(5)
    before = model.recommend(users, X[:5], N=6) + model.similar_items(np.arange(4), N=3)
    factors = model.user_factors.copy(), model.item_factors.copy()
    copied = twin_of(model, how)
    assert repr(copied) == repr(model)
    assert same(copied.recommend(users, X[:5], N=6) + copied.similar_items(np.arange(4), N=3),
                before)
    copied.partial_fit_users([0, 45], X2[[0, 1]])  # a fold-in that grows the copy
    copied.partial_fit_items([2], X2.T.tocsr()[[2]])
    assert same((model.user_factors, model.item_factors), factors)
    assert same(model.recommend(users, X[:5], N=6) + model.similar_items(np.arange(4), N=3),
                before)


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_compat_surprise_model_copies(how):
    pytest.importorskip("surprise")
    pandas = pytest.importorskip("pandas")
    from surprise import Dataset, Reader

    from recfuse.compat import surprise

    coo = X.tocoo()
    frame = pandas.DataFrame({"u": coo.row, "i": coo.col, "r": coo.data})
    trainset = Dataset.load_from_df(frame, Reader(rating_scale=(1, 5))).build_full_trainset()
    pairs = [(0, 1), (3, 4), (999, 1), (5, 999)]
    for cls in (surprise.SVD, surprise.SVDpp):
        unfitted = cls(n_factors=3, n_epochs=2, random_state=0)
        twin = twin_of(unfitted, how)
        assert repr(twin) == repr(unfitted)
        algo = unfitted.fit(trainset)
        assert [twin.fit(trainset).predict(u, i).est for u, i in pairs] == \
            [algo.predict(u, i).est for u, i in pairs]
        want = [algo.predict(u, i).est for u, i in pairs]
        copied = twin_of(algo, how)
        assert repr(copied) == repr(algo)
        assert [copied.predict(u, i).est for u, i in pairs] == want
        copied.fit(trainset)
        assert [algo.predict(u, i).est for u, i in pairs] == want


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_unfitted_dask_als_copies_and_clones(how):
    pytest.importorskip("dask")
    sklearn_base = pytest.importorskip("sklearn.base")
    from recfuse.distributed import DaskALS

    model = DaskALS(factors=4, iterations=2, random_state=3, blocks=2)
    twin = twin_of(model, how)
    assert repr(twin) == repr(model) and twin.get_params() == model.get_params()
    assert sklearn_base.clone(twin).get_params() == model.get_params()


# ------------------------------------------------------ objects that refuse to be copied


@pytest.mark.parametrize("how", HOWS + ["copy"])
def test_serving_objects_and_prepared_items_refuse_every_copy(how, fitted):
    recommender = recfuse.Recommender(copy.deepcopy(fitted["ALS-cg"]), k=3)
    batcher = recfuse.MicroBatcher(recommender)
    scorer = recfuse.MLPScorer(_scorer_layers())
    prepared = scorer.prepare_items(np.ones((5, 4), np.float32), item_column=2)
    try:
        for obj, name in ((recommender, "Recommender"), (batcher, "MicroBatcher"),
                          (prepared, "PreparedItems")):
            with pytest.raises(TypeError, match=name):
                twin_of(obj, how)
        assert weakref.ref(recommender)() is recommender and weakref.ref(batcher)() is batcher
        assert batcher.recommend(4).ids.shape == (3,)  # the refused copies broke nothing
        assert recommender.recommend(4).ids.shape == (3,)
    finally:
        batcher.close()


# ---------------------------------------------------------------- clone and params


def _odd_values():
    return {
        "factors": [np.int64(5), np.uint8(6)],
        "iterations": [np.int32(2)], "epochs": [np.int16(3)],
        "regularization": [np.float32(0.25), 1], "reg": [np.float32(0.125), 1],
        "alpha": [np.float64(2.0)], "lr": [np.float32(0.0625)],
        "dtype": ["float64", np.float64, np.dtype("float64"), "f4"],
        "random_state": [np.int64(3), np.uint32(4), None],
        "num_threads": [np.int8(1)], "backend": ["numpy", np.str_("numpy")],
        "hidden": [[8, 4], np.array([8, 4]), (np.int64(8),)],
        "solver": [np.str_("cholesky")], "biased": [np.bool_(False)],
        "negatives": [np.int64(2)], "l2": [np.float32(0.5)],
    }


@pytest.mark.parametrize("cls", [recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.SVDpp,
                                 recfuse.ExplicitALS, recfuse.MLPRanker],
                         ids=lambda c: c.__name__)
def test_clone_and_pickle_keep_params_of_every_spelling(cls):
    sklearn_base = pytest.importorskip("sklearn.base")
    for name, values in _odd_values().items():
        if name not in cls().get_params():
            continue
        for value in values:
            model = cls().set_params(**{name: value})
            params = model.get_params()
            clone = sklearn_base.clone(model)
            assert repr(clone.get_params()) == repr(params), (name, value)
            assert repr(clone) == repr(model)
            assert repr(cls(**params).get_params()) == repr(params)
            for protocol in PROTOCOLS:
                twin = pickle.loads(pickle.dumps(model, protocol=protocol))
                assert repr(twin.get_params()) == repr(params), (name, value, protocol)


@pytest.mark.parametrize("cls", [recfuse.ALS, recfuse.SVD, recfuse.MLPRanker],
                         ids=lambda c: c.__name__)
def test_set_params_unknown_name_refused_nothing_changed(cls):
    model = cls()
    before = repr(model.get_params())
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        model.set_params(random_state=9, bogus=1)
    assert repr(model.get_params()) == before


# ------------------------------------------------------------------------- repr/str


def _repr_subjects(fitted):
    from recfuse.compat import surprise
    from recfuse.compat.implicit import AlternatingLeastSquares
    from recfuse.distributed import DaskALS

    subjects = dict(fitted)
    subjects.update({f"{name} unfitted": make() for name, make in MODELS.items()})
    subjects.update({"MLPRanker": recfuse.MLPRanker(), "DaskALS": DaskALS(),
                     "implicit": AlternatingLeastSquares(use_gpu=False),
                     "surprise SVD": surprise.SVD(), "surprise SVDpp": surprise.SVDpp()})
    return subjects


def test_reprs_survive_failed_fits_and_stay_as_before(fitted):
    def stop(*_):
        raise KeyboardInterrupt

    for name, model in _repr_subjects(fitted).items():
        if not hasattr(model, "fit") or name in ("DaskALS", "surprise SVD", "surprise SVDpp"):
            continue
        model = copy.deepcopy(model)
        before = repr(model)
        for bad in (lambda m: m.fit(np.full((3, 3), np.nan)),
                    lambda m: m.fit(sp.csr_matrix(np.full((3, 3), np.inf, np.float32))),
                    lambda m: m.fit("not data")):
            try:
                bad(model)
            except (TypeError, ValueError, RuntimeError):
                pass
        if isinstance(model, (recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.ExplicitALS)):
            with pytest.raises(KeyboardInterrupt):
                model.fit(X2, callback=stop)
        assert repr(model) == before and str(model) == before, name


_ODD = [None, "abc", -1, float("nan"), float("inf"), 1e308, object(), [1, 2], b"x",
        np.float32(3), np.arange(3), np.arange(5000)]


@pytest.mark.parametrize("name", ["ALS-cg", "BPR", "SVD", "SVDpp", "ExplicitALS", "MLPRanker",
                                  "DaskALS", "surprise SVD"])
def test_repr_never_raises_with_odd_settings_assigned_by_hand(name, fitted):
    """README: "A setting assigned as an attribute ... is checked by the next fit": until
    then repr must work (a debugger or a log line shows the model). Array values other than
    the ones the xfail below names included."""
    model = copy.deepcopy(_repr_subjects(fitted)[name])
    for attribute in list(model.get_params() if hasattr(model, "get_params") else
                          ("n_factors", "n_epochs", "lr_all", "reg_all", "random_state")):
        for value in _ODD:
            if (name, attribute) in _ARRAY_REPR_BUGS and isinstance(value, np.ndarray):
                continue
            saved = getattr(model, attribute)
            setattr(model, attribute, value)
            try:
                text = repr(model)
                assert len(text) < 600 and "\n" not in text, (attribute, value, text[:200])
                assert str(model) == text
            finally:
                setattr(model, attribute, saved)


_ARRAY_REPR_BUGS = {("ALS-cg", "solver"), ("ALS-cg", "confidence"), ("SVD", "biased")}


@pytest.mark.parametrize("name,attribute", sorted(_ARRAY_REPR_BUGS))
def test_repr_with_an_array_assigned_to_a_compared_setting(name, attribute, fitted):
    model = copy.deepcopy(fitted[name])
    setattr(model, attribute, np.array(["cg", "raw"]))
    assert repr(model).startswith(type(model).__name__ + "(")


@pytest.mark.parametrize("value", ["f32", object()], ids=["typo", "object"])
def test_compat_implicit_repr_with_a_dtype_assigned_by_hand(value):
    from recfuse.compat.implicit import AlternatingLeastSquares

    model = AlternatingLeastSquares(use_gpu=False)
    model.dtype = value  # implicit's models take attribute assignments; fit checks it
    assert repr(model).startswith("recfuse.compat.implicit.AlternatingLeastSquares(")


def test_equal_objects_have_equal_reprs():
    assert repr(recfuse.ALS(dtype="float64")) == repr(recfuse.ALS(dtype=np.float64))
    assert repr(recfuse.SVD(factors=np.int64(5))) == repr(recfuse.SVD(factors=5))
    a, b = _rerank(), _rerank()
    assert a == b and repr(a) == repr(b)
    items = np.eye(4, dtype=np.float32)
    assert repr(recfuse.ItemIndex(items)) == repr(recfuse.ItemIndex(items.copy()))


# -------------------------------------------------------------- keys, sets, weakrefs


def test_public_objects_as_dict_keys_in_sets_and_weakly_referenced(fitted):
    objects = list(fitted.values()) + [
        recfuse.ItemIndex(np.eye(3, dtype=np.float32)), recfuse.MLPScorer(_scorer_layers()),
        recfuse.MLPRanker(), _interactions(), _rerank()]
    keys = {obj: position for position, obj in enumerate(objects)}
    assert len(keys) == len(objects) and len(set(objects)) == len(objects)
    for obj in objects:
        assert weakref.ref(obj)() is obj
        assert (obj == obj) is True and (obj != object()) is True
        assert obj in objects
    twin = copy.deepcopy(fitted["ALS-cg"])  # models compare by identity: a copy is another
    assert twin != fitted["ALS-cg"] and twin not in keys


# ------------------------------------------------------------------ a spawn worker


_SPAWN = '''
import concurrent.futures, copy, multiprocessing, operator, pickle, sys
import numpy as np, scipy.sparse as sp, recfuse
from recfuse.compat.implicit import AlternatingLeastSquares


def main():
    X = sp.random(40, 30, density=0.2, format="csr", random_state=3, dtype=np.float32)
    X.data[:] = np.round(X.data * 4) + 1
    coo = X.tocoo()
    rng = np.random.default_rng(0)
    ranker = recfuse.MLPRanker(hidden=(4,), epochs=1, random_state=0).fit(
        X, rng.standard_normal((40, 3)), rng.standard_normal((30, 3)))
    inputs = rng.standard_normal((7, 6)).astype(np.float32)
    inter = recfuse.Interactions.from_arrays([f"u{u}" for u in coo.row], coo.col, coo.data)
    rules = recfuse.Rerank(item_categories=np.arange(30) % 3, category_cap=1, deny=[2])
    implicit = AlternatingLeastSquares(factors=3, iterations=2, random_state=0, use_gpu=False)
    implicit.fit(X, show_progress=False)
    calls = [
        (recfuse.ExplicitALS(factors=3, iterations=2, random_state=0).fit(X),
         operator.methodcaller("predict", np.arange(40), np.arange(40) % 30)),
        (implicit, operator.methodcaller("recommend", np.arange(4), X[:4], N=5)),
        # (its weights, not a refit: fits follow the BLAS's threads, which may differ there)
        (ranker, operator.attrgetter("weights")),
        (ranker.to_scorer(precision="int8"), operator.methodcaller("score", inputs)),
        (inter, operator.attrgetter("matrix")),
        (inter.user_ids, operator.methodcaller("to_internal", ["u7", "u1"])),
        (rules, operator.methodcaller("allows", np.arange(6))),
        (recfuse.ALS(factors=3, iterations=2, random_state=np.random.default_rng(1)),
         operator.methodcaller("fit", X)),
    ]
    want = [call(copy.deepcopy(obj)) for obj, call in calls]  # fits advance a Generator
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        got = [pool.submit(call, obj).result(timeout=120) for obj, call in calls]
    for position, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, recfuse.ALS):
            g, w = (g.user_factors, g.item_factors), (w.user_factors, w.item_factors)
        elif sp.issparse(w):
            g, w = g.toarray(), w.toarray()
        g, w = (g if isinstance(g, (tuple, list)) else (g,)), (w if isinstance(w, (tuple, list)) else (w,))
        assert all(np.array_equal(a, b) for a, b in zip(g, w)), position
        print("equal", position, flush=True)


if __name__ == "__main__":
    main()
'''


def test_objects_sent_to_a_spawn_worker_answer_as_in_the_parent(tmp_path):
    """Each object pickled to a "spawn" pool (a fresh interpreter) answers as in the parent:
    the explicit ALS, compat.implicit's model, an MLPRanker's weights, an int8 scorer,
    Interactions, an IdMap, a Rerank and a Generator-seeded ALS (fit there)."""
    script = tmp_path / "spawn_main.py"
    script.write_text(_SPAWN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [word for i in range(8) for word in ("equal", str(i))]

"""Adversarial hunt on the error messages of the public boundary: models, ``topk`` /
``ItemIndex``, ``MLPScorer``, ``Recommender`` / ``Rerank`` / ``MicroBatcher``,
``Interactions`` / ``IdMap``, ``metrics``, ``split``, ``datasets``, persistence, the
compat adapters and the HTTP server.

The contract used here, from ``recfuse/_validation.py``'s module docstring and the package
docstring: "each error says which argument, what was expected and what came. TypeError for
the wrong kind of object or dtype, ValueError for the wrong shape or value", and "a wrong
kind of argument is a TypeError, a wrong value a ValueError, each naming the argument". So a
message must name the argument the caller passed (not an internal variable or another
method's argument), say what came, and must not be a bare NumPy/Python/C++ message
(``object of type 'NoneType' has no len()``, ``'>=' not supported between ...``). Sibling
entry points (models, backends, the HTTP server and the Python API it wraps) must say the
same thing for the same mistake.

Every test is a regression: the table and the sweep of messages that met the standard when
the hunt ran, and one test per bug the hunt found (16, each fixed; see
/work/notes/hunt-error-messages-y.md), which asserts the better message.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
import recfuse.metrics
import recfuse.split

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])

UI = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
MODELS = (recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS)


def _fit(cls):
    if cls in (recfuse.SVD, recfuse.SVDpp):
        return cls(factors=4, epochs=2, random_state=0).fit(UI)
    return cls(factors=4, iterations=2, random_state=0).fit(UI)


@pytest.fixture(scope="module")
def fitted():
    return {cls.__name__: _fit(cls) for cls in MODELS}


@pytest.fixture(scope="module")
def als(fitted):
    return fitted["ALS"]


def _layers(width=6):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((8, width)).astype(np.float32), np.zeros(8, np.float32), "relu"),
            (rng.standard_normal((1, 8)).astype(np.float32), None, "identity")]


def _message(call) -> tuple[type, str]:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the point is to look at it
        return type(error), str(error)
    raise AssertionError("the call was not refused")


def _numpy_or_python_phrases(message: str) -> list[str]:
    """Phrases of NumPy's/Python's own messages: a boundary message never is one of these."""
    phrases = ("has no len()", "not supported between instances", "unsupported operand",
               "expected str, bytes or os.PathLike object", "object has no attribute",
               "index 0 is out of bounds", "could not convert")
    return [p for p in phrases if p in message]


# ============================================================== regressions: good messages

GOOD = [
    # (label, call(fitted) -> refused, exception type, regex the message must match)
    ("recommend k float", lambda f: f["ALS"].recommend(0, k=1.5), TypeError,
     r"^k must be an integer, got float 1\.5$"),
    ("recommend user past", lambda f: f["BPR"].recommend(99), ValueError,
     r"^user_ids must be < 30, got 99$"),
    ("recommend items past", lambda f: f["SVD"].recommend(0, items=[99]), ValueError,
     r"^items must be < 20, got 99$"),
    ("recommend filter_seen str", lambda f: f["SVDpp"].recommend(0, filter_seen="no"),
     TypeError, r"^filter_seen must be a bool, got str 'no'$"),
    ("recommend user_items dense", lambda f: f["ExplicitALS"].recommend(
        0, user_items=UI.toarray()), TypeError, r"user_items must be a scipy\.sparse CSR "
     r"matrix, got numpy\.ndarray"),
    ("predict lengths", lambda f: f["SVD"].predict([0, 1], [0]), ValueError,
     r"users and items must have the same length, got 2 and 1"),
    ("fit callback", lambda f: recfuse.BPR(factors=2, iterations=1).fit(UI, callback=5),
     TypeError, r"callback must be callable, got int"),
    ("SVD initial_factors kind", lambda f: recfuse.SVD(factors=4, epochs=1).fit(
        UI, initial_factors=np.zeros((30, 4))), TypeError,
     r"initial_factors must be a tuple .*got ndarray"),
    ("set_params unknown", lambda f: f["ALS"].set_params(bogus=1), ValueError,
     r"ALS has no parameter 'bogus'; its parameters are factors, "),
    ("save folder", lambda f: f["ALS"].save("/tmp"), IsADirectoryError, r"is a folder"),
    ("topk queries width", lambda f: recfuse.topk(np.zeros((2, 3)), np.zeros((5, 4)), 2),
     ValueError, r"queries must have d = 4 columns like items, got shape \(2, 3\)"),
    ("topk sparse items", lambda f: recfuse.topk(np.zeros((2, 4)), sp.csr_matrix((5, 4)), 2),
     TypeError, r"items must be a dense array, got a scipy\.sparse csr matrix"),
    ("topk storage", lambda f: recfuse.topk(np.zeros((1, 2)), np.zeros((3, 2)), 1,
                                           storage="fp8"), ValueError,
     r"storage must be one of \('auto', 'native', 'bfloat16'\), got 'fp8'"),
    ("topk item_bias shape", lambda f: recfuse.topk(np.zeros((1, 2)), np.zeros((3, 2)), 1,
                                                   item_bias=np.zeros(2)), ValueError,
     r"item_bias must have shape \(3,\) \(one value per item\), got \(2,\)"),
    ("topk exclude shape", lambda f: recfuse.topk(np.zeros((1, 2)), np.zeros((3, 2)), 1,
                                                 exclude=sp.csr_matrix((1, 5))), ValueError,
     r"exclude must have shape \(1, 3\) \(queries x items\), got \(1, 5\)"),
    ("MLPScorer precision", lambda f: recfuse.MLPScorer(_layers(), precision="fp16"),
     ValueError, r"precision must be one of .*got 'fp16'"),
    ("MLPScorer numba kernel", lambda f: recfuse.MLPScorer(_layers(), backend="numba",
                                                           kernel="fused"),
     ValueError, r"numba backend has one kernel \('auto'\), got kernel='fused'"),
    ("MLPScorer numpy kernel", lambda f: recfuse.MLPScorer(_layers(), backend="numpy",
                                                           kernel="fused"),
     ValueError, r"numpy backend has one kernel \('auto'\), got kernel='fused'"),
    ("MLPScorer layer chain", lambda f: recfuse.MLPScorer(
        [(np.ones((4, 3)), None, "relu"), (np.ones((1, 5)), None, "identity")]), ValueError,
     r"layers\[1\] takes 5 inputs but layers\[0\] gives 4"),
    ("rank candidate past", lambda f: recfuse.MLPScorer(_layers(), backend="numpy").rank(
        np.zeros((1, 3)), [[0, 9]], np.zeros((5, 3)), k=1), ValueError,
     r"candidate_ids must be in \[0, 5\) \(rows of item_table\), got 9"),
    ("Recommender retriever", lambda f: recfuse.Recommender(None), TypeError,
     r"retriever must be a fitted recfuse\.ALS.*got NoneType"),
    ("Recommender rerank kind", lambda f: recfuse.Recommender(f["ALS"], rerank={}), TypeError,
     r"rerank must be a recfuse\.Rerank or None, got dict"),
    ("Recommender excludes length", lambda f: recfuse.Recommender(f["ALS"]).recommend_batch(
        [0, 1], excludes=[[1]]), ValueError, r"excludes must have one entry per user \(2\), "
     r"got 1"),
    ("Recommender excludes kind", lambda f: recfuse.Recommender(f["ALS"]).recommend_batch(
        [0, 1], excludes=5), TypeError, r"excludes must be a sequence .*got int"),
    ("observe fields", lambda f: recfuse.Recommender(f["ALS"]).observe(
        {"user": [0], "item": [0], "rating": [1]}), ValueError,
     r"events has unknown fields \['rating'\]"),
    ("Rerank diversity", lambda f: recfuse.Rerank(diversity=2), ValueError,
     r"diversity must be in \[0, 1\] \(MMR's lambda\), got 2\.0"),
    ("MicroBatcher recommender", lambda f: recfuse.MicroBatcher(None), TypeError,
     r"recommender must be a recfuse\.Recommender, got NoneType"),
    ("MLPRanker hidden", lambda f: recfuse.MLPRanker(hidden=5), TypeError,
     r"hidden must be a sequence of layer widths, e\.g\. \(64, 32\), got int 5"),
    ("from_arrays lengths", lambda f: recfuse.Interactions.from_arrays([1, 2], [1]), ValueError,
     r"every column needs one value per event: users has 2, items has 1"),
    ("from_arrays scalar users", lambda f: recfuse.Interactions.from_arrays(1, [1]),
     TypeError, r"users must be a 1-d sequence .*got int 1"),
    ("from_events columns", lambda f: recfuse.Interactions.from_events({"u": [1], "item": [1]}),
     ValueError, r"unknown columns: user='user'; the data has \['u', 'item'\]"),
    ("half_life", lambda f: recfuse.Interactions.from_arrays(
        [1], [1], timestamps=[1], half_life="xx"), ValueError, r"half_life must be seconds"),
    ("IdMap.extend set", lambda f: recfuse.IdMap([1]).extend({2}), TypeError,
     r"ids must be one id or a 1-d sequence .*got set"),
    ("ranking_metrics dtype", lambda f: recfuse.metrics.ranking_metrics(np.zeros((2, 2)), UI),
     TypeError, r"recommended must hold item ids \(integers\), got dtype float64"),
    ("evaluate shapes", lambda f: recfuse.metrics.evaluate(f["ALS"], UI, UI[:5]), ValueError,
     r"train and test must have one shape .*got \(30, 20\) and \(5, 20\)"),
    ("novelty past", lambda f: recfuse.metrics.novelty(np.array([[99]]), UI), ValueError,
     r"recommended must hold item ids in \[0, 20\) \(train's columns\) .*\[99\]"),
    ("K and k", lambda f: recfuse.metrics.ranking_metrics_at_k(f["ALS"], UI, UI, k=5, K=5),
     TypeError, r"give k or K \(implicit's name\), not both: got k=5 and K=5"),
    ("split fraction", lambda f: recfuse.split.random_split(UI, 1.0), ValueError,
     r"test_fraction must be in \[0, 1\), got 1\.0"),
    ("split cut list", lambda f: recfuse.split.temporal_split(
        recfuse.Interactions.from_arrays([1, 2], [1, 2], timestamps=[1, 2]), cut=[1, 2]),
     TypeError, r"cut must be one time .*got list of shape \(2,\)"),
    ("movielens path kind", lambda f: recfuse.datasets.load_movielens(5), TypeError,
     r"path must be a str or os\.PathLike naming a MovieLens folder, got int 5"),
    ("movielens file", lambda f: recfuse.datasets.load_movielens(__file__), ValueError,
     r"path must be the folder that holds the MovieLens ratings file, got the file"),
    ("backends family", lambda f: recfuse.backends(5), TypeError,
     r"family must be a string, one of .*got int 5"),
    ("load dtype override", lambda f: _loaded_with(f["SVD"], dtype="float64"), ValueError,
     r"cannot load with dtype='float64': dtype shaped the saved tables"),
    ("load unknown override", lambda f: _loaded_with(f["ALS"], bogus=1), ValueError,
     r"holds a saved ALS model, which takes no \['bogus'\]"),
]


def _loaded_with(model, **overrides):
    import tempfile
    import os

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        model.save(path)
        return recfuse.load(path, **overrides)


@pytest.mark.parametrize("label, call, kind, pattern", GOOD, ids=[g[0] for g in GOOD])
def test_messages_that_name_the_argument_and_what_came(fitted, label, call, kind, pattern):
    got_kind, message = _message(lambda: call(fitted))
    assert got_kind is kind, (label, got_kind, message)
    assert re.search(pattern, message), (label, message)
    assert not _numpy_or_python_phrases(message), (label, message)


# A hypothesis sweep of the integer parameters every model shares: a wrong kind is a
# TypeError naming the argument and the value's type, a wrong value a ValueError naming
# the argument and the value, identically in the five models.
BAD_INTEGERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.booleans(),
    st.none(), st.integers(max_value=0), st.integers(min_value=2**31, max_value=2**70),
    st.sampled_from([np.float32(2), np.bool_(True), np.int64(-3), [3], (1,), b"3"]))


@HYPOTHESIS
@given(value=BAD_INTEGERS, model=st.sampled_from([c.__name__ for c in MODELS]),
       site=st.sampled_from(["recommend", "similar_items", "similar_users", "recommend_all"]))
def test_k_is_refused_by_name_alike_in_every_model(fitted, value, model, site):
    m = fitted[model]
    if site == "recommend_all":
        call = lambda: next(iter(m.recommend_all(k=value)))  # noqa: E731
    else:
        call = lambda: getattr(m, site)(0, k=value)  # noqa: E731
    kind, message = _message(call)
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if is_int:
        assert kind is ValueError and re.match(rf"k must be [<>]= \d+, got {int(value)}$",
                                               message), message
    else:
        assert kind is TypeError and message.startswith(
            f"k must be an integer, got {type(value).__name__}"), message


# ============================================================ bugs found by the hunt (fixed)

# ---- 1. path arguments: Python's os.fspath message, which names no argument ----------

def _path_sites():
    scorer = recfuse.MLPScorer(_layers(), backend="numpy")
    log = recfuse.Interactions.from_arrays([1, 2], [3, 4])
    return {
        "ALS.save": lambda m, p: m.save(p),
        "recfuse.load": lambda m, p: recfuse.load(p),
        "recommend_all(path=)": lambda m, p: m.recommend_all(path=p),
        "MLPScorer.save": lambda m, p: scorer.save(p),
        "Interactions.save": lambda m, p: log.save(p),
        "Interactions.load": lambda m, p: recfuse.Interactions.load(p),
    }


@pytest.mark.parametrize("site", list(_path_sites()))
@pytest.mark.parametrize("value", [5, None], ids=["int", "None"])
def test_a_path_of_the_wrong_kind_is_named_path(als, site, value):
    if value is None and site == "recommend_all(path=)":
        value = 5.0  # None is recommend_all's default (no file): a float instead
    kind, message = _message(lambda: _path_sites()[site](als, value))
    assert kind is TypeError
    assert re.search(r"\bpath\b", message), message  # "os.PathLike" is not the name
    assert type(value).__name__ in message, message


# ---- 2. ItemIndex.storage_for(k): k is not checked at all ---------------------------

@pytest.fixture(scope="module")
def large_index():
    items = np.random.default_rng(0).standard_normal((2_000, 4)).astype(np.float32)
    return recfuse.ItemIndex(items, backend="numpy")


@pytest.mark.parametrize("k, kind, pattern", [
    ("x", TypeError, r"^k must be an integer, got str 'x'$"),
    (None, TypeError, r"^k must be an integer, got NoneType None$"),
    (1.5, TypeError, r"^k must be an integer, got float 1\.5$"),
    (0, ValueError, r"^k must be >= 1, got 0$"),
    (-5, ValueError, r"^k must be >= 1, got -5$"),
], ids=["str", "None", "float", "zero", "negative"])
def test_storage_for_checks_k_as_search_does(large_index, k, kind, pattern):
    with pytest.raises(kind, match=pattern):
        large_index.storage_for(k)


def test_storage_for_answers_for_a_valid_k(large_index):
    assert large_index.storage_for(10) in ("native", "bfloat16")
    with pytest.raises(TypeError, match=r"^k must be an integer, got str 'x'$"):
        large_index.search(np.zeros((1, 4)), "x")  # search itself names k


# ---- 3./4. Recommender.swap_model: the wrong argument name, incomplete advice ---------

def test_swap_model_names_its_own_argument(als):
    recommender = recfuse.Recommender(als)
    with pytest.raises(TypeError, match=r"^source must be .*got NoneType"):
        recommender.swap_model(None)
    assert recommender.version == 1  # nothing changed


def test_swap_model_replay_message_mentions_the_function_form(als):
    recommender = recfuse.Recommender(als)
    with pytest.raises(TypeError, match=r"replay must be a bool or a (callable|function).*"
                                        r"got str 'x'"):
        recommender.swap_model(als, replay="x")


def test_swap_model_replay_takes_a_function(als):
    recommender = recfuse.Recommender(als)
    recommender.observe({"user": [0], "item": [1]})
    assert recommender.swap_model(als, replay=lambda events: events) == 2


# ---- 5./6. MLPScorer layers: what came left out; ValueError for a wrong kind ---------

@pytest.mark.parametrize("layers, came", [(5, "int"), (None, "NoneType"), ("abc", "str"),
                                          ({}, "dict"), ([], "empty")],
                         ids=["int", "None", "str", "dict", "empty"])
def test_mlp_layers_of_the_wrong_kind_say_what_came(layers, came):
    with pytest.raises(TypeError, match=rf"layers must be .*got .*{came}"):
        recfuse.MLPScorer(layers)


@pytest.mark.parametrize("layer, name", [
    ((np.array([["a", "b"]]), None, "identity"), r"layers\[0\] weight"),
    ((None, None, "identity"), r"layers\[0\] weight"),
    ((np.ones((1, 2)), np.array(["a"]), "identity"), r"layers\[0\] bias"),
    ((np.ones((1, 2)), None, 5), r"layers\[0\] activation"),
    ((np.ones((1, 2)), None, None), r"layers\[0\] activation"),
], ids=["weight-str", "weight-None", "bias-str", "activation-int", "activation-None"])
def test_mlp_layer_parts_of_the_wrong_kind_are_type_errors(layer, name):
    with pytest.raises(TypeError, match=name):
        recfuse.MLPScorer([layer])


def test_mlp_layer_values_that_are_wrong_are_value_errors():
    with pytest.raises(ValueError, match=r"layers\[0\] activation must be one of .*'RELU'"):
        recfuse.MLPScorer([(np.ones((1, 2)), None, "RELU")])
    with pytest.raises(ValueError, match=r"layers\[0\] weight must be .*shape \(3,\)"):
        recfuse.MLPScorer([(np.ones(3), None, "identity")])


# ---- 7. MLPScorer kernel on the cpu backend: the C++ message -------------------------

def test_cpu_mlp_kernel_refusal_is_like_its_siblings():
    info = {i.name: i for i in recfuse.backends("mlp")}
    if not info["cpu"].available:
        pytest.skip(f"cpu backend: {info['cpu'].detail}")
    with pytest.raises(ValueError) as refused:
        recfuse.MLPScorer(_layers(), backend="cpu", kernel="fused")
    message = str(refused.value)
    assert "cpu" in message and "'auto'" in message and "kernel='fused'" in message, message


# ---- 8. MLPScorer inputs as a sparse matrix: "dtype object" ---------------------------

@pytest.mark.parametrize("site", ["score", "rank-user_vectors", "rank-item_table"])
def test_mlp_sparse_inputs_are_named_sparse(site):
    scorer = recfuse.MLPScorer(_layers(), backend="numpy")
    U, T = np.zeros((2, 3), np.float32), np.zeros((5, 3), np.float32)
    calls = {"score": ("inputs", lambda: scorer.score(sp.csr_matrix(np.zeros((2, 6))))),
             "rank-user_vectors": ("user_vectors", lambda: scorer.rank(
                 sp.csr_matrix(U), [[0], [1]], T, k=1)),
             "rank-item_table": ("item_table", lambda: scorer.rank(
                 U, [[0], [1]], sp.csr_matrix(T), k=1))}
    name, call = calls[site]
    with pytest.raises(TypeError, match=rf"{name} must be a dense array, got a scipy\.sparse"):
        call()


# ---- 9. Interactions columns given as None -------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: recfuse.Interactions.from_arrays(None, [1]), "users"),
    (lambda: recfuse.Interactions.from_arrays([1], None), "items"),
    (lambda: recfuse.Interactions.from_arrays(None, None), "users"),
    (lambda: recfuse.Interactions.from_events({"user": None, "item": [1]}), "users"),
], ids=["users", "items", "both", "from_events"])
def test_a_missing_id_column_is_named(call, name):
    kind, message = _message(call)
    assert kind is TypeError, (kind, message)
    assert re.search(rf"{name} must be a 1-d sequence .*got NoneType", message), message


# ---- 10. reference_time is checked as "timestamps" ------------------------------------

def _decayed(reference_time):
    return recfuse.Interactions.from_arrays([1, 2], [1, 2], timestamps=[1, 2], half_life=10,
                                            reference_time=reference_time)


@pytest.mark.parametrize("value", ["zz", True, np.datetime64("NaT"), [], [5, 100]],
                         ids=["unparsable", "bool", "NaT", "empty", "several"])
def test_reference_time_errors_name_reference_time(value):
    kind, message = _message(lambda: _decayed(value))
    assert kind in (TypeError, ValueError), (kind, message)
    assert "reference_time" in message and "timestamps" not in message, message


def test_reference_time_of_one_time_is_taken():
    log = _decayed(2)
    assert log.nnz == 2


# ---- 11. load(path, factors=...) names the file's table, not the override -------------

@pytest.mark.parametrize("model", [c.__name__ for c in MODELS])
def test_load_with_other_factors_names_the_override(fitted, model):
    with pytest.raises(ValueError, match=r"cannot load with factors=3: factors shaped the saved"):
        _loaded_with(fitted[model], factors=3)


# ---- 12. HTTP server: excludes/contexts errors say nothing of what came ---------------

@pytest.fixture(scope="module")
def client(als, tmp_path_factory):
    pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="httpx is not installed")
    import warnings

    with warnings.catch_warnings():  # starlette prefers httpx2 and warns when it uses httpx
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from recfuse.server import Limits, create_app

    recommender = recfuse.Recommender(als, k=5, num_threads=1)
    with TestClient(create_app(recommender, limits=Limits(max_k=50, max_batch=8))) as test:
        yield test


def test_http_single_user_errors_name_the_field(client):
    reply = client.post("/recommend", json={"user": 1, "exclude": 3})
    assert reply.status_code == 422 and reply.json()["error"] == \
        "exclude must be a list of ids, got int"
    reply = client.post("/recommend", json={"users": [1, 2], "excludes": [1, 2]})
    assert reply.status_code == 422 and reply.json()["error"] == \
        "excludes[0] must be a list of ids, got int"


@pytest.mark.parametrize("body, came", [
    ({"users": [1, 2], "excludes": 5}, r"got int"),
    ({"users": [1, 2], "excludes": [[1]]}, r"\(2\), got 1"),
    ({"users": [1, 2], "contexts": 5}, r"got int"),
    ({"users": [1, 2], "contexts": [[1.0]]}, r"\(2\), got 1"),
], ids=["excludes-int", "excludes-short", "contexts-int", "contexts-short"])
def test_http_batch_list_errors_say_what_came(client, body, came):
    reply = client.post("/recommend", json=body)
    assert reply.status_code == 422
    assert re.search(came, reply.json()["error"]), reply.json()


# ---- 13. ALS initial_factors: what came left out, unlike SVD / ExplicitALS ------------

@pytest.mark.parametrize("value, came", [(np.zeros((30, 4)), "ndarray"),
                                         ((np.zeros((30, 4)),) * 3, "3")],
                         ids=["array", "triple"])
def test_als_initial_factors_say_what_came(value, came):
    with pytest.raises(TypeError, match=rf"initial_factors must be a pair .*got .*{came}"):
        recfuse.ALS(factors=4, iterations=1).fit(UI, initial_factors=value)


def test_explicit_initial_factors_say_what_came():
    with pytest.raises(TypeError, match=r"initial_factors must be a tuple .*got ndarray"):
        recfuse.ExplicitALS(factors=4, iterations=1).fit(UI, initial_factors=np.zeros((30, 4)))


# ---- 14. compat.surprise fit on something that is not a Trainset ---------------------

@pytest.mark.parametrize("trainset", [[1, 2], UI], ids=["list", "csr"])
def test_surprise_fit_names_trainset(trainset):
    from recfuse.compat.surprise import SVD

    with pytest.raises(TypeError, match=r"trainset must be a surprise\.Trainset.*got"):
        SVD(n_factors=2, n_epochs=1).fit(trainset)


# ---- 15. IdMap's constructor: ValueError "got shape ()" for a set, dict, None ---------

@pytest.mark.parametrize("ids, came", [({1, 2}, "set"), ({1: 2}, "dict"),
                                       ((i for i in range(2)), "generator"),
                                       (None, "NoneType")],
                         ids=["set", "dict", "generator", "None"])
def test_idmap_of_a_container_without_order_is_a_type_error(ids, came):
    with pytest.raises(TypeError, match=rf"ids must be .*got {came}"):
        recfuse.IdMap(ids)


def test_idmap_sibling_methods_name_the_container():
    for call in (lambda: recfuse.IdMap([1]).extend({2}),
                 lambda: recfuse.IdMap([1]).to_internal({1: 2})):
        with pytest.raises(TypeError, match=r"ids must be one id or a 1-d sequence .*got "
                                            r"(set|dict)"):
            call()


# ---- 16. load_folder / `recfuse evaluate FILE`: advice to look inside a file ----------

def test_load_folder_of_a_file_says_a_folder_was_expected(als, tmp_path):
    from recfuse.persistence import load_folder

    path = tmp_path / "model.npz"
    als.save(path)
    kind, message = _message(lambda: load_folder(path))
    assert kind in (FileNotFoundError, NotADirectoryError, ValueError), (kind, message)
    assert "model.npz/model.npz" not in message, message
    assert re.search(r"(is a file|not a folder|a folder)", message), message


def test_load_folder_of_a_missing_folder(tmp_path):
    from recfuse.persistence import load_folder

    with pytest.raises(FileNotFoundError, match=r"no model in .*expected .*model\.npz"):
        load_folder(tmp_path / "none")

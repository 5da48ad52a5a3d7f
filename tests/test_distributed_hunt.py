"""Bug hunt in recfuse.distributed (DaskALS, IdMap, the block helpers) against the
single-machine oracle: ``recfuse.ALS`` started from ``initial_factors`` must give the same
factors (float64: 1e-10, README "On a cluster"), the same seen matrix and the same
``recommend_all`` rows; bad input must fail with a message naming the argument and leave
the model as it was.

Runs on an in-process cluster (``Client(processes=False)``, 2 workers x 1 thread). The four
bugs the hunt found are fixed; their tests stay as regressions."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import datasets
from recfuse.distributed import DaskALS, IdMap, initial_factors

dask = pytest.importorskip("dask", reason="dask is not installed")
dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] is not installed")
distributed = pytest.importorskip("distributed", reason="dask distributed is not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")

PARAMS = dict(factors=4, iterations=3, regularization=0.1, alpha=2.0, random_state=7)
TOL = 1e-10  # float64, as README promises


@pytest.fixture(scope="module")
def client():
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=":0", silence_logs=logging.CRITICAL) as c:
        yield c


@pytest.fixture(scope="module")
def fitted(client):
    """A model fitted on _frame() and its local copy (tests that refit it with bad data check
    that it stays this fit)."""
    model = _dask(_frame())
    return model, model.to_local()


def _frame(n_users=30, n_items=20, nnz=200, seed=0):
    coo = datasets.synthetic_implicit(n_users, n_items, nnz, seed=seed, dtype=np.float64).tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                          "weight": coo.data})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _matrix(frame, user="user", item="item", shape=None):
    """The users x items matrix of a frame whose ids are dense ints (repeats add up)."""
    users, items = frame[user].to_numpy(np.int64), frame[item].to_numpy(np.int64)
    shape = shape or (int(users.max()) + 1, int(items.max()) + 1)
    return sp.csr_matrix((frame["weight"].to_numpy(np.float64), (users, items)), shape=shape)


def _local(matrix, dtype=np.float64, backend="cpu", **params):
    params = {**PARAMS, **params}
    seed = params.pop("random_state")
    n_users, n_items = matrix.shape
    start = (initial_factors(np.arange(n_users), params["factors"], seed, "users", dtype),
             initial_factors(np.arange(n_items), params["factors"], seed, "items", dtype))
    return recfuse.ALS(dtype=dtype, backend=backend, **params).fit(matrix,
                                                                   initial_factors=start)


def _dask(frame, npartitions=2, weight="weight", dtype=np.float64, backend="cpu", **params):
    model = DaskALS(dtype=dtype, backend=backend, **{**PARAMS, **params})
    return model.fit(dd.from_pandas(frame, npartitions=npartitions), "user", "item", weight)


def _max_diff(model, reference):
    local = model.to_local()
    return max(float(np.abs(local.user_factors - reference.user_factors).max()),
               float(np.abs(local.item_factors - reference.item_factors).max()))


# ---------------------------------------------------------------------------- ids


@pytest.mark.parametrize("convert", [
    pytest.param(lambda f: f.assign(user=f["user"].astype(np.int8),
                                    item=f["item"].astype(np.uint64)), id="int8-uint64"),
    pytest.param(lambda f: f.assign(user=f["user"] + 2**62,
                                    item=f["item"].astype(np.uint64)
                                    + np.uint64(2**63 - 100)), id="huge"),
    pytest.param(lambda f: f.assign(user=f["user"] - 10, item=f["item"] - 2**40),
                 id="negative"),
    pytest.param(lambda f: f.assign(user=f["user"].astype(np.float64)), id="integral-float"),
    pytest.param(lambda f: f.assign(user=f["user"].astype(pd.ArrowDtype(pa.int64())),
                                    item=f["item"].astype(pd.ArrowDtype(pa.uint64()))),
                 id="arrow"),
    pytest.param(lambda f: f.assign(user=f["user"].astype("Int16"),
                                    item=f["item"].astype("category")), id="nullable-cat"),
])
def test_integer_id_dtypes_fit_as_single_machine(client, convert):
    """Integer ids of any width (and integral floats) map to dense ints in ascending order:
    the same problem, so the same factors as the local fit of the dense matrix."""
    frame = _frame()
    converted = convert(frame)
    model = _dask(converted)
    assert _max_diff(model, _local(_matrix(frame))) < TOL
    want_users = np.unique(converted["user"].to_numpy().astype(np.int64))
    want_items = np.unique(np.asarray(converted["item"].astype(object).tolist(), np.int64))
    assert model.user_ids.dtype == np.int64 and model.user_ids.tolist() == want_users.tolist()
    assert model.item_ids.tolist() == want_items.tolist()


def test_string_ids_fit_in_sorted_order(client):
    """Dask's default string conversion (string[pyarrow]): ids sorted as strings, so dense
    order "u10" < "u2"; the factors are the local fit of the matrix in that order."""
    frame = _frame()
    names = np.array([f"u{u}" for u in range(30)], dtype=object)
    strings = frame.assign(user=names[frame["user"]])
    model = _dask(strings, npartitions=3)
    order = sorted(names)
    assert model.user_ids.tolist() == order
    dense = frame.assign(user=np.searchsorted(np.array(order, dtype=object),
                                              strings["user"].to_numpy(object)))
    assert _max_diff(model, _local(_matrix(dense, shape=(30, 20)))) < TOL


def test_ids_only_in_some_partitions_and_empty_partitions(client):
    """20 partitions, every third empty, string items: the id maps merge through the tree
    (fan-in 8) and the fit is the local fit of what the partitions hold."""
    frame = _frame(40, 30, 300)
    names = np.array([f"i{i:02d}" for i in range(30)], dtype=object)
    frame = frame.assign(item=names[frame["item"]])
    parts = [frame.iloc[i * 15:(i + 1) * 15] for i in range(20)]
    parts = [p if i % 3 else p.iloc[:0] for i, p in enumerate(parts)]
    ddf = dd.concat([dd.from_pandas(p, npartitions=1) for p in parts])
    assert ddf.npartitions == 20
    model = DaskALS(dtype=np.float64, backend="cpu", **PARAMS).fit(ddf, "user", "item",
                                                                   "weight")
    kept = pd.concat(parts)
    users, items = np.unique(kept["user"]), np.unique(kept["item"].to_numpy(object))
    dense = kept.assign(user=np.searchsorted(users, kept["user"]),
                        item=np.searchsorted(items, kept["item"].to_numpy(object)))
    assert model.user_ids.tolist() == users.tolist()
    assert model.item_ids.tolist() == items.tolist()
    assert _max_diff(model, _local(_matrix(dense, shape=(users.size, items.size)))) < TOL


@pytest.mark.parametrize("column, error, match", [
    (pd.Series([1.5, 2.0]), TypeError, "user holds non-integral float ids"),
    (pd.Series([True, False]), TypeError, "user holds booleans"),
    (pd.Series(pd.to_datetime([1, 2], unit="s")), TypeError, "user holds an id of type"),
    (pd.Series([2**64 - 1, "a"], dtype=object), ValueError, "user holds integer ids beyond"),
    (pd.Series([np.uint64(2**63), 1], dtype=object), ValueError, "beyond the int64 range"),
    (pd.Series([2.0**60, 1.0]), TypeError, "beyond 2\\*\\*53"),
    (pd.Series(["a", None], dtype="category"), ValueError, "user has 1 missing"),
    (pd.Series([1.0, np.nan]).astype("category"), ValueError, "user has 1 missing"),
])
def test_id_map_refuses_bad_ids_by_name(column, error, match):
    with pytest.raises(error, match=match):
        IdMap.from_column(column, "user")


@pytest.mark.parametrize("dtype", ["int64", "uint8"])
def test_categorical_integer_ids_with_a_null_name_the_column(dtype):
    column = pd.Series(pd.Categorical([1, None, 2],
                                      categories=pd.Index([1, 2], dtype=dtype)))
    with pytest.raises(ValueError, match="user has 1 missing"):
        IdMap.from_column(column, "user")


def test_fit_with_categorical_integer_ids_with_a_null_names_the_column(client):
    frame = _frame()
    codes = np.where(frame.index == 4, -1, frame["user"].to_numpy())
    users = pd.Categorical.from_codes(codes, categories=pd.Index(np.arange(30)))
    model = DaskALS(**PARAMS)
    with pytest.raises(ValueError, match="user has 1 missing"):
        model.fit(dd.from_pandas(frame.assign(user=users), npartitions=2), "user", "item")
    assert model.n_users is None


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mutate, error, match", [
    (lambda f: f.assign(weight=f["weight"].astype(str)), TypeError,
     "weight_col 'weight' must hold numbers"),
    (lambda f: f.assign(weight=f["weight"].astype(complex)), TypeError,
     "weight_col 'weight' must hold numbers"),
    (lambda f: f.assign(weight=pd.to_timedelta(f["weight"], unit="s")), TypeError,
     "weight_col 'weight' must hold numbers"),
    (lambda f: f.assign(weight=f["weight"].astype(pd.ArrowDtype(pa.decimal128(10, 2)))),
     TypeError, "weight_col 'weight' must hold numbers"),
    (lambda f: f.assign(weight=np.where(f.index == 3, np.inf, f["weight"])), ValueError,
     "weight_col 'weight' holds 1 NaN/inf"),
    (lambda f: f.assign(weight=pd.array(np.where(f.index == 3, None, 1), dtype="Int64")),
     ValueError, "weight_col 'weight' holds 1 NaN/inf/missing"),
    (lambda f: f.assign(weight=np.where(f.index == 7, -1e-300, f["weight"])), ValueError,
     "must be >= 0"),
    (lambda f: f.assign(user=f["user"] + 0.5), TypeError, "user holds non-integral"),
    (lambda f: f.assign(item=f["item"] > 3), TypeError, "item holds booleans"),
    (lambda f: f.assign(user=pd.to_datetime(f["user"], unit="s")), TypeError,
     "user holds an id of type Timestamp"),
    (lambda f: f.assign(user=f["user"].astype(np.uint64) + np.uint64(2**63)), ValueError,
     "user holds ids above the int64 range"),
])
def test_bad_frames_fail_by_name_and_leave_the_model(fitted, mutate, error, match):
    frame = _frame()
    model, before = fitted
    with pytest.raises(error, match=match):
        model.fit(dd.from_pandas(mutate(frame), npartitions=2), "user", "item", "weight")
    after = model.to_local()
    assert (model.n_users, model.n_items) == (30, 20)
    np.testing.assert_array_equal(after.user_factors, before.user_factors)
    np.testing.assert_array_equal(after.item_factors, before.item_factors)
    fresh = DaskALS(**PARAMS)
    with pytest.raises(error, match=match):
        fresh.fit(dd.from_pandas(mutate(frame), npartitions=2), "user", "item", "weight")
    assert fresh.n_users is None
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.to_local()


def test_bad_arguments_fail_by_name(client):
    frame = _frame()
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(TypeError, match="ddf must be a dask DataFrame, got dask"):
        DaskALS().fit(ddf["user"], "user", "item")
    with pytest.raises(TypeError, match="user_col must be a column name"):
        DaskALS().fit(dd.from_pandas(frame.rename(columns={"user": 0}), npartitions=1), 0,
                      "item")
    with pytest.raises(ValueError, match="item_col 'itm' is not a column of ddf"):
        DaskALS().fit(ddf, "user", "itm")
    with pytest.raises(ValueError, match="weight_col 'user' is also"):
        DaskALS().fit(ddf, "user", "item", "user")
    with pytest.raises(TypeError, match="callback must be callable"):
        DaskALS().fit(ddf, "user", "item", callback=3)
    with pytest.raises(TypeError, match="show_progress must be a bool"):
        DaskALS().fit(ddf, "user", "item", show_progress="yes")
    for kwargs, error, match in (
            (dict(random_state=None), TypeError, "random_state must be an integer"),
            (dict(random_state=-1), ValueError, "random_state must be >= 0"),
            (dict(blocks=0), ValueError, "blocks must be >= 1"),
            (dict(blocks=2.0), TypeError, "blocks must be an integer"),
            (dict(max_retries=True), TypeError, "max_retries must be an integer"),
            (dict(checkpoint_every=0), ValueError, "checkpoint_every must be >= 1"),
            (dict(broadcast="always"), ValueError, "broadcast must be 'smaller' or 'never'"),
            (dict(checkpoint_dir=3), TypeError, "checkpoint_dir must be a folder path")):
        with pytest.raises(error, match=match):
            DaskALS(**kwargs)


def test_set_params_checks_everything_first_and_keeps_the_fit(client):
    from sklearn.base import clone

    model = DaskALS(**PARAMS)
    params = model.get_params()
    with pytest.raises(ValueError, match="broadcast"):
        model.set_params(factors=8, broadcast="x")
    assert model.get_params() == params
    assert clone(model).get_params() == params
    _frame_model = model.fit(dd.from_pandas(_frame(), npartitions=2), "user", "item")
    with pytest.raises(ValueError, match="factors shapes the fitted tables"):
        _frame_model.set_params(factors=8)
    with pytest.raises(ValueError, match="dtype shapes the fitted tables"):
        _frame_model.set_params(dtype="float64")
    assert _frame_model.set_params(blocks=3).to_local().user_factors.shape == (30, 4)


# ---------------------------------------------------------------------------- the oracle


@pytest.mark.parametrize("rows", [
    pytest.param(dict(user=[0], item=[0], weight=[2.0]), id="1x1"),
    pytest.param(dict(user=[0] * 5, item=list(range(5)), weight=[1.0] * 5), id="1-user"),
    pytest.param(dict(user=list(range(5)), item=[0] * 5, weight=[1.0] * 5), id="1-item"),
])
@pytest.mark.parametrize("blocks, broadcast", [(None, "smaller"), (4, "never")])
def test_degenerate_shapes_fit_as_single_machine(client, rows, blocks, broadcast):
    frame = pd.DataFrame(rows)
    model = _dask(frame, npartitions=1, blocks=blocks, broadcast=broadcast)
    assert _max_diff(model, _local(_matrix(frame))) < TOL


@pytest.mark.parametrize("npartitions, blocks, broadcast", [
    (1, 1, "smaller"), (1, 3, "never"), (5, 2, "smaller"), (6, 9, "smaller"),
])
def test_block_and_partition_layouts_give_the_single_machine_fit(client, npartitions, blocks,
                                                                 broadcast):
    frame = _frame(40, 30, 300)
    model = _dask(frame, npartitions=npartitions, blocks=blocks, broadcast=broadcast,
                  iterations=2)
    plan = model.transfer_plan()
    assert plan["users"]["blocks"] == plan["items"]["blocks"] == blocks
    assert _max_diff(model, _local(_matrix(frame), iterations=2)) < TOL


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("confidence", ["linear", "raw"])
def test_losses_and_factors_match_for_both_solvers_and_confidences(client, solver, confidence):
    frame = _frame(40, 30, 300)
    if confidence == "raw":
        frame = frame.assign(weight=frame["weight"] - 2.0)  # negatives and zeros
    losses, local_losses = [], []
    model = DaskALS(dtype=np.float64, backend="cpu", blocks=3, broadcast="never",
                    solver=solver, confidence=confidence, **PARAMS)
    model.fit(dd.from_pandas(frame, npartitions=3), "user", "item", "weight",
              callback=lambda i, loss: losses.append(loss))
    matrix = _matrix(frame)
    params = {k: v for k, v in PARAMS.items() if k != "random_state"}
    start = (initial_factors(np.arange(40), 4, 7, "users", np.float64),
             initial_factors(np.arange(30), 4, 7, "items", np.float64))
    reference = recfuse.ALS(dtype=np.float64, backend="cpu", solver=solver,
                            confidence=confidence, **params).fit(
        matrix, initial_factors=start, callback=lambda i, loss: local_losses.append(loss))
    np.testing.assert_allclose(losses, local_losses, rtol=1e-10)
    assert _max_diff(model, reference) < 1e-9


def test_duplicates_zeros_and_ties_recommend_as_single_machine(client, tmp_path):
    """Repeated pairs add up; a user and an item with only zero weights end at zero vectors
    (their items tie at 0, in id order); stored zeros count as seen; k beyond the catalogue
    drops the padding: recommend_all writes the local model's rows."""
    frame = _frame(30, 12, 150)
    frame.loc[frame["user"] == 0, "weight"] = 0.0
    frame.loc[frame["item"] == 3, "weight"] = 0.0
    extra = pd.DataFrame({"user": [1, 1, 2, 2], "item": [5, 5, 6, 6],
                          "weight": [0.5, 0.25, 0.0, 0.0]})
    frame = pd.concat([frame, extra], ignore_index=True).sample(frac=1, random_state=1)
    matrix = _matrix(frame, shape=(30, 12))
    model = _dask(frame, npartitions=4, blocks=3)
    reference = _local(matrix)
    local = model.to_local()
    assert (local._user_items != reference._user_items).nnz == 0
    assert local._user_items.nnz == reference._user_items.nnz  # stored zeros kept
    assert not local.user_factors[0].any() and not local.item_factors[3].any()
    assert _max_diff(model, reference) < TOL
    for k, filter_seen in ((12, True), (40, False), (1, True)):
        rows = model.recommend_all(k, path=tmp_path / f"d{k}", filter_seen=filter_seen,
                                   external_ids=False)
        reference.recommend_all(k, path=tmp_path / f"l{k}.parquet", filter_seen=filter_seen)
        got = pd.read_parquet(tmp_path / f"d{k}").sort_values(["user", "rank"])
        want = pd.read_parquet(tmp_path / f"l{k}.parquet").sort_values(["user", "rank"])
        assert rows == len(got) == len(want)
        np.testing.assert_array_equal(got[["user", "rank", "item"]].to_numpy(np.int64),
                                      want[["user", "rank", "item"]].to_numpy(np.int64))
        np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=TOL)


def test_recommend_all_with_external_string_ids_and_an_all_seen_catalogue(client, tmp_path):
    full = pd.DataFrame({"user": np.repeat(["a", "b"], 3), "item": np.tile(["x", "y", "z"], 2),
                         "weight": 1.0})
    model = _dask(full)
    assert model.recommend_all(3, path=tmp_path / "none") == 0  # everything is seen
    assert model.recommend_all(5, path=tmp_path / "all", filter_seen=False) == 6
    recs = pd.read_parquet(tmp_path / "all")
    assert set(recs["user"]) == {"a", "b"} and set(recs["item"]) == {"x", "y", "z"}
    assert sorted(recs["rank"]) == [0, 0, 1, 1, 2, 2]


def test_repeated_fits_are_reproducible_and_the_seed_matters(client):
    frame = _frame()
    model = DaskALS(dtype=np.float64, backend="cpu", **PARAMS)
    ddf = dd.from_pandas(frame, npartitions=2)
    first = model.fit(ddf, "user", "item", "weight").to_local()
    second = model.fit(ddf, "user", "item", "weight").to_local()
    shuffled = _dask(frame.sample(frac=1.0, random_state=3), npartitions=5).to_local()
    np.testing.assert_array_equal(first.user_factors, second.user_factors)
    np.testing.assert_array_equal(first.item_factors, second.item_factors)
    np.testing.assert_allclose(first.user_factors, shuffled.user_factors, rtol=0, atol=TOL)
    other_seed = _dask(frame, random_state=8).to_local()
    assert np.abs(other_seed.user_factors - first.user_factors).max() > 1e-3


def test_zero_iterations_keep_the_initial_factors(client):
    frame = _frame()
    local = _dask(frame, iterations=0).to_local()
    np.testing.assert_array_equal(local.user_factors,
                                  initial_factors(np.arange(30), 4, 7, "users", np.float64))
    np.testing.assert_array_equal(local.item_factors,
                                  initial_factors(np.arange(20), 4, 7, "items", np.float64))


def test_the_local_model_refuses_unknown_users(client):
    local = _dask(_frame()).to_local()
    with pytest.raises(ValueError, match="user_ids must be < 30"):
        local.recommend(30)
    ids, _ = local.recommend(0, k=50)  # k beyond the items: padded with -1
    assert ids.shape == (50,) and (ids[20 - local._user_items[0].nnz:] == -1).all()


def test_numpy_backend_fits_as_single_machine(client):
    frame = _frame(24, 16, 120)
    model = _dask(frame, npartitions=2, backend="numpy", blocks=3, iterations=2)
    reference = _local(_matrix(frame), backend="numpy", iterations=2)
    assert _max_diff(model, reference) < TOL


def test_numpy_backend_with_one_block_fits_as_single_machine(client):
    """One block references every item: the numpy backend's own Gram is the whole one."""
    frame = _frame(24, 16, 120)
    model = _dask(frame, npartitions=2, backend="numpy", blocks=1, iterations=2)
    assert _max_diff(model, _local(_matrix(frame), backend="numpy", iterations=2)) < TOL


def test_repeated_pairs_whose_sum_overflows_are_refused_as_weights(client):
    frame = _frame()
    doubled = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    doubled.loc[[0, len(doubled) - 1], "weight"] = 3e38
    with pytest.raises(ValueError, match="user_items must hold finite values"):
        _local(_matrix(doubled, shape=(30, 20)), dtype=np.float32)
    model = DaskALS(dtype=np.float32, backend="cpu", **PARAMS)
    with pytest.raises(ValueError, match="weight_col 'weight'"):
        model.fit(dd.from_pandas(doubled, npartitions=2), "user", "item", "weight")


@pytest.mark.parametrize("call", ["save", "recommend_all"])
def test_an_empty_path_is_refused_by_name(client, call):
    model = _dask(_frame())
    with pytest.raises((ValueError, FileNotFoundError), match="path"):
        model.save("") if call == "save" else model.recommend_all(3, path="")


def test_fit_with_a_closed_client_says_so(client):
    """fit on a closed client raised Dask's ClosedClientError ("Can't send update-graph
    message"); the results methods already said the client was closed."""
    from distributed import Client

    closed = Client(processes=False, n_workers=1, threads_per_worker=1,
                    dashboard_address=None, set_as_default=False)
    closed.close()
    model = DaskALS(**PARAMS)
    with pytest.raises(RuntimeError, match="client is closed"):
        model.fit(dd.from_pandas(_frame(), npartitions=2), "user", "item", "weight",
                  client=closed)
    assert model.n_users is None


def test_a_failed_recommend_all_leaves_no_folder_it_created(client, tmp_path):
    """A worker's failure (here the MemoryError of a k no machine holds) left the empty
    folder that recommend_all had created for its output."""
    model = _dask(_frame())
    target = tmp_path / "new" / "recs"
    with pytest.raises(MemoryError):
        model.recommend_all(2**31 - 1, path=target)
    assert not target.exists()


def test_broadcast_must_be_a_string():
    with pytest.raises(ValueError, match="broadcast must be 'smaller' or 'never'"):
        DaskALS(broadcast=np.array(["smaller"]))


def test_a_fitted_model_refuses_to_pickle_by_saying_how_to_collect_it(client):
    """A fitted DaskALS failed to pickle with "cannot pickle '_asyncio.Task'"; an unfitted
    one pickles as its settings."""
    import copy
    import pickle

    fresh = DaskALS(**PARAMS)
    assert repr(pickle.loads(pickle.dumps(fresh))) == repr(copy.deepcopy(fresh)) == repr(fresh)
    model = _dask(_frame())
    for attempt in (lambda: pickle.dumps(model), lambda: copy.deepcopy(model)):
        with pytest.raises(TypeError, match="to_local"):
            attempt()


def test_recommend_all_over_a_catalogue_every_user_has_seen_writes_readable_files(client,
                                                                                   tmp_path):
    """Every user having seen every item, recommend_all wrote no file at all (reading the
    folder then failed), where recfuse.ALS.recommend_all writes an empty Parquet file."""
    rows = pd.DataFrame({"user": np.repeat([0, 1, 2], 2), "item": np.tile([0, 1], 3),
                         "weight": 1.0})
    model = _dask(rows)
    assert model.recommend_all(5, path=tmp_path / "recs") == 0
    read = pd.read_parquet(tmp_path / "recs")
    assert len(read) == 0 and {"user", "rank", "item", "score"} <= set(read.columns)

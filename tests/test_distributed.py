"""recfuse.distributed.DaskALS against the single-machine recfuse.ALS on a 2-process
LocalCluster: same factors from the same start, same recommendations, faults and odd input."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import datasets
from recfuse.distributed import DaskALS, IdMap, initial_factors
from driver_loss import DriverLost, dies_after

dask = pytest.importorskip("dask", reason="dask is not installed")
dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] is not installed")
distributed = pytest.importorskip("distributed", reason="dask distributed is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")

PARAMS = dict(factors=6, iterations=3, regularization=0.1, alpha=2.0, random_state=7)


def _cluster():
    return distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=":0", silence_logs=40)


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as client:
        yield client


def _events(n_users=120, n_items=80, nnz=1500, seed=0, dtype=np.float64):
    matrix = datasets.synthetic_implicit(n_users, n_items, nnz, seed=seed, dtype=dtype)
    coo = matrix.tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                          "weight": coo.data})
    return matrix, frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _local_fit(matrix, dtype=np.float64, **params):
    params = {**PARAMS, **params}
    seed = params.pop("random_state")
    n_users, n_items = matrix.shape
    start = (initial_factors(np.arange(n_users), params["factors"], seed, "users", dtype),
             initial_factors(np.arange(n_items), params["factors"], seed, "items", dtype))
    return recfuse.ALS(dtype=dtype, backend="cpu", **params).fit(matrix, initial_factors=start)


def _assert_same_factors(model: DaskALS, reference: recfuse.ALS, tolerance: float):
    local = model.to_local()
    np.testing.assert_allclose(local.user_factors, reference.user_factors, rtol=0, atol=tolerance)
    np.testing.assert_allclose(local.item_factors, reference.item_factors, rtol=0, atol=tolerance)


# ---------------------------------------------------------------------------- pure helpers


def test_id_map_orders_integers_then_strings_and_round_trips():
    column = pd.Series([10, "b", 3, "a", np.int64(10), "b"], dtype=object)
    ids = IdMap.from_column(column, "user")
    assert len(ids) == 4 and ids.kinds == (True, True)
    assert ids.external(np.arange(4)).tolist() == [3, 10, "a", "b"]
    assert ids.dense(column, "user").tolist() == [1, 3, 0, 2, 1, 3]
    merged = ids.merge(IdMap.from_column(pd.Series(["0", 1]), "user"))
    assert merged.external(np.arange(6)).tolist() == [1, 3, 10, "0", "a", "b"]


@pytest.mark.parametrize("column, expected", [
    (pd.Series([3, 1, 3], dtype="Int64"), [1, 3]),
    (pd.Series([3, 1, 3], dtype="uint64"), [1, 3]),
    (pd.Series([3.0, 1.0]), [1, 3]),
    (pd.Series(["b", "a", "b"], dtype="string"), ["a", "b"]),
    (pd.Series(["b", "a", "b"], dtype="category"), ["a", "b"]),
    (pd.Series([2, 1], dtype="category"), [1, 2]),
])
def test_id_map_reads_pandas_id_dtypes(column, expected):
    ids = IdMap.from_column(column, "item")
    assert ids.external(np.arange(len(ids))).tolist() == expected
    assert ids.external(ids.dense(column, "item")).tolist() == column.astype(object).tolist()


@pytest.mark.parametrize("column, error", [
    (pd.Series([1, None], dtype=object), ValueError),
    (pd.Series([1.0, np.nan]), ValueError),
    (pd.Series([True, False]), TypeError),
    (pd.Series([1.5, 2.0]), TypeError),
    (pd.Series([1, 2.5], dtype=object), TypeError),
    (pd.Series([2**63, 1], dtype="uint64"), ValueError),  # NumPy 1.x let 2**63 through
])
def test_id_map_rejects_missing_and_unsupported_ids(column, error):
    with pytest.raises(error, match="user"):
        IdMap.from_column(column, "user")


def test_initial_factors_depend_only_on_the_id():
    whole = initial_factors(np.arange(50), 8, seed=3, side="items")
    assert whole.shape == (50, 8) and whole.dtype == np.float32
    np.testing.assert_array_equal(initial_factors([7, 2], 8, seed=3, side="items"), whole[[7, 2]])
    assert not np.array_equal(whole, initial_factors(np.arange(50), 8, seed=3, side="users"))
    assert abs(float(whole.std()) - 0.01) < 0.002


@pytest.mark.parametrize("call, error, match", [
    (lambda: initial_factors([-1], 4, 0, "users"), ValueError, "ids must be >= 0"),
    (lambda: initial_factors(np.array([2, -1]), 4, 0, "users"), ValueError, "ids must be >= 0"),
    (lambda: initial_factors([1.5], 4, 0, "users"), TypeError, "ids must hold integers"),
    (lambda: initial_factors([True], 4, 0, "users"), TypeError, "ids must hold integers"),
    (lambda: initial_factors([[1, 2]], 4, 0, "users"), ValueError, "ids must be an integer or"),
    (lambda: initial_factors([1], 0, 0, "users"), ValueError, "factors must be >= 1"),
    (lambda: initial_factors([1], True, 0, "users"), TypeError, "factors must be an integer"),
    (lambda: initial_factors([1], 4, -1, "users"), ValueError, "seed must be >= 0"),
    (lambda: initial_factors([1], 4, 1.5, "users"), TypeError, "seed must be an integer"),
    (lambda: initial_factors([1], 4, 0, "user"), ValueError, "side must be one of"),
    (lambda: initial_factors([1], 4, 0, "users", dtype=np.int64), TypeError,
     "dtype must be float32 or float64"),
    (lambda: IdMap.from_column(pd.Series([5, 2, 9]), "user").external([-1]), ValueError,
     "dense must be >= 0"),
    (lambda: IdMap.from_column(pd.Series([5, 2, 9]), "user").external([3]), ValueError,
     "dense must be < 3"),
])
def test_initial_factors_and_id_map_check_their_arguments(call, error, match):
    """A negative id (wrapped around to a huge one), a float id, factors <= 0 (an empty
    table), a fractional seed or an integer dtype (all zeros) used to give a result; a
    negative dense id gave the last external id."""
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- fit


@pytest.mark.parametrize("broadcast, blocks", [("smaller", None), ("never", 3)])
def test_fit_equals_single_machine_fit(client, broadcast, blocks):
    matrix, frame = _events()
    ddf = dd.from_pandas(frame, npartitions=4)
    model = DaskALS(dtype=np.float64, broadcast=broadcast, blocks=blocks, **PARAMS)
    model.fit(ddf, "user", "item", "weight")
    assert (model.n_users, model.n_items) == matrix.shape
    np.testing.assert_array_equal(model.user_ids, np.arange(matrix.shape[0]))
    _assert_same_factors(model, _local_fit(matrix), 1e-10)
    local = model.to_local()
    assert (local._user_items != matrix).nnz == 0
    plan = model.transfer_plan()
    assert plan["users"]["mode"] == ("broadcast" if broadcast == "smaller" else "exchange")
    assert plan["items"]["mode"] == "exchange"
    if broadcast == "smaller":  # the whole item table to each user block
        assert plan["users"]["vectors"] == matrix.shape[1] * plan["users"]["blocks"]
    else:  # each user block gets the items its users rated, once
        blocks = plan["users"]["blocks"]
        expected = sum(np.unique(matrix[b::blocks].indices).size for b in range(blocks))
        assert plan["users"]["vectors"] == expected


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_padded_widths_fit_as_single_machine(client, solver):
    """At a width the cpu kernels do not specialise (k = 20), each block's half-sweep pads
    its tables and Gram to 32 columns, as the single-machine trainer pads its tables: the
    same factors (and k columns)."""
    from recfuse._als.cpu import training_width
    from recfuse._als.common import AlsParams

    assert training_width(20, AlsParams(0.1, 2.0, "linear", solver, 3, 0)) == 32
    matrix, frame = _events()
    params = dict(PARAMS, factors=20, solver=solver)
    model = DaskALS(dtype=np.float64, **params)
    model.fit(dd.from_pandas(frame, npartitions=3), "user", "item", "weight")
    reference = _local_fit(matrix, **params)
    assert model.to_local().user_factors.shape == (matrix.shape[0], 20)
    _assert_same_factors(model, reference, 1e-9 * float(np.abs(reference.user_factors).max()))


def test_callback_reports_the_local_training_loss(client):
    matrix, frame = _events()
    distributed_losses, local_losses = [], []
    DaskALS(dtype=np.float64, **PARAMS).fit(
        dd.from_pandas(frame, npartitions=2), "user", "item", "weight",
        callback=lambda iteration, loss: distributed_losses.append(loss))
    params = {key: value for key, value in PARAMS.items() if key != "random_state"}
    start = (initial_factors(np.arange(matrix.shape[0]), 6, 7, "users", np.float64),
             initial_factors(np.arange(matrix.shape[1]), 6, 7, "items", np.float64))
    recfuse.ALS(dtype=np.float64, backend="cpu", **params).fit(
        matrix, initial_factors=start, callback=lambda i, loss: local_losses.append(loss))
    np.testing.assert_allclose(distributed_losses, local_losses, rtol=1e-10)
    assert distributed_losses[-1] < distributed_losses[0]


def test_float32_fit_within_float32_tolerance(client):
    # One iteration: these small, weakly regularised systems are ill-conditioned enough that
    # float32 rounding (here: of the Gram, summed in another order) grows over iterations
    # (float32 and float64 fits of this data differ by 2e-4 of the scale after 3 of them).
    matrix, frame = _events(dtype=np.float32)
    model = DaskALS(dtype=np.float32, **dict(PARAMS, iterations=1))
    model.fit(dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
    reference = _local_fit(matrix, dtype=np.float32, iterations=1)
    scale = float(np.abs(reference.user_factors).max())
    _assert_same_factors(model, reference, 1e-5 * scale)


def test_recommend_all_equals_local(client, tmp_path):
    matrix, frame = _events()
    model = DaskALS(dtype=np.float64, **PARAMS).fit(dd.from_pandas(frame, npartitions=3),
                                                    "user", "item", "weight")
    local = model.to_local()
    rows = model.recommend_all(5, path=tmp_path / "recs", external_ids=False)
    got = pd.read_parquet(tmp_path / "recs").sort_values(["user", "rank"]).reset_index(drop=True)
    assert rows == len(got)
    local.recommend_all(k=5, path=tmp_path / "local.parquet")
    want = pd.read_parquet(tmp_path / "local.parquet")
    want = want.sort_values(["user", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["user", "rank", "item"]], want[["user", "rank", "item"]],
                                  check_dtype=False)
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-12)
    seen = set(zip(frame["user"], frame["item"]))
    assert not any((u, i) in seen for u, i in zip(got["user"], got["item"]))
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.recommend_all(0, path=tmp_path / "bad")
    with pytest.raises(TypeError, match="path"):
        model.recommend_all(5)


def test_save_writes_partitioned_parquet_factors(client, tmp_path):
    matrix, frame = _events()
    model = DaskALS(dtype=np.float64, **PARAMS).fit(dd.from_pandas(frame, npartitions=2),
                                                    "user", "item", "weight")
    model.save(tmp_path / "model")
    local = model.to_local(with_seen=False)
    for side, want in (("users", local.user_factors), ("items", local.item_factors)):
        parts = sorted(os.listdir(tmp_path / "model" / side))
        assert parts and all(p.startswith("part-") for p in parts)
        table = pq.read_table(tmp_path / "model" / side).to_pandas()
        got = np.stack(table.sort_values("id")["factors"].to_numpy())
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "model" / "model.json").is_file()


# ---------------------------------------------------------------------------- odd input


def test_empty_partition_and_user_spread_over_every_partition(client):
    matrix, frame = _events()
    # user 0 in every partition, and the pair (0, 1) split in three rows that add up
    extra = pd.DataFrame({"user": [0, 0, 0, 0], "item": [1, 1, 1, 2],
                          "weight": [1.0, 2.0, 3.0, 4.0]})
    parts = [frame.iloc[:500], extra.iloc[:1], frame.iloc[:0], frame.iloc[500:1000],
             extra.iloc[1:3], frame.iloc[1000:], extra.iloc[3:]]
    ddf = dd.concat([dd.from_pandas(p, npartitions=1) for p in parts])
    assert ddf.npartitions == len(parts)
    combined = pd.concat(parts)
    expected = sp.csr_matrix((combined["weight"].to_numpy(), (combined["user"], combined["item"])),
                             shape=matrix.shape)
    expected.sum_duplicates()
    model = DaskALS(dtype=np.float64, **PARAMS).fit(ddf, "user", "item", "weight")
    assert (model.to_local()._user_items != expected).nnz == 0
    _assert_same_factors(model, _local_fit(expected), 1e-10)


def test_mixed_id_types(client, tmp_path):
    matrix, frame = _events(n_users=60, n_items=40, nnz=600)
    user_names = np.array([u if u % 2 else f"u{u:03d}" for u in range(60)], dtype=object)
    item_names = np.array([f"i{i:03d}" for i in range(40)], dtype=object)
    mixed = pd.DataFrame({"user": user_names[frame["user"]], "item": item_names[frame["item"]],
                          "weight": frame["weight"]})
    # Dask turns object columns into strings unless told not to (then 7 and "7" would be
    # one id): keep the Python objects.
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(mixed, npartitions=3)
    assert ddf.dtypes["user"] == object
    model = DaskALS(dtype=np.float64, **PARAMS).fit(ddf, "user", "item", "weight")
    order = IdMap.from_column(pd.Series(user_names), "user")
    assert model.user_ids.tolist() == order.external(np.arange(60)).tolist()
    assert model.item_ids.tolist() == sorted(item_names)
    # the same data with dense ids in the model's order fits to the same factors
    dense = sp.csr_matrix((mixed["weight"].to_numpy(),
                           (order.dense(mixed["user"], "user"),
                            np.searchsorted(sorted(item_names), mixed["item"]))),
                          shape=(60, 40))
    _assert_same_factors(model, _local_fit(dense), 1e-10)
    model.recommend_all(3, path=tmp_path / "recs")
    recs = pd.read_parquet(tmp_path / "recs")
    assert {"user_int", "user_str", "item", "rank", "score"} <= set(recs.columns)
    assert recs["user_int"].notna().sum() + recs["user_str"].notna().sum() == len(recs)
    assert set(recs["item"]) <= set(item_names)
    model.save(tmp_path / "model")
    users = pd.read_parquet(tmp_path / "model" / "users")
    assert set(users["user_int" if "user_int" in users else "id_int"].dropna()) == \
        {u for u in user_names if not isinstance(u, str)}


@pytest.mark.parametrize("mutate, error, match", [
    (lambda f: f.assign(weight=f["weight"].where(f.index != 3, np.nan)), ValueError, "weight"),
    (lambda f: f.assign(weight=-f["weight"]), ValueError, ">= 0"),
    (lambda f: f.assign(user=f["user"].astype(object).where(f.index != 5, None)), ValueError,
     "user"),
    (lambda f: f.iloc[:0], ValueError, "no rows"),
])
def test_bad_frames_raise_clear_errors(client, mutate, error, match):
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    with pytest.raises(error, match=match):
        DaskALS(**PARAMS).fit(dd.from_pandas(mutate(frame), npartitions=2), "user", "item",
                              "weight")


def test_bad_arguments_raise_clear_errors(client):
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(TypeError, match="dask DataFrame"):
        DaskALS().fit(frame, "user", "item")
    with pytest.raises(ValueError, match="user_col 'who'"):
        DaskALS().fit(ddf, "who", "item")
    with pytest.raises(ValueError, match="weight_col 'w'"):
        DaskALS().fit(ddf, "user", "item", "w")
    with pytest.raises(ValueError, match="differ"):
        DaskALS().fit(ddf, "user", "user")
    with pytest.raises(ValueError, match="broadcast"):
        DaskALS(broadcast="always")
    with pytest.raises(RuntimeError, match="not fitted"):
        DaskALS().to_local()
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        DaskALS().fit(ddf, "user", "item", client="scheduler:8786")
    fitted = DaskALS(**PARAMS).fit(ddf, "user", "item", "weight")
    with pytest.raises(TypeError, match="path must be a folder path"):
        fitted.recommend_all(3, path=None)


def test_flags_and_paths_are_checked_by_name(client, tmp_path):
    """Flags were read by their truth value (recommend_all(filter_seen=None) silently kept
    the seen items, resume="no" resumed) where recfuse.ALS.recommend_all refuses them; save
    (path=None or bytes) gave os.fspath's and os.path.join's errors, naming no argument."""
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(TypeError, match="resume must be a bool, got str 'no'"):
        DaskALS(**PARAMS).fit(ddf, "user", "item", resume="no")
    with pytest.raises(TypeError, match="compute_loss must be a bool"):
        DaskALS(**PARAMS).fit(ddf, "user", "item", compute_loss=None)
    model = DaskALS(**PARAMS).fit(ddf, "user", "item")
    for flag in ("filter_seen", "external_ids"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got NoneType"):
            model.recommend_all(3, path=tmp_path / "recs", **{flag: None})
    with pytest.raises(TypeError, match="with_seen must be a bool"):
        model.to_local(with_seen="yes")
    for path in (None, os.fsencode(tmp_path / "model")):
        with pytest.raises(TypeError, match="path must be a folder path"):
            model.save(path)
    with pytest.raises(TypeError, match="checkpoint_dir must be a folder path"):
        DaskALS(checkpoint_dir=os.fsencode(tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_model_whose_client_closed_says_so(tmp_path):
    """The factors live on the fit's cluster: once its client is closed, to_local, user_ids,
    save and recommend_all raised Dask's FutureCancelledError "cancelled for reason:
    unknown" or ClosedClientError (after creating the output folder)."""
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0", silence_logs=40) as cluster:
        with distributed.Client(cluster) as own_client:
            model = DaskALS(**PARAMS).fit(dd.from_pandas(frame, npartitions=2), "user",
                                          "item", client=own_client)
            assert model.to_local().user_factors.shape == (30, PARAMS["factors"])
    for call in (model.to_local, lambda: model.user_ids, lambda: model.save(tmp_path / "m"),
                 lambda: model.recommend_all(3, path=tmp_path / "r")):
        with pytest.raises(RuntimeError, match="client this model was fitted with is closed"):
            call()
    assert os.listdir(tmp_path) == []


def test_a_failed_refit_leaves_the_model_as_it_was(client, tmp_path):
    """A refit on other data whose checkpoint folder holds another fit's checkpoint raises
    after the new data was set up; the model must still be the first fit, whole."""
    _, frame = _events(n_users=60, n_items=40, nnz=500)
    model = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=1, **PARAMS)
    model.fit(dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
    before = model.to_local()
    _, other = _events(n_users=90, n_items=30, nnz=500, seed=1)
    with pytest.raises(ValueError, match="belongs to another fit"):
        model.fit(dd.from_pandas(other, npartitions=2), "user", "item", "weight")
    after = model.to_local()
    assert (model.n_users, model.n_items) == before.user_factors.shape[0:1] + \
        before.item_factors.shape[0:1]
    np.testing.assert_array_equal(after.user_factors, before.user_factors)
    np.testing.assert_array_equal(after.item_factors, before.item_factors)


def test_weights_beyond_float32_and_a_diverging_fit_raise_and_keep_the_model(client):
    """As recfuse.ALS: weights are checked finite in the model's dtype, and a fit whose
    factors end up NaN/inf raises (it used to return, and to_local/recommend_all failed
    later with unrelated errors) and leaves the earlier fit in place."""
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    model = DaskALS(dtype=np.float32, **PARAMS)
    model.fit(dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
    before = model.to_local(with_seen=False).user_factors
    beyond = frame.assign(weight=frame["weight"].where(frame.index != 1, 1e39))
    with pytest.raises(ValueError, match="beyond the range of float32"):
        model.fit(dd.from_pandas(beyond, npartitions=2), "user", "item", "weight")
    # confidences a CG step would overflow: refused as by recfuse.ALS (they once diverged)
    huge = frame.assign(weight=frame["weight"].where(frame.index != 1, 1e30))
    with pytest.raises(ValueError, match=r"weight_col's values reach a confidence \(1 \+ "
                                         r"alpha·r\) of 2e\+30, beyond the 6.98e\+12 the cg"):
        model.fit(dd.from_pandas(huge, npartitions=2), "user", "item", "weight")
    np.testing.assert_array_equal(model.to_local(with_seen=False).user_factors, before)


def test_row_systems_that_are_not_positive_definite_are_reported_as_by_als(client):
    """recfuse.ALS warns when row systems cannot be solved; the block solves used to drop
    their count, and DaskALS said nothing."""
    # regularization=0 and fewer items than factors: every user's system is singular, and
    # rounding decides which ones the Cholesky factorisation gives up on (the Gram is summed
    # in another order here than in recfuse.ALS, so only "some" can be compared).
    rows = pd.DataFrame({"user": np.repeat(np.arange(40), 2), "item": np.tile([0, 1, 2, 3], 20),
                         "weight": np.arange(80) % 3 + 1.0})
    with pytest.warns(RuntimeWarning, match=r"^\d+ row systems were not positive definite or "
                      r"overflowed float64 and kept their previous vectors; use "
                      r"regularization > 0 \(or, where"):
        DaskALS(dtype=np.float64, solver="cholesky", **dict(PARAMS, regularization=0.0)).fit(
            dd.from_pandas(rows, npartitions=2), "user", "item", "weight")
    # A count that does not depend on rounding: a weight whose confidence 1 + alpha * w
    # overflows makes its user's and its item's systems NaN in every half-sweep (they keep
    # their vectors), 2 per iteration, here as in recfuse.ALS.
    matrix, frame = _events(n_users=40, n_items=30, nnz=300)
    frame.loc[5, "weight"] = 1e308
    matrix = sp.csr_matrix((frame["weight"], (frame["user"], frame["item"])), shape=matrix.shape)
    params = dict(solver="cholesky", iterations=2)
    with pytest.warns(RuntimeWarning, match="not positive definite") as local_warnings:
        reference = _local_fit(matrix, **params)
    for blocks in (None, 3):
        with pytest.warns(RuntimeWarning, match="not positive definite") as caught:
            model = DaskALS(dtype=np.float64, blocks=blocks, **dict(PARAMS, **params)).fit(
                dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
        assert [str(w.message) for w in caught if "definite" in str(w.message)] == [
            str(w.message) for w in local_warnings if "definite" in str(w.message)] == [
            "4 row systems were not positive definite or overflowed float64 and kept their "
            "previous vectors; "
            "their sums overflowed float64 or were too badly conditioned for it: lower "
            "alpha, scale down the values of user_items or raise regularization"]
        assert {w.filename for w in caught if "definite" in str(w.message)} == {__file__}
        _assert_same_factors(model, reference, 1e-10)


@pytest.mark.parametrize("confidence", ["linear", "raw"])
def test_users_and_items_without_a_positive_weight_end_with_zero_vectors_as_in_als(
        client, confidence):
    """recfuse.ALS sets the vectors of rows without a positive value (only zeros; under
    "raw" also negatives) to their exact solution, zero, after the last iteration; the
    distributed fits kept CG's approximation (an item 1.5e-6 away, against the 1e-10
    promised), and such items were ranked by rounding noise rather than tied at 0."""
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    low = 0.0 if confidence == "linear" else -1.0
    frame.loc[frame["user"] == 3, "weight"] = low
    frame.loc[frame["item"] == 4, "weight"] = low
    matrix = sp.csr_matrix((frame["weight"], (frame["user"], frame["item"])), shape=(30, 20))
    reference = _local_fit(matrix, confidence=confidence)
    assert not reference.user_factors[3].any() and not reference.item_factors[4].any()
    model = DaskALS(dtype=np.float64, confidence=confidence, blocks=3, **PARAMS).fit(
        dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
    local = model.to_local()
    assert not local.user_factors[3].any() and not local.item_factors[4].any()
    _assert_same_factors(model, reference, 1e-10)


def test_a_fit_whose_warning_is_an_error_keeps_the_model(client):
    """recfuse.ALS warns about unsolvable row systems before it replaces its model, so under
    warnings-as-errors the failed fit changes nothing; DaskALS warned after, and the model
    was the new fit's although fit raised."""
    import warnings

    _, frame = _events(n_users=40, n_items=30, nnz=300)
    params = dict(PARAMS, solver="cholesky", iterations=1)
    model = DaskALS(dtype=np.float64, **params).fit(dd.from_pandas(frame, npartitions=2),
                                                    "user", "item", "weight")
    before = model.to_local().user_factors
    frame.loc[5, "weight"] = 1e308  # its user's and item's systems fail (see above)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="not positive definite"):
            model.fit(dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
    np.testing.assert_array_equal(model.to_local().user_factors, before)


# ---------------------------------------------------------------------------- faults


def test_rating_digest_does_not_depend_on_the_block_layout():
    from recfuse.distributed import _blocks

    matrix, frame = _events(n_users=40, n_items=30, nnz=300)
    users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
    weights = frame["weight"].to_numpy()

    def digest(n_blocks, w=weights, i=items):
        return _blocks.combine_digests(
            _blocks.build_block("users", b, 40, n_blocks, 1, np.float64,
                                (users[users % n_blocks == b], i[users % n_blocks == b],
                                 w[users % n_blocks == b])).digest()
            for b in range(n_blocks))

    assert digest(1) == digest(3) == digest(7)
    assert digest(3) != digest(3, i=(items + 1) % 30)  # same shape, count and weight sum
    assert digest(3) != digest(3, w=weights[::-1])


def test_a_checkpoint_of_other_data_with_the_same_shape_and_counts_is_refused(client, tmp_path):
    """Unweighted data of the same shape and count (so the same weight sum): the checkpoint
    fingerprint used to match, and the fit silently returned the other data's factors."""
    _, frame = _events(n_users=30, n_items=20, nnz=200)
    first = frame[["user", "item"]]
    other = first.assign(item=(first["item"] + 1) % 20)
    params = dict(PARAMS, iterations=2)
    DaskALS(checkpoint_dir=tmp_path, checkpoint_every=1, **params).fit(
        dd.from_pandas(first, npartitions=2), "user", "item")
    with pytest.raises(ValueError, match="belongs to another fit"):
        DaskALS(checkpoint_dir=tmp_path, checkpoint_every=1, **params).fit(
            dd.from_pandas(other, npartitions=2), "user", "item")


def test_a_malformed_checkpoint_file_is_a_clear_error(client, tmp_path):
    """checkpoint.json that is valid JSON but not a checkpoint's document (a list, a missing
    or non-integer iteration) raised AttributeError, KeyError or int()'s error."""
    import json

    _, frame = _events(n_users=30, n_items=20, nnz=200)
    ddf = dd.from_pandas(frame, npartitions=1)
    model = DaskALS(checkpoint_dir=tmp_path, checkpoint_every=1, **dict(PARAMS, iterations=1))
    model.fit(ddf, "user", "item")
    path = tmp_path / "checkpoint.json"
    good = json.loads(path.read_text())
    for document, match in (([1, 2], "is not a recfuse distributed ALS checkpoint"),
                            ({k: v for k, v in good.items() if k != "iteration"}, "malformed"),
                            (dict(good, iteration="1"), "malformed"),
                            (dict(good, folder=None), "malformed")):
        path.write_text(json.dumps(document))
        with pytest.raises(ValueError, match=match):
            model.fit(ddf, "user", "item")
    path.write_text(json.dumps(good))
    assert model.fit(ddf, "user", "item").resumed_from == 1


@pytest.mark.parametrize("fractional", [False, True])
def test_a_new_driver_resumes_with_another_block_count(client, tmp_path, fractional):
    """The default block count is the worker count, which changes when a cluster loses or
    gains workers: a new driver must still resume (it used to refuse the checkpoint as
    another fit's), and to the same factors. With weights that are not whole numbers the
    fingerprint's weight sum, the blocks' float sums whose rounding depends on the layout,
    refused it too (the digest pins every value exactly)."""
    matrix, frame = _events()
    if fractional:
        from recfuse.distributed import _blocks

        # not * 0.1 + 1 / 3: from Python 3.12 on, sum() of floats is compensated, and gave
        # those weights the same sum in all three layouts
        frame = frame.assign(weight=frame["weight"] / 3 + 0.1)
        matrix = sp.csr_matrix((frame["weight"], (frame["user"], frame["item"])),
                               shape=matrix.shape)
        users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
        sums = {float(sum(_blocks.build_block(
            "users", b, matrix.shape[0], n, 1, np.float64,
            (users[users % n == b], items[users % n == b],
             frame["weight"].to_numpy()[users % n == b])).stats()["weight_sum"]
            for b in range(n))) for n in (3, 2, 5)}
        assert len(sums) > 1  # the layouts' sums differ in their last bits
    ddf = dd.from_pandas(frame, npartitions=3)
    params = dict(PARAMS, iterations=4)
    with pytest.raises(DriverLost):
        DaskALS(dtype=np.float64, blocks=3, checkpoint_dir=tmp_path, checkpoint_every=2,
                **params).fit(ddf, "user", "item", "weight", callback=dies_after(1))
    for blocks in (2, 5):
        resumed = DaskALS(dtype=np.float64, blocks=blocks, checkpoint_dir=tmp_path,
                          checkpoint_every=10, **params)
        resumed.fit(ddf, "user", "item", "weight")
        assert resumed.resumed_from == 2
        _assert_same_factors(resumed, _local_fit(matrix, iterations=4), 1e-10)


def test_driver_lost_resumes_from_checkpoint(client, tmp_path):
    matrix, frame = _events()
    ddf = dd.from_pandas(frame, npartitions=3)
    params = dict(PARAMS, iterations=5)

    first = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=2, **params)
    with pytest.raises(DriverLost):
        first.fit(ddf, "user", "item", "weight", callback=dies_after(2))
    resumed = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=2, **params)
    resumed.fit(ddf, "user", "item", "weight")
    assert resumed.resumed_from == 2
    _assert_same_factors(resumed, _local_fit(matrix, iterations=5), 1e-10)
    shorter = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=9,
                      **dict(params, iterations=1))
    shorter.fit(ddf, "user", "item", "weight")  # the checkpoint is of iteration 4: not used
    assert shorter.resumed_from is None
    _assert_same_factors(shorter, _local_fit(matrix, iterations=1), 1e-10)
    other = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, **dict(params, factors=5))
    with pytest.raises(ValueError, match="another fit"):
        other.fit(ddf, "user", "item", "weight")


def test_worker_killed_mid_fit_gives_the_same_result(tmp_path):
    matrix, frame = _events()
    params = dict(PARAMS, iterations=5)
    with _cluster() as cluster, distributed.Client(cluster) as own_client:
        ddf = dd.from_pandas(frame, npartitions=4).persist()
        pids = list(own_client.run(os.getpid).values())

        def kill_one_worker(iteration, loss):
            if iteration == 1:
                os.kill(pids[0], signal.SIGKILL)

        model = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=1, **params)
        model.fit(ddf, "user", "item", "weight", client=own_client, callback=kill_one_worker)
        assert pids[0] not in own_client.run(os.getpid).values()
        _assert_same_factors(model, _local_fit(matrix, iterations=5), 1e-10)

        # and while tasks run: a kill timed into the middle of a longer fit
        own_client.wait_for_workers(2)
        pids = list(own_client.run(os.getpid).values())
        timer, killed_at = [], []
        iterations = 50

        def kill():
            killed_at.append(time.perf_counter())
            os.kill(pids[1], signal.SIGKILL)

        def kill_soon(iteration, loss):
            if iteration == 0:
                timer.append(threading.Timer(0.1, kill))
                timer[0].start()

        model = DaskALS(dtype=np.float64, **dict(params, iterations=iterations))
        model.fit(ddf, "user", "item", "weight", client=own_client, callback=kill_soon,
                  compute_loss=False)
        finished_at = time.perf_counter()
        timer[0].join()
        assert killed_at and killed_at[0] < finished_at, "the fit ended before the kill"
        assert pids[1] not in own_client.run(os.getpid).values()
        _assert_same_factors(model, _local_fit(matrix, iterations=iterations), 1e-9)


def test_a_failed_iteration_resumes_from_the_last_checkpoint(client, tmp_path, monkeypatch):
    # Dask recomputes lost blocks by itself (see the test above); when it gives up
    # (KilledWorker, lost futures) the fit goes back to its last checkpoint.
    from distributed.scheduler import KilledWorker

    matrix, frame = _events()
    model = DaskALS(dtype=np.float64, checkpoint_dir=tmp_path, checkpoint_every=2,
                    **dict(PARAMS, iterations=4))
    calls = []
    iterate = DaskALS._iterate

    def fail_the_fourth(self, factors):
        calls.append(1)
        if len(calls) == 4:
            raise KilledWorker("simulated", None, 3)
        return iterate(self, factors)

    monkeypatch.setattr(DaskALS, "_iterate", fail_the_fourth)
    model.fit(dd.from_pandas(frame, npartitions=3), "user", "item", "weight")
    assert len(calls) == 6  # iterations 3 and 4 ran again from the checkpoint of iteration 2
    _assert_same_factors(model, _local_fit(matrix, iterations=4), 1e-10)


def _fail_block_one(name):
    """Patch ``_blocks.<name>`` in a worker process to raise for block 1 (the workers look
    the function up by name when a task arrives)."""
    from recfuse.distributed import _blocks as blocks

    original = getattr(blocks, name)
    blocks.__dict__.setdefault("_original_" + name, original)

    def failing(*args):
        if any(isinstance(a, str) and a.endswith("part-00001.parquet") for a in args):
            raise OSError("disk full (simulated)")
        return original(*args)

    setattr(blocks, name, failing)


def _restore(name):
    from recfuse.distributed import _blocks as blocks

    setattr(blocks, name, blocks.__dict__.pop("_original_" + name))


def _files(folder):
    root = pathlib.Path(folder)
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_a_save_or_recommend_all_that_fails_part_way_keeps_the_earlier_output(client, tmp_path):
    matrix, frame = _events()
    model = DaskALS(dtype=np.float64, **PARAMS).fit(dd.from_pandas(frame, npartitions=3),
                                                    "user", "item", "weight")
    model.save(tmp_path / "model")
    model.recommend_all(3, path=tmp_path / "recs")
    before = {"model": _files(tmp_path / "model"), "recs": _files(tmp_path / "recs")}
    for name, call in (("write_factor_part", lambda: model.save(tmp_path / "model")),
                       ("recommend_block", lambda: model.recommend_all(
                           3, path=tmp_path / "recs"))):
        client.run(_fail_block_one, name)
        try:
            with pytest.raises(OSError, match="disk full"):
                call()
        finally:
            client.run(_restore, name)
    assert _files(tmp_path / "model") == before["model"]  # nothing lost, no staging left
    assert _files(tmp_path / "recs") == before["recs"]
    assert model.recommend_all(3, path=tmp_path / "recs") == pd.read_parquet(
        tmp_path / "recs").shape[0]


def test_worker_threads_variable_is_checked_by_name(monkeypatch):
    """RECFUSE_WORKER_THREADS (the block solves' threads outside a Dask worker, e.g. on a
    Spark executor) gave a bare "invalid literal for int()" that named no variable."""
    from recfuse.distributed._blocks import worker_threads

    assert worker_threads(3) == 3
    for value, expected in (("", 0), ("4", 4), (" 2 ", 2)):
        monkeypatch.setenv("RECFUSE_WORKER_THREADS", value)
        assert worker_threads(0) == expected
    for value in ("x", "-1", "1.5", "70000"):
        monkeypatch.setenv("RECFUSE_WORKER_THREADS", value)
        with pytest.raises(ValueError, match="RECFUSE_WORKER_THREADS must be an integer from 0 "
                                             "to 65536"):
            worker_threads(0)

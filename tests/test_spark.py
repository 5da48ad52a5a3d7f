"""recfuse.distributed.SparkALS on Spark local[2] against the single-machine recfuse.ALS.

Needs pyspark (``pip install 'recfuse[spark]'``) and a Java runtime; skipped otherwise."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import datasets
from recfuse.distributed import SparkALS, initial_factors
from driver_loss import DriverLost, dies_after

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'recfuse[spark]')")
pytest.importorskip("pyarrow", reason="pyarrow is not installed")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime for Spark (java not on PATH, JAVA_HOME unset)",
                allow_module_level=True)

# pyspark 4 with pandas 3 (the [spark] extra pins pandas < 3, this test may run without it):
# its own warnings about pandas are not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

PARAMS = dict(factors=6, regularization=0.1, alpha=2.0, random_state=7, dtype=np.float64)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the executors must import this recfuse
    session = (SparkSession.builder.master("local[2]").appName("recfuse-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    yield session
    session.stop()


def _events():
    matrix = datasets.synthetic_implicit(100, 70, 1000, seed=2, dtype=np.float64)
    coo = matrix.tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                          "weight": coo.data})
    return matrix, frame


def _local_fit(matrix, iterations, **options):
    n_users, n_items = matrix.shape
    start = (initial_factors(np.arange(n_users), 6, 7, "users", np.float64),
             initial_factors(np.arange(n_items), 6, 7, "items", np.float64))
    params = {key: value for key, value in PARAMS.items() if key != "random_state"}
    return recfuse.ALS(iterations=iterations, backend="cpu", **params, **options).fit(
        matrix, initial_factors=start)


def _assert_same(model, reference):
    local = model.to_local()
    np.testing.assert_allclose(local.user_factors, reference.user_factors, rtol=0, atol=1e-10)
    np.testing.assert_allclose(local.item_factors, reference.item_factors, rtol=0, atol=1e-10)
    return local


def test_fit_and_recommend_all_equal_the_local_ones(spark, tmp_path):
    matrix, frame = _events()
    model = SparkALS(iterations=2, blocks=3, **PARAMS).fit(
        spark.createDataFrame(frame).repartition(3), "user", "item", "weight")
    local = _assert_same(model, _local_fit(matrix, 2))
    assert (local._user_items != matrix).nnz == 0
    rows = model.recommend_all(4, path=tmp_path / "recs", external_ids=False)
    got = pd.read_parquet(tmp_path / "recs").sort_values(["user", "rank"]).reset_index(drop=True)
    local.recommend_all(k=4, path=tmp_path / "local.parquet")
    want = pd.read_parquet(tmp_path / "local.parquet").sort_values(["user", "rank"])
    assert rows == len(got) == len(want)
    np.testing.assert_array_equal(got["item"], want["item"])
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-12)
    model.save(tmp_path / "model")
    users = pd.read_parquet(tmp_path / "model" / "users").sort_values("id")
    np.testing.assert_array_equal(np.stack(users["factors"].to_numpy()), local.user_factors)


def test_string_ids_and_resume_after_a_lost_driver(spark, tmp_path):
    matrix, frame = _events()
    named = frame.assign(user=[f"user-{u:04d}" for u in frame["user"]])
    df = spark.createDataFrame(named)

    with pytest.raises(DriverLost):
        SparkALS(iterations=2, checkpoint_dir=tmp_path, checkpoint_every=1, **PARAMS).fit(
            df, "user", "item", "weight", callback=dies_after(0))
    model = SparkALS(iterations=2, checkpoint_dir=tmp_path, checkpoint_every=1, barrier=True,
                     **PARAMS)
    model.fit(df, "user", "item", "weight")
    assert model.resumed_from == 1
    assert model.user_ids[:2].tolist() == ["user-0000", "user-0001"]
    _assert_same(model, _local_fit(matrix, 2))


def test_bad_arguments(spark):
    _, frame = _events()
    df = spark.createDataFrame(frame)
    with pytest.raises(TypeError, match="pyspark DataFrame"):
        SparkALS().fit(frame, "user", "item")
    with pytest.raises(ValueError, match="item_col 'thing'"):
        SparkALS().fit(df, "user", "thing")
    with pytest.raises(RuntimeError, match="not fitted"):
        SparkALS().to_local()


def test_weights_beyond_float32_and_a_diverging_fit_raise(spark):
    """As recfuse.ALS: weights are checked finite in the model's dtype, and a fit whose
    factors end up NaN/inf raises instead of returning them."""
    _, frame = _events()
    params = dict(PARAMS, dtype=np.float32)
    beyond = frame.assign(weight=frame["weight"].where(frame.index != 1, 1e39))
    with pytest.raises(Exception, match="beyond the range of float32"):
        SparkALS(iterations=1, **params).fit(spark.createDataFrame(beyond), "user", "item",
                                             "weight")
    huge = frame.assign(weight=frame["weight"].where(frame.index != 1, 1e30))
    with pytest.raises(ValueError, match="diverged"):
        SparkALS(iterations=1, **params).fit(spark.createDataFrame(huge), "user", "item",
                                             "weight")


def test_checkpoints_refuse_other_data_and_resume_with_another_block_count(spark, tmp_path):
    """Unweighted data of the same shape and count used to pass for the checkpoint's data (the
    fit returned the other data's factors); a new driver with another block count used to be
    refused."""
    matrix, frame = _events()
    df = spark.createDataFrame(frame)

    with pytest.raises(DriverLost):
        SparkALS(iterations=2, blocks=3, checkpoint_dir=tmp_path, checkpoint_every=1,
                 **PARAMS).fit(df, "user", "item", "weight", callback=dies_after(0))
    model = SparkALS(iterations=2, blocks=2, checkpoint_dir=tmp_path, checkpoint_every=5,
                     **PARAMS).fit(df, "user", "item", "weight")
    assert model.resumed_from == 1
    _assert_same(model, _local_fit(matrix, 2))

    unweighted = tmp_path / "unweighted"
    pairs = frame[["user", "item"]]
    SparkALS(iterations=1, checkpoint_dir=unweighted, checkpoint_every=1, **PARAMS).fit(
        spark.createDataFrame(pairs), "user", "item")
    other = spark.createDataFrame(pairs.assign(item=(pairs["item"] + 1) % matrix.shape[1]))
    with pytest.raises(ValueError, match="belongs to another fit"):
        SparkALS(iterations=1, checkpoint_dir=unweighted, checkpoint_every=1, **PARAMS).fit(
            other, "user", "item")


def test_row_systems_that_are_not_positive_definite_are_reported_as_by_als(spark):
    """recfuse.ALS warns when row systems cannot be solved; SparkALS dropped the count."""
    # A weight whose confidence 1 + alpha * w overflows makes its user's and its item's
    # systems NaN in every half-sweep (they keep their vectors): 2 per iteration, whatever
    # the rounding, here as in recfuse.ALS.
    matrix, frame = _events()
    frame.loc[5, "weight"] = 1e308
    matrix = matrix.tocsr(copy=True)
    matrix[frame.loc[5, "user"], frame.loc[5, "item"]] = 1e308
    with pytest.warns(RuntimeWarning, match="not positive definite") as local_warnings:
        reference = _local_fit(matrix, 2, solver="cholesky")
    with pytest.warns(RuntimeWarning, match="not positive definite") as caught:
        model = SparkALS(iterations=2, blocks=3, solver="cholesky", **PARAMS).fit(
            spark.createDataFrame(frame), "user", "item", "weight")
    messages = [[str(w.message) for w in found if "definite" in str(w.message)]
                for found in (caught, local_warnings)]
    assert messages[0] == messages[1] == [
        "4 row systems were not positive definite or overflowed float64 and kept their "
        "previous vectors; "
        "their sums overflowed float64 or were too badly conditioned for it: lower "
        "alpha, scale down the values of user_items or raise regularization"]
    assert {w.filename for w in caught if "definite" in str(w.message)} == {__file__}
    _assert_same(model, reference)


def _jobs(spark) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup())


def test_columns_resolve_as_in_spark_and_weight_types_are_checked_on_the_driver(spark, tmp_path):
    """Column names were matched case-sensitively (Spark's are not, by default); text or
    decimal weights failed only in the Python workers (decimals are numbers: now cast to
    double); recommend_all(path=None) gave os.fspath's TypeError."""
    from pyspark.sql import functions as F

    matrix, frame = _events()
    df = spark.createDataFrame(frame.rename(columns={"user": "User", "weight": "Weight"}))
    decimal = df.withColumn("Weight", F.col("Weight").cast("decimal(12,0)"))
    model = SparkALS(iterations=1, **PARAMS).fit(decimal, "user", "ITEM", "weight")
    _assert_same(model, _local_fit(matrix, 1))
    with pytest.raises(TypeError, match="path must be a folder path"):
        model.recommend_all(3, path=None)

    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        with pytest.raises(ValueError, match=r"user_col 'user' is not a column of df; its "
                           r"columns are \['User', 'item', 'Weight'\]"):
            SparkALS(iterations=1, **PARAMS).fit(df, "user", "item", "Weight")
    finally:
        spark.conf.unset("spark.sql.caseSensitive")
    with pytest.raises(ValueError, match=r"item_col 'item' is ambiguous.*\['item', 'ITEM'\]"):
        SparkALS(iterations=1, **PARAMS).fit(df.select("*", F.col("item").alias("ITEM")),
                                             "User", "item")

    jobs = _jobs(spark)
    for kind in ("string", "date", "binary"):
        with pytest.raises(TypeError, match=f"weight_col 'Weight' must hold numbers, got "
                           f"Spark type {kind}"):
            SparkALS(iterations=1, **PARAMS).fit(
                df.withColumn("Weight", F.lit(None).cast(kind)), "User", "item", "weight")
    assert _jobs(spark) == jobs  # refused before any job ran


def test_a_new_fit_releases_the_data_the_last_one_cached(spark):
    """Each fit caches its rating blocks and out-links; they used to stay cached for the
    life of the session."""
    from pyspark import StorageLevel

    _, frame = _events()
    df = spark.createDataFrame(frame)
    model = SparkALS(iterations=1, **PARAMS).fit(df, "user", "item", "weight")
    first = list(model._cached)
    assert len(first) == 4 and all(f.storageLevel != StorageLevel.NONE for f in first)
    model.fit(df, "user", "item", "weight")  # the same data: its own cache entries
    second = list(model._cached)
    assert all(f.storageLevel == StorageLevel.NONE for f in first)
    assert all(f.storageLevel != StorageLevel.NONE for f in second)

    failed = []

    def dies(iteration, loss):
        failed.extend(model._cached)
        raise DriverLost

    with pytest.raises(DriverLost):
        model.fit(df, "user", "item", "weight", callback=dies)
    assert len(failed) == 4 and all(f.storageLevel == StorageLevel.NONE for f in failed)
    # the model is still the second fit, its data cached
    assert len(model._cached) == 4 and all(a is b for a, b in zip(model._cached, second))
    assert all(f.storageLevel != StorageLevel.NONE for f in second)
    model.to_local()


def test_rows_without_a_positive_weight_end_at_zero_and_flags_and_paths_are_checked(
        spark, tmp_path):
    """As recfuse.ALS, users and items without a positive weight end with zero vectors (CG's
    approximation was kept: up to 1e-6 away). Flags were read by truth value (barrier="no"
    ran barrier stages, filter_seen=None kept seen items), and save(None) gave os.fspath's
    error."""
    matrix, frame = _events()
    frame.loc[frame["user"] == 3, "weight"] = -1.0
    frame.loc[frame["item"] == 4, "weight"] = -1.0
    matrix = sp.csr_matrix((frame["weight"], (frame["user"], frame["item"])), shape=matrix.shape)
    reference = _local_fit(matrix, 2, confidence="raw")
    assert not reference.user_factors[3].any() and not reference.item_factors[4].any()
    model = SparkALS(iterations=2, blocks=3, confidence="raw", **PARAMS).fit(
        spark.createDataFrame(frame), "user", "item", "weight")
    local = _assert_same(model, reference)
    assert not local.user_factors[3].any() and not local.item_factors[4].any()

    with pytest.raises(TypeError, match="barrier must be a bool, got str 'no'"):
        SparkALS(barrier="no")
    with pytest.raises(TypeError, match="resume must be a bool"):
        SparkALS(**PARAMS).fit(spark.createDataFrame(frame), "user", "item", resume="no")
    for flag in ("filter_seen", "external_ids"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool, got NoneType"):
            model.recommend_all(3, path=tmp_path / "recs", **{flag: None})
    with pytest.raises(TypeError, match="with_seen must be a bool"):
        model.to_local(with_seen="yes")
    with pytest.raises(TypeError, match="path must be a folder path"):
        model.save(None)
    assert os.listdir(tmp_path) == []

"""SparkALS under Spark Connect (a local Connect server): the DataFrame-only design holds.

Needs pyspark with its connect extra (``pip install 'pyspark[connect]'``) and Java."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

import recfuse
from recfuse import datasets
from recfuse.distributed import SparkALS, initial_factors

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'recfuse[spark]')")
pytest.importorskip("grpc", reason="Spark Connect needs pyspark[connect] (grpcio)")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("no Java runtime for Spark (java not on PATH, JAVA_HOME unset)",
                allow_module_level=True)

pytestmark = [
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]


def test_fit_under_spark_connect_equals_the_local_fit(tmp_path):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = SparkSession.builder.remote("local[2]").getOrCreate()
    try:
        assert type(spark).__module__.startswith("pyspark.sql.connect")
        matrix = datasets.synthetic_implicit(60, 40, 500, seed=4, dtype=np.float64)
        coo = matrix.tocoo()
        df = spark.createDataFrame(pd.DataFrame({"u": coo.row.astype(np.int64),
                                                 "i": coo.col.astype(np.int64), "w": coo.data}))
        model = SparkALS(factors=4, iterations=2, regularization=0.1, alpha=2.0, random_state=1,
                         dtype=np.float64).fit(df, "u", "i", "w")
        start = (initial_factors(np.arange(60), 4, 1, "users", np.float64),
                 initial_factors(np.arange(40), 4, 1, "items", np.float64))
        reference = recfuse.ALS(factors=4, iterations=2, regularization=0.1, alpha=2.0,
                                dtype=np.float64, backend="cpu").fit(matrix, initial_factors=start)
        local = model.to_local()
        np.testing.assert_allclose(local.user_factors, reference.user_factors, atol=1e-10)
        np.testing.assert_allclose(local.item_factors, reference.item_factors, atol=1e-10)
        unseen = 40 - np.diff(matrix.indptr)
        assert model.recommend_all(3, path=tmp_path / "recs") == int(np.minimum(3, unseen).sum())
    finally:
        spark.stop()

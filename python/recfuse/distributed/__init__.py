"""ALS training and batch recommendation on a cluster: Dask (``DaskALS``) and Spark
DataFrames (``SparkALS``).

Both follow Spark MLlib's blocked ALS and solve each block with recfuse's native
half-sweep; the trained factors collect into a regular ``recfuse.ALS`` (``to_local()``) or
are written as partitioned Parquet. Dask and PySpark are optional: install
``recfuse[distributed]`` or ``recfuse[spark]``.
"""

from __future__ import annotations

from ._blocks import IdMap, initial_factors
from ._dask import DaskALS
from ._spark import SparkALS

__all__ = ["DaskALS", "IdMap", "SparkALS", "initial_factors"]

"""ALS over a PySpark DataFrame with the DataFrame API only (no RDDs, no SparkContext), so it
runs on classic Spark and under Spark Connect alike."""

from __future__ import annotations

import os
import secrets
from typing import Any, Callable

import numpy as np

try:  # the distributed and spark extras bring it; fit says so (_require_dask, ...)
    import pandas as pd
except ImportError:  # pragma: no cover - exercised without the extras
    pd = None

from . import _blocks
from ..models._common import progress_bar
from ..models.als import ALS, warn_failed_systems
from .._validation import check_flag
from ._common import DistributedALSBase, check_columns, folder_path

BLOCK_SCHEMA = "block int, payload binary"
# A solved factor block, with how many of its row systems were not positive definite (the
# next job that reads the block anyway, a Gram or the final check, collects the counts).
SOLVED_SCHEMA = "block int, payload binary, failed long"


def _require_spark():
    try:
        import pandas  # noqa: F401 - the blocks' (and mapInPandas')
        from pyspark.sql import DataFrame, functions
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("SparkALS needs pyspark: pip install 'recfuse[spark]'") from error
    return DataFrame, functions


def _is_spark_frame(frame) -> bool:
    DataFrame, _ = _require_spark()
    if isinstance(frame, DataFrame):
        return True
    try:  # Spark Connect's DataFrame is another class
        from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
    except Exception:  # noqa: BLE001 - connect dependencies not installed
        return False
    return isinstance(frame, ConnectDataFrame)


def _column(name: str):
    """The column named exactly ``name`` (quoted: dots and backticks are part of the name)."""
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _resolve_columns(df, user_col, item_col, weight_col) -> tuple:
    """The names of ``df``'s columns that the arguments name, checked (``check_columns``), as
    Spark resolves them: ignoring case unless ``spark.sql.caseSensitive`` is true; and
    whether the weight column is a decimal (to be cast to double). Reads the schema only
    (no job): a weight column that does not hold numbers is refused here, on the driver."""
    from pyspark.sql.types import BooleanType, DecimalType, NumericType

    fields = df.schema.fields
    names = [field.name for field in fields]
    setting = df.sparkSession.conf.get("spark.sql.caseSensitive", "false")
    sensitive = str(setting).lower() == "true"

    def resolve(argument, value):
        if not isinstance(value, str):
            return value  # check_columns says what is wrong with it
        same = [name for name in names if (name == value if sensitive
                                           else name.lower() == value.lower())]
        if len(same) > 1:
            how = "" if sensitive else \
                " (Spark compares column names ignoring case: spark.sql.caseSensitive is false)"
            raise ValueError(f"{argument} {value!r} is ambiguous: df has several columns of "
                             f"that name, {same}{how}")
        return same[0] if same else value

    user_col, item_col = resolve("user_col", user_col), resolve("item_col", item_col)
    if weight_col is not None:
        weight_col = resolve("weight_col", weight_col)
    check_columns(names, user_col, item_col, weight_col, "df")
    decimal = False
    if weight_col is not None:
        kind = fields[names.index(weight_col)].dataType
        if isinstance(kind, DecimalType):
            decimal = True
        elif not isinstance(kind, (NumericType, BooleanType)):
            raise TypeError(f"weight_col {weight_col!r} must hold numbers, got Spark type "
                            f"{kind.simpleString()}")
    return user_col, item_col, weight_col, decimal


def _unpersist(frames) -> None:
    """Release cached DataFrames (best effort: a stopped session has nothing left to free)."""
    for frame in frames:
        try:
            frame.unpersist()
        except Exception:  # noqa: BLE001
            pass


def _rows(frames) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


# Each function below returns the function that mapInPandas runs on the executors; the
# arguments travel with it (they are small: parameters, id maps, the k x k Gram).

def _encode(maps, user_col, item_col, weight_col, user_blocks, item_blocks, dtype, nonnegative):
    def run(batches):
        for frame in batches:
            users = maps[0].dense(frame[user_col], user_col)
            items = maps[1].dense(frame[item_col], item_col)
            weights = _blocks._weights(frame, weight_col, dtype, nonnegative)
            yield pd.DataFrame({"u": users, "i": items, "w": weights.astype(np.float64),
                                "ub": (users % user_blocks).astype(np.int32),
                                "ib": (items % item_blocks).astype(np.int32)})
    return run


def _build(side, key, n_total, n_blocks, n_other_blocks, dtype, weight_col):
    def run(batches):
        frame = _rows(batches)
        if frame is None:
            return
        for block, group in frame.groupby(key):
            # Rows arrive in shuffle order, which varies between runs: sort them so that
            # repeated pairs add up in the same order every time (same bits, same checkpoint).
            group = group.sort_values(["u", "i", "w"], kind="stable")
            piece = (group["u"].to_numpy(np.int64), group["i"].to_numpy(np.int64),
                     group["w"].to_numpy(np.float64))
            built = _blocks.build_block(side, int(block), n_total, n_blocks, n_other_blocks,
                                        dtype, piece, weight_col=weight_col)
            stats = built.stats()
            yield pd.DataFrame({"block": [int(block)],
                                "payload": [_blocks.block_to_bytes(built, n_other_blocks)],
                                "nnz": [stats["nnz"]], "weight_sum": [stats["weight_sum"]],
                                # a uint64 (Spark's long is signed): as its decimal digits
                                "digest": [str(stats["digest"])],
                                "sources": [sorted(stats["sources"])]})
    return run


def _outlinks():
    def run(batches):
        for frame in batches:
            for destination, payload in zip(frame["block"], frame["payload"]):
                block = _blocks.block_from_bytes(payload)
                for source, (_, rows) in block.sources.items():
                    yield pd.DataFrame({"src": [source], "dst": [int(destination)],
                                        "rows": [_blocks.array_to_bytes(rows)]})
    return run


def _initial(n_total, n_blocks, factors, seed, side, dtype):
    def run(batches):
        for frame in batches:
            for block in frame["block"]:
                values = _blocks.initial_block(n_total, n_blocks, int(block), factors, seed,
                                               side, dtype)
                yield pd.DataFrame({"block": [int(block)],
                                    "payload": [_blocks.array_to_bytes(values)]})
    return run


def _failed(frame) -> list:
    """The ``failed`` counts of factor blocks (0 for blocks that were not solved: initial or
    loaded from a checkpoint)."""
    return list(frame["failed"]) if "failed" in frame else [0] * len(frame)


def _gram():
    def run(batches):
        for frame in batches:
            for payload, failed in zip(frame["payload"], _failed(frame)):
                gram = _blocks.partial_gram(_blocks.array_from_bytes(payload))
                yield pd.DataFrame({"block": [0], "payload": [_blocks.array_to_bytes(gram)],
                                    "failed": [int(failed)]})
    return run


def _take():
    def run(batches):
        for frame in batches:
            for source, destination, payload, rows in zip(frame["block"], frame["dst"],
                                                          frame["payload"], frame["rows"]):
                piece = _blocks.take_rows(_blocks.array_from_bytes(payload),
                                          _blocks.array_from_bytes(rows))
                yield pd.DataFrame({"dst": [int(destination)], "src": [int(source)],
                                    "piece": [_blocks.array_to_bytes(piece)]})
    return run


def _solve(gram, params, backend):
    def run(batches):
        for frame in batches:
            for block_id, payload, factors, pieces in zip(frame["block"], frame["payload"],
                                                          frame["factors"], frame["pieces"]):
                block = _blocks.block_from_bytes(payload)
                received = [(int(p["src"]), _blocks.array_from_bytes(p["piece"]))
                            for p in pieces]
                new, failed = _blocks.solve_block(
                    block, _blocks.array_from_bytes(factors), gram, params, backend,
                    pieces=received)
                yield pd.DataFrame({"block": [int(block_id)],
                                    "payload": [_blocks.array_to_bytes(new)],
                                    "failed": [failed]})
    return run


def _save(folder, side):
    def run(batches):
        for frame in batches:
            for block, payload in zip(frame["block"], frame["payload"]):
                path = _blocks.checkpoint_path(folder, side, int(block))
                _blocks.save_array(_blocks.array_from_bytes(payload), path)
                yield pd.DataFrame({"block": [int(block)], "payload": [path.encode()]})
    return run


def _load(folder, side, n_total, n_blocks, saved_blocks):
    def run(batches):
        for frame in batches:
            for block in frame["block"]:
                values = _blocks.load_checkpoint_block(folder, side, n_total, n_blocks,
                                                       int(block), saved_blocks)
                yield pd.DataFrame({"block": [int(block)],
                                    "payload": [_blocks.array_to_bytes(values)]})
    return run


def _finite():
    def run(batches):
        for frame in batches:
            for block, payload, failed in zip(frame["block"], frame["payload"], _failed(frame)):
                yield pd.DataFrame({"block": [int(block)], "finite": [
                    _blocks.all_finite(_blocks.array_from_bytes(payload))],
                    "failed": [int(failed)]})
    return run


def _zero_unrated():
    def run(batches):
        for frame in batches:
            for block, payload, factors in zip(frame["block"], frame["payload"],
                                               frame["factors"]):
                values = _blocks.zero_rows_without_positive(
                    _blocks.array_from_bytes(factors), _blocks.block_from_bytes(payload))
                yield pd.DataFrame({"block": [int(block)],
                                    "payload": [_blocks.array_to_bytes(values)]})
    return run


def _factor_rows(n_total, n_blocks, id_map):
    def run(batches):
        for frame in batches:
            for block, payload in zip(frame["block"], frame["payload"]):
                table = _blocks.factor_table(_blocks.array_from_bytes(payload), n_total,
                                             n_blocks, int(block), id_map)
                yield table.to_pandas()
    return run


def _recommend(n_items, k, filter_seen, maps, backend, num_threads):
    def run(batches):
        items = None  # the item table, assembled once per task from the joined blocks
        for frame in batches:
            for payload, factors, item_blocks in zip(frame["payload"], frame["factors"],
                                                     frame["items"]):
                if items is None:
                    ordered = sorted(item_blocks, key=lambda row: row["block"])
                    items = _blocks.assemble(n_items, *[_blocks.array_from_bytes(row["payload"])
                                                        for row in ordered])
                table = _blocks.recommend_table(
                    _blocks.block_from_bytes(payload), _blocks.array_from_bytes(factors), items,
                    k, filter_seen, maps, backend, num_threads)
                yield table.to_pandas()
    return run


def _id_type(id_map) -> str:
    return "string" if id_map.kinds[1] else "long"


class SparkALS(DistributedALSBase):
    """Implicit-feedback ALS over a PySpark DataFrame, equal to ``recfuse.ALS`` on one machine.

    The same blocked algorithm as ``DaskALS``, written with DataFrame operations only
    (``mapInPandas``, joins, ``groupBy().agg``, ``localCheckpoint``), so that it also runs
    under Spark Connect. The state lives in small DataFrames of one row per block (a
    serialised CSR block or factor block, .npz/.npy bytes, never pickle):

    - ratings by user block and by item block (``cache``d);
    - per half-sweep: the Gram matrix of the fixed side (per-block Grams summed on the
      driver: one k x k array per block), the out-link pieces (each fixed block sends each
      destination block only the vectors it references, gathered per destination with
      ``collect_list``), then one ``mapInPandas`` that runs the native half-sweep per block;
      the new factor blocks are ``localCheckpoint``ed (lineage cut every iteration).

    Spark's columns are typed, so ids are all integers or all strings. The distinct ids are
    collected on the driver and travel inside the encoding function (under Spark Connect a
    function is part of the plan, whose size is limited): fine for millions of ids, not for
    hundreds of millions. ``barrier=True`` runs
    the solve stages in barrier mode (all blocks of a half-sweep at once; needs as many task
    slots as blocks). Checkpoints, resume and results work as for ``DaskALS`` (task retries
    are Spark's; a lost driver resumes from ``checkpoint_dir``).
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, *, barrier: bool = False, **kwargs):
        super().__init__(factors, regularization, alpha, iterations, **kwargs)
        self.barrier: bool
        self.__dict__.update(self._check_own_params({"barrier": barrier}))
        # the fit's SparkSession, and the DataFrames below (pyspark is untyped)
        self._spark: Any = None
        self._maps: tuple[_blocks.IdMap, ...] | None = None  # (users, items)
        self._ratings: dict[str, Any] = {}
        self._factors: dict[str, Any] = {}
        self._cached: list[Any] = []  # the DataFrames it cached (its ratings and out-links)

    def _own_params(self) -> dict[str, Any]:
        return {"barrier": self.barrier}

    def _check_own_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"barrier": check_flag(params["barrier"], "barrier")}

    def fit(self, df: Any, user_col: str, item_col: str, weight_col: str | None = None, *,
            resume: bool = True, show_progress: bool = False,
            callback: Callable[[int, float | None], None] | None = None) -> "SparkALS":
        """Train on the rows of the Spark DataFrame ``df``; see ``DaskALS.fit``
        (``callback(iteration, None)``: SparkALS does not compute the training loss).

        Column names are resolved as Spark resolves them (ignoring case unless
        ``spark.sql.caseSensitive`` is true). The weight column must be of a numeric (or
        boolean) Spark type; decimals are cast to double. The DataFrames that an earlier fit
        of this model cached are released once this one has replaced them."""
        self._check_settings()
        _require_spark()
        if not _is_spark_frame(df):
            raise TypeError(f"df must be a pyspark DataFrame, got {type(df).__module__}."
                            f"{type(df).__name__}")
        user_col, item_col, weight_col, decimal = _resolve_columns(df, user_col, item_col,
                                                                   weight_col)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        resume = check_flag(resume, "resume")
        show_progress = check_flag(show_progress, "show_progress")
        previous = self._cached
        cached: list[Any] = []
        try:
            with self._all_or_nothing():
                failed = self._fit(df, user_col, item_col, weight_col, decimal, resume,
                                   show_progress, callback, cached)
                # inside: as in recfuse.ALS, a warning turned into an error keeps the old model
                warn_failed_systems(failed, stacklevel=2, regularization=self.regularization,
                                    dtype=self.dtype)
        except BaseException:
            _unpersist(cached)  # this fit's own; the model keeps the previous fit's
            raise
        _unpersist(previous)  # replaced by this fit's
        return self

    def _fit(self, df, user_col, item_col, weight_col, decimal, resume, show_progress,
             callback, cached: list) -> int:
        """fit once its arguments are checked (under _all_or_nothing); the DataFrames it
        caches go into ``cached``. Returns how many row systems were not positive definite."""
        from pyspark.sql import functions as F

        self._spark = df.sparkSession
        columns = [_column(user_col), _column(item_col)]
        if weight_col is not None:
            weight = _column(weight_col)
            columns.append(weight.cast("double").alias(weight_col) if decimal else weight)
        df = df.select(*columns)
        # The distinct ids are collected on the driver (one column each) and travel to the
        # tasks with the encoding function.
        maps = tuple(_blocks.IdMap.from_column(df.select(_column(c)).distinct().toPandas()[c],
                                               c)
                     for c in (user_col, item_col))
        n_users, n_items = len(maps[0]), len(maps[1])
        if n_users == 0:
            raise ValueError("df has no rows")
        wanted = self.blocks or max(2, self._default_parallelism())
        user_blocks, item_blocks = min(wanted, n_users), min(wanted, n_items)
        encoded = df.mapInPandas(
            _encode(maps, user_col, item_col, weight_col, user_blocks, item_blocks, self.dtype,
                    self.confidence == "linear"),
            "u long, i long, w double, ub int, ib int")
        stats, ratings = {}, {}
        # This fit's own token in the cached plans: a plan equal to one that another fit
        # (of this model or another) cached would share its cache entry, and be released
        # with it.
        token = F.lit(secrets.token_hex(8))
        for side, key, n_total, n_own, n_other in (
                ("users", "ub", n_users, user_blocks, item_blocks),
                ("items", "ib", n_items, item_blocks, user_blocks)):
            built = encoded.repartition(n_own, key).mapInPandas(
                _build(side, key, n_total, n_own, n_other, self.dtype, weight_col),
                "block int, payload binary, nnz long, weight_sum double, digest string, "
                "sources array<int>",
            ).withColumn("fit", token).cache()
            cached.append(built)
            table = built.select("block", "nnz", "weight_sum", "digest").toPandas()
            stats[side] = [{"nnz": int(n), "weight_sum": float(w), "digest": int(d)}
                           for _, n, w, d in sorted(table.itertuples(index=False))]
            ratings[side] = built.select("block", "payload")
        self.n_users, self.n_items = n_users, n_items
        self._maps, self._ratings = maps, ratings
        self._blocks_count = {"users": user_blocks, "items": item_blocks}
        self._outlinks = {side: ratings[side].mapInPandas(
            _outlinks(), "src int, dst int, rows binary").cache() for side in ratings}
        cached.extend(self._outlinks.values())
        self._cached = cached
        fingerprint = self._fingerprint(n_users, n_items, user_blocks, item_blocks,
                                        stats["users"])
        return self._train(fingerprint, resume, show_progress, callback)


    def _default_parallelism(self) -> int:
        value = self._spark.conf.get("spark.default.parallelism", None)
        return int(value) if value else 2  # unset: shuffle partitions (200) are too many

    def _block_ids(self, side: str):
        from pyspark.sql import functions as F

        return self._spark.range(self._blocks_count[side]).select(
            F.col("id").cast("int").alias("block"))

    def _start(self, fingerprint, resume: bool):
        found = self._read_checkpoint(fingerprint) if resume else None
        if found is None:
            factors = {side: self._block_ids(side).mapInPandas(
                _initial(n_total, self._blocks_count[side], self.factors, self.random_state,
                         side, self.dtype), BLOCK_SCHEMA).localCheckpoint()
                for side, n_total in (("users", self.n_users), ("items", self.n_items))}
            return 0, factors
        iteration, folder, saved_blocks = found
        return iteration, {side: self._block_ids(side).mapInPandas(
            _load(folder, side, n_total, self._blocks_count[side], saved_blocks[side]),
            BLOCK_SCHEMA).localCheckpoint()
            for side, n_total in (("users", self.n_users), ("items", self.n_items))}

    def _half_sweep(self, side: str, solving, fixed):
        """(the solved blocks of ``side``, how many row systems were not positive definite
        when ``fixed`` was solved: read along with its Gram)."""
        from pyspark.sql import functions as F

        table = fixed.mapInPandas(_gram(), SOLVED_SCHEMA).toPandas()
        gram = _blocks.add(*[_blocks.array_from_bytes(p) for p in table["payload"]])
        pieces = fixed.join(self._outlinks[side], fixed["block"] == F.col("src")).select(
            "block", "dst", "payload", "rows").mapInPandas(
                _take(), "dst int, src int, piece binary")
        grouped = pieces.groupBy("dst").agg(
            F.collect_list(F.struct("src", "piece")).alias("pieces"))
        inputs = (self._ratings[side]
                  .join(solving.withColumnRenamed("payload", "factors"), "block")
                  .join(grouped.withColumnRenamed("dst", "block"), "block"))
        return (inputs.mapInPandas(_solve(gram, self.params, self.backend), SOLVED_SCHEMA,
                                   barrier=self.barrier).localCheckpoint(),
                int(table["failed"].sum()))

    def _checkpoint(self, iteration: int, factors, fingerprint) -> None:
        folder = self._checkpoint_folder(iteration)
        for side, frame in factors.items():
            frame.mapInPandas(_save(folder, side), BLOCK_SCHEMA).collect()
        self._commit_checkpoint(iteration, folder, fingerprint)

    def _train(self, fingerprint, resume, show_progress, callback) -> int:
        """Run the iterations; returns how many row systems were not positive definite."""
        from pyspark.sql import functions as F

        iteration, factors = self._start(fingerprint, resume)
        failed = 0  # of the solved blocks read so far (each is read once more, below)
        self.resumed_from = iteration if iteration else None
        progress = progress_bar(self.iterations, show_progress, "SparkALS",
                                initial=min(iteration, self.iterations))
        try:
            while iteration < self.iterations:
                users, items_failed = self._half_sweep("users", factors["users"],
                                                       factors["items"])
                items, users_failed = self._half_sweep("items", factors["items"], users)
                failed += items_failed + users_failed  # last iteration's items, these users
                factors = {"users": users, "items": items}
                iteration += 1
                if self.checkpoint_dir is not None and iteration % self.checkpoint_every == 0:
                    self._checkpoint(iteration, factors, fingerprint)
                self._factors = factors
                progress.update(1)
                if callback is not None:
                    callback(iteration - 1, None)
        finally:
            progress.close()
        checks = {side: factors[side].mapInPandas(
            _finite(), "block int, finite boolean, failed long").toPandas()
            for side in ("users", "items")}
        # as recfuse.ALS: a fit that diverged raises, and _all_or_nothing keeps the old model
        _blocks.check_converged("SparkALS", [flag for table in checks.values()
                                             for flag in table["finite"]])
        if self.iterations:  # as recfuse.ALS: rows without a positive value end at zero
            factors = {side: self._ratings[side].join(
                factors[side].select("block", F.col("payload").alias("factors")), "block"
            ).mapInPandas(_zero_unrated(), BLOCK_SCHEMA).localCheckpoint()
                for side in ("users", "items")}
        self._factors = factors
        return failed + int(checks["items"]["failed"].sum())  # the last items: read here only

    # ------------------------------------------------------------------ results
    def _require_fitted(self) -> None:
        super()._require_fitted()
        if not self._factors:
            raise RuntimeError("the model is not fitted: call fit() first")

    def _id_maps(self) -> tuple[_blocks.IdMap, ...]:
        assert self._maps is not None  # callers run after _require_fitted
        return self._maps

    @staticmethod
    def _collect_blocks(frame) -> list:
        table = frame.toPandas().sort_values("block")
        return list(table["payload"])

    @property
    def user_ids(self) -> np.ndarray:
        self._require_fitted()
        return self._id_maps()[0].external(np.arange(self._fitted_sizes()[0]))

    @property
    def item_ids(self) -> np.ndarray:
        self._require_fitted()
        return self._id_maps()[1].external(np.arange(self._fitted_sizes()[1]))

    def to_local(self, with_seen: bool = True) -> ALS:
        """Collect into a regular ``recfuse.ALS`` (see ``DaskALS.to_local``)."""
        with_seen = check_flag(with_seen, "with_seen")
        self._require_fitted()
        users = [_blocks.array_from_bytes(p) for p in self._collect_blocks(self._factors["users"])]
        items = [_blocks.array_from_bytes(p) for p in self._collect_blocks(self._factors["items"])]
        seen = None
        if with_seen:
            seen = [_blocks.block_from_bytes(p) for p in self._collect_blocks(self._ratings["users"])]
        return self._local_model(users, items, seen)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the factors with Spark as Parquet folders ``path/users`` and ``path/items``
        (columns id, factors) plus ``model.json`` (``path`` must be reachable from the driver
        for the JSON file)."""
        self._require_fitted()
        path = folder_path(path)
        element = "float" if self.dtype == np.float32 else "double"
        maps = self._id_maps()
        for side, n_total, id_map in (("users", self.n_users, maps[0]),
                                      ("items", self.n_items, maps[1])):
            self._factors[side].mapInPandas(
                _factor_rows(n_total, self._blocks_count[side], id_map),
                f"id {_id_type(id_map)}, factors array<{element}>",
            ).write.mode("overwrite").parquet(os.path.join(path, side))
        self._save_model_json(path, *maps)

    def recommend_all(self, k: int = 10, *, path: str | os.PathLike[str],
                      filter_seen: bool = True, external_ids: bool = True) -> int:
        """Top k items of every user written with Spark as Parquet at ``path`` (columns user,
        rank, item, score), per user block against all item blocks (joined to every user
        block). Returns the number of rows written."""
        from pyspark.sql import functions as F

        from .. import _validation as check

        self._require_fitted()
        k = check.check_k(k)
        filter_seen = check_flag(filter_seen, "filter_seen")
        external_ids = check_flag(external_ids, "external_ids")
        path = folder_path(path)
        maps = self._id_maps() if external_ids else None
        user_type = _id_type(maps[0]) if maps is not None else "long"
        item_type = _id_type(maps[1]) if maps is not None else "long"
        score = "float" if self.dtype == np.float32 else "double"
        # The item blocks travel as data (one row, joined to every user block), not inside
        # the function: under Spark Connect a function is part of the plan, which has a size
        # limit.
        items = self._factors["items"].groupBy().agg(
            F.collect_list(F.struct("block", "payload")).alias("items"))
        inputs = self._ratings["users"].join(
            self._factors["users"].withColumnRenamed("payload", "factors"), "block"
        ).crossJoin(items)
        inputs.mapInPandas(
            _recommend(self.n_items, k, filter_seen, maps, self.backend, self.num_threads),
            f"user {user_type}, rank int, item {item_type}, score {score}",
        ).write.mode("overwrite").parquet(path)
        return int(self._spark.read.parquet(path).count())

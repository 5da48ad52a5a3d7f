"""ALS on a Dask cluster: blocked like Spark MLlib's ALS, each block solved natively."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import time
from typing import Any, Callable

import numpy as np

from . import _blocks
from .._validation import check_flag, check_int
from ..models._common import progress_bar
from ..models.als import ALS, warn_failed_systems
from ._common import DistributedALSBase, check_columns, folder_path

logger = logging.getLogger("recfuse.distributed")

TREE_FAN_IN = 8


def _require_dask():
    try:
        import dask.dataframe as dd
        import distributed
        import pandas  # noqa: F401 - the blocks' (dask brings it, but as an option)
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("DaskALS needs dask and distributed: "
                          "pip install 'recfuse[distributed]'") from error
    return dd, distributed


def _recoverable_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean lost workers or data (worth resuming from a checkpoint), not bad input."""
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (KilledWorker, FutureCancelledError, CommClosedError)


def _sizes(maps) -> tuple[int, int]:
    return len(maps[0]), len(maps[1])


def _stats(block: _blocks.RatingBlock) -> dict:
    return block.stats()


def _outlinks(block: _blocks.RatingBlock, source: int):
    return block.outlinks(source)


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # noqa: BLE001 - some distributed errors fail to print
        return type(error).__name__


def _getitem(value, index):
    return value[index]


class DaskALS(DistributedALSBase):
    """Implicit-feedback ALS trained on a Dask cluster, equal to ``recfuse.ALS`` on one machine.

    Same model and solvers as ``recfuse.ALS``, and its parameters but ``random_state``,
    which defaults to 0 here (the start must be reproducible on every worker); the ratings
    come as a dask
    DataFrame of (user, item[, weight]) rows with ids of any integer or string type.

    How it runs (after Spark MLlib's blocked ALS):

    - users and items are hashed into ``blocks`` blocks each (dense id modulo the count);
      the ratings are stored once by user block and once by item block, as CSR blocks held
      in the workers' memory for the whole fit;
    - before each half-sweep the Gram matrix of the fixed side is summed by a tree reduction
      of per-block Grams;
    - the fixed side is broadcast when it is the smaller side (its whole table goes to
      every block); the larger side goes through the in/out-link exchange: each source
      block sends each destination block only the vectors it references, once;
    - each block's solve is the native half-sweep of ``backend`` on its worker (CPU or GPU),
      with ``num_threads`` threads (0: the worker's thread count).

    ``checkpoint_dir`` (a folder that the driver and every worker can reach) receives the
    factors every ``checkpoint_every`` iterations as .npy blocks plus a JSON file; a fit
    that loses workers resumes from there, and a new fit with the same data and parameters
    (a new driver) resumes where the last checkpoint left it. Initial factors depend only on
    ``random_state`` and the ids (``recfuse.distributed.initial_factors``).

    ``broadcast``: "smaller" (default, as above) or "never" (the exchange for both sides).
    ``max_retries``: how many times a fit that lost workers or data beyond what Dask
    recomputes by itself (``KilledWorker``, cancelled futures, closed connections) goes back
    to the last checkpoint (or to the start) before it gives up.
    Other keyword arguments: see ``recfuse.distributed._common.DistributedALSBase`` (the
    base class; ``help(DaskALS)`` shows it).

    Ids from Dask: dask turns object columns into strings by default
    (``dataframe.convert-string``), so a column mixing 7 and "7" reaches the workers as two
    "7" strings unless that option is off.

    >>> from distributed import Client, LocalCluster                    # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> model = DaskALS(factors=32, iterations=10).fit(ddf, "user", "item", "clicks")  # doctest: +SKIP
    >>> local = model.to_local()             # a recfuse.ALS                # doctest: +SKIP
    >>> model.recommend_all(20, path="recs/")  # partitioned Parquet         # doctest: +SKIP
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, *, broadcast: str = "smaller", max_retries: int = 2,
                 **kwargs):
        super().__init__(factors, regularization, alpha, iterations, **kwargs)
        self.broadcast: str
        self.max_retries: int
        self.__dict__.update(self._check_own_params({"broadcast": broadcast,
                                                     "max_retries": max_retries}))
        self._client: Any = None  # the fit's distributed.Client (an untyped package)
        self._maps = None  # future of (user IdMap, item IdMap)
        self._maps_local = None
        self._rating_blocks: dict[str, list] = {}
        self._factors: dict[str, list] = {}
        self.setup_seconds: float | None = None  # id maps + rating blocks, in the last fit

    def _own_params(self) -> dict[str, Any]:
        return {"broadcast": self.broadcast, "max_retries": self.max_retries}

    def _check_own_params(self, params: dict[str, Any]) -> dict[str, Any]:
        broadcast = params["broadcast"]
        if not isinstance(broadcast, str) or broadcast not in ("smaller", "never"):
            raise ValueError(f"broadcast must be 'smaller' or 'never', got {broadcast!r}")
        return {"broadcast": broadcast,
                "max_retries": check_int(params["max_retries"], "max_retries", minimum=0)}

    # ------------------------------------------------------------------ fit
    def fit(self, ddf: Any, user_col: str, item_col: str, weight_col: str | None = None, *,
            client: Any = None, resume: bool = True, show_progress: bool = False,
            callback: Callable[[int, float | None], None] | None = None,
            compute_loss: bool = True) -> "DaskALS":
        """Train on the rows of ``ddf`` and return self.

        ``ddf``: a dask DataFrame; ``user_col`` / ``item_col``: id columns (integers,
        strings or a mix; nulls are an error); ``weight_col``: the interaction strength r
        (None: 1 for every row). Rows repeating a (user, item) pair add up. As in
        ``recfuse.ALS``, users and items without a positive weight end with zero vectors.
        ``client``: a ``distributed.Client`` (default: the current one).
        ``resume``: continue from the checkpoint in ``checkpoint_dir`` when there is one
        (it must come from the same data and parameters). ``callback(iteration, loss)``
        runs on the driver after each iteration, with the training loss of
        ``recfuse.reference.als_loss`` as ``recfuse.ALS.fit`` reports it (one more pass over
        the user blocks; None with ``compute_loss=False``).
        """
        self._check_settings()
        dd, distributed = _require_dask()
        if not isinstance(ddf, dd.DataFrame):
            raise TypeError(f"ddf must be a dask DataFrame, got {type(ddf).__module__}."
                            f"{type(ddf).__name__}")
        check_columns(ddf.columns, user_col, item_col, weight_col, "ddf")
        if weight_col is not None and ddf.dtypes[weight_col].kind not in "biuf":
            raise TypeError(f"weight_col {weight_col!r} must hold numbers, got dtype "
                            f"{ddf.dtypes[weight_col]}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        resume = check_flag(resume, "resume")
        show_progress = check_flag(show_progress, "show_progress")
        compute_loss = check_flag(compute_loss, "compute_loss")
        client = client if client is not None else distributed.default_client()
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        if client.status in ("closing", "closed"):
            raise RuntimeError("client is closed: fit needs an open distributed.Client")
        with self._all_or_nothing():
            self._client = client
            started = time.perf_counter()
            self._setup(ddf, user_col, item_col, weight_col)
            self.setup_seconds = time.perf_counter() - started
            failed = self._train(resume, show_progress, callback, compute_loss)
            # inside: as in recfuse.ALS, a warning turned into an error keeps the old model
            warn_failed_systems(failed, stacklevel=2, regularization=self.regularization,
                                dtype=self.dtype)
        return self

    def _submit(self, func, *args, **kwargs):
        return self._client.submit(func, *args, **kwargs)

    def _gather_writes(self, jobs: list) -> list:
        """The results of jobs that write files into a staging folder, once every one of them
        has ended: after a failure the others must not still be writing when the folder is
        removed."""
        from distributed import wait

        wait(jobs)
        return self._client.gather(jobs)

    def _tree(self, func, futures: list):
        """Reduce futures pairwise-ish (``TREE_FAN_IN`` at a time) on the workers."""
        while len(futures) > 1:
            futures = [self._submit(func, *futures[i:i + TREE_FAN_IN])
                       for i in range(0, len(futures), TREE_FAN_IN)]
        return futures[0]

    def _setup(self, ddf, user_col, item_col, weight_col) -> None:
        """Id maps, then the ratings by user block and by item block, held on the workers."""
        from distributed import wait

        columns = [user_col, item_col] + ([weight_col] if weight_col is not None else [])
        parts = self._client.compute(ddf[columns].to_delayed())
        maps = self._tree(_blocks.merge_id_maps, [
            self._submit(_blocks.partition_id_maps, part, user_col, item_col) for part in parts])
        n_users, n_items = self._client.gather(self._submit(_sizes, maps))
        if n_users == 0:
            raise ValueError("ddf has no rows")
        workers = max(1, len(self._client.nthreads()))
        wanted = self.blocks if self.blocks is not None else workers
        user_blocks, item_blocks = min(wanted, n_users), min(wanted, n_items)
        pieces = [self._submit(_blocks.encode_and_split, part, maps, user_col, item_col,
                               weight_col, user_blocks, item_blocks, self.dtype,
                               self.confidence == "linear") for part in parts]
        blocks = {}
        for side, own, n_total, n_own, n_other in (
                ("users", 0, n_users, user_blocks, item_blocks),
                ("items", 1, n_items, item_blocks, user_blocks)):
            blocks[side] = [
                self._submit(_blocks.build_block, side, b, n_total, n_own, n_other, self.dtype,
                             *[self._submit(_blocks.pick, p, own, b) for p in pieces],
                             weight_col=weight_col)
                for b in range(n_own)]
        stats = {side: self._client.gather([self._submit(_stats, b) for b in futures])
                 for side, futures in blocks.items()}
        wait(blocks["users"] + blocks["items"])
        del parts, pieces  # the blocks keep what they need; lineage stays for recovery
        self.n_users, self.n_items = int(n_users), int(n_items)
        self._maps, self._maps_local = maps, None
        self._rating_blocks = blocks
        self._stats = stats
        self._fingerprint_now = self._fingerprint(n_users, n_items, user_blocks, item_blocks,
                                                  stats["users"])
        # For each side solved, is the fixed side broadcast? ("for the smaller side, broadcast")
        self._broadcast = {
            "users": self.broadcast == "smaller" and n_items <= n_users,
            "items": self.broadcast == "smaller" and n_users < n_items,
        }
        self._outlink_futures = {}
        for side in ("users", "items"):
            if not self._broadcast[side]:
                self._outlink_futures[side] = [
                    {c: self._submit(_outlinks, block, c) for c in stat["sources"]}
                    for block, stat in zip(blocks[side], stats[side])]

    def _initial(self) -> dict[str, list]:
        return {side: [self._submit(_blocks.initial_block, n_total, len(self._rating_blocks[side]),
                                    b, self.factors, self.random_state, side, self.dtype)
                       for b in range(len(self._rating_blocks[side]))]
                for side, n_total in (("users", self.n_users), ("items", self.n_items))}

    def _load(self, folder: str, saved_blocks: dict[str, int]) -> dict[str, list]:
        return {side: [self._submit(_blocks.load_checkpoint_block, folder, side, n_total,
                                    len(self._rating_blocks[side]), b, saved_blocks[side],
                                    pure=False)
                       for b in range(len(self._rating_blocks[side]))]
                for side, n_total in (("users", self.n_users), ("items", self.n_items))}

    def _start(self, resume: bool) -> tuple[int, dict[str, list]]:
        """(iteration to start at, factor futures): the last checkpoint or the initial ones."""
        found = self._read_checkpoint(self._fingerprint_now) if resume else None
        if found is None:
            return 0, self._initial()
        iteration, folder, saved_blocks = found
        logger.info("resuming from the checkpoint of iteration %d in %s", iteration, folder)
        return iteration, self._load(folder, saved_blocks)

    def _half_sweep(self, side: str, solving: list, fixed: list, fixed_total: int,
                    task) -> list:
        """``task`` (a block solve, or the block loss) on every block of ``side``, with the
        fixed side's Gram and vectors delivered by broadcast or by the exchange."""
        gram = self._tree(_blocks.add, [self._submit(_blocks.partial_gram, f) for f in fixed])
        blocks = self._rating_blocks[side]
        params, backend = self.params, self.backend
        if self._broadcast[side]:
            full = self._submit(_blocks.assemble, fixed_total, *fixed)
            return [self._submit(task, block, x, gram, params, backend, full=full)
                    for block, x in zip(blocks, solving)]
        out = []
        for block, x, outlinks in zip(blocks, solving, self._outlink_futures[side]):
            pieces = [(c, self._submit(_blocks.take_rows, fixed[c], rows))
                      for c, rows in outlinks.items()]
            out.append(self._submit(task, block, x, gram, params, backend, pieces=pieces))
        return out

    def _loss(self, factors: dict[str, list]) -> float:
        """``recfuse.reference.als_loss`` of the current factors, summed over user blocks."""
        n_users, n_items = self._fitted_sizes()
        parts = self._client.gather(self._half_sweep(
            "users", factors["users"], factors["items"], n_items, task=_blocks.block_loss))
        item_norm = sum(self._client.gather(
            [self._submit(_blocks.squared_norm, f) for f in factors["items"]]))
        data = sum(p[0] for p in parts)
        nnz = sum(s["nnz"] for s in self._stats["users"])
        total_confidence = n_users * n_items - nnz + sum(p[1] for p in parts)
        penalty = self.regularization * (sum(p[2] for p in parts) + item_norm)
        return (data + penalty) / total_confidence if total_confidence else 0.0

    def _solve(self, side: str, solving: list, fixed: list, fixed_total: int):
        """The half-sweep of ``side``: (new factor futures, futures of each block's count of
        row systems that were not positive definite)."""
        solved = self._half_sweep(side, solving, fixed, fixed_total, task=_blocks.solve_block)
        return ([self._submit(_getitem, s, 0) for s in solved],
                [self._submit(_getitem, s, 1) for s in solved])

    def _iterate(self, factors: dict[str, list]) -> tuple[dict[str, list], int]:
        """One iteration: (the new factor futures, how many row systems were not positive
        definite)."""
        from distributed import wait

        n_users, n_items = self._fitted_sizes()
        users, users_failed = self._solve("users", factors["users"], factors["items"], n_items)
        items, items_failed = self._solve("items", factors["items"], users, n_users)
        wait(users + items)
        for future in users + items:
            if future.status == "error":
                future.result()  # raises the task's error here
        return {"users": users, "items": items}, sum(self._client.gather(users_failed
                                                                          + items_failed))

    def _checkpoint(self, iteration: int, factors: dict[str, list]) -> dict[str, list]:
        """Write the factors, commit the JSON, and continue from the written blocks (so a lost
        block is read back rather than recomputed from the start)."""
        folder = self._checkpoint_folder(iteration)
        paths = {side: [self._submit(_blocks.save_array, f, _blocks.checkpoint_path(folder, side, b),
                                     pure=False) for b, f in enumerate(futures)]
                 for side, futures in factors.items()}
        self._client.gather(paths["users"] + paths["items"])
        self._commit_checkpoint(iteration, folder, self._fingerprint_now)
        where = self._client.who_has(factors["users"] + factors["items"])
        return {side: [self._submit(_blocks.load_array, path, pure=False,
                                    workers=list(where.get(f.key, ())) or None,
                                    allow_other_workers=True)
                       for path, f in zip(paths[side], factors[side])]
                for side in factors}

    def _train(self, resume: bool, show_progress: bool, callback, compute_loss: bool) -> int:
        """Run the iterations; returns how many row systems were not positive definite."""
        recoverable = _recoverable_errors()
        iteration, factors = self._start(resume)
        self.resumed_from = iteration if iteration else None
        retries, wrote_checkpoint = 0, False
        failed = {}  # iteration -> its count (an iteration run again after a failure: once)
        progress = progress_bar(self.iterations, show_progress, "DaskALS",
                                initial=min(iteration, self.iterations))
        try:
            while iteration < self.iterations:
                try:
                    factors, failed[iteration] = self._iterate(factors)
                    iteration += 1
                    if self.checkpoint_dir is not None and iteration % self.checkpoint_every == 0:
                        factors = self._checkpoint(iteration, factors)
                        wrote_checkpoint = True
                except recoverable as error:
                    retries += 1
                    if retries > self.max_retries:
                        raise
                    logger.warning("iteration %d failed (%s); resuming from the last "
                                   "checkpoint", iteration + 1, _describe(error))
                    # this fit's own checkpoint, if it wrote one (else the start again)
                    iteration, factors = self._start(resume=resume or wrote_checkpoint)
                    progress.n = iteration
                    progress.refresh()
                    continue
                self._factors = factors
                progress.update(1)
                if callback is not None:
                    callback(iteration - 1, self._loss(factors) if compute_loss else None)
        finally:
            progress.close()
        # as recfuse.ALS: a fit that diverged raises, and _all_or_nothing keeps the old model
        _blocks.check_converged("DaskALS", self._client.gather(
            [self._submit(_blocks.all_finite, f) for f in factors["users"] + factors["items"]]))
        if self.iterations:  # as recfuse.ALS: rows without a positive value end at zero
            factors = {side: [self._submit(_blocks.zero_rows_without_positive, f, block)
                              for f, block in zip(futures, self._rating_blocks[side])]
                       for side, futures in factors.items()}
        self._factors = factors
        return sum(failed.values())

    def transfer_plan(self) -> dict:
        """What one half-sweep of each side moves, if every block sat on its own worker:
        ``{"users": {"mode", "blocks", "vectors", "bytes"}, "items": {...}}``, where "users"
        is the user half-sweep (the item vectors it receives) and "mode" is "broadcast" (the
        whole fixed side to every block) or "exchange" (each block gets the vectors it
        references). Blocks that share a worker move less."""
        super()._require_fitted()
        n_users, n_items = self._fitted_sizes()
        size = self.factors * self.dtype.itemsize
        plan = {}
        for side, n_fixed in (("users", n_items), ("items", n_users)):
            stats = self._stats[side]
            if self._broadcast[side]:
                vectors = n_fixed * len(stats)
            else:
                vectors = sum(sum(s["sources"].values()) for s in stats)
            plan[side] = {"mode": "broadcast" if self._broadcast[side] else "exchange",
                          "blocks": len(stats), "vectors": int(vectors),
                          "bytes": int(vectors * size)}
        return plan

    # ------------------------------------------------------------------ results
    def _require_fitted(self) -> None:
        super()._require_fitted()
        if not self._factors:
            raise RuntimeError("the model is not fitted: call fit() first")

    def __getstate__(self) -> dict:
        """An unfitted model pickles (and copies) as its settings; a fitted one holds its
        factors and ratings on its cluster, which no copy can take along."""
        if self._client is not None:
            raise TypeError("a fitted DaskALS keeps its factors on its Dask cluster and "
                            "cannot be pickled or copied: collect it with to_local() (a "
                            "recfuse.ALS, which pickles) or save() it")
        return self.__dict__.copy()

    def _live_client(self):
        """The client of the fit, which holds the factors and ratings on its cluster; a
        closed one is a clear error (Dask's is a cancelled future "for reason: unknown")."""
        if self._client.status in ("closing", "closed"):
            raise RuntimeError(
                "the client this model was fitted with is closed (or lost its cluster), and the "
                "factors and ratings lived on that cluster: fit again with an open client "
                "(collect them with to_local() or save() before closing the client)")
        return self._client

    def _id_maps(self):
        if self._maps_local is None:
            self._maps_local = self._live_client().gather(self._maps)
        return self._maps_local

    @property
    def user_ids(self) -> np.ndarray:
        """External user ids in dense order: row u of ``to_local().user_factors`` is
        ``user_ids[u]``."""
        self._require_fitted()
        return self._id_maps()[0].external(np.arange(self._fitted_sizes()[0]))

    @property
    def item_ids(self) -> np.ndarray:
        """External item ids in dense order (rows of ``to_local().item_factors``)."""
        self._require_fitted()
        return self._id_maps()[1].external(np.arange(self._fitted_sizes()[1]))

    def to_local(self, with_seen: bool = True) -> ALS:
        """Collect the factors into a regular ``recfuse.ALS`` (dense ids; see ``user_ids``,
        ``item_ids``). ``with_seen`` also collects the training matrix (for filter_seen)."""
        with_seen = check_flag(with_seen, "with_seen")
        self._require_fitted()
        client = self._live_client()
        seen = client.gather(self._rating_blocks["users"]) if with_seen else None
        return self._local_model(client.gather(self._factors["users"]),
                                 client.gather(self._factors["items"]), seen)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the factors as partitioned Parquet: ``users/part-*.parquet`` and
        ``items/part-*.parquet`` (one file per block, written by the workers: ``path`` must be
        reachable from all of them) with the external id (``id``, or ``id_int`` and ``id_str``
        when both kinds occur) and ``factors`` (a fixed-size list), plus ``model.json``.

        Everything is written into a staging folder inside ``path`` first and moved into
        place once all of it is written: a save that fails (a worker lost, a full disk) leaves
        an earlier save at ``path`` as it was."""
        self._require_fitted()
        path = folder_path(path)
        self._live_client()
        with _staged(path) as staging:
            jobs = []
            for side, n_total, index in (("users", self.n_users, 0), ("items", self.n_items, 1)):
                id_map = self._submit(_getitem, self._maps, index)
                futures = self._factors[side]
                folder = os.path.join(staging, side)
                os.mkdir(folder)
                jobs += [self._submit(_blocks.write_factor_part, f, n_total, len(futures), b,
                                      id_map, os.path.join(folder, f"part-{b:05d}.parquet"),
                                      pure=False)
                         for b, f in enumerate(futures)]
            self._gather_writes(jobs)
            maps = self._id_maps()
            self._save_model_json(staging, maps[0], maps[1])
            for side in ("users", "items"):
                _replace_parts(os.path.join(staging, side), os.path.join(path, side))
            os.replace(os.path.join(staging, "model.json"), os.path.join(path, "model.json"))

    def recommend_all(self, k: int = 10, *, path: str | os.PathLike[str],
                      filter_seen: bool = True, external_ids: bool = True) -> int:
        """Top k items of every user, computed per user block against a broadcast copy of the
        item factors with ``recfuse.topk`` (seen items excluded when ``filter_seen``), written
        by the workers as ``path/part-*.parquet`` with columns user, rank, item, score (ids
        external unless ``external_ids=False``; ``user_int``/``user_str`` and ``item_int``/
        ``item_str`` when a side mixes kinds). Returns the number of rows written. Like
        ``save``, the parts are staged and replace an earlier run's only once all are
        written."""
        from .. import _validation as check

        self._require_fitted()
        k = check.check_k(k)
        filter_seen = check.check_flag(filter_seen, "filter_seen")
        external_ids = check.check_flag(external_ids, "external_ids")
        path = folder_path(path)
        self._live_client()
        with _staged(path) as staging:
            items = self._submit(_blocks.assemble, self.n_items, *self._factors["items"])
            maps = self._maps if external_ids else None
            jobs = [self._submit(_blocks.recommend_block, block, x, items, k, filter_seen,
                                 maps, os.path.join(staging, f"part-{b:05d}.parquet"),
                                 self.backend, self.num_threads, pure=False)
                    for b, (block, x) in enumerate(zip(self._rating_blocks["users"],
                                                       self._factors["users"]))]
            rows = int(sum(self._gather_writes(jobs)))
            _replace_parts(staging, path)
        return rows


@contextlib.contextmanager
def _staged(path: str):
    """A new empty folder ``.recfuse-staging-*`` inside ``path`` (created too), for the
    workers to write into (a leading dot: Parquet readers of ``path`` skip it); removed at
    the end, and ``path`` with it when this call created it and the writing failed."""
    created = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    staging = os.path.join(path, f".recfuse-staging-{secrets.token_hex(8)}")
    os.mkdir(staging)
    written = False
    try:
        yield staging
        written = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not written:
            with contextlib.suppress(OSError):  # only while empty
                os.rmdir(path)


def _replace_parts(staged: str, folder: str) -> None:
    """Make ``folder``'s ``part-*.parquet`` files those of ``staged``: the old ones removed, the
    new ones moved in (renames within one file system)."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith("part-") and name.endswith(".parquet"):
            os.remove(os.path.join(folder, name))
    for name in sorted(os.listdir(staged)):
        os.replace(os.path.join(staged, name), os.path.join(folder, name))

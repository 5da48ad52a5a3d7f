"""What DaskALS and SparkALS share on the driver: parameters, checkpoints, the local model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import DTypeLike

from .. import _validation as check
from .._als.common import AlsParams
from ..models._common import EstimatorParams, dtype_text, shaped_tables
from ..models.als import ALS, AlsSettings, checked_settings, settings_params
from . import _blocks

CHECKPOINT_FORMAT = "recfuse-distributed-als-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"


class DistributedALSBase(EstimatorParams, AlsSettings):
    """Parameters and driver-side helpers common to the distributed ALS front ends.

    The model is that of ``recfuse.ALS`` (same confidence, solvers and contract); see the
    subclasses for the engine-specific parts.

    Parameters
    ----------
    factors, regularization, alpha, iterations, solver, cg_steps, dtype, confidence:
        as for ``recfuse.ALS``.
    backend: the ALS backend each block's half-sweep uses on its worker ("auto": CUDA where
        the worker has a device, else the native CPU module).
    num_threads: threads per block solve; 0 uses the Dask worker's thread count (elsewhere:
        ``RECFUSE_WORKER_THREADS`` or all cores).
    random_state: seed of ``initial_factors`` (an int: the start must be reproducible on
        every worker and after a restart).
    blocks: blocks per side (default: one per worker); at most the number of users/items.
    checkpoint_dir: folder reachable from the driver and every worker for checkpoints
        (None: no checkpoints).
    checkpoint_every: iterations between checkpoints.

    ``get_params``/``set_params`` follow scikit-learn's estimator protocol (the parameters
    of the subclass's constructor, these included); on a fitted model ``set_params``
    refuses a new ``factors`` or ``dtype``, which shape its fitted tables.
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        *,
        solver: str = "cg",
        cg_steps: int = 3,
        dtype: DTypeLike = np.float32,
        backend: str = "auto",
        num_threads: int = 0,
        random_state: int = 0,
        confidence: str = "linear",
        blocks: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 5,
    ):
        self.random_state: int
        self.blocks: int | None
        self.checkpoint_dir: str | None
        self.checkpoint_every: int
        # the subclass checks and sets its own parameters (_check_own_params) after these
        self.__dict__.update(self._checked_common(dict(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            solver=solver, cg_steps=cg_steps, dtype=dtype, backend=backend,
            num_threads=num_threads, random_state=random_state, confidence=confidence,
            blocks=blocks, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)))
        self.n_users: int | None = None
        self.n_items: int | None = None
        self.resumed_from: int | None = None  # iteration a fit resumed from (None: from start)

    def __repr__(self) -> str:
        fitted = "" if self.n_users is None else (
            f", fitted on {self.n_users} users x {self.n_items} items")
        return (f"{type(self).__name__}(factors={self.factors}, "
                f"regularization={self.regularization}, alpha={self.alpha}, "
                f"iterations={self.iterations}, solver={self.solver!r}, "
                f"dtype={dtype_text(self.dtype)}{fitted})")

    @property
    def params(self) -> AlsParams:
        return AlsParams(regularization=self.regularization, alpha=self.alpha,
                         confidence=self.confidence, solver=self.solver,
                         cg_steps=self.cg_steps, num_threads=self.num_threads)

    def _own_params(self) -> dict[str, Any]:
        """The subclass's own constructor parameters (``get_params``), as it has them."""
        return {}

    def _check_own_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The attributes the subclass's own parameters in ``params`` set, checked (its
        constructor and ``set_params`` both check them here)."""
        return {}

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``)."""
        return {**settings_params(self), "random_state": self.random_state,
                "blocks": self.blocks, "checkpoint_dir": self.checkpoint_dir,
                "checkpoint_every": self.checkpoint_every, **self._own_params()}

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self._checked_common(params), **self._check_own_params(params)}

    def _checked_common(self, params: dict[str, Any]) -> dict[str, Any]:
        """The attributes the parameters of this class in ``params`` set, checked."""
        blocks, folder = params["blocks"], params["checkpoint_dir"]
        return {
            **checked_settings(params),
            "random_state": check.check_int(params["random_state"], "random_state", minimum=0,
                                            maximum=2**63 - 1),
            "blocks": None if blocks is None else check.check_int(blocks, "blocks", minimum=1),
            "checkpoint_dir": None if folder is None else folder_path(folder, "checkpoint_dir"),
            "checkpoint_every": check.check_int(params["checkpoint_every"], "checkpoint_every",
                                                minimum=1),
        }

    def _als_params(self) -> dict[str, Any]:
        """The constructor arguments of the equivalent ``recfuse.ALS`` (without its
        ``random_state``), as the model has them now."""
        return settings_params(self)

    def _fit_shaped(self) -> dict[str, str]:
        if self.n_users is None:  # not fitted
            return {}
        return shaped_tables(self.factors)

    # ------------------------------------------------------------------ checkpoints
    @contextlib.contextmanager
    def _all_or_nothing(self):
        """A fit that raises (bad data, a foreign checkpoint, a lost cluster) leaves the model
        as it was: the attributes it replaced are put back."""
        before = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    def _fingerprint(self, n_users, n_items, user_blocks, item_blocks, user_stats) -> dict:
        """What must match for a checkpoint to belong to this fit."""
        params = {key: value for key, value in self._als_params().items()
                  if key not in ("iterations", "backend", "num_threads")}
        return {"params": params, "random_state": self.random_state, "n_users": n_users,
                "n_items": n_items, "user_blocks": user_blocks, "item_blocks": item_blocks,
                "nnz": sum(s["nnz"] for s in user_stats),
                "weight_sum": float(sum(s["weight_sum"] for s in user_stats)),
                "digest": _blocks.combine_digests(s["digest"] for s in user_stats)}

    def _read_checkpoint(self, fingerprint: dict) -> tuple[int, str, dict] | None:
        """(completed iterations, folder, {side: its block count}) of the checkpoint in
        checkpoint_dir, or None. The block counts may differ from this fit's (they do not
        change the vectors): ``_blocks.load_checkpoint_block`` re-blocks."""
        if self.checkpoint_dir is None:
            return None
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"checkpoint {path!r} is unreadable: {error}") from error
        if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path!r} is not a recfuse distributed ALS checkpoint")
        version, iteration, folder = (document.get("version", 0), document.get("iteration"),
                                      document.get("folder"))
        if isinstance(version, int) and not isinstance(version, bool) and \
                version > CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint {path!r} is of a newer format: upgrade recfuse")
        if not (isinstance(version, int) and isinstance(iteration, int) and iteration >= 0
                and not isinstance(iteration, bool) and isinstance(folder, str) and folder):
            raise ValueError(f"checkpoint {path!r} is malformed (its version, iteration or "
                             f"folder is missing or not of its type)")
        stored = document.get("fingerprint")
        wanted = json.loads(json.dumps(fingerprint))
        layout = ("user_blocks", "item_blocks")  # the block layout: any will do
        if not isinstance(stored, dict) or not all(
                isinstance(stored.get(key), int) and stored[key] >= 1 for key in layout):
            raise ValueError(f"checkpoint {path!r} is malformed (no block counts)")
        if "digest" not in stored:  # written before fingerprints had a digest
            wanted.pop("digest", None)
        # The weight sum adds the blocks' float64 sums, whose rounding depends on the block
        # layout: compared to a relative 1e-9 (the digest, when there is one, pins every value
        # exactly), else a re-blocked resume of weights that are not whole numbers is refused.
        ignored = layout + ("weight_sum",)
        stored_sum, wanted_sum = stored.get("weight_sum"), wanted.get("weight_sum")
        same_sum = (stored_sum == wanted_sum or (
            isinstance(stored_sum, (int, float)) and not isinstance(stored_sum, bool)
            and isinstance(wanted_sum, (int, float))
            and math.isclose(stored_sum, wanted_sum, rel_tol=1e-9)))
        if not same_sum or ({k: v for k, v in stored.items() if k not in ignored}
                            != {k: v for k, v in wanted.items() if k not in ignored}):
            raise ValueError(
                f"checkpoint {path!r} belongs to another fit (other data or parameters); "
                "remove it or fit with resume=False")
        if iteration > self.iterations:  # a longer fit's checkpoint: not a state of this one
            return None
        return (iteration, os.path.join(self.checkpoint_dir, folder),
                {"users": stored["user_blocks"], "items": stored["item_blocks"]})

    def _commit_checkpoint(self, iteration: int, folder: str, fingerprint: dict) -> None:
        """Point checkpoint.json at ``folder`` (whose blocks are written), drop older folders."""
        root = self.checkpoint_dir
        assert root is not None  # checkpoints are written only with a checkpoint_dir
        _blocks.save_json({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                           "iteration": iteration, "folder": os.path.basename(folder),
                           "fingerprint": fingerprint},
                          os.path.join(root, CHECKPOINT_FILE))
        for name in os.listdir(root):
            if name.startswith("iteration-") and name != os.path.basename(folder):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

    def _checkpoint_folder(self, iteration: int) -> str:
        assert self.checkpoint_dir is not None  # as _commit_checkpoint
        return os.path.join(self.checkpoint_dir, f"iteration-{iteration:06d}")

    def _save_model_json(self, path: str, user_map, item_map) -> None:
        _blocks.save_json({"format": "recfuse-distributed-als", "version": 1, "model": "ALS",
                           "params": self._als_params(), "n_users": self.n_users,
                           "n_items": self.n_items,
                           "user_id_kinds": list(user_map.kinds),
                           "item_id_kinds": list(item_map.kinds)},
                          os.path.join(path, "model.json"))

    def _local_model(self, user_blocks: list, item_blocks: list, seen_blocks: list | None
                     ) -> ALS:
        """A ``recfuse.ALS`` from gathered factor blocks (and user rating blocks)."""
        from ..models.als import ALS

        n_users, n_items = self._fitted_sizes()
        arrays = {"user_factors": _blocks.assemble(n_users, *user_blocks),
                  "item_factors": _blocks.assemble(n_items, *item_blocks)}
        if seen_blocks is not None:
            n_blocks = len(seen_blocks)
            parts = []
            for block in seen_blocks:
                coo = block.seen(n_items).tocoo()
                parts.append((coo.row.astype(np.int64) * n_blocks + block.block, coo.col,
                              coo.data))
            rows, cols, data = (np.concatenate([p[i] for p in parts]) for i in range(3))
            seen = sp.csr_matrix((data, (rows, cols)), shape=(n_users, n_items))
            seen.sort_indices()
            arrays.update(seen_indptr=seen.indptr.astype(np.int64),
                          seen_indices=seen.indices.astype(np.int32), seen_data=seen.data,
                          seen_shape=np.array(seen.shape, dtype=np.int64))
        return ALS._from_saved(self._als_params(), arrays)

    def _require_fitted(self) -> None:
        if self.n_users is None:
            raise RuntimeError("the model is not fitted: call fit() first")

    def _fitted_sizes(self) -> tuple[int, int]:
        """(n_users, n_items), for code that runs after a fit's setup set them (the fit's own
        steps, or a method that called _require_fitted)."""
        assert self.n_users is not None and self.n_items is not None
        return self.n_users, self.n_items


def folder_path(path, name: str = "path") -> str:
    """``path`` (a str or an ``os.PathLike`` of one) as a str; anything else (None, bytes)
    is a TypeError naming ``name``, not ``os.fspath``'s or ``os.path.join``'s."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if isinstance(path, str):
            if not path:  # os.makedirs("") says only "No such file or directory: ''"
                raise ValueError(f"{name} must name a folder, got an empty path")
            return path
    raise TypeError(f"{name} must be a folder path (str or os.PathLike), got "
                    f"{type(path).__name__}")


def check_columns(columns, user_col, item_col, weight_col, frame_name: str) -> None:
    """Clear errors for column arguments that name no column."""
    columns = list(columns)
    for name, value in (("user_col", user_col), ("item_col", item_col)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a column name (str), got {type(value).__name__}")
        if value not in columns:
            raise ValueError(f"{name} {value!r} is not a column of {frame_name}; "
                             f"its columns are {columns}")
    if user_col == item_col:
        raise ValueError(f"user_col and item_col must differ, both are {user_col!r}")
    if weight_col is not None:
        if not isinstance(weight_col, str):
            raise TypeError(f"weight_col must be a column name or None, got "
                            f"{type(weight_col).__name__}")
        if weight_col not in columns:
            raise ValueError(f"weight_col {weight_col!r} is not a column of {frame_name}; "
                             f"its columns are {columns}")
        if weight_col in (user_col, item_col):
            raise ValueError(f"weight_col {weight_col!r} is also the user or item column")

"""Model files: one .npz archive with a JSON header, read without pickle, written atomically.

Layout: ``__recfuse__`` holds the UTF-8 JSON header ``{"format": "recfuse", "version": N,
"model": class name, "params": {...}}`` as uint8; every other member is a plain array.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 1
HEADER_KEY = "__recfuse__"


def save_model(path, model_name: str, params: dict, arrays: dict[str, np.ndarray]) -> None:
    path = os.fspath(path)
    header = {"format": "recfuse", "version": FORMAT_VERSION, "model": model_name, "params": params}
    encoded = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=".recfuse-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **{HEADER_KEY: encoded}, **arrays)
        os.replace(temporary, path)  # readers see the old file or the new one, never half
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_model(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (header, arrays); ValueError for a truncated, foreign or newer file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if HEADER_KEY not in archive.files:
                raise ValueError(f"{path!r} is not a recfuse model file (no {HEADER_KEY} header)")
            header = json.loads(archive[HEADER_KEY].tobytes().decode("utf-8"))
            arrays = {name: archive[name] for name in archive.files if name != HEADER_KEY}
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path!r} is not a readable recfuse model file "
                         f"(truncated or foreign): {error}") from error
    if not isinstance(header, dict) or header.get("format") != "recfuse":
        raise ValueError(f"{path!r} is not a recfuse model file (bad header)")
    version = header.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {version!r}; this recfuse reads up to "
                         f"{FORMAT_VERSION}: upgrade recfuse")
    return header, arrays


def load(path, **overrides):
    """Load any recfuse model saved with ``model.save(path)``.

    ``overrides`` replace saved constructor parameters (e.g. ``backend="cpu"``).
    """
    from .models.als import ALS
    from .models.bpr import BPR
    from .models.explicit_als import ExplicitALS
    from .models.sgd import SVD, SVDpp

    registry = {"ALS": ALS, "SVD": SVD, "SVDpp": SVDpp, "BPR": BPR,
                "ExplicitALS": ExplicitALS}
    header, arrays = read_model(path)
    model_name = header.get("model")
    if model_name not in registry:
        raise ValueError(f"{os.fspath(path)!r} holds an unknown model type {model_name!r}")
    params = dict(header.get("params", {}))
    params.update(overrides)
    try:
        return registry[model_name]._from_saved(params, arrays)
    except KeyError as error:
        raise ValueError(f"{os.fspath(path)!r} is missing the array {error}") from error

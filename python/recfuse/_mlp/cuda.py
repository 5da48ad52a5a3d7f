"""The native CUDA MLP backend: recfuse._cuda.MlpModel (kernels in cuda/mlp.cu).

The weights are packed onto the current device once, in ``prepare``. Calls take host NumPy
arrays (the user blocks, ids and candidate features are uploaded per call, in bounded
chunks) and return new NumPy arrays; ``rank`` keeps each user's k best on the device (on
the host when the call has per-candidate features, whose repeats of an id may score
differently). A raw item table is uploaded whole for each call: precompute it with ``item_part``
(``MLPScorer.prepare_items``), whose result also keeps its copy on the device.

Kernels: ``"fused"`` runs the whole MLP per tile of 32 candidates in one kernel (x columns
and hidden layers up to ``recfuse._cuda.MLP_FUSED_MAX_WIDTH`` = 256 wide; bfloat16 middle
layers on tensor cores), ``"tiled"`` one GEMM kernel per layer (any width), ``"auto"`` the
fused one wherever the call fits it.

Under bfloat16, ``rank`` follows ``reference.mlp_rank_rescored`` like every other backend:
the bfloat16 model scores every candidate on the device, then a float32 twin of the same
weights (made with the model; its own device copy of each prepared item part) rescores the
users' bands (``common.rank_candidates``: one device call per round for all users whose band
is still open). That loop is on the host, so bfloat16 ranking costs more calls than float32
ranking, which keeps its top-k on the device.

tests/test_gpu_mlp.py checks it on a device (first run on an NVIDIA H200, 2026-11-28) and
skips elsewhere with the reason. ``recfuse._cuda`` is imported only when used, so importing
this module never fails on a machine without a driver or a CUDA build (availability:
recfuse._als.cuda).
"""

from __future__ import annotations

import weakref

import numpy as np

from .._als.cuda import availability  # noqa: F401 - the same probe as the ALS family
from . import Candidates, common

NAME = "cuda"
KERNELS = ("auto", "fused", "tiled")
PRECISIONS = ("float32", "bfloat16")  # backend="auto" passes over this one for the others


def _module():
    from .. import _cuda

    return _cuda


class DeviceItemPart(np.ndarray):
    """An item part of the cuda backend: the host array of the backend contract (read-only)
    and, in ``device_part``, its copy on the device, which calls use instead of uploading
    (``float32_device_part``: the float32 twin's copy, under bfloat16)."""

    device_part: object = None
    float32_device_part: object = None


# bfloat16 model -> its float32 twin (a native model has no room for attributes; the twin
# lives as long as the model does).
_FLOAT32_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def prepare(layers, precision: str, kernel: str = "auto"):
    if kernel not in KERNELS:
        raise ValueError(f"the cuda backend's kernel must be one of {KERNELS}, got "
                         f"kernel={kernel!r}")
    if precision == "int8":
        raise ValueError("precision='int8' has no CUDA kernel yet: use backend='cpu' (or "
                         "'cupy', int8 emulated in float32 on the device), or precision "
                         "'float32' / 'bfloat16' on the cuda backend")
    weights = [W for W, _, _ in layers]
    biases = [b for _, b, _ in layers]
    activations = [a for _, _, a in layers]
    model = _module().MlpModel(weights, biases, activations, precision, kernel)
    if precision == "bfloat16":
        _FLOAT32_TWINS[model] = _module().MlpModel(weights, biases, activations, "float32",
                                                   kernel)
    return model


def kernel_name(model) -> str:
    return model.kernel


def part_width(model) -> int:
    return model.part_width


def score(model, inputs, num_threads: int = 0):
    return model.score(inputs)


def item_part(model, item_blocks, column: int, num_threads: int = 0):
    host, device = model.item_part(item_blocks, column)
    part = host.view(DeviceItemPart)
    part.device_part = device
    twin = _FLOAT32_TWINS.get(model)
    if twin is not None:
        columns = sum(block.shape[1] for block in item_blocks)
        part.float32_device_part = twin.upload_item_part(host, columns)
    part.flags.writeable = False  # the device copies would not follow a change
    return part


def _device_part(model, call: Candidates, attribute: str = "device_part"):
    """The device copy of the call's item part for ``model`` (``attribute`` of a prepared
    part; uploaded now when it has none), or None."""
    if call.item_part is None:
        return None
    device = getattr(call.item_part, attribute, None)
    if device is None:
        device = model.upload_item_part(np.ascontiguousarray(call.item_part, np.float32),
                                        call.item_part_columns)
    return device


def _arguments(model, call: Candidates, part_attribute: str = "device_part"):
    return (call.indptr, call.ids, call.items, call.user_blocks, call.item_blocks,
            call.candidate_block, _device_part(model, call, part_attribute))


def score_candidates(model, call: Candidates, num_threads: int = 0):
    return model.score_candidates(*_arguments(model, call))


def rank(model, call: Candidates, k: int, num_threads: int = 0):
    twin = _FLOAT32_TWINS.get(model)
    if twin is None and call.candidate_block is None:
        # float32: the top-k runs on the device, where a repeated id sorts next to itself
        # (the same inputs score the same), which is how its kernel drops repeats.
        return model.rank(*_arguments(model, call), k=k)
    scores = model.score_candidates(*_arguments(model, call))
    if twin is None:  # repeats with their own candidate features: each id at its best score
        return common.rank_scores(call.indptr, call.ids, scores, k)

    def rescore(band: Candidates):
        if band.item_part is None and band.item_blocks:  # upload the band's rows, not the table
            rows = band.ids
            band = band._replace(ids=np.arange(rows.size, dtype=np.int64), items=rows.size,
                                 item_blocks=[np.ascontiguousarray(b[rows])
                                              for b in band.item_blocks])
        return twin.score_candidates(*_arguments(twin, band, "float32_device_part"))

    return common.rank_candidates(call, scores, k, "bfloat16", rescore)

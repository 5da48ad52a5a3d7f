"""Ranking with a fused MLP scorer: gather [user | item | features], run the dense layers
and keep each user's k best candidates in one native call, with no concatenated input
matrix in memory.

The model is a list of dense layers ``(W, b, activation)``: W has shape (out, in) like
``torch.nn.Linear.weight``, b shape (out,) or None, activation one of ``relu``, ``gelu``
(the exact erf form, torch.nn.GELU's default), ``sigmoid``, ``tanh``, ``identity``; the last
layer has one output, the score. For candidate c of user u with item id i the input row is::

    [user_vectors[u] | user_features[u] | item_table[i] | item_features[i] | candidate_features[c]]

(absent blocks are left out). ``recfuse.reference.mlp_*`` states the contract in NumPy.

Candidates come in one of these forms (``candidate_ids``):

- a 1-d array: one user's candidates (``user_vectors`` 1-d, or one row); scores are 1-d
  when ``user_vectors`` is 1-d, (1, c) when it is one row;
- a 2-d array (users x c): every user has c candidates; scores are (users, c);
- a tuple ``(indptr, ids)``, CSR-like: user u owns ``ids[indptr[u]:indptr[u + 1]]`` (users
  may have none); scores are flat, aligned with ``ids``;
- a list of 1-d arrays, one per user: like the tuple form.

``candidate_features`` has one row per candidate in that (flattened) order. User vectors and
features must be finite (checked); ``item_table`` and ``item_features`` are not checked on
each call (that would read the whole table): a candidate whose item row holds NaN or inf
gets whatever IEEE arithmetic makes of it: mostly NaN, which ``rank`` never returns, but
saturating activations can turn an inf into a finite score, and backends and precisions
may differ there. ``prepare_items`` checks them once; keep them finite.

``rank`` keeps, per user, the k best candidates: score descending, ties by the smaller id,
each id once (a repeated candidate counts once, at its best score: repeats score
differently when their candidate features differ), NaN scores dropped; rows are padded with
id -1 and score -inf. It equals ``score_candidates`` followed by a full sort.

precision="bfloat16" (chosen explicitly, never silently) runs the layers between the first
and the last in bfloat16 (weights and inputs rounded, float32 accumulation); the first layer
(raw features, and the per-user and precomputed per-item parts) and the last (the score)
stay float32, which keeps most of the accuracy for a small share of the work.
On the cpu backend it needs AVX512-BF16 (the "avx512bf16" kernel) or AMX (``kernel="amx"``,
never chosen by itself: it has not yet run on an AMX CPU); the numba and numpy backends
emulate it (slowly). Expect scores within about 1e-3 of float32's, relative to their scale.

precision="int8" (also explicit) runs the same middle layers on int8 values: each weight
row quantized once (symmetric, scale max |w| / 127), each candidate's input row of such a
layer per call the same way, the products summed exactly, the sum scaled back to float32
before the bias and activation (``reference.quantize_int8_rows``). On the cpu backend its
kernel multiplies the int8 values as 16-bit pairs (AVX2's vpmaddwd, 16 multiply-adds an
instruction against the float32 FMA's 8; scalar code on CPUs without AVX2). Whether that is
faster depends on the CPU: on a Zen 3, which issues one such instruction a cycle and two
FMAs, int8 runs at float32's speed (bench/README.md, "int8 MLP layers"). The numba, numpy
and cupy backends emulate it in float32; the cuda backend has no int8 kernel yet (an error
says so; backend="auto" passes over it). A middle layer takes at most 133,144 inputs (its
integer sums fit 32 bits). A candidate whose middle-layer input holds inf or NaN (a
first-layer overflow, or a non-finite item row) scores NaN, which ``rank`` drops, where
float32 may give it a number. Expect scores within about 1e-2 of float32's, relative to
their scale.

``rank`` under bfloat16 or int8 returns float32's ranking on every backend: it scores every
candidate in that precision, then rescores a band of each user's best candidates exactly in
float32 and ranks the band by those scores, which it returns. The band holds max(2k, 16)
candidates and doubles until the float32 k-th score beats the band's lowest rough score
by more than 4 times the largest rough-score error seen in the band (or until it holds every
candidate); so a candidate is missed only if its error is over 4 times any seen
among the band's. On the cpu backend the bfloat16 first pass also runs the first layer's
per-candidate columns in bfloat16 (the user and prepared item parts stay float32).
``reference.mlp_rank_rescored`` states the rule. The band's float32 scores equal float32
``rank``'s bit for bit on the cpu backend; the numpy and numba backends rescore the band as
a batch of its own shape, and their matrix products may round such a batch differently (a
float32 ulp or so, which can only reorder exact near-ties).
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple, Sequence, TypeAlias, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as check
from ._backend import resolve_backend
from ._mlp import Candidates
from ._typing import Integer, PathLike

# One dense layer as MLPScorer takes it: (W (out, in), b (out,) or None, activation).
# A [W, b, activation] list is taken too.
Layer: TypeAlias = Union[tuple[ArrayLike, Union[ArrayLike, None], str], list[Any]]
# candidate_ids: one user's ids (1-d), users x c ids (2-d), (indptr, ids) or one array
# of ids per user.
CandidateIds: TypeAlias = Union[ArrayLike, tuple[ArrayLike, ArrayLike], list[ArrayLike]]

ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "identity")
PRECISIONS = ("float32", "bfloat16", "int8")


class PreparedItems(NamedTuple):
    """An item table whose first-layer contribution ``W1i·item + W1if·item_features`` was
    computed once (``MLPScorer.prepare_items``); pass it as ``item_table`` (and no
    ``item_features``). It belongs to the scorer that made it."""

    part: np.ndarray      # float32 (items, part width)
    items: int
    item_column: int      # the input column where the item vector starts
    columns: int          # input columns covered (item vector + item features)
    owner: object         # the packed model of the scorer that made it

    def __repr__(self) -> str:  # not the arrays and the packed model, as a tuple's would
        return (f"PreparedItems({self.items} items, item_column={self.item_column}, "
                f"columns={self.columns})")

    def __reduce__(self):
        raise TypeError("PreparedItems belong to the scorer object that made them and are not "
                        "pickled or copied: pass the scorer, and call its prepare_items where "
                        "it is used")


class MLPScorer:
    """A dense-layer scorer packed once for its backend.

    Parameters
    ----------
    layers : sequence of (W, b, activation)
        W (out, in), b (out,) or None, activation name; consecutive layers must chain
        (in of one = out of the previous) and the last must have out = 1.
    precision : "float32", "bfloat16" or "int8" (see the module docstring)
    backend : "auto" or a backend name (see ``recfuse.backends()``)
    kernel : "auto", or on the cpu backend "float32", "avx512bf16", "amx" or "int8", on the cuda
        backend "fused" or "tiled" (see recfuse._mlp.cuda)

    ``layers`` holds the checked layers (float32 copies of the arrays given) as a tuple of
    read-only arrays: the scorer scores with exactly these weights, so they cannot be changed
    in place; build a new scorer from changed copies instead.

    >>> import numpy as np
    >>> W1 = np.array([[1.0, -1.0], [0.5, 0.5]], np.float32)
    >>> W2 = np.array([[1.0, 2.0]], np.float32)
    >>> scorer = MLPScorer([(W1, None, "relu"), (W2, np.zeros(1, np.float32), "identity")])
    >>> scorer.score(np.array([[2.0, 1.0]], np.float32))
    array([4.], dtype=float32)
    """

    # (W float32 (out, in), b float32 (out,) or None, activation), read-only
    layers: tuple[tuple[np.ndarray, np.ndarray | None, str], ...]

    def __init__(self, layers: Sequence[Layer], *, precision: str = "float32",
                 backend: str = "auto", kernel: str = "auto") -> None:
        self.precision = check.check_choice(precision, "precision", PRECISIONS)
        checked = _check_layers(layers)
        if self.precision == "int8":
            from .reference import INT8_MAX_INPUTS

            for position, (W, _, _) in enumerate(checked[1:-1], start=1):
                if W.shape[1] > INT8_MAX_INPUTS:
                    raise ValueError(
                        f"precision='int8' takes at most {INT8_MAX_INPUTS} inputs per middle "
                        f"layer (its integer sums must fit 32 bits); layer {position} has "
                        f"{W.shape[1]}")
        if not isinstance(kernel, str):
            raise TypeError(f"kernel must be a string, got {type(kernel).__name__}")
        self._module = resolve_backend(backend, "mlp", precision=self.precision)
        self._model = self._module.prepare(checked, self.precision, kernel)
        self._asked = (backend, kernel)  # as given: what a copy resolves again
        # Read-only views of the weights packed above: writing to them in place raises
        # instead of leaving the scores (and the cpu backend's packed copy) behind.
        self.layers = tuple((check.read_only_view(W),
                             None if b is None else check.read_only_view(b), activation)
                            for W, b, activation in checked)
        self.source: str | None = None  # the file it was read from (load_scorer)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_torch(cls, module: Any, **options: Any) -> "MLPScorer":
        """A scorer from a ``torch.nn.Sequential`` of Linear layers, each optionally followed
        by ReLU, GELU (approximate="none"), Sigmoid or Tanh (Identity and Dropout are
        skipped wherever they stand: scoring is inference). Options go to ``MLPScorer``."""
        return cls(layers_from_torch(module), **options)

    @classmethod
    def from_onnx(cls, path: PathLike, **options: Any) -> "MLPScorer":
        """A scorer from an ONNX file holding a chain of Gemm or MatMul nodes, each
        optionally followed by Adds of constants (they sum into the layer's bias) and by
        Relu, Gelu (approximate="none"), Sigmoid or Tanh (Identity nodes are skipped
        wherever they stand); operators of the standard domain only, and
        com.microsoft's Gelu. Weights are dense float initializers or Constants (external
        data is read from beside the file); a fixed input width the graph declares must be
        the first layer's. A file onnx cannot read, and any other graph, is a ValueError
        that names the problem. Needs the ``onnx`` package. Options go to ``MLPScorer``."""
        return cls(layers_from_onnx(path), **options)

    # ------------------------------------------------------------------ files

    def save(self, path: PathLike) -> None:
        """Write the layers and the precision to ``path`` (a versioned .npz, no pickle,
        written atomically). ``recfuse.load(path)`` gives the scorer back (``backend=`` and
        ``kernel=`` may be given there); ``recfuse serve MODEL --ranker path`` serves it."""
        from .persistence import save_model

        arrays = {}
        for position, (W, b, _) in enumerate(self.layers):
            arrays[f"weight_{position}"] = W
            if b is not None:
                arrays[f"bias_{position}"] = b
        params = {"precision": self.precision,
                  "activations": [activation for _, _, activation in self.layers],
                  "biases": [b is not None for _, b, _ in self.layers]}
        save_model(path, "MLPScorer", params, arrays)

    @classmethod
    def _from_saved(cls, params: dict, arrays: dict) -> "MLPScorer":
        params = dict(params)
        activations, biases = params.pop("activations", None), params.pop("biases", None)
        if not isinstance(activations, list) or not isinstance(biases, list) or \
                len(activations) != len(biases):
            raise ValueError("the saved scorer's header must list one activation and one bias "
                             "flag per layer")
        if not all(isinstance(flag, bool) for flag in biases):  # "no" is not read as true
            raise ValueError(f"the saved scorer's bias flags must be true or false, got "
                             f"{biases!r:.80}")
        used = {f"weight_{position}" for position in range(len(biases))} | {
            f"bias_{position}" for position, has_bias in enumerate(biases) if has_bias}
        unused = sorted(set(arrays) - used)
        if unused:  # save writes none: a layer flagged unbiased beside its bias, say
            raise ValueError(f"the saved scorer holds arrays its header's layers do not use: "
                             f"{unused[:5]}")
        layers = [(arrays[f"weight_{position}"], arrays[f"bias_{position}"] if has_bias else None,
                   activation)
                  for position, (activation, has_bias) in enumerate(zip(activations, biases))]
        return cls(layers, **params)

    @property
    def input_width(self) -> int:
        """The width of an input row: the first layer's inputs."""
        return self.layers[0][0].shape[1]

    @property
    def backend(self) -> str:
        """The backend that runs this scorer ("cpu", "cuda", ...)."""
        return self._module.NAME

    @property
    def kernel(self) -> str:
        """The kernel its calls use (e.g. "float32", "avx512bf16")."""
        return self._module.kernel_name(self._model)

    def __reduce__(self):
        """Pickled (and copied, and sent to process pools) as its layers and settings: the
        copy packs them for its own backend (``backend="auto"`` resolved where it is loaded),
        as a new scorer would, and so scores alike."""
        backend, kernel = self._asked
        return (_scorer_from, (type(self), self.layers, self.precision, backend, kernel,
                               self.source))

    def __repr__(self) -> str:
        widths = " -> ".join([str(self.input_width)] + [str(W.shape[0]) for W, _, _ in self.layers])
        return (f"MLPScorer({widths}, precision={self.precision!r}, backend={self.backend!r}, "
                f"kernel={self.kernel!r})")

    # ------------------------------------------------------------------ scoring

    @overload
    def score(self, inputs: Sequence[float], *, num_threads: Integer = 0) -> np.float32: ...

    @overload
    def score(self, inputs: Sequence[Sequence[float]], *, num_threads: Integer = 0
              ) -> np.ndarray: ...

    @overload
    def score(self, inputs: ArrayLike, *, num_threads: Integer = 0) -> Any: ...

    def score(self, inputs: ArrayLike, *, num_threads: Integer = 0) -> Any:
        """The score of each row of ``inputs`` (n, input_width) (or one row (input_width,))."""
        inputs = check.array_of(inputs, "inputs", "a 2-d array of real numbers")
        single = inputs.ndim == 1
        X = _float_matrix(inputs, "inputs", columns=self.input_width, allow_1d=True)
        num_threads = check.check_threads(num_threads)
        scores = self._module.score(self._model, X, num_threads)
        return scores[0] if single else scores

    def prepare_items(self, item_table: ArrayLike, item_features: ArrayLike | None = None, *,
                      item_column: Integer, num_threads: Integer = 0) -> PreparedItems:
        """Precompute the first layer's item contribution for every item, once (at model
        load): later calls that pass the result as ``item_table`` multiply only the
        per-candidate columns. ``item_column`` is where the item vector starts in the input
        row: the width of the user vectors plus that of the user features."""
        table = _float_matrix(item_table, "item_table")
        blocks = [table]
        if item_features is not None:
            blocks.append(_float_matrix(item_features, "item_features", rows=table.shape[0],
                                        rows_of="item_table"))
        columns = sum(block.shape[1] for block in blocks)
        if columns > self.input_width:  # else the bound below reads "item_column must be <= -2"
            named = "item_table and item_features are" if len(blocks) > 1 else "item_table is"
            raise ValueError(f"{named} {columns} columns wide, but the model's first layer takes "
                             f"{self.input_width} inputs in all")
        item_column = check.check_int(item_column, "item_column", minimum=0,
                                      maximum=self.input_width - columns)
        num_threads = check.check_threads(num_threads)
        part = self._module.item_part(self._model, blocks, item_column, num_threads)
        return PreparedItems(part, table.shape[0], item_column, columns, self._model)

    def score_candidates(self, user_vectors: ArrayLike, candidate_ids: CandidateIds,
                         item_table: ArrayLike | PreparedItems,
                         user_features: ArrayLike | None = None,
                         item_features: ArrayLike | None = None,
                         candidate_features: ArrayLike | None = None, *,
                         num_threads: Integer = 0) -> np.ndarray:
        """Scores of every user's candidates, gathered by id inside the kernel: 1-d for one
        user, (users, c) for a 2-d ``candidate_ids``, flat (aligned with the ids) for the
        ragged forms. See the module documentation for the input row and the forms."""
        call, form, shape = self._candidates(user_vectors, candidate_ids, item_table,
                                             user_features, item_features, candidate_features)
        num_threads = check.check_threads(num_threads)
        scores = self._module.score_candidates(self._model, call, num_threads)
        if form == "dense":
            return scores.reshape(shape)
        return scores

    def rank(self, user_vectors: ArrayLike, candidate_ids: CandidateIds,
             item_table: ArrayLike | PreparedItems, user_features: ArrayLike | None = None,
             item_features: ArrayLike | None = None,
             candidate_features: ArrayLike | None = None, *, k: Integer,
             num_threads: Integer = 0) -> tuple[np.ndarray, np.ndarray]:
        """Each user's k best candidates, ``(ids int64, scores float32)`` of shape (users, k)
        ((k,) for one user given 1-d), sorted by score, ties by smaller id, padded with -1 /
        -inf. Under bfloat16 the lists and scores are float32's, from a rescored band (see
        the module documentation)."""
        k = check.check_k(k)
        call, form, _ = self._candidates(user_vectors, candidate_ids, item_table,
                                         user_features, item_features, candidate_features)
        num_threads = check.check_threads(num_threads)
        check.check_result_size(call.indptr.size - 1, k)
        ids, scores = self._module.rank(self._model, call, k, num_threads)
        if form == "single":
            return ids[0], scores[0]
        return ids, scores

    # ------------------------------------------------------------------ input checks

    def _candidates(self, user_vectors, candidate_ids, item_table, user_features,
                    item_features, candidate_features):
        """(Candidates, form, dense shape) after checking every argument."""
        user_vectors = check.array_of(user_vectors, "user_vectors", "a 2-d array of real numbers")
        single_user = user_vectors.ndim == 1
        U = _float_matrix(user_vectors, "user_vectors", allow_1d=True)
        users = U.shape[0]
        indptr, ids, form, shape = _candidate_lists(candidate_ids, users, single_user)
        total = int(indptr[-1])
        user_blocks = [U]
        if user_features is not None:
            user_blocks.append(_float_matrix(user_features, "user_features", rows=users,
                                             rows_of="user_vectors", allow_1d=single_user))
        user_width = sum(block.shape[1] for block in user_blocks)
        item_blocks, item_part, part_columns = [], None, 0
        if isinstance(item_table, PreparedItems):
            if item_table.owner is not self._model:
                raise ValueError("item_table was prepared by another MLPScorer; prepare it "
                                 "with this one (prepare_items)")
            if item_features is not None:
                raise ValueError("item_features are already part of the prepared item_table; "
                                 "pass item_features=None")
            if item_table.item_column != user_width:
                raise ValueError(
                    f"item_table was prepared for items starting at input column "
                    f"{item_table.item_column}, but the user blocks here are {user_width} wide")
            items, item_part, part_columns = item_table.items, item_table.part, item_table.columns
            item_width = part_columns
        else:  # not checked for NaN per call: the whole table would be read each time
            table = _float_matrix(item_table, "item_table", finite=False)
            items = table.shape[0]
            item_blocks.append(table)
            if item_features is not None:
                item_blocks.append(_float_matrix(item_features, "item_features", rows=items,
                                                 rows_of="item_table", finite=False))
            item_width = sum(block.shape[1] for block in item_blocks)
        candidate_block = None
        candidate_width = 0
        if candidate_features is not None:
            features = check.array_of(candidate_features, "candidate_features",
                                      "an array of real numbers")
            if form == "dense" and features.ndim == 3:
                if features.shape[:2] != shape:
                    raise ValueError(f"candidate_features as a 3-d array must have shape "
                                     f"{shape + ('f',)} (users x candidates x features), "
                                     f"got {features.shape}")
                features = features.reshape(total, features.shape[2])
            candidate_block = _float_matrix(features, "candidate_features", rows=total,
                                            rows_of="candidates")
            candidate_width = candidate_block.shape[1]
        width = user_width + item_width + candidate_width
        if width != self.input_width:
            raise ValueError(
                f"the inputs are {width} columns wide (user blocks {user_width} + item blocks "
                f"{item_width} + candidate_features {candidate_width}); the model's first "
                f"layer takes {self.input_width}")
        if ids.size:
            low, high = check.id_bounds(ids)
            if low < 0 or high >= items:
                raise ValueError(f"candidate_ids must be in [0, {items}) (rows of item_table), "
                                 f"got {low if low < 0 else high}")
        call = Candidates(indptr, ids, items, user_blocks, item_blocks, candidate_block,
                          item_part, part_columns)
        return call, form, shape


# ---------------------------------------------------------------------- helpers


def _float_matrix(value, name: str, *, columns: int | None = None, rows: int | None = None,
                  rows_of: str = "", allow_1d: bool = False, finite: bool = True) -> np.ndarray:
    """A float32 C-contiguous 2-d array (a copy only when the input is not one), checked to
    be finite unless ``finite=False`` (tables read only at the candidates' rows)."""
    array = check.array_of(value, name, "a 2-d array of real numbers")
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 1 and allow_1d:
        array = array[None, :]
    if array.ndim != 2:
        expected = "1-d or 2-d" if allow_1d else "2-d"
        raise ValueError(f"{name} must be {expected}, got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows (one per row of {rows_of}), got shape "
                         f"{array.shape}")
    wide = array if array.dtype != np.float32 else None
    if wide is not None and finite:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: said below
            array = np.ascontiguousarray(array, dtype=np.float32)
    else:  # unchecked tables keep NumPy's overflow warning
        array = np.ascontiguousarray(array, dtype=np.float32)
    if finite and not check.all_finite(array):
        if wide is not None and np.isfinite(wide).all():
            raise ValueError(f"{name} must be finite in float32, got values beyond its range "
                             f"(±{np.finfo(np.float32).max:.3g}), which become inf")
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return array


def _candidate_lists(candidate_ids, users: int, single_user: bool):
    """(indptr int64, ids int64, form, dense shape) of the candidate forms."""
    if isinstance(candidate_ids, tuple):
        if len(candidate_ids) != 2:
            raise ValueError(f"candidate_ids as a tuple must be (indptr, ids), got "
                             f"{len(candidate_ids)} items")
        indptr = check.int64_array(candidate_ids[0], "candidate_ids indptr")
        ids = check.int64_array(candidate_ids[1], "candidate_ids ids")
        if check.check_csr_arrays(indptr, ids, users, None, "candidate_ids") != ids.size:
            raise ValueError(f"candidate_ids has a malformed indptr: it must end at len(ids) = "
                             f"{ids.size}, got {indptr[-1]}")
        return indptr, ids, "ragged", None
    if isinstance(candidate_ids, list) and (
            (candidate_ids and all(np.ndim(part) == 1 for part in candidate_ids))
            or (not candidate_ids and users != 1)):
        if len(candidate_ids) != users:
            raise ValueError(f"candidate_ids as a list must have one entry per user ({users}), "
                             f"got {len(candidate_ids)}")
        parts = [check.int64_array(part, f"candidate_ids[{u}]").reshape(-1) for u, part in
                 enumerate(candidate_ids)]
        indptr = np.zeros(users + 1, np.int64)
        indptr[1:] = np.cumsum([part.size for part in parts])
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return indptr, np.ascontiguousarray(ids, np.int64), "ragged", None
    ids = check.int64_array(candidate_ids, "candidate_ids")
    if ids.ndim == 1:
        if users != 1:
            raise ValueError(f"a 1-d candidate_ids is one user's list, but user_vectors has "
                             f"{users} rows; pass (indptr, ids), a list per user or a 2-d array")
        return np.array([0, ids.size], np.int64), ids, "single" if single_user else "dense", (1, ids.size)
    if ids.ndim == 2:
        if ids.shape[0] != users:
            raise ValueError(f"a 2-d candidate_ids must have one row per user ({users}), got "
                             f"shape {ids.shape}")
        return _dense_indptr(users, ids.shape[1]), np.ascontiguousarray(ids.reshape(-1)), \
            "dense", ids.shape
    raise ValueError(f"candidate_ids must be 1-d, 2-d, (indptr, ids) or a list per user, got "
                     f"shape {ids.shape}")


def _dense_indptr(users: int, per_user: int) -> np.ndarray:
    """The (read-only) indptr of ``users`` lists of ``per_user`` candidates each: a serving
    loop asks for the same shape on every call (building it cost ~1 µs of a 1 x 1,000 rank),
    so small ones are cached; large ones, whose building costs little beside their rank,
    are not (the cache would keep up to 64 of them for the process's life)."""
    if users <= _CACHED_INDPTR_USERS:
        return _small_dense_indptr(users, per_user)
    return np.arange(users + 1, dtype=np.int64) * per_user


_CACHED_INDPTR_USERS = 4096  # 64 cached indptrs of at most 32 KB each


@functools.lru_cache(maxsize=64)
def _small_dense_indptr(users: int, per_user: int) -> np.ndarray:
    indptr = np.arange(users + 1, dtype=np.int64) * per_user
    indptr.flags.writeable = False
    return indptr


def _scorer_from(cls, layers, precision: str, backend: str, kernel: str,
                 source: str | None) -> MLPScorer:
    """The MLPScorer (of class ``cls``: a subclass stays one) an ``MLPScorer.__reduce__``
    describes."""
    scorer = cls(list(layers), precision=precision, backend=backend, kernel=kernel)
    scorer.source = source
    return scorer


def _check_layers(layers) -> list[tuple[np.ndarray, np.ndarray | None, str]]:
    """The layers as (W float32 (out, in), b float32 (out,) or None, activation): copies,
    never the caller's arrays (the numpy and numba backends keep the arrays they are given,
    so weights changed in place after construction would change their scores, and what
    ``save`` writes, but not the cpu backend's packed copy)."""
    expected = "layers must be a non-empty sequence of (weight, bias, activation)"
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{expected}, got {type(layers).__name__} {layers!r:.60}")
    if not layers:
        raise TypeError(f"{expected}, got an empty {type(layers).__name__}")
    checked: list[tuple[np.ndarray, np.ndarray | None, str]] = []
    for position, layer in enumerate(layers):
        name = f"layers[{position}]"
        if not isinstance(layer, (tuple, list)) or len(layer) != 3:
            raise TypeError(f"{name} must be a (weight, bias, activation) triple, got {layer!r:.80}")
        weight, bias, activation = layer
        W = check.array_of(weight, f"{name} weight", "a 2-d real array (out, in)")
        if W.dtype.kind not in "fiu":
            raise TypeError(f"{name} weight must be a 2-d real array (out, in), got "
                            f"{_kind_of(weight, W)}")
        if W.ndim != 2 or 0 in W.shape:
            raise ValueError(f"{name} weight must be a non-empty 2-d real array (out, in), got "
                             f"dtype {W.dtype} shape {W.shape}")
        with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
            W = np.array(W, dtype=np.float32, order="C")  # a copy (see above)
        if not np.isfinite(W).all():
            raise ValueError(f"{name} weight must be finite, got {int((~np.isfinite(W)).sum())} "
                             f"NaN/inf (after conversion to float32)")
        b = None
        if bias is not None:
            b = check.array_of(bias, f"{name} bias", "a 1-d real array")
            if b.dtype.kind not in "fiu":
                raise TypeError(f"{name} bias must be a real array of shape ({W.shape[0]},) or "
                                f"None, got {_kind_of(bias, b)}")
            if b.shape != (W.shape[0],):
                raise ValueError(f"{name} bias must be a real array of shape ({W.shape[0]},), "
                                 f"got dtype {b.dtype} shape {b.shape}")
            with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
                b = np.array(b, dtype=np.float32, order="C")  # a copy
            if not np.isfinite(b).all():
                raise ValueError(f"{name} bias must be finite, got NaN/inf")
        check.check_choice(activation, f"{name} activation", ACTIVATIONS)
        if checked and checked[-1][0].shape[0] != W.shape[1]:
            raise ValueError(f"{name} takes {W.shape[1]} inputs but layers[{position - 1}] gives "
                             f"{checked[-1][0].shape[0]}")
        checked.append((W, b, activation))
    if checked[-1][0].shape[0] != 1:
        raise ValueError(f"the last layer must have one output (the score), got "
                         f"{checked[-1][0].shape[0]}")
    return checked


def _kind_of(value, array: np.ndarray) -> str:
    """What came, for a layer part that holds no real numbers: the dtype of an array, or the
    type and value of anything NumPy made a 0-d array of (None, a string)."""
    return f"dtype {array.dtype}" if array.ndim else f"{type(value).__name__} {value!r:.60}"


# ---------------------------------------------------------------------- import


def load_scorer(path, **options) -> MLPScorer:
    """An ``MLPScorer`` from a file: one written by ``MLPScorer.save`` (read by
    ``recfuse.load``) or an ONNX chain (a path ending in ``.onnx``, ``MLPScorer.from_onnx``).
    ``options`` (precision, backend, kernel) go to the scorer."""
    path = check.check_path(path, "path", "a scorer file")  # bytes too, as recfuse.load takes
    if path.lower().endswith(".onnx"):
        scorer = MLPScorer.from_onnx(path, **options)
        scorer.source = path
        return scorer
    from .persistence import load

    scorer = load(path, **options)
    if not isinstance(scorer, MLPScorer):
        raise ValueError(f"{path!r} holds a saved {type(scorer).__name__}, not a ranker (a file "
                         f"written by MLPScorer.save, or an .onnx chain)")
    scorer.source = path
    return scorer


def layers_from_torch(module) -> list:
    """(W, b, activation) layers of a torch.nn.Sequential (see MLPScorer.from_torch)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError("from_torch needs PyTorch: pip install torch") from error
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
    names = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Identity: "identity",
             nn.GELU: "gelu"}
    layers: list = []
    open_layer = False  # the last Linear has no activation yet
    for position, child in enumerate(module):
        kind = type(child)
        where = f"module [{position}] {kind.__name__}"
        if isinstance(child, nn.Linear):
            W = child.weight.detach().cpu().to(torch.float32).numpy()
            b = None if child.bias is None else child.bias.detach().cpu().to(torch.float32).numpy()
            layers.append([W, b, "identity"])
            open_layer = True
        elif isinstance(child, nn.Dropout) or kind is nn.Identity:
            continue  # no-ops at inference: the open Linear still takes its activation
        elif kind in names:
            if kind is nn.GELU and child.approximate != "none":
                raise ValueError(f"{where}: GELU(approximate={child.approximate!r}) is not "
                                 f"supported; only the exact erf form (approximate='none')")
            if not open_layer:
                raise ValueError(f"{where}: an activation must follow a Linear layer")
            layers[-1][2] = names[kind]
            open_layer = False
        else:
            raise ValueError(f"{where} is not supported: use Linear, ReLU, GELU, Sigmoid, Tanh, "
                             f"Identity or Dropout")
    if not layers:
        raise ValueError("the Sequential has no Linear layer")
    return [tuple(layer) for layer in layers]


def layers_from_onnx(path) -> list:
    """(W, b, activation) layers of an ONNX chain (see MLPScorer.from_onnx): the graph's
    nodes must pass one value from the graph's input to its output, each node reading the
    value the one before it wrote (weights and biases are initializers or Constants)."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError("from_onnx needs the onnx package: pip install onnx") from error
    from google.protobuf import json_format, text_format  # protobuf: a dependency of onnx
    from google.protobuf.message import DecodeError

    # onnx.load's errors for a file it cannot read (see _unreadable)
    unreadable = (DecodeError, json_format.ParseError, text_format.ParseError,
                  UnicodeDecodeError, onnx.checker.ValidationError, ValueError)
    # a str (onnx finds external data beside a str path) naming a regular file, as
    # recfuse.load takes it
    path = check.check_model_file(check.check_path(path), "an .onnx file")
    try:
        model = onnx.load(path)
    except unreadable as error:
        raise _unreadable(path, error) from error
    if not model.HasField("graph"):  # an empty file parses as an empty ModelProto
        raise ValueError(f"{path!r} holds no ONNX graph (an empty or foreign file)")
    graph = model.graph
    if graph.sparse_initializer:
        names = ", ".join(repr(t.values.name) for t in graph.sparse_initializer)
        raise ValueError(f"{path!r} keeps weights as sparse initializers ({names}), "
                         f"which from_onnx does not read: store them dense")
    constants = {init.name: _onnx_tensor(init, path) for init in graph.initializer}
    for position, node in enumerate(graph.node):
        if node.op_type != "Constant" or not node.attribute:
            continue
        if len(node.output) != 1:
            raise ValueError(f"node {position} (Constant {node.name!r}) must write one output, "
                             f"got {len(node.output)}")
        value = onnx.helper.get_attribute_value(node.attribute[0])
        if isinstance(value, onnx.SparseTensorProto):
            raise ValueError(f"node {position} (Constant {node.name!r}) holds a sparse tensor, "
                             f"which from_onnx does not read: store the weight dense")
        constants[node.output[0]] = (_onnx_tensor(value, path)
                                     if isinstance(value, onnx.TensorProto) else value)
    # Identity(weight) renames a weight (exporters write it for tied weights): a weight too
    aliases = [node for node in graph.node if node.op_type == "Identity"
               and len(node.input) == 1 and len(node.output) == 1]
    while True:
        found = [node for node in aliases
                 if node.input[0] in constants and node.output[0] not in constants]
        if not found:
            break
        for node in found:
            constants[node.output[0]] = constants[node.input[0]]
    inputs = [value.name for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ValueError(f"from_onnx reads a graph of one input and one output, got inputs "
                         f"{inputs} and {len(graph.output)} outputs")
    activations = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
    # the standard domain's opset (Gelu joined it in opset 20), and where each value is made
    opset = max((entry.version for entry in model.opset_import
                 if entry.domain in ("", "ai.onnx")), default=0)
    writer = {output: position for position, node in enumerate(graph.node)
              for output in node.output}
    layers: list = []
    current = inputs[0]  # the chain's value: the tensor the next node must read
    open_layer = False  # a Gemm or MatMul read, no activation yet: an Add adds to its bias
    for position, node in enumerate(graph.node):
        where = f"node {position} ({_printable(node.op_type)} {node.name!r})"
        if node.domain not in ("", "ai.onnx") and \
                (node.domain, node.op_type) != ("com.microsoft", "Gelu"):  # the exact erf form
            raise ValueError(f"{where} is of domain {node.domain!r}, which is not supported: "
                             f"from_onnx reads the standard ONNX operators (domain '')")
        if node.op_type == "Constant" or (node.op_type == "Identity" and
                                          node.output and node.output[0] in constants):
            continue  # a weight, or a weight's alias
        data = [name for name in node.input if name and name not in constants]
        later = [name for name in data if writer.get(name, -1) > position]
        if later:
            raise ValueError(f"{where} reads {later[0]!r}, which node {writer[later[0]]} "
                             f"writes later: the nodes are not in topological order, as ONNX "
                             f"requires (onnx.utils or a re-export sorts them)")
        if data != [current] or len(node.output) != 1:
            raise ValueError(f"{where} must read the chain's value {current!r} (and weights) "
                             f"and write one output; it reads {list(node.input)}: from_onnx "
                             f"reads a chain, not a graph with branches")
        current = node.output[0]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attributes = {name: value.decode() if isinstance(value, bytes) else value
                      for name, value in attributes.items()}  # string attributes come as bytes
        arity = {"Gemm": (2, 3), "MatMul": (2, 2), "Add": (2, 2)}.get(node.op_type)
        if arity is not None and not arity[0] <= len(node.input) <= arity[1]:
            raise ValueError(f"{where} has {len(node.input)} inputs; a {node.op_type} takes "
                             f"{' to '.join(map(str, sorted(set(arity))))}")
        if node.op_type == "Gemm":
            trans_a, alpha, beta = (attributes.get("transA", 0), attributes.get("alpha", 1.0),
                                    attributes.get("beta", 1.0))
            if node.input[0] != data[0] or trans_a or alpha != 1.0 or beta != 1.0:
                raise ValueError(f"{where}: only Gemm(x, W, b) with transA=0, alpha=1, beta=1 "
                                 f"is supported, got Gemm({', '.join(node.input)}) with "
                                 f"transA={trans_a}, alpha={alpha}, beta={beta}")
            W = _onnx_weight(constants, node.input[1], where)
            W = W if attributes.get("transB", 0) else W.T
            b = _onnx_constant(constants, node.input[2], where) if len(node.input) > 2 and \
                node.input[2] else None
            layers.append([W, None if b is None else _onnx_bias(b, W.shape[0], where),
                           "identity"])
            open_layer = True
        elif node.op_type == "MatMul":
            if node.input[0] != data[0]:
                raise ValueError(f"{where}: only MatMul(x, W) is supported")
            layers.append([_onnx_weight(constants, node.input[1], where).T, None, "identity"])
            open_layer = True
        elif node.op_type == "Add" and open_layer:
            # a MatMul's bias, or one added to a Gemm's (exporters write both): they sum
            name = node.input[1] if node.input[1] in constants else node.input[0]
            out = layers[-1][0].shape[0]
            bias = _onnx_bias(_onnx_constant(constants, name, where), out, where)
            with np.errstate(over="ignore"):  # an inf sum is refused as not finite later
                layers[-1][1] = bias if layers[-1][1] is None else layers[-1][1] + bias
        elif node.op_type == "Identity":
            continue  # passes the value on: the open layer still takes its bias or activation
        elif node.op_type in activations:
            approximate = attributes.get("approximate", "none")
            if node.op_type == "Gelu" and node.domain in ("", "ai.onnx") and opset < 20:
                raise ValueError(f"{where}: Gelu is an operator of opset 20 and later, and the "
                                 f"model imports opset {opset} (ONNX Runtime refuses it too): "
                                 f"export with opset_version=20 or later")
            if node.op_type == "Gelu" and approximate != "none":
                raise ValueError(f"{where}: Gelu(approximate={approximate!r}) is not supported; "
                                 f"only the exact erf form (approximate='none')")
            if not open_layer:
                raise ValueError(f"{where}: an activation must follow a Gemm or MatMul")
            layers[-1][2] = activations[node.op_type]
            open_layer = False
        else:
            # below opset 20 exporters write GELU as x * 0.5 * (1 + Erf(x / √2))
            hint = (" (a GELU exported below opset 20 becomes Div, Erf, Add and Mul nodes: "
                    "export with opset_version=20 or later for one Gelu node)"
                    if node.op_type in ("Div", "Erf", "Mul") else
                    " (an Add is read as a bias only between a Gemm or MatMul and its "
                    "activation)" if node.op_type == "Add" else "")
            raise ValueError(f"{where} is not supported: from_onnx reads chains of Gemm (or "
                             f"MatMul), Adds of their biases, Relu, Gelu, Sigmoid, Tanh and "
                             f"Identity{hint}")
    if not layers:
        raise ValueError("the ONNX graph has no Gemm or MatMul node")
    if current != graph.output[0].name:
        raise ValueError(f"the chain ends at {current!r}, but the graph's output is "
                         f"{graph.output[0].name!r}")
    declared = _declared_width(graph, inputs[0])
    if declared is not None and declared != layers[0][0].shape[1]:
        raise ValueError(f"the graph's input {inputs[0]!r} is declared {declared} wide, but "
                         f"its first layer takes {layers[0][0].shape[1]} inputs")
    return [tuple(layer) for layer in layers]


def _unreadable(path: str, error: Exception) -> ValueError:
    """The ValueError for a file onnx cannot read. onnx.load raises protobuf's DecodeError
    (binary), ParseError (a file named .json or .textproto), UnicodeDecodeError, or onnx's
    ValidationError (external data missing, absolute, outside the model's folder, a link):
    none of them a ValueError, which is what the CLI and serve's reload catch."""
    return ValueError(f"{path!r} is not a readable ONNX model (truncated, foreign, or its "
                      f"external data unreadable): {type(error).__name__}: "
                      f"{_printable(str(error))}")


def _printable(text: str | bytes) -> str:
    """``text`` with control characters escaped: strings from the file (an operator's name,
    an external data location that onnx quotes) must not break an error's one line. A
    string field that is not UTF-8 comes from protobuf as bytes."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _onnx_tensor(tensor, path: str) -> np.ndarray:
    """A TensorProto's values; an element type numpy_helper cannot read (a corrupt file: an
    undefined or unknown data_type) is a ValueError naming the tensor."""
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(tensor)
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"{path!r}: tensor {tensor.name!r} cannot be read (element type "
                         f"{tensor.data_type}): {error}") from error


def _declared_width(graph, name: str) -> int | None:
    """The fixed width (second dimension) the graph declares for its input, if any."""
    for value in graph.input:
        if value.name == name and value.type.HasField("tensor_type") and \
                value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None


def _onnx_bias(b: np.ndarray, out: int, where: str) -> np.ndarray:
    """A bias of ``out`` values (shape (out,), (1, out) or a scalar broadcast)."""
    if b.size == 1:
        return np.full(out, b.reshape(-1)[0], dtype=np.float32)
    if b.size != out or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
        raise ValueError(f"{where}: a bias must have {out} values (shape ({out},) or (1, {out})), "
                         f"got shape {b.shape}")
    return b.reshape(out)


def _onnx_weight(constants: dict, name: str, where: str) -> np.ndarray:
    """A Gemm's or MatMul's weight: 2-d (ONNX Runtime refuses the others too)."""
    W = _onnx_constant(constants, name, where)
    if W.ndim != 2:
        raise ValueError(f"{where}: weight {name!r} must be 2-d (a matrix), got shape "
                         f"{W.shape}")
    return W


def _onnx_constant(constants: dict, name: str, where: str) -> np.ndarray:
    if name not in constants:
        raise ValueError(f"{where}: input {name!r} must be an initializer or Constant (weights)")
    values = np.asarray(constants[name])
    if values.dtype.kind != "f":  # ONNX Runtime refuses integer or string weights too
        raise ValueError(f"{where}: weight {name!r} holds {values.dtype} values; a Gemm or "
                         f"MatMul of a float input takes float weights")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused as not finite later
        return values.astype(np.float32)

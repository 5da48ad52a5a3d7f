"""Event logs in, a users x items matrix out: ``recfuse.Interactions``.

An event log has one row per event: a user id, an item id and optionally a weight, a
timestamp and an event type. Ids may be any hashable values of one type (ints, strings,
...); they are mapped to dense ints 0..n-1 in sorted order, and new ids are appended when
more events arrive, so existing ints never change. The events of one (user, item) pair are
combined into one stored pair (``combine``), and the matrix can be weighted (``weighting``).

The order of work: per-event value = weight (1 without a weight column) x event-type weight x
time decay 0.5^((reference - t) / half_life); combine each pair's events (sum, max, last,
count); at ``.matrix``, apply the weighting (none, binary, count, log1p, bm25, tfidf).

>>> import numpy as np, recfuse
>>> log = recfuse.Interactions.from_arrays(["ann", "bob", "ann", "ann"], [10, 20, 20, 10])
>>> log.shape, log.matrix.toarray().tolist()
((2, 2), [[2.0, 1.0], [0.0, 1.0]])
>>> log.user_ids.to_external([0, 1]).tolist(), log.item_ids.to_internal([20]).tolist()
(['ann', 'bob'], [1])

pandas, polars and pyarrow are optional (``pip install "recfuse[data]"``); they are imported
only when a DataFrame, a Table or a file is read.
"""

from __future__ import annotations

import importlib.util
import os
import numbers
import reprlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from . import _validation as check
from ._typing import Integer, SparseMatrix

if TYPE_CHECKING:  # optional and slow to import: what names pandas is for type checkers only
    import pandas

COMBINE = ("sum", "max", "last", "count")
WEIGHTING = ("none", "binary", "count", "log1p", "bm25", "tfidf")
UNKNOWN = ("extend", "drop", "raise")
_NS_PER_SECOND = 1_000_000_000


def group_events(users, items, values=None, times=None, multiplicity=None, *, n_users: int,
                 n_items: int, combine: str = "sum"):
    """``reference_data.group_events`` (indptr int64, indices int32, values float32, counts
    int32, times int64 or None): natively where the module is there, else by the NumPy
    definition itself (values cast to float32 alike: a sum beyond it is inf)."""
    arrays = (np.ascontiguousarray(users, dtype=np.int32),
              np.ascontiguousarray(items, dtype=np.int32),
              None if values is None else np.ascontiguousarray(values, dtype=np.float64),
              None if times is None else np.ascontiguousarray(times, dtype=np.int64),
              None if multiplicity is None else np.ascontiguousarray(multiplicity, np.int64))
    if check._native_usable():
        from . import _core

        return _core.group_events(*arrays, n_users=n_users, n_items=n_items, combine=combine)
    from . import reference_data

    indptr, indices, combined, counts, pair_times = reference_data.group_events(
        *arrays, n_users=n_users, n_items=n_items, combine=combine)
    with np.errstate(over="ignore"):
        combined = combined.astype(np.float32)
    return indptr, indices.astype(np.int32), combined, counts.astype(np.int32), pair_times


def _pandas(purpose: str):
    try:
        import pandas
    except ImportError as error:  # pragma: no cover - pandas is in the test extra
        raise ImportError(f"{purpose} needs pandas: pip install 'recfuse[data]'") from error
    return pandas


def _optional_pandas():
    try:
        import pandas
    except ImportError:  # pragma: no cover
        return None
    return pandas


# ---------------------------------------------------------------------------- id maps
class IdMap:
    """External ids <-> dense ints 0..n-1. Immutable: ``extend`` returns a new map in which
    every existing id keeps its int. The ids must be distinct (ValueError otherwise).

    >>> ids = IdMap(np.array(["a", "b"]))
    >>> ids.extend(["c", "a"]).to_internal(["c", "a"]).tolist()
    [2, 0]
    """

    _array: np.ndarray | None  # None while the ids are Arrow strings not yet converted
    _arrow: Any  # those Arrow ids (a pyarrow.ChunkedArray), else None
    # the lookup table, built on first use: a pandas.Index (without pandas, the order and
    # the sorted ids)
    _index: Any
    _kind: str | None  # found on first use

    def __init__(self, ids: ArrayLike) -> None:
        self._set(ids)
        self._check_distinct()

    @classmethod
    def _distinct(cls, ids) -> "IdMap":
        """A map of ids known to be distinct (a factorization's uniques): not checked again."""
        id_map = cls.__new__(cls)
        id_map._set(ids)
        return id_map

    def _check_distinct(self) -> None:
        if self._array is None:  # Arrow strings
            import pyarrow.compute as pc

            if pc.count_distinct(self._arrow).as_py() == len(self._arrow):
                return
            array = self._ids
        else:
            array = self._array
        pandas = _optional_pandas()
        if pandas is not None:
            index = pandas.Index(array)
            if index.is_unique:
                self._index = index  # the lookup table, built anyway at the first lookup
                return
            repeated = index[index.duplicated()].unique()[:5].tolist()
        else:  # pragma: no cover - the NumPy path without pandas
            values, counts = np.unique(array, return_counts=True)
            if values.size == array.size:
                return
            repeated = values[counts > 1][:5].tolist()
        raise ValueError(f"ids must be distinct (one int per id), got repeated ids, e.g. "
                         f"{repeated}")

    def _set(self, ids) -> None:
        self._index = None  # the lookup table, built on first use
        self._kind = None  # kind, found on first use
        self._arrow = None
        if type(ids).__module__.split(".")[0] == "pyarrow":
            # Arrow strings (from_values on an Arrow column): their Python objects are made
            # at the first use of the ids, not when a matrix is all that is wanted
            if not hasattr(ids, "chunks"):
                raise TypeError(f"Arrow ids must be a ChunkedArray, got {type(ids).__name__}")
            self._arrow, self._array = ids, None
            return
        what = "a 1-d sequence of ids (a list, an array, a Series)"
        array = check.array_of(ids, "ids", what)  # a set, a dict, a generator: named
        if array.ndim == 0:  # None, one id: not a sequence (NumPy made a 0-d array of it)
            raise TypeError(f"ids must be {what}, got {type(ids).__name__} {ids!r:.60}")
        if array.ndim != 1:
            raise ValueError(f"ids must be 1-d, got shape {array.shape}")
        if array.dtype.kind == "f" and np.isnan(array).any():  # as from_arrays: missing
            raise ValueError(f"ids must not be NaN, got {int(np.isnan(array).sum())}")
        # a copy in a dtype pandas, which looks ids up, can index: float16 widened exactly,
        # another byte order made native
        array = array.astype(np.float32 if array.dtype == np.float16
                             else array.dtype.newbyteorder("="))
        _check_utf8(array)
        array.flags.writeable = False
        self._array = array

    @classmethod
    def from_values(cls, values: ArrayLike, name: str = "ids") -> tuple["IdMap", np.ndarray]:
        """Map ``values`` (one id per event) to ints: ids numbered in sorted order.
        Returns (map, int32 codes)."""
        codes, uniques = _factorize(values, name, arrow_ids=True)
        return cls._distinct(uniques), codes

    @property
    def ids(self) -> np.ndarray:
        """The external ids in the order of their ints (read-only)."""
        return self._ids

    @property
    def _ids(self) -> np.ndarray:
        if self._array is None:  # two threads may both convert: the same result either way
            array = self._arrow.to_numpy()
            array.flags.writeable = False
            self._array = array
        return self._array

    def __len__(self) -> int:
        return len(self._arrow) if self._array is None else self._array.size

    @property
    def kind(self) -> str:
        """What the ids are: "integer", "string", "floating", "bytes", "datetime" (pandas'
        ``infer_dtype`` names), or "empty" for a map of no ids."""
        if self._kind is None:  # found once: for object ids it reads every id
            self._kind = _id_kind(self._ids) if len(self) else "empty"
        return self._kind

    def __eq__(self, other) -> bool:
        # NumPy takes True for 1: maps of bools and of ints look ids up apart, so differ
        return isinstance(other, IdMap) and np.array_equal(self._ids, other._ids) and \
            (self.kind == "boolean") == (other.kind == "boolean")

    def __reduce__(self):  # rebuilt from the ids: read-only again, no lookup table carried
        return (type(self)._distinct, (self._ids,))

    __hash__ = None  # type: ignore[assignment]  # unhashable: __eq__ compares the ids

    def __repr__(self) -> str:
        head = ", ".join(reprlib.repr(v) for v in self._ids[:3].tolist())  # long ids cut
        return f"IdMap({len(self)} ids: {head}{', ...' if len(self) > 3 else ''})"

    def to_internal(self, values: ArrayLike, *, missing: str = "raise") -> np.ndarray:
        """Ints of external ids (int64). ``missing="raise"`` (ValueError naming the unknown
        ids) or ``"ignore"`` (-1 for them)."""
        check.check_choice(missing, "missing", ("raise", "ignore"))
        values = _as_id_array(values)
        kind = _id_kind(values)
        if kind.startswith("mixed"):  # else e.g. 1 would be looked up as "1" in ["a", 1]
            raise TypeError(f"ids mix types ({kind}); look up ids of one type (no None), as "
                            f"the map holds {self.kind} ids")
        codes = self._lookup(values)
        if missing == "raise" and (codes < 0).any():
            unknown = np.asarray(values)[codes < 0]
            raise ValueError(f"{int(unknown.size)} ids are not in this map, e.g. "
                             f"{unknown[:5].tolist()}")
        return codes

    def position(self, value: Any) -> int:
        """The int of one id, -1 when the map lacks it: ``to_internal`` of one value without
        its array conversion and type inference (about 1 us, not 15: a server's lookups).
        A value of another kind than the map's ids (e.g. 1 among strings) is unknown."""
        kind = self.kind
        if kind == "string" and not isinstance(value, str) or kind == "integer" and (
                isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
            return -1  # as to_internal: strings among strings, numbers among integers
        if self._index is None or isinstance(self._index, tuple) or \
                kind not in ("string", "integer"):  # the table built, or other kinds
            return int(self.to_internal([value], missing="ignore")[0])
        return self._position(value)

    def to_external(self, codes: ArrayLike) -> np.ndarray:
        """External ids of ints (an IndexError-free check: ValueError for ints out of range)."""
        codes = check.check_ids(codes, "codes", len(self))
        return self._ids[codes]

    def extend(self, values: ArrayLike) -> "IdMap":
        """A map with the ids of ``values`` not yet known appended (in sorted order)."""
        values = _as_id_array(values)
        if values.size == 0:
            return self
        if len(self) == 0:  # its dtype (e.g. float64 of IdMap([])) says nothing of the ids
            return IdMap._distinct(_factorize(values, "ids")[1])
        _check_same_kind(self.kind, values)
        new = values[self._lookup(values) < 0]
        if new.size == 0:
            return self
        _, uniques = _factorize(new, "ids")
        known = self._ids
        if isinstance(known, np.ndarray) and known.dtype.kind in "iuf" and \
                uniques.dtype != known.dtype:
            wider = _integers_holding(known, uniques)
            if wider is not None:  # an int32 map given 2**40: both as a dtype holding both
                known, uniques = known.astype(wider), uniques.astype(wider)
            else:
                uniques = _exactly_as(uniques, known.dtype)  # else NumPy promotes, to float64
        return IdMap._distinct(np.concatenate([known, uniques]))

    def _lookup(self, values: np.ndarray) -> np.ndarray:
        if len(self) == 0 or values.size == 0:
            return np.full(values.size, -1, dtype=np.int64)
        if not _same_kind(self.kind, values):
            return np.full(values.size, -1, dtype=np.int64)
        pandas = _optional_pandas()
        if pandas is not None:
            if self._index is None:
                self._index = pandas.Index(self._ids)
            if values.size <= _FEW_IDS:  # e.g. one request's users: ~1 us each, not ~100 us
                # (datetime64 as NumPy scalars: tolist() gives ints or dates, never found)
                listed = list(values) if values.dtype.kind in "mM" else values.tolist()
                return np.fromiter((self._position(value) for value in listed),
                                   np.int64, values.size)
            return self._index.get_indexer(values).astype(np.int64, copy=False)
        if self._index is None:  # pragma: no cover - the NumPy path without pandas
            order = np.argsort(self._ids, kind="stable")
            self._index = (order, self._ids[order])
        order, sorted_ids = self._index
        position = np.clip(np.searchsorted(sorted_ids, values), 0, len(self) - 1)
        found = sorted_ids[position] == values
        return np.where(found, order[position], -1).astype(np.int64)

    def _position(self, value) -> int:
        """The int of one id, -1 when unknown (pandas lookup table built)."""
        try:
            position = self._index.get_loc(value)
        except (KeyError, TypeError, ValueError):  # TypeError/ValueError: an unhashable key
            return -1
        return position if isinstance(position, int) else -1


_FEW_IDS = 16  # lookups of at most this many ids go one by one (get_indexer's fixed cost)


def _as_id_array(values) -> np.ndarray:
    if isinstance(values, (set, frozenset, Mapping, Iterator)):  # else one id of type set
        raise TypeError(f"ids must be one id or a 1-d sequence (a list, an array, a Series), "
                        f"got {type(values).__name__}")
    if np.ndim(values) == 0:
        values = values.reshape(1) if isinstance(values, np.ndarray) else [values]
    # a list's ids as Python objects where NumPy would merge their types (["a", 1] -> "1")
    array = _list_ids(values) if isinstance(values, (list, tuple)) else np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"ids must be a 1-d sequence, got shape {array.shape}")
    return array


def _check_utf8(ids: np.ndarray) -> None:
    """Refuse text ids that UTF-8 cannot hold (a lone surrogate, "\\ud800", from a bad
    decode): files, JSON answers and Arrow all write text as UTF-8, so such an id would make
    a file that cannot be read back or a server answer that cannot be sent. (Arrow's own
    strings are UTF-8 already, and are not checked.)"""
    if ids.dtype.kind not in "UO" or not ids.size:
        return
    if ids.dtype.kind == "U":  # UTF-32 code units: a surrogate is one in D800-DFFF
        codes = np.ascontiguousarray(ids).view(np.uint32)
        if not ((codes >= 0xD800) & (codes <= 0xDFFF)).any():
            return
        texts = ids.tolist()
    else:
        texts = [value for value in ids.tolist() if isinstance(value, str)]
        try:
            "".join(texts).encode("utf-8")
            return
        except UnicodeEncodeError:
            pass
    bad = next(text for text in texts if not _encodes(text))
    raise ValueError(f"ids must be text UTF-8 can write, got {bad!r:.80} (it holds a lone "
                     f"surrogate, as a bad decode leaves)")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_kind(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":  # True == 1: never mixed with integer ids
        return "boolean"
    if kind in "iu":
        return "integer"
    if kind == "f":
        return "floating"
    if kind in "US":
        return "string" if kind == "U" else "bytes"
    if kind == "M":
        return "datetime"
    if kind == "O":
        if values.size == 0:
            return "empty"
        pandas = _optional_pandas()
        if pandas is not None:
            return pandas.api.types.infer_dtype(values, skipna=False)
        return _object_kind(values)
    return kind


def _object_kind(values: np.ndarray) -> str:
    """pandas' ``infer_dtype`` name of an object array of ids, for the kinds ids come in
    (without pandas: Arrow string ids come as Python objects)."""
    def kind_of(value) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "boolean"
        for kind, types in (("string", str), ("bytes", bytes), ("integer", numbers.Integral),
                            ("floating", numbers.Real)):
            if isinstance(value, types):
                return kind
        return "mixed"

    kinds = {kind_of(value) for value in values.tolist()}
    if len(kinds) == 1:
        return kinds.pop()
    return "mixed-integer-float" if kinds == {"integer", "floating"} else "mixed"


def _same_kind(known: str, values: np.ndarray) -> bool:
    """Whether ``values`` can be looked up among ids of kind ``known`` (an IdMap's)."""
    ka, kb = known, _id_kind(values)
    return ka == kb or "empty" in (ka, kb) or {ka, kb} <= {"integer", "floating"}


def _integers_holding(known: np.ndarray, new: np.ndarray) -> np.dtype | None:
    """The first of ``known``'s dtype, int64 and uint64 that holds every id of two integer
    arrays exactly (as reading all their events at once would type them); None when they
    are not both integer arrays, or no integer dtype holds them all (-1 and 2**64 - 1)."""
    if known.dtype.kind not in "iu" or new.dtype.kind not in "iu":
        return None
    low = min(int(known.min(initial=0)), int(new.min(initial=0)))
    high = max(int(known.max(initial=0)), int(new.max(initial=0)))
    for dtype in (known.dtype, np.dtype(np.int64), np.dtype(np.uint64)):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return dtype
    return None


def _exactly_as(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Numeric ids as ``dtype`` (a map's), refused when one would not keep its value: the
    existing ids must never change (uint64 and int64 ids together would become float64)."""
    with np.errstate(invalid="ignore", over="ignore"):
        cast = values.astype(dtype)
    if cast.tolist() != values.tolist():
        raise TypeError(f"new ids of dtype {values.dtype} do not all fit the map's {dtype} ids "
                        f"exactly; one id column must hold one type")
    return cast


def _check_same_kind(known: str, new: np.ndarray, name: str = "") -> None:
    """Refuse new ids (of the column ``name``, when given) of another kind than a map's."""
    if not _same_kind(known, new):
        what = f"{name}: new ids" if name else "new ids"  # from_events adds the column
        raise TypeError(f"{what} are {_id_kind(new)} but the map holds {known} ids; "
                        "one id column must hold one type")


def _factorize(values, name: str, arrow_ids: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(int32 codes, sorted unique ids) of one id column; clear errors for missing values
    and mixed types. ``arrow_ids``: the ids of an Arrow string column may come back as a
    pyarrow ChunkedArray (for IdMap, which converts them when first used)."""
    pandas = _optional_pandas()
    strings = _arrow_strings(values, pandas)
    if strings is not None:
        codes, ids = _factorize_arrow_strings(strings, name)
        return codes, (ids if arrow_ids else ids.to_numpy())
    is_series = pandas is not None and isinstance(values, pandas.Series)
    if is_series and values.dtype.kind in "biuf":
        values, is_series = values.to_numpy(), False
    if not is_series:
        values = _list_ids(values) if isinstance(values, (list, tuple)) else np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-d, got shape {values.shape}")
        if values.dtype == np.float16:  # widened (exactly): pandas has no float16 index
            values = values.astype(np.float32)
    if len(values) == 0:
        return np.zeros(0, np.int32), np.asarray(values)[:0]
    if is_series:
        missing = int(values.isna().sum())
        if values.dtype == object:
            kind = pandas.api.types.infer_dtype(values, skipna=False)
        elif isinstance(values.dtype, pandas.CategoricalDtype) and \
                values.dtype.categories.dtype == object:
            # the categories in use, checked like an object column (1 and "1" are two types)
            used = values.cat.categories[np.unique(values.cat.codes[values.cat.codes >= 0])]
            kind = pandas.api.types.infer_dtype(used, skipna=True)
        else:
            kind = None
    else:
        kind = _id_kind(values)
        if values.dtype.kind == "f":
            missing = int(np.isnan(values).sum())
        elif values.dtype.kind in "mM":  # NaT
            missing = int(np.isnat(values).sum())
        elif values.dtype.kind == "O":
            missing = int(_pandas("object ids").isna(values).sum())
        else:
            missing = 0
    if missing:
        raise ValueError(f"{name} has {missing} missing values (None/NaN); every event needs one")
    if kind is not None and kind.startswith("mixed"):
        raise TypeError(f"{name} mixes id types ({kind}); convert the column to one type, "
                        "e.g. all strings")
    if not is_series and values.dtype.kind in "iu":
        codes, uniques = _factorize_dense_integers(values)
    elif pandas is not None:
        if is_series and isinstance(values.dtype, pandas.CategoricalDtype):
            # numbered by the ids' sorted order, as every other column (and Arrow's
            # dictionaries), not by the order the categories were declared in
            values = values.cat.remove_unused_categories()
            values = values.cat.reorder_categories(values.cat.categories.sort_values())
        codes, uniques = pandas.factorize(values, sort=True)
        uniques = np.asarray(uniques)
        if uniques.dtype == object and kind in ("integer", "floating") and uniques.size:
            uniques = _object_numbers(uniques, kind, name)
        # strings stay Python objects: converting millions to fixed-width NumPy strings costs
        # more than the rest of the ingestion; save() converts them
    else:  # pragma: no cover - the NumPy path without pandas
        if values.dtype == object:
            raise ImportError("object ids need pandas: pip install 'recfuse[data]'")
        uniques, codes = np.unique(values, return_inverse=True)
    if uniques.size > check.INT32_MAX:
        raise ValueError(f"{name} has {uniques.size} distinct ids; at most {check.INT32_MAX}")
    return codes.astype(np.int32, copy=False), uniques


def _list_ids(values) -> np.ndarray:
    """A list of ids as an array, kept as Python objects wherever NumPy's conversion would
    merge or mistype them: a list that mixes strings with other types (["a", 1] -> ["a",
    "1"]; refused as mixed types, as in any other column), ints past int64 among others
    (made floats), True among numbers (made 1) and strings ending in NUL (fixed-width NumPy
    strings drop it: "b\0" would be looked up as "b")."""
    array = np.asarray(values)
    if array.ndim != 1:
        return array
    kind = array.dtype.kind
    merged = (
        (kind in "US" and not (all(isinstance(v, str) for v in values)
                               or all(isinstance(v, bytes) for v in values)))
        or (kind in "US" and any(v[-1:] in ("\0", b"\0") for v in values))
        or (kind == "f" and not any(isinstance(v, (float, np.floating)) for v in values))
        or (kind in "iuf" and any(isinstance(v, (bool, np.bool_)) for v in values)))
    if merged:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    return array


def _wide_integers(values: np.ndarray) -> np.ndarray | None:
    """``values`` (Python ints, or their text) as int64, or uint64 past int64; None when
    they fit neither (or are not integers)."""
    for dtype in (np.int64, np.uint64):
        try:
            return values.astype(dtype)
        except (OverflowError, ValueError):
            continue
    return None


def _object_numbers(uniques: np.ndarray, kind: str, name: str) -> np.ndarray:
    """Distinct ids held as Python numbers, in a NumPy dtype: float64, or int64 (uint64 past
    it). Integers beyond 64 bits are refused: as floats, distinct ids would merge."""
    if kind != "integer":
        return uniques.astype(np.float64)
    integers = _wide_integers(uniques)
    if integers is None:
        raise ValueError(f"{name} holds integers from {uniques.min()} to {uniques.max()}: "
                         f"expected them within int64 or uint64; use strings for such ids")
    return integers


def _arrow_strings(values, pandas):
    """``values`` as a pyarrow ChunkedArray of string/binary (or large_) type when they are
    held by Arrow (a pyarrow array, or a pandas Series with Arrow storage), else None."""
    if type(values).__module__.split(".")[0] == "pyarrow":
        chunked = values
    elif (pandas is not None and isinstance(values, pandas.Series)
          and (getattr(values.dtype, "storage", None) == "pyarrow"
               or type(values.dtype).__name__ == "ArrowDtype")):
        chunked = values.array.__arrow_array__()  # its buffers, not a copy
    else:
        return None
    import pyarrow as pa

    if isinstance(chunked, pa.Array):
        chunked = pa.chunked_array([chunked])
    if not isinstance(chunked, pa.ChunkedArray):
        return None
    # dictionary-encoded strings stay encoded (numbered through their dictionaries)
    kind = chunked.type.value_type if pa.types.is_dictionary(chunked.type) else chunked.type
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        wide = pa.large_string() if pa.types.is_string_view(kind) else pa.large_binary()
        return chunked.cast(wide)  # the native path reads offsets, not views
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        return chunked
    return None


def _factorize_arrow_strings(chunked, name: str):
    """_factorize for an Arrow column of strings or bytes: (int32 codes, the sorted distinct
    ids as a ChunkedArray), hashed natively on the Arrow buffers (no Python object per event,
    the GIL released)."""
    import pyarrow as pa

    if chunked.null_count:
        raise ValueError(f"{name} has {chunked.null_count} missing values (None/NaN); every "
                         "event needs one")
    if pa.types.is_dictionary(chunked.type):
        return _factorize_arrow_dictionary(chunked, name)
    if not check._native_usable():  # Python objects, sorted by NumPy (no pandas needed)
        ids, codes = np.unique(np.asarray(chunked.to_pylist(), dtype=object),
                               return_inverse=True)
        return codes.astype(np.int32), pa.chunked_array([pa.array(ids.tolist(),
                                                                  type=chunked.type)])
    from . import _core

    large = pa.types.is_large_string(chunked.type) or pa.types.is_large_binary(chunked.type)
    offsets, data = [], []
    for chunk in chunked.chunks:
        if len(chunk) == 0:  # its buffers may be absent
            continue
        _, offset_buffer, data_buffer = chunk.buffers()
        # a sliced chunk's strings start at its offset; its offsets index the whole buffer
        offsets.append(np.frombuffer(offset_buffer, np.int64 if large else np.int32)[
            chunk.offset:chunk.offset + len(chunk) + 1])
        data.append(np.zeros(0, np.uint8) if data_buffer is None
                    else np.frombuffer(data_buffer, np.uint8))
    codes, first = _core.factorize_strings(offsets, data)
    # the distinct ids, still in Arrow (to_numpy gives Python str, or bytes for binary: what
    # pandas.factorize gives)
    return codes, chunked.take(first)


def _factorize_arrow_dictionary(chunked, name: str):
    """_factorize for dictionary-encoded strings: the values of the distinct dictionaries are
    numbered (chunks read from one Parquet row group share theirs), then every event goes
    through its chunk's dictionary (a gather); values no event uses are dropped."""
    import pyarrow as pa

    chunks = [chunk for chunk in chunked.chunks if len(chunk)]
    dictionaries: list[Any] = []  # pyarrow arrays
    starts: list[int] = []
    start_of: dict[tuple, int] = {}
    for chunk in chunks:
        dictionary = chunk.dictionary
        key = (dictionary.offset, len(dictionary),
               *(0 if b is None else b.address for b in dictionary.buffers()))
        if key not in start_of:
            start_of[key] = sum(len(d) for d in dictionaries)
            dictionaries.append(dictionary)
        starts.append(start_of[key])
    values = pa.chunked_array(dictionaries, type=chunked.type.value_type)
    if values.null_count:  # a null among the values: decoding tells which events have it
        return _factorize_arrow_strings(chunked.cast(chunked.type.value_type), name)
    value_codes, ids = _factorize_arrow_strings(values, name)
    codes = np.empty(len(chunked), np.int32)
    at = 0
    for chunk, start in zip(chunks, starts):
        indices, size = chunk.indices.to_numpy(), len(chunk.dictionary)
        outside = (indices < 0) | (indices >= size)  # malformed Arrow: -1 would wrap around
        if outside.any():
            raise ValueError(f"{name} is a malformed Arrow dictionary array: index "
                             f"{indices[outside][0]} is outside its dictionary of {size} values")
        np.take(value_codes[start:start + size], indices, out=codes[at:at + len(chunk)])
        at += len(chunk)
    used = np.zeros(len(ids), dtype=bool)
    used[codes] = True
    if not used.all():
        renumber = np.cumsum(used, dtype=np.int32) - 1
        codes, ids = renumber[codes], ids.filter(pa.array(used))
    return codes, ids


def _factorize_dense_integers(values: np.ndarray):
    """Integer ids: a presence table over [min, max] when that range is small (O(n), no
    hashing or sorting), else a sort."""
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * values.size + 1024:
        # differences of ids narrower than 64 bits in int64: in int8, 100 - (-100) wraps to -56
        wide = values if values.dtype.itemsize == 8 else values.astype(np.int64)
        offsets = wide - low if low else wide
        present = np.zeros(high - low + 1, dtype=bool)
        present[offsets] = True
        uniques = np.flatnonzero(present)
        table = np.cumsum(present, dtype=np.int32 if uniques.size < 2**31 else np.int64) - 1
        # in the ids' dtype (a uint64 low past int64 does not fit uniques' int64): the
        # uniques are ids, so they fit it
        return table[offsets], (uniques.astype(wide.dtype) + wide.dtype.type(low)).astype(
            values.dtype)
    uniques, codes = np.unique(values, return_inverse=True)
    return codes, uniques


# ---------------------------------------------------------------------------- columns
def _columns_of(source, wanted: dict[str, str | None], read_options: dict, keep_text=()):
    """Read the named columns of a DataFrame / Table / mapping / file as arrays or Series
    (``keep_text``: CSV id columns kept as text, see _read_file)."""
    if isinstance(source, (str, os.PathLike)):
        ids = [wanted[role] for role in ("user", "item", "event") if wanted.get(role)]
        source = _read_file(os.fspath(source), [c for c in wanted.values() if c], read_options,
                            ids, [wanted["user"], wanted["item"]], keep_text)
    elif read_options:
        raise TypeError(f"read options {sorted(read_options)} only apply to file paths")
    module = type(source).__module__.split(".")[0]
    names = [c for c in dict.fromkeys(wanted.values()) if c is not None]
    available = None
    if module == "polars" and hasattr(source, "collect") and not hasattr(source, "get_column"):
        # a LazyFrame: only the wanted columns are computed (unknown ones raise below)
        schema = source.collect_schema().names()
        if all(name in schema for name in names):
            source = source.select(names).collect()
        else:
            available = schema
    if module == "pyarrow" and not hasattr(source, "column_names") and hasattr(source, "to_table"):
        # a pyarrow.dataset.Dataset: only the wanted columns are read
        if all(name in source.schema.names for name in names):
            source = source.to_table(columns=names)
        else:
            available = source.schema.names
    if module == "polars":
        if available is None:
            available = list(source.columns)
        get = lambda column: _from_polars(source.get_column(column))  # noqa: E731
    elif module == "pyarrow":
        if available is None:
            available = list(source.column_names)
        get = lambda column: _from_arrow(source.column(column), column)  # noqa: E731
    elif module == "pandas":
        # a label that is not a string (a frame made from an array has 0, 1, ...) is found
        # by itself or by its text (the text the CLI passes)
        labels: dict[Any, Any] = {}
        for label in source.columns:
            labels.setdefault(label, label)
            labels.setdefault(str(label), label)
        available = list(source.columns)
        wanted = {role: labels.get(column, column) if column is not None else None
                  for role, column in wanted.items()}
        get = lambda column: source[column]  # noqa: E731
    elif isinstance(source, Mapping):
        available = list(source.keys())
        get = lambda column: source[column]  # noqa: E731
    else:
        raise TypeError(
            "source must be a pandas or polars DataFrame, a pyarrow Table, a mapping of column "
            f"name -> array, or a .csv/.parquet path, got {type(source).__module__}."
            f"{type(source).__name__}")
    missing = [f"{role}={column!r}" for role, column in wanted.items()
               if column is not None and column not in available]
    if missing:
        raise ValueError(f"unknown columns: {', '.join(missing)}; the data has {available}")
    repeated = [f"{role}={column!r}" for role, column in wanted.items()
                if column is not None and available.count(column) > 1]
    if repeated:  # one of them would be a guess (pandas gives a 2-d frame, Arrow a KeyError)
        raise ValueError(f"the data has several columns named {', '.join(repeated)}; "
                         f"rename them so that each name is one column (columns: {available})")
    return {role: (get(column) if column is not None else None) for role, column in wanted.items()}


# The file names read as CSV (a tab separates the fields of ".tsv" ones).
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


def _read_file(path: str, columns: list[str], read_options: dict, id_columns=(),
               text_ids=(), keep_text=()):
    """The columns of a CSV or Parquet file; a file a reader cannot parse is a ValueError
    naming it. CSV id columns (``text_ids``) are read as text, then as integers when every id
    is written plainly (see _plain_integers), unless in ``keep_text`` or typed by
    ``read_options`` (dtype, converters)."""
    if os.path.isdir(path) and _parquet_files(path):
        return _read_parquet_folder(path, columns, read_options)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no event log at {path!r}")
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq
        except ImportError as error:  # pragma: no cover
            raise ImportError("reading Parquet needs pyarrow: pip install 'recfuse[data]'") from error
        try:
            metadata = pq.read_metadata(path)
        except (OSError, ValueError) as error:  # not Parquet, or cut short
            raise ValueError(f"cannot read {path!r} as Parquet: {error}") from None
        names = metadata.schema.to_arrow_schema().names
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(f"unknown columns: {unknown}; {path!r} has {names}")
        options = dict(read_options)
        if "read_dictionary" not in options:
            coded = _dictionary_coded(metadata, id_columns)
            if coded:  # read as Arrow dictionaries: only their values need hashing
                options["read_dictionary"] = coded
        try:
            return pq.read_table(path, columns=list(dict.fromkeys(columns)), **options)
        except (OSError, ValueError) as error:  # a corrupt page
            raise ValueError(f"cannot read {path!r} as Parquet: {error}") from None
    if lower.endswith(CSV_SUFFIXES):
        pandas = _pandas("reading CSV")
        options = {"sep": "\t"} if ".tsv" in lower else {}
        options.update(read_options)
        try:  # empty, not UTF-8, a quote left open: pandas' ValueErrors
            header = pandas.read_csv(path, nrows=0, **options)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {path!r} as CSV: {error}") from None
        unknown = [c for c in columns if c not in header.columns]
        if unknown:
            names = list(header.columns)
            other = [sep for sep in (";", "\t", "|") if len(names) == 1 and sep in str(names[0])]
            hint = (f" (one column: are its fields separated by {other[0]!r}? pass "
                    f"read_options={{'sep': {other[0]!r}}}, or --sep on the command line"
                    f"{', or name the file .tsv' if other[0] == chr(9) else ''})" if other else "")
            raise ValueError(f"unknown columns: {unknown}; {path!r} has {names}{hint}")
        dtype, typed = options.get("dtype"), set(options.get("converters") or ())
        text = [c for c in dict.fromkeys(text_ids) if c not in typed]
        if isinstance(dtype, Mapping):
            text = [c for c in text if c not in dtype]
        elif dtype is not None:  # one dtype for every column: the caller's choice
            text = []
        if text:
            # pyarrow's reader, when no pandas-only option is asked for, keeps the text in
            # Arrow (3M events: 0.65 s against 2.2 s for Python strings). pandas 2's pyarrow
            # engine infers types first and casts after ("007" read as "7"): pandas 3+ only
            arrow = (not read_options and int(pandas.__version__.split(".")[0]) >= 3
                     and importlib.util.find_spec("pyarrow") is not None)
            kind = "string[pyarrow]" if arrow else str
            options["dtype"] = {**(dtype or {}), **{c: kind for c in text}}
            if arrow:
                options["engine"] = "pyarrow"
        try:
            frame = pandas.read_csv(path, usecols=list(dict.fromkeys(columns)), **options)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {path!r} as CSV: {error}") from None
        for column in text:
            if column not in keep_text:
                frame[column] = _plain_integers(frame[column])
        return frame
    raise ValueError(f"cannot tell the format of {path!r}: expected a .csv, .tsv or .parquet file")


def _parquet_files(folder: str) -> bool:
    """Whether ``folder`` (or a folder inside it: hive partitions) holds Parquet files."""
    return any(name.endswith((".parquet", ".pq")) for _, _, names in os.walk(folder)
               for name in names)


def _read_parquet_folder(path: str, columns: list[str], read_options: dict):
    """The columns of a folder of Parquet files (a dataset written in parts, e.g. by Spark or
    Dask; hive partition folders included) as one table."""
    try:
        import pyarrow.dataset as ds
    except ImportError as error:  # pragma: no cover
        raise ImportError("reading Parquet needs pyarrow: pip install 'recfuse[data]'") from error
    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive",
                             exclude_invalid_files=False, **read_options)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot read {path!r} as a Parquet dataset: {error}") from None
    unknown = [c for c in columns if c not in dataset.schema.names]
    if unknown:
        raise ValueError(f"unknown columns: {unknown}; {path!r} has {dataset.schema.names}")
    try:
        return dataset.to_table(columns=list(dict.fromkeys(columns)))
    except (OSError, ValueError) as error:  # a corrupt part
        raise ValueError(f"cannot read {path!r} as a Parquet dataset: {error}") from None


def _plain_integers(column):
    """A CSV id column read as text, as integers (int64, or uint64 past it) when every id is
    an integer written as str(int) writes it, else the text itself: an id is the text in the
    file, so "007", "7", " 7" and "7.0" are four ids (pandas would read them all as 7), while
    a column of plain integers keeps int ids."""
    if getattr(column.dtype, "storage", None) == "pyarrow":
        return _plain_integers_arrow(column)
    plain = column.str.fullmatch(r"0|-?[1-9][0-9]*")
    if not plain.eq(True).all():  # missing values (NaN) stay: refused with their count
        return column
    integers = _wide_integers(column.to_numpy())
    return column if integers is None else integers


def _plain_integers_arrow(column):
    """_plain_integers for text held by Arrow, in Arrow's kernels: the integers the text
    casts to, when writing them back gives the same text (the cast alone reads "007", "-0"
    and "0x1A" as numbers)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = column.array.__arrow_array__()
    if text.null_count or len(text) == 0:  # missing values stay: refused with their count
        return column
    for dtype in (pa.int64(), pa.uint64()):
        try:
            ints = pc.cast(text, dtype)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not integers, or past int64
            continue
        same = pc.all(pc.equal(pc.cast(ints, text.type), text)).as_py()
        return ints.to_numpy() if same else column
    return column


def _dictionary_coded(metadata, columns) -> list[str]:
    """The string columns among ``columns`` whose Parquet pages are (nearly all) dictionary
    codes: PLAIN byte arrays cost at least 4 bytes a value (the length), so a column stored in
    fewer uncompressed bytes than 4 per value must be mostly codes. Reading such a column as a
    dictionary skips building a string per event; one whose dictionary overflowed into PLAIN
    pages would be re-hashed by the reader instead, so it is read as plain strings."""
    where = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    coded = []
    for name in dict.fromkeys(columns):
        index = where.get(name)
        if index is None or metadata.num_row_groups == 0:
            continue
        parts = [metadata.row_group(g).column(index) for g in range(metadata.num_row_groups)]
        if all(part.physical_type == "BYTE_ARRAY" and part.has_dictionary_page
               and part.total_uncompressed_size < 4 * part.num_values for part in parts):
            coded.append(name)
    return coded


def _from_polars(series):
    if series.null_count():
        raise ValueError(f"column {series.name!r} has {series.null_count()} missing values")
    if series.dtype.is_numeric() or series.dtype.is_temporal():
        return series.to_numpy()
    try:  # strings and the like: through Arrow, hashed by pandas without Python objects
        return _from_arrow(series.to_arrow(), series.name)
    except ImportError:  # pragma: no cover - polars without pyarrow
        return series.to_numpy()


def _from_arrow(chunked, name: str):
    import pyarrow as pa

    if isinstance(chunked, pa.Array):
        chunked = pa.chunked_array([chunked])
    if chunked.null_count:
        raise ValueError(f"column {name!r} has {chunked.null_count} missing values")
    strings = _arrow_strings(chunked, None)
    if strings is not None:  # kept in Arrow: _factorize numbers them natively
        return strings
    if pa.types.is_dictionary(chunked.type):  # the values, not their codes
        chunked = chunked.cast(chunked.type.value_type)
    if pa.types.is_integer(chunked.type) or pa.types.is_floating(chunked.type):
        return chunked.to_numpy()
    pandas = _optional_pandas()
    return chunked.to_pandas() if pandas is not None else chunked.to_numpy()


def _is_column(column) -> bool:
    """Whether ``column`` can be a column of events: sized, ordered (not a set or a mapping
    or its view) and not a scalar (a string, a 0-d array)."""
    if isinstance(column, (str, bytes)) or check.unordered(column) or \
            not hasattr(column, "__len__"):
        return False
    return not (isinstance(column, np.ndarray) and column.ndim == 0)


# pandas.api.types.infer_dtype's names of columns of Python numbers (Decimal: Arrow, polars
# and SQL decimal columns)
_NUMBER_KINDS = ("integer", "floating", "mixed-integer-float", "decimal")


def _numbers_in_objects(array: np.ndarray) -> np.ndarray | None:
    """An object array whose values are all real numbers (Python ints and floats, Decimals,
    as a column read through pandas can hold them) as int64 when all are integers that fit
    it, else float64; None when it holds anything else."""
    if array.dtype != object or not array.size:
        return None
    kind = _pandas("object columns").api.types.infer_dtype(array, skipna=False)
    if kind not in _NUMBER_KINDS:
        return None
    if kind == "integer":
        try:
            return array.astype(np.int64)
        except OverflowError:
            pass
    return array.astype(np.float64)


def _numeric(column, name: str) -> np.ndarray:
    pandas = _optional_pandas()
    if pandas is not None and isinstance(column, pandas.Series) and \
            not isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
        # nullable Int64/boolean/Float64 or Arrow numbers: a missing value is NaN (counted
        # below), not an object that is "not a number"
        column = column.to_numpy(dtype=np.float64, na_value=np.nan)
    array = np.asarray(column)
    numbers = _numbers_in_objects(array)
    if numbers is not None:
        array = numbers
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}"
                        f"{_first_non_number(array)}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} NaN/inf values (first at row "
                         f"{int(np.flatnonzero(bad)[0])}); drop or fill them first")
    return array


def _first_non_number(array: np.ndarray) -> str:
    """For a message, e.g. " (e.g. 'abc' at row 3)": the first value of a column that is not
    a number and does not read as one (else the first value: numbers held as text)."""
    values = array.tolist() if array.ndim == 1 else []
    for row, value in enumerate(values):  # a scan in Python, only on the way to an error
        if isinstance(value, numbers.Real):
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return f" (e.g. {value!r} at row {row})"
    return f" (e.g. {values[0]!r} at row 0)" if values else ""


def _times_ns(column, name: str = "timestamps") -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch. Numbers are seconds since the epoch;
    datetime64 values and strings pandas can parse are accepted; time zones become UTC."""
    pandas = _optional_pandas()
    if pandas is not None and isinstance(column, pandas.Series):
        if isinstance(column.dtype, pandas.DatetimeTZDtype):
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        elif column.dtype.kind not in "biufM":
            column = column.to_numpy()
        else:
            column = column.to_numpy()
    if isinstance(column, (list, tuple)) and len({np.datetime_data(value.dtype) for value in
                                                  column if isinstance(value, np.datetime64)}) > 1:
        # datetime64 scalars of several units: np.asarray casts them to the finest, and wraps
        # past its range before any check could see it; each is checked at its own unit
        if all(isinstance(value, np.datetime64) for value in column):
            return np.concatenate([_times_ns(np.array([value]), name) for value in column])
        return _times_ns(np.array(column, dtype=object), name)
    array = np.asarray(column)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {array.shape}")
    numeric = _numbers_in_objects(array)
    if numeric is not None:  # seconds, as in a numeric column (to_datetime would read ns)
        array = numeric
    kind = array.dtype.kind
    if kind == "M":
        array = array.astype(array.dtype.newbyteorder("="))  # the range check reads its bytes
        if np.isnat(array).any():
            raise ValueError(f"{name} has {int(np.isnat(array).sum())} missing times (NaT)")
        unit, count = np.datetime_data(array.dtype)
        if unit in ("Y", "M"):  # calendar units: as days first (exact for any real date)
            array, unit, count = array.astype("datetime64[D]"), "D", 1
        # cast: datetime_data's stub gives a str, timedelta64's wants a unit Literal
        step = np.timedelta64(count, cast(Any, unit)) / np.timedelta64(1, "ns")
        if step > 1:
            # a coarser unit (s, us, D, ...): the cast to ns multiplies, and wraps silently
            # past int64 (3000-01-01 became 1830-11-23)
            limit = np.iinfo(np.int64).max // int(step)
            steps = array.view(np.int64)
            beyond = (steps > limit) | (steps < -limit)
            if beyond.any():
                raise ValueError(f"{name} has {int(beyond.sum())} times outside int64 "
                                 f"nanoseconds (1677-09-21 to 2262-04-11), e.g. "
                                 f"{array[beyond][:3].astype(str).tolist()}")
        return array.astype("datetime64[ns]").view(np.int64)
    if kind in "iu":
        limit = np.iinfo(np.int64).max // _NS_PER_SECOND
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < -limit or high > limit:  # not np.abs: abs(int64 min) is int64 min
            raise ValueError(f"{name} as seconds since the epoch overflow int64 nanoseconds: "
                             f"expected within ±{limit}, got {high if high > limit else low}")
        return array.astype(np.int64) * _NS_PER_SECOND
    if kind == "f":
        array = array.astype(np.float64)  # exact; float32's own product lost seconds
        if not np.isfinite(array).all():
            raise ValueError(f"{name} has {int((~np.isfinite(array)).sum())} NaN/inf values")
        # whole seconds and the fraction apart (both exact): one product of 1.6e9 s by 1e9
        # rounds to 256 ns, the fraction's to a nanosecond
        whole = np.floor(array)
        fraction = np.round((array - whole) * _NS_PER_SECOND).astype(np.int64)
        top, bottom = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        high, low = top // _NS_PER_SECOND, bottom // _NS_PER_SECOND  # floor: -9223372037
        beyond = (whole > high) | ((whole == high) & (fraction > top - high * _NS_PER_SECOND))
        # int64's smallest value is NaT: the range ends one nanosecond above it
        beyond |= (whole < low) | ((whole == low) & (fraction <= bottom - low * _NS_PER_SECOND))
        if beyond.any():
            raise ValueError(f"{name} as seconds since the epoch overflow int64 nanoseconds: "
                             f"expected within ±{high}, got {array[beyond][0]}")
        return whole.astype(np.int64) * _NS_PER_SECOND + fraction
    if kind in "OUS":
        if kind == "O" and any(isinstance(value, numbers.Real) and not isinstance(
                value, (bool, np.bool_, np.datetime64, np.timedelta64)) for value in array):
            # pandas would read the numbers as nanoseconds, not as the seconds they are
            raise ValueError(f"{name} mixes numbers (seconds since the epoch) with other "
                             f"times; give one kind")
        pandas = _pandas("parsing timestamps")
        strings = pandas.Series(array)
        missing = strings.isna().to_numpy()  # empty cells, "NA": not "values that do not parse"
        if missing.any():
            raise ValueError(f"{name} has {int(missing.sum())} missing values (first at row "
                             f"{int(np.flatnonzero(missing)[0])}); every event needs one")
        parsed = pandas.to_datetime(strings, errors="coerce", utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            # pandas infers one format from the first value: ISO 8601 times of another
            # precision or offset ("2020-01-01 10:00" after "2020-01-01") would not fit it
            iso = pandas.to_datetime(strings, errors="coerce", utc=True, format="ISO8601")
            if not iso.isna().any():
                parsed, bad = iso, iso.isna().to_numpy()
        if bad.any():
            raise ValueError(f"{name}: {int(bad.sum())} values do not parse as times, e.g. "
                             f"{array[bad][:3].tolist()}")
        # in pandas' unit, checked against the nanosecond range like any datetime64
        return _times_ns(parsed.dt.tz_localize(None).to_numpy(), name)
    raise TypeError(f"{name} must be datetimes, numbers (seconds since the epoch) or strings, "
                    f"got dtype {array.dtype}")


def _ns_from(times: np.ndarray, reference: int) -> np.ndarray:
    """``times - reference`` (int64 nanoseconds) as float64, exact where the int64
    difference is: times at both ends of the range (1677 and 2262) are 2**64 ns apart, which
    int64 wraps around to a small number of the wrong sign."""
    difference = times - np.int64(reference)
    if times.size == 0 or max(int(times.max()) - reference, reference - int(times.min())) < 2**63:
        return difference.astype(np.float64)  # no difference wrapped (the usual case)
    wrapped = (difference < 0) != (times < reference)
    result = difference.astype(np.float64)
    if wrapped.any():
        result[wrapped] = times[wrapped].astype(np.float64) - float(reference)
    return result


def _seconds(value, name: str) -> float:
    """A duration in seconds: a number of seconds, a timedelta or a pandas string like '30D'."""
    if isinstance(value, np.timedelta64):  # before Real: NumPy registers it as an integer
        if np.datetime_data(value.dtype)[0] in ("Y", "M"):
            raise ValueError(f"{name} in months or years has no fixed length; give it in "
                             f"days (e.g. '30D'), got {value!r}")
        seconds = value / np.timedelta64(1, "s")
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return check.check_float(value, name, minimum=0.0, strict=True)
    elif hasattr(value, "total_seconds"):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:  # pandas reads a bare number as nanoseconds: a unit must be said
            raise ValueError(f"{name} as a string needs a unit, like '30D' or '12h' (or give "
                             f"the number {value.strip()} as seconds), got {value!r}")
        try:
            seconds = _pandas("parsing durations").Timedelta(value).total_seconds()
        except ValueError as error:
            raise ValueError(f"{name} must be seconds, a timedelta or a duration string like "
                             f"'30D' or '12h', got {value!r} ({error})") from None
    else:
        raise TypeError(f"{name} must be seconds, a timedelta or a string like '30D', "
                        f"got {type(value).__name__}")
    return check.check_float(float(seconds), name, minimum=0.0, strict=True)


# ---------------------------------------------------------------------------- Interactions
class Interactions:
    """(user, item) pairs combined from an event log, with their id maps.

    Build it with ``Interactions.from_events`` (DataFrame, Table, mapping or file path),
    ``Interactions.from_arrays`` or ``Interactions.from_matrix``. Immutable: ``add``,
    ``filter``, ``k_core`` and ``weighted`` return new objects.

    Attributes: ``matrix`` (CSR users x items, float32, weighted), ``transpose`` (items x
    users), ``user_ids`` / ``item_ids`` (``IdMap``), ``counts`` and ``timestamps`` (events and
    latest event time of each stored pair, aligned with ``matrix.data``). ``len()`` is the
    number of stored pairs (``nnz``).
    """

    def __init__(self, user_ids: IdMap, item_ids: IdMap, indptr, indices, values, counts,
                 times=None, *, settings: dict | None = None):
        self.user_ids, self.item_ids = user_ids, item_ids
        self._indptr = np.asarray(indptr, dtype=np.int64)
        self._indices = np.asarray(indices, dtype=np.int32)
        self._values = np.asarray(values, dtype=np.float32)  # the matrix's dtype: no copy
        self._counts = np.asarray(counts, dtype=np.int32)
        self._times = None if times is None else np.asarray(times, dtype=np.int64)
        self._settings = dict(_DEFAULT_SETTINGS, **(settings or {}))
        self._matrix: sp.csr_matrix | None = None
        self._transpose: sp.csr_matrix | None = None
        self.dropped_events = 0  # events of unknown ids left out (from_events unknown="drop")
        if self._indptr.size != len(user_ids) + 1 or self._indptr[-1] != self._indices.size:
            raise ValueError("inconsistent pair arrays")

    def __getstate__(self) -> dict:
        """Copies and pickles leave the cached matrices out: rebuilt on first use, they share
        the copy's own arrays (a pickled cache would come back as separate, writable arrays,
        and make the pickle up to twice as large)."""
        return {**self.__dict__, "_matrix": None, "_transpose": None}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_events(cls, source: Any, *, user: str = "user", item: str = "item",
                    weight: str | None = None, timestamp: str | None = None,
                    event: str | None = None, combine: str = "sum",
                    event_weights: Mapping[Any, float] | None = None, half_life: Any = None,
                    reference_time: Any = None, weighting: str = "none",
                    user_ids: IdMap | None = None, item_ids: IdMap | None = None,
                    unknown: str = "extend", read_options: dict[str, Any] | None = None,
                    **weighting_options: Any) -> "Interactions":
        """Read an event log from a pandas/polars DataFrame, a pyarrow Table, a mapping of
        column name -> array, or a .csv/.tsv/.parquet path, or a folder of Parquet files
        (a dataset written in parts; hive partition folders included).

        ``user``/``item`` name the id columns; ``weight`` a numeric column (1 per event without
        it); ``timestamp`` a time column (datetimes, strings pandas can parse, or numbers as
        seconds since the epoch); ``event`` a column of event types, each weighted by
        ``event_weights`` (e.g. ``{"view": 1, "click": 3, "purchase": 10}``; every type in the
        data must be listed). ``half_life`` (seconds, a timedelta or e.g. ``"30D"``) multiplies
        each event by 0.5^((reference_time - t) / half_life), the reference being the latest
        event unless given. ``combine`` ("sum", "max", "last", "count") merges a pair's events
        ("max" ranks +0.0 above -0.0); ``weighting`` and its options see ``weighted``.
        ``user_ids`` / ``item_ids`` start from existing maps; ids they lack are appended
        (``unknown="extend"``), their events dropped (``"drop"``; ``dropped_events`` counts
        them), or rejected (``"raise"``). ``read_options`` go to the CSV/Parquet reader; without
        ``read_dictionary`` there, Parquet id columns stored as dictionary codes are read as
        dictionaries (string ids held by Arrow are numbered natively either way). The user and
        item ids of a CSV file are its text: a column of integers written plainly (``7``,
        ``-3``, no leading zero, sign or space) gives int ids, any other column string ids, so
        ``007`` and ``7`` are two ids (read as text too where ``user_ids``/``item_ids`` hold
        strings; a ``dtype`` or ``converters`` in ``read_options`` overrides this).
        """
        # the ids of a CSV file are read as text; matched to maps of string ids they stay text
        keep_text = [column for column, ids in ((user, user_ids), (item, item_ids))
                     if isinstance(ids, IdMap) and len(ids) and ids.kind == "string"]
        columns = _columns_of(source, {"user": user, "item": item, "weight": weight,
                                       "timestamp": timestamp, "event": event},
                              dict(read_options or {}), keep_text)
        try:
            result = cls._from_columns(
                columns, combine=combine, event_weights=event_weights, half_life=half_life,
                reference_time=reference_time, weighting=weighting, user_ids=user_ids,
                item_ids=item_ids, unknown=unknown, **weighting_options)
        except (TypeError, ValueError) as error:  # a missing id, a word for a weight, ...
            if type(error) not in (TypeError, ValueError):
                raise
            # the messages name the role ("weights has ..."): the column it was read from too
            message = str(error)
            role = {"users": user, "items": item, "weights": weight, "timestamps": timestamp,
                    "events": event}.get(message.split(" ", 1)[0].rstrip(":"))
            if role is not None:
                message = f"{message} (column {role!r})"
            if isinstance(source, (str, os.PathLike)):
                message = f"{os.fspath(source)!r}: {message}"  # which file
            if message == str(error):
                raise
            raise type(error)(message) from error
        # remembered so that add(more_events) reads new data the same way
        # as plain values: the settings are saved as JSON (a NumPy integer label is not)
        result._settings["columns"] = {"user": _plain(user), "item": _plain(item),
                                       "weight": _plain(weight), "timestamp": _plain(timestamp),
                                       "event": _plain(event)}
        return result

    @classmethod
    def from_arrays(cls, users: ArrayLike, items: ArrayLike, weights: ArrayLike | None = None,
                    timestamps: ArrayLike | None = None, events: ArrayLike | None = None, *,
                    combine: str = "sum", event_weights: Mapping[Any, float] | None = None,
                    half_life: Any = None, reference_time: Any = None, weighting: str = "none",
                    user_ids: IdMap | None = None, item_ids: IdMap | None = None,
                    unknown: str = "extend", **weighting_options: Any) -> "Interactions":
        """The same as ``from_events`` from one array (or pandas Series) per column."""
        return cls._from_columns(
            {"user": users, "item": items, "weight": weights, "timestamp": timestamps,
             "event": events}, combine=combine, event_weights=event_weights,
            half_life=half_life, reference_time=reference_time, weighting=weighting,
            user_ids=user_ids, item_ids=item_ids, unknown=unknown, **weighting_options)

    @classmethod
    def _from_columns(cls, columns: dict, *, combine, event_weights, half_life,
                      reference_time, weighting, user_ids, item_ids, unknown,
                      **weighting_options) -> "Interactions":
        """The ingestion itself. Columns are popped from ``columns`` once used, so that the
        source's buffers (e.g. a Parquet table read here) can be freed before grouping."""
        check.check_choice(combine, "combine", COMBINE)
        check.check_choice(unknown, "unknown", UNKNOWN)
        for name, column in columns.items():  # None: an optional column not given
            if (column is not None or name in ("user", "item")) and not _is_column(column):
                raise TypeError(f"{name}s must be a 1-d sequence with one value per event "
                                f"(a list, an array, a Series), got {type(column).__name__} "
                                f"{column!r:.40}")
        n = len(columns["user"])
        lengths = {f"{name}s": len(column) for name, column in columns.items()
                   if column is not None and name != "user"}
        if any(length != n for length in lengths.values()):
            raise ValueError(f"every column needs one value per event: users has {n}, "
                             f"{', '.join(f'{k} has {v}' for k, v in lengths.items())}")
        if n == 0:
            raise _EmptyLog("the event log is empty: no events to build interactions from")
        weights = columns.pop("weight")
        values = None if weights is None else _numeric(weights, "weights")
        del weights
        events = columns.pop("event")
        if events is not None:
            type_weight = _event_type_weights(events, event_weights)
            values = type_weight if values is None else values * type_weight
        elif event_weights is not None:
            raise ValueError("event_weights needs an event column (event=...)")
        del events
        timestamps = columns.pop("timestamp")
        times = None if timestamps is None else _times_ns(timestamps)
        del timestamps
        settings = {"combine": combine, "event_weights": None if event_weights is None else
                    [[_plain(key), float(value)] for key, value in event_weights.items()]}
        if half_life is not None:
            if times is None:
                raise ValueError("half_life needs timestamps (timestamp=...)")
            seconds = _seconds(half_life, "half_life")
            if reference_time is None:
                reference = int(times.max())
            elif np.ndim(reference_time) != 0:  # not the first of several, silently
                raise TypeError(f"reference_time must be one time (a datetime, a string or "
                                f"seconds since the epoch), got {type(reference_time).__name__} "
                                f"of shape {np.shape(reference_time)}")
            else:
                reference = int(_times_ns(np.atleast_1d(np.asarray(reference_time)),
                                          "reference_time")[0])
            with np.errstate(over="ignore"):  # events after the reference: weights > 1
                decay = np.exp2(_ns_from(times, reference) / (seconds * _NS_PER_SECOND))
            values = decay if values is None else values * decay
            settings.update(half_life=seconds, reference_time=reference,
                            fixed_reference=reference_time is not None)
        elif reference_time is not None:
            raise ValueError("reference_time needs half_life (it is the time the decay counts "
                             "from)")
        extend = unknown == "extend"
        (user_map, user_codes), (item_map, item_codes) = _both(
            lambda: _map_ids(columns["user"], user_ids, "users", extend),
            lambda: _map_ids(columns["item"], item_ids, "items", extend), parallel=n >= 1 << 20)
        keep = None
        if unknown != "extend":
            lost = (user_codes < 0) | (item_codes < 0)
            if lost.any() and unknown == "raise":
                raise ValueError(f"{int(lost.sum())} events have users or items the given id "
                                 f"maps lack (unknown='raise'), e.g. user "
                                 f"{np.asarray(columns['user'])[lost][:1].tolist()} item "
                                 f"{np.asarray(columns['item'])[lost][:1].tolist()}")
            keep = ~lost if lost.any() else None
        columns.clear()
        if keep is not None:
            user_codes, item_codes = user_codes[keep], item_codes[keep]
            values = None if values is None else values[keep]
            times = None if times is None else times[keep]
        result = cls._grouped(user_map, item_map, user_codes, item_codes, values, times, None,
                              settings)
        result = result.weighted(weighting, **weighting_options)
        result.dropped_events = 0 if keep is None else int((~keep).sum())
        return result

    @classmethod
    def from_matrix(cls, matrix: SparseMatrix, *, user_ids: IdMap | None = None,
                    item_ids: IdMap | None = None) -> "Interactions":
        """Wrap a copy of a users x items sparse matrix (ids 0..n-1 unless maps are
        given)."""
        given = matrix
        matrix = check.check_csr(sp.csr_matrix(check.to_csr(matrix, "matrix"))
                                 if sp.issparse(matrix) else matrix,
                                 "matrix", dtype=np.float32)
        rows, cols = matrix.shape
        for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
            if ids is not None and not isinstance(ids, IdMap):
                raise TypeError(f"{name} must be an IdMap, got {type(ids).__name__}")
        user_ids = user_ids if user_ids is not None else IdMap._distinct(np.arange(rows))
        item_ids = item_ids if item_ids is not None else IdMap._distinct(np.arange(cols))
        if len(user_ids) != rows or len(item_ids) != cols:
            raise ValueError(f"id maps of {len(user_ids)} users and {len(item_ids)} items do "
                             f"not fit a matrix of shape {matrix.shape}")
        # copies of what the caller's CSR matrix shares with it (float32 with int32
        # indices: every array), as an Interactions never changes; the rest is already new
        if given.format == "csr":
            matrix = check.unshared_csr(matrix, given)
        return cls(user_ids, item_ids, np.asarray(matrix.indptr, dtype=np.int64),
                   np.asarray(matrix.indices, dtype=np.int32), matrix.data,
                   np.ones(matrix.nnz, np.int32))

    @classmethod
    def _grouped(cls, user_map, item_map, users, items, values, times, multiplicity, settings):
        indptr, indices, combined, counts, pair_times = group_events(
            users, items, values, times, multiplicity, n_users=len(user_map),
            n_items=len(item_map), combine=settings["combine"])
        if not check.all_finite(combined):  # finite weights, or their sum, beyond float32
            pair = int(np.flatnonzero(~np.isfinite(combined))[0])
            user = user_map.ids[int(np.searchsorted(indptr, pair, side="right")) - 1]
            raise ValueError(f"the combined weight of user {_plain(user)!r} and item "
                             f"{_plain(item_map.ids[indices[pair]])!r} overflows float32 (values "
                             f"are stored as float32: at most "
                             f"{float(np.finfo(np.float32).max):.4g}); scale the weights "
                             f"down (with half_life: or check reference_time, after which "
                             f"weights grow without bound)")
        return cls(user_map, item_map, indptr, indices, combined, counts, pair_times,
                   settings=settings)

    # ------------------------------------------------------------------ growing
    def add(self, source: Any = None, **columns_or_arrays: Any) -> "Interactions":
        """These pairs plus new events: ``add(df, user=..., item=..., ...)`` like
        ``from_events`` or ``add(users=..., items=..., weights=..., timestamps=..., events=...)``
        like ``from_arrays``. New users and items are appended to the id maps (existing ints
        stay); pairs seen before are combined with the new events by the same rule. With a
        half-life and an automatic reference time, older values are decayed to the new
        latest event."""
        options = {"combine": self._settings["combine"], "user_ids": self.user_ids,
                   "item_ids": self.item_ids, "unknown": "extend"}
        if source is not None:
            options.update(self._settings["columns"] or {})
        if self._settings["event_weights"] and (source is not None or "events" in columns_or_arrays):
            options["event_weights"] = {key: value for key, value in self._settings["event_weights"]}
        if self._settings["half_life"] is not None:
            options["half_life"] = self._settings["half_life"]
            if self._settings["fixed_reference"]:
                options["reference_time"] = np.datetime64(self._settings["reference_time"], "ns")
        if source is None:
            _check_added_arrays(columns_or_arrays)
        else:
            _check_added_columns(columns_or_arrays)
        options.update(columns_or_arrays)
        try:
            if source is not None:
                new = Interactions.from_events(source, **options)
            else:
                new = Interactions.from_arrays(options.pop("users"), options.pop("items"),
                                               **options)
        except _EmptyLog:  # no new events: these pairs, as they are
            return self
        values = self._values
        settings = dict(self._settings)
        if settings["half_life"] is not None and not settings["fixed_reference"]:
            shift = new._settings["reference_time"] - settings["reference_time"]
            scale = np.exp2(-abs(shift) / (settings["half_life"] * _NS_PER_SECOND))
            if shift > 0:  # the new events are later: decay the old pairs to the new reference
                values = values * scale
                settings["reference_time"] = new._settings["reference_time"]
            else:  # the new events are older: decay them to the old reference
                new._values = new._values * scale
        old_users = np.repeat(np.arange(len(self.user_ids)), np.diff(self._indptr))
        new_users = np.repeat(np.arange(len(new.user_ids)), np.diff(new._indptr))
        times = None
        if self._times is not None and new._times is not None:
            times = np.concatenate([self._times, new._times])
        elif self._times is not None or new._times is not None:
            raise ValueError("both the old and the new events need timestamps, or neither")
        return Interactions._grouped(
            new.user_ids, new.item_ids, np.concatenate([old_users, new_users]),
            np.concatenate([self._indices, new._indices]),
            np.concatenate([values, new._values]), times,
            np.concatenate([self._counts, new._counts]), settings,
        ).weighted(settings["weighting"], **settings["weighting_options"])

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        """(users, items): the shape of ``matrix``."""
        return len(self.user_ids), len(self.item_ids)

    @property
    def n_users(self) -> int:
        """The number of users (rows)."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """The number of items (columns)."""
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        """Stored (user, item) pairs."""
        return int(self._indices.size)

    @property
    def n_events(self) -> int:
        """Events combined into the pairs."""
        return int(self._counts.sum())

    def __len__(self) -> int:
        """``nnz``: the stored (user, item) pairs, the rows of ``to_frame`` and the length of
        ``counts``, ``values`` and a ``subset`` mask (``n_events`` counts the events they
        combine). An Interactions without pairs is falsy."""
        return self.nnz

    @property
    def counts(self) -> np.ndarray:
        """Events of each stored pair, aligned with ``matrix.data`` (read-only)."""
        return check.read_only_view(self._counts)

    @property
    def timestamps(self) -> np.ndarray | None:
        """Latest event time of each stored pair (datetime64[ns], aligned with
        ``matrix.data``, read-only), or None without timestamps."""
        if self._times is None:
            return None
        return check.read_only_view(self._times.view("datetime64[ns]"))

    @property
    def values(self) -> np.ndarray:
        """Combined values before weighting (float32, aligned with ``matrix.data``;
        read-only: ``matrix`` may share them)."""
        return check.read_only_view(self._values)

    @property
    def user_codes(self) -> np.ndarray:
        """The user int of each stored pair (int64, aligned with ``matrix.data``)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self._indptr))

    @property
    def matrix(self) -> sp.csr_matrix:
        """Users x items CSR, float32, weighted; explicit zeros are kept. Read-only: it
        shares its arrays with these Interactions (copy it to modify it); its values are
        read-only arrays, its index arrays are not (implicit's kernels, which users hand it
        to, take only writable buffers)."""
        if self._matrix is None:
            data = _weigh(self, self._settings["weighting"], self._settings["weighting_options"])
            data = data.astype(np.float32, copy=False).view()
            data.flags.writeable = False
            # the index arrays stay writable: implicit's kernels take only writable buffers
            self._matrix = sp.csr_matrix((data, self._indices, self._indptr), shape=self.shape)
        return self._matrix

    @property
    def transpose(self) -> sp.csr_matrix:
        """Items x users CSR, float32 (the transpose of ``matrix``)."""
        if self._transpose is None:
            transpose = self.matrix.T.tocsr()
            transpose.data.flags.writeable = False  # cached for every later call, as matrix
            self._transpose = transpose
        return self._transpose

    def to_frame(self) -> pandas.DataFrame:
        """The pairs as a pandas DataFrame: user, item (external ids), value (weighted),
        count and, with timestamps, timestamp."""
        pandas = _pandas("to_frame")
        frame = pandas.DataFrame({
            "user": self.user_ids.ids[self.user_codes], "item": self.item_ids.ids[self._indices],
            "value": self.matrix.data, "count": self._counts})
        if self._times is not None:
            frame["timestamp"] = self.timestamps
        return frame

    def __repr__(self) -> str:
        settings = self._settings
        return (f"Interactions({self.n_users} users x {self.n_items} items, {self.nnz} pairs "
                f"from {self.n_events} events, combine={settings['combine']!r}, "
                f"weighting={settings['weighting']!r}"
                f"{', with timestamps' if self._times is not None else ''})")

    # ------------------------------------------------------------------ transforms
    def weighted(self, weighting: str = "none", **options: Any) -> "Interactions":
        """The same pairs with another weighting of ``matrix``:

        - ``none``: the combined values; ``binary``: 1; ``count``: events per pair;
        - ``log1p``: log(1 + value);
        - ``bm25`` (options ``k1=100`` >= 0, ``b=0.8`` in [0, 1]) and ``tfidf``: as
          ``implicit.nearest_neighbours.bm25_weight`` / ``tfidf_weight`` on the users x items
          matrix (idf = log(n_users) - log1p(users of the item)); both need non-negative
          values, and a zero value weighs 0 under bm25 (where implicit's formula can give
          0/0). An item held by every user, or by all but one, has idf <= 0: its weights
          are then 0 or negative, and ``ALS`` refuses negative values under its default
          confidence.
        """
        _check_weighting(weighting, options)
        result = self._replace()
        # plain values (np.float32(1.5) -> 1.5): the settings are saved as JSON
        result._settings.update(weighting=weighting, weighting_options={
            name: _plain(value) for name, value in options.items()})
        _weigh(result, weighting, options)  # validate now, not at the first .matrix
        return result

    def filter(self, *, min_user_count: int = 1, min_item_count: int = 1,
               compact: bool = True) -> "Interactions":
        """Keep the pairs of users with at least ``min_user_count`` pairs and items with at
        least ``min_item_count`` pairs (counted once, before filtering). ``compact`` drops
        users and items left without pairs from the id maps (the rest keep their order)."""
        min_user_count = check.check_int(min_user_count, "min_user_count", minimum=1)
        min_item_count = check.check_int(min_item_count, "min_item_count", minimum=1)
        compact = check.check_flag(compact, "compact")
        keep = self._pair_mask(min_user_count, min_item_count)
        result = self.subset(keep)
        return result._compact() if compact else result

    def k_core(self, k: Integer, *, compact: bool = True) -> "Interactions":
        """The largest subset in which every user and every item has at least ``k`` pairs
        (filters repeated until nothing changes). ``compact`` drops users and items left
        without pairs from the id maps, so the remaining rows and columns are renumbered
        (their order kept); ``compact=False`` keeps every id at its old row and column."""
        k = check.check_int(k, "k", minimum=1)
        compact = check.check_flag(compact, "compact")
        current = self
        while True:
            keep = current._pair_mask(k, k)
            if keep.all():
                break
            current = current.subset(keep)
        return current._compact() if compact else current

    def subset(self, keep: ArrayLike) -> "Interactions":
        """The pairs where the boolean mask ``keep`` (one per stored pair) is True; same id
        maps."""
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (self.nnz,):
            raise ValueError(f"keep must be a boolean mask of shape ({self.nnz},), got "
                             f"{keep.dtype} {keep.shape}")
        kept_per_user = np.bincount(self.user_codes[keep], minlength=self.n_users)
        indptr = np.concatenate([[0], np.cumsum(kept_per_user)])
        return self._replace(indptr=indptr, indices=self._indices[keep],
                             values=self._values[keep], counts=self._counts[keep],
                             times=None if self._times is None else self._times[keep])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to one file (versioned; arrays stored so ``load(mmap=True)`` maps them)."""
        from .persistence import save_model

        arrays: dict[str, np.ndarray] = {
            "indptr": self._indptr, "indices": self._indices, "values": self._values,
            "counts": self._counts, "user_ids": _saveable(self.user_ids.ids, "user ids"),
            "item_ids": _saveable(self.item_ids.ids, "item ids")}
        if self._times is not None:
            arrays["times"] = self._times
        save_model(path, "Interactions", self._settings, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> "Interactions":
        """Read a file written by ``save`` (``mmap=True`` maps the arrays read-only)."""
        from .persistence import read_model

        header, arrays = read_model(path, mmap=mmap)
        path = os.fspath(path)
        if header.get("model") != "Interactions":
            raise ValueError(f"{path!r} holds a saved {header.get('model')!r}, not Interactions: "
                             f"read it with recfuse.load(path)")
        settings = _saved_settings(path, header.get("params", {}))
        try:
            user_ids, item_ids = (_saved_id_map(path, arrays, name)
                                  for name in ("user_ids", "item_ids"))
            _check_saved_pairs(path, arrays, len(user_ids), len(item_ids))
            return cls(user_ids, item_ids, arrays["indptr"], arrays["indices"], arrays["values"],
                       arrays["counts"], arrays.get("times"), settings=settings)
        except KeyError as error:
            raise ValueError(f"{path!r} is missing the array {error}") from error

    # ------------------------------------------------------------------ helpers
    def _replace(self, **arrays) -> "Interactions":
        parts = {"indptr": self._indptr, "indices": self._indices, "values": self._values,
                 "counts": self._counts, "times": self._times}
        parts.update(arrays)
        result = Interactions(self.user_ids, self.item_ids, parts["indptr"],
                              parts["indices"], parts["values"], parts["counts"],
                              parts["times"], settings=self._settings)
        result._settings["weighting_options"] = dict(self._settings["weighting_options"])
        return result

    def _pair_mask(self, min_user: int, min_item: int) -> np.ndarray:
        per_user = np.diff(self._indptr)
        per_item = np.bincount(self._indices, minlength=self.n_items)
        return (np.repeat(per_user >= min_user, per_user)) & (per_item[self._indices] >= min_item)

    def _compact(self) -> "Interactions":
        per_user = np.diff(self._indptr)
        users = np.flatnonzero(per_user > 0)
        items = np.flatnonzero(np.bincount(self._indices, minlength=self.n_items) > 0)
        new_item = np.full(self.n_items, -1, dtype=np.int64)
        new_item[items] = np.arange(items.size)
        indptr = np.concatenate([[0], np.cumsum(per_user[users])])
        result = Interactions(IdMap._distinct(self.user_ids.ids[users]),
                              IdMap._distinct(self.item_ids.ids[items]),
                              indptr, new_item[self._indices], self._values, self._counts,
                              self._times, settings=self._settings)
        return result  # item order is kept, so rows stay sorted


_DEFAULT_SETTINGS: dict[str, Any] = {
    "combine": "sum", "weighting": "none", "weighting_options": {}, "half_life": None,
    "reference_time": None, "fixed_reference": False, "columns": None, "event_weights": None}


def _saved_settings(path: str, settings: dict) -> dict:
    """The settings of an Interactions file's header, checked as the constructors check
    them (ValueError naming the file)."""
    unknown = sorted(set(settings) - set(_DEFAULT_SETTINGS))
    try:
        if unknown:
            raise ValueError(f"unknown settings {unknown}; expected among "
                             f"{sorted(_DEFAULT_SETTINGS)}")
        full = dict(_DEFAULT_SETTINGS, **settings)
        check.check_choice(full["combine"], "combine", COMBINE)
        if not isinstance(full["weighting_options"], dict):
            raise TypeError(f"weighting_options must be an object, got "
                            f"{type(full['weighting_options']).__name__}")
        _check_weighting(full["weighting"], full["weighting_options"])
        _check_saved_decay(full)
        columns = full["columns"]
        if columns is not None and not (isinstance(columns, dict)
                                        and set(columns) == set(_COLUMN_ROLES)):
            raise TypeError(f"columns must be an object with the keys {list(_COLUMN_ROLES)}, "
                            f"got {columns!r:.80}")
        event_weights = full["event_weights"]
        if event_weights is not None:
            if not (isinstance(event_weights, list) and all(
                    isinstance(pair, list) and len(pair) == 2
                    and isinstance(pair[0], (str, int, float)) for pair in event_weights)):
                raise TypeError(f"event_weights must be a list of [event type, weight] pairs, "
                                f"got {event_weights!r:.80}")
            for key, value in event_weights:
                check.check_float(value, f"event_weights[{key!r}]")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r} has a malformed header: {error}") from None
    if columns is not None:  # JSON writes a tuple label (a MultiIndex column) as a list
        settings = dict(settings, columns={role: tuple(label) if isinstance(label, list)
                                           else label for role, label in columns.items()})
    return settings


def _check_saved_decay(settings: dict) -> None:
    """half_life (None, or seconds > 0 with the reference time in int ns) and
    fixed_reference of saved settings."""
    if settings["half_life"] is not None:
        check.check_float(settings["half_life"], "half_life", minimum=0.0, strict=True)
        check.check_int(settings["reference_time"], "reference_time")
    elif settings["reference_time"] is not None:
        check.check_int(settings["reference_time"], "reference_time")
    if not isinstance(settings["fixed_reference"], bool):
        raise TypeError(f"fixed_reference must be true or false, got "
                        f"{settings['fixed_reference']!r}")


_COLUMN_ROLES = ("user", "item", "weight", "timestamp", "event")


def _saved_id_map(path: str, arrays: dict, name: str) -> IdMap:
    """The IdMap of an Interactions file's member ``name``; a forged one (ids repeated, not
    1-d, ...) is a ValueError naming the file and the member."""
    ids = arrays[name]
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "U" and ids.size and ids.dtype.itemsize:
        # a code point past U+10FFFF (only a forged file holds one) fails deep in NumPy's
        # and pandas' str conversions as a SystemError
        codes = np.ascontiguousarray(ids).view(
            np.dtype(np.uint32).newbyteorder(ids.dtype.byteorder))
        if codes.max() > 0x10FFFF:
            raise ValueError(f"{path!r}: the member {name!r} holds a character past U+10FFFF")
    try:
        return IdMap(ids)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path!r}: the member {name!r} is not a valid id map: {error}") \
            from error


def _check_saved_pairs(path: str, arrays: dict, n_users: int, n_items: int) -> None:
    """The pair arrays of an Interactions file: a CSR layout of n_users rows whose columns
    are items of the map, one value, count (and time) per pair, each a 1-d array."""
    nnz = check.check_csr_arrays(arrays["indptr"], arrays["indices"], n_users, n_items,
                                 f"the pairs of {path!r}")
    shapes = {name: np.shape(arrays[name]) for name in ("indices", "values", "counts", "times")
              if name in arrays}
    if any(shape != (nnz,) for shape in shapes.values()):
        raise ValueError(f"the pairs of {path!r} must be 1-d arrays of {nnz} entries each, got "
                         f"shapes {shapes}")
    values, counts = np.asarray(arrays["values"]), np.asarray(arrays["counts"])
    if values.dtype.kind not in "fiu":
        raise ValueError(f"the pairs of {path!r}: values must be finite real numbers, got "
                         f"dtype {values.dtype}")
    if not check.all_finite(values):
        raise ValueError(f"the pairs of {path!r}: values must be finite real numbers, got "
                         f"{int((~np.isfinite(values)).sum())} NaN/inf")
    if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 1):
        raise ValueError(f"the pairs of {path!r}: counts must be integers >= 1 (events per "
                         f"pair), got dtype {counts.dtype}"
                         + (f", min {counts.min()}" if counts.dtype.kind in "iu" else ""))
    if "times" in arrays:
        times = np.asarray(arrays["times"])
        if times.dtype.kind not in "iu":
            raise ValueError(f"the pairs of {path!r}: times must be integers (ns since the "
                             f"epoch), got dtype {times.dtype}")
        if times.size and (int(times.min()) <= np.iinfo(np.int64).min or
                           int(times.max()) > np.iinfo(np.int64).max):
            raise ValueError(f"the pairs of {path!r}: times must be ns since the epoch within "
                             f"int64, NaT (its smallest value) excluded")


def _both(first, second, *, parallel: bool):
    """(first(), second()), on two threads when ``parallel``: hashing one id column releases
    the GIL for long stretches (pandas, Arrow), so the two columns overlap on two cores."""
    if not parallel:
        return first(), second()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        other = pool.submit(second)
        return first(), other.result()


def _plain(value):
    """A NumPy scalar as the Python value (JSON-able settings)."""
    return value.item() if isinstance(value, np.generic) else value


def _map_ids(values, id_map: IdMap | None, name: str, extend: bool) -> tuple[IdMap, np.ndarray]:
    """(map, int32 codes); ids the given map lacks are appended (``extend``) or coded -1."""
    if id_map is None:
        return IdMap.from_values(values, name)
    if not isinstance(id_map, IdMap):
        raise TypeError(f"{name} id map must be an IdMap, got {type(id_map).__name__}")
    _, uniques = _factorize(values, name)  # the same checks: missing values, mixed types
    if len(id_map):
        _check_same_kind(id_map.kind, uniques, name)
    extended = id_map.extend(uniques) if extend else id_map
    array = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    return extended, extended._lookup(array).astype(np.int32)


ADDED_ARRAYS = ("users", "items", "weights", "timestamps", "events")  # add() without a source


class _EmptyLog(ValueError):
    """An event log of no events: from_events refuses it, add() of none returns the log."""


ADDED_COLUMNS = ("user", "item", "weight", "timestamp", "event", "read_options")


def _check_added_columns(columns: dict) -> None:
    """``add(source, ...)``: the names of the source's columns (and read_options); the
    settings (combine, weighting, half_life, id maps, ...) are the log's own, and were
    applied to the new events only."""
    settings = sorted(set(columns) - set(ADDED_COLUMNS))
    if settings:
        raise TypeError(f"add() takes the source's column names ({', '.join(ADDED_COLUMNS)}) "
                        f"and keeps the log's own settings; got {settings} (to change them, "
                        f"build a new log with from_events, or use weighted())")


def _check_added_arrays(arrays: dict) -> None:
    """``add(users=..., items=..., ...)``: the names from_arrays takes its columns by."""
    unknown = sorted(set(arrays) - set(ADDED_ARRAYS))
    missing = [name for name in ("users", "items") if name not in arrays]
    if unknown or missing:
        raise TypeError(f"add() without a source takes the arrays users=, items= and optionally "
                        f"weights=, timestamps=, events= (as from_arrays); got "
                        f"{sorted(arrays)}" + (f", missing {missing}" if missing else ""))


def _event_type_weights(events, event_weights) -> np.ndarray:
    if event_weights is None:
        raise ValueError("an event column needs event_weights, e.g. "
                         "{'view': 1, 'click': 3, 'purchase': 10}")
    if not isinstance(event_weights, Mapping):
        raise TypeError(f"event_weights must be a mapping type -> weight, got "
                        f"{type(event_weights).__name__}")
    codes, types = _factorize(events, "events")
    unknown = [t for t in types.tolist() if t not in event_weights]
    if unknown:
        raise ValueError(f"event types {unknown[:10]} have no weight in event_weights "
                         f"(known: {list(event_weights)})")
    table = np.array([check.check_float(event_weights[t], f"event_weights[{t!r}]")
                      for t in types.tolist()], dtype=np.float64)
    return table[codes]


def _check_weighting(weighting, options: dict) -> None:
    """A weighting name of WEIGHTING and the options it takes (bm25: k1 >= 0, 0 <= b <= 1)."""
    check.check_choice(weighting, "weighting", WEIGHTING)
    allowed = {"bm25": {"k1", "b"}}.get(weighting, set())
    if set(options) - allowed:
        raise TypeError(f"weighting {weighting!r} takes options {sorted(allowed)}, got "
                        f"{sorted(options)}")
    for name in sorted(options):
        check.check_float(options[name], name, minimum=0.0)
    # b > 1 would make short rows' length norm negative, and a pair's weight 0/0 or < 0
    if "b" in options and float(options["b"]) > 1:
        raise ValueError(f"b must be <= 1 (the share of the length norm), got {options['b']}")


def _weigh(interactions: Interactions, weighting: str, options: dict) -> np.ndarray:
    """The stored values of ``matrix`` under ``weighting`` ("none": the values themselves,
    else computed in float64)."""
    if weighting == "none":
        return interactions._values
    values = interactions._values.astype(np.float64)
    if weighting == "binary":
        return np.ones_like(values)
    if weighting == "count":
        return interactions._counts.astype(np.float64)
    if weighting == "log1p":
        if values.size and values.min() <= -1:
            raise ValueError(f"log1p weighting needs values > -1, got min {values.min()}")
        return np.log1p(values)
    n_users = max(interactions.n_users, 1)
    idf = np.log(n_users) - np.log1p(np.bincount(interactions._indices,
                                                 minlength=interactions.n_items))
    if weighting == "tfidf":
        if values.size and values.min() < 0:
            raise ValueError(f"tfidf weighting needs non-negative values, got min {values.min()}")
        return np.sqrt(values) * idf[interactions._indices]
    if weighting != "bm25":  # weighted() and load() refuse other names first
        raise ValueError(f"weighting must be one of {WEIGHTING}, got {weighting!r}")
    if values.size and values.min() < 0:
        raise ValueError(f"bm25 weighting needs non-negative values, got min {values.min()}")
    k1 = check.check_float(options.get("k1", 100.0), "k1", minimum=0.0)
    b = check.check_float(options.get("b", 0.8), "b", minimum=0.0)
    row_sums = np.bincount(interactions.user_codes, weights=values,
                           minlength=interactions.n_users)
    average = row_sums.mean() if row_sums.size and row_sums.mean() != 0 else 1.0
    length_norm = (1.0 - b) + b * row_sums / average
    per_pair_norm = np.repeat(length_norm, np.diff(interactions._indptr))
    # With values >= 0 and 0 <= b <= 1 the denominator is 0 only for a zero value (k1 = 0,
    # or a row of zeros): its weight is 0, the limit, where implicit's formula gives 0/0.
    denominator = k1 * per_pair_norm + values
    ratio = np.divide(values * (k1 + 1.0), denominator, out=np.zeros_like(values),
                      where=denominator > 0)
    return ratio * idf[interactions._indices]


def _saveable(ids: np.ndarray, name: str) -> np.ndarray:
    if ids.dtype.kind in "biufUM":
        return ids
    if ids.dtype.kind == "O" and _id_kind(ids) in ("string", "empty"):
        # NumPy's fixed-width strings drop trailing NULs: "a\0" would be read back as "a"
        ending = next((value for value in ids.tolist() if value.endswith("\x00")), None)
        if ending is not None:
            raise ValueError(f"{name} ending in NUL ('\\x00') cannot be saved: the file's "
                             f"fixed-width strings drop trailing NULs, e.g. {ending!r}")
        return ids.astype(str)
    raise ValueError(f"{name} of type {_id_kind(ids)} cannot be saved without pickle; "
                     "use integer or string ids")

"""Model files: one .npz archive with a JSON header, read without pickle, written atomically.

Layout: ``__recfuse__`` holds the UTF-8 JSON header ``{"format": "recfuse", "version": N,
"model": class name, "params": {...}}`` as uint8; every other member is a plain array.
Members are stored uncompressed and each array's data starts at a 64-byte aligned offset of
the file (padding in the zip entry's extra field), so ``read_model(path, mmap=True)`` maps
them read-only straight from the file, without a copy; any reader of .npz files (``np.load``)
still reads them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import secrets
import stat
import struct
import tokenize
import warnings
import zlib
import zipfile
from typing import Any, cast

import numpy as np

from ._validation import caller_stacklevel, check_flag, check_model_file, check_path
from ._typing import PathLike
from .interactions import Interactions

ALIGNMENT = 64
_PADDING_EXTRA_ID = 0xD935  # the id zipalign uses for alignment padding

FORMAT_VERSION = 1
HEADER_KEY = "__recfuse__"


def save_model(path, model_name: str, params: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write a model file: ``arrays`` and a JSON header (format, version, ``model_name``,
    ``params``) in one .npz, atomically; ``read_model`` reads it back."""
    path = check_path(path)
    header = {"format": "recfuse", "version": FORMAT_VERSION, "model": model_name, "params": params}
    encoded = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            _write_aligned_npz(handle, {HEADER_KEY: encoded, **arrays})

    atomic_write(path, write)


def atomic_write(path, write) -> None:
    """``write(temporary)`` into a new file beside ``path``, then rename it over ``path``:
    readers see the old file or the new one, never half of one. The temporary file is gone
    afterwards, also when ``write`` fails (the error propagates). A ``path`` that is a folder,
    or in a folder that does not exist, is refused before anything is written. The file gets
    the permissions a plain ``open(path, "w")`` would give it: those of the file it replaces,
    or for a new file the default (0o666 less the umask; not mkstemp's owner-only 0o600). A
    ``path`` that is a symbolic link is written through: the file it points to is replaced,
    the link stays; one that names a FIFO, a device or a socket is refused (OSError), which
    a rename would replace with a regular file. While it is written, the temporary file of
    a replacement is owner-only (0o600): never more open than the file it replaces. The new
    file's data reach the disk (fsync) before the rename, so that a power loss leaves the
    old file or the whole new one, not an empty one."""
    target = check_path(path)  # bytes too: the temporary's name is a str
    if not target:
        raise FileNotFoundError("cannot write to an empty path; give the path of a file")
    if target.endswith(os.sep) or (os.altsep and target.endswith(os.altsep)):
        raise IsADirectoryError(f"{target!r} ends with a path separator, so it names a folder; "
                                "give the path of a file to write")
    if os.path.islink(target):
        target = os.path.realpath(target)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target!r} is a folder; give the path of a file to write")
    if os.path.exists(target) and not os.path.isfile(target):
        raise OSError(f"{target!r} is {_node_kind(target)}, not a regular file: give the path "
                      f"of a file to write")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {target!r}: the folder {directory!r} does not "
                                f"exist")
    replacing = os.path.isfile(target)
    temporary = _new_file(directory, 0o600 if replacing else 0o666)
    try:
        write(temporary)
        if replacing:
            with contextlib.suppress(OSError):  # best effort (a file system without modes)
                os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))
        _sync(temporary)
        os.replace(temporary, target)
        _sync(directory)  # the rename itself
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _sync(path: str) -> None:
    """fsync a file or folder, where the platform and file system allow it (best effort)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a folder on Windows
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _node_kind(path: str) -> str:
    """What the file system node at ``path`` is, in words ("a FIFO", "a device", ...)."""
    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _new_file(directory: str, mode: int) -> str:
    """A new empty file ``.recfuse-*.tmp`` in ``directory``, created (exclusively: never
    through a link planted at its name) with ``mode`` less the umask."""
    while True:
        name = os.path.join(directory, f".recfuse-{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            return name
        except FileExistsError:  # pragma: no cover - 64 random bits taken
            continue


def _write_aligned_npz(handle, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz whose array data start at ALIGNMENT-byte offsets of the file."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.asanyarray(array)
            if array.dtype.hasobject:
                raise ValueError(f"array {name!r} holds Python objects; they cannot be saved "
                                 "without pickle")
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.CRC = info.compress_size = info.file_size = 0  # rewritten after the data
            # The .npy header pads the data to a multiple of 64 bytes from the member's start,
            # so aligning the member's start aligns the data.
            base = len(info.FileHeader(zip64=True)) + 4
            padding = (-(handle.tell() + base)) % ALIGNMENT
            info.extra = struct.pack("<HH", _PADDING_EXTRA_ID, padding) + bytes(padding)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array) if
                                          not array.flags.f_contiguous else array,
                                          allow_pickle=False)


# The largest ratio of a deflated member's size to its compressed size that deflate can give
# (~1032:1, for long runs of one byte): a member that declares more is lying about its size.
_DEFLATE_MAX_RATIO = 1032


def member_name(filename: str) -> str:
    """A zip member's array name: its file name less ".npy"."""
    return filename[:-4] if filename.endswith(".npy") else filename


def _read_npy_header(path: str, name: str, fp) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran, dtype) of the .npy header at ``fp``'s position; ValueError naming the
    member when it is not one."""
    try:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(fp)
    # a header numpy cannot parse: ValueError, or from the tokenizer of its fallback parser
    # (an unclosed bracket) TokenError / SyntaxError
    except (ValueError, SyntaxError, tokenize.TokenError) as error:
        raise ValueError(f"{path!r}: member {name!r} is not a .npy array ({error})") from error
    if any(isinstance(side, bool) or side < 0 for side in shape):
        raise ValueError(f"{path!r}: member {name!r} declares a malformed shape {shape}")
    if dtype.hasobject:
        raise ValueError(f"{path!r}: member {name!r} holds Python objects (pickle); refused")
    if dtype.itemsize == 0:  # its data size would be 0 for any shape (NumPy makes it 1 a value)
        raise ValueError(f"{path!r}: member {name!r} declares dtype {dtype}, of no size")
    return shape, fortran, dtype


def _data_size(shape: tuple, dtype: np.dtype) -> int:
    """Bytes of an array's data, in Python integers (no int64 overflow for a forged shape)."""
    return math.prod(shape) * dtype.itemsize


def _check_zip_entry(path: str, name: str, info: zipfile.ZipInfo, size: int) -> None:
    """The sizes the zip directory gives a member are possible ones (from the directory
    only, nothing read): a stored member within the file, a deflated one's compressed bytes
    within the file and its size not beyond deflate's ratio. Other compressions (bzip2,
    lzma) are refused: save never writes them, and their ratios bound nothing, so a forged
    size would be allocated before any read."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{path!r}: member {name!r} is compressed with zip method "
                         f"{info.compress_type}; recfuse files store members uncompressed "
                         f"(or deflated)")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size or \
                info.header_offset + info.compress_size > size:
            raise ValueError(f"{path!r} is truncated or damaged: member {name!r} declares "
                             f"{info.file_size} bytes, more than the file holds")
    elif info.header_offset + info.compress_size > size:
        raise ValueError(f"{path!r} is truncated or damaged: member {name!r} declares "
                         f"{info.compress_size} compressed bytes, more than the file holds")
    elif info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
        raise ValueError(f"{path!r} is damaged: member {name!r} declares {info.file_size} "
                         f"bytes from {info.compress_size} compressed ones")


# Bytes read per call when a member is read into its array (as np.load reads, in pieces).
_READ_CHUNK = 1 << 20


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 size: int) -> np.ndarray:
    """One .npy member as an array, its header read once: a forged or truncated header is a
    ValueError naming the member before anything is allocated for it (np.load allocates the
    declared size first, then parses each header a second time)."""
    name = member_name(info.filename)
    _check_zip_entry(path, name, info, size)
    # ZipFile.open's stubs say IO[bytes]; reading a member gives a ZipExtFile (readinto)
    with cast(zipfile.ZipExtFile, archive.open(info)) as member:
        shape, fortran, dtype = _read_npy_header(path, name, member)
        nbytes = _data_size(shape, dtype)
        declared = member.tell() + nbytes
        if declared > info.file_size:
            raise ValueError(f"{path!r} is truncated or damaged: member {name!r} declares an "
                             f"array of shape {shape} and dtype {dtype} ({declared} bytes with "
                             f"its header), the member holds {info.file_size}")
        array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
        if nbytes:
            view = array.reshape(-1).view(np.uint8).data  # the bytes, as a memoryview
            done = 0
            while done < nbytes:
                got = member.readinto(view[done:done + _READ_CHUNK])
                if not got:
                    raise ValueError(f"{path!r} is truncated or damaged: member {name!r} "
                                     f"ends after {done} of its {nbytes} bytes of data")
                done += got
    return array.T if fortran else array


def _read_members(path: str, archive: zipfile.ZipFile, size: int) -> dict[str, np.ndarray]:
    """Every member of an open archive as an array (``_read_member``), by member name."""
    return {member_name(info.filename): _read_member(path, archive, info, size)
            for info in archive.infolist()}


def _map_members(path: str, handle, archive: zipfile.ZipFile,
                 size: int) -> dict[str, np.ndarray]:
    """Each stored .npy member of an open archive (of ``size`` bytes) as a read-only view of
    one memory map of the whole file (one map, so one file descriptor, whatever the number
    of members)."""
    arrays = {}
    # mapped through the open handle, not the path: a save that renames a new file over
    # ``path`` meanwhile must not give arrays of that file at offsets read from this one
    # (a zip archive is never empty: its end record alone is 22 bytes)
    whole = np.memmap(handle, dtype=np.uint8, mode="r", shape=(size,))
    for info in archive.infolist():
        name = member_name(info.filename)
        if name == HEADER_KEY:
            continue
        _check_zip_entry(path, name, info, size)
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path!r}: member {name!r} is compressed and cannot be mapped; "
                             "load it with mmap=False")
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path!r}: the zip entry of {name!r} is damaged")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        shape, fortran, dtype = _read_npy_header(path, name, handle)
        offset = handle.tell()
        nbytes = _data_size(shape, dtype)
        # the member's own bytes, not the file's: past them lie other members and the zip
        # directory, which a forged shape would otherwise map as values
        end = min(start + info.file_size, size)
        if offset + nbytes > end:
            raise ValueError(f"{path!r} is truncated or damaged: member {name!r} declares an "
                             f"array of shape {shape} and dtype {dtype} (bytes up to "
                             f"{offset + nbytes}), its member ends at {end}")
        _check_stored_crc(path, name, whole, start, info)
        if nbytes == 0:
            arrays[name] = np.empty(shape, dtype=dtype)
            continue
        arrays[name] = whole[offset:offset + nbytes].view(dtype).reshape(
            shape, order="F" if fortran else "C")
    return arrays


def _check_stored_crc(path: str, name: str, whole, start: int, info: zipfile.ZipInfo) -> None:
    """The CRC-32 of a stored member's bytes (from ``start``, its .npy header included, in
    ``whole``, the file's map) is the one its zip entry records, as zipfile checks when it
    reads a member: a mapped model is not one a damaged byte silently changed. One pass over
    the member, about 3 GB/s here, and its pages stay in the page cache for the maps."""
    crc = 0
    if info.file_size:
        crc = zlib.crc32(whole[start:start + info.file_size].data)
    if crc != info.CRC:
        raise ValueError(f"{path!r} is damaged: member {name!r} fails its CRC-32 check")


# A header is a few hundred bytes of JSON (settings and names, never data).
_HEADER_MAX_BYTES = 16 << 20
# What deflated members may expand to, all together: recfuse writes its members stored, and
# a third party's np.savez_compressed file of factors or ids compresses a few times at most,
# while a forged one (an unused member, say) could claim 1032 times the file.
_INFLATED_MAX_RATIO, _INFLATED_MAX_EXTRA = 64, 64 << 20


def _check_inflated_sizes(path: str, infos: dict[str, zipfile.ZipInfo], size: int) -> None:
    """A header (where there is one) of a header's size, and deflated members that do not expand past
    ``_INFLATED_MAX_RATIO`` times the file's ``size`` (plus ``_INFLATED_MAX_EXTRA``): checked
    from the zip directory, before anything is inflated."""
    header = infos[HEADER_KEY].file_size if HEADER_KEY in infos else 0
    if header > _HEADER_MAX_BYTES:
        _malformed(path, f"{header} bytes; a header holds at most {_HEADER_MAX_BYTES}")
    inflated = sum(info.file_size for info in infos.values()
                   if info.compress_type == zipfile.ZIP_DEFLATED)
    if inflated > _INFLATED_MAX_RATIO * size + _INFLATED_MAX_EXTRA:
        raise ValueError(f"{path!r}: its deflated members expand to {inflated} bytes, over "
                         f"{_INFLATED_MAX_RATIO} times the file's {size} (plus "
                         f"{_INFLATED_MAX_EXTRA}); refused as a likely zip bomb")


@contextlib.contextmanager
def _checked_archive(path: str, what: str):
    """``(handle, archive, size, infos)`` of the zip file at ``path`` (a checked path), its
    members checked before any is read: no name twice, no deflated member inflating past
    the file's bounds. Errors of the archive, here or in the body, are a ValueError naming
    the file as not a readable ``what``."""
    if not zipfile.is_zipfile(path):  # else np.load would try it as .npy or pickle
        raise ValueError(f"{path!r} is not a readable {what} (truncated or foreign): not a zip "
                         f"archive")
    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            size = os.fstat(handle.fileno()).st_size
            infos = {member_name(info.filename): info for info in archive.infolist()}
            if len(infos) != len(archive.infolist()):  # else the last of a name would win
                names = [member_name(info.filename) for info in archive.infolist()]
                twice = sorted({name for name in names if names.count(name) > 1})
                raise ValueError(f"{path!r} is not a readable {what}: it holds more than one "
                                 f"member named {twice[0]!r}")
            _check_inflated_sizes(path, infos, size)
            yield handle, archive, size, infos
    # RuntimeError: zipfile's answer to a member it cannot open (NotImplementedError for an
    # unknown compression method or strong encryption, RuntimeError for encryption)
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, RuntimeError) as error:
        raise ValueError(f"{path!r} is not a readable {what} (truncated or foreign): "
                         f"{error}") from error


def read_arrays(path, what: str = "model file") -> dict[str, np.ndarray]:
    """Every member of the .npz file at ``path`` as an array, by name, read with
    ``read_model``'s checks (declared sizes against the file, CRCs, no pickles) but no
    header: for other writers' files (implicit's ``save``)."""
    path = check_model_file(check_path(path))
    with _checked_archive(path, what) as (_, archive, size, _):
        return _read_members(path, archive, size)


def read_model(path, *, mmap: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Return (header, arrays); ValueError for a truncated, foreign or newer file, or one
    whose header is malformed ("version" not a positive integer, "model" not a string,
    "params" not an object).

    ``mmap=True`` returns the arrays as read-only memory maps of the file (no copy; each
    member is read once, for its CRC-32 check, and its pages stay cached); the file must not
    be changed while they are in use.
    """
    mmap = check_flag(mmap, "mmap")  # not read by its truth value ("no" would map)
    path = check_model_file(check_path(path))
    with _checked_archive(path, "recfuse model file") as (handle, archive, size, infos):
        if HEADER_KEY not in infos:
            raise ValueError(f"{path!r} is not a recfuse model file (no {HEADER_KEY} header)")
        # each header is read once: here with the member's data, or by _map_members
        if mmap:
            header_array = _read_member(path, archive, infos[HEADER_KEY], size)
            arrays = _map_members(path, handle, archive, size)
        else:
            arrays = _read_members(path, archive, size)
            header_array = arrays.pop(HEADER_KEY)
        text = header_array.tobytes().decode("utf-8")
    try:
        header = json.loads(text)
    # JSONDecodeError, Python's refusal of an integer of over 4,300 digits, or nesting
    # deeper than the interpreter's recursion limit
    except (ValueError, RecursionError) as error:
        _malformed(path, f"not JSON that can be read ({error})")
    if not isinstance(header, dict) or header.get("format") != "recfuse":
        raise ValueError(f"{path!r} is not a recfuse model file (bad header)")
    version = header.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {version!r}; this recfuse reads up to "
                         f"{FORMAT_VERSION}: upgrade recfuse")
    _check_header(path, header)
    return header, arrays


def _check_header(path: str, header: dict) -> None:
    """The fields every header has, of the right types; ValueError naming the field."""
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _malformed(path, f'"version" must be a positive integer, got {version!r:.60}')
    if not isinstance(header.get("model"), str):
        _malformed(path, f'"model" must be the name of a model class, got '
                         f'{header.get("model")!r:.60}')
    params = header.get("params", {})
    if not isinstance(params, dict):
        _malformed(path, f'"params" must be an object of parameter names and values, got '
                         f'{type(params).__name__} {params!r:.60}')


def _malformed(path: str, what: str):
    raise ValueError(f"{path!r} has a malformed header: {what}")


def _fall_back_from_unavailable_backend(path: str, params: dict, overrides: dict,
                                        family: str) -> None:
    """A model saved with an explicit backend that this machine lacks (trained on a GPU,
    served on a CPU host) is loaded with backend="auto" and a RuntimeWarning naming the
    reason, instead of a model whose every call fails; ``load(..., backend=...)`` chooses,
    and a backend it names that is not available here is a RuntimeError now, not at the
    first query. ``family``: the kernels the loaded model queries with."""
    from ._backend import BACKEND_NAMES, _probe

    if "backend" in overrides:
        chosen = overrides["backend"]
        if isinstance(chosen, str) and chosen in BACKEND_NAMES:
            info = _probe(chosen, family)[1]
            if not info.available:
                raise RuntimeError(f"backend {chosen!r} is not available: {info.detail}")
        return  # anything else: the model's constructor names what is wrong with it
    saved = params.get("backend")
    if saved not in BACKEND_NAMES:
        return
    # the saved backend's row only: the whole table (backends()) would import every optional
    # backend (numba, cupy) on the first load, ~0.3 s for a model saved with backend="cpu"
    info = _probe(saved, family)[1]
    if not info.available:
        warnings.warn(f"{path!r} was saved with backend={saved!r}, which is not available here "
                      f"({info.detail}); loaded with backend='auto' (pass backend=... to "
                      f"recfuse.load to choose one)", RuntimeWarning,
                      stacklevel=caller_stacklevel())
        params["backend"] = "auto"


# Typed Any: which model (ALS, SVD, SVDpp, ExplicitALS, BPR or MLPScorer) is known only once
# the file is read; a union would make callers narrow it before every use.
def load(path: PathLike, *, mmap: bool = False, **overrides: Any) -> Any:
    """Load any recfuse model saved with ``model.save(path)`` (a factor model or an
    ``MLPScorer``).

    ``mmap=True`` maps the stored arrays read-only instead of copying them (for serving:
    several processes share one copy in the page cache); each is checked against its
    CRC-32 as a copy is. ``overrides`` replace saved
    constructor parameters (e.g. ``backend="cpu"``). A parameter the stored model does not
    take, in the file's header or in ``overrides``, is a ValueError naming it. A model saved
    with a backend this machine lacks (``backend="cuda"`` on a host without a GPU) loads with
    ``backend="auto"`` and a RuntimeWarning, unless ``overrides`` name a backend; a backend
    named there that is not available here raises RuntimeError.
    """
    from .models.als import ALS
    from .models.bpr import BPR
    from .models.explicit_als import ExplicitALS
    from .models.sgd import SVD, SVDpp
    from .ranking import MLPScorer

    registry: dict[str, type[Any]] = {"ALS": ALS, "SVD": SVD, "SVDpp": SVDpp, "BPR": BPR,
                                      "ExplicitALS": ExplicitALS, "MLPScorer": MLPScorer}
    header, arrays = read_model(path, mmap=mmap)
    path = check_path(path)
    model_name = header["model"]
    if model_name == "Interactions":
        raise ValueError(f"{path!r} is an Interactions file: read it with "
                         f"recfuse.Interactions.load(path)")
    if model_name not in registry:
        raise ValueError(f"{path!r} holds an unknown model type {model_name!r}; this recfuse "
                         f"reads {sorted(registry)}")
    model_class = registry[model_name]
    accepted = _saved_params(model_class)
    params = dict(header.get("params", {}))
    unknown = sorted(set(params) - accepted)
    if unknown:
        _malformed(path, f'"params" name {unknown}, which {model_name} does not take; '
                         f'expected among {sorted(accepted)}')
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise ValueError(f"{path!r} holds a saved {model_name} model, which takes no {unknown}; "
                         f"its parameters are {sorted(accepted)}")
    for name, array in arrays.items():
        if array.dtype.kind not in "iuf":  # bool, complex, text, dates, records: not a model's
            raise ValueError(f"{path!r}: the array {name!r} holds {array.dtype} values; a "
                             f"{model_name} file holds real numbers")
    _fall_back_from_unavailable_backend(path, params, overrides,
                                        "mlp" if model_name == "MLPScorer" else "topk")
    saved = dict(params)
    params.update(overrides)
    try:
        try:
            model = model_class._from_saved(params, arrays)
        except (TypeError, ValueError):
            as_saved = _as_saved(model_class, saved, arrays) if overrides else None
            if as_saved is not None:  # e.g. factors=3 for tables of 4: named as the override
                _refuse_fit_shaped_overrides(as_saved, saved, overrides)
            raise
        _refuse_fit_shaped_overrides(model, saved, overrides)
        return model
    except KeyError as error:
        raise ValueError(f"{path!r} is missing the array {error}") from error
    except (TypeError, ValueError) as error:
        # the file's header or arrays: a ValueError naming the file (with overrides given,
        # the error may be about one of them, the caller's argument: raised as it is)
        if overrides or str(error).startswith(repr(path)):
            raise
        raise ValueError(f"{path!r} holds a saved {model_name} that cannot be loaded: "
                         f"{error}") from error


def _as_saved(model_class, saved: dict, arrays: dict):
    """The model as the file holds it (its own parameters, no overrides), or None when it
    cannot be built (the file's own error is then the one to raise)."""
    try:
        return model_class._from_saved(saved, arrays)
    except (KeyError, TypeError, ValueError):
        return None


def _refuse_fit_shaped_overrides(model, saved: dict, overrides: dict) -> None:
    """A ValueError naming each override of a parameter that shaped the saved fit
    (``_fit_shaped``: factors, dtype, biased, ...) to another value than the file's: the
    tables would be read as another model's (an SVD loaded with biased=False kept its biases
    and dropped μ from every score), as ``set_params`` refuses on a fitted model. ``model``:
    a loaded model of the file's class (with or without the overrides), for those names."""
    shaped = model._fit_shaped() if hasattr(model, "_fit_shaped") else {}
    names = [name for name in shaped if name in overrides]
    if not names:
        return
    as_saved = type(model)(**saved)  # the saved values, checked as the constructor checks
    wanted = type(model)(**{**saved, **overrides})
    changed = [name for name in names if getattr(as_saved, name) != getattr(wanted, name)]
    if changed:
        made = "; ".join(f"{name} shaped the saved {shaped[name]}, made with "
                         f"{name}={saved[name]!r}" for name in changed)
        raise ValueError(f"cannot load with {', '.join(f'{n}={overrides[n]!r}' for n in changed)}: "
                         f"{made}; refit a model with the new value instead")


def load_folder(folder: PathLike, *, mmap: bool = False) -> tuple[Any, Interactions]:
    """The model and the training data of a model folder (``recfuse train``'s output:
    ``model.npz`` and ``train.npz``): ``(model, interactions)``, whose ``user_ids`` and
    ``item_ids`` name the model's rows by the ids of the event log. ``mmap`` as ``load``."""
    from .interactions import Interactions

    folder = check_path(folder, "folder", "a model folder")
    if os.path.isfile(folder):  # not "expected 'FILE/model.npz'": a path inside a file
        parent = os.path.dirname(folder) or "."
        holder = f"; pass the folder that holds it, {parent!r}" if os.path.isfile(
            os.path.join(parent, "model.npz")) else ""
        raise FileNotFoundError(f"no model in {folder!r}: it is a file, not a model folder "
                                f"(made by `recfuse train DATA -o FOLDER`){holder}")
    model_path = os.path.join(folder, "model.npz")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no model in {folder!r}: expected {model_path!r} "
                                "(made by `recfuse train DATA -o FOLDER`)")
    train_path = os.path.join(folder, "train.npz")
    if not os.path.isfile(train_path):  # else Interactions.load says "no model file at ..."
        raise FileNotFoundError(f"{folder!r} has a model but no training data: expected "
                                f"{train_path!r} (written beside model.npz by `recfuse train`)")
    model, train = load(model_path, mmap=mmap), Interactions.load(train_path)
    _check_trained_on(model, train, folder)
    return model, train


def _check_trained_on(model, train: Interactions, folder: str) -> None:
    """Refuse a folder whose model was not trained on its train.npz: a ``recfuse train``
    into it renames its files one after another, so a reader between two renames would get
    a model and ids of two trainings (rows naming other users: silently wrong answers)."""
    from .models.als import ALS
    from .models.bpr import BPR
    from .models.explicit_als import ExplicitALS
    from ._validation import sorted_rows
    from .models.sgd import SVD, SVDpp

    if isinstance(model, ALS):
        seen = model._user_items
    elif isinstance(model, BPR):
        seen = model._tables()[3]
    elif isinstance(model, (SVD, SVDpp, ExplicitALS)):
        fitted = model._require_fitted()
        seen = fitted.seen.to_scipy(fitted.item_factors.shape[0])
    else:
        raise ValueError(f"{folder!r}: model.npz holds a saved {type(model).__name__}, not a "
                         f"factor model that `recfuse train` writes")
    matrix = train.matrix
    user_factors, item_factors = model.user_factors, model.item_factors
    # load refuses a factor model file without both tables (check_factors)
    assert user_factors is not None and item_factors is not None
    sizes = (user_factors.shape[0], item_factors.shape[0])

    def columns(csr):  # each row's columns in order (sorted copies only where they are not)
        return sorted_rows(csr, add_repeats=False).indices

    same = sizes == matrix.shape and (seen is None or (
        seen.shape == matrix.shape and np.array_equal(seen.indptr, matrix.indptr)
        and np.array_equal(columns(seen), columns(matrix))))
    if not same:
        raise ValueError(f"{folder!r}: model.npz ({sizes[0]} users x {sizes[1]} items) was "
                         f"not trained on train.npz ({matrix.shape[0]} x {matrix.shape[1]}): "
                         f"files of two trainings (one writing the folder now?); read it again "
                         f"once `recfuse train` is done")


# Header params that are not constructor arguments: a scorer's layer layout.
_LAYOUT_PARAMS = {"MLPScorer": {"activations", "biases"}}


def _saved_params(model_class) -> set:
    """The parameter names a file of ``model_class`` may hold: its constructor's settings
    (the arguments with a default) and its layout fields."""
    settings = {name for name, parameter in inspect.signature(model_class).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    return settings | _LAYOUT_PARAMS.get(model_class.__name__, set())

"""Adversarial hunt: fuzzing the file readers (recfuse.load, Interactions.load,
persistence.load_folder, ranking.load_scorer, MLPScorer.from_onnx at the file level).

Contract used (persistence.py's module and read_model/load docstrings, Interactions.load,
load_folder, load_scorer, from_onnx; the hunt brief): every file either loads into a valid
object, whose recommend / predict / score then answer, or is refused with a ValueError /
OSError / TypeError naming the problem (ValueErrors about a file name the file). Never a
crash of the interpreter, never a hang (a FIFO, /dev/zero), never unpickling, and never a
large allocation driven by a size the file declares: sizes are checked against the file
before anything is allocated ("a forged or truncated header is a ValueError naming the
member before anything is allocated for it"; deflated members are bounded by deflate's
1032:1 ratio). Whatever may crash runs in a child interpreter.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import types
import warnings
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse.persistence import load_folder
from recfuse.ranking import MLPScorer, load_scorer

KINDS = ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS", "MLPScorer", "Interactions"]
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- fixtures and helpers


def _build(folder: str) -> None:
    """A small valid file of each kind in ``folder`` (KIND.npz), and a model folder
    ``folder/trained`` (model.npz + train.npz, as `recfuse train -o` writes them)."""
    implicit = sp.random(7, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
    implicit.data[:] = 1 + np.arange(implicit.nnz) % 3
    rng, w = np.random.default_rng(0), np.random.default_rng(3)
    rated = (np.repeat(np.arange(6), 3), rng.integers(0, 5, 18), rng.integers(1, 6, 18) * 1.0)
    models = {
        "ALS": recfuse.ALS(factors=3, iterations=2, backend="cpu", random_state=0).fit(implicit),
        "BPR": recfuse.BPR(factors=3, iterations=2, random_state=0).fit(implicit),
        "SVD": recfuse.SVD(factors=3, epochs=2, random_state=0).fit(*rated),
        "SVDpp": recfuse.SVDpp(factors=3, epochs=2, random_state=0).fit(*rated),
        "ExplicitALS": recfuse.ExplicitALS(factors=3, iterations=2, random_state=0).fit(*rated),
        "MLPScorer": MLPScorer([
            (w.standard_normal((4, 3)).astype(np.float32), w.standard_normal(4), "relu"),
            (w.standard_normal((1, 4)).astype(np.float32), None, "sigmoid")])}
    for name, model in models.items():
        model.save(os.path.join(folder, f"{name}.npz"))
    events = pd.DataFrame({"user": list("abcabdcd"), "item": [1, 2, 3, 3, 1, 2, 1, 4],
                           "weight": [1.0, 2, 3, 4, 5, 6, 7, 8]})
    log = recfuse.Interactions.from_events(events)
    log.save(os.path.join(folder, "Interactions.npz"))
    trained = os.path.join(folder, "trained")
    os.mkdir(trained)
    recfuse.ALS(factors=2, iterations=2, backend="cpu", random_state=0).fit(
        log.matrix).save(os.path.join(trained, "model.npz"))
    log.save(os.path.join(trained, "train.npz"))
    other = recfuse.Interactions.from_events(events.assign(item=[2, 1, 3, 3, 1, 2, 1, 4]))
    other.save(os.path.join(folder, "other_train.npz"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fuzz"))
    _build(folder)
    return types.SimpleNamespace(dir=folder, path=lambda kind: os.path.join(folder, f"{kind}.npz"))


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _zip(path, members, compression=zipfile.ZIP_STORED) -> None:
    """Write ``members`` (a dict, or (name, bytes) pairs: duplicates allowed) as a zip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in (members.items() if isinstance(members, dict) else members):
                archive.writestr(name, data)


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)
    return out.getvalue()


def _raw_npy(descr, shape, data: bytes = b"") -> bytes:
    """A version 1.0 .npy member with any header text numpy would write for these."""
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    text += " " * ((-(10 + len(text) + 1)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + data


def _header(path) -> dict:
    return json.loads(np.load(io.BytesIO(_members(path)["__recfuse__.npy"])).tobytes())


def _header_member(text: bytes) -> bytes:
    return _npy(np.frombuffer(text, np.uint8))


def _zip_bytes(entries) -> bytes:
    """A zip archive written by hand: entries of (name, payload, method, crc, size), so that
    the sizes the directory declares may be anything."""
    out, central = bytearray(), bytearray()
    for name, payload, method, crc, size in entries:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                           len(payload), size, len(encoded), 0) + encoded + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(payload), size, len(encoded), 0, 0, 0, 0, 0,
                               offset) + encoded
    directory = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                                 len(central), directory, 0)
    return bytes(out)


def _stored(name: str, data: bytes) -> tuple:
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def _deflated_run(prefix: bytes, n: int, fill: int = 0) -> tuple:
    """(raw deflate stream, crc, size) of ``prefix`` + ``n`` bytes ``fill`` (n a multiple of
    1 MiB), made in a fraction of a second: one full-flushed 1 MiB block, repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = bytes([fill]) * (1 << 20)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(n >> 20):
        crc = zlib.crc32(chunk, crc)
    return head + block * (n >> 20) + compressor.flush(), crc, len(prefix) + n


def _load(kind: str, path, mmap: bool = False):
    if kind == "Interactions":
        return recfuse.Interactions.load(path, mmap=mmap)
    return recfuse.load(path, mmap=mmap)


def _answers(obj) -> list:
    """What an object answers: a log's matrix and ids, a scorer's scores, a factor model's
    recommend (and predict) on a few ids and a Recommender's answer."""
    if isinstance(obj, recfuse.Interactions):
        return [obj.matrix.toarray(), np.asarray(obj.user_ids.ids), np.asarray(obj.item_ids.ids)]
    if isinstance(obj, MLPScorer):
        return [obj.score(np.random.default_rng(5).standard_normal((6, obj.input_width))
                          .astype(np.float32))]
    users, items = obj.user_factors.shape[0], obj.item_factors.shape[0]
    out = []
    for user in range(min(users, 4)):
        out += list(obj.recommend(user, k=3))
    if hasattr(obj, "predict"):
        out.append(obj.predict(np.arange(min(users, 4)), np.arange(min(users, 4)) % items))
    out.append(recfuse.Recommender(obj).recommend(0, k=3).ids)
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(a, b))


def _outcome(kind: str, path, mmap: bool, reference) -> str:
    """'same' (loads, answers as the original), 'refused' (ValueError naming the file,
    OSError or TypeError), or what went wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obj = _load(kind, path, mmap)
    except ValueError as error:
        return "refused" if str(path) in str(error) else f"unnamed ValueError: {error}"
    except (OSError, TypeError):
        return "refused"
    except BaseException as error:  # noqa: BLE001 - what the readers must never raise
        return f"load raised {type(error).__name__}: {str(error)[:200]}"
    try:
        got = _answers(obj)
    except BaseException as error:  # noqa: BLE001
        return f"loaded, then {type(error).__name__}: {str(error)[:200]}"
    return "same" if _same(got, reference) else "different"


_CHILD_PRELUDE = f"""
import sys, os, json, resource, warnings
sys.path.insert(0, {HERE!r})
import numpy as np
warnings.simplefilter("ignore")
import recfuse
import test_file_fuzz_hunt as _hunt
globals().update({{k: v for k, v in vars(_hunt).items() if not k.startswith('__')}})

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
def limit_address_space(extra=1 << 30):
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + extra, resource.RLIM_INFINITY))
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def report(value):
    print("RESULT " + json.dumps(value), flush=True)
"""


def _child(code: str, timeout: int = 120):
    """Run ``code`` (after the prelude, which imports this module) in a fresh interpreter:
    a crash there fails the test, not pytest. Returns what it reported."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run([sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-3000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-2000:] + run.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------- byte-level mutations


_mutation = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]),
                               st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                     min_size=1, max_size=4)


def _mutate(blob: bytes, steps) -> bytes:
    out = bytearray(blob)
    for op, where, value in steps:
        at = int(where * len(out)) if out else 0
        if op == "flip" and out:
            out[at] ^= 1 << (value % 8)
        elif op == "set" and out:
            out[at] = value
        elif op == "insert":
            out[at:at] = bytes([value]) * (1 + value % 8)
        elif op == "delete":
            del out[at:at + 1 + value % 8]
        elif op == "cut":
            del out[at:]
    return bytes(out)


@pytest.mark.parametrize("kind", KINDS)
def test_byte_mutations_load_the_same_or_are_refused(files, kind, tmp_path):
    """Flipped, set, inserted, deleted bytes and cuts of a whole file (hypothesis, 50 per
    kind, both mmap modes, in a child): the same answers or a refusal, nothing else."""
    result = _child(f"""
        from hypothesis import given, settings, HealthCheck, strategies as st
        kind, source, path = {kind!r}, {files.path(kind)!r}, {str(tmp_path / "m.npz")!r}
        blob = open(source, "rb").read()
        reference = _answers(_load(kind, source))
        bad = []
        @settings(max_examples=50, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(_mutation)
        def run(steps):
            open(path, "wb").write(_mutate(blob, steps))
            for mmap in (False, True):
                outcome = _outcome(kind, path, mmap, reference)
                if outcome not in ("same", "refused"):
                    bad.append((steps, mmap, outcome))
        run()
        report(bad[:5])
    """)
    assert result == [], result


@pytest.mark.parametrize("kind", KINDS)
def test_member_mutations_behind_a_valid_crc_load_or_are_refused(files, kind, tmp_path):
    """Bytes of one member mutated (its .npy header or data) and the zip rewritten with the
    right CRC-32, so the readers' own checks are reached (hypothesis, 40 per kind, both
    modes, in a child): a valid object that answers, or a refusal; no other error."""
    result = _child(f"""
        from hypothesis import given, settings, HealthCheck, strategies as st
        kind, source, path = {kind!r}, {files.path(kind)!r}, {str(tmp_path / "m.npz")!r}
        members = _members(source)
        names = sorted(members)
        reference = _answers(_load(kind, source))
        bad = []
        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(names), _mutation, st.booleans())
        def run(name, steps, in_header):
            changed = dict(members)
            blob = members[name]
            if in_header:  # aim at the .npy header (its first 128 bytes)
                blob = _mutate(blob[:128], steps) + blob[128:]
            else:
                blob = _mutate(blob, steps)
            changed[name] = blob
            _zip(path, changed)
            for mmap in (False, True):
                outcome = _outcome(kind, path, mmap, reference)
                if outcome not in ("same", "refused", "different"):
                    bad.append((name, steps, in_header, mmap, outcome))
        run()
        report(bad[:5])
    """)
    assert result == [], result


# ---------------------------------------------------------------- structure-aware forgeries


def _forgeries(array: np.ndarray) -> dict:
    """Members that must be refused, or load with exactly the original answers (they hold
    the same values: another integer width, byte order, layout)."""
    a = array
    out = {"complex": a.astype(np.complex64) if a.dtype.kind != "U" else np.arange(a.size) + 1j,
           "bool": a.astype(bool) if a.dtype.kind in "iuf" else np.ones(a.size, bool),
           "bytes": a.astype("S4"), "0-d": np.asarray(a.ravel()[0]), "3-d": a[None, None],
           "empty": a[:0], "fortran": np.asfortranarray(a),
           "structured": np.zeros(a.shape, dtype=[("x", a.dtype)]),
           "datetime": (a.astype("datetime64[ns]") if a.dtype.kind in "iu"
                        else np.arange(a.size).astype("datetime64[s]"))}
    if a.dtype.kind in "iuf":
        out["big-endian"] = a.astype(a.dtype.newbyteorder(">"))
    if a.shape and a.shape[0] > 1:
        out["a row short"] = a[:-1]
        out["a row more"] = np.concatenate([a, a[-1:]])
    if a.ndim == 2:
        out["a column more"] = np.concatenate([a, a[:, -1:]], 1)
    if a.dtype.kind == "f" and a.size:
        for label, value in (("NaN", np.nan), ("inf", np.inf)):
            b = a.copy()
            b.flat[0] = value
            out[label] = b
    if a.dtype.kind in "iu" and a.size:
        for label, value in (("-1", -1), ("2**40", 2 ** 40), ("int64 max", 2 ** 63 - 1)):
            b = a.astype(np.int64)
            b.flat[-1] = value
            out[label] = b
    if a.dtype.kind == "U":
        out["repeated ids"] = np.array([a[0]] * a.size)
        out["NaN id"] = np.array([np.nan] + list(range(a.size - 1)))
    return out


ID_MEMBERS = ("user_ids.npy", "item_ids.npy")
OTHER_IDS = ("complex", "bytes", "datetime", "2**40", "int64 max", "-1")


@pytest.mark.parametrize("kind", KINDS)
def test_every_member_forged_is_refused_or_answers_the_same(files, kind, tmp_path):
    """Each member of each kind swapped for another dtype (complex, bool, bytes, datetime,
    structured, big-endian), shape (0-d, 3-d, empty, a row or column more or less), layout,
    or values (NaN, inf, -1, 2**40, int64 max), and each member missing, both modes (in a
    child): refused, naming the file, or the original answers. (The scorer's first weight
    may legitimately change its input width, so its column forgery is left out; an
    Interactions id map may hold other distinct ids, as from_arrays takes them.)"""
    result = _child(f"""
        kind, source, path = {kind!r}, {files.path(kind)!r}, {str(tmp_path / "m.npz")!r}
        import io
        members = _members(source)
        reference = _answers(_load(kind, source))
        bad = []
        for name, blob in members.items():
            if name == "__recfuse__.npy":
                continue
            forged = _forgeries(np.load(io.BytesIO(blob)))
            if kind == "MLPScorer" and name == "weight_0.npy":
                forged.pop("a column more", None)
            forged["missing"] = None
            for label, array in forged.items():
                changed = dict(members)
                if array is None:
                    del changed[name]
                else:
                    changed[name] = _npy(array)
                _zip(path, changed)
                for mmap in (False, True):
                    outcome = _outcome(kind, path, mmap, reference)
                    # distinct ids of another kind (complex, bytes, dates) are valid ids
                    if outcome == "different" and name in ID_MEMBERS and label in OTHER_IDS:
                        continue
                    if outcome not in ("same", "refused"):
                        bad.append((name, label, mmap, outcome))
        report(bad[:8])
    """)
    assert result == [], result


def test_files_np_savez_writes_load_the_same(files, tmp_path):
    """A model file rewritten by np.savez (data at unaligned offsets) or np.savez_compressed
    loads with the same answers (mmap: unaligned maps; compressed members are refused for
    mmap=True, as documented)."""
    for kind in ("ALS", "SVDpp", "MLPScorer", "Interactions"):
        with np.load(files.path(kind)) as archive:
            arrays = {name: archive[name] for name in archive.files}
        reference = _answers(_load(kind, files.path(kind)))
        np.savez(tmp_path / "plain.npz", **arrays)
        np.savez_compressed(tmp_path / "packed.npz", **arrays)
        assert _outcome(kind, tmp_path / "plain.npz", False, reference) == "same"
        assert _outcome(kind, tmp_path / "plain.npz", True, reference) == "same"
        assert _outcome(kind, tmp_path / "packed.npz", False, reference) == "same"
        with pytest.raises(ValueError, match="compressed and cannot be mapped"):
            _load(kind, tmp_path / "packed.npz", mmap=True)


def test_duplicate_members_are_refused_in_both_modes(files, tmp_path):
    """Two members of one name (zip allows it; zipfile reads the last): refused in both
    modes rather than trusting either copy."""
    members = list(_members(files.path("ALS")).items())
    original = dict(members)["user_factors.npy"]
    doubled = np.load(io.BytesIO(original)) * 2
    _zip(tmp_path / "dup.npz", members + [("user_factors.npy", _npy(doubled))])
    for mmap in (False, True):
        with pytest.raises(ValueError, match="more than one member named 'user_factors'"):
            recfuse.load(tmp_path / "dup.npz", mmap=mmap)


# ---------------------------------------------------------------- the JSON header


def _with_header(files, kind: str, path, text: bytes) -> None:
    members = _members(files.path(kind))
    members["__recfuse__.npy"] = _header_member(text)
    _zip(path, members)


_BAD_HEADERS = {
    "not JSON": b"{format: recfuse}",
    "a list": b"[1, 2]",
    "empty": b"",
    "BOM": b"\xef\xbb\xbf{}",
    "UTF-16": json.dumps({"format": "recfuse"}).encode("utf-16"),
    "bad UTF-8": b'{"format": "recfuse\xff"}',
    "no format": b'{"version": 1, "model": "ALS", "params": {}}',
    "no version": b'{"format": "recfuse", "model": "ALS", "params": {}}',
    "version text": b'{"format": "recfuse", "version": "1", "model": "ALS", "params": {}}',
    "version 1.0": b'{"format": "recfuse", "version": 1.0, "model": "ALS", "params": {}}',
    "version 1e400": b'{"format": "recfuse", "version": 1e400, "model": "ALS", "params": {}}',
    "version true": b'{"format": "recfuse", "version": true, "model": "ALS", "params": {}}',
    "no model": b'{"format": "recfuse", "version": 1, "params": {}}',
    "model a list": b'{"format": "recfuse", "version": 1, "model": ["ALS"], "params": {}}',
    "model __class__": b'{"format": "recfuse", "version": 1, "model": "__class__"}',
    "model MLPRanker": b'{"format": "recfuse", "version": 1, "model": "MLPRanker"}',
    "params null": b'{"format": "recfuse", "version": 1, "model": "ALS", "params": null}',
    "params a list": b'{"format": "recfuse", "version": 1, "model": "ALS", "params": [1]}',
    "unknown param": b'{"format": "recfuse", "version": 1, "model": "ALS", "params": {"x": 1}}',
    "surrogate key": b'{"format": "recfuse", "version": 1, "model": "ALS", '
                     b'"params": {"\\ud800": 1}}',
    "factors 10**15": b'{"format": "recfuse", "version": 1, "model": "ALS", '
                      b'"params": {"factors": 1000000000000000}}',
    "alpha NaN": b'{"format": "recfuse", "version": 1, "model": "ALS", "params": {"alpha": NaN}}',
    "alpha 1e999": b'{"format": "recfuse", "version": 1, "model": "ALS", '
                   b'"params": {"alpha": 1e999}}',
    "5000-digit int": b'{"format": "recfuse", "version": 1, "model": "ALS", '
                      b'"params": {"factors": ' + b"9" * 5000 + b"}}",
    "num_threads 10**6": b'{"format": "recfuse", "version": 1, "model": "ALS", '
                         b'"params": {"num_threads": 1000000}}',
    "trailing data": b'{"format": "recfuse", "version": 1, "model": "ALS", "params": {}} x',
}


@pytest.mark.parametrize("label", sorted(_BAD_HEADERS))
def test_a_malformed_header_is_a_value_error_naming_the_file(files, label, tmp_path):
    path = tmp_path / "h.npz"
    _with_header(files, "ALS", path, _BAD_HEADERS[label])
    for mmap in (False, True):
        with pytest.raises(ValueError) as caught:
            recfuse.load(path, mmap=mmap)
        assert str(path) in str(caught.value), caught.value


def test_a_malformed_interactions_header_is_a_value_error_naming_the_file(files, tmp_path):
    """An Interactions header with settings of the wrong types, unknown or out of range."""
    path = tmp_path / "h.npz"
    good = _header(files.path("Interactions"))
    for change in ({"combine": 3}, {"combine": "median"}, {"weighting_options": []},
                   {"half_life": -1, "reference_time": 0}, {"half_life": 10.0},
                   {"fixed_reference": "no"}, {"columns": {"user": "u"}},
                   {"event_weights": [["view", "x"]]}, {"event_weights": {"a": 1}},
                   {"reference_time": 1.5}, {"unknown": 1}):
        header = dict(good, params={**good["params"], **change})
        _with_header(files, "Interactions", path, json.dumps(header).encode())
        with pytest.raises(ValueError) as caught:
            recfuse.Interactions.load(path)
        assert str(path) in str(caught.value), (change, caught.value)


@pytest.mark.parametrize("reader", ["load", "Interactions.load", "load_scorer"])
def test_a_deeply_nested_header_is_a_value_error_naming_the_file(files, reader, tmp_path):
    """100,000 nested brackets (200 kB) in the header: json.loads gives up with a
    RecursionError, which read_model does not catch (it catches ValueError only)."""
    kind = {"load": "ALS", "Interactions.load": "Interactions", "load_scorer": "MLPScorer"}[reader]
    call = {"load": recfuse.load, "Interactions.load": recfuse.Interactions.load,
            "load_scorer": load_scorer}[reader]
    path = tmp_path / "deep.npz"
    text = (b'{"format": "recfuse", "version": 1, "model": "' + kind.encode() +
            b'", "params": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}")
    _with_header(files, kind, path, text)
    with pytest.raises(ValueError) as caught:
        call(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- declared sizes


def test_huge_declared_shapes_are_refused_before_allocating(files, tmp_path):
    """A .npy member whose header declares (10**15, 3) float32 or (2**62, 2**62) while its
    data is 64 bytes, and an honest-looking member whose zip entry declares more bytes than
    the file holds: ValueError naming the file, both modes, under a 1 GiB address-space
    limit (nothing is allocated for the declared size)."""
    paths = {}
    for label, member in (("10**15 rows", _raw_npy("<f4", (10 ** 15, 3), bytes(64))),
                          ("2**62 squared", _raw_npy("<f4", (2 ** 62, 2 ** 62), bytes(64)))):
        for kind, name in (("ALS", "user_factors.npy"), ("Interactions", "indices.npy")):
            members = _members(files.path(kind))
            members[name] = member
            path = str(tmp_path / f"{kind}-{label}.npz".replace(" ", "_").replace("*", ""))
            _zip(path, members)
            paths[path] = kind
    _assert_each_refused_in_a_limited_child(paths)


@pytest.mark.parametrize("descr", ["|S0", "<U0"])
def test_a_zero_size_dtype_with_a_huge_shape_is_refused(files, descr, tmp_path):
    """A 2 kB file whose member declares dtype |S0 (or <U0) and shape (10**12,): its data
    size computes as 0 bytes, so the size check passes, but np.empty makes that dtype S1
    (U1) and asks for 10**12 elements: MemoryError (with 3*10**8 elements Interactions.load
    peaks at ~5 GB RSS hashing the ids). Expected: a ValueError naming the file, both modes,
    before allocating."""
    paths = {}
    for kind, name in (("ALS", "user_factors.npy"), ("Interactions", "user_ids.npy")):
        members = _members(files.path(kind))
        members[name] = _raw_npy(descr, (10 ** 12,))
        paths[str(tmp_path / f"{kind}.npz")] = kind
        _zip(str(tmp_path / f"{kind}.npz"), members)
    _assert_each_refused_in_a_limited_child(paths)


def _assert_each_refused_in_a_limited_child(paths: dict, modes=(False, True)) -> None:
    """Each file of ``paths`` (path -> kind) loaded in each of ``modes`` (mmap False/True)
    in a child under a 1 GiB address-space limit: each refused with a ValueError naming the
    file."""
    result = _child(f"""
        paths = {paths!r}
        limit_address_space()
        out = {{}}
        for path, kind in paths.items():
            for mmap in {tuple(modes)!r}:
                try:
                    _load(kind, path, mmap)
                    out[path + str(mmap)] = "loaded"
                except ValueError as error:
                    out[path + str(mmap)] = "refused" if path in str(error) else str(error)
                except BaseException as error:
                    out[path + str(mmap)] = f"{{type(error).__name__}}: {{error}}"
        report(out)
    """)
    assert set(result.values()) == {"refused"}, result


def _overdeclared_deflate(files, kind: str, name: str) -> bytes:
    """``kind``'s file with member ``name`` replaced by a deflated member whose directory
    entry declares ~4.3 MB compressed / 4 GiB uncompressed (within deflate's ratio) in a
    file of 2 kB; its real stream holds 1 kB of data, CRC-32 right."""
    total = 0xFFFFFFF0
    declared = _raw_npy("|u1", (total - 128,))
    assert len(declared) == 128
    real = declared + bytes(1000)
    entries = [_stored(n, blob) for n, blob in _members(files.path(kind)).items() if n != name]
    entries.append((name, zlib.compress(real)[2:-4], zipfile.ZIP_DEFLATED, zlib.crc32(real),
                    len(real)))
    blob = bytearray(_zip_bytes(entries))
    record = blob.rfind(b"PK\x01\x02" + struct.pack("<HHHH", 20, 20, 0, 8))
    struct.pack_into("<II", blob, record + 20, total // 1000, total)  # compressed, size
    return bytes(blob)


def test_a_deflated_member_declaring_more_than_the_file_holds_is_refused(files, tmp_path):
    """_check_zip_entry bounds a deflated member's size by 1032 x its compressed size, but
    never checks that compressed size against the file: a 2 kB file whose directory says
    4.3 MB compressed and 4 GiB uncompressed passes, and _read_member allocates 4 GiB before
    reading (MemoryError under a 1 GiB address-space limit; with zip64 sizes the declared
    size is unbounded). Expected: ValueError naming the file, nothing allocated."""
    paths = {}
    for kind, name in (("ALS", "user_factors.npy"), ("Interactions", "indices.npy")):
        path = str(tmp_path / f"{kind}.npz")
        with open(path, "wb") as handle:
            handle.write(_overdeclared_deflate(files, kind, name))
        paths[path] = kind
    _assert_each_refused_in_a_limited_child(paths, modes=(False,))  # mmap refuses deflate


def test_a_stored_member_declaring_more_than_the_file_holds_is_refused(files, tmp_path):
    """The stored-member control of the test above: refused before allocating."""
    total = 0xFFFFFFF0
    real = _raw_npy("|u1", (total - 128,)) + bytes(1000)
    entries = [_stored(n, blob) for n, blob in _members(files.path("ALS")).items()
               if n != "user_factors.npy"]
    entries.append(("user_factors.npy", real, zipfile.ZIP_STORED, zlib.crc32(real), len(real)))
    blob = bytearray(_zip_bytes(entries))
    record = blob.rfind(b"PK\x01\x02" + struct.pack("<HHHH", 20, 20, 0, 0) +
                        struct.pack("<HH", 0, 0x21) + struct.pack("<I", zlib.crc32(real)))
    struct.pack_into("<II", blob, record + 20, total, total)
    (tmp_path / "s.npz").write_bytes(bytes(blob))
    for mmap in (False, True):
        with pytest.raises(ValueError, match="truncated or damaged"):
            recfuse.load(tmp_path / "s.npz", mmap=mmap)


_BOMB = 256 << 20  # bytes a ~260 kB member inflates to


@pytest.mark.parametrize("where", ["an unused member", "the header member"])
def test_a_zip_bomb_member_is_refused_or_read_bounded(files, where, tmp_path):
    """A ~260 kB file with a deflated member of 256 MiB: an extra member no model uses
    (read in full by _read_members, then ignored: the model loads), or the JSON header padded
    with 256 MiB of spaces (read, decoded and parsed: ~830 MB peak). A header is a few
    hundred bytes and an unused member is never needed, so either is refused or skipped.
    Expected: a ValueError naming the file, or a load whose peak RSS grows < 128 MiB."""
    members = _members(files.path("ALS"))
    entries = [_stored(n, blob) for n, blob in members.items()]
    if where == "an unused member":
        stream, crc, size = _deflated_run(_raw_npy("|u1", (_BOMB,)), _BOMB)
        entries.append(("junk.npy", stream, zipfile.ZIP_DEFLATED, crc, size))
    else:
        text = json.dumps(_header(files.path("ALS"))).encode()
        prefix = _raw_npy("|u1", (_BOMB + len(text),), text)
        stream, crc, size = _deflated_run(prefix, _BOMB, fill=ord(" "))
        entries = [e for e in entries if e[0] != "__recfuse__.npy"]
        entries.append(("__recfuse__.npy", stream, zipfile.ZIP_DEFLATED, crc, size))
    path = tmp_path / "bomb.npz"
    path.write_bytes(_zip_bytes(entries))
    assert path.stat().st_size < 400_000
    result = _child(f"""
        good, path = {files.path("ALS")!r}, {str(path)!r}
        recfuse.load(good)
        before = peak()
        try:
            recfuse.load(path)
            outcome = "loaded"
        except ValueError as error:
            outcome = "refused" if path in str(error) else str(error)
        report({{"outcome": outcome, "grew_mib": (peak() - before) >> 20}})
    """)
    assert result["outcome"] == "refused" or result["grew_mib"] < 128, result


# ---------------------------------------------------------------- pickles, FIFOs, /dev/zero


def test_a_pickled_member_is_never_unpickled(files, tmp_path):
    """An object-dtype member whose pickle would create a marker file, for each reader and
    mode: refused, and the payload never runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([Payload()], dtype=object), allow_pickle=True)
    for kind, name, call in (("ALS", "user_factors.npy", recfuse.load),
                             ("Interactions", "user_ids.npy", recfuse.Interactions.load),
                             ("MLPScorer", "weight_0.npy", load_scorer)):
        members = _members(files.path(kind))
        members[name] = buffer.getvalue()
        _zip(tmp_path / "p.npz", members)
        for mmap in ((False, True) if call is not load_scorer else (False,)):
            with pytest.raises(ValueError, match="pickle|object"):
                call(tmp_path / "p.npz", **({"mmap": mmap} if call is not load_scorer else {}))
    assert not marker.exists()


def test_fifos_devices_and_dev_zero_links_are_refused_without_blocking(files, tmp_path):
    """A FIFO, a symbolic link to /dev/zero, /dev/stdin, and a model folder whose model.npz
    or train.npz is one of those, for every reader (in a child with a timeout, since an
    open() of a FIFO blocks): OSError (FileNotFoundError), at once."""
    os.mkfifo(tmp_path / "fifo.npz")
    os.mkfifo(tmp_path / "fifo.onnx")
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    for name, special in (("model.npz", "fifo"), ("model.npz", "zero"), ("train.npz", "fifo"),
                          ("train.npz", "zero")):
        folder = tmp_path / f"{name[:-4]}-{special}"
        shutil.copytree(os.path.join(files.dir, "trained"), folder)
        os.unlink(folder / name)
        if special == "fifo":
            os.mkfifo(folder / name)
        else:
            os.symlink("/dev/zero", folder / name)
    result = _child(f"""
        from recfuse.ranking import load_scorer, MLPScorer
        from recfuse.persistence import load_folder
        d = {str(tmp_path)!r}
        calls = [(recfuse.load, "fifo.npz"), (recfuse.load, "zero.npz"),
                 (recfuse.Interactions.load, "fifo.npz"), (recfuse.Interactions.load, "zero.npz"),
                 (load_scorer, "fifo.npz"), (load_scorer, "zero.npz"),
                 (load_scorer, "fifo.onnx"), (load_scorer, "zero.onnx"),
                 (MLPScorer.from_onnx, "fifo.onnx"), (MLPScorer.from_onnx, "zero.onnx"),
                 (recfuse.load, "/dev/stdin"), (recfuse.Interactions.load, "/dev/zero"),
                 (load_folder, "model-fifo"), (load_folder, "model-zero"),
                 (load_folder, "train-fifo"), (load_folder, "train-zero")]
        out = {{}}
        for call, name in calls:
            try:
                call(os.path.join(d, name))
                out[name + " " + call.__name__] = "loaded"
            except OSError:
                out[name + " " + call.__name__] = "refused"
            except BaseException as error:
                out[name + " " + call.__name__] = f"{{type(error).__name__}}: {{error}}"
        report(out)
    """, timeout=60)
    assert set(result.values()) == {"refused"}, result


# ---------------------------------------------------------------- load_folder


def test_a_model_folder_loads_and_answers(files):
    model, train = load_folder(os.path.join(files.dir, "trained"))
    assert model.user_factors.shape[0] == train.n_users
    for user in range(train.n_users):
        ids, _ = model.recommend(user, k=2)
        seen = train.matrix[user].indices
        assert not set(ids[ids >= 0].tolist()) & set(seen.tolist())


@pytest.mark.parametrize("case", ["other training's train.npz", "scorer as model",
                                  "Interactions as model", "model as train", "damaged model",
                                  "damaged train"])
def test_a_model_folder_of_mismatched_or_wrong_files_is_refused(files, case, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(os.path.join(files.dir, "trained"), folder)
    if case == "other training's train.npz":
        shutil.copy(os.path.join(files.dir, "other_train.npz"), folder / "train.npz")
    elif case == "scorer as model":
        shutil.copy(files.path("MLPScorer"), folder / "model.npz")
    elif case == "Interactions as model":
        shutil.copy(folder / "train.npz", folder / "model.npz")
    elif case == "model as train":
        shutil.copy(folder / "model.npz", folder / "train.npz")
    else:
        target = folder / ("model.npz" if case == "damaged model" else "train.npz")
        target.write_bytes(target.read_bytes()[:-30])
    with pytest.raises(ValueError) as caught:
        load_folder(folder)
    assert str(folder) in str(caught.value), caught.value


# ---------------------------------------------------------------- ONNX, at the file level


def _onnx_chain(path, location=None, length=None) -> None:
    """A Gemm(3 -> 1) + Sigmoid chain; its weight external (``location``) if given."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    W = np.random.default_rng(0).standard_normal((1, 3)).astype(np.float32)
    weight = numpy_helper.from_array(W, "W")
    if location is not None:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("length", length)):
            if value is not None:
                entry = weight.external_data.add()
                entry.key, entry.value = key, str(value)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
         helper.make_node("Sigmoid", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_external_data_that_is_a_fifo_a_device_or_outside_is_refused(tmp_path):
    """External data that is a FIFO beside the file, a link to /dev/zero, a path outside the
    file's folder, an absolute path, a length beyond the data, or missing: a ValueError
    naming the file, at once (in a child with a timeout: a FIFO's open() would block)."""
    pytest.importorskip("onnx")
    _onnx_chain(tmp_path / "plain.onnx")
    (tmp_path / "w.bin").write_bytes(np.ones(3, np.float32).tobytes())
    os.mkfifo(tmp_path / "fifo.bin")
    os.symlink("/dev/zero", tmp_path / "zero.bin")
    cases = {"fifo": ("fifo.bin", None), "zero": ("zero.bin", None),
             "zero, a length": ("zero.bin", 12), "outside": ("../outside.bin", None),
             "absolute": ("/etc/hostname", None), "too long": ("w.bin", 10 ** 15),
             "missing": ("nothing.bin", None)}
    (tmp_path.parent / "outside.bin").write_bytes(bytes(12))
    for label, (location, length) in cases.items():
        _onnx_chain(tmp_path / f"{label}.onnx", location, length)
    result = _child(f"""
        from recfuse.ranking import MLPScorer, load_scorer
        d = {str(tmp_path)!r}
        out = {{"plain": float(load_scorer(os.path.join(d, "plain.onnx")).score([1, 2, 3]))}}
        for label in {sorted(cases)!r}:
            path = os.path.join(d, label + ".onnx")
            try:
                MLPScorer.from_onnx(path)
                out[label] = "loaded"
            except ValueError as error:
                out[label] = "refused" if path in str(error) else str(error)
            except BaseException as error:
                out[label] = f"{{type(error).__name__}}: {{error}}"
        report(out)
    """, timeout=60)
    assert 0 < result.pop("plain") < 1
    assert set(result.values()) == {"refused"}, result


@settings(max_examples=30, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(steps=_mutation)
def test_onnx_byte_mutations_load_or_are_refused(tmp_path_factory, steps):
    """Bytes of a valid ONNX chain mutated: a scorer that scores, or a ValueError naming the
    file (protobuf parsing is memory safe; the scorer is exercised on one row)."""
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("onnx", numbered=True)
    _onnx_chain(folder / "good.onnx")
    path = folder / "m.onnx"
    path.write_bytes(_mutate((folder / "good.onnx").read_bytes(), steps))
    try:
        scorer = MLPScorer.from_onnx(path)
    except ValueError as error:
        assert str(path) in str(error) or "node" in str(error) or "layer" in str(error) \
            or "graph" in str(error) or "weight" in str(error) or "bias" in str(error), error
        return
    score = scorer.score(np.ones(scorer.input_width, np.float32))
    assert np.isfinite(score)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("name", ["user_ids.npy", "item_ids.npy"])
def test_an_id_member_with_an_invalid_code_point_is_refused(files, name, mmap, tmp_path):
    """A '<U' id member whose first character is 0x110000 (no such code point; found by the
    CRC-valid member fuzz): IdMap hands it to pandas.Index, whose conversion to str raises
    SystemError("invalid maximum character passed to PyUnicode_New"), which names nothing.
    Expected: a ValueError naming the file and the member."""
    members = _members(files.path("Interactions"))
    ids = np.load(io.BytesIO(members[name]))
    ids = ids.astype("U3") if ids.dtype.kind != "U" else ids
    blob = bytearray(_npy(ids))
    start = len(blob) - ids.nbytes
    blob[start:start + 4] = (0x110000).to_bytes(4, "little")
    members[name] = bytes(blob)
    _zip(tmp_path / "u.npz", members)
    with pytest.raises(ValueError) as caught:
        recfuse.Interactions.load(tmp_path / "u.npz", mmap=mmap)
    assert str(tmp_path / "u.npz") in str(caught.value)

"""Adversarial hunt on model files: every savable model (ALS with both solvers, SVD, SVDpp,
ExplicitALS, BPR, MLPScorer) round-trips exactly, and damaged or forged files (bytes cut or
flipped, a member swapped for one of the wrong dtype, shape or values, pickled, missing or
extra, a header field out of range) are a clear error naming the file, never a crash, a
hang, a pickle run or a silently different model. The bugs it found are fixed; their tests
stay as regressions."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
import zipfile

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import persistence
from recfuse.ranking import MLPScorer

NAMES = ["ALS-cg", "ALS-cholesky", "SVD", "SVDpp", "ExplicitALS", "BPR", "MLPScorer"]
FACTOR_MODELS = NAMES[:-1]


def _fit_all() -> dict:
    """A tiny fitted model of each savable kind: 7 x 6 implicit, 6 x 5 explicit."""
    implicit = sp.random(7, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
    implicit.data[:] = 1 + np.arange(implicit.nnz) % 3
    rng, w = np.random.default_rng(0), np.random.default_rng(3)
    rated = (np.repeat(np.arange(6), 3), rng.integers(0, 5, 18), rng.integers(1, 6, 18) * 1.0)
    als = {"factors": 3, "iterations": 2, "backend": "cpu", "random_state": 0}
    return {"ALS-cg": recfuse.ALS(solver="cg", **als).fit(implicit),
            "ALS-cholesky": recfuse.ALS(solver="cholesky", **als).fit(implicit),
            "SVD": recfuse.SVD(factors=3, epochs=2, random_state=0).fit(*rated),
            "SVDpp": recfuse.SVDpp(factors=3, epochs=2, random_state=0).fit(*rated),
            "ExplicitALS": recfuse.ExplicitALS(factors=3, iterations=2,
                                               random_state=0).fit(*rated),
            "BPR": recfuse.BPR(factors=3, iterations=2, random_state=0).fit(implicit),
            "MLPScorer": MLPScorer([
                (w.standard_normal((4, 3)).astype(np.float32), w.standard_normal(4), "relu"),
                (w.standard_normal((1, 4)).astype(np.float32), None, "sigmoid")])}


def _outputs(model) -> list:
    """All a model answers: recommend (ids, scores) per user, predict on every pair, the
    Recommender's answers (which read the seen matrix and ExplicitALS's ratings); a scorer's
    scores."""
    if isinstance(model, MLPScorer):
        X = np.random.default_rng(5).standard_normal((6, model.input_width))
        return [model.score(X.astype(np.float32))]
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    served = recfuse.Recommender(model)
    out = []
    for user in range(n_users):
        out += list(model.recommend(user, k=3))
        answer = served.recommend(user, k=3)
        out += [answer.ids, answer.scores]
    if hasattr(model, "predict"):
        pairs = np.indices((n_users, n_items)).reshape(2, -1)
        out.append(model.predict(pairs[0], pairs[1]))
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y)
                                    for x, y in zip(map(np.asarray, a), map(np.asarray, b)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model fitted, saved once; its file's bytes and its outputs."""
    folder = tmp_path_factory.mktemp("models")
    models = _fit_all()
    paths = {name: folder / f"{name}.npz" for name in models}
    for name, model in models.items():
        model.save(paths[name])
    return types.SimpleNamespace(
        dir=folder, models=models, paths=paths,
        blobs={name: path.read_bytes() for name, path in paths.items()},
        outputs={name: _outputs(model) for name, model in models.items()})


def _read(path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(arrays.pop(persistence.HEADER_KEY).tobytes()), arrays


def _write(path, header: dict, arrays: dict) -> None:
    """The same layout as a model file, via np.savez (which pickles object arrays)."""
    np.savez(path, **{persistence.HEADER_KEY: np.frombuffer(json.dumps(header).encode(),
                                                            np.uint8)}, **arrays)


def _refused(path, mmap: bool = False) -> str:
    """load(path) must raise a ValueError naming the file; returns the message."""
    with pytest.raises(ValueError) as caught:
        recfuse.load(path, mmap=mmap)
    assert str(path) in str(caught.value), f"the error does not name the file: {caught.value}"
    return str(caught.value)


def _child(code: str, *args: str, timeout: int = 120) -> str:
    """Run ``code`` in a fresh interpreter (a segfault there fails the test, not pytest);
    its stdout."""
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    return run.stdout


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_answers_exactly_and_saves_the_same_bytes(saved, name, mmap, tmp_path):
    loaded = recfuse.load(saved.paths[name], mmap=mmap)
    assert type(loaded) is type(saved.models[name])
    assert _same(_outputs(loaded), saved.outputs[name])
    loaded.save(tmp_path / "again.npz")  # save(load(f)) is f, byte for byte
    assert (tmp_path / "again.npz").read_bytes() == saved.blobs[name]


# ---------------------------------------------------------------- damaged bytes


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_cut_or_flipped_bytes_are_refused_or_harmless(saved, name, data):
    """mmap=False: a cut or flipped file is a ValueError naming it, or (a flip in padding or
    a timestamp) a model answering exactly as the original."""
    blob = bytearray(saved.blobs[name])
    if data.draw(st.booleans(), "cut"):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1), "length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), "flips")):
            blob[data.draw(st.integers(0, len(blob) - 1), "at")] ^= data.draw(
                st.integers(1, 255), "xor")
    path = saved.dir / f"damaged-{name}.npz"
    path.write_bytes(bytes(blob))
    try:
        loaded = recfuse.load(path)
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert _same(_outputs(loaded), saved.outputs[name])


_SWEEP = r"""
import json, sys, numpy as np, recfuse, warnings
sys.path.insert(0, sys.argv[2])
from test_persistence_hunt import _outputs, _same
warnings.simplefilter("ignore")
seen = set()
for path in json.loads(sys.argv[1]):
    blob = open(path, "rb").read()
    reference = _outputs(recfuse.load(path))
    rng = np.random.default_rng(len(blob))
    for trial in range(30):
        damaged = bytearray(blob[:rng.integers(len(blob))] if trial % 3 == 0 else blob)
        for at in rng.integers(0, len(damaged), trial % 3):
            damaged[at] ^= int(rng.integers(1, 256))
        open(path + ".damaged", "wb").write(damaged)
        for mmap in (False, True):
            try:
                kind = "same" if _same(_outputs(recfuse.load(path + ".damaged", mmap=mmap)),
                                       reference) else "different"
            except Exception as error:  # anything but a crash is reported
                kind = type(error).__name__ + ("" if path in str(error) else "-unnamed")
            seen.add(f"{mmap}:{kind}")
print(json.dumps(sorted(seen)))
"""


def test_damaged_files_never_crash_the_interpreter(saved):
    """Loads and uses of damaged files (both modes), in a child process: a segfault or abort
    in the native code is a failing return code here, not a dead test run."""
    paths = json.dumps([str(saved.paths[name]) for name in NAMES])
    seen = json.loads(_child(_SWEEP, paths, os.path.dirname(__file__),
                             timeout=240).splitlines()[-1])
    assert {kind for kind in seen if kind.startswith("False:")} <= {"False:same",
                                                                    "False:ValueError"}


@pytest.mark.parametrize("mmap", [False, True])
def test_a_flipped_factor_byte_is_refused(saved, mmap):
    model, blob = saved.models["ALS-cg"], bytearray(saved.blobs["ALS-cg"])
    at = bytes(blob).find(model.user_factors.tobytes())
    assert at > 0
    blob[at + 1] ^= 0x40  # one value of user 0, still finite
    path = saved.dir / "flipped.npz"
    path.write_bytes(bytes(blob))
    _refused(path, mmap=mmap)


# ---------------------------------------------------------------- forged members (a pickle too)


def _decreasing(indptr: np.ndarray) -> np.ndarray:
    """``indptr`` as uint64 with two inner entries swapped (its end kept): not monotone."""
    forged = indptr.astype(np.uint64)
    forged[1], forged[-2] = forged[-2], forged[1]
    assert (np.diff(forged.astype(np.int64)) < 0).any()
    return forged


class _Trap:
    """Unpickled, creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _mutations(name: str, value: np.ndarray, n_items: int):
    """(label, replacement) for one member: each must be refused."""
    yield "complex", value.astype(np.complex64)
    yield "bool", value.astype(bool)
    yield "text", value.astype(str)
    if value.size:
        yield "one element short", value.reshape(-1)[:-1]
        nan = value.astype(np.float64)
        nan.reshape(-1)[-1] = np.nan
        yield "NaN", nan
    if name.endswith("_indices"):
        for bad in (-1, n_items):
            forged = value.copy()
            forged[0] = bad
            yield f"index {bad}", forged
    if name.endswith("_indptr"):
        yield "indptr not monotone", _decreasing(value).astype(value.dtype)
        yield "indptr past the end", np.append(value[:-1], value[-1] + 5)
    if name == "seen_shape":
        yield "negative shape", np.array([-1, value[1]])
        yield "shape one row too many", value + np.array([1, 0])


@pytest.mark.parametrize("name", NAMES)
def test_every_member_forged_or_missing_is_refused(saved, name, tmp_path):
    header, arrays = _read(saved.paths[name])
    n_items = saved.models[name].item_factors.shape[0] if name != "MLPScorer" else 0
    path = tmp_path / "forged.npz"
    for member, value in arrays.items():
        for label, forged in [*_mutations(member, value, n_items), ("missing", None)]:
            changed = {k: v for k, v in arrays.items() if k != member}
            if forged is not None:
                changed[member] = forged
            _write(path, header, changed)
            for mmap in (False, True):
                try:
                    _refused(path, mmap)
                except (Exception, pytest.fail.Exception) as error:
                    raise AssertionError(f"{member} {label} (mmap={mmap})") from error


@pytest.mark.parametrize("name", NAMES)
def test_a_pickled_member_is_refused_and_never_unpickled(saved, name, tmp_path):
    header, arrays = _read(saved.paths[name])
    marker = tmp_path / "pickle-ran"
    member = next(iter(arrays))
    _write(tmp_path / "pickled.npz", header,
           {**arrays, member: np.array([_Trap(str(marker))], dtype=object)})
    with np.load(tmp_path / "pickled.npz", allow_pickle=False) as archive:  # it is a pickle
        with pytest.raises(ValueError, match="allow_pickle"):
            archive[member]
    for mmap in (False, True):
        assert "pickle" in _refused(tmp_path / "pickled.npz", mmap)
    assert not marker.exists()


@pytest.mark.parametrize("name", NAMES)
def test_an_extra_unknown_member_is_refused_or_harmless(saved, name, tmp_path):
    header, arrays = _read(saved.paths[name])
    _write(tmp_path / "extra.npz", header, {**arrays, "mystery": np.ones(3, np.float32)})
    try:
        loaded = recfuse.load(tmp_path / "extra.npz")
    except ValueError as error:
        assert "mystery" in str(error)
    else:
        assert _same(_outputs(loaded), saved.outputs[name])


# ---------------------------------------------------------------- forged headers and layouts


def _header_changes(name: str):
    yield "future version", lambda h: h.update(version=persistence.FORMAT_VERSION + 1)
    yield "version 0", lambda h: h.update(version=0)
    yield "unknown model class", lambda h: h.update(model="DeepFM")
    yield "not a recfuse file", lambda h: h.update(format="other")
    yield "unknown param", lambda h: h["params"].update(colour="blue")
    if name == "MLPScorer":
        yield "precision", lambda h: h["params"].update(precision="float16")
        yield "activation", lambda h: h["params"].update(activations=["swish", "sigmoid"])
        yield "one flag too few", lambda h: h["params"].update(biases=[True])
        yield "flags not a list", lambda h: h["params"].update(biases="yes")
        return
    yield "factors=-1", lambda h: h["params"].update(factors=-1)
    yield "factors=4 (tables have 3)", lambda h: h["params"].update(factors=4)
    yield "factors=3.5", lambda h: h["params"].update(factors=3.5)
    yield "dtype=complex128", lambda h: h["params"].update(dtype="complex128")
    yield "random_state=-1", lambda h: h["params"].update(random_state=-1)
    yield "backend", lambda h: h["params"].update(backend="tpu")


@pytest.mark.parametrize("name", NAMES)
def test_every_forged_header_field_is_refused(saved, name, tmp_path):
    for label, change in _header_changes(name):
        header, arrays = _read(saved.paths[name])
        change(header)
        _write(tmp_path / "header.npz", header, arrays)
        try:
            _refused(tmp_path / "header.npz")
        except (Exception, pytest.fail.Exception) as error:
            raise AssertionError(label) from error


def test_an_oversized_integer_in_the_header_names_the_file(saved, tmp_path):
    header, arrays = _read(saved.paths["SVD"])
    text = json.dumps(header).replace('"factors": 3', '"factors": ' + "9" * 5000)
    np.savez(tmp_path / "digits.npz", __recfuse__=np.frombuffer(text.encode(), np.uint8),
             **arrays)
    _refused(tmp_path / "digits.npz")


def _npy_bytes(header_text: str, data: bytes) -> bytes:
    header = header_text.encode()
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize("mmap", [False, True])
def test_an_unbalanced_npy_header_is_a_value_error(saved, tmp_path, mmap):
    header, arrays = _read(saved.paths["ALS-cg"])
    path = tmp_path / "unbalanced.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for member, value in {persistence.HEADER_KEY: np.frombuffer(
                json.dumps(header).encode(), np.uint8), **arrays}.items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(member + ".npy", buffer.getvalue() if member != "user_factors"
                             else _npy_bytes("{'descr': '<f4', 'fortran_order': False, "
                                             "'shape': (7, 3), ", value.tobytes()))
    assert "user_factors" in _refused(path, mmap)


def test_a_bzip2_member_declaring_gigabytes_is_refused_before_allocating(saved, tmp_path):
    header, _ = _read(saved.paths["ALS-cg"])
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:
        buffer = io.BytesIO()
        np.save(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
        archive.writestr(persistence.HEADER_KEY + ".npy", buffer.getvalue())
        archive.writestr("user_factors.npy", _npy_bytes(  # 4 GiB declared, 64 bytes held
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741760,), }", bytes(64)),
            compress_type=zipfile.ZIP_BZIP2)
    blob = bytearray(path.read_bytes())
    entry = blob.rfind(b"PK\x01\x02")  # the last central entry: user_factors.npy
    assert bytes(blob[entry + 46:entry + 62]) == b"user_factors.npy"
    blob[entry + 24:entry + 28] = (2**32 - 2).to_bytes(4, "little")  # uncompressed: 4 GiB
    path.write_bytes(bytes(blob))
    code = ("import resource, sys, recfuse\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "try:\n    recfuse.load(sys.argv[1])\n"
            "except Exception as error:\n    print(type(error).__name__, error)\n")
    out = _child(code, str(path))
    assert out.startswith("ValueError") and str(path) in out, out


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_a_decreasing_ratings_indptr_is_refused(saved, tmp_path, dtype):
    header, arrays = _read(saved.paths["ExplicitALS"])
    arrays["ratings_indptr"] = _decreasing(arrays["ratings_indptr"]).astype(dtype)
    _write(tmp_path / "ratings.npz", header, arrays)
    assert "malformed indptr" in _refused(tmp_path / "ratings.npz")


def test_interactions_with_a_decreasing_uint64_indptr_are_refused(tmp_path):
    events = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3, 4, 4], "item": [10, 11, 10, 12, 11, 12,
                                                                      13, 10]})
    recfuse.Interactions.from_events(events, user="user", item="item").save(tmp_path / "i.npz")
    header, arrays = _read(tmp_path / "i.npz")
    arrays["indptr"] = _decreasing(arrays["indptr"])
    _write(tmp_path / "i.npz", header, arrays)
    with pytest.raises(ValueError, match="malformed indptr"):
        recfuse.Interactions.load(tmp_path / "i.npz")


def _disowned_bias(header, arrays):
    header["params"]["biases"] = [False, False]  # the file holds bias_0: ignored


def _flags_as_text(header, arrays):
    arrays["bias_1"] = np.zeros(1, np.float32)
    header["params"]["biases"] = ["no", "no"]  # read by truth value: both biases load


@pytest.mark.parametrize("change", [_disowned_bias, _flags_as_text])
def test_scorer_layer_flags_that_contradict_the_members_are_refused(saved, tmp_path, change):
    header, arrays = _read(saved.paths["MLPScorer"])
    change(header, arrays)
    _write(tmp_path / "scorer.npz", header, arrays)
    assert "bias" in _refused(tmp_path / "scorer.npz")


# ---------------------------------------------------------------- paths, failed loads


def test_paths_without_a_model_file_are_clear_errors(tmp_path):
    # (a missing path and a folder: tests/test_persistence.py)
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "not a zip archive" in _refused(tmp_path / "empty.npz")
    with zipfile.ZipFile(tmp_path / "hollow.npz", "w"):
        pass  # a zip with no members
    assert "no __recfuse__ header" in _refused(tmp_path / "hollow.npz")
    os.mkfifo(tmp_path / "fifo.npz")  # must not block waiting for a writer: in a child
    out = _child("import sys, recfuse\ntry:\n    recfuse.load(sys.argv[1])\n"
                 "except FileNotFoundError as e:\n    print('refused', e)",
                 str(tmp_path / "fifo.npz"), timeout=60)
    assert out.startswith("refused") and "fifo.npz" in out, out


@pytest.mark.parametrize("name", FACTOR_MODELS)
def test_a_failed_swap_to_a_damaged_file_keeps_the_served_model(saved, name, tmp_path):
    served = recfuse.Recommender(saved.paths[name])
    before = [served.recommend(user, k=3) for user in range(3)]
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(saved.blobs[name][:len(saved.blobs[name]) // 2])
    with pytest.raises(ValueError, match=re.escape(str(damaged))):
        served.swap_model(damaged)
    assert served.version == 1
    for user, answer in enumerate(before):
        again = served.recommend(user, k=3)
        assert np.array_equal(again.ids, answer.ids) and np.array_equal(again.scores,
                                                                        answer.scores)

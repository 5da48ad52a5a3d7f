"""Model files: aligned uncompressed members mapped without a copy (mmap=True), bitwise
round trips, and clear errors for truncated, foreign, newer or pickled files."""

from __future__ import annotations

import gc
import json
import os
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

import recfuse
from recfuse import datasets, persistence


@pytest.fixture(scope="module")
def model():
    return recfuse.ALS(factors=8, iterations=2, random_state=0).fit(
        datasets.synthetic_implicit(200, 60, 2000, seed=0))


def test_mmap_round_trip_is_bitwise_and_zero_copy(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = recfuse.load(path, mmap=True)
    for name in ("user_factors", "item_factors"):
        array = getattr(loaded, name)
        assert np.array_equal(array, getattr(model, name))
        assert array.dtype == getattr(model, name).dtype
        assert not array.flags.writeable and not array.flags.owndata  # a view of the map
        assert isinstance(array.base, np.memmap) or isinstance(array, np.memmap)
        assert array.ctypes.data % persistence.ALIGNMENT == 0
    np.testing.assert_array_equal(loaded.recommend(3, k=5)[0], model.recommend(3, k=5)[0])
    loaded.update_users([0], model._user_items[[0]])  # writers replace, never mutate, the map
    assert np.array_equal(recfuse.load(path).user_factors, model.user_factors)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_mmap_load_holds_one_descriptor_per_file(model, tmp_path):
    """The members are views of one map of the whole file: one open descriptor while the
    model lives (one per member before: 4 for an ALS model), none after it is gone."""
    path = tmp_path / "model.npz"
    model.save(path)
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    loaded = recfuse.load(path, mmap=True)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before == 1
    assert np.array_equal(loaded.item_factors, model.item_factors)
    del loaded
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_mmap_load_while_a_save_replaces_the_file_maps_the_file_it_opened(model, tmp_path,
                                                                          monkeypatch):
    """A save (atomic rename) landing while load(mmap=True) reads the members: the arrays are
    mapped from the file that was opened, at its offsets. Mapped by path, they came from the
    new file at the old file's offsets (garbage values, or a ValueError)."""
    path, other = tmp_path / "model.npz", tmp_path / "other.npz"
    model.save(path)
    recfuse.ALS(factors=8, iterations=1, random_state=1).fit(
        datasets.synthetic_implicit(150, 40, 900, seed=1)).save(other)
    map_members = persistence._map_members

    def replaced_meanwhile(*args):
        os.replace(other, path)  # another process's save renames its file over the path
        return map_members(*args)

    monkeypatch.setattr(persistence, "_map_members", replaced_meanwhile)
    loaded = recfuse.load(path, mmap=True)
    for name in ("user_factors", "item_factors"):
        assert np.array_equal(getattr(loaded, name), getattr(model, name))
    assert (loaded._user_items != model._user_items).nnz == 0


def test_files_stay_plain_npz(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as archive:
        assert np.array_equal(archive["item_factors"], model.item_factors)
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".recfuse-")]  # no temp left


def test_old_unaligned_npz_still_maps(model, tmp_path):
    header = {"format": "recfuse", "version": 1, "model": "ALS", "params": model.get_params()}
    path = tmp_path / "old.npz"
    np.savez(path, __recfuse__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             user_factors=model.user_factors, item_factors=model.item_factors)
    loaded = recfuse.load(path, mmap=True)
    assert np.array_equal(loaded.item_factors, model.item_factors)


@pytest.mark.parametrize("mmap", [False, True])
def test_bad_files(model, tmp_path, mmap):
    path = tmp_path / "model.npz"
    model.save(path)
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) - 200])
    with pytest.raises(ValueError, match="truncated|foreign"):
        recfuse.load(truncated, mmap=mmap)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, user_factors=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a recfuse model file"):
        recfuse.load(foreign, mmap=mmap)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="truncated or foreign"):
        recfuse.load(text, mmap=mmap)
    newer = tmp_path / "newer.npz"
    header = {"format": "recfuse", "version": persistence.FORMAT_VERSION + 1, "model": "ALS"}
    np.savez(newer, __recfuse__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(ValueError, match="upgrade recfuse"):
        recfuse.load(newer, mmap=mmap)
    pickled = tmp_path / "pickled.npz"
    header = {"format": "recfuse", "version": 1, "model": "ALS", "params": {}}
    np.savez(pickled, __recfuse__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             user_factors=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        recfuse.load(pickled, mmap=mmap)
    with pytest.raises(FileNotFoundError):
        recfuse.load(tmp_path / "absent.npz", mmap=mmap)


def test_compressed_member_cannot_map(model, tmp_path):
    path = tmp_path / "compressed.npz"
    header = {"format": "recfuse", "version": 1, "model": "ALS", "params": model.get_params()}
    np.savez_compressed(path, __recfuse__=np.frombuffer(json.dumps(header).encode(), np.uint8),
                        user_factors=model.user_factors, item_factors=model.item_factors)
    with pytest.raises(ValueError, match="compressed"):
        recfuse.load(path, mmap=True)
    assert np.array_equal(recfuse.load(path).user_factors, model.user_factors)


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="without pickle"):
        persistence.save_model(tmp_path / "x.npz", "ALS", {}, {"a": np.array([None])})
    assert not os.listdir(tmp_path)  # the temporary file is removed


def test_a_folder_or_a_missing_folder_is_refused_before_writing(model, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give the path of a file"):
        model.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "missing" / "model.npz")
    assert not os.listdir(tmp_path)  # no temporary file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_files_get_the_permissions_of_a_plain_write(model, tmp_path):
    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.npz"
        model.save(fresh)  # readable by a serving process of another user, as open() makes it
        assert os.stat(fresh).st_mode & 0o777 == 0o644
        shared = tmp_path / "shared.npz"
        shared.write_bytes(b"old")
        os.chmod(shared, 0o640)
        model.save(shared)  # a file replaced keeps its permissions
        assert os.stat(shared).st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
    assert recfuse.load(shared).item_factors.shape == model.item_factors.shape


def test_a_save_through_a_symbolic_link_keeps_the_link_and_syncs(model, tmp_path, monkeypatch):
    real = tmp_path / "releases" / "model-1.npz"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "current.npz"
    link.symlink_to(real)
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)  # written through the link
    assert recfuse.load(real).item_factors.shape == model.item_factors.shape
    assert len(synced) == 2  # the new file's data, then its folder's entry
    assert sorted(p.name for p in real.parent.iterdir()) == ["model-1.npz"]  # no temporary


def test_a_save_that_fails_part_way_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    model.save(path)
    old = path.read_bytes()
    write_array, calls = np.lib.format.write_array, []

    def disk_full(*arguments, **options):  # the third array does not fit
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return write_array(*arguments, **options)

    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    with pytest.raises(OSError, match="No space"):
        recfuse.ALS(factors=8, iterations=1, random_state=1).fit(model._user_items).save(path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["model.npz"]


def _tampered(model, tmp_path, change) -> str:
    """``model`` saved, then its header rewritten by ``change(header)``."""
    path = tmp_path / "tampered.npz"
    model.save(path)
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays[persistence.HEADER_KEY].tobytes())
    change(header)
    arrays[persistence.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda h: h.update(model=[1]), r'"model" must be the name of a model class, got \[1\]'),
    (lambda h: h.update(model=None), '"model" must be the name of a model class, got None'),
    (lambda h: h.update(params=[1, 2]), '"params" must be an object of parameter names and '
                                        r'values, got list \[1, 2\]'),
    (lambda h: h.update(params="abc"), '"params" must be an object .* got str'),
    (lambda h: h["params"].update(bogus=1), r'"params" name \[\'bogus\'\], which ALS does not '
                                            r"take; expected among \['alpha', "),
    (lambda h: h.update(version=True), '"version" must be a positive integer, got True'),
    (lambda h: h.update(version="1"), '"version" must be a positive integer'),
    (lambda h: h.update(version=0), '"version" must be a positive integer, got 0'),
])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_malformed_header_is_a_value_error(model, tmp_path, change, message, mmap):
    path = _tampered(model, tmp_path, change)
    with pytest.raises(ValueError, match=f"{str(path)!r} has a malformed header: {message}"):
        recfuse.load(path, mmap=mmap)


def test_options_a_model_does_not_take_are_refused_by_name(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    with pytest.raises(ValueError, match=r"holds a saved ALS model, which takes no \['precision'\]"):
        recfuse.load(path, precision="float32")
    assert recfuse.load(path, backend="numpy").backend == "numpy"
    with pytest.raises(ValueError, match="holds a saved ALS, not a ranker"):  # as Recommender says
        recfuse.Recommender(path, ranker=path)


# ---------------------------------------------------------------- forged and odd files


def _npy(shape, descr="<f4", data=b"") -> bytes:
    """A .npy member whose header declares ``shape`` and ``descr``, followed by ``data``
    (however long it is)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((-(10 + len(header) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def _forged(tmp_path, members: dict, name="forged.npz"):
    """A zip of ``members`` (name: bytes) beside a valid ALS header of factors=4."""
    header = {"format": "recfuse", "version": 1, "model": "ALS", "params": {"factors": 4}}
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(persistence.HEADER_KEY + ".npy",
                         _npy((len(json.dumps(header)),), "|u1", json.dumps(header).encode()))
        for member, blob in members.items():
            archive.writestr(member, blob)
    return path


_TABLE = np.ones((3, 4), np.float32).tobytes()


@pytest.mark.parametrize("shape", [(10**10, 4), (2**62, 2**62), (2**32, 2**32, 4)])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_forged_array_size_is_refused_before_allocating(tmp_path, shape, mmap):
    """np.load allocates the size a member's header declares before reading it: 40 GB (or
    an int64 overflow) from a file of 1 kB was a MemoryError or an attempt to allocate."""
    path = _forged(tmp_path, {"user_factors.npy": _npy(shape, data=_TABLE),
                              "item_factors.npy": _npy((3, 4), data=_TABLE)})
    with pytest.raises(ValueError, match=r"truncated or damaged: member 'user_factors' "
                                         r"declares an array of shape"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_forged_header_size_is_refused_before_allocating(tmp_path, mmap):
    path = tmp_path / "header.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(persistence.HEADER_KEY + ".npy", _npy((10**11,), "|u1", b"{}"))
    with pytest.raises(ValueError, match="member '__recfuse__' declares an array"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_an_array_shorter_than_its_header_declares_is_refused(tmp_path, mmap):
    """With mmap=True its bytes were checked against the file's end, not the member's: the
    map took the next member's bytes (zip headers) as factor values, silently."""
    path = _forged(tmp_path, {"user_factors.npy": _npy((3, 4), data=_TABLE[:20]),
                              "item_factors.npy": _npy((3, 4), data=_TABLE)})
    with pytest.raises(ValueError, match="truncated or damaged: member 'user_factors'"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("shape", [(-3, 4), (True, 4)])
@pytest.mark.parametrize("mmap", [False, True])
def test_a_malformed_shape_is_refused_by_name(tmp_path, shape, mmap):
    path = _forged(tmp_path, {"user_factors.npy": _npy(shape, data=_TABLE),
                              "item_factors.npy": _npy((3, 4), data=_TABLE)})
    with pytest.raises(ValueError, match="member 'user_factors' declares a malformed shape"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_member_that_is_no_array_is_refused_alike_with_and_without_mmap(model, tmp_path,
                                                                          mmap):
    """A zip with other members: np.load gave such a member as bytes (the model then said
    "user_factors must be 2-d, got shape ()"), the mapping a bare numpy error."""
    path = tmp_path / "model.npz"
    model.save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("readme.txt", b"hello")
    with pytest.raises(ValueError, match=r"member 'readme.txt' is not a .npy array"):
        recfuse.load(path, mmap=mmap)
    garbage = _forged(tmp_path, {"user_factors.npy": b"garbage",
                                 "item_factors.npy": _npy((3, 4), data=_TABLE)})
    with pytest.raises(ValueError, match=r"member 'user_factors' is not a .npy array"):
        recfuse.load(garbage, mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("second", ["user_factors.npy", "user_factors"])
def test_a_member_named_twice_is_refused(model, tmp_path, mmap, second):
    """zipfile reads the last of two members of one name: a file could show one table to a
    reader of its first entries and another to recfuse. Refused, whichever comes first."""
    path = tmp_path / "model.npz"
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(second, _npy((3, 4), data=_TABLE))
    with pytest.raises(ValueError, match="more than one member named 'user_factors'"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("descr", ["<c8", "|b1", "<M8[s]", "|V4"])
@pytest.mark.parametrize("mmap", [False, True])
def test_arrays_of_other_than_numbers_are_a_value_error_naming_the_file(tmp_path, descr,
                                                                        mmap):
    """Complex, bool, date or raw-byte factors in a file were a TypeError without the file."""
    itemsize = np.dtype(descr).itemsize
    path = _forged(tmp_path, {"user_factors.npy": _npy((3, 4), descr, b"\x01" * 12 * itemsize),
                              "item_factors.npy": _npy((3, 4), data=_TABLE)})
    with pytest.raises(ValueError, match=f"{str(path)!r}: the array 'user_factors' holds"):
        recfuse.load(path, mmap=mmap)


@pytest.mark.parametrize("change, message", [
    (lambda h: h["params"].update(factors="4"), "factors must be an integer, got str"),
    (lambda h: h["params"].update(dtype="int8"), "dtype must be float32 or float64"),
    (lambda h: h["params"].update(backend=3), "backend must be a string"),
])
def test_a_header_setting_of_the_wrong_type_is_a_value_error_naming_the_file(
        model, tmp_path, change, message):
    path = _tampered(model, tmp_path, change)
    with pytest.raises(ValueError, match=f"{str(path)!r} holds a saved ALS that cannot be "
                                         f"loaded: {message}"):
        recfuse.load(path)
    with pytest.raises(TypeError):  # an override of the wrong type: the caller's argument
        recfuse.load(tmp_path / "tampered.npz", num_threads="2")


def test_a_compressed_member_that_declares_an_impossible_size_is_refused(model, tmp_path):
    """A deflated member whose directory entry claims more than deflate can expand its bytes
    to (~1032:1): a lie about its size, refused before np.load reads it."""
    path = tmp_path / "compressed.npz"
    header = {"format": "recfuse", "version": 1, "model": "ALS", "params": model.get_params()}
    np.savez_compressed(path, __recfuse__=np.frombuffer(json.dumps(header).encode(), np.uint8),
                        user_factors=model.user_factors, item_factors=model.item_factors)
    blob = bytearray(path.read_bytes())
    entry = blob.find(b"PK\x01\x02")  # the central directory's entries
    while bytes(blob[entry + 46:entry + 46 + 16]) != b"user_factors.npy":
        entry = blob.find(b"PK\x01\x02", entry + 4)
        assert entry >= 0
    blob[entry + 24:entry + 28] = (2**32 - 2).to_bytes(4, "little")  # uncompressed: 4 GB
    path.write_bytes(bytes(blob))
    # refused by the member's ratio, or first by the members' total (persistence's
    # _check_inflated_sizes): both from the directory, before anything is inflated
    with pytest.raises(ValueError, match="damaged: member 'user_factors' declares 4294967294|"
                                         "deflated members expand to 4294969"):
        recfuse.load(path)


# ---------------------------------------------------------------- paths


def test_paths_that_name_no_file_are_refused_clearly(model, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="empty path"):
        model.save("")  # wrote a temporary into the parent folder, then failed renaming it
    with pytest.raises(IsADirectoryError, match="ends with a path separator"):
        model.save("new" + os.sep)
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        recfuse.load(tmp_path)
    assert os.listdir(tmp_path) == ["work"] and not os.listdir(tmp_path / "work")
    model.save(b"bytes.npz")  # a bytes path, as open() takes (was a TypeError)
    assert np.array_equal(recfuse.load(b"bytes.npz", mmap=True).item_factors,
                          model.item_factors)
    model.save("plain")  # no suffix added: the file is where it was asked to be
    assert np.array_equal(recfuse.load("plain").user_factors, model.user_factors)


def test_a_model_saved_with_a_backend_this_machine_lacks_loads_with_auto(model, tmp_path,
                                                                          monkeypatch):
    from recfuse import _backend

    monkeypatch.setattr(model, "backend", "cupy")  # as if trained on a GPU host
    path = tmp_path / "gpu_model.npz"
    model.save(path)
    probe = _backend._probe

    def lacking_cupy(name, family="als"):
        module, info = probe(name, family)
        if name == "cupy":
            return None, info._replace(available=False, detail="not on this host")
        return module, info

    monkeypatch.setattr(_backend, "_probe", lacking_cupy)
    with pytest.warns(RuntimeWarning, match="backend='cupy', which is not available here "
                                            r"\(not on this host\)"):
        loaded = recfuse.load(path)
    assert loaded.backend == "auto"
    expected = recfuse.load(path, backend="cpu")  # an explicit choice: no warning, as asked
    assert expected.backend == "cpu"
    users = np.arange(3)
    for got, want in zip(loaded.recommend(users, k=5), expected.recommend(users, k=5)):
        np.testing.assert_array_equal(got, want)
    # an explicit choice this host lacks fails at load, not at the first query
    with pytest.raises(RuntimeError, match="backend 'cupy' is not available: not on this host"):
        recfuse.load(path, backend="cupy")


def test_loading_a_model_saved_with_a_backend_probes_that_backend_only(model, tmp_path):
    """The check for a saved backend this machine lacks read the whole backend table, which
    imports every optional backend: the first load of a model saved with backend="cpu"
    imported numba (~0.3 s) in a process that never uses it."""
    import subprocess
    import sys

    pytest.importorskip("numba")
    if not any(info.name == "cpu" and info.available for info in recfuse.backends("topk")):
        pytest.skip("the cpu backend is not available here")
    path = tmp_path / "cpu_model.npz"
    model.save(path)
    recfuse.load(path, backend="cpu").save(path)  # a copy saved with backend="cpu"
    assert persistence.read_model(path)[0]["params"]["backend"] == "cpu"
    code = ("import sys, warnings; warnings.simplefilter('error'); import recfuse; "
            "assert 'numba' not in sys.modules, 'recfuse imported numba'; "
            f"recfuse.load({str(path)!r}); print(sorted(m for m in ('numba', 'cupy') "
            "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k not in ("RECFUSE_BACKEND", "RECFUSE_SIMD")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("mmap", [False, True])
def test_load_opens_each_member_once(model, tmp_path, monkeypatch, mmap):
    """The member checks before np.load opened and parsed every member's header, then
    np.load opened and parsed it again: ~0.6 ms (+50%) on each load of a small model. Each
    member is read once now (mmap=True: the JSON header only, the arrays are mapped)."""
    path = tmp_path / "model.npz"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        members = len(archive.infolist())
    opened = []
    original = zipfile.ZipFile.open

    def counting_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    loaded = recfuse.load(path, mmap=mmap)
    assert len(opened) == (1 if mmap else members), opened
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)


# ---------------------------------------------------------------------- round trips of
# legitimate objects: what was saved loads back and behaves as before

def _same_interactions(a, b) -> None:
    assert repr(a) == repr(b) and a._settings == b._settings
    assert a.user_ids.ids.tolist() == b.user_ids.ids.tolist()
    assert a.item_ids.ids.tolist() == b.item_ids.ids.tolist()
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(a.matrix, name), getattr(b.matrix, name))


@pytest.mark.parametrize("mmap", [False, True])
def test_interactions_weighted_with_numpy_scalar_options_save_and_load(tmp_path, mmap):
    # options from a NumPy grid (np.float32, np.int64) were kept as given, and save failed:
    # "Object of type float32 is not JSON serializable"
    base = recfuse.Interactions.from_arrays(["a", "b", "a", "c"], ["x", "y", "y", "x"],
                                            [1.0, 2.0, 3.0, 4.0])
    for interactions in (base.weighted("bm25", k1=np.float32(1.5), b=np.int64(1)),
                         recfuse.Interactions.from_arrays(["a", "b"], ["x", "y"],
                                                          weighting="bm25", k1=np.int32(3))):
        path = tmp_path / "interactions.npz"
        interactions.save(path)
        loaded = recfuse.Interactions.load(path, mmap=mmap)
        _same_interactions(interactions, loaded)
        more = {"users": ["a", "d"], "items": ["y", "x"], "weights": [1.0, 5.0]}
        _same_interactions(interactions.add(**more), loaded.add(**more))


@pytest.mark.parametrize("mmap", [False, True])
def test_interactions_from_events_with_numpy_or_tuple_column_labels_save_and_load(tmp_path,
                                                                                 mmap):
    # a NumPy integer label made save fail (not JSON serializable); a tuple label (a
    # MultiIndex column) came back as a list, and add(frame) then raised "unhashable type"
    frames = [(pd.DataFrame({10: ["a", "b"], 20: ["x", "y"]}), np.int64(10), np.int64(20)),
              (pd.DataFrame({("e", "u"): ["a", "b"], ("e", "i"): ["x", "y"]}), ("e", "u"),
               ("e", "i"))]
    for frame, user, item in frames:
        interactions = recfuse.Interactions.from_events(frame, user=user, item=item)
        path = tmp_path / "interactions.npz"
        interactions.save(path)
        loaded = recfuse.Interactions.load(path, mmap=mmap)
        _same_interactions(interactions, loaded)
        more = frame.iloc[::-1].copy()
        more.iloc[0, 0] = "c"
        _same_interactions(interactions.add(more), loaded.add(more))


def test_load_scorer_reads_a_bytes_path_as_save_and_load_do(tmp_path):
    # save(b"...") and recfuse.load(b"...") work; load_scorer(b"...") raised "endswith first
    # arg must be bytes"
    from recfuse.ranking import load_scorer

    scorer = recfuse.MLPScorer([(np.array([[1.0, -2.0, 0.5]], np.float32), None, "identity")])
    path = os.fsencode(tmp_path / "ranker.npz")
    scorer.save(path)
    loaded = load_scorer(path)
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(loaded.score(X), scorer.score(X))
    assert loaded.source == os.fsdecode(path)


def test_each_loader_names_the_other_for_a_file_it_does_not_read(model, tmp_path):
    # recfuse.load read an Interactions file as "an unknown model type 'Interactions'", and
    # Interactions.load a model file as "holds a 'ALS', not Interactions": both now say which
    # function reads it
    log = recfuse.Interactions.from_matrix(datasets.synthetic_implicit(20, 10, 60, seed=0))
    log.save(tmp_path / "log.npz")
    model.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match=r"an Interactions file: read it with "
                                         r"recfuse\.Interactions\.load"):
        recfuse.load(tmp_path / "log.npz")
    with pytest.raises(ValueError, match=r"holds a saved 'ALS', not Interactions: read it with "
                                         r"recfuse\.load"):
        recfuse.Interactions.load(tmp_path / "model.npz")


@pytest.mark.parametrize("flag", ["yes", None, 2, np.array([True])])
def test_mmap_must_be_a_bool(model, tmp_path, flag):
    # read by its truth value before: mmap="no" mapped the file
    model.save(tmp_path / "model.npz")
    recfuse.Interactions.from_matrix(datasets.synthetic_implicit(20, 10, 60, seed=0)).save(
        tmp_path / "log.npz")
    with pytest.raises(TypeError, match=f"mmap must be a bool, got {type(flag).__name__}"):
        recfuse.load(tmp_path / "model.npz", mmap=flag)
    with pytest.raises(TypeError, match=f"mmap must be a bool, got {type(flag).__name__}"):
        recfuse.Interactions.load(tmp_path / "log.npz", mmap=flag)


def _refit(model, matrix):
    if isinstance(model, (recfuse.ALS, recfuse.BPR)):
        return model.fit(matrix)
    coo = matrix.tocoo()
    return model.fit(coo.row, coo.col, np.clip(coo.data, 1, 5))


@pytest.mark.parametrize("make", [
    lambda seed: recfuse.ALS(factors=4, iterations=2, random_state=seed),
    lambda seed: recfuse.BPR(factors=4, iterations=2, random_state=seed),
    lambda seed: recfuse.SVD(factors=4, epochs=2, random_state=seed),
    lambda seed: recfuse.SVDpp(factors=4, epochs=2, random_state=seed),
    lambda seed: recfuse.ExplicitALS(factors=4, iterations=2, random_state=seed),
], ids=["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"])
@pytest.mark.parametrize("seed", [7, np.int64(7)], ids=["int", "numpy-int"])
def test_a_loaded_model_keeps_its_seed_and_refits_as_the_original(make, seed, tmp_path):
    """The model file dropped random_state: a loaded model had None, so its refit drew fresh
    entropy and differed from the original's refit (and from every other run's)."""
    matrix = datasets.synthetic_implicit(60, 40, 500, seed=3)
    model = _refit(make(seed), matrix)
    model.save(tmp_path / "model.npz")
    loaded = recfuse.load(tmp_path / "model.npz")
    assert loaded.random_state == 7 and loaded.get_params() == model.get_params()
    _refit(model, matrix)
    _refit(loaded, matrix)
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    # a Generator's state cannot be kept: the file says None, as for random_state=None
    with_generator = _refit(make(np.random.default_rng(7)), matrix)
    with_generator.save(tmp_path / "generator.npz")
    assert recfuse.load(tmp_path / "generator.npz").random_state is None

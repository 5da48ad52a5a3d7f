"""Adversarial hunt on security at the boundaries: the files recfuse writes and reads, the
HTTP server, and what names paths or code.

The contract used here (persistence.py, cli.py, server.py, compat/implicit.py docstrings;
README "Serving" and "Design notes"):

- ``atomic_write`` (every ``save``): a temporary file beside the target (``O_EXCL``, mode
  0o666 less the umask), renamed over it; the result gets the permissions a plain
  ``open(path, "w")`` would give it (those of the file it replaces); a folder is refused
  before anything is written; a symbolic link is written through (documented).
- Readers never unpickle (``np.load`` only with ``allow_pickle=False``), never hang on a
  FIFO or a device, and check declared sizes against the file before allocating ("a small
  forged file cannot make a reader allocate gigabytes"); bad files are a ValueError naming
  the file.
- ``recfuse train -o FOLDER`` writes its files whole or not at all and leaves other files
  of the folder alone (a stale test.npz is removed: documented).
- The server binds 127.0.0.1 unless asked; /reload reloads the path it was started with and
  takes no path from the client; 4xx answers say what was expected, a 500 names only the
  exception's type; ids echoed in answers are UTF-8 ("answers and the log echo it as
  UTF-8").
- Nothing evaluates strings, runs a shell or imports a module named by the user.

Each finding is a strict xfail stating the expected behaviour; the rest are regression
tests. Run: python -m pytest -q -p no:cacheprovider tests/test_security_hunt.py
"""

from __future__ import annotations

import ast
import io
import os
import pathlib
import stat
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import persistence

SOURCE = pathlib.Path(recfuse.__file__).parent
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seen():
    return sp.random(30, 20, density=0.2, format="csr", random_state=5, dtype=np.float32)


@pytest.fixture(scope="module")
def model(seen):
    return recfuse.ALS(factors=4, iterations=2, random_state=0).fit(seen)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ====================================================================== static checks


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    if isinstance(func, ast.Name):
        return func.id
    return "?"


def test_no_unpickling_eval_exec_or_shell_anywhere_in_the_package():
    """Every np.load passes allow_pickle=False; no pickle.load(s), eval, exec, os.system,
    shell=True, or __import__ in python/recfuse."""
    offences = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree):
            name = _name(call.func)
            where = f"{path.relative_to(SOURCE)}:{call.lineno} {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("np.load", "numpy.load"):
                value = keywords.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    offences.append(where + " without allow_pickle=False")
            if name in ("pickle.load", "pickle.loads", "eval", "exec", "os.system",
                        "os.popen", "__import__", "marshal.loads", "shelve.open"):
                offences.append(where)
            shell = keywords.get("shell")
            if isinstance(shell, ast.Constant) and shell.value is True:
                offences.append(where + " shell=True")
    assert not offences, offences


# ====================================================================== atomic writes


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(model, tmp_path,
                                                                 monkeypatch):
    """The temporary name is created with O_EXCL: a link planted at the name save would
    pick is skipped, never written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    tokens = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(persistence.secrets, "token_hex", lambda n: next(tokens))
    os.symlink(victim, tmp_path / f".recfuse-{'0' * 16}.tmp")
    model.save(tmp_path / "model.npz")
    assert victim.read_text() == "keep me"
    assert os.path.islink(tmp_path / f".recfuse-{'0' * 16}.tmp")
    assert recfuse.load(tmp_path / "model.npz").user_factors.shape == (30, 4)
    assert not list(tmp_path.glob(".recfuse-1*"))  # the temporary it used is gone


def test_a_symlink_to_a_folder_is_refused_and_a_symlink_to_a_file_written_through(
        model, tmp_path):
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "dir", tmp_path / "to-dir")
    with pytest.raises(IsADirectoryError):
        model.save(tmp_path / "to-dir")
    assert os.listdir(tmp_path / "dir") == []
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    os.symlink(target, tmp_path / "link.npz")
    model.save(tmp_path / "link.npz")  # documented: the link stays, the file is replaced
    assert os.path.islink(tmp_path / "link.npz")
    assert recfuse.load(target).item_factors.shape == (20, 4)


def test_odd_names_save_and_load_and_an_overlong_one_leaves_nothing(model, tmp_path):
    for name in ["new\nline.npz", "x" * 251 + ".npz", "sp ace;$(id).npz", "é☃.npz"]:
        model.save(tmp_path / name)
        assert recfuse.load(tmp_path / name).user_factors.shape == (30, 4), name
    (tmp_path / "sub").mkdir()
    model.save(str(tmp_path / "sub" / ".." / "dots.npz"))
    assert (tmp_path / "dots.npz").is_file()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError):
        model.save(tmp_path / ("x" * 300 + ".npz"))
    assert sorted(os.listdir(tmp_path)) == before  # no temporary left behind


def test_save_refuses_a_fifo_at_the_target(model, tmp_path):
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    with pytest.raises((OSError, ValueError)):
        model.save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def _device(path) -> None:
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here: {error}")


def test_save_refuses_a_device_directly_or_through_a_symlink(model, tmp_path):
    _device(tmp_path / "null")
    os.symlink(tmp_path / "null", tmp_path / "link.npz")
    for name in ("link.npz", "null"):
        with pytest.raises((OSError, ValueError)):
            model.save(tmp_path / name)
        assert stat.S_ISCHR(os.stat(tmp_path / "null").st_mode), name


def test_a_new_file_gets_0o666_less_the_umask(model, tmp_path, umask_022):
    model.save(tmp_path / "fresh.npz")
    assert _mode(tmp_path / "fresh.npz") == 0o644


def test_the_temporary_file_is_never_more_open_than_the_file_it_replaces(tmp_path,
                                                                        umask_022):
    target = tmp_path / "secret.npz"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    modes = []

    def write(temporary):
        modes.append(_mode(temporary))
        with open(temporary, "wb") as handle:
            handle.write(b"new secret data")
            handle.flush()
            modes.append(stat.S_IMODE(os.fstat(handle.fileno()).st_mode))

    persistence.atomic_write(target, write)
    assert _mode(target) == 0o600 and target.read_bytes() == b"new secret data"
    assert all(mode & ~0o600 == 0 for mode in modes), [oct(m) for m in modes]


# ====================================================================== recfuse train -o


def _log(path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f"u{u},i{i}" for u, i in zip(rng.integers(0, 30, 300), rng.integers(0, 25, 300))]
    path.write_text("user,item\n" + "\n".join(rows) + "\n")


def _train(log, out) -> None:
    from recfuse import cli
    assert cli.main(["train", str(log), "-o", str(out), "--split", "none", "--iterations",
                     "2", "--factors", "4", "--json"]) == 0


def test_train_into_a_folder_leaves_its_other_files_and_links_alone(tmp_path, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "out"
    _log(log)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "events.csv").write_text("also mine")
    victim = tmp_path / "elsewhere.npz"
    victim.write_text("victim")
    os.symlink(victim, out / "model.npz")  # planted: train must not write through it
    _train(log, out)
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "events.csv").read_text() == "also mine"
    assert victim.read_text() == "victim"
    assert sorted(p.name for p in out.iterdir()) == ["events.csv", "model.npz", "notes.txt",
                                                     "train.npz"]
    model, train = recfuse.persistence.load_folder(out)
    assert model.user_factors.shape[0] == train.n_users


def test_train_keeps_the_permissions_of_the_files_it_replaces(tmp_path, umask_022, capsys):
    log, out = tmp_path / "log.csv", tmp_path / "out"
    _log(log)
    _train(log, out)
    for name in ("model.npz", "train.npz"):
        os.chmod(out / name, 0o600)
    _train(log, out)
    capsys.readouterr()
    assert {name: oct(_mode(out / name)) for name in ("model.npz", "train.npz")} == \
        {"model.npz": "0o600", "train.npz": "0o600"}


# ====================================================================== readers


def test_fifos_and_devices_as_model_paths_never_hang(tmp_path):
    """Every reader refuses a FIFO, a link to /dev/zero and a folder at once (in a
    subprocess with a timeout: a hang would be a failure, not a stuck suite)."""
    os.mkfifo(tmp_path / "fifo.npz")
    os.symlink("/dev/zero", tmp_path / "zero.npz")
    (tmp_path / "folder.npz").mkdir()
    code = f"""
import warnings, recfuse
from recfuse.compat.implicit import AlternatingLeastSquares
from recfuse.ranking import load_scorer
warnings.simplefilter("ignore")
readers = [recfuse.load, recfuse.Interactions.load, load_scorer,
           AlternatingLeastSquares.load, recfuse.persistence.load_folder]
for name in ("fifo.npz", "zero.npz", "folder.npz"):
    for read in readers:
        try:
            read({str(tmp_path)!r} + "/" + name)
        except (OSError, ValueError):
            pass
        else:
            raise SystemExit(f"{{read}} read {{name}}")
print("all refused")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "all refused" in done.stdout, done.stderr[-2000:]


def _npy(shape, descr="<f4", data=b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue() + data


def test_a_recfuse_file_declaring_a_gigabyte_is_refused_before_allocating(model, tmp_path):
    """The control of the compat finding below: recfuse.load checks first."""
    import json

    header = persistence.read_model(_saved(model, tmp_path))[0]
    text = json.dumps(header).encode()
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(persistence.HEADER_KEY + ".npy", _npy((len(text),), "|u1", text))
        archive.writestr("user_factors.npy", _npy((1 << 26, 4)))  # 1 GiB declared
        archive.writestr("item_factors.npy", _npy((20, 4), "<f4", bytes(320)))
    assert _peak_of_refused(recfuse.load, path, "forged.npz") < 64 << 20


def _peak_of_refused(load, path, match: str) -> int:
    """The peak bytes Python allocated while ``load(path)`` refused the file (a ValueError
    naming it)."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _saved(model, tmp_path) -> pathlib.Path:
    path = tmp_path / "model.npz"
    model.save(path)
    return path


def test_compat_load_of_a_forged_implicit_file_is_refused_before_allocating(tmp_path):
    from recfuse.compat.implicit import AlternatingLeastSquares

    path = tmp_path / "implicit.npz"
    with zipfile.ZipFile(path, "w") as archive:  # implicit's own layout: numpy.savez
        archive.writestr("factors.npy", _npy((), "<i8", struct.pack("<q", 4)))
        archive.writestr("user_factors.npy", _npy((1 << 26, 4)))  # 1 GiB declared, 0 given
        archive.writestr("item_factors.npy", _npy((3, 4), "<f4", bytes(48)))
    assert path.stat().st_size < 1000
    peak = _peak_of_refused(AlternatingLeastSquares.load, path, "implicit.npz")
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated for a {path.stat().st_size} B file"


@pytest.fixture(scope="module")
def compat_file(tmp_path_factory, seen):
    from recfuse.compat.implicit import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=4, iterations=1, random_state=0)
    model.fit(seen, show_progress=False)
    path = tmp_path_factory.mktemp("compat") / "model.npz"
    model.save(path)
    return path


@pytest.mark.parametrize("settings_bytes", [b"[1, 2]", b"not json", b'"text"'])
def test_compat_load_names_the_file_of_a_malformed_settings_member(compat_file, tmp_path,
                                                                  settings_bytes):
    from recfuse.compat import implicit

    header, arrays = persistence.read_model(compat_file)
    arrays[implicit.COMPAT_KEY] = np.frombuffer(settings_bytes, dtype=np.uint8)
    forged = tmp_path / "forged.npz"
    persistence.save_model(forged, header["model"], header["params"], arrays)
    with pytest.raises(ValueError, match="forged.npz"):
        implicit.AlternatingLeastSquares.load(forged)


def test_compat_save_and_load_take_a_bytes_path_as_recfuse_load_does(compat_file, tmp_path):
    from recfuse.compat.implicit import AlternatingLeastSquares

    assert recfuse.load(os.fsencode(compat_file)).factors == 4  # the rest of recfuse does
    loaded = AlternatingLeastSquares.load(os.fsencode(compat_file))
    loaded.save(os.fsencode(tmp_path / "again.npz"))
    assert recfuse.load(tmp_path / "again.npz").factors == 4


# ====================================================================== ids that JSON cannot carry

SURROGATE = "\ud800bad"


def _surrogate_log():
    users = np.array(["a", "b", "c", "a", "b", "c", "d", "d"], dtype=object)
    items = np.array(["x", SURROGATE, "y", "y", "x", "z", SURROGATE, "z"], dtype=object)
    return recfuse.Interactions.from_events({"user": users, "item": items})


def test_ids_with_a_lone_surrogate_are_refused_where_they_come_in():
    """Such ids made an Interactions file that Interactions.load refused, and a server that
    answered valid requests with a 422 codec error: now no id map takes them, from events,
    arrays (text or object) or a map of its own."""
    from recfuse.interactions import IdMap

    with pytest.raises(ValueError, match=r"ids must be text UTF-8 can write, got "
                                         r"'\\ud800bad' \(it holds a lone surrogate"):
        _surrogate_log()
    with pytest.raises(ValueError, match="lone surrogate"):
        recfuse.Interactions.from_arrays(["a", "b"], np.array(["x", SURROGATE]))
    with pytest.raises(ValueError, match="lone surrogate"):
        IdMap(["x", SURROGATE])
    assert IdMap(["x", "\U0001F600", "é"]).kind == "string"  # astral and accented: fine


# ====================================================================== the HTTP server

try:  # the serve extra and httpx: without them the tests below skip, the rest run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient deprecation of httpx
        from starlette.testclient import TestClient
    from recfuse.server import Limits, create_app
    SERVE = None
except ImportError as error:  # pragma: no cover - exercised without the extra
    SERVE = f"the [serve] extra or httpx is not installed ({error})"
needs_serve = pytest.mark.skipif(SERVE is not None, reason=SERVE or "")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def client(model_path):
    recommender = recfuse.Recommender(model_path, k=5, num_threads=1)
    app = create_app(recommender, model_path=str(model_path),
                     limits=Limits(max_k=50, max_batch=8, max_body_bytes=8192,
                                   max_events=100))
    with TestClient(app, raise_server_exceptions=False) as running:
        yield running


@needs_serve
def test_the_server_binds_to_loopback_unless_asked():
    import inspect

    from recfuse import cli, server

    assert inspect.signature(server.serve).parameters["host"].default == "127.0.0.1"
    parser = cli.build_parser()
    args, _ = parser.parse_known_args(["serve", "model.npz"])
    assert args.host == "127.0.0.1"


@needs_serve
def test_reload_takes_no_path_from_the_client(client, model_path, tmp_path):
    """/reload reads only the file the server was started with; a body naming another path
    is refused, and the model served stays the one it was."""
    other = tmp_path / "other.npz"
    recfuse.ALS(factors=3, iterations=1, random_state=1).fit(
        sp.random(7, 5, density=0.5, format="csr", random_state=1, dtype=np.float32)).save(other)
    before = client.get("/health").json()
    for body in ({"path": str(other)}, {"model": str(other)}, {"model_path": "/etc/passwd"}):
        reply = client.post("/reload", json=body)
        assert reply.status_code == 422 and "unknown fields" in reply.json()["error"]
    after = client.get("/health").json()
    assert (after["version"], after["users"], after["items"]) == \
        (before["version"], before["users"], before["items"])
    for query in ("?path=" + str(other), "?model=/etc/passwd"):
        reply = client.post("/reload" + query)
        assert reply.status_code == 200
        assert client.get("/health").json()["users"] == before["users"]


@needs_serve
def test_reload_without_a_model_path_is_refused(model):
    app = create_app(recfuse.Recommender(model, k=5, num_threads=1))
    with TestClient(app, raise_server_exceptions=False) as running:
        reply = running.post("/reload")
    assert reply.status_code == 422 and "not started from a model file" in reply.text


@needs_serve
def test_a_500_names_the_exception_type_only(model):
    recommender = recfuse.Recommender(model, k=5, num_threads=1)
    app = create_app(recommender)

    def broken():
        raise RuntimeError("/very/secret/path/model.npz failed at line 42")

    recommender.info = broken  # an instance attribute: this recommender only
    with TestClient(app, raise_server_exceptions=False) as running:
        reply = running.get("/health")
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal error: RuntimeError"}
    assert "secret" not in reply.text and "Traceback" not in reply.text


@needs_serve
def test_odd_paths_and_methods_are_json_4xx_and_never_metric_labels(client):
    odd = ["/recommend/../reload", "/%2e%2e/%2e%2e/etc/passwd", '/x"}evil{a="1',
           "/a%0Arecfuse_model_version 999", "/" + "z" * 4000, "/recommend%00"]
    for path in odd:
        reply = client.get(path)
        assert reply.status_code in (404, 405), (path, reply.status_code)
        assert "error" in reply.json()
    for method in ("PUT", "PATCH", "TRACE", "OPTIONS", "DELETE"):
        reply = client.request(method, "/recommend")
        assert reply.status_code == 405 and reply.headers["allow"] == "POST", method
    metrics = client.get("/metrics").text
    assert "evil" not in metrics and "999" not in metrics and "zzzz" not in metrics
    routes = {line.split('route="')[1].split('"')[0]
              for line in metrics.splitlines() if line.startswith("recfuse_requests_total{")}
    assert routes <= {"/recommend", "/events", "/reload", "/health", "/metrics", "(no route)"}


@needs_serve
@pytest.mark.parametrize("body, status", [
    (b'{"user": 1' + b"0" * 5000 + b"}", 400),  # over Python's 4300-digit int limit
    (b'{"user": 1' + b"0" * 4000 + b"}", 422),  # an int, beyond int64
    (b'{"user": 1e999999}', 422),  # inf
    (b'{"user": 1, "k": 1' + b"0" * 4000 + b"}", 422),
    (b'{"user": 1, "exclude": [' + b",".join([b"1"] * 3000) + b"]}", 200),
    (b'{"users": [' + b",".join([b"1"] * 3000) + b"]}", 422),  # over max_batch 8
    (b"[" * 100_000 + b"]" * 100_000, 413),  # over the body cap before it is parsed
    (b'{"user": 1, "exclude": ' + b"[" * 4000 + b"]" * 4000 + b"}", 400),
    (b'{"a": {"b": {"c": 1}}}', 422),
    (b'{"user": "1"}', 422), (b'{"user": null}', 422), (b'{"user": {"$gt": 0}}', 422),
], ids=["5000-digits", "4000-digits", "inf", "k-4000-digits", "3000-excludes", "3000-users",
        "deep-over-cap", "deep-under-cap", "nested-object", "string", "null", "operator"])
def test_json_bombs_and_ids_that_are_not_ids_are_4xx(client, body, status):
    reply = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text[:300]
    if status != 200:
        # no amplification: the message is never longer than the body it answers
        assert len(reply.json()["error"]) < len(body) + 300


@needs_serve
def test_a_body_over_the_cap_is_413_even_when_chunked(client):
    def chunks():
        for _ in range(20):
            yield b" " * 1000

    reply = client.post("/events", content=chunks())
    assert reply.status_code == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=12)


@needs_serve
@HYPOTHESIS
@given(fields=st.dictionaries(
    st.sampled_from(["user", "users", "k", "exclude", "excludes", "context", "item",
                     "weight", "call"]), json_values, max_size=4),
    route=st.sampled_from(["/recommend", "/events"]))
def test_drawn_bodies_are_never_a_500(client, fields, route):
    import json

    body = json.dumps(fields, allow_nan=True).encode()
    reply = client.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code < 500 or reply.status_code == 503, (body, reply.text)
    assert "Traceback" not in reply.text

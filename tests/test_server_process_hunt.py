"""Adversarial hunt on ``recfuse serve`` as users run it: a real uvicorn process (httptools,
uvloop when installed) on a free loopback port, spoken to with httpx and raw sockets.

The contract used (python/recfuse/server.py module docstring, ``serve``, ``Limits``;
python/recfuse/cli.py module docstring and ``_serve``):

- statuses: 400 malformed JSON or a body cut short, 413 a body over ``max_body_bytes``
  (``--max-body-bytes``, default 1 MiB), 422 a well-formed but wrong request, 404/405 unknown
  route or method, 503 unfinished when shutdown's grace period ends; 500 only for a bug;
  errors are ``{"error": message}``; a refused request changes nothing;
- a server of a model file names users and items by rows (ints >= 0); a server of a model
  folder by the ids of its training log; /recommend answers as ``Recommender.recommend``
  called alone (the oracle here: an in-process ``Recommender`` built from the same saved
  model, fed the same events); /events is visible to the next /recommend and logged
  (GET/DELETE /events; DELETE empties the log, later events are kept);
- /metrics: ``recfuse_requests_total`` by route and status;
- lifecycle: a busy port or a bad model fails at start with one line ``recfuse serve:
  error: ...`` and exit status 2, no traceback; on SIGTERM or SIGINT requests in flight
  are finished (or 503 after the grace period) and ``recfuse serve`` exits 0; Ctrl-C ends
  the server quietly; model files never load pickles.

Every server is started with OMP_* and RECFUSE_* stripped from its environment and is killed
in a fixture's teardown. There are no timing assertions: deadlines only stop a hang.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse

pytest.importorskip("uvicorn", reason="the [serve] extra (uvicorn) is not installed")
pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc and sends POSIX signals")

N_USERS, N_ITEMS, K = 80, 60, 5
HYPOTHESIS = settings(max_examples=50, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])
TRANSPORT_ERRORS = (httpx.TransportError, ConnectionError, socket.timeout)


# ------------------------------------------------------------------------------ the server


def _child_env() -> dict:
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("OMP_", "RECFUSE_"))}


class Served:
    """``recfuse serve MODEL --port 0`` in a child process, ready once /health answers."""

    def __init__(self, model, folder, *options):
        self.log = folder / f"serve-{uuid.uuid4().hex[:8]}.log"
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recfuse", "serve", str(model), "--port", "0",
                 "--threads", "1", "--k", str(K), *options],
                stdout=subprocess.DEVNULL, stderr=stderr, env=_child_env())
        self.client = None
        try:
            self.port = self._ready()
        except BaseException:
            self.kill()
            raise
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=30,
                                   limits=httpx.Limits(max_connections=64))

    def _ready(self) -> int:
        deadline = time.monotonic() + 90
        port = None
        while True:
            if port is None:
                found = re.search(r"on http://127\.0\.0\.1:(\d+) ", self.stderr())
                port = int(found.group(1)) if found else None
            if port is not None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                        probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")
                        if probe.recv(12).startswith(b"HTTP/1.1 200"):
                            return port
                except OSError:
                    pass
            assert self.process.poll() is None, f"recfuse serve exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"recfuse serve did not start: {self.stderr()}"
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stat(self) -> dict:
        with open(f"/proc/{self.process.pid}/status") as file:
            status = file.read()
        return {"threads": int(re.search(r"Threads:\s+(\d+)", status).group(1)),
                "rss_kb": int(re.search(r"VmRSS:\s+(\d+)", status).group(1)),
                "fds": len(os.listdir(f"/proc/{self.process.pid}/fd"))}

    def requests_total(self) -> collections.Counter:
        """{(route, status): count} from /metrics."""
        counts = collections.Counter()
        for line in self.client.get("/metrics").text.splitlines():
            found = re.fullmatch(r'recfuse_requests_total\{route="([^"]+)",status="(\d+)"\} (\d+)',
                                 line)
            if found:
                counts[(found.group(1), int(found.group(2)))] = int(found.group(3))
        return counts

    def raw(self, data: bytes, responses: int = 1, timeout: float = 10) -> bytes:
        """Send ``data`` on a new connection; read until ``responses`` whole responses came
        (or the server closed the connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            return _read_responses(sock, responses)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def _read_responses(sock, responses: int) -> bytes:
    out = b""
    try:
        while len(_statuses(out)) < responses or not _complete(out):
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def _statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d\d\d) ", data)]


def _complete(data: bytes) -> bool:
    """Whether the last response in ``data`` has its whole body (content-length)."""
    head_at = data.rfind(b"HTTP/1.1 ")
    head, sep, body = data[head_at:].partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.I)
    return bool(sep) and (length is None or len(body) >= int(length.group(1)))


def _body(response: bytes) -> dict:
    return json.loads(response[response.rfind(b"\r\n\r\n") + 4:])


def _post(path: str, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"
            % (path.encode(), length, extra)) + body


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    seen = sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=5,
                     dtype=np.float32)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    recfuse.ALS(factors=5, iterations=3, random_state=0).fit(seen).save(path)
    return path


@pytest.fixture(scope="module")
def cholesky_file(tmp_path_factory):
    """ALS with the exact solve: a fold-in's result does not depend on the order of calls
    (the default CG fold-in starts from the current vector, and a /reload replays a user's
    calls together: exact "under ALS's Cholesky", as Recommender.observe says)."""
    seen = sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=6,
                     dtype=np.float32)
    path = tmp_path_factory.mktemp("cholesky") / "model.npz"
    recfuse.ALS(factors=5, iterations=3, solver="cholesky", random_state=0).fit(seen).save(path)
    return path


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A `recfuse train`-style folder: string user ids, integer item ids."""
    rng = np.random.default_rng(3)
    users = [f"u{u:02d}" for u in rng.integers(0, 40, 600)]
    items = (1000 + 7 * rng.integers(0, 30, 600)).tolist()
    train = recfuse.Interactions.from_arrays(users, items)
    folder = tmp_path_factory.mktemp("folder")
    recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train).save(folder / "model.npz")
    train.save(folder / "train.npz")
    return folder


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    """A server only read from (no accepted /events): its answers stay the saved model's."""
    served = Served(model_file, tmp_path_factory.mktemp("logs"))
    yield served
    served.kill()


@pytest.fixture
def start(tmp_path):
    started = []

    def run(model, *options) -> Served:
        served = Served(model, tmp_path, *options)
        started.append(served)
        return served

    yield run
    for served in started:
        served.kill()


@pytest.fixture(scope="module")
def oracle(model_file):
    return recfuse.Recommender(model_file, k=K, num_threads=1)


def _same(answer: dict, expected) -> None:
    """A /recommend answer equals an in-process Recommendation (padding dropped)."""
    keep = expected.ids >= 0
    assert answer["items"] == expected.ids[keep].tolist(), (answer, expected)
    assert answer["stages"] == expected.stages[keep].tolist()
    np.testing.assert_allclose(answer["scores"], expected.scores[keep], rtol=1e-6)


# ------------------------------------------------------------------------------ bodies and HTTP


def test_a_1gb_content_length_is_refused_at_once_without_allocating_it(server):
    before = server.stat()
    for extra in (b"", b"Expect: 100-continue\r\n"):
        reply = server.raw(_post("/recommend", b'{"user": 1}', extra, length=1 << 30))
        # no "100 Continue" first: the body is refused before the client sends it
        assert _statuses(reply) == [413], reply
        assert "at most 1048576" in _body(reply)["error"]
    assert server.stat()["rss_kb"] - before["rss_kb"] < 64 * 1024
    assert server.client.get("/health").status_code == 200


@pytest.mark.parametrize("first", [
    _post("/recommend", b'{"user": 1, "exclude": [' + b"1, " * 400_000 + b'2]}'),  # 413
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n",
    _post("/recommend", b'{"use'),  # 400
    _post("/recommend", b'{"uzer": 1}'),  # 422
    _post("/nowhere", b'{"user": 1}'),  # 404 with a body
    b"PUT /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"user\": 1}",  # 405
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"user\": 1}",
], ids=["413-declared", "413-chunked", "400", "422", "404", "405", "health-with-body"])
def test_keep_alive_framing_survives_a_refused_or_unread_body(server, oracle, first):
    """The next request on the same connection is parsed where the refused one ended."""
    reply = server.raw(first + _post("/recommend", b'{"user": 2}'), responses=2)
    statuses = _statuses(reply)
    assert len(statuses) == 2 and statuses[1] == 200, reply[-300:]
    _same(_body(reply), oracle.recommend(2))


@pytest.mark.parametrize("request_bytes", [
    b"\x00\x01\x02 garbage\r\n\r\n",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
    b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /health?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["garbage", "cl-text", "cl-negative", "cl-twice", "cl-and-chunked", "http2", "long-url"])
def test_malformed_http_is_a_400_and_the_server_keeps_serving(server, request_bytes):
    before = server.requests_total()
    reply = server.raw(request_bytes)
    assert _statuses(reply) == [400], reply[:200]
    assert server.client.post("/recommend", json={"user": 1}).status_code == 200
    after = server.requests_total()
    assert after - before == collections.Counter({("/recommend", 200): 1}), after - before


@pytest.mark.parametrize("body, status, message", [
    (b'{"user": "\xff\xfe"}', 400, "not valid JSON"),
    (b'{"user": 1', 400, "not valid JSON"),
    (b"[" * 100_000, 400, "too deeply"),
    (b'{"a":' * 100_000, 400, "too deeply"),
    (b'{"user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "too deeply"),
    (b'{"user": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (b'{"user": NaN}', 422, "user must be an integer"),
    (b'{"user": 1, "k": 1e999}', 422, "k must be an integer"),
    (b'{"user": -Infinity}', 422, "user must be an integer"),
    (b'{"user": 1.0}', 422, "user must be an integer"),
    (b'{"user": true}', 422, "user must be an integer"),
    (b'{"user": "1"}', 422, "user must be an integer"),
    (b'{"user": null}', 422, "user must be an integer"),
    (b'{"user": []}', 422, "user must be an integer"),
    (b'{"user": {}}', 422, "user must be an integer"),
    (b'{"user": -1}', 422, "user must be >= 0"),
    (b'{"user": 9223372036854775808}', 422, "int64"),
    (b'{"user": 1, "exclude": [-1]}', 422, "exclude must hold integers >= 0"),
    (b'{"user": 1, "exclude": [true]}', 422, "exclude must hold integers >= 0"),
    (b'{"user": 1, "k": 0}', 422, "k must be between 1 and 1000"),
    (b'{"user": 1, "k": 1001}', 422, "k must be between 1 and 1000"),
    (b'{"user": 1, "users": [1]}', 422, "not both"),
    (b'"user"', 422, "must be a JSON object"),
    (b"\xef\xbb\xbf[1]", 422, "must be a JSON object"),
])
def test_malformed_and_wrong_json_is_a_4xx_that_says_what_was_expected(server, body, status,
                                                                        message):
    reply = server.raw(_post("/recommend", body))
    assert _statuses(reply) == [status], reply[:300]
    assert message in _body(reply)["error"]


def test_nesting_just_under_the_json_parsers_limit_is_never_a_500(server):
    """Values nested as deep as json.loads still parses, in every field whose error message
    echoes the value (repr), on both routes."""
    templates = [("/recommend", b'{"user": 1, "exclude": [%s]}'),
                 ("/recommend", b'{"user": 1, "context": %s}'),
                 ("/recommend", b'{"users": [1], "excludes": [%s]}'),
                 ("/recommend", b'{"users": [%s]}'),
                 ("/events", b'{"user": [1], "item": [1], "weight": [%s]}'),
                 ("/events", b'{"user": [1], "item": [1], "call": [%s]}'),
                 ("/events", b'{"user": [%s], "item": [1]}')]
    for path, template in templates:
        seen = set()
        for depth in range(930, 1010, 3):
            reply = server.raw(_post(path, template % (b"[" * depth + b"]" * depth)))
            seen.update(_statuses(reply))
        assert seen <= {400, 422}, (path, template, seen)
    assert server.client.get("/events").json()["user"] == []


def test_duplicate_keys_are_refused(server):
    """A field named twice is a malformed request (json.loads alone would keep the last)."""
    reply = server.raw(_post("/recommend", b'{"user": 1, "user": 2, "k": 9, "k": 3}'))
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert "'user' appears twice" in _body(reply)["error"]


def test_a_very_long_id_is_refused_with_a_short_message(server):
    reply = server.client.post("/recommend", json={"user": "x" * 500_000})
    assert reply.status_code == 422 and len(reply.content) < 300, reply.content[:300]
    reply = server.client.post("/recommend", json={"user": 1, "exclude": [2 ** 200]})
    assert reply.status_code == 422 and len(reply.content) < 300


_ID = st.one_of(st.integers(-3, N_USERS + 5), st.sampled_from([2 ** 31, 2 ** 63 - 1, 2 ** 63]),
                st.booleans(), st.none(), st.floats(allow_nan=True), st.text(max_size=3),
                st.lists(st.integers(0, 3), max_size=2))
_K = st.one_of(st.none(), st.integers(-1, 1002), st.just(2.0), st.just("3"))
_EXCLUDE = st.one_of(st.none(), st.lists(st.integers(0, N_ITEMS + 3), max_size=30),
                     st.lists(_ID, max_size=3), st.integers(0, 5))


def _valid_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _valid_exclude(value) -> bool:
    return value is None or isinstance(value, list) and all(_valid_id(v) for v in value)


def _valid_k(value) -> bool:
    return value is None or _valid_id(value) and 1 <= value <= 1000


def _exclude_array(value):
    return None if value is None else np.array(value, dtype=np.int64)


@HYPOTHESIS
@given(user=_ID, k=_K, exclude=_EXCLUDE,
       fields=st.sets(st.sampled_from(["k", "exclude", "junk"]), max_size=3))
def test_single_user_requests_are_answered_as_the_embedded_recommender_or_refused(
        server, oracle, user, k, exclude, fields):
    body = {"user": user, **({"k": k} if "k" in fields else {}),
            **({"exclude": exclude} if "exclude" in fields else {}),
            **({"junk": 1} if "junk" in fields else {})}
    reply = server.client.post("/recommend", content=json.dumps(body).encode())
    valid = (_valid_id(user) and "junk" not in fields and (_valid_k(k) or "k" not in fields)
             and (_valid_exclude(exclude) or "exclude" not in fields))
    if not valid:
        assert reply.status_code == 422, (body, reply.text)
        assert "error" in reply.json()
        return
    assert reply.status_code == 200, (body, reply.text)
    _same(reply.json(), oracle.recommend(user, k=k if "k" in fields else None,
                                         exclude=_exclude_array(exclude if "exclude" in fields
                                                                else None)))


@HYPOTHESIS
@given(users=st.lists(_ID, max_size=6), k=_K, excludes=st.lists(_EXCLUDE, max_size=6),
       give_excludes=st.booleans())
def test_multi_user_requests_are_answered_as_the_embedded_recommender_or_refused(
        server, oracle, users, k, excludes, give_excludes):
    body = {"users": users, "k": k, **({"excludes": excludes} if give_excludes else {})}
    reply = server.client.post("/recommend", content=json.dumps(body).encode())
    valid = (all(_valid_id(u) for u in users) and _valid_k(k) and (
        not give_excludes or len(excludes) == len(users)
        and all(_valid_exclude(e) for e in excludes)))
    if not valid:
        assert reply.status_code == 422, (body, reply.text)
        return
    assert reply.status_code == 200, (body, reply.text)
    results = reply.json()["results"]
    assert [r["user"] for r in results] == users
    for position, user in enumerate(users):
        exclude = excludes[position] if give_excludes else None
        _same(results[position], oracle.recommend(user, k=k, exclude=_exclude_array(exclude)))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["user", "users", "item", "weight", "k",
                                                        "exclude", "excludes", "call", "x"]),
                                       inner, max_size=4), max_leaves=12)


@HYPOTHESIS
@given(body=st.one_of(st.binary(max_size=64), _JSON.map(lambda v: json.dumps(v).encode())),
       path=st.sampled_from(["/recommend", "/events", "/reload"]))
def test_any_body_is_answered_never_with_a_500(start_events_server, body, path):
    served = start_events_server
    before = served.client.get("/events").json()
    reply = served.client.post(path, content=body)
    assert reply.status_code in (200, 400, 413, 422), (body, reply.status_code, reply.text)
    assert isinstance(reply.json(), dict)
    if reply.status_code != 200 or path != "/events":
        after = served.client.get("/events").json()
        assert after["user"] == before["user"] and after["item"] == before["item"], body
    assert served.process.poll() is None


@pytest.fixture(scope="module")
def start_events_server(model_file, tmp_path_factory):
    """A server that takes events (its answers drift from the saved model's)."""
    served = Served(model_file, tmp_path_factory.mktemp("events"))
    yield served
    served.kill()


@HYPOTHESIS
@given(users=st.lists(st.one_of(st.integers(0, N_USERS + 3), _ID), max_size=4),
       items=st.lists(st.one_of(st.integers(0, N_ITEMS - 1), _ID), max_size=4),
       weights=st.one_of(st.none(), st.lists(st.one_of(
           st.integers(0, 3), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
           st.just(1e300)), max_size=4)))
def test_refused_events_change_nothing_and_accepted_ones_are_logged_as_sent(
        start_events_server, users, items, weights):
    served = start_events_server
    body = {"user": users, "item": items, **({} if weights is None else {"weight": weights})}
    before = served.client.get("/events").json()
    health = served.client.get("/health").json()
    reply = served.client.post("/events", content=json.dumps(body).encode())
    after = served.client.get("/events").json()
    assert reply.status_code in (200, 422), (body, reply.text)
    if reply.status_code == 422:
        assert after == before
        now = served.client.get("/health").json()
        assert (now["observed_users"], now["added_items"]) == (
            health["observed_users"], health["added_items"])
        return
    sent = len(users)
    assert reply.json()["accepted"] == sent
    assert after["user"][len(before["user"]):] == users
    assert after["item"][len(before["item"]):] == items
    assert after["weight"][len(before["weight"]):] == (
        [1.0] * sent if weights is None else [float(w) for w in weights])


# ------------------------------------------------------------------------------ ids of a log


def test_a_folder_server_takes_odd_and_very_long_string_ids(start, model_folder):
    served = start(model_folder)
    long_id = "x" * 300_000
    odd = [long_id, "", " ", "é", "😀", "u01\x00", "\u2028"]
    reply = served.client.post("/events", json={"user": odd, "item": [1000] * len(odd)})
    assert reply.status_code == 200 and reply.json()["accepted"] == len(odd), reply.text
    assert served.client.get("/events").json()["user"] == odd
    for user in odd:
        reply = served.client.post("/recommend", json={"user": user, "k": 3})
        assert reply.status_code == 200 and reply.json()["user"] == user
        assert 1000 not in reply.json()["items"]  # its own event's item is seen
    for wrong in (1, 1.5, True, None, ["u01"], {"u": 1}):
        reply = served.client.post("/recommend", json={"user": wrong})
        assert reply.status_code == 422 and "ids of the training log" in reply.json()["error"]
    # a lone surrogate, written as JSON allows it, is refused (it could not be answered)
    reply = served.raw(_post("/events", b'{"user": ["\\ud800"], "item": [1000]}'))
    assert _statuses(reply) == [422], reply
    assert served.client.get("/events").json()["user"] == odd


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_requests_equal_the_same_calls_in_process_and_metrics_count_them(
        start, cholesky_file):
    served = start(cholesky_file)
    rng = np.random.default_rng(7)
    users = list(range(0, N_USERS, 3)) + list(range(N_USERS, N_USERS + 8))  # 8 new users
    calls = []  # (route, body or bytes, expected status)
    events = []
    for user in users:
        for _ in range(2):
            items = rng.choice(N_ITEMS, size=3, replace=False).tolist()
            weights = rng.integers(1, 5, size=3).tolist()  # integers: sums exact in any order
            events.append({"user": [user] * 3, "item": items, "weight": weights})
            calls.append(("/events", events[-1], 200))
    for n in range(150):
        calls.append(("/recommend", {"user": int(rng.integers(0, N_USERS + 10))}, 200))
    for n in range(20):
        calls.append(("/recommend", {"users": rng.integers(0, 90, 4).tolist(), "k": 7}, 200))
    calls += [("/reload", {}, 200)] * 3  # replays the log into the reloaded model
    calls += [("/recommend", {"user": -1}, 422)] * 5 + [("/events", {"user": [1]}, 422)] * 5
    calls += [("/recommend", b'{"user', 400)] * 5 + [("/health", None, 200)] * 5
    order = rng.permutation(len(calls))
    calls = [calls[p] for p in order]
    before = served.requests_total()

    def send(call):
        route, body, _ = call
        if body is None:
            return served.client.get(route).status_code
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return served.client.post(route, content=content).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, calls))
    assert statuses == [expected for _, _, expected in calls]
    sent = collections.Counter((route, status) for (route, _, _), status in zip(calls, statuses))
    assert served.requests_total() - before == sent

    logged = served.client.get("/events").json()
    assert sorted(zip(logged["user"], logged["item"], logged["weight"])) == sorted(
        (u, i, float(w)) for e in events for u, i, w in zip(e["user"], e["item"], e["weight"]))
    # the same calls one after another, in the order sent: with the exact (Cholesky) solve a
    # user's vector is the solution over its whole row, whatever the order and grouping of
    # its calls, the /reload replays included
    embedded = recfuse.Recommender(cholesky_file, k=K, num_threads=1)
    for batch in events:
        embedded.observe(batch)
    health = served.client.get("/health").json()
    assert (health["version"], health["observed_users"]) == (4, len(users))
    for user in users + [1, 2, N_USERS + 20]:
        reply = served.client.post("/recommend", json={"user": user})
        _same(reply.json(), embedded.recommend(user))


def test_events_posted_while_the_log_is_deleted_are_each_taken_exactly_once(
        start_events_server):
    served = start_events_server
    served.client.delete("/events")
    marks = [1.0 + n / 1024 for n in range(240)]  # each event told apart by its weight
    taken = []

    def post(weight):
        reply = served.client.post("/events", json={"user": [int(weight * 1024) % N_USERS],
                                                    "item": [7], "weight": [weight]})
        assert reply.status_code == 200, reply.text

    def delete(_):
        reply = served.client.delete("/events")
        assert reply.status_code == 200, reply.text
        taken.extend(reply.json()["weight"])

    jobs = [(post, w) for w in marks] + [(delete, None)] * 24
    order = np.random.default_rng(1).permutation(len(jobs))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda p: jobs[p][0](jobs[p][1]), order))
    taken.extend(served.client.delete("/events").json()["weight"])
    assert sorted(taken) == marks


def test_threads_descriptors_and_memory_stay_flat_over_2000_requests(start, model_file):
    served = start(model_file)
    closing = httpx.Client(base_url=served.base, timeout=30, headers={"Connection": "close"})

    def burst(count, client):
        for n in range(count):
            kind = n % 6
            if kind == 0:
                reply = client.post("/recommend", json={"user": n % 90, "exclude": [1, 2]})
            elif kind == 1:
                reply = client.post("/recommend", json={"users": [n % 80, 3], "k": 7})
            elif kind == 2:
                reply = client.post("/events", json={"user": [n % 80], "item": [n % N_ITEMS]})
            elif kind == 3:
                reply = client.post("/recommend", content=b'{"user": "x"}')
            elif kind == 4:
                reply = client.get("/health")
            else:
                reply = client.post("/recommend", content=b"{")
            assert reply.status_code in (200, 400, 422)

    try:
        burst(300, served.client)  # warm: pools and batcher threads started
        burst(60, closing)
        time.sleep(0.5)
        warm = served.stat()
        burst(1400, served.client)
        burst(600, closing)  # a new connection each
        time.sleep(0.5)
        after = served.stat()
    finally:
        closing.close()
    assert after["threads"] == warm["threads"], (warm, after)
    assert after["fds"] <= warm["fds"] + 2, (warm, after)
    assert after["rss_kb"] - warm["rss_kb"] < 32 * 1024, (warm, after)
    counts = served.requests_total()
    assert sum(counts.values()) == 2360 + 1  # + the start's /health probe


# ------------------------------------------------------------------------------ lifecycle


def _hold_in_flight(served, path: str, body: bytes):
    """A request the app has started reading (its 100 Continue came): in flight."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                 b"Expect: 100-continue\r\n\r\n" % (path.encode(), len(body)))
    assert sock.recv(100).startswith(b"HTTP/1.1 100"), path
    return sock, body


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_under_load_answers_requests_in_flight_and_exits_0_quietly(
        start, model_file, oracle, sig):
    served = start(model_file)
    held = [_hold_in_flight(served, "/recommend", b'{"user": 3}'),
            _hold_in_flight(served, "/recommend", b'{"users": [4, 5]}'),
            _hold_in_flight(served, "/events", b'{"user": [6], "item": [7]}')]
    outcomes = collections.Counter()
    stop = threading.Event()

    def load(n):
        with httpx.Client(base_url=served.base, timeout=30) as client:
            while not stop.is_set():
                try:
                    reply = client.post("/recommend", json={"user": n})
                    outcomes[reply.status_code] += 1
                except TRANSPORT_ERRORS as error:
                    outcomes[type(error).__name__] += 1
                    if isinstance(error, httpx.ConnectError):
                        return

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    served.process.send_signal(sig)
    time.sleep(0.2)
    for sock, body in held:
        sock.sendall(body)
    replies = []
    for sock, _ in held:
        with sock:
            replies.append(_read_responses(sock, 1))
    status = served.process.wait(60)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert [_statuses(r) for r in replies] == [[200]] * 3, replies
    _same(_body(replies[0]), oracle.recommend(3))
    for position, user in enumerate((4, 5)):
        _same(_body(replies[1])["results"][position], oracle.recommend(user))
    assert _body(replies[2])["accepted"] == 1
    assert outcomes[200] > 0 and set(outcomes) <= {200, 503, "ConnectError", "ReadError",
                                                    "WriteError", "RemoteProtocolError"}, outcomes
    assert status == 0, served.stderr()
    assert "Traceback" not in served.stderr() and "ERROR" not in served.stderr()


def test_ctrl_c_twice_while_a_request_holds_the_shutdown_ends_quietly(start, model_file):
    served = start(model_file)
    sock, _ = _hold_in_flight(served, "/recommend", b'{"user": 3}')
    with sock:
        served.process.send_signal(signal.SIGINT)
        time.sleep(0.5)  # waiting for the held request (up to 10 s)
        served.process.send_signal(signal.SIGINT)  # force quit
        status = served.process.wait(60)
        reply = _read_responses(sock, 1)
    assert _statuses(reply) == [503], reply
    assert status in (0, 130), served.stderr()
    assert "Traceback" not in served.stderr(), served.stderr()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_a_second_server_on_the_same_port_fails_clearly_and_the_first_keeps_serving(
        server, model_file, tmp_path, host):
    result = subprocess.run([sys.executable, "-m", "recfuse", "serve", str(model_file),
                             "--host", host, "--port", str(server.port)],
                            capture_output=True, text=True, timeout=120, env=_child_env(),
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"recfuse serve: error: cannot listen on --host {host} --port "
                             f"{server.port}: Address already in use\n")
    assert server.client.get("/health").status_code == 200


def _bad_models(folder, good: bytes) -> tuple[dict, object]:
    """({name: path of something that is not a loadable model}, the file a pickle would
    create were it run)."""
    marker = folder / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    paths = {"missing": folder / "missing.npz", "empty": folder / "empty.npz",
             "random": folder / "random.npz", "truncated": folder / "truncated.npz",
             "flipped": folder / "flipped.npz", "foreign": folder / "foreign.npz",
             "pickle-member": folder / "pickle.npz", "pickle-file": folder / "file.pkl",
             "empty-folder": folder / "empty", "junk-train": folder / "junk",
             "fifo": folder / "fifo.npz"}
    paths["empty"].write_bytes(b"")
    paths["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    paths["truncated"].write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    paths["flipped"].write_bytes(bytes(flipped))
    np.savez(paths["foreign"], a=np.arange(3))
    # the real file with one member replaced by an object array: loading it runs the pickle
    payload = np.empty(2, dtype=object)
    payload[:] = Payload()
    with zipfile.ZipFile(io.BytesIO(good)) as source, \
            zipfile.ZipFile(paths["pickle-member"], "w") as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "user_factors.npy":
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, payload, allow_pickle=True)
                data = buffer.getvalue()
            out.writestr(info.filename, data)
    paths["pickle-file"].write_bytes(pickle.dumps(Payload()))
    paths["empty-folder"].mkdir()
    paths["junk-train"].mkdir()
    (paths["junk-train"] / "model.npz").write_bytes(good)
    (paths["junk-train"] / "train.npz").write_bytes(b"junk")
    os.mkfifo(paths["fifo"])
    return paths, marker


def test_a_missing_or_corrupt_model_fails_at_start_with_one_line(model_file, tmp_path):
    paths, marker = _bad_models(tmp_path, model_file.read_bytes())
    running = {name: subprocess.Popen(
        [sys.executable, "-m", "recfuse", "serve", str(path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
        for name, path in paths.items()}
    failures = []
    for name, process in running.items():
        try:
            out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            failures.append((name, "still running", err))
            continue
        lines = err.splitlines()
        if process.returncode != 2 or "Traceback" in err or len(lines) != 1 or \
                not lines[0].startswith("recfuse serve: error: ") or out:
            failures.append((name, process.returncode, err))
    assert not failures, failures
    assert not marker.exists(), "a pickle in a model file was run"


def test_a_folder_server_under_concurrent_events_and_reloads_answers_by_the_same_ids(
        start, tmp_path):
    """A model folder: requests name users and items by the log's ids; /reload renumbers
    the logged events into the reloaded model by their ids. Concurrent /events (known and
    new users), /recommend and /reload must end where the same events, observed one after
    another in process, end (the exact solve: order and grouping do not matter)."""
    rng = np.random.default_rng(11)
    log_users = [f"u{u:02d}" for u in rng.integers(0, 40, 600)]
    log_items = (1000 + 7 * rng.integers(0, 30, 600)).tolist()
    train = recfuse.Interactions.from_arrays(log_users, log_items)
    model = recfuse.ALS(factors=4, iterations=3, solver="cholesky", random_state=0).fit(train)
    model.save(tmp_path / "model.npz")
    train.save(tmp_path / "train.npz")
    served = start(tmp_path)
    known_users = train.user_ids.ids.tolist()
    known_items = train.item_ids.ids.tolist()
    users = known_users[::4] + [f"new-{n}" for n in range(8)]
    events, calls = [], []
    for user in users:
        for _ in range(2):
            items = [known_items[p] for p in rng.choice(len(known_items), 3, replace=False)]
            events.append({"user": [user] * 3, "item": items,
                           "weight": rng.integers(1, 5, size=3).tolist()})
            calls.append(("/events", events[-1]))
    calls += [("/recommend", {"user": users[int(p)]}) for p in rng.integers(0, len(users), 120)]
    calls += [("/recommend", {"users": [users[int(p)] for p in rng.integers(0, len(users), 3)],
                              "excludes": [[known_items[0]], [], None]})] * 20
    calls += [("/reload", {})] * 4
    calls = [calls[p] for p in rng.permutation(len(calls))]

    def send(call):
        reply = served.client.post(call[0], json=call[1])
        return reply.status_code, reply.text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(send, calls))
    assert [status for status, _ in replies] == [200] * len(calls), [
        r for r in replies if r[0] != 200][:3]
    logged = served.client.get("/events").json()
    assert sorted(zip(logged["user"], logged["item"], logged["weight"])) == sorted(
        (u, i, float(w)) for e in events for u, i, w in zip(e["user"], e["item"], e["weight"]))
    assert served.client.get("/health").json()["version"] == 5

    embedded = recfuse.Recommender(model, k=K, num_threads=1)
    rows = {user: row for row, user in enumerate(known_users)}
    for user in users:
        rows.setdefault(user, len(rows))  # a new user: the next row
    for batch in events:
        embedded.observe({"user": [rows[u] for u in batch["user"]],
                          "item": train.item_ids.to_internal(batch["item"]),
                          "weight": batch["weight"]})
    for user in users + ["never-seen"]:
        answer = served.client.post("/recommend", json={"user": user}).json()
        expected = embedded.recommend(rows.get(user, 2 ** 62))
        keep = expected.ids >= 0
        assert answer["items"] == [known_items[r] for r in expected.ids[keep].tolist()], user
        np.testing.assert_allclose(answer["scores"], expected.scores[keep], rtol=1e-6)


def test_pipelined_requests_are_answered_in_order_and_events_seen_by_the_next(
        start_events_server):
    served = start_events_server
    top = served.client.post("/recommend", json={"user": 5, "k": 1}).json()["items"][0]
    # stuck clients (mid-headers, mid-body) do not hold the others up
    stuck = [socket.create_connection(("127.0.0.1", served.port), timeout=30) for _ in range(2)]
    stuck[0].sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Len")
    stuck[1].sendall(_post("/recommend", b'{"us', length=100))
    try:
        pipelined = b"".join(_post("/recommend", b'{"user": %d}' % (n % N_USERS))
                             for n in range(100))
        pipelined += _post("/events", b'{"user": [5], "item": [%d]}' % top)
        pipelined += _post("/recommend", b'{"user": 5, "k": 3}')
        reply = served.raw(pipelined, responses=102)
        assert _statuses(reply) == [200] * 102
        bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1])
                  for part in reply.split(b"HTTP/1.1 ")[1:]]
        assert [b["user"] for b in bodies[:100]] == [n % N_USERS for n in range(100)]
        assert bodies[100]["accepted"] == 1
        assert top not in bodies[101]["items"]  # the event before it is seen
    finally:
        for sock in stuck:
            sock.close()

"""The HTTP API through a real uvicorn server on loopback, started and stopped here."""

from __future__ import annotations

import concurrent.futures
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse

uvicorn = pytest.importorskip("uvicorn", reason="the [serve] extra (uvicorn) is not installed")
pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

from recfuse.server import Limits, create_app  # noqa: E402

N_USERS, N_ITEMS = 80, 60


class Running:
    """A uvicorn server for ``app`` on a free loopback port, in a thread."""

    def __init__(self, app, **settings):
        """``settings``: more uvicorn.Config arguments."""
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="on", **settings)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    seen = sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=5,
                     dtype=np.float32)
    model = recfuse.ALS(factors=5, iterations=3, random_state=0).fit(seen)
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def server(model_file):
    recommender = recfuse.Recommender(model_file, k=5, unknown_items="reject", num_threads=1)
    limits = Limits(max_k=50, max_batch=8, max_body_bytes=4096, max_events=100)
    running = Running(create_app(recommender, model_path=str(model_file), limits=limits))
    yield running
    running.stop()


def test_recommend_matches_embedded(server, model_file):
    embedded = recfuse.Recommender(model_file, k=5)
    reply = server.client.post("/recommend", json={"user": 3, "k": 7, "exclude": [1]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    want = embedded.recommend(3, k=7, exclude=[1])
    assert body["items"] == want.ids.tolist() and body["model_version"] == 1
    np.testing.assert_allclose(body["scores"], want.scores, rtol=1e-6)
    many = server.client.post("/recommend", json={"users": [3, 4, 10_000]}).json()
    assert [r["items"] for r in many["results"][:2]] == \
        embedded.recommend_batch([3, 4]).ids.tolist()
    assert set(many["results"][2]["stages"]) == {"popular"}


def test_concurrent_requests_are_answered_correctly(server, model_file):
    embedded = recfuse.Recommender(model_file, k=5)
    users = list(range(40))
    want = embedded.recommend_batch(users).ids.tolist()

    def ask(user):
        return server.client.post("/recommend", json={"user": user}).json()["items"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, users * 3))
    assert got == want * 3
    metrics = server.client.get("/metrics").text
    assert "recfuse_micro_batch_size_count" in metrics


def test_events_are_visible_and_kept_after_a_rejected_request(server):
    first = server.client.post("/recommend", json={"user": 6}).json()["items"]
    reply = server.client.post("/events", json={"user": [6], "item": [first[0]],
                                                "weight": [3.0]})
    assert reply.status_code == 200 and reply.json()["accepted"] == 1
    assert first[0] not in server.client.post("/recommend", json={"user": 6}).json()["items"]
    pending = reply.json()["pending_events"]
    bad = server.client.post("/events", json={"user": [6, 7], "item": [2, N_ITEMS + 1]})
    assert bad.status_code == 422 and "unknown item" in bad.json()["error"]
    assert server.client.get("/health").json()["pending_events"] == pending
    logged = server.client.get("/events").json()
    assert (logged["user"][-1], logged["item"][-1], logged["weight"][-1]) == (6, first[0], 3.0)
    assert len(logged["user"]) == pending
    assert server.client.request("DELETE", "/events", json={"all": 1}).status_code == 422


def test_a_restarted_server_takes_back_the_log_call_by_call(model_file):
    """GET /events answers each event's call; POST /events with them replays the log as the
    calls went, so a restarted server's users are those of the one before, added items
    included (one POST of the whole log without calls would land them near, not on)."""
    def started():
        recommender = recfuse.Recommender(model_file, k=5, num_threads=1)
        return recommender, Running(create_app(recommender, limits=Limits(max_events=100)))

    before, first = started()
    try:
        for call in ({"user": [1], "item": [N_ITEMS]}, {"user": [2, 3], "item": [4, 5]},
                     {"user": [1], "item": [6]}):
            assert first.client.post("/events", json=call).status_code == 200
        logged = first.client.get("/events").json()
    finally:
        first.stop()
    assert logged["call"] == [0, 1, 1, 2]
    after, second = started()
    try:
        replay = {name: logged[name] for name in ("user", "item", "weight", "call")}
        assert second.client.post("/events", json=replay).json()["accepted"] == 4
    finally:
        second.stop()
    assert set(after._state.users) == set(before._state.users)
    for user, entry in before._state.users.items():
        np.testing.assert_allclose(after._state.users[user].vector, entry.vector, rtol=1e-6,
                                   atol=1e-9, err_msg=f"user {user}")


@pytest.mark.parametrize("path, payload, status, message", [
    ("/recommend", b"{not json", 400, "not valid JSON"),
    ("/recommend", b'{"user": 3, "k": 5, "user": 4}', 400, "'user' appears twice"),
    ("/events", b'{"user": [1], "item": [2], "item": [3]}', 400, "'item' appears twice"),
    ("/recommend", b"[1, 2]", 422, "JSON object"),
    ("/recommend", b'{"user": "3"}', 422, "user must be an integer"),
    ("/recommend", b'{"user": true}', 422, "user must be an integer"),
    ("/recommend", b'{"user": -2}', 422, "user must be >= 0"),
    ("/recommend", b'{"user": 1, "k": 51}', 422, "k must be between 1 and 50"),
    ("/recommend", b'{"user": 1, "k": 0}', 422, "k must be between"),
    ("/recommend", b'{"user": 1, "exclude": [1.5]}', 422, "exclude must hold integers"),
    ("/recommend", b'{"user": 1, "context": [1.0]}', 422, "takes no context"),
    ("/recommend", b'{"user": 1, "colour": 2}', 422, "unknown fields"),
    ("/recommend", b'{"users": [1,2,3,4,5,6,7,8,9]}', 422, "at most 8"),
    ("/recommend", b"{}", 422, "give 'user'"),
    ("/recommend", b'{"user": 1, "pad": "' + b"x" * 5000 + b'"}', 413, "at most 4096"),
    ("/events", b'{"user": [1]}', 422, "need 'user' and 'item'"),
    ("/events", b'{"user": [1], "item": ["a"]}', 422, "integers"),
    ("/events", b'{"user": [1], "item": [2], "weight": ["x"]}', 422, "numbers"),
    ("/events", b'{"user": [1], "item": [2], "call": [1.5]}', 422, "call must hold integers"),
    ("/events", b'{"user": [1, 2], "item": [2, 3], "call": [1, 0]}', 422, "must not decrease"),
    ("/events", b'{"user": [1, 2], "item": [2]}', 422, "same length"),
    ("/events", b'{"user": [1], "item": [2], "weight": [-1]}', 422, ">= 0"),
    ("/events", b'{"user": ' + str(list(range(101))).encode() + b', "item": [1]}', 422,
     "at most 100"),
    ("/reload", b'{"path": "/etc/passwd"}', 422, "unknown fields"),
    # ids beyond int64 and weights beyond what the model takes: 422 naming the field
    ("/recommend", b'{"user": 100000000000000000000000000000}', 422,
     "user must be <= 9223372036854775807"),
    ("/recommend", b'{"users": [1, 100000000000000000000000000000]}', 422,
     "users must hold ids <= 9223372036854775807"),
    ("/recommend", b'{"user": 1, "exclude": [9223372036854775808]}', 422,
     "exclude must hold ids <="),
    ("/events", b'{"user": [100000000000000000000000], "item": [1]}', 422,
     "user must hold ids <= 9223372036854775807"),
    ("/events", b'{"user": [1], "item": [2147483648]}', 422, "item must be < 2147483647"),
    ("/events", b'{"user": [1], "item": [2], "weight": [1e308]}', 422,
     "beyond the 6.98e+12 a float32 ALS model takes"),
    ("/events", b'{"user": [1], "item": [2], "weight": [1' + b"0" * 400 + b']}', 422,
     "within float64's range"),
    # nesting past the JSON decoder's recursion limit: test_json_nested_too_deeply_is_a_400
    # one user's fields with the batch's: the exclude list would be ignored
    ("/recommend", b'{"users": [1], "exclude": [2]}', 422, "not both: got ['exclude', 'users']"),
    ("/recommend", b'{"user": 1, "excludes": [[2]]}', 422, "not both: got ['user', 'excludes']"),
    ("/recommend", b'{"user": 1, "users": [2]}', 422, "not both"),
])
def test_bad_input_is_answered_clearly(server, path, payload, status, message):
    pending = server.client.get("/health").json()["pending_events"]
    reply = server.client.post(path, content=payload,
                               headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["pending_events"] == pending


def test_json_nested_too_deeply_is_a_400(model_file):
    """Nested past the JSON decoder's recursion limit: the client's fault, not a 500. The
    limit is the interpreter's: 2,000 levels are too deep for Python 3.10-3.12's decoder but
    not for 3.13's, and no body within the 4096 bytes of the server above nests deeper. So
    this server takes the default 1 MiB bodies, and the body nests 100,000 levels."""
    recommender = recfuse.Recommender(model_file, k=5, num_threads=1)
    running = Running(create_app(recommender))
    try:
        depth = 100_000
        reply = running.client.post("/recommend",
                                    content=b'{"user": ' + b"[" * depth + b"]" * depth + b"}",
                                    headers={"content-type": "application/json"})
        assert reply.status_code == 400, reply.text
        assert "too deeply" in reply.json()["error"]
        assert running.client.get("/health").status_code == 200
    finally:
        running.stop()


def test_wrong_routes_and_methods(server):
    wrong = server.client.get("/recommend")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"  # HTTP requires it
    assert wrong.json()["error"] == "GET /recommend is not allowed; expected POST"
    missing = server.client.get("/nowhere")
    assert missing.status_code == 404 and "no route /nowhere" in missing.json()["error"]
    assert "'/recommend'" in missing.json()["error"]


def _unknown_compression(good: bytes) -> bytes:
    """The model file with its first member marked as compressed by a method zipfile lacks
    (zipfile raises NotImplementedError for it)."""
    data = bytearray(good)
    for signature, offset in ((b"PK\x01\x02", 10), (b"PK\x03\x04", 8)):  # central, local
        at = data.find(signature) + offset
        data[at:at + 2] = (99).to_bytes(2, "little")
    return bytes(data)


def test_reload_keeps_the_old_model_when_the_file_is_corrupt(server, model_file):
    good = model_file.read_bytes()
    server.client.post("/events", json={"user": 2, "item": 3})
    before = server.client.post("/recommend", json={"user": 2}).json()
    try:
        for corrupt in (good[: len(good) // 3], _unknown_compression(good)):
            model_file.write_bytes(corrupt)
            reply = server.client.post("/reload")
            assert reply.status_code == 422, reply.text
            assert "still serving version 1" in reply.json()["error"]
            assert server.client.post("/recommend", json={"user": 2}).json() == before
    finally:
        model_file.write_bytes(good)
    reply = server.client.post("/reload")
    assert reply.status_code == 200 and reply.json()["model_version"] == 2
    after = server.client.post("/recommend", json={"user": 2}).json()
    assert after["items"] == before["items"] and after["model_version"] == 2  # replayed
    metrics = server.client.get("/metrics").text
    assert "recfuse_model_version 2" in metrics
    assert 'recfuse_requests_total{route="/reload",status="422"}' in metrics
    assert 'recfuse_request_seconds_bucket{route="/recommend",le="+Inf"}' in metrics


def test_unknown_items_added_when_the_setting_says_so(model_file):
    recommender = recfuse.Recommender(model_file, k=N_ITEMS + 1, num_threads=1)
    running = Running(create_app(recommender))
    try:
        reply = running.client.post("/events", json={"user": [1, 2], "item": [N_ITEMS] * 2})
        assert reply.status_code == 200
        items = running.client.post("/recommend", json={"user": 3, "k": 61}).json()["items"]
        assert N_ITEMS in items
        assert running.client.post("/reload").status_code == 422  # no model file to reload
    finally:
        running.stop()


@pytest.mark.parametrize("kind", ["BPR", "SVD"])
def test_unknown_items_of_sgd_models_are_added_over_http(kind, tmp_path):
    seen = sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=5,
                     dtype=np.float32)
    if kind == "BPR":
        model = recfuse.BPR(factors=4, iterations=2, random_state=0).fit(seen)
    else:
        coo = seen.tocoo()
        model = recfuse.SVD(factors=4, epochs=2, random_state=0).fit(coo.row, coo.col,
                                                                   np.ceil(coo.data * 4 + 1))
    running = Running(create_app(recfuse.Recommender(model, k=N_ITEMS + 1, num_threads=1)))
    try:
        reply = running.client.post("/events", json={"user": [1, 2], "item": [N_ITEMS] * 2,
                                                     "weight": [3, 3]})
        assert reply.status_code == 200, reply.text
        assert running.client.get("/health").json()["added_items"] == 1
        items = running.client.post("/recommend", json={"user": 3, "k": 61}).json()["items"]
        assert N_ITEMS in items
    finally:
        running.stop()


def test_ranker_with_context_over_http(model_file):
    rng = np.random.default_rng(2)
    factors = recfuse.load(model_file).item_factors.shape[1]
    layers = [(rng.standard_normal((8, 2 * factors + 2)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 8)).astype(np.float32), None, "identity")]
    recommender = recfuse.Recommender(model_file, recfuse.MLPScorer(layers), candidates=20, k=4,
                                      num_threads=1)
    running = Running(create_app(recommender))
    try:
        reply = running.client.post("/recommend", json={"user": 5, "context": [0.5, -1.0]})
        assert reply.status_code == 200, reply.text
        want = recommender.recommend(5, context_features=[0.5, -1.0])
        assert reply.json()["items"] == want.ids.tolist()
        assert set(reply.json()["stages"]) == {"rank"}
        many = running.client.post("/recommend", json={"users": [5, 6],
                                                       "contexts": [[0.5, -1.0], [0, 0]]})
        assert many.json()["results"][0]["items"] == want.ids.tolist()
        missing = running.client.post("/recommend", json={"user": 5})
        assert missing.status_code == 422 and "context is required" in missing.json()["error"]
        wrong = running.client.post("/recommend", json={"user": 5, "context": [1, "x"]})
        assert wrong.status_code == 422 and "2 finite numbers" in wrong.json()["error"]
        # an integer beyond float64 (JSON allows any size): 422, not an OverflowError's 500
        for body in (b'{"user": 5, "context": [1, 1' + b"0" * 400 + b']}',
                     b'{"users": [5], "contexts": [[-1' + b"0" * 400 + b', 0]]}'):
            huge = running.client.post("/recommend", content=body)
            assert huge.status_code == 422 and "2 finite numbers" in huge.json()["error"], \
                huge.text
        # a float64 beyond float32's range: it overflowed the cast to the ranker's input
        # (a RuntimeWarning, a 500 where warnings are errors)
        for body, field in (({"user": 5, "context": [1e300, 0]}, "context"),
                            ({"users": [5], "contexts": [[0, -1e39]]}, "contexts[0]")):
            beyond = running.client.post("/recommend", json=body)
            assert beyond.status_code == 422, beyond.text
            assert f"{field} must be a list of 2 finite numbers (within float32's range)" in \
                beyond.json()["error"]
    finally:
        running.stop()


def test_micro_batch_answers_each_k_as_if_alone(model_file):
    rng = np.random.default_rng(3)
    factors = recfuse.load(model_file).item_factors.shape[1]
    layers = [(rng.standard_normal((6, 2 * factors)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 6)).astype(np.float32), None, "identity")]
    recommender = recfuse.Recommender(model_file, recfuse.MLPScorer(layers), candidates=10)
    batcher = recfuse.MicroBatcher(recommender)
    try:
        requests = [(5, 3, None), (5, 30, None), (6, 8, [1])]
        answers = batcher._results([recommender._request(recommender._state, user, k, exclude,
                                                         None)
                                    for user, k, exclude in requests])
        for (user, k, exclude), answer in zip(requests, answers):
            alone = recommender.recommend(user, k, exclude)
            np.testing.assert_array_equal(answer.ids, alone.ids)
            assert answer.version == 1
    finally:
        batcher.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ranker(factors: int, seed: int) -> recfuse.MLPScorer:
    rng = np.random.default_rng(seed)
    return recfuse.MLPScorer([
        (rng.standard_normal((8, 2 * factors + 1)).astype(np.float32), None, "relu"),
        (rng.standard_normal((1, 8)).astype(np.float32), None, "identity")])


def _health_once_started(client, process, log):
    """/health of a `recfuse serve` process, once it listens (its stderr in ``log``)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return client.get("/health")
        except httpx.TransportError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "recfuse serve did not start"
            time.sleep(0.1)


def test_recfuse_serve_ranks_with_a_ranker_file_and_reloads_it(model_file, tmp_path):
    factors = recfuse.load(model_file).item_factors.shape[1]
    ranker_path = tmp_path / "ranker.npz"
    _ranker(factors, 0).save(ranker_path)
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "recfuse", "serve", str(model_file), "--port", str(port),
             "--ranker", str(ranker_path), "--candidates", "20", "--k", "4", "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=stderr)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        health = _health_once_started(client, process, log)
        assert "ranked by" in log.read_text()
        assert health.json()["ranker"] and health.json()["context_width"] == 1
        assert health.json()["ranker_source"] == str(ranker_path)

        def embedded(seed):
            return recfuse.Recommender(model_file, _ranker(factors, seed), candidates=20, k=4,
                                       num_threads=1)

        def ask(user):
            reply = client.post("/recommend", json={"user": user, "context": [user / 10]})
            assert reply.status_code == 200, reply.text
            return reply.json()

        want = embedded(0)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # micro-batched together
            answers = list(pool.map(ask, range(30)))
        for user, answer in enumerate(answers):
            alone = want.recommend(user, context_features=[user / 10])
            assert answer["items"] == alone.ids[alone.ids >= 0].tolist()
            np.testing.assert_allclose(answer["scores"], alone.scores[alone.ids >= 0], rtol=1e-6)
            assert set(answer["stages"]) <= {"rank", "popular"}
        missing = client.post("/recommend", json={"user": 1})
        assert missing.status_code == 422 and "context is required" in missing.json()["error"]
        # /reload brings the new ranker file in with the model
        _ranker(factors, 1).save(ranker_path)
        reply = client.post("/reload")
        assert reply.status_code == 200 and reply.json()["model_version"] == 2
        after = ask(3)
        alone = embedded(1).recommend(3, context_features=[0.3])
        assert after["items"] == alone.ids[alone.ids >= 0].tolist()
        assert after["model_version"] == 2
        # a ranker file that does not load: 422, model and ranker kept
        good = ranker_path.read_bytes()
        ranker_path.write_bytes(good[:100])
        reply = client.post("/reload")
        assert reply.status_code == 422 and "still serving version 2" in reply.json()["error"]
        assert ask(3) == after
    finally:
        client.close()
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize("arguments, message", [
    (["--ranker", "missing.npz"], "no model file"),
    (["--ranker-precision", "bfloat16"], "--ranker-precision needs --ranker"),
])
def test_recfuse_serve_refuses_bad_ranker_options(model_file, tmp_path, arguments, message):
    result = subprocess.run([sys.executable, "-m", "recfuse", "serve", str(model_file),
                             "--port", str(_free_port()), *arguments], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def _serve_fails(model_file, tmp_path, *arguments):
    return subprocess.run([sys.executable, "-m", "recfuse", "serve", str(model_file),
                           *arguments], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


def test_recfuse_serve_port_0_asks_for_any_free_port():
    from recfuse import cli

    assert cli.build_parser().parse_args(["serve", "model.npz", "--port", "0"]).port == 0


@pytest.mark.parametrize("arguments, message", [
    (["--port", "99999"], "argument --port: expected an integer from 0 to 65535, got 99999"),
    (["--port", "-1"], "argument --port: expected an integer from 0 to 65535, got -1"),
    (["--batch-wait-ms", "-5"], "argument --batch-wait-ms: expected a finite number >= 0"),
    (["--batch-wait-ms", "nan"], "argument --batch-wait-ms: expected a finite number >= 0"),
    (["--max-body-bytes", "-5"], "argument --max-body-bytes: expected an integer >= 1"),
    (["--threads", "-2"], "argument --threads: expected an integer >= 0"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' does not resolve"),
    # else every request that gives no k would be refused with 422
    (["--k", "20", "--max-k", "10"], "--k 20 exceeds --max-k 10"),
])
def test_recfuse_serve_refuses_bad_arguments_with_one_line(model_file, tmp_path, arguments,
                                                           message):
    result = _serve_fails(model_file, tmp_path, *arguments)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    # one error line, the last (argparse's own errors print the usage above it)
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("recfuse serve: error: ") and "Traceback" not in result.stderr
    assert sum(line.startswith("recfuse serve: error") for line in lines) == 1


def test_recfuse_serve_refuses_a_busy_port_and_a_model_as_ranker(model_file, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = _serve_fails(model_file, tmp_path, "--port", port)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"recfuse serve: error: cannot listen on --host 127.0.0.1 --port "
                             f"{port}: Address already in use\n")
    coo = sp.random(N_USERS, N_ITEMS, density=0.1, format="coo", random_state=5)
    recfuse.SVD(factors=3, epochs=1, random_state=0).fit(
        coo.row, coo.col, np.ceil(coo.data * 4 + 1)).save(tmp_path / "SVD.npz")
    for precision in ("float32", "bfloat16"):
        result = _serve_fails(model_file, tmp_path, "--port", str(_free_port()), "--ranker",
                              "SVD.npz", "--ranker-precision", precision)
        assert result.returncode == 2 and result.stderr == (
            "recfuse serve: error: 'SVD.npz' holds a saved SVD, not a ranker (a file written by "
            "MLPScorer.save, or an .onnx chain)\n"), result.stderr


def test_create_app_refuses_a_default_k_above_max_k(model_file):
    recommender = recfuse.Recommender(model_file, k=20, num_threads=1)
    with pytest.raises(ValueError, match=r"k \(20, the list length .*exceeds max_k \(10\)"):
        create_app(recommender, limits=Limits(max_k=10))


def test_limits_are_checked():
    with pytest.raises(ValueError, match="batch_wait must be >= 0.0, got -0.005"):
        Limits(batch_wait=-0.005)
    with pytest.raises(ValueError, match="max_body_bytes must be >= 1, got -5"):
        Limits(max_body_bytes=-5)
    with pytest.raises(TypeError, match="workers must be an integer"):
        Limits(workers=1.5)


def _requests_total(client, route: str) -> dict:
    """{status: count} of recfuse_requests_total for ``route``, from /metrics."""
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        prefix = f'recfuse_requests_total{{route="{route}",status="'
        if line.startswith(prefix):
            status, count = line[len(prefix):].split('"} ')
            counts[int(status)] = int(count)
    return counts


def test_unknown_routes_and_methods_are_counted(server):
    """404 and 405 answers count in recfuse_requests_total: a wrong method under its route,
    every unknown path under one label (a label per path would grow without bound)."""
    before_missing = _requests_total(server.client, "(no route)")
    before_method = _requests_total(server.client, "/recommend")
    for path in ("/nope", "/nope/2", "/recommend/x"):
        assert server.client.get(path).status_code == 404
    assert server.client.get("/recommend").status_code == 405
    missing = _requests_total(server.client, "(no route)")
    assert missing.get(404, 0) == before_missing.get(404, 0) + 3
    assert _requests_total(server.client, "/recommend").get(405, 0) == \
        before_method.get(405, 0) + 1
    assert "/nope" not in server.client.get("/metrics").text


def test_a_client_leaving_mid_body_is_no_server_error(server):
    before = _requests_total(server.client, "/recommend")
    port = server.client.base_url.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as half:
        half.sendall(b'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"us')
    deadline = time.monotonic() + 10
    while sum(_requests_total(server.client, "/recommend").values()) == sum(before.values()):
        assert time.monotonic() < deadline, "the abandoned request was never recorded"
        time.sleep(0.05)
    after = _requests_total(server.client, "/recommend")
    assert after.get(500, 0) == before.get(500, 0), after  # not logged as a bug
    assert after.get(400, 0) == before.get(400, 0) + 1
    assert server.client.post("/recommend", json={"user": 3}).status_code == 200


_SERVE_SCRIPT = """
import sys, recfuse
from recfuse.server import listening_socket, serve
sock = listening_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
serve(recfuse.Recommender(sys.argv[1], k=5, num_threads=1), sock=sock, shutdown_timeout=0.5)
"""


def test_sigterm_ends_the_server_despite_a_client_stuck_mid_request(model_file):
    import signal

    process = subprocess.Popen([sys.executable, "-c", _SERVE_SCRIPT, str(model_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:  # bound at once, listening once the model is loaded
                try:
                    assert client.get("/health").status_code == 200
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stderr.read()
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            stuck = socket.create_connection(("127.0.0.1", port), timeout=60)
            stuck.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                          b"Expect: 100-continue\r\n\r\n")
            # the server asks for the body once the app reads it: the request is in flight
            assert stuck.recv(4096).startswith(b"HTTP/1.1 100")
            stuck.sendall(b"{")
            process.send_signal(signal.SIGTERM)
            # uvicorn's default waits for the stuck request forever
            process.wait(60)
        with stuck:
            reply = b""
            while chunk := stuck.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 503") and b"shutting down" in reply, reply
        stderr = process.stderr.read()
        assert "Traceback" not in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_recfuse_serve_exits_0_after_a_graceful_shutdown(model_file, tmp_path, signal_name):
    """uvicorn raises the signal again after its graceful shutdown: SIGTERM, with its
    default handler back in place, then ended ``recfuse serve`` with status 143 (-15 here)."""
    import signal

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "recfuse", "serve", str(model_file), "--port", str(port),
             "--threads", "1", "--max-header-bytes", "2048"], stdout=subprocess.DEVNULL,
            stderr=stderr)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    assert client.get("/health").status_code == 200
                    break
                except httpx.TransportError:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "recfuse serve did not start"
                    time.sleep(0.1)
        # --max-header-bytes reaches the server: 64 KiB of headers are refused
        reply = _exchange(port, [b"GET /health HTTP/1.1\r\nHost: x\r\n"] +
                          [b"X-Pad: " + b"p" * 1000 + b"\r\n"] * 64)
        assert reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.1 400"), reply
        process.send_signal(getattr(signal, signal_name))
        assert process.wait(60) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

def test_app_mounted_in_another_answers_single_users(model_file):
    # a mounted app's lifespan is not run: the micro-batcher starts with the first request
    from starlette.applications import Starlette
    from starlette.routing import Mount

    recommender = recfuse.Recommender(model_file, k=5, num_threads=1)
    running = Running(Starlette(routes=[Mount("/api", app=create_app(recommender))]))
    try:
        reply = running.client.post("/api/recommend", json={"user": 3})
        assert reply.status_code == 200, reply.text
        assert reply.json()["items"] == recommender.recommend(3).ids.tolist()
    finally:
        running.stop()


# ---------------------------------------------------------------------- ids of the log

def _log(extra: bool = False) -> recfuse.Interactions:
    """A log with string user ids and integer item ids; ``extra`` adds a user ("a00") and
    an item (999) that sort first, so every row of the other users and items moves by one."""
    rng = np.random.default_rng(3)
    users = [f"u{u:02d}" for u in rng.integers(0, 40, 600)]
    items = (1000 + 7 * rng.integers(0, 30, 600)).tolist()
    if extra:
        users += ["a00", "a00", "u01"]
        items += [999, 1000, 999]
    return recfuse.Interactions.from_arrays(users, items)


def _named(result, train, position=None, added=()) -> list:
    """An embedded Recommendation's items, as the ids of ``train``'s log, then ``added``."""
    ids = result.ids if position is None else result.ids[position]
    known = train.item_ids.ids.tolist() + list(added)
    return [known[row] for row in ids[ids >= 0].tolist()]


def test_requests_and_answers_name_users_and_items_by_the_ids_of_the_log():
    train = _log()
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train)
    served = recfuse.Recommender(model, k=5, num_threads=1)
    embedded = recfuse.Recommender(model, k=5, num_threads=1)
    row = {user: position for position, user in enumerate(train.user_ids.ids.tolist())}
    app = create_app(served, ids=train, limits=Limits(max_k=100))
    served_ids = app.state.naming["now"]
    running = Running(app)
    try:
        client = running.client
        assert client.get("/health").json()["ids"] == "training log"
        reply = client.post("/recommend", json={"user": "u05"}).json()
        want = embedded.recommend(row["u05"])
        assert reply["user"] == "u05" and reply["items"] == _named(want, train)
        np.testing.assert_allclose(reply["scores"], want.scores, rtol=1e-6)
        assert all(isinstance(item, int) for item in reply["items"])
        # exclusions by id (one the model lacks is no error: it cannot be recommended)
        first = reply["items"][0]
        excluded = client.post("/recommend", json={"user": "u05", "exclude": [first, 5]})
        assert excluded.status_code == 200 and first not in excluded.json()["items"]
        # a batch, with a user the model does not know: the popular list, named by ids
        many = client.post("/recommend", json={"users": ["u05", "u07", "ghost"],
                                               "excludes": [None, [first], []]}).json()
        both = embedded.recommend_batch([row["u05"], row["u07"]], excludes=[None, [
            int(train.item_ids.to_internal([first])[0])]])
        assert [r["user"] for r in many["results"]] == ["u05", "u07", "ghost"]
        assert [r["items"] for r in many["results"][:2]] == [_named(both, train, p)
                                                             for p in range(2)]
        ghost = many["results"][2]
        assert set(ghost["stages"]) == {"popular"}
        assert ghost["items"] == _named(embedded.recommend(10 ** 9), train)
        # ids of the wrong type: 422 naming what the log holds
        for body, message in (({"user": 5}, "user must hold user ids of the training log "
                                            "(strings), got int 5"),
                              ({"users": ["u01", 2]}, "users must hold user ids"),
                              ({"user": "u01", "exclude": ["1000"]},
                               "exclude must hold item ids of the training log (integers "
                               "from -9223372036854775808 to 9223372036854775807), got str"),
                              ({"user": "u01", "exclude": [2 ** 63]}, "exclude must hold")):
            wrong = client.post("/recommend", json=body)
            assert wrong.status_code == 422 and message in wrong.json()["error"], wrong.text
        # events of a new user and a new item: both get rows, answers name them by id
        reply = client.post("/events", json={"user": ["new", "new"], "item": [1000, 5]})
        assert reply.status_code == 200 and reply.json()["accepted"] == 2
        new = client.post("/recommend", json={"user": "new", "k": 100}).json()
        assert set(new["stages"]) == {"recall"} and not {1000, 5} & set(new["items"])
        assert client.post("/events", json={"user": ["u01", "u02", "u03"],
                                            "item": [5, 5, 5]}).status_code == 200
        listed = client.post("/recommend", json={"user": "u04", "k": 100}).json()["items"]
        assert 5 in listed and len(listed) == len(set(listed))
        bad = client.post("/events", json={"user": ["u01"], "item": ["x"]})
        assert bad.status_code == 422 and "item must hold item ids" in bad.json()["error"]
        uneven = client.post("/events", json={"user": "lone", "item": [1000, 9]})
        assert uneven.status_code == 422, uneven.text
        assert uneven.json()["error"] == ("events user, item must have the same length, "
                                          "got 1, 2")
        assert "lone" not in served_ids.added["user"] and 9 not in served_ids.added["item"]
        health = client.get("/health").json()
        assert health["added_items"] == 1 and health["pending_events"] == 5
    finally:
        running.stop()
    rejecting = recfuse.Recommender(model, k=5, unknown_items="reject", num_threads=1)
    running = Running(create_app(rejecting, ids=(train.user_ids, train.item_ids)))
    try:
        refused = running.client.post("/events", json={"user": ["u01", "u01"],
                                                       "item": [1000, 5]})
        assert refused.status_code == 422, refused.text
        assert "unknown item ids [5]" in refused.json()["error"]
        assert running.client.get("/health").json()["pending_events"] == 0
    finally:
        running.stop()


def test_string_ids_that_json_cannot_answer_are_refused_before_anything_is_done():
    """JSON may escape a lone surrogate ("\\ud800"), which no answer can encode as UTF-8:
    such an id is refused as bad input (422, naming it), not accepted into the log, where
    every GET /events failed afterwards and DELETE /events emptied the log and then failed."""
    train = _log()
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train)
    app = create_app(recfuse.Recommender(model, k=5, num_threads=1), ids=train)
    running = Running(app)
    try:
        client = running.client
        headers = {"content-type": "application/json"}
        for path, raw in (("/recommend", b'{"user": "\\ud800x"}'),
                          ("/recommend", b'{"users": ["u01", "\\udfff"]}'),
                          ("/events", b'{"user": ["u01", "\\ud800"], "item": [1000, 1007]}')):
            reply = client.post(path, content=raw, headers=headers)
            assert reply.status_code == 422, (path, reply.text)
            assert "valid Unicode" in reply.json()["error"], reply.text
        reply = client.post("/events", content=b'{"user": ["u01"], "item": [1000]}')
        assert reply.status_code == 200 and reply.json()["pending_events"] == 1
        taken = client.delete("/events")
        assert taken.status_code == 200 and taken.json()["user"] == ["u01"], taken.text
        assert "\ud800" not in app.state.naming["now"].added["user"]
    finally:
        running.stop()


def test_create_app_refuses_ids_that_do_not_fit_the_model(model_file, tmp_path):
    served = recfuse.Recommender(model_file, num_threads=1)
    with pytest.raises(ValueError, match="the ids name 40 users and 30 items; the "
                                         "recommender's model has 80 users x 60 items"):
        create_app(served, ids=_log())
    with pytest.raises(ValueError, match="model_path must be a model folder"):
        create_app(served, ids=_log(), model_path=str(model_file))
    with pytest.raises(ValueError, match="is a model folder: give its training data as ids"):
        create_app(served, model_path=str(tmp_path))
    with pytest.raises(TypeError, match="ids must be the training Interactions"):
        create_app(served, ids={"users": []})
    floats = recfuse.Interactions.from_arrays(np.arange(80) + 0.5, np.arange(80) % 60)
    with pytest.raises(ValueError, match="user ids are floating; requests name ids in JSON"):
        create_app(served, ids=floats)


def test_create_app_refuses_a_recommender_that_added_rows_the_ids_do_not_name():
    """A Recommender that observed new users or items by rows (before create_app) holds
    rows no id names: answers naming its added items and GET /events failed (500), and the
    next new id would have been given an observed user's row (its vector and history)."""
    train = _log()
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train)
    for events in ({"user": [40], "item": [2]}, {"user": [3], "item": [30]}):
        rec = recfuse.Recommender(model, k=5, num_threads=1)
        rec.observe(events)
        rec.pending_events(clear=True)  # the log emptied: the rows stay
        with pytest.raises(ValueError, match="has observed users or items beyond the "
                                             "training data's rows"):
            create_app(rec, ids=train)
    rec = recfuse.Recommender(model, k=5, num_threads=1)
    rec.observe({"user": [3], "item": [2]})  # rows the ids name: served
    create_app(rec, ids=train)


def test_refused_events_name_the_user_by_its_id():
    """A weight beyond what the fold-in takes was refused naming the user's row ("user 3"),
    which a client naming users by the log's ids cannot read: it names the id now."""
    train = _log()
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train)
    running = Running(create_app(recfuse.Recommender(model, k=5, num_threads=1), ids=train))
    try:
        row = int(train.user_ids.to_internal(["u07"])[0])
        reply = running.client.post("/events", json={"user": ["u07"], "item": [1000],
                                                     "weight": [1e30]})
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert "user 'u07''s summed weight of an item would reach 1e+30" in error, error
        assert f"user {row}" not in error
    finally:
        running.stop()


def test_a_model_swapped_past_the_ids_is_refused_until_a_reload(tmp_path):
    """A swap_model called directly leaves the ids naming the old version's rows: /recommend
    answered 503, but /events applied and read events by the old rows (other users' rows
    in the new model); both now answer 503 until /reload installs ids with the model."""
    train = _log()
    model = _save_folder(tmp_path, train, 0)
    rec = recfuse.Recommender(model, k=5, num_threads=1)
    running = Running(create_app(rec, model_path=str(tmp_path), ids=train))
    try:
        client = running.client
        assert client.post("/events", json={"user": ["u03"], "item": [1007]}).status_code == 200
        rec.swap_model(recfuse.ALS(factors=4, iterations=3, random_state=5).fit(train))
        for reply in (client.post("/events", json={"user": ["u03"], "item": [1014]}),
                      client.get("/events"), client.delete("/events"),
                      client.post("/recommend", json={"user": "u03"})):
            assert reply.status_code == 503, reply.text
        assert "POST /reload" in reply.json()["error"] or "try again" in reply.json()["error"]
        assert rec.pending_events().users.size == 1  # the refused events left nothing
        assert client.post("/reload").status_code == 200
        assert client.get("/events").json()["user"] == ["u03"]
        assert client.post("/events", json={"user": ["u03"], "item": [1014]}).status_code == 200
    finally:
        running.stop()


def _save_folder(folder, train, seed: int):
    model = recfuse.ALS(factors=4, iterations=3, random_state=seed).fit(train)
    model.save(folder / "model.npz")
    train.save(folder / "train.npz")
    return model


def test_reload_of_a_model_folder_replays_the_events_by_their_ids(tmp_path):
    from recfuse.persistence import load_folder

    first = _log()
    _save_folder(tmp_path, first, 0)
    model, ids = load_folder(tmp_path)
    running = Running(create_app(recfuse.Recommender(model, k=5, num_threads=1),
                                 model_path=str(tmp_path), ids=ids))
    try:
        client = running.client
        events = {"user": ["zz", "u03", "zz"], "item": [1007, 1014, 77]}
        assert client.post("/events", json=events).status_code == 200
        # retrained on a log with one more user and item that sort first: every row moves
        second = _log(extra=True)
        retrained = _save_folder(tmp_path, second, 1)
        reply = client.post("/reload")
        assert reply.status_code == 200 and reply.json()["model_version"] == 2, reply.text
        health = client.get("/health").json()
        assert health["users"] == second.n_users and health["source"] == str(tmp_path)
        want = recfuse.Recommender(retrained, k=5, num_threads=1)
        users = second.user_ids.to_internal(["u03"]).tolist()
        want.observe({"user": [second.n_users, users[0], second.n_users],
                      "item": [*second.item_ids.to_internal([1007, 1014]).tolist(),
                               second.n_items]})
        for user, row in (("zz", second.n_users), ("u03", users[0]),
                          ("a00", int(second.user_ids.to_internal(["a00"])[0]))):
            answer = client.post("/recommend", json={"user": user}).json()
            assert answer["items"] == _named(want.recommend(row), second, added=[77]), user
            assert answer["model_version"] == 2
        # the new item 77 kept its id after the renumbering, and more events still land
        assert client.post("/events", json={"user": ["u05"], "item": [77]}).status_code == 200
        # the log, for the next retrain, by ids: DELETE takes it, GET only reads it
        logged = {"user": ["zz", "u03", "zz", "u05"], "item": [1007, 1014, 77, 77],
                  "weight": [1.0] * 4, "call": [0, 0, 0, 1], "dropped_events": 0,
                  "model_version": 2}
        assert client.get("/events").json() == logged
        assert client.delete("/events").json() == logged
        assert client.get("/events").json()["user"] == []
        assert client.post("/events", json={"user": "zz", "item": 1000}).status_code == 200
        assert client.get("/events").json()["item"] == [1000]
        assert 77 not in client.post("/recommend", json={"user": "u05", "k": 100}).json()["items"]
        # a folder whose model and training data disagree: 422, the old model and ids stay
        before = client.post("/recommend", json={"user": "zz"}).json()
        _log().save(tmp_path / "train.npz")
        refused = client.post("/reload")
        assert refused.status_code == 422, refused.text
        assert "was not trained on train.npz" in refused.json()["error"]
        assert client.post("/recommend", json={"user": "zz"}).json() == before
        # a retrain whose log names items by strings: the logged ids (ints) and requests
        # could not name them (the replay gave them rows as new string-less ids): refused
        renamed = recfuse.Interactions.from_matrix(
            second.matrix, user_ids=second.user_ids,
            item_ids=recfuse.IdMap(np.array([f"i{v}" for v in second.item_ids.ids], object)))
        _save_folder(tmp_path, renamed, 2)
        refused = client.post("/reload")
        assert refused.status_code == 422, refused.text
        assert "names items by string ids, the served model by integer ids" in \
            refused.json()["error"]
        assert client.post("/recommend", json={"user": "zz"}).json() == before
    finally:
        running.stop()


def test_recfuse_serve_of_a_model_folder_answers_as_recfuse_recommend(tmp_path):
    log = _log().to_frame()
    log.to_csv(tmp_path / "log.csv", index=False)
    folder = tmp_path / "m"
    cli = [sys.executable, "-m", "recfuse"]
    subprocess.run([*cli, "train", str(tmp_path / "log.csv"), "-o", str(folder), "--split",
                    "none", "--factors", "4", "--iterations", "3"], check=True,
                   capture_output=True, timeout=300)
    printed = subprocess.run([*cli, "recommend", str(folder), "u05", "u07",
                              "--k", "6", "--json"], check=True, capture_output=True,
                             text=True, timeout=300)
    import json

    want = json.loads(printed.stdout)["recommendations"]
    port = _free_port()
    log_file = tmp_path / "serve.log"
    with open(log_file, "wb") as stderr:
        process = subprocess.Popen([*cli, "serve", str(folder), "--port", str(port), "--k",
                                    "6", "--threads", "1"], stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        _health_once_started(client, process, log_file)
        assert "named by the ids of its training log" in log_file.read_text()
        for user in ("u05", "u07"):
            reply = client.post("/recommend", json={"user": user}).json()
            assert reply["items"] == [entry["item"] for entry in want[user]], user
            np.testing.assert_allclose(reply["scores"], [e["score"] for e in want[user]],
                                       rtol=1e-5)
        assert client.post("/reload").json()["model_version"] == 2
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def test_answers_during_reloads_that_renumber_are_those_of_the_model_that_answered(tmp_path):
    """A request maps its ids with the rows of one model version: were it answered by a
    model of other rows (a reload installed meanwhile), it would get another user's list.
    Answers while reloads alternate two numberings each match their model_version's."""
    from recfuse.persistence import load_folder

    trainings = [_log(), _log(extra=True)]
    folders = []
    for position, train in enumerate(trainings):
        folders.append(tmp_path / str(position))
        folders[-1].mkdir()
        _save_folder(folders[-1], train, position)
    serving = tmp_path / "serving"
    serving.mkdir()
    for name in ("model.npz", "train.npz"):
        (serving / name).write_bytes((folders[0] / name).read_bytes())
    want = {}
    for position, (folder, train) in enumerate(zip(folders, trainings)):
        model, _ = load_folder(folder)
        embedded = recfuse.Recommender(model, k=5, num_threads=1)
        rows = train.user_ids.to_internal(["u05", "u06"]).tolist()
        want[position] = [_named(embedded.recommend(row), train) for row in rows]
    assert want[0] != want[1]
    model, ids = load_folder(serving)
    running = Running(create_app(recfuse.Recommender(model, k=5, num_threads=1),
                                 model_path=str(serving), ids=ids))
    stop = threading.Event()
    wrong = []

    def ask():
        while not stop.is_set():
            one = running.client.post("/recommend", json={"user": "u05"}).json()
            many = running.client.post("/recommend", json={"users": ["u05", "u06"]}).json()
            for version, items in ((one["model_version"], [one["items"]]),
                                   (many["model_version"], [r["items"] for r in
                                                            many["results"]])):
                expected = want[(version - 1) % 2]  # version 1: the first training
                if items != expected[:len(items)]:
                    wrong.append((version, items))

    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            askers = [pool.submit(ask) for _ in range(3)]
            for reload in range(1, 9):
                for name in ("model.npz", "train.npz"):
                    (serving / name).write_bytes((folders[reload % 2] / name).read_bytes())
                assert running.client.post("/reload").json()["model_version"] == reload + 1
                time.sleep(0.05)
            stop.set()
            for asker in askers:
                asker.result()
        assert not wrong, wrong[:3]
    finally:
        stop.set()
        running.stop()


def _exchange(port: int, chunks, timeout: float = 20) -> bytes:
    """Sends ``chunks`` one by one (stopping early if the server closes) and reads until
    the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        try:
            for chunk in chunks:
                connection.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while part := connection.recv(65536):
                reply += part
        except ConnectionResetError:
            pass
        return reply


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_serve_caps_the_bytes_of_a_request_line_and_headers(model_file, http):
    """serve's http protocol (server._http_protocol) answers a request whose headers pass
    ``max_header_bytes`` and closes the connection (httptools buffered them without limit),
    while pipelined requests and bodies, together far past the cap, pass."""
    from recfuse.server import _http_protocol

    if http == "httptools":
        pytest.importorskip("httptools", reason="httptools (serve extra) is not installed")
        protocol = _http_protocol(4096)
        assert protocol != "h11"
    else:
        protocol = "h11"
    recommender = recfuse.Recommender(model_file, k=5, num_threads=1)
    running = Running(create_app(recommender, limits=Limits(max_header_bytes=4096)),
                      http=protocol, h11_max_incomplete_event_size=4096)
    try:
        port = running.client.base_url.port
        huge = [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 8192] * 128
        reply = _exchange(port, huge)  # 1 MiB of one header line
        status = 431 if http == "httptools" else 400  # uvicorn's h11 answers 400
        assert reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:200]
        small = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"b" * 2000 + b"\r\n\r\n"
        pipelined = _exchange(port, [small * 40 + small.replace(b"Host: x", b"Host: x\r\n"
                                                                 b"Connection: close")])
        assert pipelined.count(b"HTTP/1.1 200") == 41, pipelined[:300]
        body = b'{"user": 3' + b" " * 20_000 + b"}"
        posted = _exchange(port, [b"POST /recommend HTTP/1.1\r\nHost: x\r\nConnection: close"
                                  b"\r\nContent-Type: application/json\r\nContent-Length: "
                                  + str(len(body)).encode() + b"\r\n\r\n" + body])
        assert posted.startswith(b"HTTP/1.1 200"), posted[:300]
        assert running.client.get("/health").status_code == 200
    finally:
        running.stop()


def test_a_sigterm_during_serves_set_up_ends_it_quietly(model_file):
    """A SIGTERM that arrives while serve builds the app (after `recfuse serve` has printed
    its banner) ends serve as one during serving does: it returns, nothing is printed; the
    default handler was still in place then and the process died of it (status 143)."""
    script = """
import os, signal, sys, recfuse, recfuse.server as server
build = server.create_app
def terminated_while_building(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return build(*args, **kwargs)
server.create_app = terminated_while_building
sock = server.listening_socket("127.0.0.1", 0)
server.serve(recfuse.Recommender(sys.argv[1], k=5, num_threads=1), sock=sock)
print("returned")
"""
    done = subprocess.run([sys.executable, "-c", script, str(model_file)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "returned", (done.returncode,
                                                                         done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr

"""Adversarial hunt on the command line (python/recfuse/cli.py): bad arguments and inputs for
every subcommand give exit status 2 and one "recfuse CMD: error: ..." line naming what was
wrong (argparse's usage lines may come before it), never a traceback, nothing half-written;
the happy paths on tiny data give output that parses. Cases tests/test_cli.py covers are
left out. Most runs call cli.main(argv) in this process (it returns the exit status and
catches argparse's exits); a few run `python -m recfuse` for what only a process shows
(warnings on stderr, signals, the real exit status). The bugs it found are fixed;
their tests stay as regressions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

import recfuse
from recfuse import cli

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
HUGE = str(10**20)
SMALL_DEMO = ["--users", 40, "--items", 15, "--events", 800, "--factors", 2, "--iterations", 1]


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class ServerStarted(Exception):
    """Raised by the stub that replaces recfuse.server.serve in this process."""


def call(*args) -> Result:
    """cli.main(argv) in this process; an exception out of it is what the console script
    would print: a traceback, exit status 1."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except Exception:
            traceback.print_exc()
            code = 1
    return Result(code, out.getvalue(), err.getvalue())


def process(*args, timeout: float = 120) -> Result:
    """`python -m recfuse ARGS` in a child process."""
    done = subprocess.run([sys.executable, "-m", "recfuse", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr)


def refused(result: Result, command: str, *words: str, quiet: bool = True) -> str:
    """Exit 2; stderr ends in one error line holding ``words``; no traceback; when ``quiet``
    (refused before any work) nothing on stdout and only argparse's usage before it."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    *before, line = result.stderr.strip().splitlines()
    assert line.startswith(f"recfuse {command}: error: "), result.stderr
    for word in words:
        assert word in line, line
    if quiet:  # else progress bars of the work done may come first
        assert all(text.startswith(("usage:", " ")) for text in before), result.stderr
        assert result.stdout == "", result.stdout
    return line


@pytest.fixture(autouse=True)
def _no_real_server_nor_bench(monkeypatch, tmp_path):
    """In-process runs never serve (a stub raises) and run a stub bench suite that writes
    one result row, so no case can start a server or the real (minutes long) suites."""
    import recfuse.server

    def serve(*args, **kwargs):
        raise ServerStarted("recfuse.server.serve was reached")

    monkeypatch.setattr(recfuse.server, "serve", serve)
    stub = tmp_path / "stub-bench"
    stub.mkdir()
    (stub / "bench_data.py").write_text(
        "import json, os\n"
        "row = {'events': 1000, 'ids': 'int64', 'speedup': 2.5}\n"
        "with open(os.path.join(os.environ['RECFUSE_BENCH_RESULTS'], 'data.json'), 'w') as f:\n"
        "    json.dump({'ingestion': [row]}, f)\n")
    monkeypatch.setenv("RECFUSE_BENCH_DIR", str(stub))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Tiny inputs, good and bad, and one model folder trained on the log."""
    root = tmp_path_factory.mktemp("cli-hunt")
    rng = np.random.default_rng(0)
    pd.DataFrame({"user": rng.integers(0, 30, 400), "item": rng.integers(0, 20, 400),
                  "rating": rng.integers(1, 6, 400), "ts": np.arange(400),
                  "event": rng.choice(["view", "click"], 400)}).to_csv(root / "log.csv",
                                                                       index=False)
    (root / "empty.csv").write_text("")
    (root / "ab.csv").write_text("a,b\n1,2\n")  # none of the expected columns
    (root / "words.csv").write_text("user,item,w,t\n1,2,x,a\n2,3,1,b\n1,3,2,c\n")
    (root / "text.parquet").write_text("hello\n")
    (root / "emptydir").mkdir()
    ml = root / "ml"
    ml.mkdir()
    (ml / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 9 + i}\n"
                                       for u in range(1, 20) for i in range(1, 9)))
    names = {"log": "log.csv", "empty": "empty.csv", "ab": "ab.csv",
             "words": "words.csv", "textparquet": "text.parquet", "emptydir": "emptydir",
             "ml": "ml", "missing": "nothere.csv", "model": "model", "fake": "fake"}
    paths = {key: str(root / name) for key, name in names.items()}
    trained = call("train", paths["log"], "-o", paths["model"], "--factors", 2,
                   "--iterations", 1, "--json")
    assert trained.returncode == 0, trained.stderr
    os.mkdir(paths["fake"])  # a model folder whose model.npz is a text file
    (root / "fake" / "model.npz").write_text("hello\n")
    (root / "fake" / "train.npz").write_bytes((root / "model" / "train.npz").read_bytes())
    return paths


# (command line, words the error line must hold, stdout empty); {out}: a fresh path
BAD = [
    ("demo --users 0", "argument --users: expected an integer >= 1, got 0", True),
    ("demo --events abc", "argument --events/--nnz: expected an integer >= 1, got 'abc'", True),
    ("demo --factors 0", "argument --factors", True),
    ("demo --k 0", "argument --k", True),
    ("demo --split nope", "argument --split: invalid choice: 'nope'", True),
    ("demo --factors 100000", "factors must be <= 4096", True),
    ("demo --data {missing}", "no MovieLens ratings in", False),
    ("demo --data {log}", "got the file", False),
    ("train", "the following arguments are required: data, -o/--output", True),
    ("train {log}", "-o/--output", True),
    ("train {emptydir} -o {out}", "no MovieLens ratings in", True),
    ("train {empty} -o {out}", "cannot read", True),
    ("train {ab} -o {out}", "unknown columns: ['user', 'item']", True),
    ("train {textparquet} -o {out}", "as Parquet", True),
    ("train {words} -o {out} --weight w", "weights must hold numbers", True),
    ("train {log} -o {out} --user nope", "unknown columns: ['nope']", True),
    ("train {log} -o {out} --split temporal --timestamp nope", "unknown columns", True),
    ("train {log} -o {out} --factors " + HUGE, "factors must be <= 4096", True),
    ("train {log} -o {out} --iterations x", "argument --iterations", True),
    ("train {log} -o {out} --model nope", "argument --model: invalid choice", True),
    ("train {log} -o {out} --combine nope", "argument --combine: invalid choice", True),
    ("train {log} -o {out} --lr 0.1", "--lr does not apply to --model als", True),
    ("train {log} -o {out} --model explicit-als --weight rating --combine last --lr 0.1",
     "--lr does not apply to --model explicit-als", True),
    ("train {log} -o {out} --event event --event-weights {nan_weights}",
     "expected finite weights >= 0 per event type, got nan for 'view'", True),
    ("train {ml} -o {out} --min-rating 100", "keeps none of the", True),
    ("evaluate", "the following arguments are required: folder", True),
    ("evaluate {log}", "no model in", True),
    ("evaluate {fake}", "not a readable recfuse model file", True),
    ("evaluate {model} --k 0", "argument --k", True),
    ("evaluate {model} --k " + HUGE, "--k: expected an integer from 1 to 2147483647", True),
    ("evaluate {model} --test {missing}", "no event log at", True),
    ("evaluate {model} --test {empty}", "cannot read", True),
    ("evaluate {model} --test {ab}", "unknown columns: ['user', 'item']", True),
    ("evaluate {model} --test {model}", "no event log at", True),
    ("evaluate {model} --test {model}/model.npz", "cannot tell the format", True),
    ("recommend {model}", "the following arguments are required: users", True),
    ("recommend {model} abc", "integers, got ['abc']", True),
    ("recommend {model} 1 --k 0", "argument --k", True),
    ("recommend {model} 1 --k " + HUGE, "--k: expected an integer from 1 to 2147483647", True),
    ("recommend {fake} 1", "not a readable recfuse model file", True),
    ("serve", "the following arguments are required: model", True),
    ("serve {missing} --port 0", "no model file at", True),
    ("serve {log} --port 0", "not a readable recfuse model file", True),
    ("serve {model}/train.npz --port 0", "is an Interactions file", True),
    ("serve {model} --port 70000", "argument --port: expected an integer from 0 to 65535", True),
    ("serve {model} --port 0 --workers 0", "argument --workers", True),
    ("serve {model} --port 0 --batch-wait-ms -1", "argument --batch-wait-ms", True),
    ("serve {model} --port 0 --k 20 --max-k 10", "--k 20 exceeds --max-k 10", True),
    ("serve {model} --port 0 --ranker-precision int8", "--ranker-precision needs --ranker", True),
    ("serve {model} --port 0 --ranker {model}/model.npz", "not a ranker", True),
    ("serve {model} --port 0 --ranker {missing}", "no model file at", True),
    ("serve {model} --port 0 --threads " + HUGE, "num_threads must be <= 65536", True),
    ("bench --quick nope", "unknown suites ['nope']", True),
]


@pytest.mark.parametrize("line, expected, quiet", BAD, ids=[case[0] for case in BAD])
def test_bad_arguments_are_refused_in_one_line(files, tmp_path, line, expected, quiet):
    out = tmp_path / "out"
    args = [part.format(out=out, nan_weights='{"view": NaN, "click": 1}', **files)
            for part in line.split()]
    command = args[0]
    refused(call(*args), command, expected, quiet=quiet)
    assert not out.exists()  # a refused train leaves no folder behind


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_that_cannot_be_written_is_refused(files):
    # /proc takes no new file, even for root (chmod 0o500 would not stop root)
    refused(call("train", files["log"], "-o", "/proc/recfuse-hunt/m"), "train",
            "--output '/proc/recfuse-hunt/m': cannot write in the folder '/proc'")
    refused(call("bench", "--output", "/proc/recfuse-hunt"), "bench",
            "cannot make the results folder")


def test_a_folder_named_as_a_ranker_file_is_refused_in_one_line(files, tmp_path):
    """A folder where the ranker file should be: onnx raised IsADirectoryError (an OSError
    besides FileNotFoundError), which main() printed as a traceback. Now refused before
    onnx opens it, as recfuse.load refuses a folder."""
    folder = tmp_path / "ranker.onnx"
    folder.mkdir()
    refused(call("serve", files["model"], "--port", "0", "--ranker", folder), "serve",
            "it is a folder")


@pytest.mark.parametrize("args, words", [
    (["recommend", "{fake}", "1"], "not a readable recfuse model file"),
    (["evaluate", "{model}", "--test", "{ab}", "--json"], "unknown columns"),
    (["serve", "{log}", "--port", "0"], "not a readable recfuse model file")])
def test_a_refusal_in_a_real_process_exits_2_without_traceback(files, args, words):
    result = process(*[arg.format(**files) for arg in args])
    refused(result, args[0], words)


# ---------------------------------------------------------------------------- happy paths
def test_train_evaluate_recommend_as_a_process(files, tmp_path):
    def strict(text):  # one JSON object on one line, no NaN/Infinity
        assert text.count("\n") == 1
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))

    folder = tmp_path / "m"
    trained = process("train", files["log"], "-o", folder, "--factors", 2,
                      "--iterations", 2, "--json")
    assert trained.returncode == 0 and trained.stderr == ""  # --json: no progress noise
    summary = strict(trained.stdout)
    assert {"output", "model", "backend", "users", "items", "train_pairs", "test_pairs",
            "seconds"} <= set(summary) and summary["model"] == "ALS"
    assert summary["users"] == 30 and summary["train_pairs"] > summary["test_pairs"] > 0
    assert sorted(os.listdir(folder)) == ["model.npz", "test.npz", "train.npz"]
    scores = process("evaluate", folder, "--k", 3, "--json")
    metrics = strict(scores.stdout)
    assert metrics["k"] == 3 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["ndcg"] <= 1
    text = process("recommend", folder, 0, 1, "--k", 2)
    lines = text.stdout.splitlines()
    assert text.returncode == 0 and [line.split(":")[0] for line in lines] == ["user 0",
                                                                               "user 1"]
    assert all(re.fullmatch(r"user \d+: \d+ \(-?\d+\.\d{3}\), \d+ \(-?\d+\.\d{3}\)", line)
               for line in lines), lines


def test_train_shows_progress_and_keeps_the_defaults_its_help_names(files, tmp_path):
    result = call("train", files["log"], "-o", tmp_path / "m", "--split", "none")
    assert result.returncode == 0 and "ALS" in result.stderr and "100%" in result.stderr
    model = recfuse.load(str(tmp_path / "m" / "model.npz"))
    # `recfuse train --help`: "ALS: 64 factors, 15 iterations, regularization 0.05, alpha 2"
    assert (model.factors, model.iterations, model.regularization, model.alpha) == (
        64, 15, 0.05, 2.0)
    assert "64 factors, 15 iterations, regularization 0.05, alpha 2" in " ".join(
        call("train", "--help").stdout.split())
    assert sorted(os.listdir(tmp_path / "m")) == ["model.npz", "train.npz"]  # --split none


def test_every_command_has_help_and_every_one_but_serve_takes_json():
    top = process("--help")
    assert top.returncode == 0
    for command in ("demo", "serve", "train", "evaluate", "recommend", "bench", "info"):
        assert command in top.stdout
        shown = call(command, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: recfuse {command}")
        assert ("--json" in shown.stdout) == (command != "serve"), command


def test_demo_random_split_json_on_a_tiny_log():
    result = call("demo", *SMALL_DEMO, "--split", "random", "--k", 3, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train_pairs"] + summary["test_pairs"] == summary["pairs"]
    assert summary["metrics"]["ALS"]["users"] > 0 and len(summary["top"]["items"]) <= 5


def test_serve_answers_then_stops_cleanly_on_ctrl_c(files):
    server = subprocess.Popen([sys.executable, "-m", "recfuse", "serve", files["model"],
                               "--port", "0", "--k", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", banner)
        assert port, banner
        url = f"http://127.0.0.1:{port.group(1)}"
        for _ in range(100):
            try:
                health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=30).read())
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        assert health["status"] == "ok" and health["users"] == 30
        request = urllib.request.Request(f"{url}/recommend", data=b'{"user": 1}',
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert answer["user"] == 1 and len(answer["items"]) == 3  # --k 3
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0 and "Traceback" not in err, err


def test_bench_writes_its_summary_from_the_suite_results(tmp_path):
    result = call("bench", "data", "--output", tmp_path / "results", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(row["stage"], row["speedup"]) for row in summary["rows"]] == [("ingest", 2.5)]
    written = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert written["rows"] == summary["rows"] and written["failed"] == []


# ---------------------------------------------------------------------------- bugs found
def test_a_failed_train_leaves_no_new_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)  # bytes ids: refused when saved, after training
    pq.write_table(pa.table({"user": pa.array([b"u%d" % u for u in rng.integers(0, 30, 300)]),
                             "item": pa.array(rng.integers(0, 20, 300))}),
                   tmp_path / "bytes.parquet")
    result = call("train", tmp_path / "bytes.parquet", "-o", tmp_path / "new" / "m",
                  "--factors", 2, "--iterations", 1)
    refused(result, "train", "cannot be saved", quiet=False)
    assert not (tmp_path / "new").exists(), os.listdir(tmp_path / "new")


def test_an_empty_output_is_refused_before_any_work(files, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    refused(call("train", files["log"], "-o", "", "--factors", 2, "--iterations", 1),
            "train", "--output")
    assert os.listdir(tmp_path / "cwd") == []


@pytest.mark.parametrize("args", [["evaluate", "{model}", "--test", ""],
                                  ["demo", "--data", "", *SMALL_DEMO],
                                  ["bench", "--output", ""]], ids=["test", "data", "output"])
def test_an_empty_path_is_refused_not_ignored(files, args):
    option = next(arg for arg in args if str(arg).startswith("--"))
    refused(call(*[str(arg).format(**files) for arg in args]), args[0], option)
    # bench: the stub suite's results must not land in the default folder
    assert not os.path.exists(os.path.join(os.environ["RECFUSE_BENCH_DIR"], "results"))


def test_demo_refuses_a_huge_k_before_any_work():
    refused(call("demo", *SMALL_DEMO, "--k", HUGE), "demo", "--k", "2147483647")


def _overcommit_refuses_huge_arrays() -> bool:
    try:  # 0 (heuristic) and 2 (strict) refuse a 480 GiB array at once; 1 would hand it out
        with open("/proc/sys/vm/overcommit_memory") as handle:
            return handle.read().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge_arrays(),
                    reason="needs a kernel that refuses a 480 GiB allocation at once")
def test_evaluate_takes_a_k_past_the_items(files):
    # evaluate asks for at most every item (it once refused k = 2**31 - 1 for memory): the
    # numbers of a k past the catalogue are those of k = the item count
    huge = call("evaluate", files["model"], "--k", 2147483647, "--json")
    assert huge.returncode == 0, huge
    assert json.loads(huge.stdout)["k"] == 2147483647


def test_a_split_that_leaves_no_training_pair_is_refused(files, tmp_path):
    result = call("train", files["log"], "-o", tmp_path / "m", "--split", "random",
                  "--test-fraction", 0.99999, "--factors", 2, "--iterations", 1, "--json")
    refused(result, "train", "--test-fraction")
    assert not (tmp_path / "m").exists()


def test_one_column_as_both_user_and_item_is_refused(files, tmp_path):
    result = call("train", files["log"], "-o", tmp_path / "m", "--user", "item",
                  "--split", "none", "--factors", 2, "--iterations", 1, "--json")
    refused(result, "train", "--user", "--item")


@pytest.mark.parametrize("args", [["demo", "--bogus"], ["info", "extra"]])
def test_an_unknown_option_is_named_under_its_command(args):
    refused(call(*args), args[0], "unrecognized arguments")


@pytest.mark.parametrize("data, options", [
    ("log", ["--sep", "ab"]), ("words", ["--timestamp", "t", "--split", "temporal"])])
def test_stderr_holds_the_error_line_only(files, tmp_path, data, options):
    result = process("train", files[data], "-o", tmp_path / "m", *options)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr


def test_serve_refuses_a_huge_worker_count_before_serving(files):
    # the stub serve stands for the real one: reaching it means the server would start
    refused(call("serve", files["model"], "--port", 0, "--workers", 10**11), "serve",
            "--workers")


def test_serve_listens_before_it_names_its_address(files, monkeypatch):
    import socket

    import recfuse.server

    def serve(*args, sock, **kwargs):  # reached after the banner is printed
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        raise ServerStarted(f"listening={listening}")

    monkeypatch.setattr(recfuse.server, "serve", serve)
    result = call("serve", files["model"], "--port", 0)
    assert "on http://127.0.0.1:" in result.stderr
    assert "ServerStarted: listening=1" in result.stderr, result.stderr


@pytest.mark.skipif(not os.path.isfile(os.path.join(BENCH_DIR, "bench_data.py")),
                    reason="needs the checkout's bench/ suites")
def test_bench_does_not_report_results_its_run_did_not_write(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFUSE_BENCH_DIR", BENCH_DIR)  # the real script: --help ends it
    (tmp_path / "data.json").write_text(json.dumps(
        {"ingestion": [{"events": 1000, "ids": "from an earlier run", "speedup": 9.0}]}))
    result = call("bench", "data", "--output", tmp_path, "--script-args=--help", "--json")
    assert result.returncode != 0 or "from an earlier run" not in result.stdout, result

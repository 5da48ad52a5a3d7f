"""Adversarial hunt on the benchmark scripts in bench/ (-ae): do they run at tiny sizes, write
well-formed results, report what they say, and refuse bad input cleanly?

The contract used here (bench/README.md, each script's docstring, the project's standards):

- each script compares recfuse with its peer in one run; a ratio is peer time / recfuse time
  (or recfuse q/s / peer q/s); the floors are the issues' formulas: ALS Cholesky
  2·nnz·(k²+2k) + (users+items)·k³/3, CG at 3 steps 9·(users+items)·k² + 32·nnz·k; top-k the
  bytes of the float32 item table and 2·m·n·d flops; MLP 2·(160·256 + 256·128 + 128·64 + 64)
  flops per candidate;
- results go to a JSON file that strict JSON readers accept (no bare NaN);
- both libraries get the same data, k, start and thread count; warm-up calls are not timed;
- a missing peer is skipped with its name, not a traceback ("sections whose data or peer
  library is missing are skipped with the reason"); bad options give a clear argparse error
  (exit 2, usage), not a traceback after the work; an output location that cannot be written
  is refused with an error that names it;
- the GPU scripts fail or skip cleanly, with the reason, on a machine without a GPU.

Every script runs in a subprocess at tiny sizes (a ``-c`` wrapper imports it, points its
results folder into tmp_path, hides peers with ``sys.modules[name] = None``, and replaces
the expensive part with a sentinel where only option parsing is under test). No test writes
into bench/results (a module fixture checks the committed files are untouched). No timing
assertions: only the arithmetic that turns times into ratios and rates is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

# The wrapper: argv[1] is a JSON spec {script, args, hide, set, before}. ``before`` runs with
# the imported module as ``m`` after ``set`` (e.g. RESULTS) and before main().
WRAPPER = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
for name in spec.get("hide", []):
    sys.modules[name] = None
sys.path.insert(0, spec["bench"])
sys.argv = [os.path.join(spec["bench"], spec["script"] + ".py"), *spec["args"]]
m = __import__(spec["script"])
for key, value in spec.get("set", {}).items():
    setattr(m, key, value)
exec(spec.get("before", ""), {"m": m, "sys": sys, "os": os, "json": json})
sys.exit(m.main())
"""

SENTINEL = """
def _ran(*args, **kwargs):
    raise RuntimeError("SENTINEL: the benchmark ran although its options are bad")
"""


def run_bench(script, args, tmp_path, *, hide=(), set_=None, before="", env=None, timeout=120,
              redirect=True):
    """Run bench/SCRIPT.py's main() in a subprocess (cwd tmp_path); ``redirect`` points its
    RESULTS folder at tmp_path (scripts that read RECFUSE_BENCH_RESULTS: pass redirect=False)."""
    settings = {"RESULTS": str(tmp_path)} if redirect else {}
    settings.update(set_ or {})
    spec = {"bench": str(BENCH), "script": script, "args": [str(a) for a in args],
            "hide": list(hide), "set": settings, "before": before}
    return subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(spec)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def strict_json(path):
    """json.loads that refuses NaN / Infinity (what strict JSON readers do)."""
    def refuse(constant):
        raise ValueError(f"bare {constant} in {path}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def clean_failure(proc, *words):
    """An error a user can act on: no traceback, the named things mentioned."""
    text = proc.stdout + proc.stderr
    return "Traceback" not in proc.stderr and all(w in text for w in words)


def usage_error(proc):
    return proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module", autouse=True)
def committed_results_untouched():
    before = {p.name: p.read_bytes() for p in RESULTS.glob("*")} if RESULTS.is_dir() else {}
    yield
    after = {p.name: p.read_bytes() for p in RESULTS.glob("*")} if RESULTS.is_dir() else {}
    assert after == before, "a test wrote into bench/results"


def close(a, b, rel=1e-9):
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)


# ------------------------------------------------------------------------------ bench_als

ALS_RECORD = """
import atexit, hashlib, numpy as np
from implicit.cpu.als import AlternatingLeastSquares as _A
calls = []
digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
def _wrap(kind, f):
    def w(matrix, X0, Y0, k, solver, iterations, threads, reg, alpha):
        calls.append(dict(kind=kind, data=digest(matrix.data), indices=digest(matrix.indices),
                          X0=digest(X0), Y0=digest(Y0), k=k, solver=solver, it=iterations,
                          threads=threads, reg=reg, alpha=alpha,
                          expect_conf=digest((1 + alpha * matrix.data).astype(np.float32))))
        return f(matrix, X0, Y0, k, solver, iterations, threads, reg, alpha)
    return w
m.time_recfuse, m.time_implicit = _wrap("recfuse", m.time_recfuse), _wrap("implicit", m.time_implicit)
_fit = _A.fit
def fit(self, user_items, *a, **kw):
    calls[-1].update(conf=digest(user_items.data.astype(np.float32)), peer_threads=self.num_threads,
                     peer_cg=self.use_cg, peer_reg=self.regularization, peer_k=self.factors,
                     peer_it=self.iterations, peer_start=digest(self.user_factors) + digest(self.item_factors))
    return _fit(self, user_items, *a, **kw)
_A.fit = fit
atexit.register(lambda: json.dump(calls, open(os.environ["AE_RECORD"], "w")))
"""


@pytest.fixture(scope="module")
def als_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("als")
    out = tmp / "missing" / "deeper"  # a results folder that does not exist yet
    record = tmp / "calls.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_als.py"), "--users", "300", "--items", "200",
         "--nnz", "3000", "--factors", "8", "16", "--no-quality"],
        cwd=tmp, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RECFUSE_BENCH_RESULTS": str(out)})
    # the same run again through the recording wrapper (same data, start, k, threads)
    rec = run_bench("bench_als", ["--users", "300", "--items", "200", "--nnz", "3000",
                                  "--factors", "8", "--no-quality"], tmp, before=ALS_RECORD,
                    env={"AE_RECORD": str(record), "RECFUSE_BENCH_RESULTS": str(tmp / "rec")},
                    redirect=False)
    return proc, out / "als.json", rec, record


def test_als_tiny_run_writes_strict_json_into_a_new_folder(als_run):
    proc, path, _, _ = als_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(path)
    assert len(report["speed"]) == 4 and report["quality"] == []
    assert {(r["factors"], r["solver"]) for r in report["speed"]} == {
        (8, "cg"), (8, "cholesky"), (16, "cg"), (16, "cholesky")}


def test_als_floors_and_ratios_recomputed_from_the_sizes(als_run):
    _, path, _, _ = als_run
    for r in strict_json(path)["speed"]:
        u, i, nnz, k = r["users"], r["items"], r["nnz"], r["factors"]
        if r["solver"] == "cholesky":
            floor = 2 * nnz * (k * k + 2 * k) + (u + i) * k**3 / 3
        else:
            floor = 9 * (u + i) * k * k + 32 * nnz * k
        assert close(r["floor_gflop"], floor / 1e9)
        assert close(r["speedup"], r["implicit_s_per_iter"] / r["recfuse_s_per_iter"])
        assert close(r["recfuse_gflops"], r["floor_gflop"] / r["recfuse_s_per_iter"])
        assert close(r["implicit_gflops"], r["floor_gflop"] / r["implicit_s_per_iter"])
        # the exactness check compares: the two fits solve the same systems
        assert r["max_rel_diff_item_factors"] < 1e-2


def test_als_both_libraries_get_the_same_matrix_start_k_and_threads(als_run):
    _, _, rec, record = als_run
    assert rec.returncode == 0, rec.stderr[-2000:]
    calls = json.loads(record.read_text())
    assert [c["kind"] for c in calls] == ["recfuse", "implicit"] * 2
    for ours, theirs in zip(calls[::2], calls[1::2]):
        for key in ("data", "indices", "X0", "Y0", "k", "solver", "it", "threads", "reg", "alpha"):
            assert ours[key] == theirs[key], key
        # implicit is handed C = 1 + alpha*R, and runs with the same settings and start
        assert theirs["conf"] == theirs["expect_conf"]
        assert theirs["peer_threads"] == ours["threads"] and theirs["peer_k"] == ours["k"]
        assert theirs["peer_cg"] == (ours["solver"] == "cg")
        assert theirs["peer_reg"] == ours["reg"] and theirs["peer_it"] == ours["it"]
        assert theirs["peer_start"] == ours["X0"] + ours["Y0"]  # recfuse left X0, Y0 as given


def test_als_missing_implicit_is_named_not_a_traceback(tmp_path):
    proc = run_bench("bench_als", ["--users", "300", "--items", "200", "--nnz", "3000",
                                   "--factors", "8", "--no-quality"], tmp_path, hide=["implicit"],
                     env={"RECFUSE_BENCH_RESULTS": str(tmp_path)}, redirect=False)
    assert clean_failure(proc, "implicit")


@pytest.mark.parametrize("script", ["bench_als", "bench_mlp"])
def test_unwritable_results_location_is_refused_cleanly(tmp_path, script):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    if script == "bench_als":
        proc = run_bench("bench_als", ["--users", "300", "--items", "200", "--nnz", "3000",
                                       "--factors", "8", "--no-quality"], tmp_path,
                         env={"RECFUSE_BENCH_RESULTS": str(blocker)}, redirect=False)
    else:
        proc = run_bench("bench_mlp", ["--rounds", "2", "--min-time", "0.03", "--output",
                                       blocker / "mlp.json"], tmp_path, set_=MLP_TINY)
    assert proc.returncode != 0 and clean_failure(proc, str(blocker))


# ------------------------------------------------------------------------------ bench_topk

TOPK_RECORD = """
import atexit, hashlib, numpy as np, recfuse
seen_calls = {}
digest = lambda a: None if a is None else hashlib.sha1(np.ascontiguousarray(
    a.toarray() if hasattr(a, "toarray") else a).tobytes()).hexdigest()
def note(lib, Q, k, seen, threads):
    seen_calls.setdefault(lib, set()).add((digest(Q), int(k), digest(seen), threads))
_search = recfuse.ItemIndex.search
def search(self, Q, k, *, exclude=None, num_threads=0, **kw):
    note("recfuse", Q, k, exclude, num_threads)
    return _search(self, Q, k, exclude=exclude, num_threads=num_threads, **kw)
recfuse.ItemIndex.search = search
_np = m.numpy_topk
def numpy_topk(Q, V, k, seen):
    note("numpy", Q, k, seen, int(os.environ["OPENBLAS_NUM_THREADS"]))
    return _np(Q, V, k, seen)
m.numpy_topk = numpy_topk
_faiss = m.make_faiss
def make_faiss(V, k, seen):
    inner = _faiss(V, k, seen)
    import faiss
    def s(Q):
        note("faiss", Q, k, seen, faiss.omp_get_max_threads())
        return inner(Q)
    return s
m.make_faiss = make_faiss
_impl = m.make_implicit
def make_implicit(V, k, seen, n):
    inner = _impl(V, k, seen, n)
    model = next(c.cell_contents for c in inner.__closure__
                 if hasattr(c.cell_contents, "num_threads"))
    def s(Q):
        note("implicit", Q, k, seen, model.num_threads)
        return inner(Q)
    return s
m.make_implicit = make_implicit
atexit.register(lambda: json.dump({k: sorted(map(list, v), key=str) for k, v in seen_calls.items()},
                                  open(os.environ["AE_RECORD"], "w")))
"""
TOPK_CASES = [[3000, 16, 32, 10, True]]  # a batch with seen items excluded
NO_BANDWIDTH = "m.read_bandwidth = lambda: 1.0\n"  # (1 GiB of reads; not under test)


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("topk")
    record = tmp / "calls.json"
    proc = run_bench("bench_topk", ["--min-time", "0.02", "--output", tmp / "topk.json"], tmp,
                     set_={"DEFAULT_CASES": TOPK_CASES}, before=NO_BANDWIDTH + TOPK_RECORD,
                     env={"AE_RECORD": str(record)}, timeout=180)
    return proc, tmp / "topk.json", record


def test_topk_tiny_run_rates_and_ratios(topk_run):
    proc, path, _ = topk_run
    pytest.importorskip("faiss")
    pytest.importorskip("implicit")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(path)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| 3k x 16")]
    assert len(report["cases"]) == 1 and report["cases"][0]["seen_per_query"] == 100
    for case in report["cases"]:
        qps, n, d, m = case["qps"], case["n"], case["d"], case["m"]
        assert set(qps) == {"recfuse", "bf16", "numpy", "faiss", "implicit"}
        seconds = m / qps["recfuse"]
        assert close(case["recfuse_gbs"], n * d * 4 / seconds / 1e9)  # the float32 table's bytes
        assert close(case["recfuse_gflops"], 2 * m * n * d / seconds / 1e9)
        assert all(value > 0.999 for value in case["agreement"].values()), case["agreement"]
        # the table's ratios: peer time / recfuse time (bf16: its own speed-up over recfuse)
        line = next(row for row in table if f"| {m} | {case['k']} |" in row)
        for name in ("numpy", "faiss", "implicit"):
            assert f"({qps['recfuse'] / qps[name]:.1f}x)" in line
        assert f"({qps['bf16'] / qps['recfuse']:.1f}x)" in line


def test_topk_every_library_answers_the_same_queries_k_seen_and_threads(topk_run):
    proc, _, record = topk_run
    pytest.importorskip("faiss")
    pytest.importorskip("implicit")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = json.loads(record.read_text())
    work = {lib: {tuple(c[:3]) for c in entries} for lib, entries in calls.items()}
    threads = {lib: {c[3] for c in entries} for lib, entries in calls.items()}
    assert set(work) == {"recfuse", "numpy", "faiss", "implicit"}
    assert work["recfuse"] == work["numpy"] == work["faiss"] == work["implicit"]
    assert len(work["numpy"]) == 1
    assert all(t == {2} for t in threads.values()), threads


def test_topk_missing_faiss_and_implicit_are_skipped_by_name(tmp_path):
    proc = run_bench("bench_topk", ["--min-time", "0.01", "--libraries", "recfuse", "numpy",
                                    "faiss", "implicit", "--output", tmp_path / "t.json"],
                     tmp_path, hide=["faiss", "implicit"], before=NO_BANDWIDTH,
                     set_={"DEFAULT_CASES": TOPK_CASES})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(tmp_path / "t.json")
    assert report["versions"]["faiss"].startswith("unavailable")
    assert report["versions"]["implicit"].startswith("unavailable")
    assert set(report["cases"][0]["qps"]) == {"recfuse", "numpy"}


def test_topk_timers_leave_the_warm_up_out(tmp_path):
    code = f"""
import sys, time
sys.path.insert(0, {str(BENCH)!r})
import bench_topk
calls = {{"slow": 0}}
def first_slow():
    calls["slow"] += 1
    if calls["slow"] == 1:
        time.sleep(0.5)
fast = lambda: None
print(bench_topk.timed(first_slow, 0.0) < 0.1)
calls["slow"] = 0
times = bench_topk.timed_round_robin({{"a": first_slow, "b": fast}}, 0.0, rounds=1)
print(times["a"] < 0.1, set(times) == {{"a", "b"}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["True", "True", "True"], proc.stderr


# ------------------------------------------------------------------------------ bench_mlp

MLP_TINY = {"ITEMS": 3000, "CANDIDATES": 100}
# (--min-time stays well above a scheduler tick: the script takes no sample when a round's
# deadline passes before its first timed call, the bug test_mlp_min_time_zero_... pins)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlp")
    proc = run_bench("bench_mlp", ["--rounds", "2", "--min-time", "0.03", "--output",
                                   tmp / "mlp.json"], tmp, set_=MLP_TINY)
    return proc, tmp / "mlp.json"


def test_mlp_tiny_run_flops_and_ratios(mlp_run):
    proc, path = mlp_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(path)
    per_candidate = 2 * (160 * 256 + 256 * 128 + 128 * 64 + 64 * 1)
    assert per_candidate == 163_968
    p50 = {(r["case"], r["method"]): r["p50_ms"] for r in report["rows"]}
    for r in report["rows"]:
        users = int(r["case"].split(" x ")[0])
        assert r["case"].endswith(" x 100") and r["samples"] >= 1
        assert close(r["gflops"], per_candidate * users * 100 / (r["p50_ms"] / 1e3) / 1e9, 1e-6)
        if r["vs_onnxruntime"] is not None:  # peer time / this method's time
            assert close(r["vs_onnxruntime"], p50[(r["case"], "onnxruntime")] / r["p50_ms"], 1e-6)
            assert close(r["vs_onnxruntime_split"],
                         p50[(r["case"], "onnxruntime split")] / r["p50_ms"], 1e-6)


def test_mlp_missing_torch_and_onnxruntime_are_skipped_by_name(tmp_path):
    proc = run_bench("bench_mlp", ["--rounds", "2", "--min-time", "0.03", "--output",
                                   tmp_path / "m.json"], tmp_path, set_=MLP_TINY,
                     hide=["torch", "onnxruntime", "onnx"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch not installed" in proc.stderr and "onnxruntime not installed" in proc.stderr
    report = strict_json(tmp_path / "m.json")
    assert all(r["vs_onnxruntime"] is None for r in report["rows"])
    assert not any(r["method"].startswith(("torch", "onnx")) for r in report["rows"])


def test_mlp_output_as_a_bare_file_name(tmp_path):
    proc = run_bench("bench_mlp", ["--rounds", "2", "--min-time", "0.03", "--output",
                                   "mlp.json"], tmp_path, set_=MLP_TINY)
    assert proc.returncode == 0 and (tmp_path / "mlp.json").is_file(), proc.stderr[-500:]


def test_mlp_min_time_zero_still_times_each_method(tmp_path):
    proc = run_bench("bench_mlp", ["--rounds", "1", "--min-time", "0", "--output",
                                   tmp_path / "m.json"], tmp_path, set_=MLP_TINY)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert all(r["samples"] >= 1 for r in strict_json(tmp_path / "m.json")["rows"])


# ------------------------------------------------------------------------------ bench_data


def test_data_tiny_run_strict_json_and_ratios(tmp_path):
    proc = run_bench("bench_data", ["--sizes", "2000", "--repeats", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(tmp_path / "data.json")
    assert [r["ids"] for r in report["ingestion"]] == ["int64", "string"]
    for r in report["ingestion"]:
        assert close(r["speedup"], r["hand_seconds"] / r["recfuse_seconds"])
    (row,) = report["evaluation"]
    assert close(row["speedup"], row["implicit_seconds"] / row["recfuse_seconds"])
    # the exactness check compares all three recfuse paths with implicit's metrics
    assert row["max_metric_difference"] <= 1e-12
    for side in ("recfuse", "recfuse_on_implicit_model"):
        for name, value in row[side].items():
            assert math.isclose(value, row["implicit"][name], abs_tol=1e-12)


def test_data_ingestion_alone_runs_without_implicit(tmp_path):
    proc = run_bench("bench_data", ["--sizes", "2000", "--repeats", "1", "--skip-evaluation"],
                     tmp_path, hide=["implicit"])
    assert proc.returncode == 0, proc.stderr[-500:]
    assert len(strict_json(tmp_path / "data.json")["ingestion"]) == 2


# ------------------------------------------------------------------------------ bench_sgd


def test_sgd_bpr_section_tiny_and_without_peers(tmp_path):
    proc = run_bench("bench_sgd", ["--only", "bpr", "--bpr-iterations", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = strict_json(tmp_path / "sgd.json")["rows"]
    if "implicit" in row:
        ratio = row["implicit"]["epoch_s"] / row["recfuse"]["epoch_s"]
        assert f"| {ratio:.1f}x |" in proc.stdout
    (tmp_path / "hidden").mkdir()
    hidden = run_bench("bench_sgd", ["--only", "bpr", "--bpr-iterations", "1"],
                       tmp_path / "hidden", hide=["implicit", "surprise"])
    assert hidden.returncode == 0, hidden.stderr[-2000:]
    assert "implicit skipped" in hidden.stdout
    report = strict_json(tmp_path / "hidden" / "sgd.json")
    assert "implicit" not in report["rows"][0] and "implicit" not in report["versions"]


# ------------------------------------------------------------------------------ bench_serve

SERVE_TINY = ["--models", "ml-small", "--chains", "recall,recall+rank", "--concurrency", "1,2",
              "--seconds", "0.5", "--requests", "20", "--observe", "5"]


def test_serve_tiny_run_embedded_and_usual(tmp_path):
    proc = run_bench("bench_serve", SERVE_TINY + ["--modes", "embedded,batcher,usual"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(tmp_path / "bench_serve.json")
    assert {(r["chain"], r["mode"], r["concurrency"]) for r in report["rows"]} == {
        (c, m, n) for c in ("recall", "recall+rank") for m in ("embedded", "batcher", "usual")
        for n in (1, 2)}
    assert all(r["calls"] >= 1 for r in report["rows"])
    # the check that both chains answer alike really compares lists
    assert report["usual_chain_equal_lists"]["ml-small recall"] == 1.0
    assert report["observe"]["ml-small"]["calls"] == 5


def test_serve_embedded_mode_runs_without_implicit(tmp_path):
    proc = run_bench("bench_serve", SERVE_TINY + ["--modes", "embedded"], tmp_path,
                     hide=["implicit"])
    assert proc.returncode == 0, proc.stderr[-500:]
    assert strict_json(tmp_path / "bench_serve.json")["rows"]


# ------------------------------------------------------------------------------ bench_new_items


def test_new_items_runs_and_writes_strict_json(tmp_path):
    small = ("import recfuse; m.MODELS = {'ALS': lambda: recfuse.ALS(factors=16, iterations=3, "
             "random_state=0), 'BPR': lambda: recfuse.BPR(factors=16, iterations=5, "
             "random_state=0)}")
    proc = run_bench("bench_new_items", [], tmp_path, before=small)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "skipped" in proc.stdout:
        pytest.skip("ml-100k not available")
    report = strict_json(tmp_path / "new_items.json")
    for name in ("ALS", "BPR"):
        for kind in ("served", "refit"):
            result = report["models"][name][kind]
            assert 0 <= result["auc"] <= 1 and 0 <= result["hits"] <= result["shown"]
    assert usage_error(run_bench("bench_new_items", ["--bogus"], tmp_path))


# ------------------------------------------------------------------------------ bench_distributed

DIST_TINY = ["--users", "300", "--items", "200", "--nnz", "3000", "--factors", "8",
             "--workers", "1", "--partitions", "2"]


def test_distributed_one_iteration_writes_strict_json(tmp_path):
    pytest.importorskip("distributed")
    proc = run_bench("bench_distributed", DIST_TINY + ["--iterations", "1"], tmp_path,
                     timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict_json(tmp_path / "distributed.json")
    assert report["max_factor_difference_relative"] < 1e-3  # same start, same solver
    assert report["bytes_moved_per_it"] is None


def test_distributed_spark_without_pyspark_is_skipped_by_name(tmp_path):
    pytest.importorskip("distributed")
    proc = run_bench("bench_distributed", DIST_TINY + ["--iterations", "2", "--spark"],
                     tmp_path, hide=["pyspark"], timeout=180)
    assert proc.returncode == 0 and clean_failure(proc, "pyspark"), proc.stderr[-500:]
    assert strict_json(tmp_path / "distributed.json")["spark_s_per_it"] is None


# ------------------------------------------------------------------------------ bad options

# (script, arguments, code making the benchmark's work a sentinel): each must be an argparse
# error (exit 2, usage) before any work, not a traceback or a silently wrong run.
BAD_OPTIONS = [
    ("bench_als", ["--factors", "0"], "m.speed_rows = _ran", "library ValueError traceback"),
    ("bench_als", ["--iterations", "0"], "m.speed_rows = _ran",
     "nothing timed: NaN speed-ups written as bare NaN"),
    ("bench_als", ["--users", "0"], "m.speed_rows = _ran", "library ValueError traceback"),
    ("bench_als", ["--iterations", "2"], "m.speed_rows = _ran",
     "the median of two iterations takes in half of recfuse's set-up"),
    ("bench_mlp", ["--rounds", "0"], "m.make_layers = _ran",
     "statistics.median of no samples, after the set-up"),
    ("bench_data", ["--repeats", "0"], "m.ingestion_rows = m.evaluation_rows = _ran",
     "max() of an empty sequence"),
    ("bench_sgd", ["--only", "bpr", "--bpr-iterations", "0"], "m.bpr_vs_implicit = _ran",
     "ZeroDivisionError"),
    ("bench_serve", ["--concurrency", "abc"], "m.ml_small = m.million_items = _ran",
     "int() ValueError traceback"),
    ("bench_serve", ["--concurrency", "0"], "m.ml_small = m.million_items = _ran",
     "np.percentile of no latencies"),
    ("bench_serve", ["--requests", "0"], "m.ml_small = m.million_items = _ran",
     "np.percentile of no latencies"),
    ("bench_serve", ["--models", "nonsense"], "m.ml_small = m.million_items = _ran",
     "an unknown model name silently runs the 1M-item model"),
    ("bench_serve", ["--chains", "nonsense"], "m.ml_small = m.million_items = _ran",
     "an unknown chain silently runs 'recall' under that name"),
    ("bench_serve", ["--modes", "nonsense"], "m.ml_small = m.million_items = _ran",
     "an unknown mode is silently ignored"),
    ("bench_topk", ["--libraries", "fiass"], "m.read_bandwidth = _ran",
     "an unknown library name (a typo) is silently ignored"),
    ("bench_distributed", ["--workers", "0"],
     "import types; m.datasets = types.SimpleNamespace(synthetic_implicit=_ran)",
     "dask's n_workers ValueError traceback"),
]


@pytest.mark.parametrize("script,args,before,why", [
    pytest.param(*case, id=f"{case[0]}{'_'.join(case[1])}") for case in BAD_OPTIONS])
def test_bad_option_is_an_argparse_error(tmp_path, script, args, before, why):
    proc = run_bench(script, args, tmp_path, before=SENTINEL + before,
                     env={"RECFUSE_BENCH_RESULTS": str(tmp_path)})
    assert usage_error(proc), (proc.returncode, proc.stderr[-600:])


@pytest.mark.parametrize("script,args", [
    ("bench_als", ["--solvers", "lu"]), ("bench_sgd", ["--only", "svd"]),
    ("bench_distributed", ["--broadcast", "always"]), ("bench_topk", ["--min-time", "x"]),
    ("bench_mlp", ["--rounds", "1.5"]), ("bench_gpu_als", ["--backends", "tpu"]),
    ("bench_gpu_topk", ["--repeats", "x"])])
def test_bad_option_caught_by_argparse_today(tmp_path, script, args):
    proc = run_bench(script, args, tmp_path, before=SENTINEL + "m.time_backend = _ran")
    assert usage_error(proc), proc.stderr[-600:]


@pytest.mark.parametrize("script", ["bench_topk.py", "bench_mlp.py"])
def test_bench_threads_variable_is_validated(script):
    for value in ("two", "0"):
        proc = subprocess.run([sys.executable, str(BENCH / script), "--help"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "RECFUSE_BENCH_THREADS": value})
        assert clean_failure(proc, "RECFUSE_BENCH_THREADS") and proc.returncode != 0


# ------------------------------------------------------------------------------ GPU scripts


def _gpu_available() -> bool:
    import recfuse

    return any(info.available for info in recfuse.backends() if info.name in ("cuda", "cupy"))


@pytest.mark.parametrize("script", ["bench_gpu_mlp", "bench_gpu_topk"])
def test_gpu_script_fails_cleanly_without_a_device(tmp_path, script):
    if _gpu_available():
        pytest.skip("a GPU backend is available here")
    out = tmp_path / "gpu.json"
    proc = run_bench(script, ["--output", out], tmp_path)
    assert proc.returncode == 1 and "not available" in proc.stdout
    assert "Traceback" not in proc.stderr and not out.exists()


def test_gpu_als_without_any_backend_stops_before_the_work(tmp_path):
    if _gpu_available():
        pytest.skip("a GPU backend is available here")
    gpu = pytest.importorskip("implicit.gpu")
    if getattr(gpu, "HAS_CUDA", False):
        pytest.skip("implicit's GPU ALS is available here")
    out = tmp_path / "gpu_als.json"
    proc = run_bench("bench_gpu_als", ["--users", "200", "--items", "100", "--nnz", "2000",
                                       "--factors", "8", "--output", out], tmp_path)
    assert "skipping backend cuda" in proc.stdout  # the reason is printed today
    assert proc.returncode != 0 and "generating" not in proc.stdout and not out.exists()


def test_gpu_sgd_skips_the_devices_by_name(tmp_path):
    if _gpu_available():
        pytest.skip("a GPU backend is available here")
    proc = run_bench("bench_gpu_sgd", ["--ratings", "20000"], tmp_path,
                     set_={"HERE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "cuda: skipped (" in proc.stdout and "cupy: skipped (" in proc.stdout
    report = strict_json(tmp_path / "results" / "gpu_sgd.json")
    assert [row["backend"] for row in report["rows"]] == ["cpu"]


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("bench_gpu_*.py")))
def test_gpu_scripts_take_the_budget_device_check_passes(script):
    # device_check.sh runs every bench_gpu_*.py with --budget-s
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--budget-s", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid float value" in proc.stderr


def test_device_check_script_parses():
    proc = subprocess.run(["bash", "-n", str(BENCH / "device_check.sh")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr

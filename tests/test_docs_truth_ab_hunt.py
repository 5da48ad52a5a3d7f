"""Are the docs true? Second pass (-ab): the claims README.md, bench/README.md and the
docstrings gained after tests/test_docs_truth_hunt.py, checked against what the code does.
That file's checks are not repeated here. It runs every README Python block and parses the
README's ``recfuse`` commands. It also checks the bench commands' option names, parameter
entries and defaults, and cross-references.

The contract used here is the text, read literally:
- README "Using it": "A setting assigned as an attribute (``model.regularization = 0.1``) is
  checked by the next ``fit``, as ``set_params`` checks it". models/_common.py
  (``_check_settings``): "A refused value raises the constructor's error and changes
  nothing". ``param_dtype``: anything assigned by hand is kept "as it is, for the fit's
  check to name".
- README "Backends": "``RECFUSE_BACKEND`` is read when a backend is chosen: at each ``fit``,
  and when a model builds its search index (its first ``recommend`` or ``similar_*`` after a
  fit); a change later in the process reaches that index at the next ``fit`` or
  ``set_params(backend=...)``"; a bad ``RECFUSE_SIMD`` "makes the ``cpu`` backend
  unavailable ... and leaves the others working".
- README "Processes": "A ``MicroBatcher`` gets new workers in a forked child, and open
  batchers answer what is queued and stop at interpreter exit. Models, ``ItemIndex`` and
  ``MLPScorer`` pickle (in memory) for ``"spawn"`` pools" (a MicroBatcher and PreparedItems
  refuse, by their docstrings).
- README "Ratings": ExplicitALS "refuses ratings with max |rating|² x (most ratings of one
  user or item) above the dtype's largest value" (float64 too now); ``predict`` of unknown
  ids is "mean + known biases".
- README command line: the rating models read ``--weight rating``, "repeated pairs keeping
  their last rating unless ``--combine`` says otherwise".
- Every ``bench/X.py ...`` command of bench/README.md and README.md parses with the script's
  own ArgumentParser, values included (the parser is run, not the benchmark).
- ``python -m recfuse`` is the ``recfuse`` command (recfuse/__main__.py, the package map).
- ItemIndex: "longdouble becomes float64"; its ``storage="auto"`` rule (1,000 items per
  result, "where the CPU has no AVX512-BF16, for single queries only", 500 when the norms
  are skewed under "dot", at least 1,000 items).
- Recommender: "The settings from ``candidates`` to ``max_pending_events`` may be assigned
  while the Recommender serves (checked as here ...); ``rerank`` is fixed".
- recfuse.load: overrides replace saved parameters; unknown names are a ValueError; an
  unavailable backend named there is a RuntimeError; a file saved with a backend this host
  lacks loads with ``backend="auto"`` and a RuntimeWarning.
- The ``>>>`` examples of modules tests/test_doctests.py does not list (``_validation``,
  ``distributed._blocks``) and DaskALS's skipped example, run on an in-process cluster.

Finding: a ``random_state`` assigned by hand is not checked by ``fit`` as ``set_params``
checks it. ``get_params`` (``param_seed``) calls ``int()`` on it first, so 2.5, "3" and
True are quietly truncated and fitted, and "x" raises int()'s own ValueError. That
ValueError also breaks ``get_params()``.
"""

from __future__ import annotations

import doctest
import inspect
import json
import os
import pathlib
import pickle
import re
import shlex
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import retrieval

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCH_README = (ROOT / "bench" / "README.md").read_text()


def run_python(code: str, cwd=None, timeout: int = 120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})


@pytest.fixture(scope="module")
def user_items():
    return sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)


@pytest.fixture(scope="module")
def ratings(user_items):
    coo = user_items.tocoo()
    return coo.row, coo.col, np.ceil(coo.data * 5)


MODELS = {
    "ALS": (recfuse.ALS, {"factors": 4, "iterations": 1}),
    "BPR": (recfuse.BPR, {"factors": 4, "iterations": 1}),
    "SVD": (recfuse.SVD, {"factors": 4, "epochs": 1}),
    "SVDpp": (recfuse.SVDpp, {"factors": 4, "epochs": 1}),
    "ExplicitALS": (recfuse.ExplicitALS, {"factors": 4, "iterations": 1}),
    "MLPRanker": (recfuse.MLPRanker, {"hidden": (4,), "epochs": 1}),
}


def fit_model(model, user_items, ratings):
    if isinstance(model, (recfuse.ALS, recfuse.BPR)):
        return model.fit(user_items)
    if isinstance(model, recfuse.MLPRanker):
        als = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(user_items)
        return model.fit(user_items, als.user_factors, als.item_factors)
    return model.fit(*ratings)


# ============================================================== settings assigned by hand

# (model, setting, value assigned by hand): every one refused by set_params
ASSIGNED = [
    ("ALS", "regularization", -5.0), ("ALS", "regularization", "x"), ("ALS", "alpha", float("nan")),
    ("ALS", "iterations", 2.5), ("ALS", "solver", "lu"), ("ALS", "cg_steps", 0),
    ("ALS", "confidence", "log"), ("ALS", "dtype", "int8"), ("ALS", "num_threads", -1),
    ("ALS", "backend", "nope"), ("ALS", "factors", 0), ("ALS", "random_state", -1),
    ("BPR", "lr", -1.0), ("BPR", "reg", float("nan")), ("BPR", "max_tries", -1),
    ("SVD", "reg", "x"), ("SVD", "epochs", -1), ("SVD", "init_std", -1.0), ("SVD", "lr_bu", -1.0),
    ("SVDpp", "lr", -1.0), ("ExplicitALS", "reg", -1.0), ("ExplicitALS", "init_std", -1.0),
    ("MLPRanker", "learning_rate", -1.0), ("MLPRanker", "activation", "elu"),
    ("MLPRanker", "negatives", -1),
]


@pytest.mark.parametrize("name, setting, value", ASSIGNED,
                         ids=[f"{n}.{s}={v!r}" for n, s, v in ASSIGNED])
def test_a_setting_assigned_by_hand_is_checked_by_fit_as_set_params_checks_it(
        name, setting, value, user_items, ratings):
    """README: "A setting assigned as an attribute ... is checked by the next fit, as
    set_params checks it": the same error class, naming the setting."""
    cls, kw = MODELS[name]
    with pytest.raises((TypeError, ValueError)) as by_set_params:
        cls(**kw).set_params(**{setting: value})
    model = cls(**kw)
    setattr(model, setting, value)
    with pytest.raises(by_set_params.type, match=setting):
        fit_model(model, user_items, ratings)


def test_a_refused_setting_leaves_a_fitted_model_as_it_was(user_items):
    """_check_settings: "A refused value raises the constructor's error and changes
    nothing"."""
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(user_items)
    before = model.user_factors.copy()
    model.regularization = -1.0
    with pytest.raises(ValueError, match="regularization"):
        model.fit(user_items)
    assert np.array_equal(model.user_factors, before) and model.regularization == -1.0


BAD_SEEDS = [2.5, "3", "x", True, object()]


@pytest.mark.parametrize("name", list(MODELS))
def test_a_random_state_assigned_by_hand_is_checked_by_fit(name, user_items, ratings):
    """set_params(random_state=v) is a TypeError naming random_state for every v here; fit
    must refuse the same value assigned as an attribute, and leave it as assigned."""
    cls, kw = MODELS[name]
    failures = []
    for value in BAD_SEEDS:
        with pytest.raises(TypeError, match="random_state"):
            cls(**kw).set_params(random_state=value)
        model = cls(**kw)
        model.random_state = value
        try:
            fit_model(model, user_items, ratings)
            failures.append((value, "fitted", model.random_state))
        except TypeError as error:
            if "random_state" not in str(error):
                failures.append((value, "TypeError", str(error)[:80]))
        except ValueError as error:
            failures.append((value, "ValueError", str(error)[:80]))
        if model.random_state is not value:  # "changes nothing"
            failures.append((value, "became", model.random_state))
    assert not failures, failures


def test_get_params_gives_a_hand_assigned_random_state_as_it_is():
    """``get_params`` reports the attributes; ``param_dtype`` keeps a value assigned by hand
    "as it is, for the fit's check to name", and a seed should get the same treatment."""
    model = recfuse.ALS()
    model.dtype = "int8"
    assert model.get_params()["dtype"] == "int8"  # the dtype rule
    model.random_state = "x"
    assert model.get_params()["random_state"] == "x"


def test_distributed_models_check_a_hand_assigned_random_state():
    """DaskALS (DistributedALSBase) gives random_state as it is, so its fit refuses it as
    set_params does. This is the behaviour the single-machine models lack."""
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    from recfuse.distributed import DaskALS

    frame = dd.from_pandas(pd.DataFrame({"user": [0, 1, 2], "item": [0, 1, 1],
                                         "w": [1.0, 1.0, 2.0]}), npartitions=1)
    for value in (2.5, "x"):
        model = DaskALS(factors=2, iterations=1)
        model.random_state = value
        with pytest.raises(TypeError, match="random_state"):
            model.fit(frame, "user", "item", "w")


# ============================================================== backends and environment

def _index_backends(model) -> list[str]:
    """The backend of each ItemIndex a model keeps in its caches."""
    found = []

    def walk(value):
        if isinstance(value, recfuse.ItemIndex):
            found.append(value._module.NAME)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for name, value in vars(model).items():
        if "cache" in name:
            walk(value)
    return found


@pytest.mark.parametrize("name", ["ALS", "BPR", "SVD", "ExplicitALS"])
def test_recfuse_backend_is_read_at_fit_and_at_the_index_build(name, user_items, ratings,
                                                               monkeypatch):
    """README "Backends": RECFUSE_BACKEND is read at each fit and when the model builds its
    search index; a later change reaches that index at the next fit or set_params."""
    cls, kw = MODELS[name]
    monkeypatch.setenv("RECFUSE_BACKEND", "numpy")
    model = fit_model(cls(**kw, random_state=0), user_items, ratings)
    assert model.backend_used == "numpy"
    monkeypatch.delenv("RECFUSE_BACKEND")
    fit_model(model, user_items, ratings)
    assert model.backend_used == _usable()[0] if "cuda" not in _usable() else True
    monkeypatch.setenv("RECFUSE_BACKEND", "numpy")  # after the fit, before the index
    model.recommend(0, k=3)
    assert _index_backends(model) == ["numpy"]
    if "cpu" not in _usable():
        return
    monkeypatch.setenv("RECFUSE_BACKEND", "cpu")
    model.recommend(0, k=3)
    assert _index_backends(model) == ["numpy"]  # the index stays until ...
    model.set_params(backend="auto")
    model.recommend(0, k=3)
    assert _index_backends(model) == ["cpu"]  # ... set_params(backend=...)


def _usable() -> list[str]:
    return [b.name for b in recfuse.backends() if b.available]


def test_a_bad_recfuse_simd_makes_cpu_unavailable_and_leaves_the_others():
    """README: a value the CPU cannot run or a misspelt one "makes the cpu backend
    unavailable, with the reason in recfuse info, and leaves the others working"."""
    if "cpu" not in _usable():
        pytest.skip("the native module is not usable here")
    code = textwrap.dedent("""
        import json, numpy as np, scipy.sparse as sp, recfuse
        info = {b.name: (b.available, b.detail) for b in recfuse.backends()}
        ui = sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
        used = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(ui).backend_used
        ids, _ = recfuse.topk(np.ones(3), np.eye(3), k=1)
        print(json.dumps({"cpu": info["cpu"], "used": used, "ids": ids.tolist()}))
    """)
    for value in ("avx-2", "AVX2"):
        result = run_python(code, env={"RECFUSE_SIMD": value, "RECFUSE_BACKEND": ""})
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["cpu"][0] is False and "RECFUSE_SIMD" in report["cpu"][1]
        assert report["used"] in ("numba", "numpy") and report["ids"] == [0]
        info = subprocess.run([sys.executable, "-m", "recfuse", "info"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "RECFUSE_SIMD": value})
        assert "RECFUSE_SIMD" in info.stdout, info.stdout[-2000:]


# ============================================================== processes

def test_micro_batcher_in_a_forked_child_and_at_interpreter_exit():
    """README "Processes": a MicroBatcher gets new workers in a forked child; open batchers
    answer what is queued and stop at interpreter exit (the process exits 0)."""
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork here")
    code = textwrap.dedent("""
        import atexit, os, numpy as np, scipy.sparse as sp, recfuse
        seen = sp.random(200, 100, density=0.1, format="csr", random_state=0, dtype=np.float32)
        rec = recfuse.Recommender(recfuse.ALS(factors=8, iterations=2, random_state=0).fit(seen), k=5)
        batcher = recfuse.MicroBatcher(rec, max_wait=0.01)
        first = batcher.recommend(3)
        pid = os.fork()
        if pid == 0:
            ok = (batcher.recommend(3).ids == first.ids).all()
            batcher.close()
            os._exit(0 if ok else 5)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        futures = [batcher.submit(u) for u in range(100)]  # never closed by hand
        atexit.register(lambda: print("answered", sum(f.done() for f in futures), flush=True))
    """)
    result = run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "child 0" in result.stdout and "answered 100" in result.stdout, result.stdout


def test_models_index_and_scorer_pickle_batcher_and_prepared_items_refuse(user_items, ratings):
    """README: "Models, ItemIndex and MLPScorer pickle (in memory) for spawn pools"; the
    MicroBatcher's and PreparedItems' reduce refuse with a TypeError that says what to do."""
    objects = [fit_model(cls(**kw, random_state=0), user_items, ratings)
               for name, (cls, kw) in MODELS.items() if name != "MLPRanker"]
    for model in objects:
        copy = pickle.loads(pickle.dumps(model))
        assert np.array_equal(copy.recommend(0, k=3)[0], model.recommend(0, k=3)[0])
    rng = np.random.default_rng(0)
    items = rng.standard_normal((30, 4)).astype(np.float32)
    index = recfuse.ItemIndex(items)
    copy = pickle.loads(pickle.dumps(index))
    assert np.array_equal(copy.search(items[:2], k=3)[0], index.search(items[:2], k=3)[0])
    layers = [(rng.standard_normal((8, 10)).astype(np.float32), None, "relu"),
              (rng.standard_normal((4, 8)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 4)).astype(np.float32), None, "sigmoid")]
    for precision in ("float32", "int8"):
        scorer = recfuse.MLPScorer(layers, precision=precision)
        copy = pickle.loads(pickle.dumps(scorer))
        assert copy.precision == precision
        prepared, copy_prepared = (s.prepare_items(items, item_column=4) for s in (scorer, copy))
        candidates, features = rng.integers(0, 30, (3, 7)), np.ones((21, 2), np.float32)
        assert np.array_equal(
            scorer.score_candidates(items[:3], candidates, prepared, candidate_features=features),
            copy.score_candidates(items[:3], candidates, copy_prepared, candidate_features=features))
        with pytest.raises(TypeError, match="prepare_items"):
            pickle.dumps(prepared)
    with recfuse.MicroBatcher(recfuse.Recommender(objects[0])) as batcher:
        with pytest.raises(TypeError, match="MicroBatcher"):
            pickle.dumps(batcher)


# ============================================================== ratings

def test_explicit_als_refuses_ratings_past_the_dtypes_bound():
    """README: fit refuses max |rating|² x (most ratings of one row) above the dtype's largest
    value, float64 included, with a ValueError; below it a lone rating fits."""
    for dtype, big, fine in ((np.float64, 1.4e154, 1.3e154), (np.float32, 1.9e19, 1.8e19)):
        with pytest.raises(ValueError, match="too large"):
            recfuse.ExplicitALS(factors=2, iterations=1, dtype=dtype).fit([0], [0], [big])
        with pytest.raises(ValueError, match="too large"):  # x 3 ratings of user 0
            recfuse.ExplicitALS(factors=2, iterations=1, dtype=dtype).fit(
                [0, 0, 0], [0, 1, 2], [fine] * 3)
        model = recfuse.ExplicitALS(factors=2, iterations=1, dtype=dtype).fit([0], [0], [fine])
        assert model.predict(0, 0, clip=False) == pytest.approx(fine, rel=1e-5)


@pytest.mark.parametrize("cls", [recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS],
                         ids=lambda c: c.__name__)
def test_predict_of_unknown_ids_is_the_mean_plus_known_biases(cls):
    """README: ``model.predict([1, 2], [10, 20])  # unknown ids: mean + known biases``."""
    R = recfuse.datasets.synthetic_explicit(300, 100, 3000, seed=0).tocoo()
    kw = {"iterations": 2} if cls is recfuse.ExplicitALS else {"epochs": 2}
    model = cls(factors=4, random_state=0, **kw).fit(R.row, R.col, R.data)
    n_users, n_items = R.shape
    mu = model.global_mean
    got = model.predict([n_users + 5, n_users + 5, 1], [10, n_items + 5, n_items + 5], clip=False)
    expected = [mu + model.item_bias[10], mu, mu + model.user_bias[1]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cli_rating_models_keep_the_last_rating_unless_combine_says_otherwise(tmp_path):
    """README: the rating models read ``--weight rating``, "repeated pairs keeping their
    last rating unless --combine says otherwise"; ALS keeps its sum."""
    from recfuse import cli
    from recfuse.persistence import load_folder

    (tmp_path / "log.csv").write_text(
        "user,item,rating\n1,1,5\n1,1,1\n1,2,3\n2,1,4\n2,2,2\n3,1,1\n3,2,5\n")
    log = str(tmp_path / "log.csv")
    cases = [(["--model", "svd", "--weight", "rating"], 1.0),
             (["--model", "explicit-als", "--weight", "rating"], 1.0),
             (["--model", "svd", "--weight", "rating", "--combine", "max"], 5.0),
             (["--weight", "rating"], 6.0)]  # ALS: the default sum
    for j, (options, kept) in enumerate(cases):
        out = str(tmp_path / f"out{j}")
        assert cli.main(["train", log, "-o", out, "--split", "none", "--iterations", "1",
                         *options]) == 0
        _, train = load_folder(out)
        row = train.user_ids.to_internal([1])[0]
        column = train.item_ids.to_internal([1])[0]
        assert train.matrix[row, column] == kept, options


# ============================================================== commands

def _bench_commands() -> list[tuple[str, str, list[str]]]:
    """(text, script, arguments) of every ``[python] [bench/]X.py ARGS`` in backticks of
    bench/README.md and README.md, placeholders made values (``<...>`` -> X, ``[--a]`` ->
    ``--a``)."""
    found = {}
    for text in (BENCH_README, README):
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]*)`", prose, re.S):
            span = " ".join(span.split())
            m = re.search(r"(?:bench/)?(\w+\.py)((?: \[?-[^`]*)?)$", span)
            if not m or not m.group(2).strip() or not (ROOT / "bench" / m.group(1)).is_file():
                continue
            words = shlex.split(re.sub(r"<[^>]*>", "X", m.group(2)).replace("[", "").replace("]", ""))
            found[(m.group(1), tuple(words))] = span
    return [(text, script, list(words)) for (script, words), text in found.items()]


# Runs each script as __main__ with ArgumentParser.parse_args parsing for real, then
# stopping the script: the benchmark itself never starts.
PARSE_ONLY = textwrap.dedent("""
    import argparse, json, runpy, sys
    class Parsed(BaseException):
        pass
    original = argparse.ArgumentParser.parse_args
    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed()
    argparse.ArgumentParser.parse_args = parse_args
    sys.path.insert(0, "bench")
    report = []
    for text, script, words in json.loads(sys.argv[1]):
        sys.argv = ["bench/" + script] + words
        try:
            runpy.run_path("bench/" + script, run_name="__main__")
            report.append([text, "ran past its parser"])
        except Parsed:
            report.append([text, "ok"])
        except SystemExit as stop:
            report.append([text, f"exit {stop.code}"])
        except ImportError as error:
            report.append([text, f"skip: {error}"])
    print("REPORT" + json.dumps(report))
""")


def test_bench_commands_parse_with_their_values():
    """Every bench command the two READMEs give parses with the script's own parser, values
    and all (choices, nargs, types): the earlier hunt checked option names only."""
    commands = _bench_commands()
    assert len(commands) >= 30
    # placeholders the prose means to be replaced: N (a count), a required positional cut
    fillers = {"N": "1000"}
    payload = []
    for text, script, words in commands:
        words = [fillers.get(w, w) for w in words]
        if script == "ab_ingest.py" and not [w for w in words if not w.startswith("-")][1:]:
            words.append("LOG")  # "the interleaved `bench/ab_ingest.py --rounds 15`": prose
        payload.append([text, script, words])
    result = subprocess.run([sys.executable, "-c", PARSE_ONLY, json.dumps(payload)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [l for l in result.stdout.splitlines() if l.startswith("REPORT")]
    assert lines, result.stderr[-3000:]
    bad = [(text, status) for text, status in json.loads(lines[-1][len("REPORT"):])
           if status != "ok" and not status.startswith("skip")]
    assert not bad, bad


def test_python_m_recfuse_is_the_command():
    """recfuse/__main__.py and the package map: ``python -m recfuse --help`` and ``python -m
    recfuse info --json``; a missing command is exit 2."""
    run = lambda *args: subprocess.run([sys.executable, "-m", "recfuse", *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    helped = run("--help")
    assert helped.returncode == 0
    for command in ("demo", "serve", "train", "evaluate", "recommend", "bench", "info"):
        assert command in helped.stdout
    info = run("info", "--json")
    assert info.returncode == 0, info.stderr
    report = json.loads(info.stdout)
    assert {b["name"] for b in report["backends"]} == {"cuda", "cpu", "numba", "cupy", "numpy"}
    assert run().returncode == 2


# ============================================================== retrieval

def test_item_index_dtypes_as_documented():
    """ItemIndex: "float32 and float64 are kept as they are, longdouble becomes float64;
    other real dtypes are converted to float32"; big-endian floats keep their width."""
    x = np.random.default_rng(0).standard_normal((20, 4))
    for dtype, kept in ((np.longdouble, np.float64), (np.float64, np.float64), (">f8", np.float64),
                        (np.float32, np.float32), (">f4", np.float32), (np.float16, np.float32),
                        (np.int32, np.float32), (np.uint8, np.float32)):
        index = recfuse.ItemIndex(x.astype(dtype))
        assert index.items.dtype == kept, dtype
        assert index.search(x[:2].astype(dtype), k=3)[1].dtype == kept, dtype


def test_auto_storage_follows_the_documented_rule():
    """ItemIndex(storage="auto"): bfloat16 where available and n >= 1000 k (on a CPU without
    AVX512-BF16: single queries only), or n >= 500 k when the norms are skewed under "dot"
    (99th percentile >= SKEWED_NORMS x median), never below 1,000 items; else native."""
    rng = np.random.default_rng(0)
    for n in (999, 1000, 2000, 5000):
        for skew in (False, True):
            x = rng.standard_normal((n, 8)).astype(np.float32)
            if skew:
                x *= np.exp(1.5 * rng.standard_normal(n))[:, None].astype(np.float32)
            norms = np.linalg.norm(x.astype(np.float64), axis=1)
            high, middle = np.percentile(norms, [99, 50])
            for metric in ("dot", "cosine"):
                index = recfuse.ItemIndex(x, metric=metric)
                possible = index._bfloat16_possible
                dot = possible and index._module.bfloat16_dot()
                skewed = metric == "dot" and high >= retrieval.SKEWED_NORMS * middle
                for k in (1, 2, 3, 4, 5, 10, 10**6):
                    for queries in (None, 1, 2, 1000):
                        kk = min(k, n)
                        if not possible or n < retrieval.BFLOAT16_MIN_ITEMS:
                            expected = "native"
                        elif n >= 1000 * kk and (queries == 1 or dot):
                            expected = "bfloat16"
                        elif n >= 500 * kk and skewed:
                            expected = "bfloat16"
                        else:
                            expected = "native"
                        assert index.storage_for(k, queries) == expected, (n, skew, metric, k, queries)


# ============================================================== serving

def test_recommender_settings_assigned_while_serving_are_checked_as_in_the_constructor(user_items):
    """Recommender: "The settings from candidates to max_pending_events may be assigned while
    the Recommender serves (checked as here ...); rerank is fixed"; num_threads is not among
    them."""
    als = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(user_items)
    rec = recfuse.Recommender(als, k=5)
    bad = {"candidates": [0, "3", 2.5, None, True], "k": [0, -1, "3", None, True],
           "unknown_items": ["drop", 3, None], "max_new_items": [-1, 2.5, None],
           "new_item_users": [0, 2.5], "sgd_steps": [-1, "x"],
           "sgd_lr": [-1.0, float("nan"), 0.0, "x"], "max_pending_events": [-1, 2.5]}
    for name, values in bad.items():
        for value in values:
            with pytest.raises((TypeError, ValueError)) as built:
                recfuse.Recommender(als, **{name: value})
            before = getattr(rec, name)
            with pytest.raises(built.type, match=name):
                setattr(rec, name, value)
            assert getattr(rec, name) == before, name
    rec.k, rec.candidates = 3, 50
    assert rec.recommend(1).ids.shape == (3,)
    with pytest.raises(AttributeError, match="rerank"):
        rec.rerank = recfuse.Rerank(deny=[1])
    with pytest.raises(AttributeError):
        rec.num_threads = 2


def test_load_overrides_as_documented(tmp_path, user_items):
    """recfuse.load: overrides replace saved parameters (factors of other tables named as
    the override); a name the model lacks is a ValueError naming it; an unavailable backend
    named there is a RuntimeError; a file saved with a backend missing here loads with
    backend="auto" and a RuntimeWarning."""
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(user_items)
    path = tmp_path / "m.npz"
    model.save(path)
    assert recfuse.load(path, backend="numpy").backend == "numpy"
    with pytest.raises(ValueError, match="factors=3"):
        recfuse.load(path, factors=3)
    with pytest.raises(ValueError, match="nope"):
        recfuse.load(path, nope=1)
    with pytest.raises(ValueError, match="regularization"):
        recfuse.load(path, regularization=-1.0)
    missing = [b.name for b in recfuse.backends() if not b.available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(RuntimeError, match=missing[0]):
        recfuse.load(path, backend=missing[0])
    model.set_params(backend=missing[0])
    model.save(tmp_path / "other.npz")
    with pytest.warns(RuntimeWarning, match=missing[0]):
        loaded = recfuse.load(tmp_path / "other.npz")
    assert loaded.backend == "auto"
    assert np.array_equal(loaded.recommend(0, k=3)[0], model.set_params(backend="auto").recommend(0, k=3)[0])


# ============================================================== docstring examples

@pytest.mark.parametrize("module_name", ["recfuse._validation", "recfuse.distributed._blocks"])
def test_docstring_examples_of_modules_test_doctests_omits(module_name):
    if module_name.startswith("recfuse.distributed"):
        pytest.importorskip("pandas")
    import importlib

    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_dask_als_docstring_example_runs(tmp_path):
    """DaskALS's (skipped) example, as written, on an in-process cluster for its
    LocalCluster(n_workers=2, threads_per_worker=1) and a small ``ddf``."""
    pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    from recfuse.distributed import DaskALS

    lines = [l.split(">>> ", 1)[1].split("# doctest")[0].rstrip()
             for l in inspect.getdoc(DaskALS).splitlines() if ">>> " in l]
    assert any("recommend_all(20" in l for l in lines)
    setup = textwrap.dedent("""
        import numpy as np, pandas as pd, dask.dataframe as dd
        from recfuse.distributed import DaskALS
        rng = np.random.default_rng(0)
        ddf = dd.from_pandas(pd.DataFrame({"user": rng.integers(0, 60, 600),
                                           "item": rng.integers(0, 40, 600),
                                           "clicks": rng.integers(1, 4, 600).astype("float32")}),
                             npartitions=2)
    """)
    code = setup + "\n".join(lines).replace(
        "LocalCluster(n_workers=2, threads_per_worker=1)",
        "LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)")
    code += ("\nimport recfuse\nassert isinstance(local, recfuse.ALS)\n"
             "assert local.user_factors.shape[1] == 32\nclient.close()\n")
    result = run_python(code, cwd=tmp_path, timeout=240, env={"PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "recs").is_dir() and any((tmp_path / "recs").iterdir())

"""Adversarial hunt on output hygiene: stdout/stderr, warnings, logging, progress bars, the
environment recfuse reads and the command line's streams and exit codes.

The contract used here (a library imported by other programs and servers):
- No public call prints: nothing on stdout, at the Python or the file-descriptor level (the
  native code included); on stderr only the tqdm bar a caller asked for with
  ``show_progress=True`` (README, every ``fit``; ``compat.implicit`` keeps implicit's default
  of True, ``compat.surprise``'s ``verbose`` prints as Surprise does: both documented).
- A warning recfuse emits goes through ``warnings`` with its documented category
  (RuntimeWarning for rows that were not positive definite and for a saved backend that is
  missing here, UserWarning for a short synthetic draw, compat's ParameterWarning and
  DeprecationWarning) and a stacklevel that names the caller's line (``warning.filename`` is
  this file), once per call; under ``warnings.simplefilter("error")`` it is an exception that
  leaves the model (and a Generator ``random_state``) as it was.
- Logging: ``logging.getLogger("recfuse...")`` only; importing recfuse adds no handler to the
  root logger (nor any other than NullHandler to its own), its loggers propagate, and a normal
  fit logs nothing at WARNING or above.
- ``RECFUSE_BACKEND`` / ``RECFUSE_SIMD`` / ``RECFUSE_WORKER_THREADS`` / ``RECFUSE_BENCH_DIR``:
  a bad value is a clear error (or the documented fallback) naming the variable, never a
  crash; results do not depend on the thread count (``OMP_NUM_THREADS``); the NumPy
  backends run "with NumPy's floating-point errors ignored, as the native and Numba kernels
  run" (recfuse/_als/numpy_backend.py), so ``np.seterr`` settings do not change what a call
  does.
- The CLI (recfuse/cli.py docstring, README "command line"): data on stdout, messages on
  stderr, ``--json`` gives one JSON object and nothing else, exit 0 / 2 (one line, no
  traceback) / 141 when stdout closes early; ``--help`` works for every command.

Every probe that changes the process (environment variables, closed streams, np.seterr
under a child) runs in a child interpreter.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import datasets, metrics, split
from conftest import csr_matrices

HERE = os.path.abspath(__file__)
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


def _child(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the environment plus ``env``); its result."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfuse", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _ours(caught) -> list:
    """The warnings recfuse emitted (not a third party's deprecations)."""
    return [w for w in caught if "recfuse" in str(w.message) or w.filename == HERE
            or "recfuse" in w.filename]


def _one_from_here(caught, category):
    """The one warning of ``category`` in ``caught``; it must name this file's line."""
    mine = [w for w in caught if issubclass(w.category, category)]
    assert len(mine) == 1, [(w.category.__name__, str(w.message)[:80]) for w in caught]
    assert mine[0].filename == HERE, (mine[0].filename, mine[0].lineno)
    return mine[0]


@pytest.fixture(scope="module")
def data():
    X = datasets.synthetic_implicit(60, 40, nnz=600, seed=0)
    R = datasets.synthetic_explicit(60, 40, n_ratings=600, seed=0)
    return X, R


MODELS = [("ALS", "X"), ("BPR", "X"), ("SVD", "R"), ("SVDpp", "R"), ("ExplicitALS", "R")]


# --------------------------------------------------------------------- stdout / stderr
@pytest.mark.parametrize("name,which", MODELS)
def test_model_calls_write_nothing_without_progress(name, which, data, tmp_path, capfd):
    X, R = data
    matrix = X if which == "X" else R
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning either
        model = getattr(recfuse, name)(factors=4, random_state=0).fit(matrix)
        model.recommend(np.arange(5), k=3)
        list(model.recommend_all(k=3, batch_size=16))
        model.similar_items(np.arange(3), k=3)
        model.similar_users(np.arange(3), k=3)
        if hasattr(model, "predict"):
            model.predict(np.arange(5), np.arange(5))
        model.save(tmp_path / "m.npz")
        recfuse.load(tmp_path / "m.npz", mmap=True).recommend(0, k=3)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("name,which", MODELS)
def test_show_progress_writes_its_bar_to_stderr_only(name, which, data, capfd):
    X, R = data
    model = getattr(recfuse, name)(factors=4, iterations=2, random_state=0) if name in (
        "ALS", "BPR", "ExplicitALS") else getattr(recfuse, name)(factors=4, epochs=2,
                                                               random_state=0)
    model.fit(X if which == "X" else R, show_progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert "100%" in err and name in err
    list(model.recommend_all(k=3, show_progress=True))
    out, err = capfd.readouterr()
    assert out == "" and "recommend_all" in err


def test_data_path_serving_and_metrics_write_nothing(data, tmp_path, capfd):
    X, _ = data
    log = datasets.synthetic_event_log(50, 30, 500, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inter = recfuse.Interactions.from_events(log, timestamp="timestamp")
        inter.save(tmp_path / "i.npz")
        inter = recfuse.Interactions.load(tmp_path / "i.npz", mmap=True)
        inter.k_core(2)
        inter.weighted("bm25")
        for splitter in (split.random_split, split.per_user_split, split.temporal_split):
            splitter(inter, 0.2)
        split.leave_last_n(inter, 1)
        train, test = split.per_user_split(X, 0.2)
        als = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(train)
        metrics.evaluate(als, train, test, k=5)
        metrics.ranking_metrics_at_k(als, train, test, K=5)
        recs = als.recommend(np.arange(60), k=5)[0]
        metrics.ranking_metrics(recs, test)
        metrics.novelty(recs, train)
        metrics.intra_list_diversity(recs, als.item_factors)
        metrics.catalog_coverage(recs, 40)
        recfuse.topk(als.user_factors[:3], als.item_factors, k=3)
        recfuse.ItemIndex(als.item_factors, metric="cosine")
        ranker = recfuse.MLPRanker(hidden=(8,), epochs=1, random_state=0)
        ranker.fit(train, als.user_factors, als.item_factors)
        rec = recfuse.Recommender(als, ranker=ranker, candidates=10, k=3)
        rec.recommend(0)
        rec.observe({"user": [0, 1], "item": [2, 3]})
        with recfuse.MicroBatcher(rec) as batcher:
            batcher.recommend(3)
        recfuse.backends()
    assert capfd.readouterr() == ("", "")
    metrics.evaluate(als, train, test, k=5, show_progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "evaluate" in err and "100%" in err


@HYPOTHESIS
@given(matrix=csr_matrices(max_rows=8, max_cols=6, dtype=np.float32),
       model=st.sampled_from(["ALS", "BPR"]), factors=st.integers(1, 6))
def test_fits_on_drawn_matrices_are_silent(matrix, model, factors, capfd):
    """Any matrix (empty rows, nnz=0, 1x1, large values): nothing printed; a warning, if
    any, is the documented RuntimeWarning, once, naming this line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = getattr(recfuse, model)(factors=factors, iterations=2, random_state=0)
        try:
            fitted.fit(matrix)
        except ValueError:  # "diverged" on extreme values: refused, not printed
            pass
        else:
            fitted.recommend(np.arange(matrix.shape[0]), k=3)
    assert capfd.readouterr() == ("", "")
    ours = _ours(caught)
    assert len(ours) <= 1
    for w in ours:
        assert w.category is RuntimeWarning and w.filename == HERE


# --------------------------------------------------------------------- warnings: where and what
def _failing_als(random_state=0):
    """An ALS whose fit has row systems that are not positive definite (float32 sums
    overflowed), with the matrix it fits."""
    X = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], np.float32))
    return recfuse.ALS(factors=3, iterations=1, random_state=random_state, alpha=1e37,
                       solver="cholesky"), X


def _failing_explicit(random_state=0):
    """ExplicitALS data whose float32 systems are not positive definite (the docstring: one
    rating of 1e5 among ratings of 1 already can)."""
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 10, 60), rng.integers(0, 8, 60)
    r = rng.integers(1, 6, 60).astype(float)
    r[0] = 1e5
    return recfuse.ExplicitALS(factors=6, iterations=2, random_state=random_state,
                               dtype=np.float32), (u, i, r)


@pytest.mark.parametrize("seed", [0, "generator"])
def test_als_failed_systems_warn_once_at_the_callers_line(seed):
    model, X = _failing_als(np.random.default_rng(1) if seed == "generator" else 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X)
    assert "not positive definite" in str(_one_from_here(caught, RuntimeWarning).message)


@pytest.mark.parametrize("seed", [0, "generator"])
def test_explicit_als_failed_systems_warn_at_the_callers_line(seed):
    model, arrays = _failing_explicit(np.random.default_rng(1) if seed == "generator" else 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*arrays)
    assert "not positive definite" in str(_one_from_here(caught, RuntimeWarning).message)


def test_explicit_als_failed_systems_warn_once_with_the_documented_category():
    model, arrays = _failing_explicit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(*arrays)
    mine = [w for w in caught if "not positive definite" in str(w.message)]
    assert len(mine) == 1 and mine[0].category is RuntimeWarning


@pytest.mark.parametrize("maker", [_failing_als, _failing_explicit])
@pytest.mark.parametrize("seed", [0, "generator"])
def test_a_warning_made_an_error_leaves_the_model_and_generator_as_they_were(maker, seed):
    generator = np.random.default_rng(3) if seed == "generator" else None
    model, arrays = maker(generator if generator is not None else 0)
    arrays = arrays if isinstance(arrays, tuple) else (arrays,)
    good = dict(alpha=1.0) if isinstance(model, recfuse.ALS) else None
    if good:  # a good fit first, then the failing settings
        model.set_params(**good)
        model.fit(*arrays)
        model.set_params(alpha=1e37)
    else:
        model.fit(*(arrays[:2] + (np.clip(arrays[2], 1, 5),)))
    before = [np.array(model.user_factors), np.array(model.item_factors)]
    state = generator.bit_generator.state if generator is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="not positive definite"):
            model.fit(*arrays)
    assert np.array_equal(before[0], model.user_factors)
    assert np.array_equal(before[1], model.item_factors)
    if generator is not None:
        assert generator.bit_generator.state == state


@pytest.fixture(scope="module")
def cuda_files(tmp_path_factory):
    """An ALS file and a scorer file saved with backend='cuda' (not available here), and an
    ALS to serve."""
    from recfuse import persistence

    if any(b.name == "cuda" and b.available for b in recfuse.backends()):
        pytest.skip("a CUDA device is available: the files load without a fallback")
    folder = tmp_path_factory.mktemp("cuda_files")
    X = datasets.synthetic_implicit(30, 20, nnz=200, seed=0)
    als = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(X)
    als.set_params(backend="cuda")
    als.save(folder / "als.npz")
    als.set_params(backend="auto")
    ranker = recfuse.MLPRanker(hidden=(4,), epochs=1, random_state=0)
    ranker.fit(X, als.user_factors, als.item_factors).to_scorer().save(folder / "sc.npz")
    header, arrays = persistence.read_model(folder / "sc.npz")
    persistence.save_model(str(folder / "sc_cuda.npz"), "MLPScorer",
                           dict(header["params"], backend="cuda"), dict(arrays))
    return str(folder / "als.npz"), str(folder / "sc_cuda.npz"), als


def test_load_of_a_missing_backend_warns_at_the_callers_line(cuda_files):
    model_path, scorer_path, _ = cuda_files
    for path in (model_path, scorer_path):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recfuse.load(path)
        assert "not available here" in str(_one_from_here(caught, RuntimeWarning).message)


def test_load_of_a_missing_backend_made_an_error_raises_and_load_backend_chooses(cuda_files):
    model_path, _, _ = cuda_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="backend='cuda'"):
            recfuse.load(model_path)
        assert recfuse.load(model_path, backend="cpu").backend == "cpu"  # no warning


@pytest.mark.parametrize("entry", ["Recommender(path)", "swap_model(path)", "ranker=path"])
def test_serving_a_file_with_a_missing_backend_warns_at_the_callers_line(entry, cuda_files):
    model_path, scorer_path, als = cuda_files
    rec = recfuse.Recommender(als, k=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if entry == "Recommender(path)":
            recfuse.Recommender(model_path, k=3)
        elif entry == "swap_model(path)":
            rec.swap_model(model_path)
        else:
            recfuse.Recommender(als, ranker=scorer_path, candidates=10, k=3)
    _one_from_here(caught, RuntimeWarning)


def test_swap_model_refused_by_an_error_filter_keeps_the_served_model(cuda_files):
    model_path, _, als = cuda_files
    rec = recfuse.Recommender(als, k=3)
    before = rec.recommend(0).ids.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            rec.swap_model(model_path)
    assert np.array_equal(rec.recommend(0).ids, before)


@pytest.mark.parametrize("function,size", [("synthetic_implicit", "nnz"),
                                           ("synthetic_explicit", "n_ratings")])
def test_a_short_synthetic_draw_warns_once_at_the_callers_line(function, size):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(datasets, function)(5, 5, **{size: 24}, popularity_exponent=6,
                                    activity_exponent=6, seed=0)
    assert function in str(_one_from_here(caught, UserWarning).message)


# --------------------------------------------------------------------- compat warnings
@pytest.fixture(scope="module")
def compat_model():
    from recfuse.compat import implicit as ci

    X = datasets.synthetic_implicit(30, 20, nnz=200, seed=0)
    model = ci.AlternatingLeastSquares(factors=3, iterations=2, random_state=0)
    model.fit(X, show_progress=False)
    return model, X


def test_compat_fit_and_explain_parameter_warning_at_the_callers_line(compat_model):
    from recfuse.compat import implicit as ci

    model, X = compat_model
    fresh = ci.AlternatingLeastSquares(factors=3, iterations=1, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.fit(X.tocoo(), show_progress=False)
    _one_from_here(caught, ci.ParameterWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.explain(0, X.tocoo(), 1)
    _one_from_here(caught, ci.ParameterWarning)


@pytest.mark.parametrize("method", ["rank_items", "recommend_all"])
def test_compat_deprecations_at_the_callers_line(method, compat_model):
    model, X = compat_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "rank_items":
            model.rank_items(0, X, np.arange(5))
        else:
            model.recommend_all(X)
    _one_from_here(caught, DeprecationWarning)


@pytest.mark.parametrize("method", ["recalculate_user", "recalculate_item",
                                    "partial_fit_users", "partial_fit_items"])
def test_compat_row_methods_parameter_warning_at_the_callers_line(method, compat_model):
    import copy

    from recfuse.compat import implicit as ci

    model, X = compat_model
    model = copy.deepcopy(model)
    rows = (X if method.endswith("user") or method.endswith("users") else X.T.tocsr())[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(model, method)(np.array([0, 1]), rows.tocoo())
    _one_from_here(caught, ci.ParameterWarning)


def test_compat_parameter_warning_made_an_error_changes_nothing(compat_model):
    import copy

    model, X = compat_model
    model = copy.deepcopy(model)
    before = model.user_factors.copy(), model.item_factors.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (lambda: model.partial_fit_users(np.array([0, 40]), X[:2].tocoo()),
                     lambda: model.partial_fit_items(np.array([0, 30]), X.T.tocsr()[:2].tocoo()),
                     lambda: model.fit(X.tocoo(), show_progress=False)):
            with pytest.raises(Warning):
                call()
    assert np.array_equal(before[0], model.user_factors)
    assert np.array_equal(before[1], model.item_factors)


@pytest.fixture(scope="module")
def compat_gpu_file(compat_model, tmp_path_factory):
    """A compat model file saved with use_gpu=True (as on a GPU machine)."""
    from recfuse import persistence
    from recfuse.compat import implicit as ci

    if ci.HAS_CUDA:
        pytest.skip("CUDA is available: a use_gpu file loads for the GPU without a warning")
    model, _ = compat_model
    folder = tmp_path_factory.mktemp("compat_gpu")
    model.save(str(folder / "cpu.npz"))
    header, arrays = persistence.read_model(str(folder / "cpu.npz"))
    arrays = dict(arrays)
    settings_ = json.loads(arrays[ci.COMPAT_KEY].tobytes().decode("utf-8"))
    arrays[ci.COMPAT_KEY] = np.frombuffer(json.dumps(dict(settings_, use_gpu=True)).encode(),
                                          np.uint8)
    persistence.save_model(str(folder / "gpu.npz"), header["model"], header["params"], arrays)
    return str(folder / "gpu.npz")


@pytest.mark.parametrize("how", ["path", "file object"])
def test_compat_load_of_a_gpu_file_warns_at_the_callers_line(how, compat_gpu_file):
    from recfuse.compat import implicit as ci

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "path":
            model = ci.AlternatingLeastSquares.load(compat_gpu_file)
        else:
            with open(compat_gpu_file, "rb") as handle:
                model = ci.AlternatingLeastSquares.load(handle)
    assert not model.use_gpu
    _one_from_here(caught, RuntimeWarning)


# --------------------------------------------------------------------- logging
def test_import_configures_no_logging():
    """Importing recfuse and every submodule (server, compat, distributed) adds no handler to
    the root logger, changes no level, and its own loggers have at most NullHandlers and
    propagate."""
    result = _child("""
        import json, logging
        root = logging.getLogger()
        before = (list(root.handlers), root.level, logging.lastResort)
        import recfuse, recfuse.serving, recfuse.server, recfuse.compat.implicit
        import recfuse.compat.surprise, recfuse.distributed, recfuse.metrics, recfuse.datasets
        import recfuse.cli
        after = (list(root.handlers), root.level, logging.lastResort)
        bad = {}
        for name, logger in logging.Logger.manager.loggerDict.items():
            if name.startswith("recfuse") and isinstance(logger, logging.Logger):
                handlers = [type(h).__name__ for h in logger.handlers
                            if not isinstance(h, logging.NullHandler)]
                if handlers or not logger.propagate or logger.disabled:
                    bad[name] = [handlers, logger.propagate, logger.disabled]
        print(json.dumps({"same": before == after, "bad": bad}))
    """)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"same": True, "bad": {}}
    assert result.stderr == ""


def test_a_normal_fit_logs_nothing_at_warning_and_compat_loss_at_info(data, caplog):
    from recfuse.compat import implicit as ci

    X, R = data
    caplog.set_level(logging.DEBUG)
    for name, which in MODELS:
        getattr(recfuse, name)(factors=4, random_state=0).fit(X if which == "X" else R)
    recfuse.Recommender(recfuse.ALS(factors=4, random_state=0).fit(X), k=3).recommend(0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    caplog.clear()
    ci.AlternatingLeastSquares(factors=3, iterations=2, random_state=0,
                               calculate_training_loss=True).fit(X, show_progress=False)
    names = {(r.name, r.levelno) for r in caplog.records}
    assert names == {("recfuse.compat.implicit", logging.INFO)}


# --------------------------------------------------------------------- progress without a terminal
_NO_STDERR = """
    import sys
    sys.stderr = None  # pythonw, a service, `2>&-`: no stream to write the bar to
    import numpy as np, scipy.sparse as sp, recfuse
    X = sp.random(20, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    model = recfuse.ALS(factors=2, iterations=2, random_state=0).fit(X, show_progress=True)
    recfuse.metrics.evaluate(model, X, X, k=3, show_progress=True)
    print("ok")
"""


def test_fit_without_progress_needs_no_stderr():
    result = _child(_NO_STDERR.replace("show_progress=True", "show_progress=False"))
    assert result.returncode == 0 and result.stdout.strip() == "ok"


def test_show_progress_without_stderr_does_not_fail():
    result = _child(_NO_STDERR)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout[-500:]


def test_progress_bar_in_a_pipe_is_not_a_terminal_and_still_works(tmp_path):
    """stderr a pipe (no terminal), TERM unset: the bar is written, nothing breaks."""
    env = {k: v for k, v in os.environ.items() if k not in ("TERM", "COLUMNS")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_NO_STDERR).replace(
        "sys.stderr = None", "pass")], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok"
    assert "ALS" in result.stderr and "evaluate" in result.stderr


# --------------------------------------------------------------------- environment
_BACKEND_VALUES = {"": "cpu", "auto": "cpu", "numpy": "numpy", "numba": "numba",
                   "CPU": "ValueError", " cpu": "ValueError", "nope": "ValueError",
                   "cupy": "RuntimeError", "\u00e9": "ValueError"}


def test_recfuse_backend_values():
    """Each value in one child (the variable is read at each fit): a backend's name picks
    it, "" and "auto" mean auto, anything else is an error naming the variable."""
    available = {b.name for b in recfuse.backends() if b.available}
    expected = {value: result for value, result in _BACKEND_VALUES.items()
                if result not in ("cpu", "numba", "cupy") or result in available
                or (value == "cupy" and "cupy" not in available)}
    result = _child(f"""
        import json, os, numpy as np, scipy.sparse as sp, recfuse
        X = sp.random(20, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
        got = {{}}
        for value in {list(expected)!r}:
            os.environ["RECFUSE_BACKEND"] = value
            try:
                model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(X)
                got[value] = [model.backend_used, ""]
            except Exception as error:
                got[value] = [type(error).__name__, str(error)]
        print(json.dumps(got))
    """)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-500:]
    got = json.loads(result.stdout.splitlines()[-1])
    for value, wanted in expected.items():
        assert got[value][0] == wanted, (value, got[value])
        if wanted.endswith("Error"):
            assert "RECFUSE_BACKEND" in got[value][1], (value, got[value])


def test_unusable_recfuse_simd_names_the_variable_and_auto_moves_on():
    """Misspelt or unsupported values, one after the other in one child (an unusable value
    is asked again at the next call): the cpu row names the variable, auto moves on."""
    if not any(b.name == "cpu" for b in recfuse.backends()):
        pytest.skip("no cpu backend row")
    result = _child("""
        import json, os, numpy as np, scipy.sparse as sp, recfuse
        X = sp.random(20, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
        got = {}
        for value in ["AVX2", "sse", "avx2 ", "\\u00e9"]:
            os.environ["RECFUSE_SIMD"] = value
            row = {b.name: b for b in recfuse.backends()}["cpu"]
            model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(X)
            got[value] = [row.available, row.detail, model.backend_used]
        print(json.dumps(got))
    """, {"RECFUSE_SIMD": "AVX2"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-500:]
    for value, (available, detail, used) in json.loads(result.stdout.splitlines()[-1]).items():
        assert not available and "RECFUSE_SIMD" in detail, (value, detail)
        assert used in ("numba", "numpy")


@pytest.mark.parametrize("value,ok", [("", True), ("2", True), (" 3 ", True), ("0", True),
                                      ("-1", False), ("two", False), ("1.5", False),
                                      ("99999999", False), ("\u00e9", False)])
def test_recfuse_worker_threads_values(value, ok, monkeypatch):
    """Read at each call (outside a Dask worker): set here, restored by monkeypatch."""
    from recfuse.distributed._blocks import worker_threads

    monkeypatch.setenv("RECFUSE_WORKER_THREADS", value)
    if ok:
        assert worker_threads(0) == int(value.strip() or 0)
    else:
        with pytest.raises(ValueError, match="RECFUSE_WORKER_THREADS") as error:
            worker_threads(0)
        assert repr(value) in str(error.value)
    assert worker_threads(5) == 5  # an explicit count never reads it


def test_recfuse_bench_dir_that_holds_no_suites_is_a_one_line_error(tmp_path, monkeypatch,
                                                                     capfd):
    from recfuse import cli

    monkeypatch.setenv("RECFUSE_BENCH_DIR", str(tmp_path))
    assert cli.main(["bench", "--quick"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "RECFUSE_BENCH_DIR" in err


def test_results_do_not_depend_on_omp_num_threads():
    code = """
        import hashlib, numpy as np, recfuse
        from recfuse import datasets
        X = datasets.synthetic_implicit(200, 80, nnz=3000, seed=0)
        R = datasets.synthetic_explicit(200, 80, n_ratings=3000, seed=0)
        digest = hashlib.sha256()
        for model, data in [(recfuse.ALS(factors=8, iterations=3), X),
                            (recfuse.BPR(factors=8, iterations=5), X),
                            (recfuse.SVD(factors=8, epochs=3), R),
                            (recfuse.ExplicitALS(factors=8, iterations=3), R)]:
            model.set_params(random_state=0, backend="cpu")
            model.fit(data)
            digest.update(np.ascontiguousarray(model.user_factors).tobytes())
            digest.update(np.ascontiguousarray(model.item_factors).tobytes())
        print(digest.hexdigest())
    """
    if not any(b.name == "cpu" and b.available for b in recfuse.backends()):
        pytest.skip("the native cpu backend is not available")
    digests = set()
    for threads in ("1", "2"):
        result = _child(code, {"OMP_NUM_THREADS": threads})
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.split()[-1])
    assert len(digests) == 1


_SETERR = """
    import numpy as np, scipy.sparse as sp, recfuse
    np.seterr(all="raise")
    for call in {calls!r}:
        eval(call)
    print("ok")
"""
_EMPTY_ALS = ('recfuse.ALS(factors=3, random_state=0, backend="{}").fit('
              'sp.csr_matrix((6, 5), dtype=np.float32))')
_TINY_TOPK = ('recfuse.topk(np.full((1, 3), 1e-30, np.float32), '
              'np.full((2, 3), 1e-30, np.float32), k=2, backend="{}")')


def test_native_and_numba_calls_ignore_numpy_error_settings():
    """The same calls as the NumPy backend's below, on the kernels (the contract it states)."""
    available = {b.name for b in recfuse.backends() if b.available}
    calls = [template.format(backend) for backend in ("cpu", "numba") if backend in available
             for template in (_EMPTY_ALS, _TINY_TOPK)]
    if not calls:
        pytest.skip("neither cpu nor numba is available")
    result = _child(_SETERR.format(calls=calls))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-500:]


@pytest.mark.parametrize("template", [_EMPTY_ALS, _TINY_TOPK], ids=["als_cg", "topk"])
def test_numpy_backend_ignores_numpy_error_settings_as_the_kernels_do(template):
    result = _child(_SETERR.format(calls=[template.format("numpy")]))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-500:]


# --------------------------------------------------------------------- the command line
SMALL_DEMO = ["--users", "40", "--items", "15", "--events", "800", "--factors", "2",
              "--iterations", "1"]
COMMANDS = ["demo", "train", "evaluate", "recommend", "bench", "info", "serve"]


def test_help_of_every_command_goes_to_stdout_with_status_0(capfd):
    from recfuse import cli

    for command in COMMANDS:  # in this process: main returns argparse's status
        assert cli.main([command, "--help"]) == 0, command
        out, err = capfd.readouterr()
        assert out.startswith(f"usage: recfuse {command}") and err == "", command
    result = _cli("--help")  # and one real process
    assert result.returncode == 0 and result.stdout.startswith("usage: recfuse")
    assert result.stderr == ""


@pytest.mark.parametrize("args,words", [
    ([], "required"), (["nope"], "invalid choice"), (["demo", "--users", "-3"], "--users"),
    (["info", "--bogus"], "--bogus"),
    (["train", "/nonexistent/log.csv", "-o", "/nonexistent/out"], "no event log"),
    (["recommend", "/nonexistent", "u1"], "no model"), (["demo", "--backend", "nope"],
                                                         "backend"),
    (["evaluate", "/nonexistent", "--k", "0"], "--k"),
])
def test_user_errors_exit_2_with_one_error_line(args, words, capfd):
    from recfuse import cli

    assert cli.main(args) == 2  # an exception here would be the traceback
    out, err = capfd.readouterr()
    assert out == "" and words in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("recfuse") and "error:" in last


def test_a_user_error_in_a_real_process_has_no_traceback():
    result = _cli("train", "/nonexistent/log.csv", "-o", "/nonexistent/out")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("recfuse train: error:") and result.stderr.count("\n") == 1


def test_json_output_is_one_object_and_stderr_stays_empty(tmp_path, capfd):
    import pandas as pd

    from recfuse import cli

    log = datasets.synthetic_event_log(60, 25, 1200, seed=0)
    pd.DataFrame(log).to_csv(tmp_path / "ev.csv", index=False)
    runs = [["demo", *SMALL_DEMO], ["info"],
            ["train", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "out"), "--factors", "2",
             "--iterations", "1"],
            ["evaluate", str(tmp_path / "out")],
            ["recommend", str(tmp_path / "out"), str(log["user"][0])]]
    for args in runs:
        assert cli.main([*args, "--json"]) == 0, args
        out, err = capfd.readouterr()
        assert err == "", (args, err)
        assert len(out.splitlines()) == 1 and isinstance(json.loads(out), dict), args
    # a real process, without --json: the progress on stderr, the report on stdout
    result = _cli("demo", *SMALL_DEMO)
    assert result.returncode == 0 and "100%" in result.stderr and "100%" not in result.stdout


def test_output_closed_early_exits_141_without_traceback():
    with subprocess.Popen([sys.executable, "-m", "recfuse", "demo", *SMALL_DEMO],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        first = process.stdout.readline()
        process.stdout.close()  # as `| head -1`
        err = process.stderr.read().decode()
        status = process.wait(timeout=120)
    assert status == 141
    assert first.startswith(b"recfuse demo") and "Traceback" not in err
    assert "BrokenPipeError" not in err


def test_a_closed_stdout_is_no_traceback():
    command = " ".join([f'"{sys.executable}"', "-m", "recfuse", "info", "--json"])
    result = subprocess.run(["sh", "-c", f"exec {command} >&-"], capture_output=True,
                            text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode in (0, 141)


def test_a_closed_stderr_does_not_fail_a_command():
    command = " ".join([f'"{sys.executable}"', "-m", "recfuse", "demo", *SMALL_DEMO])
    result = subprocess.run(["sh", "-c", f"exec {command} 2>&-"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    assert "done in" in result.stdout

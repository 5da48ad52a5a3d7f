"""Adversarial hunt on configuration: environment variables, the backend table and the
``num_threads`` / ``backend=`` arguments.

The contract used here (README "Backends", "Threads", "Processes"; recfuse/_backend.py,
recfuse/_validation.py, cpp/include/recfuse/simd.hpp, recfuse/distributed/_common.py):

- ``backend=`` argument > ``RECFUSE_BACKEND`` > auto (cuda -> cpu -> numba -> numpy). The
  variable is read at each resolution, ``""`` and ``"auto"`` mean auto, anything else must
  name a backend; its errors say "(from RECFUSE_BACKEND)". An explicit argument never
  consults the variable.
- ``RECFUSE_SIMD=generic|avx2|avx512`` forces the CPU kernels' level, read at the first
  native call and kept once in use; a misspelt or unsupported value makes only the ``cpu``
  backend unavailable, with the reason (naming the variable) in ``backends()`` and
  ``recfuse info``; the other backends and the data path keep working.
- ``recfuse info`` (and ``--json``) reports what ``backend="auto"`` picks for every family,
  the CPU's SIMD levels and the thread count ``num_threads=0`` stands for.
- ``num_threads``: an integer in [0, 65536] (NumPy integers too), 0 = the processors this
  process may use (affinity, lowered by ``OMP_NUM_THREADS``, never raised); bool, float,
  str, None and out-of-range values are refused with an error naming ``num_threads``, the
  same way by every public API; results never depend on the thread count.
- ``RECFUSE_WORKER_THREADS``: the distributed block solves' threads outside a Dask
  worker, as ``num_threads`` (an integer >= 0, 0 = all cores).
- ``import recfuse`` and its calls leave process-wide state alone (NumPy's error settings,
  warnings filters, signal handlers, locale, BLAS/OpenMP/Numba thread counts, RNGs).

Every probe that sets an environment variable runs in a child interpreter. The four bugs
found (a non-UTF-8 RECFUSE_SIMD lost its message, RECFUSE_WORKER_THREADS had no upper bound,
numba was reported available with a threading layer that cannot load, resolve_backend's
``needs`` was unchecked and its failure misreported) are fixed; their tests stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import metrics

HAS_CORE = True
try:
    from recfuse import _core  # noqa: F401
except ImportError:  # pragma: no cover - only without the native build
    HAS_CORE = False

needs_core = pytest.mark.skipif(not HAS_CORE, reason="recfuse._core is not built")


# ------------------------------------------------------------------------------ helpers
def _clean_env(**extra) -> dict:
    """This process's environment without recfuse's own variables and OMP_NUM_THREADS (a
    session run with RECFUSE_BACKEND set must not change what a child sees), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECFUSE_") and k != "OMP_NUM_THREADS"}
    env.update(extra)
    return env


def _child(code: str, timeout: int = 240, **extra) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``extra`` added to a clean environment."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=_clean_env(**extra))


def _child_ok(code: str, timeout: int = 240, **extra) -> str:
    done = _child(code, timeout, **extra)
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _expected_levels() -> list[str] | None:
    """The SIMD levels the contract says this CPU supports, from /proc/cpuinfo (None where
    it cannot be read or the build lacks a level: then the test skips)."""
    flags = _cpu_flags()
    if not flags:
        return None
    levels = ["generic"]
    if {"avx2", "fma"} <= flags:
        levels.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        levels.append("avx512")
    return levels


# the picks "auto" makes for each family, computed by real calls, and info's JSON
_PICKS = """
import io, json, contextlib, os, warnings
import numpy as np, scipy.sparse as sp, recfuse
from recfuse import cli
warnings.simplefilter("ignore")
rounds = []
for wanted in {LEVELS}:
    os.environ["RECFUSE_SIMD"] = wanted
    rounds.append(None)
    R = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
    R.data[:] = 1
    u, i, r = np.arange(12), np.arange(12) % 7, np.ones(12)
    layers = [(np.ones((1, 3), np.float32), None, "identity")]
    picks = {
        "als": recfuse.ALS(factors=2, iterations=1).fit(R).backend_used,
        "bpr": recfuse.BPR(factors=2, iterations=1).fit(R).backend_used,
        "svd": recfuse.SVD(factors=2, epochs=1).fit(u, i, r).backend_used,
        "explicit_als": recfuse.ExplicitALS(factors=2, iterations=1).fit(u, i, r).backend_used,
        "topk": recfuse.ItemIndex(np.ones((5, 3), np.float32))._module.NAME,
        "mlp": recfuse.MLPScorer(layers)._module.NAME,
        "mlp_int8": recfuse.MLPScorer(layers, precision="int8")._module.NAME,
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["info", "--json"])
    info = json.loads(out.getvalue())
    try:
        from recfuse import _core
        level = _core.simd_level()
    except Exception as error:
        level = type(error).__name__
    rounds[-1] = {"picks": picks, "info": info, "status": status, "level": level}
print(json.dumps(rounds))
"""


# ------------------------------------------------------------------------------ RECFUSE_BACKEND
def test_recfuse_backend_values_property():
    """Any text in RECFUSE_BACKEND: "" and "auto" are auto, a backend's exact name is that
    backend (or a RuntimeError naming the variable when it cannot run here), anything else
    (other case, spaces, non-ASCII...) a ValueError naming the variable and the value."""
    pytest.importorskip("hypothesis")
    _child_ok("""
        import os
        from hypothesis import given, settings, example, strategies as st
        import recfuse
        from recfuse._backend import BACKEND_NAMES, FAMILIES, resolve_backend

        os.environ.pop("RECFUSE_BACKEND", None)
        auto = {f: resolve_backend("auto", f).NAME for f in FAMILIES}
        usable = {f: {b.name for b in recfuse.backends(f) if b.available} for f in FAMILIES}
        text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\\x00"),
                       max_size=12)

        @settings(max_examples=60, deadline=None, database=None, derandomize=True)
        @given(st.one_of(text, st.sampled_from(BACKEND_NAMES + ("auto", ""))),
               st.sampled_from(FAMILIES))
        @example("CPU", "als")
        @example(" cpu", "topk")
        @example("numpy ", "mlp")
        @example("AUTO", "sgd")
        @example("c\\u00fcpu", "als")
        def check(value, family):
            os.environ["RECFUSE_BACKEND"] = value
            try:
                if value in ("", "auto"):
                    assert resolve_backend("auto", family).NAME == auto[family]
                elif value in usable[family]:
                    assert resolve_backend("auto", family).NAME == value
                else:
                    try:
                        resolve_backend("auto", family)
                    except (ValueError, RuntimeError) as error:
                        message = str(error)
                        assert "(from RECFUSE_BACKEND)" in message, message
                        assert repr(value) in message, message
                        assert isinstance(error, RuntimeError) == (value in BACKEND_NAMES)
                    else:
                        raise AssertionError(f"RECFUSE_BACKEND={value!r} was accepted")
                # an explicit argument never reads the variable
                assert resolve_backend("numpy", family).NAME == "numpy"
            finally:
                del os.environ["RECFUSE_BACKEND"]

        check()
        print("ok")
    """)


def test_backend_argument_beats_the_variable_in_every_entry_point():
    """With RECFUSE_BACKEND misspelt (or naming another backend), calls given a backend by
    argument run on that backend and nothing inside them resolves "auto" by the variable."""
    _child_ok("""
        import numpy as np, scipy.sparse as sp, recfuse, warnings, os, tempfile
        warnings.simplefilter("ignore")
        R = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
        R.data[:] = 1
        u, i, r = np.arange(12), np.arange(12) % 7, np.ones(12)
        V = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
        layers = [(np.ones((2, 8), np.float32), None, "relu"),
                  (np.ones((1, 2), np.float32), None, "identity")]
        for variable in ("bogus", "numpy", "cuda"):
            os.environ["RECFUSE_BACKEND"] = variable
            for backend in [b.name for b in recfuse.backends() if b.available]:
                als = recfuse.ALS(factors=2, iterations=1, backend=backend).fit(R)
                assert als.backend_used == backend, (variable, backend, als.backend_used)
                als.recommend(0, R[0], k=3); als.similar_items(1, 3); als.recommend_all(k=2)
                for model in (recfuse.BPR(factors=2, iterations=1, backend=backend).fit(R),
                              recfuse.SVD(factors=2, epochs=1, backend=backend).fit(u, i, r),
                              recfuse.ExplicitALS(factors=2, iterations=1,
                                                  backend=backend).fit(u, i, r)):
                    assert model.backend_used == backend, (variable, type(model), backend)
                assert recfuse.ItemIndex(V, backend=backend)._module.NAME == backend
                recfuse.topk(V[:2], V, 3, backend=backend)
                scorer = recfuse.MLPScorer(layers, backend=backend)
                assert scorer._module.NAME == backend
                scorer.rank(V[:2], np.array([[0, 1, 2]] * 2), V, k=2)
                recfuse.Recommender(als).recommend(0)
                with tempfile.TemporaryDirectory() as folder:
                    path = os.path.join(folder, "m.npz")
                    als.save(path)
                    recfuse.load(path, backend=backend).recommend(0, R[0], k=2)
        print("ok")
    """, timeout=400)


def test_recfuse_backend_is_read_at_each_resolution():
    _child_ok("""
        import os, numpy as np, recfuse
        from recfuse._backend import resolve_backend
        first = resolve_backend("auto", "topk").NAME
        for value, expected in (("numpy", "numpy"), ("", first), ("numpy", "numpy"),
                                ("auto", first)):
            os.environ["RECFUSE_BACKEND"] = value
            assert resolve_backend("auto", "topk").NAME == expected, (value, expected)
            assert recfuse.ItemIndex(np.ones((3, 2), np.float32))._module.NAME == expected
        print("ok")
    """)


# ------------------------------------------------------------------------------ RECFUSE_SIMD
@needs_core
def test_simd_levels_reported_match_the_cpu_flags():
    expected = _expected_levels()
    if expected is None or os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("no x86 /proc/cpuinfo flags to compare with")
    done = _child("import recfuse.cli as c, sys; sys.exit(c.main(['info', '--json']))")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    # a level the build lacks is not supported either: the reported levels are a prefix
    assert info["simd"]["levels"] == expected[:len(info["simd"]["levels"])], info["simd"]
    assert info["simd"]["in_use"] == info["simd"]["levels"][-1]


def _runnable_levels():
    return [""] + [level for level in (_expected_levels() or ["generic"]) if level != "avx2"]


def _check_agreement(result: dict, level: str, runnable: bool) -> None:
    picks, info = result["picks"], result["info"]
    assert result["status"] == 0
    assert info["auto"] == picks["als"], (level, info["auto"], picks)
    family_of = {"als": "als", "bpr": "sgd", "svd": "sgd", "explicit_als": "sgd",
                 "topk": "topk", "mlp": "mlp", "mlp_int8": "mlp"}
    for what, family in family_of.items():
        assert info["families"][family][0]["name"] == picks[what], (level, what, info)
    cpu = next(row for row in info["backends"] if row["name"] == "cpu")
    assert cpu["available"] == runnable, (level, cpu)
    if runnable:
        assert set(picks.values()) == {"cpu"}, (level, picks)
        assert info["simd"]["in_use"] == (level or info["simd"]["levels"][-1])
        assert result["level"] == info["simd"]["in_use"]
    else:
        assert "cpu" not in picks.values(), (level, picks)
        assert ("RECFUSE_SIMD" in cpu["detail"] and repr(level) in cpu["detail"]) or \
            f"RECFUSE_SIMD={level} " in cpu["detail"], (level, cpu)
        assert info["simd"] is None


@needs_core
@pytest.mark.parametrize("level", _runnable_levels())
def test_info_and_auto_agree_for_every_family_at_each_simd_level(level):
    """recfuse info's "auto" and its per-family lists agree with what the models, ItemIndex
    and MLPScorer actually run on, at each RECFUSE_SIMD level this CPU runs ("": the best,
    avx2 on this machine)."""
    result = _last_json(_child_ok(_PICKS.replace("{LEVELS}", repr([level])),
                                  RECFUSE_SIMD=level))
    _check_agreement(result[0], level, True)


@needs_core
def test_info_and_auto_agree_while_recfuse_simd_cannot_run_then_once_corrected():
    """A misspelt RECFUSE_SIMD, then (in the same process) one this CPU cannot run: the cpu
    backend is unavailable with the reason naming the variable, info and every family's
    auto move on together; once corrected the cpu backend is back for all of them."""
    levels = ["AVX2"] + ([] if "avx512" in (_expected_levels() or []) else ["avx512"]) + [""]
    results = _last_json(_child_ok(_PICKS.replace("{LEVELS}", repr(levels)),
                                   RECFUSE_SIMD=levels[0]))
    for level, result in zip(levels, results):
        _check_agreement(result, level, level == "")


@needs_core
def test_recfuse_simd_is_read_at_the_first_native_call_and_then_kept():
    _child_ok("""
        import os, numpy as np, recfuse
        from recfuse import _core
        os.environ["RECFUSE_SIMD"] = "generic"   # after the import, before any native call
        assert _core.simd_level() == "generic"
        recfuse.topk(np.ones((1, 3), np.float32), np.ones((4, 3), np.float32), 2)
        os.environ["RECFUSE_SIMD"] = "bogus"      # once in use, the level stays
        assert _core.simd_level() == "generic"
        cpu = [b for b in recfuse.backends("topk") if b.name == "cpu"][0]
        assert cpu.available and "generic" in cpu.detail, cpu
        print("ok")
    """)


@needs_core
def test_an_unusable_simd_level_leaves_the_data_path_identical():
    """The data path (ingestion with string ids, metrics) gives the same answer while the
    native checks cannot run because RECFUSE_SIMD is misspelt (NumPy's definitions run) and
    once the variable is corrected in the process (the native ones run)."""
    out = _child_ok("""
        import hashlib, os, numpy as np, pandas as pd, recfuse
        from recfuse import metrics, _validation

        def digest():
            rng = np.random.default_rng(0)
            u = rng.integers(0, 20, 300); i = rng.integers(0, 15, 300)
            frame = pd.DataFrame({"user": ["u%d" % x for x in u], "item": ["i%d" % x for x in i],
                                  "w": rng.integers(1, 5, 300).astype(float),
                                  "t": np.arange(300)})
            data = recfuse.Interactions.from_events(frame, user="user", item="item",
                                                    weight="w", timestamp="t")
            m = data.matrix
            ids = np.argsort(-rng.random((m.shape[0], m.shape[1])), axis=1)[:, :5]
            scores = metrics.ranking_metrics(ids, m)
            diversity = metrics.intra_list_diversity(ids, rng.standard_normal((m.shape[1], 4)))
            h = hashlib.sha1()
            for a in (m.indptr, m.indices, m.data, data.user_ids.ids.astype(str),
                      data.item_ids.ids.astype(str), np.asarray(diversity)):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(repr(sorted(scores.items())).encode())
            return h.hexdigest()

        fallback = digest()
        assert not _validation._native_usable()
        os.environ["RECFUSE_SIMD"] = ""
        assert _validation._native_usable()
        assert digest() == fallback
        print("ok")
    """, RECFUSE_SIMD="bogus")
    assert out.strip() == "ok"


@needs_core
def test_a_non_utf8_recfuse_simd_is_named_in_the_reason():
    """RECFUSE_SIMD=b'\\xff\\xfe' (a byte string no decoder accepts): the cpu row's reason
    was "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 68": the
    C++ message holds the raw bytes and pybind11 cannot turn it into a str."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import numpy as np, recfuse
        cpu = [b for b in recfuse.backends("topk") if b.name == "cpu"][0]
        assert not cpu.available, cpu
        ids, _ = recfuse.topk(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1)
        assert ids[:, 0].tolist() == [0, 1, 2]   # the other backends keep working
        print(cpu.detail)
    """)], capture_output=True, text=True, timeout=240,
        env={**{k.encode(): v.encode() for k, v in _clean_env().items()},
             b"RECFUSE_SIMD": b"\xff\xfe"})
    assert done.returncode == 0, done.stderr
    assert "RECFUSE_SIMD" in done.stdout, done.stdout


# ------------------------------------------------------------------------------ recfuse info
def test_info_json_is_strict_json_and_reports_the_version():
    from importlib import metadata

    done = _child("import recfuse.cli as c, sys; sys.exit(c.main(['info', '--json']))")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.count("\n") == 1
    info = json.loads(done.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert info["version"] == recfuse.__version__ == metadata.version("recfuse")
    assert [row["name"] for row in info["backends"]] == ["cuda", "cpu", "numba", "cupy", "numpy"]
    assert all(set(row) == {"name", "available", "detail"} for row in info["backends"])
    assert info["auto"] in [row["name"] for row in info["backends"] if row["available"]]
    assert isinstance(info["native_threads"], int) and info["native_threads"] >= 1
    parts = recfuse.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)


def test_info_exits_2_naming_the_variable_for_an_unusable_recfuse_backend():
    out = _child_ok("""
        import io, json, os, contextlib
        from recfuse import cli
        for value in ("CPU", "\\u00fcber", "cupy"):
            os.environ["RECFUSE_BACKEND"] = value
            stdout, stderr = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = cli.main(["info", "--json"])
            assert status == 2, (value, status)
            assert json.loads(stdout.getvalue())["auto"] is None  # the table still comes
            message = stderr.getvalue()
            assert "(from RECFUSE_BACKEND)" in message and repr(value) in message, message
        print("ok")
    """)
    assert out.strip() == "ok"


# ------------------------------------------------------------------------------ num_threads
R_SMALL = sp.random(30, 20, density=0.3, format="csr", random_state=0, dtype=np.float32)
R_SMALL.data[:] = 1
_U, _I, _R = np.arange(12), np.arange(12) % 7, np.ones(12)
_Q = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
_V = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
_LAYERS = [(np.ones((2, 8), np.float32), np.zeros(2, np.float32), "relu"),
           (np.ones((1, 2), np.float32), None, "identity")]
_IDS = np.tile(np.arange(5), (30, 1))


@pytest.fixture(scope="module")
def fitted_als():
    return recfuse.ALS(factors=4, iterations=1, random_state=0).fit(R_SMALL)


def _thread_calls(als):
    from recfuse.compat import implicit, surprise
    from recfuse.serving import item_gram

    return {
        "ALS": lambda t: recfuse.ALS(factors=2, iterations=1, num_threads=t),
        "BPR": lambda t: recfuse.BPR(factors=2, iterations=1, num_threads=t),
        "SVD": lambda t: recfuse.SVD(factors=2, epochs=1, num_threads=t),
        "SVDpp": lambda t: recfuse.SVDpp(factors=2, epochs=1, num_threads=t),
        "ExplicitALS": lambda t: recfuse.ExplicitALS(factors=2, iterations=1, num_threads=t),
        "ALS.set_params": lambda t: recfuse.ALS(factors=2).set_params(num_threads=t),
        "topk": lambda t: recfuse.topk(_Q, _V, 2, num_threads=t),
        "ItemIndex.search": lambda t: recfuse.ItemIndex(_V).search(_Q, 2, num_threads=t),
        "MLPScorer.score": lambda t: recfuse.MLPScorer(_LAYERS).score(
            np.ones((3, 8), np.float32), num_threads=t),
        "MLPScorer.rank": lambda t: recfuse.MLPScorer(_LAYERS).rank(
            _Q, np.array([[0, 1, 2]] * 3), _V, k=2, num_threads=t),
        "MLPScorer.prepare_items": lambda t: recfuse.MLPScorer(_LAYERS).prepare_items(
            _V, item_column=4, num_threads=t),
        "ranking_metrics": lambda t: metrics.ranking_metrics(_IDS, R_SMALL, num_threads=t),
        "intra_list_diversity": lambda t: metrics.intra_list_diversity(_IDS, _V, num_threads=t),
        "evaluate": lambda t: metrics.evaluate(als, R_SMALL, R_SMALL, k=3, num_threads=t),
        "Recommender": lambda t: recfuse.Recommender(als, num_threads=t),
        "item_gram": lambda t: item_gram(_V, num_threads=t),
        "implicit.ALS": lambda t: implicit.AlternatingLeastSquares(factors=2, num_threads=t),
        "surprise.SVD": lambda t: surprise.SVD(n_factors=2, n_epochs=1, num_threads=t),
        "surprise.SVDpp": lambda t: surprise.SVDpp(n_factors=2, n_epochs=1, num_threads=t),
    }


def _distributed_call():
    try:
        from recfuse.distributed import DaskALS
    except Exception:  # noqa: BLE001 - dask missing: the other APIs still run
        return {}
    return {"DaskALS": lambda t: DaskALS(num_threads=t)}


ACCEPTED = [0, 1, 2, 65536, np.int64(2), np.int32(0), np.uint8(1), np.int64(65536)]
REFUSED = [(-1, ValueError), (65537, ValueError), (2**70, ValueError),
           (np.int64(-3), ValueError), (np.uint64(2**64 - 1), ValueError),
           (True, TypeError), (False, TypeError), (np.bool_(True), TypeError),
           (2.0, TypeError), (np.float64(1.0), TypeError), ("2", TypeError),
           (b"2", TypeError), (None, TypeError), ([2], TypeError), (np.array(2), TypeError)]


def test_num_threads_is_checked_alike_by_every_public_api(fitted_als):
    """num_threads: integers (NumPy's too) in [0, 65536] accepted by every public API;
    out-of-range values a ValueError, bool/float/str/None/containers a TypeError, each
    naming num_threads (Recommender alone takes None: its default)."""
    calls = {**_thread_calls(fitted_als), **_distributed_call()}
    wrong = []
    for name, call in calls.items():
        for value in ACCEPTED:
            try:
                call(value)
            except Exception as error:  # noqa: BLE001 - collected for one report
                wrong.append(f"{name}({value!r}) refused: {type(error).__name__}: {error}")
        for value, kind in REFUSED:
            if value is None and name == "Recommender":
                call(value)
                continue
            try:
                call(value)
            except kind as error:
                if "num_threads" not in str(error):
                    wrong.append(f"{name}({value!r}): {error} names no num_threads")
            except Exception as error:  # noqa: BLE001
                wrong.append(f"{name}({value!r}): {type(error).__name__} {error}, "
                             f"expected {kind.__name__}")
            else:
                wrong.append(f"{name}({value!r}) accepted")
    assert not wrong, "\n".join(wrong)


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("backend", ["cpu", "numba"])
def test_results_do_not_depend_on_num_threads(backend):
    """"Results are deterministic for a given seed, backend and SIMD level, whatever the
    thread count" - bit for bit, for 1, 2, 3, 0 (all), 64 and 65536 (capped) threads."""
    if not any(b.name == backend and b.available for b in recfuse.backends()):
        pytest.skip(f"{backend} is not available")
    rng = np.random.default_rng(0)
    R = sp.random(200, 150, density=0.05, format="csr", random_state=0, dtype=np.float32)
    R.data[:] = rng.integers(1, 5, R.nnz)
    coo = R.tocoo()
    u, i, r = coo.row, coo.col, coo.data.astype(np.float64)
    V = rng.standard_normal((400, 16)).astype(np.float32)
    Q = rng.standard_normal((30, 16)).astype(np.float32)
    layers = [(rng.standard_normal((8, 16)).astype(np.float32), np.zeros(8, np.float32), "relu"),
              (rng.standard_normal((1, 8)).astype(np.float32), None, "identity")]

    def everything(t):
        out = []
        for model in (recfuse.ALS(factors=8, iterations=2, backend=backend, num_threads=t,
                                  random_state=1).fit(R),
                      recfuse.ALS(factors=8, iterations=1, solver="cholesky", backend=backend,
                                  num_threads=t, random_state=1).fit(R),
                      recfuse.BPR(factors=8, iterations=2, backend=backend, num_threads=t,
                                  random_state=1).fit(R),
                      recfuse.SVD(factors=8, epochs=2, backend=backend, num_threads=t,
                                  random_state=1).fit(u, i, r),
                      recfuse.SVDpp(factors=8, epochs=1, backend=backend, num_threads=t,
                                    random_state=1).fit(u, i, r),
                      recfuse.ExplicitALS(factors=8, iterations=1, backend=backend,
                                          num_threads=t, random_state=1).fit(u, i, r)):
            out.append(_digest(model.user_factors, model.item_factors))
        out.append(_digest(*recfuse.topk(Q, V, 10, backend=backend, num_threads=t)))
        scorer = recfuse.MLPScorer(layers, backend=backend)
        out.append(_digest(scorer.score(np.repeat(Q, 3, axis=0), num_threads=t)))
        out.append(_digest(*scorer.rank(Q[:, :8], np.tile(np.arange(40), (30, 1)), V[:, :8],
                                        k=5, num_threads=t)))
        return out

    first = everything(1)
    for threads in (2, 3, 0, 64, 65536):
        assert everything(threads) == first, threads


@needs_core
def test_default_threads_follow_omp_num_threads_and_the_affinity_mask():
    """num_threads=0: the CPUs of the affinity mask, lowered (never raised) by
    OMP_NUM_THREADS; recfuse info prints that number."""
    code = """
        import os, sys
        if len(sys.argv) > 1:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        import io, json, contextlib
        from recfuse import _core, cli
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli.main(["info", "--json"])
        print(_core.default_threads(), json.loads(out.getvalue())["native_threads"],
              len(os.sched_getaffinity(0)))
    """

    def run(*args, **env):
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                              capture_output=True, text=True, timeout=240,
                              env=_clean_env(**env))
        assert done.returncode == 0, done.stderr
        return [int(x) for x in done.stdout.split()]

    threads, reported, cpus = run()
    assert threads == reported and 1 <= threads <= cpus  # a cgroup quota may lower it
    assert run(OMP_NUM_THREADS="1")[:2] == [1, 1]  # lowers (raising: test_backends.py)
    assert run("pin")[:2] == [1, 1]


@needs_core
def test_num_threads_zero_gives_the_same_models_under_any_thread_environment():
    code = """
        import hashlib, numpy as np, scipy.sparse as sp, recfuse, warnings
        warnings.simplefilter("ignore")
        R = sp.random(200, 150, density=0.05, format="csr", random_state=0, dtype=np.float32)
        coo = R.tocoo()
        h = hashlib.sha1()
        for m in (recfuse.ALS(factors=8, iterations=2, random_state=1).fit(R),
                  recfuse.BPR(factors=8, iterations=2, random_state=1).fit(R),
                  recfuse.SVD(factors=8, epochs=3, random_state=1).fit(coo.row, coo.col,
                                                                        coo.data)):
            h.update(m.user_factors.tobytes()); h.update(m.item_factors.tobytes())
        print(h.hexdigest())
    """
    plain = _child_ok(code)
    assert _child_ok(code, OMP_NUM_THREADS="1") == plain
    assert _child_ok(code, OMP_NUM_THREADS="64", OPENBLAS_NUM_THREADS="1") == plain


# ------------------------------------------------------------------------------ RECFUSE_WORKER_THREADS
def test_worker_threads_variable_property():
    """RECFUSE_WORKER_THREADS as an int after stripping blanks ("" = 0) when that is in
    [0, 65536]; any other text a ValueError naming the variable."""
    pytest.importorskip("hypothesis")
    pytest.importorskip("pandas")
    _child_ok("""
        import os
        from hypothesis import given, settings, example, assume, strategies as st
        from recfuse.distributed._blocks import worker_threads

        def parsed(value):
            try:
                return int(value.strip() or "0")
            except ValueError:
                return None

        text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\\x00"),
                       max_size=8)
        numbers = st.integers(-10, 65536).map(str)

        @settings(max_examples=80, deadline=None, database=None, derandomize=True)
        @given(st.one_of(text, numbers, numbers.map(lambda s: " " + s + "\\t")))
        @example("")
        @example("1.5")
        @example("-1")
        @example("0x10")
        @example("65536")
        def check(value):
            expected = parsed(value)
            assume(expected is None or expected <= 65536)  # above: the range test below
            os.environ["RECFUSE_WORKER_THREADS"] = value
            assert worker_threads(5) == 5   # an explicit count never reads the variable
            if expected is not None and expected >= 0:
                assert worker_threads(0) == expected, value
            else:
                try:
                    worker_threads(0)
                except ValueError as error:
                    message = str(error)
                    assert "RECFUSE_WORKER_THREADS" in message, message
                    assert repr(value.strip()) in message, message
                else:
                    raise AssertionError(f"{value!r} accepted")

        check()
        print("ok")
    """)


def test_worker_threads_variable_has_num_threads_range():
    """DaskALS(num_threads=70000) is refused ("num_threads must be <= 65536") but
    RECFUSE_WORKER_THREADS=70000 is used as is, and RECFUSE_WORKER_THREADS=10**20 reaches
    threadpoolctl as "ArgumentError: argument 1: OverflowError: int too long to convert",
    naming no variable, from inside a block solve."""
    pytest.importorskip("pandas")
    out = _child_ok("""
        import os
        from recfuse.distributed._blocks import worker_threads
        for value in ("65537", "70000", "99999999999999999999"):
            os.environ["RECFUSE_WORKER_THREADS"] = value
            try:
                got = worker_threads(0)
            except ValueError as error:
                print("refused", "RECFUSE_WORKER_THREADS" in str(error))
            else:
                print("accepted", got)
    """)
    assert out.split("\n")[:3] == ["refused True"] * 3, out


# ------------------------------------------------------------------------------ NUMBA_THREADING_LAYER
def test_numba_row_follows_a_threading_layer_that_cannot_load():
    """The README suggests NUMBA_THREADING_LAYER=tbb (for forked workers). Without TBB
    installed, backends() still said numba was available and backend="auto" (on a host
    without the cpu backend: here RECFUSE_SIMD misspelt) picked it, and every call raised
    numba's "No threading layer could be loaded" instead of moving on to numpy."""
    pytest.importorskip("numba")
    done = _child("""
        import importlib, sys
        try:
            importlib.import_module("numba.np.ufunc.tbbpool")
        except ImportError:
            pass
        else:
            print("SKIP"); sys.exit(0)
        import numpy as np, recfuse
        numba_row = [b for b in recfuse.backends("topk") if b.name == "numba"][0]
        try:
            recfuse.topk(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1,
                         backend="numba")
            runs = True
        except Exception as error:
            runs = False
        assert numba_row.available == runs, (numba_row, runs)
        if not runs:
            assert "NUMBA_THREADING_LAYER" in numba_row.detail or "tbb" in numba_row.detail
        ids, _ = recfuse.topk(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1)
        assert ids[:, 0].tolist() == [0, 1, 2]
        print("ok")
    """, NUMBA_THREADING_LAYER="tbb", RECFUSE_SIMD="bogus")
    if done.stdout.strip() == "SKIP":
        pytest.skip("TBB is installed here")
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------------ resolve_backend
def test_resolve_backend_names_a_kernel_no_backend_has():
    """recfuse.resolve_backend is public. With backend="auto" and a ``needs`` no module
    defines, it raised RuntimeError("no recfuse backend is available") - false, numpy
    always is - where the explicit path says "has no <needs> kernel for the <family>
    family"; needs=5 raised "attribute name must be string, not 'int'", naming no
    argument."""
    with pytest.raises(RuntimeError, match="no_such_kernel"):
        recfuse.resolve_backend("auto", "sgd", needs="no_such_kernel")
    with pytest.raises(TypeError, match="needs"):
        recfuse.resolve_backend("auto", "als", needs=5)


def test_backends_and_resolve_backend_refuse_bad_names():
    for bad, kind in ((None, TypeError), (["als"], TypeError), ("ALS", ValueError),
                      ("", ValueError), ("als ", ValueError)):
        with pytest.raises(kind, match="family"):
            recfuse.backends(bad)
        with pytest.raises(kind, match="family"):
            recfuse.resolve_backend("auto", bad)
    for bad, kind in ((None, TypeError), (1, TypeError), ("CPU", ValueError), ("", ValueError)):
        with pytest.raises(kind, match="backend"):
            recfuse.resolve_backend(bad)
    rows = recfuse.backends()
    rows.append("junk")  # a copy: the next call is whole again
    assert [b.name for b in recfuse.backends()] == ["cuda", "cpu", "numba", "cupy", "numpy"]


# ------------------------------------------------------------------------------ global state
def test_import_and_calls_leave_process_state_alone():
    """import recfuse (after its dependencies numpy and scipy, which set filters of their
    own) and a round of calls on each host backend change none of: NumPy's error settings
    and print options, warnings filters, signal handlers, locale, the environment, BLAS
    thread counts, numba's thread count, the global RNGs, recursion limit, switch interval,
    logging, faulthandler, umask, cwd."""
    out = _child_ok("""
        import sys, os, signal, locale, warnings, random, gc, logging, faulthandler, json
        import numpy as np, scipy, scipy.sparse, scipy.sparse.linalg
        import threadpoolctl

        def numba_threads():
            module = sys.modules.get("numba")
            return None if module is None else module.get_num_threads()

        def snap():
            umask = os.umask(0o22); os.umask(umask)
            return {
                "geterr": np.geterr(),
                "printoptions": repr(sorted((k, repr(v)) for k, v in
                                            np.get_printoptions().items())),
                "warnings": repr(warnings.filters),
                "signals": {s.name: repr(signal.getsignal(s)) for s in (
                    signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE,
                    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)},
                "locale": locale.setlocale(locale.LC_ALL, None),
                "env": dict(os.environ),
                # libraries loaded later (scipy's own OpenBLAS) come at their defaults
                "blas": sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()
                                if i["user_api"] == "blas"}),
                "nprandom": np.random.get_state()[1][:8].tolist(),
                "random": random.getstate()[1][:8],
                "recursion": sys.getrecursionlimit(), "switch": sys.getswitchinterval(),
                "excepthook": repr(sys.excepthook),
                "logging": (logging.root.level, len(logging.root.handlers)),
                "faulthandler": faulthandler.is_enabled(), "gc": gc.get_threshold(),
                "umask": umask, "cwd": os.getcwd(), "affinity": sorted(os.sched_getaffinity(0)),
            }

        before = snap()
        import recfuse
        after_import = snap()
        import numba  # the numba backend's count must be as numba left it
        before_calls = numba.get_num_threads()
        R = scipy.sparse.random(40, 30, density=0.2, format="csr", random_state=0,
                                dtype=np.float32)
        for b in [b.name for b in recfuse.backends() if b.available]:
            recfuse.ALS(factors=4, iterations=1, backend=b, num_threads=1).fit(R)
            recfuse.topk(np.ones((2, 4), np.float32), np.ones((9, 4), np.float32), 3,
                         backend=b, num_threads=1)
            recfuse.SVD(factors=2, epochs=1, backend=b, num_threads=1).fit(
                [0, 1], [0, 1], [1.0, 2.0])
        recfuse.metrics.ranking_metrics(np.tile(np.arange(3), (40, 1)), R)
        after_calls = snap()
        print(json.dumps({
            "import": {k: [str(before[k]), str(after_import[k])] for k in before
                       if before[k] != after_import[k]},
            "calls": {k: [str(before[k]), str(after_calls[k])] for k in before
                      if before[k] != after_calls[k]},
            "numba": [before_calls, numba.get_num_threads()]}))
    """)
    changed = _last_json(out)
    assert changed["import"] == {} and changed["calls"] == {}, changed
    assert changed["numba"][0] == changed["numba"][1], changed

"""Backend choice: RECFUSE_BACKEND, RECFUSE_SIMD changed in the process, the family argument,
and the first resolution from several threads. Cases that depend on the environment at
import or on fresh caches run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import _backend

from conftest import run_python


@pytest.fixture
def tiny():
    return sp.random(20, 15, density=0.3, format="csr", random_state=0, dtype=np.float32)


def _entry_points(tiny):
    """Each public entry point that resolves a backend, called with backend="auto"."""
    queries, items = np.ones((1, 3), np.float32), np.ones((5, 3), np.float32)
    layers = [(np.ones((1, 3), np.float32), None, "identity")]
    return {
        "ALS": lambda: recfuse.ALS(factors=2, iterations=1).fit(tiny),
        "BPR": lambda: recfuse.BPR(factors=2, iterations=1).fit(tiny),
        "SVD": lambda: recfuse.SVD(factors=2, epochs=1).fit([0, 1], [0, 1], [1.0, 2.0]),
        "ExplicitALS": lambda: recfuse.ExplicitALS(factors=2, iterations=1).fit(
            [0, 1], [0, 1], [1.0, 2.0]),
        "topk": lambda: recfuse.topk(queries, items, 2),
        "ItemIndex": lambda: recfuse.ItemIndex(items),
        "MLPScorer": lambda: recfuse.MLPScorer(layers),
    }


def test_a_misspelt_recfuse_backend_is_named_in_the_error(monkeypatch, tiny):
    """RECFUSE_BACKEND=CPU raised "backend must be 'auto' or one of ..., got 'CPU'" from
    calls that were given no backend at all: the error must say where the name came from."""
    monkeypatch.setenv("RECFUSE_BACKEND", "CPU")
    for call in _entry_points(tiny).values():
        with pytest.raises(ValueError, match=r"backend \(from RECFUSE_BACKEND\) must be 'auto' "
                                             r"or one of .*got 'CPU'"):
            call()


def test_an_unavailable_recfuse_backend_is_named_in_the_error(monkeypatch, tiny):
    missing = [row for row in recfuse.backends() if not row.available]
    if not missing:
        pytest.skip("every backend is available here")
    monkeypatch.setenv("RECFUSE_BACKEND", missing[0].name)
    for call in _entry_points(tiny).values():
        with pytest.raises(RuntimeError, match=rf"backend '{missing[0].name}' \(from "
                                               rf"RECFUSE_BACKEND\) is not available: "):
            call()


def test_a_recfuse_backend_lacking_the_kernel_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("RECFUSE_BACKEND", "numpy")
    with pytest.raises(RuntimeError, match=r"backend 'numpy' \(from RECFUSE_BACKEND\) has no "
                                           r"no_such_epoch kernel for the sgd family"):
        _backend.resolve_backend("auto", "sgd", needs="no_such_epoch")


def test_an_explicit_backend_error_does_not_blame_the_variable(monkeypatch):
    monkeypatch.setenv("RECFUSE_BACKEND", "numpy")
    with pytest.raises(ValueError) as raised:
        _backend.resolve_backend("CPU", "als")
    assert "RECFUSE_BACKEND" not in str(raised.value) and "got 'CPU'" in str(raised.value)
    assert _backend.resolve_backend("auto", "topk").NAME == "numpy"  # the variable still works


def test_backends_refuses_a_family_that_is_not_a_string():
    """backends(["als"]) raised TypeError: unhashable type: 'list'."""
    with pytest.raises(TypeError, match=r"family must be a string, one of .*got list \['als'\]"):
        recfuse.backends(["als"])
    with pytest.raises(ValueError, match="family must be one of .*got 'ALS'"):
        recfuse.backends("ALS")


def test_correcting_recfuse_simd_in_the_process_makes_the_cpu_backend_available_again():
    """A misspelt RECFUSE_SIMD makes the cpu backend unavailable; once the variable is
    corrected the native calls work again (_validation._native_usable asks again), but the
    backend table kept the first probe's failure: backends() still said the cpu backend was
    unavailable, naming the old value, and "auto" passed over it."""
    pytest.importorskip("recfuse._core")
    code = (
        "import os, recfuse\n"
        "cpu = lambda family: [b for b in recfuse.backends(family) if b.name == 'cpu'][0]\n"
        "assert not cpu('als').available and 'bogus' in cpu('als').detail, cpu('als')\n"
        "assert recfuse.resolve_backend('auto', 'topk').NAME != 'cpu'\n"
        "os.environ['RECFUSE_SIMD'] = 'generic'\n"
        "for family in ('als', 'sgd', 'topk', 'mlp'):\n"
        "    assert cpu(family).available and 'generic' in cpu(family).detail, cpu(family)\n"
        "    assert recfuse.resolve_backend('auto', family).NAME == 'cpu'\n"
        "os.environ['RECFUSE_SIMD'] = 'bogus'  # too late: the level in use stays\n"
        "assert cpu('als').available and 'generic' in cpu('als').detail, cpu('als')\n"
    )
    run_python(code, RECFUSE_SIMD="bogus")


def test_threads_resolving_auto_at_once_on_first_use_agree():
    """The first resolution probes and imports backend modules lazily; threads doing it at
    once must all get a working module and leave no spurious failure in the table."""
    code = (
        "import threading, recfuse\n"
        "from recfuse._backend import resolve_backend, FAMILIES\n"
        "barrier = threading.Barrier(8)\n"
        "results = {}\n"
        "def work(index):\n"
        "    family = FAMILIES[index % len(FAMILIES)]\n"
        "    barrier.wait()\n"
        "    results[index] = (family, resolve_backend('auto', family).NAME)\n"
        "threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n"
        "[thread.start() for thread in threads]\n"
        "[thread.join() for thread in threads]\n"
        "assert len(results) == 8, results\n"
        "for family, name in results.values():\n"
        "    assert name == resolve_backend('auto', family).NAME, (family, name)\n"
        "    row = [b for b in recfuse.backends(family) if b.name == name][0]\n"
        "    assert row.available, row\n"
    )
    run_python(code)


def test_an_oversized_openmp_default_does_not_crash_the_native_calls():
    """num_threads=0 stood for OpenMP's default team size unbounded: OMP_NUM_THREADS=100000
    made the top-k's table packing ask for 100000 threads and the interpreter crashed
    (SIGSEGV). The default is now capped at the processors this process may use."""
    pytest.importorskip("recfuse._core", reason="recfuse._core is not built")
    code = (
        "import numpy as np, scipy.sparse as sp, recfuse\n"
        "from recfuse._sgd.common import default_thread_count\n"
        "items = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)\n"
        "ids, _ = recfuse.topk(items[:2], items, 3, metric='cosine', backend='cpu',\n"
        "                      num_threads=2)\n"
        "assert ids[:, 0].tolist() == [0, 1], ids\n"
        "data = sp.random(300, 200, density=0.05, format='csr', random_state=0) * 5\n"
        "recfuse.ALS(factors=4, iterations=1, backend='cpu').fit(data)\n"
        "import os\n"
        "assert 1 <= default_thread_count() <= (os.cpu_count() or 1), default_thread_count()\n"
        "print('ok')\n")
    _child_prints_ok(code, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="100000"))


@pytest.mark.parametrize("make", [lambda b: recfuse.ALS(backend=b),
                                  lambda b: recfuse.BPR(backend=b),
                                  lambda b: recfuse.SVD(backend=b),
                                  lambda b: recfuse.ExplicitALS(backend=b)])
def test_a_misspelt_backend_is_refused_when_given(make, tmp_path):
    """backend="CPU" was stored as given and failed at the first fit or recommend; on
    recfuse.load(path, backend="CPU") that was after the load had returned."""
    for name in ("CPU", "bogus", ""):
        with pytest.raises(ValueError, match=r"backend must be 'auto' or one of \("):
            make(name)
    assert make("cuda").backend == "cuda"  # a backend this host lacks: refused only when used
    data = sp.random(20, 15, density=0.3, format="csr", random_state=0) * 4
    model = make("auto")
    if isinstance(model, (recfuse.ALS, recfuse.BPR)):
        model.fit(data)
    else:
        coo = data.tocoo()
        model.fit(coo.row, coo.col, np.ceil(coo.data))
    model.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        recfuse.load(tmp_path / "model.npz", backend="CPU")


_FORKED_CHILD_SCRIPT = """
import os, sys
import numpy as np
import recfuse
from recfuse import _core
from recfuse.datasets import synthetic_explicit, synthetic_implicit
from recfuse.metrics import evaluate

def in_child(check):
    # Runs check() in a forked child; its exit status says whether check passed.
    pid = os.fork()
    if pid == 0:
        try:
            check()
        except BaseException as error:
            print(f"child failed: {error!r}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def untouched():
    # Forked before any native call asked for threads: a child keeps them.
    assert not _core.forked_after_threads()
    recfuse.topk(items[:4], items, 5, backend="cpu", num_threads=2)

rng = np.random.default_rng(0)
items = rng.standard_normal((30000, 32)).astype(np.float32)
assert in_child(untouched) == 0

# The parent starts OpenMP's threads in every native family, then forks.
train = synthetic_implicit(400, 300, 6000, seed=1)
explicit = synthetic_explicit(300, 200, 5000, seed=2).tocoo()
users, rated, ratings = explicit.row, explicit.col, explicit.data
ids, scores = recfuse.topk(items[:8], items, 10, backend="cpu", num_threads=2)
als = recfuse.ALS(factors=8, iterations=2, backend="cpu", num_threads=2, random_state=0).fit(train)
svd = recfuse.SVD(factors=8, epochs=3, backend="cpu", num_threads=2, random_state=0)
svd.fit(users, rated, ratings)
scorer = recfuse.MLPScorer([(rng.standard_normal((16, 8)).astype(np.float32),
                             np.zeros(16, np.float32), "relu"),
                            (rng.standard_normal((1, 16)).astype(np.float32),
                             np.zeros(1, np.float32), "identity")])
inputs = rng.standard_normal((5000, 8)).astype(np.float32)
mlp_scores = scorer.score(inputs, num_threads=2)
grouped = recfuse.Interactions.from_events({"user": users, "item": rated})
quality = evaluate(als, train, train, k=5)

def forked():
    assert _core.forked_after_threads() and _core.default_threads() == 1
    for threads in (0, 2):
        got = recfuse.topk(items[:8], items, 10, backend="cpu", num_threads=threads)
        assert np.array_equal(got[0], ids) and np.array_equal(got[1], scores)
        assert np.array_equal(scorer.score(inputs, num_threads=threads), mlp_scores)
    again = recfuse.ALS(factors=8, iterations=2, backend="cpu", num_threads=2,
                        random_state=0).fit(train)
    assert np.array_equal(again.item_factors, als.item_factors)  # whatever the thread count
    refit = recfuse.SVD(factors=8, epochs=3, backend="cpu", num_threads=2, random_state=0)
    refit.fit(users, rated, ratings)
    assert np.array_equal(refit.predict(users, rated), svd.predict(users, rated))
    recfuse.BPR(factors=8, iterations=2, backend="cpu", num_threads=2).fit(train)
    assert recfuse.Interactions.from_events({"user": users, "item": rated}).nnz == grouped.nnz
    assert evaluate(als, train, train, k=5) == quality

assert in_child(forked) == 0
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_native_calls_in_a_process_forked_after_threads_started():
    """A process forked (os.fork, multiprocessing's "fork" start method, a pre-forking
    server) after native calls had run on several threads hung at its first native call:
    GNU libgomp still counted its parent's threads, which do not survive fork. Such a child
    now runs native calls on one thread, with the same results."""
    pytest.importorskip("recfuse._core", reason="recfuse._core is not built")
    try:
        done = subprocess.run([sys.executable, "-c", _FORKED_CHILD_SCRIPT], capture_output=True,
                              text=True, timeout=240)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"a forked child's native call hung: {hung.stderr!r}"[-2000:])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "150000 100000\n"}, 2),                     # v2 at the root: 1.5 CPUs
    ({"cpu.max": "max 100000\n"}, 0),                        # v2, no quota
    ({"kube/pod/cpu.max": "100000 100000\n", "cpu.max": "400000 100000\n"}, 1),  # own group
    ({"kube/pod/cpu.max": "max 100000\n", "cpu.max": "300000 100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0),
    ({"kube/cpu.max": "100000 100000\n", "kube/pod/cpu.max": "300000 100000\n"}, 1),  # parent
    ({"cpu/kube/pod/cpu.cfs_quota_us": "250000\n",                         # v1 own group
      "cpu/kube/pod/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/kube/pod/cpu.cfs_quota_us": "250000\n", "cpu/kube/pod/cpu.cfs_period_us": "100000\n",
      "cpu.max": "100000 100000\n"}, 1),                                   # v1 and v2: smaller
    ({"cpu.max": "garbage\n"}, 0),
    ({"cpu.max": "99999999999999999999999 1\n"}, 0),         # out of range: no limit read
    ({}, 0),
])
def test_cgroup_cpu_quota_caps_the_default_thread_count(tmp_path, files, expected):
    """num_threads=0 stood for every processor of the host inside a container limited by a
    CPU quota (docker --cpus, Kubernetes limits): libgomp reads the affinity, not the quota,
    so a 2-CPU pod on a 64-core node ran 64 threads. The quota now caps the default."""
    core = pytest.importorskip("recfuse._core", reason="recfuse._core is not built")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self").write_text("12:cpu,cpuacct:/kube/pod\n0::/kube/pod\n")
    assert core.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "self")) == expected
    limit = core.cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup")
    assert 1 <= core.default_threads() <= (limit or os.cpu_count() or 1)


def test_a_cgroup_v1_quota_on_the_process_group_caps_the_default_threads(tmp_path):
    """End to end where the machine allows it (root, cgroup v1's cpu controller mounted
    writable): a process in a group limited to half a CPU runs native calls on one thread.
    The first version read only the quota at the mount's root, not the process's group."""
    core = pytest.importorskip("recfuse._core", reason="recfuse._core is not built")
    mount = "/sys/fs/cgroup/cpu"
    if not os.access(os.path.join(mount, "cgroup.procs"), os.W_OK) or \
            not os.path.exists(os.path.join(mount, "cpu.cfs_quota_us")):
        pytest.skip("needs a writable cgroup v1 cpu controller (root)")
    if core.default_threads() < 2:
        pytest.skip("this process already runs on one thread")
    group = os.path.join(mount, f"recfuse-test-{os.getpid()}")
    os.mkdir(group)
    try:
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as quota:
            quota.write("50000")  # half of the default 100000 µs period
        code = ("import os, sys\n"
                f"open({os.path.join(group, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                "from recfuse import _core\n"
                "print(_core.default_threads())\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-2000:]
    finally:
        os.rmdir(group)  # its one process has ended


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_calls_given_one_thread_start_no_thread_team():
    """Calls given num_threads=1 ran parts of their work on every core: the top-k's table
    packing (also recfuse.topk given a storage, packed by the index's constructor), the
    fits' starting draws, the SGD block layout and shuffle, and the input
    scans of the ALS and SGD kernels took OpenMP's default. So a process that only ever
    asked for one thread started OpenMP's team (and lost its forked children's threads)."""
    pytest.importorskip("recfuse._core", reason="recfuse._core is not built")
    code = (
        "import os, numpy as np, scipy.sparse as sp, recfuse\n"
        "from recfuse import _core\n"
        "from recfuse.metrics import evaluate\n"
        "rng = np.random.default_rng(0)\n"
        "items = rng.standard_normal((50000, 32)).astype(np.float32)\n"
        "for metric in ('dot', 'cosine'):\n"
        "    recfuse.topk(items[:3], items, 10, metric=metric, backend='cpu', num_threads=1)\n"
        "for storage in ('native', 'bfloat16'):  # given, not 'auto'\n"
        "    recfuse.topk(items[:3], items, 10, storage=storage, backend='cpu', num_threads=1)\n"
        "n = 1_200_000  # past the input scans' threshold for threads\n"
        "users, cols = rng.integers(0, 20000, n), rng.integers(0, 5000, n)\n"
        "ratings = rng.integers(1, 6, n).astype(np.float32)\n"
        "matrix = sp.csr_matrix((ratings, (users, cols)), shape=(20000, 5000))\n"
        "one = dict(backend='cpu', num_threads=1, random_state=0)\n"
        "als = recfuse.ALS(factors=8, iterations=1, **one).fit(matrix)\n"
        "recfuse.BPR(factors=8, iterations=1, **one).fit(matrix[:2000])\n"
        "recfuse.SVD(factors=8, epochs=1, **one).fit(users, cols, ratings)\n"
        "recfuse.SVDpp(factors=4, epochs=1, **one).fit(users[:20000], cols[:20000],\n"
        "                                             ratings[:20000])\n"
        "recfuse.ExplicitALS(factors=8, iterations=1, **one).fit(users, cols, ratings)\n"
        "evaluate(als, matrix[:500], matrix[:500], k=5, num_threads=1)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(1 if _core.forked_after_threads() else 0)\n"
        "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, 'a team was started'\n"
        "print('ok')\n")
    _child_prints_ok(code, timeout=240)


def test_the_largest_thread_count_accepted_does_not_crash_the_interpreter():
    """num_threads accepts up to 2**16, and the native kernels used to start that many
    OpenMP threads: 65,536 crashed the process (segfault). They now run at most 8 per
    processor (at least 64), with the same results. In a child process, so that a crash
    fails this test rather than ending the run."""
    code = ("import numpy as np, recfuse, scipy.sparse as sp\n"
            "items = np.random.default_rng(0).random((500, 64), dtype=np.float32)\n"
            "ids, _ = recfuse.topk(items[:3], items, 5, num_threads=65536)\n"
            "assert (ids == recfuse.topk(items[:3], items, 5, num_threads=1)[0]).all()\n"
            "index = recfuse.ItemIndex(items, storage='bfloat16')\n"
            "index.search(items[:3], 5, num_threads=65536)\n"
            "m = sp.random(40, 30, density=0.2, format='csr', random_state=0, dtype=np.float32)\n"
            "recfuse.ALS(factors=4, iterations=1, num_threads=65536).fit(m)\n"
            "print('ok')\n")
    _child_prints_ok(code, timeout=300)


def _child_prints_ok(code: str, timeout: float, env: dict | None = None) -> None:
    """Run ``code`` in a new interpreter, which must exit 0 having printed "ok"."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

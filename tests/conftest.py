"""Shared test fixtures: hypothesis profiles, a CSR strategy, backend parametrisation."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import recfuse

settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def examples(count: int) -> int:
    """The example count of a test that sets its own (a slow property), scaled with the
    profile beyond ci's 60: nightly (1000) runs it about 17 times as often as ci does."""
    return max(count, count * settings.default.max_examples // 60)

DATASETS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


def available_backends() -> list[str]:
    return [info.name for info in recfuse.backends() if info.available]


def backend_params(names=("cuda", "cpu", "numba", "cupy", "numpy"), family: str = "als"):
    """pytest params for each backend of a kernel family; unavailable ones skip with the
    reason."""
    table = {info.name: info for info in recfuse.backends(family)}
    params = []
    for name in names:
        info = table[name]
        marks = [] if info.available else [pytest.mark.skip(reason=f"{name}: {info.detail}")]
        if name in ("cuda", "cupy"):
            marks.append(pytest.mark.gpu)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@st.composite
def csr_matrices(draw, max_rows=12, max_cols=10, min_value=0.0, max_value=50.0,
                 dtype=np.float64, allow_negative=False):
    """Canonical CSR matrices with unique coordinates; covers empty rows/columns, nnz=0, 1x1
    and large values."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    cells = draw(st.sets(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)),
                         max_size=rows * cols))
    low = -max_value if allow_negative else min_value
    values = draw(st.lists(
        st.one_of(st.floats(low, max_value, allow_nan=False, width=32),
                  st.sampled_from([0.0, 1.0, max_value])),
        min_size=len(cells), max_size=len(cells)))
    if cells:
        r, c = zip(*sorted(cells))
    else:
        r, c = (), ()
    matrix = sp.csr_matrix((np.array(values, dtype=dtype), (np.array(r, dtype=np.int64),
                            np.array(c, dtype=np.int64))), shape=(rows, cols))
    matrix.sort_indices()
    return matrix


@pytest.fixture(scope="module")
def ratings():
    """(users, items, ratings 1-5) with a rank-3 taste structure: 3,000 draws, 120 x 80."""
    rng = np.random.default_rng(7)
    n_users, n_items, n = 120, 80, 3000
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    taste = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    values = np.clip(np.round(3 + taste[users, items]), 1, 5)
    return users, items, values


@pytest.fixture
def movielens_100k():
    path = os.path.join(DATASETS, "ml-100k")
    if not os.path.isfile(os.path.join(path, "u.data")):
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


def wait_until(condition, seconds: float = 30.0) -> bool:
    """Polls ``condition()`` until it holds or ``seconds`` pass; returns whether it held. For
    tests whose threads must have taken a step (on a busy machine a started thread may not
    run for a while)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def run_python(code: str, **env: str) -> None:
    """Run ``code`` in a fresh interpreter with ``env`` added to the environment (settings
    read at import, such as RECFUSE_SIMD); its failure fails the test."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   env={**os.environ, **env})


def numba_cache_counts(code: str) -> list[list[str]]:
    """Run ``code``, which prints its Numba kernel's cache hits and misses, in two fresh
    processes one after the other: the second must find what the first compiled."""
    import subprocess
    import sys

    return [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True).stdout.split() for _ in range(2)]


@contextmanager
def simd_level(level):
    """Runs the block at this SIMD level of the native CPU kernels, then restores the level."""
    from recfuse import _core

    original = _core.simd_level()
    try:
        _core.set_simd_level(level)
        yield
    finally:
        _core.set_simd_level(original)

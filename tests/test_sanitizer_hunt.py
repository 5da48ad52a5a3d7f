"""Sanitizer hunt on the native core (recfuse._core) -- what a normal build can check.

The hunt built recfuse._core with -fsanitize=address,undefined (tools/sanitize.sh) and ran
the top-k, ALS, SGD/SVD/BPR, MLP, interactions and metrics tests plus hypothesis fuzzers
against it. Its one finding, an out-of-bounds read in MlpModel's constructor (cpp/src/mlp.cpp
read layers[-1] while building the message of a check that passes; now built only on
failure), had no effect a normal build can observe: the stray value only fed a message that
was thrown away. So this file holds

* regression tests, in a normal build, of the inputs that exercise that path and of other
  paths the sanitizers ran clean (the contract: README "Ranking", recfuse.ranking.MLPScorer
  and recfuse.retrieval docstrings: results as NumPy computes them, refusals as ValueError
  naming the argument, nothing crashes);
* one test that runs the MLP constructor under the sanitized build when one is
  there (RECFUSE_SANITIZED_DIR: the ASAN_DIR of tools/sanitize.sh, e.g. /tmp/asan, holding
  site/ and pkg/); without it, it skips.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import reference


def _forward(layers, X):
    """The MLP's forward pass in float64 (weights (out, in), as MLPScorer takes them)."""
    h = X.astype(np.float64)
    for W, b, activation in layers:
        h = h @ W.astype(np.float64).T + (0 if b is None else b)
        if activation == "relu":
            h = np.maximum(h, 0)
    return h[:, 0]


# ------------------------------------------------------------------ MLP constructor path


@pytest.mark.parametrize("hidden", [[], [3], [5, 2]], ids=["1-layer", "2-layers", "3-layers"])
def test_mlp_of_any_depth_scores_as_numpy(hidden):
    """Every depth goes through the constructor's per-layer checks (the loop whose first
    iteration read layers[-1]); the scores are the float64 forward pass to float32."""
    rng = np.random.default_rng(len(hidden))
    dims = [4, *hidden, 1]
    layers = [(rng.standard_normal((b, a)).astype(np.float32),
               rng.standard_normal(b).astype(np.float32), "relu" if b != 1 else "identity")
              for a, b in zip(dims[:-1], dims[1:])]
    X = rng.standard_normal((7, 4)).astype(np.float32)
    scores = recfuse.MLPScorer(layers, backend="cpu").score(X)
    np.testing.assert_allclose(scores, _forward(layers, X), rtol=1e-5, atol=1e-5)


def test_mlp_layer_mismatch_names_both_layers():
    layers = [(np.ones((3, 4), np.float32), None, "relu"),
              (np.ones((1, 5), np.float32), None, "identity")]
    with pytest.raises(ValueError, match=r"layers\[1\] takes 5 inputs but layers\[0\] gives 3"):
        recfuse.MLPScorer(layers, backend="cpu")


# ------------------------------------------------------------------ top-k paths run clean


@pytest.mark.parametrize("storage", ["native", "bfloat16"])
def test_topk_with_exclusions_and_mask_is_well_formed(storage):
    """bfloat16 storage (probe, settle, excluded lanes) and native: with exclusions and an
    allow list, the ids are distinct, qualifying, and those of the float64 reference where
    no two scores are close."""
    rng = np.random.default_rng(3)
    items = rng.standard_normal((1500, 24)).astype(np.float32)
    queries = rng.standard_normal((9, 24)).astype(np.float32)
    exclude = sp.random(9, 1500, density=0.2, format="csr", random_state=4)
    allow = np.flatnonzero(rng.random(1500) < 0.7)
    index = recfuse.ItemIndex(items, storage=storage, backend="cpu")
    ids, _ = index.search(queries, 17, exclude=exclude, allow=allow)
    mask = np.zeros(1500, bool)
    mask[allow] = True
    want, _ = reference.topk(queries, items, 17, exclude=exclude, mask=mask)
    np.testing.assert_array_equal(ids, want)


# ------------------------------------------------------------------ under the sanitized build

_SANITIZED = os.environ.get("RECFUSE_SANITIZED_DIR", "")


def _sanitized_run(code: str) -> subprocess.CompletedProcess:
    libs = [subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                           check=True).stdout.strip() for name in ("libasan.so", "libubsan.so")]
    env = {**os.environ,
           "LD_PRELOAD": ":".join(libs),
           "PYTHONPATH": f"{_SANITIZED}/site:{_SANITIZED}/pkg",
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:allocator_may_return_null=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.skipif(not (_SANITIZED and os.path.isdir(os.path.join(_SANITIZED, "pkg", "recfuse"))),
                    reason="needs a sanitized build: RECFUSE_SANITIZED_DIR=<ASAN_DIR of "
                           "tools/sanitize.sh>")
def test_mlp_constructor_is_clean_under_asan():
    result = _sanitized_run(
        "import numpy as np, recfuse\n"
        "assert recfuse.__file__.startswith(%r), recfuse.__file__\n"
        "m = recfuse.MLPScorer([(np.ones((1, 8), np.float32), None, 'identity')], backend='cpu')\n"
        "print(float(m.score(np.ones((1, 8), np.float32))[0]))\n" % _SANITIZED)
    assert "AddressSanitizer" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "8.0"

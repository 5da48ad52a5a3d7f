"""The SGD backend contract: every backend's svd_epoch, svdpp_epoch and bpr_epoch against
recfuse.reference over the ratings in block order, for any grid, thread count and SIMD level.

The blocks of one diagonal share no user and no item, so a parallel epoch must equal the
sequential reference over the entries in the order the layout stores them. Sums may be
vectorised in the native kernels, so the comparison is up to rounding: float64 to 1e-10,
float32 to 1e-4, relative to the size of the values (one epoch from a fixed start, with
learning rates that keep the updates contracting). BPR's negatives are integers drawn from
the shared splitmix64 streams: they must be identical.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from recfuse._backend import resolve_backend
from recfuse._sgd.common import Pattern, make_blocks

TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
from conftest import backend_params, run_python

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
SGD_BACKENDS = backend_params(("cpu", "numba", "numpy"), family="sgd")
# Funk SVD has a CuPy kernel too (the block schedule, one warp per block).
SVD_BACKENDS = backend_params(("cpu", "numba", "cupy", "numpy"), family="sgd")


class Problem:
    """Ratings cut into blocks, a starting model and rates, in one dtype."""

    def __init__(self, users, items, ratings, n_users, n_items, k, grid, seed, dtype):
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.n_users, self.n_items = n_users, n_items
        self.blocks = make_blocks(users, items, n_users, n_items, grid, rng)
        self.ratings = np.ascontiguousarray(np.asarray(ratings)[self.blocks.order], dtype=self.dtype)
        self.mu = float(np.mean(ratings)) if len(ratings) else 0.0
        self.start = {
            "bu": rng.normal(0, 0.1, n_users), "bi": rng.normal(0, 0.1, n_items),
            "P": rng.normal(0, 0.3, (n_users, k)), "Q": rng.normal(0, 0.3, (n_items, k)),
            "Y": rng.normal(0, 0.3, (n_items, k)),
        }
        self.start = {name: a.astype(self.dtype) for name, a in self.start.items()}
        self.lr = tuple(float(v) for v in rng.uniform(0.002, 0.03, 5))
        self.reg = tuple(float(v) for v in rng.uniform(0.0, 0.2, 5))
        self.implicit = Pattern.from_pairs(users, items, n_users, n_items)

    def sort_by_user(self):
        """Re-lay the ratings user-major in one block (the SVDpp layout)."""
        order = np.argsort(self.blocks.users, kind="stable")
        self.blocks = make_blocks(self.blocks.users, self.blocks.items, self.n_users,
                                  self.n_items, 1, np.random.default_rng(0), order=order)
        self.ratings = np.ascontiguousarray(self.ratings[order])

    def fresh(self, *names):
        return [self.start[name].copy() for name in names]


@st.composite
def problems(draw, dtype, max_users=9, max_items=8, max_ratings=60):
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    n = draw(st.integers(0, max_ratings))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n))
    ratings = draw(st.lists(st.sampled_from([1.0, 5.0, 0.5, 10.0]) | st.floats(-5, 10, width=32),
                            min_size=n, max_size=n))
    return Problem(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64),
                   np.array(ratings), n_users, n_items, k=draw(st.integers(1, 21)),
                   grid=draw(st.integers(1, 4)), seed=draw(st.integers(0, 2**32 - 1)),
                   dtype=dtype)


def assert_close(got, expected, dtype):
    for g, e in zip(got, expected):
        assert g.dtype == dtype
        scale = max(1.0, float(np.abs(e).max()) if e.size else 1.0)
        np.testing.assert_allclose(g, e, rtol=0, atol=TOLERANCE[np.dtype(dtype)] * scale)


def run_svd(module, p: Problem, biased=True, threads=2):
    bu, bi, P, Q = p.fresh("bu", "bi", "P", "Q")
    module.svd_epoch(p.blocks, p.ratings, p.mu if biased else 0.0, bu, bi, P, Q, p.lr, p.reg,
                     biased, threads)
    return bu, bi, P, Q


def run_svdpp(module, p: Problem):
    bu, bi, P, Q, Y = p.fresh("bu", "bi", "P", "Q", "Y")
    module.svdpp_epoch(p.blocks, p.ratings, p.mu, bu, bi, P, Q, Y, p.implicit, p.lr, p.reg)
    return bu, bi, P, Q, Y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", SVD_BACKENDS)
@given(data=st.data(), biased=st.booleans())
def test_svd_epoch_matches_reference(backend, dtype, data, biased):
    p = data.draw(problems(dtype))
    got = run_svd(resolve_backend(backend, "sgd"), p, biased)
    s = p.start
    expected = reference.svd_sgd_epoch(p.blocks.users, p.blocks.items, p.ratings,
                                       p.mu if biased else 0.0, s["bu"], s["bi"], s["P"], s["Q"],
                                       lr=p.lr[:4], reg=p.reg[:4], biased=biased)
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", SGD_BACKENDS)
@given(data=st.data(), user_major=st.booleans())
def test_svdpp_epoch_matches_reference(backend, dtype, data, user_major):
    # Any order: user-major (one pass per user, what SVDpp uses) or block order (passes of
    # one or a few ratings).
    p = data.draw(problems(dtype))
    if user_major:
        p.sort_by_user()
    got = run_svdpp(resolve_backend(backend, "sgd"), p)
    s = p.start
    expected = reference.svdpp_sgd_epoch(
        p.blocks.users, p.blocks.items, p.ratings, p.mu, s["bu"], s["bi"], s["P"], s["Q"], s["Y"],
        p.implicit.to_scipy(p.n_items), lr=p.lr, reg=p.reg)
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", SGD_BACKENDS)
@given(data=st.data(), max_tries=st.integers(1, 8))
def test_bpr_epoch_matches_reference(backend, dtype, data, max_tries):
    p = data.draw(problems(dtype))
    seen = p.implicit
    rows = np.repeat(np.arange(p.n_users), np.diff(seen.indptr))
    blocks = make_blocks(rows, seen.indices, p.n_users, p.n_items, p.blocks.grid,
                         np.random.default_rng(3))
    P, Q, b = p.fresh("P", "Q", "bi")
    negatives = np.zeros(blocks.users.size, dtype=np.int32)
    seed = 2**63 + 12345  # seeds use all 64 bits
    skipped = resolve_backend(backend, "sgd").bpr_epoch(blocks, seen, P, Q, b, p.lr[0], p.reg[0],
                                                        seed, max_tries, negatives, 2)
    expected_negatives = reference.bpr_sample_negatives(
        blocks.users, blocks.offsets, blocks.grid, seen.to_scipy(p.n_items), blocks.bin_items,
        blocks.bin_offsets, seed, max_tries)
    np.testing.assert_array_equal(negatives, expected_negatives)
    assert skipped == int((negatives < 0).sum())
    s = p.start
    expected = reference.bpr_sgd_epoch(blocks.users, blocks.items, negatives, s["P"], s["Q"],
                                       s["bi"], lr=p.lr[0], reg=p.reg[0],
                                       order=np.flatnonzero(negatives >= 0))
    assert_close((P, Q, b), expected, dtype)


def larger_problem(dtype, k=32, grid=6):
    rng = np.random.default_rng(11)
    users, items = rng.integers(0, 300, 6000), rng.integers(0, 200, 6000)
    ratings = rng.integers(1, 6, 6000).astype(float)
    return Problem(users, items, ratings, 300, 200, k=k, grid=grid, seed=5, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", [b for b in SGD_BACKENDS if b.values[0] != "numpy"])
def test_same_result_for_any_thread_count(backend, dtype):
    module = resolve_backend(backend, "sgd")
    p = larger_problem(dtype)
    results = [run_svd(module, p, threads=t) for t in (1, 2, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def _scatter(trained, rows_at):
    """Rows trained under renumbered ids back in the original ids (row t is id rows_at[t])."""
    out = np.empty_like(trained)
    out[rows_at] = trained
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", SGD_BACKENDS)
def test_renumbered_blocks_train_the_same_model(backend, dtype):
    """Models train on users and items renumbered bin by bin (Blocks.renumbered); mapped
    back, the epoch must be the one the original ids give, bit for bit, and BPR must draw
    the same negatives."""
    module = resolve_backend(backend, "sgd")
    p = larger_problem(dtype, k=20, grid=5)
    b = p.blocks
    r, U, I = b.renumbered(), b.bin_users, b.bin_items
    np.testing.assert_array_equal(U[r.users], b.users)
    np.testing.assert_array_equal(I[r.items], b.items)
    bu, bi, P, Q = p.fresh("bu", "bi", "P", "Q")
    module.svd_epoch(b, p.ratings, p.mu, bu, bi, P, Q, p.lr, p.reg, True, 2)
    moved = [np.ascontiguousarray(a[rows]) for a, rows in zip(p.fresh("bu", "bi", "P", "Q"),
                                                              (U, I, U, I))]
    module.svd_epoch(r, p.ratings, p.mu, *moved, p.lr, p.reg, True, 2)
    for got, rows, expected in zip(moved, (U, I, U, I), (bu, bi, P, Q)):
        np.testing.assert_array_equal(_scatter(got, rows), expected)

    seen = p.implicit
    rows = np.repeat(np.arange(p.n_users), np.diff(seen.indptr))
    pairs = make_blocks(rows, seen.indices, p.n_users, p.n_items, 4, np.random.default_rng(3))
    r, U, I = pairs.renumbered(), pairs.bin_users, pairs.bin_items
    P, Q, bias = p.fresh("P", "Q", "bi")
    negatives = np.zeros(pairs.users.size, dtype=np.int32)
    module.bpr_epoch(pairs, seen, P, Q, bias, p.lr[0], p.reg[0], 99, 3, negatives, 2)
    moved = [np.ascontiguousarray(a[rows]) for a, rows in zip(p.fresh("P", "Q", "bi"), (U, I, I))]
    renumbered_negatives = np.zeros_like(negatives)
    module.bpr_epoch(r, seen.permuted(U, I), *moved, p.lr[0], p.reg[0], 99, 3,
                     renumbered_negatives, 2)
    drawn = renumbered_negatives >= 0
    np.testing.assert_array_equal(drawn, negatives >= 0)
    np.testing.assert_array_equal(I[renumbered_negatives[drawn]], negatives[drawn])
    for got, rows, expected in zip(moved, (U, I, I), (P, Q, bias)):
        np.testing.assert_array_equal(_scatter(got, rows), expected)


def test_epoch_threads_keeps_the_faster_count_and_rechecks():
    from recfuse._sgd.common import EpochThreads

    fixed = EpochThreads(3, available=8)
    assert [fixed.next() for _ in range(3)] == [3, 3, 3]
    assert EpochThreads(0, available=1).next() == 0  # one CPU: the kernel's own choice
    def run(tuner, seconds, epochs, ran):
        for _ in range(epochs):
            threads = tuner.next()
            ran.append(threads)
            tuner.record(threads, seconds[threads])

    close = []  # four threads a little faster: two rounds of trials
    run(EpochThreads(0, available=4), {4: 1.0, 1: 1.2}, 6, close)
    assert close == [4, 1, 4, 1, 4, 4]
    auto = EpochThreads(0, available=4)
    seconds = {4: 1.0, 1: 3.0}  # four threads clearly faster: one round ...
    ran = []
    run(auto, seconds, 20, ran)
    assert ran[:2] == [4, 1]
    assert ran[2:16] == [4] * 14 and ran[16] == 1  # ... and the other is timed again at 16
    run(auto, {4: 9.0, 1: 3.0}, 4, ran)  # the machine gets busy: four threads now lose
    assert ran[-1] == 1
    short = []  # a 20-epoch fit: no recheck at 16, three epochs before the end
    run(EpochThreads(0, available=4, total=20), seconds, 20, short)
    assert short == [4, 1] + [4] * 18
    longer = []  # 30 epochs: the recheck at 16 has 13 epochs after it
    run(EpochThreads(0, available=4, total=30), seconds, 30, longer)
    assert longer[16] == 1 and longer.count(1) == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_simd_level_and_fixed_width_matches_the_reference(dtype):
    module = resolve_backend("cpu", "sgd")
    from recfuse import _core

    initial = _core.simd_level()
    try:
        # the fixed-width kernels (24, 104, 112: the widths fits pad 20 and 100 to), the
        # whole-vector one (48, 96, 256; 24 floats) and the general one (37)
        for k in (16, 20, 24, 32, 48, 64, 96, 100, 104, 112, 128, 256, 37):
            p = larger_problem(dtype, k=k, grid=3)
            s = p.start
            expected = reference.svd_sgd_epoch(p.blocks.users, p.blocks.items, p.ratings, p.mu,
                                               s["bu"], s["bi"], s["P"], s["Q"], lr=p.lr[:4],
                                               reg=p.reg[:4])
            for level in _core.supported_simd_levels():
                _core.set_simd_level(level)
                assert_close(run_svd(module, p), expected, dtype)
    finally:
        _core.set_simd_level(initial)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_items", [200, 20_000], ids=["seen-as-bits", "seen-searched"])
def test_bpr_every_simd_level_and_fixed_width_matches_the_reference(dtype, n_items):
    """The native BPR epoch groups neighbouring pairs that share no row, draws the negatives in
    batches and answers "seen?" from bits (small catalogues) or by binary search (large ones):
    every width and level must still give the reference's negatives and epoch. Users repeat
    (300 of them for 6000 pairs), so groups are often cut short; popular items too."""
    module = resolve_backend("cpu", "sgd")
    from recfuse import _core

    rng = np.random.default_rng(8)
    users = rng.integers(0, 300, 6000)
    items = np.minimum(rng.pareto(1.0, 6000) * 20, n_items - 1).astype(np.int64)
    seen = Pattern.from_pairs(users, items, 300, n_items)
    rows = np.repeat(np.arange(300), np.diff(seen.indptr))
    blocks = make_blocks(rows, seen.indices, 300, n_items, 3, rng)
    seed = 2**64 - 99
    initial = _core.simd_level()
    try:
        # the fixed-width kernels (24, 104, 112: the widths fits pad 20 and 100 to) and the
        # general one (37, and the padded widths between the fixed ones: 48, 96, 256)
        for k in (16, 20, 24, 32, 48, 64, 96, 100, 104, 112, 128, 256, 37):
            P = rng.normal(0, 0.3, (300, k)).astype(dtype)
            Q = rng.normal(0, 0.3, (n_items, k)).astype(dtype)
            b = rng.normal(0, 0.1, n_items).astype(dtype)
            expected_negatives = reference.bpr_sample_negatives(
                blocks.users, blocks.offsets, 3, seen.to_scipy(n_items), blocks.bin_items,
                blocks.bin_offsets, seed, 3)
            expected = reference.bpr_sgd_epoch(blocks.users, blocks.items, expected_negatives, P,
                                               Q, b, lr=0.05, reg=0.02,
                                               order=np.flatnonzero(expected_negatives >= 0))
            for level in _core.supported_simd_levels():
                _core.set_simd_level(level)
                got = P.copy(), Q.copy(), b.copy()
                negatives = np.empty(blocks.users.size, dtype=np.int32)
                module.bpr_epoch(blocks, seen, *got, 0.05, 0.02, seed, 3, negatives, 2)
                np.testing.assert_array_equal(negatives, expected_negatives)
                assert_close(got, expected, dtype)
    finally:
        _core.set_simd_level(initial)


def test_native_kernels_reject_inconsistent_arrays():
    from recfuse import _core

    p = larger_problem(np.float64)
    bu, bi, P, Q = p.fresh("bu", "bi", "P", "Q")
    b = p.blocks
    args = dict(users=b.users, items=b.items, ratings=p.ratings, offsets=b.offsets, grid=b.grid,
                global_mean=3.0, user_bias=bu, item_bias=bi, P=P, Q=Q, lr=(0.01,) * 5,
                reg=(0.02,) * 5, biased=True)
    with pytest.raises(ValueError, match="offsets must have"):
        _core.svd_epoch(**{**args, "grid": b.grid + 1})
    with pytest.raises(ValueError, match="Q must be 2-d with 32 columns"):
        _core.svd_epoch(**{**args, "Q": np.zeros((200, 31))})
    with pytest.raises(ValueError, match="user_bias must have shape"):
        _core.svd_epoch(**{**args, "user_bias": np.zeros(3)})
    bad_users = b.users.copy()
    bad_users[7] = 300
    with pytest.raises(ValueError, match="outside"):
        _core.svd_epoch(**{**args, "users": bad_users})
    with pytest.raises(TypeError):
        _core.svd_epoch(**{**args, "P": P.astype(np.float32)})  # no silent conversion
    np.testing.assert_array_equal(P, p.start["P"])  # nothing ran



@pytest.mark.parametrize("backend", backend_params(("numba",), family="sgd"))
def test_numba_fits_compile_before_they_time_their_epochs(backend):
    """EpochThreads times the first epochs to choose a thread count: a JIT backend's compile
    (or load from its disk cache) must happen before, in ``warm_up``, with the very types the
    epochs use (no second compile in them). Timed, it made the first epoch on all cores look
    hundreds of times slower, and fits of under 32 epochs kept one thread. A fresh process:
    this one's kernels may be compiled already."""
    code = (
        "import numpy as np, scipy.sparse as sp, recfuse\n"
        "from recfuse._sgd import common, numba_backend\n"
        "kernels = numba_backend._kernels()\n"
        "def compiled():\n"
        "    return [len(f.signatures) for f in (kernels.svd, kernels.svdpp, kernels.bpr)]\n"
        "seen, run = [], common.EpochThreads.run\n"
        "common.EpochThreads.run = lambda self, epoch: (seen.append(compiled()), run(self, epoch))[1]\n"
        "users, items, ratings = [0, 1, 2, 0], [0, 1, 2, 2], [1.0, 2.0, 3.0, 4.0]\n"
        "recfuse.SVD(factors=2, epochs=1, backend='numba').fit(users, items, ratings)\n"
        "recfuse.SVDpp(factors=2, epochs=1, backend='numba').fit(users, items, ratings)\n"
        "recfuse.BPR(factors=2, iterations=1, backend='numba').fit(\n"
        "    sp.csr_matrix((ratings, (users, items)), shape=(3, 3)))\n"
        "seen.append(compiled())\n"
        "assert seen == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]], seen\n"
    )
    run_python(code)

def test_auto_passes_over_backends_without_the_needed_kernel(monkeypatch):
    """A backend module may define only some of its family's functions (the CUDA SGD module
    runs SVD only): "auto" skips it for the others, and asking for it by name says why."""
    import types

    from recfuse import _backend

    real_probe = _backend._probe
    svd_only = types.SimpleNamespace(NAME="cuda", svd_epoch=lambda *args: None)

    def probe(name, family="als"):
        if name == "cuda" and family == "sgd":
            return svd_only, _backend.BackendInfo("cuda", True, "SVD only (a stand-in)")
        return real_probe(name, family)

    monkeypatch.setattr(_backend, "_probe", probe)
    assert resolve_backend("auto", "sgd", needs="svd_epoch") is svd_only
    assert resolve_backend("auto", "sgd", needs="svdpp_epoch").NAME in ("cpu", "numba", "numpy")
    with pytest.raises(RuntimeError, match=r"'cuda' has no bpr_epoch kernel.*'numpy'"):
        resolve_backend("cuda", "sgd", needs="bpr_epoch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 16, 20, 100])
def test_training_rows_are_whole_aligned_lines_for_the_native_backend(dtype, k):
    from types import SimpleNamespace

    from recfuse._sgd.common import training_rows

    table = np.arange(7 * k, dtype=dtype).reshape(7, k)
    rows = np.array([3, 0, 6, 6], dtype=np.int32)
    out = training_rows(table, rows, SimpleNamespace(ROW_ALIGNMENT=64))
    per_line = 64 // np.dtype(dtype).itemsize
    assert out.shape == (4, -(-k // per_line) * per_line) and out.dtype == dtype
    assert out.ctypes.data % 64 == 0 and out.strides[0] % 64 == 0
    np.testing.assert_array_equal(out[:, :k], table[rows])
    assert not out[:, k:].any()
    plain = training_rows(table, rows, SimpleNamespace())  # no ROW_ALIGNMENT: a plain copy
    assert plain.shape == (4, k) and plain.flags.c_contiguous
    np.testing.assert_array_equal(plain, table[rows])


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_trained_rows_in_id_order_is_the_scatter(dtype, data):
    """The end of a fit: a training buffer (row t is id rows_at[t]'s, padded or not) becomes
    the packed table in id order, in place (a view of the same memory) or copied where the
    padding is wide, for any permutation: fixed points, one long cycle, one row, none."""
    from types import SimpleNamespace

    from recfuse._sgd.common import trained_rows_in_id_order, training_rows

    n, k = data.draw(st.integers(0, 30)), data.draw(st.integers(0, 40))
    rows_at = np.array(data.draw(st.permutations(range(n))), dtype=np.int32)
    table = np.arange(n * k, dtype=dtype).reshape(n, k) - 7.5
    aligned = data.draw(st.booleans())
    trained = training_rows(table[rows_at], np.arange(n), SimpleNamespace(ROW_ALIGNMENT=64)
                            if aligned else SimpleNamespace())
    out = trained_rows_in_id_order(trained, rows_at, k)
    assert out.shape == (n, k) and out.dtype == dtype and out.flags.c_contiguous
    np.testing.assert_array_equal(out, table)
    if n * k:  # in place unless the padding would waste more than a quarter
        assert np.shares_memory(out, trained) == (4 * trained.shape[1] <= 5 * k)


def test_native_rows_in_id_order_rejects_a_non_permutation_and_moves_nothing():
    from recfuse import _core

    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    for rows_at in ([0, 1, 1, 3], [0, 1, 2, 4], [-1, 0, 1, 2]):
        with pytest.raises(ValueError, match="rows_at must be a permutation of 0..3"):
            _core.rows_in_id_order(data, 2, np.array(rows_at, dtype=np.int32))
        np.testing.assert_array_equal(data, np.arange(12, dtype=np.float32).reshape(4, 3))
    with pytest.raises(ValueError, match="one entry per row"):
        _core.rows_in_id_order(data, 2, np.arange(3, dtype=np.int32))
    with pytest.raises(ValueError, match="at least k = 4"):
        _core.rows_in_id_order(data, 4, np.arange(4, dtype=np.int32))


@given(data=st.data())
def test_native_pairs_pattern_is_scipys(data):
    """Pattern.from_pairs (native counting sorts) against scipy's CSR of the same pairs: rows
    and columns that never occur, repeated pairs, no pairs at all."""
    import scipy.sparse as sp

    n_rows, n_cols = data.draw(st.integers(0, 7)), data.draw(st.integers(0, 7))
    n = data.draw(st.integers(0, 40)) if n_rows and n_cols else 0
    rows = np.array(data.draw(st.lists(st.integers(0, max(n_rows - 1, 0)), min_size=n, max_size=n)),
                    dtype=np.int64)
    cols = np.array(data.draw(st.lists(st.integers(0, max(n_cols - 1, 0)), min_size=n, max_size=n)),
                    dtype=np.int64)
    got = Pattern.from_pairs(rows, cols, n_rows, n_cols)
    expected = sp.csr_matrix((np.ones(n), (rows, cols)), shape=(n_rows, n_cols))
    expected.sum_duplicates()
    assert got.indptr.dtype == np.int64 and got.indices.dtype == np.int32
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)


def test_native_pairs_pattern_rejects_ids_out_of_range():
    from recfuse import _core

    with pytest.raises(ValueError, match=r"pair 1 is \(3, 0\), outside 3 x 2"):
        _core.pairs_pattern(np.array([0, 3]), np.array([0, 0]), 3, 2)
    with pytest.raises(ValueError, match="one length"):
        _core.pairs_pattern(np.array([0, 1]), np.array([0]), 3, 2)


@pytest.mark.parametrize("backend", SGD_BACKENDS)
def test_a_diverging_bpr_fit_is_the_documented_error_whatever_numpys_error_mode(backend):
    # The numpy backend ran BPR's reference epoch under the caller's NumPy error mode:
    # np.seterr(all="raise") gave FloatingPointError and -W error a RuntimeWarning, where the
    # native and Numba backends gave BPR's "diverged" ValueError (SVD and SVD++:
    # test_svd_model.py).
    matrix = sp.random(50, 40, density=0.2, format="csr", random_state=0)
    for mode in ("raise", "warn"):
        with np.errstate(all=mode), warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="BPR diverged"):
                recfuse.BPR(factors=4, lr=1e30, backend=backend, random_state=0).fit(matrix)

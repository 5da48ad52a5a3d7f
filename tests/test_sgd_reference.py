"""The SGD reference epochs (recfuse.reference: Funk SVD, SVD++, BPR) checked against
scalar loops written from the update rules, Surprise's own per-rating SVD++ where the two
must agree, and finite-difference gradients for BPR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from recfuse import reference
from recfuse._sgd.common import Pattern, make_blocks

seeds = st.integers(0, 2**32 - 1)


@st.composite
def rating_problems(draw, max_users=6, max_items=5, max_ratings=25):
    """Ratings with repeated (user, item) pairs, users and items without ratings, and
    zero-length epochs; factors from a seed."""
    n_users = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    n = draw(st.integers(0, max_ratings))
    users = np.array(draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)), dtype=np.int64)
    items = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)), dtype=np.int64)
    ratings = np.array(draw(st.lists(st.sampled_from([1.0, 2.5, 5.0, -3.0, 10.0]) | st.floats(-5, 10),
                                     min_size=n, max_size=n)))
    k = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(seeds))
    P = rng.normal(0, 0.3, (n_users, k))
    Q = rng.normal(0, 0.3, (n_items, k))
    Y = rng.normal(0, 0.3, (n_items, k))
    bu = rng.normal(0, 0.1, n_users)
    bi = rng.normal(0, 0.1, n_items)
    order = rng.permutation(n)
    return users, items, ratings, bu, bi, P, Q, Y, order


RATES = st.tuples(*[st.floats(0.001, 0.05)] * 5)
REGS = st.tuples(*[st.floats(0.0, 0.5)] * 5)


@given(problem=rating_problems(), lr=RATES, reg=REGS, biased=st.booleans(), mu=st.floats(-2, 5))
def test_svd_epoch_matches_scalar_loop(problem, lr, reg, biased, mu):
    users, items, ratings, bu, bi, P, Q, _, order = problem
    got = reference.svd_sgd_epoch(users, items, ratings, mu, bu, bi, P, Q, lr=lr[:4], reg=reg[:4],
                                  biased=biased, order=order)
    bu, bi, P, Q = bu.tolist(), bi.tolist(), P.tolist(), Q.tolist()
    m = mu if biased else 0.0
    for t in order:
        u, i, r = users[t], items[t], ratings[t]
        dot = sum(P[u][f] * Q[i][f] for f in range(len(P[u])))
        err = r - (m + bu[u] + bi[i] + dot)
        if biased:
            bu[u] += lr[0] * (err - reg[0] * bu[u])
            bi[i] += lr[1] * (err - reg[1] * bi[i])
        for f in range(len(P[u])):
            puf, qif = P[u][f], Q[i][f]
            P[u][f] += lr[2] * (err * qif - reg[2] * puf)
            Q[i][f] += lr[3] * (err * puf - reg[3] * qif)
    for g, e in zip(got, (bu, bi, P, Q)):
        np.testing.assert_allclose(g, np.array(e), rtol=1e-12, atol=1e-12)


def test_svd_epoch_leaves_its_inputs_alone_and_keeps_dtype():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(3, 2)).astype(np.float32)
    Q = rng.normal(size=(2, 2)).astype(np.float32)
    before = P.copy(), Q.copy()
    out = reference.svd_sgd_epoch([0, 2], [1, 1], [4.0, 1.0], 3.0, np.zeros(3), np.zeros(2), P, Q,
                                  lr=0.01, reg=0.02)
    assert all(a.dtype == np.float32 for a in out)
    np.testing.assert_array_equal(P, before[0])
    np.testing.assert_array_equal(Q, before[1])
    with pytest.raises(ValueError, match="lr must be a number or 4 numbers"):
        reference.svd_sgd_epoch([0], [0], [1.0], 0, np.zeros(3), np.zeros(2), P, Q, lr=(1, 2), reg=0)


def surprise_svdpp_epoch(users, items, ratings, mu, bu, bi, P, Q, Y, order, lr, reg):
    """Surprise's SVD++ loop (matrix_factorization.pyx), for users whose N(u) is the set of
    items they rated."""
    bu, bi, P, Q, Y = (np.array(a, dtype=np.float64) for a in (bu, bi, P, Q, Y))
    N = {u: sorted(set(items[users == u].tolist())) for u in set(users.tolist())}  # all ratings
    for t in order:
        u, i, r = users[t], items[t], ratings[t]
        Iu = N[u]
        z = sum(Y[j] / math.sqrt(len(Iu)) for j in Iu)
        err = r - (mu + bu[u] + bi[i] + Q[i] @ (P[u] + z))
        bu[u] += lr[0] * (err - reg[0] * bu[u])
        bi[i] += lr[1] * (err - reg[1] * bi[i])
        p, q = P[u].copy(), Q[i].copy()
        P[u] = p + lr[2] * (err * q - reg[2] * p)
        Q[i] = q + lr[3] * (err * (p + z) - reg[3] * q)
        for j in Iu:
            Y[j] += lr[4] * (err * q / math.sqrt(len(Iu)) - reg[4] * Y[j])
    return bu, bi, P, Q, Y


@given(problem=rating_problems(max_users=5, max_items=5), lr=RATES, reg=REGS)
def test_svdpp_with_passes_of_one_rating_is_surprise(problem, lr, reg):
    # When no two consecutive ratings share a user every pass holds one rating, and the
    # definition is Surprise's per-rating SVD++ update exactly.
    users, items, ratings, bu, bi, P, Q, Y, order = problem
    keep = [t for n, t in enumerate(order) if n == 0 or users[t] != users[order[n - 1]]]
    keep = [t for n, t in enumerate(keep) if n == 0 or users[t] != users[keep[n - 1]]]
    implicit = Pattern.from_pairs(users, items, P.shape[0], Q.shape[0]).to_scipy(Q.shape[0])
    got = reference.svdpp_sgd_epoch(users, items, ratings, 3.0, bu, bi, P, Q, Y, implicit,
                                    lr=lr, reg=reg, order=keep)
    expected = surprise_svdpp_epoch(users, items, ratings, 3.0, bu, bi, P, Q, Y, keep, lr, reg)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


@given(problem=rating_problems(), lr=RATES, reg=REGS)
def test_svdpp_with_zero_implicit_factors_is_svd(problem, lr, reg):
    users, items, ratings, bu, bi, P, Q, Y, order = problem
    implicit = Pattern.from_pairs(users, items, P.shape[0], Q.shape[0]).to_scipy(Q.shape[0])
    lr_no_y = lr[:4] + (0.0,)
    got = reference.svdpp_sgd_epoch(users, items, ratings, 3.0, bu, bi, P, Q, np.zeros_like(Y),
                                    implicit, lr=lr_no_y, reg=reg, order=order)
    expected = reference.svd_sgd_epoch(users, items, ratings, 3.0, bu, bi, P, Q, lr=lr[:4],
                                       reg=reg[:4], order=order)
    for g, e in zip(got[:4], expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    assert not got[4].any()


@given(problem=rating_problems(max_users=4, max_items=4, max_ratings=12), lr=RATES, reg=REGS)
def test_svdpp_user_pass_is_surprises_updates_to_first_order(problem, lr, reg):
    # A pass of c ratings applies y_j ← (1 − a)^c y_j + lr g/√n once; Surprise applies
    # y_j += lr(e q/√n − reg y_j) after each rating, with z_u refreshed in between. With
    # each user's ratings together the two differ by second-order terms in lr.
    users, items, ratings, bu, bi, P, Q, Y, _ = problem
    order = np.argsort(users, kind="stable")
    implicit = Pattern.from_pairs(users, items, P.shape[0], Q.shape[0]).to_scipy(Q.shape[0])

    def gap(scale):
        rates = tuple(v * scale for v in lr)
        got = reference.svdpp_sgd_epoch(users, items, ratings, 3.0, bu, bi, P, Q, Y, implicit,
                                        lr=rates, reg=reg, order=order)
        expected = surprise_svdpp_epoch(users, items, ratings, 3.0, bu, bi, P, Q, Y, order,
                                        rates, reg)
        return max(float(np.abs(g - e).max(initial=0)) for g, e in zip(got, expected))

    # A hundred times smaller rates: a second-order gap shrinks about ten-thousandfold, a
    # first-order one only a hundredfold (the bound sits between, away from both).
    assert gap(0.01) <= gap(1.0) / 1000 + 1e-13


def test_bpr_step_is_gradient_ascent_on_log_sigmoid():
    rng = np.random.default_rng(4)
    P, Q, b = rng.normal(size=(2, 3)), rng.normal(size=(4, 3)), rng.normal(size=4)
    lr, reg = 1e-6, 0.3
    P1, Q1, b1 = reference.bpr_sgd_epoch([1], [0], [3], P, Q, b, lr=lr, reg=reg)

    def objective(p, qi, qj, bi, bj):
        x = p @ (qi - qj) + bi - bj
        return -math.log1p(math.exp(-x)) - reg / 2 * (p @ p + qi @ qi + qj @ qj + bi**2 + bj**2)

    theta = np.concatenate([P[1], Q[0], Q[3], [b[0], b[3]]])
    split = lambda v: (v[:3], v[3:6], v[6:9], v[9], v[10])  # noqa: E731
    gradient = np.array([
        (objective(*split(theta + h)) - objective(*split(theta - h))) / 2e-6
        for h in np.eye(theta.size) * 1e-6
    ])
    step = np.concatenate([P1[1] - P[1], Q1[0] - Q[0], Q1[3] - Q[3], [b1[0] - b[0], b1[3] - b[3]]])
    np.testing.assert_allclose(step / lr, gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(P1[0], P[0])  # untouched rows stay
    with pytest.raises(ValueError, match="same positive and negative"):
        reference.bpr_sgd_epoch([0], [2], [2], P, Q, b, lr=lr, reg=reg)
    big = reference.bpr_sgd_epoch([0], [0], [1], P * 1e3, Q * 1e3, b, lr=0.1, reg=0.0)
    assert all(np.isfinite(a).all() for a in big)  # σ(−x) never overflows


@given(seed=seeds, grid=st.integers(1, 3), max_tries=st.integers(1, 20), density=st.floats(0, 1))
def test_sampled_negatives_are_unseen_in_the_blocks_bin_and_reproducible(seed, grid, max_tries,
                                                                        density):
    rng = np.random.default_rng(seed)
    seen = sp.random(6, 7, density=density, format="csr", random_state=rng)
    seen.sort_indices()
    coo = seen.tocoo()
    blocks = make_blocks(coo.row, coo.col, 6, 7, grid, rng)
    args = (blocks.users, blocks.offsets, grid, seen, blocks.bin_items, blocks.bin_offsets, seed,
            max_tries)
    negatives = reference.bpr_sample_negatives(*args)
    np.testing.assert_array_equal(negatives, reference.bpr_sample_negatives(*args))
    dense = seen.toarray() != 0
    for block in range(grid * grid):
        s, r = divmod(block, grid)
        column_bin = blocks.bin_items[blocks.bin_offsets[(r + s) % grid]:blocks.bin_offsets[(r + s) % grid + 1]]
        for t in range(blocks.offsets[block], blocks.offsets[block + 1]):
            j, u = negatives[t], blocks.users[t]
            if j >= 0:
                assert j in column_bin and not dense[u, j]
            elif max_tries == 20 and not dense[u, column_bin].all():
                # possible but unlikely: every one of 20 draws hit a seen item
                assert dense[u, column_bin].mean() > 0.5


def test_make_blocks_schedules_disjoint_blocks_and_keeps_every_entry():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 50, 400), rng.integers(0, 30, 400)
    blocks = make_blocks(users, items, 50, 30, 4, np.random.default_rng(2))
    np.testing.assert_array_equal(np.sort(blocks.order), np.arange(400))
    np.testing.assert_array_equal(blocks.users, users[blocks.order])
    for s in range(4):  # the blocks of one diagonal share no user and no item
        seen_users, seen_items = set(), set()
        for r in range(4):
            b = s * 4 + r
            u = set(blocks.users[blocks.offsets[b]:blocks.offsets[b + 1]].tolist())
            i = set(blocks.items[blocks.offsets[b]:blocks.offsets[b + 1]].tolist())
            assert not (u & seen_users) and not (i & seen_items)
            seen_users |= u
            seen_items |= i
    single = make_blocks(users, items, 50, 30, 1, np.random.default_rng(2), shuffle=False)
    np.testing.assert_array_equal(single.order, np.arange(400))


@given(n=st.integers(0, 300), n_users=st.integers(1, 40), n_items=st.integers(1, 30),
       grid=st.integers(1, 9), shuffle=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_native_block_layout_equals_the_numpy_one(n, n_users, n_items, grid, shuffle, seed):
    """make_blocks lays entries out natively when recfuse._core is there (a stable counting
    sort) and with NumPy otherwise: the same blocks, order and offsets."""
    from recfuse._sgd import common

    if common._core is None:
        pytest.skip("recfuse._core is not importable")
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n).astype(np.int32)
    native = make_blocks(users, items, n_users, n_items, grid, np.random.default_rng(seed),
                         shuffle)
    native_module, common._core = common._core, None
    try:
        plain = make_blocks(users, items, n_users, n_items, grid, np.random.default_rng(seed),
                            shuffle)
    finally:
        common._core = native_module
    for name in ("users", "items", "offsets", "order", "bin_items", "bin_users"):
        np.testing.assert_array_equal(getattr(native, name), getattr(plain, name), err_msg=name)
        assert getattr(native, name).dtype == getattr(plain, name).dtype, name


def test_native_block_layout_does_not_depend_on_the_thread_count():
    """From 2^18 entries the native layout counts and places ranges of positions on several
    threads: any count gives the one-thread layout."""
    from recfuse._sgd import common

    if common._core is None:
        pytest.skip("recfuse._core is not importable")
    rng = np.random.default_rng(0)
    n = (1 << 18) + 37
    users, items, order = rng.integers(0, 5000, n), rng.integers(0, 3000, n), rng.permutation(n)
    user_bin, item_bin = rng.integers(0, 8, 5000), rng.integers(0, 8, 3000)
    one = common._core.sgd_block_layout(users, items, order, user_bin, item_bin, 8, num_threads=1)
    for threads in (2, 3):
        other = common._core.sgd_block_layout(users, items, order, user_bin, item_bin, 8,
                                              num_threads=threads)
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b)
    # Shuffled (blocks on several threads from 2^18 entries): NumPy's shuffle of the layout.
    shuffled = common._core.sgd_block_layout(users, items, order, user_bin, item_bin, 8,
                                             shuffle_seed=2**64 - 5)
    expected = [a.copy() for a in one[:3]]
    common.shuffle_blocks(2**64 - 5, one[3], *expected)
    for a, b in zip(shuffled[:3], expected):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(shuffled[3], one[3])
    for b in range(64):  # each block holds the same entries, reordered
        block = slice(one[3][b], one[3][b + 1])
        assert sorted(shuffled[2][block]) == sorted(one[2][block])

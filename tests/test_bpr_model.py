"""recfuse.BPR end to end: training equals the reference epochs with the shared negatives,
negatives are never seen items, same model for any thread count, recommend, persistence,
bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from conftest import wait_until
from recfuse import datasets, reference


@pytest.fixture(scope="module")
def data():
    return datasets.synthetic_implicit(200, 90, 3000, seed=4)


def test_negatives_are_unseen_and_training_improves_the_ranking(data):
    recorded = []
    from recfuse._sgd import cpu

    original = cpu.bpr_epoch

    def spy(blocks, seen, *args):
        skipped = original(blocks, seen, *args)
        recorded.append((blocks.users.copy(), args[-2].copy()))
        return skipped

    cpu.bpr_epoch = spy
    try:
        model = recfuse.BPR(factors=8, iterations=3, lr=0.05, random_state=0, backend="cpu")
        model.fit(data)
    finally:
        cpu.bpr_epoch = original
    dense = data.toarray() != 0
    for users, negatives in recorded:
        kept = negatives >= 0
        assert kept.mean() > 0.99
        assert not dense[users[kept], negatives[kept]].any(), "a seen item was used as a negative"
    # AUC on the training pairs: positives outrank random items after training
    scores = model.user_factors @ model.item_factors.T + model.item_bias
    assert np.mean([scores[u][dense[u]].mean() > scores[u][~dense[u]].mean()
                    for u in range(200) if dense[u].any() and (~dense[u]).any()]) > 0.8


def test_fit_is_the_reference_epochs(data):
    model = recfuse.BPR(factors=4, iterations=2, lr=0.05, reg=0.01, random_state=3, grid=3,
                        dtype=np.float64, backend="cpu")
    model.fit(data)
    # Rebuild what fit drew from its generator, in the same order.
    from recfuse._sgd.common import make_blocks

    rng = np.random.default_rng(3)
    P = (rng.random((200, 4)) - 0.5) / 4
    Q = (rng.random((90, 4)) - 0.5) / 4
    bias = np.zeros(90)
    coo = data.tocoo()
    blocks = make_blocks(coo.row, coo.col, 200, 90, 3, rng)
    seed = int(rng.integers(0, 2**63))
    for iteration in range(2):
        negatives = reference.bpr_sample_negatives(blocks.users, blocks.offsets, 3, data,
                                                   blocks.bin_items, blocks.bin_offsets,
                                                   seed + iteration, 100)
        P, Q, bias = reference.bpr_sgd_epoch(blocks.users, blocks.items, negatives, P, Q, bias,
                                             lr=0.05, reg=0.01, order=np.flatnonzero(negatives >= 0))
    np.testing.assert_allclose(model.user_factors, P, atol=1e-10)
    np.testing.assert_allclose(model.item_factors, Q, atol=1e-10)
    np.testing.assert_allclose(model.item_bias, bias, atol=1e-10)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("factors", [8, 100])  # native rows padded to 8 and 104 doubles
def test_same_model_for_any_thread_count_and_backend(data, backend, factors):
    kwargs = dict(factors=factors, iterations=2, random_state=1, grid=4, dtype=np.float64)
    # 3 threads split the 4 row bins unevenly; the pipelined schedule must not care
    runs = [recfuse.BPR(num_threads=t, backend="cpu", **kwargs).fit(data) for t in (1, 2, 3, 4, 0)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].user_factors, other.user_factors)
        np.testing.assert_array_equal(runs[0].item_factors, other.item_factors)
    other = recfuse.BPR(backend=backend, **kwargs).fit(data)
    np.testing.assert_allclose(other.item_factors, runs[0].item_factors, atol=1e-10)


def test_a_user_who_saw_every_item_is_skipped_not_trained_on_seen_items():
    matrix = sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32))
    skipped = []
    recfuse.BPR(factors=2, iterations=3, grid=1, max_tries=5, random_state=0).fit(
        matrix, callback=lambda it, s: skipped.append(s))
    assert skipped == [3, 3, 3]  # user 0's three positives have no unseen negative


def test_recommend_save_load_and_bad_input(tmp_path, data):
    model = recfuse.BPR(factors=8, iterations=3, random_state=0).fit(data)
    ids, scores = model.recommend(5, k=10)
    assert not set(data[5].indices) & set(ids.tolist()) and np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, model.user_factors[5] @ model.item_factors[ids].T
                               + model.item_bias[ids], rtol=1e-5)
    model.save(tmp_path / "bpr.npz")
    loaded = recfuse.load(tmp_path / "bpr.npz")
    np.testing.assert_array_equal(loaded.recommend([1, 2], k=5)[0], model.recommend([1, 2], k=5)[0])
    before = model.user_factors.copy()
    with pytest.raises(TypeError, match="CSR"):
        model.fit(data.toarray())
    with pytest.raises(ValueError, match="finite"):
        bad = data.copy()
        bad.data[0] = np.nan
        model.fit(bad)
    np.testing.assert_array_equal(model.user_factors, before)
    for kwargs, message in [({"lr": 0.0}, "lr must be > 0"), ({"max_tries": 0}, "max_tries"),
                            ({"reg": -1}, "reg must be >= 0")]:
        with pytest.raises(ValueError, match=message):
            recfuse.BPR(**kwargs)
    with pytest.raises(ValueError, match="user_ids must be <"):
        model.recommend(10**6)


def test_save_writes_the_tables_of_one_fit(tmp_path):
    """save read the seen matrix, then (after a call) the factor tables: a fit on other data
    landing in between (here inside get_params, as another thread's would) gave a file mixing
    two fits, which load refused."""
    first = datasets.synthetic_implicit(60, 40, 500, seed=1)
    other = datasets.synthetic_implicit(45, 30, 400, seed=2)

    class FitLands(recfuse.BPR):
        def get_params(self):
            if self.__dict__.pop("land", False):
                self.fit(other)
            return super().get_params()

    model = FitLands(factors=4, iterations=1, random_state=0, backend="cpu").fit(first)
    expected = (model.user_factors, model.item_factors, model.item_bias)
    model.land = True
    model.save(tmp_path / "model.npz")
    loaded = recfuse.load(tmp_path / "model.npz")
    for got, want in zip((loaded.user_factors, loaded.item_factors, loaded.item_bias), expected):
        np.testing.assert_array_equal(got, want)
    assert (loaded._seen != first).nnz == 0


def test_recommend_reads_the_tables_of_one_fit():
    """recommend read the user table, then the item table and biases: another thread's fit
    landing in between answered with one fit's users against another's items."""
    first = datasets.synthetic_implicit(60, 40, 500, seed=1)
    other = datasets.synthetic_implicit(60, 30, 400, seed=2)

    class FitLands(recfuse.BPR):
        """The n-th read of user_factors after arming (``land = n``) starts a fit on other
        data in another thread and gives it a moment to land."""

        @property
        def user_factors(self):
            table = self.__dict__["_P"]
            self.__dict__["land"] = self.__dict__.get("land", 0) - 1
            if self.__dict__["land"] == 0:
                refit = threading.Thread(target=self.fit, args=(other,))
                refit.start()
                refit.join(timeout=0.5)  # lands unless recommend holds the writer lock
                self.__dict__["refit"] = refit
            return table

        @user_factors.setter
        def user_factors(self, value):
            self.__dict__["_P"] = value

    settings = dict(factors=4, iterations=1, random_state=0, backend="cpu")
    answers = [recfuse.BPR(**settings).fit(data).recommend([0, 1, 2], k=5)
               for data in (first, other)]  # before or after the refit: both are consistent
    model = FitLands(**settings).fit(first)
    model.land = 2  # _require_fitted reads it first; then the read that takes the tables
    got = model.recommend([0, 1, 2], k=5)
    model.refit.join()
    assert any(all(np.array_equal(a, b) for a, b in zip(got, answer)) for answer in answers)



def test_a_copy_taken_while_a_fit_publishes_holds_one_fit():
    """copy.deepcopy / pickle (__getstate__) copied the attributes without the writer lock
    that fit publishes its four tables under, one by one: a copy taken by another thread
    between two of them held the new fit's users with the old fit's items and bias."""
    import copy

    first = datasets.synthetic_implicit(60, 40, 500, seed=1)
    other = datasets.synthetic_implicit(60, 40, 400, seed=2)
    waiting = threading.Event()

    class Announcing:
        """The writer lock, saying when a thread other than its holder waits for it."""

        def __init__(self):
            self.lock, self.owner = threading.Lock(), None

        def __enter__(self):
            if self.owner is not None and self.owner != threading.get_ident():
                waiting.set()
            self.lock.acquire()
            self.owner = threading.get_ident()

        def __exit__(self, *exc):
            self.owner = None
            self.lock.release()

    copies, copiers = [], []

    class CopiedMidPublication(recfuse.BPR):
        armed = False

        def __setattr__(self, name, value):
            if name == "item_factors" and CopiedMidPublication.armed:  # users already set
                CopiedMidPublication.armed = False
                copier = threading.Thread(target=lambda: copies.append(copy.deepcopy(self)))
                copier.start()
                # the copy is taken now, or waits for the lock (then: after the publication)
                assert wait_until(lambda: copies or waiting.is_set())
                copiers.append(copier)
            object.__setattr__(self, name, value)

    settings = dict(factors=4, iterations=1, random_state=0, backend="cpu")
    fits = [recfuse.BPR(**settings).fit(data) for data in (first, other)]
    model = CopiedMidPublication(**settings).fit(first)
    model._lock = Announcing()
    CopiedMidPublication.armed = True
    model.fit(other)
    copiers[0].join(30)
    (copied,) = copies
    tables = ("user_factors", "item_factors", "item_bias")
    assert any(all(np.array_equal(getattr(copied, t), getattr(fit, t)) for t in tables)
               for fit in fits), [[np.array_equal(getattr(copied, t), getattr(fit, t))
                                   for t in tables] for fit in fits]


def _rewritten(path, **arrays):
    """The model file at ``path`` with ``arrays`` replacing (or adding) members."""
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    members.update(arrays)
    np.savez(path, **members)
    return path


@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_whose_item_bias_is_not_finite_is_refused_at_load(tmp_path, data, mmap):
    """The item bias was cast unchecked: NaN, or float64 values past float32's range, loaded
    and every later recommend failed."""
    model = recfuse.BPR(factors=4, iterations=1, random_state=0).fit(data)
    n_items = model.item_factors.shape[0]
    for bias, message in [(np.full(n_items, np.nan, np.float32), f"got {n_items} NaN/inf"),
                          (np.full(n_items, 1e300), "beyond its range"),
                          (np.zeros((n_items, 1), np.float32), f"must hold {n_items} numbers")]:
        path = tmp_path / "bpr.npz"
        model.save(path)
        with pytest.raises(ValueError, match=f"cannot be loaded: item_bias .*{message}"):
            recfuse.load(_rewritten(path, item_bias=bias), mmap=mmap)


def test_save_refuses_assigned_tables_that_load_would_refuse(tmp_path, data):
    """Tables assigned by hand (another width than ``factors``, other row counts than the
    seen matrix, non-finite values) were written, and the file then failed to load."""
    model = recfuse.BPR(factors=4, iterations=1, random_state=0).fit(data)
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    path = tmp_path / "bpr.npz"
    for name, table, message in [
            ("user_factors", np.ones((n_users, 6), np.float32), "must have 4 columns"),
            ("item_factors", np.ones((n_items + 2, 4), np.float32),
             f"for {n_users} users and {n_items + 2} items"),
            ("user_factors", np.full((n_users, 4), np.inf, np.float32), "finite"),
            ("item_bias", np.zeros(n_items + 1, np.float32), "item_bias must hold"),
            ("item_bias", np.full(n_items, np.nan, np.float32), "item_bias must hold finite")]:
        fresh = recfuse.BPR(factors=4, iterations=1, random_state=0).fit(data)
        setattr(fresh, name, table)
        with pytest.raises(ValueError, match=f"cannot save: .*{message}"):
            fresh.save(path)
        assert not os.listdir(tmp_path)  # nothing written
    model.user_factors = model.user_factors.astype(np.float64)  # any real table load takes
    model.save(path)
    np.testing.assert_array_equal(recfuse.load(path).user_factors,
                                  model.user_factors.astype(np.float32))


def test_recommend_with_user_items_in_the_k_place_says_so(data):
    """recommend(user, user_items[user]) is implicit's order; BPR's second argument is k (as
    for every model but ALS): the message says where the rows go."""
    model = recfuse.BPR(factors=4, iterations=1, random_state=0).fit(data)
    for rows in (data[3], recfuse.Interactions.from_matrix(data[3])):
        with pytest.raises(TypeError, match=r"second argument is k .*user_items="):
            model.recommend(3, rows)
    with pytest.raises(TypeError, match="filter_seen must be a bool"):
        model.recommend(3, 5, data[3])


def test_one_table_assigned_by_hand_is_not_a_fitted_model():
    # item_factors still None: repr says so, and every query is refused as not fitted (it
    # used to fail on None inside recommend, or with a dtype error in similar_items)
    model = recfuse.BPR(factors=2)
    model.user_factors = np.ones((3, 2), dtype=np.float32)
    assert repr(model).startswith("BPR(") and "fitted on" not in repr(model)
    for call in (lambda: model.recommend(0), lambda: list(model.recommend_all(2)),
                 lambda: model.similar_items(0)):
        with pytest.raises(RuntimeError, match="not fitted"):
            call()

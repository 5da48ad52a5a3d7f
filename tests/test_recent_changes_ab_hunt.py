"""Review hunt over the last 65 commits (b058ea7..HEAD, suffix -ab): the exact CPU top-k
(64-bit rank keys, the sampled-pivot cut with its exact fallback, panel ranges handed out in
turn, whole-panel-row steps for 1-2 queries, bfloat16 storage and storage="auto" taking the
query count), LargeArray / huge pages, ALS trained at padded widths (32/64/128) with the
tables narrowed in place (take_factors), compat.implicit's refused fits, and the public
path arguments of Recommender after the annotations became real (60891df).

The contract used here:

* recfuse.topk / ItemIndex.search (retrieval.py docstrings; recfuse.reference.topk): each
  row holds the min(k, qualifying) best items, scores descending, ties to the smaller id,
  -0.0 equal to 0.0 (and its sign kept: the score is the item's score), NaN and -inf never
  returned, padding -1 / -inf; any num_threads and SIMD level give one answer;
  storage="bfloat16" and "auto" give storage="native"'s ids and scores bit for bit; a query
  alone gives its row of a batch.
* ItemIndex.storage_for(k, queries): "queries" is a count (>= 0, not a bool); a search
  returns at most n, so k past n reads what k = n reads; where the CPU widens bfloat16 (no
  AVX512-BF16) the plain rule (n >= 1000 k) holds for single queries only.
* ALS.fit (models/als.py, _als/cpu.py): the fitted tables are (rows, factors) C-order arrays
  of the model's dtype (at a padded width: the first k columns moved to the front of their
  own memory), the same fit as unpadded training up to rounding (the numpy backend is the
  oracle); ``initial_factors`` are checked and copied (the caller's arrays never change;
  with iterations=0 the start is kept).
* compat.implicit.AlternatingLeastSquares.fit: "On bad input the model does not change";
  a2644e2: "a refused fit puts the caller's Generator back" (random_state may be None, an
  int, a RandomState or a Generator).
* Recommender(retriever, ranker=...) and swap_model(source): "the path of a model file"
  (recfuse.load) / "the path of a scorer file"; their annotations (serving.Retriever,
  serving.Ranker, now resolvable at run time) say PathLike = str | bytes | os.PathLike, and
  recfuse.load and ranking.load_scorer take bytes ("bytes too, as save and recfuse.load take
  them").

Oracles: brute force with NumPy on small-integer tables (every evaluation order gives the
same float), a search with k = n on the same index as the full score list (for ties of
duplicated float rows), storage "native" for "bfloat16"/"auto", and the numpy ALS backend.
Notes: /work/notes/hunt-recent-changes-ab.md.
"""

from __future__ import annotations

import gc
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import backend_params, simd_level

CPU_TOPK = backend_params(("cpu",), family="topk")
CPU_ALS = backend_params(("cpu",), family="als")
needs_cpu_topk = pytest.mark.skipif(bool(CPU_TOPK[0].marks), reason="the cpu backend is not built")
needs_cpu_als = pytest.mark.skipif(bool(CPU_ALS[0].marks), reason="the cpu backend is not built")
HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))


def _oracle(S: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """(ids, scores) of the k best qualifying entries of each row of S (float64 scores):
    score descending, ties by smaller id; NaN and -inf never qualify; padded -1 / -inf."""
    m, n = S.shape
    ids = np.full((m, k), -1, np.int64)
    scores = np.full((m, k), -np.inf)
    for r in range(m):
        ok = ~np.isnan(S[r]) & (S[r] > -np.inf)
        if allowed is not None:
            ok &= allowed[r]
        candidates = np.flatnonzero(ok)
        best = candidates[np.lexsort((candidates, -S[r, candidates]))[:k]]
        ids[r, :best.size], scores[r, :best.size] = best, S[r, best]
    return ids, scores


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


def _levels() -> list[str]:
    from recfuse import _core

    return list(_core.supported_simd_levels())


# ================================================================== top-k: exact integers

SIZES = [1, 2, 31, 32, 33, 63, 64, 65, 255, 256, 257, 1000, 1023, 1024, 1025, 2047, 2048,
         2049, 4095, 4096, 4097]


@needs_cpu_topk
@HYPOTHESIS
@given(data=st.data())
def test_integer_tables_match_brute_force_near_the_buffer_sizes(data):
    # k and n around the candidate buffer (2k), the 64-key sample and the panel widths;
    # 1-3 levels make thousands of exact ties at the pivot
    n = data.draw(st.sampled_from(SIZES), label="n")
    k = data.draw(st.sampled_from(sorted({1, 2, 3, max(1, n // 2), max(1, n - 1), n, n + 1,
                                          1000, 1024, 2047, 2048})), label="k")
    d = data.draw(st.sampled_from([1, 2, 3, 8]), label="d")
    m = data.draw(st.sampled_from([1, 2, 3, 5]), label="m")  # 1-2: whole-panel-row steps
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    storage = "native" if dtype == np.float64 else data.draw(
        st.sampled_from(["native", "bfloat16", "auto"]), label="storage")
    levels = data.draw(st.sampled_from([1, 2, 50]), label="levels")
    threads = data.draw(st.sampled_from([1, 2, 3, 8]), label="threads")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    items = rng.integers(-levels, levels + 1, size=(n, d)).astype(dtype)
    Q = rng.integers(-2, 3, size=(m, d)).astype(dtype)
    ids, scores = recfuse.ItemIndex(items, storage=storage, backend="cpu").search(
        Q, k, num_threads=threads)
    want_ids, want_scores = _oracle(Q.astype(np.float64) @ items.astype(np.float64).T, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores.astype(np.float64), want_scores)


@needs_cpu_topk
@pytest.mark.parametrize("storage", ["native", "bfloat16"])
def test_large_k_over_several_query_chunks_with_exclusions(storage):
    # k = 60,000 on 8 threads: chunks of about 8 queries (the buffers' 64 MiB), so 20
    # queries take three chunks; panel ranges are handed out in turn; 30% excluded
    rng = np.random.default_rng(1)
    n, k, m = 120_000, 60_000, 20
    items = rng.integers(-3, 4, size=(n, 3)).astype(np.float32)
    Q = rng.integers(-2, 3, size=(m, 3)).astype(np.float32)
    exclude = sp.random(m, n, density=0.3, format="csr", random_state=2)
    allowed = np.ones((m, n), bool)
    allowed[exclude.nonzero()] = False
    ids, scores = recfuse.ItemIndex(items, storage=storage, backend="cpu").search(
        Q, k, exclude=exclude, num_threads=8)
    want_ids, want_scores = _oracle(Q.astype(np.float64) @ items.astype(np.float64).T, k,
                                    allowed)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores.astype(np.float64), want_scores)


@needs_cpu_topk
def test_float64_with_signed_zero_bias_and_exclusions_over_thread_ranges():
    rng = np.random.default_rng(3)
    n, m = 40_000, 9
    items = rng.integers(-2, 3, size=(n, 2)).astype(np.float64)
    bias = rng.choice([0.0, -0.0, 1.0], size=n)
    Q = rng.integers(-2, 3, size=(m, 2)).astype(np.float64)
    exclude = sp.random(m, n, density=0.5, format="csr", random_state=4)
    allowed = np.ones((m, n), bool)
    allowed[exclude.nonzero()] = False
    index = recfuse.ItemIndex(items, item_bias=bias, backend="cpu")
    for k in (1, 999, 2048):
        for threads in (1, 3, 8):
            ids, scores = index.search(Q, k, exclude=exclude, num_threads=threads)
            want_ids, want_scores = _oracle(Q @ items.T + bias, k, allowed)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(scores, want_scores)


# ================================================ top-k: duplicated float rows, every level


@needs_cpu_topk
@pytest.mark.parametrize("seed", range(3))
def test_duplicated_rows_tie_by_id_bit_for_bit_at_every_level(seed):
    # exact ties of non-integer scores: every copy of a row scores the same bits; k = n on
    # one thread gives every item's score, and each smaller k must be its prefix, at every
    # level, storage and thread count (the sign of a -0.0 score included)
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(int(rng.choice([3, 50, 700])), int(rng.choice([2, 7, 33])))
                      ).astype(np.float32)
    items = base[rng.integers(0, base.shape[0], size=base.shape[0] * 20)]
    zero = rng.random(items.shape[0]) < 0.2
    items[zero] = 0.0
    items[zero & (rng.random(items.shape[0]) < 0.5)] = -0.0
    n = items.shape[0]
    for level in _levels():
        with simd_level(level):
            for m in (1, 2, 17):
                Q = rng.normal(size=(m, items.shape[1])).astype(np.float32)
                all_ids, all_scores = recfuse.ItemIndex(items, storage="native", backend="cpu"
                                                        ).search(Q, n, num_threads=1)
                S = np.empty((m, n), np.float32)
                for r in range(m):
                    S[r, all_ids[r]] = all_scores[r]
                for k in sorted({1, 2, n // 3, 1000, 2048}):
                    k = max(1, min(k, n + 3))
                    want_ids = np.full((m, k), -1, np.int64)
                    want_scores = np.full((m, k), -np.inf, np.float32)
                    for r in range(m):
                        order = np.lexsort((np.arange(n), -S[r].astype(np.float64)))[:k]
                        want_ids[r, :order.size], want_scores[r, :order.size] = order, S[r, order]
                    for storage in ("native", "bfloat16"):
                        index = recfuse.ItemIndex(items, storage=storage, backend="cpu")
                        for threads in (1, 2, 5):
                            ids, scores = index.search(Q, k, num_threads=threads)
                            context = (level, m, k, storage, threads)
                            assert np.array_equal(ids, want_ids), context
                            assert _same_bits(scores, want_scores), context


@needs_cpu_topk
@pytest.mark.parametrize("seed", range(4))
def test_bfloat16_and_auto_equal_native_with_filters_and_a_query_alone(seed):
    # skewed norms (trained-factor-like), duplicated rows, a zero query, exclusions and a
    # deny list; batches large enough that bfloat16 threads split the queries
    rng = np.random.default_rng(seed)
    n_base, d = int(rng.choice([700, 3000])), int(rng.choice([3, 16, 33]))
    base = (rng.normal(size=(n_base, d)) * np.exp(rng.normal(0, 1, size=(n_base, 1)))
            ).astype(np.float32)
    items = base[rng.integers(0, n_base, size=n_base * 5)]
    n = items.shape[0]
    m = int(rng.choice([1, 2, 40, 130]))
    Q = rng.normal(size=(m, d)).astype(np.float32)
    Q[0] = 0.0
    exclude = sp.random(m, n, density=0.05, format="csr", random_state=seed)
    deny = rng.choice(n, size=n // 10, replace=False)
    native = recfuse.ItemIndex(items, storage="native", backend="cpu")
    others = [recfuse.ItemIndex(items, storage=s, backend="cpu") for s in ("bfloat16", "auto")]
    for k in (1, 10, 100, 1000):
        for threads in (1, 2, 4):
            ids, scores = native.search(Q, k, exclude=exclude, deny=deny, num_threads=threads)
            for index in others:
                got = index.search(Q, k, exclude=exclude, deny=deny, num_threads=threads)
                assert np.array_equal(got[0], ids) and _same_bits(got[1], scores), \
                    (index.storage, k, threads)
            for r in range(min(m, 3)):
                for index in [native] + others:
                    alone = index.search(Q[r], k, exclude=exclude[r], deny=deny,
                                         num_threads=threads)
                    assert np.array_equal(alone[0], ids[r]), (index.storage, k, threads, r)
                    assert _same_bits(alone[1], scores[r]), (index.storage, k, threads, r)


# ======================================================================= storage_for


def _gaussian_index(n=2000, d=8):
    rng = np.random.default_rng(0)
    return recfuse.ItemIndex(rng.normal(size=(n, d)).astype(np.float32), backend="cpu")


@needs_cpu_topk
@pytest.mark.parametrize("queries, error", [(True, TypeError), (-1, ValueError),
                                            (1.5, TypeError), ("2", TypeError)])
def test_storage_for_refuses_a_query_count_that_is_not_one(queries, error):
    with pytest.raises(error, match="queries"):
        _gaussian_index().storage_for(1, queries)


@needs_cpu_topk
def test_storage_for_takes_k_past_n_as_n_and_single_queries_the_plain_rule():
    from recfuse._topk import cpu

    index = _gaussian_index()
    n = index.shape[0]
    for queries in (None, 1, 2, 64, np.int64(1)):
        assert index.storage_for(n + 1, queries) == index.storage_for(n, queries)
        assert index.storage_for(10**9, queries) == index.storage_for(n, queries)
    # n >= 1000 k: one query takes the bfloat16 copies wherever they exist; a batch only
    # where they are multiplied natively (or where the norms are skewed: not Gaussian rows)
    assert index.storage_for(1, 1) == "bfloat16"
    assert index.storage_for(1, np.int64(1)) == "bfloat16"
    batch = index.storage_for(1, 2)
    assert batch == ("bfloat16" if cpu.bfloat16_dot() or index._skewed else "native")
    assert index.storage_for(1) == batch  # None: any number of queries
    assert index.storage_for(3, 1) == "native"  # 2000 < 1000 x 3 and the norms not skewed


@needs_cpu_topk
def test_storage_for_leaves_fixed_storages_alone():
    items = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    for storage in ("native", "bfloat16"):
        index = recfuse.ItemIndex(items, storage=storage, backend="cpu")
        assert index.storage_for(5, 1) == index.storage_for(5) == storage


# ================================================================ ALS at padded widths

ALS_WIDTHS = [1, 5, 15, 16, 17, 31, 33, 63, 65, 100, 127, 129]


def _ratings(users=60, items=40, seed=1):
    matrix = sp.random(users, items, density=0.2, format="csr", random_state=seed,
                       dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 5)
    return matrix


def _fit(backend, matrix, initial_factors=None, **settings_):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return recfuse.ALS(random_state=0, backend=backend, **settings_).fit(
            matrix, initial_factors=initial_factors)


def _relative_gap(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@needs_cpu_als
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("k", ALS_WIDTHS)
def test_als_tables_at_any_width_are_plain_and_match_numpy(k, solver):
    # float64 (float32 at k above the 40 items is ill-conditioned: both backends drift)
    matrix = _ratings()
    got = _fit("cpu", matrix, factors=k, iterations=2, solver=solver, dtype=np.float64)
    want = _fit("numpy", matrix, factors=k, iterations=2, solver=solver, dtype=np.float64)
    for name, rows in (("user_factors", 60), ("item_factors", 40)):
        table = getattr(got, name)
        assert table.shape == (rows, k) and table.dtype == np.float64, name
        assert table.flags.c_contiguous and table.flags.writeable, name
        assert _relative_gap(table, getattr(want, name)) < 1e-8, name


@needs_cpu_als
@pytest.mark.parametrize("k, solver", [(5, "cg"), (20, "cholesky")])
def test_narrowed_huge_page_tables_are_right_and_outlive_refits(k, solver):
    # 33,000 users at width 32 float32: 4.2 MB, past huge_page_alloc's 4 MiB, so the table
    # is narrowed in place and gives back its tail, which must not touch the rows kept
    matrix = sp.random(33_000, 500, density=0.004, format="csr", random_state=1,
                       dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 5)
    model = _fit("cpu", matrix, factors=k, iterations=1, solver=solver)
    want = _fit("numpy", matrix, factors=k, iterations=1, solver=solver)
    X, Y = model.user_factors, model.item_factors
    assert type(X.base.base).__name__ == "PyCapsule"  # the huge-page table's own memory
    assert X.shape == (33_000, k) and X.flags.c_contiguous and X.flags.writeable
    assert _relative_gap(X, want.user_factors) < 1e-5
    assert _relative_gap(Y, want.item_factors) < 1e-5
    before = X.copy(), Y.copy()
    model.fit(matrix[:, :400])  # a refit makes new tables
    del model
    gc.collect()
    assert np.array_equal(X, before[0]) and np.array_equal(Y, before[1])
    X[-1, -1] = 1.0  # the last row kept, just before the pages given back
    assert X[-1, -1] == 1.0


def _layouts(X0, Y0):
    read_only = X0.copy(), Y0.copy()
    for table in read_only:
        table.flags.writeable = False
    return {"C": (X0.copy(), Y0.copy()),
            "F": (np.asfortranarray(X0), np.asfortranarray(Y0)),
            ">f8": (X0.astype(">f8"), Y0.astype(">f8")),
            "read-only": read_only,
            "strided": (np.repeat(X0, 2, axis=1)[:, ::2], np.repeat(Y0, 2, axis=1)[:, ::2]),
            "list": (X0.tolist(), Y0.tolist())}


@needs_cpu_als
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 5, 31, 32, 33, 129])
def test_initial_factors_at_padded_widths_are_copied_and_kept(k, dtype):
    matrix = _ratings(30, 20)
    rng = np.random.default_rng(k)
    X0, Y0 = rng.normal(size=(30, k)) * 0.1, rng.normal(size=(20, k)) * 0.1
    for solver in ("cg", "cholesky"):
        for name, (X, Y) in _layouts(X0, Y0).items():
            copies = np.array(X), np.array(Y)
            kept = _fit("cpu", matrix, factors=k, iterations=0, solver=solver, dtype=dtype,
                        initial_factors=(X, Y))
            assert np.array_equal(kept.user_factors, X0.astype(dtype)), (solver, name)
            assert np.array_equal(kept.item_factors, Y0.astype(dtype)), (solver, name)
            fitted = _fit("cpu", matrix, factors=k, iterations=1, solver=solver, dtype=dtype,
                          initial_factors=(X, Y))
            assert fitted.user_factors.shape == (30, k)
            assert np.array_equal(np.array(X), copies[0]), (solver, name)  # not trained in place
            assert np.array_equal(np.array(Y), copies[1]), (solver, name)


@needs_cpu_als
def test_initial_factors_of_another_width_are_refused_not_padded():
    matrix = _ratings(30, 20)
    X, Y = np.zeros((30, 32)), np.zeros((20, 32))  # the training width of k = 5
    with pytest.raises(ValueError, match="columns"):
        recfuse.ALS(factors=5, backend="cpu").fit(matrix, initial_factors=(X, Y))


# =========================================================== compat.implicit random_state


def _implicit():
    return pytest.importorskip("recfuse.compat.implicit")


def _state_of(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state.bit_generator.state
    kind, keys, position, *rest = random_state.get_state()
    return kind, keys.tobytes(), position, *rest


REFUSED_FITS = {
    "a dense matrix": lambda model: model.fit(np.ones((3, 3)), show_progress=False),
    "item_factors of other rows": lambda model: (
        setattr(model, "item_factors", np.zeros((7, 4), np.float32)),
        model.fit(sp.csr_matrix(np.ones((3, 3), np.float32)), show_progress=False)),
}


@pytest.mark.parametrize("refusal", list(REFUSED_FITS))
def test_implicit_refused_fit_leaves_a_generator_where_it_was(refusal):
    implicit = _implicit()
    generator = np.random.default_rng(5)
    before = _state_of(generator)
    model = implicit.AlternatingLeastSquares(factors=4, iterations=1, random_state=generator)
    with pytest.raises((TypeError, ValueError)):
        REFUSED_FITS[refusal](model)
    assert _state_of(generator) == before


@pytest.mark.parametrize("refusal", list(REFUSED_FITS))
def test_implicit_refused_fit_leaves_a_random_state_where_it_was(refusal):
    implicit = _implicit()
    random_state = np.random.RandomState(5)
    before = _state_of(random_state)
    model = implicit.AlternatingLeastSquares(factors=4, iterations=1,
                                             random_state=random_state)
    with pytest.raises((TypeError, ValueError)):
        REFUSED_FITS[refusal](model)
    assert _state_of(random_state) == before


# ============================================== Recommender: bytes paths (PathLike in full)


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ab")
    model = recfuse.ALS(factors=3, iterations=1, random_state=0).fit(_ratings(20, 15))
    model_path = str(folder / "als.npz")
    model.save(model_path)
    scorer = recfuse.MLPScorer([(np.ones((1, 6), np.float32), None, "identity")])
    scorer_path = str(folder / "scorer.npz")
    scorer.save(scorer_path)
    return model, model_path, scorer_path


def test_load_and_load_scorer_take_bytes_paths(saved_files):
    from recfuse.ranking import load_scorer

    model, model_path, scorer_path = saved_files
    assert isinstance(recfuse.load(os.fsencode(model_path)), recfuse.ALS)
    assert isinstance(load_scorer(os.fsencode(scorer_path)), recfuse.MLPScorer)
    assert recfuse.Recommender(model_path).info()["items"] == 15  # str: served


def test_recommender_annotations_name_bytes_paths():
    import typing

    from recfuse import serving

    hints = typing.get_type_hints(recfuse.Recommender.__init__)
    assert bytes in typing.get_args(hints["retriever"])
    assert bytes in typing.get_args(hints["ranker"])
    assert bytes in typing.get_args(typing.get_type_hints(serving.Recommender.swap_model)["source"])


def test_recommender_serves_a_model_file_named_by_bytes(saved_files):
    _, model_path, _ = saved_files
    assert recfuse.Recommender(os.fsencode(model_path)).info()["items"] == 15


def test_recommender_takes_a_scorer_file_named_by_bytes(saved_files):
    model, _, scorer_path = saved_files
    recommender = recfuse.Recommender(model, ranker=os.fsencode(scorer_path))
    assert recommender.info()["ranker"]


def test_swap_model_takes_a_model_file_named_by_bytes(saved_files):
    model, model_path, _ = saved_files
    recommender = recfuse.Recommender(model)
    assert recommender.swap_model(os.fsencode(model_path)) == 2

"""recfuse.metrics: hand-computed cases, the native kernels against the NumPy contract, and
evaluate() against implicit.evaluation on the same model and data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import recfuse
from recfuse import _core, datasets, metrics, reference_data, split

from conftest import csr_matrices


def test_rating_errors():
    assert metrics.rmse([1, 2, 3], [1, 2, 3]) == 0
    assert metrics.rmse([0, 0], [3, 4]) == pytest.approx(np.sqrt(12.5))
    assert metrics.mae([0, 0], [3, -4]) == 3.5
    with pytest.raises(ValueError, match="one value each"):
        metrics.rmse([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        metrics.mae([1.0], [np.nan])


@pytest.mark.parametrize("function", [metrics.rmse, metrics.mae])
def test_rating_errors_of_the_wrong_type_are_type_errors(function):
    """Strings are not ratings (NumPy would read "1.5" as a number and fail on "a" with a
    ValueError that names neither argument)."""
    with pytest.raises(TypeError, match="y_true must hold real numbers, got dtype <U1"):
        function(["a"], [1.0])
    with pytest.raises(TypeError, match="y_pred must hold real numbers, got dtype <U3"):
        function([1.0], ["1.5"])
    with pytest.raises(TypeError, match="y_pred must hold real numbers, got object values"):
        function([1.0], [object()])


def test_ranking_metrics_by_hand():
    # user 0: test {0, 3}; list [3, 1, 0] -> hits at ranks 0 and 2
    # user 1: test {2};    list [1, -1, -1] -> no hit
    test = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=np.float32))
    recommended = np.array([[3, 1, 0], [1, -1, -1]])
    got = metrics.ranking_metrics(recommended, test, per_user=True)
    assert got["precision"] == pytest.approx(2 / (2 + 1))
    assert got["recall"] == pytest.approx((1 + 0) / 2)
    assert got["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 0) / 2)
    dcg = 1 + 1 / np.log2(4)
    assert got["ndcg"] == pytest.approx((dcg / (1 + 1 / np.log2(3)) + 0) / 2)
    assert got["mrr"] == pytest.approx((1 + 0) / 2)
    assert got["hit_rate"] == 0.5
    # implicit's AUC, user 0: 2 positives, 3 negatives; miss at rank 1 after one hit
    auc0 = (1 + (2 + 2) / 2 * (3 - 1)) / (2 * 3)
    auc1 = (0 + (0 + 1) / 2 * (4 - 1)) / (1 * 4)  # one listed negative: the -1s are no items
    assert got["auc"] == pytest.approx((auc0 + auc1) / 2)
    assert got["per_user"]["hits"].tolist() == [2, 0]
    assert metrics.catalog_coverage(recommended, 5) == pytest.approx(3 / 5)


def test_ranking_metrics_take_a_test_matrix_with_strided_index_arrays():
    """scipy keeps the index arrays it is given: a strided (or big-endian) indices array
    reached the native kernel as it was, which refused it with pybind11's argument error."""
    test = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows = np.flatnonzero(np.diff(test.indptr) > 0)
    recommended = np.stack([np.random.default_rng(int(r)).permutation(20)[:4] for r in rows])
    expected = metrics.ranking_metrics(recommended, test, per_user=True)
    spaced = np.repeat(test.indices, 2)
    for indices in (spaced[::2], test.indices.astype(">i4")):
        other = sp.csr_matrix((test.data, test.indices, test.indptr), shape=test.shape)
        other.indices = indices  # as scipy keeps them (its constructor may copy)
        got = metrics.ranking_metrics(recommended, other, per_user=True)
        for name, values in expected["per_user"].items():
            np.testing.assert_array_equal(got["per_user"][name], values)


def test_padding_changes_no_metric_and_auc_stays_in_0_1():
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=np.float32))
    lists = np.array([[3, 1], [2, 0]])
    plain = metrics.ranking_metrics(lists, test, per_user=True)
    for pad in (1, 4):
        padded = np.hstack([lists, np.full((2, pad), -1)])
        got = metrics.ranking_metrics(padded, test, per_user=True)
        np.testing.assert_allclose(got["per_user"]["auc"], plain["per_user"]["auc"])
    empty = metrics.ranking_metrics(np.full((2, 3), -1), test, per_user=True)["per_user"]["auc"]
    np.testing.assert_allclose(empty, 0.5)  # nothing listed: every positive half above


@given(csr_matrices(max_rows=8, max_cols=12), st.integers(1, 6), st.data())
def test_native_ranking_metrics_match_reference(test, k, data):
    rows = np.flatnonzero(np.diff(test.indptr) > 0).astype(np.int64)
    n_items = test.shape[1]
    recommended = np.array([data.draw(st.lists(st.integers(-1, n_items), min_size=k, max_size=k))
                            for _ in rows],
                           dtype=np.int64).reshape(rows.size, k)
    got = _core.ranking_metrics(recommended, rows, test.indptr.astype(np.int64),
                                test.indices.astype(np.int32), n_items=n_items)
    want = reference_data.ranking_metrics(recommended, rows, test.indptr, test.indices, n_items)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


@given(st.integers(1, 6), st.integers(1, 5), st.data())
def test_native_diversity_matches_reference(n_rows, k, data):
    vectors = np.array(data.draw(st.lists(st.lists(st.floats(-2, 2, width=32), min_size=3,
                                                   max_size=3), min_size=4, max_size=4)))
    recommended = np.array(data.draw(st.lists(st.lists(st.integers(-1, 4), min_size=k,
                                                       max_size=k),
                                              min_size=n_rows, max_size=n_rows)), dtype=np.int64)
    for dtype in (np.float32, np.float64):
        cast = vectors.astype(dtype)
        got = _core.intra_list_diversity(recommended, cast)
        want = reference_data.intra_list_diversity(recommended, cast)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_diversity_with_subnormal_and_huge_vectors(dtype):
    # 1/norm of a subnormal vector overflows the storage type; the unit vector must not.
    tiny = np.finfo(dtype).smallest_subnormal
    huge = np.finfo(dtype).max / 2
    vectors = np.array([[0, 0, 0], [0, 0, tiny], [tiny, 0, 0], [huge, huge, 0]], dtype=dtype)
    recommended = np.array([[0, 1], [1, 2], [1, 3], [2, 3]], dtype=np.int64)
    got = _core.intra_list_diversity(recommended, vectors)
    want = reference_data.intra_list_diversity(recommended, vectors)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, 1 - np.sqrt(0.5)], atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*(OpenBLAS|MKL|BLAS library).*:RuntimeWarning")
def implicit_model(train):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=16, iterations=4, regularization=0.05,
                                    random_state=0, num_threads=1)
    model.fit(train, show_progress=False)
    return model


@pytest.mark.filterwarnings("ignore:.*(OpenBLAS|MKL|BLAS library).*:RuntimeWarning")
def test_evaluate_matches_implicit():
    from implicit.evaluation import ranking_metrics_at_k

    matrix = datasets.synthetic_implicit(600, 150, 12_000, seed=5)
    train, test = split.per_user_split(matrix, 0.25, seed=1)
    model = implicit_model(train)
    theirs = ranking_metrics_at_k(model, train, test, K=10, show_progress=False)
    ours = metrics.evaluate(model, train, test, k=10)
    for name in ("precision", "map", "ndcg", "auc"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-9), name
    assert ours["users"] == np.count_nonzero(np.diff(test.indptr))


def test_evaluate_recfuse_model_and_old_name():
    matrix = datasets.synthetic_implicit(400, 120, 8000, seed=2)
    train, test = split.per_user_split(recfuse.Interactions.from_matrix(matrix), 0.2, seed=0)
    model = recfuse.ALS(factors=16, iterations=5, random_state=0).fit(train.matrix)
    result = metrics.evaluate(model, train, test, k=5)
    for name in ("precision", "recall", "map", "ndcg", "auc", "mrr", "hit_rate", "coverage",
                 "novelty", "diversity"):
        assert np.isfinite(result[name]), name
    assert 0 < result["precision"] <= 1 and result["k"] == 5
    old = metrics.ranking_metrics_at_k(model, train.matrix, test.matrix, k=5)
    assert old["precision"] == result["precision"] and old["ndcg"] == result["ndcg"]
    # seen items are filtered: no recommended item is in the user's train row
    ids, _ = model.recommend(np.arange(10), train.matrix[:10], k=5)
    assert not any(set(ids[u]) & set(train.matrix[u].indices) for u in range(10))


def test_evaluate_cold_users_and_predict():
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32))

    class Fixed:
        def recommend(self, users, user_items, k, filter_seen=True):
            return np.tile([1, 2, 0][:k], (len(users), 1)), None

        def predict(self, users, items):
            return np.full(len(users), 0.5)

    result = metrics.evaluate(Fixed(), train, test, k=2)
    assert result["users"] == 2 and result["cold_users"] == 1
    assert result["rmse"] == pytest.approx(0.5) and result["mae"] == pytest.approx(0.5)
    skipped = metrics.evaluate(Fixed(), train, test, k=2, cold_users="skip")
    assert skipped["users"] == 1 and skipped["precision"] == 1.0
    with pytest.raises(ValueError, match="no train items"):
        metrics.evaluate(Fixed(), train, test, k=2, cold_users="raise")


def test_evaluate_bad_input():
    matrix = datasets.synthetic_implicit(50, 20, 300, seed=0)
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(matrix[:40])
    with pytest.raises(ValueError, match="one shape"):
        metrics.evaluate(model, matrix, matrix[:, :10], k=3)
    with pytest.raises(ValueError, match="model knows 40 users"):
        metrics.evaluate(model, matrix, matrix, k=3)
    with pytest.raises(TypeError, match="recommend"):
        metrics.evaluate(object(), matrix, matrix)
    with pytest.raises(TypeError, match="scipy.sparse"):
        metrics.evaluate(model, matrix.toarray(), matrix)
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.evaluate(model, matrix, matrix, k=0)
    with pytest.raises(ValueError, match="rows for"):
        metrics.ranking_metrics(np.zeros((2, 3), np.int64), matrix)


@given(csr_matrices(max_rows=8, max_cols=12), st.integers(1, 6), st.data())
def test_coverage_and_novelty_match_their_definitions(train, k, data):
    n_users, n_items = train.shape
    recommended = np.array(data.draw(st.lists(st.integers(-1, n_items + 1), min_size=k * 3,
                                              max_size=k * 3)), dtype=np.int64).reshape(3, k)
    valid = recommended[(recommended >= 0) & (recommended < n_items)]
    assert metrics.catalog_coverage(recommended, n_items) == np.unique(valid).size / n_items
    users_per_item = np.bincount(train.indices, minlength=n_items)
    share = np.maximum(users_per_item[valid], 1) / max(n_users, 1)
    want = float(np.mean(-np.log2(share))) if valid.size else 0.0
    if recommended.max() < n_items:
        assert metrics.novelty(recommended, train) == pytest.approx(want, rel=1e-12)
    else:  # an id past train's items: another numbering, refused as by ranking_metrics
        with pytest.raises(ValueError, match=r"recommended must hold item ids in \[0, "
                                             rf"{n_items}\) \(train's columns\)"):
            metrics.novelty(recommended, train)


def test_item_counts_across_slices():
    ids = np.random.default_rng(0).integers(0, 50, (1 << 20) + 7).astype(np.int32)
    np.testing.assert_array_equal(metrics._count_ids(ids, 60), np.bincount(ids, minlength=60))
    assert metrics._count_ids(ids[:0], 3).tolist() == [0, 0, 0]


def test_ranking_metrics_refuses_a_list_that_repeats_an_item():
    test = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="recommended must not repeat an item id within a row "
                                         r"\(-1 pads a short list\), got row 0 with item 3"):
        metrics.ranking_metrics(np.array([[3, 3], [1, 1]]), test)
    with pytest.raises(ValueError, match="got row 1 with item 4 twice"):
        metrics.ranking_metrics(np.array([[3, 0, 1], [4, 2, 4]]), test)
    padded = metrics.ranking_metrics(np.array([[3, -1, -1], [1, -1, -1]]), test)  # padding
    assert padded["precision"] == pytest.approx(2 / 3)  # 2 hits of min(3, 2) + min(3, 1)
    assert padded["recall"] == pytest.approx(0.75) and padded["hit_rate"] == 1.0


def test_ranking_metrics_refuses_ids_outside_the_test_items():
    """An id past test's columns means another item numbering: an error, not a silent miss."""
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32))
    with pytest.raises(ValueError, match=r"item ids in \[0, 4\) \(test's columns\) or -1 "
                                         r"for padding, got 1 others, e.g. \[4\]"):
        metrics.ranking_metrics(np.array([[3, 4], [1, -1]]), test)
    with pytest.raises(ValueError, match=r"got 1 others, e.g. \[-2\]"):
        metrics.ranking_metrics(np.array([[3, 0], [1, -2]]), test)
    with pytest.raises(ValueError, match="e.g. \\[18446744073709551615\\]"):
        metrics.ranking_metrics(np.array([[3, 0], [1, 2**64 - 1]], dtype=np.uint64), test)
    assert metrics.ranking_metrics(np.array([[3, 0], [1, 2]], dtype=np.uint64),
                                   test)["hit_rate"] == 1.0


def test_evaluate_an_implicit_style_model_whose_lists_run_short():
    """implicit-style models fill a list short of candidates with item 0 again: evaluate
    asks for at most the catalogue and counts each item once (no precision above 1)."""
    from recfuse.compat.implicit import AlternatingLeastSquares

    matrix = datasets.synthetic_implicit(50, 12, 300, seed=0)
    train, test = datasets.train_test_split_per_user(matrix, 0.3, seed=0)
    model = AlternatingLeastSquares(factors=4, iterations=2, random_state=0)
    model.fit(train, show_progress=False)
    for k in (10, 15):
        result = metrics.evaluate(model, train, test, k=k)
        assert 0 <= result["precision"] <= 1 and 0 <= result["auc"] <= 1
    ids = np.array([[3, 0, 0, -1, 0]])
    rows, columns = metrics._repeats(ids)
    assert rows.tolist() == [0, 0] and sorted(columns.tolist()) == [2, 4]


def test_malformed_sparse_inputs_are_refused_before_scipy_touches_them():
    bad_indptr = sp.csr_matrix((np.ones(3), np.array([1, 2, 3], np.int32), np.array([0, 3, 1, 3])),
                               shape=(3, 5))
    with pytest.raises(ValueError, match="test has a malformed indptr"):
        metrics.ranking_metrics(np.array([[0, 1], [1, 2], [2, 3]]), bad_indptr)
    by_column = sp.csc_matrix((np.ones(4, np.float32), np.array([0, 10**8, 2, -10**8], np.int32),
                               np.array([0, 2, 4, 4])), shape=(5, 3))
    with pytest.raises(ValueError, match="train has row indices outside"):
        metrics.novelty(np.array([[0, 1]]), by_column)


def test_coverage_novelty_and_diversity_take_empty_lists_and_refuse_non_integer_ids():
    train = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    assert metrics.catalog_coverage([], 3) == 0.0  # was NumPy's IndexError (float64 [])
    assert metrics.novelty([], train) == 0.0
    assert metrics.catalog_coverage(np.array([[0, 2]], np.uint32), 3) == pytest.approx(2 / 3)
    for call in (lambda ids: metrics.catalog_coverage(ids, 3),
                 lambda ids: metrics.novelty(ids, train),
                 lambda ids: metrics.intra_list_diversity(ids, np.eye(3))):
        with pytest.raises(TypeError, match="recommended must hold item ids \\(integers\\), "
                                            "got dtype float64"):
            call(np.array([[0.0, 1.5]]))


def test_diversity_refuses_complex_item_vectors():
    # astype(float64) dropped the imaginary parts with no more than a ComplexWarning
    vectors = np.array([[1.0, 1j], [1.0, 0.0]])
    with pytest.raises(TypeError, match="item_vectors must hold real numbers, got dtype "
                                        "complex128"):
        metrics.intra_list_diversity(np.array([[0, 1]]), vectors)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_diversity_of_big_endian_vectors_is_that_of_native_ones(dtype):
    # a big-endian float32 table was widened to float64: another rounding than float32's
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 16)).astype(dtype)
    recommended = np.stack([rng.permutation(200)[:10] for _ in range(20)])
    assert metrics.intra_list_diversity(recommended, vectors.astype(vectors.dtype.newbyteorder(
        ">"))) == metrics.intra_list_diversity(recommended, vectors)


def test_diversity_refuses_non_finite_item_vectors():
    # a NaN vector used to count as a zero vector: cosine 0, diversity 1
    vectors = np.array([[np.nan, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="item_vectors must be finite, got 1 NaN/inf values"):
        metrics.intra_list_diversity(np.array([[0, 1]]), vectors)
    assert metrics.intra_list_diversity(np.array([[0, 1]]), np.array([[1, 0], [1, 1]])) == \
        pytest.approx(1 - np.sqrt(0.5))


def test_diversity_refuses_ids_without_an_item_vector():
    """An id past the vector table was skipped as if the list were shorter: a table of
    another numbering (or of fewer items) gave a silent, wrong diversity."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"item ids in \[0, 3\) \(item_vectors' rows\) or -1 "
                                         r"for padding, got 1 others, e.g. \[5\]"):
        metrics.intra_list_diversity(np.array([[0, 1, 5]]), vectors)
    with pytest.raises(ValueError, match=r"e.g. \[-2\]"):
        metrics.intra_list_diversity(np.array([[0, -2]]), vectors)
    # -1 pads a short list, as in ranking_metrics
    assert metrics.intra_list_diversity(np.array([[0, 1, -1]]), vectors) == pytest.approx(1.0)


def test_evaluate_refuses_item_vectors_of_another_item_count():
    matrix = datasets.synthetic_implicit(60, 20, 500, seed=0)
    train, test = split.per_user_split(matrix, 0.3, seed=0)
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(train)
    for rows in (12, 21):
        with pytest.raises(ValueError, match=rf"item_vectors must have one row per item \(20, "
                                             rf"test's columns\), got shape \({rows}, 3\)"):
            metrics.evaluate(model, train, test, k=5, item_vectors=np.ones((rows, 3)))
    vectors = np.random.default_rng(0).normal(size=(20, 3))
    result = metrics.evaluate(model, train, test, k=5, item_vectors=vectors)
    assert 0 < result["diversity"] <= 2


def test_evaluate_refuses_a_model_or_test_of_other_items_and_other_id_maps():
    matrix = datasets.synthetic_implicit(60, 20, 500, seed=0)
    train, test = split.per_user_split(matrix, 0.3, seed=0)
    narrow = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(train[:, :18])
    with pytest.raises(ValueError, match="test has 20 items but the model knows 18"):
        metrics.evaluate(narrow, train, test, k=5)
    # two logs of one shape whose ints stand for other ids: refused, not scored
    a = recfuse.Interactions.from_arrays(["u", "v"], ["x", "y"])
    b = recfuse.Interactions.from_arrays(["u", "w"], ["x", "y"])
    model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(a)
    with pytest.raises(ValueError, match="must share their id maps, but their user_ids"):
        metrics.evaluate(model, a, b, k=1)
    train, test = split.random_split(a, 0.5, seed=0)  # a split shares them
    assert metrics.evaluate(model, train, test, k=1)["users"] == 1


def test_diversity_stays_within_zero_and_two():
    # identical and opposite float32 vectors: 1 - cos is 0 and 2 up to rounding, clamped
    vectors = np.array([[0.1, 0.7, 0.3], [0.1, 0.7, 0.3], [-0.1, -0.7, -0.3]], np.float32)
    for pair in ([0, 1], [0, 2]):
        assert 0.0 <= metrics.intra_list_diversity([pair], vectors) <= 2.0


def test_num_threads_and_flags_are_checked_as_everywhere_else():
    # as the models, topk and MLPScorer check them: a negative num_threads is a ValueError
    # naming it (it was passed on as "all cores"), a string a TypeError naming it (not the
    # bindings' list of overloads), and a flag that is not a bool a TypeError (not read by
    # its truth value)
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=np.float32))
    lists = np.array([[3, 1], [2, 0]])
    matrix = datasets.synthetic_implicit(40, 20, 300, seed=0)
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(matrix)
    calls = {
        "ranking_metrics": lambda **kw: metrics.ranking_metrics(lists, test, **kw),
        "intra_list_diversity": lambda **kw: metrics.intra_list_diversity(lists, np.eye(4),
                                                                          **kw),
        "evaluate": lambda **kw: metrics.evaluate(model, matrix, matrix, k=3, **kw),
        "ranking_metrics_at_k": lambda **kw: metrics.ranking_metrics_at_k(model, matrix,
                                                                          matrix, 3, **kw),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="num_threads must be >= 0, got -1"):
            call(num_threads=-1)
        with pytest.raises(TypeError, match="num_threads must be an integer, got str"):
            call(num_threads="2")
        assert call(num_threads=1) == call(num_threads=0), name
    with pytest.raises(TypeError, match="per_user must be a bool"):
        metrics.ranking_metrics(lists, test, per_user="yes")
    for name in ("evaluate", "ranking_metrics_at_k"):
        with pytest.raises(TypeError, match="show_progress must be a bool"):
            calls[name](show_progress="yes")


def test_ranking_metrics_at_k_takes_implicit_s_keywords():
    # implicit.evaluation.ranking_metrics_at_k(model, train, test, K=10, show_progress=True,
    # num_threads=1): the same call runs here
    matrix = datasets.synthetic_implicit(60, 20, 500, seed=0)
    train, test = split.per_user_split(matrix, 0.3, seed=0)
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(train)
    expected = metrics.evaluate(model, train, test, k=5)
    assert metrics.ranking_metrics_at_k(model, train, test, K=5, show_progress=False,
                                        num_threads=1) == expected
    with pytest.raises(TypeError, match=r"give k or K \(implicit.s name\), not both"):
        metrics.ranking_metrics_at_k(model, train, test, 5, K=5)


def test_catalog_coverage_of_a_huge_catalogue_allocates_no_table_of_it():
    # n_items = 2**62: a table of n_items flags would need 4 EiB (it raised MemoryError)
    assert metrics.catalog_coverage([[0, 1, 1, -1]], 2**62) == 2 / 2**62
    assert metrics.catalog_coverage([[0, 1, 1, -1]], 4) == 0.5


def test_intra_list_diversity_names_item_vectors_that_are_not_numbers():
    with pytest.raises(TypeError, match="item_vectors must hold real numbers"):
        metrics.intra_list_diversity([[0, 1]], np.array([["a", "b"], ["c", "d"]], dtype=object))

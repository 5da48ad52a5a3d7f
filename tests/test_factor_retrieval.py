"""recommend_all, similar_items and similar_users on every factor model (ALS, BPR, SVD,
SVDpp, ExplicitALS): the chunks equal recommend, the similarity lists equal the reference's
full sort of cosines over the model's vectors, ids without training data have none, bad
arguments raise, refitting rebuilds the index."""

from __future__ import annotations

import numpy as np
import pytest
import recfuse
from recfuse import datasets, reference

N_USERS, N_ITEMS = 120, 90  # the rating models see ids up to 110 and 80 only


def _ratings(seed: int = 0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 110, 2500)
    items = rng.integers(0, 80, 2500)
    return users, items, rng.integers(1, 6, 2500).astype(np.float64)


def _fit(name: str, seed: int = 0):
    if name in ("ALS", "BPR"):
        data = datasets.synthetic_implicit(N_USERS, N_ITEMS, 2500, seed=seed)
        cls = getattr(recfuse, name)
        return cls(factors=8, iterations=3, random_state=seed).fit(data)
    users, items, ratings = _ratings(seed)
    model = getattr(recfuse, name)(factors=8, random_state=seed)
    return model.fit(users, items, ratings, n_users=N_USERS, n_items=N_ITEMS)


MODELS = ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"]


@pytest.fixture(scope="module", params=MODELS)
def fitted(request):
    return _fit(request.param)


def _vectors(model, side: str) -> np.ndarray:
    """What the lists are computed from: the model's factors, and for the rating models
    zero where an id has no training rating (SVD++'s users with their implicit term)."""
    if not isinstance(model, (recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS)):
        return model.user_factors if side == "users" else model.item_factors
    state = model._fitted
    if side == "items":
        return state.item_factors * (state.item_counts > 0)[:, None]
    vectors = state.user_factors
    if state.user_implicit is not None:
        vectors = vectors + state.user_implicit
    return vectors * (state.user_counts > 0)[:, None]


@pytest.mark.parametrize("side", ["items", "users"])
def test_similar_lists_are_the_reference_cosine_sort(fitted, side):
    V = _vectors(fitted, side).astype(np.float64)
    norms = np.linalg.norm(V, axis=1)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    call = fitted.similar_items if side == "items" else fitted.similar_users
    ids = np.arange(0, V.shape[0], 7)
    got_ids, got_scores = call(ids, k=6)
    want_ids, want_scores = reference.topk(V[ids] * scale[ids, None], V, 6, item_scale=scale)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    # The same ids, but for near ties (within float32 rounding) whose order may swap.
    same = got_ids == want_ids
    close = np.isclose(got_scores, want_scores, rtol=1e-4, atol=1e-5)
    assert np.all(same | close)
    known = norms[ids] > 0
    assert np.all(got_ids[known, 0] == ids[known])  # itself first
    one_ids, one_scores = call(int(ids[1]), k=6)
    np.testing.assert_array_equal(one_ids, got_ids[1])
    np.testing.assert_array_equal(one_scores, got_scores[1])


@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_ids_without_training_ratings_have_no_similarities(name):
    model = _fit(name)
    ids, scores = model.similar_items(85, k=4)  # items 80..89 were never rated
    np.testing.assert_array_equal(scores, 0)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])  # all tied: smallest ids first
    ids, scores = model.similar_items(3, k=N_ITEMS)
    assert not np.isin(np.arange(80, 90), ids[scores != 0]).any()
    _, scores = model.similar_users(115, k=3)
    np.testing.assert_array_equal(scores, 0)


def test_recommend_all_chunks_equal_recommend(fitted):
    chunks = list(fitted.recommend_all(k=5, batch_size=50))
    np.testing.assert_array_equal(np.concatenate([users for users, _, _ in chunks]),
                                  np.arange(fitted.user_factors.shape[0]))
    for users, ids, scores in chunks:
        want_ids, want_scores = fitted.recommend(users, k=5)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    unfiltered = next(iter(fitted.recommend_all(k=5, batch_size=50, filter_seen=False)))
    np.testing.assert_array_equal(unfiltered[1], fitted.recommend(np.arange(50), k=5,
                                                                  filter_seen=False)[0])


def test_recommend_all_writes_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    model = _fit("SVD")
    path = tmp_path / "svd.parquet"
    rows = model.recommend_all(k=4, batch_size=33, path=path)
    table = pq.read_table(path)
    ids, _ = model.recommend(np.arange(N_USERS), k=4)
    assert table.num_rows == rows == int((ids >= 0).sum())
    np.testing.assert_array_equal(table.column("item").to_numpy(), ids[ids >= 0])
    with pytest.raises(IsADirectoryError, match="is a folder"):  # before any work
        model.recommend_all(k=4, path=tmp_path)


@pytest.mark.parametrize("name", MODELS)
def test_bad_arguments_and_unfitted_models_raise(name):
    model = _fit(name)
    with pytest.raises(ValueError, match="item_ids"):
        model.similar_items(N_ITEMS)
    with pytest.raises(ValueError, match="user_ids"):
        model.similar_users(-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.similar_items(0, k=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.recommend_all(batch_size=0)
    bare = type(model)(factors=4)
    for call in (bare.similar_items, bare.similar_users):
        with pytest.raises(RuntimeError, match="not fitted"):
            call(0)
    with pytest.raises(RuntimeError, match="not fitted"):
        bare.recommend_all()


@pytest.mark.parametrize("name", MODELS)
def test_refitting_rebuilds_the_similarity_index(name):
    model = _fit(name)
    before = model.similar_items(np.arange(10), k=5)
    if name in ("ALS", "BPR"):
        model.fit(datasets.synthetic_implicit(N_USERS, N_ITEMS, 2500, seed=1))
    else:
        model.fit(*_ratings(1), n_users=N_USERS, n_items=N_ITEMS)
    after = model.similar_items(np.arange(10), k=5)
    assert not np.array_equal(before[1], after[1])
    fresh = type(model)(**model.get_params())
    if name in ("ALS", "BPR"):
        fresh.random_state = model.random_state
        fresh.fit(datasets.synthetic_implicit(N_USERS, N_ITEMS, 2500, seed=1))
    else:
        fresh.random_state = model.random_state
        fresh.fit(*_ratings(1), n_users=N_USERS, n_items=N_ITEMS)
    for got, want in zip(after, fresh.similar_items(np.arange(10), k=5)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- matrices and Interactions in


@pytest.mark.parametrize("name", ["SVD", "SVDpp", "ExplicitALS"])
def test_rating_models_fit_a_matrix_or_interactions_like_the_arrays(name):
    import scipy.sparse as sp

    users, items, ratings = _ratings()
    cls = getattr(recfuse, name)
    want = cls(factors=8, random_state=0).fit(users, items, ratings, n_users=N_USERS,
                                              n_items=N_ITEMS)
    matrix = sp.coo_matrix((ratings, (users, items)), shape=(N_USERS, N_ITEMS))
    got = cls(factors=8, random_state=0).fit(matrix)  # duplicates kept: one rating each
    for a, b in [(got.item_factors, want.item_factors), (got.user_bias, want.user_bias)]:
        np.testing.assert_array_equal(a, b)
    events = recfuse.Interactions.from_arrays(users, items, ratings, combine="last")
    merged = events.matrix.tocoo()
    via_events = cls(factors=8, random_state=0).fit(events)
    via_arrays = cls(factors=8, random_state=0).fit(
        merged.row, merged.col, merged.data, n_users=events.matrix.shape[0],
        n_items=events.matrix.shape[1])
    np.testing.assert_array_equal(via_events.item_factors, via_arrays.item_factors)
    assert via_events.user_factors.shape[0] == len(events.user_ids)
    with pytest.raises(TypeError, match="users, items and ratings"):
        cls().fit(users)
    with pytest.raises(TypeError, match="not both"):
        cls().fit(matrix, items, ratings)


@pytest.mark.parametrize("name", ["ALS", "BPR"])
def test_implicit_models_fit_interactions_as_their_matrix(name):
    users, items, _ = _ratings()
    events = recfuse.Interactions.from_arrays(users, items)
    cls = getattr(recfuse, name)
    got = cls(factors=8, iterations=2, random_state=0).fit(events)
    want = cls(factors=8, iterations=2, random_state=0).fit(events.matrix)
    np.testing.assert_array_equal(got.item_factors, want.item_factors)


def test_als_fold_in_keeps_the_item_similarity_index():
    model = _fit("ALS")
    model.similar_items(0)
    index = model._cosine_index("items")
    users_before = model.similar_users(np.arange(5), k=3)
    model.update_users([0, 1], datasets.synthetic_implicit(2, N_ITEMS, 40, seed=5))
    assert model._cosine_index("items") is index  # the items did not change
    users_after = model.similar_users(np.arange(5), k=3)
    assert not np.array_equal(users_before[1], users_after[1])  # the users' index did


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_and_recommend_with_given_seen_rows(name):
    """recfuse.metrics.evaluate takes every model (the rating models and BPR had no user_items
    and were called with the train rows in k's place); recommend filters the rows given."""
    from recfuse import metrics

    model = _fit(name)
    train = datasets.synthetic_implicit(N_USERS, N_ITEMS, 2500, seed=0)
    if name not in ("ALS", "BPR"):  # the rating models filter what they were fit on
        import scipy.sparse as sp

        users, items, ratings = _ratings()
        train = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(N_USERS, N_ITEMS))
    test = datasets.synthetic_implicit(N_USERS, N_ITEMS, 600, seed=9)
    result = metrics.evaluate(model, train, test, k=5)
    assert 0 <= result["precision"] <= 1 and result["users"] > 0
    users = np.arange(20)
    np.testing.assert_array_equal(model.recommend(users, k=7, user_items=train[users])[0],
                                  model.recommend(users, k=7)[0])
    everything = np.ones((users.size, N_ITEMS))
    import scipy.sparse as sp

    ids, scores = model.recommend(users, k=3, user_items=sp.csr_matrix(everything))
    np.testing.assert_array_equal(ids, -1)  # all filtered: padding only
    with pytest.raises(ValueError, match="user_items"):
        model.recommend(users, k=3, user_items=train[:5])


def test_models_pickle_and_deep_copy(fitted):
    """A pickled model (multiprocessing, Surprise's dump, deepcopy) answers as the original,
    with a writer lock and index caches of its own."""
    import copy
    import pickle

    expected = fitted.recommend([3, 7], k=5), fitted.similar_items([2], k=4)
    for clone in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted)):
        assert clone._lock is not fitted._lock
        for got, want in zip((clone.recommend([3, 7], k=5), clone.similar_items([2], k=4)),
                             expected):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    assert type(pickle.loads(pickle.dumps(type(fitted)()))) is type(fitted)  # unfitted too


def test_recommend_searches_on_the_models_backend():
    """recommend's index uses the model's backend (backend="numpy" never reaches native code)."""
    for name in MODELS:
        model = _fit(name)
        model.backend = "numpy"  # as if fitted with it
        model.__setstate__(model.__getstate__())  # drops the index caches
        model.recommend(3, k=5)
        indexes = [part for key, cached in vars(model).items()
                   if key.endswith("_cache") and isinstance(cached, tuple)
                   for part in cached if type(part).__name__ == "ItemIndex"]
        assert indexes and all(index._module.NAME == "numpy" for index in indexes), name


@pytest.mark.parametrize("name", MODELS)
def test_recommend_all_answers_from_the_model_at_the_call(name):
    """A refit between chunks (other data, fewer users) changes nothing in an iteration
    already started: every chunk comes from the model as it was when recommend_all ran."""
    model = _fit(name, seed=0)
    expected = list(model.recommend_all(k=3, batch_size=32))
    chunks = model.recommend_all(k=3, batch_size=32)
    first = next(chunks)
    if name in ("ALS", "BPR"):
        model.fit(datasets.synthetic_implicit(40, N_ITEMS, 500, seed=1))
    else:
        users, items, ratings = _ratings(1)
        model.fit(users % 40, items, ratings)
    got = [first, *chunks]
    assert len(got) == len(expected)
    for (u, ids, scores), (u0, ids0, scores0) in zip(got, expected):
        np.testing.assert_array_equal(u, u0)
        np.testing.assert_array_equal(ids, ids0)
        np.testing.assert_array_equal(scores, scores0)


@pytest.mark.parametrize("name", ["ALS", "BPR"])
def test_assigned_tables_that_the_seen_matrix_does_not_fit_say_so(name):
    """Factor tables assigned by hand for more users (or other items) than the training
    matrix kept for filter_seen: recommend raised scipy's IndexError "index (121) out of
    range", or the index's complaint about its "exclude" argument, for a user it knows."""
    import scipy.sparse as sp

    model = _fit(name)
    users, k = model.user_factors.shape
    expected = model.recommend(3, k=4)
    model.user_factors = np.vstack([model.user_factors, np.ones((2, k), model.dtype)])
    for call in (lambda: model.recommend(users + 1, k=4), lambda: model.recommend(3, k=4),
                 lambda: model.recommend_all(k=4)):
        with pytest.raises(ValueError, match=f"seen matrix kept from training is {users} "
                                             f"users x {N_ITEMS} items, the factor tables are "
                                             f"for {users + 2} users"):
            call()
    # without the kept matrix nothing needs it: given rows, or no filtering
    ids, _ = model.recommend(3, k=4, user_items=sp.csr_matrix((1, N_ITEMS)))
    assert ids.shape == (4,)
    np.testing.assert_array_equal(model.recommend([3], k=4, filter_seen=False)[0].shape, (1, 4))
    model.user_factors = model.user_factors[:users]
    np.testing.assert_array_equal(model.recommend(3, k=4)[0], expected[0])
    if name == "ALS":  # BPR's item biases say first that they do not fit other items
        model.item_factors = np.vstack([model.item_factors, np.ones((1, k), model.dtype)])
        with pytest.raises(ValueError, match=f"for {users} users x {N_ITEMS + 1} items"):
            model.recommend(3, k=4)
        with pytest.raises(ValueError, match="seen matrix kept from training"):
            model.loss()


@pytest.mark.parametrize("name", ["ALS", "BPR"])
def test_recommend_and_similar_lists_search_on_the_models_threads(name, monkeypatch):
    """num_threads=1 means one thread for the searches too: BPR.recommend searched on all
    cores (the index's default, 0) whatever the model's num_threads."""
    from recfuse.retrieval import ItemIndex

    model = _fit(name)
    model.num_threads = 1
    seen = []
    search = ItemIndex.search

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_threads", 0))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(ItemIndex, "search", spy)
    model.recommend([1, 2], k=3)
    model.recommend(1, k=3, filter_seen=False)
    model.similar_items(1, k=3)
    model.similar_users([1], k=3)
    assert seen == [1, 1, 1, 1]


@pytest.mark.parametrize("name", MODELS)
def test_filter_seen_must_be_a_bool(name):
    """filter_seen was read by its truth value: None or "no" quietly chose, and an array of
    per-user flags (or a matrix in its place) failed with NumPy's "truth value of an array
    is ambiguous"."""
    import scipy.sparse as sp

    model = _fit(name)
    filtered = model.recommend([1, 2], k=4)
    for flag in (True, np.True_, 1):
        np.testing.assert_array_equal(model.recommend([1, 2], k=4, filter_seen=flag)[0],
                                      filtered[0])
    for flag in (None, "no", np.array([True, False]), sp.csr_matrix((1, N_ITEMS)), 2):
        with pytest.raises(TypeError, match=f"filter_seen must be a bool, got "
                                            f"{type(flag).__name__}"):
            model.recommend([1, 2], k=4, filter_seen=flag)
        with pytest.raises(TypeError, match="filter_seen must be a bool"):
            model.recommend_all(k=4, filter_seen=flag)  # now, not at the first chunk


@pytest.mark.parametrize("name", MODELS)
def test_show_progress_must_be_a_bool(name):
    """show_progress was checked by the rating models' fit only: ALS and BPR read "no" by its
    truth value (and drew a progress bar), and recommend_all took anything."""
    model = _fit(name)
    data = (datasets.synthetic_implicit(N_USERS, N_ITEMS, 2500, seed=0)
            if name in ("ALS", "BPR") else _ratings())
    arguments = (data,) if name in ("ALS", "BPR") else data
    for flag in (None, "no", np.array([True, False]), 2):
        with pytest.raises(TypeError, match=f"show_progress must be a bool, got "
                                            f"{type(flag).__name__}"):
            type(model)(factors=4).fit(*arguments, show_progress=flag)
        with pytest.raises(TypeError, match="show_progress must be a bool"):
            model.recommend_all(k=4, show_progress=flag)  # now, not at the first chunk
    chunks = list(model.recommend_all(k=4, show_progress=np.False_))
    assert sum(users.size for users, _, _ in chunks) == model.user_factors.shape[0]

"""Adversarial hunt: dtype and precision followed end to end, from the inputs of a fit to the
Parquet file and the metrics, on every backend this machine runs (cpu, numba, numpy).

The contract used (docstrings of recfuse.ALS / SVD / SVDpp / ExplicitALS / BPR, the module
documentation of recfuse.retrieval, recfuse.ranking and recfuse.serving, README "Using it",
"Retrieval on its own" and "Serving"):

- ``dtype`` (float32 or float64) is the dtype of the factors "and all arithmetic": the fitted
  tables, and every score ``recommend``, ``recommend_all`` and ``similar_*`` return, on every
  backend and for one user as for a batch; ids are int64; short rows end with id -1 and
  score -inf (in the scores' dtype). Input values of any real dtype (bool, int8, uint8,
  int64, big-endian, longdouble CSR data; integer, float16 or list ratings) train the model
  their float64 values train. A saved model loads (mmap or not) with the same tables and
  answers.
- ``recfuse.topk`` / ``ItemIndex``: float32 and float64 tables are kept, other real dtypes
  become float32; queries are converted to the table's dtype and must be finite there; rows
  sorted by score descending, ties to the smaller id; ``storage="bfloat16"`` returns the
  native storage's ids and scores bit for bit.
- ``reference.round_to_bfloat16``: nearest bfloat16, ties to even (checked against an
  oracle written here from the bit patterns); MLPScorer scores are float32 on every backend
  and precision, ``rank`` returns (int64, float32) padded with -1 / -inf.
- ``recfuse.Recommender``: scores float32; "Ordering follows recfuse.topk: score descending,
  ties by smaller id"; its ALS fold-in is the user's refit (``update_users``).
- ``update_users`` on a model whose tables were assigned by hand (any 2-d table of numbers,
  as ``recommend`` takes them) re-solves against that table's values.
- ``recommend_all(path=)`` writes columns user int64, rank int32, item int64 and score in the
  model's dtype.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from conftest import backend_params

HOST = backend_params(("cpu", "numba", "numpy"), family="topk")
HOST_ALS = backend_params(("cpu", "numba", "numpy"), family="als")
HOST_MLP = backend_params(("cpu", "numba", "numpy"), family="mlp")
BACKENDS = [p.values[0] for p in HOST if not p.marks]
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
# relative tolerance of a computed score against the float64 oracle, by the result's dtype
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


# ------------------------------------------------------------------------------ helpers


def assert_ranked(ids, scores):
    """Rows by score descending, equal scores by smaller id, padding (-1, -inf) last, no
    id twice."""
    ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
    for row_ids, row_scores in zip(ids, scores):
        real = row_ids >= 0
        count = int(real.sum())
        assert real[:count].all() and not real[count:].any(), row_ids
        assert np.all(row_scores[count:] == -np.inf), row_scores
        assert np.unique(row_ids[:count]).size == count
        s, i = row_scores[:count], row_ids[:count]
        assert np.all(s[:-1] >= s[1:]), s
        tied = s[:-1] == s[1:]
        assert np.all(i[:-1][tied] < i[1:][tied]), (i, s)


def oracle_check(ids, scores, S, qualifies, dtype):
    """``ids``/``scores`` (m x k) against the float64 score matrix S (m x n): every returned
    score within TOL of S, and nothing left out that beats the k-th by more than TOL."""
    tol = TOL[np.dtype(dtype)]
    for row in range(S.shape[0]):
        row_ids, row_scores = ids[row], scores[row]
        real = row_ids >= 0
        want = S[row, row_ids[real]]
        scale = max(1.0, float(np.abs(S[row][qualifies[row]]).max(initial=0.0)))
        assert np.allclose(row_scores[real], want, rtol=0, atol=tol * scale), (row_scores, want)
        left = np.setdiff1d(np.flatnonzero(qualifies[row]), row_ids[real])
        if real.sum() < row_ids.size:
            assert left.size == 0, "a qualifying item left out of a padded row"
        elif left.size:
            assert S[row, left].max() <= row_scores[-1] + tol * scale


def implicit_matrix(seed=1, users=30, items=24, density=0.25):
    m = sp.random(users, items, density=density, format="csr", random_state=seed)
    m.data = np.round(m.data * 4) + 1
    return m


def ratings_triples(seed=0, n=400, users=30, items=24):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    r = rng.integers(1, 6, n).astype(np.float64)
    u[:users], i[:items] = np.arange(users), np.arange(items) % items  # every id rated
    return u, i, r


MODELS = ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"]


def fitted(kind, dtype, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if kind == "ALS":
            return recfuse.ALS(factors=5, iterations=3, dtype=dtype, backend=backend,
                               random_state=0).fit(implicit_matrix())
        if kind == "BPR":
            return recfuse.BPR(factors=5, iterations=5, dtype=dtype, backend=backend,
                               random_state=0).fit(implicit_matrix())
        u, i, r = ratings_triples()
        cls = getattr(recfuse, kind)
        return cls(factors=5, dtype=dtype, backend=backend, random_state=0).fit(u, i, r)


def model_scores(model, kind, users):
    """float64 oracle of recommend's scores (users x items) from the model's own tables."""
    if kind in ("ALS", "BPR"):
        X = np.asarray(model.user_factors, np.float64)[users]
        S = X @ np.asarray(model.item_factors, np.float64).T
        if kind == "BPR":
            S = S + np.asarray(model.item_bias, np.float64)[None, :]
        return S
    n_items = model.item_factors.shape[0]
    uu = np.repeat(users, n_items)
    ii = np.tile(np.arange(n_items), len(users))
    return model.predict(uu, ii, clip=False).reshape(len(users), n_items)


def seen_of(model, kind, n_users, n_items):
    if kind in ("ALS", "BPR"):
        return (implicit_matrix() != 0).toarray()
    u, i, _ = ratings_triples()
    seen = np.zeros((n_users, n_items), bool)
    seen[u, i] = True
    return seen


# ------------------------------------------------- models: fit -> recommend -> save -> load


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", HOST_ALS)
@pytest.mark.parametrize("kind", MODELS)
def test_model_dtype_chain(kind, backend, dtype, tmp_path):
    """One dtype from fit to load: tables, scores (one user, a batch, recommend_all chunks,
    similar_items), ids int64, -inf padding, scores against a float64 oracle of the model's
    own tables, a saved file read back with and without mmap giving the same answers."""
    try:
        model = fitted(kind, dtype, backend)
    except (ValueError, RuntimeError) as error:  # a model without this backend
        pytest.skip(f"{kind} on {backend}: {error}")
    want = np.dtype(dtype)
    assert model.user_factors.dtype == want and model.item_factors.dtype == want
    n_users, n_items = model.user_factors.shape[0], model.item_factors.shape[0]
    one_ids, one_scores = model.recommend(0, k=n_items + 3)
    users = np.arange(n_users)
    ids, scores = model.recommend(users, k=n_items + 3)
    assert one_ids.dtype == ids.dtype == np.int64
    assert one_scores.dtype == scores.dtype == want
    # one user and a batch: the same list; the same bits except on the numpy backend, whose
    # BLAS sums a lone query (gemv) in another order than a batch (gemm): see
    # test_recommender_batch_answers_are_the_solo_answers_on_numpy
    assert np.array_equal(one_ids, ids[0])
    if backend != "numpy":
        assert np.array_equal(one_scores, scores[0])
    assert np.allclose(one_scores, scores[0], rtol=TOL[want], atol=TOL[want])
    assert_ranked(ids, scores)
    assert np.all(scores[:, -3:] == -np.inf) and np.all(ids[:, -3:] == -1)
    S = model_scores(model, kind, users)
    seen = seen_of(model, kind, n_users, n_items)
    oracle_check(ids, scores, S, ~seen, want)
    # unfiltered: every item, against the oracle
    all_ids, all_scores = model.recommend(users, k=n_items, filter_seen=False)
    oracle_check(all_ids, all_scores, S, np.ones_like(seen), want)
    # recommend_all: the chunks are recommend's answers, in the model's dtype
    chunks = list(model.recommend_all(k=4, batch_size=7))
    got_ids = np.concatenate([c[1] for c in chunks])
    got_scores = np.concatenate([c[2] for c in chunks])
    assert all(c[0].dtype == np.int64 and c[1].dtype == np.int64 and c[2].dtype == want
               for c in chunks)
    assert np.array_equal(got_ids, ids[:, :4]) and np.array_equal(got_scores, scores[:, :4])
    # similar_items: cosines in the model's dtype
    sim_ids, sim_scores = model.similar_items(np.arange(n_items), k=3)
    assert sim_ids.dtype == np.int64 and sim_scores.dtype == want
    assert_ranked(sim_ids, sim_scores)
    sim_u_ids, sim_u_scores = model.similar_users([0, 1], k=3)
    assert sim_u_scores.dtype == want
    # save -> load (plain and mapped): same tables, same answers
    path = str(tmp_path / "model.npz")
    model.save(path)
    for mmap in (False, True):
        loaded = recfuse.load(path, mmap=mmap)
        assert loaded.user_factors.dtype == want and loaded.item_factors.dtype == want
        assert np.array_equal(loaded.user_factors, model.user_factors)
        again_ids, again_scores = loaded.recommend(users, k=n_items + 3)
        assert again_scores.dtype == want
        assert np.array_equal(again_ids, ids) and np.array_equal(again_scores, scores)
        s_ids, s_scores = loaded.similar_items(np.arange(n_items), k=3)
        assert np.array_equal(s_ids, sim_ids) and np.array_equal(s_scores, sim_scores)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["ALS", "SVD"])
def test_recommend_all_parquet_column_types(kind, dtype, tmp_path):
    """user int64, rank int32, item int64, score in the model's dtype; a file without rows
    (every item seen) keeps the same schema; the rows are recommend's, padding dropped."""
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    model = fitted(kind, dtype, "cpu")
    score_type = pa.float32() if dtype == np.float32 else pa.float64()
    path = str(tmp_path / "recs.parquet")
    n_items = model.item_factors.shape[0]
    rows = model.recommend_all(k=n_items + 2, path=path, batch_size=9)
    table = pq.read_table(path)
    assert table.schema.field("user").type == pa.int64()
    assert table.schema.field("rank").type == pa.int32()
    assert table.schema.field("item").type == pa.int64()
    assert table.schema.field("score").type == score_type
    ids, scores = model.recommend(np.arange(model.user_factors.shape[0]), k=n_items + 2)
    assert rows == table.num_rows == int((ids >= 0).sum())
    assert np.array_equal(table.column("item").to_numpy(), ids[ids >= 0])
    assert np.array_equal(table.column("score").to_numpy(), scores[ids >= 0])
    # no rows: every user has seen every item
    full = recfuse.ALS(factors=2, iterations=1, dtype=dtype).fit(sp.csr_matrix(np.ones((2, 3))))
    assert full.recommend_all(k=3, path=path) == 0
    empty = pq.read_table(path)
    assert empty.num_rows == 0 and empty.schema.field("score").type == score_type


# ------------------------------------------------------- inputs of other dtypes at the fit


ALS_DATA = {
    "bool": lambda m: m.astype(bool),
    "int8": lambda m: m.astype(np.int8),
    "uint8": lambda m: m.astype(np.uint8),
    "int64": lambda m: m.astype(np.int64),
    "uint64": lambda m: m.astype(np.uint64),
    "longdouble": lambda m: m.astype(np.longdouble),
    "big-endian": lambda m: sp.csr_matrix((m.data.astype(">f8"), m.indices, m.indptr),
                                          shape=m.shape),
    "float32": lambda m: m.astype(np.float32),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", list(ALS_DATA))
def test_als_trains_on_the_values_of_any_real_csr_dtype(form, dtype):
    """A CSR of bool/int8/uint8/int64/uint64/longdouble/big-endian/float32 values trains
    the model its float64 values train, bit for bit, and its seen matrix is in the model's
    dtype."""
    base = implicit_matrix()
    given = ALS_DATA[form](base)
    as_float = sp.csr_matrix((np.asarray(given.data).astype(np.float64), given.indices,
                              given.indptr), shape=given.shape)
    a = recfuse.ALS(factors=4, iterations=2, dtype=dtype, random_state=0).fit(given)
    b = recfuse.ALS(factors=4, iterations=2, dtype=dtype, random_state=0).fit(as_float)
    assert np.array_equal(a.user_factors, b.user_factors)
    assert np.array_equal(a.item_factors, b.item_factors)
    ids_a, scores_a = a.recommend([0, 1, 2], k=5)
    ids_b, scores_b = b.recommend([0, 1, 2], k=5)
    assert np.array_equal(ids_a, ids_b) and np.array_equal(scores_a, scores_b)


RATING_FORMS = {
    "int8": lambda r: r.astype(np.int8),
    "uint8": lambda r: r.astype(np.uint8),
    "float16": lambda r: r.astype(np.float16),
    "float32": lambda r: r.astype(np.float32),
    "big-endian": lambda r: r.astype(">f8"),
    "list": lambda r: r.astype(int).tolist(),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["SVD", "SVDpp", "ExplicitALS"])
def test_rating_models_train_on_the_values_of_any_rating_dtype(kind, dtype):
    u, i, r = ratings_triples()
    cls = getattr(recfuse, kind)
    base = cls(factors=3, dtype=dtype, random_state=0).fit(u, i, r)
    for name, form in RATING_FORMS.items():
        model = cls(factors=3, dtype=dtype, random_state=0).fit(u, i, form(r))
        assert np.array_equal(model.user_factors, base.user_factors), name
        assert model.global_mean == base.global_mean and model.rating_scale == (1.0, 5.0)
    # one sparse matrix of uint8 ratings (each stored entry a rating, duplicates included)
    coo = sp.coo_matrix((r.astype(np.uint8), (u, i)), shape=(30, 24))
    from_matrix = cls(factors=3, dtype=dtype, random_state=0).fit(coo)
    ref = cls(factors=3, dtype=dtype, random_state=0).fit(
        sp.coo_matrix((r, (u, i)), shape=(30, 24)))
    assert np.array_equal(from_matrix.user_factors, ref.user_factors)


@pytest.mark.parametrize("kind", ["SVD", "ExplicitALS"])
def test_float32_rating_models_refuse_ratings_beyond_float32(kind):
    """Ratings must be finite in the model's dtype: a float64 4e38 is not a float32; the
    model stays unfitted, and float64 takes a value float32 cannot."""
    cls = getattr(recfuse, kind)
    model = cls(factors=2, dtype=np.float32)
    with pytest.raises(ValueError, match="ratings"):
        model.fit([0, 1], [0, 1], [1.0, 4e38])
    assert model.user_factors is None


# ------------------------------------------------------------- retrieval: tables, queries


TABLE_FORMS = {
    "float16": (lambda V: V.astype(np.float16), np.float32),
    "int8": (lambda V: np.round(V * 20).astype(np.int8), np.float32),
    "uint8": (lambda V: np.round(np.abs(V) * 20).astype(np.uint8), np.float32),
    "int64": (lambda V: np.round(V * 20).astype(np.int64), np.float32),
    "uint64": (lambda V: np.round(np.abs(V) * 20).astype(np.uint64), np.float32),
    ">f4": (lambda V: V.astype(">f4"), np.float32),
    ">f8": (lambda V: V.astype(">f8"), np.float64),
    "fortran f4": (lambda V: np.asfortranarray(V.astype(np.float32)), np.float32),
    "strided f8": (lambda V: np.repeat(V, 2, axis=1)[:, ::2], np.float64),
    "read-only f4": (lambda V: _read_only(V.astype(np.float32)), np.float32),
    "list": (lambda V: V.tolist(), np.float64),
}


def _read_only(array):
    array.flags.writeable = False
    return array


@st.composite
def tables(draw):
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((n, d))
    if draw(st.booleans()):  # ties: rows repeated
        V[rng.integers(0, n, n // 2)] = V[0]
    Q = rng.standard_normal((draw(st.integers(1, 4)), d))
    return V, Q, draw(st.integers(1, n + 3))


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("form", list(TABLE_FORMS))
@pytest.mark.parametrize("backend", HOST)
@settings(HYPOTHESIS, max_examples=8)
@given(data=tables())
def test_item_index_table_dtypes(backend, form, metric, data):
    """Each table dtype becomes the documented one (float32/float64 kept, the rest float32);
    scores come in it, ranked, ties by id, and match a float64 oracle computed on the
    converted table."""
    V, Q, k = data
    make, kept = TABLE_FORMS[form]
    items = make(V)
    index = recfuse.ItemIndex(items, metric=metric, backend=backend)
    assert index.items.dtype == np.dtype(kept)
    ids, scores = index.search(Q, k)
    assert ids.dtype == np.int64 and scores.dtype == np.dtype(kept)
    assert_ranked(ids, scores)
    table = np.asarray(items, dtype=kept).astype(np.float64)
    queries = np.asarray(Q, dtype=kept).astype(np.float64)
    S = queries @ table.T
    if metric == "cosine":
        qn = np.linalg.norm(queries, axis=1)
        tn = np.linalg.norm(table, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            S = np.where(tn[None, :] > 0, S / np.where(tn > 0, tn, 1)[None, :], 0.0)
            S = np.where(qn[:, None] > 0, S / np.where(qn > 0, qn, 1)[:, None], 0.0)
    oracle_check(ids, scores, S, np.ones(S.shape, bool), kept)
    one_ids, one_scores = index.search(Q[0], k)
    assert one_scores.dtype == np.dtype(kept)
    if backend != "numpy":  # numpy's BLAS: see test_recommender_batch_answers_are_...
        assert np.array_equal(one_ids, ids[0]) and np.array_equal(one_scores, scores[0])


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("table_dtype", DTYPES)
def test_queries_of_other_dtypes_are_converted_to_the_table_dtype(backend, table_dtype):
    """float64, float16, int and big-endian queries give exactly the answers of the same
    queries in the table's dtype; a float64 query beyond float32's range is refused by a
    float32 table (ValueError naming queries), taken by a float64 one."""
    rng = np.random.default_rng(3)
    V = rng.standard_normal((25, 4)).astype(table_dtype)
    index = recfuse.ItemIndex(V, backend=backend)
    base = rng.standard_normal((3, 4))
    for form in (base, base.astype(np.float16), np.round(base * 4).astype(np.int16),
                 base.astype(">f8"), base.astype(np.float32)):
        want = index.search(np.asarray(form).astype(table_dtype), 6)
        got = index.search(form, 6)
        assert got[1].dtype == np.dtype(table_dtype)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    huge = base.copy()
    huge[0, 0] = 1e39
    if table_dtype == np.float32:
        with pytest.raises(ValueError, match="queries"):
            index.search(huge, 3)
    else:
        ids, scores = index.search(huge, 3)
        assert np.isfinite(scores).all()


@pytest.mark.parametrize("table_dtype", DTYPES)
@pytest.mark.parametrize("backend", HOST)
def test_padding_is_minus_inf_in_the_table_dtype(backend, table_dtype):
    V = np.eye(3, dtype=table_dtype)
    ids, scores = recfuse.topk(np.ones((2, 3), table_dtype), V, 5, backend=backend,
                               exclude=sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 1]])))
    assert scores.dtype == np.dtype(table_dtype)
    assert ids[0].tolist() == [1, 2, -1, -1, -1] and ids[1].tolist() == [-1] * 5
    assert np.all(np.isneginf(scores[0, 2:])) and np.all(np.isneginf(scores[1]))


@st.composite
def odd_float32_tables(draw):
    n = draw(st.integers(1, 70))
    d = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    V = rng.standard_normal((n, d)).astype(np.float32)
    scale = draw(st.sampled_from([1.0, 1e-38, 1e-42, 1e15, 1e-20, 3.0]))
    V *= np.float32(scale)
    if draw(st.booleans()):
        V[rng.integers(0, n, max(1, n // 3))] = V[0]
    Q = rng.standard_normal((draw(st.integers(1, 5)), d)).astype(np.float32)
    return V, Q, draw(st.integers(1, n + 2))


@settings(HYPOTHESIS, max_examples=40)
@given(data=odd_float32_tables(), form=st.sampled_from(["float16-free", "fortran", ">f4"]))
def test_bfloat16_storage_equals_native_on_tables_of_any_layout(data, form):
    """storage="bfloat16" gives the native storage's ids and scores bit for bit, for tables
    of tiny (subnormal), large and tied values, given as Fortran order or big-endian."""
    if "cpu" not in BACKENDS:
        pytest.skip("cpu backend not available")
    V, Q, k = data
    given_table = {"float16-free": V, "fortran": np.asfortranarray(V),
                   ">f4": V.astype(">f4")}[form]
    native = recfuse.ItemIndex(given_table, storage="native", backend="cpu").search(Q, k)
    bf16 = recfuse.ItemIndex(given_table, storage="bfloat16", backend="cpu").search(Q, k)
    assert np.array_equal(native[0], bf16[0])
    assert np.array_equal(native[1].view(np.uint32), bf16[1].view(np.uint32))


# ---------------------------------------------------------------------- bfloat16 rounding


def bfloat16_oracle(values: np.ndarray) -> np.ndarray:
    """Nearest bfloat16 of each float32, ties to even, from the two bfloat16 neighbours
    compared in float64 (exact: every float32 and bfloat16 is a float64)."""
    x = np.asarray(values, np.float32)
    out = np.empty(x.size, np.float32)
    for position, value in enumerate(x.ravel()):
        if np.isnan(value):
            out[position] = np.nan
            continue
        bits = int(np.array(value, np.float32).view(np.uint32))
        low_bits = bits & 0xFFFF0000  # toward zero
        low = np.array(low_bits, np.uint32).view(np.float32)
        if low_bits == bits:
            out[position] = low
            continue
        high = np.array(low_bits + 0x10000, np.uint32).view(np.float32)  # away from zero
        # away from the largest bfloat16: the next "value" is 2**128 (rounds to inf)
        high_value = float(high) if np.isfinite(high) else np.copysign(2.0**128, float(value))
        d_low = abs(float(value) - float(low))
        d_high = abs(high_value - float(value))
        if d_low < d_high or (d_low == d_high and (low_bits >> 16) % 2 == 0):
            out[position] = low
        else:
            out[position] = high if np.isfinite(high) else np.copysign(np.inf, value)
    return out.reshape(x.shape)


SPECIAL_BITS = [0x00000000, 0x80000000, 0x00008000, 0x00018000, 0x00017FFF, 0x3F808000,
                0x3F818000, 0x3F80FFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7F8000,
                0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x7FC00000, 0x7F800001]


@settings(HYPOTHESIS, max_examples=80)
@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_round_to_bfloat16_is_round_to_nearest_even(bits):
    values = np.array(bits + SPECIAL_BITS, np.uint64).astype(np.uint32).view(np.float32)
    got = reference.round_to_bfloat16(values)
    want = bfloat16_oracle(values)
    assert got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(want))
    same = ~np.isnan(want)
    assert np.array_equal(got[same].view(np.uint32), want[same].view(np.uint32))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_emulated_bfloat16_layers_round_ties_to_even(backend):
    """A middle layer whose inputs sit exactly halfway between two bfloat16 values: the
    emulating backends' score equals the reference's (inputs and weights rounded to nearest
    even), not a truncation or a round-half-up."""
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not available")
    halfway = np.array([0x3F808000, 0x3F818000, 0x40008000, 0xBF808000], np.uint32).view(
        np.float32)
    W1 = np.eye(4, dtype=np.float32)
    W2 = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 0.5, 2.0]], np.float32)
    W2[0, 0] = np.array(0x3F808000, np.uint32).view(np.float32)  # a weight at a tie
    W3 = np.array([[1.0, 1.0]], np.float32)
    layers = [(W1, None, "identity"), (W2, None, "identity"), (W3, None, "identity")]
    scorer = recfuse.MLPScorer(layers, precision="bfloat16", backend=backend)
    got = scorer.score(halfway[None, :])
    want = reference.mlp_forward(layers, halfway[None, :].astype(np.float64), "bfloat16")[:, 0]
    assert got.dtype == np.float32
    assert got[0] == np.float32(want[0])


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("backend", HOST_MLP)
def test_mlp_output_dtypes_and_padding(backend, precision):
    """Scores float32 whatever the inputs' dtype (float16, float64, int); rank gives int64
    ids, float32 scores and -1/-inf padding; a float64 input beyond float32 is refused."""
    rng = np.random.default_rng(0)
    layers = [(rng.standard_normal((6, 5)), None, "relu"),
              (rng.standard_normal((4, 6)), rng.standard_normal(4), "tanh"),
              (rng.standard_normal((1, 4)), None, "identity")]
    try:
        scorer = recfuse.MLPScorer(layers, precision=precision, backend=backend)
    except ValueError as error:  # cpu bfloat16 without AVX512-BF16: documented refusal
        assert "AVX512-BF16" in str(error)
        pytest.skip(str(error))
    users = rng.standard_normal((3, 2))
    items = rng.standard_normal((8, 3))
    cand = rng.integers(0, 8, (3, 4))
    base = scorer.score_candidates(users.astype(np.float32), cand, items.astype(np.float32))
    for form in (users, users.astype(np.float16).astype(np.float32), users.astype(">f8")):
        scores = scorer.score_candidates(form, cand, items)
        assert scores.dtype == np.float32 and scores.shape == (3, 4)
    assert np.array_equal(scorer.score_candidates(users.astype(">f8"), cand, items), base)
    ids, top = scorer.rank(users, cand, items, k=6)
    assert ids.dtype == np.int64 and top.dtype == np.float32
    assert np.all(ids[:, 4:] == -1) and np.all(np.isneginf(top[:, 4:]))
    assert_ranked(ids, top)
    huge = users.copy()
    huge[0, 0] = 1e39
    with pytest.raises(ValueError, match="user_vectors"):
        scorer.score_candidates(huge, cand, items)
    assert isinstance(scorer.score(np.zeros(5)), np.float32)


# ------------------------------------------------------------ fold-in against given tables


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("table_form", ["int8", "float16"])
def test_fold_in_against_an_assigned_table_uses_its_values(table_form, dtype):
    """item_factors assigned by hand as int8 or float16 (recommend takes them): update_users
    must solve against those values, as it does against the same table in the model's
    dtype. int8's gram wraps around (a wrong vector, no error); float16's overflows past
    65504 (a refusal naming float32/float64 sums)."""
    UI = sp.random(30, 20, density=0.3, format="csr", random_state=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    if table_form == "int8":
        Y = rng.integers(-20, 20, (20, 4)).astype(np.int8)
    else:
        Y = (rng.standard_normal((20, 4)) * 60).astype(np.float16)
    models = []
    for table in (Y, Y.astype(dtype)):
        model = recfuse.ALS(factors=4, iterations=2, dtype=dtype, random_state=0,
                            solver="cholesky").fit(UI)
        model.item_factors = table
        models.append(model)
    want = models[1].update_users([3], UI[3])
    got = models[0].update_users([3], UI[3])
    assert np.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_fold_in_against_an_assigned_float64_table_of_a_float32_model():
    """The passing counterpart: a float64 table assigned to a float32 model folds in as the
    float32 table does (both become float32 sums)."""
    UI = sp.random(30, 20, density=0.3, format="csr", random_state=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((20, 4))
    out = []
    for table in (Y, Y.astype(np.float32)):
        model = recfuse.ALS(factors=4, iterations=2, random_state=0, solver="cholesky").fit(UI)
        model.item_factors = table
        out.append(model.update_users([3], UI[3]))
    assert out[0].dtype == out[1].dtype == np.float32
    assert np.allclose(out[0], out[1], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- serving


def _als_with_tables(dtype, X, Y, seen):
    model = recfuse.ALS(factors=X.shape[1], iterations=1, dtype=dtype, random_state=0).fit(
        sp.csr_matrix(seen.astype(np.float64)))
    model.user_factors = X.astype(dtype)
    model.item_factors = Y.astype(dtype)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_recommender_float64_model_ties_by_smaller_id_in_returned_scores(backend):
    """Items 0 and 1 score 1 and 1 + 2**-30 in float64: the same float32. The Recommender
    returns float32 scores, and its lists must follow topk's rule on them: ties by the
    smaller id, so item 0 first (and item 0 when k = 1)."""
    X = np.array([[1.0, 0.0], [1.0, 0.0]])
    Y = np.array([[1.0, 0.0], [1.0 + 2**-30, 0.0], [0.5, 0.0]])
    seen = np.array([[0, 0, 1], [0, 0, 1]])
    model = _als_with_tables(np.float64, X, Y, seen)
    model.backend = backend
    r = recfuse.Recommender(model, k=2).recommend(0)
    assert r.scores.dtype == np.float32
    assert r.scores[0] == r.scores[1]
    assert r.ids.tolist() == [0, 1]
    assert recfuse.Recommender(model, k=1).recommend(0).ids.tolist() == [0]


def test_recommender_svd_tie_created_by_the_offset_at_the_cut():
    """A float32 SVD whose items 0 and 1 have biases 1 and nextafter(1): with the offset
    mu = 3.3 both predictions round to the same float32 (4.3). SVD.recommend(k=1) gives
    item 0 (the smaller id, by its tie loop); the Recommender must too."""
    u = np.array([0, 0, 1, 1, 2, 2, 2])
    i = np.array([2, 3, 0, 1, 0, 1, 3])
    r = np.array([1, 2, 3, 4, 5, 1, 2.0])
    model = recfuse.SVD(factors=1, dtype=np.float32, random_state=0, epochs=1).fit(u, i, r)
    state = model._fitted
    item_bias = np.zeros_like(state.item_bias)
    item_bias[0] = 1.0
    item_bias[1] = np.nextafter(np.float32(1.0), np.float32(2.0))
    model._fitted = dataclasses.replace(
        state, user_factors=np.ones_like(state.user_factors),
        item_factors=np.zeros_like(state.item_factors), item_bias=item_bias,
        user_bias=np.zeros_like(state.user_bias), global_mean=3.3)
    model._retrieval_cache = None
    assert model.recommend(0, k=1)[0].tolist() == [0]  # the model's own rule
    r = recfuse.Recommender(model, k=1).recommend(0)
    assert r.ids.tolist() == [0]


@pytest.mark.parametrize("backend", ["cpu", "numba", "numpy"])
def test_recommender_batch_answers_are_the_solo_answers(backend):
    """MicroBatcher: "Each request is answered as if recommender.recommend(...) had been
    called alone", by one batched recall call; recommend is "a batch of one": the same bits.
    The numpy backend scored a batch with BLAS gemm and one query with gemv, whose float32
    sums differ in their last bits (and so may the order of near-ties): it now scores each
    query alone."""
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not available")
    UI = sp.random(300, 500, density=0.05, format="csr", random_state=1)
    model = recfuse.ALS(factors=16, iterations=3, random_state=0, backend=backend).fit(UI)
    rec = recfuse.Recommender(model, k=10)
    users = np.arange(60)
    batch = rec.recommend_batch(users)
    for user in users.tolist():
        alone = rec.recommend(user)
        assert np.array_equal(batch.ids[user], alone.ids)
        assert np.array_equal(batch.scores[user], alone.scores), user
    with recfuse.MicroBatcher(rec, max_wait=0.05) as batcher:
        futures = [batcher.submit(user) for user in users.tolist()]
        answers = [future.result(timeout=60) for future in futures]
    for user, answer in zip(users.tolist(), answers):
        assert np.array_equal(answer.scores, rec.recommend(user).scores), user


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODELS)
def test_recommender_lists_are_the_models_lists(kind, dtype):
    """Without ranker or re-ranking, the Recommender's list is the model's recommend list
    (seen items filtered), its scores float32 within rounding of the model's."""
    model = fitted(kind, dtype, "cpu")
    rec = recfuse.Recommender(model, k=6)
    users = np.arange(model.user_factors.shape[0])
    batch = rec.recommend_batch(users)
    ids, scores = model.recommend(users, k=6)
    assert batch.scores.dtype == np.float32 and batch.ids.dtype == np.int64
    warm = (batch.stages[:, 0] != "popular")
    assert warm.any()
    assert np.array_equal(batch.ids[warm], ids[warm])
    real = batch.ids[warm] >= 0
    assert np.allclose(batch.scores[warm][real], scores[warm][real], rtol=2e-6, atol=1e-6)
    one = rec.recommend(int(np.flatnonzero(warm)[0]))
    assert one.scores.dtype == np.float32 and one.ids.dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", HOST_ALS)
def test_observe_fold_in_is_update_users_in_the_models_dtype(backend, dtype, tmp_path):
    """observe on a loaded (mmap) ALS: the user's list is the one of update_users with the
    same row, in both dtypes; a new user too."""
    UI = implicit_matrix()
    model = recfuse.ALS(factors=4, iterations=4, dtype=dtype, random_state=0,
                        solver="cholesky", backend=backend).fit(UI)
    path = str(tmp_path / "m.npz")
    model.save(path)
    rec = recfuse.Recommender(recfuse.load(path, mmap=True), k=5)
    rec.observe({"user": [3, 3, 40], "item": [0, 5, 2], "weight": [2.0, 1.0, 1.0]})
    row = UI[3].toarray().ravel()
    row[0] += 2
    row[5] += 1
    fresh = recfuse.load(path)
    new = fresh.update_users([3, 40], sp.csr_matrix(np.vstack([row, np.eye(24)[2]])))
    Y = fresh.item_factors.astype(np.float64)
    for user, vector, seen in ((3, new[0], np.flatnonzero(row)), (40, new[1], [2])):
        S = vector.astype(np.float64) @ Y.T
        S[seen] = -np.inf
        want = np.lexsort((np.arange(24), -S))[:5]
        got = rec.recommend(user)
        assert got.ids.tolist() == want.tolist()
        assert np.allclose(got.scores, S[want], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- SVD ties and predict


@settings(HYPOTHESIS, max_examples=40)
@given(biases=st.lists(st.integers(0, 6), min_size=3, max_size=12),
       mean=st.sampled_from([3.3, 1e3 + 0.1, 7.000001, 0.0]), k=st.integers(1, 12))
def test_svd_recommend_is_ordered_on_its_returned_float32_scores(biases, mean, k):
    """Item biases a few float32 ulps apart plus a float64 offset: the returned scores are
    float32(float64(b_i) + mu), ranked by those values, ties to the smaller id, k-th cut
    included (oracle from the values themselves)."""
    n_items = len(biases)
    u = np.array([0] * n_items + [1])
    i = np.array(list(range(n_items)) + [0])
    r = np.ones(n_items + 1)
    model = recfuse.SVD(factors=1, dtype=np.float32, random_state=0, epochs=1).fit(u, i, r)
    state = model._fitted
    item_bias = np.array([np.nextafter(np.float32(1.0), np.float32(2.0))] * n_items, np.float32)
    for j, steps in enumerate(biases):
        value = np.float32(1.0)
        for _ in range(steps):
            value = np.nextafter(value, np.float32(2.0))
        item_bias[j] = value
    model._fitted = dataclasses.replace(
        state, user_factors=np.ones_like(state.user_factors),
        item_factors=np.zeros_like(state.item_factors), item_bias=item_bias,
        user_bias=np.zeros_like(state.user_bias), global_mean=mean)
    model._retrieval_cache = None
    ids, scores = model.recommend(1, k=k, filter_seen=False)
    values = (item_bias.astype(np.float64) + mean).astype(np.float32)
    order = np.lexsort((np.arange(n_items), -values.astype(np.float64)))[:k]
    assert scores.dtype == np.float32
    assert ids[:order.size].tolist() == order.tolist()
    assert np.array_equal(scores[:order.size], values[order])


# ------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("id_dtype", [np.int8, np.int16, np.int32, np.uint16, np.int64])
def test_ranking_metrics_take_ids_of_any_integer_dtype(id_dtype):
    test = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [1, 1, 1, 0, 0]],
                                  np.float32))
    recommended = np.array([[3, 1, 0], [2, 4, 1], [4, 0, 3]])
    if np.iinfo(id_dtype).min < 0:
        recommended[1, 2] = -1
    want = recfuse.metrics.ranking_metrics(recommended.astype(np.int64), test)
    got = recfuse.metrics.ranking_metrics(recommended.astype(id_dtype), test)
    assert got == want


@pytest.mark.parametrize("table_dtype", [np.float16, np.float32, np.float64, np.int8,
                                         np.longdouble])
@pytest.mark.parametrize("scale", [1.0, 1e-20, 1e18])
def test_intra_list_diversity_against_a_float64_oracle(table_dtype, scale):
    """1 - cosine in any table dtype, against float64 on the table's own values (float32's
    squares of 1e18 and 1e-20 overflow and underflow: the result must not)."""
    rng = np.random.default_rng(0)
    V = rng.standard_normal((10, 4)) * (1.0 if table_dtype in (np.int8,) else scale)
    if table_dtype is np.int8:
        V = np.round(V * 20)
    with np.errstate(over="ignore", under="ignore"):
        table = V.astype(table_dtype)
    norms = np.linalg.norm(table.astype(np.float64), axis=1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        pytest.skip(f"{np.dtype(table_dtype).name} does not hold values of {scale}")
    ids = np.array([[0, 1, 2], [3, 4, -1], [5, -1, -1]])
    T = table.astype(np.float64)
    T = T / np.linalg.norm(T, axis=1, keepdims=True)
    per = []
    for row in ids:
        real = row[row >= 0]
        if real.size < 2:
            continue
        pairs = [(a, b) for x, a in enumerate(real) for b in real[x + 1:]]
        per.append(np.mean([1 - T[a] @ T[b] for a, b in pairs]))
    got = recfuse.metrics.intra_list_diversity(ids, table)
    assert abs(got - float(np.mean(per))) < 1e-5


def test_a_longdouble_table_keeps_float64_range():
    """longdouble items become float64, not float32 (where 1e39 was inf)."""
    index = recfuse.ItemIndex(np.array([[1e39], [1.0]], dtype=np.longdouble))
    assert index.items.dtype == np.float64
    ids, scores = index.search([1.0], 2)
    assert ids.tolist() == [0, 1] and scores.tolist() == [1e39, 1.0]

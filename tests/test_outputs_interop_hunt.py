"""Adversarial hunt on what recfuse hands to other tools: DataFrames, Parquet files, JSON on
stdout and over HTTP, metric dicts, and the answer/event tuples of the serving layer.

The contract used here (docstrings, README "Using it", "Serving", "The data path" and the
command-line paragraph, python/recfuse/cli.py's module docstring):

- ``Interactions.to_frame``: columns user, item (external ids, in the id map's type), value
  (weighted, float32), count (int32) and, with timestamps, timestamp; ``from_events`` of that
  frame (weight="value") gives the same id maps and matrix, from pandas, polars or Arrow.
- ``recommend_all``: chunks ``(user_ids, item_ids, scores)`` as from ``recommend``; with
  ``path`` a Parquet file, one row per recommendation, columns user, rank, item, score,
  padding dropped, written atomically (a temporary file renamed over ``path``); returns the
  rows written. A file without rows keeps the schema.
- The CLI's ``--json``: one JSON object on stdout; a number that is not finite is null (JSON
  has no NaN or Infinity); ``recommend`` lists each user under the model's own id.
- The HTTP API: JSON in and out, scores that are not finite are null, ids named as the
  training log names them (integers or strings).
- ``Recommendation``: ids int64 (-1 pads), scores float32 (-inf pads), stages str ("" pads);
  ``Events``: int64, int64, float64, int64; the README's ``np.savez`` / ``Events(**np.load)``
  round trip replays the log.
- Metric dicts hold plain Python floats and ints (``json.dumps`` works); NaN where documented.

Each test marked ``xfail(strict=True)`` pins a bug found here (see
/work/notes/hunt-outputs-interop-ad.md); the rest are regression tests of what held.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import stat
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import cli, metrics, split

pd = pytest.importorskip("pandas", reason="pandas (data extra) is not installed")
pa = pytest.importorskip("pyarrow", reason="pyarrow (data extra) is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (data extra) is not installed")

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def run_cli(*args) -> tuple[int, str, str]:
    """``recfuse ARGS`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def implicit_matrix(n_users=30, n_items=20, density=0.25, seed=0):
    X = sp.random(n_users, n_items, density=density, format="csr", random_state=seed,
                  dtype=np.float32)
    X.data[:] = 1 + np.arange(X.nnz) % 3
    return X


@pytest.fixture(scope="module")
def als():
    return recfuse.ALS(factors=3, iterations=2, random_state=0).fit(implicit_matrix())


# ============================================================================ to_frame


ID_KINDS = {
    # name: (user ids, item ids), five events each
    "strings": (["b", "ü", "", "x" * 500, "b"], ["i1", "i2", "i1", "€", "i2"]),
    "past_int32": ([2**40, 1, -5, 2**62, 7], [3, 2**35, 3, 1, 1]),
    "uint64": (np.array([2**64 - 1, 1, 2, 3, 2**63], np.uint64),
               np.array([1, 2, 3, 4, 5], np.uint64)),
    "datetime": (np.array(["2020-01-01", "2021-01-01", "2020-01-01", "2022-01-01",
                           "2023-01-01"], "datetime64[ns]"), [1, 2, 3, 4, 5]),
    "floats": (np.array([1.5, 2.5, 1.5, -0.0, 3.0]), [1, 2, 3, 4, 5]),
    "booleans": (np.array([True, False, True, False, True]), [1, 2, 3, 4, 5]),
    "small_ints": (np.array([1, 2, 3, 4, 5], np.int8), np.array([5, 4, 3, 2, 1], np.int16)),
}


def same_interactions(a, b) -> bool:
    return (a.user_ids == b.user_ids and a.item_ids == b.item_ids and a.shape == b.shape
            and (a.matrix != b.matrix).nnz == 0
            and np.array_equal(a.matrix.indices, b.matrix.indices))


@pytest.mark.parametrize("kind", list(ID_KINDS))
def test_to_frame_schema_and_round_trip_through_pandas_polars_arrow(kind):
    users, items = ID_KINDS[kind]
    log = recfuse.Interactions.from_arrays(users, items, [1, 2, 3, 4, 5])
    frame = log.to_frame()
    assert list(frame.columns) == ["user", "item", "value", "count"]
    assert frame["value"].dtype == np.float32 and frame["count"].dtype == np.int32
    assert len(frame) == len(log) == log.nnz
    # the external ids, of the map's type (strings: any string dtype pandas picks)
    assert np.array_equal(frame["user"].to_numpy(), log.user_ids.ids[log.user_codes])
    assert np.array_equal(frame["item"].to_numpy(), log.item_ids.ids[log.matrix.indices])
    if log.user_ids.ids.dtype.kind not in "OU":
        assert frame["user"].dtype == log.user_ids.ids.dtype
    assert int(frame["count"].sum()) == log.n_events
    sources = [frame, {column: frame[column].to_numpy() for column in frame.columns},
               pa.Table.from_pandas(frame, preserve_index=False)]
    polars = pytest.importorskip("polars")
    sources.append(polars.from_pandas(frame))
    for source in sources:
        back = recfuse.Interactions.from_events(source, weight="value")
        assert same_interactions(back, log), type(source).__name__


def test_to_frame_categorical_ids_round_trip():
    users = pd.Series(pd.Categorical(["z", "y", "z", "x"], categories=["z", "y", "x", "w"]))
    items = pd.Series(pd.Categorical(["a", "b", "c", "a"], categories=["c", "b", "a"]))
    log = recfuse.Interactions.from_arrays(users, items)
    frame = log.to_frame()
    assert log.user_ids.ids.tolist() == ["x", "y", "z"]  # sorted ids, unused category gone
    assert frame["user"].tolist() == ["x", "y", "z", "z"]
    assert same_interactions(recfuse.Interactions.from_events(frame, weight="value"), log)


def test_to_frame_with_timestamps_round_trips_the_times():
    times = pd.to_datetime(["2020-01-01T00:00:00", "2020-01-02T00:00:00",
                            "2020-01-03T12:00:00.000000001"], format="ISO8601")
    log = recfuse.Interactions.from_arrays(["a", "b", "a"], [1, 2, 1], [1.0, 2.0, 3.0],
                                           timestamps=times, combine="last")
    frame = log.to_frame()
    assert list(frame.columns) == ["user", "item", "value", "count", "timestamp"]
    assert frame["timestamp"].dtype == np.dtype("datetime64[ns]")
    back = recfuse.Interactions.from_events(frame, weight="value", timestamp="timestamp")
    assert np.array_equal(back.timestamps, log.timestamps)
    assert same_interactions(back, log)


def test_an_empty_to_frame_keeps_its_columns_and_dtypes():
    times = pd.to_datetime(["2020-01-01", "2020-01-02"])
    log = recfuse.Interactions.from_arrays([2**40, 3], ["a", "b"], timestamps=times)
    full = log.to_frame()
    for empty in (log.subset(np.zeros(len(log), bool)), log.filter(min_user_count=10)):
        frame = empty.to_frame()
        assert len(frame) == 0 and list(frame.columns) == list(full.columns)
        for column in ("value", "count", "timestamp"):
            assert frame[column].dtype == full[column].dtype
        assert frame["user"].dtype == full["user"].dtype


def test_to_frame_value_is_the_weighted_value_aligned_with_count():
    log = recfuse.Interactions.from_arrays(["a", "a", "b", "c"], [1, 1, 2, 1],
                                           weighting="log1p")
    frame = log.to_frame()
    np.testing.assert_array_equal(frame["value"].to_numpy(), log.matrix.data)
    assert frame["count"].tolist() == log.counts.tolist() == [2, 1, 1]


# ============================================================================ recommend_all


def rows_of_recommend(model, k, filter_seen=True):
    """(user, rank, item, score) rows from ``recommend`` of every user, padding dropped."""
    users = np.arange(model.user_factors.shape[0])
    ids, scores = model.recommend(users, k=k, filter_seen=filter_seen)
    keep = ids >= 0
    return pd.DataFrame({
        "user": np.repeat(users, k)[keep.ravel()].astype(np.int64),
        "rank": np.tile(np.arange(k, dtype=np.int32), users.size)[keep.ravel()],
        "item": ids[keep], "score": scores[keep]})


@HYPOTHESIS
@given(n_users=st.integers(1, 12), n_items=st.integers(1, 9), k=st.integers(1, 12),
       batch=st.integers(1, 5), density=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
       filter_seen=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       ties=st.booleans(), seed=st.integers(0, 3))
def test_recommend_all_parquet_equals_recommend(tmp_path, n_users, n_items, k, batch, density,
                                                 filter_seen, dtype, ties, seed):
    X = implicit_matrix(n_users, n_items, density, seed)
    model = recfuse.ALS(factors=2, iterations=1, random_state=seed, dtype=dtype).fit(X)
    if ties:  # every item the same vector: ties everywhere, broken by the smaller id
        model.item_factors = np.ones_like(model.item_factors)
    expected = rows_of_recommend(model, k, filter_seen)
    path = tmp_path / f"r-{n_users}-{n_items}-{k}-{batch}.parquet"
    written = model.recommend_all(k=k, path=path, batch_size=batch, filter_seen=filter_seen)
    assert written == len(expected)
    table = pq.read_table(path)
    assert table.schema.names == ["user", "rank", "item", "score"]
    assert [str(t) for t in table.schema.types] == \
        ["int64", "int32", "int64", "float" if dtype == np.float32 else "double"]
    got = table.to_pandas()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # the chunks are recommend's own arrays, user ids int64 and in order
    chunks = list(model.recommend_all(k=k, batch_size=batch, filter_seen=filter_seen))
    assert np.concatenate([c[0] for c in chunks]).tolist() == list(range(n_users))
    ids, scores = model.recommend(np.arange(n_users), k=k, filter_seen=filter_seen)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), ids)
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), scores)


def test_recommend_all_parquet_reads_the_same_in_pandas_and_polars(als, tmp_path):
    polars = pytest.importorskip("polars")
    path = tmp_path / "recs.parquet"
    als.recommend_all(k=25, path=path, batch_size=7)  # k above the 20 items: short lists
    expected = rows_of_recommend(als, 25)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)
    frame = polars.read_parquet(path)
    assert frame.columns == ["user", "rank", "item", "score"]
    assert [str(t) for t in frame.dtypes] == ["Int64", "Int32", "Int64", "Float32"]
    assert frame["item"].to_list() == expected["item"].tolist()
    assert frame["score"].to_numpy().tobytes() == expected["score"].to_numpy().tobytes()
    # ranks run 0.. without a gap for every user, short lists included
    for _, group in expected.groupby("user"):
        assert group["rank"].tolist() == list(range(len(group)))


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (4, 5)], ids=["no_users", "no_items",
                                                                   "all_seen"])
@pytest.mark.parametrize("model_class", [recfuse.ALS, recfuse.BPR])
def test_recommend_all_without_rows_keeps_the_schema(tmp_path, shape, model_class):
    X = sp.csr_matrix(np.ones(shape, np.float32)) if shape == (4, 5) else \
        sp.csr_matrix(shape, dtype=np.float32)
    model = model_class(factors=2, iterations=1, random_state=0).fit(X)
    path = tmp_path / "empty.parquet"
    assert model.recommend_all(k=3, path=path) == 0
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names == ["user", "rank", "item", "score"]
    assert [str(t) for t in table.schema.types] == ["int64", "int32", "int64", "float"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_recommend_all_that_fails_midway_leaves_the_old_file(als, tmp_path, monkeypatch,
                                                              failure):
    path = tmp_path / "recs.parquet"
    path.write_bytes(b"the previous run's file")
    real, calls = type(als).recommend, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two batches written, then the third fails
            raise failure("interrupted")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(als), "recommend", failing)
    with pytest.raises(failure):
        als.recommend_all(k=3, path=path, batch_size=5)
    assert path.read_bytes() == b"the previous run's file"
    assert os.listdir(tmp_path) == ["recs.parquet"]  # no temporary file left


def test_recommend_all_replaces_a_file_keeping_its_mode(als, tmp_path):
    path = tmp_path / "recs.parquet"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    rows = als.recommend_all(k=2, path=str(path))
    assert pq.read_table(path).num_rows == rows == 60
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with pytest.raises(IsADirectoryError):
        als.recommend_all(k=2, path=tmp_path)
    assert pq.read_table(path).num_rows == 60  # refused before anything was written


def test_recommend_all_to_a_file_takes_a_k_above_the_catalogue(als, tmp_path, monkeypatch):
    # a machine of 64 MiB stands in for any machine: 30 users x k=10**7 padded is 3.4 GiB,
    # the file holds at most 30 x 20 rows
    monkeypatch.setattr(recfuse._validation, "physical_memory", lambda: 64 << 20)
    path = tmp_path / "recs.parquet"
    rows = als.recommend_all(k=10**7, path=path)
    pd.testing.assert_frame_equal(pq.read_table(path).to_pandas(), rows_of_recommend(als, 20))
    assert rows == len(rows_of_recommend(als, 20))


# ============================================================================ the CLI's JSON


@pytest.fixture(scope="module")
def string_folder(tmp_path_factory):
    """A `recfuse train` folder of a log with unicode, empty-looking and long string ids."""
    rng = np.random.default_rng(0)
    users = rng.integers(0, 25, 500)
    items = rng.integers(0, 15, 500)
    folder = tmp_path_factory.mktemp("cli")
    log = folder / "log.parquet"
    pq.write_table(pa.table({
        "user": [f"üser-{u}" if u else " " for u in users],
        "item": [f"ítem-{i}" + "x" * (300 if i == 3 else 0) for i in items]}), log)
    status, out, err = run_cli("train", log, "-o", folder / "model", "--factors", 4,
                               "--iterations", 2, "--json")
    assert status == 0, err
    return folder / "model"


def test_cli_recommend_json_is_strict_and_matches_the_model(string_folder):
    from recfuse.persistence import load_folder

    model, train = load_folder(str(string_folder))
    status, out, err = run_cli("recommend", string_folder, "üser-3", " ", "üser-3", "--k", 30,
                               "--json")
    assert status == 0, err
    result = strict_json(out)
    assert result["k"] == 30 and list(result["recommendations"]) == ["üser-3", " "]
    for user, listed in result["recommendations"].items():
        row = int(train.user_ids.to_internal([user])[0])
        ids, scores = model.recommend(row, user_items=train.matrix[row], k=30)
        keep = ids >= 0
        assert [entry["item"] for entry in listed] == \
            train.item_ids.to_external(ids[keep]).tolist()
        # floats exact: the float32 score, read back from the JSON text
        assert [np.float32(entry["score"]) for entry in listed] == scores[keep].tolist()
        assert all(isinstance(entry["item"], str) for entry in listed)


@pytest.fixture(scope="module")
def uint64_folder(tmp_path_factory):
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("cli64")
    log = folder / "log.parquet"
    users = rng.integers(0, 20, 400).astype(np.uint64) + np.uint64(2**63)
    pq.write_table(pa.table({"user": users, "item": rng.integers(0, 12, 400) * 2**40}), log)
    status, out, err = run_cli("train", log, "-o", folder / "model", "--factors", 3,
                               "--iterations", 2, "--json")
    assert status == 0, err
    return folder / "model", int(users[0])


def test_cli_recommend_json_keeps_integer_ids_past_int64_as_json_integers(uint64_folder):
    folder, user = uint64_folder
    status, out, err = run_cli("recommend", folder, user, "--k", 4, "--json")
    assert status == 0, err
    listed = strict_json(out)["recommendations"][str(user)]
    assert len(listed) == 4
    assert all(type(entry["item"]) is int and entry["item"] % 2**40 == 0 for entry in listed)


@pytest.mark.parametrize("unit", ["ns", "us", "s"])
def test_cli_recommend_json_names_datetime_item_ids_as_dates(tmp_path, unit):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 20, 300)
    days = rng.integers(0, 15, 300)
    items = (np.datetime64("2020-01-01", unit) + days.astype("timedelta64[D]")).astype(
        f"datetime64[{unit}]")
    pq.write_table(pa.table({"user": users, "item": items}), tmp_path / "log.parquet")
    status, _, err = run_cli("train", tmp_path / "log.parquet", "-o", tmp_path / "m",
                             "--factors", 3, "--iterations", 2, "--json")
    assert status == 0, err
    status, out, err = run_cli("recommend", tmp_path / "m", int(users[0]), "--k", 3, "--json")
    assert status == 0, err
    listed = strict_json(out)["recommendations"][str(users[0])]
    known = set(pd.to_datetime(items).tolist())
    assert listed and all(isinstance(entry["item"], str) and pd.Timestamp(entry["item"]) in known
                          for entry in listed)


def test_cli_recommend_json_cold_user_gets_the_popular_list(tmp_path):
    # user "solo"'s one pair is a stored zero: an ALS user of the zero vector (cold)
    log = pd.DataFrame({"user": ["a"] * 6 + ["b"] * 6 + ["c"] * 4 + ["solo"],
                        "item": [1, 2, 3, 4, 5, 6] * 2 + [1, 2, 3, 4] + [9],
                        "weight": [1.0] * 16 + [0.0]})
    log.to_parquet(tmp_path / "log.parquet")
    status, _, err = run_cli("train", tmp_path / "log.parquet", "-o", tmp_path / "m",
                             "--factors", 2, "--iterations", 1, "--split", "none",
                             "--weight", "weight", "--json")
    assert status == 0, err
    status, out, err = run_cli("recommend", tmp_path / "m", "solo", "a", "--k", 50, "--json")
    assert status == 0, err
    result = strict_json(out)
    assert result["popular"] == ["solo"]
    assert [e["score"] for e in result["recommendations"]["solo"]] == \
        [0.0] * len(result["recommendations"]["solo"])
    assert all(type(e["item"]) is int for e in result["recommendations"]["a"])


def test_cli_evaluate_and_info_json_are_strict(string_folder):
    status, out, err = run_cli("evaluate", string_folder, "--k", 5, "--json")
    assert status == 0, err
    result = strict_json(out)
    for name in ("precision", "recall", "map", "ndcg", "mrr", "hit_rate", "coverage",
                 "novelty"):
        assert isinstance(result[name], float) and math.isfinite(result[name])
    assert result["auc"] is None or isinstance(result["auc"], float)
    assert type(result["k"]) is int and type(result["users"]) is int
    status, out, err = run_cli("info", "--json")
    assert status == 0, err
    info = strict_json(out)
    assert {row["name"] for row in info["backends"]} == \
        {row.name for row in recfuse.backends()}
    assert all(type(row["available"]) is bool for row in info["backends"])


def test_cli_demo_json_on_a_tiny_log_writes_null_for_nan():
    status, out, err = run_cli("demo", "--users", 40, "--items", 15, "--events", 300,
                               "--factors", 2, "--iterations", 1, "--k", 200, "--json")
    assert status == 0, err
    result = strict_json(out)
    assert set(result["metrics"]) == {"popularity", "ALS"}
    # the popularity baseline has no item vectors: its diversity is NaN, written as null
    assert result["metrics"]["popularity"]["diversity"] is None
    assert result["popularity"] == result["metrics"]["popularity"]
    top = result["top"]
    # the synthetic log's ids are strings, named as the log names them
    assert type(top["user"]) is str and top["user"].startswith("user")
    assert all(type(e["item"]) is str and e["item"].startswith("item") for e in top["items"])
    assert all(type(e["score"]) is float for e in top["items"])


def test_cli_bench_json_file_has_no_nan_or_infinity(tmp_path, monkeypatch):
    suites = tmp_path / "bench"
    suites.mkdir()
    (suites / "bench_data.py").write_text(
        "import json, os\n"
        "out = os.environ['RECFUSE_BENCH_RESULTS']\n"
        "json.dump({'ingestion': [{'events': 1e6, 'ids': 10, 'speedup': float('inf')}],\n"
        "           'evaluation': [{'events': 1e6, 'speedup': float('nan')}]},\n"
        "          open(os.path.join(out, 'data.json'), 'w'))\n")
    monkeypatch.setenv("RECFUSE_BENCH_DIR", str(suites))
    status, out, err = run_cli("bench", "--output", tmp_path / "out", "--json")
    assert status == 0, err
    printed = strict_json(out)
    assert [row["speedup"] for row in printed["rows"]] == [None, None]  # stdout: null
    strict_json((tmp_path / "out" / "bench.json").read_text())  # the file: the same rule


def test_cli_recommend_takes_a_k_above_the_catalogue(string_folder, monkeypatch):
    monkeypatch.setattr(recfuse._validation, "physical_memory", lambda: 64 << 20)
    status, out, err = run_cli("recommend", string_folder, "üser-3", "--k", 2**31 - 1,
                               "--json")
    assert status == 0, err
    assert len(strict_json(out)["recommendations"]["üser-3"]) <= 15


# ============================================================================ HTTP JSON


@pytest.fixture(scope="module")
def http():
    pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="httpx (test extra) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from recfuse.server import create_app

    rng = np.random.default_rng(0)
    users = [f"ü{u}" if u else "" for u in rng.integers(0, 20, 300)]
    items = rng.integers(0, 15, 300).astype(np.uint64) + np.uint64(2**63)
    log = recfuse.Interactions.from_arrays(users, items)
    model = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(log.matrix)
    recommender = recfuse.Recommender(model, k=5, num_threads=1)
    embedded = recfuse.Recommender(model, k=5, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with TestClient(create_app(recommender, ids=log)) as client:
            yield client, log, embedded


def test_http_recommend_names_ids_as_the_log_and_scores_exactly(http):
    client, log, embedded = http
    reply = client.post("/recommend", json={"user": "ü3", "k": 40})
    assert reply.status_code == 200, reply.text
    body = strict_json(reply.text)
    want = embedded.recommend(int(log.user_ids.to_internal(["ü3"])[0]), k=40)
    keep = want.ids >= 0
    assert body["user"] == "ü3"
    assert body["items"] == log.item_ids.to_external(want.ids[keep]).tolist()
    assert all(type(item) is int and item >= 2**63 for item in body["items"])
    assert [np.float32(s) for s in body["scores"]] == want.scores[keep].tolist()
    assert body["stages"] == want.stages[keep].tolist()
    # the empty-string user, a user unknown to the log (popular list) and a batch
    many = strict_json(client.post("/recommend", json={"users": ["", "nobody"]}).text)
    assert [r["user"] for r in many["results"]] == ["", "nobody"]
    assert set(many["results"][1]["stages"]) == {"popular"}


@pytest.mark.parametrize("weight", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_http_events_refuse_non_finite_weights_and_log_stays_strict_json(http, weight):
    client, log, _ = http
    before = strict_json(client.get("/events").text)
    body = '{"user": ["ü3"], "item": [%d], "weight": [%s]}' % (2**63 + 1, weight)
    reply = client.post("/events", content=body.encode())
    assert reply.status_code == 422 and "weight" in reply.json()["error"]
    after = strict_json(client.get("/events").text)  # the log: unchanged, still strict JSON
    assert after == before
    strict_json(client.get("/health").text)


def test_http_events_log_round_trips_ids_and_tiny_weights(http):
    client, log, _ = http
    reply = client.post("/events", json={"user": ["ü4", "brand new"],
                                         "item": [2**63 + 2, 2**64 - 1],
                                         "weight": [5e-324, 2.5]})
    assert reply.status_code == 200, reply.text
    logged = strict_json(client.get("/events").text)
    assert logged["user"][-2:] == ["ü4", "brand new"]
    assert logged["item"][-2:] == [2**63 + 2, 2**64 - 1]
    assert logged["weight"][-2:] == [5e-324, 2.5]
    assert all(type(call) is int for call in logged["call"])


# ============================================================================ answers, events, metrics


@pytest.mark.parametrize("rerank", [None, "diversity", "deny_all"])
def test_recommendation_dtypes_and_padding(als, rerank):
    rules = {None: None, "diversity": recfuse.Rerank(diversity=0.5),
             "deny_all": recfuse.Rerank(deny=list(range(20)))}[rerank]
    rec = recfuse.Recommender(als, k=5, rerank=rules, num_threads=1)
    for answer in (rec.recommend(1), rec.recommend(1, k=40), rec.recommend(10**6),
                   rec.recommend_batch([1, 2], k=40), rec.recommend_batch([], k=3)):
        assert answer.ids.dtype == np.int64 and answer.scores.dtype == np.float32
        assert answer.stages.dtype.kind == "U" and type(answer.version) is int
        pad = answer.ids < 0
        assert (answer.ids[pad] == -1).all() and np.isneginf(answer.scores[pad]).all()
        assert (answer.stages[pad] == "").all()
        assert np.isfinite(answer.scores[~pad]).all()


def test_readme_events_npz_round_trip_replays_the_log(als, tmp_path):
    model = recfuse.ALS(factors=3, iterations=2, random_state=0,
                        solver="cholesky").fit(implicit_matrix())
    rec = recfuse.Recommender(model, k=5, num_threads=1)
    path = tmp_path / "events.npz"
    np.savez(path, **rec.pending_events()._asdict())  # nothing yet: empty arrays, no pickle
    assert rec.observe(recfuse.Events(**np.load(path))) == 0
    rec.observe({"user": [1, 1, 35], "item": [2, 3, 21], "weight": [1, 3, 2]})
    rec.observe({"user": [2], "item": [22], "weight": [1.5]})
    events = rec.pending_events()
    assert [a.dtype for a in events] == [np.int64, np.int64, np.float64, np.int64]
    np.savez(path, **events._asdict())
    again = recfuse.Recommender(model, k=5, num_threads=1)
    assert again.observe(recfuse.Events(**np.load(path))) == 4
    for user in (1, 2, 35):
        assert again.recommend(user) == rec.recommend(user)
    assert again.pending_events() == rec.pending_events()


def test_metric_dicts_are_plain_python_and_json_serialisable():
    X = implicit_matrix(40, 30, 0.3)
    log = recfuse.Interactions.from_matrix(X)
    train, test = split.random_split(log, 0.3, seed=0)
    for model in (recfuse.ALS(factors=3, iterations=2, random_state=0),
                  recfuse.SVD(factors=3, random_state=0)):
        model.fit(train.matrix)
        result = metrics.evaluate(model, train, test, k=np.int64(5),
                                  batch_size=np.int32(7))
        for name, value in result.items():
            assert type(value) in (float, int), (name, type(value))
        assert type(result["k"]) is int and result["k"] == 5
        json.dumps(result)
    empty = metrics.ranking_metrics(np.zeros((0, 3), np.int64), sp.csr_matrix((2, 3)))
    assert math.isnan(empty["auc"])  # no pair to compare: NaN, as documented
    assert all(type(v) is float for v in empty.values())
    for value in (metrics.rmse([1], [np.float32(2)]), metrics.mae(np.float16([1]), [2]),
                  metrics.catalog_coverage([[0]], np.int64(3)),
                  metrics.novelty([[0]], X),
                  metrics.intra_list_diversity([[0, 1]], np.eye(3, dtype=np.float16))):
        assert type(value) is float


def test_backends_table_is_json_serialisable():
    from recfuse._backend import FAMILIES

    for family in FAMILIES:
        rows = recfuse.backends(family)
        text = json.dumps([row._asdict() for row in rows], allow_nan=False)
        assert [row["name"] for row in strict_json(text)] == \
            ["cuda", "cpu", "numba", "cupy", "numpy"]

"""Adversarial hunt on the command line with every model kind (python/recfuse/cli.py):
`recfuse train --model als|bpr|svd|svdpp|explicit-als` on every input form and split, then
`evaluate`, `recommend` and `serve` on the folder it wrote. tests/test_cli_hunt.py covers
argument errors and the ALS path; this file leaves those out.

Contract used (cli.py's docstrings and --help, the models' docstrings):
- train builds the model --model names with the options given, mapped to the model's own
  parameter names (cli.MODELS: --regularization is ALS's regularization and the others'
  reg, --iterations is svd/svdpp's epochs), the rest at the model's defaults (ALS: the
  demo's); an option the model lacks (--lr for als/explicit-als, --alpha for all but als)
  is refused before any data is read; --seed seeds the split and the model: the folder
  holds what the library gives called directly with the same settings, to the bit.
- The data is read as Interactions.from_events reads it (CSV, TSV, --sep, a Parquet file,
  a folder of Parquet files) or load_movielens (a MovieLens folder): the same log in any
  form trains the same model.
- evaluate scores the folder's model on its test.npz as recfuse.metrics.evaluate does
  (RMSE/MAE for the rating models); with --test, "its ratings are read as the training
  data's: same rating column unless --weight, same rule for repeated pairs".
- recommend names users and items by the log's ids (ints stay ints, strings strings; "0100"
  is user 100 of integer ids); its lists are model.recommend's with the training rows as
  seen items (rating models: unclipped predicted ratings, as predict(clip=False) gives);
  a user without training pairs gets the most popular items with score 0; an unknown user
  is refused; k beyond the items gives the unseen items only.
- serve answers /recommend for every model kind by the log's ids, with the same lists.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import cli
from recfuse.interactions import Interactions
from recfuse.metrics import evaluate as library_evaluate
from recfuse.persistence import load_folder
from test_cli_hunt import Result, call  # cli.main in this process, as the console script

MODELS = ("als", "bpr", "svd", "svdpp", "explicit-als")
SPLITS = ("per_user", "random", "leave_last", "temporal", "none")
RATING = ["--weight", "rating", "--combine", "last"]  # what --help asks of rating models
SMALL = ["--factors", "3", "--iterations", "3"]
DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                        "datasets")


def ok(result: Result) -> dict | None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout) if result.stdout.startswith("{") else None


def rating_options(model: str) -> list[str]:
    return RATING if model in cli.RATING_MODELS else []


def direct(model: str, source, split: str = "none", *, seed: int = 0, options=None,
           fraction: float = 0.2, **columns):
    """What train does, called on the library: (fitted model, train, test)."""
    interactions = Interactions.from_events(source, **columns)
    if split == "none":
        train, test = interactions, None
    else:
        train, test = cli._split(interactions, split, fraction, seed)
    class_name, parameters = cli.MODELS[model]
    settings_ = {"random_state": seed}
    for option, parameter in parameters.items():
        value = (options or {}).get(option)
        if value is None and model == "als":
            value = cli.ALS_DEFAULTS.get(option)
        if value is not None:
            settings_[parameter] = value
    fitted = getattr(recfuse, class_name)(**settings_).fit(train)
    return fitted, train, test


def library_lists(fitted, train, users: list, k: int) -> dict:
    """recommend's JSON lists, from model.recommend with the training rows as seen items."""
    rows = train.user_ids.to_internal(np.asarray(users))
    items, scores = fitted.recommend(rows, user_items=train.matrix[rows], k=k)
    out = {}
    for user, row, row_scores in zip(users, items, scores):
        valid = row >= 0
        out[str(user)] = [[item, float(score)] for item, score in zip(
            train.item_ids.to_external(row[valid]).tolist(), row_scores[valid])]
    return out


def cli_lists(payload: dict) -> dict:
    return {user: [[e["item"], e["score"]] for e in entries]
            for user, entries in payload["recommendations"].items()}


def same_factors(a, b) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name))
               for name in ("user_factors", "item_factors"))


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict:
    """One tiny log (300 events, int users 100..129, string items a..l) in every input form,
    plus a log with a user whose events are all the latest (cold after a temporal split)."""
    root = tmp_path_factory.mktemp("cli-models")
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"user": rng.integers(100, 130, n),
                          "item": rng.choice(list("abcdefghijkl"), n),
                          "rating": rng.integers(1, 6, n).astype(float),
                          "ts": np.arange(n),
                          "event": rng.choice(["view", "click", "purchase"], n)})
    frame.to_csv(root / "log.csv", index=False)
    frame.to_csv(root / "log.tsv", sep="\t", index=False)
    frame.to_csv(root / "semi.csv", sep=";", index=False)
    frame.to_parquet(root / "log.parquet")
    (root / "parts").mkdir()
    frame.iloc[:140].to_parquet(root / "parts" / "a.parquet")
    frame.iloc[140:].to_parquet(root / "parts" / "b.parquet")
    cold = pd.DataFrame({"user": rng.integers(0, 30, n), "item": rng.integers(0, 12, n) * 10,
                         "rating": rng.integers(1, 6, n).astype(float), "ts": np.arange(n)})
    late = pd.DataFrame({"user": [77] * 4, "item": [0, 10, 20, 30], "rating": [5.0, 4, 3, 2],
                         "ts": [1000, 1001, 1002, 1003]})
    pd.concat([cold, late]).to_csv(root / "cold.csv", index=False)
    paths = {name: str(root / file) for name, file in (
        ("csv", "log.csv"), ("tsv", "log.tsv"), ("semi", "semi.csv"),
        ("parquet", "log.parquet"), ("parts", "parts"), ("cold", "cold.csv"))}
    paths["root"] = str(root)
    paths["frame"] = frame
    return paths


@pytest.fixture(scope="module")
def trained(logs) -> dict:
    """(model, split) -> the folder `recfuse train log.csv --model M --split S` wrote, and
    what the library gives with the same settings."""
    folders = {}
    for model in MODELS:
        for split in SPLITS:
            columns = dict(weight="rating", combine="last") if model in cli.RATING_MODELS else {}
            extra = list(rating_options(model))
            if split in ("leave_last", "temporal"):
                extra += ["--timestamp", "ts"]
                columns["timestamp"] = "ts"
            folder = os.path.join(logs["root"], f"m-{model}-{split}")
            summary = ok(call("train", logs["csv"], "-o", folder, "--model", model, *SMALL,
                              "--split", split, "--json", *extra))
            fitted, train, test = direct(model, logs["csv"], split,
                                         options={"factors": 3, "iterations": 3}, **columns)
            folders[model, split] = {"folder": folder, "summary": summary, "model": fitted,
                                     "train": train, "test": test}
    return folders


CASES = [(model, split) for model in MODELS for split in SPLITS]


# ---------------------------------------------------------------------------- train
@pytest.mark.parametrize("model, split", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_train_writes_what_the_library_gives(trained, model, split):
    case = trained[model, split]
    summary, fitted, train, test = case["summary"], case["model"], case["train"], case["test"]
    assert summary["model"] == cli.MODELS[model][0]
    assert (summary["users"], summary["items"], summary["train_pairs"]) == (
        train.n_users, train.n_items, train.nnz)
    assert summary["test_pairs"] == (None if test is None else test.nnz)
    expected = ["model.npz", "train.npz"] + ([] if split == "none" else ["test.npz"])
    assert sorted(os.listdir(case["folder"])) == sorted(expected)
    saved, saved_train = load_folder(case["folder"])
    assert type(saved) is type(fitted) and same_factors(saved, fitted)  # same seed: same bits
    assert (saved_train.matrix != train.matrix).nnz == 0
    assert saved_train.user_ids.to_external(np.arange(train.n_users)).tolist() == \
        train.user_ids.to_external(np.arange(train.n_users)).tolist()


@pytest.mark.parametrize("model, split", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_recommend_json_and_text_match_the_library(trained, model, split):
    case = trained[model, split]
    users = [100, 101, 129]
    payload = ok(call("recommend", case["folder"], *users, "--k", 4, "--json"))
    expected = library_lists(case["model"], case["train"], users, 4)
    cold = [str(u) for u in users
            if case["train"].matrix[case["train"].user_ids.to_internal([u])].nnz == 0]
    assert payload["popular"] == cold
    assert {u: v for u, v in cli_lists(payload).items() if u not in cold} == \
        {u: v for u, v in expected.items() if u not in cold}
    assert payload["k"] == 4
    text = ok(call("recommend", case["folder"], *users, "--k", 4))
    assert text is None
    lines = call("recommend", case["folder"], *users, "--k", 4).stdout.splitlines()
    assert [line.split(":")[0].split(" (")[0] for line in lines] == [f"user {u}" for u in users]
    for line, user in zip(lines, users):  # the same items, scores to 3 decimals
        shown = re.findall(r"(\w+) \((-?\d+\.\d{3})\)", line.split(": ", 1)[1])
        assert [(i, float(s)) for i, s in shown] == [
            (e["item"], round(e["score"], 3)) for e in payload["recommendations"][str(user)]]


@pytest.mark.parametrize("model, split", [c for c in CASES if c[1] != "none"],
                         ids=[f"{m}-{s}" for m, s in CASES if s != "none"])
def test_evaluate_json_matches_the_library(trained, model, split):
    case = trained[model, split]
    got = ok(call("evaluate", case["folder"], "--k", 3, "--json"))
    want = library_evaluate(case["model"], case["train"], case["test"], k=3)
    assert ("rmse" in got and "mae" in got) == (model in cli.RATING_MODELS)
    for name, value in want.items():
        if isinstance(value, float) and np.isnan(value):
            assert got[name] is None, name  # JSON has no NaN
        else:
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    text = call("evaluate", case["folder"], "--k", 3).stdout
    assert ("rmse" in text) == (model in cli.RATING_MODELS)


@pytest.mark.parametrize("model", cli.RATING_MODELS)
def test_rating_models_recommend_unclipped_predicted_ratings(trained, model):
    case = trained[model, "per_user"]
    payload = ok(call("recommend", case["folder"], 100, 101, "--k", 12, "--json"))
    saved, train = load_folder(case["folder"])
    assert saved.rating_scale == (1.0, 5.0)
    for user, entries in payload["recommendations"].items():
        row = int(train.user_ids.to_internal([int(user)])[0])
        items = train.item_ids.to_internal(np.array([e["item"] for e in entries], dtype=object))
        predicted = saved.predict(np.full(items.size, row), items, clip=False)
        np.testing.assert_allclose([e["score"] for e in entries], predicted, rtol=1e-5)
        # ratings-shaped: around the 1..5 scale, not factor dot products near 0
        assert all(0 < e["score"] < 7 for e in entries), entries


# ---------------------------------------------------------------------------- options
ATTRIBUTE = {"als": "regularization", "bpr": "reg", "svd": "reg", "svdpp": "reg",
             "explicit-als": "reg"}
ITERATIONS = {"als": "iterations", "bpr": "iterations", "svd": "epochs", "svdpp": "epochs",
              "explicit-als": "iterations"}


@pytest.mark.parametrize("model", MODELS)
def test_model_options_map_to_the_models_own_parameters(logs, tmp_path, model):
    folder = tmp_path / "m"
    ok(call("train", logs["csv"], "-o", folder, "--model", model, "--factors", 2,
            "--iterations", 2, "--regularization", 0.37, "--split", "none", "--seed", 5,
            *rating_options(model), *(["--alpha", 3] if model == "als" else []),
            *(["--lr", 0.05] if model in ("bpr", "svd", "svdpp") else []), "--json"))
    saved = recfuse.load(str(folder / "model.npz"))
    assert getattr(saved, ATTRIBUTE[model]) == 0.37
    assert getattr(saved, ITERATIONS[model]) == 2 and saved.factors == 2
    assert saved.random_state == 5
    if model == "als":
        assert saved.alpha == 3.0
    if model in ("bpr", "svd", "svdpp"):
        assert saved.lr == 0.05


@pytest.mark.parametrize("model", MODELS)
def test_options_left_out_keep_the_models_defaults(logs, tmp_path, model):
    folder = tmp_path / "m"
    ok(call("train", logs["csv"], "-o", folder, "--model", model, "--split", "none",
            "--factors", 2, "--iterations", 1, *rating_options(model), "--json"))
    saved = recfuse.load(str(folder / "model.npz"))
    fresh = getattr(recfuse, cli.MODELS[model][0])()
    defaults = dict(cli.ALS_DEFAULTS) if model == "als" else {}
    for parameter in ("regularization", "reg", "alpha", "lr"):
        if hasattr(fresh, parameter):
            assert getattr(saved, parameter) == defaults.get(parameter,
                                                             getattr(fresh, parameter))


NOT_APPLICABLE = [(model, option) for model in MODELS for option in ("--alpha", "--lr")
                  if option not in (("--alpha",) if model == "als" else ()) + (
                      ("--lr",) if model in ("bpr", "svd", "svdpp") else ())]


@pytest.mark.parametrize("model, option", NOT_APPLICABLE,
                         ids=[f"{m}{o}" for m, o in NOT_APPLICABLE])
def test_an_option_the_model_lacks_is_refused_before_reading(logs, tmp_path, model, option,
                                                              monkeypatch):
    read = []
    monkeypatch.setattr(cli, "_ingest", lambda *a: read.append(a))  # reading = a failure
    result = call("train", logs["csv"], "-o", tmp_path / "m", "--model", model, option, "0.5",
                  *rating_options(model))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == \
        f"recfuse train: error: {option} does not apply to --model {model}"
    assert not read and not (tmp_path / "m").exists()


@pytest.mark.parametrize("model", cli.RATING_MODELS)
def test_rating_models_refuse_counts_and_event_weights(logs, tmp_path, model):
    # without --weight every value would be a count; with --event a rating x a type weight
    for extra, words in (([], "--weight"), (RATING + ["--event", "event"], "--event")):
        result = call("train", logs["csv"], "-o", tmp_path / "m", "--model", model, *extra)
        assert result.returncode == 2 and words in result.stderr.splitlines()[-1]
        assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("model", MODELS)
def test_another_seed_trains_another_model_and_the_same_seed_the_same(logs, tmp_path, model):
    def factors(seed, name):
        ok(call("train", logs["csv"], "-o", tmp_path / name, "--model", model, *SMALL,
                "--seed", seed, *rating_options(model), "--json"))
        return recfuse.load(str(tmp_path / name / "model.npz"))

    first, again, other = factors(1, "a"), factors(1, "b"), factors(2, "c")
    assert same_factors(first, again) and not same_factors(first, other)
    fitted, _, _ = direct(model, logs["csv"], "per_user", seed=1,
                          options={"factors": 3, "iterations": 3},
                          **(dict(weight="rating", combine="last")
                             if model in cli.RATING_MODELS else {}))
    assert same_factors(first, fitted)


# ---------------------------------------------------------------------------- input forms
FORMS = {"tsv": ["{tsv}"], "sep": ["{semi}", "--sep", ";"], "parquet": ["{parquet}"],
         "parts": ["{parts}"]}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_input_form_trains_the_same_model(logs, tmp_path, form, model):
    def train(args, name):
        ok(call("train", *args, "-o", tmp_path / name, "--model", model, "--factors", 2,
                "--iterations", 2, "--split", "random", "--json", *rating_options(model)))
        return load_folder(str(tmp_path / name))

    base, base_train = train([logs["csv"]], "csv")
    other, other_train = train([a.format(**logs) for a in FORMS[form]], form)
    assert same_factors(base, other)
    assert (base_train.matrix != other_train.matrix).nnz == 0
    payload = ok(call("recommend", tmp_path / form, 100, "--k", 2, "--json"))
    assert all(isinstance(e["item"], str) for e in payload["recommendations"]["100"])


@pytest.mark.parametrize("model", ("als", "bpr"))
def test_timestamps_and_event_weights_read_as_from_events(logs, tmp_path, model):
    weights = {"view": 0.5, "click": 2, "purchase": 7}
    ok(call("train", logs["csv"], "-o", tmp_path / "m", "--model", model, *SMALL,
            "--weight", "rating", "--event", "event", "--event-weights", json.dumps(weights),
            "--timestamp", "ts", "--split", "temporal", "--json"))
    fitted, train, test = direct(model, logs["csv"], "temporal",
                                 options={"factors": 3, "iterations": 3}, weight="rating",
                                 event="event", event_weights=weights, timestamp="ts")
    saved, saved_train = load_folder(str(tmp_path / "m"))
    assert same_factors(saved, fitted) and (saved_train.matrix != train.matrix).nnz == 0
    assert saved_train.matrix.sum() == pytest.approx(train.matrix.sum())


def test_numeric_event_types_take_weights_by_json_string_keys(logs, tmp_path):
    frame = logs["frame"].assign(code=logs["frame"]["event"].map(
        {"view": 1, "click": 2, "purchase": 3}))
    frame.to_csv(tmp_path / "code.csv", index=False)
    ok(call("train", tmp_path / "code.csv", "-o", tmp_path / "m", "--model", "bpr", *SMALL,
            "--event", "code", "--event-weights", '{"1": 1, "2": 4, "3": 9}', "--split", "none",
            "--json"))
    _, train = load_folder(str(tmp_path / "m"))
    expected = Interactions.from_events(tmp_path / "code.csv", event="code",
                                        event_weights={1: 1, 2: 4, 3: 9})
    assert (train.matrix != expected.matrix).nnz == 0


MOVIELENS = [name for name in ("ml-100k", "ml-latest-small")
             if os.path.isdir(os.path.join(DATASETS, name))]


@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> str:
    if not MOVIELENS:
        pytest.skip(f"no MovieLens folder in {DATASETS}")
    return os.path.join(DATASETS, MOVIELENS[0])  # read in place


@pytest.mark.parametrize("model", MODELS)
def test_a_movielens_folder_trains_every_model_on_its_ratings(movielens, tmp_path, model):
    from recfuse import datasets

    folder = tmp_path / "m"
    summary = ok(call("train", movielens, "-o", folder, "--model", model, "--factors", 2,
                      "--iterations", 1, "--split", "random", "--json"))
    interactions = datasets.load_movielens(movielens)
    assert summary["users"] == interactions.n_users and summary["items"] == interactions.n_items
    assert summary["train_pairs"] + summary["test_pairs"] == interactions.nnz
    saved, train = load_folder(str(folder))
    if model in cli.RATING_MODELS:  # the stars, not counts
        assert saved.rating_scale == (float(interactions.matrix.data.min()),
                                      float(interactions.matrix.data.max()))
    user = int(train.user_ids.to_external([0])[0])
    payload = ok(call("recommend", folder, user, "--k", 3, "--json"))
    entries = payload["recommendations"][str(user)]
    assert len(entries) == 3 and all(type(e["item"]) is int for e in entries)
    metrics = ok(call("evaluate", folder, "--k", 3, "--json"))
    assert ("rmse" in metrics) == (model in cli.RATING_MODELS)
    if model in cli.RATING_MODELS:
        assert 0 < metrics["mae"] <= metrics["rmse"] < 4
    # the event-log options are refused for a MovieLens folder, whatever the model
    refused = call("train", movielens, "-o", tmp_path / "n", "--model", model, *RATING)
    assert refused.returncode == 2 and "MovieLens folder" in refused.stderr
    assert not (tmp_path / "n").exists()


# ---------------------------------------------------------------------------- recommend
@pytest.mark.parametrize("model", MODELS)
def test_k_edges_per_model(trained, model):
    case = trained[model, "none"]
    train = case["train"]
    n_items = train.n_items
    for k in (1, n_items - 1, n_items, n_items + 1, 10**6):
        payload = ok(call("recommend", case["folder"], 100, 129, "--k", k, "--json"))
        for user, entries in payload["recommendations"].items():
            unseen = n_items - train.matrix[train.user_ids.to_internal([int(user)])].nnz
            assert len(entries) == min(k, unseen), (k, user)
        assert cli_lists(payload) == library_lists(case["model"], train, [100, 129], k)


@pytest.mark.parametrize("model", MODELS)
def test_users_are_named_by_the_logs_ids(trained, model):
    folder = trained[model, "none"]["folder"]
    payload = ok(call("recommend", folder, "0100", "100", "+101", "--k", 2, "--json"))
    assert list(payload["recommendations"]) == ["100", "101"]  # each once, as the model's id
    for args in (["999"], ["100", "999"], ["abc"], ["1e2"]):
        result = call("recommend", folder, *args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("recfuse recommend: error: ")


@pytest.mark.parametrize("model", MODELS)
def test_a_user_with_no_training_pair_gets_the_popular_items(logs, tmp_path, model):
    from recfuse.serving import popular_items

    folder = tmp_path / "m"
    summary = ok(call("train", logs["cold"], "-o", folder, "--model", model, *SMALL,
                      "--split", "temporal", "--timestamp", "ts", "--json",
                      *rating_options(model)))
    assert summary["users"] == 31
    _, train = load_folder(str(folder))
    payload = ok(call("recommend", folder, 77, 3, "--k", 3, "--json"))
    assert payload["popular"] == ["77"]
    popular = train.item_ids.to_external(popular_items(train.matrix, train.n_items)[:3])
    assert payload["recommendations"]["77"] == [{"item": int(i), "score": 0.0}
                                                for i in popular]
    assert all(type(e["item"]) is int for e in payload["recommendations"]["3"])
    text = call("recommend", folder, 77, "--k", 3).stdout
    assert text.startswith("user 77 (no training pair: the most popular items): ")


# ---------------------------------------------------------------------------- serve
@pytest.fixture
def served(monkeypatch):
    """A stub for recfuse.server.serve that builds the real app from what the CLI passes
    and posts the requests in ``served["requests"]`` (answers in ``served["answers"]``)."""
    import recfuse.server

    with warnings.catch_warnings():  # starlette's note about httpx: not ours
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    state = {"requests": [], "answers": []}

    def serve(recommender, *, limits=None, ids=None, model_path=None, sock=None, **kwargs):
        app = recfuse.server.create_app(recommender, model_path=model_path, limits=limits,
                                        ids=ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with TestClient(app) as client:
                for body in state["requests"]:
                    answer = client.post("/recommend", json=body)
                    state["answers"].append((answer.status_code, answer.json()))

    monkeypatch.setattr(recfuse.server, "serve", serve)
    return state


@pytest.mark.parametrize("model", MODELS)
def test_serve_answers_recommend_for_every_model_kind(logs, tmp_path, served, model):
    pytest.importorskip("starlette")
    folder = tmp_path / "m"
    ok(call("train", logs["cold"], "-o", folder, "--model", model, *SMALL, "--split",
            "temporal", "--timestamp", "ts", "--json", *rating_options(model)))
    served["requests"] = [{"user": 3}, {"user": 77}, {"users": [3, 77], "k": 50},
                          {"user": "3"}]
    result = call("serve", folder, "--port", 0, "--k", 3)
    assert result.returncode == 0, result.stderr
    assert "named by the ids of its training log" in result.stderr
    cli_answer = ok(call("recommend", folder, 3, 77, "--k", 50, "--json"))["recommendations"]
    (s1, one), (s2, cold), (s3, batch), (s4, text) = served["answers"]
    assert (s1, s2, s3, s4) == (200, 200, 200, 422)  # int ids: "3" names no user
    assert one["items"] == [e["item"] for e in cli_answer["3"][:3]]  # --k 3
    np.testing.assert_allclose(one["scores"], [e["score"] for e in cli_answer["3"][:3]],
                               rtol=1e-6)
    assert cold["stages"] == ["popular"] * 3 and cold["scores"] == [0.0] * 3
    assert cold["items"] == [e["item"] for e in cli_answer["77"][:3]]
    for entry in batch["results"]:
        assert entry["items"] == [e["item"] for e in cli_answer[str(entry["user"])]]


def test_serve_a_rating_model_in_a_real_process(logs, tmp_path):
    folder = tmp_path / "m"
    ok(call("train", logs["csv"], "-o", folder, "--model", "svdpp", *SMALL, *RATING,
            "--split", "none", "--json"))
    server = subprocess.Popen([sys.executable, "-m", "recfuse", "serve", str(folder),
                               "--port", "0", "--k", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", banner)
        assert port, banner
        url = f"http://127.0.0.1:{port.group(1)}/recommend"
        request = urllib.request.Request(url, data=b'{"user": 100}',
                                         headers={"Content-Type": "application/json"})
        for _ in range(100):
            try:
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        expected = ok(call("recommend", folder, 100, "--k", 2, "--json"))
        assert answer["items"] == [e["item"] for e in expected["recommendations"]["100"]]
        assert all(1 < score < 6 for score in answer["scores"])  # predicted ratings
    finally:
        server.terminate()
        server.communicate(timeout=30)


# ---------------------------------------------------------------------------- property
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), model=st.sampled_from(MODELS),
       split=st.sampled_from(("per_user", "random", "none")), k=st.integers(1, 15),
       string_items=st.booleans())
def test_recommend_is_the_librarys_on_drawn_logs(tmp_path_factory, seed, model, split, k,
                                                 string_items):
    root = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 160))
    items = rng.integers(0, int(rng.integers(2, 12)), n)
    frame = pd.DataFrame({"user": rng.integers(-5, 10, n),
                          "item": [f"i{i}" for i in items] if string_items else items * 7,
                          "rating": rng.integers(1, 6, n).astype(float)})
    frame.to_csv(root / "log.csv", index=False)
    folder = root / "m"
    result = call("train", root / "log.csv", "-o", folder, "--model", model, "--factors", 2,
                  "--iterations", 2, "--split", split, "--seed", seed, "--json",
                  *rating_options(model))
    if result.returncode == 2:  # a split that held out nothing: refused, nothing written
        assert "held out" in result.stderr and not folder.exists()
        return
    ok(result)
    columns = dict(weight="rating", combine="last") if model in cli.RATING_MODELS else {}
    fitted, train, _ = direct(model, root / "log.csv", split, seed=seed,
                              options={"factors": 2, "iterations": 2}, **columns)
    users = sorted(set(frame["user"].tolist()))
    warm = [u for u in users if train.matrix[train.user_ids.to_internal([u])].nnz]
    payload = ok(call("recommend", folder, *[str(u) for u in users], "--k", k, "--json"))
    expected = library_lists(fitted, train, warm, k)
    assert {u: cli_lists(payload)[u] for u in map(str, warm)} == expected
    assert payload["popular"] == [str(u) for u in users if u not in warm]
    item_type = str if string_items else int
    assert all(type(e["item"]) is item_type
               for entries in payload["recommendations"].values() for e in entries)


# ---------------------------------------------------------------------------- bugs found
@pytest.mark.parametrize("model", ("als", "svd"))
def test_recommend_names_uint64_users_beyond_int64(logs, tmp_path, model):
    big = logs["frame"].assign(user=np.uint64(2**63) + logs["frame"]["user"].astype(np.uint64))
    big.to_parquet(tmp_path / "big.parquet")
    ok(call("train", tmp_path / "big.parquet", "-o", tmp_path / "m", "--model", model,
            "--factors", 2, "--iterations", 1, "--json", *rating_options(model)))
    user = str(2**63 + 100)  # serve answers it (its ids are checked as uint64 there)
    payload = ok(call("recommend", tmp_path / "m", user, "--k", 2, "--json"))
    assert len(payload["recommendations"][user]) == 2


@pytest.mark.parametrize("model", cli.RATING_MODELS)
def test_evaluate_test_log_takes_the_latest_rating_as_training_did(logs, tmp_path, model):
    folder = tmp_path / "m"
    ok(call("train", logs["cold"], "-o", folder, "--model", model, *SMALL, *RATING,
            "--timestamp", "ts", "--split", "none", "--json"))
    # one repeated pair: the 5 is the latest rating (ts 2000), written first
    pd.DataFrame({"user": [3, 3], "item": [10, 10], "rating": [5.0, 1.0],
                  "ts": [2000, 1500]}).to_csv(tmp_path / "test.csv", index=False)
    got = ok(call("evaluate", folder, "--test", tmp_path / "test.csv", "--json"))
    saved, train = load_folder(str(folder))
    test = Interactions.from_events(tmp_path / "test.csv", weight="rating", combine="last",
                                    timestamp="ts", user_ids=train.user_ids,
                                    item_ids=train.item_ids, unknown="drop")
    assert test.matrix.data.tolist() == [5.0]  # as training read its own repeated pairs
    assert got["rmse"] == pytest.approx(library_evaluate(saved, train, test, k=10)["rmse"])


def test_rating_models_keep_the_last_rating_of_a_repeated_pair_by_default(tmp_path):
    """Found here: without --combine a rating model summed repeated ratings (a 1-5 log gave
    a rating scale up to 16); the rating models now default to the last rating, and an
    explicit --combine is kept."""
    log = tmp_path / "ratings.csv"
    log.write_text("user,item,rating\n1,1,5\n1,1,4\n1,2,3\n2,1,2\n2,2,1\n2,2,5\n")
    for extra, expected in (([], [[4.0, 3.0], [2.0, 5.0]]), (["--combine", "sum"],
                                                            [[9.0, 3.0], [2.0, 6.0]])):
        folder = tmp_path / f"m{len(extra)}"
        result = call("train", log, "-o", folder, "--model", "svd", "--weight", "rating",
                      "--split", "none", *SMALL, *extra)
        assert result.returncode == 0, result.stderr
        _, train = load_folder(folder)
        assert train.matrix.toarray().tolist() == expected


def test_evaluate_reads_a_test_log_by_the_training_logs_id_columns(tmp_path):
    """Found here: evaluate --test read the columns "user" and "item" whatever the training
    log's --user / --item; it now takes the training's unless told otherwise."""
    rows = [(u, i, 1 + (u * i) % 5) for u in range(8) for i in range(6) if (u + i) % 3]
    text = "uid,iid,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows)
    (tmp_path / "train.csv").write_text(text)
    (tmp_path / "test.csv").write_text(text)
    folder = tmp_path / "m"
    assert call("train", tmp_path / "train.csv", "-o", folder, "--user", "uid", "--item", "iid",
                "--split", "none", *SMALL).returncode == 0
    result = call("evaluate", folder, "--test", tmp_path / "test.csv", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_pairs"] == len(rows)
    named = call("evaluate", folder, "--test", tmp_path / "test.csv", "--user", "uid",
                 "--item", "iid", "--json")
    assert json.loads(named.stdout)["test_pairs"] == len(rows)

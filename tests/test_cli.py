"""The recfuse command end to end, in a subprocess, on small data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import recfuse
from recfuse import datasets, split

from conftest import DATASETS


# This checkout's bench/ suites, also when recfuse is installed from a wheel (as in CI).
BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")


def run(*args, check_rc: int | None = 0):
    result = subprocess.run([sys.executable, "-m", "recfuse.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, RECFUSE_BENCH_DIR=BENCH_DIR))
    if check_rc is not None:
        assert result.returncode == check_rc, result.stderr
    return result


def test_demo_prints_its_table():
    out = run("demo", "--users", 800, "--items", 300, "--events", 20_000, "--factors", 16,
              "--iterations", 3).stdout
    for expected in ("ingest:", "split (per_user)", "ALS:", "precision@10", "popularity",
                     "done in"):
        assert expected in out
    assert out.count("\n    ALS ") == 1


def test_demo_json():
    result = json.loads(run("demo", "--users", 500, "--items", 200, "--events", 10_000,
                            "--factors", 8, "--iterations", 2, "--split", "leave_last",
                            "--json").stdout)
    assert set(result["metrics"]) == {"popularity", "ALS"}
    assert result["metrics"]["ALS"]["precision"] >= 0
    assert {"generate", "ingest", "split", "train", "evaluate"} <= set(result["timings"])


def test_demo_on_movielens():
    path = os.path.join(DATASETS, "ml-100k")
    if not os.path.isdir(path):
        pytest.skip(f"MovieLens 100K not found at {path}")
    result = json.loads(run("demo", "--data", path, "--iterations", 3, "--factors", 16,
                            "--json").stdout)
    assert result["metrics"]["ALS"]["precision"] > result["metrics"]["popularity"]["precision"]


def test_train_evaluate_recommend(tmp_path):
    log = datasets.synthetic_event_log(300, 80, 6000, seed=2)
    frame = pd.DataFrame(log)
    frame.to_parquet(tmp_path / "events.parquet")
    folder = tmp_path / "model"
    trained = json.loads(run("train", tmp_path / "events.parquet", "-o", folder, "--timestamp",
                             "timestamp", "--event", "event", "--factors", 8, "--iterations", 3,
                             "--split", "temporal", "--json").stdout)
    assert trained["train_pairs"] > 0 and trained["test_pairs"] > 0
    assert sorted(os.listdir(folder)) == ["model.npz", "test.npz", "train.npz"]
    scores = json.loads(run("evaluate", folder, "--k", 5, "--json").stdout)
    assert scores["k"] == 5 and 0 <= scores["precision"] <= 1
    frame.iloc[:500].to_csv(tmp_path / "test.csv", index=False)
    other = json.loads(run("evaluate", folder, "--test", tmp_path / "test.csv", "--json").stdout)
    assert other["users"] > 0
    # what the text says of the --test log, the JSON says too
    assert other["test_pairs"] > 0 and other["dropped_events"] >= 0
    user = str(frame["user"].iloc[0])
    recs = json.loads(run("recommend", folder, user, "--k", 4, "--json").stdout)
    assert len(recs["recommendations"][user]) == 4
    assert all(item["item"].startswith("item") for item in recs["recommendations"][user])
    text = run("recommend", folder, user).stdout
    assert text.startswith(f"user {user}: ")


def test_errors_exit_2_with_one_line(tmp_path):
    missing = run("train", tmp_path / "nothing.csv", "-o", tmp_path / "m", check_rc=2)
    assert missing.stderr.startswith("recfuse train: error: ") and missing.stdout == ""
    (tmp_path / "bad.csv").write_text("user,item\n1,2\n")
    columns = run("train", tmp_path / "bad.csv", "-o", tmp_path / "m", "--weight", "w",
                  check_rc=2)
    assert "unknown columns" in columns.stderr
    assert "no model" in run("evaluate", tmp_path, check_rc=2).stderr
    run("demo", "--bogus-flag", check_rc=2)  # argparse usage errors are 2 as well
    sizes = run("demo", "--users", "-5", check_rc=2)  # refused before the demo starts
    assert "argument --users: expected an integer >= 1, got -5" in sizes.stderr
    assert sizes.stdout == ""
    for option, value, expected in (("--seed", "-1", "an integer >= 0, got -1"),
                                    ("--alpha", "nan", "a finite number >= 0, got nan"),
                                    ("--regularization", "-1", "a finite number >= 0, got -1")):
        refused = run("demo", option, value, check_rc=2)  # named as options, before any work
        assert f"argument {option}: expected {expected}" in refused.stderr
        assert refused.stdout == ""


def test_info():
    result = json.loads(run("info", "--json").stdout)
    assert any(row["name"] == "cpu" for row in result["backends"])
    assert set(result["families"]) == {"als", "sgd", "mlp", "topk"}
    assert all(any(row["name"] == "numpy" for row in rows) for rows in result["families"].values())
    text = run("info").stdout
    assert "backend" in text and "per model family" in text


def test_info_under_a_simd_level_the_cpu_cannot_run_prints_the_table(monkeypatch):
    monkeypatch.setenv("RECFUSE_SIMD", "bogus")  # it stopped with the level's error instead
    text = run("info").stdout
    (cpu,) = [line for line in text.splitlines() if line.startswith("cpu ")]
    assert "no" in cpu.split() and "RECFUSE_SIMD: " in cpu and "bogus" in cpu
    assert "per model family" in text


def test_info_under_an_unusable_backend_variable_prints_the_table(monkeypatch):
    # it stopped with RECFUSE_BACKEND's error, without the table that says which backends run
    monkeypatch.setenv("RECFUSE_BACKEND", "bogus")
    result = run("info", check_rc=2)
    assert "per model family" in result.stdout and "<- auto" not in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(
        "recfuse info: error: backend (from RECFUSE_BACKEND) must be")
    listed = json.loads(run("info", "--json", check_rc=2).stdout)
    assert listed["auto"] is None and any(row["name"] == "cpu" for row in listed["backends"])


def test_recommend_unknown_user(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 2, 3, 1]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--split", "none",
        "--factors", 2, "--iterations", 1)
    assert np.isfinite(json.loads(run("recommend", tmp_path / "m", 1, "--json").stdout)
                       ["recommendations"]["1"][0]["score"])
    assert "unknown user ids" in run("recommend", tmp_path / "m", 42, check_rc=2).stderr
    assert "test.npz" in run("evaluate", tmp_path / "m", check_rc=2).stderr


def test_bench_runs_a_suite_and_writes_json(tmp_path):
    result = json.loads(run("bench", "data", "--quick", "--output", tmp_path, "--script-args",
                            "--sizes 20000 --skip-evaluation", "--json").stdout)
    assert [row["stage"] for row in result["rows"]] == ["ingest", "ingest"]
    assert all(row["speedup"] > 0 for row in result["rows"])
    assert (tmp_path / "bench.json").exists() and (tmp_path / "data.json").exists()


def test_bench_errors(tmp_path):
    env_run = subprocess.run([sys.executable, "-m", "recfuse.cli", "bench"], capture_output=True,
                             text=True, env=dict(os.environ, RECFUSE_BENCH_DIR=str(tmp_path)))
    assert env_run.returncode == 2 and "no bench/ suites" in env_run.stderr
    assert "unknown suites" in run("bench", "nope", check_rc=2).stderr


@pytest.mark.parametrize("model", ["bpr", "svd", "svdpp", "explicit-als"])
def test_train_other_models(tmp_path, model):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"user": rng.integers(0, 60, 2000), "item": rng.integers(0, 40, 2000),
                          "rating": rng.integers(1, 6, 2000)})
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    folder = tmp_path / model
    options = ["--weight", "rating", "--combine", "last"] if model != "bpr" else []
    trained = json.loads(run("train", tmp_path / "ratings.csv", "-o", folder, "--model", model,
                             "--factors", 6, "--iterations", 3, *options, "--json").stdout)
    assert trained["model"] in ("BPR", "SVD", "SVDpp", "ExplicitALS")
    scores = json.loads(run("evaluate", folder, "--k", 5, "--json").stdout)
    assert 0 <= scores["precision"] <= 1
    if model != "bpr":
        assert np.isfinite(scores["rmse"])
        text = run("evaluate", folder, "--k", 5).stdout  # the text output has them too
        assert f"  rmse       {scores['rmse']:.4f}\n" in text
        assert f"  mae        {scores['mae']:.4f}\n" in text
    else:
        assert "rmse" not in run("evaluate", folder, "--k", 5).stdout
    user = str(frame["user"].iloc[0])
    recs = json.loads(run("recommend", folder, user, "--k", 3, "--json").stdout)
    assert len(recs["recommendations"][user]) == 3
    assert "does not apply" in run("train", tmp_path / "ratings.csv", "-o", folder, "--model",
                                   model, "--alpha", 3, *options, check_rc=2).stderr


def test_train_refuses_an_output_it_cannot_write_before_any_work(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 2, 3, 1]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "folder" / "model.npz").mkdir(parents=True)
    for output, message in [
            (tmp_path / "a_file", f"--output {str(tmp_path / 'a_file')!r} is a file"),
            (tmp_path / "a_file" / "sub", "is under the file"),
            (tmp_path / "folder", "holds folders named ['model.npz']")]:
        result = run("train", tmp_path / "log.csv", "-o", output, "--split", "none",
                     check_rc=2)
        assert result.stderr.startswith("recfuse train: error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1 and result.stdout == ""  # nothing ran
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_train_writes_the_model_folder_whole_or_not_at_all(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    pd.DataFrame({"user": rng.integers(0, 30, 400), "item": rng.integers(0, 20, 400)}).to_csv(
        tmp_path / "log.csv", index=False)
    folder = tmp_path / "m"
    run("train", tmp_path / "log.csv", "-o", folder, "--factors", 2, "--iterations", 1)
    files = {name: (folder / name).read_bytes() for name in ("model.npz", "train.npz",
                                                             "test.npz")}
    # user ids Arrow reads as bytes cannot be saved: found after the model is trained
    pq.write_table(pa.table({"user": pa.array([b"u%d" % u for u in rng.integers(0, 30, 400)]),
                             "item": pa.array(rng.integers(0, 20, 400))}),
                   tmp_path / "bytes.parquet")
    failed = run("train", tmp_path / "bytes.parquet", "-o", folder, "--factors", 2,
                 "--iterations", 1, check_rc=2)
    assert "cannot be saved" in failed.stderr
    assert sorted(os.listdir(folder)) == sorted(files)  # no new model beside the old data
    assert all((folder / name).read_bytes() == data for name, data in files.items())
    # without a split the old test.npz goes: it belongs to the earlier training
    run("train", tmp_path / "log.csv", "-o", folder, "--split", "none", "--factors", 2,
        "--iterations", 1)
    assert sorted(os.listdir(folder)) == ["model.npz", "train.npz"]
    assert "has no test.npz" in run("evaluate", folder, check_rc=2).stderr


def test_train_names_a_bad_event_weights_option(tmp_path):
    log = pd.DataFrame(datasets.synthetic_event_log(20, 10, 200, seed=0))
    log.to_csv(tmp_path / "log.csv", index=False)
    for value, message in [("{bad", "argument --event-weights: expected a JSON object of "
                                    "weights per event type"),
                           ("[1, 2]", "argument --event-weights: expected a JSON object"),
                           ('{"view": -1}', "expected finite weights >= 0 per event type, "
                                            "got -1 for 'view'"),
                           ('{"view": "1"}', "got '1' for 'view'"),
                           ('{"view": true}', "got True for 'view'")]:
        result = run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--event", "event",
                     "--event-weights", value, check_rc=2)
        assert message in result.stderr and result.stdout == ""
    result = run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--event-weights",
                 '{"view": 1}', check_rc=2)
    assert "--event-weights needs --event" in result.stderr


def test_json_output_writes_null_for_non_finite_numbers():
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    # three items: the lists hold at most one unseen item each, so no diversity (a log too
    # small for any test pair is refused now: test_an_empty_test_set_is_refused_everywhere)
    out = run("demo", "--users", 5, "--items", 3, "--events", 200, "--factors", 2,
              "--iterations", 1, "--json").stdout
    result = json.loads(out, parse_constant=refuse)
    assert result["als"]["diversity"] is None and result["als"]["users"] > 0


def test_demo_refuses_sizes_beyond_the_machine_with_one_line():
    result = run("demo", "--users", 10, "--items", 10, "--events", 10**14, check_rc=2)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "n_events = 100000000000000 need" in err[0]


def test_every_command_and_option_is_described():
    """``recfuse COMMAND --help`` says what the command does and what each option is."""
    import argparse

    from recfuse.cli import build_parser

    parser = build_parser()
    assert "``" not in parser.description  # plain text, not reStructuredText
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert sub.description, f"recfuse {name} --help has no description"
        undescribed = [action.dest for action in sub._actions if not action.help]
        assert not undescribed, f"recfuse {name}: options without help: {undescribed}"


def test_every_option_with_a_default_says_it():
    """Most options said "(default ...)" in --help, but serve's --k, --candidates,
    --unknown-items, --max-batch, --batch-wait-ms and --workers did not."""
    import argparse

    from recfuse.cli import build_parser

    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        silent = [action.option_strings[0] for action in sub._actions
                  if action.option_strings and action.default not in (None, False)
                  and action.default is not argparse.SUPPRESS and "default" not in action.help]
        assert not silent, f"recfuse {name} --help: options that hide their default: {silent}"
    help_text = " ".join(run("serve", "--help").stdout.split())
    assert "(default 200)" in help_text and "(default 1.0)" in help_text


def test_train_reads_ids_as_written_and_names_broken_files(tmp_path):
    """"007" and "7" were merged into user 7; a MovieLens ratings.csv without its header lost
    its first rating and one in another order swapped users and movies without a word;
    --min-rating on an event log was ignored; parse errors did not say which file."""
    (tmp_path / "log.csv").write_text("user,item\n007,10\n7,20\n007,30\n7,30\n")
    folder = tmp_path / "model"
    trained = json.loads(run("train", tmp_path / "log.csv", "-o", folder, "--split", "none",
                             "--factors", 2, "--iterations", 1, "--json").stdout)
    assert trained["users"] == 2 and trained["items"] == 3
    recs = json.loads(run("recommend", folder, "007", "--k", 3, "--json").stdout)
    assert [r["item"] for r in recs["recommendations"]["007"]] == [20]  # 10 and 30 are seen
    ignored = run("train", tmp_path / "log.csv", "-o", folder, "--min-rating", 4, check_rc=2)
    assert "--min-rating filters the ratings of a MovieLens folder" in ignored.stderr
    broken = {"ratings.csv": "1,10,4.0,964982703\n2,10,3.5,964982704\n",
              "u.data": "1\t10\t4\t881250949\n2\t10\n"}
    for name, text in broken.items():
        movielens = tmp_path / name.replace(".", "_")
        movielens.mkdir()
        (movielens / name).write_text(text)
        refused = run("train", movielens, "-o", tmp_path / "m", check_rc=2)
        line, = refused.stderr.strip().splitlines()
        assert f"{str(movielens / name)!r} is not a MovieLens ratings file" in line


def test_train_reads_a_folder_of_parquet_files(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "log").mkdir()
    for part in range(2):
        pd.DataFrame({"user": [1 + part, 2], "item": [10, 20 + part]}).to_parquet(
            tmp_path / "log" / f"part-{part:05d}.parquet")
    run("train", tmp_path / "log", "-o", tmp_path / "m", "--split", "none", "--factors", 2,
        "--iterations", 1)
    assert recfuse.load(tmp_path / "m" / "model.npz").user_factors.shape == (2, 2)


def test_event_weights_name_numeric_event_types_by_their_digits(tmp_path):
    """JSON keys are strings: {"1": 1, "2": 5} weighs the event types 1 and 2 of a numeric
    column (they had no weight, and the run stopped)."""
    (tmp_path / "log.csv").write_text("user,item,type\n1,10,1\n2,20,2\n1,20,2\n")
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--event", "type",
        "--event-weights", '{"1": 1, "2": 5}', "--split", "none", "--factors", 2,
        "--iterations", 1)
    train = recfuse.Interactions.load(tmp_path / "m" / "train.npz")
    assert sorted(train.matrix.data.tolist()) == [1.0, 5.0, 5.0]


def test_sep_reads_a_csv_file_of_another_separator(tmp_path):
    (tmp_path / "log.csv").write_text("user;item\n007;10\n7;20\n")
    hint = run("train", tmp_path / "log.csv", "-o", tmp_path / "m", check_rc=2)
    assert "separated by ';'" in hint.stderr and "--sep" in hint.stderr
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--sep", ";", "--split", "none",
        "--factors", 2, "--iterations", 1)
    assert recfuse.Interactions.load(tmp_path / "m" / "train.npz").user_ids.ids.tolist() == [
        "007", "7"]
    assert "--sep applies to CSV files" in run("train", tmp_path / "m", "-o", tmp_path / "n",
                                               "--sep", ";", check_rc=2).stderr


def test_serve_bounds_its_event_log_by_an_option():
    refused = run("serve", "model.npz", "--max-pending-events", "-1", check_rc=2)
    assert "argument --max-pending-events: expected an integer >= 0, got -1" in refused.stderr
    assert "--max-pending-events" in run("serve", "--help").stdout


@pytest.mark.parametrize("model", ["svd", "svdpp", "explicit-als"])
def test_rating_model_of_equal_ratings_saves_a_folder_that_loads(tmp_path, model):
    # fit infers the rating scale (min, max) = (4, 4) from ratings that are all equal; load
    # refused that scale ("lowest < highest"), so the folder train wrote could not be
    # evaluated nor recommended from
    frame = pd.DataFrame({"user": ["a", "a", "b", "b", "c", "c"],
                          "item": ["x", "y", "x", "z", "y", "z"], "rating": 4})
    frame.to_csv(tmp_path / "log.csv", index=False)
    folder = tmp_path / model
    run("train", tmp_path / "log.csv", "-o", folder, "--model", model, "--split", "none",
        "--weight", "rating", "--combine", "last", "--factors", 2, "--iterations", 2)
    recs = json.loads(run("recommend", folder, "a", "--k", 5, "--json").stdout)
    assert [entry["item"] for entry in recs["recommendations"]["a"]] == ["z"]
    loaded = recfuse.load(str(folder / "model.npz"))
    assert loaded.rating_scale == (4.0, 4.0)


@pytest.mark.parametrize("model", ["svd", "svdpp", "explicit-als"])
def test_rating_model_on_an_event_log_needs_its_rating_column(tmp_path, model):
    # without --weight every value is an event count (all 1 here): the model trained on
    # them, and evaluate reported an RMSE of 0
    frame = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "rating": 5})
    frame.to_csv(tmp_path / "log.csv", index=False)
    error = _one_line_error(run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--model",
                                model, "--split", "none", check_rc=2), "train",
                            f"--model {model} predicts ratings", "--weight rating")
    assert not (tmp_path / "m").exists(), error


@pytest.mark.parametrize("model", ["svd", "svdpp", "explicit-als"])
def test_rating_model_refuses_event_type_weights(tmp_path, model):
    # with --event each rating was multiplied by its event type's weight (a 5 became 50)
    frame = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "rating": 5,
                          "event": "purchase"})
    frame.to_csv(tmp_path / "log.csv", index=False)
    _one_line_error(run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--model", model,
                        "--weight", "rating", "--combine", "last", "--event", "event",
                        "--split", "none", check_rc=2), "train", "--event", f"--model {model}")
    assert not (tmp_path / "m").exists()


def test_folder_without_training_data_names_the_missing_file(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 2, 3, 1]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--split", "random",
        "--test-fraction", 0.4, "--factors", 2, "--iterations", 1)  # 0.2 holds none out
    os.unlink(tmp_path / "m" / "train.npz")
    for command in ("recommend", "evaluate"):
        extra = [1] if command == "recommend" else []
        error = run(command, tmp_path / "m", *extra, check_rc=2).stderr
        assert "no training data" in error and "train.npz" in error, error
        assert "model file" not in error and "Traceback" not in error


def test_a_folder_of_two_trainings_is_refused_not_misread(tmp_path):
    """`recfuse train` renames its files one by one: a reader between two renames got the
    model of one training with the ids of another (same sizes: every row another user's)."""
    for name, items in (("a", [1, 2, 2, 3, 1]), ("b", [2, 1, 3, 3, 1])):
        pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": items}).to_csv(
            tmp_path / f"{name}.csv", index=False)
        run("train", tmp_path / f"{name}.csv", "-o", tmp_path / name, "--split", "none",
            "--factors", 2, "--iterations", 1)
    os.replace(tmp_path / "b" / "train.npz", tmp_path / "a" / "train.npz")
    for command in ("recommend", "evaluate"):
        extra = [1] if command == "recommend" else ["--test", tmp_path / "a.csv"]
        _one_line_error(run(command, tmp_path / "a", *extra, check_rc=2), command,
                        "model.npz (3 users x 3 items) was not trained on train.npz")


def _one_line_error(result, command: str, *expected: str) -> str:
    """The stderr of a refused run: one "recfuse COMMAND: error: ..." line holding each of
    ``expected``, nothing on stdout (refused before any work printed anything)."""
    line, = result.stderr.strip().splitlines()
    assert line.startswith(f"recfuse {command}: error: ") and "Traceback" not in result.stderr
    for text in expected:
        assert text in line, line
    assert result.stdout == ""
    return line


def _movielens_100k_folder(path):
    """A tiny ml-100k-like folder: u.data of user, item, rating, time (tab-separated)."""
    rng = np.random.default_rng(7)
    path.mkdir()
    lines = {(int(u), int(i)) for u, i in zip(rng.integers(1, 30, 400), rng.integers(1, 25, 400))}
    (path / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + n}\n"
                                         for n, (u, i) in enumerate(sorted(lines))))
    return path


def test_movielens_folder_refuses_the_options_of_event_logs(tmp_path):
    """--weight, --combine, --user, --item (and --timestamp, --event, --event-weights) were
    ignored without a word for a MovieLens folder, whose columns are fixed."""
    folder = _movielens_100k_folder(tmp_path / "ml")
    for options, named in [(["--weight", "rating"], "--weight applies"),
                           (["--combine", "max"], "--combine applies"),
                           (["--user", "u", "--item", "i"], "--user, --item apply"),
                           (["--timestamp", "t"], "--timestamp applies"),
                           (["--event", "e", "--event-weights", '{"e": 2}'],
                            "--event, --event-weights apply")]:
        refused = run("train", folder, "-o", tmp_path / "m", *options, check_rc=2)
        _one_line_error(refused, "train", named, "CSV/Parquet event logs only",
                        repr(str(folder)))
    assert not (tmp_path / "m").exists()
    trained = json.loads(run("train", folder, "-o", tmp_path / "m", "--factors", 2,
                             "--iterations", 1, "--json").stdout)
    assert trained["train_pairs"] > 0 and trained["test_pairs"] > 0
    assert "are refused for it" in " ".join(run("train", "--help").stdout.split())  # as said


def test_split_options_are_refused_before_the_data_is_read(tmp_path):
    """--test-fraction was checked by the split, after the whole log was read (and 0 was let
    through); --test-fraction with a split that ignores it, and a split needing times
    without --timestamp, likewise only after (or never). A missing file shows the order:
    the option is named, not the file."""
    missing = tmp_path / "not-read.csv"
    for options, expected in [
            (["--test-fraction", "0"], "use --split none"),
            (["--test-fraction", "1"], "argument --test-fraction: expected a number between 0 "
                                       "and 1"),
            (["--test-fraction", "nan"], "argument --test-fraction"),
            (["--test-fraction", "0.3", "--split", "none"],
             "--test-fraction applies to --split per_user, random and temporal"),
            (["--test-fraction", "0.3", "--split", "leave_last", "--timestamp", "t"],
             "not --split leave_last"),
            (["--split", "temporal"], "--split temporal needs timestamps"),
            (["--split", "leave_last"], "name the time column"),
            (["--min-rating", "nan"], "argument --min-rating: expected a finite number"),
            (["--model", "bpr", "--lr", "-1"], "argument --lr: expected a number > 0"),
            (["--backend", "bogus"], "backend must be"),
            (["--model", "bpr", "--alpha", "2"], "--alpha does not apply")]:
        refused = run("train", missing, "-o", tmp_path / "m", *options, check_rc=2)
        assert expected in refused.stderr and refused.stdout == "", (options, refused.stderr)
        assert "not-read.csv' not found" not in refused.stderr \
            and "No such file" not in refused.stderr


def test_an_empty_test_set_is_refused_everywhere(tmp_path):
    """A split that held out nothing (--test-fraction 0 was accepted; a tiny log holds
    nothing out at 0.2) trained and wrote an empty test.npz; evaluate (and demo) then gave
    metrics of no pair: 0 and AUC nan. Now train and demo refuse it after the split (before
    training), evaluate refuses an empty test set, from test.npz or --test."""
    (tmp_path / "log.csv").write_text("user,item,t\n1,10,1\n1,20,2\n2,10,3\n2,30,4\n")
    refused = run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--timestamp", "t",
                  "--split", "temporal", "--test-fraction", "0.1", "--json", check_rc=2)
    _one_line_error(refused, "train", "held out no pair of the 4",
                    "a larger --test-fraction, or --split none")
    assert not (tmp_path / "m").exists()  # nothing trained, nothing written
    tiny = run("demo", "--users", 3, "--items", 2, "--events", 5, "--json", check_rc=2)
    _one_line_error(tiny, "demo", "held out no pair")
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--split", "none", "--factors", 2,
        "--iterations", 1)
    (tmp_path / "strangers.csv").write_text("user,item\n7,10\n8,20\n")
    strangers = run("evaluate", tmp_path / "m", "--test", tmp_path / "strangers.csv",
                    check_rc=2)
    _one_line_error(strangers, "evaluate", "has a user and an item the model knows (2 left out)")
    # a folder an earlier recfuse wrote with --test-fraction 0
    train = recfuse.Interactions.load(tmp_path / "m" / "train.npz")
    split.per_user_split(train, 0.0)[1].save(tmp_path / "m" / "test.npz")
    empty = run("evaluate", tmp_path / "m", "--json", check_rc=2)
    _one_line_error(empty, "evaluate", "holds no test pair", "--test DATA")


def test_recommend_lists_each_user_once_in_text_and_json(tmp_path):
    """`recommend DIR 1 1` printed user 1 twice in text, once in --json (a dict key); "01"
    and "1" (user 1 of integer ids) were two JSON keys; an id beyond 64 bits was a
    traceback."""
    frame = pd.DataFrame({"user": [1, 1, 2, 2, 3, 3], "item": [1, 2, 2, 3, 1, 3]})
    frame.to_csv(tmp_path / "log.csv", index=False)
    run("train", tmp_path / "log.csv", "-o", tmp_path / "m", "--split", "none", "--factors", 2,
        "--iterations", 1)
    asked = ("2", "1", "01", "2")
    text = run("recommend", tmp_path / "m", *asked, "--k", 2).stdout.splitlines()
    listed = json.loads(run("recommend", tmp_path / "m", *asked, "--k", 2, "--json").stdout)
    assert [line.split(":")[0] for line in text] == ["user 2", "user 1"]
    assert list(listed["recommendations"]) == ["2", "1"]
    for line, (user, entries) in zip(text, listed["recommendations"].items()):
        assert line == f"user {user}: " + ", ".join(f"{e['item']} ({e['score']:.3f})"
                                                    for e in entries)
    huge = run("recommend", tmp_path / "m", "99999999999999999999", check_rc=2)
    _one_line_error(huge, "recommend", "integers from -9223372036854775808 to 9223372036854775807")


def test_evaluate_refuses_column_options_without_a_test_log(tmp_path):
    """--user, --item, --weight and --sep describe the --test log; without one they were
    ignored without a word."""
    refused = run("evaluate", tmp_path / "m", "--user", "who", "--sep", ";", check_rc=2)
    _one_line_error(refused, "evaluate", "--user, --sep apply to the --test log only")


def test_demo_refuses_options_it_would_ignore_before_any_work(tmp_path):
    """--min-rating without --data, and the synthetic log's sizes with --data, were ignored;
    an unusable --backend was refused only after the log was made, ingested and split (here
    the sizes would be refused first, were the log made before the model)."""
    for options, expected in [(["--min-rating", "3"], "--min-rating filters the ratings of a "
                                                      "MovieLens folder: it needs --data"),
                              (["--data", tmp_path, "--users", "5", "--events", "9"],
                               "--users, --events size the synthetic log, not the MovieLens"),
                              (["--backend", "bogus", "--events", str(10**14)],
                               "backend must be")]:
        _one_line_error(run("demo", *options, check_rc=2), "demo", expected)


def test_a_stdout_closed_early_ends_quietly():
    """`recfuse info | head -1`, once the reader was gone, ended in a BrokenPipeError
    traceback (exit status 1, as for a bug); now 141, as a shell reports SIGPIPE, and
    nothing on stderr. The reader is closed before the start: every write fails."""
    for command in (["info"], ["info", "--json"]):
        reader, writer = os.pipe()
        os.close(reader)
        try:
            result = subprocess.run([sys.executable, "-m", "recfuse.cli", *command],
                                    stdout=writer, stderr=subprocess.PIPE, text=True,
                                    timeout=300)
        finally:
            os.close(writer)
        assert result.returncode == 141 and result.stderr == "", result.stderr


def test_bench_names_a_bad_output_or_script_args_in_one_line(tmp_path):
    """A file as --output was a FileExistsError traceback (exit status 1); unbalanced
    quotes in --script-args said "No closing quotation" without naming the option."""
    (tmp_path / "a_file").write_text("")
    _one_line_error(run("bench", "--output", tmp_path / "a_file", check_rc=2), "bench",
                    "--output", "cannot make the results folder")
    _one_line_error(run("bench", "--script-args", "'x", "--output", tmp_path, check_rc=2),
                    "bench", "--script-args", "No closing quotation")


def test_serve_without_its_extra_says_error_like_every_command():
    """A failed import of the server printed "recfuse serve: ..." without the "error:" of
    every other refusal (the CLI's stated one-line form)."""
    code = ("import sys; sys.modules['recfuse.server'] = None; from recfuse.cli import main; "
            "sys.exit(main(['serve', 'model.npz']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    _one_line_error(result, "serve", "recfuse.server")


def test_recommend_gives_a_user_without_training_pairs_the_most_popular_items(tmp_path):
    # user 9's events are the latest: the temporal split holds them all out, so the model
    # learnt nothing of 9 (ALS would score every item 0 and list the smallest ids)
    rows = [(user, item, time) for time, (user, item) in enumerate(
        (u, i) for u in range(1, 7) for i in (30, 20, 10) if (u + i) % 4)]
    rows += [(u, 30, 50 + u) for u in range(1, 4)] + [(9, 10, 100), (9, 20, 101)]
    pd.DataFrame(rows, columns=["user", "item", "ts"]).to_csv(tmp_path / "log.csv", index=False)
    folder = tmp_path / "m"
    run("train", tmp_path / "log.csv", "-o", folder, "--split", "temporal", "--timestamp", "ts",
        "--test-fraction", 0.25, "--factors", 2, "--iterations", 2)
    train = recfuse.Interactions.load(folder / "train.npz")
    assert train.matrix[train.user_ids.to_internal(np.array([9]))].nnz == 0
    result = json.loads(run("recommend", folder, 9, 1, "--k", 2, "--json").stdout)
    counts = np.bincount(train.matrix.indices, minlength=train.n_items)
    popular = train.item_ids.to_external(np.argsort(-counts, kind="stable")[:2]).tolist()
    assert [entry["item"] for entry in result["recommendations"]["9"]] == popular
    assert result["popular"] == ["9"]
    text = run("recommend", folder, 9, "--k", 2).stdout
    assert text.startswith("user 9 (no training pair: the most popular items): ")


def test_demo_json_carries_the_top_list_the_text_prints():
    options = ("demo", "--users", 300, "--items", 100, "--events", 5000, "--factors", 4,
               "--iterations", 2)
    text = run(*options).stdout
    top = json.loads(run(*options, "--json").stdout)["top"]
    assert f"top 5 for user {top['user']} " in text
    assert len(top["items"]) == 5
    for entry in top["items"]:
        mark = " *" if entry["held_out"] else ""
        assert f"{entry['item']:>10}  score {entry['score']:.4f}{mark}\n" in text


def test_evaluate_test_log_of_a_rating_model_reads_its_ratings(tmp_path):
    # a rating model's RMSE/MAE on a --test log compare ratings, read as the training data's
    # were (column and rule for repeated pairs), not counts of events nor sums of ratings
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"user": rng.integers(0, 20, 400), "item": rng.integers(0, 15, 400),
                          "stars": rng.integers(1, 6, 400)})
    frame.to_csv(tmp_path / "log.csv", index=False)
    folder = tmp_path / "m"
    run("train", tmp_path / "log.csv", "-o", folder, "--model", "svd", "--weight", "stars",
        "--combine", "last", "--factors", 2, "--iterations", 2)
    model = recfuse.load(folder / "model.npz")
    train = recfuse.Interactions.load(folder / "train.npz")
    test = recfuse.Interactions.from_events(tmp_path / "log.csv", weight="stars",
                                            combine="last", user_ids=train.user_ids,
                                            item_ids=train.item_ids, unknown="drop")
    from recfuse.metrics import evaluate

    expected = evaluate(model, train, test)
    got = json.loads(run("evaluate", folder, "--test", tmp_path / "log.csv", "--json").stdout)
    assert got["rmse"] == pytest.approx(expected["rmse"])
    assert got["mae"] == pytest.approx(expected["mae"])
    assert "ratings of column 'stars'" in run("evaluate", folder, "--test",
                                              tmp_path / "log.csv").stdout


INTERRUPTING_CHILD = """
import os, signal, sys
import recfuse
from recfuse import cli
where = sys.argv.pop(1)
if where == "fit":  # Ctrl-C while training
    def fit(self, *args, **kwargs):
        raise KeyboardInterrupt
    recfuse.ALS.fit = fit
else:  # Ctrl-C after the first file is renamed from the staging folder into the folder
    real = os.replace
    def replace(source, target):
        real(source, target)
        if ".recfuse-train-" in str(source) and ".recfuse-train-" not in str(target) \
                and not getattr(replace, "sent", False):
            replace.sent = True
            os.kill(os.getpid(), signal.SIGINT)
    os.replace = replace
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_interrupted_train_says_so_and_leaves_its_folder_whole(tmp_path):
    rng = np.random.default_rng(6)
    for name in ("a.csv", "b.csv"):
        pd.DataFrame({"user": rng.integers(0, 30, 300), "item": rng.integers(0, 20, 300)}
                     ).to_csv(tmp_path / name, index=False)
    folder = tmp_path / "m"
    run("train", tmp_path / "a.csv", "-o", folder, "--factors", 2, "--iterations", 1)
    old = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    for where in ("fit", "rename"):
        result = subprocess.run([sys.executable, "-c", INTERRUPTING_CHILD, where, "train",
                                 str(tmp_path / "b.csv"), "-o", str(folder), "--factors", "2",
                                 "--iterations", "1", "--json"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 130 and result.stderr == "recfuse train: interrupted\n"
        now = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
        assert now.keys() == old.keys()
        if where == "fit":  # the folder as it was
            assert now == old
        else:  # the renames ran to their end before the interruption took effect
            assert all(now[name] != old[name] for name in old)


def test_demo_shows_the_top_list_of_a_user_the_model_knows(tmp_path):
    # user 9 rated last: a temporal split holds out all of 9's ratings, the most of anyone's
    folder = tmp_path / "ml"
    folder.mkdir()
    rows = [(u, i, 880000000 + 8 * u + i) for u in range(1, 7) for i in range(1, 9)]
    rows += [(9, i, 890000000 + i) for i in range(1, 7)]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t5\t{t}\n" for u, i, t in rows))
    result = json.loads(run("demo", "--data", folder, "--split", "temporal", "--factors", 2,
                            "--iterations", 2, "--json").stdout)
    assert result["top"]["user"] != 9

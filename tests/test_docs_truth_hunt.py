"""Are the docs true? The claims a newcomer reads, checked against what the code does.

Sources of the claims: README.md (its code blocks, its Quick start, its prose on the main
classes), bench/README.md (its commands), the module, class and method docstrings of
python/recfuse, and the command line's help (``recfuse CMD --help``, python/recfuse/cli.py).

The contract used here is what those texts say, read literally:
- every Python block of README.md runs, in order, in one namespace (the later blocks use the
  names of the earlier ones: ``model``, ``scorer``, ``model.npz``), and its bash blocks name
  commands, options and request bodies that exist;
- a class's ``Parameters`` entries are its signature's parameters and cover all of them; a
  default stated in a docstring or in a help text is the one the code uses; the defaults said
  to be a peer's (Surprise, implicit) are that peer's;
- every ``recfuse.x.y`` named in a docstring or in README.md exists, and so does every file,
  test, C++ name and bench/README.md section README.md points at;
- the commands of bench/README.md name scripts and options that exist, and each script
  answers ``--help`` (parsed here from the scripts' source: running them is benchmarking);
- the prose claims of the main classes hold (hand-written checks, one claim each).

Most checks are generated from the texts (regexes over the blocks and docstrings), so they
keep guarding the docs as they change. The false claims found (README's serving block gave
5,000 genres to a 5,001-item model; bench_new_items.py ran on --help; k_core's ``compact``
and ALS.loss's ``user_items`` were undescribed) are fixed; these tests keep them so.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import cli, datasets, metrics, split

from conftest import DATASETS

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCH_README = (ROOT / "bench" / "README.md").read_text()
PACKAGE = ROOT / "python" / "recfuse"


def code_blocks(text: str, lang: str | None = None) -> list[tuple[int, str, str]]:
    """(first line number, language, code) of each fenced block of ``text``."""
    blocks = []
    for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
        if lang is None or m.group(1) == lang:
            blocks.append((text[:m.start()].count("\n") + 2, m.group(1), m.group(2)))
    return blocks


def block_with(marker: str, lang: str = "python") -> str:
    """The one README block of ``lang`` that holds ``marker``."""
    found = [code for _, _, code in code_blocks(README, lang) if marker in code]
    assert len(found) == 1, (marker, len(found))
    return found[0]


def run_python(code: str, cwd, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout,
                          env=dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore"))


# ============================================================== README: the Python blocks

# The blocks in the order README.md gives them (the Dask one has its own test below).
USING_IT = block_with("model.update_users([42]")
RETRIEVAL = block_with("index = recfuse.ItemIndex(items)")
MLP = block_with("scorer = recfuse.MLPScorer(")
IMPLICIT = block_with("from recfuse.compat.implicit import AlternatingLeastSquares")
RATINGS = block_with("R = datasets.synthetic_explicit(seed=0)")
TUNED = block_with("recfuse.SVD(factors=100, epochs=50")
DASK = block_with("from recfuse.distributed import DaskALS")
SERVING = block_with("rec = recfuse.Recommender(\"model.npz\"")
DATA_PATH = block_with("log = recfuse.Interactions.from_events(")

# Sizes only, so the chain fits the suite's time (the README's 20,000 users x 500,000
# entries fit in 3-9 s here, and BPR's 100 epochs on them in 25 s): the catalogue keeps its
# 5,000 items, which the later blocks name (update_items([5_000]), genres).
SHRINK = [("synthetic_implicit(20_000, 5_000, 500_000", "synthetic_implicit(2_000, 5_000, 50_000")]

# What the data-path block reads: an events.parquet of the named columns (string skus, as
# its to_internal(["sku-42"]) says), a new_events_df, and a MovieLens folder (ml-100k from
# the shared datasets in place of "~/data/ml-1m", which only names the format).
DATA_PATH_FIXTURE = textwrap.dedent("""
    import numpy as np, pandas as pd
    from recfuse import datasets as _d
    _log = _d.synthetic_event_log(500, 200, 20_000, seed=0)
    _df = pd.DataFrame({"user_id": _log["user"], "sku": np.char.replace(_log["item"], "item", "sku-"),
                        "ts": _log["timestamp"], "type": _log["event"]})
    _df.to_parquet("events.parquet")
    new_events_df = _df.iloc[:50].copy()
""")

CHAIN = textwrap.dedent("""
    import json, traceback
    ns = {}
    report = {}
    for name, code in BLOCKS:
        try:
            exec(compile(code, "README " + name, "exec"), ns)
            report[name] = "ok"
        except Exception as e:
            report[name] = traceback.format_exc(limit=3)
        if name == "using it":  # what the serving block will be given as model.npz
            import numpy as np, recfuse
            report["items of model.npz"] = int(recfuse.load("model.npz").item_factors.shape[0])
    print("REPORT" + json.dumps(report))
""")


def substituted(code: str, subs) -> str:
    for old, new in subs:
        assert old in code, f"README changed: {old!r} is gone"
        code = code.replace(old, new)
    return code


@pytest.fixture(scope="module")
def readme_chain(tmp_path_factory):
    """Every Python block of README.md but the Dask one, in order, in one process, as
    written (the Using-it block shrunk)."""
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    tmp = tmp_path_factory.mktemp("readme")
    genres = re.search(r"genres = (np\.arange\([\d_]+\) % \d+)", SERVING).group(1)
    blocks = [
        ("using it", substituted(USING_IT, SHRINK)),
        ("retrieval", RETRIEVAL),
        ("mlp", MLP),
        ("implicit drop-in", IMPLICIT),
        ("ratings", RATINGS),
        ("tuned recipe", TUNED),
        ("genres as written", f"import numpy as np\nGENRES_AS_WRITTEN = int(({genres}).size)"),
        ("serving", SERVING),
        ("data path fixture", DATA_PATH_FIXTURE),
        ("data path", substituted(DATA_PATH, [('"~/data/ml-1m"', repr(os.path.join(DATASETS, "ml-100k")))])),
        ("genres report", "print('GENRES', GENRES_AS_WRITTEN)"),
    ]
    if not os.path.isdir(os.path.join(DATASETS, "ml-100k")):
        blocks[-2] = ("data path", substituted(DATA_PATH, [('ml = datasets.load_movielens("~/data/ml-1m")', "")]))
    program = "BLOCKS = " + repr(blocks) + "\n" + CHAIN
    result = run_python(program, tmp)
    lines = [l for l in result.stdout.splitlines() if l.startswith("REPORT")]
    assert lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT"):])
    genres_line = [l for l in result.stdout.splitlines() if l.startswith("GENRES")]
    report["genres as written"] = int(genres_line[0].split()[1]) if genres_line else None
    return report


@pytest.mark.parametrize("name", ["using it", "retrieval", "mlp", "implicit drop-in", "ratings",
                                  "tuned recipe", "serving", "data path"])
def test_readme_python_block_runs(readme_chain, name):
    assert readme_chain[name] == "ok", readme_chain[name]


def test_readme_serving_genres_cover_the_model_it_serves(readme_chain):
    """``genres``, "a category per item of model.npz", covers the model.npz saved by the
    "Using it" block: 5,001 items, as its ``update_items([5_000], ...)`` adds one (README
    once gave 5,000, and ``Rerank(item_categories=genres)`` failed the Recommender's
    constructor)."""
    assert readme_chain["genres as written"] >= readme_chain["items of model.npz"]


def test_readme_dask_block_runs_on_a_local_cluster(tmp_path):
    """The Dask block, with an in-process cluster for ``Client("scheduler:8786")`` and local
    folders for /shared; its ``events/`` folder holds user, item, clicks as it says."""
    pytest.importorskip("distributed")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    (tmp_path / "events").mkdir()
    pd.DataFrame({"user": rng.integers(0, 300, 5000), "item": rng.integers(0, 100, 5000),
                  "clicks": rng.integers(1, 5, 5000).astype("float32")}).to_parquet(
        tmp_path / "events" / "part-0.parquet")
    code = substituted(DASK, [
        ('Client("scheduler:8786")',
         "Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)"),
        ("/shared/", "./shared/")])
    code += "\nassert isinstance(local, __import__('recfuse').ALS)\nassert len(local_ids) == local.user_factors.shape[0]\nclient.close()\n"
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "shared" / "model").is_dir() and (tmp_path / "shared" / "recs").is_dir()


# ============================================================== README: Quick start and bash

def test_quick_start_matches_pyproject_and_ci():
    """``pip install . && recfuse demo`` and ``pip install ".[test]" && python -m pytest``:
    the script and its command exist, the extra exists and brings pytest and hypothesis,
    .ci/run runs the same test command, the Python floor is pyproject's."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    quick = code_blocks(README.split("## Quick start", 1)[1], "bash")[0][2]
    lines = [l.split("#")[0].strip() for l in quick.strip().splitlines()]
    assert lines[0] == "pip install . && recfuse demo"
    assert project["scripts"]["recfuse"] == "recfuse.cli:main"
    assert "demo" in _subparsers(cli.build_parser())
    extra = re.search(r'pip install "\.\[(\w+)\]" && (python -m pytest)', lines[1])
    assert extra, lines[1]
    test_extra = project["optional-dependencies"][extra.group(1)]
    assert any(r.startswith("pytest") for r in test_extra)
    assert any(r.startswith("hypothesis") for r in test_extra)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'python -m pip install ".[{extra.group(1)}]" && {extra.group(2)}' in ci
    floor = re.search(r"Python ≥ (3\.\d+)", README).group(1)
    assert project["requires-python"] == f">={floor}"
    for version in re.search(r"passes on ([\d., and]+)", " ".join(README.split())).group(1).replace("and", ",").split(","):
        if version.strip():
            assert f"Programming Language :: Python :: {version.strip()}" in project["classifiers"]


def test_readme_extras_exist():
    """Every ``pip install ".[name]"`` of README.md names an extra of pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.findall(r'pip install "(?:\.|recfuse)\[([\w-]+)\]"', README))
    named |= set(re.findall(r'pip install "(?:\.|recfuse)\[([\w-]+)\]"', "\n".join(
        (PACKAGE / p).read_text() for p in ("server.py", "interactions.py"))))
    assert named and named <= set(extras), named - set(extras)


def _subparsers(parser) -> dict:
    action = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    return action.choices


def readme_recfuse_commands() -> list[list[str]]:
    """The ``recfuse ...`` command lines of README.md's bash blocks and inline code."""
    commands = []
    texts = [code for _, _, code in code_blocks(README, "bash")]
    texts += [" ".join(t.split()) for t in re.findall(r"`(recfuse\s[^`]+)`", README)]
    for text in texts:
        for line in text.splitlines():
            line = line.split("#")[0]
            for part in re.split(r"&&|&|;", line):
                words = part.split()
                if words[:1] == ["recfuse"] and len(words) > 1 and not words[1].startswith("["):
                    commands.append(words[1:])
    return commands


def test_readme_recfuse_commands_parse():
    """Each ``recfuse CMD ...`` line of README.md (bash blocks, inline code) parses with the
    command's own parser: the commands and options it names exist."""
    commands = readme_recfuse_commands()
    assert len(commands) >= 8
    parser = cli.build_parser()
    for words in commands:
        if words[0].isupper() or words[0].startswith("COMMAND"):
            continue  # recfuse COMMAND: error: ... (a placeholder)
        words = [w.rstrip(".") if re.fullmatch(r"[A-Z]+\.\.\.", w) else w for w in words
                 if not re.fullmatch(r"\[.*|.*\]|\.\.\.", w)]
        if words[0] not in _subparsers(parser):
            pytest.fail(f"README names the command recfuse {words[0]}")
        if len(words) == 1:
            continue  # the command named in prose
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README's `recfuse {' '.join(words)}` does not parse")


def test_readme_cli_paragraph_names_every_command_and_the_json_rule():
    """README: "`recfuse demo` ..., `recfuse train` ..., ... `recfuse info`; each takes
    `--json`"; cli's docstring: "Every command but serve takes --json"."""
    commands = _subparsers(cli.build_parser())
    for name in commands:
        assert f"recfuse {name}" in " ".join(README.split()), name
        assert f"recfuse {name}" in cli.__doc__, name
    for name, sub in commands.items():
        has_json = any("--json" in a.option_strings for a in sub._actions)
        assert has_json == (name != "serve"), name


def test_readme_models_of_train_are_the_cli_choices():
    """README: ``recfuse train DATA -o DIR [--model als|bpr|svd|svdpp|explicit-als]``."""
    listed = re.search(r"--model ([\w|-]+)\]", README).group(1).split("|")
    train = _subparsers(cli.build_parser())["train"]
    choices = [a for a in train._actions if "--model" in a.option_strings][0].choices
    assert list(listed) == list(choices)


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient.")
def test_readme_http_examples_answer(tmp_path, monkeypatch):
    """The HTTP section, as written: ``recfuse train log.csv -o out/`` then ``recfuse serve
    out/`` and its curl bodies (by the log's ids), the model-file server's bodies (by rows),
    the retrain loop's ``python -c`` that appends the taken events to log.csv, and /reload."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    pd = pytest.importorskip("pandas")
    from starlette.testclient import TestClient

    from recfuse.persistence import load_folder
    from recfuse.server import create_app

    http = code_blocks(README, "bash")[1][2]
    curls = re.findall(r"curl (?:-X(\w+) )?localhost:8000(/\w+)(?: -d '([^']*)')?", http)
    assert len(curls) >= 8
    rng = np.random.default_rng(0)
    users = ["alice", "bob"] + [f"u{j}" for j in range(60)]
    items = ["sku-7", "sku-5"] + [f"sku-{j}" for j in range(8, 120)]
    rows = [(users[j % len(users)], items[int(x)]) for j, x in enumerate(rng.integers(0, len(items), 3000))]
    rows += [("alice", "sku-7"), ("alice", "sku-9"), ("bob", "sku-5")]
    monkeypatch.chdir(tmp_path)
    pd.DataFrame(rows, columns=["user", "item"]).to_csv("log.csv", index=False)
    for command in ("train log.csv -o out/", "train log.csv -o out --split none"):
        assert command in README
    assert cli.main(["train", "log.csv", "-o", "out", "--split", "none", "--iterations", "3",
                     "--factors", "8"]) == 0

    model, ids = load_folder("out")
    app = create_app(recfuse.Recommender(model), model_path="out", ids=ids)
    by_ids = [c for c in curls if "alice" in c[2]]
    assert by_ids
    with TestClient(app) as client:
        for method, route, body in by_ids:
            answer = client.request(method or "GET", route, content=body)
            assert answer.status_code == 200, answer.text
        # the retrain loop
        client.post("/events", json={"user": ["alice", "newcomer"], "item": ["sku-5", "sku-new"]})
        taken = client.delete("/events")
        assert taken.status_code == 200
        (tmp_path / "taken.json").write_text(taken.text)
        retrain = [code for _, _, code in code_blocks(README, "bash") if "taken.json" in code][0]
        loop = re.search(r'python -c "(import csv, json;.*?)"\n', retrain, re.S).group(1)
        subprocess.run([sys.executable, "-c", loop], check=True, cwd=tmp_path, timeout=60)
        appended = pd.read_csv("log.csv")
        assert len(appended) == len(rows) + 2 and appended.iloc[-1].tolist() == ["newcomer", "sku-new"]
        assert cli.main(["train", "log.csv", "-o", "out", "--split", "none", "--iterations", "2",
                         "--factors", "8"]) == 0
        assert client.post("/reload").status_code == 200
        assert client.get("/health").json()["ids"] == "training log"

    # a model file, served by its rows: the other bodies (the context one needs a ranker of
    # context_width 2, as its comment says)
    model.save("model.npz")
    d = model.user_factors.shape[1]
    rng = np.random.default_rng(1)
    ranker = recfuse.MLPScorer([(rng.standard_normal((8, 2 * d + 2)).astype(np.float32), None, "relu"),
                                (rng.standard_normal((1, 8)).astype(np.float32), None, "sigmoid")])
    n_users = model.user_factors.shape[0]
    for method, route, body in curls:
        if "alice" in body:
            continue
        body = body.replace("42", str(n_users - 1))  # a row the small model has
        uses_context = '"context"' in body
        rec = recfuse.Recommender(recfuse.load("model.npz"), ranker if uses_context else None,
                                  candidates=20)
        with TestClient(create_app(rec, model_path="model.npz")) as client:
            answer = client.request(method or "GET", route, content=body)
            assert answer.status_code == 200, (route, body, answer.text)


# ============================================================== bench/README.md commands

def _script_options(script: pathlib.Path) -> tuple[bool, set[str]]:
    """(builds an ArgumentParser, the option strings of its add_argument calls)."""
    tree = ast.parse(script.read_text())
    options, parser = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            parser |= name == "ArgumentParser"
            if name == "add_argument":
                options |= {a.value for a in node.args
                            if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return parser, options


def bench_commands() -> list[tuple[str, str, list[str]]]:
    """(command text, script, options) of each bench/README.md inline command."""
    found = []
    for span in re.findall(r"`([^`]*)`", BENCH_README, re.S):
        text = " ".join(span.split())
        m = re.search(r"bench/(\w+\.py)(.*)", text)
        if m:
            found.append((text, m.group(1), re.findall(r"(?<![\w-])(--[\w-]+)", m.group(2))))
    return found


def test_bench_readme_commands_name_scripts_and_options_that_exist():
    commands = bench_commands()
    assert len(commands) >= 40
    for text, script, options in commands:
        path = ROOT / "bench" / script
        assert path.is_file(), text
        _, known = _script_options(path)
        for option in options:  # argparse also takes a unique prefix
            assert option in known or len([k for k in known if k.startswith(option)]) == 1, (
                f"{text}: {script} has no {option}")


def test_readme_bench_commands_name_scripts_and_options_that_exist():
    for m in re.finditer(r"`python (bench/\w+\.py)([^`]*)`", README):
        path = ROOT / m.group(1)
        assert path.is_file(), m.group(0)
        _, known = _script_options(path)
        for option in re.findall(r"(?<![\w-])(--[\w-]+)", m.group(2)):
            assert option in known, m.group(0)


def test_bench_readme_environment_variables_are_read():
    """``RECFUSE_BENCH_THREADS=1 python bench/...``, ``TEST_TIMEOUT_S=...``, ``BENCH_BUDGET_S``
    and ``GPU_BENCHES`` are read by the scripts they are given to."""
    sources = "\n".join(p.read_text() for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh"))
    for name in set(re.findall(r"\b([A-Z][A-Z0-9_]{4,})=", BENCH_README)):
        if name.startswith(("RECFUSE_BENCH", "TEST_TIMEOUT", "BENCH_BUDGET", "GPU_")):
            assert name in sources, name


RUNNABLE_BENCH = sorted(p.name for p in (ROOT / "bench").glob("*.py")
                        if "__main__" in p.read_text())


@pytest.mark.parametrize("script", RUNNABLE_BENCH)
def test_bench_script_answers_help(script):
    """``python bench/X.py --help`` prints its usage and runs nothing: each runnable script
    builds an ArgumentParser (parsed from its source; running them would be benchmarking)."""
    parser, _ = _script_options(ROOT / "bench" / script)
    assert parser, script


# ============================================================== CLI help against argparse

def help_texts():
    """(command, option, action, help rendered) of every option whose help states a default."""
    rows = []
    for name, sub in _subparsers(cli.build_parser()).items():
        for action in sub._actions:
            if action.help and "default" in action.help:
                text = action.help % {"default": action.default, "prog": sub.prog}
                option = action.option_strings[0] if action.option_strings else action.dest
                rows.append((name, option, action, text))
    return rows


def effective_defaults() -> dict:
    """Where the code takes each default that argparse leaves None (the option not given)."""
    from recfuse import serving

    return {
        ("demo", "--min-rating"): f"{cli.DEMO_MIN_RATING:g}",
        ("demo", "--users"): str(cli.DEMO_SIZES["--users"]),
        ("demo", "--items"): str(cli.DEMO_SIZES["--items"]),
        ("demo", "--events"): str(cli.DEMO_SIZES["--events"]),
        ("serve", "--threads"): f"1 below {serving.SMALL_CATALOGUE:,} items",
        ("train", "--user"): cli.LOG_DEFAULTS["user"],
        ("train", "--item"): cli.LOG_DEFAULTS["item"],
        ("evaluate", "--user"): cli.LOG_DEFAULTS["user"],
        ("evaluate", "--item"): cli.LOG_DEFAULTS["item"],
        ("train", "--sep"): "a comma; a tab for .tsv files",
        ("evaluate", "--sep"): "a comma; a tab for .tsv files",
        ("train", "--event-weights"): json.dumps({k: int(v) for k, v in cli.EVENT_WEIGHTS.items()}),
        ("train", "--combine"): cli.LOG_DEFAULTS["combine"],
        ("train", "--min-rating"): "all",
        ("train", "--test-fraction"): str(cli.TEST_FRACTION),
        ("bench", "suites"): "data",
        ("bench", "--output"): "bench/results",
    }


def test_cli_help_defaults_are_the_defaults_used():
    """Each "(default X)" of ``recfuse CMD --help``: argparse's own default where it has one
    (%(default)s), else the value the code falls back to when the option is left out."""
    table = effective_defaults()
    for command, option, action, text in help_texts():
        if action.default is not None and "%(default)s" in (action.help or ""):
            continue  # rendered from argparse's default: true by construction
        if action.default is not None:
            assert str(action.default) in text, (command, option, text)
            continue
        if (command, option) == ("train", "--model"):
            continue
        assert (command, option) in table, f"new literal default in help: {command} {option}: {text}"
        assert table[(command, option)] in text, (command, option, text)


def test_cli_sep_default_follows_the_suffix(tmp_path):
    """--sep "(default: a comma; a tab for .tsv files)": the reader's choice without --sep."""
    (tmp_path / "a.tsv").write_text("user\titem\n1\t2\n3\t4\n")
    (tmp_path / "a.csv").write_text("user,item\n1,2\n3,4\n")
    for name in ("a.tsv", "a.csv"):
        log = recfuse.Interactions.from_events(str(tmp_path / name))
        assert log.nnz == 2 and log.user_ids.to_external([0, 1]).tolist() == [1, 3]


def test_cli_train_model_help_states_the_als_defaults():
    """train --model: "options left out keep the model's defaults (ALS: 64 factors, 15
    iterations, regularization 0.05, alpha 2)"; the demo's help its own."""
    train = _subparsers(cli.build_parser())["train"]
    text = [a for a in train._actions if "--model" in a.option_strings][0].help
    m = re.search(r"ALS: (\d+) factors, (\d+) iterations, regularization ([\d.]+), alpha ([\d.]+)", text)
    model = cli._model(train.parse_args(["x", "-o", "y"]))
    assert isinstance(model, recfuse.ALS)
    assert (model.factors, model.iterations, model.regularization, model.alpha) == (
        int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4)))
    for name, (class_name, parameters) in cli.MODELS.items():
        if name == "als":
            continue
        model = cli._model(train.parse_args(["x", "-o", "y", "--model", name]))
        fresh = getattr(recfuse, class_name)()
        for parameter in parameters.values():  # "keep the model's defaults"
            assert getattr(model, parameter) == getattr(fresh, parameter), (name, parameter)


def test_cli_demo_help_defaults_are_the_demo_model():
    """demo's "(default X)" of --factors, --iterations, --regularization, --alpha are the
    model it trains."""
    demo = _subparsers(cli.build_parser())["demo"]
    model = cli._model(demo.parse_args([]))
    for option in ("factors", "iterations", "regularization", "alpha"):
        action = [a for a in demo._actions if f"--{option}" in a.option_strings][0]
        stated = re.search(r"\(default ([\d.]+)\)", action.help % {"default": action.default})
        assert float(stated.group(1)) == getattr(model, option), option


# ============================================================== docstrings vs signatures

ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s?:(?:\s|$)")


def parameter_entries(doc: str | None) -> dict[str, str]:
    """{name: description} of the ``name : text`` (or ``name: text``) entries of a docstring's
    ``Parameters`` section; {} without one."""
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i + 2 for i, line in enumerate(lines[:-1])
              if line.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"}]
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in lines[starts[0]:] if starts else []:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        m = ENTRY.match(line) if indent == 0 else None
        if m:
            current = [n.strip() for n in m.group("names").split(",")]
            for name in current:
                entries[name] = line[m.end():]
        elif indent and current:
            for name in current:
                entries[name] += " " + line.strip()
        else:
            break
    return entries


def documented(name: str, doc: str) -> bool:
    """``name`` is an entry (``name:`` at a line's start) or appears in a literal."""
    return bool(re.search(rf"^\s*(?:\w+\s*,\s*)*{name}(?:\s*,\s*\w+)*\s?:", doc, re.M)
                or re.search(rf"``[^`]*\b{name}\b[^`]*``", doc))


MAIN_CLASSES = [recfuse.ALS, recfuse.BPR, recfuse.ExplicitALS, recfuse.SVD, recfuse.SVDpp,
                recfuse.ItemIndex, recfuse.MLPScorer, recfuse.MLPRanker, recfuse.Recommender,
                recfuse.MicroBatcher, recfuse.Rerank]


def class_doc(cls) -> str:
    """The class docstring, with the docs it defers to ("those of ``SVD``")."""
    doc = inspect.getdoc(cls) or ""
    for other in re.findall(r"those of ``(\w+)``", doc):
        doc += "\n" + (inspect.getdoc(getattr(recfuse, other)) or "")
    return doc


@pytest.mark.parametrize("cls", MAIN_CLASSES, ids=lambda c: c.__name__)
def test_every_constructor_parameter_is_documented_and_every_entry_exists(cls):
    doc = class_doc(cls)
    signature = inspect.signature(cls)
    for name in parameter_entries(cls.__doc__):
        assert name in signature.parameters, f"{cls.__name__} documents {name}, which it lacks"
    for name in signature.parameters:
        assert documented(name, doc), f"{cls.__name__}({name}=...) is not documented"


def stated_defaults(doc: str) -> list[tuple[str, str]]:
    """(parameter, value) pairs a docstring states as defaults: ``name: X (default)``,
    ``(default X)`` in an entry, and ``name=value`` lists in a sentence about defaults."""
    found = []
    for name, text in parameter_entries(doc).items():
        m = re.search(r'("[^"]*"|[\w.]+) \(default[):]', text) or re.search(r"\(default (\S+?)\)", text)
        if m:
            found.append((name, m.group(1)))
    for sentence in re.findall(r"[Dd]efaults?\b[^()]{0,80}\(([^()]*=[^()]*)\)", inspect.cleandoc(doc)):
        found += re.findall(r"(\w+)=([\w.+-]+)", sentence)
    return found


def same_default(stated: str, actual) -> bool:
    stated = stated.strip('"')
    if isinstance(actual, type) or isinstance(actual, np.dtype):
        return np.dtype(actual).name == stated
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(stated) == float(actual)
        except ValueError:
            return False
    return str(actual) == stated


@pytest.mark.parametrize("cls", MAIN_CLASSES, ids=lambda c: c.__name__)
def test_stated_defaults_are_the_signatures(cls):
    signature = inspect.signature(cls)
    for name, value in stated_defaults(cls.__doc__ or ""):
        if name not in signature.parameters:
            continue  # a peer's parameter (uniform=..., approximate=...) in the prose
        assert same_default(value, signature.parameters[name].default), (cls.__name__, name, value)


def test_the_stated_defaults_were_found():
    """The generator above reads the forms the docstrings use (else it checks nothing)."""
    assert ("cg_steps", "3") in stated_defaults(recfuse.ALS.__doc__)
    assert ("confidence", '"linear"') in stated_defaults(recfuse.ALS.__doc__)
    assert ("storage", '"auto"') in stated_defaults(recfuse.ItemIndex.__doc__)
    assert ("factors", "20") in stated_defaults(recfuse.SVDpp.__doc__)
    assert ("iterations", "100") in stated_defaults(recfuse.BPR.__doc__)


def test_svd_defaults_are_surprises():
    """SVD: "Parameters and defaults are Surprise's: factors (n_factors), ..."; SVDpp:
    "Surprise's defaults (factors=20, epochs=20, lr=0.007, reg=0.02)"."""
    surprise = pytest.importorskip("surprise")
    names = {"factors": "n_factors", "epochs": "n_epochs", "lr": "lr_all", "reg": "reg_all",
             "biased": "biased", "init_mean": "init_mean", "init_std": "init_std_dev"}
    for ours, theirs in ((recfuse.SVD, surprise.SVD), (recfuse.SVDpp, surprise.SVDpp)):
        mine, peer = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        for a, b in names.items():
            if a in mine:
                assert mine[a].default == peer[b].default, (ours.__name__, a)
        for rate in ("lr_bu", "lr_bi", "lr_pu", "lr_qi", "reg_bu", "reg_bi", "reg_pu", "reg_qi"):
            assert mine[rate].default == peer[rate].default is None


def test_bpr_defaults_are_implicits():
    """BPR: "Defaults follow implicit.bpr.BayesianPersonalizedRanking (factors=100, lr=0.01,
    reg=0.01, iterations=100, ...)"."""
    pytest.importorskip("implicit")
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    peer = inspect.signature(BayesianPersonalizedRanking.__init__).parameters
    mine = inspect.signature(recfuse.BPR).parameters
    for a, b in (("factors", "factors"), ("lr", "learning_rate"), ("reg", "regularization"),
                 ("iterations", "iterations")):
        assert mine[a].default == peer[b].default, a


def test_readme_explicit_als_defaults():
    """README: "Defaults (32 factors, λ = 0.1, 15 iterations)"."""
    m = re.search(r"Defaults \((\d+) factors, λ = ([\d.]+), (\d+) iterations\)", README)
    p = inspect.signature(recfuse.ExplicitALS).parameters
    assert (p["factors"].default, p["reg"].default, p["iterations"].default) == (
        int(m.group(1)), float(m.group(2)), int(m.group(3)))


# Optional parameters that a method's own docstring does not name, but a text it defers to
# does ("the same as ``from_events``", "``Recommender.recommend``, answered within a batch",
# the module docstring's "input row and the forms", split's module docstring on drop_cold).
DEFERRED = {
    "MLPScorer.prepare_items": {"item_features"},
    "MLPScorer.rank": {"user_features", "item_features", "candidate_features"},
    "MLPScorer.score_candidates": {"user_features", "item_features", "candidate_features"},
    "MLPRanker.fit": {"user_features", "item_features"},
    "MicroBatcher.recommend": {"k", "exclude", "context_features"},
    "MicroBatcher.recommend_async": {"k", "exclude", "context_features"},
    "MicroBatcher.submit": {"k", "exclude", "context_features"},
    "MicroBatcher.submit_async": {"k", "exclude", "context_features"},
    "Interactions.add": {"source"},
    "Interactions.from_arrays": {"weights", "timestamps", "events", "combine", "event_weights",
                                 "half_life", "reference_time", "weighting", "user_ids",
                                 "item_ids", "unknown"},
    "Interactions.from_matrix": {"user_ids", "item_ids"},
    "IdMap.from_values": {"name"},
    "split.leave_last_n": {"drop_cold"},
    "split.per_user_split": {"test_fraction", "drop_cold"},
    "split.random_split": {"drop_cold"},
    "split.temporal_split": {"drop_cold"},
    "metrics.ranking_metrics_at_k": {"batch_size"},
    "topk": {"exclude", "allow", "deny"},
    "MLPRanker.to_scorer": {"precision"},
}
CONVENTIONAL = {"show_progress", "num_threads", "backend", "dtype", "seed", "random_state"}


def public_callables():
    for cls in MAIN_CLASSES + [recfuse.Interactions, recfuse.IdMap]:
        for name, f in inspect.getmembers(cls):
            if not name.startswith("_") and callable(f) and not isinstance(f, type):
                yield f"{cls.__name__}.{name}", f
    for module in (split, metrics):
        for name in dir(module):
            f = getattr(module, name)
            if not name.startswith("_") and inspect.isfunction(f) and f.__module__ == module.__name__:
                yield f"{module.__name__.split('.')[-1]}.{name}", f
    yield "topk", recfuse.topk
    yield "load", recfuse.load


def undescribed_options() -> dict[str, set[str]]:
    missing = {}
    for qualname, f in public_callables():
        try:
            signature = inspect.signature(f)
        except (TypeError, ValueError):
            continue
        doc = f.__doc__ or ""
        names = {p.name for p in signature.parameters.values()
                 if p.default is not p.empty and p.kind is not p.VAR_KEYWORD
                 and p.name not in CONVENTIONAL and not re.search(rf"\b{p.name}\b", doc)}
        if names:
            missing[qualname] = names
    return missing


def test_every_optional_parameter_is_described_somewhere():
    """A method's optional parameters are named in its docstring, or in the text it defers
    to (DEFERRED)."""
    missing = undescribed_options()
    for qualname, names in missing.items():
        left = names - DEFERRED.get(qualname, set())
        assert not left, f"{qualname}: {sorted(left)} not described"


def test_k_core_documents_compact():
    assert "compact" in recfuse.Interactions.k_core.__doc__


def test_als_loss_documents_user_items():
    assert "user_items" in recfuse.ALS.loss.__doc__


def test_als_loss_of_none_is_the_training_matrix():
    """What ALS.loss()'s docstring says: the matrix the model was fitted on."""
    user_items = sp.random(30, 20, density=0.2, format="csr", random_state=1, dtype=np.float32)
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(user_items)
    assert model.loss() == model.loss(user_items)


# ============================================================== cross-references

def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


def _texts() -> dict[str, str]:
    texts = {"README.md": README}
    for path in sorted(PACKAGE.rglob("*.py")):
        texts[str(path.relative_to(ROOT))] = path.read_text()
    return texts


def test_named_recfuse_objects_exist():
    """Every ``recfuse.a.b`` (and ``reference.x`` / ``retrieval.x``) in README.md and in the
    package's sources exists; ``recfuse._cuda`` names are looked up in the bindings (the
    module is built only with nvcc), ``mlp_*`` as a prefix."""
    bindings = "\n".join(p.read_text() for p in (ROOT / "bindings").rglob("*") if p.is_file())
    bad = []
    for where, text in _texts().items():
        for m in re.finditer(r"(?<![\w/.])(recfuse(?:\.[A-Za-z_]\w*)+)(\*?)", text):
            name = m.group(1)
            if name.startswith("recfuse._cuda."):
                if name.split(".")[2] not in bindings:
                    bad.append((where, name))
            elif m.group(2) == "*":
                module, prefix = name.rsplit(".", 1)
                if not any(n.startswith(prefix) for n in dir(importlib.import_module(module))):
                    bad.append((where, name + "*"))
            elif not name.startswith("recfuse.distributed.spark") and not _resolves(name):
                bad.append((where, name))
        for m in re.finditer(r"`+(reference|retrieval|reference_data)\.(\w+)(\*?)", text):
            name = f"recfuse.{m.group(1)}.{m.group(2)}"
            if m.group(3) == "*":
                assert any(n.startswith(m.group(2)) for n in dir(importlib.import_module(f"recfuse.{m.group(1)}")))
            elif not _resolves(name):
                bad.append((where, name))
    assert not bad, bad


def test_readme_paths_tests_and_native_names_exist():
    for m in re.finditer(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|cu|cpp|h|md|sh))(?:::(\w+))?`", README):
        candidates = [ROOT / m.group(1), ROOT / "python" / m.group(1)]
        existing = [c for c in candidates if c.exists()]
        assert existing, m.group(1)
        if m.group(2):
            assert f"def {m.group(2)}(" in existing[0].read_text(), m.group(0)
    native = "\n".join(p.read_text(errors="ignore") for folder in ("cpp", "cuda", "bindings")
                       for p in (ROOT / folder).rglob("*") if p.is_file())
    for m in re.finditer(r"`(?:recfuse::|\w+::)?(\w+)::(\w+)`|`recfuse::(\w+)`", README):
        for name in filter(None, m.groups()):
            assert re.search(rf"\b{name}\b", native), m.group(0)
    for name in re.findall(r"`_core\.(\w+)`", README):
        assert re.search(rf"\b{name}\b", native), name


def test_readme_bench_sections_exist():
    """README's (bench/README.md, "Section") pointers name a heading or a bold paragraph."""
    headings = [l.lstrip("#").strip().lower() for l in BENCH_README.splitlines() if l.startswith("#")]
    bold = [b.lower() for b in re.findall(r"\*\*([^*]+)\*\*", BENCH_README)]
    flat = " ".join(README.split())
    sections = re.findall(r'bench/README\.md,? "([^"]+)"', flat)
    sections += re.findall(r'"([^"]+)" below', " ".join(BENCH_README.split()))
    assert len(sections) >= 4
    for section in sections:
        s = section.lower()
        assert any(s in h for h in headings) or any(b.startswith(s) for b in bold), section


def test_the_package_map_names_submodules_that_exist():
    """recfuse's docstring: split, metrics, datasets functions it lists exist."""
    doc = recfuse.__doc__
    for line in ("random_split, per_user_split, leave_last_n, temporal_split",
                 "evaluate, ranking_metrics, rmse, mae, catalog_coverage"):
        assert line in doc
    for name in ("random_split", "per_user_split", "leave_last_n", "temporal_split"):
        assert callable(getattr(split, name))
    for name in ("evaluate", "ranking_metrics", "rmse", "mae", "catalog_coverage", "novelty",
                 "intra_list_diversity"):
        assert callable(getattr(metrics, name))


def test_readme_model_list_has_the_estimator_protocol():
    """README: "Every model (ALS, SVD, SVDpp, ExplicitALS, BPR, MLPRanker, DaskALS,
    SparkALS) follows scikit-learn's get_params/set_params"; "Every model has ALS's
    recommend_all, similar_items and similar_users"."""
    names = re.search(r"Every model \(([^)]*)\)", README).group(1).replace("`", "").split(", ")
    import recfuse.distributed as distributed
    for name in names:
        cls = getattr(recfuse, name, None) or getattr(distributed, name)
        assert callable(getattr(cls, "get_params")) and callable(getattr(cls, "set_params")), name
    for cls in (recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS):
        for method in ("recommend_all", "similar_items", "similar_users", "recommend", "save"):
            assert callable(getattr(cls, method)), (cls.__name__, method)


# ============================================================== prose claims, one by one

@pytest.fixture(scope="module")
def user_items():
    return sp.random(60, 40, density=0.15, format="csr", random_state=0, dtype=np.float32)


@pytest.fixture(scope="module")
def als(user_items):
    return recfuse.ALS(factors=8, iterations=3, random_state=0).fit(user_items)


def test_recommend_shapes_and_dtypes(als):
    """README: ``recommend(42, k=10)``; ``recommend([1, 2, 3], k=10)  # a batch: (3, 10)``;
    retrieval's docstring: ids int64, scores the table's dtype."""
    ids, scores = als.recommend(3, k=10)
    assert ids.shape == scores.shape == (10,) and ids.dtype == np.int64 and scores.dtype == np.float32
    ids, scores = als.recommend([1, 2, 3], k=10)
    assert ids.shape == scores.shape == (3, 10) and ids.dtype == np.int64


def test_similar_items_and_users_start_with_themselves(als):
    """README: ``similar_items(7, k=5)  # cosine; the item itself first``."""
    for method in (als.similar_items, als.similar_users):
        ids, scores = method(7, k=5)
        assert ids.shape == (5,) and ids[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-6)


def test_rating_models_similarity_of_an_unrated_item_is_zero():
    """README: "ids that had no training rating have none (their scores are 0)"."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 20, 300)
    for cls, kw in ((recfuse.SVD, {"epochs": 2}), (recfuse.ExplicitALS, {"iterations": 2})):
        model = cls(factors=4, random_state=0, **kw).fit(users, items, rng.integers(1, 6, 300),
                                                          n_items=25)
        _, scores = model.similar_items(22, k=5)
        assert (scores == 0).all(), cls.__name__


def test_fitted_model_refuses_shaping_settings(als, user_items):
    """README: "a new value of a setting that shaped it (factors, dtype, biased,
    activation) is refused there: set it on a clone"; other settings are taken."""
    for name, value in (("factors", 4), ("dtype", np.float64)):
        with pytest.raises(ValueError, match=name):
            als.set_params(**{name: value})
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 300), rng.integers(0, 20, 300)
    for cls in (recfuse.SVD, recfuse.ExplicitALS):
        model = cls(factors=4, random_state=0).fit(users, items, rng.integers(1, 6, 300))
        with pytest.raises(ValueError, match="biased"):
            model.set_params(biased=False)
    ranker = recfuse.MLPRanker(hidden=(4,), epochs=1, random_state=0).fit(
        user_items, als.user_factors, als.item_factors)
    with pytest.raises(ValueError, match="activation"):
        ranker.set_params(activation="tanh")
    sklearn = pytest.importorskip("sklearn.base")
    clone = sklearn.clone(als).set_params(factors=4)
    assert clone.factors == 4 and als.factors == 8


@pytest.mark.parametrize("cls", [recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.SVDpp,
                                 recfuse.ExplicitALS], ids=lambda c: c.__name__)
def test_generator_first_fit_equals_the_int_seed(cls, user_items):
    """README: "A numpy.random.Generator is drawn from instead: a model's first fit equals
    the fit with the int that seeded it" (and "a file keeps no Generator")."""
    kw = {"factors": 4, ("epochs" if cls in (recfuse.SVD, recfuse.SVDpp) else "iterations"): 2}
    a = cls(random_state=np.random.default_rng(5), **kw)
    b = cls(random_state=5, **kw)
    if cls in (recfuse.ALS, recfuse.BPR):
        a.fit(user_items), b.fit(user_items)
    else:
        coo = user_items.tocoo()
        ratings = np.ceil(coo.data * 5)
        a.fit(coo.row, coo.col, ratings), b.fit(coo.row, coo.col, ratings)
    assert np.array_equal(a.user_factors, b.user_factors)


def test_model_files_keep_the_int_seed_and_no_generator(tmp_path, user_items):
    """README: "model files keep it, so a loaded model refits as the original does ... (a
    file keeps no Generator: the model loads with random_state=None)"; ALS's docstring:
    "backend_used ... (None on a model read by recfuse.load, which ran none)"."""
    model = recfuse.ALS(factors=4, iterations=2, random_state=3).fit(user_items)
    model.save(tmp_path / "a.npz")
    loaded = recfuse.load(tmp_path / "a.npz")
    assert loaded.random_state == 3 and loaded.backend_used is None
    assert np.array_equal(loaded.fit(user_items).user_factors, model.user_factors)
    recfuse.ALS(factors=4, iterations=1, random_state=np.random.default_rng(1)).fit(
        user_items).save(tmp_path / "g.npz")
    assert recfuse.load(tmp_path / "g.npz").random_state is None
    mapped = recfuse.load(tmp_path / "a.npz", mmap=True)  # "maps a model's arrays read-only"
    assert not mapped.user_factors.flags.writeable


def test_results_do_not_depend_on_the_thread_count(user_items):
    """README: "Results are deterministic for a given seed, backend and SIMD level, whatever
    the thread count"."""
    fits = [recfuse.ALS(factors=8, iterations=3, random_state=0, num_threads=n).fit(user_items)
            for n in (1, 2)]
    assert np.array_equal(fits[0].user_factors, fits[1].user_factors)


def test_update_items_adds_the_new_item(user_items):
    """README: ``model.update_items([5_000], user_items[:, 7].T.tocsr())  # a new item from
    its first users`` (on 5,000 items: one more row)."""
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(user_items)
    model.update_items([40], user_items[:, 7].T.tocsr())
    assert model.item_factors.shape == (41, 4)


def test_topk_contract_prose():
    """retrieval: "other real dtypes are converted to float32"; "a one-dimensional query
    gives one-dimensional results"; k must be an int >= 1, errors naming it."""
    for dtype in (np.float16, np.int64, np.int8):
        ids, scores = recfuse.topk(np.ones(3, dtype), np.eye(3, dtype=dtype), k=2)
        assert ids.shape == (2,) and ids.dtype == np.int64 and scores.dtype == np.float32
    assert recfuse.topk(np.ones((1, 3)), np.eye(3), k=2)[1].dtype == np.float64
    with pytest.raises(ValueError, match="k"):
        recfuse.topk(np.ones(3), np.eye(3), k=0)
    with pytest.raises(TypeError, match="k"):
        recfuse.topk(np.ones(3), np.eye(3), k="2")


def test_wrong_kind_is_type_error_wrong_value_is_value_error_naming_it():
    """recfuse's docstring: "a wrong kind of argument is a TypeError, a wrong value a
    ValueError, each naming the argument" (constructors of the main classes)."""
    ints = {recfuse.ALS: ["factors", "iterations", "cg_steps", "num_threads"],
            recfuse.BPR: ["factors", "iterations", "grid", "max_tries"],
            recfuse.SVD: ["factors", "epochs", "grid"], recfuse.SVDpp: ["factors", "epochs"],
            recfuse.ExplicitALS: ["factors", "iterations"],
            recfuse.MLPRanker: ["epochs", "batch_size", "negatives"]}
    floats = {recfuse.ALS: ["regularization", "alpha"], recfuse.BPR: ["lr", "reg"],
              recfuse.SVD: ["lr", "reg", "init_std", "lr_bu"], recfuse.ExplicitALS: ["reg", "init_std"],
              recfuse.MLPRanker: ["learning_rate", "l2"]}
    cases = [(c, n, bad, exc) for c, names in ints.items() for n in names
             for bad, exc in (("3", TypeError), (2.5, TypeError), (-1, ValueError))]
    cases += [(c, n, bad, exc) for c, names in floats.items() for n in names
              for bad, exc in (("x", TypeError), (float("nan"), ValueError), (-1.0, ValueError))]
    cases += [(recfuse.ALS, "solver", "lu", ValueError), (recfuse.ALS, "confidence", "log", ValueError),
              (recfuse.ALS, "random_state", "x", TypeError), (recfuse.ALS, "random_state", -1, ValueError),
              (recfuse.MLPRanker, "activation", "elu", ValueError)]
    for cls, name, bad, exc in cases:
        with pytest.raises(exc, match=name):
            cls(**{name: bad})


def test_mlp_scorer_prose():
    """README / ranking: ``scorer.layers`` are the float32 weights, read-only (a write in
    place raises); ``score_candidates`` is (users, c) for 2-d ids and 1-d for one user;
    ``rank`` gives (ids int64, scores float32) of (users, k), (k,) for one user."""
    rng = np.random.default_rng(0)
    W = [rng.standard_normal(s).astype(np.float64) * 0.1 for s in ((16, 10), (1, 16))]
    scorer = recfuse.MLPScorer([(W[0], None, "relu"), (W[1], None, "sigmoid")])
    weights = scorer.layers[0][0]
    assert weights.dtype == np.float32
    with pytest.raises(ValueError):
        weights[0, 0] = 1.0
    items = rng.standard_normal((50, 4)).astype(np.float32)
    prepared = scorer.prepare_items(items, item_column=4)
    candidates = rng.integers(0, 50, (3, 7))
    features = np.ones((21, 2), np.float32)
    scores = scorer.score_candidates(items[:3], candidates, prepared, candidate_features=features)
    assert scores.shape == (3, 7) and scores.dtype == np.float32
    assert scorer.score_candidates(items[0], candidates[0], prepared,
                                   candidate_features=features[:7]).shape == (7,)
    ids, top = scorer.rank(items[:3], candidates, prepared, candidate_features=features, k=3)
    assert ids.shape == top.shape == (3, 3) and ids.dtype == np.int64 and top.dtype == np.float32
    ids, top = scorer.rank(items[0], candidates[0], prepared, candidate_features=features[:7], k=3)
    assert ids.shape == (3,)


def test_split_prose():
    """split: random_split holds out "exactly fraction x pairs, rounded half up";
    per_user_split "fraction x n_u (rounded half up) ... leaving at least min_train";
    temporal_split(test_fraction) cuts at "the floor(fraction x pairs)-th latest pair";
    a CSR matrix comes back as float32 CSR of its shape; leave_last_n leaves users with
    fewer than n + min_train pairs wholly in train."""
    for n, fraction in ((5, 0.5), (3, 0.5), (7, 0.3), (10, 0.25), (1, 0.5), (2, 0.25)):
        log = recfuse.Interactions.from_arrays(np.arange(n) % 3, np.arange(n))
        assert split.random_split(log, fraction, seed=0)[1].nnz == math.floor(n * fraction + 0.5)
    for n, fraction in ((3, 0.5), (2, 0.5), (5, 0.3), (4, 0.125), (1, 0.5), (6, 0.25)):
        log = recfuse.Interactions.from_arrays(np.zeros(n, int), np.arange(n))
        assert split.per_user_split(log, fraction, seed=0)[1].nnz == min(
            math.floor(n * fraction + 0.5), n - 1)
    log = recfuse.Interactions.from_arrays(np.arange(10) % 4, np.arange(10),
                                           timestamps=np.arange(10) * 100)
    for fraction in (0.05, 0.1, 0.25, 0.35):
        assert split.temporal_split(log, test_fraction=fraction)[1].nnz == math.floor(fraction * 10)
    matrix = sp.random(20, 10, density=0.5, format="csr", random_state=0, dtype=np.float64)
    for fn in (split.random_split, split.per_user_split):
        train, test = fn(matrix, 0.3)
        assert sp.isspmatrix_csr(train) and train.dtype == test.dtype == np.float32
        assert train.shape == test.shape == matrix.shape
    log = recfuse.Interactions.from_arrays([0, 0, 0, 1, 1, 2], [0, 1, 2, 0, 1, 0],
                                           timestamps=[1, 2, 3, 1, 2, 1])
    test = split.leave_last_n(log, 2)[1].matrix.toarray()
    assert test.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    for fn in (split.random_split, split.per_user_split, split.leave_last_n):  # "seeded (seed=,
        # or random_state= as the models call it)"
        assert "random_state" in inspect.signature(fn).parameters


def test_metrics_prose(user_items, als):
    """metrics: evaluate's keys ("precision, recall, map, ndcg, auc, mrr, hit_rate, coverage,
    novelty, diversity, (rmse, mae), k, users, cold_users"); ranking_metrics_at_k takes
    implicit's ``K`` (both k and K: TypeError) and defaults k to 10."""
    train, test = split.random_split(user_items, 0.3)
    result = metrics.evaluate(als, train, test, k=10)
    documented_keys = re.search(r"Keys: ([^.]*)\.", metrics.evaluate.__doc__).group(1)
    keys = {k.strip("() \n") for k in documented_keys.replace("\n", " ").split(",")}
    assert set(result) == keys - {"rmse", "mae"}
    assert metrics.ranking_metrics_at_k(als, train, test)["k"] == 10
    assert metrics.ranking_metrics_at_k(als, train, test, K=5)["k"] == 5
    with pytest.raises(TypeError, match="K"):
        metrics.ranking_metrics_at_k(als, train, test, k=5, K=5)
    ratings = datasets.synthetic_explicit(100, 40, 1000, seed=0)
    rtrain, rtest = split.random_split(ratings, 0.2)
    svd = recfuse.SVD(factors=4, epochs=2, random_state=0).fit(rtrain)
    assert {"rmse", "mae"} <= set(metrics.evaluate(svd, rtrain, rtest))
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(1.1547005383792515)


def test_interactions_prose():
    """README: "`len(log)` is `log.nnz`, the stored (user, item) pairs; `log.n_events`
    counts the events combined into them"; "Ids ... are numbered in sorted order";
    the bm25 defaults k1=100, b=0.8 are implicit's."""
    log = recfuse.Interactions.from_events({"user": ["b", "a", "a"], "item": ["y", "x", "x"]})
    assert len(log) == log.nnz == 2 and log.n_events == 3
    assert log.user_ids.to_external([0, 1]).tolist() == ["a", "b"]
    implicit_nn = pytest.importorskip("implicit.nearest_neighbours")
    peer = inspect.signature(implicit_nn.bm25_weight).parameters
    stated = dict(re.findall(r"``(k1|b)=([\d.]+)``", recfuse.Interactions.weighted.__doc__))
    assert float(stated["k1"]) == peer["K1"].default and float(stated["b"]) == peer["B"].default
    counts = recfuse.Interactions.from_arrays([0, 0, 1, 1, 1], [0, 1, 0, 1, 2])
    default = counts.weighted("bm25").matrix.toarray()
    explicit = counts.weighted("bm25", k1=100, b=0.8).matrix.toarray()
    assert np.array_equal(default, explicit)


def test_explicit_als_float32_bound_is_as_stated():
    """README: "fit refuses ratings with max |rating|² x (most ratings of one user or item)
    above float32's 3.4e38 ... with a ValueError"."""
    with pytest.raises(ValueError, match="ratings"):
        recfuse.ExplicitALS(factors=2, iterations=1).fit([0, 1], [0, 1], [2e19, 1.0])
    # within the bound: taken (a lone rating: its solves are exact; mixed with small ratings,
    # float32 systems fail far below the bound, see the notes' "Suspicious")
    model = recfuse.ExplicitALS(factors=2, iterations=1).fit([0], [0], [1e19])
    assert model.predict(0, 0, clip=False) == pytest.approx(1e19, rel=1e-5)


def test_svdpp_refuses_device_backends_by_name():
    """SVDpp: "no cuda or cupy kernel: backend="auto" passes over them, naming either raises
    RuntimeError"."""
    rng = np.random.default_rng(0)
    for backend in ("cuda", "cupy"):
        with pytest.raises(RuntimeError):
            recfuse.SVDpp(factors=2, epochs=1, backend=backend).fit(
                rng.integers(0, 5, 20), rng.integers(0, 5, 20), rng.integers(1, 6, 20))


def test_recommender_prose(als):
    """README: "``r.ids, r.scores, r.stages, r.version``"; "stages says what placed each
    item: popular, recall, rank or rerank"; a user the model does not know gets popular
    items."""
    rec = recfuse.Recommender(als, k=5)
    assert recfuse.Recommendation._fields == ("ids", "scores", "stages", "version")
    known, unknown = rec.recommend(1), rec.recommend(10_000)
    assert set(known.stages) == {"recall"} and set(unknown.stages) == {"popular"}
    assert known.ids.shape == (5,)


def test_mlp_candidate_forms_and_int8_limit():
    """ranking's docstring: a 1-d candidate array gives 1-d scores for a 1-d user and (1, c)
    for one row; the ragged forms (a list with empty entries, or (indptr, ids)) score flat
    and rank (users, k); "A middle layer takes at most 133,144 inputs" under int8."""
    rng = np.random.default_rng(0)
    W = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in ((16, 10), (1, 16))]
    scorer = recfuse.MLPScorer([(W[0], None, "relu"), (W[1], None, "sigmoid")])
    items = rng.standard_normal((50, 4)).astype(np.float32)
    prepared = scorer.prepare_items(items, item_column=4)
    f7, f5 = np.ones((7, 2), np.float32), np.ones((5, 2), np.float32)
    assert scorer.score_candidates(items[:1], np.arange(7), prepared, candidate_features=f7).shape == (1, 7)
    assert scorer.score_candidates(items[0], np.arange(7), prepared, candidate_features=f7).shape == (7,)
    ragged = [np.arange(3), np.array([], np.int64), np.arange(2)]
    assert scorer.score_candidates(items[:3], ragged, prepared, candidate_features=f5).shape == (5,)
    ids, _ = scorer.rank(items[:3], (np.array([0, 3, 3, 5]), np.arange(5)), prepared,
                         candidate_features=f5, k=2)
    assert ids.shape == (3, 2) and (ids[1] == -1).all()
    limit = int(re.search(r"at most ([\d,]+) inputs", recfuse.ranking.__doc__).group(1).replace(",", ""))
    assert 127 * 127 * limit <= 2**31 - 1 < 127 * 127 * (limit + 1)
    for n, ok in ((limit, True), (limit + 1, False)):
        layers = [(np.full((n, 2), 1e-3, np.float32), None, "relu"),
                  (np.full((4, n), 1e-3, np.float32), None, "relu"),
                  (np.ones((1, 4), np.float32), None, "identity")]
        if ok:
            recfuse.MLPScorer(layers, precision="int8", backend="numpy")
        else:
            with pytest.raises(ValueError, match="133144"):
                recfuse.MLPScorer(layers, precision="int8", backend="numpy")


def test_readme_numbers_are_the_code_constants():
    """Numbers README.md states about behaviour, against the constants that decide it."""
    from recfuse import retrieval, serving

    flat = " ".join(README.split())
    stages = re.search(r"`stages` says what placed each item: `(\w+)`, `(\w+)`, `(\w+)` or `(\w+)`", flat)
    assert stages.groups() == serving.STAGES
    assert "bfloat16 when the catalogue holds at least 1,000 items per result" in flat
    assert retrieval.BFLOAT16_ITEMS_PER_RESULT == 1000
    assert "``BFLOAT16_MIN_ITEMS`` items (1000)" in " ".join(recfuse.ItemIndex.__doc__.split())
    assert retrieval.BFLOAT16_MIN_ITEMS == 1000
    assert "From 1,000 added items the fold runs on a thread of its own" in flat
    assert serving._BACKGROUND_FOLD_ITEMS == 1000
    assert "(for at most 1 s, so a long model swap" in flat and serving._FORK_WAIT_S == 1.0
    assert re.search(r"first `new_item_users` users \(20\)", flat)
    assert inspect.signature(recfuse.Recommender).parameters["new_item_users"].default == 20
    bound = float(re.search(r"\(([\d.]+e\d+) for float32\): the fold-in squares it", flat).group(1))
    assert bound == pytest.approx(math.sqrt(np.finfo(np.float32).max), rel=0.03)  # "1.8e19"
    assert serving._WEIGHT_BOUNDS[np.dtype(np.float32)] == pytest.approx(bound, rel=0.03)
    suites = re.search(r"`recfuse bench \[([\w|]+)\]", flat).group(1).split("|")
    assert sorted(suites) == sorted(cli.BENCH_SUITES)
    assert "ties (values within 1e-12)" in " ".join(recfuse.Rerank.__doc__.split())
    assert serving._MMR_TIE == 1e-12


def test_readme_build_and_test_settings():
    """README "Building and developing": build-dir build/<wheel tag>, RECFUSE_CUDA=OFF|ON,
    RECFUSE_CUDA_ARCHITECTURES default 80;90, hypothesis profiles dev/ci/nightly."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert 'set(RECFUSE_CUDA_ARCHITECTURES "80;90"' in cmake and "`80;90`" in README
    assert "ENV{RECFUSE_CUDA}" in cmake
    assert 'build-dir = "build/{wheel_tag}"' in (ROOT / "pyproject.toml").read_text()
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    for profile in ("dev", "ci", "nightly"):
        assert f'"{profile}"' in conftest
    assert '"ci" if os.environ.get("CI")' in conftest and "HYPOTHESIS_PROFILE" in conftest
    assert "derandomize=True" in conftest


def test_distributed_parameters_are_documented_and_differ_as_stated():
    """README: "`SparkALS` has the same model parameters (plus `barrier=`; no `broadcast` or
    `max_retries`) ... (nor takes a `client`)"; DaskALS's docstring defers the others to
    ``DistributedALSBase``, whose Parameters cover them."""
    from recfuse.distributed import DaskALS, SparkALS
    from recfuse.distributed._common import DistributedALSBase

    base = set(inspect.signature(DistributedALSBase).parameters)
    for name in parameter_entries(DistributedALSBase.__doc__):
        assert name in base
    assert base == set(parameter_entries(DistributedALSBase.__doc__))
    dask = set(inspect.signature(DaskALS).parameters) - {"kwargs"}
    spark = set(inspect.signature(SparkALS).parameters) - {"kwargs"}
    assert dask - spark == {"broadcast", "max_retries"} and spark - dask == {"barrier"}
    for name in ("broadcast", "max_retries"):
        assert documented(name, DaskALS.__doc__)
    assert documented("barrier", SparkALS.__doc__)
    assert "client" in inspect.signature(DaskALS.fit).parameters
    assert "client" not in inspect.signature(SparkALS.fit).parameters


def test_load_movielens_docstring_example_and_errors():
    """load_movielens: its (skipped) example ``log.shape  # (943, 1682)`` on ml-100k, ratings
    0.5..5, MovieLens' own int ids; a missing folder raises FileNotFoundError saying where to
    get the data."""
    with pytest.raises(FileNotFoundError, match="grouplens"):
        datasets.load_movielens("/nonexistent/ml-1m")
    path = os.path.join(DATASETS, "ml-100k")
    if not os.path.isdir(path):
        pytest.skip(f"MovieLens 100K not found at {path}")
    shape = re.search(r"log\.shape .*\n\s*\((\d+), (\d+)\)", datasets.load_movielens.__doc__)
    log = datasets.load_movielens(path)
    assert log.shape == (int(shape.group(1)), int(shape.group(2)))
    assert 0.5 <= log.matrix.data.min() and log.matrix.data.max() <= 5
    assert log.user_ids.to_external([0]).tolist() == [1]


def test_unavailable_backend_named_at_load_raises_runtime_error(tmp_path, user_items):
    """persistence / README: "`recfuse.load(path, backend="cpu")` chooses one"; a backend
    "named there that is not available here raises RuntimeError"."""
    recfuse.ALS(factors=2, iterations=1).fit(user_items).save(tmp_path / "m.npz")
    unavailable = [b.name for b in recfuse.backends() if not b.available]
    if not unavailable:
        pytest.skip("every backend is available here")
    with pytest.raises(RuntimeError, match=unavailable[0]):
        recfuse.load(tmp_path / "m.npz", backend=unavailable[0])
    assert recfuse.load(tmp_path / "m.npz", backend="numpy").backend == "numpy"

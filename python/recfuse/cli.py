"""recfuse from the command line: train, evaluate, recommend and serve.

  recfuse demo [--data FOLDER]       the whole chain on an embedded synthetic event log (or a
                                     MovieLens folder): ingest, split, train, evaluate
  recfuse train DATA -o DIR          ingest an event log (CSV/Parquet file, Parquet folder or
                                     MovieLens folder), split it, train ALS (or --model bpr,
                                     svd, svdpp, explicit-als); writes DIR/model.npz,
                                     DIR/train.npz and DIR/test.npz (none with --split none)
  recfuse evaluate DIR               score DIR's model on its test set (or --test DATA)
  recfuse recommend DIR USER...      top-k items for users, by their original ids (the most
                                     popular ones for a user without training pairs)
  recfuse bench [SUITE...]           run bench/ suites (data, als) of a source checkout; print
                                     the ratio table, write bench.json (and bench.png with
                                     matplotlib)
  recfuse info                       backends and why any is unavailable
  recfuse serve DIR|MODEL [--ranker F]
                                     serve DIR's model by its log's ids (or a model file by
                                     its rows; a ranker file: recall + rank) over HTTP (the
                                     serve extra)

Every command but serve takes --json (one JSON object on stdout, nothing else; a
number that is not finite, e.g. an AUC without any pair to compare, is written as null).
Exit codes: 0 done; 1 an unexpected failure (a bug: the traceback is printed); 2 bad
arguments or input (one line "recfuse <command>: error: ..." on stderr, after argparse's
usage when an option itself is wrong; given before any slow work where the arguments alone
tell); 130 interrupted (Ctrl-C; serve stops cleanly with 0); 141 stdout closed early
(`recfuse ... | head`).
`recfuse COMMAND --help` describes each command's options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from ._validation import MAX_K

EVENT_WEIGHTS = {"view": 1.0, "click": 3.0, "purchase": 10.0}


def _integer_in(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] (no upper bound when None), refused before
    any work starts."""
    expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_count = _integer_in(1)  # sizes and counts
_seed = _integer_in(0)
_port = _integer_in(0, 65535)  # 0: any free port (the one bound is printed)
_list_length = _integer_in(1, MAX_K)  # k
_workers = _integer_in(1, 4096)  # threads, each a Thread object: bounded before serving


def _path(text: str) -> str:
    """argparse type: a path, not the empty string (which would stand for the folder the
    command runs in, or for the option left out)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return text


def _number(text: str, expected: str) -> float:
    """``text`` as a float, else argparse's error saying that ``expected`` was expected."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _non_negative(text: str) -> float:
    """argparse type of durations and model weights: a finite number >= 0."""
    value = _number(text, "a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _finite(text: str) -> float:
    """argparse type of --min-rating: a finite number."""
    value = _number(text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _positive(text: str) -> float:
    """argparse type of --lr: a finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _test_fraction(text: str) -> float:
    """argparse type of --test-fraction: a number between 0 and 1, both excluded (0 would
    hold out nothing, and every metric would be computed on no pair)."""
    expected = "a number between 0 and 1 (both excluded)"
    value = _number(text, expected)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got 0; to train on every pair, "
                                         f"use --split none")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def _event_weights(text: str) -> dict:
    """argparse type of --event-weights: a JSON object of event type -> weight."""
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as error:
        example = json.dumps({"view": 1, "click": 3})
        raise argparse.ArgumentTypeError(f"expected a JSON object of weights per event type, "
                                         f"e.g. '{example}', got {text!r} ({error})") from None
    if not isinstance(weights, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of weights per event type, "
                                         f"got {type(weights).__name__} {text!r}")
    for kind, weight in weights.items():  # the models trained here (als, bpr) read a value
        # as an amount of interest: a negative one is refused by their fit, after the ingest
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight) or weight < 0:
            raise argparse.ArgumentTypeError(f"expected finite weights >= 0 per event type, "
                                             f"got {weight!r} for {kind!r}")
    # JSON keys are strings: "1" also names the event type 1 of a numeric column
    numbered = {int(key): value for key, value in weights.items()
                if key.lstrip("-").isdigit() and str(int(key)) == key}
    return {**weights, **numbered}


def _printer(args):
    return (lambda *a, **kw: None) if args.json else print


def _emit_json(args, payload: dict) -> None:
    if args.json:
        print(json.dumps(_plain_json(payload), allow_nan=False))


def _plain_json(value):
    """``value`` with NumPy values as Python ones and non-finite floats as None: JSON has no
    NaN or Infinity (json.dumps would write them, and strict parsers refuse them)."""
    if isinstance(value, dict):
        return {key: _plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain_json(_id_values(value))
    if isinstance(value, np.generic):
        value = _id_values(np.asarray(value))[0] if value.dtype.kind == "M" else value.item()
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _id_values(ids: np.ndarray) -> list:
    """``ids`` (external ids, any shape) as a list of Python values for text and JSON:
    dates and times as ISO text ("2020-01-11", "2020-01-11T10:30:00.500"), which the
    commands read back as the same ids (``tolist`` gives datetime objects JSON cannot
    write, or, for nanoseconds, bare integers)."""
    if ids.dtype.kind == "M":
        return np.datetime_as_string(ids, unit="auto").tolist()
    return ids.tolist()


# ---------------------------------------------------------------------------- info
def _info(args) -> int:
    import recfuse

    from recfuse._backend import FAMILIES

    rows = recfuse.backends()
    try:
        chosen, unusable = recfuse.resolve_backend("auto").NAME, None
    except (ValueError, RuntimeError) as error:  # RECFUSE_BACKEND names one that cannot run:
        chosen, unusable = None, str(error)      # the table still shows why, then the error
    # Which backends each model family can use here (the table above is the ALS family's;
    # the others may lack kernels on some backends).
    families = {family: [row for row in recfuse.backends(family) if row.available]
                for family in FAMILIES}
    simd, threads, forked = None, os.cpu_count(), False
    try:
        from recfuse import _core

        threads, forked = _core.default_threads(), _core.forked_after_threads()
        simd = {"levels": list(_core.supported_simd_levels()), "in_use": _core.simd_level(),
                "topk_bfloat16": _core.topk_bfloat16_kernel(),
                "mlp_kernels": {name: (ok, why) for name, ok, why in _core.mlp_kernels()}}
    except ImportError:
        pass
    except ValueError:  # RECFUSE_SIMD names a level this CPU cannot run: the cpu row says so
        pass
    if args.json:
        _emit_json(args, {"version": recfuse.__version__, "python": sys.version.split()[0],
                          "numpy": np.__version__, "auto": chosen, "cpu_threads": os.cpu_count(),
                          "native_threads": threads, "forked_after_threads": forked,
                          "simd": simd, "backends": [row._asdict() for row in rows],
                          "families": {family: [row._asdict() for row in available]
                                       for family, available in families.items()}})
        return _unusable_choice(unusable)
    print(f"recfuse {recfuse.__version__}  (python {sys.version.split()[0]}, numpy {np.__version__})")
    width = max(len(r.name) for r in rows)
    print(f"\n{'backend':<{width}}  available  detail")
    for row in rows:
        mark = "yes" if row.available else "no"
        star = "  <- auto" if row.name == chosen else ""
        print(f"{row.name:<{width}}  {mark:<9}  {row.detail}{star}")
    print("\nper model family (available backends; auto picks the first with the kernel):")
    general = {row.name: row.detail for row in rows}
    for family, available in families.items():  # a family's own note where it says more
        names = [row.name if row.detail == general[row.name] else f"{row.name} ({row.detail})"
                 for row in available]
        print(f"  {family:<5} {', '.join(names)}")
    if simd:
        print(f"\nCPU SIMD levels: {', '.join(simd['levels'])} (in use: {simd['in_use']}; "
              "force with RECFUSE_SIMD=generic|avx2|avx512)")
        how = {"dot": "VDPBF16PS", "widen": "widened to float32"}
        print(f"top-k bfloat16 storage: {how.get(simd['topk_bfloat16'], simd['topk_bfloat16'])}")
        kernels = [name if ok else f"{name} (no: {why})"
                   for name, (ok, why) in simd["mlp_kernels"].items()]
        print(f"MLP kernels: {', '.join(kernels)}")
    print(f"CPU threads: {os.cpu_count()}; native calls use {threads} by default (num_threads=0)"
          + (", one after a fork: this process was forked after native threads had started"
             if forked else ""))
    print("choose a backend with backend=... or RECFUSE_BACKEND")
    return _unusable_choice(unusable)


def _unusable_choice(error: str | None) -> int:
    """info's exit status: 0, or 2 after the error line when RECFUSE_BACKEND names a backend
    that cannot run here (every call given no backend would fail with it)."""
    if error is None:
        return 0
    print(f"recfuse info: error: {error}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- shared steps
class _Popularity:
    """The baseline: the most popular unseen items for everyone."""

    def __init__(self, train):
        from .serving import item_popularity

        self.item_popularity = item_popularity(train, train.shape[1]).astype(np.float32)

    def recommend(self, user_ids, user_items, k=10, filter_seen=True):
        from recfuse import topk

        # one score per item (its popularity, as an item bias), seen items excluded by topk
        queries = np.zeros((len(user_ids), 1), dtype=np.float32)
        items = np.zeros((self.item_popularity.size, 1), dtype=np.float32)
        return topk(queries, items, k, exclude=user_items if filter_seen else None,
                    item_bias=self.item_popularity)


# the columns of an event log when --user, --item, --combine are not given
LOG_DEFAULTS = {"user": "user", "item": "item", "combine": "sum"}
# what a MovieLens folder fixes itself (users, movies, ratings, times): refused for one
LOG_ONLY_OPTIONS = ("user", "item", "weight", "combine", "timestamp", "event", "event_weights")


def _options_given(args, names) -> list[str]:
    """The options among ``names`` (argparse's dest names) given on the command line, as
    written there (``--event-weights``); they default to None."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) is not None]


def _log_columns(args, names) -> dict:
    """The event log's column options among ``names``: as given, else ``LOG_DEFAULTS`` (for
    the rating models, repeated pairs keep their last rating: a sum would be no rating); the
    user and the item column must be two columns."""
    defaults = dict(LOG_DEFAULTS)
    if getattr(args, "model", "als") in RATING_MODELS:
        defaults["combine"] = "last"
    columns = {name: defaults[name] if getattr(args, name) is None else getattr(args, name)
               for name in names}
    if "user" in columns and columns.get("user") == columns.get("item"):
        raise ValueError(f"--user and --item name one column, {columns['user']!r}: give the "
                         f"user and the item id columns")
    return columns


def _data_kind(path: str) -> str:
    """"movielens" for a folder with a MovieLens ratings file, "log" for an event-log file or
    a folder of Parquet files, "folder" for a folder of neither (load_movielens names what
    it lacks). Looks at names only: nothing is read."""
    from recfuse import datasets
    from recfuse.interactions import _parquet_files

    if not os.path.isdir(path):
        return "log"
    if any(os.path.isfile(os.path.join(path, name)) for name, _, _ in datasets._MOVIELENS_FILES):
        return "movielens"
    return "log" if _parquet_files(path) else "folder"


def _check_data_options(args) -> str:
    """Refuse, before anything is read, the options that ``args.data`` would ignore or that
    the split cannot honour; returns the data's kind (see _data_kind)."""
    kind = _data_kind(args.data)
    _csv_options(args, args.data)  # --sep: CSV files only
    if kind == "movielens":
        given = _options_given(args, LOG_ONLY_OPTIONS)
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                             f"to CSV/Parquet event logs only, not the MovieLens folder "
                             f"{args.data!r} (its users, movies, ratings and times are read "
                             f"as they are)")
    elif kind == "log":
        if args.min_rating is not None:  # else every event would be kept without a word
            raise ValueError(f"--min-rating filters the ratings of a MovieLens folder, not the "
                             f"event log {args.data!r}; filter its rows first")
        if args.event_weights is not None and not args.event:
            raise ValueError("--event-weights needs --event (the event type column)")
        model = getattr(args, "model", "als")
        if model in RATING_MODELS and args.weight is None:  # else counts would be the ratings
            raise ValueError(f"--model {model} predicts ratings: name the rating column of "
                             f"{args.data!r} with --weight (e.g. --weight rating --combine "
                             f"last); without it every value is a count of events")
        if model in RATING_MODELS and args.event is not None:  # else ratings x type weights
            raise ValueError(f"--event weighs events by type (for als and bpr); --model {model} "
                             f"reads its --weight column as ratings, which the type weights "
                             f"would multiply (a 5 of a purchase would be 50): leave --event "
                             f"out, or filter the log's rows by type first")
        if args.split in ("temporal", "leave_last") and args.timestamp is None:
            raise ValueError(f"--split {args.split} needs timestamps: name the time column of "
                             f"{args.data!r} with --timestamp")
    if args.test_fraction is not None and args.split in ("none", "leave_last"):
        raise ValueError(f"--test-fraction applies to --split per_user, random and temporal, "
                         f"not --split {args.split}")
    return kind


@contextlib.contextmanager
def _warnings_unless_it_fails():
    """Hold the warnings of a step (pandas' about a separator or unparsable times) and show
    them only when it succeeds: when it fails, its error line is the whole story."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)


def _ingest(args, kind: str):
    """Interactions from ``args.data`` (a MovieLens folder, an event-log file or a folder of
    Parquet files), its options checked by _check_data_options."""
    from recfuse import datasets
    from recfuse.interactions import Interactions

    if kind != "log":
        return datasets.load_movielens(args.data, min_rating=args.min_rating)
    event_weights = None
    if args.event:
        event_weights = args.event_weights if args.event_weights is not None else EVENT_WEIGHTS
    with _warnings_unless_it_fails():
        return Interactions.from_events(args.data, **_log_columns(args, LOG_DEFAULTS),
                                        weight=args.weight, timestamp=args.timestamp,
                                        event=args.event, event_weights=event_weights,
                                        read_options=_csv_options(args, args.data))


def _csv_options(args, path: str) -> dict:
    """read_options for an event-log file: --sep, which applies to CSV files only."""
    if args.sep is None:
        return {}
    from recfuse.interactions import CSV_SUFFIXES

    if os.path.isdir(path) or not path.lower().endswith(CSV_SUFFIXES):
        raise ValueError(f"--sep applies to CSV files, not {path!r}")
    return {"sep": args.sep}


TEST_FRACTION = 0.2  # train's --test-fraction when not given, the demo's always


def _check_held_out(test, interactions, advice: str) -> None:
    """Refuse a split that held out nothing (too few pairs per user, or too few pairs for
    the fraction): its metrics would be those of no pair (0, and NaN for AUC)."""
    if test.nnz == 0:
        raise ValueError(f"the split held out no pair of the {interactions.nnz} (too few to "
                         f"hold any out): nothing to evaluate on; use {advice}")


def _split(interactions, method: str, fraction: float, seed: int):
    from recfuse import split

    if method == "per_user":
        return split.per_user_split(interactions, fraction, seed=seed)
    if method == "random":
        return split.random_split(interactions, fraction, seed=seed)
    if method == "leave_last":
        return split.leave_last_n(interactions, 1, seed=seed)
    if method == "temporal":
        return split.temporal_split(interactions, test_fraction=fraction)
    raise ValueError(f"unknown split {method!r}")


# train --model: the class, and which options it takes as which of its parameters (an
# option left out keeps the model's own default: e.g. SVD's 20 epochs and reg 0.02).
MODELS = {
    "als": ("ALS", {"factors": "factors", "iterations": "iterations",
                    "regularization": "regularization", "alpha": "alpha"}),
    "bpr": ("BPR", {"factors": "factors", "iterations": "iterations",
                    "regularization": "reg", "lr": "lr"}),
    "svd": ("SVD", {"factors": "factors", "iterations": "epochs", "regularization": "reg",
                    "lr": "lr"}),
    "svdpp": ("SVDpp", {"factors": "factors", "iterations": "epochs",
                        "regularization": "reg", "lr": "lr"}),
    "explicit-als": ("ExplicitALS", {"factors": "factors", "iterations": "iterations",
                                     "regularization": "reg"}),
}
RATING_MODELS = ("svd", "svdpp", "explicit-als")  # --model values that predict ratings
ALS_DEFAULTS = {"factors": 64, "regularization": 0.05, "alpha": 2.0}  # the demo's ALS


def _model(args):
    """The model --model names, with the options given (ALS: the demo's defaults). The
    rating models (svd, svdpp, explicit-als) read each stored value as a rating: train them
    with --weight RATING_COLUMN --combine last on an event log (a MovieLens folder's values
    are its ratings). Refuses an option the model lacks and an unusable backend."""
    import recfuse
    from recfuse._backend import resolve_backend

    name = getattr(args, "model", "als")
    class_name, parameters = MODELS[name]
    for option in ("factors", "iterations", "regularization", "alpha", "lr"):
        if getattr(args, option, None) is not None and option not in parameters:
            raise ValueError(f"--{option} does not apply to --model {name}")
    # an unusable backend refused now, not by fit once the data is read and split
    resolve_backend(args.backend, "als" if name == "als" else "sgd")
    settings = {"backend": args.backend, "random_state": args.seed}
    for option, parameter in parameters.items():
        value = getattr(args, option, None)
        if value is None and name == "als":
            value = ALS_DEFAULTS.get(option)
        if value is not None:
            settings[parameter] = value
    return getattr(recfuse, class_name)(**settings)


METRIC_COLUMNS = ("precision", "recall", "map", "ndcg", "mrr", "auc", "coverage", "novelty")


def _metric_table(say, rows: dict[str, dict], k: int) -> None:
    header = "".join(f"{name + ('@' + str(k) if name in ('precision', 'recall', 'map', 'ndcg') else ''):>13}"
                     for name in METRIC_COLUMNS)
    say(f"    {'model':<12}{header}")
    for model, result in rows.items():
        say(f"    {model:<12}" + "".join(f"{result[name]:>13.4f}" for name in METRIC_COLUMNS))


# ---------------------------------------------------------------------------- demo
DEMO_SIZES = {"--users": 20_000, "--items": 5_000, "--events": 600_000}  # the synthetic log
DEMO_MIN_RATING = 4.0  # with --data: ratings >= it are the implicit feedback


def _demo(args) -> int:
    from recfuse import datasets
    from recfuse.interactions import Interactions
    from recfuse.metrics import evaluate

    say = _printer(args)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(name: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        return timings[name]

    synthetic = {"--users": args.users, "--items": args.items, "--events": args.events}
    if args.data:
        given = [option for option, value in synthetic.items() if value is not None]
        if given:  # else the MovieLens folder would be read without a word about them
            raise ValueError(f"{', '.join(given)} {'sizes' if len(given) == 1 else 'size'} the "
                             f"synthetic log, not the MovieLens folder --data {args.data!r}")
        min_rating = DEMO_MIN_RATING if args.min_rating is None else args.min_rating
    elif args.min_rating is not None:
        raise ValueError("--min-rating filters the ratings of a MovieLens folder: it needs "
                         "--data FOLDER")
    else:
        args.users, args.items, args.events = (
            DEMO_SIZES[option] if value is None else value for option, value in synthetic.items())
    model = _model(args)  # its backend refused before the data is made
    if args.data:
        say(f"recfuse demo: MovieLens from {args.data} (ratings >= {min_rating} as "
            "implicit feedback)")
        interactions = datasets.load_movielens(args.data, min_rating=min_rating)
        lap("ingest")
        source = f"MovieLens {args.data}"
    else:
        say(f"recfuse demo: a synthetic event log of {args.events} views/clicks/purchases by "
            f"{args.users} users on {args.items} items (seed {args.seed})")
        log = datasets.synthetic_event_log(args.users, args.items, args.events, seed=args.seed)
        lap("generate")
        interactions = Interactions.from_events(log, timestamp="timestamp", event="event",
                                                event_weights=EVENT_WEIGHTS)
        lap("ingest")
        source = "synthetic event log"
    say(f"  ingest: {interactions}  [{timings['ingest']:.2f} s]")
    train, test = _split(interactions, args.split, TEST_FRACTION, args.seed)
    lap("split")
    say(f"  split ({args.split}): train {train.nnz} pairs, test {test.nnz} pairs  "
        f"[{timings['split']:.2f} s]")
    _check_held_out(test, interactions, "more events per user (--events, or --data FOLDER)")
    losses: list = []
    model.fit(train.matrix, show_progress=not args.json,
              callback=lambda it, loss: losses.append(loss))
    lap("train")
    say(f"  ALS: {args.factors} factors, {args.iterations} iterations on backend "
        f"'{model.backend_used}' in {timings['train']:.2f} s; training loss "
        f"{losses[0]:.5f} -> {losses[-1]:.5f}" if losses else "  ALS: no iterations")

    k = args.k
    results = {"popularity": evaluate(_Popularity(train.matrix), train, test, k=k),
               "ALS": evaluate(model, train, test, k=k, show_progress=not args.json)}
    lap("evaluate")
    say(f"  evaluation of top-{k} lists on {results['ALS']['users']} held-out users (seen "
        f"items filtered)  [{timings['evaluate']:.2f} s]:")
    _metric_table(say, results, k)

    # the user with the most held-out pairs among those with training pairs (a temporal
    # split holds all of some users' pairs out: the model knows nothing of them)
    held = np.diff(test.matrix.indptr) * (np.diff(train.matrix.indptr) > 0)
    user = int(np.argmax(held if held.any() else np.diff(test.matrix.indptr)))
    ids, scores = model.recommend(user, user_items=train.matrix[user], k=5)
    held_out = set(test.matrix[user].indices.tolist())
    external_user = interactions.user_ids.to_external([user])[0]
    say(f"  top 5 for user {external_user} (* = in the user's held-out interactions):")
    items = interactions.item_ids.to_external(ids[ids >= 0])
    top = []  # the same list in the JSON
    for item_id, item, score in zip(ids, items, scores):
        mark = " *" if int(item_id) in held_out else ""
        say(f"    {str(item):>10}  score {float(score):.4f}{mark}")
        top.append({"item": item, "score": float(score), "held_out": bool(mark)})
    total = time.perf_counter() - started
    say("  timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()))
    say(f"done in {total:.2f} s")
    _emit_json(args, {"source": source, "backend": model.backend_used, "losses": losses,
                      "pairs": interactions.nnz, "train_pairs": train.nnz,
                      "test_pairs": test.nnz, "metrics": results, "timings": timings,
                      "total_seconds": total,
                      "top": {"user": external_user, "items": top},
                      # the first demo's keys, kept for scripts that read them
                      "als": results["ALS"], "popularity": results["popularity"]})
    return 0


def _serve(args) -> int:
    import socket

    from .persistence import load_folder
    from .serving import Recommender

    from .server import Limits, http_stack, listening_socket, serve  # ImportError: rc 2 in main
    if args.ranker is None and args.ranker_precision != "float32":
        raise ValueError("--ranker-precision needs --ranker")
    if args.k > args.max_k:  # every request that gives no k would be refused
        raise ValueError(f"--k {args.k} exceeds --max-k {args.max_k}")
    try:  # first: a busy port or a wrong host fails at once, before any file is read
        sock = listening_socket(args.host, args.port)
    except socket.gaierror as error:
        raise ValueError(f"--host {args.host!r} does not resolve: {error.strerror}") from None
    except OSError as error:
        raise ValueError(f"cannot listen on --host {args.host} --port {args.port}: "
                         f"{error.strerror or error}") from None
    with sock:
        ranker = None
        if args.ranker is not None:
            ranker = _ranker_file(args.ranker, args.ranker_precision)
        model, ids = args.model, None
        if os.path.isdir(args.model):  # `recfuse train`'s folder: served by the log's ids
            model, ids = load_folder(args.model)
        recommender = Recommender(model, ranker, candidates=args.candidates, k=args.k,
                                  unknown_items=args.unknown_items, num_threads=args.threads,
                                  max_pending_events=args.max_pending_events)
        limits = Limits(max_k=args.max_k, max_batch=args.max_batch,
                        max_body_bytes=args.max_body_bytes,
                        max_header_bytes=args.max_header_bytes,
                        batch_wait=args.batch_wait_ms / 1000, workers=args.workers)
        info = recommender.info()
        stack = http_stack()
        ranked = "" if ranker is None else \
            f", ranked by {args.ranker} ({info['context_width']} context columns)"
        port = sock.getsockname()[1]  # the one bound, also when --port 0 asked for any
        host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
        named = "the rows of the model" if ids is None else "the ids of its training log"
        print(f"recfuse serve: {info['model']} model {args.model} ({info['users']} users x "
              f"{info['items']} items, named by {named}){ranked} on http://{host}:{port} "
              f"({stack['http']}, {stack['loop']})", file=sys.stderr)
        serve(recommender, host=args.host, port=port, model_path=args.model,
              ranker_path=args.ranker, ranker_options={"precision": args.ranker_precision},
              limits=limits, sock=sock, ids=ids)
    return 0


def _ranker_file(path: str, precision: str):
    """The scorer in the --ranker file at ``precision``. Read first as it was saved, so that
    a file of another model is refused as ``Recommender(ranker=path)`` refuses it ("holds a
    SVD, not a ranker"); read again only when the precision differs, or when the file cannot
    be read as saved (scorer files are small)."""
    from .ranking import load_scorer

    try:
        scorer = load_scorer(path)
    except ValueError as first:  # e.g. saved as bfloat16, which this CPU cannot run
        try:
            return load_scorer(path, precision=precision)  # read as asked
        except ValueError:
            raise first from None  # the file's own problem ("not a ranker")
    return scorer if scorer.precision == precision else load_scorer(path, precision=precision)


# ---------------------------------------------------------------------------- train / evaluate / recommend
def _train(args) -> int:
    say = _printer(args)
    started = time.perf_counter()
    _check_output_folder(args.output)
    kind = _check_data_options(args)
    model = _model(args)  # its options and backend refused before the data is read
    interactions = _ingest(args, kind)
    say(f"ingested {interactions}")
    if args.split == "none":
        train, test = interactions, None
    else:
        fraction = TEST_FRACTION if args.test_fraction is None else args.test_fraction
        train, test = _split(interactions, args.split, fraction, args.seed)
        say(f"split ({args.split}): train {train.nnz} pairs, test {test.nnz} pairs")
        _check_held_out(test, interactions,
                        ("a larger --test-fraction, or " if args.split != "leave_last" else "")
                        + "--split none to train on every pair")
        if train.nnz == 0:
            raise ValueError(f"the split held out all {interactions.nnz} pairs: nothing to "
                             f"train on; use a smaller --test-fraction")
    model.fit(train, show_progress=not args.json)
    try:
        _write_folder(args.output, dict(zip(FOLDER_FILES, (model, train, test))))
    except OSError as error:
        raise ValueError(f"--output {args.output!r}: cannot write the model folder: "
                         f"{error}") from None
    seconds = time.perf_counter() - started
    say(f"trained {type(model).__name__} ({model.backend_used}) in {seconds:.2f} s; wrote "
        f"{args.output}")
    _emit_json(args, {"output": args.output, "model": type(model).__name__,
                      "backend": model.backend_used,
                      "users": train.n_users, "items": train.n_items, "train_pairs": train.nnz,
                      "test_pairs": None if test is None else test.nnz, "seconds": seconds})
    return 0


FOLDER_FILES = ("model.npz", "train.npz", "test.npz")  # what train writes in --output


def _write_folder(folder: str, files: dict) -> None:
    """Save each object of ``files`` (file name -> object with ``save(path)``, or None) in
    ``folder``, all of them or none: every file is written aside first (in a temporary
    folder inside ``folder``) and renamed into place only once all are written; a file
    whose object is None is removed. A failure (an id that cannot be saved, a full disk)
    leaves the folder as it was, never a new model beside the old training data; Ctrl-C or
    SIGTERM during the renames takes effect once they are done."""
    created = []  # the folders made here, deepest last: removed again if the write fails
    missing = os.path.abspath(folder)
    while not os.path.exists(missing):
        created.append(missing)
        missing = os.path.dirname(missing)
    os.makedirs(folder, exist_ok=True)
    try:
        _write_files(folder, files)
    except BaseException:
        for path in created:  # deepest first; only while empty
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise


def _write_files(folder: str, files: dict) -> None:
    """_write_folder's writes, into the existing ``folder``."""
    staging = tempfile.mkdtemp(prefix=".recfuse-train-", dir=folder)
    pending: list[int] = []  # signals held during the renames
    try:
        for name, value in files.items():
            if value is not None:
                value.save(os.path.join(staging, name))
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            previous = {number: signal.signal(number, lambda got, _: pending.append(got))
                        for number in (signal.SIGINT, signal.SIGTERM)}
        changed: list[tuple[str, str | None]] = []  # (target, its backup; None: it was new)
        try:
            for name, value in files.items():
                target = os.path.join(folder, name)
                exists = os.path.isfile(target)
                if value is None and not exists:
                    continue
                backup = os.path.join(staging, name + ".old") if exists else None
                if backup is not None:  # the old file stays in place until it is replaced
                    _keep_copy(target, backup)
                changed.append((target, backup))
                if value is not None:
                    staged = os.path.join(staging, name)
                    if exists:  # as save does: the replaced file's permissions carry over
                        with contextlib.suppress(OSError):
                            os.chmod(staged, stat.S_IMODE(os.stat(target).st_mode))
                    os.replace(staged, target)
                else:  # from an earlier training: it would not match
                    os.unlink(target)
        except BaseException:  # a rename that failed: put back what the others replaced
            for target, backup in reversed(changed):
                with contextlib.suppress(OSError):
                    if backup is None:
                        os.unlink(target)
                    else:
                        os.replace(backup, target)
            raise
        finally:
            for number, handler in previous.items():
                signal.signal(number, signal.SIG_DFL if handler is None else handler)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if pending:
        signal.raise_signal(pending[0])  # KeyboardInterrupt, or the end SIGTERM asked for


def _keep_copy(path: str, copy: str) -> None:
    """``copy`` holds ``path``'s bytes: a hard link where the file system has them."""
    try:
        os.link(path, copy)
    except OSError:
        shutil.copy2(path, copy)


def _check_output_folder(path: str) -> None:
    """Refuse an --output that could not be written, before any work starts: the path or
    its nearest existing parent must be a folder that takes a file (tried with a temporary
    one), and the files train writes must not be folders."""
    target = os.path.abspath(path)
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == target else f"is under the file {existing!r}"
        raise ValueError(f"--output {path!r} {what}; give a folder to write the model into")
    try:  # a real write (what os.access says is not what root, or a read-only mount, gets)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ValueError(f"--output {path!r}: cannot write in the folder {existing!r}: "
                         f"{error.strerror or error}") from None
    blocked = [name for name in FOLDER_FILES if os.path.isdir(os.path.join(target, name))]
    if blocked:
        raise ValueError(f"--output {path!r} holds folders named {blocked}, where the model "
                         f"files go")


def _evaluate(args) -> int:
    from recfuse.interactions import Interactions
    from recfuse.metrics import evaluate
    from recfuse.persistence import load_folder

    say = _printer(args)
    if args.test:
        read_options = _csv_options(args, args.test)  # --sep: CSV files only
    else:
        given = _options_given(args, ("user", "item", "weight", "sep"))
        if given:  # they describe the columns of a --test log; test.npz has none
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                             f"to the --test log only (FOLDER/test.npz is read as it is)")
    model, train = load_folder(args.folder, mmap=True)
    extra = {}
    if args.test:
        # the id columns of the training log where --user / --item are not given
        trained_columns = getattr(train, "_settings", {}).get("columns") or {}
        for name in ("user", "item"):
            if getattr(args, name) is None and trained_columns.get(name) is not None:
                setattr(args, name, trained_columns[name])
        weight, combine, ratings = args.weight, LOG_DEFAULTS["combine"], ""
        time_column: dict = {}
        if callable(getattr(model, "predict", None)):
            # RMSE and MAE compare ratings: read them as the training data's were (its
            # rating column unless --weight names another, its rule for repeated pairs),
            # not as counts of events
            settings = getattr(train, "_settings", {})
            if weight is None:
                weight = (settings.get("columns") or {}).get("weight")
            if weight is None:
                raise ValueError(f"{type(model).__name__} predicts ratings: name the rating "
                                 f"column of --test {args.test!r} with --weight")
            combine = settings.get("combine", combine)
            extra = {"weight": weight, "combine": combine}
            ratings = f" (ratings of column {weight!r}, repeated pairs combined by {combine})"
            # "last" is the latest by the training's time column, as training read it
            timestamp = (settings.get("columns") or {}).get("timestamp")
            if combine == "last" and timestamp is not None:
                time_column = {"timestamp": timestamp}
                ratings = ratings[:-1] + f", the latest by column {timestamp!r})"
        test = Interactions.from_events(args.test, **_log_columns(args, ("user", "item")),
                                        **time_column, weight=weight, combine=combine,
                                        user_ids=train.user_ids, item_ids=train.item_ids,
                                        unknown="drop", read_options=read_options)
        if test.nnz == 0:
            raise ValueError(f"no event of --test {args.test!r} has a user and an item the "
                             f"model knows ({test.dropped_events} left out): nothing to "
                             f"evaluate on")
        extra.update(test_pairs=test.nnz, dropped_events=test.dropped_events)
        say(f"test: {test.nnz} pairs{ratings}; {test.dropped_events} events of users or "
            "items unknown to the model left out")
    else:
        path = os.path.join(args.folder, "test.npz")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{args.folder!r} has no test.npz (trained with --split "
                                    "none); pass --test DATA")
        test = Interactions.load(path)
        if test.nnz == 0:  # written by a recfuse that let --test-fraction 0 through
            raise ValueError(f"{path!r} holds no test pair: nothing to evaluate on; pass "
                             f"--test DATA")
    started = time.perf_counter()
    result = evaluate(model, train, test, k=args.k, show_progress=not args.json)
    result["seconds"] = time.perf_counter() - started
    say(f"evaluated {result['users']} users ({result['cold_users']} without train items) "
        f"in {result['seconds']:.2f} s:")
    for name in ("precision", "recall", "map", "ndcg", "mrr", "hit_rate", "auc", "coverage",
                 "novelty", "diversity", "rmse", "mae"):
        if name in result:  # rmse and mae: the rating models (those with predict)
            say(f"  {name:<10} {result[name]:.4f}")
    _emit_json(args, {**result, **extra})
    return 0


def _typed_ids(texts: list[str], ids: np.ndarray) -> np.ndarray:
    """Ids typed on the command line, in the kind of the id map's ``ids``: integers (up to
    2**64 - 1 for a uint64 map), floats, booleans (true/false, 1/0), datetimes or bytes;
    text for the others."""
    kind = ids.dtype.kind
    if kind in "iu":
        # parsed as Python ints, then held in the map's kind: uint64 ids reach 2**64 - 1
        bounds = np.iinfo(np.uint64 if kind == "u" else np.int64)
        try:
            numbers = [int(text) for text in texts]
        except ValueError as error:  # a word
            raise ValueError(f"user ids of this model are integers, got {texts[:10]}") from error
        if any(not bounds.min <= number <= bounds.max for number in numbers):
            raise ValueError(f"user ids of this model are integers from {bounds.min} to "
                             f"{bounds.max}, got {texts[:10]}")
        return np.array(numbers, dtype=bounds.dtype)
    if kind == "b":
        words = {"true": True, "1": True, "false": False, "0": False}
        if any(text.lower() not in words for text in texts):
            raise ValueError(f"user ids of this model are booleans (true or false), got "
                             f"{texts[:10]}")
        return np.array([words[text.lower()] for text in texts])
    if kind in "fMS":
        try:
            return np.asarray(texts).astype(ids.dtype)
        except (ValueError, UnicodeError) as error:
            name = {"f": "numbers", "M": "dates and times", "S": "ASCII bytes"}[kind]
            raise ValueError(f"user ids of this model are {name}, got {texts[:10]}") from error
    return np.asarray(texts)


def _recommend(args) -> int:
    from recfuse.persistence import load_folder

    say = _printer(args)
    model, train = load_folder(args.folder, mmap=True)
    users = train.user_ids.to_internal(_typed_ids(args.users, train.user_ids.ids),
                                       missing="ignore")
    if (users < 0).any():
        raise ValueError(f"unknown user ids (not in the training data): "
                         f"{[u for u, c in zip(args.users, users) if c < 0][:10]}")
    # each user once, in the order first asked, under the model's own id ("01" is user 1)
    _, first = np.unique(users, return_index=True)
    users = users[np.sort(first)]
    # a list holds at most every item: no padding past them asked for (k may be huge)
    k = min(args.k, train.n_items)
    items, scores = model.recommend(users, user_items=train.matrix[users], k=max(k, 1))
    # A user without any training pair (all of theirs held out by the split) has no vector
    # the model learnt: ALS scores every item 0 (a list of the smallest ids), BPR keeps its
    # random start; an ALS user whose pairs are all stored zeros has the zero vector. Such
    # users get the most popular items instead, as the serving layer's cold start gives them
    # (most training pairs first, ties by smaller id, their own training items left out;
    # score 0).
    cold = (np.diff(train.matrix.indptr)[users] == 0) | \
        ~np.asarray(model.user_factors)[users].any(axis=1)
    if cold.any():
        from .serving import popular_for

        popular = popular_for(model, train.matrix, train.n_items)
        matrix = train.matrix
        for row in np.flatnonzero(cold):  # the user's training items filtered, as in serving
            user = users[row]
            kept = popular[~np.isin(popular, matrix.indices[matrix.indptr[user]:
                                                            matrix.indptr[user + 1]])][:args.k]
            items[row] = -1
            items[row, :kept.size] = kept
        scores[cold] = 0.0
    payload, popular_users = {}, []
    for user, row_items, row_scores, is_cold in zip(
            _id_values(train.user_ids.to_external(users)), items, scores, cold):
        valid = row_items >= 0
        external = train.item_ids.to_external(row_items[valid])
        user = str(user)  # a JSON key
        payload[user] = [{"item": item, "score": float(score)}
                         for item, score in zip(_id_values(external), row_scores[valid])]
        if is_cold:
            popular_users.append(user)
        say(f"user {user}" + (" (no training pair: the most popular items)" if is_cold else "")
            + ": " + ", ".join(f"{e['item']} ({e['score']:.3f})" for e in payload[user]))
    _emit_json(args, {"k": args.k, "recommendations": payload, "popular": popular_users})
    return 0


# ---------------------------------------------------------------------------- bench
BENCH_SUITES = {  # suite -> (script, arguments for --quick, results file)
    "data": ("bench_data.py", ["--sizes", "1000000", "--repeats", "1"], "data.json"),
    "als": ("bench_als.py", ["--quick", "--no-quality"], "als.json"),
}


def _bench_folder() -> str:
    folder = os.environ.get("RECFUSE_BENCH_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
    if not os.path.isfile(os.path.join(folder, "bench_data.py")):
        raise FileNotFoundError(
            f"no bench/ suites at {os.path.abspath(folder)!r}: `recfuse bench` runs the scripts "
            "of a source checkout (pip install -e .) or of RECFUSE_BENCH_DIR")
    return os.path.abspath(folder)


def _ratio_rows(suite: str, results: dict) -> list[dict]:
    """(stage, case, speedup, peer) rows of one suite's JSON."""
    rows = []
    if suite == "data":
        for r in results.get("ingestion", []):
            rows.append({"stage": "ingest", "case": f"{r['events'] / 1e6:g}M events, {r['ids']} ids",
                         "speedup": r["speedup"], "peer": "pandas + scipy"})
        for r in results.get("evaluation", []):
            rows.append({"stage": "evaluate", "case": f"{r['events'] / 1e6:g}M events",
                         "speedup": r["speedup"], "peer": "implicit.evaluation"})
    elif suite == "als":
        for r in results.get("speed", []):
            rows.append({"stage": "ALS fit", "case": f"{r['nnz'] / 1e6:g}M nnz, k={r['factors']}, "
                         f"{r['solver']}", "speedup": r["speedup"], "peer": "implicit"})
    return rows


def _bench(args) -> int:
    import shlex
    import subprocess

    say = _printer(args)
    args.suites = args.suites or ["data"]
    unknown = [suite for suite in args.suites if suite not in BENCH_SUITES]
    if unknown:
        raise ValueError(f"unknown suites {unknown}; choose from {sorted(BENCH_SUITES)}")
    try:
        script_args = shlex.split(args.script_args or "")
    except ValueError as error:  # "No closing quotation"
        raise ValueError(f"--script-args {args.script_args!r}: {error}") from None
    folder = _bench_folder()
    output = os.path.abspath(args.output or os.path.join(folder, "results"))
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:  # a file there, or no right to write
        raise ValueError(f"--output {output!r}: cannot make the results folder: "
                         f"{error.strerror or error}") from None
    environment = dict(os.environ, RECFUSE_BENCH_RESULTS=output)
    rows, failures = [], []
    for suite in args.suites:
        script, quick, results_file = BENCH_SUITES[suite]
        command = [sys.executable, os.path.join(folder, script)]
        command += quick if args.quick else []
        command += script_args
        say(f"running {' '.join(command[1:])} ...")
        results_path = os.path.join(output, results_file)
        before = os.stat(results_path).st_mtime_ns if os.path.isfile(results_path) else None
        done = subprocess.run(command, env=environment, stdout=subprocess.PIPE,
                              stderr=None if not args.json else subprocess.DEVNULL, text=True)
        if done.returncode != 0:
            failures.append(f"{suite} (exit {done.returncode})")
            continue
        if not os.path.isfile(results_path) or os.stat(results_path).st_mtime_ns == before:
            failures.append(f"{suite} (wrote no {results_file})")  # not an earlier run's
            continue
        with open(results_path) as handle:
            rows += [dict(row, suite=suite) for row in _ratio_rows(suite, json.load(handle))]
    summary = {"rows": rows, "failed": failures, "output": output}
    from .persistence import atomic_write

    def write_summary(temporary: str) -> None:  # strict JSON (null for NaN/inf), whole or not
        with open(temporary, "w") as handle:
            json.dump(_plain_json(summary), handle, indent=1, allow_nan=False)

    atomic_write(os.path.join(output, "bench.json"), write_summary)
    summary["plot"] = _bench_plot(rows, os.path.join(output, "bench.png"))
    width = max([len(r["stage"] + r["case"]) + 2 for r in rows] + [20])
    say(f"\n{'stage: case':<{width}}  {'recfuse speedup':>15}  peer")
    for row in rows:
        say(f"{row['stage'] + ': ' + row['case']:<{width}}  {row['speedup']:>14.2f}x  {row['peer']}")
    say(f"\nwrote {os.path.join(output, 'bench.json')}"
        + (f" and {summary['plot']}" if summary["plot"] else " (no plot: matplotlib is not installed)"))
    _emit_json(args, summary)
    if failures:
        raise RuntimeError(f"benchmark suites failed: {', '.join(failures)}")
    return 0


def _bench_plot(rows: list[dict], path: str) -> str | None:
    """A bar chart of the speedups (log scale, 1x marked); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    labels = [f"{r['stage']}: {r['case']} (vs {r['peer']})" for r in rows]
    axes.barh(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(range(len(rows)), labels, fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("recfuse speedup over the peer (x, log scale)")
    axes.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recfuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    def model_options(sub, iterations: int | None):
        # demo trains ALS with fixed defaults; train leaves out what is not given (the
        # model's own defaults, ALS_DEFAULTS for ALS)
        default = " (default %(default)s)" if iterations is not None else ""
        sub.add_argument("--factors", type=_count, default=None if iterations is None else 64,
                         help="size of the latent vectors" + default)
        sub.add_argument("--iterations", type=_count, default=iterations,
                         help="ALS iterations" + default if iterations is not None else
                         "iterations (epochs for svd/svdpp)")
        sub.add_argument("--regularization", type=_non_negative,
                         default=None if iterations is None else 0.05,
                         help="ALS regularization lambda" + default if iterations is not None
                         else "regularization lambda (reg of bpr, svd, svdpp, explicit-als)")
        sub.add_argument("--alpha", type=_non_negative,
                         default=None if iterations is None else 2.0,
                         help="ALS confidence scale: c = 1 + alpha * value" + default)
        sub.add_argument("--backend", default="auto",
                         help="auto, cuda, cpu, numba, cupy or numpy (`recfuse info` lists "
                              "those usable here; default %(default)s)")
        sub.add_argument("--seed", type=_seed, default=0,
                         help="seed of the split and the model's start (default %(default)s)")

    def column_options(sub, of: str, default: str = ""):
        # None when not given: train refuses them for a MovieLens folder, evaluate without
        # --test (nothing would read them)
        sub.add_argument("--user", default=None,
                         help=f"user id column of {of} (default: {default}user)")
        sub.add_argument("--item", default=None,
                         help=f"item id column of {of} (default: {default}item)")
        sub.add_argument("--weight", default=None, help=f"numeric weight column of {of}")
        sub.add_argument("--sep", default=None,
                         help=f"field separator of {of} when a CSV file, e.g. ';' (default: a "
                              f"comma; a tab for .tsv files)")

    splits = ("per_user", "random", "leave_last", "temporal")
    split_help = ("how the test pairs are held out: per_user (a fraction of each user's), "
                  "random, leave_last (each user's latest) or temporal (the latest; these "
                  "two need timestamps)")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        command_parsers[name] = sub
        return sub

    command_parsers: dict[str, argparse.ArgumentParser] = {}
    parser.set_defaults(command_parsers=command_parsers)  # main's errors under a command

    demo = command("demo", "the whole chain on an embedded synthetic event log")
    demo.add_argument("--data", type=_path, help="a MovieLens folder instead of the synthetic log")
    # None when not given: --min-rating is refused without --data, the sizes with it
    demo.add_argument("--min-rating", type=_finite, default=None,
                      help=f"with --data: ratings kept as implicit feedback (default "
                           f"{DEMO_MIN_RATING:g})")
    demo.add_argument("--users", type=_count, default=None,
                      help=f"users in the synthetic log (default {DEMO_SIZES['--users']})")
    demo.add_argument("--items", type=_count, default=None,
                      help=f"items in the synthetic log (default {DEMO_SIZES['--items']})")
    demo.add_argument("--events", "--nnz", type=_count, default=None,
                      help=f"events in the synthetic log (default {DEMO_SIZES['--events']}; "
                           f"--nnz: the first demo's name)")
    demo.add_argument("--split", choices=splits, default="per_user",
                      help=split_help + " (default %(default)s)")
    demo.add_argument("--k", type=_list_length, default=10,
                      help="length of the lists evaluated (default %(default)s)")
    model_options(demo, 10)
    common(demo)
    demo.set_defaults(run=_demo)

    serve = command("serve", "serve a model folder or file over HTTP (needs the serve extra)")
    serve.add_argument("model", type=_path,
                       help="a model folder written by `recfuse train` (requests name users "
                            "and items by the ids of its training log), or a model file "
                            "written by model.save() (by its rows)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=_port, default=8000,
                       help="port to listen on; 0: any free one (default %(default)s)")
    serve.add_argument("--k", type=_list_length, default=10,
                       help="list length when a request gives none (default %(default)s)")
    serve.add_argument("--ranker", type=_path, default=None,
                       help="a ranker file (MLPScorer.save, or an .onnx chain): recalled "
                            "candidates are ranked by it; /reload reloads it with the model")
    serve.add_argument("--ranker-precision", choices=("float32", "bfloat16", "int8"),
                       default="float32",
                       help="the ranker's arithmetic; bfloat16 needs a CPU with avx512_bf16 "
                            "(default %(default)s)")
    serve.add_argument("--candidates", type=_list_length, default=200,
                       help="items recalled per request for the ranker (default %(default)s)")
    serve.add_argument("--unknown-items", choices=("add", "reject"), default="add",
                       help="what /events does with item ids the model lacks (default %(default)s)")
    serve.add_argument("--max-pending-events", type=_integer_in(0), default=1_000_000,
                       help="events from /events kept logged for the next retrain (the "
                            "newest; older ones are dropped, both counted in /metrics; "
                            "default %(default)s)")
    serve.add_argument("--max-k", type=_list_length, default=1000,
                       help="largest k a request may ask for (default %(default)s)")
    serve.add_argument("--max-batch", type=_count, default=256,
                       help="users per /recommend request (default %(default)s)")
    serve.add_argument("--max-body-bytes", type=_count, default=1 << 20,
                       help="largest request body in bytes (default %(default)s)")
    serve.add_argument("--max-header-bytes", type=_count, default=64 << 10,
                       help="largest request line and headers in bytes: more is answered "
                            "431 and the connection closed (default %(default)s)")
    serve.add_argument("--batch-wait-ms", type=_non_negative, default=1.0,
                       help="how long a micro-batch may wait for the requests it "
                            "expects (default %(default)s)")
    serve.add_argument("--workers", type=_workers, default=1,
                       help="threads answering batches, up to 4096 (default %(default)s)")
    serve.add_argument("--threads", type=_integer_in(0), default=None,
                       help="CPU threads per native call (default: 1 below 100,000 items, else all)")
    serve.set_defaults(run=_serve)

    train = command("train", "ingest, split and train; write a model folder")
    train.add_argument("data", type=_path,
                       help="an event log (.csv/.tsv/.parquet file, or a folder of Parquet "
                            "files) or a MovieLens folder (its users, movies, ratings and "
                            "times as they are: the options of event logs, --user to "
                            "--event-weights, are refused for it)")
    train.add_argument("-o", "--output", type=_path, required=True, help="folder to write")
    column_options(train, "an event log")
    train.add_argument("--timestamp", default=None,
                       help="time column of an event log (needed by --split temporal and "
                            "leave_last)")
    train.add_argument("--event", default=None, help="event type column of an event log")
    train.add_argument("--event-weights", type=_event_weights, default=None,
                       help='JSON weights per event type (default {"view": 1, "click": 3, '
                            '"purchase": 10})')
    train.add_argument("--combine", choices=("sum", "max", "last", "count"), default=None,
                       help="how the events of one (user, item) pair of an event log make its "
                            "value (default sum; last for the rating models)")
    train.add_argument("--min-rating", type=_finite, default=None,
                       help="MovieLens folder: keep ratings >= this (default: all)")
    train.add_argument("--split", choices=("none",) + splits, default="per_user",
                       help=split_help + "; none: train on everything (default %(default)s)")
    train.add_argument("--test-fraction", type=_test_fraction, default=None,
                       help=f"share held out by per_user, random and temporal, between 0 and "
                            f"1 (default {TEST_FRACTION}; a split that holds out no pair is "
                            f"refused)")
    train.add_argument("--model", choices=tuple(MODELS), default="als",
                       help="als (default), bpr, or a rating model (svd, svdpp, explicit-als: "
                            "use --weight RATING --combine last on an event log, without "
                            "--event; a MovieLens folder gives its ratings); options left "
                            "out keep the model's defaults (ALS: 64 factors, 15 iterations, "
                            "regularization 0.05, alpha 2)")
    train.add_argument("--lr", type=_positive, default=None,
                       help="learning rate (bpr, svd, svdpp)")
    model_options(train, None)
    common(train)
    train.set_defaults(run=_train)

    evaluate = command("evaluate", "score a trained model folder")
    evaluate.add_argument("folder", type=_path, help="a folder written by `recfuse train`")
    evaluate.add_argument("--test", type=_path,
                          help="an event log to test on instead of FOLDER/test.npz (for a "
                               "rating model, its ratings are read as the training data's: "
                               "same rating column unless --weight, same rule for repeated "
                               "pairs)")
    column_options(evaluate, "the --test log", default="the training log's, else ")
    evaluate.add_argument("--k", type=_list_length, default=10,
                          help="length of the lists evaluated (default %(default)s)")
    common(evaluate)
    evaluate.set_defaults(run=_evaluate)

    recommend = command("recommend", "top-k items for users by their ids")
    recommend.add_argument("folder", type=_path, help="a folder written by `recfuse train`")
    recommend.add_argument("users", nargs="+",
                           help="user ids as in the event log; each is listed once, under "
                                "the model's own id (01 is user 1 of integer ids); one without "
                                "training pairs (all held out) gets the most popular items")
    recommend.add_argument("--k", type=_list_length, default=10,
                           help="items per user (default %(default)s)")
    common(recommend)
    recommend.set_defaults(run=_recommend)

    bench = command("bench", "run bench/ suites and print the ratio table")
    bench.add_argument("suites", nargs="*", metavar="SUITE",
                       help=f"one or more of {sorted(BENCH_SUITES)} (default data)")
    bench.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    bench.add_argument("--output", type=_path,
                       help="folder for the JSON and PNG (default bench/results)")
    bench.add_argument("--script-args", help="more arguments for every suite's script, quoted")
    common(bench)
    bench.set_defaults(run=_bench)

    info = command("info", "print the backends and why any is unavailable")
    common(info)
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's) and return its exit status: 0
    (done, or ``--help``), 2 for bad arguments and input errors (argparse's exits are
    caught, which would otherwise end the caller's process), 130 when interrupted (Ctrl-C),
    141 when stdout was closed before the end; any other exception propagates (exit
    status 1 from the console script)."""
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:  # as the command's own error ("recfuse demo: error: ..."), its usage
            args.command_parsers[args.command].error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        status = args.run(args)
        if sys.stdout is not None:  # None: started with stdout closed (print drops output)
            sys.stdout.flush()  # here, where a closed stdout is caught, not at the exit
        return status
    except BrokenPipeError:  # stdout closed before the end (`recfuse ... | head`): no
        # traceback; stdout goes to devnull so that the exit's own flush fails no more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE (128 + 13)
    except KeyboardInterrupt:  # Ctrl-C (train writes its folder whole or not at all): one
        # line, no traceback
        print(f"recfuse {args.command}: interrupted", file=sys.stderr)
        return 130  # as a shell reports a command ended by SIGINT (128 + 2)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError, MemoryError,
            json.JSONDecodeError) as error:  # MemoryError: sizes refused before allocating;
        # OSError: a missing file, a folder where a file was named, no permission, a full disk
        print(f"recfuse {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

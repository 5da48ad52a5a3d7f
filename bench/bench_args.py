"""Options, checks and output shared by the benchmark scripts in bench/.

Every check here runs before a benchmark does any work, so that a bad option, an unusable
RECFUSE_BENCH_THREADS, a results location that cannot be written or a missing peer library is
refused at once (exit 2 for what the caller typed, 1 for a missing peer), not with a
traceback after minutes of timing. The scripts import it as ``bench_args``: a script's own
folder is on ``sys.path`` when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, Callable, Iterable, NoReturn, TypeVar

Item = TypeVar("Item")
PEERS_EXTRA = "pip install '.[bench]'"


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (where 0 means "none")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _finite_float(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {wanted} number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a {wanted} number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0."""
    value = _finite_float(text, "non-negative")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = _finite_float(text, "positive")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    """argparse item type: one of ``choices`` (for lists parsed by ``comma_list``)."""
    known = list(choices)

    def name(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(
                f"unknown name {text!r} (choose from {', '.join(known)})")
        return text

    return name


def comma_list(item: Callable[[str], Item]) -> Callable[[str], list[Item]]:
    """argparse type: a comma-separated list, each entry checked by ``item`` (e.g.
    ``comma_list(positive_int)``, ``comma_list(one_of(["a", "b"]))``)."""

    def parse(text: str) -> list[Item]:
        entries = text.split(",")
        if any(not entry for entry in entries):
            raise argparse.ArgumentTypeError(f"an empty entry in the list {text!r}")
        values = []
        for entry in entries:
            try:
                values.append(item(entry))
            except (argparse.ArgumentTypeError, ValueError) as error:
                where = f" (in the list {text!r})" if len(entries) > 1 else ""
                raise argparse.ArgumentTypeError(f"{error}{where}") from None
        return values

    parse.__name__ = "comma-separated list"  # argparse's "invalid ... value" names it so
    return parse


def _refuse(message: str, status: int) -> NoReturn:
    """Print "SCRIPT: error: MESSAGE" on stderr and exit with ``status`` (no traceback)."""
    print(f"{os.path.basename(sys.argv[0]) or 'bench'}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def bench_threads(default: int = 2) -> int:
    """The thread count in RECFUSE_BENCH_THREADS (``default`` when unset); exits 2 naming the
    variable when it is not a positive integer."""
    text = os.environ.get("RECFUSE_BENCH_THREADS", "").strip()
    if not text:
        return default
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        _refuse(f"RECFUSE_BENCH_THREADS must be a positive integer, got {text!r}", 2)


def check_writable(path: str, parser: argparse.ArgumentParser) -> str:
    """Make the folder of results file ``path`` and make sure the file can be written there,
    leaving no file behind; ``parser.error`` (exit 2) with "cannot write results to PATH:
    reason" otherwise. Returns the absolute path."""
    target = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(target):
            raise IsADirectoryError(21, "it is a folder", target)
        if os.path.exists(target):
            with open(target, "a"):  # appends nothing: the file and its time stay as they are
                pass
        else:
            with open(target, "x"):
                pass
            os.remove(target)
    except OSError as error:
        reason = error.strerror or str(error)
        if error.filename and os.path.abspath(str(error.filename)) != target:
            reason = f"{reason}: {error.filename}"
        parser.error(f"cannot write results to {target}: {reason}")
    return target


def missing_peer(name: str) -> str | None:
    """Why peer library ``name`` cannot be imported here, or None when it can."""
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - a broken install counts as missing too
        return f"{type(error).__name__}: {error}"
    return None


def require_peer(name: str, needed_for: str, install: str = PEERS_EXTRA) -> None:
    """Exit 1 naming peer library ``name`` when it cannot be imported (before any work);
    ``needed_for`` says what needs it, ``install`` how to get it."""
    why = missing_peer(name)
    if why is not None:
        _refuse(f"{name} is not installed ({why}); {needed_for} needs it: {install}", 1)


def peer_version(name: str) -> str:
    """The version of peer library ``name``, or "unavailable: <why>" when it cannot be
    imported."""
    try:
        return str(importlib.import_module(name).__version__)
    except Exception as error:  # noqa: BLE001 - a missing peer is recorded, not fatal
        return f"unavailable: {error}"


def write_json(path: str, report: Any, indent: int = 1) -> None:
    """Write ``report`` as strict JSON (no bare NaN or Infinity: a ValueError instead, before
    the file is touched) to ``path``, making its folder."""
    text = json.dumps(report, indent=indent, allow_nan=False)
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as handle:
        handle.write(text)

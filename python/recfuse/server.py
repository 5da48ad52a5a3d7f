"""An HTTP JSON API over a ``recfuse.Recommender`` (Starlette + uvicorn: ``pip install
"recfuse[serve]"``), started by ``recfuse serve MODEL`` or ``create_app(recommender)``.

Users and items are named by the model's rows (ints >= 0: a server of a model file), or by
the ids of the training log (integers or strings, as the log had them: a server of a model
folder written by ``recfuse train``, or ``create_app(..., ids=training_data)``). With ids,
users and items first met in /events are added (items as ``unknown_items`` says), an
unknown user gets the popular list, unknown ids in exclude lists are ignored, and /reload
of the folder replays the logged events by their ids into the new model, whatever rows its
training gave them.

Routes (JSON in and out; errors are ``{"error": message}`` with a 4xx status):

- ``POST /recommend`` ``{"user": 3, "k": 10, "exclude": [1, 2], "context": [0.5, 1.0]}``
  -> ``{"user", "items", "scores", "stages", "model_version"}`` (padding dropped; a score
  that is not a finite number, a ranker's overflow, is null: JSON has no inf), or
  ``{"users": [...], "k", "excludes": [[...], ...], "contexts": [[...], ...]}`` ->
  ``{"results": [...], "model_version"}``. Single-user requests arriving together are
  answered by one native call (micro-batching, below).
- ``POST /events`` ``{"user": [...], "item": [...], "weight": [...]}`` (or scalars) ->
  ``{"accepted", "pending_events", "model_version"}``; visible to the next /recommend. With
  ``"call"`` (as ``GET /events`` answers it) the events are replayed as those calls went
  (``Recommender.observe``): how a restarted server takes back the log of the one before
  (a log longer than a request takes is sent in parts cut between calls, oldest first).
- ``GET /events`` -> the logged events (the newest ``max_pending_events``), oldest first,
  for the next retrain: ``{"user", "item", "weight", "call", "dropped_events",
  "model_version"}`` (``call`` numbers the observe call of each event);
  ``DELETE /events`` answers the same and empties the log (events arriving later are kept).
- ``POST /reload`` -> reloads the model file (or folder) the server was started with, and
  its ranker file when it was started with one (``swap_model``, atomic: model and ranker
  change together); a file that fails to load answers 422 and the old ones keep serving.
- ``GET /health`` -> the model's version, backend, sizes, ranker, the event log's length and
  how ids are named (``"ids"``: "rows" or "training log").
- ``GET /metrics`` -> Prometheus text: requests by route and status (unknown paths under
  ``route="(no route)"``; 404 and 405 answers are counted, not timed), latency histograms,
  micro-batch sizes, model version, pending and dropped events.

Status codes: 400 malformed JSON (a name twice in one object included, or a body cut short
by the client), 413 body over ``max_body_bytes``, 431 request line and headers over
``max_header_bytes`` (``serve``: the connection is closed), 422 a well-formed request that is wrong (types, ranges, limits, unknown
items under ``unknown_items="reject"``, a model file that does not load), 404/405 unknown
route or method, 503 a request unfinished when shutdown's grace period ends (``serve``) or
one whose model kept being reloaded while it was answered, 500 a bug (logged; the server
keeps running).

Micro-batching: single-user requests go to a ``recfuse.MicroBatcher`` (``workers`` threads,
at most ``max_micro_batch`` requests per batch, a bounded wait of ``batch_wait`` seconds;
see ``recfuse.batching``): each batch is one native recall call and one native rank call.
The faster HTTP parser and event loop (httptools, uvloop) come with the serve extra; uvicorn
uses them when they are installed (``http_stack()`` says which run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

import numpy as np

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route
    import uvicorn  # serve()'s: missing, it would fail only once the model is loaded
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(f'the HTTP server needs the serve extra ({error.name} is missing): '
                      f'pip install "recfuse[serve]"') from error

from . import _validation as check
from .batching import MicroBatcher
from .interactions import _FEW_IDS, IdMap, Interactions
from .persistence import load_folder
from .ranking import load_scorer
from .serving import Events, Recommender, UserEventError

if TYPE_CHECKING:
    from starlette.types import HTTPExceptionHandler

LOG = logging.getLogger("recfuse.server")
_FLOAT64_MAX = float(np.finfo(np.float64).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_UNKNOWN_USER = check.INT64_MAX  # a row no user is given: the Recommender's cold start
_MODEL_CHANGES = 1000  # retries of a request whose model was swapped while it was mapped
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_k: int = 1000
    max_batch: int = 256  # users in one /recommend request
    max_exclude: int = 10_000  # ids in one user's exclude list
    max_events: int = 100_000  # events in one /events request
    max_body_bytes: int = 1 << 20
    # a request's line and headers (serve: the server answers 431 and closes the connection;
    # h11's own cap is 16 KiB, httptools has none)
    max_header_bytes: int = 64 << 10
    max_micro_batch: int = 256  # single-user requests answered by one call
    batch_wait: float = 0.001  # seconds a batch may wait for the requests it expects
    # threads answering /recommend batches: one leaves the other core to the event loop
    # (two gave smaller batches and more thread hand-offs at concurrency 16 on 2 cores)
    workers: int = 1

    def __post_init__(self):
        for entry in fields(self):
            if entry.name == "batch_wait":
                wait = check.check_float(self.batch_wait, "batch_wait", minimum=0.0)
                if wait > threading.TIMEOUT_MAX:  # the MicroBatcher's timed wait would raise
                    raise ValueError(f"batch_wait must be <= {threading.TIMEOUT_MAX:.3g} "
                                     f"seconds, got {wait}")
            else:
                check.check_int(getattr(self, entry.name), entry.name, minimum=1)


def _object_without_repeats(pairs: list) -> dict:
    """A JSON object of a request; a name given twice ({"user": 3, "user": 4}, which the
    json module would read as its last value) is a ValueError, so the request is refused."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"the name {name!r:.60} appears twice in one object")
            seen.add(name)
    return out


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for position, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[position] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            running += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        braces = f"{{{labels}}}" if labels else ""
        lines += [f"{name}_sum{braces} {self.total:.6f}", f"{name}_count{braces} {self.count}"]
        return lines


class Metrics:
    """Request counters and histograms, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict = {}  # (route, status) -> count
        self.latency: dict = {}  # route -> _Histogram
        self.batches = _Histogram(BATCH_BUCKETS)

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:  # count and histogram together: a scrape sees both or neither
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def count(self, route: str, status: int) -> None:
        """A request answered before any handler ran (404, 405): counted, not timed."""
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1

    def record_batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def render(self, recommender: Recommender) -> str:
        info = recommender.info()
        lines = ["# HELP recfuse_requests_total HTTP requests by route and status.",
                 "# TYPE recfuse_requests_total counter"]
        with self._lock:
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'recfuse_requests_total{{route="{route}",status="{status}"}} {count}')
            lines += ["# HELP recfuse_request_seconds Request latency in seconds.",
                      "# TYPE recfuse_request_seconds histogram"]
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.render("recfuse_request_seconds", f'route="{route}"')
            lines += ["# HELP recfuse_micro_batch_size Requests answered by one native call.",
                      "# TYPE recfuse_micro_batch_size histogram"]
            lines += self.batches.render("recfuse_micro_batch_size", "")
        lines += [
            "# HELP recfuse_model_version Version of the model answering (1 + swaps).",
            "# TYPE recfuse_model_version gauge", f"recfuse_model_version {info['version']}",
            "# HELP recfuse_pending_events Events logged for the next retrain.",
            "# TYPE recfuse_pending_events gauge", f"recfuse_pending_events {info['pending_events']}",
            "# HELP recfuse_dropped_events_total Events pushed out of the bounded log, or "
            "left out by a reload's renumbering.",
            "# TYPE recfuse_dropped_events_total counter",
            f"recfuse_dropped_events_total {info['dropped_events']}",
            "# HELP recfuse_observed_users Users updated in real time since the model loaded.",
            "# TYPE recfuse_observed_users gauge", f"recfuse_observed_users {info['observed_users']}",
        ]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- ids


class _Rows:
    """Requests and answers name users and items by the model's rows (a server started
    from a model file): ints >= 0, the same in every model version."""

    version = None  # any: a row is the same user or item after a swap

    def user(self, value, name: str):
        return _integer(value, name)

    def check(self, values: list, name: str, kind: str) -> list:
        for entry in values:
            if isinstance(entry, bool) or not isinstance(entry, int) or entry < 0:
                raise _BadRequest(422, f"{name} must hold integers >= 0, got {entry!r:.40}")
            if entry > check.INT64_MAX:
                raise _BadRequest(422, f"{name} must hold ids <= {check.INT64_MAX} (int64), "
                                       f"got {entry}")
        return values

    def rows(self, kind: str, values: list) -> np.ndarray:
        return np.array(values, dtype=np.int64)

    def admit(self, users: list, items: list, recommender: Recommender):
        """The rows of /events' users and items (the Recommender judges unknown ones)."""
        return self.rows("user", users), self.rows("item", items)

    def mark(self) -> None:
        """No ids are added here (``_Ids.mark``)."""

    def forget_since(self, mark) -> None:
        """No ids are added here (``_Ids.forget_since``)."""

    def external(self, kind: str, rows: np.ndarray) -> list:
        return rows.tolist()


class _Ids:
    """Requests and answers name users and items by the ids of the training log (a server
    started from a model folder, or given ``ids``), mapped to the rows of one model version:
    the training data's ``IdMap``s, then the users and items first met in /events after
    them, given the next rows in order of arrival. Grown by the writer thread alone (a row
    once given is never given to another id); a reader sees an id being added or not yet,
    both answers being right (an unknown user gets the popular list)."""

    def __init__(self, users: IdMap, items: IdMap) -> None:
        self.version: int | None = None  # of the model these rows belong to, once installed
        self.maps = {"user": users, "item": items}
        for kind, id_map in self.maps.items():
            if id_map.kind not in ("integer", "string"):
                raise ValueError(f"the training data's {kind} ids are {id_map.kind}; requests "
                                 f"name ids in JSON, as integers or strings")
        self.added: dict = {"user": {}, "item": {}}  # id -> row, past the map's rows
        self.added_ids: dict = {"user": [], "item": []}  # row - len(map) -> id

    @classmethod
    def of(cls, ids) -> "_Ids":
        if isinstance(ids, Interactions):
            return cls(ids.user_ids, ids.item_ids)
        if isinstance(ids, tuple) and len(ids) == 2 and all(isinstance(m, IdMap) for m in ids):
            return cls(*ids)
        raise TypeError(f"ids must be the training Interactions (or a pair of IdMaps: users, "
                        f"items), got {type(ids).__name__}")

    def check_sizes(self, users: int, items: int, source: str) -> None:
        sizes = len(self.maps["user"]), len(self.maps["item"])
        if sizes != (users, items):
            raise ValueError(f"the ids name {sizes[0]} users and {sizes[1]} items; {source} "
                             f"has {users} users x {items} items (a model and training data "
                             f"of different trainings?)")

    def user(self, value, name: str):
        return self.check([value], name, "user")[0]

    def check(self, values: list, name: str, kind: str) -> list:
        id_map = self.maps[kind]
        wanted: type[Any]  # str or int (entry: str when low is None, else int)
        low: int | None  # low and high: both None (strings) or both ints
        high: int | None
        if id_map.kind == "string":
            wanted, low, high = str, None, None
        else:  # the map's integer type bounds what it can hold
            dtype = id_map.ids.dtype
            bounds = np.iinfo(dtype if dtype.kind in "iu" else np.int64)
            wanted, low, high = int, int(bounds.min), int(bounds.max)
        for entry in values:
            if isinstance(entry, bool) or not isinstance(entry, wanted) or (
                    low is not None and not low <= entry <= high):
                expected = "strings" if low is None else f"integers from {low} to {high}"
                raise _BadRequest(422, f"{name} must hold {kind} ids of the training log "
                                       f"({expected}), got {type(entry).__name__} "
                                       f"{entry!r:.40}")
            if low is None and not entry.isascii():  # answers and the log echo it as UTF-8
                try:
                    entry.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate, which JSON lets "\ud800" be
                    raise _BadRequest(422, f"{name} must hold {kind} ids of valid Unicode (no "
                                           f"lone surrogate), got {entry!r:.40}") from None
        return values

    def rows(self, kind: str, values: list) -> np.ndarray:
        """The rows of ``values`` (checked ids), -1 where an id has none."""
        id_map, added = self.maps[kind], self.added[kind]
        if len(values) <= _FEW_IDS:  # one request's: one by one, each ~1 us (checked ids)
            found = [id_map.position(value) for value in values]
            return np.array([row if row >= 0 else added.get(value, -1)
                             for row, value in zip(found, values)], dtype=np.int64)
        rows = id_map.to_internal(values, missing="ignore")
        for position in np.flatnonzero(rows < 0).tolist():
            rows[position] = added.get(values[position], -1)
        return rows

    def admit(self, users: list, items: list, recommender: Recommender):
        """The rows of /events' users and items (writer only): new users are added; new
        items as ``recommender.unknown_items`` says, within its ``max_new_items``. A row
        is given before the events are observed, and taken back (``forget_since``) should
        observe refuse them."""
        user_rows, item_rows = self.rows("user", users), self.rows("item", items)
        unknown = item_rows < 0
        if unknown.any():
            new_items = {items[p] for p in np.flatnonzero(unknown).tolist()}
            if recommender.unknown_items == "reject":
                raise _BadRequest(422, f"unknown item ids {sorted(new_items)[:5]} (not in the "
                                       f"training data; unknown_items='reject')")
            room = recommender.max_new_items - len(self.added_ids["item"])
            if len(new_items) > room:
                raise _BadRequest(422, f"{len(new_items)} new item ids, room for {room} more "
                                       f"(max_new_items {recommender.max_new_items})")
            self.add("item", items, item_rows)
        self.add("user", users, user_rows)
        return user_rows, item_rows

    def mark(self) -> tuple[int, int]:
        """Where the added ids stand now, for ``forget_since``."""
        return len(self.added_ids["user"]), len(self.added_ids["item"])

    def forget_since(self, mark: tuple[int, int]) -> None:
        """Take back the rows given since ``mark`` (writer only): their events were refused,
        and a refused batch must not use up ``max_new_items``. A reader that met such a row
        meanwhile got a row the model does not know (an unknown user's popular list)."""
        for kind, kept in zip(("user", "item"), mark):
            added, order = self.added[kind], self.added_ids[kind]
            while len(order) > kept:
                del added[order[-1]]  # the dict first: a reader finding a row finds its id
                order.pop()

    def add(self, kind: str, values: list, rows: np.ndarray) -> None:
        """Give the ids without a row (``rows`` -1, updated) the next rows (writer only)."""
        added, order = self.added[kind], self.added_ids[kind]
        first = len(self.maps[kind])
        for position in np.flatnonzero(rows < 0).tolist():
            value = values[position]
            row = added.get(value)
            if row is None:
                row = first + len(order)
                order.append(value)  # before the dict: a reader finding the row finds its id
                added[value] = row
            rows[position] = row

    def external(self, kind: str, rows: np.ndarray) -> list:
        """The ids of rows (each a known or added row)."""
        id_map, order = self.maps[kind], self.added_ids[kind]
        first = len(id_map)
        if not order:  # no id added: every row is the map's
            return id_map.ids[rows].tolist()
        known = iter(id_map.ids[rows[rows < first]].tolist())
        return [next(known) if row < first else order[row - first] for row in rows.tolist()]

    def renumbered(self, new: "_Ids", add_items: bool):
        """A ``swap_model(replay=...)`` function: logged events from this version's rows to
        ``new``'s, ids it lacks added (items only with ``add_items``: else their events are
        left out, as the new model would refuse them)."""
        def renumber(events: Events) -> Events:
            users = self.external("user", events.users)
            items = self.external("item", events.items)
            user_rows, item_rows = new.rows("user", users), new.rows("item", items)
            new.add("user", users, user_rows)
            if add_items:
                new.add("item", items, item_rows)
            keep = item_rows >= 0
            return Events(user_rows[keep], item_rows[keep], events.weights[keep],
                          None if events.calls is None else events.calls[keep])

        return renumber


# ---------------------------------------------------------------------- request checks


def _integer(value, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(422, f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise _BadRequest(422, f"{name} must be {bound}, got {value}")
    if value > check.INT64_MAX:
        raise _BadRequest(422, f"{name} must be <= {check.INT64_MAX} (ids are int64), got {value}")
    return value


def _id_list(value, name: str, limit: int, naming, kind: str) -> list:
    """A list of at most ``limit`` user or item (``kind``) ids, as ``naming`` names them."""
    if not isinstance(value, list):
        raise _BadRequest(422, f"{name} must be a list of ids, got {type(value).__name__}")
    if len(value) > limit:
        raise _BadRequest(422, f"{name} has {len(value)} entries; at most {limit} are accepted")
    return naming.check(value, name, kind)


def _per_user(value, name: str, users: int) -> None:
    """``value`` (a batch's excludes or contexts) must be a list of one entry per user."""
    if not isinstance(value, list):
        raise _BadRequest(422, f"{name} must be a list with one list per user, got "
                               f"{type(value).__name__}")
    if len(value) != users:
        raise _BadRequest(422, f"{name} must have one list per user ({users}), got "
                               f"{len(value)}")


def _in_float64(value) -> bool:
    """Whether a JSON value is a number a float64 holds (JSON allows integers of any size;
    a float may still be inf or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        not isinstance(value, int) or abs(value) <= _FLOAT64_MAX)


def _calls(value: list) -> list:
    """/events calls (GET /events' "call", for a replay): integers an int64 holds."""
    for entry in value:
        if not (isinstance(entry, int) and not isinstance(entry, bool)
                and -2**63 <= entry < 2**63):
            raise _BadRequest(422, f"call must hold integers (within int64's range), got "
                                   f"{entry!r:.40}")
    return value


def _weights(value: list) -> list:
    """/events weights: numbers that fit a float64."""
    for entry in value:
        if not _in_float64(entry):
            raise _BadRequest(422, f"weight must hold numbers (within float64's range), got "
                                   f"{entry!r:.40}")
    return value


def _numbers(value, name: str, width: int) -> list:
    """A context row: ``width`` finite numbers within float32's range (the ranker's input)."""
    if width == 0:
        raise _BadRequest(422, f"{name} given, but the ranker takes no context columns")
    if not isinstance(value, list) or len(value) != width or not all(
            _in_float64(v) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in value):
        raise _BadRequest(422, f"{name} must be a list of {width} finite numbers (within "
                               f"float32's range), got {value!r:.40}")
    return value


def _fields(body, allowed: set, name: str) -> dict:
    if not isinstance(body, dict):
        raise _BadRequest(422, f"the {name} body must be a JSON object, got "
                               f"{type(body).__name__}")
    unknown = set(body) - allowed
    if unknown:
        raise _BadRequest(422, f"unknown fields {sorted(unknown)}; expected {sorted(allowed)}")
    return body


def _row(result, naming, position: int | None = None) -> dict:
    ids, scores, stages = result.ids, result.scores, result.stages
    if position is not None:
        ids, scores, stages = ids[position], scores[position], stages[position]
    keep = ids >= 0
    values = scores[keep].astype(float)
    listed = values.tolist()
    if not np.isfinite(values).all():  # a ranker's overflow: JSON has no inf, null stands in
        listed = [value if math.isfinite(value) else None for value in listed]
    return {"items": naming.external("item", ids[keep]), "scores": listed,
            "stages": stages[keep].tolist()}


# ---------------------------------------------------------------------- the app


def create_app(recommender: Recommender, *, model_path: str | None = None,
               ranker_path: str | None = None, ranker_options: dict | None = None,
               limits: Limits | None = None,
               ids: Interactions | tuple[IdMap, IdMap] | None = None) -> Starlette:
    """The Starlette app serving ``recommender``.

    ``ids``: None (requests and answers name users and items by the model's rows), or the
    training data (``Interactions``, or a pair of ``IdMap``: users, items) whose ids name
    the model's rows: requests then name users and items by those ids (the event log's,
    integers or strings), and users and items first met in /events are added. The ids
    name the rows of one model version: with ``ids``, swap models through /reload only (a
    ``recommender.swap_model`` called directly leaves the ids naming the old version's
    rows, and /recommend and /events answer 503 until a /reload).

    /reload reloads ``model_path``, a model file, or with ``ids`` a model folder
    (``recfuse train``'s: its model.npz with the ids of its train.npz; the logged events
    are replayed by their ids, whatever rows the new training gave them), and, when given,
    the ranker from ``ranker_path`` (``load_scorer(ranker_path, **ranker_options)``); else
    the ranker being served is kept."""
    limits = limits or Limits()
    if recommender.k > limits.max_k:  # else every request that gives no k would be refused
        raise ValueError(f"the recommender's k ({recommender.k}, the list length of requests "
                         f"that give none) exceeds max_k ({limits.max_k})")
    folder = model_path is not None and os.path.isdir(model_path)
    if ids is None and folder:
        raise ValueError(f"model_path {model_path!r} is a model folder: give its training "
                         f"data as ids (recfuse.persistence.load_folder reads both), so that "
                         f"requests name users and items by its ids")
    if ids is not None and model_path is not None and not folder:
        raise ValueError(f"with ids, model_path must be a model folder (model.npz and "
                         f"train.npz), so that /reload reads the ids with the model; got the "
                         f"file {model_path!r}")
    naming: dict = {"now": _Rows()}  # "now": how requests name users and items
    if ids is not None:
        named = _Ids.of(ids)
        info = recommender.info()
        named.check_sizes(info["users"], info["items"], "the recommender's model")
        state = recommender._state  # rows no id names: answers could not name them
        # list(): one step under the GIL, while an observe may be adding users
        if state.new_items is not None or any(row >= info["users"] for row in list(state.users)):
            raise ValueError("the recommender has observed users or items beyond the training "
                             "data's rows, which no id names; serve by ids a Recommender that "
                             "observed none, and give it the events by ids (POST /events)")
        named.version = info["version"]
        naming["now"] = named
    metrics = Metrics()
    batching: dict = {}  # "batcher": the MicroBatcher, once started (batcher())
    pools: dict = {}  # "readers", "writers": the thread pools, once started (pool())

    def pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
        """The /recommend readers' pool, or the one writer thread of /events, /reload and the
        log (so that one thread alone adds ids and installs models): started on first use,
        and again after a lifespan's end shut them (an app whose lifespan runs twice)."""
        if name not in pools:  # the event loop's thread alone calls this
            workers = limits.workers if name == "readers" else 1
            prefix = "recfuse-recommend" if name == "readers" else "recfuse-write"
            pools[name] = concurrent.futures.ThreadPoolExecutor(workers, prefix)
        return pools[name]

    async def body_of(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise _BadRequest(413, f"the body has {declared} bytes; at most "
                                   f"{limits.max_body_bytes} are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise _BadRequest(413, f"the body exceeds {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw:
            return {}
        try:
            return json.loads(raw, object_pairs_hook=_object_without_repeats)
        except (ValueError, UnicodeDecodeError) as error:
            raise _BadRequest(400, f"the body is not valid JSON: {error}") from None
        except RecursionError:  # e.g. [[[[...]]]] 100k deep: the client's input, not a bug
            raise _BadRequest(400, "the body nests JSON arrays or objects too deeply; "
                                   "expected a flat object") from None

    def timed(route: str, handler):
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except _BadRequest as error:
                response = JSONResponse({"error": error.message}, status_code=error.status)
            except ClientDisconnect:  # it went away mid-body: nobody to answer, nothing to log
                response = JSONResponse({"error": "the client disconnected before its body "
                                                  "was complete"}, status_code=400)
            except asyncio.CancelledError:  # serve's shutdown_timeout ran out on this one
                response = JSONResponse({"error": "the server is shutting down"},
                                        status_code=503)
            except (ValueError, TypeError) as error:  # the recommender refused the input
                response = JSONResponse({"error": str(error)}, status_code=422)
            except Exception as error:  # noqa: BLE001 - the server must keep running
                LOG.exception("%s failed", route)
                response = JSONResponse({"error": f"internal error: {type(error).__name__}"},
                                        status_code=500)
            metrics.record(route, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    async def recommend(request: Request) -> Response:
        body = _fields(await body_of(request), {"user", "users", "k", "exclude", "excludes",
                                                 "context", "contexts"}, "/recommend")
        single = sorted({"user", "exclude", "context"} & set(body))
        many = sorted({"users", "excludes", "contexts"} & set(body))
        if single and many:  # one of them would be ignored: an exclude list, say
            raise _BadRequest(422, f"give 'user' (with 'exclude', 'context') or 'users' (with "
                                   f"'excludes', 'contexts'), not both: got {single + many}")
        given = body.get("k")  # null: not given, as for exclude and context
        k = _integer(recommender.k if given is None else given, "k", 1, limits.max_k)
        width = recommender.context_width
        if "users" in body:
            return await recommend_many(body, k, width)
        if "user" not in body:
            raise _BadRequest(422, "give 'user' (one id) or 'users' (a list of ids)")
        user = naming["now"].user(body["user"], "user")
        exclude = body.get("exclude")
        if exclude is not None:
            exclude = _id_list(exclude, "exclude", limits.max_exclude, naming["now"], "item")
        context = body.get("context")
        if width and context is None:
            raise _BadRequest(422, f"context is required: a list of {width} numbers")
        if context is not None:
            context = _numbers(context, "context", width)
        for _ in range(_MODEL_CHANGES):
            named = naming["now"]
            row = int(_user_rows(named, [user])[0])
            rows = None if exclude is None else _item_rows(named, exclude)
            # the requests of one event-loop turn are queued together, with one wake-up
            result = await batcher().submit_async(row, k, rows, context)
            if named.version in (None, result.version):
                return JSONResponse({"user": user, **_row(result, named),
                                     "model_version": result.version})
            await asyncio.sleep(0.001)  # a reload is installing its ids
        raise _BadRequest(503, "the model kept changing during the request; try again")

    async def recommend_many(body: dict, k: int, width: int) -> Response:
        users = _id_list(body["users"], "users", limits.max_batch, naming["now"], "user")
        excludes = body.get("excludes")
        if excludes is not None:
            _per_user(excludes, "excludes", len(users))
            excludes = [None if e is None else
                        _id_list(e, f"excludes[{p}]", limits.max_exclude, naming["now"], "item")
                        for p, e in enumerate(excludes)]
        contexts = body.get("contexts")
        if width and contexts is None:
            raise _BadRequest(422, f"contexts are required: one list of {width} numbers per user")
        if contexts is not None:
            _per_user(contexts, "contexts", len(users))
            contexts = np.array([_numbers(c, f"contexts[{p}]", width)
                                 for p, c in enumerate(contexts)],
                                dtype=np.float32).reshape(len(users), width)

        def answer():
            for _ in range(_MODEL_CHANGES):
                named = naming["now"]
                rows = [None if e is None else _item_rows(named, e) for e in excludes] \
                    if excludes is not None else None
                result = recommender.recommend_batch(_user_rows(named, users), k, rows,
                                                     contexts)
                if named.version in (None, result.version):
                    return named, result
                time.sleep(0.001)  # a reload is installing its ids
            raise _BadRequest(503, "the model kept changing during the request; try again")

        loop = asyncio.get_running_loop()
        named, result = await loop.run_in_executor(pool("readers"), answer)
        metrics.record_batch(len(users))
        return JSONResponse({"results": [{"user": u, **_row(result, named, p)}
                                         for p, u in enumerate(users)],
                             "model_version": result.version})

    async def events(request: Request) -> Response:
        if request.method != "POST":
            return await logged(request)
        body = _fields(await body_of(request), {"user", "item", "weight", "call"}, "/events")
        if "user" not in body or "item" not in body:
            raise _BadRequest(422, "events need 'user' and 'item' (lists of ids, or one id each)")
        columns = {}
        for name in ("user", "item", "weight", "call"):
            if name not in body:
                continue
            value = body[name]
            value = value if isinstance(value, list) else [value]
            if len(value) > limits.max_events:
                raise _BadRequest(422, f"{name} has {len(value)} entries; at most "
                                       f"{limits.max_events} events are accepted per request")
            if name == "weight":
                columns[name] = np.array(_weights(value), dtype=np.float64)
            elif name == "call":
                columns[name] = np.array(_calls(value), dtype=np.int64)
            else:
                columns[name] = naming["now"].check(value, name, name)
        lengths = [len(column) for column in columns.values()]
        if len(set(lengths)) > 1:  # before any id is given a row
            raise _BadRequest(422, f"events {', '.join(columns)} must have the same length, "
                                   f"got {', '.join(map(str, lengths))}")
        loop = asyncio.get_running_loop()
        accepted = await loop.run_in_executor(pool("writers"), observe, columns)
        info = recommender.info()
        return JSONResponse({"accepted": accepted, "pending_events": info["pending_events"],
                             "model_version": info["version"]})

    async def logged(request: Request) -> Response:
        """GET: the logged events (by the ids requests use); DELETE: the same, taken out of
        the log (for a retrain: events arriving meanwhile stay for the next one)."""
        _fields(await body_of(request), set(), f"{request.method} /events")

        def read() -> dict:  # in the writer thread: rows and ids of one model version
            named = current_naming(naming["now"])
            taken = recommender.pending_events(clear=request.method == "DELETE")
            assert taken.calls is not None  # the log numbers the calls of its events
            return {"user": named.external("user", taken.users),
                    "item": named.external("item", taken.items),
                    "weight": taken.weights.tolist(),
                    "call": taken.calls.tolist(),  # the observe call of each
                    "dropped_events": recommender.dropped_events,
                    "model_version": recommender.version}

        loop = asyncio.get_running_loop()
        return JSONResponse(await loop.run_in_executor(pool("writers"), read))

    def current_naming(named):
        """``named`` when its ids name the rows of the model now served (writer thread)."""
        if named.version not in (None, recommender.version):
            raise _BadRequest(503, f"the ids name the rows of model version {named.version}, "
                                   f"the model served is version {recommender.version} (swapped "
                                   f"without /reload); POST /reload")
        return named

    def observe(columns: dict) -> int:
        """/events in the writer thread (which alone adds ids, and installs reloads)."""
        named = current_naming(naming["now"])
        mark, applied = named.mark(), recommender.observed_calls

        def take_back_ids() -> None:
            # A refused batch changes nothing, not even the ids. A replay (events with "call")
            # that stopped at a later group keeps the groups before it applied and logged:
            # their ids keep their rows (and so do the rest's, given but unused).
            if recommender.observed_calls == applied:
                named.forget_since(mark)

        users, items = named.admit(columns["user"], columns["item"], recommender)
        try:
            return recommender.observe({**columns, "user": users, "item": items})
        except UserEventError as error:  # by the user's id, not its row
            name = named.external("user", np.array([error.user], dtype=np.int64))[0]
            take_back_ids()
            raise _BadRequest(422, error.naming(repr(name))) from None
        except BaseException:
            take_back_ids()
            raise

    async def reload(request: Request) -> Response:
        _fields(await body_of(request), set(), "/reload")
        if model_path is None:
            raise _BadRequest(422, "this server was not started from a model file; nothing to "
                                   "reload")

        def reload_files() -> int:  # in the writer thread: loading takes a while
            options: dict[str, Any] = {}
            if ranker_path is not None:
                options["ranker"] = load_scorer(ranker_path, **(ranker_options or {}))
            if not folder:
                return recommender.swap_model(model_path, **options)
            model, train = load_folder(model_path)  # refused unless trained on train
            named, current = _Ids.of(train), naming["now"]
            for kind in ("user", "item"):  # requests and the log name ids of one kind
                now, then = named.maps[kind].kind, current.maps[kind].kind
                if now != then:
                    raise ValueError(f"the folder's training data names {kind}s by {now} "
                                     f"ids, the served model by {then} ids; restart the "
                                     f"server to change the kind of ids")
            renumber = current.renumbered(named, recommender.unknown_items == "add")
            version = recommender.swap_model(model, replay=renumber, **options)
            named.version = version
            naming["now"] = named
            return version

        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(pool("writers"), reload_files)
        except (ValueError, TypeError, OSError, KeyError) as error:
            raise _BadRequest(422, f"the model was not reloaded ({error}); still serving "
                                   f"version {recommender.version}") from None
        return JSONResponse({"model_version": version})

    async def health(request: Request) -> Response:
        info = recommender.info()
        if folder:  # the model object loaded from it
            info["source"] = model_path
        return JSONResponse({"status": "ok", **info,
                             "ids": "rows" if ids is None else "training log"})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(recommender),
                                 media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, error: HTTPException) -> Response:
        message, path = error.detail, request.url.path
        # counted under its route, or one label for every unknown path (the paths are the
        # client's: a label each would grow the metrics without bound)
        paths = [route.path for route in routes]
        metrics.count(path if path in paths else "(no route)", error.status_code)
        if error.status_code == 404:
            message = f"no route {path}; expected one of {paths}"
        elif error.status_code == 405 and error.headers and "Allow" in error.headers:
            message = f"{request.method} {path} is not allowed; expected {error.headers['Allow']}"
        # a 405 keeps its Allow header (HTTP requires it)
        return JSONResponse({"error": message}, status_code=error.status_code,
                            headers=error.headers)

    def batcher() -> MicroBatcher:
        """The MicroBatcher: started by the lifespan, or by the first request when the app
        runs without its lifespan (mounted in another app, whose lifespan does not reach it)."""
        if "batcher" not in batching:
            batching["batcher"] = MicroBatcher(
                recommender, max_batch=limits.max_micro_batch, max_wait=limits.batch_wait,
                workers=limits.workers, on_batch=metrics.record_batch)
        return batching["batcher"]

    def close_workers() -> None:
        """The batcher's workers and the thread pools end (they start again on demand)."""
        if "batcher" in batching:
            batching.pop("batcher").close()
        for name in list(pools):
            pools.pop(name).shutdown(wait=False)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher()
        try:
            yield
        finally:
            close_workers()

    routes = [
        Route("/recommend", timed("/recommend", recommend), methods=["POST"]),
        Route("/events", timed("/events", events), methods=["POST", "GET", "DELETE"]),
        Route("/reload", timed("/reload", reload), methods=["POST"]),
        Route("/health", timed("/health", health), methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    # starlette types a handler as taking any Exception; it calls this one with its class's
    handlers = {HTTPException: cast("HTTPExceptionHandler", http_error)}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.recommender = recommender
    app.state.naming = naming  # "now": the ids (or rows) requests use
    app.state.metrics = metrics
    app.state.close_workers = close_workers  # serve runs without the lifespan: see there
    return app


def _user_rows(named, users: list) -> np.ndarray:
    """The rows of users; an unknown user gets a row no user has (the popular list)."""
    rows = named.rows("user", users)
    rows[rows < 0] = _UNKNOWN_USER
    return rows


def _item_rows(named, items: list) -> np.ndarray:
    """The rows of items to exclude; unknown ones left out (they cannot be recommended)."""
    rows = named.rows("item", items)
    return rows[rows >= 0]


def http_stack() -> dict:
    """What uvicorn runs on here: {"http": "httptools" or "h11", "loop": "uvloop" or
    "asyncio"} (the faster ones come with the serve extra; uvicorn falls back by itself)."""
    found = {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop")}
    return {"http": "httptools" if found["httptools"] else "h11",
            "loop": "uvloop" if found["uvloop"] else "asyncio"}


def _http_protocol(max_header_bytes: int):
    """uvicorn's ``http`` setting for ``serve``: h11 (given ``max_header_bytes`` as its
    h11_max_incomplete_event_size), or where httptools is installed its protocol with the same
    cap. httptools itself buffers a request's line and headers whole, however long: one
    100 MB header line was held in memory before the request reached the app."""
    if http_stack()["http"] != "httptools":
        return "h11"
    from uvicorn.protocols.http import httptools_impl

    class BoundedHeaders(httptools_impl.HttpToolsProtocol):
        """Counts the bytes that arrive while a request's headers are incomplete (from the
        chunk after the one its first byte came in, so at most one read over the cap) and
        answers 431 once they pass the cap."""

        _header_bytes = 0
        _in_headers = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes, self._in_headers = 0, True

        def on_headers_complete(self) -> None:
            self._in_headers = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            self._header_bytes += len(data)
            super().data_received(data)
            if (self._in_headers and self._header_bytes > max_header_bytes
                    and not self.transport.is_closing()):
                self._in_headers = False
                message = f"the request line and headers exceed {max_header_bytes} bytes"
                self.transport.write(
                    httptools_impl.STATUS_LINE[431] + b"content-type: text/plain; "
                    b"charset=utf-8\r\nconnection: close\r\ncontent-length: "
                    + str(len(message)).encode() + b"\r\n\r\n" + message.encode())
                self.transport.close()

    return BoundedHeaders


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host`` (a name or an address) and ``port`` (0..65535) and
    listening, for ``serve``. Raises ``socket.gaierror`` when the host does not resolve,
    ``OSError`` when the address cannot be bound (e.g. the port is in use)."""
    port = check.check_int(port, "port", minimum=0, maximum=65535)
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        sock.bind(address)
        # listening already: a client that connects as soon as the address is named is
        # queued, not refused (uvicorn's backlog, which it sets again when it serves)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def serve(recommender: Recommender, *, host: str = "127.0.0.1", port: int = 8000,
          model_path: str | None = None, ranker_path: str | None = None,
          ranker_options: dict | None = None, limits: Limits | None = None,
          log_level: str = "warning", sock: socket.socket | None = None,
          shutdown_timeout: float = 10.0,
          ids: Interactions | tuple[IdMap, IdMap] | None = None) -> None:
    """Run the API with uvicorn until interrupted (``create_app`` for the arguments) on
    ``sock`` (``listening_socket``; by default one bound to ``host`` and ``port`` here).
    On SIGTERM or SIGINT, requests in flight get ``shutdown_timeout`` seconds to finish
    (a client that stops halfway through its request would hold the exit forever), then
    ``serve`` returns: the signal does not end the process afterwards (``recfuse serve``
    exits 0), unless a SIGTERM handler of the caller's own was in place (it is called)."""
    shutdown_timeout = check.check_float(shutdown_timeout, "shutdown_timeout", minimum=0.0)
    app = None
    try:
        # from here on a SIGTERM ends serve as Ctrl-C does (set-up included: a supervisor
        # that stops the server as soon as it is started gets status 0, not 143)
        with _sigterm_returns():
            app = create_app(recommender, model_path=model_path, ranker_path=ranker_path,
                             ranker_options=ranker_options, limits=limits, ids=ids)
            if sock is None:
                sock = listening_socket(host, port)
            # Everything loaded so far lives as long as the process: out of the cyclic
            # collector's sight, so its full passes stop walking it (3.5% -> 1% of the
            # server's CPU samples).
            gc.collect()
            gc.freeze()
            # uvicorn annotates the timeout int but passes it to asyncio.wait_for (a float is
            # fine). No lifespan: a second Ctrl-C (uvicorn's forced exit) skips its shutdown
            # and the task left running is logged as a failure with a traceback; the batcher
            # starts with the first request instead, and the workers end below, whichever way
            # the server stopped.
            header_bytes = (limits or Limits()).max_header_bytes
            config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                    access_log=False,
                                    timeout_graceful_shutdown=cast(int, shutdown_timeout),
                                    lifespan="off", http=_http_protocol(header_bytes),
                                    h11_max_incomplete_event_size=header_bytes)
            with sock:
                uvicorn.Server(config).run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):  # as uvicorn.run: Ctrl-C ends the server quietly
        pass
    finally:
        if app is not None:
            app.state.close_workers()


class _Terminated(BaseException):
    """A SIGTERM that ended ``serve`` (not an Exception: nothing on the way may catch it)."""


@contextlib.contextmanager
def _sigterm_returns():
    """After a graceful shutdown uvicorn raises the signal that asked for it again, once its
    own handler is gone: with the default SIGTERM handler the process then dies of it
    (status 143) after a clean exit. Meanwhile a handler raising ``_Terminated`` stands in
    for the default one (in the main thread only, and only over the default one), so that
    the signal, re-raised or arriving before uvicorn listens for it, ends ``serve`` by an
    exception ``serve`` catches."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminated(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

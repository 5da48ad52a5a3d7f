"""Data sets: a deterministic synthetic implicit-feedback generator and MovieLens readers.

MovieLens files are never bundled (their terms forbid redistribution): pass the folder
where you unpacked them, e.g. ``load_movielens("~/data/ml-100k")``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.sparse as sp
from numpy.typing import DTypeLike

from . import _validation as check
from ._typing import Integer, RandomState
from .interactions import Interactions


def synthetic_implicit(
    n_users: Integer = 2000,
    n_items: Integer = 1000,
    nnz: Integer = 60_000,
    *,
    clusters: Integer = 20,
    affinity: float = 0.7,
    popularity_exponent: float = 0.8,
    activity_exponent: float = 0.6,
    seed: RandomState = 0,
    dtype: DTypeLike = np.float32,
) -> sp.csr_matrix:
    """A users x items CSR matrix of interaction counts with structure a model can learn.

    Item popularity and user activity follow power laws (Zipf-like weights with the given
    exponents). Items fall into ``clusters`` groups and every user has a favourite group: a
    fraction ``affinity`` of the user's events go to that group, the rest anywhere. Repeated
    (user, item) draws add up, so values are counts >= 1. Exactly ``nnz`` stored entries
    unless the pairs that can be drawn run out: the matrix is nearly dense, or steep
    exponents (1.5 and above, for the default sizes) put almost all the probability on a few
    users and items. The draws then stop after a bounded number of rounds and a UserWarning
    says how many entries were made. Deterministic for a given seed.

    >>> m = synthetic_implicit(100, 50, 1000, seed=1)
    >>> m.shape, m.nnz
    ((100, 50), 1000)
    """
    n_users, n_items, nnz = _sizes(n_users, n_items, nnz, "nnz")
    clusters = min(check.check_int(clusters, "clusters", minimum=1), n_items)
    affinity = _affinity(affinity)
    dtype = check.check_float_dtype(dtype)
    rng = check.seeded_rng(seed)
    popularity_exponent = _exponent(popularity_exponent, "popularity_exponent")
    activity_exponent = _exponent(activity_exponent, "activity_exponent")

    with np.errstate(over="ignore"):  # a rank ** exponent beyond float64: weight 0
        item_weight = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
        user_weight = 1.0 / np.arange(1, n_users + 1) ** activity_exponent
    item_weight = item_weight[rng.permutation(n_items)]  # popularity unrelated to id order
    user_weight = user_weight[rng.permutation(n_users)]

    item_cluster = rng.integers(0, clusters, n_items)
    user_cluster = rng.integers(0, clusters, n_users)

    sampler = _ClusteredSampler(rng, user_weight, item_weight, user_cluster, item_cluster, affinity)
    matrix = sp.csr_matrix((n_users, n_items), dtype=dtype)
    target = min(nnz, n_users * n_items)
    # Repeated pairs merge into counts, so draw again until `target` distinct pairs exist
    # (a bounded number of rounds: a nearly dense target may end a little short).
    for _ in range(64):
        if matrix.nnz >= target:
            break
        draws = int((target - matrix.nnz) * 1.1) + 16
        users, items = sampler.draw(draws)
        matrix = matrix + sp.csr_matrix(
            (np.ones(draws, dtype=dtype), (users, items)), shape=(n_users, n_items), dtype=dtype
        )
    if matrix.nnz > target:  # drop a random surplus so the size is exact
        coo = matrix.tocoo()
        keep = np.sort(rng.choice(coo.nnz, size=target, replace=False))
        matrix = sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=(n_users, n_items)
        )
    matrix.sum_duplicates()
    _warn_if_short("synthetic_implicit", matrix.nnz, nnz, target, "nnz")
    return matrix


def _warn_if_short(function: str, made: int, asked: int, target: int, name: str) -> None:
    """A UserWarning when a generator made fewer distinct pairs than ``target`` (``asked``,
    or every pair of the matrix when fewer)."""
    if made < target:
        warnings.warn(f"{function} made {made} entries of the {asked} asked for ({name}): "
                      f"repeated draws of the same pairs ran out of rounds; lower "
                      f"popularity_exponent / activity_exponent (steep power laws put nearly "
                      f"all draws on a few users and items) or {name}", UserWarning,
                      stacklevel=3)


class _ClusteredSampler:
    """Draws (user, item) events: users by activity, items by popularity, a share of each
    user's events inside the user's favourite item cluster."""

    def __init__(self, rng, user_weight, item_weight, user_cluster, item_cluster, affinity):
        self.rng, self.affinity = rng, affinity
        self.user_p = user_weight / user_weight.sum()
        self.item_p = item_weight / item_weight.sum()
        self.user_cluster = user_cluster
        self.order = np.argsort(item_cluster, kind="stable")
        clusters = int(max(item_cluster.max(), user_cluster.max())) + 1
        self.bounds = np.searchsorted(item_cluster[self.order], np.arange(clusters + 1))
        self.cumulative = np.concatenate([[0.0], np.cumsum(item_weight[self.order])])

    def draw(self, count: int):
        rng = self.rng
        users = rng.choice(self.user_p.size, size=count, p=self.user_p)
        items = rng.choice(self.item_p.size, size=count, p=self.item_p)
        inside = rng.random(count) < self.affinity
        wanted = self.user_cluster[users[inside]]
        first, last = self.bounds[wanted], self.bounds[wanted + 1]
        has_items = last > first
        low, high = self.cumulative[first], self.cumulative[last]
        position = np.searchsorted(self.cumulative, low + rng.random(wanted.size) * (high - low),
                                   side="right") - 1
        position = np.clip(position, first, np.maximum(last - 1, first))
        redrawn = items[inside]
        redrawn[has_items] = self.order[position[has_items]]
        items[inside] = redrawn
        return users, items


def train_test_split_per_user(matrix: sp.csr_matrix, test_fraction: float = 0.2,
                              seed: RandomState = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each user's entries at random into train and test CSR matrices (same shape)."""
    test_fraction = check.check_float(test_fraction, "test_fraction", minimum=0.0)
    if test_fraction >= 1:
        raise ValueError(f"test_fraction must be < 1, got {test_fraction}")
    coo = check.check_csr(check.to_csr(matrix, "matrix"), "matrix", dtype=matrix.dtype).tocoo()
    rng = check.seeded_rng(seed)
    is_test = rng.random(coo.nnz) < test_fraction
    def part(mask):
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=matrix.shape)
    return part(~is_test), part(is_test)


def load_movielens_100k(path: str | os.PathLike[str], min_rating: float | None = None
                        ) -> sp.csr_matrix:
    """Read ml-100k's ``u.data`` into a users x items CSR of ratings (ids shifted to 0-based).

    ``min_rating`` keeps only ratings >= it (e.g. 4 for implicit-feedback experiments). A
    (user, item) pair rated twice keeps its latest rating (the larger time, then the later
    line), as ``load_movielens`` does. Raises FileNotFoundError naming where to get the data
    when the folder is missing, ValueError naming the file when it is not u.data's format
    (ids from 1 to 2**31 - 1; three or four fields a line, more are refused as
    ``load_movielens`` refuses them).
    """
    if min_rating is not None:
        min_rating = check.check_float(min_rating, "min_rating")
    file = os.path.join(_folder(path), "u.data")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"MovieLens 100K not found: expected {file!r}. Download ml-100k.zip from GroupLens "
            "(https://grouplens.org/datasets/movielens/) and unpack it there."
        )
    expected = f"{file!r} must hold tab-separated lines of user, item, rating (and time)"
    with warnings.catch_warnings():  # an empty file: refused below, with its name
        warnings.simplefilter("ignore", UserWarning)
        try:  # comments=None: a '#' is not a comment in u.data, but a broken line
            raw = np.loadtxt(file, dtype=np.int64, delimiter="\t", ndmin=2, comments=None,
                             encoding="utf-8-sig")  # a byte-order mark is not part of an id
        except ValueError as error:  # a short line, a word for a number: found by line
            detail = _first_bad_u_data_line(file) or str(error).split("; use `usecols`")[0]
            raise ValueError(f"{expected}: {detail}") from None
    if raw.shape[0] == 0 or not 3 <= raw.shape[1] <= 4:  # more: not u.data (as load_movielens)
        # loadtxt has checked that every line has as many fields: the first is one of them
        first = f", e.g. line {_line_of_row(_loadtxt_rows(file), 0)}" if raw.shape[0] else ""
        raise ValueError(f"{expected}, got {raw.shape[0]} lines of {raw.shape[1]} fields{first}")
    for column, name in ((0, "user"), (1, "item")):
        ids = raw[:, column]
        bad = np.flatnonzero((ids < 1) | (ids > check.INT32_MAX))
        if bad.size:
            raise ValueError(f"{expected}: {name} ids must be in [1, {check.INT32_MAX}], got "
                             f"{ids[bad[0]]} on line "
                             f"{_line_of_row(_loadtxt_rows(file), int(bad[0]))}")
    shape = (int(raw[:, 0].max()), int(raw[:, 1].max()))  # of every line, kept or not
    check.check_count_fits(shape[0], "the largest user id", 8)  # the CSR's row pointers
    if min_rating is not None:
        raw = raw[raw[:, 2] >= min_rating]
    users, items = raw[:, 0] - 1, raw[:, 1] - 1
    # Each pair's latest rating: by pair, then time (when given), then line; the last of each.
    times = raw[:, 3] if raw.shape[1] > 3 else np.zeros(raw.shape[0], np.int64)
    order = np.lexsort((times, items, users))
    users, items, times = users[order], items[order], times[order]
    last = np.ones(order.size, dtype=bool)
    last[:-1] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    ratings = raw[order[last], 2].astype(np.float32)
    return sp.csr_matrix((ratings, (users[last], items[last])), shape=shape)


# ---------------------------------------------------------------------------- explicit ratings
def synthetic_explicit(
    n_users: Integer = 2000,
    n_items: Integer = 1000,
    n_ratings: Integer = 60_000,
    *,
    factors: Integer = 8,
    noise: float = 0.5,
    popularity_exponent: float = 0.8,
    activity_exponent: float = 0.6,
    seed: RandomState = 0,
    dtype: DTypeLike = np.float32,
) -> sp.csr_matrix:
    """A users x items CSR matrix of ratings 1..5 generated by a biased latent-factor model.

    Users are drawn by activity and items by popularity (power laws with the given
    exponents), pairs are distinct. Each rating is round(3.5 + b_u + b_i + p_u·q_i + ε)
    clipped to [1, 5], with biases b ~ N(0, 0.3²) (popular items a little better),
    ``factors``-dimensional p_u, q_i ~ N(0, 1/factors) and ε ~ N(0, noise²), so a
    rating model can beat the global mean. Exactly ``n_ratings`` entries unless the pairs that
    can be drawn run out (a nearly dense matrix, or steep exponents: a UserWarning then says
    how many were made, as ``synthetic_implicit``); deterministic for a seed; about a second
    per 10M ratings.

    >>> m = synthetic_explicit(100, 50, 1000, seed=1)
    >>> m.shape, m.nnz, float(m.data.min()) >= 1, float(m.data.max()) <= 5
    ((100, 50), 1000, True, True)
    """
    from .interactions import group_events

    n_users, n_items, n_ratings = _sizes(n_users, n_items, n_ratings, "n_ratings")
    factors = check.check_int(factors, "factors", minimum=1)
    check.check_count_fits((n_users + n_items) * factors, "factors", 16)
    noise = check.check_float(noise, "noise", minimum=0.0)
    dtype = check.check_float_dtype(dtype)
    rng = check.seeded_rng(seed)
    user_p = _power_law(n_users, _exponent(activity_exponent, "activity_exponent"), rng)
    item_p = _power_law(n_items, _exponent(popularity_exponent, "popularity_exponent"), rng)
    target = min(n_ratings, n_users * n_items)
    users = np.zeros(0, np.int32)
    items = np.zeros(0, np.int32)
    for _ in range(64):  # distinct pairs: draw, drop repeats, top up
        if users.size >= target:
            break
        draws = int((target - users.size) * 1.1) + 16
        users = np.concatenate([users, _draw(rng, user_p, draws, shuffle=False)])
        items = np.concatenate([items, _draw(rng, item_p, draws)])
        indptr, indices, _, _, _ = group_events(users, items, n_users=n_users,
                                                n_items=n_items, combine="count")
        users = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(indptr))
        items = indices
    if users.size > target:  # drop a random surplus
        keep = np.ones(users.size, dtype=bool)
        keep[rng.choice(users.size, size=users.size - target, replace=False)] = False
        users, items = users[keep], items[keep]
    scale = 1.0 / np.sqrt(factors)
    user_vectors = rng.normal(0, scale, (n_users, factors)).astype(np.float32)
    item_vectors = rng.normal(0, scale, (n_items, factors)).astype(np.float32)
    user_bias = rng.normal(0, 0.3, n_users).astype(np.float32)
    item_bias = (rng.normal(0, 0.3, n_items) + 0.2 * (item_p / item_p.max())).astype(np.float32)
    ratings = np.empty(users.size, dtype=dtype)
    for begin in range(0, users.size, 1 << 20):
        u, i = users[begin:begin + (1 << 20)], items[begin:begin + (1 << 20)]
        raw = (3.5 + user_bias[u] + item_bias[i]
               + np.einsum("ij,ij->i", user_vectors[u], item_vectors[i]))
        if noise:
            raw += rng.normal(0, noise, u.size).astype(np.float32)
        ratings[begin:begin + u.size] = np.clip(np.rint(raw), 1, 5)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
    _warn_if_short("synthetic_explicit", users.size, n_ratings, target, "n_ratings")
    return sp.csr_matrix((ratings, items, indptr), shape=(n_users, n_items))


def synthetic_event_log(
    n_users: Integer = 2000,
    n_items: Integer = 1000,
    n_events: Integer = 60_000,
    *,
    clusters: Integer = 20,
    affinity: float = 0.7,
    days: float = 90.0,
    seed: RandomState = 0,
) -> dict[str, np.ndarray]:
    """An event log like the ones users bring: string user and item ids, timestamps and
    event types (view / click / purchase, about 80 / 15 / 5%), with the power-law and
    cluster structure of ``synthetic_implicit``. Returns a dict of column -> array that
    ``recfuse.Interactions.from_events`` (or ``pandas.DataFrame``) reads.

    >>> log = synthetic_event_log(10, 5, 20, seed=0)
    >>> sorted(log), len(log["user"])
    (['event', 'item', 'timestamp', 'user'], 20)
    """
    # an event: its times, type and two labels of 100 bytes each (and their making)
    n_users, n_items, n_events = _sizes(n_users, n_items, n_events, "n_events", 400)
    clusters = min(check.check_int(clusters, "clusters", minimum=1), n_items)
    affinity = _affinity(affinity)
    days = check.check_float(days, "days", minimum=0.0, strict=True)
    if days > _EVENT_LOG_MAX_DAYS:
        raise ValueError(f"days must be <= {_EVENT_LOG_MAX_DAYS} (times from "
                         f"{_EVENT_LOG_START} up to {_NANOSECOND_TIMES_END}, the last "
                         f"datetime64[ns] that pandas and Interactions read), got {days}")
    rng = check.seeded_rng(seed)
    sampler = _ClusteredSampler(rng, _power_law(n_users, 0.6, rng), _power_law(n_items, 0.8, rng),
                                rng.integers(0, clusters, n_users),
                                rng.integers(0, clusters, n_items), affinity)
    users, items = sampler.draw(n_events)
    start = _EVENT_LOG_START
    seconds = np.sort(rng.random(n_events) * days * 86400).astype(np.int64)
    kinds = np.array(["view", "click", "purchase"])
    return {
        "user": _labels("user", users, n_users) if n_events else np.zeros(0, "U1"),
        "item": _labels("item", items, n_items) if n_events else np.zeros(0, "U1"),
        "timestamp": start + seconds.astype("timedelta64[s]"),
        "event": kinds[np.searchsorted([0.80, 0.95], rng.random(n_events), side="right")],
    }


_EVENT_LOG_START = np.datetime64("2024-01-01T00:00:00", "s")
_NANOSECOND_TIMES_END = np.datetime64(np.iinfo(np.int64).max, "ns").astype("datetime64[s]")
_EVENT_LOG_MAX_DAYS = int((_NANOSECOND_TIMES_END - _EVENT_LOG_START).astype(np.int64) // 86400)


def _affinity(value) -> float:
    """The share of a user's events inside the favourite cluster: a number in [0, 1]."""
    affinity = check.check_float(value, "affinity", minimum=0.0)
    if affinity > 1:
        raise ValueError(f"affinity must be in [0, 1], got {affinity}")
    return affinity


def _labels(prefix: str, ids: np.ndarray, count: int) -> np.ndarray:
    """``prefix`` + the id as text for each id in [0, count): the labels made once and
    gathered (8x faster than formatting 600k ids one by one; the same strings and dtype),
    for the ids drawn only when they are fewer than ``count`` (a label takes 100 bytes and
    more: 2**27 users drawn by 10 events must not cost 25 GiB of labels)."""
    if count <= ids.size:
        return np.char.add(prefix, np.arange(count).astype(str))[ids]
    drawn, positions = np.unique(ids, return_inverse=True)
    return np.char.add(prefix, drawn.astype(str))[positions]


def _sizes(n_users, n_items, count, count_name: str,
           count_bytes: int = 32) -> tuple[int, int, int]:
    """(n_users, n_items, count) checked: ids within int32 (what the models take), and the
    generator's arrays (about 40 bytes per user and item, ``count_bytes`` per event: they
    live together, so their sum) within this machine's memory, refused up front rather
    than by the allocator."""
    n_users = check.check_int(n_users, "n_users", minimum=1, maximum=check.INT32_MAX)
    n_items = check.check_int(n_items, "n_items", minimum=1, maximum=check.INT32_MAX)
    count = check.check_int(count, count_name, minimum=0)
    check.check_counts_fit((n_users, "n_users", 40), (n_items, "n_items", 40),
                           (count, count_name, count_bytes))
    return n_users, n_items, count


def _exponent(value, name: str) -> float:
    """A power-law exponent: a float (an int would be raised to the power in int64 and
    overflow) >= 0."""
    return check.check_float(value, name, minimum=0.0)


def _power_law(n: int, exponent: float, rng) -> np.ndarray:
    """Zipf-like probabilities 1/rank^exponent in a random order (0 where rank^exponent is
    beyond float64)."""
    with np.errstate(over="ignore"):
        weight = 1.0 / np.arange(1, n + 1) ** exponent
    weight = weight[rng.permutation(n)]
    return weight / weight.sum()


def _draw(rng, p: np.ndarray, count: int, shuffle: bool = True) -> np.ndarray:
    """``count`` independent draws from the distribution ``p`` as int32: how often each
    value comes is multinomial, the order a random permutation (``shuffle=False``: sorted).
    Much faster than rng.choice for millions of draws over many categories."""
    counts = rng.multinomial(count, p / p.sum())
    values = np.repeat(np.arange(p.size, dtype=np.int32), counts)
    return rng.permutation(values) if shuffle else values


# ---------------------------------------------------------------------------- MovieLens
MOVIELENS_URL = "https://grouplens.org/datasets/movielens/"
# file in the folder -> (separator, has a header row); checked in this order
_MOVIELENS_FILES = (("u.data", "\t", False), ("ratings.dat", "::", False),
                    ("ratings.csv", ",", True))


def load_movielens(path: str | os.PathLike[str], *, min_rating: float | None = None,
                   weighting: str = "none") -> Interactions:
    """Read a MovieLens folder (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest or
    ml-latest-small, as unpacked from GroupLens) into ``recfuse.Interactions``.

    Ids are MovieLens' own user and movie ids (ints), values the ratings (0.5..5), and
    timestamps the rating times. ``min_rating`` keeps ratings >= it (e.g. 4 for implicit
    feedback). ``weighting`` is that of ``Interactions.weighted`` ("none": the ratings); a
    pair rated twice keeps its latest rating. Nothing is downloaded: a missing folder raises
    FileNotFoundError saying where to get the data. A file that is not MovieLens' format (a
    line without its four fields or with more, a word for a number, a time beyond
    ±9223372036 seconds) is a ValueError naming the file and the line; a separator ending a
    line (an empty fifth field) ends it, and blank lines are skipped.

    >>> log = load_movielens("~/data/ml-100k")          # doctest: +SKIP
    >>> log.shape                                       # doctest: +SKIP
    (943, 1682)
    """
    from .interactions import Interactions

    if min_rating is not None:  # checked before any data is read
        min_rating = check.check_float(min_rating, "min_rating")
    folder = _folder(path)
    for name, separator, header in _MOVIELENS_FILES:
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            break
    else:
        raise FileNotFoundError(
            f"no MovieLens ratings in {folder!r}: expected u.data (ml-100k), ratings.dat "
            f"(ml-1m, ml-10m) or ratings.csv (ml-20m, ml-25m, ml-latest). Download a zip "
            f"from {MOVIELENS_URL} and unpack it, then pass the folder that holds that file."
        )
    frame = _read_ratings(file, separator, header)
    if min_rating is not None:
        ratings = frame["rating"].to_numpy(np.float64)  # float32 would overflow for 1e300
        kept = ratings >= min_rating
        if not kept.any():
            raise ValueError(f"min_rating = {min_rating} keeps none of the {ratings.size} "
                             f"ratings in {file!r} (they range from {ratings.min():g} to "
                             f"{ratings.max():g})")
        frame = frame[kept]
    return Interactions.from_events(frame, user="user", item="item", weight="rating",
                                    timestamp="timestamp", combine="last", weighting=weighting)


def _read_lines(file: str, keep):
    """(number from 1, text) of the lines of ``file`` that a parser reads as rows: those
    ``keep(number, text)`` accepts (the file is opened when the first one is asked for)."""
    with open(file, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if keep(number, text):
                yield number, text


def _loadtxt_rows(file: str):
    """``_read_lines`` of the rows np.loadtxt reads (it skips empty lines only)."""
    return _read_lines(file, lambda number, text: bool(text))


def _pandas_rows(file: str, separator: str, header: bool):
    """``_read_lines`` of the rows pandas reads from a MovieLens ratings file: not the
    header, nor a blank line (empty, or spaces without a separator)."""
    return _read_lines(file, lambda number, text: not (header and number == 1) and
                       bool(text.strip() or separator in text))


def _line_of_row(rows, row: int) -> int | None:
    """The line number of a parser's row ``row``, from ``rows`` (``_loadtxt_rows`` or
    ``_pandas_rows``); None when the file cannot be read again or has no such row."""
    try:
        for position, (number, _) in enumerate(rows):
            if position == row:
                return number
    except OSError:
        return None
    return None


def _first_bad_u_data_line(file: str) -> str | None:
    """Why the first line of a u.data file that np.loadtxt cannot read is not u.data's, and
    its number ("line N: ..."); None when each reads (NumPy's message stands then)."""
    fields_per_line = None
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return f"line {number} is not utf-8 text ({error.reason} at byte {error.start})"
    for number, text in _loadtxt_rows(file):
        fields = text.split("\t")
        if not 3 <= len(fields) <= 4:
            return f"line {number} has {len(fields)} fields"
        if fields_per_line is not None and len(fields) != fields_per_line:
            return f"line {number} has {len(fields)} fields, the lines before it {fields_per_line}"
        fields_per_line = len(fields)
        for field in fields:
            try:
                int(field)
            except ValueError:
                return f"line {number} holds {field[:40]!r}, not an integer"
    return None


def _folder(path) -> str:
    """``path`` (a str or os.PathLike, ``~`` expanded) of a folder: a TypeError for anything
    else, a ValueError for the path of a file (the ratings file itself, say)."""
    folder = os.path.expanduser(check.check_path(path, "path", "a MovieLens folder"))
    if os.path.isfile(folder):
        raise ValueError(f"path must be the folder that holds the MovieLens ratings file, got "
                         f"the file {folder!r}: pass {os.path.dirname(folder) or '.'!r}")
    return folder


_MOVIELENS_HEADER = ["userId", "movieId", "rating", "timestamp"]  # ratings.csv's first line
# The latest time (seconds since the epoch, either sign) that nanoseconds in int64 hold, as
# Interactions keeps times.
_LATEST_SECOND = np.iinfo(np.int64).max // 10**9


def _read_ratings(file: str, separator: str, header: bool):
    """The ratings of a MovieLens file; one that is not (a line without its four fields or
    with more, a word for a number, ratings.csv without MovieLens' header) is a ValueError
    naming it."""
    import io

    from .interactions import _pandas

    pd = _pandas("load_movielens")
    names = ["user", "item", "rating", "timestamp", "more"]  # more: a fifth field, refused
    # ratings read as float64: a value beyond float32 is refused below, not cast to inf
    dtypes = {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
    expected = ({"\t": "tab", ",": "comma"}.get(separator, repr(separator))
                + "-separated lines of user, movie, rating, time"
                + (f" under the header {','.join(_MOVIELENS_HEADER)}" if header else ""))
    try:
        if separator == "::":  # the C parser takes one-character separators only
            with open(file, "rb") as binary:
                content = binary.read()
            if b"\t" in content:  # it would become a separator: a field too many or too few
                tab_line = content.count(b"\n", 0, content.index(b"\t")) + 1
                raise ValueError(f"line {tab_line} holds a tab, which ratings.dat's fields "
                                 f"never do")
            frame = pd.read_csv(io.BytesIO(content.replace(b"::", b"\t")), sep="\t",
                                names=names, dtype=dtypes)
        else:
            if header:  # else a file without it loses its first rating, one in another order
                with open(file, encoding="utf-8-sig") as handle:  # mixes users and movies
                    found = handle.readline().rstrip("\r\n")
                if found.split(separator)[:4] != _MOVIELENS_HEADER:
                    raise ValueError(f"the first line is {found[:80]!r}")
            frame = pd.read_csv(file, sep=separator, names=names, header=None,
                                skiprows=1 if header else 0, dtype=dtypes)  # checked above

        def line_of(rows) -> str:  # the first row's line (pandas' numbers skip blank lines)
            number = _line_of_row(_pandas_rows(file, separator, header), int(rows[0]))
            return "?" if number is None else str(number)

        longer = np.flatnonzero(frame.pop("more").notna().to_numpy())
        if longer.size:  # a sixth field after the first line is pandas' "Expected 5 fields"
            raise ValueError(f"{longer.size} lines have more than four fields, e.g. line "
                             f"{line_of(longer)}")
        ratings = frame["rating"].to_numpy()
        unrated = np.flatnonzero(np.isnan(ratings))
        if unrated.size:
            raise ValueError(f"{unrated.size} lines have no rating, e.g. line {line_of(unrated)}")
        beyond = np.flatnonzero(~(np.abs(ratings) <= np.finfo(np.float32).max))
        if beyond.size:
            raise ValueError(f"{beyond.size} ratings are not finite float32 numbers, e.g. "
                             f"{ratings[beyond[0]]} on line {line_of(beyond)}")
        frame["rating"] = ratings.astype(np.float32)
        times = frame["timestamp"].to_numpy()
        late = np.flatnonzero(np.abs(times) > _LATEST_SECOND)  # as times in nanoseconds
        if late.size:
            raise ValueError(f"{late.size} times are beyond ±{_LATEST_SECOND} seconds since "
                             f"the epoch (milliseconds?), e.g. {times[late[0]]} on line "
                             f"{line_of(late)}")
    except (OSError, ValueError, OverflowError) as error:  # pandas' parse errors: ValueErrors,
        # an id beyond int64: OverflowError
        detail = (f"a number beyond int64 ({error})" if isinstance(error, OverflowError)
                  else str(error).strip())  # pandas' parser errors end in blank lines
        if isinstance(error, ValueError) and "line" not in detail:
            # pandas names the column ("Integer column has NA values in column 3": a short
            # line), or only the value ("invalid literal for int()"): find the line
            unreadable = _first_unreadable_line(file, separator, header)
            if unreadable is not None:
                detail = f"{detail}, e.g. line {unreadable}"
        raise ValueError(f"{file!r} is not a MovieLens ratings file (expected {expected}): "
                         f"{detail}") from None
    if frame.empty:
        raise ValueError(f"{file!r} holds no ratings")
    return frame


def _first_unreadable_line(file: str, separator: str, header: bool) -> int | None:
    """The number (from 1, a header counted) of the first line of a MovieLens ratings file
    that is not four fields (int user, int movie, a rating, int time), to point a parse
    error at it; None when every line reads. Only called once the fast parser has failed."""
    try:
        for number, text in _pandas_rows(file, separator, header):
            fields = text.split(separator)
            if len(fields) == 5 and not fields[4]:  # a separator ending the line ends it
                fields = fields[:4]
            try:
                if len(fields) != 4:
                    return number
                int(fields[0]), int(fields[1]), float(fields[2]), int(fields[3])
            except ValueError:
                return number
    except OSError:
        return None
    return None

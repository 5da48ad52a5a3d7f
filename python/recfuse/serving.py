"""The whole chain in one object: recall -> rank -> re-rank, updated in real time.

``Recommender(retriever, ranker=None, candidates=200, k=10, rerank=None)`` answers
``recommend(user)`` (or ``recommend_batch(users)``: one native recall call and one native
rank call for all of them; ``recfuse.MicroBatcher`` gathers concurrent single-user calls
into such batches):

1. recall: the factor model's user vector against every item through ``recfuse.ItemIndex``
   (seen items, the request's ``exclude`` and the rules' allow/deny removed), the
   ``max(candidates, k)`` best (``k`` when there is no ranker and no re-ranking that
   reorders: neither ``diversity`` nor ``category_cap``);
2. rank: when a ranker (``recfuse.MLPScorer``, a fitted ``recfuse.MLPRanker`` or a scorer
   file) is given, the candidates are scored by it, the input row being
   ``[user vector | context_features | item vector]``, the item part prepared once per
   model (``MLPScorer.prepare_items``);
3. re-rank (``Rerank``): maximal marginal relevance for diversity and per-category caps,
   greedy, over the ranked list: only the candidates take part, so when the caps leave
   fewer than k of them the list is shorter (padded).

Results (``Recommendation``) hold ids, scores, the stage that placed each item and the
model version that answered. Ordering follows ``recfuse.topk``: score descending, ties by
smaller id (except where re-ranking moved items, and in popular lists); rows are padded with
id -1, score -inf and stage "" (a list is shorter than k when fewer items qualify).

Stages: ``"popular"`` (cold start), ``"recall"`` (order and score from the factor model),
``"rank"`` (from the ranker), ``"rerank"`` (diversity or a cap moved it to this position; the
score is still the recall or rank score).

Cold start: a user the model does not know (an id beyond its users that has not been
observed), one without any known interaction or one whose vector is still zero gets the
most popular items it has not seen (most entries in the model's training matrix, a
repeated pair once: for ALS and BPR positive entries, since a stored zero or a dislike is
seen but not liked; for rating models rated pairs, whatever the rating; ties by smaller id;
its training row and observed items left out;
items added by ``observe`` are not among them), with the same exclusions, rules and caps
(not diversity), in that order, score 0, stage ``"popular"``.

Real time: ``observe(events)`` folds events into the users' vectors at once: ALS re-solves
the user against the fixed items over the whole known row (training row plus every
observed event: the same system a refit of that user solves); ExplicitALS likewise re-solves
the user's vector and bias over every rating known for them (its training ratings, which the
model keeps, plus each event's weight as one more rating, within the model's rating scale);
SVD, SVD++ and BPR, which have no closed form, take ``sgd_steps`` SGD passes over the new
events from the current vector (items fixed; the rating models take ratings within their
rating scale). Unknown users are added; unknown items are added (``unknown_items="add"``,
ids below ``n_items + max_new_items``) or rejected (``"reject"``): an added item's vector
comes from its first ``new_item_users`` users, the users fixed: ALS, the exact solve of the
item's system against their vectors, as a refit of that item would; SVD, SVD++ and
ExplicitALS, the exact solve of their ratings of it for its vector and bias (ExplicitALS's
item half-sweep, where SVD's SGD updates of the item come to rest); BPR, the mean of their
vectors. Until it has one, its events count as seen but are left out of the users'
fold-in. ALS weights are bounded by the square root of the model dtype's largest value
(``observe``). Every accepted event goes to a bounded log, ``pending_events()``, for the
next full retrain.

Concurrency: readers take no lock. A model swap (``swap_model``) builds everything aside
(the model, its item index, the ranker and its prepared items) and installs it by one
reference assignment, so a call is answered wholly by the old model or wholly by the new
one (``Recommendation.version`` says which); a load that fails leaves the old model
serving. Concurrent ``swap_model`` calls run one at a time (a swap that keeps the current
ranker keeps the one installed last). ``observe`` and the installation of a swapped model
are serialised by one writer lock; ``observe`` publishes each user's new vector and seen
items together, as one object, and a call reads what observe published as of one moment
(it reads again when an observe call published meanwhile), so its answer is the one from
before that call or the one from after it.
"""

from __future__ import annotations

import collections
import collections.abc
import copy
import logging
import numbers
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, TypeAlias, Union

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from . import _validation as check
from ._backend import resolve_backend
from ._als.common import CsrArrays
from .models.als import ALS, fold_in, item_gram
from .models._common import check_trained
from .models.bpr import BPR
from .models.explicit_als import ExplicitALS, check_ratings_fit
from .models.sgd import SVD, SVDpp, _user_vectors
from .ranker import MLPRanker
from .ranking import MLPScorer, PreparedItems, load_scorer
from .reference import confidence_and_preference
from .retrieval import ItemIndex, _rows_of, by_score_then_id
from ._typing import Integer, PathLike

# What Recommender serves: a fitted model, or the path of a model file (recfuse.load).
Retriever: TypeAlias = Union[ALS, SVD, SVDpp, ExplicitALS, BPR, PathLike]
# A ranker: an MLPScorer, a fitted MLPRanker, a scorer file (or .onnx chain), or None.
Ranker: TypeAlias = Union[MLPScorer, MLPRanker, PathLike, None]

if TYPE_CHECKING:
    from typing import Generic, TypeVar, overload

    _Get = TypeVar("_Get")
    _Set = TypeVar("_Set")

    class _Checked(Generic[_Get, _Set]):
        """A ``_Setting`` as type checkers see it: reads give _Get, assignments take _Set."""

        @overload
        def __get__(self, recommender: None, owner: Any = None) -> _Checked[_Get, _Set]: ...
        @overload
        def __get__(self, recommender: object, owner: Any = None) -> _Get: ...
        def __get__(self, recommender: object, owner: Any = None) -> Any: ...
        def __set__(self, recommender: object, value: _Set) -> None: ...

STAGES = ("popular", "recall", "rank", "rerank")
_STAGE_NAMES = np.array(("",) + STAGES)  # stage codes: 0 pads, then STAGES in order
_POPULAR, _RECALL, _RANK, _RERANK = 1, 2, 3, 4
UNKNOWN_ITEMS = ("add", "reject")
# A replay function's call numbers stay below this: observe numbers the calls after them
# in int64 (pending_events().calls).
_MAX_CALL = 2**62
SMALL_CATALOGUE = 100_000  # items; below it native calls default to one thread each
_KEEP = object()  # swap_model(ranker=...) default: keep the ranker being served
_NO_IDS = np.zeros(0, dtype=np.int64)


def _same_fields(first: tuple, second: object) -> bool:
    """``==`` of two answers of one NamedTuple type, their arrays compared whole (a tuple's
    ``==`` asks an array of elementwise answers for one truth value, and raises)."""
    if type(first) is not type(second):
        return False
    return all(np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray)
               else a == b for a, b in zip(first, second))


class Recommendation(NamedTuple):
    """One user's list (1-d fields) or a batch (2-d fields, one row per user). Two compare
    equal (``==``) when every field does, arrays as wholes."""

    ids: np.ndarray  # int64, -1 pads
    scores: np.ndarray  # float32, -inf pads
    stages: np.ndarray  # str: "popular", "recall", "rank", "rerank"; "" pads
    version: int  # the model version that answered

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        return _same_fields(self, other)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return not _same_fields(self, other)


class Events(NamedTuple):
    """Events as aligned arrays (the form ``pending_events`` returns).

    ``calls`` numbers the ``observe`` call each event came in (int64, non-decreasing), or is
    None: one call. ``observe`` replays events with calls as the calls went (see there).
    """

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    weights: np.ndarray  # float64 (ALS: the stored value r; SVD: the rating; BPR: > 0 positive)
    calls: np.ndarray | None = None  # int64

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        return _same_fields(self, other)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return not _same_fields(self, other)


class _Request(NamedTuple):
    """One checked single-user request (``Recommender._request``)."""

    user: int
    k: int
    exclude: np.ndarray | None  # int64, sorted, unique
    context: np.ndarray | None  # float32 (context_width,)


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr below: arrays in the fields
class Rerank:
    """Re-ranking of the ranked candidates, and the business rules.

    diversity : MMR's lambda in [0, 1], or None for no diversity. Each next item maximises
        ``lambda * relevance - (1 - lambda) * max cosine(item, items already chosen)``, the
        relevance being the score rescaled to [0, 1] over the user's candidates (all 1 when
        they score alike) and the cosine of a zero vector 0; ties (values within 1e-12) go to
        the better-ranked item, so 1 keeps the ranked order and 0, picking for novelty
        alone, still starts with the best one. Cold users' popular lists take no diversity.
    item_categories : one integer category per item (n_items entries or more), for
        ``category_cap``; a negative value is no category, and ids past its end (items
        added later) have no category: no cap holds them.
    category_cap : at most this many items of one category in a list (an integer >= 1).
    allow, deny : item ids >= 0 (repeats and ids no item has are harmless); only ``allow`` may be
        recommended (an empty ``allow``: nothing), ``deny`` never is; both hold for items
        added later and for the popular lists too.

    The rules are fixed at construction: the arrays are read-only copies. Two Rerank are
    equal (and hash alike) when their rules are.
    """

    diversity: float | None = None
    item_categories: np.ndarray | None = None
    category_cap: int | None = None
    allow: np.ndarray | None = None
    deny: np.ndarray | None = None

    if TYPE_CHECKING:
        # The constructor takes any array-like (lists of ids, ...) and NumPy integers; the
        # fields hold what __post_init__ made of them (int64 arrays, an int, a float).
        def __init__(self, diversity: float | None = None,
                     item_categories: ArrayLike | None = None,
                     category_cap: Integer | None = None, allow: ArrayLike | None = None,
                     deny: ArrayLike | None = None) -> None: ...

    def __post_init__(self) -> None:
        if self.diversity is not None:
            object.__setattr__(self, "diversity", _checked_diversity(self.diversity))
        if (self.item_categories is None) != (self.category_cap is None):
            raise ValueError("item_categories and category_cap go together: give both or neither")
        if self.category_cap is not None:
            object.__setattr__(self, "category_cap",
                               check.check_int(self.category_cap, "category_cap", minimum=1))
            categories = check.id_array(self.item_categories, "item_categories")
            if categories.ndim != 1 or (categories.size and categories.dtype.kind not in "iu"):
                raise TypeError(f"item_categories must be a 1-d integer array, got dtype "
                                f"{categories.dtype} shape {categories.shape}")
            # int64_array: a uint64 category past int64 would wrap to a negative one (none)
            object.__setattr__(self, "item_categories", check.read_only_view(
                np.array(check.int64_array(categories, "item_categories"))))
        for name in ("allow", "deny"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check.read_only_view(
                    np.unique(check.check_ids(value, name, None))))

    def _rules(self) -> tuple:
        return (self.diversity, self.category_cap) + tuple(
            None if array is None else array.tobytes()
            for array in (self.item_categories, self.allow, self.deny))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rerank):
            return NotImplemented
        return self._rules() == other._rules()

    def __hash__(self) -> int:
        return hash(self._rules())

    def __reduce__(self):  # copies and pickles rebuilt by the constructor: read-only arrays
        return (type(self), (self.diversity, self.item_categories, self.category_cap,
                             self.allow, self.deny))

    def __repr__(self) -> str:  # the rules' sizes, not their arrays
        parts = [] if self.diversity is None else [f"diversity={self.diversity}"]
        if self.item_categories is not None:
            parts.append(f"categories of {self.item_categories.size} items, "
                         f"category_cap={self.category_cap}")
        parts += [f"{name} {array.size} ids" for name, array in
                  (("allow", self.allow), ("deny", self.deny)) if array is not None]
        return f"Rerank({', '.join(parts)})"

    @property
    def reorders(self) -> bool:
        """Whether this re-ranking can change the ranked order (needs more than k candidates)."""
        return self.diversity is not None or self.category_cap is not None

    def allows(self, ids: ArrayLike) -> np.ndarray:
        """Which of the item ``ids`` allow/deny let through (bool, aligned with ``ids``)."""
        ids = check.id_array(ids, "ids", "an array of item ids")
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"ids must hold item ids (integers), got dtype {ids.dtype}")
        return self._keep(ids)

    def _keep(self, ids: np.ndarray) -> np.ndarray:
        """``allows`` of ids known to be an integer array."""
        keep = np.ones(ids.shape, dtype=bool)
        if self.allow is not None:
            keep &= np.isin(ids, self.allow)
        if self.deny is not None:
            keep &= ~np.isin(ids, self.deny)
        return keep

    def mask(self, first: int, count: int) -> np.ndarray | None:
        """uint8 mask of the ids ``[first, first + count)`` that allow/deny let through
        (None: all of them), as ``ItemIndex`` takes it."""
        first = check.check_int(first, "first", minimum=0, maximum=check.INT64_MAX)
        count = check.check_int(count, "count", minimum=0, maximum=check.INT64_MAX - first + 1)
        check.check_count_fits(count, "count", 9)  # the ids (int64) and the mask
        return self._mask_of(first + np.arange(count, dtype=np.int64))  # int64, not float64

    def _mask_of(self, ids: np.ndarray) -> np.ndarray | None:
        """``mask`` of any item ``ids``: ``allows(ids)`` as uint8, None without rules."""
        if self.allow is None and self.deny is None:
            return None
        return self._keep(ids).view(np.uint8)


# ---------------------------------------------------------------------- the model, frozen


@dataclass(frozen=True)
class _Model:
    """One loaded model and everything derived from it; never changed after it is built."""

    version: int
    source: str
    model: Any  # the ALS / SVD / SVDpp / ExplicitALS / BPR it came from (its parameters)
    kind: str  # "als", "svd", "explicit" or "bpr": how observe folds events in
    user_vectors: np.ndarray  # (n_users, d): the recall queries
    user_offsets: np.ndarray  # (n_users,) float64 added to every score (SVD: mu + b_u)
    item_vectors: np.ndarray  # (n_items, d)
    item_bias: np.ndarray | None  # (n_items,)
    index: ItemIndex
    seen: sp.csr_matrix  # (n_users, n_items): the training rows (excluded, fold-in start)
    seen_indptr: np.ndarray  # int64 (n_users + 1,): ``seen`` as the search takes it
    seen_indices: np.ndarray  # int32, sorted within each row
    history: np.ndarray  # (n_users,) bool: the user has a known interaction
    popular: np.ndarray  # item ids by popularity, rules applied (the cold-start list)
    rule_mask: np.ndarray | None  # uint8 (n_items,) of the rules' allow/deny, None: no rule
    ranker: MLPScorer | None  # the ranker served with this model
    ranker_source: str | None  # its file, "<object>", or None without a ranker
    prepared: PreparedItems | None  # of the ranker for these items
    gram: np.ndarray | None  # ALS: YᵀY of the item vectors
    global_mean: float  # SVD: mu (cold users' offset); 0 otherwise
    # ExplicitALS: ratings per (user, item) of the training set, aligned with ``seen`` (whose
    # data are their sums): a user's re-solve counts each rating, repeated pairs included
    seen_counts: sp.csr_matrix | None = None
    # SVD, SVD++, ExplicitALS: the fit's (lowest, highest) rating, which observe checks
    # events against (kept here: a refit of the model object must not change it)
    rating_scale: tuple[float, float] | None = None
    # ExplicitALS: the most ratings of one user or item in training (fit's float32 bound)
    longest_ratings: int = 0
    # ALS: XᵀX of the user vectors in float64, for the solves of items added by observe
    # (made with the model, aside: 0.24 s for 1M users x 64 factors)
    user_gram: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.user_vectors.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    @property
    def num_threads(self) -> int:
        """Default CPU threads per native call for this catalogue (see Recommender)."""
        return 1 if self.n_items < SMALL_CATALOGUE else 0

    @property
    def context_width(self) -> int:
        if self.ranker is None:
            return 0
        return self.ranker.input_width - 2 * self.item_vectors.shape[1]


# bytes of one list entry of an answer: id (int64), score (float32), stage code (int8) and
# the stage's name (the answer's stages column)
_RESULT_BYTES = 8 + 4 + 1 + _STAGE_NAMES.itemsize


class _User(NamedTuple):
    """What observe learned of one user, published as one object."""

    vector: np.ndarray  # (d,)
    offset: float
    items: np.ndarray  # int64 sorted: every known item (training row and observed)
    weights: np.ndarray  # float64, aligned with items (summed per item)
    warm: bool  # the vector is not zero (a zero vector knows nothing: cold start)
    counts: np.ndarray | None = None  # ExplicitALS: ratings per item (weights: their sums)
    updates: int = 0  # observe calls (replay groups) that updated it: seeds BPR's draws


@dataclass(frozen=True)
class _AddedRows:
    """Vectors of some added items, row r holding item ``ids[r]``, and their search index."""

    ids: np.ndarray  # int64 (rows,), sorted
    table: np.ndarray  # (rows, d)
    bias: np.ndarray | None  # (rows,): biased SVD/SVD++/ExplicitALS; None otherwise
    rules: np.ndarray | None  # uint8 (rows,) of the rules' allow/deny, None: no rule
    index: ItemIndex

    @classmethod
    def of(cls, ids: np.ndarray, table: np.ndarray, bias: np.ndarray | None,
           rerank: Rerank | None, backend: str, ready_for: int, threads: int) -> _AddedRows:
        """The rows, with their index prepared for searches of ``ready_for`` results: by the
        writer, not by the first request after a change (a settled tier of 50,000 rows takes
        ~15 ms to prepare)."""
        index = ItemIndex(table, item_bias=bias, backend=backend)
        # one user's search and a batch's may read different tables (bfloat16 widened: a
        # single query only): both ready
        for storage in {index.storage_for(ready_for, 1), index.storage_for(ready_for)}:
            index._prepared(storage, threads)
        return cls(ids, table, bias, None if rerank is None else rerank._mask_of(ids), index)

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found): the row of each of ``ids`` (valid where ``found``)."""
        rows = np.searchsorted(self.ids, ids)
        found = rows < self.ids.size
        found[found] = self.ids[rows[found]] == ids[found]
        return rows, found

    def excluded(self, own: dict, users: int):
        """Each of ``users`` users' excluded ids among these rows, as the search takes them
        (indptr int64, row numbers int32 sorted): ``own[position]`` (sorted ids) where
        given; None when no user has any."""
        if not own:
            return None
        parts = [_NO_IDS] * users
        for position, ids in own.items():
            rows, found = self.find(ids)
            parts[position] = rows[found]  # sorted: ids and self.ids are
        return _stacked(parts)


def _with_rows(rows: _AddedRows | None, ids: np.ndarray, table: np.ndarray,
               bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ids, table, bias) of ``rows`` with the rows of ``ids`` (sorted, unique) added or
    replaced by ``table`` / ``bias``: new arrays."""
    if rows is None:
        return ids, table, bias
    merged = np.union1d(rows.ids, ids)
    old, new = np.searchsorted(merged, rows.ids), np.searchsorted(merged, ids)
    out = np.empty((merged.size, table.shape[1]), dtype=table.dtype)
    out[old], out[new] = rows.table, table
    out_bias = None
    if bias is not None:
        out_bias = np.empty(merged.size, dtype=bias.dtype)
        out_bias[old], out_bias[new] = rows.bias, bias
    return merged, out, out_bias


def _recent_limit(settled: int) -> int:
    """How many rows the recent tier of ``_NewItems`` may hold over ``settled`` settled ones
    before they are folded together: a change copies the recent tier, a fold both, so about
    sqrt(settled) balances the two (100,000 added items: 632 rows)."""
    return max(256, 2 * int(np.sqrt(settled)))


# From this many added items a fold runs on a thread of its own (Recommender._fold_later),
# not inside the observe call that outgrew the recent tier: it copies and re-indexes every
# row (50,000 rows of 64 factors: ~40 ms, the longest observe call of a run; 10,000: 7-14
# ms). Below it a fold is short, and a thread would contend for the GIL with the writer for
# little: from 0, 1,000, 2,000 and 10,000 items, 1,000 gave the fewest observe calls over 4
# ms (bench/README, "Folds on a thread of their own"). The recent tier
# meanwhile keeps taking rows, up to _FOLD_BACKLOG times its limit, past which a change folds
# at once (a fold thread that fell that far behind).
_BACKGROUND_FOLD_ITEMS = 1_000
_FOLD_BACKLOG = 8
_log = logging.getLogger("recfuse.serving")

# Forking (pre-forking servers): every Recommender's writer lock is taken around a fork, so
# that no publication is half done in the child (waited for at most _FORK_WAIT_S seconds
# each: a long swap replay does not stall the fork longer). In the child, the locks that
# threads it does not have held (the wait gave up; a swap under way) are replaced, and no
# fold thread is at work.
_RECOMMENDERS: weakref.WeakSet = weakref.WeakSet()
_FORK_WAIT_S = 1.0
_held_over_fork: list = []


def _before_fork() -> None:
    for recommender in list(_RECOMMENDERS):
        if recommender._write_lock.acquire(timeout=_FORK_WAIT_S):
            _held_over_fork.append(recommender)


def _after_fork_in_parent() -> None:
    for recommender in _held_over_fork:
        recommender._write_lock.release()
    _held_over_fork.clear()


def _after_fork_in_child() -> None:
    held = {id(recommender) for recommender in _held_over_fork}
    _after_fork_in_parent()
    for recommender in list(_RECOMMENDERS):
        if id(recommender) not in held:
            recommender._write_lock = threading.Lock()
            state = recommender._state
            if state.published % 2:  # a publication cut short: let the readers read
                state.published += 1
        if recommender._swap_lock.locked():
            recommender._swap_lock = threading.Lock()
        recommender._folding, recommender._fold_thread = False, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _folded(settled: _AddedRows | None, ids: np.ndarray, table: np.ndarray,
            bias: np.ndarray | None, rerank: Rerank | None, backend: str, ready_for: int,
            threads: int) -> _AddedRows:
    """The settled tier with the rows of ``ids`` added or replaced: a new one, indexed."""
    return _AddedRows.of(*_with_rows(settled, ids, table, bias), rerank, backend, ready_for,
                         threads)


def _bits(values: np.ndarray) -> np.ndarray:
    """``values`` as unsigned integers of the same width: equal bits, equal numbers."""
    return values.view(f"u{values.dtype.itemsize}")


@dataclass(frozen=True)
class _NewItems:
    """Items added by observe, with their vectors (and biases), replaced as a whole when one
    changes. Two tiers, so that a change copies and re-indexes little: ``recent`` holds the
    rows set since the last fold (at most ``_recent_limit`` of the settled count), which a
    change copies; ``settled`` the others, copied only when the recent rows fold into it. An
    item in both is ``recent``'s: ``settled_mask`` hides its old row from searches."""

    settled: _AddedRows | None
    recent: _AddedRows | None
    settled_mask: np.ndarray | None  # uint8 (settled rows,): rules, and not superseded
    gram: np.ndarray | None  # ALS: YᵀY over the model's items and the added ones
    count: int  # how many items were added

    def tiers(self) -> list[tuple[_AddedRows, np.ndarray | None]]:
        """(rows, search mask) of each tier there is, settled first."""
        tiers = [] if self.settled is None else [(self.settled, self.settled_mask)]
        return tiers + ([] if self.recent is None else [(self.recent, self.recent.rules)])

    def has(self, ids: np.ndarray) -> np.ndarray:
        """Which of the item ``ids`` were added (have a vector)."""
        had = np.zeros(ids.size, dtype=bool)
        for rows, _ in self.tiers():
            had |= rows.find(ids)[1]
        return had

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of the added items ``ids``."""
        return self._gather(ids, "table")

    def biases(self, ids: np.ndarray) -> np.ndarray:
        """The biases of the added items ``ids`` (0 for a model without them)."""
        if self.tiers()[0][0].bias is None:
            return np.zeros(ids.size)
        return self._gather(ids, "bias")

    def _gather(self, ids: np.ndarray, part: str) -> np.ndarray:
        first = getattr(self.tiers()[0][0], part)
        out = np.empty((ids.size,) + first.shape[1:], dtype=first.dtype)
        for rows, _ in self.tiers():  # recent last: its rows win
            at, found = rows.find(ids)
            out[found] = getattr(rows, part)[at[found]]
        return out

    def search(self, queries: np.ndarray, wanted: int, own: dict, threads: int):
        """(ids, scores) of each query's ``wanted`` best added items (best first, ties by
        smaller id, padded with -1 / -inf), ``own[position]`` excluded: the same lists
        whichever tier holds which item (cut here on the search's own scores, before the
        caller adds offsets that can round two of them to a tie)."""
        ids, scores = [], []
        for rows, mask in self.tiers():
            found, found_scores = rows.index._search_checked(
                queries, wanted, rows.excluded(own, queries.shape[0]), mask, threads)
            ids.append(np.where(found >= 0, rows.ids[np.maximum(found, 0)], -1))
            scores.append(found_scores)
        if len(ids) == 1:
            return ids[0], scores[0]
        return by_score_then_id(np.concatenate(ids, axis=1), np.concatenate(scores, axis=1),
                                wanted)

    def outgrown(self) -> bool:
        """Whether the recent tier holds more rows than its limit (a fold is due)."""
        settled = 0 if self.settled is None else self.settled.ids.size
        return self.recent is not None and self.recent.ids.size > _recent_limit(settled)

    def changed(self, ids: np.ndarray, table: np.ndarray, bias: np.ndarray | None,
                gram: np.ndarray | None, rerank: Rerank | None, backend: str,
                ready_for: int = 10, threads: int = 1, backlog: int = 1) -> _NewItems:
        """These items with the rows of ``ids`` (sorted, unique) added or set to ``table`` /
        ``bias``, and ``gram``: a new object (the tiers it shares are not changed). The
        recent rows fold into the settled tier here once they number more than ``backlog``
        times their limit (1; more when a fold thread does it, see _FOLD_BACKLOG). New
        tiers' indexes are prepared for searches of ``ready_for`` results."""
        settled = self.settled
        ids, table, bias = _with_rows(self.recent, ids, table, bias)
        if ids.size > backlog * _recent_limit(0 if settled is None else settled.ids.size):
            settled = _folded(settled, ids, table, bias, rerank, backend, ready_for, threads)
            return _NewItems(settled, None, settled.rules, gram, int(settled.ids.size))
        recent = _AddedRows.of(ids, table, bias, rerank, backend, ready_for, threads)
        if settled is None:
            return _NewItems(None, recent, None, gram, int(ids.size))
        mask = settled.rules
        at, superseded = settled.find(ids)
        if superseded.any():
            mask = np.ones(settled.ids.size, np.uint8) if mask is None else mask.copy()
            mask[at[superseded]] = 0
        return _NewItems(settled, recent, mask, gram,
                         int(settled.ids.size + ids.size - superseded.sum()))

    def folded(self, rerank: Rerank | None, backend: str, ready_for: int,
               threads: int) -> _NewItems:
        """These items with the recent rows folded into the settled tier: a new object."""
        recent = self.recent
        if recent is None:
            return self
        settled = _folded(self.settled, recent.ids, recent.table, recent.bias, rerank, backend,
                          ready_for, threads)
        return _NewItems(settled, None, settled.rules, self.gram, self.count)

    def rebased(self, before: _NewItems, folded: _NewItems, rerank: Rerank | None,
                backend: str, ready_for: int, threads: int) -> _NewItems:
        """These items on ``folded``'s settled tier, ``folded`` being ``before.folded(...)``
        and ``before`` an earlier state of these items with the same settled tier (no fold
        between): the recent rows ``before`` held with the same bits are in it; the rows
        set since stay recent and hide their settled rows. Same vectors as ``self``."""
        recent, old, settled = self.recent, before.recent, folded.settled
        if recent is None or old is None or settled is None:  # nothing recent, or folded
            return folded if recent is None else self
        at, same = old.find(recent.ids)
        same[same] = (_bits(recent.table[same]) == _bits(old.table[at[same]])).all(axis=1)
        if recent.bias is not None and old.bias is not None:
            same[same] = _bits(recent.bias[same]) == _bits(old.bias[at[same]])
        if same.all():
            return _NewItems(settled, None, settled.rules, self.gram, self.count)
        rest = recent
        if same.any():
            keep = ~same
            rest = _AddedRows.of(recent.ids[keep], recent.table[keep],
                                 None if recent.bias is None else recent.bias[keep], rerank,
                                 backend, ready_for, threads)
        mask = settled.rules
        at, superseded = settled.find(rest.ids)
        if superseded.any():
            mask = np.ones(settled.ids.size, np.uint8) if mask is None else mask.copy()
            mask[at[superseded]] = 0
        return _NewItems(settled, rest, mask, self.gram, self.count)


@dataclass
class _State:
    """The model plus what was observed since it was loaded; swapped as one reference.
    ``users`` entries and ``new_items`` are replaced (never changed) by the writer, which
    counts ``published`` up before and after each observe call's publication (odd while one
    is under way), so that readers can take a view of both from one moment (``_observed``)."""

    model: _Model
    users: dict = field(default_factory=dict)  # user id -> _User
    new_items: _NewItems | None = None
    new_item_users: dict = field(default_factory=dict)  # item id -> its first users (writer only)
    # rating models: item id -> (users, ratings) of its first users' events (writer only)
    new_item_ratings: dict = field(default_factory=dict)
    published: int = 0


# ---------------------------------------------------------------------- the recommender


class _Setting:
    """A Recommender setting that may be changed while it serves: every assignment (the
    constructor's too) is checked by ``check(value, name)``, so a bad value is refused where
    it is given rather than failing the requests that read it."""

    def __init__(self, check: Callable[[Any, str], Any],
                 then: Callable[[Any], None] | None = None):
        self._check = check
        self._then = then  # called with the recommender after each assignment

    def __set_name__(self, owner, name: str) -> None:
        self._name, self._slot = name, "_" + name

    def __get__(self, recommender, owner=None):
        return self if recommender is None else getattr(recommender, self._slot)

    def __set__(self, recommender, value) -> None:
        setattr(recommender, self._slot, self._check(value, self._name))
        if self._then is not None:
            self._then(recommender)


class Recommender:
    """Recall -> rank -> re-rank in one call, safe from many threads, updated in real time.

    Parameters
    ----------
    retriever : a fitted ``recfuse.ALS``, ``SVD``, ``SVDpp``, ``ExplicitALS`` or ``BPR``, or
        the path of a model file (``recfuse.load``). A model object is served as it is now:
        its settings (e.g. ``regularization``, which ``observe`` folds in with) and its fit;
        later assignments to it or a refit reach the served model only by ``swap_model``.
    ranker : ``recfuse.MLPScorer``, a fitted ``recfuse.MLPRanker``, the path of a scorer file
        (``MLPScorer.save``, or an ``.onnx`` chain), or None (recall order); its input row is
        ``[user vector | context features | item vector]``
    candidates : how many items recall hands to the ranker and the re-ranking
    k : list length when ``recommend`` is not given one
    rerank : ``Rerank`` (diversity, category caps, allow/deny), or None
    unknown_items : "add" or "reject": what ``observe`` does with an item id the model lacks
    max_new_items : added item ids must be below ``n_items + max_new_items``
    new_item_users : how many first users of an added item set its vector (ALS, SVD, SVD++,
        ExplicitALS: the item's exact solve against them; BPR: the mean of their vectors)
    sgd_steps, sgd_lr : SGD passes and step size of the fold-in of SVD/SVD++/BPR (when None,
        the model's: SVD/SVD++ update the user's vector at ``lr_pu`` and bias at ``lr_bu``,
        regularised by ``reg_pu`` and ``reg_bu``, each ``lr``/``reg`` unless set)
    max_pending_events : the event log keeps the newest this-many events
    num_threads : CPU threads per native call (0: all cores); None (default): 1 below
        ``SMALL_CATALOGUE`` items, where calls run side by side and a thread team's start
        and barriers cost more than they save (on 2 loaded cores: p99 4.5 ms with 1 thread
        vs 68 ms with 2 at 9,724 items), all cores above; whatever the catalogue, a fold-in
        of 64 users or more at once and the ranker's item preparation at a model swap take
        all cores (one-off work, not a request's)

    The settings from ``candidates`` to ``max_pending_events`` may be assigned while the
    Recommender serves (checked as here; each call reads each setting once); ``rerank`` is
    fixed, since its rules are built into the served model's item lists.

    >>> import recfuse, scipy.sparse as sp
    >>> seen = sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype="float32")
    >>> als = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(seen)
    >>> rec = recfuse.Recommender(als, k=5)
    >>> rec.recommend(3).ids.shape
    (5,)
    >>> rec.observe({"user": [3, 3], "item": [7, 8]})
    2
    >>> bool(set(rec.recommend(3).ids.tolist()) & {7, 8})
    False
    """

    # The settings as type checkers see them on an instance (the _Setting descriptors below
    # check each assignment and hold the checked value).
    candidates: _Checked[int, Integer]
    k: _Checked[int, Integer]
    unknown_items: _Checked[str, str]
    max_new_items: _Checked[int, Integer]
    new_item_users: _Checked[int, Integer]
    sgd_steps: _Checked[int, Integer]
    sgd_lr: _Checked[float | None, float | None]
    max_pending_events: _Checked[int, Integer]

    candidates = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_int(value, name, minimum=1))
    k = _Setting(lambda value, name: check.check_k(value))  # type: ignore[assignment]
    unknown_items = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_choice(value, name, UNKNOWN_ITEMS))
    max_new_items = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_int(value, name, minimum=0))
    new_item_users = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_int(value, name, minimum=1))
    sgd_steps = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_int(value, name, minimum=1))
    sgd_lr = _Setting(lambda value, name: None if value is None else  # type: ignore[assignment]
                      check.check_float(value, name, minimum=0, strict=True))
    max_pending_events = _Setting(  # type: ignore[assignment]
        lambda value, name: check.check_int(value, name, minimum=0),
        lambda recommender: recommender._trim_log_now())

    def __init__(self, retriever: Retriever, ranker: Ranker = None, candidates: Integer = 200,
                 k: Integer = 10, rerank: Rerank | None = None, *, unknown_items: str = "add",
                 max_new_items: Integer = 100_000, new_item_users: Integer = 20,
                 sgd_steps: Integer = 10, sgd_lr: float | None = None,
                 max_pending_events: Integer = 1_000_000,
                 num_threads: Integer | None = None) -> None:
        self.candidates = candidates
        self.k = k
        if rerank is not None and not isinstance(rerank, Rerank):
            raise TypeError(f"rerank must be a recfuse.Rerank or None, got {type(rerank).__name__}")
        self._rerank_rules = rerank
        self.unknown_items = unknown_items
        self.max_new_items = max_new_items
        self.new_item_users = new_item_users
        self.sgd_steps = sgd_steps
        self.sgd_lr = sgd_lr
        self.max_pending_events = max_pending_events
        self._threads_given = None if num_threads is None else check.check_threads(num_threads)
        self._write_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # serialises swap_model calls (see there)
        self._folding = False  # a fold thread is at work (_fold_later)
        self._fold_thread: threading.Thread | None = None
        self._background_fold_items = _BACKGROUND_FOLD_ITEMS  # tests change it per instance
        self._log: collections.deque = collections.deque()  # Events chunks, oldest first
        self._logged = 0
        self._calls = 0  # observe calls numbered so far (the log's Events.calls)
        # events pushed out of the log by max_pending_events, or left out by a swap's
        # renumbering function
        self.dropped_events = 0
        self._versions = 0  # the version of the model installed last
        self._state = _State(self._build(retriever, _ranker_of(ranker)))
        _RECOMMENDERS.add(self)
        self._versions = self._state.model.version

    # ------------------------------------------------------------------ model loading

    @property
    def num_threads(self) -> int:
        """CPU threads per native call for the model answering now (see the parameter)."""
        return self._threads(self._state.model)

    def _threads(self, model: _Model) -> int:
        return self._threads_given if self._threads_given is not None else model.num_threads

    @property
    def rerank(self) -> Rerank | None:
        """The re-ranking rules, fixed at construction: their allow/deny lists and categories
        are built into each served model (a new Recommender serves other rules)."""
        return self._rerank_rules

    @rerank.setter
    def rerank(self, value) -> None:
        raise AttributeError("rerank is fixed at construction (its allow/deny lists and "
                             "categories are built into the served model's item lists): "
                             "make a new Recommender to serve other rules")

    @property
    def version(self) -> int:
        """The version of the model answering now (1 for the first, +1 per swap)."""
        return self._state.model.version

    @property
    def observed_calls(self) -> int:
        """The ``observe`` calls applied so far, and so the number the next one is logged
        with (``pending_events().calls``); a refused call uses up no number."""
        return self._calls

    @property
    def ranker(self) -> MLPScorer | None:
        """The ranker served with the model answering now (None: recall order)."""
        return self._state.model.ranker

    @property
    def context_width(self) -> int:
        """Columns of ``context_features`` the ranker takes (0 without a ranker)."""
        return self._state.model.context_width

    def _deep(self, model: _Model) -> bool:
        """Whether lists come from more than k recalled candidates (a ranker, or re-ranking
        that reorders): then calls with k above ``candidates`` recall k items instead, and
        their lists are not extensions of shorter ones."""
        return model.ranker is not None or (self.rerank is not None and self.rerank.reorders)

    def info(self) -> dict[str, Any]:
        """The model answering now: version, source, its class ("model": ALS, BPR, SVD,
        SVDpp or ExplicitALS), kind (how events fold in: "als", "bpr", "svd" for SVD and
        SVD++, "explicit"), the backend its recall runs on (after a load that fell back from
        a missing one, the one it fell back to), users, items, added items/users, the
        ranker's source and context width."""
        state = self._state
        model = state.model
        added = 0 if state.new_items is None else state.new_items.count
        return {"version": model.version, "source": model.source,
                "model": type(model.model).__name__, "kind": model.kind,
                "backend": model.index._module.NAME, "users": model.n_users,
                "items": model.n_items, "factors": model.item_vectors.shape[1],
                "observed_users": len(state.users),
                "added_items": added, "pending_events": self._logged,
                "dropped_events": self.dropped_events, "ranker": model.ranker is not None,
                "ranker_source": model.ranker_source, "context_width": model.context_width}

    def __reduce__(self):
        # (copy.copy shared the observed users and the event log with the original)
        raise TypeError("a Recommender is not pickled or copied: it owns the live state of the "
                        "model it serves (observed users, the event log, locks); build one "
                        "from the model or its file where it is used")

    def __repr__(self) -> str:
        info = self.info()
        ranker = f", ranker ({info['context_width']} context columns)" if info["ranker"] else ""
        return (f"Recommender(version {info['version']}: {info['kind']} model from "
                f"{info['source']}, {info['users']} users x {info['items']} items, "
                f"k={self.k}{ranker})")

    def _build(self, retriever, ranker, factors: int | None = None) -> _Model:
        """A ready ``_Model`` from a fitted model or a model file and a ranker (an
        ``MLPScorer`` and its source, or None); ``factors``: what the model must have (a
        kept ranker was built for it). Raises, changing nothing."""
        source = "<object>"
        if isinstance(retriever, (str, bytes, os.PathLike)):
            from .persistence import load

            source = check.check_path(retriever, "retriever")
            retriever = load(source)
        model = retriever
        if isinstance(model, (ALS, BPR, SVD, SVDpp, ExplicitALS)):
            # A copy, its arrays shared (taken under the model's writer lock: one fit's
            # tables): the served version keeps the fit and the settings it was given, its
            # fold-ins included, whatever is assigned to or refit on the caller's object later.
            model = copy.copy(model)
        seen_counts = rating_scale = None
        longest = 0
        search_bias = None  # the recall index's item bias, when it is not ``bias``
        if isinstance(model, ALS):
            model._require_fitted()
            state = model._state
            kind, users, items, bias = "als", state.user_factors, state.item_factors, None
            assert users is not None and items is not None  # _require_fitted
            offsets, mean = np.zeros(users.shape[0]), 0.0
            seen = state.user_items
        elif isinstance(model, BPR):
            model._require_fitted()
            # the four tables of one fit (a refit in another thread may land between reads)
            users, items, bias, seen = model._tables()
            kind, offsets, mean = "bpr", np.zeros(users.shape[0]), 0.0
        elif isinstance(model, (SVD, SVDpp, ExplicitALS)):
            fitted = model._require_fitted()
            kind = "explicit" if isinstance(model, ExplicitALS) else "svd"
            if kind == "explicit" and fitted.ratings is None:
                raise ValueError("this ExplicitALS model keeps no training ratings (a file "
                                 "saved by an older recfuse), so observe could not re-solve "
                                 "its users; refit it, or save it again after a refit")
            known_user = fitted.user_counts > 0
            known_item = (fitted.item_counts > 0)
            users = (_user_vectors(fitted) * known_user[:, None]).astype(model.dtype)
            items = (fitted.item_factors * known_item[:, None]).astype(model.dtype)
            mean = float(fitted.global_mean)
            rating_scale = fitted.rating_scale
            if fitted.biased:
                bias = np.where(known_item, fitted.item_bias, 0).astype(model.dtype)
                offsets = mean + np.where(known_user, fitted.user_bias, 0).astype(np.float64)
            else:
                bias, offsets = None, np.where(known_user, 0.0, mean)
                # as the model's recommend and predict: μ for items without ratings
                search_bias = np.where(known_item, 0.0, mean).astype(model.dtype)
            seen = fitted.seen.to_scipy(items.shape[0])
            if kind == "explicit":  # each pair's rating sum and count
                assert fitted.ratings is not None  # refused above
                indptr, indices, values = fitted.ratings
                shape = (users.shape[0], items.shape[0])
                # copies: sum_duplicates works in place, and the arrays are the model's
                seen = sp.csr_matrix((values.astype(np.float64), indices.copy(), indptr.copy()),
                                     shape=shape)
                seen_counts = sp.csr_matrix((np.ones(indices.size), indices.copy(),
                                             indptr.copy()), shape=shape)
                seen.sum_duplicates()
                seen_counts.sum_duplicates()
                longest = int(max(np.diff(indptr).max(initial=0),
                                  np.bincount(indices).max(initial=0)))
        else:
            raise _not_a_retriever(model, "retriever")
        if kind in ("als", "bpr"):  # assigned tables: any layout, byte order or dtype
            users, items = (check.check_factors(table, name, dtype=model.dtype, copy=False)
                            for table, name in ((users, "user_factors"), (items, "item_factors")))
        n_users, n_items = users.shape[0], items.shape[0]
        if factors is not None and items.shape[1] != factors:
            raise ValueError(f"the new model has {items.shape[1]} factors; the ranker was "
                             f"built for {factors} (give the new model's ranker: "
                             f"swap_model(source, ranker=...))")
        if seen is None:  # a model without its training matrix: every user counts as known
            seen = sp.csr_matrix((n_users, n_items), dtype=np.float64)
            history = np.ones(n_users, dtype=bool)
        else:
            seen = check.sorted_rows(sp.csr_matrix(seen, dtype=np.float64), add_repeats=True)
            history = np.diff(seen.indptr) > 0
        # a user whose vector is zero (e.g. a row of stored zeros) has nothing to search
        # with: answered from the popular list, as a cold user
        history &= np.any(users != 0, axis=1)
        popular = popular_for(model, seen, n_items)
        if self.rerank is not None:
            popular = popular[self.rerank._keep(popular)]
        scorer, ranker_source = ranker if ranker is not None else (None, None)
        prepared = None
        if scorer is not None:
            width = scorer.input_width - 2 * items.shape[1]
            if width < 0:
                raise ValueError(f"the ranker takes {scorer.input_width} inputs, fewer than "
                                 f"user + item vectors ({2 * items.shape[1]})")
            prepared = scorer.prepare_items(  # once per model: all cores unless told
                items, item_column=items.shape[1] + width, num_threads=self._threads_given or 0)
        if self.rerank is not None and self.rerank.item_categories is not None and \
                self.rerank.item_categories.size < n_items:
            raise ValueError(f"rerank.item_categories has {self.rerank.item_categories.size} "
                             f"entries; the model has {n_items} items")
        index = ItemIndex(items, item_bias=bias if search_bias is None else search_bias,
                          backend=model.backend)
        rule_mask = None if self.rerank is None else self.rerank.mask(0, n_items)
        offsets = offsets.astype(np.float64)
        version = self._versions + 1  # swap_model numbers it again when it installs it
        return _Model(version, source, model, kind, users, offsets, items, bias, index, seen,
                      seen.indptr.astype(np.int64), seen.indices.astype(np.int32), history,
                      popular.astype(np.int64), rule_mask, scorer, ranker_source, prepared,
                      item_gram(items.astype(np.float64)) if kind == "als" else None, mean,
                      seen_counts, rating_scale, longest,
                      _gram64(users) if kind == "als" else None)

    def swap_model(self, source: Retriever, *,
                   ranker: Ranker = _KEEP,  # type: ignore[assignment]  # _KEEP: the current one
                   replay: bool | Callable[[Events], Events] = True) -> int:
        """Serve the model in ``source`` (a file path or a fitted model) from now on.

        ``ranker``: the ranker to serve with it (an ``MLPScorer``, a fitted ``MLPRanker``, a
        scorer file, or None for none); by default the current one is kept (then the new
        model must have as many factors as the old one).

        The new model (and its ranker's prepared items) is loaded while the old one keeps
        answering, then installed atomically with its ranker. With ``replay`` the events
        still in ``pending_events()`` are folded into the new model as their calls went
        (see ``observe``; a retrain that consumed them should clear the log with
        ``pending_events(clear=True)`` when it starts). ``replay`` may also be a function
        that renumbers the logged ``Events`` for the new model, when its rows name other
        users or items than the old one's (a retrain on a log whose ids were numbered anew):
        called once, writer lock held, with every logged event; what it returns (``Events``,
        or a mapping as ``observe`` takes; keep ``calls``, or its events count as one call)
        is replayed and becomes the log (events it leaves out count in
        ``dropped_events``). Events of
        added items that the settings of now refuse (``unknown_items``, ``max_new_items``
        changed since ``observe`` took them) are not replayed; they stay in the log. If
        anything fails (the function included) the old model and the log stay and the error
        is raised. Returns the new version.
        """
        if not isinstance(source, (str, bytes, os.PathLike, ALS, BPR, SVD, SVDpp, ExplicitALS)):
            raise _not_a_retriever(source, "source")  # not named "retriever", as _build would
        renumber = replay if callable(replay) else None
        if renumber is None:
            try:
                replay = check.check_flag(replay, "replay")
            except TypeError:  # check_flag's message offers a bool only
                raise TypeError(f"replay must be a bool or a function (Events -> Events), got "
                                f"{type(replay).__name__} {replay!r:.60}") from None
        chosen: tuple[MLPScorer, str | None] | None = \
            None if ranker is _KEEP else _ranker_of(ranker)
        # one swap at a time, from reading the current ranker to installing: a swap that keeps
        # "the current ranker" must not put back the one a concurrent swap has just replaced
        # (observe takes only the writer lock, so it goes on meanwhile)
        with self._swap_lock:
            current = self._state.model
            factors = None
            if ranker is _KEEP and current.ranker is not None:
                chosen = (current.ranker, current.ranker_source)
                factors = current.item_vectors.shape[1]
            built = self._build(source, chosen, factors)
            with self._write_lock:
                # numbered here: a swap that fails (e.g. in the replay) uses up no version
                built = replace(built, version=self._versions + 1)
                state = _State(built)
                log = None
                left_out = 0  # events the function did not renumber (e.g. unknown items)
                next_call = self._calls  # kept only if the swap succeeds
                self._trim_log()
                if replay and self._log:
                    events = _concatenate(list(self._log))
                    if renumber is not None:
                        # a copy: the function's arrays stay the caller's
                        renumbered = _events(renumber(events))
                        numbers = renumbered.calls
                        if numbers is None:  # numbers not kept: one call, the next
                            numbers = np.full(renumbered.users.size, next_call, np.int64)
                            renumbered = renumbered._replace(calls=numbers)
                        if numbers.size:  # the next observe calls numbered after its last
                            last = int(numbers.max())
                            if last >= _MAX_CALL:  # observe's numbers would leave int64
                                raise ValueError(f"replay's calls must be below 2**62 (room "
                                                 f"for the calls after them), got {last}")
                            next_call = max(next_call, int(numbers[-1]) + 1)
                        log = _concatenate([renumbered])
                        left_out, events = events.users.size - log.users.size, log
                    # events of added items the settings of now refuse (unknown_items,
                    # max_new_items changed since observe took them) stay in the log only;
                    # each setting read once, for this filter and the replay alike
                    unknown_items, max_new_items = self.unknown_items, self.max_new_items
                    n = built.n_items
                    limit = n + max_new_items if unknown_items == "add" else n
                    replayable = events.items < limit
                    if not replayable.all():
                        calls = events.calls
                        assert calls is not None  # the log's events carry their calls
                        events = Events(events.users[replayable], events.items[replayable],
                                        events.weights[replayable], calls[replayable])
                    if events.users.size:  # the function may have left every event out
                        # (the groups' numbers are not kept: the log keeps its own)
                        for group in self._replay_groups(state, events, next_call):
                            self._apply(state, *group[:3], unknown_items, max_new_items)
                self._state = state
                self._calls = next_call
                self.dropped_events += max(left_out, 0)
                if log is not None:  # one chunk: the log in the new model's numbers
                    self._log.clear()
                    self._log.append(log)
                    self._logged = log.users.size
                self._versions = built.version
        return built.version

    # ------------------------------------------------------------------ recommend

    def recommend(self, user: Integer, k: Integer | None = None,
                  exclude: ArrayLike | None = None,
                  context_features: ArrayLike | None = None) -> Recommendation:
        """One user's list: ``Recommendation`` with 1-d ids, scores and stages.

        k : list length (None: the Recommender's ``k``)
        exclude : item ids never to return for this call (besides the seen items)
        context_features : the ranker's context columns (1-d, ``context_width`` long)
        """
        state = self._state  # one model for the whole call
        request = self._request(state, user, k, exclude, context_features)
        result = self._answer(state, np.array([request.user], dtype=np.int64), request.k,
                              None if request.exclude is None else [request.exclude],
                              None if request.context is None else request.context[None, :])
        return Recommendation(result.ids[0], result.scores[0], result.stages[0], result.version)

    def recommend_batch(self, users: ArrayLike, k: Integer | None = None,
                        excludes: Sequence[ArrayLike | None] | None = None,
                        context_features: ArrayLike | None = None) -> Recommendation:
        """Lists for many users in one native recall call and one ranking call.

        users : 1-d integer ids; k : list length (None: the Recommender's ``k``); excludes :
        None or one id sequence (or None) per user; context_features : (users,
        context_width). Returns 2-d ids, scores and stages.
        """
        state = self._state  # one model for the whole call
        ids = check.check_ids(users, "users", None)
        k = self.k if k is None else check.check_k(k)
        m = ids.size
        if excludes is not None:
            # a mapping or a set is Sized too, but has no order to align with the users (a
            # dict's keys would be taken for the exclude lists)
            if isinstance(excludes, (str, bytes, collections.abc.Mapping, collections.abc.Set)) \
                    or not isinstance(excludes, collections.abc.Sized):
                raise TypeError(f"excludes must be a sequence of one id sequence (or None) per "
                                f"user, got {type(excludes).__name__}")
            if len(excludes) != m:
                raise ValueError(f"excludes must have one entry per user ({m}), got "
                                 f"{len(excludes)}")
            excludes = [None if e is None else _exclude_ids(e, f"excludes[{u}]")
                        for u, e in enumerate(excludes)]
        contexts = self._contexts(state.model, context_features, m)
        return self._answer(state, ids, k, excludes, contexts)

    def _request(self, state: _State, user, k, exclude, context_features) -> _Request:
        """One user's request, checked (``recommend`` and ``MicroBatcher`` callers)."""
        user = _user_id(user, "user")
        k = self.k if k is None else check.check_k(k)
        # as _answer checks it, but here in the caller's thread: a MicroBatcher request whose
        # list no memory holds would otherwise fail its whole batch first
        check.check_result_size(1, k, _RESULT_BYTES)
        exclude = None if exclude is None else _exclude_ids(exclude, "exclude")
        contexts = self._contexts(state.model, None if context_features is None else
                                  _context_rows(context_features, "context_features", 1,
                                                single=True), 1)
        return _Request(user, k, exclude, None if contexts is None else contexts[0])

    def _contexts(self, model: _Model, context_features, m: int) -> np.ndarray | None:
        width = model.context_width
        if model.ranker is not None and width > 0:
            if context_features is None:
                raise ValueError(f"context_features are required: the ranker takes {width} "
                                 "context columns")
            return _context_rows(context_features, "context_features", m, width=width)
        if context_features is not None and np.size(context_features):
            raise ValueError("context_features given, but the ranker takes no context columns")
        return None

    def _answer(self, state: _State, users: np.ndarray, k: int, excludes,
                contexts, candidates: int | None = None) -> Recommendation:
        """The lists of checked requests (users int64, excludes None or one sorted unique
        int64 array or None per user, contexts None or float32 (users, width)), answered by
        ``state`` with one native recall call (and one per tier of added items, two at most)
        and one native rank call; ``candidates``: the setting as the caller read it (None:
        read it now)."""
        check.check_result_size(users.size, k, _RESULT_BYTES)
        model = state.model
        m = users.size
        out_ids = np.full((m, k), -1, dtype=np.int64)
        out_scores = np.full((m, k), -np.inf, dtype=np.float32)
        codes = np.zeros((m, k), dtype=np.int8)
        # the added items and the users' entries as of one moment: never a user's vector
        # from after an observe call with the item table from before it (nor the reverse)
        extra, entries = _observed(state, users)
        warm, queries, offsets, base_rows, own = _queries(state.model, users, entries)
        cold = np.flatnonzero(~warm)
        if cold.size:
            self._answer_cold(state.model, users, cold, k, excludes, entries, out_ids,
                              out_scores, codes)
        if queries.shape[0]:
            rows = np.flatnonzero(warm)
            if excludes is not None:
                for position, row in enumerate(rows.tolist()):
                    extra_ids = excludes[row]
                    if extra_ids is not None and extra_ids.size:
                        seen = own.get(position)
                        if seen is None:
                            r = base_rows[position]
                            seen = model.seen_indices[model.seen_indptr[r]:
                                                      model.seen_indptr[r + 1]].astype(np.int64)
                        own[position] = np.union1d(seen, extra_ids)
            threads = self._threads(model)
            depth = self.candidates if candidates is None else candidates
            wanted = max(k, depth) if self._deep(model) else k
            # past the items there are (the model's and the added ones) only padding comes
            recallable = model.n_items + (0 if extra is None else extra.count)
            wanted = min(wanted, max(recallable, 1))
            ids, scores = self._recall(model, extra, queries, offsets, base_rows, own, wanted,
                                       threads)
            code = _RECALL
            if model.ranker is not None:
                reorders = self.rerank is not None and self.rerank.reorders
                ids, scores = self._rank(model, extra, queries, ids,
                                         None if contexts is None else contexts[rows],
                                         wanted if reorders else k, threads)
                code = _RANK
            if self.rerank is not None and self.rerank.reorders:
                for position, row in enumerate(rows.tolist()):
                    keep = ids[position] >= 0
                    item_ids, item_scores = ids[position][keep], scores[position][keep]
                    chosen, moved = self._rerank(model, extra, item_ids, item_scores, k)
                    count = chosen.size
                    out_ids[row, :count] = item_ids[chosen]
                    out_scores[row, :count] = item_scores[chosen]
                    codes[row, :count] = np.where(moved, _RERANK, code)
            else:
                width = min(k, ids.shape[1])
                out_ids[rows, :width] = ids[:, :width]
                out_scores[rows, :width] = scores[:, :width]
                codes[rows, :width] = np.where(ids[:, :width] >= 0, code, 0)
        return Recommendation(out_ids, out_scores, _STAGE_NAMES[codes], model.version)

    def _answer_cold(self, model: _Model, users: np.ndarray, cold: np.ndarray, k: int,
                     excludes, entries: dict, out_ids, out_scores, codes) -> None:
        """The popular lists of cold users, less what each has seen (its training row, its
        observed items: ``entries``, as ``_observed`` read them) and its request's
        exclusions; those with neither share one list."""
        shared = None
        for row in cold.tolist():
            user = int(users[row])
            entry = entries.get(row)
            if entry is not None:
                known = entry.items
            elif user < model.n_users:
                known = model.seen_indices[model.seen_indptr[user]:model.seen_indptr[user + 1]]
            else:
                known = _NO_IDS
            extra_ids = None if excludes is None else excludes[row]
            if extra_ids is not None and extra_ids.size:
                known = np.concatenate([known, extra_ids])
            if not known.size:
                if shared is None:
                    shared = self._popular(model, k, _NO_IDS)
                chosen = shared
            else:
                chosen = self._popular(model, k, known)
            out_ids[row, :chosen.size] = chosen
            out_scores[row, :chosen.size] = 0.0
            codes[row, :chosen.size] = _POPULAR

    def _popular(self, model: _Model, k: int, excluded: np.ndarray) -> np.ndarray:
        """The first k popular items not excluded, within the category caps."""
        order = model.popular
        if excluded.size:
            order = order[~np.isin(order, excluded)]
        if self.rerank is None or self.rerank.category_cap is None:
            return order[:k]
        return order[_capped(order, self.rerank, k)]

    def _recall(self, model: _Model, extra: _NewItems | None, queries: np.ndarray,
                offsets: np.ndarray, base_rows: np.ndarray, own: dict, wanted: int,
                threads: int):
        """(ids, scores), (users, wanted) each: the recall lists, best first, ties by smaller
        id, padded with -1 / -inf. ``own[position]``: that user's excluded ids (sorted,
        unique, any range) where they are not the model's seen row ``base_rows[position]``."""
        if not np.isfinite(queries).all():
            raise ValueError("a user vector holds NaN or inf; it cannot be searched")
        excluded = _exclusions(model, base_rows, own)
        # Ordered by the scores returned (float32): where they are rounded (a float64 model,
        # or offsets added), items past the cut can round to a tie with the last one kept and
        # win it by a smaller id. So one more is fetched, and twice as many again while the
        # last fetched ties the last kept (rounding keeps the order otherwise: ties only).
        rounded = extra is not None or offsets.any() or model.index.items.dtype != np.float32
        fetch = wanted + 1 if rounded else wanted
        while True:
            ids, scores = model.index._search_checked(queries, fetch, excluded,
                                                      model.rule_mask, threads)
            if extra is not None:
                more_ids, more_scores = extra.search(queries, fetch, own, threads)
                ids = np.concatenate([ids, more_ids], axis=1)
                scores = np.concatenate([scores, more_scores], axis=1)
            if not rounded:
                return ids, scores
            with np.errstate(over="ignore"):  # a float64 score past float32's range: inf
                shifted = (scores.astype(np.float64) + offsets[:, None]).astype(np.float32)
            ids, shifted = by_score_then_id(ids, shifted, fetch)
            tied = (ids[:, -1] >= 0) & (shifted[:, -1] == shifted[:, wanted - 1])
            if not tied.any():
                return ids[:, :wanted], shifted[:, :wanted]
            fetch *= 2

    def _rank(self, model: _Model, extra: _NewItems | None, queries: np.ndarray,
              ids: np.ndarray, contexts, keep: int, threads: int):
        """The recall lists (users, wanted) scored by the ranker: the ``keep`` best of each,
        ties by smaller id, NaN scores dropped, padded with -1 / -inf. One native call (two
        while added items are among the candidates)."""
        ranker, prepared = model.ranker, model.prepared
        # called with a ranker only; _build prepares the items whenever there is one
        assert ranker is not None and prepared is not None
        users = np.ascontiguousarray(queries, dtype=np.float32)
        valid = ids >= 0
        indptr = np.zeros(ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(valid.sum(axis=1), out=indptr[1:])
        flat = ids[valid]
        n = model.n_items
        if not flat.size or flat.max() < n:
            return ranker.rank(users, (indptr, flat), prepared, user_features=contexts,
                               k=keep, num_threads=threads)
        # Added items have no prepared rows: each table ranked on its own, the two lists
        # merged (the best `keep` of the union are among each table's best `keep`). rank, not
        # score_candidates and a sort: under bfloat16 and int8 rank returns float32's ranking.
        rows = np.repeat(np.arange(ids.shape[0]), np.diff(indptr))
        base = flat < n
        added = np.unique(flat[~base])  # their vectors gathered into a table of their own
        assert extra is not None  # ids past the model's items come from its search
        lists = []
        for part, table, table_rows, id_of in (
                (base, prepared, flat[base], None),
                (~base, extra.vectors(added), np.searchsorted(added, flat[~base]), added)):
            part_indptr = np.zeros_like(indptr)
            np.cumsum(np.bincount(rows[part], minlength=ids.shape[0]), out=part_indptr[1:])
            part_ids, part_scores = ranker.rank(users, (part_indptr, table_rows), table,
                                                user_features=contexts, k=keep,
                                                num_threads=threads)
            if id_of is not None:  # rows of the added table back to item ids
                part_ids = np.where(part_ids >= 0, id_of[np.maximum(part_ids, 0)], -1)
            lists.append((part_ids, part_scores))
        ranked_ids, ranked = by_score_then_id(np.concatenate([lists[0][0], lists[1][0]], axis=1),
                                              np.concatenate([lists[0][1], lists[1][1]], axis=1),
                                              keep)
        return ranked_ids, ranked.astype(np.float32)

    def _rerank(self, model: _Model, extra: _NewItems | None, item_ids: np.ndarray,
                scores: np.ndarray, k: int):
        """(positions chosen in order, moved flags): MMR and caps over a sorted list."""
        rules = self.rerank
        assert rules is not None  # called for a Rerank that reorders only
        categories = None
        if rules.category_cap is not None:
            assert rules.item_categories is not None  # Rerank takes both or neither
            categories = _categories(rules.item_categories, item_ids)
        if rules.diversity is None:
            chosen = _capped(item_ids, rules, k)
        else:
            vectors = _item_rows(model, extra, item_ids).astype(np.float64)
            chosen = mmr(scores, vectors, k, rules.diversity, categories, rules.category_cap)
        moved = chosen != np.arange(chosen.size)
        return chosen, moved

    # ------------------------------------------------------------------ observe

    def observe(self, events: Events | Mapping[str, ArrayLike | None]) -> int:
        """Fold events into the model at once; returns how many were accepted.

        events : a mapping with "user", "item" and optionally "weight" (default 1), each a
            sequence (or a scalar), or ``Events``. For ALS, each user's summed weight of an
            item may be at most the square root of the model dtype's largest value (1.8e19
            for float32, 1.3e154 for float64), as the fold-in squares it, and with the cg
            solver its confidence at most the cube root (6.98e12 for float32); the rating models
            take ratings within their scale (a float32 ExplicitALS, as its fit: max|rating|² x
            the user's ratings, or the training's longest row or column, <= 3.4e38, per
            user; a retrain over every user's ratings may still refuse more). All are checked
            first: on any error nothing is applied (earlier calls' events stay); a fold-in
            that overflows anyway (NaN or inf in a vector) is refused the same way.
        The next ``recommend`` sees the new vectors and excludes the new items.

        Events with ``calls`` (``pending_events()`` of this or another process: a restart's
        replay) are folded in as those calls were, so that the users come back as they
        were (exactly under ALS's Cholesky and ExplicitALS): the calls run together up to
        each one that changed the added items' table, whose next call was solved against
        the new table. The whole replay's weights and item ids are checked first, as
        above; a fold-in of a later group that overflows anyway stops the replay there (the
        groups before it stay applied and logged). Exact for a log that holds every event
        since the model was loaded (``max_pending_events`` may have cut its oldest call
        short).
        """
        events = _events(events)
        if events.users.size == 0:
            return 0
        with self._write_lock:
            unknown_items, max_new_items = self.unknown_items, self.max_new_items
            groups = self._replay_groups(self._state, events, self._calls)
            if len(groups) > 1:  # what can be checked for the whole replay, before any group
                self._check_events(self._state, *events[:3], unknown_items, max_new_items)
                self._updated_rows(self._state, *events[:3])  # the sums after every call
            for position, group in enumerate(groups):
                try:
                    self._apply(self._state, *group[:3], unknown_items, max_new_items)
                except Exception as error:
                    # its "nothing was applied" speaks of this group only (add_note: 3.11+)
                    if position and hasattr(error, "add_note"):
                        error.add_note(f"the replay stopped at group {position + 1} of "
                                       f"{len(groups)}: the {position} group(s) before it "
                                       f"(calls up to {self._calls - 1}) stay applied and "
                                       f"logged")
                    raise
                calls = group.calls
                assert calls is not None  # _replay_groups numbers every group's calls
                self._calls = int(calls[-1]) + 1  # used up by calls applied, not refused ones
                self._remember(group)
        return int(events.users.size)

    def _replay_groups(self, state: _State, events: Events, first: int) -> list[Events]:
        """``events`` cut after every call (``events.calls``) that changes the added items'
        table (``_added_items``: an item still gathering its first users, or one of those
        users' events of it), the calls renumbered consecutively from ``first``. Within a
        group every user is solved once over its whole row against one item table, as each
        call of it would have been: the users of the call after a change were solved
        against the changed table (and YᵀY). Writer lock held."""
        users, items, weights, calls = events
        size = users.size
        if calls is None:  # one call (observe's usual case: no more numpy calls than this)
            return [Events(users, items, weights, np.full(size, first, np.int64))]
        new_call = np.r_[True, calls[1:] != calls[:-1]]
        starts = np.flatnonzero(new_call)
        numbered = first + np.cumsum(new_call) - 1
        n = state.model.n_items
        cuts = []
        if starts.size > 1 and (items >= n).any():
            wanted = self.new_item_users
            owners: dict[int, list[int]] = {}  # each added item's first users, as they go
            for begin, end in zip(starts.tolist(), [*starts[1:].tolist(), size]):
                beyond = items[begin:end] >= n
                call_items, call_users = items[begin:end][beyond], users[begin:end][beyond]
                changed = False
                for item in np.unique(call_items).tolist():
                    first_users = owners.setdefault(
                        item, list(state.new_item_users.get(item, ())))
                    theirs = call_users[call_items == item].tolist()
                    changed = changed or len(first_users) < wanted or \
                        bool(set(theirs) & set(first_users))
                    for user in theirs:
                        if len(first_users) < wanted and user not in first_users:
                            first_users.append(user)
                if changed and end < size:
                    cuts.append(end)
        bounds = [0, *cuts, size]
        return [Events(users[a:b], items[a:b], weights[a:b], numbered[a:b])
                for a, b in zip(bounds[:-1], bounds[1:])]

    def pending_events(self, clear: bool = False) -> Events:
        """The logged events (oldest first, at most ``max_pending_events``); ``clear``
        empties the log (events observed afterwards are kept for the next retrain)."""
        clear = check.check_flag(clear, "clear")
        with self._write_lock:  # (the log is trimmed whenever max_pending_events is assigned)
            events = _concatenate(list(self._log))
            if clear:
                self._log.clear()
                self._logged = 0
        return events

    def _remember(self, events: Events) -> None:
        """Log ``events``: a copy (the caller's arrays may be reused, or views of larger
        ones), merged with the newest chunks as a binary counter merges (each chunk smaller
        than the one before it): a million one-event calls log ~20 arrays of 24 bytes an
        event, not a million small ones of ~700 bytes, each event copied O(log n) times."""
        self._logged += events.users.size
        chunks, size = [events], events.users.size
        while self._log and self._log[-1].users.size <= size:
            chunks.append(self._log.pop())
            size += chunks[-1].users.size
        # one new array each, in log order (a lone chunk copied the same way)
        self._log.append(_concatenate(chunks[::-1]))
        self._trim_log()

    def _trim_log_now(self) -> None:
        """``max_pending_events`` was assigned: the log trimmed to it at once, so that
        ``info()`` and ``dropped_events`` follow (none yet in the constructor)."""
        lock = getattr(self, "_write_lock", None)
        if lock is not None:
            with lock:
                self._trim_log()

    def _trim_log(self) -> None:
        """Drop the oldest logged events beyond ``max_pending_events`` (writer lock held)."""
        keep = self.max_pending_events
        while self._logged > keep:
            oldest = self._log[0]
            surplus = self._logged - keep
            if oldest.users.size <= surplus:
                self._log.popleft()
                self._logged -= oldest.users.size
                self.dropped_events += oldest.users.size
            else:
                self._log[0] = Events(*(part[surplus:] for part in oldest))
                self._logged -= surplus
                self.dropped_events += surplus

    @staticmethod
    def _check_events(state: _State, users, items, weights, unknown_items: str,
                      max_new_items: int) -> None:
        """What ``_apply`` refuses before it computes anything: weights the model does not
        take, and item ids that may not be added (``unknown_items``, ``max_new_items``)."""
        model = state.model
        n = model.n_items
        if model.kind == "als" and model.model.confidence == "linear" and (weights < 0).any():
            raise ValueError(f"weights must be >= 0 for this ALS model (confidence 1 + alpha * "
                             f"r), got {weights.min()}")
        if model.kind == "bpr" and (weights <= 0).any():
            raise ValueError("weights must be > 0 for BPR (each event is a positive)")
        if model.kind in ("svd", "explicit"):  # as the model's own fit checks them
            assert model.rating_scale is not None  # _build keeps the rating models' scale
            low, high = model.rating_scale  # the served fit's, not a later refit's
            if weights.min() < low or weights.max() > high:
                raise ValueError(f"weights are ratings for {type(model.model).__name__} and "
                                 f"must lie in its rating_scale [{low}, {high}], got "
                                 f"{weights.min()} to {weights.max()}")
        extra = state.new_items
        beyond = items >= n
        unknown = np.unique(items[beyond]) if beyond.any() else _NO_IDS
        if extra is not None and unknown.size:
            unknown = unknown[~extra.has(unknown)]
        if unknown.size:
            if unknown_items == "reject":
                raise ValueError(f"unknown item ids {unknown[:5].tolist()} (the model has "
                                 f"{n} items; unknown_items='reject')")
            limit = n + max_new_items
            if unknown.max() >= limit:
                raise ValueError(f"item id {int(unknown.max())} is beyond the items that may be "
                                 f"added (< {limit}: n_items + max_new_items)")

    def _updated_rows(self, state: _State, users, items, weights) -> tuple[dict, dict]:
        """Each user's row after the events (user -> (current _User, merged items, merged
        weights, the events' items, their weights)) and, for ExplicitALS, each user's ratings
        per item; the sums checked as the model takes them (writer lock held)."""
        model = state.model
        if users.size > 1:
            order = np.argsort(users, kind="stable")
            users, items, weights = users[order], items[order], weights[order]
        # each user's run of events: [begin, end)
        bounds = [0, *(np.flatnonzero(users[1:] != users[:-1]) + 1).tolist(), users.size]
        updated = {}
        for begin, end in zip(bounds[:-1], bounds[1:]):
            user = int(users[begin])
            current = state.users.get(user)
            if current is None:
                current = self._initial_user(model, user)
            merged_items, merged_weights = _merge(current.items, current.weights, items[begin:end],
                                                  weights[begin:end])
            if model.kind == "als":  # its solve squares the (summed) weights
                _check_weight_bound(merged_weights, user, model.item_vectors.dtype,
                                    model.model)
            updated[user] = (current, merged_items, merged_weights, items[begin:end],
                             weights[begin:end])
        counts = {}  # ExplicitALS: each user's ratings per item, after these events
        if model.kind == "explicit":
            counts = {user: _merge(entry[0].items, entry[0].counts, entry[3],
                                   np.ones(entry[3].size))[1] for user, entry in updated.items()}
            # as fit: refuse ratings whose solves would overflow
            _check_ratings_fit(updated, counts, model.longest_ratings, model.item_vectors.dtype)
        return updated, counts

    def _apply(self, state: _State, users, items, weights, unknown_items: str,
               max_new_items: int) -> None:
        """Fold events into ``state`` (writer lock held): compute everything, then publish.
        ``unknown_items`` and ``max_new_items``: the settings as the caller read them."""
        self._check_events(state, users, items, weights, unknown_items, max_new_items)
        model = state.model
        n = model.n_items
        beyond = items >= n
        arrival = users, items, weights  # an added item's first users: in this order
        updated, counts = self._updated_rows(state, users, items, weights)
        if model.kind == "als":
            vectors = self._als_fold_in(state, updated)
        elif model.kind == "explicit":
            vectors = self._explicit_fold_in(state, updated, counts)
        else:  # each setting read once for the call, as for every other setting
            steps, lr = self.sgd_steps, self.sgd_lr
            vectors = {user: self._sgd_fold_in(state, user, entry, steps, lr)
                       for user, entry in updated.items()}
        # never published: a NaN vector would fail that user's every request
        check_trained("the fold-in", [vector for vector, _ in vectors.values()] +
                      [np.float64(offset) for _, offset in vectors.values()],
                      f"the events' weights are too large for this model"
                      f"{'' if self.sgd_lr is None else ', or sgd_lr too high'}; nothing was "
                      f"applied")
        new_users = {user: _User(vectors[user][0], vectors[user][1], entry[1], entry[2],
                                 bool(vectors[user][0].any()), counts.get(user),
                                 entry[0].updates + 1)
                     for user, entry in updated.items()}
        added = self._added_items(state, *arrival, new_users) if beyond.any() else None
        # publish: each user as one object, then the new item table as one object (and, for
        # the writer alone, the added items' first users); ``published`` is odd meanwhile,
        # so a reader that overlaps this reads again (_observed)
        state.published += 1
        try:
            state.users.update(new_users)
            if added is not None:
                state.new_item_users.update(added[1])
                state.new_item_ratings.update(added[2])
                state.new_items = added[0]
        finally:
            state.published += 1
        if added is not None:
            self._fold_later(state)

    def _initial_user(self, model: _Model, user: int) -> _User:
        explicit = model.kind == "explicit"
        if user < model.n_users:
            seen = model.seen
            row = slice(seen.indptr[user], seen.indptr[user + 1])
            vector = np.array(model.user_vectors[user])
            counts = None
            if explicit:
                assert model.seen_counts is not None  # _build counts ExplicitALS's ratings
                counts = model.seen_counts.data[row].astype(np.float64)
            return _User(vector, float(model.user_offsets[user]),
                         seen.indices[row].astype(np.int64), seen.data[row].astype(np.float64),
                         bool(vector.any()), counts)
        zeros = np.zeros(model.item_vectors.shape[1], model.item_vectors.dtype)
        return _User(zeros, model.global_mean, np.zeros(0, np.int64), np.zeros(0), False,
                     np.zeros(0) if explicit else None)

    def _als_fold_in(self, state: _State, updated: dict) -> dict:
        """One ALS user half-sweep over every updated user's whole row (items with a vector):
        against the model's item table itself while the rows hold only its items, else
        against only the item rows those users touch (columns renumbered)."""
        model = state.model
        als = model.model
        extra = state.new_items
        n = model.n_items
        rows, added = [], False
        for current, merged_items, merged_weights, _, _ in updated.values():
            if merged_items.size and merged_items[-1] >= n:  # (sorted) beyond the model
                usable = _with_vectors(n, extra, merged_items)
                added = added or extra is not None
                merged_items, merged_weights = merged_items[usable], merged_weights[usable]
            rows.append((merged_items, merged_weights))
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.fromiter((r[0].size for r in rows), np.int64, len(rows)))
        columns = np.concatenate([r[0] for r in rows])
        data = np.concatenate([r[1] for r in rows]).astype(als.dtype)
        table = model.item_vectors
        if added:
            touched = np.unique(columns)
            columns = np.searchsorted(touched, columns)
            table = _item_rows(model, extra, touched)
        matrix = CsrArrays(indptr, columns.astype(np.int32), data, (len(rows), table.shape[0]))
        gram = model.gram if extra is None or extra.gram is None else extra.gram
        assert gram is not None  # _build makes an ALS model's YᵀY
        start = np.stack([entry[0].vector for entry in updated.values()])
        solved = fold_in(als, table, matrix, start, gram,
                         num_threads=self._fold_in_threads(len(rows)))
        return {user: (solved[position], 0.0) for position, user in enumerate(updated)}

    def _fold_in_threads(self, users: int) -> int:
        """Threads for re-solving ``users`` users: a few solve in microseconds, so one thread,
        no team to wake on busy cores."""
        return 1 if users < 64 else (self._threads_given or 0)

    def _explicit_fold_in(self, state: _State, updated: dict, counts: dict) -> dict:
        """ExplicitALS: each updated user re-solved exactly (vector and bias, the items fixed)
        over every rating known for them, the training ratings and each observed event (a
        repeated pair is one more rating, as in fit), by the model's own half-sweep kernel.
        Items without a vector yet (added, still unfilled) are left out."""
        model = state.model
        explicit = model.model
        extra = state.new_items
        n = model.n_items
        column_parts, means, lengths = [], [], []
        for user, (_, merged_items, merged_sums, _, _) in updated.items():
            rated = counts[user]
            usable = _with_vectors(n, extra, merged_items)
            times = rated[usable].astype(np.int64)
            column_parts.append(np.repeat(merged_items[usable], times))
            means.append(np.repeat(merged_sums[usable] / rated[usable], times))
            lengths.append(int(times.sum()))
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        columns = np.concatenate(column_parts)
        touched = np.unique(columns)  # the item rows these users need, renumbered
        table = np.ascontiguousarray(_item_rows(model, extra, touched), dtype=explicit.dtype)
        matrix = CsrArrays(indptr, np.searchsorted(touched, columns).astype(np.int32),
                           np.concatenate(means).astype(explicit.dtype),
                           (len(lengths), touched.size))
        item_bias = model.item_bias
        biased = item_bias is not None
        X = np.stack([entry[0].vector for entry in updated.values()]).astype(explicit.dtype)
        own = other = None
        mean = model.global_mean if biased else 0.0
        if item_bias is not None:
            other = np.zeros(touched.size, dtype=explicit.dtype)
            base = touched < n
            other[base] = item_bias[touched[base]]
            other[~base] = _added_bias(extra, touched[~base])
            own = np.array([entry[0].offset - mean for entry in updated.values()],
                           dtype=explicit.dtype)
        backend = resolve_backend(explicit.backend, "sgd", needs="explicit_als_half_sweep")
        failed = backend.explicit_als_half_sweep(matrix, table, X, other, own, mean,
                                                 explicit.reg, explicit.bias_reg,
                                                 self._fold_in_threads(len(lengths)))
        if failed:  # the solver kept those users' old vectors: not what their ratings say
            raise ValueError(f"the fold-in diverged: {failed} user system(s) were not positive "
                             f"definite in {np.dtype(explicit.dtype).name} (reg too small for "
                             f"these ratings, or sums that overflowed it); nothing was applied")
        return {user: (X[position], float(mean + own[position]) if own is not None else 0.0)
                for position, user in enumerate(updated)}

    @staticmethod
    def _sgd_fold_in(state: _State, user: int, entry, steps: int,
                     lr: float | None) -> tuple[np.ndarray, float]:
        """``steps`` SGD passes (``sgd_steps``, at ``sgd_lr``: None, the model's rates) over
        this call's events of one user, items fixed: SVD/SVD++: squared error of offset +
        p·q_i + b_i against the rating (the user bias learns too when the model is biased);
        BPR: the pairwise loss against uniformly drawn unseen items of the model, drawn
        afresh for each of the user's updates (seeded by the user and its update count, so
        that a replay of the log draws them again). Events of items without a vector yet
        are left out."""
        model = state.model
        trained = model.model
        current, merged_items, _, items, weights = entry
        if model.kind == "svd":  # the user terms' own rates: lr_bu, lr_pu; reg_bu, reg_pu
            rates, regs = trained._rate_tuples()
            lr_bias, lr_vector = (rates[0], rates[2]) if lr is None else (lr, lr)
            reg_bias, reg_vector = regs[0], regs[2]
        else:
            lr_bias = lr_vector = trained.lr if lr is None else lr
            reg_bias = reg_vector = trained.reg
        vector = current.vector.astype(np.float64)
        offset = current.offset
        # as in the ALS fold-in: items without a vector yet (added, still unfilled) are left
        # out; they get theirs from their first users afterwards (_added_items)
        usable = _with_vectors(model.n_items, state.new_items, items)
        items, weights = items[usable], weights[usable]
        table = _item_rows(model, state.new_items, items).astype(np.float64)
        bias = np.zeros(items.size)
        if model.item_bias is not None:
            base = items < model.n_items
            bias[base] = model.item_bias[items[base]]
            bias[~base] = _added_bias(state.new_items, items[~base])
        rng = np.random.default_rng((user, current.updates))
        biased = model.kind == "svd" and model.item_bias is not None
        if model.kind == "svd" and not biased:
            # unbiased: r̂ = q·p once the user is known (μ was only its cold users' estimate)
            offset = 0.0
        # a step that overflows gives inf/NaN, which _apply refuses: no warning here
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(steps):
                for t in rng.permutation(items.size):
                    q = table[t]
                    if model.kind == "svd":
                        error = weights[t] - (offset + vector @ q + bias[t])
                        if biased:
                            offset += lr_bias * (error - reg_bias * (offset - model.global_mean))
                        vector += lr_vector * (error * q - reg_vector * vector)
                    else:
                        negative = _unseen_item(rng, model.n_items, merged_items)
                        if negative < 0:
                            continue
                        q_neg = model.item_vectors[negative].astype(np.float64)
                        b_neg = 0.0 if model.item_bias is None else float(model.item_bias[negative])
                        x = vector @ (q - q_neg) + bias[t] - b_neg
                        gradient = 1.0 / (1.0 + np.exp(x))
                        vector += lr_vector * (gradient * (q - q_neg) - reg_vector * vector)
            return vector.astype(model.item_vectors.dtype), float(offset)

    def _added_items(self, state: _State, users, items, weights,
                     new_users: dict) -> tuple[_NewItems, dict, dict] | None:
        """The added items (``_NewItems``) with new vectors (and biases) for the items
        that are still gathering their first users or that one of those has events of in
        this call (each from those users: ``_als_item_vector``, ``_rating_item_vector``, or
        BPR's mean of their vectors), those items' first users (item id -> user ids) for
        ``state.new_item_users`` and, for the rating models, their ratings for
        ``state.new_item_ratings``; None when nothing changed. ``state`` is left as it is:
        the caller publishes them."""
        model = state.model
        extra = state.new_items
        wanted = self.new_item_users
        # still gathering first users, or one of them has events of it here (they sum in)
        growing = [int(i) for i in np.unique(items[items >= model.n_items])
                   if len(state.new_item_users.get(int(i), ())) < wanted
                   or np.isin(users[items == i], state.new_item_users.get(int(i), ())).any()]
        if not growing:
            return None
        rated = model.kind in ("svd", "explicit")
        biased = rated and model.item_bias is not None
        vectors, biases = [], []
        first_users, first_ratings = {}, {}

        def entry_of(user: int) -> _User:  # as of this call: new vectors over published ones
            return new_users[user] if user in new_users else state.users[user]

        # a solve too large for the table's dtype gives inf, which the check below refuses
        with np.errstate(over="ignore", invalid="ignore"):
            for item in growing:
                owners = list(state.new_item_users.get(item, ()))
                for user in users[items == item]:
                    if len(owners) < wanted and int(user) not in owners:
                        owners.append(int(user))
                entries = [entry_of(u) for u in owners]
                item_bias = 0.0
                if model.kind == "als":
                    vector = self._als_item_vector(state, item, owners, entries)
                elif rated:  # every rating its first users gave it, this call's included
                    ours = (items == item) & np.isin(users, owners)
                    before = state.new_item_ratings.get(item, (_NO_IDS, np.zeros(0)))
                    raters, ratings = np.r_[before[0], users[ours]], np.r_[before[1], weights[ours]]
                    first_ratings[item] = (raters, ratings)
                    vector, item_bias = self._rating_item_vector(
                        state, [entry_of(u) for u in raters.tolist()], ratings)
                else:
                    vector = np.mean(np.stack([e.vector for e in entries]).astype(np.float64),
                                     axis=0)
                vectors.append(vector)
                biases.append(item_bias)
                first_users[item] = tuple(owners)
            dtype = model.item_vectors.dtype
            table = np.array(vectors, dtype=dtype)  # growing is sorted and unique
            bias = np.array(biases, dtype=dtype) if biased else None
        # never published: a NaN or inf vector would fail every search of the added items
        check_trained("an added item's solve", [table, bias],
                      "the events' weights are too large for this model; nothing was applied")
        ids = np.array(growing, dtype=np.int64)
        gram = None
        if model.gram is not None:  # YᵀY over the items as served: the old rows out, the new in
            gram = model.gram if extra is None else extra.gram
            assert gram is not None  # an ALS model's added items carry their YᵀY (changed)
            if extra is not None:
                old = extra.vectors(ids[extra.has(ids)]).astype(np.float64)
                gram = gram - old.T @ old
            new = table.astype(np.float64)
            gram = gram + new.T @ new
        if extra is None:
            extra = _NewItems(None, None, None, None, 0)
        backlog = _FOLD_BACKLOG if extra.count >= self._background_fold_items else 1
        changed = extra.changed(ids, table, bias, gram, self.rerank, model.model.backend,
                                self._ready_for(model), self._threads(model), backlog)
        return changed, first_users, first_ratings

    def _ready_for(self, model: _Model) -> int:
        """The list length searches of the added items are prepared for."""
        return max(self.k, self.candidates) if self._deep(model) else self.k

    def _fold_later(self, state: _State) -> None:
        """Start a fold of the added items' recent rows on a thread of its own when their
        tier outgrew its limit and they number _BACKGROUND_FOLD_ITEMS or more (writer lock
        held; one such thread at a time). The thread builds the folded tiers without any
        lock, then publishes them (writer lock) unless the state moved on: a swap, or a fold
        by a change (a backlog past _FOLD_BACKLOG). Rows set meanwhile stay recent."""
        extra = state.new_items
        if (self._folding or extra is None or extra.count < self._background_fold_items
                or not extra.outgrown()):
            return
        self._folding = True
        model = state.model
        options = (self.rerank, model.model.backend, self._ready_for(model), self._threads(model))
        try:
            # Not a daemon: the interpreter's exit joins it before finalization. A daemon
            # thread still in the fold's native calls then could be ended inside them, and a
            # C++ frame being unwound that way aborts the process ("terminate called without
            # an active exception", about 1 exit in 60 under a writer thread's observes).
            thread = threading.Thread(target=self._fold, args=(state, extra, options),
                                      name="recfuse-fold", daemon=False)
            thread.start()
        except Exception:  # no thread to be had (interpreter exit, memory): a later call
            # tries again, and past the backlog a change folds at once; observe goes on
            self._folding = False
            _log.warning("could not start a thread to fold the added items", exc_info=True)
            return
        self._fold_thread = thread

    def _fold(self, state: _State, before: _NewItems, options: tuple) -> None:
        """The fold thread's work (see _fold_later). A failure (e.g. no memory for the new
        tier) changes nothing served: it is logged, and the next outgrown tier tries again
        (or a change folds at once past the backlog)."""
        try:
            folded = before.folded(*options)
            with self._write_lock:
                now = state.new_items
                if self._state is state and now is not None and now.settled is before.settled:
                    rebased = now.rebased(before, folded, *options)
                    state.published += 1  # as observe publishes (see _observed)
                    try:
                        state.new_items = rebased
                    finally:
                        state.published += 1
        except Exception:
            _log.warning("folding the added items' recent rows failed; they stay recent",
                         exc_info=True)
        finally:
            self._folding = False

    @staticmethod
    def _als_item_vector(state: _State, item: int, owners: list, entries: list) -> np.ndarray:
        """ALS: an added item's vector, the exact solve of the item's own system with the
        users fixed, (XᵀX + Σ_u (c_ui − 1) x_u x_uᵀ + λI) y = Σ_u c_ui p_ui x_u, over its
        first users' summed weights and current vectors (every other user in XᵀX by its
        trained vector), in float64. A mean of user vectors is on the users' scale, not the
        items': one user's event put a new item in nearly every list."""
        model = state.model
        als = model.model
        weights = np.array([e.weights[np.searchsorted(e.items, item)] for e in entries])
        c, p = confidence_and_preference(weights, als.alpha, als.confidence)
        X = np.stack([e.vector for e in entries]).astype(np.float64)
        known = np.array([u for u in owners if u < model.n_users], dtype=np.int64)
        old = model.user_vectors[known].astype(np.float64)
        assert model.user_gram is not None  # _build makes an ALS model's XᵀX
        system = model.user_gram - old.T @ old + (X.T * c) @ X
        system[np.diag_indices_from(system)] += als.regularization
        if not p.any():  # no positive: the exact solution is zero, as in fit
            return np.zeros(X.shape[1])
        if als.regularization > 0:  # positive definite, unless rounding says otherwise
            try:
                return np.linalg.solve(system, X.T @ (c * p))
            except np.linalg.LinAlgError:  # weights so large that λ is lost in rounding
                raise ValueError(f"the events' weights of added item {item} are too large to "
                                 f"solve its vector (its system is singular in float64); "
                                 f"nothing was applied") from None
        # regularization 0: singular where the users' vectors span fewer dimensions than
        # the factors, which solve does not notice (it answers rounding noise): least norm
        return np.linalg.lstsq(system, X.T @ (c * p), rcond=None)[0]

    @staticmethod
    def _rating_item_vector(state: _State, raters: list, ratings: np.ndarray):
        """SVD, SVD++, ExplicitALS: an added item's (vector, bias), the exact solve of its
        ``ratings`` (each by the user whose ``_User`` entry stands at its place in
        ``raters``) against their vectors and offsets (μ + b_u), users fixed: ExplicitALS's
        item half-sweep, min Σ (r − offset_u − b − x_uᵀy)² + n (λ|y|² + λ_b b²) over its
        n ratings, which is also where SVD's SGD updates of the item come to rest (with
        reg_qi, reg_bi). A mean of user vectors ignored the ratings: an item its first users
        rated 1 star looked like one they rated 5. In float64; bias 0 when unbiased."""
        model = state.model
        trained = model.model
        if model.kind == "explicit":
            reg, reg_bias = trained.reg, trained.bias_reg
        else:  # SVD's rates: (bu, bi, pu, qi, yj)
            _, regs = trained._rate_tuples()
            reg_bias, reg = regs[1], regs[3]
        Z = np.stack([rater.vector for rater in raters]).astype(np.float64)
        target = ratings - np.array([rater.offset for rater in raters])
        diagonal = np.full(Z.shape[1], float(reg))
        biased = model.item_bias is not None
        if biased:
            Z = np.c_[Z, np.ones(len(raters))]
            diagonal = np.r_[diagonal, float(reg_bias)]
        if diagonal.all():  # positive definite
            solution = np.linalg.solve(Z.T @ Z + len(raters) * np.diag(diagonal), Z.T @ target)
        else:  # a reg of 0: singular with fewer ratings than factors, which solve does not
            # notice (it answers rounding noise): the least-norm solution, ranks read from Z
            stacked = np.r_[Z, np.diag(np.sqrt(len(raters) * diagonal))]
            solution = np.linalg.lstsq(stacked, np.r_[target, np.zeros(Z.shape[1])],
                                       rcond=None)[0]
        return solution[:model.item_vectors.shape[1]], float(solution[-1]) if biased else 0.0


# ---------------------------------------------------------------------- re-ranking

# ---------------------------------------------------------------------- re-ranking


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float,
        categories: np.ndarray | None = None, cap: int | None = None) -> np.ndarray:
    """Maximal marginal relevance: positions of up to k of the candidates (given best first),
    each maximising ``diversity * relevance - (1 - diversity) * max cosine to those chosen``
    (relevance: scores rescaled to [0, 1] in float64, an infinite score counting as the
    largest or smallest; ties, values within ``_MMR_TIE`` of each other, to the earlier
    candidate), never more than ``cap`` of one category (``categories[i] < 0``: none).
    ``cap`` needs ``categories``; ``vectors`` has one row per score."""
    scores, vectors = np.asarray(scores), np.asarray(vectors)
    count = scores.size
    if scores.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != count:
        raise ValueError(f"mmr needs scores (n,) and vectors (n, d), got {scores.shape} and "
                         f"{vectors.shape}")
    k = check.check_int(k, "k", minimum=0)
    diversity = _checked_diversity(diversity)
    # float64: in float32, 3e38 - (-3e38) overflowed, and cosines are equal to ~1e-16, not
    # float32's 1e-7
    scores = np.asarray(scores, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    if np.isnan(scores).any():  # a NaN would make every relevance NaN, the order arbitrary
        raise ValueError("mmr's scores must not be NaN")
    if not check.all_finite(vectors):
        raise ValueError("mmr's vectors must be finite (no NaN or inf)")
    if cap is not None:
        cap = check.check_int(cap, "cap", minimum=1)
        if categories is None:
            raise ValueError("mmr's cap needs categories (one per candidate)")
        categories = np.asarray(categories)
        if categories.shape != (count,):
            raise ValueError(f"mmr needs one category per candidate ({count}), got "
                             f"{categories.shape}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    scores = np.clip(scores, -1e300, 1e300)  # +-inf would make NaN relevances
    low, high = float(scores.min()), float(scores.max())
    relevance = (scores - low) / (high - low) if high > low else np.ones(count)
    # each row scaled by a power of two (exactly) to a largest magnitude in [0.5, 1): the
    # products of rows near 1e200 would overflow, those of subnormal rows underflow
    exponents = np.frexp(np.abs(vectors).max(axis=1, initial=0.0))[1]
    vectors = np.ldexp(vectors, -exponents[:, None])
    norms = np.linalg.norm(vectors, axis=1)
    closest = np.zeros(count)  # max cosine to the chosen ones
    available = np.ones(count, dtype=bool)
    used: dict = {}
    chosen: list[int] = []
    while len(chosen) < k and available.any():
        value = diversity * relevance - (1 - diversity) * closest
        value[~available] = -np.inf
        # the earliest within rounding of the best: equal cosines computed two ways differ
        # in the last bits, which must not decide a tie against the better-ranked item
        pick = int(np.argmax(value >= value.max() - _MMR_TIE))
        chosen.append(pick)
        available[pick] = False
        if cap is not None and categories is not None and categories[pick] >= 0:
            category = int(categories[pick])
            used[category] = used.get(category, 0) + 1
            if used[category] >= cap:
                available &= categories != category
        # the dot product over the norms (0 for a zero vector): orthogonal integer vectors
        # give exactly 0, which unit vectors did not
        scale = norms * norms[pick]
        cosine = np.divide(vectors @ vectors[pick], scale, out=np.zeros(count),
                           where=scale > 0)
        closest = np.maximum(closest, cosine) if len(chosen) > 1 else cosine
    return np.array(chosen, dtype=np.int64)


_MMR_TIE = 1e-12  # MMR values this close count as equal (ties to the better-ranked item)


def _not_a_retriever(value, name: str) -> TypeError:
    """The error for a ``retriever`` (``swap_model``'s ``source``) of the wrong kind."""
    return TypeError(f"{name} must be a fitted recfuse.ALS, SVD, SVDpp, ExplicitALS or BPR "
                     f"or a model file path, got {type(value).__name__}")


def _checked_diversity(value) -> float:
    """MMR's lambda (``Rerank``'s and ``mmr``'s ``diversity``): a number in [0, 1]."""
    value = check.check_float(value, "diversity", minimum=0.0)
    if value > 1:
        raise ValueError(f"diversity must be in [0, 1] (MMR's lambda), got {value}")
    return value


def _capped(item_ids: np.ndarray, rules: Rerank, k: int) -> np.ndarray:
    """Positions of the first k items (in order) within the category cap."""
    # called when rules.category_cap is set; Rerank takes item_categories with it
    assert rules.item_categories is not None
    categories = _categories(rules.item_categories, item_ids)
    used: dict = {}
    chosen = []
    for position, category in enumerate(categories.tolist()):
        if category >= 0:
            if used.get(category, 0) >= rules.category_cap:
                continue
            used[category] = used.get(category, 0) + 1
        chosen.append(position)
        if len(chosen) == k:
            break
    return np.array(chosen, dtype=np.int64)


def _categories(categories: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """The category of each id, -1 for ids beyond the table (added items)."""
    inside = item_ids < categories.size
    return np.where(inside, categories[np.where(inside, item_ids, 0)], -1)


# ---------------------------------------------------------------------- helpers


def _user_id(value, name: str) -> int:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = value[()]  # a 0-d integer array (np.array(3)), as the models' recommend take
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer id, got {type(value).__name__} {value!r:.40}")
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(value)}")
    if int(value) > check.INT64_MAX:
        raise ValueError(f"{name} must be <= {check.INT64_MAX} (ids are int64), got {int(value)}")
    return int(value)


# The largest (summed) event weight an ALS fold-in of each dtype takes: the square root of
# the dtype's largest value (1.8e19 in float32, 1.3e154 in float64), since the solve squares
# the weights (its residual norms) and larger ones overflow there.
_WEIGHT_BOUNDS = {np.dtype(t): float(np.sqrt(np.finfo(t).max)) for t in (np.float32, np.float64)}


class UserEventError(ValueError):
    """Events refused for what they would do to one user's vector; ``user`` is the user's
    row, and ``naming(name)`` the message naming the user otherwise (a server that speaks
    the log's ids says which id)."""

    def __init__(self, user: int, before: str, after: str) -> None:
        self.user, self._before, self._after = user, before, after
        super().__init__(self.naming(str(user)))

    def naming(self, name: str) -> str:
        return f"{self._before}{name}{self._after}"


def _check_weight_bound(weights: np.ndarray, user: int, dtype, als) -> None:
    """Refuse a user's summed weights that ``als`` (an ALS of ``dtype``) cannot fold in: past
    ``_WEIGHT_BOUNDS``, and for the cg solver past the weight whose confidence reaches
    ``CG_CONFIDENCE_BOUNDS`` (its steps multiply three confidences)."""
    from .models.als import CG_CONFIDENCE_BOUNDS, largest_confidence

    if als.solver == "cg":  # as the fold-in will compute it, in the model's dtype
        confidence = largest_confidence(weights, als.params, dtype)
        bound = CG_CONFIDENCE_BOUNDS[np.dtype(dtype)]
        if confidence > bound:
            raise UserEventError(user, "events weight: user ",
                                 f"'s summed weight of an item would reach "
                                 f"{float(np.abs(weights).max()):.3g}, a confidence of "
                                 f"{confidence:.3g}, beyond the {bound:.3g} a {np.dtype(dtype)} "
                                 f"ALS model takes (the cg solver's steps multiply three "
                                 f"confidences)")
    bound = _WEIGHT_BOUNDS[np.dtype(dtype)]
    if weights.size and not (weights.max() <= bound and weights.min() >= -bound):
        largest = float(np.abs(weights).max())
        raise UserEventError(user, "events weight: user ",
                             f"'s summed weight of an item would reach {largest:.3g}, beyond "
                             f"the {bound:.3g} a {np.dtype(dtype)} ALS model takes (the "
                             f"fold-in squares it)")


def _gram64(table: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
    """XᵀX summed in float64, a block of rows at a time (no float64 copy of the table)."""
    gram = np.zeros((table.shape[1], table.shape[1]))
    for begin in range(0, table.shape[0], rows):
        block = np.asarray(table[begin:begin + rows], dtype=np.float64)
        gram += block.T @ block
    return gram


def _added_bias(extra: _NewItems | None, ids: np.ndarray) -> np.ndarray:
    """The biases of added items ``ids`` (zero where the model kind keeps none)."""
    return np.zeros(ids.size) if extra is None or not ids.size else extra.biases(ids)


def _check_ratings_fit(updated: dict, counts: dict, longest: int, dtype) -> None:
    """ExplicitALS: refuse the ratings its fit refuses, over each updated user's ratings (a
    repeated pair's mean standing for its ratings) and row length, with the training's
    longest row or column."""
    for user, (_, _, merged_sums, _, new_weights) in updated.items():
        rated = counts[user]
        top = float(max(np.abs(new_weights).max(initial=0.0),
                        np.abs(merged_sums / np.maximum(rated, 1)).max(initial=0.0)))
        try:
            check_ratings_fit(top, max(int(rated.sum()), longest), dtype)
        except ValueError as error:
            raise UserEventError(user, "events weight (user ", f"): {error}") from None


def _context_rows(value, name: str, rows: int, *, width: int | None = None,
                  single: bool = False) -> np.ndarray:
    expected = f"({rows}, {width if width is not None else 'w'})"
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged nesting of sequences
        raise ValueError(f"{name} must have shape {expected}, got a ragged sequence") from None
    if array.dtype.kind not in "fiu" or array.dtype == bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if single and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] != rows or (width is not None and array.shape[1] != width):
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    # finite as float32: a float64 beyond its range would overflow the cast (to inf, with a
    # RuntimeWarning that -W error turns into the error raised)
    rows_of = check.finite_in(array, np.dtype(np.float32), name)
    if isinstance(value, np.ndarray) and np.may_share_memory(rows_of, value):
        # the caller's own array: a queued request (MicroBatcher.submit) must not change
        # when the caller refills it
        return rows_of.copy(order="C")
    return np.ascontiguousarray(rows_of)


def _events(events) -> Events:
    """Events from a mapping (user, item, weight, call) or an Events tuple, checked."""
    weights: ArrayLike | None
    calls: ArrayLike | None
    if isinstance(events, Events):
        users, items, weights, calls = events
    elif isinstance(events, collections.abc.Mapping):
        unknown = set(events) - {"user", "item", "weight", "call"}
        if unknown:
            raise ValueError(f"events has unknown fields {sorted(unknown)}; expected user, item "
                             f"and optionally weight and call")
        if "user" not in events or "item" not in events:
            raise ValueError("events must have the fields 'user' and 'item'")
        users, items, weights = events["user"], events["item"], events.get("weight")
        calls = events.get("call")
    else:
        raise TypeError(f"events must be a mapping with user/item/weight or recfuse.Events, "
                        f"got {type(events).__name__}")
    users = check.check_ids(users, "events user", check.INT32_MAX)
    items = check.check_ids(items, "events item", check.INT32_MAX)
    if users.size != items.size:
        raise ValueError(f"events user and item must have the same length, got {users.size} "
                         f"and {items.size}")
    if weights is None:
        weights = np.ones(users.size)
    else:
        weights = _per_event(weights, "weight", "fiu", "real numbers", np.float64, users.size)
        if not np.isfinite(weights).all():
            raise ValueError("events weight must be finite, got NaN or inf")
    if calls is not None:
        calls = _per_event(calls, "calls", "iu", "integers", np.int64, users.size)
        if (calls[1:] < calls[:-1]).any():  # np.diff would overflow on far-apart numbers
            raise ValueError("events calls must not decrease (they number the observe calls "
                             "in the order they came)")
    return Events(users, items, weights, calls)


def _per_event(values, name: str, kinds: str, kinds_said: str, dtype, size: int) -> np.ndarray:
    """``values`` as a 1-d ``dtype`` array of one value per event (``size``), checked: of a
    NumPy kind in ``kinds`` (``kinds_said`` in the message)."""
    array = np.atleast_1d(check.array_of(values, f"events {name}", kinds_said))
    check.refuse_bool_among(values, array, f"events {name}", kinds_said)
    if array.size and array.dtype.kind not in kinds:
        raise TypeError(f"events {name} must be {kinds_said}, got dtype {array.dtype}")
    if array.ndim > 1:
        raise ValueError(f"events {name} must be 1-d (one value per event), got shape "
                         f"{array.shape}")
    if dtype == np.int64 and array.dtype.kind == "u" and array.size and \
            array.max() > np.iinfo(np.int64).max:  # would wrap to a negative number
        raise ValueError(f"events {name} must fit in int64, got {array.max()}")
    array = array.astype(dtype)
    if array.size != size:
        raise ValueError(f"events {name} must have one value per event ({size}), got "
                         f"{array.size}")
    return array


def _concatenate(chunks: list) -> Events:
    """One Events of logged chunks (each with its calls)."""
    if not chunks:
        return Events(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                      np.zeros(0, np.int64))
    return Events(*(np.concatenate(parts) for parts in zip(*chunks)))


def item_popularity(seen: sp.csr_matrix, n_items: int) -> np.ndarray:
    """Each item's popularity in ``seen`` (a users x items training matrix): its count of
    positive entries, the pairs a factor model takes as preferred (p = 1 where r > 0). A
    stored zero or a negative weight (a dislike) does not count. ``seen`` holds each pair
    once (repeats summed, as the callers' matrices are)."""
    return np.bincount(seen.indices[seen.data > 0], minlength=n_items)


def popular_items(seen: sp.csr_matrix, n_items: int) -> np.ndarray:
    """All ``n_items`` item ids, most popular first (``item_popularity``), ties by smaller
    id. The cold-start order."""
    return np.lexsort((np.arange(n_items), -item_popularity(seen, n_items)))


def popular_for(model: Any, seen: sp.csr_matrix, n_items: int) -> np.ndarray:
    """``popular_items`` of ``model``'s training matrix ``seen`` (each pair once): for ALS
    and BPR by positive entries, for rating models by rated pairs, whatever the rating."""
    if not isinstance(model, (ALS, BPR)):
        seen = sp.csr_matrix((np.ones(seen.nnz), seen.indices, seen.indptr), shape=seen.shape)
    return popular_items(seen, n_items)


def _merge(items, weights, new_items, new_weights):
    """A user's row (items sorted and unique, weights aligned) with new (item, weight)
    pairs added, still sorted: each weight added to its item's in the pairs' order, as
    calls of one pair each would add them (so a replay that folds several calls in at
    once sums to the same bits). New arrays; the inputs stay."""
    ids = new_items if new_items.size == 1 else np.unique(new_items)
    positions = np.searchsorted(items, ids)
    found = positions < items.size
    found[found] = items[positions[found]] == ids[found]
    merged_items = items.astype(np.int64)  # copies
    merged_weights = weights.astype(np.float64)
    fresh = ~found
    if fresh.any():  # new items start at 0.0: 0.0 + w is w
        merged_items = np.insert(merged_items, positions[fresh], ids[fresh])
        merged_weights = np.insert(merged_weights, positions[fresh], 0.0)
    at = np.searchsorted(merged_items, new_items)
    if new_items.size == 1:  # the common real-time case
        merged_weights[at] += new_weights
    else:
        np.add.at(merged_weights, at, new_weights)  # unbuffered, in the pairs' order
    return merged_items, merged_weights


def _with_vectors(n_items: int, extra: _NewItems | None, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` have a vector: the model's items, and the added ones."""
    usable = ids < n_items
    if extra is not None and not usable.all():
        usable[~usable] = extra.has(ids[~usable])
    return usable


def _ranker_of(ranker) -> tuple[MLPScorer, str] | None:
    """(scorer, source) of a ``ranker`` argument, or None for no ranker."""
    if ranker is None:
        return None
    if isinstance(ranker, MLPRanker):
        return ranker.to_scorer(), "<MLPRanker>"
    if isinstance(ranker, MLPScorer):
        return ranker, ranker.source or "<object>"
    if isinstance(ranker, (str, bytes, os.PathLike)):
        path = check.check_path(ranker, "ranker")
        return load_scorer(path), path
    raise TypeError(f"ranker must be a recfuse.MLPScorer, a fitted MLPRanker, a scorer file "
                    f"or None, got {type(ranker).__name__}")


def _item_rows(model: _Model, extra: _NewItems | None, item_ids: np.ndarray) -> np.ndarray:
    """The vectors of ``item_ids``: the model's items, then the added ones."""
    n = model.n_items
    rows = np.empty((item_ids.size, model.item_vectors.shape[1]), model.item_vectors.dtype)
    base = item_ids < n
    rows[base] = model.item_vectors[item_ids[base]]
    if not base.all():
        assert extra is not None  # callers pass ids past the model's items only from extra
        rows[~base] = extra.vectors(item_ids[~base])
    return rows


def _exclude_ids(value, name: str) -> np.ndarray:
    """Item ids to exclude, sorted and unique (any id >= 0: unknown ones exclude nothing)."""
    return np.unique(check.check_ids(value, name, None))


def _observed(state: _State, users: np.ndarray) -> tuple[_NewItems | None, dict]:
    """What observe has published for a batch of users, as of one moment: ``(new_items,
    entries)``, ``entries`` mapping the position of each user that has been observed to its
    ``_User``. Read again while an observe call publishes (``_State.published``): a user's
    vector from after a call never meets the added items from before it, nor the reverse."""
    while True:
        published = state.published
        extra = state.new_items
        entries = {}
        if state.users:
            known = state.users
            for row, user in enumerate(users.tolist()):
                entry = known.get(user)
                if entry is not None:
                    entries[row] = entry
        if published % 2 == 0 and state.published == published:
            return extra, entries
        time.sleep(0)  # let the writer finish publishing


def _queries(model: _Model, users: np.ndarray, entries: dict):
    """What the recall needs of a batch of users: ``(warm, queries, offsets, base_rows,
    own)``. ``warm`` (m,) marks the users answered by the model (the others are cold); for
    those, in order: query vectors (w, d) in the index's dtype, score offsets (w,) float64,
    the row of the model's seen matrix that holds their exclusions (-1 for an observed user)
    and ``own``, position -> the observed user's known item ids (sorted). ``entries``:
    position -> the observed users' ``_User`` (``_observed``)."""
    warm = np.zeros(users.size, dtype=bool)
    inside = users < model.n_users
    warm[inside] = model.history[users[inside]]
    observed = {}
    for row, entry in entries.items():
        warm[row] = entry.warm
        if entry.warm:
            observed[row] = entry
    rows = np.flatnonzero(warm)
    base_rows = users[rows]
    dtype = model.index.items.dtype
    own: dict = {}
    if not observed:
        queries = np.ascontiguousarray(model.user_vectors[base_rows], dtype=dtype)
        return warm, queries, model.user_offsets[base_rows], base_rows, own
    positions = np.searchsorted(rows, np.fromiter(observed, dtype=np.int64, count=len(observed)))
    plain = np.ones(rows.size, dtype=bool)
    plain[positions] = False
    queries = np.empty((rows.size, model.item_vectors.shape[1]), dtype=dtype)
    offsets = np.empty(rows.size)
    queries[plain] = model.user_vectors[base_rows[plain]]
    offsets[plain] = model.user_offsets[base_rows[plain]]
    for position, entry in zip(positions.tolist(), observed.values()):
        queries[position] = entry.vector
        offsets[position] = entry.offset
        own[position] = entry.items
    base_rows[positions] = -1
    return warm, queries, offsets, base_rows, own


def _exclusions(model: _Model, base_rows, own: dict):
    """Each user's excluded ids among the model's items, as the search takes them (indptr
    int64, indices int32 sorted): ``own[position]`` where given, else row
    ``base_rows[position]`` of the model's seen matrix."""
    m = base_rows.size
    if not own:
        return _rows_of((model.seen_indptr, model.seen_indices), base_rows)
    parts = []
    for position in range(m):
        ids = own.get(position)
        if ids is not None:
            parts.append(ids[:np.searchsorted(ids, model.n_items)])
        else:
            row = base_rows[position]
            parts.append(model.seen_indices[model.seen_indptr[row]:model.seen_indptr[row + 1]])
    return _stacked(parts)


def _stacked(parts: list):
    """Rows given as arrays of sorted ids, as the search takes them: (indptr int64, indices
    int32)."""
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([part.size for part in parts], out=indptr[1:])
    return indptr, np.concatenate(parts).astype(np.int32, copy=False)


def _unseen_item(rng, n_items: int, seen: np.ndarray, tries: int = 100) -> int:
    for _ in range(tries):
        candidate = int(rng.integers(0, n_items))
        position = np.searchsorted(seen, candidate)
        if position >= seen.size or seen[position] != candidate:
            return candidate
    return -1

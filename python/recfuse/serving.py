"""The whole chain in one object: recall -> rank -> re-rank, updated in real time.

``Recommender(retriever, ranker=None, candidates=200, k=10, rerank=None)`` answers
``recommend(user)`` (or ``recommend_batch(users)``, one native call for all of them):

1. recall: the factor model's user vector against every item through ``recfuse.ItemIndex``
   (seen items, the request's ``exclude`` and the rules' allow/deny removed), the
   ``candidates`` best (or ``k`` when there is no ranker and no re-ranking);
2. rank: when a ranker (``recfuse.MLPScorer`` or a fitted ``recfuse.MLPRanker``) is given,
   the candidates are scored by it, the input row being
   ``[user vector | context_features | item vector]``, the item part prepared once per
   model (``MLPScorer.prepare_items``);
3. re-rank (``Rerank``): maximal marginal relevance for diversity and per-category caps,
   greedy, over the ranked list.

Results (``Recommendation``) hold ids, scores, the stage that placed each item and the
model version that answered. Ordering follows ``recfuse.topk``: score descending, ties by
smaller id; rows are padded with id -1, score -inf and stage "".

Stages: ``"popular"`` (cold start), ``"recall"`` (order and score from the factor model),
``"rank"`` (from the ranker), ``"rerank"`` (diversity or a cap moved it to this position; the
score is still the recall or rank score).

Cold start: a user the model does not know (an id beyond its users that has not been
observed), one without any known interaction or one whose vector is still zero gets the most popular items (most stored
entries in the model's training matrix, ties by smaller id), with the same exclusions,
rules and caps, stage ``"popular"``.

Real time: ``observe(events)`` folds events into the users' vectors at once: ALS re-solves
the user against the fixed items over the whole known row (training row plus every
observed event: the same system a refit of that user solves); SVD, SVD++ and BPR, which
have no closed form, take ``sgd_steps`` SGD passes over the new events from the current
vector (items fixed). Unknown users are added; unknown items are added (``unknown_items=
"add"``, ids below ``n_items + max_new_items``) or rejected (``"reject"``): an added item's
vector is the mean of the vectors of its first ``new_item_users`` users. Every accepted event
goes to a bounded log, ``pending_events()``, for the next full retrain.

Concurrency: readers take no lock. A model swap (``swap_model``) builds everything aside
and installs it by one reference assignment, so a call is answered wholly by the old model
or wholly by the new one (``Recommendation.version`` says which); a load that fails leaves
the old model serving. ``observe`` and ``swap_model`` are serialised by one writer lock;
``observe`` publishes each user's new vector and seen items together, as one object.
"""

from __future__ import annotations

import collections
import numbers
import os
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from . import _validation as check
from .models.als import ALS, fold_in, item_gram
from .models.bpr import BPR
from .models.sgd import SVD, SVDpp, _user_vectors
from .ranker import MLPRanker
from .ranking import MLPScorer
from .retrieval import ItemIndex

STAGES = ("popular", "recall", "rank", "rerank")
UNKNOWN_ITEMS = ("add", "reject")
SMALL_CATALOGUE = 100_000  # items; below it native calls default to one thread each


class Recommendation(NamedTuple):
    """One user's list (1-d fields) or a batch (2-d fields, one row per user)."""

    ids: np.ndarray  # int64, -1 pads
    scores: np.ndarray  # float32, -inf pads
    stages: np.ndarray  # str: "popular", "recall", "rank", "rerank"; "" pads
    version: int  # the model version that answered


class Events(NamedTuple):
    """Events as three aligned arrays (the form ``pending_events`` returns)."""

    users: np.ndarray  # int64
    items: np.ndarray  # int64
    weights: np.ndarray  # float64 (ALS: the stored value r; SVD: the rating; BPR: > 0 positive)


@dataclass(frozen=True)
class Rerank:
    """Re-ranking of the ranked candidates, and the business rules.

    diversity : MMR's lambda in [0, 1], or None for no diversity. Each next item maximises
        ``lambda * relevance - (1 - lambda) * max cosine(item, items already chosen)``, the
        relevance being the score rescaled to [0, 1] over the user's candidates; 1 keeps the
        ranked order, 0 picks for novelty alone.
    item_categories : one integer category per item (n_items,), for ``category_cap``;
        items beyond it (added later) have no category and no cap.
    category_cap : at most this many items of one category in a list.
    allow, deny : item ids; only ``allow`` may be recommended, ``deny`` never is.
    """

    diversity: float | None = None
    item_categories: np.ndarray | None = None
    category_cap: int | None = None
    allow: np.ndarray | None = None
    deny: np.ndarray | None = None

    def __post_init__(self):
        if self.diversity is not None:
            value = check.check_float(self.diversity, "diversity", minimum=0.0)
            if value > 1:
                raise ValueError(f"diversity must be in [0, 1] (MMR's lambda), got {value}")
            object.__setattr__(self, "diversity", value)
        if (self.item_categories is None) != (self.category_cap is None):
            raise ValueError("item_categories and category_cap go together: give both or neither")
        if self.category_cap is not None:
            object.__setattr__(self, "category_cap",
                               check.check_int(self.category_cap, "category_cap", minimum=1))
            categories = np.asarray(self.item_categories)
            if categories.ndim != 1 or (categories.size and categories.dtype.kind not in "iu"):
                raise TypeError(f"item_categories must be a 1-d integer array, got dtype "
                                f"{categories.dtype} shape {categories.shape}")
            object.__setattr__(self, "item_categories", categories.astype(np.int64))
        for name in ("allow", "deny"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.unique(check.check_ids(value, name, None)))

    @property
    def reorders(self) -> bool:
        """Whether this re-ranking can change the ranked order (needs more than k candidates)."""
        return self.diversity is not None or self.category_cap is not None


# ---------------------------------------------------------------------- the model, frozen


@dataclass(frozen=True)
class _Model:
    """One loaded model and everything derived from it; never changed after it is built."""

    version: int
    source: str
    model: object  # the ALS / SVD / SVDpp / BPR it came from (for its parameters)
    kind: str  # "als", "svd" or "bpr": how observe folds events in
    user_vectors: np.ndarray  # (n_users, d): the recall queries
    user_offsets: np.ndarray  # (n_users,) float64 added to every score (SVD: mu + b_u)
    item_vectors: np.ndarray  # (n_items, d)
    item_bias: np.ndarray | None  # (n_items,)
    index: ItemIndex
    seen: sp.csr_matrix  # (n_users, n_items): the training rows (excluded, fold-in start)
    history: np.ndarray  # (n_users,) bool: the user has a known interaction
    popular: np.ndarray  # item ids by popularity, rules applied (the cold-start list)
    prepared: object  # PreparedItems of the ranker, or None
    gram: np.ndarray | None  # ALS: YᵀY of the item vectors
    global_mean: float  # SVD: mu (cold users' offset); 0 otherwise

    @property
    def n_users(self) -> int:
        return self.user_vectors.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]


class _User(NamedTuple):
    """What observe learned of one user, published as one object."""

    vector: np.ndarray  # (d,)
    offset: float
    items: np.ndarray  # int64 sorted: every known item (training row and observed)
    weights: np.ndarray  # float64, aligned with items (summed per item)


@dataclass(frozen=True)
class _NewItems:
    """Items added by observe: rows ``first_id + r`` of ``table`` (NaN rows: ids not yet
    seen, never returned). Replaced as a whole when it changes."""

    first_id: int
    table: np.ndarray  # (rows, d)
    filled: np.ndarray  # (rows,) bool
    index: ItemIndex | None
    gram: np.ndarray | None  # ALS: YᵀY over the model's items and the filled rows

    @property
    def end(self) -> int:
        return self.first_id + self.table.shape[0]


@dataclass
class _State:
    """The model plus what was observed since it was loaded; swapped as one reference.
    ``users`` entries and ``new_items`` are replaced (never changed) by the writer."""

    model: _Model
    users: dict = field(default_factory=dict)  # user id -> _User
    new_items: _NewItems | None = None
    new_item_users: dict = field(default_factory=dict)  # item id -> its first users (writer only)


# ---------------------------------------------------------------------- the recommender


class Recommender:
    """Recall -> rank -> re-rank in one call, safe from many threads, updated in real time.

    Parameters
    ----------
    retriever : a fitted ``recfuse.ALS``, ``SVD``, ``SVDpp`` or ``BPR``, or the path of a
        model file (``recfuse.load``)
    ranker : ``recfuse.MLPScorer`` or fitted ``recfuse.MLPRanker`` over
        ``[user vector | context features | item vector]``, or None (recall order)
    candidates : how many items recall hands to the ranker and the re-ranking
    k : list length when ``recommend`` is not given one
    rerank : ``Rerank`` (diversity, category caps, allow/deny), or None
    unknown_items : "add" or "reject": what ``observe`` does with an item id the model lacks
    max_new_items : added item ids must be below ``n_items + max_new_items``
    new_item_users : an added item's vector is the mean of its first this-many users' vectors
    sgd_steps, sgd_lr : SGD passes and step size of the fold-in of SVD/SVD++/BPR (the
        model's ``lr`` when None)
    max_pending_events : the event log keeps the newest this-many events
    num_threads : CPU threads per native call (0: all cores); None (default): 1 below
        ``SMALL_CATALOGUE`` items, where calls run side by side and a thread team's start
        and barriers cost more than they save (on 2 loaded cores: p99 4.5 ms with 1 thread
        vs 68 ms with 2 at 9,724 items), all cores above

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

    def __init__(self, retriever, ranker=None, candidates: int = 200, k: int = 10,
                 rerank: Rerank | None = None, *, unknown_items: str = "add",
                 max_new_items: int = 100_000, new_item_users: int = 20, sgd_steps: int = 10,
                 sgd_lr: float | None = None, max_pending_events: int = 1_000_000,
                 num_threads: int | None = None):
        self.candidates = check.check_int(candidates, "candidates", minimum=1)
        self.k = check.check_int(k, "k", minimum=1)
        if rerank is not None and not isinstance(rerank, Rerank):
            raise TypeError(f"rerank must be a recfuse.Rerank or None, got {type(rerank).__name__}")
        self.rerank = rerank
        if isinstance(ranker, MLPRanker):
            ranker = ranker.to_scorer()
        if ranker is not None and not isinstance(ranker, MLPScorer):
            raise TypeError(f"ranker must be a recfuse.MLPScorer, a fitted MLPRanker or None, "
                            f"got {type(ranker).__name__}")
        self.ranker = ranker
        self.unknown_items = check.check_choice(unknown_items, "unknown_items", UNKNOWN_ITEMS)
        self.max_new_items = check.check_int(max_new_items, "max_new_items", minimum=0)
        self.new_item_users = check.check_int(new_item_users, "new_item_users", minimum=1)
        self.sgd_steps = check.check_int(sgd_steps, "sgd_steps", minimum=1)
        self.sgd_lr = None if sgd_lr is None else check.check_float(sgd_lr, "sgd_lr", minimum=0,
                                                                    strict=True)
        self.max_pending_events = check.check_int(max_pending_events, "max_pending_events",
                                                  minimum=0)
        self._threads_given = None if num_threads is None else check.check_int(
            num_threads, "num_threads", minimum=0)
        self._write_lock = threading.Lock()
        self._log: collections.deque = collections.deque()  # Events chunks, oldest first
        self._logged = 0
        self.dropped_events = 0  # events pushed out of the log by max_pending_events
        self._versions = 0
        self._state = _State(self._build(retriever))

    # ------------------------------------------------------------------ model loading

    @property
    def num_threads(self) -> int:
        """CPU threads per native call for the model answering now (see the parameter)."""
        if self._threads_given is not None:
            return self._threads_given
        state = getattr(self, "_state", None)
        return 1 if state is None or state.model.n_items < SMALL_CATALOGUE else 0

    @property
    def version(self) -> int:
        """The version of the model answering now (1 for the first, +1 per swap)."""
        return self._state.model.version

    @property
    def context_width(self) -> int:
        """Columns of ``context_features`` the ranker takes (0 without a ranker)."""
        if self.ranker is None:
            return 0
        return self.ranker.input_width - 2 * self._state.model.item_vectors.shape[1]

    def info(self) -> dict:
        """The model answering now: version, source, kind, users, items, added items/users."""
        state = self._state
        model = state.model
        added = 0 if state.new_items is None else int(state.new_items.filled.sum())
        return {"version": model.version, "source": model.source, "kind": model.kind,
                "users": model.n_users, "items": model.n_items, "factors":
                model.item_vectors.shape[1], "observed_users": len(state.users),
                "added_items": added, "pending_events": self._logged,
                "dropped_events": self.dropped_events, "ranker": self.ranker is not None}

    def _build(self, retriever) -> _Model:
        """A ready ``_Model`` from a fitted model or a model file (raises, changing nothing)."""
        source = "<object>"
        if isinstance(retriever, (str, os.PathLike)):
            from .persistence import load

            source = os.fspath(retriever)
            retriever = load(source)
        model = retriever
        if isinstance(model, ALS):
            model._require_fitted()
            state = model._state
            kind, users, items, bias = "als", state.user_factors, state.item_factors, None
            offsets, mean = np.zeros(users.shape[0]), 0.0
            seen = state.user_items
        elif isinstance(model, BPR):
            model._require_fitted()
            kind, users, items, bias = "bpr", model.user_factors, model.item_factors, model.item_bias
            offsets, mean, seen = np.zeros(users.shape[0]), 0.0, model._seen
        elif isinstance(model, (SVD, SVDpp)):
            fitted = model._require_fitted()
            kind = "svd"
            known_user = fitted.user_counts > 0
            known_item = (fitted.item_counts > 0)
            users = (_user_vectors(fitted) * known_user[:, None]).astype(model.dtype)
            items = (fitted.item_factors * known_item[:, None]).astype(model.dtype)
            mean = float(fitted.global_mean)
            if fitted.biased:
                bias = np.where(known_item, fitted.item_bias, 0).astype(model.dtype)
                offsets = mean + np.where(known_user, fitted.user_bias, 0).astype(np.float64)
            else:
                bias, offsets = None, np.where(known_user, 0.0, mean)
            seen = fitted.seen.to_scipy(items.shape[0])
        else:
            raise TypeError(f"retriever must be a fitted recfuse.ALS, SVD, SVDpp or BPR or a "
                            f"model file path, got {type(model).__name__}")
        n_users, n_items = users.shape[0], items.shape[0]
        if seen is None:  # a model without its training matrix: every user counts as known
            seen = sp.csr_matrix((n_users, n_items), dtype=np.float64)
            history = np.ones(n_users, dtype=bool)
        else:
            seen = sp.csr_matrix(seen, dtype=np.float64)
            history = np.diff(seen.indptr) > 0
        counts = np.bincount(seen.indices, minlength=n_items)
        popular = np.lexsort((np.arange(n_items), -counts))
        popular = popular[self._rule_mask(popular, n_items)]
        if self.ranker is not None:
            current = getattr(self, "_state", None)
            if current is not None and current.model.item_vectors.shape[1] != items.shape[1]:
                raise ValueError(f"the new model has {items.shape[1]} factors; the ranker was "
                                 f"built for {current.model.item_vectors.shape[1]}")
            width = self.ranker.input_width - 2 * items.shape[1]
            if width < 0:
                raise ValueError(f"the ranker takes {self.ranker.input_width} inputs, fewer than "
                                 f"user + item vectors ({2 * items.shape[1]})")
            prepared = self.ranker.prepare_items(  # once per model: all cores unless told
                items, item_column=items.shape[1] + width, num_threads=self._threads_given or 0)
        else:
            prepared = None
        if self.rerank is not None and self.rerank.item_categories is not None and \
                self.rerank.item_categories.size < n_items:
            raise ValueError(f"rerank.item_categories has {self.rerank.item_categories.size} "
                             f"entries; the model has {n_items} items")
        index = ItemIndex(items, item_bias=bias, backend=model.backend)
        with self._write_lock:
            self._versions += 1
            version = self._versions
        return _Model(version, source, model, kind, users, offsets.astype(np.float64), items,
                      bias, index, seen, history, popular.astype(np.int64), prepared,
                      item_gram(items.astype(np.float64)) if kind == "als" else None, mean)

    def _rule_mask(self, ids: np.ndarray, n_items: int) -> np.ndarray:
        """Which of ``ids`` the rules allow."""
        keep = np.ones(ids.size, dtype=bool)
        if self.rerank is not None:
            if self.rerank.allow is not None:
                keep &= np.isin(ids, self.rerank.allow)
            if self.rerank.deny is not None:
                keep &= ~np.isin(ids, self.rerank.deny)
        return keep

    def swap_model(self, source, *, replay: bool = True) -> int:
        """Serve the model in ``source`` (a file path or a fitted model) from now on.

        The new model is loaded and prepared while the old one keeps answering, then
        installed atomically. With ``replay`` the events still in ``pending_events()`` are
        folded into the new model (a retrain that consumed them should clear the log with
        ``pending_events(clear=True)`` when it starts). If anything fails the old model
        stays and the error is raised. Returns the new version.
        """
        built = self._build(source)
        with self._write_lock:
            state = _State(built)
            if replay and self._log:
                events = _concatenate(list(self._log))
                self._apply(state, *events)
            self._state = state
        return built.version

    # ------------------------------------------------------------------ recommend

    def recommend(self, user, k: int | None = None, exclude=None,
                  context_features=None) -> Recommendation:
        """One user's list: ``Recommendation`` with 1-d ids, scores and stages.

        exclude : item ids never to return for this call (besides the seen items)
        context_features : the ranker's context columns (1-d, ``context_width`` long)
        """
        user = _user_id(user, "user")
        contexts = None if context_features is None else _context_rows(
            context_features, "context_features", 1, single=True)
        result = self.recommend_batch([user], k, None if exclude is None else [exclude], contexts)
        return Recommendation(result.ids[0], result.scores[0], result.stages[0], result.version)

    def recommend_batch(self, users, k: int | None = None, excludes=None,
                        context_features=None) -> Recommendation:
        """Lists for many users in one native recall call and one ranking call.

        users : 1-d integer ids; excludes : None or one id sequence (or None) per user;
        context_features : (users, context_width). Returns 2-d ids, scores and stages.
        """
        state = self._state  # one model for the whole call
        model = state.model
        ids = check.check_ids(users, "users", None)
        k = self.k if k is None else check.check_int(k, "k", minimum=1)
        m = ids.size
        if excludes is not None:
            if isinstance(excludes, (str, bytes)) or len(excludes) != m:
                raise ValueError(f"excludes must have one entry per user ({m})")
            excludes = [None if e is None else check.check_ids(e, f"excludes[{u}]", None)
                        for u, e in enumerate(excludes)]
        width = self.context_width
        contexts = None
        if self.ranker is not None and width > 0:
            if context_features is None:
                raise ValueError(f"context_features are required: the ranker takes {width} "
                                 "context columns")
            contexts = _context_rows(context_features, "context_features", m, width=width)
        elif context_features is not None and np.size(context_features):
            raise ValueError("context_features given, but the ranker takes no context columns")
        out_ids = np.full((m, k), -1, dtype=np.int64)
        out_scores = np.full((m, k), -np.inf, dtype=np.float32)
        out_stages = np.full((m, k), "", dtype="<U7")
        rows = [self._user_row(state, int(u)) for u in ids]
        warm = np.array([row is not None for row in rows], dtype=bool)
        for u in np.flatnonzero(~warm):
            chosen = self._popular(model, k, _excluded(None, excludes, u))
            out_ids[u, :chosen.size] = chosen
            out_scores[u, :chosen.size] = 0.0
            out_stages[u, :chosen.size] = "popular"
        if warm.any():
            which = np.flatnonzero(warm)
            lists = self._recall(state, [rows[u] for u in which],
                                 [excludes[u] if excludes else None for u in which], k)
            stage = "recall"
            if self.ranker is not None:
                lists = self._rank(state, [rows[u] for u in which], lists,
                                   None if contexts is None else contexts[which])
                stage = "rank"
            for position, u in enumerate(which):
                item_ids, scores = lists[position]
                chosen, moved = self._rerank(state, item_ids, scores, k)
                count = chosen.size
                out_ids[u, :count] = item_ids[chosen]
                out_scores[u, :count] = scores[chosen]
                out_stages[u, :count] = np.where(moved, "rerank", stage)
        return Recommendation(out_ids, out_scores, out_stages, model.version)

    def _user_row(self, state: _State, user: int):
        """(vector, offset, seen item ids) of a warm user, None for a cold one."""
        observed = state.users.get(user)
        if observed is not None:  # a zero vector (only unknown items so far) knows nothing
            return (observed.vector, observed.offset, observed.items) if observed.vector.any() \
                else None
        model = state.model
        if user >= model.n_users or not model.history[user]:
            return None
        seen = model.seen
        return (model.user_vectors[user], float(model.user_offsets[user]),
                seen.indices[seen.indptr[user]:seen.indptr[user + 1]].astype(np.int64))

    def _popular(self, model: _Model, k: int, excluded: np.ndarray) -> np.ndarray:
        """The first k popular items not excluded, within the category caps."""
        order = model.popular
        if excluded.size:
            order = order[~np.isin(order, excluded)]
        if self.rerank is None or self.rerank.category_cap is None:
            return order[:k]
        return order[_capped(order, self.rerank, k)]

    def _recall(self, state: _State, rows, excludes, k: int):
        """Per user (ids, scores): the recall list, best first, ties by smaller id."""
        model = state.model
        wanted = k
        if self.ranker is not None or (self.rerank is not None and self.rerank.reorders):
            wanted = max(k, self.candidates)
        queries = np.stack([row[0] for row in rows]).astype(model.item_vectors.dtype, copy=False)
        offsets = np.array([row[1] for row in rows])
        excluded = [np.union1d(row[2], e) if e is not None else row[2]
                    for row, e in zip(rows, excludes)]
        rules = self.rerank
        allow = None if rules is None else rules.allow
        deny = None if rules is None else rules.deny
        n = model.n_items
        base_allow = None if allow is None else allow[allow < n]
        base_deny = None if deny is None else deny[deny < n]
        ids, scores = model.index.search(
            queries, wanted, exclude=_exclusion_matrix(excluded, 0, n), allow=base_allow,
            deny=base_deny, num_threads=self.num_threads)
        extra = state.new_items
        if extra is not None and extra.index is not None:
            rows_extra = extra.table.shape[0]
            shift = extra.first_id
            more_ids, more_scores = extra.index.search(
                queries, wanted, exclude=_exclusion_matrix(excluded, shift, rows_extra),
                allow=None if allow is None else allow[(allow >= shift) & (allow < extra.end)] - shift,
                deny=None if deny is None else deny[(deny >= shift) & (deny < extra.end)] - shift,
                num_threads=self.num_threads)
            more_ids = np.where(more_ids >= 0, more_ids + shift, -1)
            ids = np.concatenate([ids, more_ids], axis=1)
            scores = np.concatenate([scores, more_scores], axis=1)
        lists = []
        for u in range(len(rows)):
            keep = ids[u] >= 0
            item_ids, item_scores = ids[u][keep], scores[u][keep].astype(np.float64) + offsets[u]
            order = np.lexsort((item_ids, -item_scores))[:wanted]
            lists.append((item_ids[order], item_scores[order].astype(np.float32)))
        return lists

    def _rank(self, state: _State, rows, lists, contexts):
        """The recall lists scored by the ranker, re-sorted (ties by smaller id)."""
        model = state.model
        users = np.stack([row[0] for row in rows]).astype(np.float32)
        n = model.n_items
        candidate_ids = [item_ids for item_ids, _ in lists]
        base = [ids[ids < n] for ids in candidate_ids]
        scores_base = self.ranker.score_candidates(
            users, base, model.prepared, user_features=contexts, num_threads=self.num_threads)
        extra_parts = [ids[ids >= n] for ids in candidate_ids]
        scores_extra = None
        if any(part.size for part in extra_parts):
            extra = state.new_items
            scores_extra = self.ranker.score_candidates(
                users, [part - extra.first_id for part in extra_parts], extra.table,
                user_features=contexts, num_threads=self.num_threads)
        ranked, start_base, start_extra = [], 0, 0
        for u in range(len(lists)):
            item_ids = np.concatenate([base[u], extra_parts[u]])
            scores = scores_base[start_base:start_base + base[u].size]
            start_base += base[u].size
            if scores_extra is not None:
                scores = np.concatenate(
                    [scores, scores_extra[start_extra:start_extra + extra_parts[u].size]])
                start_extra += extra_parts[u].size
            valid = ~np.isnan(scores)
            item_ids, scores = item_ids[valid], scores[valid]
            order = np.lexsort((item_ids, -scores))
            ranked.append((item_ids[order], scores[order].astype(np.float32)))
        return ranked

    def _rerank(self, state: _State, item_ids: np.ndarray, scores: np.ndarray, k: int):
        """(positions chosen in order, moved flags): MMR and caps over a sorted list."""
        rules = self.rerank
        if rules is None or not rules.reorders:
            chosen = np.arange(min(k, item_ids.size))
            return chosen, np.zeros(chosen.size, dtype=bool)
        categories = None
        if rules.category_cap is not None:
            categories = _categories(rules.item_categories, item_ids)
        if rules.diversity is None:
            chosen = _capped(item_ids, rules, k)
        else:
            vectors = self._item_rows(state, item_ids).astype(np.float64)
            chosen = mmr(scores, vectors, k, rules.diversity, categories, rules.category_cap)
        moved = chosen != _plain_positions(chosen.size)
        return chosen, moved

    def _item_rows(self, state: _State, item_ids: np.ndarray) -> np.ndarray:
        model = state.model
        n = model.n_items
        rows = np.empty((item_ids.size, model.item_vectors.shape[1]), model.item_vectors.dtype)
        base = item_ids < n
        rows[base] = model.item_vectors[item_ids[base]]
        if not base.all():
            extra = state.new_items
            rows[~base] = extra.table[item_ids[~base] - extra.first_id]
        return rows

    # ------------------------------------------------------------------ observe

    def observe(self, events) -> int:
        """Fold events into the model at once; returns how many were accepted.

        events : a mapping with "user", "item" and optionally "weight" (default 1), each a
            sequence (or a scalar), or ``Events``. All are checked first: on any error
            nothing is applied (earlier calls' events stay).
        The next ``recommend`` sees the new vectors and excludes the new items.
        """
        users, items, weights = _events(events)
        if users.size == 0:
            return 0
        with self._write_lock:
            self._apply(self._state, users, items, weights)
            self._remember(Events(users, items, weights))
        return int(users.size)

    def pending_events(self, clear: bool = False) -> Events:
        """The logged events (oldest first, at most ``max_pending_events``); ``clear``
        empties the log (events observed afterwards are kept for the next retrain)."""
        with self._write_lock:
            events = _concatenate(list(self._log))
            if clear:
                self._log.clear()
                self._logged = 0
        return events

    def _remember(self, events: Events) -> None:
        self._log.append(events)
        self._logged += events.users.size
        while self._logged > self.max_pending_events:
            oldest = self._log[0]
            surplus = self._logged - self.max_pending_events
            if oldest.users.size <= surplus:
                self._log.popleft()
                self._logged -= oldest.users.size
                self.dropped_events += oldest.users.size
            else:
                self._log[0] = Events(*(part[surplus:] for part in oldest))
                self._logged -= surplus
                self.dropped_events += surplus

    def _apply(self, state: _State, users, items, weights) -> None:
        """Fold events into ``state`` (writer lock held): compute everything, then publish."""
        model = state.model
        n = model.n_items
        if model.kind == "als" and model.model.confidence == "linear" and (weights < 0).any():
            raise ValueError(f"weights must be >= 0 for this ALS model (confidence 1 + alpha * "
                             f"r), got {weights.min()}")
        if model.kind == "bpr" and (weights <= 0).any():
            raise ValueError("weights must be > 0 for BPR (each event is a positive)")
        extra = state.new_items
        unknown = np.unique(items[items >= n])
        if extra is not None:
            unknown = unknown[~((unknown < extra.end) & _filled(extra, unknown))]
        if unknown.size:
            if self.unknown_items == "reject":
                raise ValueError(f"unknown item ids {unknown[:5].tolist()} (the model has "
                                 f"{n} items; unknown_items='reject')")
            if unknown.max() >= n + self.max_new_items:
                raise ValueError(f"item id {int(unknown.max())} is beyond the items that may be "
                                 f"added (< {n + self.max_new_items}: n_items + max_new_items)")
        order = np.argsort(users, kind="stable")
        users, items, weights = users[order], items[order], weights[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], users.size]
        updated = {}
        for begin, end in zip(starts, ends):
            user = int(users[begin])
            current = state.users.get(user)
            if current is None:
                current = self._initial_user(model, user)
            merged_items, merged_weights = _merge(current.items, current.weights, items[begin:end],
                                                  weights[begin:end])
            updated[user] = (current, merged_items, merged_weights, items[begin:end],
                             weights[begin:end])
        if model.kind == "als":
            vectors = self._als_fold_in(state, updated)
        else:
            vectors = {user: self._sgd_fold_in(state, user, entry) for user, entry in
                       updated.items()}
        new_users = {user: _User(vectors[user][0], vectors[user][1], entry[1], entry[2])
                     for user, entry in updated.items()}
        new_items = self._added_items(state, unknown, users, items, new_users)
        # publish: each user as one object, then the new item table as one object
        state.users.update(new_users)
        if new_items is not None:
            state.new_items = new_items

    def _initial_user(self, model: _Model, user: int) -> _User:
        if user < model.n_users:
            seen = model.seen
            row = slice(seen.indptr[user], seen.indptr[user + 1])
            return _User(model.user_vectors[user].copy(), float(model.user_offsets[user]),
                         seen.indices[row].astype(np.int64), seen.data[row].astype(np.float64))
        zeros = np.zeros(model.item_vectors.shape[1], model.item_vectors.dtype)
        return _User(zeros, model.global_mean, np.zeros(0, np.int64), np.zeros(0))

    def _als_fold_in(self, state: _State, updated: dict) -> dict:
        """One ALS user half-sweep over every updated user's whole row (items with a vector),
        against only the item rows those users touch (columns renumbered)."""
        model = state.model
        als = model.model
        extra = state.new_items
        rows = []
        for user, (current, merged_items, merged_weights, _, _) in updated.items():
            usable = merged_items < model.n_items
            if extra is not None and not usable.all():
                usable |= (merged_items >= extra.first_id) & _filled(extra, merged_items)
            rows.append((merged_items[usable], merged_weights[usable]))
        touched = np.unique(np.concatenate([r[0] for r in rows])) if rows else np.zeros(0, np.int64)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([r[0].size for r in rows])
        columns = np.concatenate([np.searchsorted(touched, r[0]) for r in rows])
        data = np.concatenate([r[1] for r in rows])
        matrix = sp.csr_matrix((data.astype(als.dtype), columns.astype(np.int32), indptr),
                               shape=(len(rows), max(touched.size, 1)))
        table = self._item_rows(state, touched) if touched.size else \
            np.zeros((1, model.item_vectors.shape[1]), als.dtype)
        gram = model.gram if extra is None or extra.gram is None else extra.gram
        start = np.stack([entry[0].vector for entry in updated.values()])
        solved = fold_in(als, table, matrix, start, gram)
        return {user: (solved[position], 0.0) for position, user in enumerate(updated)}

    def _sgd_fold_in(self, state: _State, user: int, entry) -> tuple[np.ndarray, float]:
        """``sgd_steps`` SGD passes over this call's events of one user, items fixed:
        SVD/SVD++: squared error of offset + p·q_i + b_i against the rating (the user bias
        learns too when the model is biased); BPR: the pairwise loss against uniformly drawn
        unseen items of the model."""
        model = state.model
        trained = model.model
        current, merged_items, _, items, weights = entry
        lr = self.sgd_lr if self.sgd_lr is not None else trained.lr
        reg = trained.reg
        vector = current.vector.astype(np.float64)
        offset = current.offset
        table = self._item_rows(state, items).astype(np.float64)
        finite = np.isfinite(table).all(axis=1)
        table, weights, items = table[finite], weights[finite], items[finite]
        bias = np.zeros(items.size)
        if model.item_bias is not None:
            base = items < model.n_items
            bias[base] = model.item_bias[items[base]]
        rng = np.random.default_rng(user)
        biased = model.kind == "svd" and model.item_bias is not None
        for _ in range(self.sgd_steps):
            for t in rng.permutation(items.size):
                q = table[t]
                if model.kind == "svd":
                    error = weights[t] - (offset + vector @ q + bias[t])
                    if biased:
                        offset += lr * (error - reg * (offset - model.global_mean))
                    vector += lr * (error * q - reg * vector)
                else:
                    negative = _unseen_item(rng, model.n_items, merged_items)
                    if negative < 0:
                        continue
                    q_neg = model.item_vectors[negative].astype(np.float64)
                    b_neg = 0.0 if model.item_bias is None else float(model.item_bias[negative])
                    x = vector @ (q - q_neg) + bias[t] - b_neg
                    gradient = 1.0 / (1.0 + np.exp(x))
                    vector += lr * (gradient * (q - q_neg) - reg * vector)
        return vector.astype(model.item_vectors.dtype), float(offset)

    def _added_items(self, state: _State, unknown: np.ndarray, users, items,
                     new_users: dict) -> _NewItems | None:
        """The new item table with vectors for the items that are still gathering their
        first users (each: the mean of those users' vectors); None when nothing changed."""
        model = state.model
        extra = state.new_items
        growing = [int(i) for i in np.unique(items[items >= model.n_items])
                   if len(state.new_item_users.get(int(i), ())) < self.new_item_users]
        if not growing:
            return None
        d = model.item_vectors.shape[1]
        first = model.n_items
        end = max(extra.end if extra is not None else first, max(growing) + 1)
        table = np.full((end - first, d), np.nan, dtype=model.item_vectors.dtype)
        filled = np.zeros(end - first, dtype=bool)
        gram = None if model.gram is None else (model.gram if extra is None else extra.gram).copy()
        if extra is not None:
            table[:extra.table.shape[0]] = extra.table
            filled[:extra.filled.size] = extra.filled
        for item in growing:
            owners = list(state.new_item_users.get(item, ()))
            for user in users[items == item]:
                if len(owners) < self.new_item_users and int(user) not in owners:
                    owners.append(int(user))
            vectors = [new_users[u].vector if u in new_users else state.users[u].vector
                       for u in owners if u in new_users or u in state.users]
            vector = np.mean(np.stack(vectors).astype(np.float64), axis=0)
            row = item - first
            if gram is not None:
                if filled[row]:
                    old = table[row].astype(np.float64)
                    gram -= np.outer(old, old)
                gram += np.outer(vector, vector)
            table[row] = vector
            filled[row] = True
            state.new_item_users[item] = tuple(owners)
        index = ItemIndex(table, backend=model.model.backend)
        return _NewItems(first, table, filled, index, gram)


# ---------------------------------------------------------------------- re-ranking


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float,
        categories: np.ndarray | None = None, cap: int | None = None) -> np.ndarray:
    """Maximal marginal relevance: positions of up to k of the candidates (given best first),
    each maximising ``diversity * relevance - (1 - diversity) * max cosine to those chosen``
    (relevance: scores rescaled to [0, 1]; ties to the earlier candidate), never more than
    ``cap`` of one category (``categories[i] < 0``: none)."""
    count = scores.size
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    low, high = float(scores.min()), float(scores.max())
    relevance = (scores - low) / (high - low) if high > low else np.ones(count)
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    closest = np.zeros(count)  # max cosine to the chosen ones
    available = np.ones(count, dtype=bool)
    used: dict = {}
    chosen = []
    while len(chosen) < k and available.any():
        value = diversity * relevance - (1 - diversity) * closest
        value[~available] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        available[pick] = False
        if cap is not None and categories[pick] >= 0:
            category = int(categories[pick])
            used[category] = used.get(category, 0) + 1
            if used[category] >= cap:
                available &= categories != category
        closest = np.maximum(closest, unit @ unit[pick]) if len(chosen) > 1 else unit @ unit[pick]
    return np.array(chosen, dtype=np.int64)


def _capped(item_ids: np.ndarray, rules: Rerank, k: int) -> np.ndarray:
    """Positions of the first k items (in order) within the category cap."""
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


def _plain_positions(count: int) -> np.ndarray:
    return np.arange(count)


# ---------------------------------------------------------------------- helpers


def _user_id(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer id, got {type(value).__name__} {value!r:.40}")
    if int(value) < 0:
        raise ValueError(f"{name} must be >= 0, got {int(value)}")
    return int(value)


def _context_rows(value, name: str, rows: int, *, width: int | None = None,
                  single: bool = False) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if single and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] != rows or (width is not None and array.shape[1] != width):
        expected = f"({rows}, {width if width is not None else 'w'})"
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return array


def _events(events) -> Events:
    """Events from a mapping (user, item, weight) or an Events tuple, checked."""
    if isinstance(events, Events):
        users, items, weights = events
    elif isinstance(events, dict):
        unknown = set(events) - {"user", "item", "weight"}
        if unknown:
            raise ValueError(f"events has unknown fields {sorted(unknown)}; expected user, item "
                             f"and optionally weight")
        if "user" not in events or "item" not in events:
            raise ValueError("events must have the fields 'user' and 'item'")
        users, items, weights = events["user"], events["item"], events.get("weight")
    else:
        raise TypeError(f"events must be a mapping with user/item/weight or recfuse.Events, "
                        f"got {type(events).__name__}")
    users = np.atleast_1d(np.asarray(users))
    items = np.atleast_1d(np.asarray(items))
    for name, array in (("user", users), ("item", items)):
        if array.size and (array.dtype.kind not in "iu"):
            raise TypeError(f"events {name} must be integer ids, got dtype {array.dtype}")
    users = check.check_ids(users, "events user", check.INT32_MAX)
    items = check.check_ids(items, "events item", check.INT32_MAX)
    if users.size != items.size:
        raise ValueError(f"events user and item must have the same length, got {users.size} "
                         f"and {items.size}")
    if weights is None:
        weights = np.ones(users.size)
    else:
        weights = np.atleast_1d(np.asarray(weights))
        if weights.size and weights.dtype.kind not in "fiu":
            raise TypeError(f"events weight must be real numbers, got dtype {weights.dtype}")
        weights = weights.astype(np.float64).reshape(-1)
        if weights.size != users.size:
            raise ValueError(f"events weight must have one value per event ({users.size}), got "
                             f"{weights.size}")
        if not np.isfinite(weights).all():
            raise ValueError("events weight must be finite, got NaN or inf")
    return Events(users, items, weights)


def _concatenate(chunks: list) -> Events:
    if not chunks:
        return Events(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    return Events(*(np.concatenate(parts) for parts in zip(*chunks)))


def _merge(items, weights, new_items, new_weights):
    """Union of two (item, weight) rows, weights summed per item, sorted by item."""
    all_items = np.concatenate([items, new_items])
    merged, inverse = np.unique(all_items, return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate([weights, new_weights]),
                         minlength=merged.size)
    return merged.astype(np.int64), summed


def _filled(extra: _NewItems, ids: np.ndarray) -> np.ndarray:
    inside = (ids >= extra.first_id) & (ids < extra.end)
    result = np.zeros(ids.size, dtype=bool)
    result[inside] = extra.filled[ids[inside] - extra.first_id]
    return result


def _excluded(row, excludes, u: int) -> np.ndarray:
    own = np.zeros(0, np.int64) if row is None else row
    if excludes is not None and excludes[u] is not None:
        return np.union1d(own, excludes[u])
    return own


def _exclusion_matrix(excluded: list, shift: int, n: int) -> sp.csr_matrix:
    """Rows of excluded ids (sorted) as an m x n CSR over ids [shift, shift + n)."""
    parts = [e[(e >= shift) & (e < shift + n)] - shift for e in excluded]
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([p.size for p in parts])
    indices = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(parts), n))


def _unseen_item(rng, n_items: int, seen: np.ndarray, tries: int = 100) -> int:
    for _ in range(tries):
        candidate = int(rng.integers(0, n_items))
        position = np.searchsorted(seen, candidate)
        if position >= seen.size or seen[position] != candidate:
            return candidate
    return -1

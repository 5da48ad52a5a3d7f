"""Micro-batching: single-user ``recommend`` calls from many threads (or coroutines) answered
together, by one native recall call and one native rank call per batch.

``MicroBatcher(recommender)`` owns ``workers`` threads. A call is checked in the caller's
thread (bad input raises there and never reaches a batch), queued, and answered by the next
batch a worker takes: everything queued, up to ``max_batch`` requests. Batches form by
themselves while the workers are busy. Besides, a worker that finds fewer requests queued
than it expects waits up to ``max_wait`` seconds for the rest (the bounded wait) before it
answers what it has. It expects:

- the requests announced as on their way (``incoming()``: a server that has started
  reading them), and
- as many as its previous batch held (closed-loop callers: the threads answered by that
  batch come back with their next request within microseconds; without the wait the first
  of them would be answered alone and the rest would wait for that batch). A lone caller
  therefore never waits: its previous batch held one request, itself.

Each request is answered as if ``recommender.recommend(user, k, exclude, context)`` had been
called alone, by one model version (``Recommendation.version``). Requests whose k changes
which candidates are recalled (k above ``candidates`` with a ranker or a reordering
re-rank) are answered by separate native calls within the batch. If a batch's native call
fails, its requests are answered one by one, so one request cannot fail the others.

Coroutines use ``await batcher.recommend_async(...)`` (or ``submit_async``): the workers are
woken once per event-loop turn for all the requests the turn queued, and each batch wakes
each loop once to hand the answers back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Callable, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as check
from .serving import Recommendation, Recommender, _Request
from ._typing import Integer


# The announcement (MicroBatcher.incoming) the current thread or coroutine is inside: a
# one-item list holding its batcher, emptied once its request is queued.
_ANNOUNCED: contextvars.ContextVar[list | None] = contextvars.ContextVar("_ANNOUNCED",
                                                                         default=None)


class _Pending(NamedTuple):
    request: _Request
    future: object  # concurrent.futures.Future, or asyncio.Future (then loop is set)
    loop: asyncio.AbstractEventLoop | None
    batcher: "MicroBatcher"  # kept alive while the request is queued (see _work)


class MicroBatcher:
    """Concurrent single-user calls of ``recommender`` answered in batches.

    Parameters
    ----------
    recommender : the ``recfuse.Recommender`` that answers
    max_batch : at most this many requests per batch
    max_wait : seconds a batch may wait for the requests it expects (see the module
        documentation); 0 answers what is queued at once
    workers : threads answering batches (each batch: one native recall and one rank call,
        which release the GIL, so two workers use two cores)
    on_batch : called with each batch's size (e.g. a metrics histogram), from a worker;
        whatever it raises is ignored

    >>> import recfuse, scipy.sparse as sp
    >>> seen = sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype="float32")
    >>> als = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(seen)
    >>> rec = recfuse.Recommender(als, k=5)
    >>> with recfuse.MicroBatcher(rec) as batcher:
    ...     same = (batcher.recommend(3).ids == rec.recommend(3).ids).all()
    >>> bool(same)
    True
    """

    def __init__(self, recommender: Recommender, *, max_batch: int = 256,
                 max_wait: float = 0.001, workers: int = 1,
                 on_batch: Callable[[int], None] | None = None):
        if not isinstance(recommender, Recommender):
            raise TypeError(f"recommender must be a recfuse.Recommender, got "
                            f"{type(recommender).__name__}")
        self.recommender = recommender
        self.max_batch = check.check_int(max_batch, "max_batch", minimum=1)
        self.max_wait = check.check_float(max_wait, "max_wait", minimum=0.0)
        if self.max_wait > threading.TIMEOUT_MAX:  # the worker's timed wait would raise
            raise ValueError(f"max_wait must be <= {threading.TIMEOUT_MAX:.3g} seconds, got "
                             f"{self.max_wait:.3g}")
        self.workers = check.check_int(workers, "workers", minimum=1)
        if on_batch is not None and not callable(on_batch):
            raise TypeError(f"on_batch must be callable or None, got {type(on_batch).__name__}")
        self.on_batch = on_batch
        self._closed = False
        self._start_workers()
        _BATCHERS.add(self)

    def _start_workers(self) -> None:
        """A fresh queue, lock and worker threads: at construction, and in a forked child
        (whose copy of the workers never ran: only the forking thread survives a fork)."""
        self._queue: collections.deque = collections.deque()
        # reentrant: the finalizer (below) takes it, and may run in a thread that holds it
        self._ready = threading.Condition(threading.RLock())
        self._incoming = 0  # announced requests not yet queued
        self._expected = 1  # the previous batch's size
        # Workers waiting: idle ones (nothing queued), and lingering ones (the bounded wait)
        # with the queue length they wait for. Callers wake a worker only when one of them
        # has reason to move: a wake-up per request would hand the GIL back and forth.
        self._idle = 0
        self._lingering = 0
        self._linger_until = 0
        self._wakes: set = set()  # loops with a wake-up scheduled for this turn
        # The workers hold this batcher only while they have work: one dropped without
        # close() is collected, and its finalizer ends them (as ThreadPoolExecutor's).
        dropped = threading.Event()
        self._finalizer = weakref.finalize(self, _stop_workers, self._ready, dropped)
        self._threads = [threading.Thread(target=_work, args=(weakref.ref(self), self._ready,
                                                              dropped),
                                          name=f"recfuse-batch-{n}", daemon=True)
                         for n in range(self.workers)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ callers

    def submit(self, user: Integer, k: Integer | None = None, exclude: ArrayLike | None = None,
               context_features: ArrayLike | None = None
               ) -> concurrent.futures.Future[Recommendation]:
        """Queue one request (checked now: bad input raises here); the future's result is
        its ``Recommendation`` (1-d fields), or the error that answering it raised."""
        request = self._check(user, k, exclude, context_features)
        future: concurrent.futures.Future[Recommendation] = concurrent.futures.Future()
        with self._ready:
            self._refuse_when_closed()
            self._queue.append(_Pending(request, future, None, self))
            self._arrived()
            self._nudge()
        return future

    def recommend(self, user: Integer, k: Integer | None = None,
                  exclude: ArrayLike | None = None,
                  context_features: ArrayLike | None = None) -> Recommendation:
        """``Recommender.recommend``, answered within a batch (blocks until then)."""
        return self.submit(user, k, exclude, context_features).result()

    def submit_async(self, user: Integer, k: Integer | None = None,
                     exclude: ArrayLike | None = None,
                     context_features: ArrayLike | None = None
                     ) -> asyncio.Future[Recommendation]:
        """``submit`` for coroutines (call it in the event loop's thread): the request is
        queued now (checked now: bad input raises here); await the returned asyncio future
        for its ``Recommendation``."""
        request = self._check(user, k, exclude, context_features)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            self._refuse_when_closed()
            self._queue.append(_Pending(request, future, loop, self))
            self._arrived()
            # one wake-up per loop turn, after every request of the turn is queued
            schedule = loop not in self._wakes
            self._wakes.add(loop)
        if schedule:
            loop.call_soon(self._wake, loop)
        return future

    async def recommend_async(self, user: Integer, k: Integer | None = None,
                              exclude: ArrayLike | None = None,
                              context_features: ArrayLike | None = None) -> Recommendation:
        """``recommend`` for coroutines: awaits the batch without blocking the loop."""
        return await self.submit_async(user, k, exclude, context_features)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that is on its way (being read) for the ``with`` block's
        duration: batches forming meanwhile wait for it (at most ``max_wait``). The first
        request this thread (or coroutine) queues inside the block is the one announced:
        from then on it counts as queued, not as on its way."""
        announcement = [self]  # emptied when its request is queued (_arrived)
        with self._ready:
            self._incoming += 1
        token = _ANNOUNCED.set(announcement)
        try:
            yield
        finally:
            _ANNOUNCED.reset(token)
            with self._ready:
                if announcement:  # it never came: no longer on its way
                    announcement.clear()
                    self._incoming -= 1
                if self._lingering:  # its target may have come down to what is queued
                    self._ready.notify()

    def _arrived(self) -> None:
        """A request was queued (lock held): the caller's announcement of it, if any, ends."""
        announcement = _ANNOUNCED.get()
        if announcement and announcement[0] is self:
            announcement.clear()
            self._incoming -= 1

    def close(self) -> None:
        """Answer what is queued, then stop the workers; later calls raise RuntimeError.
        Called from a worker (``on_batch``, the recommender) it returns at once: the workers
        answer what is queued all the same."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if threading.current_thread() in self._threads:
            return  # joining the others could wait for ever: one may be closing, joining this
        for thread in self._threads:
            thread.join()

    def __reduce__(self):
        # (a copy.copy shared the workers but not the closed flag: its close waited for ever)
        raise TypeError("a MicroBatcher is not pickled or copied: it owns worker threads; make "
                        "a new one on the Recommender where it is used")

    def __repr__(self) -> str:
        closed = ", closed" if self._closed else ""
        return (f"MicroBatcher(max_batch={self.max_batch}, max_wait={self.max_wait}, "
                f"workers={self.workers}{closed}, answering {self.recommender!r})")

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, user, k, exclude, context_features) -> _Request:
        recommender = self.recommender
        return recommender._request(recommender._state, user, k, exclude, context_features)

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise RuntimeError("this MicroBatcher is closed")

    def _wake(self, loop) -> None:
        with self._ready:
            self._wakes.discard(loop)
            self._nudge()

    def _nudge(self) -> None:
        """Wake a worker if one waits for what is queued now (lock held)."""
        if self._idle or (self._lingering and len(self._queue) >= self._linger_until):
            self._ready.notify()

    # ------------------------------------------------------------------ workers

    def _take(self) -> list:
        """The next batch, from a non-empty queue (lock held): after the bounded wait for
        the requests expected, up to ``max_batch`` of those queued."""
        deadline = None
        while not self._closed:
            target = min(self.max_batch, self._incoming + self._expected)
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.max_wait
            if len(self._queue) >= target or now >= deadline:
                break
            self._lingering += 1
            self._linger_until = target
            self._ready.wait(deadline - now)
            self._lingering -= 1
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]
        self._expected = len(batch)
        return batch

    def _answer(self, batch: list) -> None:
        if self.on_batch is not None:
            # A metrics hook must not fail the requests, nor end this worker with the batch
            # taken (SystemExit, KeyboardInterrupt): its callers, and every later request
            # once no worker is left, would wait forever.
            try:
                self.on_batch(len(batch))
            except BaseException:  # noqa: BLE001
                pass
        try:
            answers = self._results([pending.request for pending in batch])
        except BaseException as error:  # noqa: BLE001 - a bug here must not leave callers waiting
            answers = [error] * len(batch)
        by_loop: dict = {}
        for pending, answer in zip(batch, answers):
            if pending.loop is None:
                if not pending.future.set_running_or_notify_cancel():
                    continue
                if isinstance(answer, BaseException):
                    pending.future.set_exception(answer)
                else:
                    pending.future.set_result(answer)
            else:
                by_loop.setdefault(pending.loop, []).append((pending.future, answer))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, pairs)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                pass

    def _results(self, requests: list) -> list:
        """A Recommendation (or the exception) per request: one ``_answer`` call per group
        of requests that recall to the same depth; a failed group is retried one by one."""
        recommender = self.recommender
        state = recommender._state  # one model for the whole batch
        candidates = recommender.candidates  # and one setting (it may be assigned meanwhile)
        answers: list = [None] * len(requests)
        for positions in self._groups(requests, state, candidates).values():
            group = [requests[p] for p in positions]
            try:
                widest = max(request.k for request in group)
                excludes = None
                if any(request.exclude is not None for request in group):
                    excludes = [request.exclude for request in group]
                contexts = None
                if group[0].context is not None:
                    contexts = np.stack([request.context for request in group])
                result = recommender._answer(state, np.array([r.user for r in group], np.int64),
                                             widest, excludes, contexts, candidates)
                for row, position in enumerate(positions):
                    k = requests[position].k
                    answers[position] = Recommendation(result.ids[row, :k], result.scores[row, :k],
                                                       result.stages[row, :k], result.version)
            # BaseException: a recommender that raises SystemExit (as the hook, in _answer)
            # must not end this worker with the batch taken: its callers would wait forever
            except BaseException:  # noqa: BLE001 - answered one by one below
                for position in positions:
                    request = requests[position]
                    try:
                        answers[position] = recommender.recommend(*request)
                    except BaseException as error:  # noqa: BLE001 - handed to that request
                        answers[position] = error
        return answers

    def _groups(self, requests: list, state, candidates: int) -> dict:
        """Positions of the requests by the recall depth their k asks for: a list is the
        prefix of a longer one's unless k changes what is recalled (k above ``candidates``
        with a ranker or a reordering re-rank)."""
        deep = self.recommender._deep(state.model)
        groups: dict = {}
        for position, request in enumerate(requests):
            key = max(request.k, candidates) if deep else 0
            groups.setdefault(key, []).append(position)
        return groups


def _work(ref, ready: threading.Condition, dropped: threading.Event) -> None:
    """A worker of the MicroBatcher ``ref`` refers to (weakly): answers batches until it is
    closed and drained, or collected (``dropped``, set by its finalizer). It waits for work
    holding no reference to it, so that a batcher nobody holds any more is collected."""
    while True:
        with ready:
            batcher = ref()
            while batcher is not None and not batcher._queue and not batcher._closed:
                batcher._idle += 1
                batcher = None  # may run the finalizer, here: ``ready`` is reentrant
                if dropped.is_set():
                    return
                ready.wait()
                batcher = ref()
                if batcher is not None:
                    batcher._idle -= 1
            if batcher is None or not batcher._queue:
                return  # collected, or closed and drained
            batch = batcher._take()
        batcher._answer(batch)
        del batch  # its requests hold the batcher (_Pending.batcher): not while idle


# Every MicroBatcher not yet collected, for the fork handler below.
_BATCHERS: weakref.WeakSet = weakref.WeakSet()


def _restart_in_child() -> None:
    """After a fork (gunicorn --preload, a "fork" pool), in the child: each open batcher
    gets new workers (the parent's are not in the child, and its lock may have been held by
    one of them). Requests queued in the parent stay the parent's to answer."""
    for batcher in list(_BATCHERS):
        if not batcher._closed:
            batcher._finalizer.detach()  # it would take the parent's lock, maybe held
            batcher._start_workers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)


def _close_at_exit() -> None:
    """At interpreter exit (before non-daemon threads are joined, as concurrent.futures'
    pools): each open batcher answers what is queued and its workers end. A worker still in
    a native call when finalization starts would be ended by CPython as it waits for the
    GIL, an unwinding that aborts the process (bindings/als_bindings.hpp, ReleaseGil)."""
    for batcher in list(_BATCHERS):
        batcher.close()


threading._register_atexit(_close_at_exit)  # type: ignore[attr-defined]


def _stop_workers(ready: threading.Condition, dropped: threading.Event) -> None:
    """A collected MicroBatcher's finalizer: its idle workers wake and end."""
    dropped.set()
    with ready:
        ready.notify_all()


def _deliver(pairs: list) -> None:
    """Set the results of one batch's asyncio futures (in their loop's thread)."""
    for future, answer in pairs:
        if future.done():  # cancelled: the request went away
            continue
        if isinstance(answer, StopIteration):  # which asyncio futures refuse (TypeError)
            error = RuntimeError(f"the recommender raised StopIteration: {answer}")
            error.__cause__ = answer
            answer = error
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)

"""Training an MLP ranker for the chain without PyTorch (NumPy, float32).

``MLPRanker`` learns to tell a user's interactions from random items: positives are the
stored entries of a users x items matrix, each with ``negatives`` items drawn uniformly at
random among those the user has not interacted with (a draw of a seen item is redrawn, up
to 20 times, then dropped); the loss is binary cross-entropy on the logit, minimised by Adam
on mini-batches. The input row of (u, i) is the one ``MLPScorer.score_candidates`` gathers::

    [user_factors[u] | user_features[u] | item_factors[i] | item_features[i]]

with the factors of a fitted factor model (e.g. ``recfuse.ALS``). ``to_scorer`` returns an
``MLPScorer`` whose score is the predicted probability (sigmoid of the logit).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

from . import _validation as check
from .models._common import (EstimatorParams, check_trained, interaction_matrix,
                             keeps_generator_on_failure, param_seed, progress_bar)
from .ranking import MLPScorer
from ._typing import Integer, RandomState, UserItems

HIDDEN_ACTIVATIONS = ("relu", "tanh", "gelu")


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # here: importing scipy.special cost `import recfuse` ~45 ms

    return 0.5 * (1 + erf(z / np.sqrt(2)))


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "tanh":
        return np.tanh(z)
    return (z * _normal_cdf(z)).astype(np.float32)


def _slope(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return (z > 0).astype(np.float32)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    cdf = _normal_cdf(z)
    return (cdf + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)).astype(np.float32)


# Redraws of a negative that hit a seen item before it is dropped (a user who has seen all
# but a few items then trains on fewer negatives; one who has seen every item, on none).
_NEGATIVE_REDRAWS = 20


def _unseen_items(users: np.ndarray, n_items: int, seen_keys: np.ndarray, rng):
    """(items, unseen): a uniform random item for each of ``users``, redrawn while the user
    has it (``seen_keys``: user * n_items + item of every stored entry, sorted); ``unseen`` is
    False where every redraw hit a seen item."""
    def seen(items):
        keys = users * n_items + items
        at = np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)
        return seen_keys[at] == keys

    items = rng.integers(0, n_items, users.size)
    hit = seen(items)
    for _ in range(_NEGATIVE_REDRAWS):
        if not hit.any():
            break
        items[hit] = rng.integers(0, n_items, int(hit.sum()))
        hit = seen(items)
    return items, ~hit


class MLPRanker(EstimatorParams):
    """A binary-cross-entropy MLP over [user | item] factors (and optional side features).

    Parameters
    ----------
    hidden : widths of the hidden layers
    activation : "relu", "tanh" or "gelu" for the hidden layers
    negatives : items per positive drawn uniformly among those the user has not interacted
        with (redrawn while seen; a user who has seen every item gets none)
    epochs, batch_size, learning_rate : Adam on mini-batches of positives and their negatives
    l2 : weight decay added to the gradient of every weight matrix
    random_state : seed of the initial weights, the sampling and the order. Training runs on
        NumPy's matrix products, so the weights also follow the BLAS's rounding, which
        OpenBLAS varies with its thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS): for
        weights that do not depend on it, fit under
        ``threadpoolctl.threadpool_limits(1, "blas")``

    ``get_params``/``set_params`` follow scikit-learn's estimator protocol
    (``sklearn.base.clone`` works). A fitted ranker keeps its weights until the next
    ``fit``, which uses the new parameters; its ``activation``, which the weights were
    trained with, can only change while it is unfitted (``set_params`` refuses another).

    >>> import numpy as np, scipy.sparse as sp
    >>> rng = np.random.default_rng(0)
    >>> seen = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    >>> ranker = MLPRanker(hidden=(8,), epochs=2, random_state=0)
    >>> ranker = ranker.fit(seen, rng.standard_normal((30, 4)), rng.standard_normal((20, 4)))
    >>> ranker.to_scorer().input_width
    8
    """

    # the constructor's settings, as it checks and sets them (_checked_params)
    hidden: tuple[int, ...]
    activation: str
    negatives: int
    epochs: int
    batch_size: int
    learning_rate: float
    l2: float
    random_state: RandomState

    def __init__(self, hidden: Iterable[Integer] = (64, 32), *, activation: str = "relu",
                 negatives: Integer = 4, epochs: Integer = 5, batch_size: Integer = 1024,
                 learning_rate: float = 1e-3, l2: float = 0.0,
                 random_state: RandomState = None) -> None:
        self._set_checked(dict(
            hidden=hidden, activation=activation, negatives=negatives, epochs=epochs,
            batch_size=batch_size, learning_rate=learning_rate, l2=l2,
            random_state=random_state))
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.losses: list[float] = []  # mean loss of each epoch

    @keeps_generator_on_failure
    def fit(self, user_items: UserItems, user_factors: ArrayLike,
            item_factors: ArrayLike, user_features: ArrayLike | None = None,
            item_features: ArrayLike | None = None, *, show_progress: bool = False,
            callback: Callable[[int, float], None] | None = None) -> "MLPRanker":
        """Train on the stored entries of ``user_items`` (users x items, CSR, or a
        ``recfuse.Interactions``: its ``matrix``) as positives; returns self.

        ``show_progress``: a progress bar over the mini-batches of all epochs, with the
        running loss; ``callback(epoch, loss)`` gets each epoch's mean loss (``losses``).
        Training runs aside: on bad input, an error or an interrupt (e.g. Ctrl-C) part-way
        (raised by the callback too), or a fit that diverges (NaN or inf weights:
        ValueError), the ranker keeps the weights, biases and losses it had."""
        self._check_settings()
        check.check_flag(show_progress, "show_progress")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        R = check.check_csr(interaction_matrix(user_items), "user_items",
                            dtype=np.dtype(np.float32))
        users, items = R.shape
        user_blocks = [check.check_factors(user_factors, "user_factors", dtype=np.float32)]
        if user_features is not None:
            user_blocks.append(check.check_factors(user_features, "user_features", dtype=np.float32))
        item_blocks = [check.check_factors(item_factors, "item_factors", dtype=np.float32)]
        if item_features is not None:
            item_blocks.append(check.check_factors(item_features, "item_features", dtype=np.float32))
        for block, rows, name in [(b, users, "user") for b in user_blocks] + \
                [(b, items, "item") for b in item_blocks]:
            if block.shape[0] != rows:
                raise ValueError(f"{name} factors and features must have {rows} rows (the "
                                 f"{name}s of user_items), got shape {block.shape}")
        U = np.concatenate(user_blocks, axis=1)
        V = np.concatenate(item_blocks, axis=1)
        if U.shape[1] + V.shape[1] == 0:
            raise ValueError("the user and item factors and features have no columns: the "
                             "ranker needs at least one input")
        pos_users = np.repeat(np.arange(users), np.diff(R.indptr))
        pos_items = R.indices.astype(np.int64)
        if pos_users.size == 0:
            raise ValueError("user_items has no stored entries: nothing to learn from")
        seen_keys = np.sort(pos_users * items + pos_items)  # (user, item) as one sorted key
        rng = np.random.default_rng(self.random_state)
        widths = [U.shape[1] + V.shape[1], *self.hidden, 1]
        per_batch = max(1, self.batch_size // (1 + self.negatives))
        # refused up front (MemoryError naming the options) rather than allocations the
        # system kills the process for: the weights with their Adam moments and gradients,
        # and a batch's rows with their activations
        check.check_count_fits(sum(i * o + o for i, o in zip(widths[:-1], widths[1:])),
                               "the weights of hidden", 40)
        check.check_count_fits(min(per_batch, pos_users.size) * (1 + self.negatives),
                               "the rows of a batch (batch_size, or 1 + negatives)",
                               8 * widths[0] + 16 * sum(widths[1:]) + 40)
        trainer = copy.copy(self)  # trains its own lists; self changes only at the end
        trainer.weights = [(rng.standard_normal((o, i)) * np.sqrt(2.0 / i)).astype(np.float32)
                           for i, o in zip(widths[:-1], widths[1:])]
        trainer.biases = [np.zeros(o, np.float32) for o in widths[1:]]
        trainer.losses = []
        moments = [[np.zeros_like(p), np.zeros_like(p)] for p in trainer.weights + trainer.biases]
        step = 0
        batches = -(-pos_users.size // per_batch)
        progress = progress_bar(self.epochs * batches, show_progress, "MLPRanker", "batch")
        try:
            for epoch in range(self.epochs):
                # a diverging fit overflows quietly and check_trained refuses it below (NumPy's
                # warnings would be the caller's exception where warnings are errors)
                with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                    trainer._epoch(U, V, pos_users, pos_items, items, seen_keys, per_batch,
                                   rng, moments, step, progress)
                step += batches
                if callback is not None:
                    callback(epoch, trainer.losses[-1])
        finally:
            progress.close()
        check_trained("MLPRanker", trainer.weights + trainer.biases,
                      "lower learning_rate or scale down the factors and features")
        self.weights, self.biases, self.losses = trainer.weights, trainer.biases, trainer.losses
        return self

    def _epoch(self, U, V, pos_users, pos_items, items, seen_keys, per_batch, rng, moments,
               step, progress) -> None:
        """One pass over the positives in random order, in mini-batches of ``per_batch``
        positives with their sampled negatives; Adam's step count continues from ``step``;
        appends the epoch's mean loss to ``losses``."""
        order = rng.permutation(pos_users.size)
        total, count = 0.0, 0
        for start in range(0, order.size, per_batch):
            chosen = order[start:start + per_batch]
            u = np.repeat(pos_users[chosen], 1 + self.negatives)
            i = np.repeat(pos_items[chosen], 1 + self.negatives)
            negative = np.ones(u.size, bool)
            negative[:: 1 + self.negatives] = False
            i[negative], unseen = _unseen_items(u[negative], items, seen_keys, rng)
            keep = ~negative
            keep[negative] = unseen
            u, i, negative = u[keep], i[keep], negative[keep]
            y = (~negative).astype(np.float32)
            X = np.concatenate([U[u], V[i]], axis=1)
            loss, grads = self._loss_and_gradients(X, y)
            total += loss * y.size
            count += y.size
            step += 1
            self._adam(grads, moments, step)
            progress.update(1)
            progress.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        self.losses.append(total / count)

    def _forward(self, X):
        inputs, sums = [X], []
        h = X
        for layer, (W, b) in enumerate(zip(self.weights, self.biases)):
            z = h @ W.T + b
            sums.append(z)
            h = z if layer == len(self.weights) - 1 else _activate(self.activation, z)
            inputs.append(h)
        return inputs, sums

    def _loss_and_gradients(self, X, y):
        inputs, sums = self._forward(X)
        logit = sums[-1][:, 0]
        loss = float(np.mean(np.logaddexp(0, logit) - y * logit))
        # sigmoid(logit) as exp(-log(1 + e^-logit)): 1 / (1 + exp(-logit)) overflowed, with a
        # RuntimeWarning (an error where warnings are), for logits below about -88
        probability = np.exp(-np.logaddexp(0, -logit))
        delta = ((probability - y) / y.size)[:, None].astype(np.float32)
        grads_w, grads_b = [], []
        for layer in range(len(self.weights) - 1, -1, -1):
            grads_w.append(delta.T @ inputs[layer] + self.l2 * self.weights[layer])
            grads_b.append(delta.sum(axis=0))
            if layer:
                delta = (delta @ self.weights[layer]) * _slope(self.activation, sums[layer - 1])
        return loss, grads_w[::-1] + grads_b[::-1]

    def _adam(self, grads, moments, step, beta1=0.9, beta2=0.999, eps=1e-8):
        for parameter, grad, (m, v) in zip(self.weights + self.biases, grads, moments):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            m_hat = m / (1 - beta1**step)
            v_hat = v / (1 - beta2**step)
            parameter -= (self.learning_rate * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32)

    def predict_logits(self, X: ArrayLike) -> np.ndarray:
        """The logits of the rows of X (the concatenated input rows), for checks."""
        if not self.weights:
            raise RuntimeError("the ranker is not fitted: call fit first")
        X = check.check_factors(X, "X", dtype=np.dtype(np.float32),
                                n_cols=self.weights[0].shape[1], copy=False)
        return self._forward(X)[1][-1][:, 0]

    def to_scorer(self, *, precision: str = "float32", backend: str = "auto") -> MLPScorer:
        """An MLPScorer of the trained model; its score is the probability (sigmoid)."""
        if not self.weights:
            raise RuntimeError("the ranker is not fitted: call fit first")
        count = len(self.weights)
        layers = [(W, b, "sigmoid" if layer == count - 1 else self.activation)
                  for layer, (W, b) in enumerate(zip(self.weights, self.biases))]
        return MLPScorer(layers, precision=precision, backend=backend)

    def _params(self) -> dict[str, Any]:
        """The constructor arguments (``get_params``), as the factor models give theirs:
        ``MLPRanker(**ranker.get_params())`` is an unfitted ranker of the same settings."""
        return {"hidden": self.hidden, "activation": self.activation,
                "negatives": self.negatives, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "l2": self.l2, "random_state": param_seed(self.random_state)}

    def _checked_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The constructor's checks: the attributes ``params`` set."""
        hidden = params["hidden"]
        # a set or a dict has no order of layers (a set drops repeated widths); a 0-d array
        # has __iter__ but iterating it raises
        if isinstance(hidden, (str, bytes, set, frozenset, dict)) or \
                not hasattr(hidden, "__iter__") or getattr(hidden, "ndim", 1) == 0:
            raise TypeError(f"hidden must be a sequence of layer widths, e.g. (64, 32), got "
                            f"{type(hidden).__name__} {hidden!r}")
        widths = tuple(check.check_int(w, "hidden width", minimum=1) for w in hidden)
        if type(hidden) is tuple and all(type(w) is int for w in hidden):
            widths = hidden  # the very tuple given (sklearn.base.clone checks it)
        return {
            "hidden": widths,
            "activation": check.check_choice(params["activation"], "activation",
                                             HIDDEN_ACTIVATIONS),
            "negatives": check.check_int(params["negatives"], "negatives", minimum=1),
            "epochs": check.check_int(params["epochs"], "epochs", minimum=1),
            "batch_size": check.check_int(params["batch_size"], "batch_size", minimum=1),
            "learning_rate": check.check_float(params["learning_rate"], "learning_rate",
                                               minimum=0, strict=True),
            "l2": check.check_float(params["l2"], "l2", minimum=0),
            "random_state": check.check_random_state(params["random_state"]),
        }

    def _fit_shaped(self) -> dict[str, str]:
        return {"activation": "weights"} if self.weights else {}

    def __repr__(self) -> str:
        weights = self.weights
        fitted = "" if not weights else ", fitted: " + " -> ".join(
            [str(weights[0].shape[1])] + [str(W.shape[0]) for W in weights])
        return (f"MLPRanker(hidden={self.hidden}, activation={self.activation!r}, "
                f"negatives={self.negatives}, epochs={self.epochs}, "
                f"batch_size={self.batch_size}, learning_rate={self.learning_rate}, "
                f"l2={self.l2}{fitted})")

"""``SVD`` and ``SVDpp`` with the interface of Surprise's (``surprise.SVD``/``SVDpp``),
trained by recfuse. Switching is one import::

    # from surprise import SVD
    from recfuse.compat.surprise import SVD

They take Surprise's constructor arguments, ``fit(trainset)`` a ``surprise.Trainset``, and
``predict``/``test`` return Surprise's ``Prediction`` tuples, so they work inside
``surprise.model_selection.cross_validate`` and with ``surprise.accuracy``. Surprise itself
is not imported: any object with the ``Trainset`` methods used below will do.

``SVD`` reproduces Surprise's model: the same initial factors (drawn from
``random_state`` exactly as Surprise draws them), the ratings in Surprise's order
(``trainset.all_ratings()``, one sequential pass: ``grid=1``) and float64 arithmetic, so
predictions agree with ``surprise.SVD`` to rounding (not bit for bit: factors drift apart
by ~1e-15 over the epochs, so an RMSE compared with ``==`` against Surprise's, as in its
own ``test_sanity_checks``, can differ in the last digit). Pass ``grid=0`` (or a grid
size) and ``num_threads`` for the parallel block-scheduled epochs instead (their random
layout drawn from ``random_state`` after the factors, so a seed still fixes the fit).
``SVDpp`` uses recfuse.SVDpp's one-implicit-sum-per-user-pass epochs (see its docstring),
visiting the users in Surprise's order (inner id order; recfuse.SVDpp itself shuffles
them), which differ from Surprise's per-rating updates by second-order terms; its RMSE is
as good. A user who
rated one item more than once (Surprise keeps every line of the data) has that item once
in recfuse.SVDpp's implicit sum, where Surprise's sum and its 1/sqrt(|N(u)|) count every
copy.

As in Surprise, ``fit`` reads the attributes when it runs: ``algo.n_epochs = 5`` or
``algo.lr_bu = 0.01`` set after construction count (``lr_all``/``reg_all`` only resolve the
per-parameter rates at construction, as there).

Where they differ from Surprise: ``n_factors=0`` or above 4,096, learning rates <= 0 and
negative regularisation are refused (ValueError) where Surprise trains; so is a string
for ``biased`` (TypeError: "no" would be true; numbers and None are read as there);
``Prediction`` is a NamedTuple of the same fields that prints as Surprise's (it unpacks and
works with ``surprise.accuracy``, but is not an instance of ``surprise.Prediction``);
``est`` is always a float (Surprise's is the int bound when clipped to an int scale);
``estimate`` for unknown ids returns the fallback ``predict`` would give instead of raising
Surprise's ``PredictionImpossible``; ``pu``/``qi``/``bu``/``bi``/``yj`` are read-only copies
(None before ``fit``, where Surprise has no such attribute): writing into them does not
change the model; ``verbose=True`` shows a progress bar (on stderr) instead of Surprise's
"Processing epoch N" lines; Surprise's other ``AlgoBase`` members (``compute_baselines``,
``get_neighbors``, ``sim_options``) are not there. A learning rate high enough to diverge
trains on to NaN/inf and predicts the clipped bounds, as Surprise does (recfuse's own models
raise instead).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias, Union

import numpy as np

from ..models.sgd import SVD as _RecfuseSVD
from ..models.sgd import SVDpp as _RecfuseSVDpp
from .._sgd.common import make_blocks
from .._typing import Integer, Self

# Surprise's random_state: None (NumPy's global RandomState), a seed or a RandomState.
SurpriseRandomState: TypeAlias = Union[int, np.integer[Any], np.random.RandomState, None]


class CompatTypeError(TypeError, AttributeError):
    """The wrong kind of argument where Surprise raised AttributeError (a ``fit`` of
    something without a Trainset's methods): catchable as either."""


class Prediction(NamedTuple):
    """Surprise's ``Prediction``: (uid, iid, r_ui, est, details)."""

    uid: object
    iid: object
    r_ui: float | None
    est: float
    details: dict[str, Any]

    def __str__(self):  # Surprise's, which predict/test(verbose=True) print
        text = f"user: {self.uid:<10} item: {self.iid:<10} "
        text += "r_ui = None   " if self.r_ui is None else f"r_ui = {self.r_ui:1.2f}   "
        return text + f"est = {self.est:1.2f}   " + str(self.details)


def _surprise_rng(random_state):
    """Surprise's ``get_rng``: None -> NumPy's global RandomState, int -> RandomState(seed)."""
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, (numbers.Integral, np.integer)):
        return np.random.RandomState(int(random_state))
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise ValueError(f"Wrong random state. Expecting None, an int or a numpy RandomState "
                     f"instance, got {type(random_state)}")


def _surprise_clip(estimates, low, high):
    """Surprise's clipping, ``max(low, min(high, est))`` in that order, so that a diverged
    model's NaN estimate becomes ``high`` as there (NumPy's clip would keep NaN)."""
    capped = np.where(estimates < high, estimates, high)
    return np.where(capped > low, capped, low)


class _SurpriseOrderSVDpp(_RecfuseSVDpp):
    """recfuse.SVDpp visiting the users in id order, each user's ratings as given: Surprise's
    order (``all_ratings()`` is user-major), where recfuse.SVDpp draws a random user order
    from its own seed, which a Surprise ``random_state`` does not fix."""

    def _layout(self, users, items, n_users, n_items, nnz, rng):
        order = np.argsort(users, kind="stable")
        return make_blocks(users, items, n_users, n_items, 1, rng, order=order,
                           num_threads=self.num_threads)


class _SurpriseAdapter:
    _MODEL: type = _RecfuseSVD
    _RATES: tuple[str, ...] = ()  # Surprise's per-parameter rates, resolved attributes

    def __init__(self, n_factors, n_epochs, init_mean, init_std_dev, lr_all, reg_all, rates,
                 random_state, verbose, grid, num_threads):
        self.n_factors, self.n_epochs = n_factors, n_epochs
        self.init_mean, self.init_std_dev = init_mean, init_std_dev
        self.lr_all, self.reg_all = lr_all, reg_all
        for name, value in rates.items():  # resolved, as Surprise keeps them
            setattr(self, name, value if value is not None else
                    lr_all if name.startswith("lr") else reg_all)
        self.random_state, self.verbose = random_state, verbose
        self.grid, self.num_threads = grid, num_threads
        self._model = self._new_model()  # checks the arguments now; fit builds a fresh one
        self.trainset = None

    def _new_model(self, seed=None):
        """A recfuse model from the attributes as they are now: Surprise's ``fit`` reads
        ``self.n_epochs``, ``self.lr_bu``... when it runs, so one set after construction
        (``algo.n_epochs = 5``) counts, as there."""
        # Surprise runs range(n_epochs) epochs: none for a negative count
        epochs = self.n_epochs
        if isinstance(epochs, (numbers.Integral, np.integer)) and not isinstance(epochs, bool):
            epochs = max(0, int(epochs))
        model = self._MODEL(
            factors=self.n_factors, epochs=epochs, lr=self._overall("lr"),
            reg=self._overall("reg"),
            init_mean=self.init_mean, init_std=self.init_std_dev, dtype=np.float64,
            grid=self.grid, shuffle=False, num_threads=self.num_threads, random_state=seed,
            **{name: getattr(self, name) for name in self._RATES}, **self._extra())
        # Surprise trains on to NaN/inf when its learning rate is too high (a grid search
        # then scores that point and goes on); recfuse's own models refuse such a fit.
        model._refuse_divergence = False
        return model

    def _overall(self, prefix: str):
        """``lr_all`` or ``reg_all``; when None (Surprise never reads it once every
        per-parameter rate is given), one of those rates, which the model uses instead."""
        value = getattr(self, f"{prefix}_all")
        if value is None:
            value = next(getattr(self, name) for name in self._RATES if name.startswith(prefix))
        return value

    def _extra(self) -> dict:
        return {}

    # ------------------------------------------------------------------ Surprise's API
    def fit(self, trainset: Any) -> Self:
        """Train on a ``surprise.Trainset`` (inner ids, ratings in ``all_ratings()`` order)."""
        if not hasattr(trainset, "all_ratings"):  # e.g. a Dataset, not its Trainset
            raise CompatTypeError(f"trainset must be a surprise.Trainset "
                                  f"(dataset.build_full_trainset()), got "
                                  f"{type(trainset).__name__}")
        triples = np.array(list(trainset.all_ratings()), dtype=np.float64).reshape(-1, 3)
        # Surprise's rating_scale only bounds the predictions (``predict`` and ``test`` clip to
        # it here too): ratings outside it train as given, so the model's scale covers both.
        scale = tuple(trainset.rating_scale)
        ratings = triples[np.isfinite(triples[:, 2]), 2]  # a NaN is refused by fit, as such
        if ratings.size:
            scale = (min(scale[0], ratings.min()), max(scale[1], ratings.max()))
        rng = _surprise_rng(self.random_state)
        shapes = [trainset.n_users] + [trainset.n_items] * (len(self._factor_names()) - 1)
        initial = [rng.normal(self.init_mean, self.init_std_dev, (n, self.n_factors))
                   for n in shapes]
        # A grid other than 1 lays the ratings out at random: from random_state too, so that a
        # seed reproduces the fit (grid=1, Surprise's order, draws nothing more).
        model = self._new_model(int(rng.randint(2**31 - 1)) if self.grid != 1 else None)
        # (one value, lowest == highest: "likes" data; the model takes it from the ratings)
        model.fit(triples[:, 0].astype(np.int64), triples[:, 1].astype(np.int64), triples[:, 2],
                  rating_scale=scale if scale[0] < scale[1] else None,
                  n_users=trainset.n_users, n_items=trainset.n_items,
                  show_progress=bool(self.verbose), initial_factors=tuple(initial))
        self._model, self.trainset = model, trainset
        return self

    def estimate(self, u: Any, i: Any) -> float:
        """The unclipped estimate for inner ids (Surprise passes 'UKN__' strings for unknown)."""
        if self.trainset is None:
            raise RuntimeError("the model is not fitted: call fit(trainset) first")
        inner_u = u if isinstance(u, (numbers.Integral, np.integer)) else self._unknown_user()
        inner_i = i if isinstance(i, (numbers.Integral, np.integer)) else self._unknown_item()
        return float(self._model.predict(int(inner_u), int(inner_i), clip=False))

    def predict(self, uid: Any, iid: Any, r_ui: float | None = None, clip: bool = True,
                verbose: bool = False) -> Prediction:
        """Prediction for raw ids, as ``surprise.AlgoBase.predict``."""
        if self.trainset is None:
            raise RuntimeError("the model is not fitted: call fit(trainset) first")
        try:
            inner_u = self.trainset.to_inner_uid(uid)
        except ValueError:
            inner_u = "UKN__" + str(uid)
        try:
            inner_i = self.trainset.to_inner_iid(iid)
        except ValueError:
            inner_i = "UKN__" + str(iid)
        details = self._impossible(inner_u, inner_i)
        est = self.default_prediction() if details["was_impossible"] else \
            self.estimate(inner_u, inner_i)
        if clip:
            est = float(_surprise_clip(np.float64(est), *self.trainset.rating_scale))
        prediction = Prediction(uid, iid, r_ui, est, details)
        if verbose:
            print(prediction)
        return prediction

    def test(self, testset: Iterable[tuple[Any, Any, float | None]], verbose: bool = False
             ) -> list[Prediction]:
        """Predictions for (uid, iid, r_ui) triples, any iterable of them as in Surprise
        (vectorised; same results as one by one)."""
        if self.trainset is None:
            raise RuntimeError("the model is not fitted: call fit(trainset) first")
        testset = list(testset)  # read three times below: a generator would be spent
        users = np.array([self._inner(self.trainset.to_inner_uid, uid, self._unknown_user())
                          for uid, _, _ in testset], dtype=np.int64)
        items = np.array([self._inner(self.trainset.to_inner_iid, iid, self._unknown_item())
                          for _, iid, _ in testset], dtype=np.int64)
        estimates = self._model.predict(users, items, clip=False) if len(testset) else \
            np.zeros(0)
        details = [{"was_impossible": False}] * len(testset)  # copied below where it differs
        if self._can_be_impossible():
            impossible = (users >= self.trainset.n_users) | (items >= self.trainset.n_items)
            estimates = np.where(impossible, self.default_prediction(), estimates)
            details = [self._impossible_details() if flag else {"was_impossible": False}
                       for flag in impossible.tolist()]
        estimates = _surprise_clip(estimates, *self.trainset.rating_scale)
        predictions = [Prediction(uid, iid, r_ui, float(est), dict(detail))
                       for (uid, iid, r_ui), est, detail in zip(testset, estimates, details)]
        if verbose:
            for prediction in predictions:
                print(prediction)
        return predictions

    def default_prediction(self) -> float:
        """The training mean, Surprise's fallback when a prediction is impossible; raises
        RuntimeError before ``fit``."""
        if self.trainset is None:
            raise RuntimeError("the model is not fitted: call fit(trainset) first")
        return self.trainset.global_mean

    # ------------------------------------------------------------------ Surprise's attributes
    @property
    def bu(self) -> np.ndarray | None:
        """The user biases b_u by inner id (a copy; None before ``fit``)."""
        return None if self._model.user_bias is None else self._model.user_bias.copy()

    @property
    def bi(self) -> np.ndarray | None:
        """The item biases b_i by inner id (a copy; None before ``fit``)."""
        return None if self._model.item_bias is None else self._model.item_bias.copy()

    @property
    def pu(self) -> np.ndarray | None:
        """The user factors p_u, users x n_factors by inner id (a copy; None before
        ``fit``)."""
        return None if self._model.user_factors is None else self._model.user_factors.copy()

    @property
    def qi(self) -> np.ndarray | None:
        """The item factors q_i, items x n_factors by inner id (a copy; None before
        ``fit``)."""
        return None if self._model.item_factors is None else self._model.item_factors.copy()

    # ------------------------------------------------------------------ helpers
    def _can_be_impossible(self) -> bool:
        """Surprise's SVD without biases cannot estimate for an unknown user or item (its
        estimate raises PredictionImpossible); biased SVD and SVD++ always can."""
        return False

    @staticmethod
    def _impossible_details() -> dict:
        return {"was_impossible": True, "reason": "User and item are unknown."}

    def _impossible(self, inner_u, inner_i) -> dict:
        """The details of a prediction for inner ids ('UKN__' strings for unknown ids), as
        ``surprise.AlgoBase.predict`` sets them: then it falls back to
        ``default_prediction()``, the training mean."""
        known = isinstance(inner_u, (numbers.Integral, np.integer)) and \
            isinstance(inner_i, (numbers.Integral, np.integer))
        if self._can_be_impossible() and not known:
            return self._impossible_details()
        return {"was_impossible": False}

    @staticmethod
    def _inner(convert, raw, unknown):
        try:
            return convert(raw)
        except ValueError:
            return unknown

    def _unknown_user(self) -> int:
        return self.trainset.n_users  # beyond every known id: recfuse's unknown

    def _unknown_item(self) -> int:
        return self.trainset.n_items

    def _factor_names(self) -> tuple[str, ...]:
        return ("pu", "qi")

    def __repr__(self) -> str:
        biased = f", biased={self.biased}" if hasattr(self, "biased") else ""
        fitted = "" if self.trainset is None else (
            f", fitted on {self.trainset.n_users} users x {self.trainset.n_items} items")
        return (f"recfuse.compat.surprise.{type(self).__name__}(n_factors={self.n_factors}, "
                f"n_epochs={self.n_epochs}{biased}, lr_all={self.lr_all}, "
                f"reg_all={self.reg_all}, random_state={self.random_state!r}{fitted})")


class SVD(_SurpriseAdapter):
    """``surprise.SVD`` computed by recfuse (see the module docstring).

    >>> from recfuse.compat.surprise import SVD
    >>> algo = SVD(n_factors=10, n_epochs=5, random_state=0)   # then algo.fit(trainset)
    """

    _RATES = ("lr_bu", "lr_bi", "lr_pu", "lr_qi", "reg_bu", "reg_bi", "reg_pu", "reg_qi")

    def __init__(self, n_factors: Integer = 100, n_epochs: Integer = 20, biased: bool = True,
                 init_mean: float = 0, init_std_dev: float = 0.1, lr_all: float = 0.005,
                 reg_all: float = 0.02, lr_bu: float | None = None, lr_bi: float | None = None,
                 lr_pu: float | None = None, lr_qi: float | None = None,
                 reg_bu: float | None = None, reg_bi: float | None = None,
                 reg_pu: float | None = None, reg_qi: float | None = None,
                 random_state: SurpriseRandomState = None, verbose: bool = False, *,
                 grid: Integer = 1, num_threads: Integer = 0) -> None:
        self.biased = biased
        rates = dict(lr_bu=lr_bu, lr_bi=lr_bi, lr_pu=lr_pu, lr_qi=lr_qi, reg_bu=reg_bu,
                     reg_bi=reg_bi, reg_pu=reg_pu, reg_qi=reg_qi)
        super().__init__(n_factors, n_epochs, init_mean, init_std_dev, lr_all, reg_all, rates,
                         random_state, verbose, grid, num_threads)

    def _extra(self) -> dict:
        # Surprise reads biased by truth value: 0, 1 and None (a grid {"biased": [0, 1]})
        biased = self.biased
        if biased is None or (isinstance(biased, numbers.Number) and not isinstance(biased, bool)):
            biased = bool(biased)
        return {"biased": biased}

    def _can_be_impossible(self) -> bool:
        return not self.biased


class SVDpp(_SurpriseAdapter):
    """``surprise.SVDpp`` computed by recfuse.SVDpp (one implicit sum per user pass; see the
    module docstring). ``cache_ratings`` is accepted and ignored."""

    _MODEL = _SurpriseOrderSVDpp
    _RATES = ("lr_bu", "lr_bi", "lr_pu", "lr_qi", "lr_yj", "reg_bu", "reg_bi", "reg_pu",
              "reg_qi", "reg_yj")

    def __init__(self, n_factors: Integer = 20, n_epochs: Integer = 20, init_mean: float = 0,
                 init_std_dev: float = 0.1, lr_all: float = 0.007, reg_all: float = 0.02,
                 lr_bu: float | None = None, lr_bi: float | None = None,
                 lr_pu: float | None = None, lr_qi: float | None = None,
                 lr_yj: float | None = None, reg_bu: float | None = None,
                 reg_bi: float | None = None, reg_pu: float | None = None,
                 reg_qi: float | None = None, reg_yj: float | None = None,
                 random_state: SurpriseRandomState = None, verbose: bool = False,
                 cache_ratings: bool = False, *, num_threads: Integer = 0) -> None:
        self.cache_ratings = cache_ratings
        rates = dict(lr_bu=lr_bu, lr_bi=lr_bi, lr_pu=lr_pu, lr_qi=lr_qi, lr_yj=lr_yj,
                     reg_bu=reg_bu, reg_bi=reg_bi, reg_pu=reg_pu, reg_qi=reg_qi, reg_yj=reg_yj)
        super().__init__(n_factors, n_epochs, init_mean, init_std_dev, lr_all, reg_all, rates,
                         random_state, verbose, 1, num_threads)

    @property
    def yj(self) -> np.ndarray | None:
        """SVD++'s implicit item factors y_j, items x n_factors by inner id (a copy; None
        before ``fit``)."""
        factors = self._model.implicit_factors
        return None if factors is None else factors.copy()

    def _factor_names(self) -> tuple[str, ...]:
        return ("pu", "qi", "yj")

"""recfuse: a native engine for the recommender chain.

Models (``fit``, ``recommend``, ``recommend_all``, ``similar_items``, ``similar_users``,
``save``; ``load`` reads any saved model or ``MLPScorer`` back):

    ALS            implicit feedback (counts, clicks): alternating least squares
    BPR            implicit feedback: Bayesian personalised ranking (SGD)
    SVD, SVDpp     ratings: Surprise's Funk SVD and SVD++ (also ``predict``)
    ExplicitALS    ratings: weighted-lambda ALS (also ``predict``)

Retrieval and ranking:

    topk, ItemIndex      exact top-k by dot product or cosine, seen items excluded
    MLPScorer            fused MLP scoring and ranking of candidates (``from_torch``,
                         ``from_onnx``); ``prepare_items`` gives ``PreparedItems``
    MLPRanker            trains an MLPScorer on a factor model's vectors (NumPy)

Data (``recfuse.datasets``, ``recfuse.split``, ``recfuse.metrics`` are submodules):

    Interactions, IdMap  an event log as a users x items CSR matrix and its id maps
    split                random_split, per_user_split, leave_last_n, temporal_split
    metrics              evaluate, ranking_metrics, rmse, mae, catalog_coverage,
                         novelty, intra_list_diversity
    datasets             synthetic data and MovieLens

Serving: ``Recommender`` (recall -> rank -> ``Rerank`` in one call, real-time ``observe``
of ``Events``; answers are ``Recommendation`` tuples), ``MicroBatcher`` (concurrent calls
in one batch), ``python -m recfuse serve`` (HTTP) and the rest of the command line
(``python -m recfuse --help``).

Elsewhere: ``recfuse.compat.implicit`` and ``recfuse.compat.surprise`` (drop-ins for
implicit's ALS and Surprise's SVD/SVDpp), ``recfuse.distributed`` (ALS on Dask or Spark),
``backends()`` and ``resolve_backend()`` (what runs here), ``recfuse.reference`` (every
kernel in plain NumPy: the contract).

Conventions: ``num_threads=0`` means all the cores this process may use; ``random_state``
is a seed or a ``numpy.random.Generator``; ``backend="auto"`` takes the first usable of
cuda, cpu, numba and numpy; results are (ids, scores) sorted by score, ties to the smaller
id, short rows padded with -1 / -inf; a wrong kind of argument is a TypeError, a wrong value
a ValueError, each naming the argument.

>>> import recfuse, scipy.sparse as sp
>>> model = recfuse.ALS(factors=8, iterations=3, random_state=0)
>>> user_items = sp.random(50, 40, density=0.1, format="csr", random_state=0, dtype="float32")
>>> model.fit(user_items).user_factors.shape
(50, 8)
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._backend import backends, resolve_backend
from .interactions import IdMap, Interactions
from .models.als import ALS
from .models.bpr import BPR
from .models.explicit_als import ExplicitALS
from .models.sgd import SVD, SVDpp
from .persistence import load
from .ranker import MLPRanker
from .ranking import MLPScorer, PreparedItems
from .retrieval import ItemIndex, topk
from .serving import Events, Recommendation, Recommender, Rerank
from .batching import MicroBatcher

__version__ = "0.1.0"
__all__ = ["ALS", "BPR", "Events", "ExplicitALS", "IdMap", "Interactions", "ItemIndex",
           "MicroBatcher", "MLPRanker", "MLPScorer", "PreparedItems", "Recommendation",
           "Recommender", "Rerank", "SVD", "SVDpp", "backends", "load", "resolve_backend", "topk",
           "__version__"]

# The submodules the README uses as ``recfuse.<name>``, imported on first access (``import
# recfuse`` alone does not load them); hidden from type checkers, which would otherwise take
# any misspelt attribute of the package for one of these.
if not _TYPE_CHECKING:
    from ._lazy import submodule_getattr as _submodule_getattr

    __getattr__ = _submodule_getattr(__name__, ("compat", "datasets", "distributed", "metrics",
                                                "reference", "split"))

"""recfuse: a native engine for the recommender chain.

>>> import recfuse, scipy.sparse as sp
>>> model = recfuse.ALS(factors=8, iterations=3, random_state=0)
>>> user_items = sp.random(50, 40, density=0.1, format="csr", random_state=0, dtype="float32")
>>> model.fit(user_items).user_factors.shape
(50, 8)
"""

from __future__ import annotations

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

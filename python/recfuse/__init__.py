"""recfuse: a native engine for the recommender chain.

>>> import recfuse, scipy.sparse as sp
>>> model = recfuse.ALS(factors=8, iterations=3, random_state=0)
>>> user_items = sp.random(50, 40, density=0.1, format="csr", random_state=0, dtype="float32")
>>> model.fit(user_items).user_factors.shape
(50, 8)
"""

from __future__ import annotations

from ._backend import backends, resolve_backend
from .models.als import ALS
from .persistence import load
from .interactions import IdMap, Interactions

__version__ = "0.1.0"
__all__ = ["ALS", "backends", "load", "resolve_backend", "__version__"]
__all__ += ["IdMap", "Interactions"]

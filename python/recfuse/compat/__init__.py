"""Drop-in adapters: the APIs of other recommender packages, computed by recfuse.

``recfuse.compat.implicit``
    ``AlternatingLeastSquares`` with the constructor, methods and results of
    ``implicit.als.AlternatingLeastSquares`` (implicit 0.7). Switching is one import::

        # from implicit.als import AlternatingLeastSquares
        from recfuse.compat.implicit import AlternatingLeastSquares

``recfuse.compat.surprise``
    ``SVD`` and ``SVDpp`` with the constructors and methods of Surprise's, for
    ``surprise.Trainset`` and ``surprise.model_selection.cross_validate``::

        # from surprise import SVD
        from recfuse.compat.surprise import SVD

The adapters do not import the packages they imitate; those need not be installed.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

# The adapters as ``recfuse.compat.<name>`` after ``import recfuse`` alone, imported on first
# access (as recfuse's own submodules; hidden from type checkers likewise).
if not _TYPE_CHECKING:
    from .._lazy import submodule_getattr as _submodule_getattr

    __getattr__ = _submodule_getattr(__name__, ("implicit", "surprise"))

"""Drop-in adapters: the APIs of other recommender packages, computed by recfuse.

``recfuse.compat.implicit``
    ``AlternatingLeastSquares`` with the constructor, methods and results of
    ``implicit.als.AlternatingLeastSquares`` (implicit 0.7). Switching is one import::

        # from implicit.als import AlternatingLeastSquares
        from recfuse.compat.implicit import AlternatingLeastSquares

The adapters do not import the packages they imitate; those need not be installed.
"""

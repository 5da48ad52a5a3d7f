"""Type aliases of recfuse's public annotations, for type checkers.

The modules import them under ``typing.TYPE_CHECKING`` only (their annotations are strings:
``from __future__ import annotations``), so nothing here runs when recfuse is used; the
aliases are strings as well, so importing this module costs nothing either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

# An integer argument: Python's int or a NumPy integer (``check_int`` accepts any
# ``numbers.Integral`` but bool), e.g. ``k=np.int64(10)`` or an id taken from an array.
Integer: TypeAlias = "int | np.integer[Any]"

# A users x items matrix given to a model (``fit``, ``recommend``'s and ``update_users``'
# ``user_items``): a CSR matrix or array, or ``Interactions`` (its ``matrix``).
UserItems: TypeAlias = "sp.csr_matrix | sp.csr_array | Interactions"

# Any scipy.sparse matrix or array, of any format (what ``scipy.sparse.issparse`` accepts).
SparseMatrix: TypeAlias = "sp.spmatrix | sp.sparray"

# A file path as ``os.fspath`` takes it (bytes too: recfuse's files decode them).
PathLike: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

# The seed of a model or a split: None, an integer >= 0 or a Generator.
RandomState: TypeAlias = "int | np.integer[Any] | np.random.Generator | None"

if TYPE_CHECKING:  # the names the aliases above refer to
    import os
    from typing import Any

    import numpy as np
    import scipy.sparse as sp

    from .interactions import Interactions

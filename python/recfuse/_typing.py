"""Type aliases of recfuse's public annotations.

The modules' annotations are strings (``from __future__ import annotations``), evaluated only
when asked; the aliases and the names they use are imported at run time all the same, so
that ``typing.get_type_hints`` resolves every public annotation, as runtime type tools
(pydantic, typeguard, sphinx-autodoc-typehints) need. NumPy and SciPy are loaded by recfuse
anyway, so this costs nothing measurable.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, ForwardRef, TypeAlias, Union

import numpy as np
import scipy.sparse as sp

if sys.version_info >= (3, 11) or TYPE_CHECKING:
    from typing import Self
else:  # Python 3.10: typing_extensions where installed, else Any to runtime tools
    try:
        from typing_extensions import Self
    except ImportError:
        Self = Any

# An integer argument: Python's int or a NumPy integer (``check_int`` accepts any
# ``numbers.Integral`` but bool), e.g. ``k=np.int64(10)`` or an id taken from an array.
Integer: TypeAlias = Union[int, np.integer[Any]]

# A file path as ``os.fspath`` takes it (bytes too: recfuse's files decode them).
PathLike: TypeAlias = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]

# The seed of a model or a split: None, an integer >= 0 or a Generator.
RandomState: TypeAlias = Union[int, np.integer[Any], np.random.Generator, None]

if TYPE_CHECKING:
    from .interactions import Interactions

    # A users x items matrix given to a model (``fit``, ``recommend``'s and ``update_users``'
    # ``user_items``): a CSR matrix or array, or ``Interactions`` (its ``matrix``).
    UserItems: TypeAlias = Union[sp.csr_matrix, sp.csr_array, Interactions]
    # Any scipy.sparse matrix or array, of any format (what ``scipy.sparse.issparse`` takes).
    SparseMatrix: TypeAlias = Union[sp.spmatrix, sp.sparray]
else:
    # recfuse.interactions imports this module: its class is named, and resolved there.
    UserItems = Union[sp.csr_matrix, sp.csr_array,
                      ForwardRef("Interactions", module="recfuse.interactions")]
    SparseMatrix = Union[sp.spmatrix, getattr(sp, "sparray", sp.spmatrix)]  # SciPy >= 1.11

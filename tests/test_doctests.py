"""The docstring examples of the public modules run as tests."""

from __future__ import annotations

import doctest

import pytest

import recfuse
from recfuse import (_backend, batching, datasets, interactions, metrics, ranker, ranking,
                     reference_data, retrieval, serving, split)
from recfuse.compat import surprise
from recfuse.models import als, bpr, explicit_als, sgd

MODULES = [recfuse, _backend, batching, datasets, interactions, metrics, ranker, ranking,
           reference_data, retrieval, serving, split, surprise, als, bpr, explicit_als, sgd]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0

"""The docstring examples of the data-path modules run as tests."""

from __future__ import annotations

import doctest

import pytest

from recfuse import datasets, interactions, metrics, reference_data, split


@pytest.mark.parametrize("module", [datasets, interactions, metrics, reference_data, split],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0

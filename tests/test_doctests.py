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


def test_the_package_docstring_maps_every_top_level_name():
    """help(recfuse) showed one ALS example and nothing else: a newcomer had no map of the
    API. Every name of recfuse.__all__, and the submodules the README uses, are named."""
    doc = recfuse.__doc__
    for name in [n for n in recfuse.__all__ if n != "__version__"] + [
            "datasets", "split", "metrics", "compat.implicit", "compat.surprise",
            "distributed", "reference"]:
        assert name in doc, name


def test_submodules_are_attributes_after_a_bare_import():
    """``import recfuse; recfuse.metrics.evaluate(...)`` raised AttributeError unless
    something had imported recfuse.metrics already (the README's ``from recfuse import
    metrics`` always worked)."""
    import subprocess
    import sys

    code = ("import recfuse\n"
            "assert recfuse.metrics.evaluate and recfuse.split.random_split\n"
            "assert recfuse.datasets.synthetic_implicit and recfuse.compat.__name__\n"
            "assert recfuse.reference\n"
            "try:\n    recfuse.no_such_name\nexcept AttributeError as e:\n"
            "    assert \"no attribute 'no_such_name'\" in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compat_adapters_are_attributes_after_a_bare_import():
    """The README names ``recfuse.compat.surprise.SVD``; after ``import recfuse`` alone,
    ``recfuse.compat.surprise`` (and ``recfuse.compat.implicit``) raised AttributeError."""
    import subprocess
    import sys

    code = ("import recfuse\n"
            "assert recfuse.compat.surprise.SVD and recfuse.compat.surprise.SVDpp\n"
            "assert recfuse.compat.implicit.AlternatingLeastSquares\n"
            "try:\n    recfuse.compat.no_such_name\nexcept AttributeError as e:\n"
            "    assert \"no attribute 'no_such_name'\" in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True)

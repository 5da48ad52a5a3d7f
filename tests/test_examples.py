"""The examples/ scripts run end to end (small sizes)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_torch_ranker_example(precision, capsys):
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    if precision == "bfloat16":
        try:
            from recfuse import _core
        except ImportError:
            pytest.skip("recfuse._core is not built")
        ok, why = {name: (ok, why) for name, ok, why in _core.mlp_kernels()}["avx512bf16"]
        if not ok:
            pytest.skip(f"bfloat16 on the cpu backend: {why}")
    example = _load("torch_ranker")
    assert example.main(["--users", "400", "--items", "300", "--epochs", "1",
                         "--precision", precision]) == 0
    assert "ALS + MLP" in capsys.readouterr().out

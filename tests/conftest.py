"""Shared fixtures: dtype-aware tolerances (one table, used by every numerical test) and small models."""

from __future__ import annotations

import pytest
import torch

# (rtol, atol) per dtype, in the spirit of kornia's testing/base.py.
TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12)}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for numerical tests: cpu or cuda")


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(name)


@pytest.fixture
def tol(dtype: torch.dtype) -> dict[str, float]:
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}

"""Real audits of tiny models, shared by the report tests (session-scoped: each runs once)."""

from __future__ import annotations

import pytest
import torch
from _report_models import Ramp, RotAveraged, TinyCNN, TinySeg

from equiaudit.engine import audit


@pytest.fixture(scope="session")
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="session")
def so2_result(cnn: TinyCNN):
    return audit(cnn, "digits", "so2:12", limit=32, device="cpu")


@pytest.fixture(scope="session")
def c4_result(cnn: TinyCNN):
    return audit(RotAveraged(cnn), "digits", "c4", limit=24, device="cpu")


@pytest.fixture(scope="session")
def d4_result(cnn: TinyCNN):
    return audit(RotAveraged(cnn, d4=True), "digits", "d4", limit=16, device="cpu")


@pytest.fixture(scope="session")
def scale_result(cnn: TinyCNN):
    return audit(cnn, "digits", "scale:0.5..2:5", limit=16, device="cpu")


@pytest.fixture(scope="session")
def seg_result():
    torch.manual_seed(0)
    return audit(TinySeg(), "shapes-seg", "so2:8", limit=8, samples=8, device="cpu")


@pytest.fixture(scope="session")
def dense_result():
    return audit(Ramp(), "digits", "c4*scale:0.8,1.25", limit=8, device="cpu")

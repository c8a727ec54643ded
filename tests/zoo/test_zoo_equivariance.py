"""The zoo's models checked through equiaudit's own pytest plugin (the ``equivariance`` fixture)."""

from __future__ import annotations

import pytest
import torch

from equiaudit import zoo


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, tiny=True).eval()


@pytest.mark.equivariance(group="c4")
@pytest.mark.parametrize("name", ["gcnn-c4", "hnet", "e2cnn-c8"])
def test_c4_invariant_classifiers(equivariance, name: str) -> None:
    info = zoo.model_info(name)
    equivariance.check(_tiny(name), input_shape=info.input_shape, task="classify")


@pytest.mark.parametrize("name", ["gcnn-d4", "e2cnn-d4"])
def test_d4_invariant_classifiers(equivariance, name: str) -> None:
    equivariance.check(_tiny(name), group="d4", input_shape=zoo.model_info(name).input_shape, task="classify")


@pytest.mark.equivariance(group="c4", task="dense")
def test_group_unet_is_c4_equivariant(equivariance) -> None:
    equivariance.check(_tiny("group-unet-c4"), input_shape=(3, 32, 32))


def test_plain_cnn_is_caught(equivariance) -> None:
    with pytest.raises(AssertionError, match="rot90"):
        equivariance.check(_tiny("cnn"), group="c4", input_shape=(1, 28, 28), task="classify")

"""Group specs, elements, their matrices and conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from equiaudit.errors import GroupSpecError
from equiaudit.groups import VALID_FORMS, GroupElement, parse_group


@pytest.mark.parametrize(
    ("spec", "steps", "size", "exact"),
    [
        ("so2", None, 36, False),
        ("so2", 12, 12, False),
        ("so2:8", None, 8, False),
        ("rot:-30..30:31", None, 31, False),
        ("rot:0,90,180", None, 3, True),
        ("c4", None, 4, True),
        ("C8", None, 8, False),
        ("d4", None, 8, True),
        ("flip", None, 2, True),
        ("hflip", None, 2, True),
        ("vflip", None, 2, True),
        ("scale:0.5,0.75,1,1.5,2", None, 5, False),
        ("scale:0.5..2:7", None, 7, False),
        ("c4*scale:0.8,1,1.25", None, 12, False),
        ("d4*flip", None, 8, True),
        ("id", None, 1, True),
    ],
)
def test_spec_sizes(spec: str, steps: int | None, size: int, exact: bool) -> None:
    g = parse_group(spec, steps)
    assert len(g) == size
    assert g.exact is exact


def test_so2_angles_are_evenly_spaced_and_include_identity() -> None:
    g = parse_group("so2:36")
    assert g[0].is_identity
    angles = sorted(e.angle % 360 for e in g)
    np.testing.assert_allclose(angles, np.arange(0, 360, 10), atol=1e-9)


def test_range_and_log_scale_values() -> None:
    angles = [e.angle for e in parse_group("rot:-30..30:31")]
    np.testing.assert_allclose(angles, np.linspace(-30, 30, 31), atol=1e-9)
    scales = [e.scale for e in parse_group("scale:0.5..2:7")]
    np.testing.assert_allclose(scales, np.geomspace(0.5, 2, 7), rtol=1e-11)
    assert any(e.is_identity for e in parse_group("scale:0.5..2:7"))


@pytest.mark.parametrize(
    "spec", ["", "so3", "rot:1..2", "scale:0,1", "scale:-1..2:3", "c0", "so2:x", "c4*", "rot:a,b", "scale:nan"]
)
def test_bad_specs_name_the_valid_forms(spec: str) -> None:
    with pytest.raises(GroupSpecError) as info:
        parse_group(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "valid forms" in message or "must be" in message or "count" in message


def test_valid_forms_mentions_every_family() -> None:
    for family in ("so2", "rot:", "cN", "dN", "flip", "vflip", "scale:", "*"):
        assert family in VALID_FORMS


def test_rotation_matrix_convention_ccw_as_displayed() -> None:
    # y points down: a point to the right of the centre goes *up* (negative y) under +90 degrees.
    m = GroupElement(90).matrix()
    np.testing.assert_allclose(m[:, :2] @ [1.0, 0.0], [0.0, -1.0], atol=1e-15)
    assert m.dtype == np.float64
    # about the centre of a 5x5 image: the right-middle pixel (4, 2) lands on the top-middle pixel (2, 0)
    np.testing.assert_allclose(GroupElement(90).matrix((5, 5)) @ [4, 2, 1], [2, 0], atol=1e-12)


def test_scale_above_one_zooms_in_and_flip_mirrors_x() -> None:
    np.testing.assert_allclose(GroupElement(scale=2).matrix()[:, :2] @ [1, 1], [2, 2])
    np.testing.assert_allclose(GroupElement(reflect=True).matrix()[:, :2] @ [1, 1], [-1, 1])


@pytest.mark.parametrize(
    "element",
    [
        GroupElement(37, 1.3, True),
        GroupElement(-90),
        GroupElement(180, 0.5),
        GroupElement(12.5, 2.0, False),
        GroupElement(90, 1, True),
    ],
)
def test_inverse_and_composition_match_matrices(element: GroupElement) -> None:
    inv = element.inverse()
    assert (element * inv).is_identity and (inv * element).is_identity
    np.testing.assert_allclose(inv.linear() @ element.linear(), np.eye(2), atol=1e-12)
    other = GroupElement(23, 0.8, True)
    np.testing.assert_allclose((element * other).linear(), element.linear() @ other.linear(), atol=1e-12)


def test_exactness_and_labels() -> None:
    assert GroupElement(270).exact and GroupElement(270).quarter_turns == 3
    assert not GroupElement(45).exact and not GroupElement(90, 1.5).exact
    assert GroupElement().label == "identity"
    assert GroupElement(-90).label == "rot-90"
    assert GroupElement(90, 1.25, True).label == "rot90*scale1.25*hflip"
    assert GroupElement(360 + 45).angle == pytest.approx(45)
    assert math.isclose(GroupElement(-180).angle, 180)


def test_products_compose_and_deduplicate() -> None:
    g = parse_group("c4*scale:0.8,1,1.25")
    assert len({e for e in g}) == 12
    assert {e.quarter_turns for e in g} == {0, 1, 2, 3}
    assert parse_group("c4*c4").elements == parse_group("c4").elements


def test_element_rejects_bad_parameters() -> None:
    with pytest.raises(GroupSpecError):
        GroupElement(scale=0)
    with pytest.raises(GroupSpecError):
        GroupElement(angle=float("nan"))

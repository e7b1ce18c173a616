"""lerpray.targets: curve inversion, reachable ranges, and the joint solve with cross slopes."""

from __future__ import annotations

import numpy as np
import pytest

from lerpray.mixing import ExtrapolationBounds, MixError
from lerpray.targets import Calibration, Curve, solve_targets

pytestmark = pytest.mark.unit

BOUNDS = ExtrapolationBounds()


def test_inverse_of_a_piecewise_linear_curve():
    curve = Curve("s", (0.0, 0.5, 1.0), (0.0, 0.8, 1.0))
    assert curve.invert(0.4, 0.0, 1.0) == pytest.approx(0.25)
    assert curve.invert(0.9, 0.0, 1.0) == pytest.approx(0.75)
    assert curve.reachable(0.0, 1.0) == (0.0, 1.0)


def test_flat_stretch_inverts_to_its_midpoint_and_decreasing_curves_work():
    flat = Curve("s", (0.0, 0.25, 0.75, 1.0), (0.0, 0.5, 0.5, 1.0))
    assert flat.invert(0.5, 0.0, 1.0) == pytest.approx(0.5)
    down = Curve("s", (0.0, 1.0), (1.0, -1.0))
    assert down.invert(0.5, 0.0, 1.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("alphas", "fit"),
    [
        ((0.0, 0.5), (0, 1)),
        ((0.0, 1.0, 0.5), (0, 1, 2)),
        ((0.0, 0.5, 1.0), (0, 1, 0.5)),
        ((0.0, 1.0), (0, float("nan"))),
    ],
)
def test_bad_curves_are_refused(alphas, fit):
    with pytest.raises(ValueError):
        Curve("s", alphas, fit)


def test_joint_solve_undoes_the_cross_drag():
    """Sentiment's alpha drags formality by -0.6 per unit; the joint solve raises formality's alpha to make up."""
    cal = Calibration({"sentiment": Curve("v", (0.0, 1.0), (0.0, 1.0)), "formality": Curve("f", (0.0, 1.0), (0.0, 1.0))},
                      cross={"sentiment": {"formality": -0.6}})  # fmt: skip
    targets = {"sentiment": 0.8, "formality": 0.5}
    alone = solve_targets(targets, cal, BOUNDS, False, joint=False)
    assert alone.alpha == {"sentiment": 0.8, "formality": 0.5} and not alone.joint
    assert alone.predicted["formality"] == pytest.approx(0.5 - 0.6 * 0.3)
    joint = solve_targets(targets, cal, BOUNDS, False)
    assert joint.joint
    assert joint.alpha["formality"] == pytest.approx(0.5 + 0.6 * 0.3, abs=1e-6)
    assert joint.predicted == pytest.approx(targets, abs=1e-6)


def test_joint_solve_stays_in_the_box():
    cal = Calibration({"a": Curve("x", (0.0, 1.0), (0.0, 1.0)), "b": Curve("y", (0.0, 1.0), (0.0, 1.0))},
                      cross={"a": {"b": -2.0}, "b": {"a": -2.0}})  # fmt: skip
    got = solve_targets({"a": 1.0, "b": 1.0}, cal, BOUNDS, False)
    assert all(0.0 <= v <= 1.0 for v in got.alpha.values())
    # least squares: the best in the box does better than the independent inverses
    alone = solve_targets({"a": 1.0, "b": 1.0}, cal, BOUNDS, False, joint=False)
    err = [np.hypot(*(np.array(list(s.predicted.values())) - 1.0)) for s in (got, alone)]
    assert err[0] <= err[1] + 1e-9


def test_out_of_range_without_extrapolation_allowed_by_the_server():
    cal = Calibration({"a": Curve("x", (0.0, 1.0), (0.0, 1.0))})
    with pytest.raises(MixError) as info:
        solve_targets({"a": 2.0}, cal, None, False)
    assert "does not allow extrapolation" in info.value.message

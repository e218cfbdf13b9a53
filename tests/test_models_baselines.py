"""models/baselines.py: constant velocity."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import choose_k, constant_velocity, displacement_errors


@pytest.mark.parametrize("k", [1, 3, 7])
def test_constant_velocity_is_exact_on_straight_lines(k: int) -> None:
    rng = np.random.default_rng(0)
    p0, v = rng.normal(size=(5, 1, 2)), rng.normal(size=(5, 1, 2))
    t = np.arange(20)[None, :, None]
    line = p0 + v * t
    pred = constant_velocity(line[:, :8], k, 12)
    np.testing.assert_allclose(pred, line[:, 8:], atol=1e-12)
    ade, fde = displacement_errors(pred, line[:, 8:])
    assert ade.max() < 1e-9 and fde.max() < 1e-9


def test_choose_k_prefers_averaging_on_noisy_tracks() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(20)[None, :, None]
    clean = np.zeros((200, 1, 2)) + np.array([1.0, 0.5]) * t
    noisy = clean + rng.normal(0, 0.3, clean.shape)
    k, scores = choose_k(noisy[:, :8], clean[:, 8:])
    assert k > 1 and scores[k][0] < scores[1][0]


def test_k_beyond_observations_is_an_error() -> None:
    with pytest.raises(ValueError, match="k=8: expected 1 <= k <= 7"):
        constant_velocity(np.zeros((1, 8, 2)), 8, 12)


def test_step_interface_cv_equals_position_cv_through_the_evaluation() -> None:
    """The step-API CV, run by the evaluation code like a model, scores exactly like constant_velocity."""
    from export.features import default_spec
    from models.baselines import ConstantVelocityStep
    from models.datasets import Scene, Track, to_grid
    from models.evaluate import evaluate, prepare

    spec = default_spec("pedestrian")
    rng = np.random.default_rng(2)
    tracks = [Track(str(i), "pedestrian", 0.4 * np.arange(25), rng.normal(0, 0.3, (25, 2)).cumsum(0)) for i in range(4)]
    es = prepare(spec, [to_grid(Scene("s", "s", "mem", tracks), 0.4)], 8, 12, False)
    res = evaluate(ConstantVelocityStep(spec, 3, 12, 8, 0.4), es, cv_k=3)
    assert res["model"]["ade"] == pytest.approx(res["cv"]["ade"], abs=1e-5)
    assert res["stream"]["fde"] == pytest.approx(res["cv"]["fde"], abs=1e-5)

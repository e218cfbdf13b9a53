"""models/baselines.py: choosing k, and constant velocity behind the step interface."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import choose_k


def test_choose_k_prefers_averaging_on_noisy_tracks() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(20)[None, :, None]
    clean = np.zeros((200, 1, 2)) + np.array([1.0, 0.5]) * t
    noisy = clean + rng.normal(0, 0.3, clean.shape)
    k, scores = choose_k(noisy[:, :8], clean[:, 8:])
    assert k > 1 and scores[k][0] < scores[1][0]


def test_step_interface_cv_equals_position_cv_through_the_evaluation() -> None:
    """The step-API CV, run by the evaluation code like a model, scores exactly like the windows' CV."""
    from export.runtime.features import default_spec
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


def test_step_interface_cv_averages_the_displacements_an_agent_has() -> None:
    """An agent seen for fewer than k+1 samples: the step CV equals position CV over what there is."""
    from export.runtime.features import constant_velocity, default_spec, history_len, step_features, to_frame
    from models.baselines import ConstantVelocityStep

    spec = default_spec("vehicle")
    rng = np.random.default_rng(3)
    hl = history_len(spec)
    hist = rng.normal(0, 1, (hl, hl, 2)).cumsum(1)
    n_obs = np.arange(1, hl + 1)  # from just appeared to a full history
    pred, _ = ConstantVelocityStep(spec, 5, 6, 8, 0.1).step(step_features(spec, hist, n_obs), ())
    known = np.arange(hl)[None, :] < n_obs[:, None]
    world = constant_velocity(hist[:, ::-1], 5, np.arange(1, 7), known=known)
    np.testing.assert_allclose(pred, to_frame(spec, world, hist, n_obs), atol=1e-5)

"""models/pretrained: the shipped checkpoints load, fit the size budget, and extrapolate a straight walk/drive.

The runtime uses them on simulated traffic (vehicles ~10 m/s, pedestrians ~1.3 m/s) on roads in any
direction, which the rotation/scale-normalised features are meant to make possible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.runtime.features import history_len, step_features, to_world
from models.evaluate import load_stepper

PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained"


@pytest.mark.parametrize(("name", "speed", "tolerance_m"),
                         [("vehicle_lstm.pt", 10.0, 1.0), ("vehicle_lstm_k6.pt", 10.0, 1.0), ("pedestrian_lstm.pt", 1.3, 0.5),
                          ("sim_vehicle_lstm.pt", 10.0, 1.0), ("sim_pedestrian_lstm.pt", 1.3, 0.5)])
@pytest.mark.parametrize("heading", [0.0, 2.0, -2.5])
def test_pretrained_model_extrapolates_a_straight_track(name: str, speed: float, tolerance_m: float,
                                                         heading: float) -> None:
    path = PRETRAINED / name
    if not path.is_file():
        pytest.skip(f"{path} not trained yet")
    assert path.stat().st_size <= 1_000_000
    model = load_stepper(path)
    spec, dt, hl = model.meta["features"], model.meta["dt_s"], history_len(model.meta["features"])
    direction = np.array([np.cos(heading), np.sin(heading)])
    xy = np.array([100.0, -50.0]) + np.arange(30)[:, None] * speed * dt * direction
    state = model.zero_state(1)
    for s in range(len(xy)):   # streaming: one step per sample, state carried
        recent = xy[max(0, s - hl + 1): s + 1]
        hist = np.zeros((1, hl, 2))
        hist[0, hl - len(recent):] = recent
        n_obs = np.array([len(recent)])
        pred, state = model.step(step_features(spec, hist, n_obs), state)
    world = to_world(spec, pred, hist, n_obs)[0]
    horizon = world.shape[0]
    truth = xy[-1] + horizon * speed * dt * direction
    assert np.linalg.norm(world[-1] - truth) < tolerance_m

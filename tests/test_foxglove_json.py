"""pipeline/recordings/foxglove_json.py: what the Foxglove 3D panel is given for Predictions, one future or K."""

from __future__ import annotations

import json
import math

import numpy as np

from pipeline.recordings.foxglove import convert
from pipeline.wire.messages import AgentKind, Predictions

T = 4


def _lines(msg: Predictions) -> list[dict]:
    scene = json.loads(convert(msg, "pred/predictions"))
    (entity,) = scene["entities"]
    return entity["lines"]


def _k_futures(prob: list[list[float]]) -> Predictions:
    n, k = len(prob), len(prob[0])
    modes = np.zeros((n, k, T, 2), np.float32)
    modes[..., 0] = np.arange(1, T + 1)                  # along x
    modes[..., 1] = np.arange(k)[None, :, None]          # future j at y = j
    modes[..., 1] += 10 * np.arange(n)[:, None, None]    # agent i 10 m further
    p = np.array(prob, np.float32)
    return Predictions(stamp_ns=5, ids=np.arange(n), kind=np.full(n, AgentKind.VEHICLE), t_ns=np.arange(1, T + 1),
                       xy=modes[np.arange(n), np.nan_to_num(p).argmax(1)], modes=modes, prob=p)


def test_one_future_per_agent_is_one_line_as_before() -> None:
    xy = np.arange(2 * T * 2, dtype=np.float32).reshape(2, T, 2)
    lines = _lines(Predictions(ids=[1, 2], kind=[AgentKind.VEHICLE, AgentKind.PEDESTRIAN], t_ns=np.arange(T), xy=xy))
    assert len(lines) == 2
    assert lines[0] == {"type": 0, "pose": {"position": {"x": 0.0, "y": 0.0, "z": 0.0},
                                             "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
                        "thickness": 0.08, "scale_invariant": False,
                        "points": [{"x": float(x), "y": float(y), "z": 0.0} for x, y in xy[0]],
                        "color": {"r": 0.2, "g": 0.5, "b": 1.0, "a": 0.9}, "colors": [], "indices": []}
    assert lines[1]["color"] == {"r": 1.0, "g": 0.6, "b": 0.1, "a": 0.9}


def test_k_futures_are_k_lines_per_agent_as_strong_as_they_are_probable_the_most_probable_on_top() -> None:
    prob = [[0.1, 0.5, 0.05, 0.2, 0.1, 0.05], [0.3, 0.1, 0.1, 0.1, 0.1, 0.3]]
    lines = _lines(_k_futures(prob))
    assert len(lines) == 2 * 6
    for i, p in enumerate(prob):
        mine = lines[6 * i: 6 * i + 6]
        future = [int(round(line["points"][0]["y"])) - 10 * i for line in mine]  # which future each line draws
        assert sorted(future) == list(range(6))
        assert [p[j] for j in future] == sorted(p)  # least probable first, the most probable last (on top)
        alphas = [line["color"]["a"] for line in mine]
        assert alphas == sorted(alphas) and math.isclose(alphas[-1], 0.9)
        assert [line["thickness"] for line in mine] == sorted(line["thickness"] for line in mine)
        assert math.isclose(mine[-1]["thickness"], 0.08)
        for j, line in zip(future, mine, strict=True):  # in proportion to the most probable future's probability
            assert math.isclose(line["color"]["a"], 0.1 + 0.8 * p[j] / max(p), rel_tol=1e-6)
            assert [(q["x"], q["y"]) for q in line["points"]] == [(x + 1.0, j + 10.0 * i) for x in range(T)]


def test_probabilities_that_are_not_make_valid_colors() -> None:
    lines = _lines(_k_futures([[float("nan"), 2.0, -1.0]]))
    assert len(lines) == 3
    assert all(0.1 <= line["color"]["a"] <= 0.9 and 0.04 <= line["thickness"] <= 0.08 for line in lines)

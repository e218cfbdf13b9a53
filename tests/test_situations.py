"""models/situations.py: one situation label per evaluation window, from the observed past only."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import Grid
from models.situations import SITUATIONS, label_windows

DT, OBS, END = 0.4, 8, 7      # windows of 8 observed samples at 0.4 s, all ending at sample 7
T = (np.arange(20) - END) * DT  # time of each sample relative to the window end, s


def _grid(paths: list[np.ndarray], kind: str = "pedestrian") -> Grid:
    """A grid from per-agent xy[20,2] paths (NaN where absent)."""
    xy = np.stack(paths).astype(np.float64)
    valid = ~np.isnan(xy).any(-1)
    return Grid("g", "g", DT, 0.0, xy, valid, [kind] * len(paths), np.zeros(len(paths), bool))


def _walk(at_end: tuple[float, float], velocity: tuple[float, float]) -> np.ndarray:
    """A straight walk that is at `at_end` at the window end sample."""
    return np.asarray(at_end) + T[:, None] * np.asarray(velocity)


def _label(grid: Grid, agent: int = 0) -> str:
    return str(label_windows(grid, np.array([agent]), np.array([END]), OBS)[0])


def test_a_person_who_stays_put_is_standing_even_beside_others() -> None:
    jitter = np.random.default_rng(0).normal(0, 0.02, (20, 2))
    g = _grid([np.array([1.0, 1.0]) + jitter, _walk((0.0, 0.0), (1.2, 0.0))])
    assert _label(g) == "standing"
    assert _label(g, 1) == "other"   # the walker: one person 1.4 m away, standing, so no group and no crowd


def test_two_people_walking_side_by_side_one_metre_apart_are_a_group() -> None:
    g = _grid([_walk((0.0, 0.0), (1.2, 0.1)), _walk((0.0, 1.0), (1.25, 0.1))])
    assert [_label(g, 0), _label(g, 1)] == ["group", "group"]


def test_two_people_on_perpendicular_paths_to_the_same_point_are_crossing() -> None:
    # 2.64 m from the meeting point each at 1.2 m/s: they would meet there in 2.2 s
    g = _grid([_walk((-2.64, 0.0), (1.2, 0.0)), _walk((0.0, -2.64), (0.0, 1.2))])
    assert [_label(g, 0), _label(g, 1)] == ["crossing", "crossing"]
    # the same paths two seconds apart pass 1.7 m apart (at t* = 3.2 s): not crossing; 5.7 m apart: not a group
    late = _grid([_walk((-2.64, 0.0), (1.2, 0.0)), _walk((0.0, -5.04), (0.0, 1.2))])
    assert _label(late) == "other"


def test_seven_people_within_six_metres_are_crowded() -> None:
    ring = [(4 * np.cos(a), 4 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    # everyone walks +x, at speeds 0.5 m/s apart: parallel (no crossing) and never the same velocity (no group)
    g = _grid([_walk((0.0, 0.0), (1.0, 0.0))] + [_walk(p, (1.5 + 0.5 * i, 0.0)) for i, p in enumerate(ring)])
    assert _label(g) == "crowded"
    assert _label(_grid([_walk((0.0, 0.0), (1.0, 0.0))] + [_walk(p, (1.5 + 0.5 * i, 0.0))
                                                             for i, p in enumerate(ring[:5])])) == "other"


def test_a_walker_with_nobody_within_six_metres_is_alone() -> None:
    g = _grid([_walk((0.0, 0.0), (1.2, 0.0)), _walk((0.0, 6.5), (-1.2, 0.0))])
    assert _label(g) == "alone"


def test_a_neighbour_without_a_previous_sample_has_velocity_zero() -> None:
    me = _walk((0.0, 0.0), (0.35, 0.0))     # slow, but not standing
    beside = _walk((0.0, 1.0), (0.35, 0.0))
    assert _label(_grid([me, beside])) == "group"
    beside[:END] = np.nan                    # appears at the window end: velocity 0, 0.35 m/s off ours
    assert _label(_grid([me, beside])) == "other"


def test_the_future_does_not_change_a_label() -> None:
    """Moving, removing or adding anyone after the window end leaves every label as it was."""
    rng = np.random.default_rng(1)
    ring = [(4 * np.cos(a), 4 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    grids = [
        [np.array([1.0, 1.0]) + 0 * T[:, None], _walk((0.0, 0.0), (1.2, 0.0))],
        [_walk((0.0, 0.0), (1.2, 0.1)), _walk((0.0, 1.0), (1.25, 0.1))],
        [_walk((-2.64, 0.0), (1.2, 0.0)), _walk((0.0, -2.64), (0.0, 1.2))],
        [_walk((0.0, 0.0), (1.0, 0.0))] + [_walk(p, (1.5 + 0.5 * i, 0.0)) for i, p in enumerate(ring)],
        [_walk((0.0, 0.0), (1.2, 0.0)), _walk((0.0, 6.5), (-1.2, 0.0))],
    ]
    for paths in grids:
        before = [_label(_grid(paths), a) for a in range(len(paths))]
        after = [p.copy() for p in paths]
        for p in after:
            p[END + 1:] = rng.normal(0, 3, (len(T) - END - 1, 2))   # anywhere, at any speed
        after[1][END + 3:] = np.nan                                      # someone leaves
        arrives = np.full((20, 2), np.nan)
        arrives[END + 1:] = 0.1                                          # someone arrives on top of us
        after.append(arrives)
        assert [_label(_grid(after), a) for a in range(len(paths))] == before


def test_vehicles_and_scenes_with_one_agent_label_without_error() -> None:
    g = _grid([_walk((0.0, 0.0), (12.0, 0.0)), _walk((30.0, 3.5), (10.0, 0.0))], kind="vehicle")
    labels = label_windows(g, np.array([0, 0, 1]), np.array([7, 9, 12]), OBS)
    assert labels.tolist() == ["alone", "alone", "alone"]
    assert label_windows(g, np.zeros(0, np.int64), np.zeros(0, np.int64), OBS).tolist() == []


def test_drivecast_eval_splits_every_window_into_one_situation() -> None:
    from export.runtime.features import default_spec
    from models.baselines import ConstantVelocityStep
    from models.datasets import Scene, Track, to_grid
    from models.evaluate import _table, evaluate, prepare

    spec = default_spec("pedestrian")
    rng = np.random.default_rng(2)
    tracks = [Track(str(i), "pedestrian", 0.4 * np.arange(25), rng.normal(0, 0.3, (25, 2)).cumsum(0) + 3 * i)
              for i in range(5)]
    tracks.append(Track("still", "pedestrian", 0.4 * np.arange(25), np.full((25, 2), 40.0)))
    es = prepare(spec, [to_grid(Scene("s", "s", "mem", tracks), 0.4)], 8, 12, False)
    assert len(es.situation) == len(es.truth)
    res = evaluate(ConstantVelocityStep(spec, 3, 12, 8, 0.4), es, cv_k=3)
    table = res["per_situation"]
    assert list(table) == [s for s in SITUATIONS if s in table] and "standing" in table
    for name in ("model", "stream", "cv"):
        n = sum(r[name]["n"] for r in table.values())
        ade = sum(r[name]["ade"] * r[name]["n"] for r in table.values()) / n
        assert n == res["windows"] and ade == pytest.approx(res[name]["ade"], rel=1e-9)
    assert _table(res, "per_situation").splitlines()[0].startswith("situation ")

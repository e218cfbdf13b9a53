"""The detector's and tracker's parts on hand-made inputs: size memory, static grid, measurement
noise, scan matching. The nodes' own tests (test_lidar_detector, test_tracker) cover them in place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.kalman import measurement_noise
from nodes.lidar_boxes import SizeMemory
from nodes.scan_match import match_scan
from nodes.static_grid import StaticGrid


def test_size_memory_matches_nearby_live_entries_and_gives_the_slot_seen_longest_ago() -> None:
    mem = SizeMemory(radius_m=0.5, keep_s=5.0, capacity=3)
    prior = (0.43, 0.19)
    places = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    for k, xy in enumerate(places):
        idx, _ = mem.lookup(xy[None], float(k), prior)
        mem.update(idx, xy[None], np.array([[0.6, 0.3]]), np.array([True]), float(k))
    idx, ref = mem.lookup(np.array([[0.1, 0.0], [20.0, 0.0]]), 2.5, prior)
    assert idx[1] == -1 and idx[0] >= 0
    assert ref[0].tolist() == pytest.approx([0.6, 0.3]) and ref[1].tolist() == pytest.approx(prior)
    mem.update(idx[:1], np.array([[0.1, 0.0]]), np.array([[0.6, 0.3]]), np.array([False]), 2.5)  # seen again
    mem.update(np.array([-1]), np.array([[20.0, 0.0]]), np.array([[0.9, 0.4]]), np.array([True]), 3.0)
    # full: the new entry took the slot of (5, 0), seen at t=1, not that of (0, 0), seen again at 2.5
    assert mem.lookup(np.array([[5.0, 0.0]]), 3.0, prior)[0][0] == -1
    assert mem.lookup(np.array([[0.0, 0.0]]), 3.0, prior)[0][0] >= 0
    assert mem.lookup(np.array([[20.0, 0.0]]), 3.0, prior)[1][0].tolist() == pytest.approx([0.9, 0.4])
    assert mem.lookup(np.array([[20.0, 0.0]]), 8.5, prior)[0][0] == -1   # unseen for over keep_s


def test_static_grid_learns_a_wall_forgets_it_on_restart_and_ignores_points_outside() -> None:
    grid = StaticGrid(cell_m=0.1, size_m=4.0, static_after_s=1.0, gap_s=0.5)
    grid.follow(np.zeros(2))
    wall = np.column_stack([np.full(20, 1.0), np.linspace(-0.5, 0.5, 20)])
    outside = np.array([[30.0, 0.0]])
    cells, inside = grid.cells(np.concatenate([wall, outside]))
    assert inside.tolist() == [True] * 20 + [False]
    for k in range(13):   # hit every 0.1 s for 1.2 s
        grid.add(cells[inside], 0.1 * k)
    assert grid.is_static(cells, inside, 1.2).tolist() == [True] * 20 + [False]
    grid.restart(cells[inside][:10], 1.2)
    static = grid.is_static(cells, inside, 1.2)
    assert not static[:8].any() and static[8:20].all()   # a point next to a cell not restarted still is
    assert not grid.is_static(cells, inside, 1.2 + 0.6)[:20].any()   # unhit for longer than gap_s


def test_measurement_noise_is_the_diagonal_turned_by_the_heading() -> None:
    rng = np.random.default_rng(0)
    heading = rng.uniform(-4, 4, 50)
    along, across = rng.uniform(0.01, 1, 50), rng.uniform(0.01, 1, 50)
    c, s = np.cos(heading), np.sin(heading)
    turn = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)            # [M, 2, 2]
    expected = turn @ (np.eye(2) * np.stack([along, across], 1)[:, None, :]) @ turn.transpose(0, 2, 1)
    np.testing.assert_allclose(measurement_noise(heading, along, across), expected, atol=1e-15)


def _room(origin: tuple[float, float], step: float) -> np.ndarray:
    """Points every `step` m along the walls of a 6 x 4 m room with a 1 m box in a corner, in order."""
    ox, oy = origin
    corners = [(-3, -2), (3, -2), (3, 2), (1, 2), (1, 1), (0, 1), (0, 2), (-3, 2), (-3, -2)]
    pts = []
    for (x0, y0), (x1, y1) in zip(corners[:-1], corners[1:], strict=True):
        n = max(int(math.hypot(x1 - x0, y1 - y0) / step), 1)
        t = np.arange(n) / n
        pts.append(np.column_stack([ox + x0 + t * (x1 - x0), oy + y0 + t * (y1 - y0)]))
    return np.concatenate(pts)


@pytest.mark.parametrize("origin", [(0.0, 0.0), (3.0e5, -4.0e6)])   # the map's origin, and UTM-like coordinates
def test_scan_matching_recovers_the_pose_however_far_the_map_is_from_its_origin(origin: tuple[float, float]) -> None:
    reference = _room(origin, 0.05)
    true = (origin[0] + 0.4, origin[1] - 0.3, 0.15)
    c, s = math.cos(true[2]), math.sin(true[2])
    seen = _room(origin, 0.07) - true[:2]        # other points of the same walls, in the lidar frame
    local = seen @ np.array([[c, -s], [s, c]])
    pose = match_scan(local, reference, (true[0] - 0.08, true[1] + 0.05, true[2] - 0.05))
    assert pose is not None
    assert math.hypot(pose[0] - true[0], pose[1] - true[1]) < 0.005 and abs(pose[2] - true[2]) < 0.002

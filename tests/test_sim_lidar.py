"""The simulator's lidar: ray casting on hand-made scenes, the scan's noise, and the ego in the sim."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest

from nodes.sim import EGO_ID, WALL_Y, TrafficSim
from nodes.sim_lidar import SimLidar, cast, returns_on
from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import LaserScan, Message, Odometry, Tracks
from tests.conftest import REPO

CAR = (2.25, 0.95)  # half length, half width
NO_SHAPES = np.zeros((0, 3))


def box(x: float, y: float, yaw: float = 0.0, half: tuple[float, float] = CAR) -> list[float]:
    return [x, y, yaw, *half]


def lidar(beams: int = 360, noise: float = 0.0, dropout: float = 0.0, seed: int = 0) -> SimLidar:
    return SimLidar(beams, 0.1, 60.0, noise, dropout, np.random.default_rng(seed))


def beam(scanner: SimLidar, angle_deg: float) -> int:
    return round((math.radians(angle_deg) - scanner.angle_min) / scanner.angle_increment)


def run_sim(seconds: float, **params: object) -> tuple[LocalGraph, TrafficSim]:
    g = LocalGraph()
    node = g.add("sim", TrafficSim, params)
    g.start()
    g.advance_to(int(seconds * 1e9))
    g.spin()
    assert isinstance(node, TrafficSim)
    return g, node


def lidar_pose(ego: Odometry, offset: tuple[float, float, float]) -> tuple[float, float, float]:
    yaw = 2 * math.atan2(ego.orientation[2], ego.orientation[3])
    c, s = math.cos(yaw), math.sin(yaw)
    x, y = ego.position[:2]
    return x + c * offset[0] - s * offset[1], y + s * offset[0] + c * offset[1], yaw + offset[2]


def scan_points(scan: LaserScan, pose: tuple[float, float, float]) -> np.ndarray:
    """The scan's returns in the map frame, float64[K, 2]."""
    a = pose[2] + scan.angle_min + scan.angle_increment * np.arange(len(scan.ranges))
    ok = np.isfinite(scan.ranges)
    r = scan.ranges[ok].astype(np.float64)
    return np.stack([pose[0] + r * np.cos(a[ok]), pose[1] + r * np.sin(a[ok])], 1)


def test_a_beam_hits_a_box_face_at_its_range_and_angle() -> None:
    scanner = lidar()
    boxes = np.array([box(10.0, 0.0), box(0.0, -20.0, math.pi / 2)])
    r = scanner.scan((0.0, 0.0, 0.0), boxes, NO_SHAPES)
    assert r[beam(scanner, 0)] == pytest.approx(10.0 - CAR[0], abs=1e-5)  # the rear face, head on
    assert r[beam(scanner, 3)] == pytest.approx(7.75 / math.cos(math.radians(3)), abs=1e-5)
    assert r[beam(scanner, -90)] == pytest.approx(20.0 - CAR[0], abs=1e-5)  # a box turned by 90 degrees
    hit = np.flatnonzero(np.isfinite(r))
    assert set(hit) == {beam(scanner, d) for d in range(-6, 7)} | {beam(scanner, d) for d in range(-93, -86)}  # +-7.0, +-3.1 deg
    # the lidar turned by +90 degrees sees the same box on its beam at -90 degrees
    turned = scanner.scan((0.0, 0.0, math.pi / 2), boxes, NO_SHAPES)
    assert turned[beam(scanner, -90)] == pytest.approx(10.0 - CAR[0], abs=1e-5)


def test_a_beam_hits_a_circle_at_its_near_side() -> None:
    r = cast((1.0, 1.0), -3 * math.pi / 4, math.pi / 2, 4, np.zeros((0, 5)), np.array([[4.0, 4.0, 0.25]]), 60.0)
    assert r[2] == pytest.approx(math.hypot(3.0, 3.0) - 0.25)  # the beam at +45 degrees
    assert np.isinf(r[[0, 1, 3]]).all()


def test_a_box_behind_another_gets_no_returns() -> None:
    scanner = lidar(beams=3600)
    far = np.array([box(20.0, 0.0), [25.0, 0.0, 0.0, 0.1, 0.1]])
    alone = scanner.scan((0.0, 0.0, 0.0), far, np.array([[22.0, 0.0, 0.25]]))
    assert np.isfinite(alone).sum() > 30  # seen when nothing is in front of it
    hidden = scanner.scan((0.0, 0.0, 0.0), np.concatenate([far, [box(10.0, 0.0)]]), np.array([[22.0, 0.0, 0.25]]))
    assert np.isfinite(hidden).sum() > 100
    assert hidden[np.isfinite(hidden)].max() < math.hypot(7.75, 0.95)  # only the near box's face


def test_returns_are_counted_on_the_shapes_they_hit_and_none_on_a_hidden_one() -> None:
    scanner = lidar(beams=3600, noise=0.02, seed=1)
    boxes = np.array([box(10.0, 0.0), box(20.0, 0.0), box(0.0, 15.0, yaw=math.pi / 2)])  # the second hidden
    circles = np.array([[-8.0, 0.0, 0.25], [-16.0, 0.0, 0.25]])                         # the second hidden
    pose = (0.0, 0.0, 0.3)
    r = scanner.scan(pose, boxes, circles).astype(np.float64)
    n = returns_on(r, pose, scanner.angle_min, scanner.angle_increment, boxes, circles, margin=0.1)
    assert n[1] == 0 and n[4] == 0
    assert n[0] > 50 and n[2] > 20 and n[3] > 2
    assert n.sum() == np.isfinite(r).sum()   # every return is on exactly one shape


def test_the_sim_publishes_as_visible_the_agents_its_scan_hit() -> None:
    g, node = run_sim(20.0, agents=48, lidar=True, seed=5)
    truth = {m.stamp_ns: m for m in g.published["sim/tracks"]}
    scans = {m.stamp_ns: m for m in g.published["sim/scan"]}
    poses = {m.stamp_ns: m for m in g.published["sim/ego"]}
    hidden = 0
    for v in g.published["sim/visible"]:
        assert isinstance(v, Tracks)
        t, scan, ego = truth[v.stamp_ns], scans[v.stamp_ns], poses[v.stamp_ns]
        assert set(v.ids.tolist()) <= set(t.ids.tolist())
        pts = scan_points(scan, lidar_pose(ego, node.params.lidar_offset))
        near = np.hypot(*(t.xy - ego.position[:2]).T) < 30
        hidden += int(near.sum()) - int(np.isin(t.ids[near], v.ids).sum())
        for xy in v.xy:  # a visible agent has a return within its footprint (car half diagonal 2.5 m)
            assert np.hypot(*(pts - xy).T).min() < 2.6
    assert hidden > 20   # over 200 scans, agents within 30 m hide behind others


def test_the_lidar_does_not_see_the_shape_it_stands_in() -> None:
    r = cast((0.0, 0.0), -3.0, 0.1, 60, np.array([box(0.5, 0.0)]), np.array([[0.0, 0.0, 0.25]]), 60.0)
    assert np.isinf(r).all()


def test_returns_outside_the_range_limits_are_infinite() -> None:
    scanner = SimLidar(360, 1.0, 30.0, 0.0, 0.0, np.random.default_rng(0))
    r = scanner.scan((0.0, 0.0, 0.0), np.array([box(33.0, 0.0, half=(2.25, 3.0)), box(0.0, 3.0, half=(0.5, 2.5))]),
                     NO_SHAPES)
    assert r[beam(scanner, 0)] == math.inf  # 30.75 m away, though its bounding circle reaches into range
    assert r[beam(scanner, 90)] == -math.inf  # 0.5 m away, closer than range_min (REP 117)


def test_dropouts_and_noise_match_the_configured_rates() -> None:
    room = np.array([box(10.0, 0.0, half=(0.1, 12.0)), box(-10.0, 0.0, half=(0.1, 12.0)),
                     box(0.0, 10.0, half=(12.0, 0.1)), box(0.0, -10.0, half=(12.0, 0.1))])
    exact = lidar(beams=3600).scan((0.5, -0.5, 0.3), room, NO_SHAPES)
    assert np.isfinite(exact).all()  # every beam hits a wall
    scanner = lidar(beams=3600, noise=0.05, dropout=0.1, seed=1)
    r = np.concatenate([scanner.scan((0.5, -0.5, 0.3), room, NO_SHAPES) for _ in range(10)])
    assert np.isnan(r).mean() == pytest.approx(0.1, abs=0.01)  # 36000 beams: 6 standard deviations
    error = r[~np.isnan(r)] - np.tile(exact, 10)[~np.isnan(r)]
    assert error.std() == pytest.approx(0.05, rel=0.03)
    assert abs(error.mean()) < 0.002


def test_sim_scans_see_the_roadside_walls_and_posts() -> None:
    g, sim = run_sim(3.0, lidar=True, agents=16, lidar_noise_m=0.0, lidar_dropout=0.0, seed=5)
    points = scan_points(g.published["sim/scan"][-1], lidar_pose(g.published["sim/ego"][-1], sim.params.lidar_offset))
    assert np.sum(np.abs(np.abs(points[:, 1]) - WALL_Y) < 1e-3) > 10  # the walls' faces
    posts = sim.static[1]
    near_post = np.hypot(*(points[:, None, :] - posts[None, :, :2]).transpose(2, 0, 1)).min(axis=1)
    assert np.sum(np.abs(near_post - 0.15) < 1e-3) >= 2


def test_the_ego_pose_and_mount_offset_reproduce_the_scan() -> None:
    offset = (1.5, 0.3, 0.2)
    g, sim = run_sim(4.0, lidar=True, agents=32, lidar_offset=list(offset), lidar_noise_m=0.0, lidar_dropout=0.0)
    scans, egos = g.published["sim/scan"], g.published["sim/ego"]
    assert len(scans) == len(egos) == len(g.published["sim/tracks"]) == 40
    assert [s.stamp_ns for s in scans] == [e.stamp_ns for e in egos]
    scan, ego = scans[-1], egos[-1]
    assert (scan.frame_id, ego.frame_id, ego.child_frame_id, scan.time_increment) == ("laser", "map", "ego", 0.0)
    boxes, circles = sim.world.shapes()
    x, y, yaw = lidar_pose(ego, offset)
    expected = cast((x, y), yaw + scan.angle_min, scan.angle_increment, 360, np.concatenate([boxes, sim.static[0]]),
                    np.concatenate([circles, sim.static[1]]), scan.range_max)
    np.testing.assert_allclose(scan.ranges, expected, rtol=1e-6)
    x, y, yaw, vx, vy = sim.world.ego_state()
    assert ego.position.tolist() == [x, y, 0.0]
    assert ego.linear[0] == pytest.approx(math.hypot(vx, vy)) and ego.linear[1] == pytest.approx(0.0, abs=1e-9)


def test_the_ego_laps_the_road_and_is_never_in_tracks_or_detections() -> None:
    g, _ = run_sim(90.0, lidar=True, agents=24, road_length_m=150.0)   # a lap, red lights included
    x = np.array([e.position[0] for e in g.published["sim/ego"]])
    assert len(x) == 900 and np.sum(np.diff(x) < -100) >= 1  # re-entered at the start at least once
    assert all(EGO_ID not in t.ids for t in g.published["sim/tracks"])
    assert max(len(t.ids) for t in g.published["sim/tracks"]) <= 23  # the ego is one of the agents


def _digest(msgs: list[Message]) -> str:
    h = hashlib.sha256()
    for m in msgs:
        for f in dataclasses.fields(m):
            a = getattr(m, f.name)
            h.update(f.name.encode())
            h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else repr(a).encode())
    return h.hexdigest()[:16]


def test_scans_are_deterministic_by_seed() -> None:
    runs = [run_sim(2.0, lidar=True, agents=64, seed=s)[0].published for s in (4, 4, 5)]
    digests = [{t: _digest(v) for t, v in p.items() if not t.endswith("diagnostics")} for p in runs]
    assert digests[0] == digests[1]
    assert digests[0]["sim/scan"] != digests[2]["sim/scan"]


def test_a_range_min_above_range_max_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^sim: params: lidar_range_min_m: expected < lidar_range_max_m \(5\.0\), got 6\.0"):
        LocalGraph().add("sim", TrafficSim, {"lidar": True, "lidar_range_min_m": 6.0, "lidar_range_max_m": 5.0})


def test_the_lidar_chain_launch_file_gives_the_sim_and_the_detector_one_mount_offset() -> None:
    graph = load_graph(REPO / "docs" / "launch" / "lidar_chain.yaml")
    sim, detector = graph.nodes["sim"].params, graph.nodes["detector"].params
    assert sim.lidar  # type: ignore[attr-defined]
    assert sim.lidar_offset == detector.lidar_offset == (1.0, 0.0, 0.0)  # type: ignore[attr-defined]

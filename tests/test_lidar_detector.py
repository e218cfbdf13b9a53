"""nodes.lidar_detector: hand-made scans of known objects, ray-cast from known poses, in a LocalGraph."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from nodes.lidar_detector import LidarDetector
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Detections, LaserScan, Odometry, PointCloud, Tracks

T0 = 1_000_000_000_000
MS = 1_000_000
Pose = tuple[float, float, float]
NO_OFFSET = {"lidar_offset": [0.0, 0.0, 0.0]}


def box(cx: float, cy: float, length: float, width: float, heading: float) -> np.ndarray:
    """The four sides [4, 2, 2] of a rectangle."""
    c, s = math.cos(heading), math.sin(heading)
    corners = [(cx + c * dx - s * dy, cy + s * dx + c * dy)
               for dx, dy in ((length / 2, width / 2), (-length / 2, width / 2),
                              (-length / 2, -width / 2), (length / 2, -width / 2))]
    return np.array([[corners[i], corners[(i + 1) % 4]] for i in range(4)])


def post(cx: float, cy: float, radius: float, sides: int = 16) -> np.ndarray:
    """A round post as a polygon [sides, 2, 2]."""
    a = 2 * math.pi / sides * np.arange(sides + 1)
    ring = np.column_stack([cx + radius * np.cos(a), cy + radius * np.sin(a)])
    return np.stack([ring[:-1], ring[1:]], axis=1)


def room(half_x: float, half_y: float) -> np.ndarray:
    """Four walls around the origin, with a doorway-sized notch so that scan matching has corners."""
    return np.array([[(-half_x, -half_y), (half_x, -half_y)], [(half_x, -half_y), (half_x, half_y)],
                     [(half_x, half_y), (0.5, half_y)], [(0.5, half_y), (0.5, half_y - 0.6)],
                     [(0.5, half_y - 0.6), (-0.5, half_y - 0.6)], [(-0.5, half_y - 0.6), (-0.5, half_y)],
                     [(-0.5, half_y), (-half_x, half_y)], [(-half_x, half_y), (-half_x, -half_y)]])


def cast(lidar: Pose, sides: np.ndarray, beams: int = 360) -> np.ndarray:
    """Ranges [beams] seen by a lidar at `lidar` (x, y, yaw) over a full turn from -pi: the nearest
    side each beam hits, inf where none."""
    a = -math.pi + 2 * math.pi / beams * np.arange(beams) + lidar[2]
    d = np.stack([np.cos(a), np.sin(a)], axis=1)[:, None, :]                # [B, 1, 2]
    p, e = sides[None, :, 0, :], (sides[:, 1, :] - sides[:, 0, :])[None]  # [1, S, 2]
    w = p - np.array(lidar[:2])
    den = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[..., 0] * e[..., 1] - w[..., 1] * e[..., 0]) / den
        u = (w[..., 0] * d[..., 1] - w[..., 1] * d[..., 0]) / den
        hit = (den != 0) & (t > 0) & (u >= 0) & (u <= 1)
    return np.where(hit, t, np.inf).min(axis=1).astype(np.float32)  # type: ignore[no-any-return]


def scan(stamp_ns: int, ranges: np.ndarray, **fields: float) -> LaserScan:
    beams = len(ranges)
    values = {"angle_min": -math.pi, "angle_increment": 2 * math.pi / max(beams, 1), "time_increment": 0.0,
              "range_min": 0.15, "range_max": 8.0, **fields}
    return LaserScan(stamp_ns=stamp_ns, frame_id="laser", ranges=ranges, **values)  # type: ignore[arg-type]


def odometry(stamp_ns: int, pose: Pose) -> Odometry:
    return Odometry(stamp_ns=stamp_ns, frame_id="map", position=np.array([pose[0], pose[1], 0.0]),
                    orientation=np.array([0.0, 0.0, math.sin(pose[2] / 2), math.cos(pose[2] / 2)]))


def compose(carrier: Pose, offset: Sequence[float]) -> Pose:
    c, s = math.cos(carrier[2]), math.sin(carrier[2])
    return (carrier[0] + c * offset[0] - s * offset[1], carrier[1] + s * offset[0] + c * offset[1],
            carrier[2] + offset[2])


def graph(**params: object) -> tuple[LocalGraph, LidarDetector]:
    g = LocalGraph(start_ns=T0)
    node = g.add("det", LidarDetector, params, {"scan": "scan", "ego": "ego", "points": "points", "tracks": "tracks"})
    g.start()
    return g, node  # type: ignore[return-value]


def drive(g: LocalGraph, seconds: float, scene: Callable[[float], np.ndarray], carrier: Callable[[float], Pose],
          offset: Sequence[float] = (0.0, 0.0, 0.0), beams: int = 360, reported: Callable[[float], Pose] | None = None,
          start_s: float = 0.0) -> None:
    """Poses every 10 ms and a scan every 80 ms (stamped 5 ms after a pose) rendered from the true
    lidar pose; `reported` is what the pose topic says (default: the truth)."""
    say = reported or carrier
    for k in range(int(seconds * 100)):
        t = start_s + k * 0.01
        g.advance_to(T0 + int(t * 1e9))
        g.inject("ego", odometry(T0 + int(t * 1e9), say(t)))
        if k % 8 == 0:
            ts = t + 0.005
            g.inject("scan", scan(T0 + int(ts * 1e9), cast(compose(carrier(ts), offset), scene(ts), beams)))
        g.spin()


def detections(g: LocalGraph) -> list[Detections]:
    return g.published.get("det/detections", [])  # type: ignore[return-value]


def still(pose: Pose) -> Callable[[float], Pose]:
    return lambda t: pose


def test_a_rectangle_seen_from_a_corner_gives_its_centre_heading_and_size() -> None:
    g, _ = graph(**NO_OFFSET)
    car = box(1.4, 0.6, 0.5, 0.26, 1.2)   # its corner towards the lidar: two sides seen
    drive(g, 0.3, lambda t: car, still((0.0, 0.0, 0.0)), beams=1440)
    d = detections(g)[-1]
    assert len(d.xy) == 1 and d.kind[0] == AgentKind.VEHICLE and d.ids[0] == -1
    assert np.hypot(*(d.xy[0] - [1.4, 0.6])) < 0.02
    assert abs(math.remainder(float(d.heading[0]) - 1.2, math.pi)) < math.radians(3)
    assert abs(d.length[0] - 0.5) < 0.02 and abs(d.width[0] - 0.26) < 0.02
    assert d.observed[0] == Detections.OBSERVED_LENGTH | Detections.OBSERVED_WIDTH | Detections.OBSERVED_HEADING
    assert d.frame_id == "map"


def test_a_car_seen_end_on_is_placed_half_its_prior_length_behind_the_face() -> None:
    g, _ = graph(**NO_OFFSET, vehicle_size=[0.6, 0.2])
    drive(g, 0.3, lambda t: box(1.5, 0.0, 0.6, 0.2, 0.0), still((0.0, 0.0, 0.0)))
    d = detections(g)[-1]
    assert d.observed[0] == Detections.OBSERVED_WIDTH | Detections.OBSERVED_HEADING
    assert np.hypot(*(d.xy[0] - [1.5, 0.0])) < 0.03
    assert abs(d.length[0] - 0.6) < 1e-6 and abs(math.remainder(float(d.heading[0]), math.pi)) < math.radians(3)


def test_a_length_seen_from_a_corner_places_the_centre_when_only_the_end_is_seen_later() -> None:
    g, _ = graph(**NO_OFFSET)  # prior length 0.43: the car is 0.6 long
    bearing = math.atan2(0.6, 1.4)
    # it shows the lidar a corner, then turns its back to it: first an L, then the rear face alone
    drive(g, 0.4, lambda t: box(1.4, 0.6, 0.6, 0.22, bearing + 1.0), still((0.0, 0.0, 0.0)), beams=720)
    assert detections(g)[-1].observed[0] == 7
    drive(g, 0.3, lambda t: box(1.4, 0.6, 0.6, 0.22, bearing), still((0.0, 0.0, 0.0)), beams=720, start_s=0.4)
    d = detections(g)[-1]
    assert d.observed[0] == Detections.OBSERVED_WIDTH | Detections.OBSERVED_HEADING
    assert np.hypot(*(d.xy[0] - [1.4, 0.6])) < 0.04   # with the prior 0.43 it would be 0.09 off


def test_the_scan_is_placed_with_the_pose_interpolated_at_its_stamp_and_the_mounting_offset() -> None:
    offset = (0.2, -0.1, 0.3)
    g, _ = graph(lidar_offset=list(offset))
    car = box(1.0, 1.6, 0.43, 0.19, 1.0)

    def carrier(t: float) -> Pose:
        return (-0.5 + 0.8 * t, 0.2 * t, 0.1 + 0.5 * t)

    drive(g, 0.8, lambda t: car, carrier, offset)
    got = detections(g)
    assert len(got) == 10
    for d in got:
        assert len(d.xy) == 1 and np.hypot(*(d.xy[0] - [1.0, 1.6])) < 0.03


def test_a_static_object_is_background_after_warm_up_and_a_wall_never_is_an_object() -> None:
    g, node = graph(**NO_OFFSET, static_after_s=1.0)
    scene = np.concatenate([box(1.2, 0.0, 0.43, 0.19, 0.4), [[(-2.0, 1.5), (2.0, 1.5)]]])
    drive(g, 2.0, lambda t: scene, still((0.0, 0.0, 0.0)))
    counts = [len(d.xy) for d in detections(g)]
    assert counts[:10] == [1] * 10          # the box, never the 4 m wall
    assert counts[-8:] == [0] * 8           # hit for more than static_after_s: background
    assert node.finder.static_clusters >= 8


def test_a_car_that_moves_through_a_static_scene_stays_an_object() -> None:
    g, _ = graph(**NO_OFFSET, static_after_s=1.0)
    pole = post(0.0, 1.2, 0.035)   # thinner than face_min
    drive(g, 3.0, lambda t: np.concatenate([pole, box(-1.5 + t, -0.8, 0.43, 0.19, 0.0)]), still((0.0, 0.0, 0.0)))
    for d in detections(g)[1:]:
        t = (d.stamp_ns - T0) / 1e9
        near = np.hypot(*(d.xy - [-1.5 + t, -0.8]).T) < 0.05
        assert near.sum() == 1 and len(d.xy) == 1   # the round post is never a vehicle


def _feed(g: LocalGraph, t: float, xy: tuple[float, float], vxy: tuple[float, float], track: int = 7) -> None:
    """What the tracker would send back: one vehicle track at `xy` moving at `vxy`."""
    g.inject("tracks", Tracks(stamp_ns=T0 + int(t * 1e9), frame_id="map", ids=np.array([track]),
                              xy=np.array([xy], np.float32), vxy=np.array([vxy], np.float32),
                              kind=np.array([AgentKind.VEHICLE], np.uint8)))


@pytest.mark.parametrize("fed_back", [False, True])
def test_a_car_that_stops_stays_an_object_while_its_moving_track_is_fed_back(fed_back: bool) -> None:
    """It drives 1.5 m in 1.5 s, then stands 3 s (three times static_after_s), a post beside it all along."""
    g, _ = graph(**NO_OFFSET, static_after_s=1.0)
    where = lambda t: -1.5 + min(t, 1.5)   # noqa: E731
    pole = post(0.0, 1.2, 0.035)

    def scene(t: float) -> np.ndarray:
        if fed_back and detections(g):
            _feed(g, t, (where(t), -0.8), (1.0 if t < 1.5 else 0.0, 0.0))
        return np.concatenate([pole, box(where(t), -0.8, 0.43, 0.19, 0.0)])

    drive(g, 4.5, scene, still((0.0, 0.0, 0.0)))
    late = [d for d in detections(g) if d.stamp_ns > T0 + 3.5e9]
    assert late
    seen = [bool(np.any(np.hypot(*(d.xy - [0.0, -0.8]).T) < 0.05)) for d in late]
    assert all(seen) if fed_back else not any(seen)   # without the tracks it joins the background
    assert all(len(d.xy) <= 1 for d in late)          # the post beside it is never held


def test_a_parked_box_whose_track_reports_a_speed_but_never_moves_is_not_held() -> None:
    g, node = graph(**NO_OFFSET, static_after_s=1.0)

    def scene(t: float) -> np.ndarray:
        if detections(g):
            _feed(g, t, (1.2, 0.0), (0.8, 0.0))   # a noisy velocity on a box that stands still
        return box(1.2, 0.0, 0.43, 0.19, 0.4)

    drive(g, 3.0, scene, still((0.0, 0.0, 0.0)))
    assert [len(d.xy) for d in detections(g)][-8:] == [0] * 8   # background, as without feedback
    assert node.finder.movers.seen and len(node.finder.movers.pose) == 0


def test_fed_back_tracks_in_another_frame_too_many_or_gone_are_not_held() -> None:
    g, node = graph(**NO_OFFSET, max_tracks=3)
    drive(g, 0.1, lambda t: box(1.2, 0.0, 0.43, 0.19, 0.4), still((0.0, 0.0, 0.0)))
    g.inject("tracks", Tracks(stamp_ns=T0, frame_id="odom", ids=np.array([1]), xy=np.zeros((1, 2), np.float32),
                              vxy=np.zeros((1, 2), np.float32), kind=np.array([AgentKind.VEHICLE], np.uint8)))
    g.inject("tracks", Tracks(stamp_ns=T0, frame_id="map", ids=np.arange(4), xy=np.zeros((4, 2), np.float32),
                              vxy=np.zeros((4, 2), np.float32), kind=np.full(4, AgentKind.VEHICLE, np.uint8)))
    nan = np.float32(np.nan)
    g.inject("tracks", Tracks(stamp_ns=T0, frame_id="map", ids=np.array([5, 6]),
                              xy=np.array([[nan, 0.0], [0.0, 0.0]], np.float32),
                              vxy=np.array([[1.0, 0.0], [nan, np.inf]], np.float32),
                              kind=np.full(2, AgentKind.VEHICLE, np.uint8)))
    g.spin()
    assert node.counts["drops.tracks_frame"] == 1 and node.counts["drops.tracks_too_many"] == 1
    assert set(node.finder.movers.seen) == {6}        # the row with a NaN position is skipped
    _feed(g, 0.2, (3.0, 0.0), (1.0, 0.0), track=8)
    g.spin()
    assert set(node.finder.movers.seen) == {8}        # ids not in the latest message are forgotten


def test_a_round_object_below_box_min_extent_is_a_point_and_a_car_still_a_box() -> None:
    g, _ = graph(**NO_OFFSET, box_min_extent=0.6, max_extent=1.0)
    drive(g, 0.3, lambda t: np.concatenate([post(1.5, 0.8, 0.2), box(1.5, -0.8, 0.9, 0.4, 2.0)]),
          still((0.0, 0.0, 0.0)))
    d = detections(g)[-1]
    order = np.argsort(d.xy[:, 1])
    assert d.kind[order].tolist() == [AgentKind.VEHICLE, AgentKind.UNKNOWN]
    assert d.observed[order].tolist() == [7, 0]
    assert np.hypot(*(d.xy[order[1]] - [1.5, 0.8])) < 0.2   # the centroid of the near half of a disc


def test_scans_are_placed_by_scan_matching_while_the_pose_topic_repeats_itself() -> None:
    g, node = graph(**NO_OFFSET)
    walls, car = room(3.0, 2.0), box(1.5, -0.8, 0.43, 0.19, 0.2)

    def carrier(t: float) -> Pose:
        return (-1.0 + 0.5 * t, 0.3 * math.sin(t), 0.2 * t)

    frozen = carrier(1.0)
    drive(g, 2.0, lambda t: np.concatenate([walls, car]), carrier,
          reported=lambda t: carrier(t) if t < 1.0 else frozen)
    assert node.counts["ego_repeats"] > 50 and node.counts["scans_matched"] >= 10
    late = [d for d in detections(g) if d.stamp_ns > T0 + 1.2e9]
    assert late and all(np.hypot(*(d.xy - [1.5, -0.8]).T).min() < 0.05 for d in late)


def test_a_3d_cloud_loses_its_ground_and_gives_a_box() -> None:
    g, _ = graph(**NO_OFFSET)
    rng = np.random.default_rng(3)
    ground = np.column_stack([rng.uniform(-3, 3, (2000, 2)), np.full(2000, -0.2)])
    sides = box(1.5, 0.5, 0.5, 0.25, 0.3)
    u = rng.uniform(0, 1, 400)
    side = rng.integers(0, 2, 400)  # the two sides that face the lidar at the origin
    xy = sides[side + 1, 0] + u[:, None] * (sides[side + 1, 1] - sides[side + 1, 0])
    car = np.column_stack([xy, rng.uniform(-0.15, 0.2, 400)])
    cloud = np.concatenate([ground, car]).astype(np.float32)
    for k in range(3):
        g.advance_to(T0 + k * 100 * MS)
        g.inject("ego", odometry(T0 + k * 100 * MS, (0.0, 0.0, 0.0)))
        g.inject("points", PointCloud(stamp_ns=T0 + k * 100 * MS + 1, frame_id="lidar", fields="x,y,z", points=cloud))
        g.spin()
    g.inject("ego", odometry(T0 + 300 * MS, (0.0, 0.0, 0.0)))
    g.spin()
    d = detections(g)[-1]
    assert len(d.xy) == 1 and np.hypot(*(d.xy[0] - [1.5, 0.5])) < 0.03
    assert abs(math.remainder(float(d.heading[0]) - 0.3, math.pi)) < math.radians(3)


def _one_scan(g: LocalGraph, msg: LaserScan) -> None:
    g.inject("ego", odometry(msg.stamp_ns - 5 * MS, (0.0, 0.0, 0.0)))
    g.inject("scan", msg)
    g.inject("ego", odometry(msg.stamp_ns + 5 * MS, (0.0, 0.0, 0.0)))
    g.spin()


@pytest.mark.parametrize(("ranges", "fields", "drop"), [
    (np.zeros(0, np.float32), {}, "drops.bad_scan"),
    (np.full(360, np.nan, np.float32), {}, "drops.no_returns"),
    (np.full(360, np.inf, np.float32), {}, "drops.no_returns"),
    (np.ones(360, np.float32), {"angle_increment": 0.0}, "drops.bad_scan"),
    (np.ones(360, np.float32), {"angle_min": math.nan}, "drops.bad_scan"),
    (np.ones(360, np.float32), {"time_increment": -1.0}, "drops.bad_scan"),
    (np.ones(360, np.float32), {"range_max": math.nan}, "drops.no_returns"),
    (np.full(360, np.inf, np.float32), {"range_max": math.inf}, "drops.no_returns"),
])
def test_a_scan_without_usable_returns_or_geometry_is_counted_and_publishes_nothing(
        ranges: np.ndarray, fields: dict[str, float], drop: str) -> None:
    g, node = graph()
    _one_scan(g, scan(T0 + 100 * MS, ranges, **fields))
    assert node.counts[drop] == 1 and detections(g) == []


def test_a_scan_stamped_before_the_last_is_dropped_and_one_far_back_restarts() -> None:
    g, node = graph()
    ranges = cast((0.0, 0.0, 0.0), box(1.0, 0.0, 0.43, 0.19, 0.0))
    _one_scan(g, scan(T0 + 500 * MS, ranges))
    _one_scan(g, scan(T0 + 450 * MS, ranges))           # 50 ms back: out of order
    assert node.counts["drops.out_of_order"] == 1 and len(detections(g)) == 1
    g2, node2 = graph()
    _one_scan(g2, scan(T0 + 5000 * MS, ranges))
    _one_scan(g2, scan(T0 + 1000 * MS, ranges))         # 4 s back: a replay that looped
    assert node2.counts["restarts"] == 1 and [d.stamp_ns for d in detections(g2)] == [T0 + 5000 * MS, T0 + 1000 * MS]


def test_a_scan_without_an_ego_pose_around_it_is_dropped_never_raised() -> None:
    g, node = graph(pose_wait_s=0.2)
    ranges = cast((0.0, 0.0, 0.0), box(1.0, 0.0, 0.43, 0.19, 0.0))
    g.inject("scan", scan(T0 + 10 * MS, ranges))          # no pose at all: waits, then times out
    g.spin()
    g.advance_to(T0 + 1100 * MS)
    assert node.counts["drops.no_pose"] == 1 and node.diagnostics["pending"] == 0
    g.inject("ego", odometry(T0 + 1200 * MS, (0.0, 0.0, 0.0)))
    g.inject("scan", scan(T0 + 1150 * MS, ranges))        # before the first pose: nothing brackets it
    g.inject("ego", odometry(T0 + 1600 * MS, (0.01, 0.0, 0.0)))
    g.inject("scan", scan(T0 + 1300 * MS, ranges))        # between poses 0.4 s apart: a gap
    g.spin()
    g.inject("ego", odometry(T0 + 1700 * MS, (math.nan, 0.0, 0.0)))
    g.spin()
    assert node.counts["drops.no_pose"] == 3 and node.counts["drops.ego_not_finite"] == 1
    assert detections(g) == []


def test_a_cloud_without_x_y_z_columns_is_counted() -> None:
    g, node = graph()
    g.inject("points", PointCloud(stamp_ns=T0, fields="x,y", points=np.zeros((5, 2), np.float32)))
    g.inject("points", PointCloud(stamp_ns=T0 + 1, fields="x,y,z", points=np.zeros((5, 4), np.float32)))
    g.spin()
    assert node.counts["drops.bad_cloud"] == 2


def test_params_refuse_a_bad_offset_or_size() -> None:
    from pipeline.errors import ConfigError
    with pytest.raises(ConfigError, match="lidar_offset"):
        graph(lidar_offset=[0.1, 0.0])
    with pytest.raises(ConfigError, match="vehicle_size"):
        graph(vehicle_size=[0.4, -0.2])
    with pytest.raises(ConfigError, match="at most 2000"):
        graph(grid_size=500.0, static_cell=0.05)

"""nodes.poses: pose topics in, one fixed-rate Tracks stream out, run in a LocalGraph on a manual clock."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nodes.poses import INPUTS, PosesToTracks
from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Odometry, Tracks
from tests.conftest import REPO, SHARED

T0 = 1_000_000_000_000  # ns; any start works, the node only compares stamps
MS = 1_000_000
LAUNCH = REPO / "docs" / "launch" / "rc_cars.yaml"
OVERTAKES = SHARED / "recordings" / "rc_cars_overtakes_mocap_lidar_ros1" / "overtakes.bag"


def _graph(**params: object) -> tuple[LocalGraph, PosesToTracks]:
    g = LocalGraph(start_ns=T0)
    node = g.add("poses", PosesToTracks, params, {"pose0": "car", "pose3": "walker"})
    g.start()
    return g, node  # type: ignore[return-value]


def _pose(g: LocalGraph, topic: str, t_ns: int, x: float, y: float, frame: str = "map") -> None:
    """Deliver one pose stamped (and arriving at) t_ns."""
    g.advance_to(t_ns)
    g.inject(topic, Odometry(stamp_ns=t_ns, frame_id=frame, position=np.array([x, y, 0.0])))
    g.spin()


def _tracks(g: LocalGraph) -> list[Tracks]:
    return g.published.get("poses/tracks", [])  # type: ignore[return-value]


def _diagnostics(g: LocalGraph, node: PosesToTracks, t_ns: int) -> dict[str, float]:
    g.advance_to(t_ns)  # the 1 s diagnostics timer copies the counters
    return node.diagnostics


def test_constant_velocity_sources_give_ids_kinds_positions_and_velocities_at_the_fixed_rate() -> None:
    g, _ = _graph(rate_hz=10, id_base=100, kinds={"pose3": "pedestrian"})
    for i in range(200):  # 2 s of poses at 100 Hz; the walker's stamps are 3 ms after the car's
        t = i * 10 * MS
        _pose(g, "car", T0 + t, 1.0 + 5.0 * t / 1e9, 2.0)
        _pose(g, "walker", T0 + t + 3 * MS, -1.0, 0.5 - 1.5 * (t + 3 * MS) / 1e9)
    out = _tracks(g)
    stamps = np.array([m.stamp_ns for m in out])
    assert len(out) == 19  # one per 0.1 s tick of the node clock
    assert np.allclose(np.diff(stamps), 100 * MS, atol=10 * MS)
    for m in out:
        assert m.ids.tolist() == [100, 103]
        assert m.kind.tolist() == [AgentKind.VEHICLE, AgentKind.PEDESTRIAN]
        s = (m.stamp_ns - T0) / 1e9  # both rows hold their positions at the message stamp
        assert np.allclose(m.xy, [[1.0 + 5.0 * s, 2.0], [-1.0, 0.5 - 1.5 * s]], atol=1e-4)
        assert np.allclose(m.vxy, [[5.0, 0.0], [0.0, -1.5]], atol=1e-3)


def test_a_turning_source_gets_its_speed_and_a_heading_half_a_window_behind() -> None:
    r, v = 5.0, 2.0
    w = v / r
    g, _ = _graph(window_s=0.1)
    for i in range(300):
        t = i * 10 * MS
        a = w * t / 1e9
        _pose(g, "car", T0 + t, r * math.cos(a), r * math.sin(a))
    for m in _tracks(g)[1:]:
        a = w * (m.stamp_ns - T0) / 1e9
        assert np.allclose(m.xy[0], [r * math.cos(a), r * math.sin(a)], atol=1e-4)
        assert abs(np.hypot(*m.vxy[0]) - v) < 0.01
        a_mid = a - w * 0.05  # the least-squares slope is the velocity at the middle of the window
        assert np.allclose(m.vxy[0], [-v * math.sin(a_mid), v * math.cos(a_mid)], atol=0.01)


def test_duplicate_out_of_order_and_jumping_stamps_are_dropped_and_counted() -> None:
    g, node = _graph(max_speed_mps=10)
    for i in range(10):
        _pose(g, "car", T0 + i * 10 * MS, 0.01 * i, 0.0)  # 1 m/s
    last = T0 + 90 * MS
    _pose(g, "car", last, 5.0, 5.0)                     # duplicate stamp
    _pose(g, "car", last - 5 * MS, 5.0, 5.0)            # older than the last accepted
    _pose(g, "car", last + 10 * MS, 3.0, 0.0)           # 2.9 m in 10 ms: a jump
    _pose(g, "car", last + 20 * MS, 0.11, 0.0)          # back on track: accepted
    d = _diagnostics(g, node, T0 + 1000 * MS)
    assert (d["drops.duplicate"], d["drops.out_of_order"], d["drops.jump"]) == (1, 1, 1)
    latest = _tracks(g)[-1]
    assert latest.stamp_ns == last + 20 * MS
    assert np.allclose(latest.xy, [[0.11, 0.0]], atol=1e-6)
    assert np.allclose(latest.vxy, [[1.0, 0.0]], atol=1e-3)


def test_a_step_back_beyond_the_timeout_restarts_the_source_instead_of_dropping_it() -> None:
    g, node = _graph(timeout_s=0.5)
    for i in range(20):
        _pose(g, "car", T0 + 2000 * MS + i * 10 * MS, 0.01 * i, 0.0)
    for i in range(20):  # the replay looped: stamps 2 s earlier
        _pose(g, "car", T0 + i * 10 * MS, 0.0, 0.01 * i)
    g.advance_to(T0 + 2500 * MS)
    assert node.counts["restarts"] == 1 and node.counts["drops.out_of_order"] == 0
    assert _tracks(g)[-1].stamp_ns == T0 + 190 * MS
    assert np.allclose(_tracks(g)[-1].vxy, [[0.0, 1.0]], atol=1e-3)


def test_a_source_that_stops_reporting_is_dropped_after_the_timeout() -> None:
    g, node = _graph(timeout_s=0.3)
    for i in range(100):
        t = T0 + i * 10 * MS
        _pose(g, "car", t, 0.01 * i, 0.0)
        if i < 50:  # the walker stops at 0.49 s
            _pose(g, "walker", t, 0.0, 0.0)
    # a tick fires before the pose stamped at its time: the tick at 0.7 s publishes the stamp 0.69 s
    by_stamp = {m.stamp_ns - T0: m.ids.tolist() for m in _tracks(g)}
    assert by_stamp[690 * MS] == [0, 3]  # 0.21 s after the walker's last pose: kept
    assert by_stamp[790 * MS] == [0]     # 0.31 s: dropped
    assert node.counts["timeouts"] == 1
    g.advance_to(T0 + 1000 * MS)  # the tick that publishes the last pose
    n = len(_tracks(g))
    g.advance_to(T0 + 3000 * MS)  # everything silent: nothing more is published
    assert len(_tracks(g)) == n and node.counts["timeouts"] == 2


def test_poses_in_another_frame_or_not_finite_are_dropped_and_counted() -> None:
    g, node = _graph()
    _pose(g, "car", T0 + 10 * MS, 0.0, 0.0)
    _pose(g, "walker", T0 + 10 * MS, 1.0, 1.0, frame="odom")
    _pose(g, "walker", T0 + 20 * MS, math.nan, 1.0)
    g.advance_to(T0 + 200 * MS)
    assert node.counts["drops.frame"] == 1 and node.counts["drops.not_finite"] == 1
    assert [m.ids.tolist() for m in _tracks(g)] == [[0]]
    assert _tracks(g)[0].frame_id == "map"


@pytest.mark.parametrize(("params", "message"), [
    ("{rate_hz: 0}", "nodes.poses.params.rate_hz: expected float > 0.0, got 0"),
    ("{timeout_s: -1}", "nodes.poses.params.timeout_s: expected float > 0.0, got -1"),
    ("{id_base: -2}", "nodes.poses.params.id_base: expected int >= 0, got -2"),
    ("{kinds: {pose9: vehicle}}", "nodes.poses.params.kinds: unknown key 'pose9'"),
    ("{kinds: {pose0: car}}", "nodes.poses.params.kinds.pose0: invalid enum value 'car'"),
    ("{rate: 10}", "nodes.poses.params: unknown key 'rate'"),
])
def test_bad_params_are_refused_with_the_file_and_key(tmp_path: Path, params: str, message: str) -> None:
    f = tmp_path / "launch.yaml"
    f.write_text(f"nodes:\n  poses: {{run: 'nodes.poses:PosesToTracks', params: {params}}}\n")
    with pytest.raises(ConfigError, match=f"^{f}: " + message.replace("[", r"\[").replace(".", r"\.")):
        load_graph(f)


def test_every_input_has_a_kind_param() -> None:
    assert tuple(PosesToTracks.inputs) == INPUTS
    assert PosesToTracks.Params().kinds.__struct_fields__ == INPUTS


def test_the_rc_cars_launch_file_wires_both_pose_topics_into_the_node() -> None:
    graph = load_graph(LAUNCH)
    assert {i: s.topic for i, s in graph.nodes["poses"].inputs.items()} == {"pose0": "/ego_pose", "pose1": "/red_pose"}
    assert {t: graph.external.get(t) for t in ("/ego_pose", "/red_pose")} == {"/ego_pose": Odometry,
                                                                           "/red_pose": Odometry}


def test_lockstep_replay_of_overtakes_bag_predicts_both_cars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not OVERTAKES.exists():
        pytest.skip(f"recording {OVERTAKES} not present (../shared/recordings beside the checkout)")
    pytest.importorskip("rosbags", reason="ROS bags need the [ros] extra")
    from pipeline.recordings.reader import open_recording
    from pipeline.recordings.replay import main
    from pipeline.wire.codec import decode

    out = tmp_path / "out.mcap"
    rc = main([str(OVERTAKES), "--lockstep", "--graph", str(LAUNCH), "--topics", "/ego_pose", "/red_pose",
               "-o", str(out), "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "vehicle" in table.split("final accuracy (meters)", 1)[1]
    rec = open_recording(out)
    try:
        ids = {i for item in rec.items(["predictor/predictions"]) for i in decode(item.frames)[0].ids.tolist()}
    finally:
        rec.close()
    assert ids == {0, 1}  # /ego_pose is agent 0, /red_pose agent 1

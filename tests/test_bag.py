"""pipeline/cli/bag.py + pipeline/recordings/rosbag_reader.py on the real recordings in ../shared/recordings: `bag info`
figures match each README, ROS types convert into drivecast schemas, a bag without type definitions
gives a clear error (and reads once the types are supplied), `bag convert` writes a playable drive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.bag import main as bag_main
from pipeline.recordings.base import RecordingError
from pipeline.recordings.reader import open_recording
from pipeline.recordings.replay import main as play_main
from pipeline.wire.codec import decode
from pipeline.wire.messages import GnssFix, Imu, LaserScan, Odometry

RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"
HUSKY = "husky_outdoor_gps_imu_odom_ros1/test1.bag"
RC = "rc_cars_overtakes_mocap_lidar_ros1/overtakes.bag"
NAV2 = "turtlebot_nav2_sim_ros2_mcap/nav2_turtlebot.mcap"
VLP = "vlp16_packets_ros2_sqlite3"

# figures from each recording's README
EXPECTED = {
    HUSKY: ("ros1-bag", 16806, 395.307, 1432235498025043042,
            {"/imu/data": 11865, "/husky_velocity_controller/odom": 3952, "/fix": 989}),
    RC: ("ros1-bag", 17563, 26.401, 1575810072093116401,
         {"/ego_pose": 3161, "/red_pose": 3161, "/tf": 6322, "/scan": 339, "/imu/data": 2634,
          "/wheel_speeds": 973, "/rc_inputs": 973}),
    NAV2: ("ros2-mcap", 8197, 97.355, 1778234353382747000,
           {"/tf": 5422, "/odom": 2639, "/amcl_pose": 135, "/tf_static": 1}),
    VLP: ("ros2-sqlite3", 4, 0.300, 1673400471837873222, {"/velodyne_packets": 4}),
}

VELODYNE_TYPES = {
    "velodyne_msgs/msg/VelodyneScan.msg": "std_msgs/Header header\nVelodynePacket[] packets\n",
    "velodyne_msgs/msg/VelodynePacket.msg": "builtin_interfaces/Time stamp\nuint8[1206] data\n",
}


def need(name: str) -> Path:
    path = RECORDINGS / name
    if not path.exists():
        pytest.skip(f"recording {path} not present (../shared/recordings beside the checkout)")
    return path


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bag_info_matches_the_readme(name: str, capsys) -> None:
    path = need(name)
    fmt, count, duration_s, start_ns, topics = EXPECTED[name]
    assert bag_main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and info["messages"] == count and info["start_ns"] == start_ns
    assert info["duration_s"] == pytest.approx(duration_s, abs=0.001)
    assert {t["name"]: t["count"] for t in info["topics"]} == topics
    assert bag_main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"messages:  {count}" in text and f"{duration_s:.3f} s" in text


def test_bag_info_rates_and_unconverted_types() -> None:
    with open_recording(need(RC)) as rec:
        info = rec.info()
    by = {t.name: t for t in info.topics}
    assert by["/ego_pose"].rate_hz(info.duration_ns) == pytest.approx(120, rel=0.01)
    assert by["/scan"].schema == "drivecast/LaserScan"
    assert not by["/wheel_speeds"].converted and by["/wheel_speeds"].type == "barc/msg/Encoder"


def test_ros_messages_convert_into_drivecast_schemas() -> None:
    first: dict[str, object] = {}
    with open_recording(need(HUSKY)) as rec:
        for it in rec.items():
            first.setdefault(it.topic, decode(it.frames)[0])
            if len(first) == 3:
                break
    fix, odom, imu = first["/fix"], first["/husky_velocity_controller/odom"], first["/imu/data"]
    assert isinstance(fix, GnssFix) and 42.375 < fix.latitude < 42.378 and fix.status == 1
    assert isinstance(odom, Odometry) and odom.frame_id == "odom" and odom.child_frame_id == "base_link"
    assert isinstance(imu, Imu) and imu.frame_id == "imu_link" and abs(np.linalg.norm(imu.orientation) - 1) < 1e-3
    with open_recording(need(RC)) as rec:
        seen = {}
        for it in rec.items(["/scan", "/tf", "/red_pose"]):
            seen.setdefault(it.topic, decode(it.frames)[0])
            if len(seen) == 3:
                break
    scan, tf, red = seen["/scan"], seen["/tf"], seen["/red_pose"]
    assert isinstance(scan, LaserScan) and scan.frame_id == "laser" and len(scan.ranges) == 360
    assert scan.angle_increment == pytest.approx(2 * np.pi / 360, rel=0.01) and 0 < scan.range_min < scan.range_max
    hits = (scan.ranges >= scan.range_min) & (scan.ranges <= scan.range_max)
    assert hits.sum() > 10 and len(scan.intensities) in (0, 360)
    assert isinstance(tf, Odometry) and tf.frame_id == "map" and tf.child_frame_id in ("ego_pose", "red_pose")
    assert isinstance(red, Odometry) and red.child_frame_id == "red_pose"


def test_ros2_mcap_keeps_sim_time_stamps_and_wall_clock_log_times() -> None:
    with open_recording(need(NAV2)) as rec:
        it = next(iter(rec.items(["/odom"])))
    msg = decode(it.frames)[0]
    assert msg.stamp_ns < 10_000 * 10**9 < it.log_ns     # header stamp is sim time, log time is wall time


def test_bag_without_type_definitions_names_the_missing_types(tmp_path: Path, capsys) -> None:
    path = need(VLP)
    with open_recording(path) as rec:
        assert "no type definitions" in rec.info().note
        with pytest.raises(RecordingError, match=r"no type definitions and these types are unknown: "
                                                 r"velodyne_msgs/msg/VelodyneScan \(topics /velodyne_packets\)"
                                                 r"\. Supply them with --types DIR"):
            list(rec.items())
    assert bag_main(["convert", str(path), "-o", str(tmp_path / "x.mcap")]) == 1
    assert "velodyne_msgs/msg/VelodyneScan" in capsys.readouterr().err
    assert play_main([str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "these types are unknown: velodyne_msgs/msg/VelodyneScan" in err and "--types DIR" in err


def test_supplied_msg_files_make_the_types_known(tmp_path: Path, capsys) -> None:
    path = need(VLP)
    types = tmp_path / "types"
    for rel, text in VELODYNE_TYPES.items():
        (types / rel).parent.mkdir(parents=True, exist_ok=True)
        (types / rel).write_text(text)
    with open_recording(path, types_dir=types) as rec:
        assert rec.missing_types() == []
        assert list(rec.items()) == []          # known now, but VelodyneScan has no drivecast form
        reader = rec._reader                    # and the packets deserialize with the supplied types
        scans = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()]
    assert len(scans) == 4 and all(150 <= len(s.packets) <= 151 for s in scans)
    assert play_main([str(path), "--types", str(types), "--quiet"]) == 1
    assert "nothing to play" in capsys.readouterr().err


def test_bag_convert_writes_a_drive_that_plays_like_the_bag(tmp_path: Path) -> None:
    path = need(HUSKY)
    out = tmp_path / "husky.mcap"
    assert bag_main(["convert", str(path), "-o", str(out), "--topics", "/fix", "--no-foxglove"]) == 0
    with open_recording(out) as conv, open_recording(path) as orig:
        a = [(i.topic, i.log_ns, [bytes(f) for f in i.frames]) for i in conv.items()]
        b = [(i.topic, i.log_ns, [bytes(f) for f in i.frames]) for i in orig.items(["/fix"])]
        assert conv.info().count == 989
    assert a == b


def test_truncated_ros_bag_gives_a_clear_error(tmp_path: Path) -> None:
    data = need(HUSKY).read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[:5000])
    with pytest.raises(RecordingError, match=r"cut.bag: cannot read as a ROS bag"), open_recording(cut) as rec:
        list(rec.items())


def test_bag_info_says_a_tf_message_plays_as_one_message_per_transform_and_counts_them(capsys) -> None:
    """The turtlebot MCAP holds 8,197 messages and `play` sends 10,087: each TFMessage becomes one Odometry per
    transform. `bag info` says so in its note, and `--played` counts what play sends, per topic."""
    path = need(NAV2)
    assert bag_main(["info", str(path)]) == 0
    assert "/tf, /tf_static: a TFMessage plays as one Odometry per transform" in capsys.readouterr().out
    assert bag_main(["info", str(path), "--json", "--played"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["messages"], info["played"]) == (8197, 10087)
    assert {t["name"]: (t["count"], t["played"]) for t in info["topics"]} == {
        "/tf": (5422, 7284), "/tf_static": (1, 29), "/odom": (2639, 2639), "/amcl_pose": (135, 135)}
    assert bag_main(["info", str(path), "--played"]) == 0
    text = capsys.readouterr().out
    assert "messages:  8197  (10087 played)" in text
    assert re.search(r"^  /tf +tf2_msgs/msg/TFMessage +5422 msgs +7284 played", text, re.M)

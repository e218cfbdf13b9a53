"""pipeline/recordings/writer.py + pipeline/recordings/reader.py (mcap_format, mcap_reader): lossless MCAP layout, images and point clouds stored once
as Foxglove RawImage and PointCloud channels, Foxglove mirror channels, crash safety (a recorder killed
with SIGKILL leaves a readable file), recovery, bad files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import make_reader

from pipeline.cli.bag import main as bag_main
from pipeline.recordings.base import RecordingError
from pipeline.recordings.mcap_format import pack_frames, unpack_frames
from pipeline.recordings.reader import open_recording
from pipeline.recordings.writer import Recorder
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Detections, GnssFix, Image, Imu, LaserScan, Odometry, PointCloud, Predictions, Tracks
from tests.conftest import REPO, wait_for

T0 = 1_700_000_000_000_000_000


def _samples() -> list[tuple[str, object]]:
    return [
        ("sim/tracks", Tracks(stamp_ns=T0, frame_id="map", ids=[1, 2], xy=[[0, 1], [2, 3]], vxy=[[1, 0], [0, 0]],
                              kind=[1, 2])),
        ("pred/predictions", Predictions(stamp_ns=T0, model="cv", ids=[1], kind=[1], t_ns=[T0 + 1, T0 + 2],
                                         xy=np.zeros((1, 2, 2)))),
        ("car/odom", Odometry(stamp_ns=T0, frame_id="odom", child_frame_id="base", position=[1, 2, 3])),
        ("car/fix", GnssFix(stamp_ns=T0, latitude=42.37, longitude=-71.14, altitude=3.0, status=1)),
        ("car/imu", Imu(stamp_ns=T0, orientation=[0, 0, 0, 1])),
        ("cam/image", Image(stamp_ns=T0, data=np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))),
        ("lidar/points", PointCloud(stamp_ns=T0, fields="x,y,z,intensity", points=np.ones((5, 4)))),
    ]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_recorder_round_trip_keeps_frames_times_and_every_schema(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "all.mcap"
    written = []
    with Recorder(path, compression=compression) as rec:
        for i, (topic, msg) in enumerate(_samples()):
            frames = encode(msg, publish_ns=T0 + 500 + i)
            rec.write(topic, frames, T0 + 1000 + i)
            written.append((topic, T0 + 1000 + i, T0 + 500 + i, [bytes(f) for f in frames]))
    with open_recording(path) as r:
        got = [(it.topic, it.log_ns, it.publish_ns, [bytes(f) for f in it.frames]) for it in r.items()]
        info = r.info()
    assert got == written
    assert info.format == "drivecast-mcap" and info.count == 7 and not info.truncated
    assert {t.name: t.type for t in info.topics}["sim/tracks"] == "drivecast/Tracks"


def _rosbags_store(schemas: dict[str, Any]) -> Any:
    """A rosbags type store that knows the ros2msg schemas stored in a file (an independent CDR decoder)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    for schema in schemas.values():
        name, *deps = schema.data.decode().split("\n" + "=" * 80 + "\n")
        store.register(get_types_from_msg(name, schema.name))
        for dep in deps:
            head, body = dep.split("\n", 1)
            store.register(get_types_from_msg(body, head.removeprefix("MSG: ").replace("/", "/msg/", 1)))
    return store


def test_recorder_writes_foxglove_channels_with_well_known_schemas(tmp_path: Path) -> None:
    path = tmp_path / "fox.mcap"
    wire = {}
    with Recorder(path) as rec:
        for topic, msg in _samples():
            wire[topic] = encode(msg)
            rec.write(topic, wire[topic], T0)
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None and summary.chunk_indexes[0].compression == "zstd"
        fox = {ch.topic: (ch.message_encoding, summary.schemas[ch.schema_id].name)
               for ch in summary.channels.values() if ch.message_encoding != "drivecast"}
        # the image and the cloud are not mirrored: their own channels are a RawImage and a PointCloud
        assert fox == {"/foxglove/sim/tracks": ("json", "foxglove.SceneUpdate"),
                       "/foxglove/pred/predictions": ("json", "foxglove.SceneUpdate"),
                       "/foxglove/car/odom": ("json", "foxglove.PoseInFrame"),
                       "/foxglove/car/fix": ("json", "foxglove.LocationFix"),
                       "/foxglove/car/imu": ("json", "drivecast.Imu"),
                       "cam/image": ("cdr", "foxglove_msgs/msg/RawImage"),
                       "lidar/points": ("cdr", "foxglove_msgs/msg/PointCloud")}
        metadata = {ch.topic: ch.metadata for ch in summary.channels.values()}
        assert metadata["cam/image"] == {"drivecast_schema": "drivecast/Image", "schema_version": "1"}
        assert metadata["lidar/points"] == {"drivecast_schema": "drivecast/PointCloud", "schema_version": "1"}
        schemas = {ch.topic: summary.schemas[ch.schema_id] for ch in summary.channels.values()}
        bodies = {ch.topic: m.data for _, ch, m in reader.iter_messages(topics=list(fox))}
    scene = json.loads(bodies["/foxglove/sim/tracks"])["entities"][0]
    assert scene["frame_id"] == "map" and len(scene["spheres"]) == 2 and scene["texts"][1]["text"] == "2"
    assert scene["timestamp"] == {"sec": T0 // 10**9, "nsec": T0 % 10**9}
    assert len(json.loads(bodies["/foxglove/pred/predictions"])["entities"][0]["lines"][0]["points"]) == 2
    # the CDR forms decode with an independent implementation (rosbags) from the stored ros2msg schemas
    store = _rosbags_store({t: schemas[t] for t in ("cam/image", "lidar/points")})
    img = store.deserialize_cdr(bodies["cam/image"], "foxglove_msgs/msg/RawImage")
    assert (img.width, img.height, img.step, img.encoding, img.frame_id) == (6, 4, 18, "rgb8", "world")
    assert img.timestamp.sec == T0 // 10**9 and bytes(img.data) == bytes(range(72))
    assert bytes(img.drivecast_header) == bytes(wire["cam/image"][0])
    pc = store.deserialize_cdr(bodies["lidar/points"], "foxglove_msgs/msg/PointCloud")
    assert pc.point_stride == 16 and [f.name for f in pc.fields] == ["x", "y", "z", "intensity"]
    assert pc.pose.orientation.w == 1.0 and np.frombuffer(bytes(pc.data), "<f4").tolist() == [1.0] * 20
    assert bytes(pc.drivecast_header) == bytes(wire["lidar/points"][0])


def _stored_roundtrip(path: Path, topic: str, frames: list[Any], mirror: bool, fox_type: str, schema: str) -> Any:
    """Record one message of `schema` on `topic`; check that the file holds it once, on the topic's own
    channel of the Foxglove type `fox_type` (ros2msg, with the trailing drivecast_header), and that replay
    slices the wire frames back out byte for byte. Returns the record as rosbags decodes it from the
    schema text stored in the file, for the caller's checks of the Foxglove fields."""
    with Recorder(path, foxglove_mirror=mirror) as rec:
        rec.write(topic, frames, T0 + 9)
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        assert [(ch.topic, ch.message_encoding, ch.metadata) for ch in summary.channels.values()] == [
            (topic, "cdr", {"drivecast_schema": schema, "schema_version": "1"})]
        [(stored_schema, _, record)] = list(reader.iter_messages())
    assert stored_schema is not None and (stored_schema.name, stored_schema.encoding) == (fox_type, "ros2msg")
    assert "# the drivecast wire header" in stored_schema.data.decode()
    assert (record.log_time, record.publish_time) == (T0 + 9, T0 + 7)
    decoded = _rosbags_store({topic: stored_schema}).deserialize_cdr(record.data, fox_type)
    assert bytes(decoded.drivecast_header) == bytes(frames[0])
    with open_recording(path) as r:
        [item] = list(r.items())
        assert [(t.type, t.schema) for t in r.info().topics] == [(schema, schema)]
    assert [bytes(f) for f in item.frames] == [bytes(f) for f in frames]
    assert all(isinstance(f, memoryview) and f.obj is item.frames[0].obj for f in item.frames)  # slices, no copy
    return decoded


@pytest.mark.parametrize(("encoding", "shape", "frame_id"), [
    ("rgb8", (7, 9, 3), "cam"), ("mono8", (5, 7, 1), ""), ("mono16", (3, 5, 2), "camera_left"),
    ("bgra8", (2, 2, 4), "c"), ("rgb8", (0, 4, 3), "")])  # data of 189, 35, 30, 16, 0 bytes: every CDR padding
@pytest.mark.parametrize("mirror", [True, False])
def test_an_image_is_stored_once_as_a_full_resolution_raw_image(
        tmp_path: Path, encoding: str, shape: tuple[int, int, int], frame_id: str, mirror: bool) -> None:
    """The image channel is what Foxglove reads (a RawImage, decoded here by rosbags from the schema text in the
    file) and what replay reads (the wire frames, sliced back out byte for byte), with or without mirrors."""
    path = tmp_path / "cam.mcap"
    data = np.random.default_rng(len(frame_id)).integers(0, 255, shape, dtype=np.uint8)
    frames = encode(Image(stamp_ns=T0 + 5, frame_id=frame_id, encoding=encoding, data=data), publish_ns=T0 + 7)
    img = _stored_roundtrip(path, "cam/image", frames, mirror, "foxglove_msgs/msg/RawImage", "drivecast/Image")
    assert (img.height, img.width, img.step) == (shape[0], shape[1], shape[1] * shape[2])
    assert (img.encoding, img.frame_id) == (encoding, frame_id or "world")
    assert (img.timestamp.sec, img.timestamp.nanosec) == (T0 // 10**9, T0 % 10**9 + 5)
    assert bytes(img.data) == data.tobytes()


@pytest.mark.parametrize(("fields", "shape", "frame_id"), [
    ("x,y,z,intensity", (5, 4), "lidar"), ("x, y, z", (7, 3), ""), ("abc,t", (0, 2), "velodyne_top"),
    ("ring", (3, 1), "abc")])  # frame_ids and field names of several lengths: 0 to 7 bytes of CDR padding
@pytest.mark.parametrize("mirror", [True, False])
def test_a_cloud_is_stored_once_as_a_foxglove_point_cloud(
        tmp_path: Path, fields: str, shape: tuple[int, int], frame_id: str, mirror: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The cloud channel is what Foxglove reads (a PointCloud, decoded here by rosbags from the schema text in
    the file: the wire points as row-major float32, one FLOAT32 field per column) and what replay reads (the
    wire frames, sliced back out byte for byte), with or without mirrors."""
    path = tmp_path / "lidar.mcap"
    points = np.random.default_rng(shape[0]).normal(size=shape).astype(np.float32)
    frames = encode(PointCloud(stamp_ns=T0 + 5, frame_id=frame_id, fields=fields, points=points), publish_ns=T0 + 7)
    pc = _stored_roundtrip(path, "lidar/points", frames, mirror, "foxglove_msgs/msg/PointCloud", "drivecast/PointCloud")
    assert (pc.timestamp.sec, pc.timestamp.nanosec, pc.frame_id) == (T0 // 10**9, T0 % 10**9 + 5, frame_id or "world")
    p, q = pc.pose.position, pc.pose.orientation
    assert (p.x, p.y, p.z, q.x, q.y, q.z, q.w) == (0, 0, 0, 0, 0, 0, 1)
    assert pc.point_stride == 4 * shape[1]
    assert [(f.name, f.offset, f.type) for f in pc.fields] == [
        (name.strip(), 4 * i, 7) for i, name in enumerate(fields.split(","))]  # 7: FLOAT32
    assert bytes(pc.data) == points.tobytes()
    assert np.array_equal(np.frombuffer(bytes(pc.data), "<f4").reshape(-1, pc.point_stride // 4), points)
    assert bag_main(["info", str(path)]) == 0
    assert re.search(r"^  lidar/points  drivecast/PointCloud +1 msgs", capsys.readouterr().out, re.M)


def test_unpack_frames_rejects_corrupt_bodies_with_the_reason() -> None:
    body = pack_frames([b"abc", b"de"])
    assert [bytes(f) for f in unpack_frames(body)] == [b"abc", b"de"]
    with pytest.raises(RecordingError, match="frame count 0, expected 1..64"):
        unpack_frames(b"\0\0\0\0")
    with pytest.raises(RecordingError, match="frame lengths sum to 5, body has 4 bytes"):
        unpack_frames(body[:-1])


WRITER = """
import sys, numpy as np
from pipeline.wire.codec import encode
from pipeline.wire.messages import Tracks
from pipeline.recordings.writer import Recorder
rec = Recorder(sys.argv[1], max_chunk_age_s=0.02, chunk_size=64 * 1024)
i = 0
while True:   # until killed
    m = Tracks(stamp_ns=i, ids=np.arange(10), xy=np.random.rand(10, 2), vxy=np.zeros((10, 2)), kind=np.ones(10))
    rec.write("sim/tracks", encode(m, publish_ns=i), 1_000_000 + i)
    i += 1
    if i % 200 == 0:
        print(i, flush=True)
"""


def test_recording_cut_by_kill_9_is_readable_and_recoverable(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cut.mcap"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        out = proc.stdout

        def progress() -> bool:  # readline only when a line is ready: the deadline holds even if it hangs
            ready, _, _ = select.select([out], [], [], 0.2)
            return bool(ready) and int((out.readline() or b"0").split()[0]) >= 1000
        wait_for(progress, 20, "1000 messages written")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGKILL
    with open_recording(path) as rec:
        info = rec.info()
        assert info.truncated and "linear scan" in info.note
        assert info.count >= 500                       # all but the last chunk (~20 ms) survive
        seqs = [decode(it.frames)[0].stamp_ns for it in rec.items()]
    assert seqs == list(range(len(seqs))) and len(seqs) == info.count
    assert bag_main(["info", str(path)]) == 0
    assert "TRUNCATED" in capsys.readouterr().out
    fixed = tmp_path / "fixed.mcap"
    assert bag_main(["recover", str(path), "-o", str(fixed)]) == 0
    with open_recording(fixed) as rec:
        assert not rec.info().truncated and rec.info().count == info.count
    with open(fixed, "rb") as f:
        assert make_reader(f).get_summary() is not None


def test_a_file_cut_in_the_middle_reads_to_its_last_complete_chunk(tmp_path: Path) -> None:
    path = tmp_path / "whole.mcap"
    with Recorder(path, chunk_size=4096, max_chunk_age_s=0) as rec:
        for i in range(300):
            rec.write("sim/tracks", encode(Tracks(stamp_ns=i, ids=np.arange(20), xy=np.zeros((20, 2)),
                                                  vxy=np.zeros((20, 2)), kind=np.zeros(20))), i)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    with open_recording(cut) as rec:
        info = rec.info()
        n = sum(1 for _ in rec.items())
    assert info.truncated and 0 < info.count == n < 300


def test_a_cut_file_with_images_and_clouds_reads_by_linear_scan_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "whole.mcap"
    rng = np.random.default_rng(3)
    written = []
    with Recorder(path, chunk_size=4096, max_chunk_age_s=0) as rec:
        for i in range(150):
            topic, msg = [
                ("sim/tracks", Tracks(stamp_ns=i, ids=[i], xy=[[0, 0]], vxy=[[0, 0]], kind=[1])),
                ("cam/image", Image(stamp_ns=i, data=rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))),
                ("lidar/points", PointCloud(stamp_ns=i, fields="x,y,z,intensity", points=rng.normal(size=(9, 4)))),
            ][i % 3]
            frames = [bytes(f) for f in encode(msg, publish_ns=i)]
            rec.write(topic, frames, i)
            written.append((topic, frames))
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    with open_recording(cut) as rec:
        info = rec.info()
        got = [(it.topic, [bytes(f) for f in it.frames]) for it in rec.items()]
        clouds = [it.topic for it in rec.items(["lidar/points"])]
    assert info.truncated and 0 < info.count == len(got) < 150
    assert {t.name: t.type for t in info.topics} == {"cam/image": "drivecast/Image", "sim/tracks": "drivecast/Tracks",
                                                     "lidar/points": "drivecast/PointCloud"}
    assert got == written[: len(got)] and clouds == [t for t, _ in got if t == "lidar/points"] != []
    fixed = tmp_path / "fixed.mcap"
    assert bag_main(["recover", str(cut), "-o", str(fixed)]) == 0
    with open_recording(fixed) as rec:
        assert not rec.info().truncated
        assert [(it.topic, [bytes(f) for f in it.frames]) for it in rec.items()] == got
    with open(fixed, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and sorted((ch.topic, ch.message_encoding) for ch in summary.channels.values()) == [
        ("/foxglove/sim/tracks", "json"), ("cam/image", "cdr"), ("lidar/points", "cdr"), ("sim/tracks", "drivecast")]


def test_not_a_recording_gives_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello, not a bag")
    with pytest.raises(RecordingError, match=r"notes.txt: not a recording: expected an MCAP file"):
        open_recording(junk)
    with pytest.raises(RecordingError, match="missing.mcap: no such file or directory"):
        open_recording(tmp_path / "missing.mcap")
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"\xff" * 40)
    with pytest.raises(RecordingError, match="bad.mcap: .*MCAP header"):
        open_recording(bad)


def test_record_without_a_running_graph_says_how_to_start_one(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipeline.recordings.writer import main

    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(tmp_path / "runs"))
    assert main(["--all", "-o", str(tmp_path / "x.mcap")]) == 2
    assert "no running graph found" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x.mcap")]) == 2
    assert "give TOPICS or --all" in capsys.readouterr().err


def test_large_images_and_clouds_are_stored_in_full_and_large_fallbacks_previewed_at_10_hz(tmp_path: Path) -> None:
    path = tmp_path / "cam.mcap"
    img = Image(stamp_ns=T0, data=np.zeros((480, 640, 3), dtype=np.uint8))     # 900 KiB > LARGE_BYTES
    cloud = PointCloud(stamp_ns=T0, points=np.zeros((30_000, 3)))              # 352 KiB
    odd = PointCloud(stamp_ns=T0, fields="x,y", points=np.zeros((30_000, 3)))  # fields do not name the columns
    with Recorder(path) as rec:
        for i in range(30):                                                    # 1 s of a 30 Hz camera and lidars
            rec.write("cam/image", encode(img), T0 + i * 33_333_333)
            rec.write("lidar/points", encode(cloud), T0 + i * 33_333_333)
            rec.write("lidar/odd", encode(odd), T0 + i * 33_333_333)
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        counts = {ch.topic: summary.statistics.channel_message_counts[cid] for cid, ch in summary.channels.items()}
    assert counts == {"cam/image": 30, "lidar/points": 30, "lidar/odd": 30, "/foxglove/lidar/odd": 10}  # 10 Hz
    with open_recording(path) as rec:
        assert {t.name: t.count for t in rec.info().topics} == {"cam/image": 30, "lidar/points": 30, "lidar/odd": 30}


def _record_and_read(path: Path, topic: str, written: list[list[bytes]]) -> tuple[dict[Any, int], dict[str, Any],
                                                                                  list[bytes]]:
    """Record the wire messages `written` on `topic`; return the file's message counts per (channel
    topic, message encoding), its schemas by channel topic, and the data of the topic's mirror messages."""
    with Recorder(path) as rec:
        for i, frames in enumerate(written):
            rec.write(topic, frames, T0 + i)
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        channels = {(ch.topic, ch.message_encoding): summary.statistics.channel_message_counts[cid]
                    for cid, ch in summary.channels.items()}
        schemas = {ch.topic: summary.schemas[ch.schema_id] for ch in summary.channels.values()}
        previews = [m.data for _, _, m in reader.iter_messages(topics=["/foxglove/" + topic])]
    return channels, schemas, previews


def test_an_image_foxglove_cannot_show_falls_back_to_the_drivecast_channel_and_a_preview(tmp_path: Path) -> None:
    """An encoding outside Foxglove's list, or one whose bytes per pixel are not the image's C, keeps today's
    form (drivecast channel + `/foxglove/` preview), on the same topic as the images that fit: nothing is lost
    and replay gives every message, in order, byte for byte."""
    path = tmp_path / "cam.mcap"
    big = np.random.default_rng(2).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    images = [Image(stamp_ns=T0, encoding="rgb8", data=big[:4, :6]),
              Image(stamp_ns=T0 + 1, encoding="hsv8", data=big),           # not a Foxglove encoding
              Image(stamp_ns=T0 + 2, encoding="rgb8", data=big[:4, :6, :1]),  # rgb8 with one byte per pixel
              Image(stamp_ns=T0 + 3, encoding="mono8", data=big[:4, :6, :1])]
    written = [[bytes(f) for f in encode(m, publish_ns=T0)] for m in images]
    channels, _, previews = _record_and_read(path, "cam/image", written)
    assert channels == {("cam/image", "cdr"): 2, ("cam/image", "drivecast"): 2, ("/foxglove/cam/image", "cdr"): 2}
    width, height = struct.unpack_from("<II", previews[0], 24)  # after stamp, "world\0", alignment
    assert (width, height) == (320, 240)                         # the large one: a half-resolution preview
    with open_recording(path) as rec:
        assert [(t.name, t.type, t.count) for t in rec.info().topics] == [("cam/image", "drivecast/Image", 4)]
        assert [[bytes(f) for f in it.frames] for it in rec.items()] == written


def test_a_cloud_that_does_not_fit_falls_back_to_the_drivecast_channel_and_a_preview(tmp_path: Path) -> None:
    """A cloud whose `fields` do not name its F columns keeps today's form (drivecast channel + `/foxglove/`
    mirror, every 4th point when large), on the same topic as the clouds that fit: nothing is lost and replay
    gives every message, in order, byte for byte."""
    path = tmp_path / "lidar.mcap"
    pts = np.random.default_rng(4).normal(size=(30_000, 4)).astype(np.float32)  # 469 KiB > LARGE_BYTES
    clouds = [PointCloud(stamp_ns=T0, fields="x,y,z,intensity", points=pts[:5]),
              PointCloud(stamp_ns=T0 + 1, fields="x,y,z", points=pts),          # 3 names, 4 columns
              PointCloud(stamp_ns=T0 + 2, fields="x,y,z,intensity,ring", points=pts[:5]),
              PointCloud(stamp_ns=T0 + 3, fields="", points=pts[:5, :0]),       # no columns
              PointCloud(stamp_ns=T0 + 4, fields="x,y,z", points=pts[:5, :3])]
    written = [[bytes(f) for f in encode(m, publish_ns=T0)] for m in clouds]
    channels, schemas, previews = _record_and_read(path, "lidar/points", written)
    assert channels == {("lidar/points", "cdr"): 2, ("lidar/points", "drivecast"): 3,
                        ("/foxglove/lidar/points", "cdr"): 3}
    store = _rosbags_store({"/foxglove/lidar/points": schemas["/foxglove/lidar/points"]})
    large = store.deserialize_cdr(previews[0], "foxglove_msgs/msg/PointCloud")  # a mirror has no drivecast_header
    assert large.point_stride == 16 and [f.name for f in large.fields] == ["x", "y", "z"]
    assert bytes(large.data) == pts[::4].tobytes()                            # the large one: every 4th point
    with open_recording(path) as rec:
        assert [(t.name, t.type, t.count) for t in rec.info().topics] == [("lidar/points", "drivecast/PointCloud", 5)]
        assert [[bytes(f) for f in it.frames] for it in rec.items()] == written


@pytest.mark.parametrize(("encoding", "shape"), [("rgb8", (7, 9, 3)), ("mono8", (5, 7, 1))])
def test_a_preview_is_every_other_row_and_column_of_the_image(encoding: str, shape: tuple[int, ...]) -> None:
    from pipeline.recordings.foxglove import convert
    data = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    cdr = convert(Image(stamp_ns=T0, data=data, encoding=encoding), "cam/image", preview=True)
    width, height = struct.unpack_from("<II", cdr, 24)
    assert (height, width) == data[::2, ::2].shape[:2]
    assert cdr.endswith(data[::2, ::2].tobytes())


def test_a_message_whose_arrays_do_not_decode_is_stored_as_received_and_one_with_a_bad_header_is_not(
        tmp_path: Path) -> None:
    """Like rosbag2, the recorder stores what went over the wire: replay gives the same bytes, which its
    subscribers refuse again. Only a header it cannot read (no schema, no publish time) is refused."""
    from pipeline.errors import DecodeError

    path = tmp_path / "odd.mcap"
    good = [bytes(f) for f in encode(Tracks(stamp_ns=T0, ids=np.arange(4), xy=np.zeros((4, 2)),
                                            vxy=np.zeros((4, 2)), kind=np.ones(4, np.int64)), publish_ns=T0)]
    short = [good[0], good[1][:8], *good[2:]]  # the header says 4 ids, the frame holds 1
    with Recorder(path) as rec:
        rec.write("sim/tracks", good, T0)
        rec.write("sim/tracks", short, T0 + 1)
        with pytest.raises(DecodeError):
            rec.write("sim/tracks", [b"\x93not a header", *good[1:]], T0 + 2)
        assert (rec.count, rec.unmirrored) == (2, 1)
    with open_recording(path) as r:
        assert [[bytes(f) for f in it.frames] for it in r.items()] == [good, short]
    with open(path, "rb") as f:
        mirrored = [m.log_time for _, _, m in make_reader(f).iter_messages(topics=["/foxglove/sim/tracks"])]
    assert mirrored == [T0]


def test_record_names_the_topics_that_got_no_message_so_its_count_agrees_with_bag_info(
        tmp_path: Path, run_base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A graph's topic that publishes nothing (a node's rare events) is recorded but holds no message: `bag info`
    cannot list it, so `record` says "on 1 of 2 topics" and names it instead of "recording 2 topics" alone."""
    import threading

    import zmq

    from pipeline.recordings.writer import main as record_main

    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    run_dir = run_base / "fake"
    run_dir.mkdir(mode=0o700)
    eps = {t: f"ipc://{run_dir}/{t.replace('/', '_')}.sock" for t in ("sim/tracks", "pred/events")}
    (run_dir / "manifest.json").write_text(json.dumps({
        "name": "fake", "run_dir": str(run_dir), "launcher_pid": os.getpid(), "started_ns": 1,
        "topics": {t: {"schema": Tracks.SCHEMA, "endpoint": ep} for t, ep in eps.items()}}))
    ctx = zmq.Context()
    pubs = {t: ctx.socket(zmq.PUB) for t in eps}
    stop = threading.Event()
    for t, s in pubs.items():
        s.setsockopt(zmq.LINGER, 0)
        s.bind(eps[t])
    msg = encode(Tracks(stamp_ns=T0, ids=[1], xy=[[0, 0]], vxy=[[0, 0]], kind=[1]))

    def publish() -> None:
        while not stop.wait(0.01):  # the publisher's rate, not a synchronisation
            pubs["sim/tracks"].send_multipart([b"sim/tracks", *msg])

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    out = tmp_path / "rec.mcap"
    try:
        assert record_main(["--all", "-o", str(out), "--max-messages", "5", "--duration", "20"]) == 0
    finally:
        stop.set()
        th.join(timeout=5)
        for s in pubs.values():
            s.close(0)
        ctx.term()
    err = capsys.readouterr().err
    assert "recording 2 topics" in err
    assert re.search(r"wrote \d+ messages \(.*\) on 1 of 2 topics to .*rec.mcap \(no message on pred/events\)", err)
    assert bag_main(["info", str(out), "--json"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)["topics"]] == ["sim/tracks"]


def test_scans_and_boxes_get_foxglove_mirrors(tmp_path: Path) -> None:
    """A LaserScan mirrors as foxglove.LaserScan (no-return beams as null, not drawn), Detections as
    boxes labelled with their track id."""
    scan = LaserScan(stamp_ns=T0, frame_id="laser", angle_min=-1.0, angle_increment=0.5, range_min=0.2,
                     range_max=8.0, ranges=np.array([1.0, np.nan, 9.0, 0.1, 2.5], np.float32))
    boxes = Detections(stamp_ns=T0, frame_id="map", xy=[[1, 2], [3, 4]], kind=[1, 2], score=[1, 1], ids=[7, -1],
                       length=[4.0, np.nan], width=[2.0, 0.0], heading=[np.pi / 2, 0], observed=[7, 0])
    path = tmp_path / "scan.mcap"
    with Recorder(path) as rec:
        rec.write("lidar/scan", encode(scan), T0)
        rec.write("tracker/boxes", encode(boxes), T0)
    with open(path, "rb") as f:
        reader = make_reader(f)
        bodies = {ch.topic: (reader.get_summary().schemas[ch.schema_id].name, m.data)
                  for _, ch, m in reader.iter_messages(topics=["/foxglove/lidar/scan", "/foxglove/tracker/boxes"])}
    name, body = bodies["/foxglove/lidar/scan"]
    fox_scan = json.loads(body)
    assert name == "foxglove.LaserScan" and fox_scan["frame_id"] == "laser"
    assert fox_scan["ranges"] == [1.0, None, None, None, 2.5]
    assert (fox_scan["start_angle"], fox_scan["end_angle"]) == (-1.0, 1.0)
    name, body = bodies["/foxglove/tracker/boxes"]
    entity = json.loads(body)["entities"][0]
    assert name == "foxglove.SceneUpdate" and [t["text"] for t in entity["texts"]] == ["7"]
    first, second = entity["cubes"]
    assert first["size"]["x"] == 4.0 and first["size"]["y"] == 2.0
    assert first["pose"]["orientation"]["z"] == pytest.approx(np.sin(np.pi / 4))
    assert second["size"]["x"] == second["size"]["y"] == 0.5  # no size known: a small box

"""pipeline/recordings/replay.py, schedule.py, lockstep.py: byte-identical replay, pacing against absolute deadlines, options, lockstep
determinism through an in-process graph, and `drivecast play` -> `drivecast record` across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.recordings.lockstep import lockstep
from pipeline.recordings.reader import open_recording
from pipeline.recordings.replay import play
from pipeline.recordings.schedule import PlayOptions, parse_remap, schedule
from pipeline.recordings.writer import Recorder
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.codec import encode
from pipeline.wire.messages import Clock, Image, Message, Odometry, PointCloud, Predictions, Tracks
from tests.conftest import REPLAY_GRAPH, REPO, wait_for

T0 = 1_700_000_000_000_000_000
RECORDINGS = Path(__file__).resolve().parents[2] / "shared" / "recordings"


def _tracks(i: int, n: int = 6) -> Tracks:
    rng = np.random.default_rng(i)
    xy = np.stack([np.arange(n) * 2.0 + i * 0.1, np.full(n, float(i % 3))], axis=1)
    return Tracks(stamp_ns=T0 + i * 10_000_000, frame_id="map", seq=i + 1, ids=np.arange(n) + 1, xy=xy,
                  vxy=np.tile([1.0, 0.0], (n, 1)) + rng.normal(0, 0.01, (n, 2)), kind=np.full(n, 2))


def _image(i: int) -> Image:
    """An odd-sized camera frame (its CDR form needs padding after the pixels)."""
    data = np.random.default_rng(i).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    return Image(stamp_ns=T0 + i * 10_000_000, frame_id="cam", data=data)


def _cloud(i: int) -> PointCloud:
    """A lidar sweep of x, y, z, intensity."""
    points = np.random.default_rng(i).normal(size=(11, 4)).astype(np.float32)
    return PointCloud(stamp_ns=T0 + i * 10_000_000, frame_id="lidar", fields="x,y,z,intensity", points=points)


def write_drive(path: Path, count: int = 60, period_ns: int = 10_000_000, bursts: bool = False,
                images: bool = False, clouds: bool = False) -> list[list[bytes]]:
    """A small drive of Tracks (and Odometry every 5th step, with `images` an Image every 3rd step, with
    `clouds` a PointCloud every 4th step); returns the frames in log-time order."""
    out = []
    with Recorder(path) as rec:
        for i in range(count):
            log = T0 + i * period_ns + (0 if not bursts or i % 10 else -period_ns // 2)
            if bursts and i % 10 == 1:
                log = T0 + (i - 1) * period_ns  # same receive time as the previous one: a burst
            frames = encode(_tracks(i), publish_ns=log - 1000)
            rec.write("sim/tracks", frames, log)
            out.append([bytes(f) for f in frames])
            if i % 5 == 0:
                odo = encode(Odometry(stamp_ns=log, frame_id="odom", position=[i, 0, 0]), publish_ns=log)
                rec.write("car/odom", odo, log)
                out.append([bytes(f) for f in odo])
            if images and i % 3 == 0:
                img = encode(_image(i), publish_ns=log)
                rec.write("cam/image", img, log)
                out.append([bytes(f) for f in img])
            if clouds and i % 4 == 0:
                cloud = encode(_cloud(i), publish_ns=log)
                rec.write("lidar/points", cloud, log)
                out.append([bytes(f) for f in cloud])
    return out


@pytest.fixture
def drive(tmp_path: Path) -> tuple[Path, list[list[bytes]]]:
    path = tmp_path / "drive.mcap"
    return path, write_drive(path)


def _collect(rec_path: Path, opts: PlayOptions) -> list[tuple[str, list[bytes]]]:
    got: list[tuple[str, list[bytes]]] = []
    with open_recording(rec_path) as rec:
        play(rec, opts, lambda t, f: got.append((t, [bytes(x) for x in f])))
    return got


def test_play_sends_the_recorded_frames_byte_identical(drive) -> None:
    path, frames = drive
    got = _collect(path, PlayOptions(rate=1000.0))
    assert [f for _, f in got] == frames


def test_play_sends_recorded_images_and_clouds_byte_identical_and_filters_them_by_topic(tmp_path: Path) -> None:
    from pipeline.wire.codec import peek_header

    path = tmp_path / "sensors.mcap"
    frames = write_drive(path, images=True, clouds=True)
    assert [f for _, f in _collect(path, PlayOptions(rate=1000.0))] == frames
    for topic, schema, count in (("cam/image", Image.SCHEMA, 20), ("lidar/points", PointCloud.SCHEMA, 15)):
        got = _collect(path, PlayOptions(rate=1000.0, topics=[topic], remap={topic: "front/sensor"}))
        assert {t for t, _ in got} == {"front/sensor"}
        assert [f for _, f in got] == [f for f in frames if peek_header(f[0]).schema == schema] and len(got) == count


def _write_old_layout(path: Path, topic: str, msgs: list[Message]) -> list[list[bytes]]:
    """A drive as the recorder wrote images and clouds before they were stored as RawImage and PointCloud:
    a drivecast channel of packed wire frames, and a preview on `/foxglove/<topic>` beside it."""
    from mcap.writer import CompressionType, Writer

    from pipeline.recordings import foxglove
    from pipeline.recordings.mcap_format import (
        FOXGLOVE_PREFIX,
        MESSAGE_ENCODING,
        PROFILE,
        SCHEMA_ENCODING,
        pack_frames,
        schema_description,
    )

    out = []
    with open(path, "wb") as f:
        w = Writer(f, compression=CompressionType.ZSTD)
        w.start(profile=PROFILE, library="drivecast")
        cls = type(msgs[0])
        sid = w.register_schema(cls.SCHEMA, SCHEMA_ENCODING, schema_description(cls))
        cid = w.register_channel(topic, MESSAGE_ENCODING, sid, {"schema_version": "1"})
        spec = foxglove.channel_spec(cls.SCHEMA)
        sid = w.register_schema(spec.schema_name, spec.schema_encoding, spec.schema_data)
        fid = w.register_channel(FOXGLOVE_PREFIX + topic, spec.message_encoding, sid)
        for i, msg in enumerate(msgs):
            frames = encode(msg, publish_ns=msg.stamp_ns)
            w.add_message(cid, log_time=msg.stamp_ns, data=pack_frames(frames), publish_time=msg.stamp_ns,
                          sequence=i + 1)
            w.add_message(fid, log_time=msg.stamp_ns, data=foxglove.convert(msg, topic, preview=True),
                          publish_time=msg.stamp_ns, sequence=i + 1)
            out.append([bytes(f) for f in frames])
        w.finish()
    return out


@pytest.mark.parametrize(("topic", "make"), [("cam/image", _image), ("lidar/points", _cloud)], ids=["image", "cloud"])
def test_a_drive_recorded_before_images_and_clouds_were_stored_once_plays_the_same(
        tmp_path: Path, topic: str, make: Callable[[int], Message]) -> None:
    from mcap.reader import make_reader

    from pipeline.cli.bag import main as bag_main

    old = tmp_path / "old.mcap"
    msgs = [make(i) for i in range(10)]
    frames = _write_old_layout(old, topic, msgs)
    assert [f for _, f in _collect(old, PlayOptions(rate=1000.0))] == frames
    with open_recording(old) as rec:
        assert [(t.name, t.type, t.count) for t in rec.info().topics] == [(topic, type(msgs[0]).SCHEMA, 10)]
    new = tmp_path / "new.mcap"  # `bag convert` rewrites it in today's layout: it plays the same
    assert bag_main(["convert", str(old), "-o", str(new)]) == 0
    with open(new, "rb") as f:
        summary = make_reader(f).get_summary()
    assert summary is not None and [(ch.topic, ch.message_encoding) for ch in summary.channels.values()] == [
        (topic, "cdr")]
    assert [f for _, f in _collect(new, PlayOptions(rate=1000.0))] == frames


def test_play_keeps_absolute_deadlines_and_reproduces_bursts(tmp_path: Path) -> None:
    path = tmp_path / "burst.mcap"
    write_drive(path, count=100, period_ns=5_000_000, bursts=True)  # 0.5 s at 200 Hz, with bursts
    sent: list[int] = []
    import time
    with open_recording(path) as rec:
        logs = [it.log_ns for it in rec.items()]
        stats = play(rec, PlayOptions(rate=1.0), lambda t, f: sent.append(time.perf_counter_ns()))
    assert stats.messages == len(logs)
    # measured send time vs the schedule t0 + (log - log0): one reference point, so no drift
    err_ms = (np.array(sent) - sent[0] - (np.array(logs) - logs[0])) / 1e6
    s = stats.summary()
    print(f"pacing error: median {np.median(err_ms):.3f} ms, p99 {np.percentile(err_ms, 99):.3f} ms, "
          f"max {err_ms.max():.3f} ms; lateness p99 {s['late_p99_ms']:.3f} ms")
    assert err_ms.min() > -0.05                         # never early (sleep, then spin to the deadline)
    assert np.median(np.abs(err_ms)) < 0.5
    assert np.median(np.abs(err_ms[-20:])) < 0.5        # the end is as punctual as the start: no drift
    bursts = [i for i in range(1, len(logs)) if logs[i] == logs[i - 1]]
    assert bursts and max((sent[i] - sent[i - 1]) / 1e6 for i in bursts) < 2.0  # back to back


def test_play_rate_scales_wall_time(drive) -> None:
    path, _ = drive
    with open_recording(path) as rec:
        stats = play(rec, PlayOptions(rate=4.0), lambda t, f: None)
        span = rec.info().duration_ns / 1e9
    # never faster than the schedule; slower only by scheduling noise on a shared machine
    assert span / 4 - 0.005 <= stats.wall_s < span / 4 + 0.15


def test_play_options_filter_remap_offset_loop_and_clock(drive) -> None:
    path, frames = drive
    got = _collect(path, PlayOptions(rate=1000.0, topics=["car/odom"], remap={"car/odom": "ego/odom"}))
    assert {t for t, _ in got} == {"ego/odom"} and len(got) == 12
    with open_recording(path) as rec:
        items = list(schedule(rec, PlayOptions(start_offset_s=0.3)))
        assert items[0].log_ns >= T0 + 300_000_000 and len(items) < len(frames)
        looped = list(schedule(rec, PlayOptions(loop=True, max_loops=2)))
        assert len(looped) == 2 * len(frames)
        assert all(b.log_ns >= a.log_ns for a, b in zip(looped, looped[1:], strict=False))
        clocked = list(schedule(rec, PlayOptions(clock_hz=100.0)))
    ticks = [it for it in clocked if it.topic == "clock"]
    assert len(ticks) == 60 and ticks[0].log_ns == clocked[1].log_ns  # a tick before the first message
    from pipeline.wire.codec import decode
    assert decode(ticks[5].frames, expect=Clock)[0].stamp_ns == ticks[5].log_ns


def test_play_rejects_bad_options_with_the_option_named(drive) -> None:
    path, _ = drive
    with pytest.raises(ConfigError, match="--rate: expected a positive number, got 0"):
        _collect(path, PlayOptions(rate=0.0))
    with pytest.raises(ConfigError, match="--remap 'a:b': expected FROM:=TO"):
        parse_remap(["a:b"])
    with pytest.raises(ConfigError, match="--topics: .* has no topic nope"):
        _collect(path, PlayOptions(topics=["nope"]))


# -- lockstep ------------------------------------------------------------------------------------------------

class CvPredictor(Node):
    """Constant velocity over 12 steps of 0.4 s, plus a timer that uses the node clock."""

    class Params(NodeParams):
        horizon: int = 12

    inputs = {"tracks": Tracks}
    outputs = {"predictions": Predictions}

    def setup(self) -> None:
        self.ticks = 0
        self.every(0.05, self._tick)

    def _tick(self) -> None:
        self.ticks += 1

    def on_tracks(self, msg: Tracks) -> None:
        steps = np.arange(1, self.params.horizon + 1, dtype=np.float32) * 0.4
        xy = msg.xy[:, None, :] + msg.vxy[:, None, :] * steps[None, :, None]
        self.publish("predictions", Predictions(
            stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, model=f"cv ticks={self.ticks} now={self.now_ns()}",
            ids=msg.ids, kind=msg.kind, t_ns=msg.stamp_ns + (steps * 1e9).astype(np.int64), xy=xy))


def test_lockstep_twice_gives_byte_identical_outputs(drive, tmp_path: Path) -> None:
    from pipeline.runtime.graph import load_graph

    path, _ = drive
    launch = tmp_path / "launch.yaml"
    launch.write_text(REPLAY_GRAPH.format(file=path, predictor="tests.test_play:CvPredictor", params="{}"))
    graph = load_graph(launch)
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.mcap"
        with open_recording(path) as rec, Recorder(out, max_chunk_age_s=0) as w:
            stats = lockstep(rec, graph, PlayOptions(), w.write)
        outs.append(out.read_bytes())
        print(f"lockstep: {stats.injected} in, {stats.published} deliveries, x{stats.x_realtime:.0f} real time")
    assert outs[0] == outs[1]
    with open_recording(tmp_path / "out0.mcap") as rec:
        info = rec.info()
        topics = {t.name: t.count for t in info.topics}
        assert topics["predictor/predictions"] == 60 and topics["player/tracks"] == 60
        preds = [it for it in rec.items(["predictor/predictions"])]
    from pipeline.wire.codec import decode
    last = decode(preds[-1].frames, expect=Predictions)[0]
    assert last.model.startswith("cv ticks=") and int(last.model.split("now=")[1]) == preds[-1].log_ns
    assert int(last.model.split()[1].split("=")[1]) >= 10   # timers ran on the replayed clock


def test_lockstep_cli_writes_the_same_file_twice(drive, tmp_path: Path) -> None:
    from pipeline.recordings.replay import main

    path, _ = drive
    launch = tmp_path / "launch.yaml"
    launch.write_text(REPLAY_GRAPH.format(file=path, predictor="tests.test_play:CvPredictor", params="{}"))
    a, b = tmp_path / "a.mcap", tmp_path / "b.mcap"
    assert main([str(path), "--lockstep", "--graph", str(launch), "-o", str(a), "--quiet"]) == 0
    assert main([str(path), "--lockstep", "--graph", str(launch), "-o", str(b), "--quiet"]) == 0
    assert a.read_bytes() == b.read_bytes()


# -- across processes ----------------------------------------------------------------------------------------

def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.parametrize("sensors", [False, True], ids=["tracks", "with_images_and_clouds"])
def test_play_then_record_across_processes_is_byte_identical(tmp_path: Path, run_base: Path,
                                                             procs: list[subprocess.Popen[bytes]], sensors: bool) -> None:
    path = tmp_path / "drive.mcap"
    frames = write_drive(path, images=sensors, clouds=sensors)
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base), "PYTHONUNBUFFERED": "1"}
    player = _cli(["play", str(path), "--rate", "20", "--wait-for", "1", "--quiet"], env)
    procs.append(player)
    manifest = wait_for(lambda: next(run_base.glob("play-*/manifest.json"), None), 10, "the player's manifest")
    out = tmp_path / "again.mcap"
    recorder = _cli(["record", "--all", "--lossless", "--run", str(manifest.parent), "-o", str(out),
                     "--max-messages", str(len(frames)), "--quiet"], env)
    procs.append(recorder)
    assert recorder.wait(timeout=30) == 0, recorder.stderr.read().decode() if recorder.stderr else ""
    assert player.wait(timeout=30) == 0, player.stderr.read().decode() if player.stderr else ""
    with open_recording(out) as rec:
        again = {it.topic: [] for it in rec.items()}
        for it in rec.items():
            again[it.topic].append([bytes(f) for f in it.frames])
    with open_recording(path) as rec:
        orig: dict[str, list[list[bytes]]] = {}
        for it in rec.items():
            orig.setdefault(it.topic, []).append([bytes(f) for f in it.frames])
    assert again == orig
    assert len(orig.get("cam/image", [])) == (20 if sensors else 0)
    assert len(orig.get("lidar/points", [])) == (15 if sensors else 0)


# -- real recordings ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["husky_outdoor_gps_imu_odom_ros1/test1.bag",
                                  "rc_cars_overtakes_mocap_lidar_ros1/overtakes.bag",
                                  "turtlebot_nav2_sim_ros2_mcap/nav2_turtlebot.mcap"])
def test_every_real_recording_plays(name: str) -> None:
    path = RECORDINGS / name
    if not path.exists():
        pytest.skip(f"recording {path} not present (../shared/recordings beside the checkout)")
    topics: dict[str, int] = {}
    with open_recording(path) as rec:
        stats = play(rec, PlayOptions(rate=1e5), lambda t, f: topics.__setitem__(t, topics.get(t, 0) + 1))
        info = rec.info()
    converted = {t.name for t in info.topics if t.converted}
    assert set(topics) == converted
    assert stats.messages == sum(topics.values()) > 0


NODE_GRAPH = """\
name: nodes
clock: player/clock
nodes:
  player:
    run: nodes.player:Player
    params: {{file: {file}, rate: 5.0, clock_hz: 50}}
    required: true
  recorder:
    run: nodes.recorder:Recorder
    params: {{file: {out}, names: {{tracks: player/tracks, odom: player/odom}}}}
    inputs:
      tracks: {{topic: player/tracks, queue: block}}
      odom: {{topic: player/odom, queue: block}}
"""


def test_player_and_recorder_nodes_in_a_launched_graph(drive, tmp_path: Path, launch) -> None:
    path, _ = drive
    out = tmp_path / "nodes.mcap"
    graph = tmp_path / "nodes.yaml"
    graph.write_text(NODE_GRAPH.format(file=path, out=out))
    launched = launch(graph)
    rc, text = launched.wait(timeout=60)
    assert rc == 0, text
    assert "required node player finished" in text
    from pipeline.wire.codec import decode
    with open_recording(path) as rec:
        orig = [decode(it.frames)[0] for it in rec.items(["sim/tracks"])]
    with open_recording(out) as rec:
        items = list(rec.items(["player/tracks"]))
        got = [decode(it.frames)[0] for it in items]
        counts = {t.name: t.count for t in rec.info().topics}
    with open_recording(path) as rec:
        n_odom = sum(1 for _ in rec.items(["car/odom"]))
    # block inputs and the graph's drain at the end: every message arrives, none lost
    assert counts["player/odom"] == n_odom
    assert got == orig                     # same content; the player is the publisher now
    # the recorder's clock is the replayed one (launch file `clock: player/clock`), not wall time
    logs = np.array([it.log_ns for it in items])
    assert np.all((logs >= T0 - 100_000_000) & (logs <= T0 + 700_000_000)), logs[:5]


def test_lockstep_cli_set_overrides_a_param_of_the_graph(drive, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.recordings.replay import main
    from pipeline.wire.codec import decode

    path, _ = drive
    launch = tmp_path / "launch.yaml"
    launch.write_text(REPLAY_GRAPH.format(file=path, predictor="tests.test_play:CvPredictor", params="{}"))
    out = tmp_path / "out.mcap"
    assert main([str(path), "--lockstep", "--graph", str(launch), "--set", "predictor.horizon=5", "-o", str(out),
                 "--quiet"]) == 0
    with open_recording(out) as rec:
        last = [it for it in rec.items(["predictor/predictions"])][-1]
    assert decode(last.frames, expect=Predictions)[0].xy.shape[1] == 5
    # a bad value names the --set (exit 1, as for a bad --graph); without --lockstep there is no graph to set
    assert main([str(path), "--lockstep", "--graph", str(launch), "--set", "predictor.horizon=many", "--quiet"]) == 1
    assert "predictor.horizon" in capsys.readouterr().err
    assert main([str(path), "--set", "predictor.horizon=5", "--quiet"]) == 2
    assert "--set" in capsys.readouterr().err

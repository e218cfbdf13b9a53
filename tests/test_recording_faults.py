"""Recording and replay under faults: a full disk, an unwritable path, SIGTERM during `drivecast record`
and `drivecast play`, corrupt MCAP files and ROS bags.

The graph being recorded is faked: this test binds the topic's endpoint itself and writes a run manifest
(`pipeline.runtime.rundir.find_run` finds it: its launcher_pid is this process), so `drivecast record` runs for
real against a publisher the test controls. A full disk is a file-size limit (RLIMIT_FSIZE, with SIGXFSZ
ignored so that write() fails with EFBIG as on ENOSPC) set in the recorder's process only.

Covered elsewhere, not repeated here: a recorder killed with SIGKILL leaves a readable, recoverable file
(tests/test_record.py::test_recording_cut_by_kill_9_is_readable_and_recoverable), a file cut in the middle
reads to its last chunk, "not a recording" and a bad MCAP header (test_record.py), a truncated ROS 1 bag
(tests/test_bag.py::test_truncated_ros_bag_gives_a_clear_error).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from pipeline.cli.bag import main as bag_main
from pipeline.errors import ConfigError
from pipeline.recordings.reader import open_recording
from pipeline.recordings.writer import Recorder
from pipeline.recordings.writer import main as record_main
from pipeline.wire.codec import encode
from pipeline.wire.messages import Tracks
from tests.conftest import REPO, SHARED, wait_for

TOPIC = "sim/tracks"


T0 = 1_700_000_000_000_000_000


def tracks(i: int, n: int = 100, rng: np.random.Generator | None = None) -> Tracks:
    rng = rng or np.random.default_rng(i)
    return Tracks(stamp_ns=T0 + i * 10_000_000, frame_id="map", ids=np.arange(n), xy=rng.normal(size=(n, 2)),
                  vxy=rng.normal(size=(n, 2)), kind=np.ones(n))


class FakeGraph:
    """A run manifest with one topic, and a thread publishing ~100 incompressible Tracks per second on it."""

    def __init__(self, run_base: Path) -> None:
        run_dir = run_base / "fake"
        run_dir.mkdir(mode=0o700)
        self.endpoint = f"ipc://{run_dir}/tracks.sock"
        (run_dir / "manifest.json").write_text(json.dumps({
            "name": "fake", "file": "", "run_dir": str(run_dir), "launcher_pid": os.getpid(),
            "started_ns": time.time_ns(), "clock": "", "nodes": {},
            "topics": {TOPIC: {"schema": Tracks.SCHEMA, "endpoint": self.endpoint, "lossless_endpoint": None}}}))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.endpoint)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.wait(0.01):  # the publisher's rate (~100 Hz), not a synchronisation
            self.sock.send_multipart([TOPIC.encode(), *encode(tracks(self.sent, rng=rng))])
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def graph(run_base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    g = FakeGraph(run_base)
    yield g
    g.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start `python -m pipeline.cli ARGS` in its own session; every process is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, preexec: Any = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=preexec)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def finish(p: subprocess.Popen[bytes], timeout: float = 20) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def make_drive(path: Path, n: int, period_ns: int = 100_000_000) -> Path:
    with Recorder(path, max_chunk_age_s=0, chunk_size=64 * 1024) as rec:
        for i in range(n):
            m = tracks(i, n=8)
            rec.write(TOPIC, encode(m, publish_ns=T0 + i * period_ns), T0 + i * period_ns)
    return path


# -- full disk, unwritable path -------------------------------------------------------------------------

FSIZE_LIMIT = 400_000


def _small_disk() -> None:
    """In the recorder's process: writes past FSIZE_LIMIT bytes fail with EFBIG, as a full disk fails."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_record_to_a_full_disk_stops_with_a_clear_error_and_keeps_what_was_written(
        graph: FakeGraph, spawn: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "full.mcap"
    p = spawn("record", "-o", str(out), "--no-foxglove", TOPIC, preexec=_small_disk)
    rc, _, err = finish(p, timeout=60)  # ~250 KB/s of incompressible tracks: the limit is hit in about 2 s
    assert out.stat().st_size <= FSIZE_LIMIT
    assert "Traceback" not in err, err
    assert rc == 1
    assert re.search(r"ERROR: .*full\.mcap.*File too large", err), err
    # what was written stays readable: every chunk completed before the disk filled
    with open_recording(out) as rec:
        info = rec.info()
        assert info.truncated and info.count > 0
        assert sum(1 for _ in rec.items()) == info.count
    assert bag_main(["info", str(out)]) == 0
    assert "TRUNCATED" in capsys.readouterr().out


def test_recorder_refuses_an_unwritable_path_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"afile/x\.mcap: cannot create: Not a directory"):
        Recorder(tmp_path / "afile" / "x.mcap")
    with pytest.raises(ConfigError, match=r"nodir/x\.mcap: cannot create: No such file or directory"):
        Recorder(tmp_path / "nodir" / "x.mcap")


def test_record_cli_reports_an_unwritable_path_before_recording(graph: FakeGraph, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    assert record_main(["-o", str(tmp_path / "afile" / "x.mcap"), TOPIC]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^ERROR: .*afile/x\.mcap: cannot create: Not a directory$", err, re.M), err


def test_recorder_write_error_names_the_file_and_close_does_not_raise_again(tmp_path: Path) -> None:
    """Recorder on a device that is full from the first byte (/dev/full): the first flush fails with a
    clear error naming the file; close() afterwards does not raise a second, unrelated error."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    from pipeline.errors import DrivecastError

    rec = Recorder("/dev/full", max_chunk_age_s=0)
    with pytest.raises(DrivecastError, match=r"/dev/full: .*No space left on device"):
        rec.write(TOPIC, encode(tracks(0)), T0)
        rec.flush()
    rec.close()


def test_a_respawned_recorder_node_keeps_the_recording_of_its_previous_life(tmp_path: Path) -> None:
    """The recorder node crashed (any exception in a callback ends its process) and the launcher respawned
    it with the same params: the new instance must not truncate the file the first one wrote."""
    from tests.test_node_fuzz import NODES, Harness, wire

    cls = NODES["nodes.recorder:Recorder"]
    path = tmp_path / "drive.mcap"
    params = {"file": str(path), "max_chunk_age_s": 1e-9, "foxglove": False}  # flush every message: all on disk
    first = Harness(cls, tmp_path, params)
    try:
        for i in range(20):
            assert first.deliver("tracks", wire(tracks(i, n=4))) == "delivered"
    except BaseException:
        first.close(shutdown=False)  # its sockets left open would hang a later test's context
        raise
    first.rt.close()  # the process died: no shutdown(), the MCAP file has no summary
    first.ctx.term()
    with open_recording(path) as rec:
        assert rec.info().count == 20
    second = Harness(cls, tmp_path, params, restarts=1)
    try:
        assert second.deliver("tracks", wire(tracks(20, n=4))) == "delivered"
    finally:
        second.close()
    kept = 0
    for f in sorted(tmp_path.glob("drive*.mcap")):
        with open_recording(f) as rec:
            kept += sum(1 for it in rec.items() if it.topic == "tracks")
    assert kept == 21, f"{kept} of 21 messages left in {sorted(p.name for p in tmp_path.glob('drive*.mcap'))}"


# -- SIGTERM during record and play -----------------------------------------------------------------------

def test_sigterm_during_record_closes_the_file_cleanly(graph: FakeGraph, spawn: Any, tmp_path: Path) -> None:
    out = tmp_path / "rec.mcap"
    p = spawn("record", "-o", str(out), TOPIC)
    wait_for(lambda: out.exists() and out.stat().st_size > 4096, 30, "the first chunk on disk")
    p.send_signal(signal.SIGTERM)
    rc, _, err = finish(p)
    assert rc == 0, err
    assert "Traceback" not in err
    m = re.search(r"wrote (\d+) messages", err)
    assert m, err
    with open_recording(out) as rec:
        info = rec.info()
        assert not info.truncated and info.count == int(m.group(1)) > 0
        assert sum(1 for _ in rec.items()) == info.count


def test_sigterm_during_play_stops_cleanly_and_reports_it(spawn: Any, tmp_path: Path, run_base: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    drive = make_drive(tmp_path / "drive.mcap", 300)  # 30 s of recording
    digest = hashlib.sha256(drive.read_bytes()).hexdigest()
    p = spawn("play", str(drive))
    manifest = wait_for(lambda: next(iter(run_base.glob("*/manifest.json")), None), 30, "the player's run manifest")
    endpoint = wait_for(lambda: json.loads(manifest.read_text())["topics"].get(TOPIC, {}).get("endpoint"), 10,
                        "the topic in the manifest")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    try:  # a message received: the player is in its loop (its signal handlers are installed)
        assert sub.poll(30_000), "no message from the player"
    finally:
        sub.close(0)
        ctx.term()
    p.send_signal(signal.SIGTERM)
    rc, _, err = finish(p)
    assert "Traceback" not in err, err
    assert rc == 130  # 128 + SIGINT's number, for either stop signal: "stopped by a signal"
    assert re.search(r"played \d+ messages", err), err
    assert not any(run_base.glob("*/manifest.json")), "the run directory was left behind"
    assert hashlib.sha256(drive.read_bytes()).hexdigest() == digest
    with open_recording(drive) as rec:
        assert rec.info().count == 300 and not rec.info().truncated


def test_sigterm_during_lockstep_replay_leaves_a_valid_output_file(spawn: Any, tmp_path: Path) -> None:
    """`drivecast play --lockstep --graph G -o OUT`: a stop signal must still finish OUT (summary written)."""
    drive = make_drive(tmp_path / "drive.mcap", 3000, period_ns=10_000_000)
    got = tmp_path / "got.jsonl"
    graph = tmp_path / "g.yaml"
    graph.write_text(f"name: g\nnodes:\n  player: {{run: nodes.player:Player, params: {{file: '{drive}'}}}}\n"
                     "  sink: {run: tests.graph_nodes:Collect, inputs: {tracks: {topic: player/tracks, queue: block}}, "
                     f"params: {{out: '{got}', slow_s: 0.002}}}}\n")
    out = tmp_path / "out.mcap"
    p = spawn("play", str(drive), "--lockstep", "--graph", str(graph), "-o", str(out), "--quiet")
    wait_for(lambda: p.poll() is not None or got.exists() and len(got.read_text().splitlines()) >= 100, 60,
             "100 messages replayed")
    assert p.poll() is None, finish(p)
    p.send_signal(signal.SIGTERM)
    rc, _, err = finish(p)
    assert "Traceback" not in err, err
    assert rc == 130, f"exit code {rc}: {err}"
    with open_recording(out) as rec:
        assert not rec.info().truncated, rec.info().note
        assert rec.info().count >= 100


# -- corrupt files: clear errors from `drivecast bag info` and `drivecast play` ------------------------------

def _damaged(src: bytes, how: str, rng: np.random.Generator) -> bytes:
    b = bytearray(src)
    n = len(b)
    if how == "cut_header":
        return bytes(b[:20])
    if how == "cut_middle":
        return bytes(b[: n // 2])
    if how == "cut_footer":
        return bytes(b[: n - 10])
    if how == "zero_middle":
        b[n // 3: n // 3 + 512] = bytes(512)
        return bytes(b)
    if how == "flip_summary":
        for i in rng.integers(n - n // 8, n - 30, 16):
            b[i] ^= 0xFF
        return bytes(b)
    if how == "flip_everywhere":
        for i in rng.integers(8, n, 64):
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b)
    raise AssertionError(how)


DAMAGE = ["cut_header", "cut_middle", "cut_footer", "zero_middle", "flip_summary", "flip_everywhere"]


@pytest.fixture(scope="module")
def drive_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_drive(tmp_path_factory.mktemp("drive") / "d.mcap", 200).read_bytes()


def _cli(*args: str, timeout: float = 60) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "DRIVECAST_RUN_DIR": str(Path(args[-1]).parent)})
    return p.returncode, p.stdout + p.stderr


def _info_and_play_read_it_or_name_it(bad: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bag info` and `play` of a damaged file either read what is readable or fail with an ERROR line
    that names the file (never a traceback)."""
    from pipeline.recordings.replay import main as play_main

    rc = bag_main(["info", str(bad)])
    text = capsys.readouterr()
    assert rc in (0, 1)
    if rc == 1:
        assert re.search(rf"^ERROR: .*{re.escape(bad.name)}: ", text.err, re.M), text.err
    rc = play_main([str(bad), "--rate", "1000", "--quiet"])
    text = capsys.readouterr()
    assert rc in (0, 1, 2)
    if rc:
        assert re.search(rf"^ERROR: .*{re.escape(bad.name)}", text.err, re.M), text.err


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_mcap_gives_bag_info_and_play_a_clear_answer(how: str, drive_bytes: bytes, tmp_path: Path,
                                                               run_base: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command either works on what is readable or prints `ERROR: <path>: ...` and exits 1; no traceback."""
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    bad = tmp_path / f"{how}.mcap"
    bad.write_bytes(_damaged(drive_bytes, how, np.random.default_rng(DAMAGE.index(how))))
    _info_and_play_read_it_or_name_it(bad, capsys)


def test_a_damaged_mcap_through_the_cli_never_prints_a_traceback(drive_bytes: bytes, run_base: Path) -> None:
    bad = run_base / "flip.mcap"
    bad.write_bytes(_damaged(drive_bytes, "flip_everywhere", np.random.default_rng(5)))
    for args in (("bag", "info", str(bad)), ("play", "--rate", "1000", "--quiet", str(bad))):
        rc, text = _cli(*args)
        assert "Traceback" not in text, text
        assert rc in (0, 1), text


def _stored_records(path: Path, topic: str, schema: str, bodies: list[bytes]) -> Path:
    """A drivecast MCAP whose `topic` channel holds `bodies` as records of `schema`'s stored Foxglove form."""
    from mcap.writer import Writer

    from pipeline.recordings.foxglove import STORED
    from pipeline.recordings.mcap_format import DRIVECAST_SCHEMA_KEY, PROFILE

    spec = STORED[schema].spec
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile=PROFILE, library="test")
        sid = w.register_schema(spec.schema_name, spec.schema_encoding, spec.schema_data)
        cid = w.register_channel(topic, spec.message_encoding, sid,
                                 {DRIVECAST_SCHEMA_KEY: schema, "schema_version": "1"})
        for i, body in enumerate(bodies):
            w.add_message(cid, log_time=T0 + i, data=body, publish_time=T0 + i)
        w.finish()
    return path


def _stored(msg: Any) -> tuple[bytes, bytes]:
    """The stored record of `msg` and its wire header."""
    from pipeline.recordings.foxglove import stored

    frames = encode(msg)
    record = stored(msg.SCHEMA, frames)
    assert record is not None
    return record, bytes(frames[0])


def _with_header(record: bytes, header: bytes, other: Any) -> bytes:
    """`record` (whose drivecast_header is `header`, at its end) with the wire header of `other` instead."""
    new = bytes(encode(other)[0])
    return record[:len(record) - len(header) - 4] + struct.pack("<I", len(new)) + new


def _image_record_damaged(how: str) -> bytes:
    from pipeline.wire.messages import Image

    good, header = _stored(Image(stamp_ns=T0, data=np.zeros((4, 6, 3), np.uint8)))  # 72 bytes: no padding after
    if how == "big_endian":
        return b"\x00\x00" + good[2:]
    if how == "data_too_long":
        at = good.index(b"\x48\x00\x00\x00" + bytes(72))  # the data's length (72) and pixels
        return good[:at] + struct.pack("<I", 10**9) + good[at + 4:]
    if how == "cut":
        return good[:-3]
    if how == "trailing":
        return good + bytes(4)
    if how == "wrong_height":
        return good[:28] + struct.pack("<I", 5) + good[32:]  # after stamp, "world\0", width
    if how == "not_a_header":
        return good[:len(good) - len(header) - 4] + struct.pack("<I", 8) + b"\xc1garbage"
    if how == "tracks_header":
        return _with_header(good, header, tracks(0, n=1))
    raise AssertionError(how)


def _cloud_record_damaged(how: str) -> bytes:
    from pipeline.wire.messages import Image, PointCloud

    def cloud(fields: str = "x,y,z,intensity", n: int = 2) -> PointCloud:
        return PointCloud(stamp_ns=T0, fields=fields, points=np.ones((n, 4)))

    good, header = _stored(cloud())
    stride_at = good.index(struct.pack("<7d", 0, 0, 0, 0, 0, 0, 1)) + 56  # after the identity pose
    y_at = good.index(b"\x02\x00\x00\x00y\x00") + 8                     # field y's offset, after its name
    if how == "cut_in_pose":
        return good[:40]
    if how == "no_nul":
        return good.replace(b"world\0", b"worlds")
    if how == "field_count":
        return good[:stride_at + 4] + struct.pack("<I", 10**9) + good[stride_at + 8:]
    if how == "wrong_stride":
        return good[:stride_at] + struct.pack("<I", 20) + good[stride_at + 4:]
    if how == "wrong_offset":
        return good[:y_at] + struct.pack("<I", 5) + good[y_at + 4:]
    if how == "more_points":  # a header of 3 points over the data of 2
        return _with_header(good, header, cloud(n=3))
    if how == "other_fields":
        return _with_header(good, header, cloud("x,y,z,ring"))
    if how == "fields_do_not_fit":
        return _with_header(good, header, cloud("x,y,z"))
    if how == "image_header":
        return _with_header(good, header, Image(data=np.zeros((2, 4, 4), np.uint8)))
    if how == "trailing":
        return good + bytes(3)
    raise AssertionError(how)


STORED_DAMAGE = [
    ("image", "big_endian", "RawImage record starts with 00000000, not the little-endian CDR header 00010000"),
    ("image", "data_too_long", "data of 1000000000 bytes, only \\d+ left in the RawImage record"),
    ("image", "cut", "drivecast_header of \\d+ bytes, only \\d+ left in the RawImage record"),
    ("image", "trailing", "4 bytes after the drivecast_header of the RawImage record"),
    ("image", "wrong_height", "height 5 in the RawImage record, the drivecast_header says 4"),
    ("image", "not_a_header", "drivecast_header and data are not a drivecast/Image message: bad_header: "),
    ("image", "tracks_header", "drivecast_header and data are not a drivecast/Image message: "
                               "wrong_schema: expected drivecast/Image, got drivecast/Tracks"),
    ("cloud", "cut_in_pose", "PointCloud record of 40 bytes ends before its pose"),
    ("cloud", "no_nul", "frame_id of the PointCloud record is not a NUL-terminated string"),
    ("cloud", "field_count", "fields count 1000000000, only \\d+ bytes left in the PointCloud record"),
    ("cloud", "wrong_stride", "point_stride 20 in the PointCloud record, the drivecast_header says 16"),
    ("cloud", "wrong_offset", "fields \\[\\('x', 0, 7\\), \\('y', 5, 7\\), .* in the PointCloud record, "
                              "the drivecast_header says \\[\\('x', 0, 7\\), \\('y', 4, 7\\), "),
    ("cloud", "more_points", "drivecast_header and data are not a drivecast/PointCloud message: "
                             "bad_size: drivecast/PointCloud.points: shape \\[3, 4\\] needs 48 bytes, frame has 32"),
    ("cloud", "other_fields", "fields .*'intensity'.* in the PointCloud record, the drivecast_header says .*'ring'"),
    ("cloud", "fields_do_not_fit", "the drivecast_header is a drivecast/PointCloud message that does not fit "
                                   "a PointCloud record"),
    ("cloud", "image_header", "drivecast_header and data are not a drivecast/PointCloud message: "
                              "wrong_schema: expected drivecast/PointCloud, got drivecast/Image"),
    ("cloud", "trailing", "3 bytes after the drivecast_header of the PointCloud record"),
]
SENSORS = {"image": ("cam/image", "drivecast/Image", _image_record_damaged),
           "cloud": ("lidar/points", "drivecast/PointCloud", _cloud_record_damaged)}


@pytest.mark.parametrize(("kind", "how", "error"), STORED_DAMAGE, ids=[f"{k}-{how}" for k, how, _ in STORED_DAMAGE])
def test_a_corrupt_stored_record_gives_a_clear_error(kind: str, how: str, error: str, tmp_path: Path,
                                                     run_base: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored RawImage or PointCloud record whose lengths, fields or header are wrong (a crafted or damaged
    file; the chunk CRC passes): the reader names the file, the topic, the log time and what is wrong, and
    `drivecast play` prints it and exits 1."""
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.replay import main as play_main

    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    topic, schema, damaged = SENSORS[kind]
    bad = _stored_records(tmp_path / f"{how}.mcap", topic, schema, [damaged(how)])
    with open_recording(bad) as rec:
        assert [(t.name, t.type, t.count) for t in rec.info().topics] == [(topic, schema, 1)]
        with pytest.raises(RecordingError, match=rf"{how}\.mcap: {topic} @ {T0}: {error}"):
            list(rec.items())
    assert play_main([str(bad), "--rate", "1000", "--quiet"]) == 1
    assert re.search(rf"^ERROR: .*{how}\.mcap: {topic} @ {T0}: {error}", capsys.readouterr().err, re.M)


def _ros_bag() -> Path:
    bag = SHARED / "recordings" / "husky_outdoor_gps_imu_odom_ros1" / "test1.bag"
    if not bag.exists():
        pytest.skip(f"recording {bag} not present (../shared/recordings beside the checkout)")
    return bag


@pytest.mark.parametrize("how", ["cut_middle", "zero_middle", "flip_everywhere", "garbage_after_magic"])
def test_a_corrupt_ros_bag_gives_bag_info_and_play_a_clear_error(how: str, tmp_path: Path, run_base: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    src = _ros_bag().read_bytes()
    data = (b"#ROSBAG V2.0\n" + bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
            if how == "garbage_after_magic" else _damaged(src, how, np.random.default_rng(2)))
    bad = tmp_path / f"{how}.bag"
    bad.write_bytes(data)
    _info_and_play_read_it_or_name_it(bad, capsys)

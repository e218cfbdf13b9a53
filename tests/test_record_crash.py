"""Crash loss of recording (pipeline/recordings/writer.py, nodes/recorder.py): a chunk is closed when its
oldest message is `max_chunk_age_s` old, also when no further message comes, so a recorder killed with
SIGKILL after a pause in the data has every message of before the pause on disk (the loss is bounded in
time, issue 24). `bench/crash.py` measures the bound over random kills of a running graph's recorder.

The graph is faked, as in tests/test_recording_faults.py: the test binds the topic's endpoint and writes
the run manifest (its launcher_pid is this process), and publishes only when it chooses to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline.cli.bag import main as bag_main
from pipeline.errors import ConfigError
from pipeline.recordings.base import RecordingError
from pipeline.recordings.reader import open_recording
from pipeline.recordings.writer import Recorder
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Tracks
from tests.conftest import REPO, wait_for

TOPIC = "sim/tracks"


def _tracks(i: int) -> Tracks:
    return Tracks(stamp_ns=i, frame_id="map", ids=np.arange(4), xy=np.full((4, 2), float(i)),
                  vxy=np.zeros((4, 2)), kind=np.ones(4))


def _stamps(path: Path) -> list[int]:
    """The stamps of the Tracks on disk now, in file order ([] while the file holds no complete chunk)."""
    try:
        with open_recording(path) as rec:
            return [decode(it.frames)[0].stamp_ns for it in rec.items() if it.topic in (TOPIC, "tracks")]
    except (FileNotFoundError, RecordingError):
        return []


class FakeGraph:
    """A run manifest with one topic, and a PUB socket bound on its endpoint that sends on demand."""

    def __init__(self, run_base: Path) -> None:
        run_dir = run_base / "fake"
        run_dir.mkdir(mode=0o700)
        endpoint = f"ipc://{run_dir}/tracks.sock"
        (run_dir / "manifest.json").write_text(json.dumps({
            "name": "fake", "file": "", "run_dir": str(run_dir), "launcher_pid": os.getpid(),
            "started_ns": time.time_ns(), "clock": "", "nodes": {},
            "topics": {TOPIC: {"schema": Tracks.SCHEMA, "endpoint": endpoint, "lossless_endpoint": None}}}))
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.sent = 0

    def send(self) -> int:
        """Publish the next Tracks (stamp_ns = its index) and return its index."""
        self.sock.send_multipart([TOPIC.encode(), *encode(_tracks(self.sent))])
        self.sent += 1
        return self.sent - 1

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def graph(run_base: Path) -> Iterator[FakeGraph]:
    g = FakeGraph(run_base)
    yield g
    g.close()


def test_recorder_closes_a_chunk_by_age_when_no_further_message_comes(tmp_path: Path) -> None:
    path = tmp_path / "age.mcap"
    with Recorder(path, max_chunk_age_s=0.05, foxglove_mirror=False) as rec:
        assert rec.flush_if_due() is None                 # nothing waiting: no deadline
        rec.write(TOPIC, encode(_tracks(0)))
        left = rec.flush_if_due()
        assert left is not None and 0 < left <= 0.05 and _stamps(path) == []
        wait_for(lambda: rec.flush_if_due() is None, 5, "the chunk's age to reach 0.05 s")
        assert _stamps(path) == [0]                       # in the OS's hands, not Python's buffer


def test_recorder_refuses_a_negative_max_chunk_age_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^max_chunk_age_s: expected a number >= 0, got -1$"):
        Recorder(tmp_path / "x.mcap", max_chunk_age_s=-1)
    assert not (tmp_path / "x.mcap").exists()


def test_record_killed_after_a_pause_keeps_every_message_of_before_the_pause(
        graph: FakeGraph, run_base: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    out = tmp_path / "rec.mcap"
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "record", "-o", str(out), TOPIC, "--quiet"],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.append(p)

    def send_until_on_disk() -> bool:  # the recorder is then subscribed (ZeroMQ's slow joiner) and just flushed
        graph.send()
        return bool(_stamps(out))
    wait_for(send_until_on_disk, 30, "the recorder's first chunk on disk")
    last = max(graph.send() for _ in range(10))
    # then no message at all: the last ones must reach the disk by age alone (default max-chunk-age)
    wait_for(lambda: last in _stamps(out), 10, f"message {last}, sent before the pause, on disk")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=5)
    stamps = _stamps(out)
    assert stamps == list(range(stamps[0], last + 1))    # from the first received on, nothing lost
    fixed = tmp_path / "fixed.mcap"
    assert bag_main(["recover", str(out), "-o", str(fixed)]) == 0
    assert _stamps(fixed) == stamps


def test_recorder_node_closes_a_chunk_by_age_from_its_timer(tmp_path: Path) -> None:
    from tests.test_node_fuzz import NODES, Harness, wire

    path = tmp_path / "node.mcap"
    h = Harness(NODES["nodes.recorder:Recorder"], tmp_path,
                {"file": str(path), "max_chunk_age_s": 0.05, "foxglove": False})
    try:
        for i in range(3):
            assert h.deliver("tracks", wire(_tracks(i))) == "delivered"
        assert _stamps(path) == []                        # one open chunk, in memory

        def ticked_to_disk() -> bool:  # what the runner's loop does between messages: fire due timers
            h.tick()
            return _stamps(path) == [0, 1, 2]
        wait_for(ticked_to_disk, 5, "the node's timer to close the chunk")
    finally:
        h.rt.close()                                      # the node dies: no shutdown(), no summary
        h.ctx.term()
    with contextlib.suppress(RecordingError), open_recording(path) as rec:
        assert rec.info().truncated
    assert _stamps(path) == [0, 1, 2]

"""Launch-file side of issue 8: per-topic `topics:` options, Node.loan, segments gone after kill -9 + stop."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.launch import build_manifest
from pipeline.runtime.rundir import ShmOptions
from pipeline.transport.shm import run_prefix, segment_dir
from tests.conftest import Launched, wait_for


def _write(tmp: Path, extra: str = "") -> Path:
    p = tmp / "launch.yaml"
    p.write_text(textwrap.dedent("""
        name: shmg
        nodes:
          cam: {run: tests.graph_nodes:Cam, params: {loan: true}}
          view: {run: tests.graph_nodes:FrameCheck, inputs: {image: {topic: cam/image, queue: drop_oldest, depth: 7}}}
    """) + extra)
    return p


def test_topic_options_reach_the_manifest_and_slots_outlast_the_deepest_queue(tmp_path: Path) -> None:
    g = load_graph(_write(tmp_path, "topics:\n  cam/image: {shm: off, shm_threshold: 1000}\n"))
    m = build_manifest(g, tmp_path)
    assert m.topics["cam/image"].shm == ShmOptions(shm="off", shm_threshold=1000, shm_slots=9)
    assert m.topics["view/diagnostics"].shm == ShmOptions(shm="auto", shm_threshold=65536, shm_slots=4)


@pytest.mark.parametrize("bad, match", [
    ("topics:\n  cam/nope: {shm: on}\n", r"topics.cam/nope: unknown topic 'cam/nope'"),
    ("topics:\n  cam/image: {shm: maybe}\n", r"topics.cam/image.shm"),
    ("topics:\n  cam/image: {shm_slots: 99}\n", r"topics.cam/image.shm_slots: expected 2 to 62, got 99"),
    ("topics:\n  cam/image: {colour: red}\n", r"topics.cam/image"),
])
def test_bad_topic_options_name_the_key(tmp_path: Path, bad: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_graph(_write(tmp_path, bad))


def test_loaned_frames_flow_and_stop_after_kill_9_leaves_no_segment(tmp_path: Path, run_base: Path) -> None:
    g = Launched(_write(tmp_path), run_base)
    try:
        pids = wait_for(g.node_pids, 30, "nodes started")
        run_dir = Path(g.manifest()["run_dir"])  # type: ignore[index]
        wait_for(lambda: "[view] INFO frames" in g.output(), 30, "frames at the viewer")
        os.kill(pids["cam"], signal.SIGKILL)  # no respawn: its segment stays until the launcher stops
        prefix = run_prefix(run_dir) + "."
        assert [n for n in os.listdir(segment_dir(run_dir)) if n.startswith(prefix)]
        os.kill(g.proc.pid, signal.SIGINT)
        rc, log = g.wait(timeout=15)
        assert "torn frame" not in log
        assert not [n for n in os.listdir(segment_dir(run_dir)) if n.startswith(prefix)]
    finally:
        g.kill()

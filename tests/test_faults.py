"""Fault injection on launched graphs: restarts, slow consumers, late joiners."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.conftest import Launched, pid_alive, wait_for


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(text)
    return p


def lines(path: Path) -> list[list[float]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_subscriber_resumes_when_its_publisher_restarts(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    path = write(tmp_path, f"""
nodes:
  src:
    run: tests.graph_nodes:Ramp
    params: {{count: 1000000, per_tick: 1, period_s: 0.01, linger: true}}
    respawn: {{max: 2, backoff_s: 0.1}}
  sink: {{run: tests.graph_nodes:Collect, params: {{out: {out}}}, inputs: {{tracks: src/tracks}}}}
""")
    g = launch(path)
    pids = wait_for(g.node_pids, 30, "nodes started")
    wait_for(lambda: len(lines(out)) > 5, 30, "messages before the restart")
    os.kill(pids["src"], signal.SIGKILL)
    wait_for(lambda: (p := g.node_pids()) and p["src"] != pids["src"] and pid_alive(p["src"]), 30, "src respawned")
    n_before = len(lines(out))
    # The respawned source counts from 1 again: the same subscriber (never restarted) receives it.
    wait_for(lambda: len(lines(out)) > n_before + 5 and lines(out)[-1][0] < 50, 30, "messages from the new src")
    assert g.node_pids()["sink"] == pids["sink"]


def _fast_source_slow_consumer(tmp_path: Path, out: Path, slow_s: float, queue: str) -> Path:
    """A source at ~1000 messages/s into a consumer taking `slow_s` per message through `queue`."""
    return write(tmp_path, f"""
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: 100000000, per_tick: 5, period_s: 0.005, linger: true}}}}
  slow:
    run: tests.graph_nodes:Collect
    params: {{out: {out}, slow_s: {slow_s}}}
    inputs: {{tracks: {{topic: src/tracks, {queue}}}}}
""")


def test_slow_latest_consumer_gets_fresh_messages_and_never_blocks_the_publisher(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    path = _fast_source_slow_consumer(tmp_path, out, 0.05, "queue: latest")
    g = launch(path)
    pids = wait_for(g.node_pids, 30, "nodes started")
    wait_for(lambda: len(lines(out)) >= 10, 30, "the slow consumer's first messages")
    rss0 = rss_mb(pids["slow"])
    first = lines(out)
    wait_for(lambda: len(lines(out)) >= len(first) + 40, 30, "40 more messages at 20 per second")
    got = lines(out)[len(first):]
    ids = np.array([r[0] for r in got])
    ages = np.array([r[-1] for r in got])
    # The publisher runs at ~1000/s whatever the consumer does; the consumer sees only the newest:
    # ids jump by about 50 per callback, and a message is at most about one callback old.
    assert np.median(np.diff(ids)) > 20, np.diff(ids)
    assert np.percentile(ages, 90) < 100, ages
    assert rss_mb(pids["slow"]) - rss0 < 5.0


def test_drop_oldest_keeps_at_most_depth_and_stays_fresh(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    path = _fast_source_slow_consumer(tmp_path, out, 0.02, "queue: drop_oldest, depth: 3")
    g = launch(path)
    wait_for(g.node_pids, 30, "nodes started")
    wait_for(lambda: len(lines(out)) >= 60, 30, "60 messages")
    ages = np.array([r[-1] for r in lines(out)[20:]])
    # at most `depth` queued messages of 20 ms each (+ those in flight) ahead of the one being handled
    assert np.percentile(ages, 90) < 3 * 20 + 60, ages

"""`drivecast topic ...` attaches to a running graph from another process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, Launched, wait_for


def cli(run_base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_topic_tools_on_a_running_graph(tmp_path: Path, run_base: Path, launch: Callable[..., Launched]) -> None:
    path = tmp_path / "launch.yaml"
    path.write_text("name: peek\nnodes:\n  sim: {run: nodes.sim:TrafficSim, params: {agents: 10, rate_hz: 20}}\n"
                    "  printer: {run: nodes.printer:TrackPrinter, inputs: {tracks: sim/tracks}}\n")
    g = launch(path)
    wait_for(g.node_pids, 30, "nodes started")

    r = cli(run_base, "topic", "list")
    assert r.returncode == 0, r.stderr
    assert re.search(r"sim/tracks\s+drivecast/Tracks\s+-> printer.tracks\[drop_oldest\]", r.stdout)

    r = cli(run_base, "topic", "echo", "sim/tracks", "-n", "2", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("drivecast/Tracks seq=") == 2
    assert re.search(r"xy: float32\[\d+, 2\]", r.stdout)

    r = cli(run_base, "topic", "hz", "sim/tracks", "-n", "2", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    rates = [float(x) for x in re.findall(r"average rate: ([\d.]+) Hz", r.stdout)]
    assert rates and 15 < rates[-1] < 25, r.stdout

    r = cli(run_base, "topic", "bw", "sim/tracks", "-n", "1", "--timeout", "20")
    assert r.returncode == 0 and "KiB/s from" in r.stdout, r.stdout + r.stderr

    r = cli(run_base, "topic", "echo", "sim/nope", "-n", "1")
    assert r.returncode == 2 and "graph 'peek' has no topic 'sim/nope'" in r.stderr

    os.kill(g.proc.pid, signal.SIGINT)
    assert g.wait(timeout=10)[0] == 130


def test_topic_without_a_running_graph_is_a_clear_error(run_base: Path) -> None:
    r = cli(run_base, "topic", "list")
    assert r.returncode == 2
    assert r.stderr.startswith(f"ERROR: no running graph found in {run_base}")


def _sim_graph(tmp_path: Path, launch: Callable[..., Launched], name: str) -> Launched:
    """A running graph `name` of one 20 Hz simulator."""
    path = tmp_path / "launch.yaml"
    path.write_text(f"name: {name}\nnodes:\n  sim: {{run: nodes.sim:TrafficSim, params: {{agents: 4, rate_hz: 20}}}}\n")
    g = launch(path)
    wait_for(g.node_pids, 30, "nodes started")
    return g


def test_run_may_follow_the_subcommand_and_hz_says_its_window_in_seconds(
        tmp_path: Path, run_base: Path, launch: Callable[..., Launched]) -> None:
    _sim_graph(tmp_path, launch, "demo")
    for args in (("topic", "--run", "demo", "list"), ("topic", "list", "--run", "demo")):
        r = cli(run_base, *args)
        assert r.returncode == 0 and "graph 'demo'" in r.stdout, (args, r.stdout + r.stderr)
    r = cli(run_base, "topic", "hz", "sim/tracks", "--run", "demo", "-n", "1", "--window", "0.5", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert re.search(r"window: 0\.5 s, \d+ messages", r.stdout), r.stdout


def test_topic_tools_stopped_by_a_signal_exit_like_launch(
        tmp_path: Path, run_base: Path, launch: Callable[..., Launched]) -> None:
    _sim_graph(tmp_path, launch, "quiet")
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "topic", "echo", "sim/tracks"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None
            assert p.stdout.readline().startswith("drivecast/Tracks seq="), "echo printed a message"
            p.send_signal(sig)
            assert p.wait(timeout=10) == code
        finally:
            p.kill()
            p.communicate()

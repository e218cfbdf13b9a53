"""A node without inputs sleeps between its timers: it neither spins a core nor loses its rate."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Launched, wait_for

WINDOW_S = 3.0


def cpu_s(pid: int) -> float:
    """User plus system CPU time of process `pid`, in seconds (/proc/PID/stat utime and stime)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_source_node_at_10_hz_uses_under_5_percent_of_a_core_and_keeps_its_rate(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    path = tmp_path / "launch.yaml"
    path.write_text(f"""
name: idle
nodes:
  sim: {{run: nodes.sim:TrafficSim, params: {{agents: 4, rate_hz: 10}}}}
  sink: {{run: tests.graph_nodes:Collect, params: {{out: {out}}}, inputs: {{tracks: sim/tracks}}}}
""")
    g = launch(path)
    pids = wait_for(g.node_pids, 30, "the node processes")
    wait_for(lambda: lines(out) >= 2, 30, "the sink to receive the simulator's tracks")
    cpu0, n0, t0 = cpu_s(pids["sim"]), lines(out), time.monotonic()
    time.sleep(WINDOW_S)  # the measuring window, not synchronisation
    cpu1, n1, t1 = cpu_s(pids["sim"]), lines(out), time.monotonic()
    share, rate_hz = (cpu1 - cpu0) / (t1 - t0), (n1 - n0) / (t1 - t0)
    os.kill(g.proc.pid, signal.SIGINT)
    rc, log = g.wait(timeout=30)
    print(f"sim: {share:.1%} of a core, {rate_hz:.2f} Hz over {t1 - t0:.2f} s")
    assert share < 0.05, f"the simulator used {share:.0%} of a core while publishing at 10 Hz\n{log[-3000:]}"
    assert 9.0 <= rate_hz <= 11.0, f"the simulator published at {rate_hz:.2f} Hz, not 10\n{log[-3000:]}"
    assert "Traceback" not in log

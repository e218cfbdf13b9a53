"""Launch files are bounded (size, node count, params per node) and a launcher stopped at any moment
of its start-up or run exits with 130/143 within 5 s, leaving no node behind. The graphs stopped during
start-up are of `tests.gated_import_node:Gated`, whose import in a node process blocks (up to 30 s,
until a gate file appears), so they are still starting when the test stops them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import MAX_FILE_BYTES, MAX_NODES, MAX_PARAMS_BYTES, load_graph
from tests.conftest import REPO, Launched, pid_alive, wait_for


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(text)
    return p


def cli_launch(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "launch", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_a_launch_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "launch.yaml"
    with path.open("w") as fh:  # 8 MiB of comments: about 3 s to parse
        fh.write("nodes: {sim: {run: nodes.sim:TrafficSim}}\n")
        fh.writelines("# " + "x" * 1021 + "\n" for _ in range(8 * 1024))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^{path}: launch file larger than the limit of {MAX_FILE_BYTES} bytes"):
        load_graph(path)
    assert time.monotonic() - t0 < 0.5
    done = cli_launch(path)
    assert done.returncode == 2, done.stderr
    assert f"ERROR: {path}: launch file larger than the limit of 1048576 bytes (1 MiB)" in done.stderr


def test_a_launch_file_that_is_no_regular_file_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^/dev/zero: launch file larger than the limit"):
        load_graph("/dev/zero")


def test_a_launch_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "launch.yaml"
    path.write_bytes(b"nodes: {}\n# \xff\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text \(byte 12\)"):
        load_graph(path)


def test_a_graph_of_more_nodes_than_the_limit_is_refused(tmp_path: Path) -> None:
    n = MAX_NODES + 1
    path = write(tmp_path, "nodes:\n" + "".join(f"  n{i}: {{run: nodes.sim:TrafficSim}}\n" for i in range(n)))
    with pytest.raises(ConfigError, match=rf"^{path}: nodes: {n} nodes, more than the limit of {MAX_NODES}$"):
        load_graph(path)
    done = cli_launch(path)
    assert done.returncode == 2, done.stderr
    assert f"nodes: {n} nodes, more than the limit of 256" in done.stderr


def test_params_over_the_limit_per_node_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"nodes:\n  sim: {{run: nodes.sim:TrafficSim, params: {{note: {'x' * MAX_PARAMS_BYTES}}}}}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: nodes.sim.params: larger than the limit of 65536 bytes per node"):
        load_graph(path)
    done = cli_launch(path)
    assert done.returncode == 2, done.stderr
    assert "nodes.sim.params: larger than the limit of 65536 bytes per node" in done.stderr


def test_an_alias_bomb_in_params_is_refused_at_once(tmp_path: Path) -> None:
    """Nine levels of nine aliases: 387 million strings if expanded; the size walk stops at the limit."""
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = write(tmp_path, "nodes:\n  sim:\n    run: nodes.sim:TrafficSim\n    params:\n"
                 + "".join(f"      {line}\n" for line in levels))
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="nodes.sim.params: larger than the limit"):
        load_graph(path)
    assert time.monotonic() - t0 < 2.0


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of a session: the launcher and its nodes (Launched starts a new one)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(d.name))
    return out


def _catches_sigterm(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _stop_and_watch(g: Launched, sig: signal.Signals) -> tuple[int, str, float, int]:
    """Send `sig`, then watch the session until the launcher exits: exit code, log, seconds taken and the
    most node processes seen at once."""
    os.kill(g.proc.pid, sig)
    t0 = time.monotonic()
    most = 0
    while g.proc.poll() is None and time.monotonic() - t0 < 10:
        most = max(most, len(_session(g.proc.pid)) - 1)
        time.sleep(0.005)  # polling interval of a deadline wait
    elapsed = time.monotonic() - t0
    rc, log = g.wait(timeout=10)
    return rc, log, elapsed, most


def _slow_graph(tmp_path: Path, n: int) -> Path:
    return write(tmp_path, "name: slow\nnodes:\n"
                 + "".join(f"  n{i}: {{run: tests.gated_import_node:Gated}}\n" for i in range(n)))


def test_sigterm_during_start_up_stops_it_at_once_and_leaves_no_node(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    n = 40
    g = launch(_slow_graph(tmp_path, n))

    def first_pid() -> int:
        m = g.manifest()
        return next((e["pid"] for e in m["nodes"].values() if e["pid"]), 0) if m else 0

    pid = wait_for(first_pid, 30, "the first node to run")
    rc, log, elapsed, most = _stop_and_watch(g, signal.SIGTERM)
    assert rc == 143, log
    assert elapsed < 5.0, f"shutdown took {elapsed:.2f} s"
    assert most < n, f"{most} nodes ran at once: start-up went on after SIGTERM"
    assert "start-up interrupted after " in log and f" of {n} nodes" in log, log
    assert not _session(g.proc.pid), "orphan node processes"
    assert not pid_alive(pid)
    assert not list(g.run_base.glob("*/manifest.json")), "run directory left behind"


def test_a_stop_at_random_moments_of_start_up_or_run_ends_everything_within_5_s(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """20 stops, SIGINT and SIGTERM in turn, from the moment the launcher catches them (it still loads
    the file: importing a module takes a while): ten during the start-up of a graph whose nodes are
    still importing, ten within the first 4 s of the shipped launch.yaml (loading models, then running).
    Two streams at once, seeded, so a failure can be replayed."""
    slow = _slow_graph(tmp_path, 12)
    failures: list[str] = []

    def stream(seed: int, path: Path, longest_s: float) -> None:
        try:
            rounds(random.Random(seed), path, longest_s)
        except BaseException as exc:  # a thread's exception would not fail the test by itself
            failures.append(f"{path.name}: {exc!r}")

    def rounds(rand: random.Random, path: Path, longest_s: float) -> None:
        for round_ in range(10):
            sig = (signal.SIGINT, signal.SIGTERM)[round_ % 2]
            delay = rand.uniform(0.0, longest_s)
            g = launch(path)
            wait_for(lambda g=g: _catches_sigterm(g.proc.pid), 30, "the launcher to catch SIGTERM")
            time.sleep(delay)  # not a synchronisation: the random moment of the stop is what is tested
            rc, log, elapsed, _ = _stop_and_watch(g, sig)
            what = f"{path.name} round {round_}: {sig.name} {delay:.3f} s after the handlers were installed"
            if rc != 128 + sig or elapsed >= 5.0 or "Traceback" in log or _session(g.proc.pid):
                failures.append(f"{what}: exit {rc}, {elapsed:.2f} s, orphans {_session(g.proc.pid)}\n{log}")

    threads = [threading.Thread(target=stream, args=(24, slow, 1.5)),
               threading.Thread(target=stream, args=(25, REPO / "launch.yaml", 4.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, "\n".join(failures)

"""Shared test helpers: deadlines instead of sleeps, and launched graphs that are always cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline wait


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Launched:
    """A `drivecast launch` subprocess with its own run directory."""

    def __init__(self, launch_file: Path, run_base: Path, *args: str) -> None:
        self.run_base = run_base
        env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "launch", str(launch_file), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self._lines.append(raw.decode(errors="replace"))

    def output(self) -> str:
        return "".join(self._lines)

    def manifest(self) -> dict[str, Any] | None:
        for path in self.run_base.glob("*/manifest.json"):
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
        return None

    def node_pids(self) -> dict[str, int] | None:
        m = self.manifest()
        if not m:
            return None
        pids = {n: e["pid"] for n, e in m["nodes"].items()}
        return pids if all(pids.values()) else None

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the graph did not end within {timeout:g} s; its output so far:\n{self.output()[-6000:]}")
        self._reader.join(timeout=5)
        return self.proc.returncode, self.output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


@pytest.fixture
def run_base() -> Iterator[Path]:
    """A short run directory base (ipc socket paths must stay under ~100 characters)."""
    d = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
    yield d
    from pipeline.transport.shm import remove_segments

    for run in [d, *(p for p in d.iterdir() if p.is_dir())]:
        remove_segments(run)  # what a graph killed mid-test left in /dev/shm (the launcher removes them otherwise)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def launch(run_base: Path) -> Iterator[Callable[..., Launched]]:
    started: list[Launched] = []

    def start(launch_file: Path, *args: str) -> Launched:
        launched = Launched(launch_file, run_base, *args)
        started.append(launched)
        return launched

    yield start
    for launched in started:
        pids = launched.node_pids() or {}
        launched.kill()
        for pid in pids.values():  # no orphan survives a failed test
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Publishers and subscribers to close (linger 0) at the end of the test, even on failure."""
    items: list[Any] = []
    yield items
    for item in reversed(items):
        item.close()


def connected(pub: Any, sub: Any, timeout: float = 5.0) -> None:
    """Send probes until the subscriber gets one (ZeroMQ's slow joiner), then drop the probes."""
    from pipeline.wire.codec import encode
    from pipeline.wire.messages import Clock

    def probe() -> bool:
        pub.send(encode(Clock(frame_id="probe")), lambda: False)
        return bool(sub.sock.poll(20))
    wait_for(probe, timeout, f"subscriber of {sub.topic} to connect", interval=0)
    wait_for(lambda: not take(sub) and not sub.sock.poll(20), timeout, "probes to drain", interval=0)
    sub.dropped = 0


def take(sub: Any) -> list[list[Any]]:
    """Everything a Subscriber has queued now, its queue emptied."""
    q = sub.drain()
    out = list(q)
    q.clear()
    return out


# A player replaying `file` losslessly into a predictor node (format with file, predictor, params).
REPLAY_GRAPH = """\
name: replay
nodes:
  player:
    run: nodes.player:Player
    params: {{file: {file}}}
  predictor:
    run: {predictor}
    params: {params}
    inputs: {{tracks: {{topic: player/tracks, queue: block}}}}
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts in their own session (start_new_session=True): each session is killed at
    the test's end, even on failure, and its pipes are closed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is left (tests that start process groups check this)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True

"""Queues are bounded in bytes: a stalled consumer of camera frames over tcp holds tens of MB, not GB.

ZeroMQ's high-water marks count messages (1,000 at a subscriber): 2.7 MB frames arriving while a
callback is stuck filled gigabytes. Both ends now lower the mark once messages are large
(`pipeline.transport.endpoints.bounded_hwm`, input option `max_mb`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from tests.conftest import Launched, wait_for

ROWS = 2640  # 2640 x 1024 x 1 uint8: 2.7 MB per frame


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.parametrize("queue", ["latest", "block"])
def test_a_stalled_consumer_of_large_frames_over_tcp_stays_bounded(
        tmp_path: Path, launch: Callable[..., Launched], queue: str) -> None:
    path = tmp_path / "cam.yaml"
    path.write_text(f"""
name: cam
transport: {{kind: tcp}}
insecure: true
nodes:
  cam: {{run: tests.graph_nodes:Cam, params: {{rows: {ROWS}, period_s: 0.02}}}}
  slow:
    run: tests.graph_nodes:Stall
    params: {{dir: {tmp_path}, stall_s: 6}}
    inputs: {{image: {{topic: cam/image, queue: {queue}, max_mb: 32}}}}
""")
    g = launch(path)
    wait_for(lambda: (tmp_path / "stalled").exists(), 60, "the consumer to stall on its first frame")
    pids = wait_for(g.node_pids, 10, "the node pids")
    start = {n: rss_mb(pid) for n, pid in pids.items()}
    peak = dict(start)

    def resumed() -> bool:
        for n, pid in pids.items():
            peak[n] = max(peak[n], rss_mb(pid))
        return (tmp_path / "resumed").exists()

    wait_for(resumed, 30, "the consumer to resume", interval=0.1)
    # 6 s at 50 Hz is 300 frames, 800 MB: a queue of 1,000 messages held them all (block: the
    # publisher waits once the queues are full).
    growth = {n: peak[n] - start[n] for n in pids}
    assert growth["slow"] < 120, growth  # 32 MiB in ZeroMQ's queue, plus the kernel's socket buffers
    assert growth["cam"] < 120, growth  # 64 MiB (the default) waiting for that subscriber
    # and it goes on: new frames keep arriving after the stall
    seqs = tmp_path / "seqs"
    stalled_at = int((tmp_path / "stalled").read_text())
    wait_for(lambda: seqs.exists() and int(seqs.read_text().split()[-1]) > stalled_at + 300, 30,
             "frames newer than the stall to arrive")


def test_max_mb_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("""
nodes:
  cam: {run: tests.graph_nodes:Cam}
  slow: {run: tests.graph_nodes:FrameCheck, inputs: {image: {topic: cam/image, max_mb: 0}}}
""")
    with pytest.raises(ConfigError, match=r"nodes\.slow\.inputs\.image\.max_mb: expected 1 to 65536 \(MiB\), got 0"):
        load_graph(path)

"""Queues are bounded in bytes: a stalled consumer of camera frames over tcp holds tens of MB, not GB.

ZeroMQ's high-water marks count messages (1,000 at a subscriber): 2.7 MB frames arriving while a
callback is stuck filled gigabytes. Both ends now lower the mark once messages are large
(`pipeline.transport.endpoints.bounded_hwm`, input option `max_mb`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.transport.publisher import Publisher
from pipeline.transport.subscriber import Subscriber
from pipeline.wire.codec import encode, peek_header
from pipeline.wire.messages import Image
from tests.conftest import Launched, connected, take, wait_for

TOPIC = "cam/image"
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


# libzmq cannot lower a high-water mark on a pipe that has carried messages: the writer counts
# what its reader acknowledged, which the reader does every half of the *old* mark, so a writer
# can find itself "full" under the new mark while its reader has taken everything, and neither
# moves again (libzmq issue 2509). Each case below reaches that state on the first try.
def _send(pub: Publisher, data: np.ndarray, seq: int) -> bool:
    """False when a lossless send waited 10 s for room."""
    deadline = time.monotonic() + 10
    return pub.send(encode(Image(data=data, seq=seq)), lambda: time.monotonic() > deadline)


@pytest.fixture()
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _pair(ctx: zmq.Context[Any], tmp_path: Path, queue: str, bounded: str) -> tuple[Publisher, Subscriber]:
    """Only the `bounded` end ("pub" or "sub") has a byte budget that large messages reach."""
    ep, lossless = f"ipc://{tmp_path}/p.sock", f"ipc://{tmp_path}/l.sock"
    unbounded = 1 << 50
    pub = Publisher(ctx, TOPIC, ep, lossless, shm="off", **({} if bounded == "pub" else {"max_bytes": unbounded}))
    sub = Subscriber(ctx, TOPIC, lossless if queue == "block" else ep, queue, depth=1000, shm="off",
                     **({} if bounded == "sub" else {"max_bytes": unbounded}))
    connected(pub, sub)
    return pub, sub


def _stream(pub: Publisher, sub: Subscriber, seqs: range, rows: int = 1) -> None:
    """Send each message once the one before it has arrived (a lossy publisher drops a burst)."""
    for seq in seqs:
        assert _send(pub, np.zeros((rows, 1024, 1), np.uint8), seq), f"message {seq}: the lossless send waited 10 s"
        got = wait_for(lambda: take(sub), 10, f"message {seq}", interval=0.001)
        assert [peek_header(f[1]).seq for f in got] == [seq]


def _goes_on(pub: Publisher, sub: Subscriber, first: int, got: list[int]) -> None:
    """Ten more messages arrive after `got`, from `first` on: in order, and all of them when
    lossless (lowering a lossy queue's mark loses what was on the way)."""
    start = len(got)
    seq = first

    def ten() -> bool:
        nonlocal seq
        assert _send(pub, np.zeros((1, 1024, 1), np.uint8), seq), f"message {seq}: the lossless send waited 10 s"
        seq += 1
        got.extend(peek_header(f[1]).seq for f in take(sub))
        return len(got) >= start + 10
    wait_for(ten, 10, f"10 messages from {first} on (got {got})", interval=0.001)
    assert got == sorted(got) and (sub.policy != "block" or got[:start + 10] == list(range(1, start + 11))), got


@pytest.mark.parametrize("queue", ["drop_oldest", "block"])
def test_a_subscriber_that_meets_a_large_message_goes_on_receiving(
        zctx: zmq.Context[Any], tmp_path: Path, queue: str) -> None:
    """The subscriber's own mark (1,000, acknowledged every 500) comes down to 64 after 300
    small messages: on 47e20ac nothing after the large one arrived."""
    pub, sub = _pair(zctx, tmp_path, queue, "sub")
    try:
        _stream(pub, sub, range(1, 301))
        _stream(pub, sub, range(301, 302), rows=1024)  # 1 MiB: 64 of them fill the 64 MiB budget
        _goes_on(pub, sub, 302, list(range(1, 302)))
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("queue", ["drop_oldest", "block"])
def test_a_publisher_that_sends_a_large_message_goes_on_delivering(
        zctx: zmq.Context[Any], tmp_path: Path, queue: str) -> None:
    """The publisher's mark per subscriber (100, or 1,000 lossless) comes down to 21 for 3 MiB
    after 30 small messages: on 47e20ac that subscriber got nothing more (lossless: the
    publisher waited for ever)."""
    pub, sub = _pair(zctx, tmp_path, queue, "pub")
    try:
        _stream(pub, sub, range(1, 31))
        assert _send(pub, np.zeros((3072, 1024, 1), np.uint8), 31), "the lossless send waited 10 s"
        _goes_on(pub, sub, 32, list(range(1, 31)))
    finally:
        sub.close()
        pub.close()

"""pipeline/transport/publisher.py and subscriber.py: zero-copy receive, and the queue policies latest / drop_oldest / block.

The policy tests run over plain ZeroMQ and over shared memory (`shm` off / on); the shared-memory
path itself is tested in tests/test_shm.py.

Deadlines everywhere, no sleeps as synchronisation: a subscriber is known to be connected once it
has received a probe, and bursts go over `inproc://`, where a send returns only once the message is
in the subscriber's pipe, so "the burst has arrived" needs no waiting at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from pipeline.transport.publisher import END_OF_STREAM, Publisher
from pipeline.transport.subscriber import Subscriber
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Image
from tests.conftest import connected, take, wait_for

CAMERA = (720, 1280, 3)  # 2.7 MB


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes any socket a failed test left open


def _seqs(messages: list[list[Any]]) -> list[int]:
    return [decode(m[1:])[0].seq for m in messages]


def _burst(pub: Publisher, n: int) -> None:
    """`n` 64 KiB images (the shared-memory threshold), every byte of image `seq` equal to `seq`."""
    for seq in range(1, n + 1):
        pub.send(encode(Image(data=np.full((64, 1024, 1), seq, dtype=np.uint8), seq=seq)), lambda: False)


def _checked_seqs(messages: list[list[Any]]) -> list[int]:
    seqs = []
    for m in messages:
        img = decode(m[1:], expect=Image)[0]
        assert (img.data == img.seq).all(), f"image {img.seq} holds other bytes"
        seqs.append(img.seq)
    return seqs


def _pair(ctx: zmq.Context, closing: list[Any], endpoint: str, policy: str, depth: int = 10,
          shm: str = "auto", run_dir: Path | None = None) -> tuple[Publisher, Subscriber]:
    # A ring deeper than any queue here: a queued frame whose slot was rewritten would be dropped
    # (tests/test_shm.py pins that), which is not what these tests are about.
    pub = Publisher(ctx, "cam/image", endpoint, shm=shm, run_dir=run_dir, shm_slots=8)
    closing.append(pub)
    sub = Subscriber(ctx, "cam/image", endpoint, policy, depth, shm=shm, run_dir=run_dir)
    closing.append(sub)
    return pub, sub


def test_a_received_camera_frame_shares_memory_with_the_zmq_frame(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, f"ipc://{tmp_path}/cam.sock", "latest", shm="off")
    connected(pub, sub)
    sent = np.random.default_rng(0).integers(0, 255, CAMERA, dtype=np.uint8)
    pub.send(encode(Image(data=sent, seq=7)), lambda: False)
    got = wait_for(lambda: take(sub), 5, "the camera frame")
    frames = got[-1]
    msg, _ = decode(frames[1:], expect=Image)
    assert isinstance(frames[-1], zmq.Frame)
    frame_view = np.frombuffer(frames[-1].buffer, dtype=np.uint8)
    # Same address and the same bytes: the array is a view of ZeroMQ's buffer, not a copy.
    assert msg.data.__array_interface__["data"][0] == frame_view.__array_interface__["data"][0]
    assert np.shares_memory(msg.data, frame_view)
    assert msg.data.shape == CAMERA and not msg.data.flags.writeable
    assert np.array_equal(msg.data, sent)


@pytest.mark.parametrize("shm", ["off", "on"])
def test_latest_keeps_only_the_newest_message_of_a_burst(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path, shm: str) -> None:
    pub, sub = _pair(ctx, closing, "inproc://latest", "latest", shm=shm, run_dir=tmp_path)
    connected(pub, sub)
    _burst(pub, 20)
    assert _checked_seqs(take(sub)) == [20]
    assert sub.dropped == 19


@pytest.mark.parametrize("shm", ["off", "on"])
@pytest.mark.parametrize("depth", [1, 5])
def test_drop_oldest_keeps_the_newest_depth_messages(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path, depth: int, shm: str) -> None:
    pub, sub = _pair(ctx, closing, "inproc://drop", "drop_oldest", depth, shm=shm, run_dir=tmp_path)
    connected(pub, sub)
    _burst(pub, 20)
    assert _checked_seqs(take(sub)) == list(range(21 - depth, 21))
    assert sub.dropped == 20 - depth


def test_block_loses_nothing_with_a_slow_consumer_and_the_publisher_waits(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _lossless_pair(ctx, closing, tmp_path)
    n = 6000  # more than the send and receive high-water marks together (1000 + 1000) plus kernel buffers
    payload = np.zeros((1, 4096, 1), dtype=np.uint8)
    got: list[int] = []
    waits = 0

    def consume_a_little() -> bool:
        # Called by the publisher only while it is held back: the slow consumer takes a few.
        nonlocal waits
        waits += 1
        got.extend(_seqs(_take_at_most(sub, 50)))
        return False

    end = time.monotonic() + 30
    for seq in range(1, n + 1):
        assert pub.send(encode(Image(data=payload, seq=seq)), consume_a_little)
        assert time.monotonic() < end, "publisher stuck"

    def rest() -> bool:
        got.extend(_seqs(take(sub)))
        return len(got) >= n
    wait_for(rest, 10, f"all {n} messages")
    assert got == list(range(1, n + 1))
    assert waits > 0, "the publisher never had to wait: the test did not exercise back-pressure"
    assert sub.dropped == 0


def test_a_finished_publisher_waits_until_its_lossless_subscriber_has_taken_everything(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """A source that ends while a slow subscriber is thousands of messages behind keeps its socket
    until the subscriber has taken the end-of-stream message (and so all before it): a fixed
    linger on close used to drop the rest, and the graph waited forever for them."""
    pub, sub = _lossless_pair(ctx, closing, tmp_path)
    n = 3000
    payload = np.zeros((1, 4096, 1), dtype=np.uint8)
    got: list[int] = []
    ended: list[bool] = []

    def consume_a_little() -> bool:  # the publisher's wait callbacks: a slow consumer takes a few
        for frames in _take_at_most(sub, 20):
            if len(frames) == 2 and bytes(frames[1]) == END_OF_STREAM:
                ended.append(True)
                sub.end()  # what the runner does
            else:
                got.extend(_seqs([frames]))
        return False

    for seq in range(1, n + 1):
        assert pub.send(encode(Image(data=payload, seq=seq)), consume_a_little)
    assert len(got) < n, "the subscriber was not behind: the test would not show anything"
    assert pub.end_of_stream(consume_a_little)
    assert got == list(range(1, n + 1)) and ended == [True]


def test_end_of_stream_gives_up_on_a_subscriber_that_never_finishes(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _lossless_pair(ctx, closing, tmp_path)
    pub.send(encode(Image(data=np.zeros((1, 8, 1), np.uint8), seq=1)), lambda: False)
    t0 = time.monotonic()
    assert not pub.end_of_stream(lambda: False, drain_s=0.3)
    assert time.monotonic() - t0 < 5
    interrupted = iter([False, True])
    assert not pub.end_of_stream(lambda: next(interrupted), drain_s=30)  # a stop signal ends the wait


def _lossless_pair(ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> tuple[Publisher, Subscriber]:
    """A publisher with one `block` subscriber, subscribed."""
    endpoint = f"ipc://{tmp_path}/lossless.sock"
    pub = Publisher(ctx, "src/tracks", f"ipc://{tmp_path}/lossy.sock", endpoint, lossless_subscribers=1)
    closing.append(pub)
    sub = Subscriber(ctx, "src/tracks", endpoint, "block")
    closing.append(sub)
    assert pub.wait_for_subscribers(5.0, lambda: False), "the lossless subscriber never subscribed"
    return pub, sub


def _take_at_most(sub: Subscriber, k: int) -> list[list[Any]]:
    q = sub.drain(max_block=k)
    out = [q.popleft() for _ in range(min(k, len(q)))]
    return out


@pytest.mark.parametrize("shm", ["off", "on"])
def test_a_publisher_with_a_stalled_latest_subscriber_never_blocks(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path, shm: str) -> None:
    pub, sub = _pair(ctx, closing, f"ipc://{tmp_path}/cam.sock", "latest", shm=shm)
    connected(pub, sub)
    frame = np.zeros((64, 1024, 1), dtype=np.uint8)  # 64 KiB: the kernel buffers fill quickly
    t0 = time.monotonic()
    for seq in range(1, 3001):
        assert pub.send(encode(Image(data=frame, seq=seq)), lambda: pytest.fail("the lossy publisher waited"))
    assert time.monotonic() - t0 < 10
    # The consumer wakes up: one message per drain, and soon a fresh one (not one queued in the stall).
    seq = 3000
    got: list[int] = []

    def fresh() -> bool:
        nonlocal seq
        seq += 1
        pub.send(encode(Image(data=frame, seq=seq)), lambda: False)
        taken = _seqs(take(sub))
        assert len(taken) <= 1
        got.extend(taken)
        return bool(got) and got[-1] > 3000
    wait_for(fresh, 10, "a message published after the stall", interval=0.005)

"""ZeroMQ sockets for topics: the publisher binds, subscribers connect, no broker.

Each topic has one lossy PUB socket (it drops for a subscriber whose queue is full, so a slow
`latest`/`drop_oldest` consumer never blocks the publisher) and, when some subscriber asked for
`block`, a second, lossless XPUB socket with ZMQ_XPUB_NODROP: the publisher waits while that
subscriber's queue is full (back-pressure), and before its first message it waits until the
expected lossless subscribers have subscribed, so nothing is lost to ZeroMQ's slow-joiner window.

Wire: `[topic, header, array frames...]` (see `pipeline.codec`). Frames are sent with
`copy=False`; pyzmq copies those under its copy threshold (64 kB), where copying is cheaper.
"""

from __future__ import annotations

import os
import socket as _socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from pipeline.errors import ConfigError

__all__ = ["Publisher", "Subscriber", "free_tcp_port", "ipc_endpoint"]

_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux


def ipc_endpoint(run_dir: Path, topic: str, lossless: bool = False) -> str:
    path = Path(run_dir) / (topic.replace("/", ".") + (".block" if lossless else "") + ".sock")
    if len(str(path)) > _IPC_PATH_MAX:
        raise ConfigError(f"ipc path {path} is longer than {_IPC_PATH_MAX} characters; "
                          "use a shorter run directory (DRIVECAST_RUN_DIR)")
    return f"ipc://{path}"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the launcher hands it to the publishing node)."""
    with _socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Publisher:
    """The sending side of one topic."""

    def __init__(self, ctx: zmq.Context, topic: str, endpoint: str, lossless_endpoint: str | None = None,
                 lossless_subscribers: int = 0, sndhwm: int = 100,
                 configure: Callable[[zmq.Socket], None] | None = None) -> None:
        """`configure` is applied to each socket before it binds (CURVE server keys)."""
        self.topic = topic
        self._topic = topic.encode()
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        if configure:
            configure(self.sock)
        _bind(self.sock, endpoint)
        self.lossless: zmq.Socket | None = None
        self._expected = lossless_subscribers
        self._subscribed = 0
        if lossless_endpoint:
            self.lossless = ctx.socket(zmq.XPUB)
            self.lossless.setsockopt(zmq.LINGER, 0)
            self.lossless.setsockopt(zmq.XPUB_NODROP, 1)
            self.lossless.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscribe is reported
            if configure:
                configure(self.lossless)
            _bind(self.lossless, lossless_endpoint)

    def _count_subscriptions(self) -> None:
        assert self.lossless is not None
        while self.lossless.poll(0):
            event = self.lossless.recv()
            if event[:1] == b"\x01":
                self._subscribed += 1
            elif event[:1] == b"\x00":
                self._subscribed = max(0, self._subscribed - 1)

    def wait_for_subscribers(self, deadline_s: float, stopped: Callable[[], bool]) -> bool:
        """Wait until the expected lossless subscribers have subscribed (or the deadline passes)."""
        if self.lossless is None:
            return True
        end = time.monotonic() + deadline_s
        while True:
            self._count_subscriptions()
            if self._subscribed >= self._expected:
                self._expected = 0  # later joiners (respawns) do not hold the publisher back
                return True
            if time.monotonic() > end or stopped():
                return False
            self.lossless.poll(50)

    def send(self, frames: list[Any], stopped: Callable[[], bool]) -> bool:
        """Send one message; on the lossless socket wait (in slices, so a stop is noticed) while a
        subscriber's queue is full. Returns False if a stop interrupted the wait."""
        parts = [self._topic, *frames]
        self.sock.send_multipart(parts, copy=False)
        if self.lossless is None:
            return True
        if self._expected:
            self.wait_for_subscribers(10.0, stopped)
        while True:
            try:
                self.lossless.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if stopped():
                    return False
                self.lossless.poll(100, zmq.POLLOUT)
                self._count_subscriptions()

    def close(self, linger_s: float = 2.0) -> None:
        """Close; the lossless socket keeps up to `linger_s` to flush what subscribers have not
        taken yet (a source that ends right after its last message loses nothing)."""
        self.sock.close(0)
        if self.lossless is not None:
            self.lossless.close(int(linger_s * 1000))


class Subscriber:
    """The receiving side of one input, with its queue policy.

    - `latest`: each drain keeps only the newest message (sensor streams: age stays about one period)
    - `drop_oldest`: keeps the newest `depth` messages
    - `block`: lossless, in order; the publisher waits when this queue is full
    Messages lost in ZeroMQ before reaching us show up as gaps in `seq` (counted by the runner).
    """

    def __init__(self, ctx: zmq.Context, topic: str, endpoint: str, policy: str = "block", depth: int = 10,
                 configure: Callable[[zmq.Socket], None] | None = None) -> None:
        """`configure` is applied to the socket before it connects (CURVE client keys)."""
        self.topic = topic
        self.policy = policy
        self.depth = depth
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A large receive HWM for every policy: ZeroMQ's I/O thread then moves whatever arrives
        # into this process at once, and `drain` sees all of it and applies the policy. With a small
        # HWM the backlog waited upstream (publisher pipe, kernel buffers) and a `latest` consumer
        # got messages hundreds of ms old. Memory stays bounded by what arrives during one callback.
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if configure:
            configure(self.sock)
        self.sock.connect(endpoint)
        self.dropped = 0
        self._queue: deque[list[zmq.Frame]] = deque()

    def drain(self, max_block: int = 64) -> deque[list[zmq.Frame]]:
        """Receive what is waiting, apply the policy, return the queue to process (oldest first)."""
        q = self._queue
        limit = max_block if self.policy == "block" else 100_000
        for _ in range(limit):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            q.append(frames)
            if self.policy == "latest" and len(q) > 1 or self.policy == "drop_oldest" and len(q) > self.depth:
                q.popleft()
                self.dropped += 1
        return q

    def close(self) -> None:
        self.sock.close(0)


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket file of a previous incarnation of this node
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {endpoint}: {exc}") from None

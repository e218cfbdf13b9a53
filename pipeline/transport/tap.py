"""Watch topics of a running graph from a tool (`drivecast record`, `drivecast view`).

A tap subscribes to each topic's plain ZeroMQ variant (never the shared-memory one), on the lossy
endpoint unless told otherwise, so watching never slows the graph down.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import zmq

from pipeline.transport.endpoints import LOSSLESS_HWM, QUEUE_BYTES, size_receive_queue

__all__ = ["Tap"]

_DRAIN = 1000  # messages taken from one socket per poll, so the caller's stop checks still run


class Tap:
    """SUB sockets on `endpoints` (topic -> endpoint)."""

    def __init__(self, endpoints: dict[str, str], rcvhwm: int = 1000,
                 configure: Callable[[zmq.Socket[Any], str], None] | None = None, max_bytes: int = QUEUE_BYTES,
                 lossless: Collection[str] = ()) -> None:
        """`configure(sock, topic)` runs before a socket connects (CURVE client keys); each socket
        queues `rcvhwm` messages, at most `max_bytes` worth, or for the `lossless` topics (their
        lossless endpoints) `endpoints.LOSSLESS_HWM` messages (`endpoints.size_receive_queue`)."""
        self.ctx = zmq.Context()
        self.max_bytes = max_bytes
        self.lossless = frozenset(lossless)
        self._hwm: dict[Any, int] = {}
        self._big: dict[Any, int] = {}  # from this message size on, `_size_queue` looks (0: the first message)
        self._endpoint: dict[Any, str] = {}
        self.poller = zmq.Poller()
        self.topics: dict[Any, str] = {}
        for topic, endpoint in endpoints.items():
            s = self.ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            self._hwm[s] = LOSSLESS_HWM if topic in self.lossless else rcvhwm
            self._big[s] = 0
            s.setsockopt(zmq.RCVHWM, self._hwm[s])
            s.setsockopt(zmq.SUBSCRIBE, topic.encode())
            if configure is not None:
                configure(s, topic)
            s.connect(endpoint)
            self.topics[s] = topic
            self._endpoint[s] = endpoint
            self.poller.register(s, zmq.POLLIN)

    def poll(self, timeout_ms: int) -> Iterator[tuple[str, list[zmq.Frame]]]:
        """(topic, [topic, header, arrays...]) of what arrives within `timeout_ms`."""
        for s, _ in self.poller.poll(timeout_ms):
            topic = self.topics[s]
            for _ in range(_DRAIN):
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if not self._big[s] or len(frames) > 2 and sum(map(len, frames)) > self._big[s]:
                    self._size_queue(s, sum(map(len, frames)))
                yield topic, frames

    def _size_queue(self, s: zmq.Socket[Any], nbytes: int) -> None:
        self._hwm[s], self._big[s] = size_receive_queue(s, self._endpoint[s], self._hwm[s], nbytes, self.max_bytes,
                                                        first=not self._big[s], lossless=self.topics[s] in self.lossless)

    def unsubscribe(self, topic: str) -> None:
        """Stop taking `topic` (on a lossless endpoint this tells its publisher we have it all)."""
        for s, t in self.topics.items():
            if t == topic:
                s.setsockopt(zmq.UNSUBSCRIBE, topic.encode())

    def close(self) -> None:
        for s in self.topics:
            s.close(0)
        self.ctx.term()

"""The sending side of a topic: one ZeroMQ XPUB socket, a lossless one when asked, shared memory.

The lossy socket drops for a subscriber whose queue is full, so a slow `latest`/`drop_oldest`
consumer never blocks the publisher. When some subscriber asked for `block`, a second, lossless
socket (ZMQ_XPUB_NODROP) makes the publisher wait while that queue is full, and before its first
message it waits for the expected lossless subscribers (ZeroMQ's slow-joiner window).

Wire: `[topic, header, array frames...]` (see `pipeline.wire.codec`). A subscriber on the same
machine subscribes to `b"\0" + topic` instead; it gets a large message as one frame,
`b"\0" + topic + b"\0"` and a body (`shm.BODY`, descriptor, header: one send rather than three),
the arrays copied once into shared memory (`pipeline.transport.shm`); smaller ones, or any while
every slot is held, go inline as `[b"\0" + topic, header, arrays...]`. The XPUB reports which
kinds of subscriber exist, so each kind gets its own variant and an absent kind nothing. A
publisher with shared memory off serves `b"\0"` subscribers inline, so a mismatch starves no one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline.transport.endpoints import LOSSLESS_HWM, QUEUE_BYTES, bind, byte_hwm, shm_namespace, shm_wanted
from pipeline.transport.shm import BODY, ShmWriter

__all__ = ["DRAIN_S", "END_OF_STREAM", "JOIN_S", "SHM_THRESHOLD", "Publisher", "send_message"]

# The second frame of `[topic, END_OF_STREAM]`: never a valid header (msgpack of a header starts with 0x98).
END_OF_STREAM = b"drivecast/end-of-stream"
# From this many array bytes per message on, a shared-memory subscriber gets a descriptor; below,
# ZeroMQ moving the bytes costs less than a memcpy plus four lock system calls.
SHM_THRESHOLD = 64 * 1024
_PREFIX_CHECK_S = 0.02  # between two looks at the XPUB's subscriptions once someone listens
DRAIN_S = 60.0  # longest a finished publisher waits for its lossless subscribers to take everything
# Longest a lossless publisher waits for its expected subscribers before its first message (what it
# sends earlier is lost to them): a node's start can take many seconds on a loaded machine.
JOIN_S = 60.0
_COPY_BELOW = zmq.COPY_THRESHOLD  # pyzmq copies smaller frames anyway (default 65536)
# pyzmq's constants are enum.IntFlag members, whose `|` and `&` run in Python: the per-message
# paths use plain ints.
_SNDMORE, _NOBLOCK, _POLLIN, _EVENTS = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.EVENTS)


class Publisher:
    """The sending side of one topic."""

    def __init__(self, ctx: zmq.Context[Any], topic: str, endpoint: str, lossless_endpoint: str | None = None,
                 lossless_subscribers: int = 0, sndhwm: int = 100,
                 configure: Callable[[zmq.Socket[Any]], None] | None = None, *, shm: str = "auto",
                 shm_threshold: int = SHM_THRESHOLD, shm_slots: int = 4,
                 run_dir: Path | str | None = None, max_bytes: int = QUEUE_BYTES) -> None:
        """`configure` is applied to each socket before it binds (CURVE server keys). `shm`,
        `shm_threshold`, `shm_slots`: the shared-memory path (see the module and
        `pipeline.transport.endpoints`); `run_dir` names the segments' namespace when the
        endpoint is not an ipc socket in the run directory. `max_bytes`: what may wait for one
        subscriber, `sndhwm` messages at most (fewer if the first message is large:
        `endpoints.byte_hwm`); for a lossless one `endpoints.LOSSLESS_HWM` messages."""
        self.topic = topic
        self._topic = topic.encode()
        self._shm_topic = b"\0" + self._topic
        self._shm_desc_topic = self._shm_topic + b"\0"
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._hwm, self._max_bytes = sndhwm, max_bytes
        self._sized = False  # whether the first message has set the mark
        if configure:
            configure(self.sock)
        bind(self.sock, endpoint)
        self._prefixes: set[bytes] = set()
        self._plain = self._shm = False
        self._next_check = 0.0
        self.shm_threshold = shm_threshold
        self._writer: ShmWriter | None = None
        namespace = shm_namespace(endpoint, run_dir)
        if shm_wanted(shm, endpoint) and namespace is not None:
            self._writer = ShmWriter(namespace, topic, shm_slots)
        self.lossless: zmq.Socket[Any] | None = None
        self._expected = lossless_subscribers
        self._subscribed = 0
        if lossless_endpoint:
            self.lossless = ctx.socket(zmq.XPUB)
            self.lossless.setsockopt(zmq.LINGER, 0)
            self.lossless.setsockopt(zmq.SNDHWM, LOSSLESS_HWM)
            self.lossless.setsockopt(zmq.XPUB_NODROP, 1)
            self.lossless.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscribe is reported
            if configure:
                configure(self.lossless)
            bind(self.lossless, lossless_endpoint)

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

    @property
    def shm_fallbacks(self) -> int:
        """Large messages sent inline to shared-memory subscribers because every slot was held."""
        return 0 if self._writer is None else int(self._writer.fallbacks)

    def _poll_prefixes(self) -> None:
        """Apply the (un)subscriptions waiting on the XPUB. Without XPUB_VERBOSE it reports the
        first subscriber of a prefix and the last one to leave: presence, which is all we need."""
        sock = self.sock
        changed = False
        while sock.getsockopt(_EVENTS) & _POLLIN:
            event = sock.recv()
            if event[:1] == b"\x01":
                self._prefixes.add(event[1:])
            elif event[:1] == b"\x00":
                self._prefixes.discard(event[1:])
            changed = True
        if changed:
            # b"" (a generic tool's subscription) matches every frame: it counts as plain.
            self._plain = any(self._topic.startswith(p) for p in self._prefixes)
            self._shm = self._shm_topic in self._prefixes

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray[Any, Any]:
        """A writable array to fill and then send as a message's (only) array without any copy:
        it lives in a free shared-memory slot when this topic has shared memory (the slot is
        locked against readers until the message is sent or the array dropped), else it is a
        plain array. Do not modify it after sending (as for any array sent zero-copy)."""
        dt = np.dtype(dtype)
        nbytes = dt.itemsize * math.prod(shape)
        view = self._writer.loan(nbytes) if self._writer is not None and nbytes >= self.shm_threshold else None
        if view is None:
            return np.empty(shape, dtype=dt)
        # Through a memoryview, so that the reference count of `view` tells whether the caller
        # still holds the array (numpy would otherwise point its base at the mapping itself).
        return np.frombuffer(view.data, dtype=dt).reshape(shape)

    def send(self, frames: list[Any], stopped: Callable[[], bool]) -> bool:
        """Send one message; on the lossless socket wait (in slices, so a stop is noticed) while a
        subscriber's queue is full. Returns False if a stop interrupted the wait."""
        now = time.monotonic()
        check = not self._prefixes or now >= self._next_check
        if check:
            # A subscriber of a kind not seen yet waits at most this long (ZeroMQ's slow joiner).
            self._next_check = now + _PREFIX_CHECK_S
            self._poll_prefixes()
        parts = [self._topic, *frames]
        if not self._sized:
            self._size_queues(sum(map(len, frames)))
        writer = self._writer
        # A loaned slot is rewritten later: whoever gets ZeroMQ frames of it gets a copy.
        loan = writer.loaned(frames[1:]) if writer is not None and writer.loans else -1
        if self._shm:
            self._send_shm(frames, loan)  # consumes the loan: the descriptor points at the slot
        elif writer is not None and loan >= 0:
            writer.drop_loan(loan)
        if self._plain:
            send_message(self.sock, parts, copy=loan >= 0)
        if check and writer is not None:
            writer.bells.accept()  # after the send: a bell only speeds up what ZeroMQ delivers anyway
        if self.lossless is None:
            return True
        if self._expected:
            self.wait_for_subscribers(JOIN_S, stopped)
        while True:
            try:
                send_message(self.lossless, parts, _NOBLOCK, copy=loan >= 0)
                return True
            except zmq.Again:
                if stopped():
                    return False
                self.lossless.poll(100, zmq.POLLOUT)
                self._count_subscriptions()

    def _size_queues(self, nbytes: int) -> None:
        """Before the first message: lower the mark if messages this large would fill more than
        `max_bytes` per subscriber, while no pipe has carried anything (`endpoints.byte_hwm`).
        Pipes made later (subscribers that join later) get the mark this socket was bound with.
        Shared memory needs no such bound: its ring has a fixed number of slots."""
        self._sized = True
        hwm = byte_hwm(nbytes, self._max_bytes, self._hwm)
        if hwm < self._hwm:
            self._hwm = hwm
            self.sock.setsockopt(zmq.SNDHWM, hwm)

    def _send_shm(self, frames: list[Any], loan: int) -> None:
        writer = self._writer
        if writer is not None and len(frames) > 1 and sum(len(f) for f in frames[1:]) >= self.shm_threshold:
            def send(descriptor: bytes) -> None:
                self.sock.send(b"".join((self._shm_desc_topic, BODY.pack(writer.seq, len(descriptor)),
                                         descriptor, frames[0])))
            if writer.write(frames[1:], send, loan, frames[0]):
                return
        if writer is not None:
            writer.inline()
        send_message(self.sock, [self._shm_topic, *frames])

    def end_of_stream(self, interrupted: Callable[[], bool], drain_s: float = DRAIN_S) -> bool:
        """After the last message of a stream that ended cleanly: send END_OF_STREAM to the
        lossless subscribers and wait (up to `drain_s`, or until `interrupted()`) until every one
        has unsubscribed, which a subscriber does once it has taken the end-of-stream message, so
        everything sent before it too (or when it goes away). Only then may the socket close: a
        fixed linger dropped what a slow subscriber had not taken yet. False if it gave up."""
        if self.lossless is None:
            return True
        end = time.monotonic() + drain_s
        sent = False
        while True:
            if not sent:
                try:
                    self.lossless.send_multipart([self._topic, END_OF_STREAM], flags=zmq.NOBLOCK)
                    sent = True
                except zmq.Again:
                    pass
            self._count_subscriptions()
            if sent and self._subscribed == 0:
                return True
            if time.monotonic() > end or interrupted():
                return False
            self.lossless.poll(50, zmq.POLLIN if sent else zmq.POLLOUT)

    def close(self, linger_s: float = 2.0) -> None:
        """Close; the lossless socket keeps up to `linger_s` to flush what subscribers have not
        taken yet (`end_of_stream` waits for them first after a clean finish). The topic's
        shared-memory segment is removed (readers keep their mapping until they let go)."""
        self.sock.close(0)
        if self.lossless is not None:
            self.lossless.close(int(linger_s * 1000))
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def send_message(sock: zmq.Socket[Any], parts: list[Any], flags: int = 0, copy: bool = False) -> None:
    """`sock.send_multipart(parts, flags, copy=copy)` without its per-part type checks in Python,
    and with parts under ZeroMQ's copy threshold sent as copies (no zmq.Frame built for them).
    Raises zmq.Again (with NOBLOCK) only before the first part is taken, after which ZeroMQ takes
    the whole message."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        sock.send(part, flags | _SNDMORE if i < last else flags, copy=copy or len(part) < _COPY_BELOW)

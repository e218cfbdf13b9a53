"""ZeroMQ sockets for topics: the publisher binds, subscribers connect, no broker.

Each topic has one lossy XPUB socket (it drops for a subscriber whose queue is full, so a slow
`latest`/`drop_oldest` consumer never blocks the publisher) and, when some subscriber asked for
`block`, a second, lossless XPUB socket with ZMQ_XPUB_NODROP: the publisher waits while that
subscriber's queue is full (back-pressure), and before its first message it waits until the
expected lossless subscribers have subscribed, so nothing is lost to ZeroMQ's slow-joiner window.

Wire: `[topic, header, array frames...]` (see `pipeline.wire.codec`). Frames of 64 kB and more are
sent without a copy, smaller ones are copied, which is cheaper (`send_message`, `recv_message`).

Shared memory (issue 8, `pipeline.transport.shm`): a subscriber on the same machine subscribes to the
prefix `b"\0" + topic` instead of `topic`. The lossy socket is an XPUB (a PUB that also reports
subscriptions), so the publisher knows which kinds of subscriber exist and sends each kind its own
variant, and nothing to an absent kind: to shared-memory subscribers, a message whose arrays total
at least `shm_threshold` bytes goes as one frame: `b"\0" + topic + b"\0"` and the body: the
writer's sequence number (8 bytes) and the descriptor's length (2 bytes, little-endian), the
descriptor, the header (one small send and receive rather than three, each of which costs more
than the rest of this hop's Python; `pipeline.transport.shm.BODY`), its arrays copied once
into a slot of the topic's segment (a smaller one, or any message while every slot is held by
readers, goes inline as `[b"\0" + topic, header, arrays...]`); to plain subscribers, `[topic,
header, arrays...]` as always. A remote (tcp) subscriber is a plain one, so a graph that
mixes both works, and a publisher with shared memory off serves `b"\0"` subscribers inline, so
a mismatch starves no one. Choice: `shm="auto"` is on for ipc endpoints (same machine by
construction; the segments live in the namespace of the socket's run directory) and off for tcp;
`"on"`/`"off"` force it (per topic from launch.yaml); the environment variable DRIVECAST_SHM=on|off
overrides `auto` for a whole graph (benchmarks, a kill switch). `block` inputs stay on the
lossless socket, plain. A generic tool that subscribes to b"" gets both variants: subscribe to
`topic` (plain) or use a `Subscriber`. A `Subscriber(bell=True)` also takes messages from its
bell (`drain_bell`), before ZeroMQ brings them, and skips ZeroMQ's copies (see `pipeline.transport.shm`).
"""

from __future__ import annotations

import math
import os
import socket as _socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline.errors import ConfigError
from pipeline.transport.shm import BODY, Bell, ShmReader, ShmWriter

__all__ = ["DRAIN_S", "END_OF_STREAM", "JOIN_S", "SHM_THRESHOLD", "Publisher", "Subscriber", "free_tcp_port", "ipc_endpoint",
           "recv_message", "send_message"]

# The second frame of `[topic, END_OF_STREAM]`: never a valid header (msgpack of a header starts with 0x98).
END_OF_STREAM = b"drivecast/end-of-stream"

_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux
# From this many array bytes per message on, a shared-memory subscriber gets a descriptor; below,
# ZeroMQ moving the bytes costs less than a memcpy plus four lock system calls (bench/transport.py).
SHM_THRESHOLD = 64 * 1024
SHM_MODES = ("auto", "on", "off")
_PREFIX_CHECK_S = 0.02  # between two looks at the XPUB's subscriptions once someone listens
DRAIN_S = 60.0  # longest a finished publisher waits for its lossless subscribers to take everything
# Longest a lossless publisher waits for its expected subscribers before its first message (what it
# sends earlier is lost to them): a node's start can take many seconds on a loaded machine.
JOIN_S = 60.0
_COPY_BELOW = zmq.COPY_THRESHOLD  # pyzmq copies smaller frames anyway (default 65536)
# pyzmq's constants are enum.IntFlag members, whose `|` and `&` run in Python (0.6 us each, warm):
# the per-message paths use plain ints.
_SNDMORE, _NOBLOCK, _POLLIN, _EVENTS = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.EVENTS)


def _shm_wanted(mode: str, endpoint: str) -> bool:
    if mode not in SHM_MODES:
        raise ConfigError(f"shm: expected one of {', '.join(SHM_MODES)}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get("DRIVECAST_SHM", "auto")
        mode = env if env in ("on", "off") else "auto"
    if mode == "auto":
        return endpoint.startswith("ipc://")
    return mode == "on"


def _shm_namespace(endpoint: str, run_dir: Path | str | None) -> Path | None:
    """The run directory whose namespace holds a topic's segments: given, or the ipc socket's."""
    if run_dir is not None:
        return Path(run_dir)
    if endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://"):]).parent
    return None


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
                 configure: Callable[[zmq.Socket], None] | None = None, *, shm: str = "auto",
                 shm_threshold: int = SHM_THRESHOLD, shm_slots: int = 4,
                 run_dir: Path | str | None = None) -> None:
        """`configure` is applied to each socket before it binds (CURVE server keys). `shm`,
        `shm_threshold`, `shm_slots`: the shared-memory path (see the module); `run_dir` names
        the segments' namespace when the endpoint is not an ipc socket in the run directory."""
        self.topic = topic
        self._topic = topic.encode()
        self._shm_topic = b"\0" + self._topic
        self._shm_desc_topic = self._shm_topic + b"\0"
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        if configure:
            configure(self.sock)
        _bind(self.sock, endpoint)
        self._prefixes: set[bytes] = set()
        self._plain = self._shm = False
        self._next_check = 0.0
        self.shm_threshold = shm_threshold
        self._writer: ShmWriter | None = None
        namespace = _shm_namespace(endpoint, run_dir)
        if _shm_wanted(shm, endpoint) and namespace is not None:
            self._writer = ShmWriter(namespace, topic, shm_slots)
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

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
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
            writer.accept_bells()  # after the send: a bell only speeds up what ZeroMQ delivers anyway
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


class Subscriber:
    """The receiving side of one input, with its queue policy.

    - `latest`: each drain keeps only the newest message (sensor streams: age stays about one period)
    - `drop_oldest`: keeps the newest `depth` messages
    - `block`: lossless, in order; the publisher waits when this queue is full
    Messages lost in ZeroMQ before reaching us show up as gaps in `seq` (counted by the runner).

    Over shared memory (never for `block`), `drain` hands out `[topic, header, arrays...]` exactly
    as over ZeroMQ, the arrays being read-only views of the publisher's slot; a message whose slot
    was rewritten before we could lock it is dropped, counted in `dropped` and `shm_overruns`.
    """

    def __init__(self, ctx: zmq.Context, topic: str, endpoint: str, policy: str = "block", depth: int = 10,
                 configure: Callable[[zmq.Socket], None] | None = None, *, shm: str = "auto",
                 run_dir: Path | str | None = None, bell: bool = False) -> None:
        """`configure` is applied to the socket before it connects (CURVE client keys). `bell`:
        over shared memory, also take messages as soon as the publisher stored them, from the
        pipe `bell_fd`, which the caller polls beside `sock` and then calls `drain_bell`."""
        self.topic = topic
        self.policy = policy
        self.depth = depth
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A large receive HWM for every policy: ZeroMQ's I/O thread then moves whatever arrives
        # into this process at once, and `drain` sees all of it and applies the policy. With a small
        # HWM the backlog waited upstream (publisher pipe, kernel buffers) and a `latest` consumer
        # got messages hundreds of ms old. Memory stays bounded by what arrives during one callback
        # (over shared memory a queued message is a descriptor of a few dozen bytes).
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        self.reader: ShmReader | None = None
        namespace = _shm_namespace(endpoint, run_dir)
        if policy != "block" and namespace is not None and _shm_wanted(shm, endpoint):
            self.reader = ShmReader(namespace, topic)
            self._prefix = b"\0" + topic.encode()
            if bell:
                self.reader.enable_bell()
        else:
            self._prefix = topic.encode()
        self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
        if configure:
            configure(self.sock)
        self.sock.connect(endpoint)
        self.dropped = 0
        self.bell_taken = 0  # messages found through the bell (before ZeroMQ brought them)
        self._queue: deque[list[zmq.Frame]] = deque()
        self._idle_bell: Bell | None = None  # after `_fall_back_to_plain`, while the caller may still poll it

    @property
    def bell_fd(self) -> int | None:
        if self.reader is not None:
            return self.reader.bell_fd
        return None if self._idle_bell is None else self._idle_bell.fd

    @property
    def shm_overruns(self) -> int:
        return 0 if self.reader is None else int(self.reader.overruns)

    def end(self) -> None:
        """The publisher ended this stream (END_OF_STREAM arrived): unsubscribe, which tells a
        lossless publisher that everything it sent has been taken (`Publisher.end_of_stream`)."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, self._prefix)

    def release(self) -> None:
        """Give the publisher back the slots of messages the node is done with (the runner calls
        this after the callbacks, so that the system calls it takes are not on the next message's
        path; `drain` calls it too)."""
        if self.reader is not None and (self.reader.leases or self.reader.pending):
            self.reader.release()

    def drain(self, max_block: int = 64, settle: bool = True) -> deque[list[zmq.Frame]]:
        """Receive what is waiting, apply the policy, return the queue to process (oldest first).

        `settle=False`: a shared-memory message whose copy is still under way is queued before it
        is complete, so that the caller decodes its header meanwhile; the caller must then pass
        each message through `settle` before anything reads its arrays (the runner does)."""
        q = self._queue
        reader = self.reader
        self.release()
        limit = max_block if self.policy == "block" else 100_000
        sock = self.sock
        if reader is not None:
            skip = len(self._prefix) + 1  # a shared-memory message's one frame: prefix, b"\0", body
            belled = reader.bell_fd is not None
        policy, depth = self.policy, self.depth
        received = 0
        # The runner drains a socket that poll() found readable, so the first recv goes straight
        # ahead; after it, ZMQ_EVENTS says whether more wait (a recv that raises zmq.Again costs more).
        while received < limit and (not received or sock.getsockopt(_EVENTS) & _POLLIN):
            try:
                frames: Any = recv_message(sock, _NOBLOCK)
            except zmq.Again:
                break
            if reader is not None and len(frames) == 1:
                frames = frames[0].bytes[skip:]  # the body, resolved by `_resolve`
                if belled and len(frames) >= BODY.size and BODY.unpack_from(frames)[0] <= reader.last_seq:
                    continue  # the bell delivered it already
            received += 1
            q.append(frames)  # `_enqueue`, inline: this loop is on every message's path
            if policy == "latest" and len(q) > 1 or policy == "drop_oldest" and len(q) > depth:
                q.popleft()
                self.dropped += 1
        if reader is not None and received:
            self._resolve(q, min(received, len(q)), settle)
        return q

    def drain_bell(self, settle: bool = True) -> deque[list[Any]]:
        """`drain` for the bell: the messages stored since the last one taken, from shared memory."""
        q = self._queue
        reader = self.reader
        self.release()
        if reader is None:
            if self._idle_bell is not None:
                self._idle_bell.drain()
            return q
        overruns = reader.overruns
        bodies = reader.rung()
        self.dropped += reader.overruns - overruns  # rewritten while we read them: ZeroMQ's copies are skipped
        self.bell_taken += len(bodies)
        for body in bodies:
            self._enqueue(body)
        if bodies:
            self._resolve(q, min(len(bodies), len(q)), settle)
        return q

    def _enqueue(self, message: Any) -> None:
        q = self._queue
        q.append(message)
        if self.policy == "latest" and len(q) > 1 or self.policy == "drop_oldest" and len(q) > self.depth:
            q.popleft()
            self.dropped += 1

    def settle(self, frames: list[Any]) -> bool:
        """True once the message `frames` (from `drain(settle=False)`) is complete and its arrays
        may be read: waits for the publisher's copy into shared memory, `shm.WAIT_S` at most.
        False: the slot was rewritten meanwhile; the message is dropped (counted)."""
        reader = self.reader
        if reader is None or not reader.pending or len(frames) < 3 or reader.settle(frames[2]):
            return True
        self.dropped += 1
        return False

    def _resolve(self, q: deque[Any], new: int, settle: bool = True) -> None:
        """Replace the bodies among the `new` newest queued messages (bytes: `BODY`, descriptor,
        header) by `[prefix, header, arrays...]`, the arrays in the slot (only messages that
        survived the policy lock a slot)."""
        reader = self.reader
        assert reader is not None
        n = len(q)
        lost = False
        for i in range(n - new, n):
            body = q[i]
            if isinstance(body, bytes):
                end = BODY.size + BODY.unpack_from(body)[1] if len(body) >= BODY.size else len(body)
                if len(body) > end:
                    arrays = reader.resolve(body[BODY.size:end], settle, body)
                else:
                    reader.bad += 1
                    arrays = None
                if arrays is None:
                    q[i] = None
                    lost = True
                else:
                    q[i] = [self._prefix, body[end:], *arrays]
        if lost:
            kept = [f for f in q if f is not None]
            self.dropped += len(q) - len(kept)
            q.clear()
            q.extend(kept)
        if reader.unreachable >= 3:
            self._fall_back_to_plain()

    def _fall_back_to_plain(self) -> None:
        """The publisher's segments cannot be opened here (shm forced on across machines?): take
        the plain variant from now on rather than lose every large message."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, self._prefix)
        self._prefix = self.topic.encode()
        self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
        assert self.reader is not None
        # The bell stays open (unrung: no publisher got it) while the caller may still poll it.
        self._idle_bell, self.reader.bell = self.reader.bell, None
        self.reader.close()
        self.reader = None

    def close(self) -> None:
        self.sock.close(0)
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._idle_bell is not None:
            self._idle_bell.close()
            self._idle_bell = None


def send_message(sock: zmq.Socket, parts: list[Any], flags: int = 0, copy: bool = False) -> None:
    """`sock.send_multipart(parts, flags, copy=copy)` without its per-part type checks in Python,
    and with parts under ZeroMQ's copy threshold sent as copies (no zmq.Frame built for them): on
    a small message this is a third of the send's time. Raises zmq.Again (with NOBLOCK) only
    before the first part is taken, after which ZeroMQ takes the whole message."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        sock.send(part, flags | _SNDMORE if i < last else flags, copy=copy or len(part) < _COPY_BELOW)


def recv_message(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)`, reading each frame's `more` flag instead of asking
    the socket for RCVMORE (a call per part, about a third of a small message's receive time)."""
    frame = sock.recv(flags, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(copy=False)  # the rest of a message has arrived with its first part
        parts.append(frame)
    return parts


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if os.path.exists(path):
            os.unlink(path)  # a stale socket file of a previous incarnation of this node
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {endpoint}: {exc}") from None

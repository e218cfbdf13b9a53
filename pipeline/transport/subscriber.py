"""The receiving side of a topic: a ZeroMQ SUB socket with a queue policy, and shared memory.

`take` is the receive path: it applies the policy and hands each message out ready to read,
whether it came over ZeroMQ or through shared memory (`pipeline.transport.shm`), where the
arrays are read-only views of the publisher's slot. With a bell, a large message is taken as
soon as the publisher stored it, before ZeroMQ's copy of it arrives (then skipped).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import zmq

from pipeline.transport.endpoints import LOSSLESS_HWM, QUEUE_BYTES, shm_namespace, shm_wanted, size_receive_queue
from pipeline.transport.shm import BODY, Bell, ShmReader

__all__ = ["Source", "Subscriber", "recv_message"]

T = TypeVar("T")
Source: TypeAlias = "zmq.Socket[Any] | int"  # what a Subscriber asks to be polled: its socket, its bell's pipe
# pyzmq's constants are enum.IntFlag members, whose `&` runs in Python: the per-message path uses plain ints.
_NOBLOCK, _POLLIN, _EVENTS = int(zmq.NOBLOCK), int(zmq.POLLIN), int(zmq.EVENTS)
_SHM_HWM = 1000


class Subscriber:
    """The receiving side of one input, with its queue policy.

    - `latest`: each drain keeps only the newest message (sensor streams: age stays about one period)
    - `drop_oldest`: keeps the newest `depth` messages
    - `block`: lossless, in order; the publisher waits when this queue is full
    Messages lost in ZeroMQ before reaching us show up as gaps in `seq` (counted by the runner).

    Over shared memory (never for `block`), messages are `[topic, header, arrays...]` exactly as
    over ZeroMQ, the arrays being read-only views of the publisher's slot; a message whose slot
    was rewritten before we could lock it is dropped, counted in `dropped` and `shm_overruns`.
    """

    def __init__(self, ctx: zmq.Context[Any], topic: str, endpoint: str, policy: str = "block", depth: int = 10,
                 configure: Callable[[zmq.Socket[Any]], None] | None = None, *, shm: str = "auto",
                 run_dir: Path | str | None = None, bell: bool = False, max_bytes: int = QUEUE_BYTES,
                 rcvhwm: int = 1000) -> None:
        """`configure` is applied to the socket before it connects (CURVE client keys). `bell`:
        over shared memory, also take messages as soon as the publisher stored them, through a
        pipe that `sources` adds to what the caller polls. `max_bytes`: what ZeroMQ may queue
        here while the node is busy, `rcvhwm` messages at most (`_size_queue`); over shared
        memory the queue holds descriptors, 1,000 of them; a lossless queue holds
        `endpoints.LOSSLESS_HWM` messages, its publisher waiting beyond."""
        self.topic = topic
        self.policy = policy
        self.depth = depth
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint, self._max_bytes = endpoint, max_bytes
        self.reader: ShmReader | None = None
        namespace = shm_namespace(endpoint, run_dir)
        if policy != "block" and namespace is not None and shm_wanted(shm, endpoint):
            self.reader = ShmReader(namespace, topic)
            self._prefix = b"\0" + topic.encode()
            if bell:
                self.reader.enable_bell()
        else:
            self._prefix = topic.encode()
        # A large receive HWM for a lossy policy: ZeroMQ's I/O thread then moves whatever arrives
        # into this process at once, and `drain` applies the policy to all of it (with a small
        # HWM the backlog waited upstream, and a `latest` consumer got stale messages, or over
        # shared memory descriptors of slots rewritten since). Large messages lower it to
        # `max_bytes` worth.
        self._hwm = LOSSLESS_HWM if policy == "block" else _SHM_HWM if self.reader is not None else rcvhwm
        self.sock.setsockopt(zmq.RCVHWM, self._hwm)
        # From this message size on, `_size_queue` looks: at the first message, any size. Over shared
        # memory never: large messages come inline only while every slot is held, rarely.
        self._big = 0 if self.reader is None else 1 << 62
        self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
        if configure:
            configure(self.sock)
        self.sock.connect(endpoint)
        self.dropped = 0
        self.bell_taken = 0  # messages found through the bell (before ZeroMQ brought them)
        self._queue: deque[Any] = deque()
        self._idle_bell: Bell | None = None  # after `_fall_back_to_plain`, while the caller may still poll it

    @property
    def bell_fd(self) -> int | None:
        if self.reader is not None:
            return self.reader.bell_fd
        return None if self._idle_bell is None else self._idle_bell.fd

    @property
    def sources(self) -> tuple[Source, ...]:
        """What to poll for this input (POLLIN), the earlier path first: the bell's pipe, if any,
        then the socket. Hand the one found ready to `take` (or `drain`)."""
        bell = self.bell_fd
        return (self.sock,) if bell is None else (bell, self.sock)

    @property
    def shm_overruns(self) -> int:
        return 0 if self.reader is None else int(self.reader.overruns)

    def counters(self) -> dict[str, int]:
        """What to report in diagnostics: messages dropped, and those taken through the bell."""
        if self.bell_fd is None:
            return {"drops": self.dropped}
        return {"drops": self.dropped, "shm_bell": self.bell_taken}

    def end(self) -> None:
        """The publisher ended this stream (END_OF_STREAM arrived): unsubscribe, which tells a
        lossless publisher that everything it sent has been taken (`Publisher.end_of_stream`)."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, self._prefix)

    def release(self) -> None:
        """Give the publisher back the slots of messages nobody holds any more (`take` does it
        after the callbacks, off the next message's path; `drain` before it receives)."""
        if self.reader is not None and (self.reader.leases or self.reader.pending):
            self.reader.release()

    def take(self, source: Source, decode: Callable[[list[Any]], T | None], deliver: Callable[[T], None]) -> None:
        """Receive what `source` (one of `sources`, found ready) brought, apply the policy, and
        for each message, oldest first, call `decode(frames)` and then, unless it returned
        None, `deliver` with its result once the message's arrays may be read.

        `decode` may read the topic and header frames only: a large message can arrive through
        the bell while the publisher is still copying its arrays, and decoding overlaps that copy;
        the wait for its end (`shm.reader.WAIT_S` at most) comes right before `deliver`. A message whose
        slot was rewritten meanwhile is dropped (counted). Afterwards, the slots of messages no
        longer held go back to the publisher."""
        q = self._receive(source, 64, False)
        reader = self.reader
        frames: list[Any] | None = None
        msg: T | None = None
        while q:
            frames = q.popleft()
            msg = decode(frames)
            if msg is None:
                continue
            if reader is None or reader.ready(frames):
                deliver(msg)
            else:
                self.dropped += 1  # its slot was rewritten before the copy ended
        frames = msg = None  # a message the node let go must not look held to `release`
        self.release()

    def drain(self, source: Source | None = None, max_block: int = 64) -> deque[list[Any]]:
        """Receive what `source` (the socket by default, or the bell) brought, apply the policy,
        return the queue to process (oldest first), every message ready to read. `take` is the
        faster path for shared memory."""
        return self._receive(self.sock if source is None else source, max_block, True)

    def _receive(self, source: Source, max_block: int, settle: bool) -> deque[Any]:
        """`settle=False`: a shared-memory message whose copy is still under way is queued before
        it is complete; `ShmReader.ready` (called by `take`) must pass it before anything reads its arrays."""
        if source is not self.sock:
            return self._ring(settle)
        q = self._queue
        reader = self.reader
        self.release()
        limit = max_block if self.policy == "block" else 100_000
        sock: Any = self.sock  # (getsockopt is typed int | bytes)
        if reader is not None:
            skip = len(self._prefix) + 1  # a shared-memory message's one frame: prefix, b"\0", body
            belled = reader.bell_fd is not None
        policy, depth = self.policy, self.depth
        received = 0
        # Called once poll() found the socket readable, so the first recv goes straight ahead;
        # after it, ZMQ_EVENTS says whether more wait (a recv that raises zmq.Again costs more).
        while received < limit and (not received or sock.getsockopt(_EVENTS) & _POLLIN):
            try:
                frames: Any = recv_message(sock, _NOBLOCK)
            except zmq.Again:
                break
            if not self._big or len(frames) > 2 and sum(map(len, frames)) > self._big:
                self._size_queue(sum(map(len, frames)))
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

    def _size_queue(self, nbytes: int) -> None:
        """The mark for messages this large (`endpoints.size_receive_queue`); the runner counts what a
        lossy queue's reconnection lost as a gap in `seq`."""
        self._hwm, self._big = size_receive_queue(self.sock, self.endpoint, self._hwm, nbytes, self._max_bytes,
                                                  first=not self._big, lossless=self.policy == "block")

    def _ring(self, settle: bool) -> deque[Any]:
        """The bell rang: queue the messages stored since the last one taken, from shared memory."""
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

    def _resolve(self, q: deque[Any], new: int, settle: bool = True) -> None:
        """Replace the bodies among the `new` newest queued messages by `[prefix, header,
        arrays...]`, the arrays in the slot (only messages that survived the policy lock a slot)."""
        assert self.reader is not None
        self.dropped += self.reader.resolve_queue(q, new, self._prefix, settle)
        if self.reader.unreachable >= 3:
            self._fall_back_to_plain()

    def _fall_back_to_plain(self) -> None:
        """The publisher's segments cannot be opened here (shm forced on across machines?): take
        the plain variant from now on rather than lose every large message."""
        self.sock.setsockopt(zmq.UNSUBSCRIBE, self._prefix)
        self._prefix = self.topic.encode()
        self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix)
        self._big = self._max_bytes // self._hwm  # large messages come inline now: `_size_queue`
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


def recv_message(sock: zmq.Socket[Any], flags: int = 0) -> list[zmq.Frame]:
    """`sock.recv_multipart(flags, copy=False)`, reading each frame's `more` flag instead of asking
    the socket for RCVMORE (a call per part)."""
    frame = sock.recv(flags, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(copy=False)  # the rest of a message has arrived with its first part
        parts.append(frame)
    return parts

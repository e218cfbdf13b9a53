"""The subscriber's side of shared memory: turns a descriptor into read-only views of a slot.

A reader read-locks a slot before it looks at it and keeps the lock while any array of the slot is
alive in its process (`release` checks reference counts), so the publisher never rewrites what a
node holds. A slot that is being or was rewritten since its descriptor was sent (its sequence word
differs) is counted as an overrun and not delivered: torn frames cannot be delivered.

Descriptors and bodies come from a socket or a shared record: they are untrusted. Only a segment
named for this topic in this run's namespace, owned by this user with mode 0600, is opened, and
every offset and length must lie inside the slot.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.transport.shm.bell import BELLS_POSSIBLE, Bell, bell_path, hand_in
from pipeline.transport.shm.segment import (
    BODY,
    DESCRIPTOR_MAGIC,
    META_BYTES,
    META_LEN,
    WRITING,
    Segment,
    descriptor_decoder,
    lock,
    record_holds,
    record_start,
    segment_dir,
    topic_stem,
)

__all__ = ["WAIT_S", "ShmReader"]

WAIT_S = 0.05  # longest a subscriber waits for an announced slot's copy
_SPIN_S = 0.001  # yield the CPU between lock attempts this long, then sleep between them
_MAGIC_LEN = len(DESCRIPTOR_MAGIC)

Frames = list[np.ndarray[Any, Any]]


class ShmReader:
    """Resolves descriptors (from ZeroMQ, or bodies found through the bell) into slot views."""

    def __init__(self, run_dir: Path, topic: str) -> None:
        self.run_dir = Path(run_dir)
        self.dir = segment_dir(self.run_dir)
        self._name = re.compile(re.escape(topic_stem(self.run_dir, topic)) + r"[0-9a-f]{12}")
        self.segments: dict[str, Segment] = {}
        self.current: str | None = None
        # (segment, slot, the slot's frame arrays): held read locks, released once unused.
        self.leases: list[tuple[Segment, int, Frames]] = []
        # (segment, slot, seq, frames, body) handed out by `resolve(wait=False)` before the copy
        # ended, not locked yet: `settle` locks them (or drops them), `release` forgets the rest.
        self.pending: list[tuple[Segment, int, int, Frames, bytes | None]] = []
        self.overruns = 0  # descriptors whose slot was being or had been rewritten: not delivered
        self.bad = 0  # descriptors that failed validation
        self.unreachable = 0  # consecutive descriptors naming a segment we cannot open (another host?)
        # The bell (`enable_bell`), the connection that handed it over, and the highest writer seq
        # taken by either path (ZeroMQ's copy of a message the bell delivered comes later).
        self.bell: Bell | None = None
        self._bell_conn: socket.socket | None = None
        self._bell_path = bell_path(self.run_dir, topic)
        self.last_seq = 0

    def enable_bell(self) -> int | None:
        """A pipe's read end that the publisher writes to when it stores a message, well before
        ZeroMQ brings the descriptor: poll it and call `rung`. It is handed to the publisher of
        each segment this reader maps. None off Linux."""
        if self.bell is None and BELLS_POSSIBLE:
            self.bell = Bell()
        return self.bell_fd

    @property
    def bell_fd(self) -> int | None:
        return None if self.bell is None else self.bell.fd

    def rung(self) -> list[bytes]:
        """After the bell: the bodies (see `BODY`) of the messages stored in the current segment
        that follow `last_seq` without a hole, oldest first, to be resolved like descriptors from
        ZeroMQ. Stops at a hole (a message sent inline takes a number but no slot, or a slot went
        round while we were away) and at a body that was not stored: ZeroMQ, which carries every
        message in order, delivers that one and what follows."""
        self.bell.drain()  # type: ignore[union-attr]
        seg = self.segments.get(self.current) if self.current is not None else None
        if seg is None:
            return []
        words = seg.slot_words
        last = self.last_seq
        found = sorted((w & ~WRITING, slot) for slot, w in enumerate(words.tolist()) if w & ~WRITING > last)
        if not found:
            return []
        bodies = []
        mm = seg.mm
        for seq, slot in found:
            if seq != self.last_seq + 1:
                break  # a hole: a message that went inline, or one rewritten since; ZeroMQ goes first
            start = record_start(slot)
            n = META_LEN.unpack_from(mm, start)[0]
            if not BODY.size < n <= META_BYTES - META_LEN.size:
                break
            body = mm[start + META_LEN.size:start + META_LEN.size + n]
            if words.item(slot) & ~WRITING != seq or BODY.unpack_from(body)[0] != seq:
                self.overruns += 1  # rewritten while we read it: gone (a later message took the slot)
            else:
                bodies.append(body)
            self.last_seq = seq
        return bodies

    def _segment(self, name: str) -> Segment | None:
        seg = self.segments.get(name)
        if seg is not None:
            return seg
        if not self._name.fullmatch(name):
            return None
        try:
            fd = os.open(self.dir / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            self.unreachable += 1
            return None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise ValueError(f"{self.dir / name}: not owned by this user with mode 0600")
        except (OSError, ValueError):
            os.close(fd)
            return None
        try:
            seg = Segment(self.dir / name, fd, writable=False)
        except (OSError, ValueError):
            return None
        self.segments[name] = seg
        self.unreachable = 0  # counts consecutive failures: one that opens proves the path works
        if self.current is not None and self.current != name:
            self._retire(self.current)
        self.current = name
        if self.bell is not None:  # a new segment may be a new incarnation of the publisher
            if self._bell_conn is not None:
                self._bell_conn.close()
            self._bell_conn = hand_in(self.bell, self._bell_path)
        return seg

    def _retire(self, name: str) -> None:
        """The publisher moved to a new segment: unmap the old one once no lease holds it."""
        seg = self.segments.get(name)
        if seg is not None and seg.leases == 0:
            del self.segments[name]
            seg.close()

    def resolve_queue(self, q: deque[Any], new: int, prefix: bytes, wait: bool = True) -> int:
        """Replace the bodies (bytes: `BODY`, descriptor, header) among the `new` newest messages
        of a subscriber's queue by `[prefix, header, arrays...]`, and remove those that do not
        resolve (counted in `bad` or `overruns`); returns how many were removed."""
        n = len(q)
        lost = 0
        for i in range(n - new, n):
            body = q[i]
            if not isinstance(body, bytes):
                continue
            end = BODY.size + BODY.unpack_from(body)[1] if len(body) >= BODY.size else len(body)
            arrays = self.resolve(body[BODY.size:end], wait, body) if len(body) > end else None
            if arrays is None:
                self.bad += len(body) <= end
                q[i] = None
                lost += 1
            else:
                q[i] = [prefix, body[end:], *arrays]
        if lost:
            kept = [f for f in q if f is not None]
            q.clear()
            q.extend(kept)
        return lost

    def resolve(self, descriptor: Any, wait: bool = True, body: bytes | None = None) -> Frames | None:
        """The arrays a descriptor points to, each a read-only uint8 view of the slot, or None
        (counted) if the descriptor is invalid or the slot was rewritten.

        `wait=False`: a slot whose copy is still under way is not waited for; its arrays come
        back unread and `settle` must be called before anything reads them, so that the caller's
        header decoding overlaps the publisher's copy.

        `body`: the whole body the descriptor came in. Once the slot is read-locked, the slot's
        record, if one was stored, must hold the same bytes: a body read from a record without
        the lock (`rung`) is then known to be whole even on CPUs that reorder memory accesses
        (such as ARM), since the lock call orders them."""
        raw = getattr(descriptor, "bytes", descriptor)  # a descriptor is a few dozen bytes
        if raw[:_MAGIC_LEN] != DESCRIPTOR_MAGIC:
            self.bad += 1
            return None
        try:
            d = descriptor_decoder.decode(memoryview(raw)[_MAGIC_LEN:])
        except ValueError:  # msgspec's DecodeError and ValidationError; UnicodeDecodeError for a bad name
            self.bad += 1
            return None
        seg = self.segments.get(d.segment) or self._segment(d.segment)
        slot = d.slot
        if seg is None or not 0 <= slot < seg.slots or not d.arrays:
            self.bad += 1
            return None
        for o, n in d.arrays:
            if o < 0 or n < 0 or o + n > seg.slot_size:
                self.bad += 1
                return None
        base = seg.data_start + slot * seg.slot_size
        array = seg.array
        # Still being copied: no lock attempt (it would fail), the lock comes with `settle`.
        if not wait and seg.slot_words.item(slot) == d.seq | WRITING:
            frames = [array[base + o:base + o + n] for o, n in d.arrays]
            seg.leases += 1
            self.pending.append((seg, slot, d.seq, frames, body))
            self.last_seq = max(self.last_seq, d.seq)  # checked against the slot: not just any number
            return frames
        if not lock(seg.fd, fcntl.F_RDLCK, slot) and not self._await_copy(seg, slot, d.seq):
            self.overruns += 1  # the publisher is rewriting this slot for a later message
            return None
        if int(seg.seq_words[slot]) != d.seq or not record_holds(seg, slot, body):
            lock(seg.fd, fcntl.F_UNLCK, slot)
            self.overruns += 1  # rewritten since the descriptor was sent
            return None
        frames = [array[base + o:base + o + n] for o, n in d.arrays]
        seg.leases += 1
        self.leases.append((seg, slot, frames))
        self.last_seq = max(self.last_seq, d.seq)
        return frames

    def settle(self, first: np.ndarray[Any, Any]) -> bool:
        """For arrays that `resolve(wait=False)` returned (`first` is the first of them): wait
        until the publisher's copy is complete and read-lock the slot. False (counted as an
        overrun) when the slot moved on to another message: those arrays must not be read."""
        for i, (seg, slot, seq, frames, body) in enumerate(self.pending):
            if frames[0] is first:
                del self.pending[i]
                copying = seg.slot_words.item(slot) == seq | WRITING  # then a lock attempt would fail
                if not copying and lock(seg.fd, fcntl.F_RDLCK, slot) or self._await_copy(seg, slot, seq):
                    if int(seg.seq_words[slot]) == seq and record_holds(seg, slot, body):
                        self.leases.append((seg, slot, frames))
                        return True
                    lock(seg.fd, fcntl.F_UNLCK, slot)
                self.overruns += 1
                self._unlease(seg)
                return False
        return True  # not pending: resolved with its lock, or not from shared memory

    def ready(self, message: list[Any]) -> bool:
        """`settle` for a queued message `[prefix, header, arrays...]`; True for any other."""
        return not self.pending or len(message) < 3 or self.settle(message[2])

    @staticmethod
    def _await_copy(seg: Segment, slot: int, seq: int) -> bool:
        """Read-lock `slot` once the publisher has copied message `seq` into it (it announced the
        message before the copy, and marks it done just before it unlocks); False as soon as the
        slot holds another message, or when `WAIT_S` passes."""
        start = time.monotonic()
        while int(seg.seq_words[slot]) in (seq | WRITING, seq):
            waited = time.monotonic() - start
            if waited > WAIT_S:
                return False
            if waited < _SPIN_S:
                os.sched_yield()
            else:
                time.sleep(0.0001)
            if lock(seg.fd, fcntl.F_RDLCK, slot):
                return True
        return False

    def release(self) -> int:
        """Unlock the slots whose arrays nobody holds any more; returns how many stay held.

        A decoded array, and any view of it, keeps a reference to the slot's frame array (through
        the buffer it was made from), so a reference count above ours means "still in use".
        """
        for seg, *_ in self.pending:  # never settled: their messages were not delivered
            self._unlease(seg)
        self.pending.clear()
        if not self.leases:
            return 0
        kept = []
        for lease in self.leases:
            seg, slot, frames = lease
            held = False
            for f in frames:
                if sys.getrefcount(f) > 3:  # ours: the `frames` list, `f`, getrefcount's argument
                    held = True
                    break
            if held:
                kept.append(lease)
                continue
            lock(seg.fd, fcntl.F_UNLCK, slot)
            self._unlease(seg)
        self.leases = kept
        return len(kept)

    def _unlease(self, seg: Segment) -> None:
        seg.leases -= 1
        if seg.leases == 0 and seg.name != self.current:
            self._retire(seg.name)

    def close(self) -> None:
        self.leases.clear()  # closing the mappings' fds drops the locks
        self.pending.clear()
        for seg in self.segments.values():
            seg.close()
        self.segments.clear()
        if self._bell_conn is not None:
            self._bell_conn.close()
            self._bell_conn = None
        if self.bell is not None:
            self.bell.close()
            self.bell = None

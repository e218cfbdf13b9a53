"""The publisher's side of shared memory: copies a message's arrays into a free slot and sends
a small descriptor instead, or lends a slot to be filled in place (`loan`).

The writer never waits: a slot held by a reader is skipped, and with every slot held the message
goes inline over ZeroMQ. Sequence numbers start at CLOCK_MONOTONIC, so that a respawned
publisher's numbers are above its predecessor's for the subscribers' "seen up to" check.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.transport.shm.bell import Bells
from pipeline.transport.shm.segment import (
    ALIGN,
    BODY,
    DESCRIPTOR_MAGIC,
    MAX_SLOTS,
    META_BYTES,
    META_LEN,
    WRITING,
    Descriptor,
    Segment,
    create_layout,
    descriptor_encoder,
    lock,
    record_start,
    segment_dir,
    topic_stem,
)

__all__ = ["ShmWriter"]


class ShmWriter:
    """Copies arrays into a free slot of the topic's segment and hands out the descriptor frame."""

    def __init__(self, run_dir: Path, topic: str, slots: int = 4) -> None:
        if not 2 <= slots <= MAX_SLOTS:
            raise ValueError(f"shm slots: expected 2..{MAX_SLOTS}, got {slots}")
        self.run_dir = Path(run_dir)
        self.dir = segment_dir(self.run_dir)
        self.stem = topic_stem(self.run_dir, topic)
        self.slots = slots
        self.seg: Segment | None = None
        self.next_slot = 0
        self.seq = time.monotonic_ns()  # above a previous incarnation's numbers (see the module)
        self.fallbacks = 0  # messages sent inline because every slot was held by readers
        # Loaned slots (see `loan`): write-locked by us, each with the slot's uint8 array.
        self.loans: list[tuple[Segment, int, np.ndarray[Any, Any]]] = []
        self._remove_stale()
        self.bells = Bells(self.run_dir, topic, self.stem)

    def inline(self) -> None:
        """The publisher sent a message inline to shared-memory subscribers: it takes a number,
        so that the bell path stops at the hole and lets ZeroMQ deliver it in order."""
        self.seq += 1

    def _store_body(self, seg: Segment, slot: int, descriptor: bytes, header: bytes) -> None:
        """The message's body in the slot's record, for subscribers woken by a bell; an empty
        record when it does not fit (they get that message over ZeroMQ)."""
        start = record_start(slot)
        n = BODY.size + len(descriptor) + len(header)
        mm = seg.mm
        if not self.bells.fds or not header or n > META_BYTES - META_LEN.size:
            META_LEN.pack_into(mm, start, 0)
            return
        META_LEN.pack_into(mm, start, n)
        p = start + META_LEN.size
        BODY.pack_into(mm, p, self.seq, len(descriptor))
        p += BODY.size
        mm[p:p + len(descriptor)] = descriptor
        p += len(descriptor)
        mm[p:p + len(header)] = header

    def _remove_stale(self) -> None:
        """Segments of this topic left by an earlier incarnation of this publisher (kill -9)."""
        for name in os.listdir(self.dir):
            if name.startswith(self.stem):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / name)

    def _new_segment(self, need: int) -> Segment:
        slot_size = -(-max(need + need // 4, 4096) // 4096) * 4096  # room to grow by a quarter
        path = self.dir / f"{self.stem}{secrets.token_hex(6)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            create_layout(fd, self.slots, slot_size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            return Segment(path, fd, writable=True)  # closes fd itself if it fails
        except BaseException:
            os.unlink(path)
            raise

    def _segment_for(self, need: int) -> Segment:
        seg = self.seg
        if seg is None or need > seg.slot_size:
            if seg is not None:
                self._drop(seg)  # loans in it keep their mapping; publishing them will copy
            seg = self.seg = self._new_segment(need)
            self.next_slot = 0
        return seg

    def _free_slot(self, seg: Segment) -> int | None:
        """Write-lock the next slot that no reader holds and that is not on loan."""
        loaned = {slot for s, slot, _ in self.loans if s is seg} if self.loans else ()
        for k in range(seg.slots):
            slot = (self.next_slot + k) % seg.slots
            # (our own lock never conflicts with itself: loaned slots are skipped by hand)
            if slot not in loaned and lock(seg.fd, fcntl.F_WRLCK, slot):
                return slot
        return None

    def loan(self, nbytes: int) -> np.ndarray[Any, Any] | None:
        """A slot's first `nbytes` as a writable uint8 array, to be filled and then published
        without a copy (see `write`), or None when every slot is held. The slot stays locked
        against readers until it is published, or until nothing refers to the array any more."""
        self.reclaim()
        seg = self._segment_for(-(-max(nbytes, 1) // ALIGN) * ALIGN)
        slot = self._free_slot(seg)
        if slot is None:
            return None
        seg.seq_words[slot] = 0
        base = seg.data_offset(slot)
        view = seg.array[base:base + nbytes]
        self.loans.append((seg, slot, view))
        self.next_slot = slot + 1
        return view

    def reclaim(self) -> None:
        """Unlock loaned slots whose array was dropped without being published."""
        if not self.loans:
            return
        kept = []
        for loan in self.loans:
            # ours: the tuple, `loan[2]` on the stack... counted as in ShmReader.release
            if sys.getrefcount(loan[2]) > 2:
                kept.append(loan)
            elif loan[0].fd >= 0:
                lock(loan[0].fd, fcntl.F_UNLCK, loan[1])
        self.loans = kept

    def loaned(self, buffers: list[Any]) -> int:
        """The index in `loans` of the loan `buffers` (one array) was built on, or -1."""
        if not self.loans or len(buffers) != 1 or not len(buffers[0]):
            return -1
        address = np.frombuffer(buffers[0], dtype=np.uint8).__array_interface__["data"][0]
        for i, (seg, _, view) in enumerate(self.loans):
            if seg is self.seg and view.__array_interface__["data"][0] == address \
                    and len(buffers[0]) <= len(view):
                return i
        return -1

    def drop_loan(self, index: int) -> None:
        seg, slot, _ = self.loans.pop(index)
        if seg.fd >= 0:
            lock(seg.fd, fcntl.F_UNLCK, slot)

    def write(self, buffers: list[Any], send: Callable[[bytes], None], loan: int = -1, header: bytes = b"") -> bool:
        """Put `buffers` in a slot and `send` its descriptor frame; False (nothing sent) when
        every slot is held. Loan number `loan` (`loaned(buffers)`) is published without a copy.

        The slot is write-locked and marked "seq N being written" before the copy, so the
        subscriber's wake-up overlaps the copy instead of following it. Without bells, the
        descriptor goes out before the copy. With bells, the body (descriptor and `header`) is
        stored in the slot's record, ZeroMQ's copy goes out last, and the notifier is kicked
        twice: on entry (a subscriber wakes about when the body is stored), and once it is
        stored, in case the first ring came too early."""
        bells = self.bells
        belled = bool(bells.fds)
        if belled:
            bells.kick()
        sizes = [len(b) for b in buffers]
        if loan >= 0:
            seg, slot, _ = self.loans.pop(loan)
            self.seq += 1
            descriptor = DESCRIPTOR_MAGIC + descriptor_encoder.encode(
                Descriptor(seg.name, slot, self.seq, [(0, sizes[0])]))
            self._store_body(seg, slot, descriptor, header)  # its word is 0 while on loan
            seg.seq_words[slot] = self.seq
            lock(seg.fd, fcntl.F_UNLCK, slot)
            if belled:
                bells.kick()
            send(descriptor)
            return True
        offsets, pos = [], 0
        for n in sizes:
            offsets.append(pos)
            pos += -(-n // ALIGN) * ALIGN
        seg = self._segment_for(pos)
        free = self._free_slot(seg)
        if free is None:
            self.fallbacks += 1
            return False
        slot = free
        try:
            self.seq += 1
            descriptor = DESCRIPTOR_MAGIC + descriptor_encoder.encode(
                Descriptor(seg.name, slot, self.seq, list(zip(offsets, sizes, strict=True))))
            # word 0 while the record changes: a bell reader that read the old one sees it moved
            seg.seq_words[slot] = 0
            self._store_body(seg, slot, descriptor, header)
            seg.seq_words[slot] = self.seq | WRITING
            if belled:
                bells.kick()
            else:
                send(descriptor)
            base = seg.data_offset(slot)
            arr = seg.array
            for off, n, buf in zip(offsets, sizes, buffers, strict=True):
                if n:
                    arr[base + off:base + off + n] = np.frombuffer(buf, dtype=np.uint8)  # the one copy
            seg.seq_words[slot] = self.seq
        finally:
            lock(seg.fd, fcntl.F_UNLCK, slot)  # on an error the word still says "being written": an overrun
        if belled:
            send(descriptor)
        self.next_slot = slot + 1
        return True

    def _drop(self, seg: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg.path)
        seg.close()

    def close(self) -> None:
        self.loans.clear()
        if self.seg is not None:
            self._drop(self.seg)
            self.seg = None
        self.bells.close()

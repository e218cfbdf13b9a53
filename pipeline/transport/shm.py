"""Shared memory for large frames between processes of one machine (issue 8).

A publisher copies a message's arrays into one slot of a ring of slots in a shared-memory segment
and sends over ZeroMQ only the header and a small descriptor (segment, slot, sequence number,
offset and length of each array). A subscriber maps the segment once and hands the node read-only
numpy views of the slot: one copy in all (into the slot), then zero-copy, and ZeroMQ wakes the
subscriber up as before.

Safety, without any lock-free trickery that Python cannot express:
- Each slot is guarded by an open-file-description (OFD) byte-range lock on the segment file. The
  publisher takes a non-blocking *write* lock to rewrite a slot; a subscriber takes a non-blocking
  *read* lock before it looks at a slot and keeps it while any array of that slot is alive in its
  process (a reference count on the slot's buffer tells; it is checked at the next drain).
- So the publisher never rewrites a slot that a subscriber is reading (it skips to the next free
  slot; if all are held, it sends that message inline over ZeroMQ: it never waits), and a
  subscriber never reads a slot that is being rewritten (it cannot get the read lock) or was
  rewritten after the descriptor was sent (the slot's sequence number differs): such a message is
  counted as an overrun and not delivered. Torn frames cannot be delivered.
- The kernel drops the locks of a process that dies (also by `kill -9`), so a crashed subscriber
  pins nothing. Lock calls are system calls: they order the memory accesses on both sides.
- The publisher sends the descriptor right after it has write-locked the slot and marked it "seq N
  being written", and only then copies: the subscriber's wake-up (ZeroMQ's I/O threads, about as
  long as a 2.7 MB copy on this machine) overlaps the copy instead of following it. A subscriber
  that finds the slot still locked and still marked "N being written" waits for the copy to end
  (non-blocking lock attempts, `WAIT_S` at most); any other state means the slot moved on: overrun.
  The runner goes further (`resolve(wait=False)`, then `settle`): it takes such a slot's arrays
  unread, decodes the message's header meanwhile, and waits for the copy only right before the
  callback, which is the first code that may read the pixels.

Bells: ZeroMQ wakes a subscriber through three threads (publisher's I/O thread, subscriber's I/O
thread, subscriber), about 0.2 ms here; one pipe write wakes it directly. A subscriber that asks
for it (`ShmReader.enable_bell`; the runner does) hands the write end of a pipe to the publisher
of each segment it maps, over a unix socket in the run directory (mode 0600; the publisher takes
only a non-blocking pipe's write end from a peer of its own user, 64 at most, and forgets it when
the connection ends). The publisher stores each message's body (`BODY`, descriptor, header) in its
slot's record after page 0, and a notifier thread writes a byte down each pipe: not the publishing
thread, because the kernel runs a task woken through a pipe on the waker's CPU, which here is busy
with the copy; from the notifier it wakes on another one and decodes while the copy goes on. The
subscriber reads the bodies newer than the last message it took (`rung`) and resolves them as it
would a descriptor from ZeroMQ; ZeroMQ still carries every descriptor (after the copy when there
are bells, for anyone without one, and as the fallback for a body that did not fit), and the
subscriber skips what it already took by the writer's sequence number, which starts at
CLOCK_MONOTONIC so that a respawned publisher's numbers are above its predecessor's. A message
the publisher sends inline (small, or every slot held) takes a number but no slot: the bell path
stops at such a hole, and ZeroMQ, which carries everything in order, delivers it and the next ones.

Segments are files in /dev/shm (tmpfs; the run directory when there is none), named after the
run directory (`run_prefix`), created with mode 0600 and O_EXCL, mapped with MAP_POPULATE. Each
mapping holds two descriptors (ours, for the locks, and the mmap object's own), so a topic costs
two fds per side however many messages flow. A publisher removes its segments when it
closes and, when it starts, the stale segments of an earlier incarnation of itself (after a
`kill -9`); `remove_segments(run_dir)` removes what is left of a whole graph (the launcher calls it
when the graph stops).

Loans (`ShmWriter.loan`, `Publisher.loan`): a source may fill a free slot directly (write-locked
while on loan) and publish the array it got; the publisher then sends its descriptor without any
copy. A loan dropped unpublished is reclaimed when nothing refers to its array any more.

Descriptors come from a socket: they are untrusted. A subscriber opens only a segment whose name
is exactly one of its topic's names in its run directory's namespace, that belongs to its user and
is not accessible to others, and checks that every offset and length lies inside the slot; a body
from a slot's record is checked the same way, its sequence number against the slot's, and once the
slot is read-locked the record must still hold exactly that body (the lock call orders memory
accesses; the reads before it did not, which matters on CPUs that reorder them, such as ARM).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import re
import secrets
import select
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

__all__ = ["BODY", "DESCRIPTOR_MAGIC", "Bell", "WAIT_S", "ShmReader", "ShmWriter", "bell_path", "remove_segments", "run_prefix",
           "segment_dir"]

DESCRIPTOR_MAGIC = b"DCSHM1"
_MAGIC_LEN = len(DESCRIPTOR_MAGIC)
_HEADER_BYTES = 4096  # page 0: magic, layout, and one 64-byte line per slot (its sequence number)
_MAX_SLOTS = 62  # slot lines must fit in page 0 after the layout line
# After page 0, one record per slot: the message's body (`BODY` + descriptor + header) for a
# subscriber woken by its bell. A body that does not fit is not stored (it goes by ZeroMQ only).
_META_BYTES = 1024
BODY = struct.Struct("<QH")  # a message's body starts with: the writer's seq, the descriptor's length
_META_LEN = struct.Struct("<I")
_MAX_BELLS = 64  # subscribers' bells one publisher rings at most (each costs it two fds)
_HAND_IN_S = 1.0  # longest a connection to the bell socket may take to send its bell
_BELLS_POSSIBLE = hasattr(os, "eventfd") and sys.platform.startswith("linux")
_ALIGN = 64
_SEG_MAGIC = b"DCSEG1\0\0"
_LAYOUT = struct.Struct("<8sQQ")  # magic, slots, slot_size
_WRITING = 1 << 63  # in a slot's sequence word: the message of that seq is being copied in
WAIT_S = 0.05  # longest a subscriber waits for an announced slot's copy (a 64 MiB one takes ~6 ms)
_SPIN_S = 0.001  # yield the CPU between lock attempts this long, then sleep between them
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux (l_pid must be 0 for OFD locks)
_BUSY = (errno.EAGAIN, errno.EACCES)


class _Descriptor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    segment: str
    slot: int
    seq: int
    arrays: list[tuple[int, int]]  # (offset in slot, length) per array


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Descriptor)


def segment_dir(run_dir: Path) -> Path:
    """Where segments live: /dev/shm when it is a tmpfs we can write to, else the run directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(run_dir)


def run_prefix(run_dir: Path) -> str:
    """The namespace of one run directory: every segment of the graph starts with it."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    return f"drivecast-{os.getuid()}-{digest}"


def _topic_stem(run_dir: Path, topic: str) -> str:
    return f"{run_prefix(run_dir)}.{topic.replace('/', '.')}."


def bell_path(run_dir: Path, topic: str) -> Path:
    """The publisher's unix socket where subscribers hand in their bells: in the run directory,
    which only its owner can enter (segments may live in the world-writable /dev/shm)."""
    return Path(run_dir) / f"{topic.replace('/', '.')}.bell"


def remove_segments(run_dir: Path) -> int:
    """Remove every segment of the graph that ran in `run_dir` (any topic, any incarnation)."""
    prefix = run_prefix(run_dir) + "."
    removed = 0
    for d in {segment_dir(run_dir), Path(run_dir)}:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(d / name)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


_LOCKS = {(kind, slot): _FLOCK.pack(kind, os.SEEK_SET, slot, 1, 0)
          for kind in (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK) for slot in range(_MAX_SLOTS)}


def _lock(fd: int, kind: int, slot: int) -> bool:
    """Non-blocking OFD lock (or unlock) of the byte that stands for `slot`; False if held by another."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _LOCKS[kind, slot])
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise


def _data_start(slots: int) -> int:
    """Where slot 0 starts: after page 0 and the slots' body records, on a page boundary."""
    return _HEADER_BYTES + -(-slots * _META_BYTES // 4096) * 4096


class _Segment:
    """One mapped segment: page 0 (layout, one sequence word per slot), one body record per slot
    (`_META_BYTES`, page-aligned in all), then `slots` slots of `slot_size` bytes."""

    def __init__(self, path: Path, fd: int, writable: bool) -> None:
        self.path = path
        self.name = path.name
        self.fd = fd  # kept for the slot locks (Python's mmap holds a second, private duplicate)
        try:
            size = os.fstat(fd).st_size
            if size < _HEADER_BYTES:
                raise ValueError(f"{path}: {size} bytes is too small for a drivecast segment")
            if writable:
                # MAP_POPULATE: page faults now, not on the first frames.
                self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            else:
                # ACCESS_READ makes the buffer itself read-only: no numpy flag can make a view
                # writable (a write would otherwise be a SIGSEGV on this PROT_READ mapping).
                self.mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                with contextlib.suppress(OSError, ValueError):
                    self.mm.madvise(getattr(mmap, "MADV_POPULATE_READ", 22))  # Linux >= 5.14
        except BaseException:
            os.close(fd)
            raise
        magic, self.slots, self.slot_size = _LAYOUT.unpack_from(self.mm, 0)
        self.data_start = _data_start(self.slots) if 0 < self.slots <= _MAX_SLOTS else 0
        if magic != _SEG_MAGIC or not self.data_start or size != self.data_start + self.slots * self.slot_size:
            self.mm.close()
            os.close(fd)
            raise ValueError(f"{path}: not a drivecast segment of a consistent size")
        # A uint8 view of the whole segment; slices of it are what nodes receive.
        self.array = np.frombuffer(self.mm, dtype=np.uint8)
        # Each slot's sequence word (on its own 64-byte line of page 0), read and written as one
        # aligned 8-byte access: a subscriber peeks at it without the lock (`ShmReader._await_copy`),
        # and struct.pack_into writes it a byte at a time (a peek then sees values never written).
        self.seq_words = np.frombuffer(self.mm, dtype=np.uint64, count=_HEADER_BYTES // 8)[_ALIGN // 8::_ALIGN // 8]
        self.slot_words = self.seq_words[:self.slots]
        self.leases = 0

    def data_offset(self, slot: int) -> int:
        return self.data_start + slot * self.slot_size

    def close(self) -> None:
        """Unmap now if no array of this segment is alive; otherwise the last one unmaps it."""
        if self.fd < 0:
            return
        self.array = self.seq_words = self.slot_words = None  # type: ignore[assignment]
        os.close(self.fd)  # our locks stay while the mmap's own duplicate lives, which is harmless
        self.fd = -1
        with contextlib.suppress(BufferError):  # views still alive: the last of them unmaps it
            self.mm.close()


class ShmWriter:
    """The publisher's side: copies arrays into a free slot and returns the descriptor frame."""

    def __init__(self, run_dir: Path, topic: str, slots: int = 4) -> None:
        if not 2 <= slots <= _MAX_SLOTS:
            raise ValueError(f"shm slots: expected 2..{_MAX_SLOTS}, got {slots}")
        self.run_dir = Path(run_dir)
        self.dir = segment_dir(self.run_dir)
        self.stem = _topic_stem(self.run_dir, topic)
        self.slots = slots
        self.seg: _Segment | None = None
        self.next_slot = 0
        # CLOCK_MONOTONIC at the start: a respawned publisher's messages number above its previous
        # life's, so that a subscriber's "seen up to seq" stays right across the restart.
        self.seq = time.monotonic_ns()
        self.fallbacks = 0  # messages sent inline because every slot was held by readers
        # Loaned slots (see `loan`): write-locked by us, each with the slot's uint8 array.
        self.loans: list[tuple[_Segment, int, np.ndarray]] = []
        self._remove_stale()
        # Bells: the write ends of subscribers' pipes (see `ShmReader.enable_bell`), rung by
        # `_notifier` while this thread copies; `_bell_lock` keeps an fd from closing mid-ring.
        self.bell_fds: list[int] = []
        self._bells: list[tuple[socket.socket, int]] = []  # (connection, pipe): EOF = subscriber gone
        self._waiting: list[tuple[socket.socket, float]] = []  # connections whose bell has not come yet
        self._bell_lock = threading.Lock()
        self._kick = -1  # eventfd that wakes the notifier thread (made with the first bell)
        self._notifier: threading.Thread | None = None
        self._bell_listener: socket.socket | None = None
        self._bell_poll = select.poll()  # the listener and the connections
        self._bell_path = bell_path(self.run_dir, topic)
        self._bell_ino = -1
        if _BELLS_POSSIBLE and len(str(self._bell_path)) < 108:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bell_path)  # an earlier incarnation's, after a kill -9
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                listener.bind(str(self._bell_path))
                os.chmod(self._bell_path, 0o600)
                self._bell_ino = os.stat(self._bell_path).st_ino
                listener.listen(_MAX_BELLS)
                self._bell_listener = listener
                self._bell_poll.register(listener, select.POLLIN)
            except OSError:
                listener.close()

    def accept_bells(self) -> None:
        """Take the bells handed in since the last call and forget those of subscribers that went
        away (their connection ended). Called every few ms by the publisher, after a send: one
        poll() when nothing changed. Never waits: a connection whose bell has not arrived yet is
        looked at again next time, and dropped after `_HAND_IN_S`."""
        if self._bell_listener is None or not (self._bell_poll.poll(0) or self._waiting):
            return
        alive: list[tuple[socket.socket, int]] = []
        dead: list[tuple[socket.socket, int]] = []
        for bell in self._bells:
            try:
                gone = bell[0].recv(1, socket.MSG_DONTWAIT) == b""  # they never send: readable = gone
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            (dead if gone else alive).append(bell)
        now = time.monotonic()
        while len(alive) + len(self._waiting) < _MAX_BELLS:
            try:
                conn, _ = self._bell_listener.accept()
            except OSError:  # none waiting (or out of fds: try again later)
                break
            conn.setblocking(False)
            self._bell_poll.register(conn, select.POLLIN)
            self._waiting.append((conn, now + _HAND_IN_S))
        waiting = []
        for conn, deadline in self._waiting:
            try:
                fd = _take_bell(conn)
            except BlockingIOError:
                if now < deadline:
                    waiting.append((conn, deadline))
                    continue
                fd = None
            if fd is None:
                dead.append((conn, -1))
            else:
                alive.append((conn, fd))
        self._waiting = waiting
        if alive and self._notifier is None:
            self._kick = os.eventfd(0, os.EFD_CLOEXEC)
            self._notifier = threading.Thread(target=self._notify_loop, name=f"bells {self.stem}", daemon=True)
            self._notifier.start()
        for conn, _ in dead:
            self._bell_poll.unregister(conn)
        with self._bell_lock:
            self._bells = alive
            self.bell_fds = [fd for _, fd in alive]
            _close_bells(dead)

    def _ring(self) -> None:
        """One byte down each subscriber's pipe (a full pipe already says "look")."""
        with self._bell_lock:
            for fd in self.bell_fds:
                # full, or its reader is gone (its connection tells, and it is dropped): no matter
                with contextlib.suppress(OSError):
                    os.write(fd, b"\0")

    def _notify_loop(self) -> None:
        """The notifier thread: rings the bells whenever `write` kicks it. A subscriber woken by a
        pipe runs on the waker's CPU, so it must not be the publishing thread, which copies the
        frame next: rung from here, the subscriber wakes on another CPU and decodes the header
        while the copy goes on (numpy releases the GIL while it copies)."""
        while True:
            try:
                os.eventfd_read(self._kick)
            except OSError:
                return
            if self._notifier is None:
                return
            self._ring()
    def inline(self) -> None:
        """The publisher sent a message inline to shared-memory subscribers: it takes a number,
        so that the bell path stops at the hole and lets ZeroMQ deliver it in order."""
        self.seq += 1

    def _store_body(self, seg: _Segment, slot: int, descriptor: bytes, header: bytes) -> None:
        """The message's body in the slot's record, for subscribers woken by a bell; an empty
        record when it does not fit (they get that message over ZeroMQ)."""
        start = _HEADER_BYTES + slot * _META_BYTES
        n = BODY.size + len(descriptor) + len(header)
        mm = seg.mm
        if not self.bell_fds or not header or n > _META_BYTES - _META_LEN.size:
            _META_LEN.pack_into(mm, start, 0)
            return
        _META_LEN.pack_into(mm, start, n)
        p = start + _META_LEN.size
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

    def _new_segment(self, need: int) -> _Segment:
        slot_size = -(-max(need + need // 4, 4096) // 4096) * 4096  # room to grow by a quarter
        path = self.dir / f"{self.stem}{secrets.token_hex(6)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _data_start(self.slots) + self.slots * slot_size)
            os.pwrite(fd, _LAYOUT.pack(_SEG_MAGIC, self.slots, slot_size), 0)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        try:
            return _Segment(path, fd, writable=True)  # closes fd itself if it fails
        except BaseException:
            os.unlink(path)
            raise

    def _segment_for(self, need: int) -> _Segment:
        seg = self.seg
        if seg is None or need > seg.slot_size:
            if seg is not None:
                self._drop(seg)  # loans in it keep their mapping; publishing them will copy
            seg = self.seg = self._new_segment(need)
            self.next_slot = 0
        return seg

    def _free_slot(self, seg: _Segment) -> int | None:
        """Write-lock the next slot that no reader holds and that is not on loan."""
        loaned = {slot for s, slot, _ in self.loans if s is seg} if self.loans else ()
        for k in range(seg.slots):
            slot = (self.next_slot + k) % seg.slots
            # (our own lock never conflicts with itself: loaned slots are skipped by hand)
            if slot not in loaned and _lock(seg.fd, fcntl.F_WRLCK, slot):
                return slot
        return None

    def loan(self, nbytes: int) -> np.ndarray | None:
        """A slot's first `nbytes` as a writable uint8 array, to be filled and then published
        without a copy (see `write`), or None when every slot is held. The slot stays locked
        against readers until it is published, or until nothing refers to the array any more."""
        self.reclaim()
        seg = self._segment_for(-(-max(nbytes, 1) // _ALIGN) * _ALIGN)
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
                _lock(loan[0].fd, fcntl.F_UNLCK, loan[1])
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
            _lock(seg.fd, fcntl.F_UNLCK, slot)

    def write(self, buffers: list[Any], send: Callable[[bytes], None], loan: int = -1, header: bytes = b"") -> bool:
        """Put `buffers` in a slot and `send` its descriptor frame; False (nothing sent) when
        every slot is held. Loan number `loan` (`loaned(buffers)`) is published without a copy.

        Without bells, the descriptor goes out before the copy, and ZeroMQ's wake-up of the
        subscriber overlaps the copy (the subscriber waits for its end). With bells, the body
        (descriptor and message `header`) is stored in the slot's record for the subscribers to
        find, ZeroMQ's copy of it goes out last, and the notifier is kicked twice: first on entry,
        since a subscriber wakes up about 0.1 ms after a ring, by when the body is stored; then
        once it is stored, for the case where that first ring came too early."""
        belled = bool(self.bell_fds)
        if belled:
            os.eventfd_write(self._kick, 1)
        sizes = [len(b) for b in buffers]
        if loan >= 0:
            seg, slot, _ = self.loans.pop(loan)
            self.seq += 1
            descriptor = DESCRIPTOR_MAGIC + _encoder.encode(_Descriptor(seg.name, slot, self.seq, [(0, sizes[0])]))
            self._store_body(seg, slot, descriptor, header)  # its word is 0 while on loan
            seg.seq_words[slot] = self.seq
            _lock(seg.fd, fcntl.F_UNLCK, slot)
            if belled:
                os.eventfd_write(self._kick, 1)
            send(descriptor)
            return True
        offsets, pos = [], 0
        for n in sizes:
            offsets.append(pos)
            pos += -(-n // _ALIGN) * _ALIGN
        seg = self._segment_for(pos)
        free = self._free_slot(seg)
        if free is None:
            self.fallbacks += 1
            return False
        slot = free
        try:
            self.seq += 1
            descriptor = DESCRIPTOR_MAGIC + _encoder.encode(
                _Descriptor(seg.name, slot, self.seq, list(zip(offsets, sizes, strict=True))))
            # word 0 while the record changes: a bell reader that read the old one sees it moved
            seg.seq_words[slot] = 0
            self._store_body(seg, slot, descriptor, header)
            seg.seq_words[slot] = self.seq | _WRITING
            if belled:
                os.eventfd_write(self._kick, 1)
            else:
                send(descriptor)
            base = seg.data_offset(slot)
            arr = seg.array
            for off, n, buf in zip(offsets, sizes, buffers, strict=True):
                if n:
                    arr[base + off:base + off + n] = np.frombuffer(buf, dtype=np.uint8)  # the one copy
            seg.seq_words[slot] = self.seq
        finally:
            _lock(seg.fd, fcntl.F_UNLCK, slot)  # on an error the word still says "being written": an overrun
        if belled:
            send(descriptor)
        self.next_slot = slot + 1
        return True

    def _drop(self, seg: _Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(seg.path)
        seg.close()

    def close(self) -> None:
        self.loans.clear()
        if self.seg is not None:
            self._drop(self.seg)
            self.seg = None
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            os.eventfd_write(self._kick, 1)
            notifier.join(1.0)
            if not notifier.is_alive():  # else it may still read it: leave the fd to the process
                os.close(self._kick)
        with self._bell_lock:
            _close_bells(self._bells + [(conn, -1) for conn, _ in self._waiting])
            self._bells, self.bell_fds, self._waiting = [], [], []
        if self._bell_listener is not None:
            self._bell_listener.close()
            self._bell_listener = None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self._bell_path).st_ino == self._bell_ino:  # not a successor's (a late close)
                    os.unlink(self._bell_path)


def _take_bell(conn: socket.socket) -> int | None:
    """The pipe a subscriber of this user handed in on `conn`, reopened write-only, non-blocking
    and close-on-exec through /proc (a file description of our own: the sender cannot make our
    writes block), or None for anything else. Raises BlockingIOError while nothing has arrived."""
    fds: list[int] = []
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 8, 1, socket.MSG_CMSG_CLOEXEC)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid == os.getuid() and msg == b"bell" and len(fds) == 1 and stat.S_ISFIFO(os.fstat(fds[0]).st_mode):
            return os.open(f"/proc/self/fd/{fds[0]}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BlockingIOError:
        raise
    except OSError:
        pass
    finally:
        for fd in fds:
            os.close(fd)
    return None


def _close_bells(bells: list[tuple[socket.socket, int]]) -> None:
    for conn, fd in bells:
        conn.close()
        if fd >= 0:
            os.close(fd)


def _record_holds(seg: _Segment, slot: int, body: bytes | None) -> bool:
    """Whether `slot`'s record is empty or holds exactly `body` (call with the slot locked)."""
    if body is None:
        return True
    start = _HEADER_BYTES + slot * _META_BYTES
    n = _META_LEN.unpack_from(seg.mm, start)[0]
    return n == 0 or seg.mm[start + _META_LEN.size:start + _META_LEN.size + n] == body


class Bell:
    """A subscriber's bell: a non-blocking pipe. The publisher gets the write end; we keep one
    too, so that the pipe never reads as closed (poll() would then never wait)."""

    def __init__(self) -> None:
        self.fd, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def drain(self) -> None:
        """Empty the pipe, so that poll() waits for the next ring."""
        with contextlib.suppress(OSError):
            while len(os.read(self.fd, 4096)) == 4096:
                pass

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.write_end)


class ShmReader:
    """The subscriber's side: turns a descriptor into read-only arrays of the slot (no copy)."""

    def __init__(self, run_dir: Path, topic: str) -> None:
        self.run_dir = Path(run_dir)
        self.dir = segment_dir(self.run_dir)
        stem = _topic_stem(self.run_dir, topic)
        self._name = re.compile(re.escape(stem) + r"[0-9a-f]{12}")
        self.segments: dict[str, _Segment] = {}
        self.current: str | None = None
        # (segment, slot, the slot's frame arrays): held read locks, released once unused.
        self.leases: list[tuple[_Segment, int, list[np.ndarray]]] = []
        # (segment, slot, seq, frames, body) handed out by `resolve(wait=False)` before the copy
        # ended, not locked yet: `settle` locks them (or drops them), `release` forgets the rest.
        self.pending: list[tuple[_Segment, int, int, list[np.ndarray], bytes | None]] = []
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
        """A pipe's read end that the publisher writes to when it publishes a message (once on
        the way in, once the body is stored), well before ZeroMQ (three thread wake-ups) brings
        the descriptor: poll it and call `rung`. It is handed to the publisher of each segment
        this reader maps. None off Linux."""
        if self.bell is None and _BELLS_POSSIBLE:
            self.bell = Bell()
        return self.bell_fd

    @property
    def bell_fd(self) -> int | None:
        return None if self.bell is None else self.bell.fd

    def _hand_in_bell(self) -> None:
        """Give our bell to the publisher that owns the segment just mapped (a new one may be a
        new incarnation of it); if that fails, messages keep coming over ZeroMQ alone."""
        if self._bell_conn is not None:
            self._bell_conn.close()
            self._bell_conn = None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            conn.settimeout(0.05)
            conn.connect(str(self._bell_path))
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            if uid != os.getuid():
                raise PermissionError(f"{self._bell_path}: the publisher is another user")
            socket.send_fds(conn, [b"bell"], [self.bell.write_end])  # type: ignore[union-attr]
            self._bell_conn = conn
        except OSError:
            conn.close()

    def rung(self) -> list[bytes]:
        """After the bell: the bodies (see `BODY`) of the messages stored in the current segment
        that follow `last_seq` without a hole, oldest first, to be resolved like descriptors from
        ZeroMQ. Stops at a hole (a message the publisher sent inline takes a number but no slot,
        or a slot went round again while we were away) and at a body that was not stored: that
        message and what follows come over ZeroMQ, which carries every one of them in order."""
        self.bell.drain()  # type: ignore[union-attr]
        seg = self.segments.get(self.current) if self.current is not None else None
        if seg is None:
            return []
        words = seg.slot_words
        last = self.last_seq
        found = sorted((w & ~_WRITING, slot) for slot, w in enumerate(words.tolist()) if w & ~_WRITING > last)
        if not found:
            return []
        bodies = []
        mm = seg.mm
        for seq, slot in found:
            if seq != self.last_seq + 1:
                break  # a hole: a message that went inline, or one rewritten since; ZeroMQ goes first
            start = _HEADER_BYTES + slot * _META_BYTES
            n = _META_LEN.unpack_from(mm, start)[0]
            if not BODY.size < n <= _META_BYTES - _META_LEN.size:
                break
            body = mm[start + _META_LEN.size:start + _META_LEN.size + n]
            if words.item(slot) & ~_WRITING != seq or BODY.unpack_from(body)[0] != seq:
                self.overruns += 1  # rewritten while we read it: gone (a later message took the slot)
            else:
                bodies.append(body)
            self.last_seq = seq
        return bodies

    def _segment(self, name: str) -> _Segment | None:
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
            seg = _Segment(self.dir / name, fd, writable=False)
        except (OSError, ValueError):
            return None
        self.segments[name] = seg
        self.unreachable = 0  # counts consecutive failures: one that opens proves the path works
        if self.current is not None and self.current != name:
            self._retire(self.current)
        self.current = name
        if self.bell is not None:
            self._hand_in_bell()
        return seg

    def _retire(self, name: str) -> None:
        """The publisher moved to a new segment: unmap the old one once no lease holds it."""
        seg = self.segments.get(name)
        if seg is not None and seg.leases == 0:
            del self.segments[name]
            seg.close()

    def resolve(self, descriptor: Any, wait: bool = True, body: bytes | None = None) -> list[np.ndarray] | None:
        """The arrays a descriptor points to, each a read-only uint8 view of the slot, or None
        (counted) if the descriptor is invalid or the slot was rewritten.

        `wait=False`: a slot whose copy is still under way is not waited for here; its arrays come
        back unread and `settle` must be called before anything reads them. The caller decodes the
        header meanwhile, so that work overlaps the publisher's copy too.

        `body`: the whole body the descriptor came in. Once the slot is read-locked, the slot's
        record, if the publisher stored one, must hold the same bytes: a body read from a record
        without the lock (`rung`) is then known to be whole on any CPU, however it orders memory
        accesses, since the lock call orders them."""
        raw = getattr(descriptor, "bytes", descriptor)  # a descriptor is a few dozen bytes
        if raw[:_MAGIC_LEN] != DESCRIPTOR_MAGIC:
            self.bad += 1
            return None
        try:
            d = _decoder.decode(memoryview(raw)[_MAGIC_LEN:])
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
        if not wait and seg.slot_words.item(slot) == d.seq | _WRITING:
            frames = [array[base + o:base + o + n] for o, n in d.arrays]
            seg.leases += 1
            self.pending.append((seg, slot, d.seq, frames, body))
            self.last_seq = max(self.last_seq, d.seq)  # checked against the slot: not just any number
            return frames
        if not _lock(seg.fd, fcntl.F_RDLCK, slot) and not self._await_copy(seg, slot, d.seq):
            self.overruns += 1  # the publisher is rewriting this slot for a later message
            return None
        if int(seg.seq_words[slot]) != d.seq or not _record_holds(seg, slot, body):
            _lock(seg.fd, fcntl.F_UNLCK, slot)
            self.overruns += 1  # rewritten since the descriptor was sent
            return None
        frames = [array[base + o:base + o + n] for o, n in d.arrays]
        seg.leases += 1
        self.leases.append((seg, slot, frames))
        self.last_seq = max(self.last_seq, d.seq)
        return frames

    def settle(self, first: np.ndarray) -> bool:
        """For arrays that `resolve(wait=False)` returned (`first` is the first of them): wait
        until the publisher's copy is complete and read-lock the slot. False (counted as an
        overrun) when the slot moved on to another message: those arrays must not be read."""
        for i, (seg, slot, seq, frames, body) in enumerate(self.pending):
            if frames[0] is first:
                del self.pending[i]
                copying = seg.slot_words.item(slot) == seq | _WRITING  # then a lock attempt would fail
                if not copying and _lock(seg.fd, fcntl.F_RDLCK, slot) or self._await_copy(seg, slot, seq):
                    if int(seg.seq_words[slot]) == seq and _record_holds(seg, slot, body):
                        self.leases.append((seg, slot, frames))
                        return True
                    _lock(seg.fd, fcntl.F_UNLCK, slot)
                self.overruns += 1
                self._unlease(seg)
                return False
        return True  # not pending: resolved with its lock, or not from shared memory

    @staticmethod
    def _await_copy(seg: _Segment, slot: int, seq: int) -> bool:
        """Read-lock `slot` once the publisher has copied message `seq` into it (it announced the
        message before the copy, and marks it done just before it unlocks); False as soon as the
        slot holds another message, or when `WAIT_S` passes."""
        start = time.monotonic()
        while int(seg.seq_words[slot]) in (seq | _WRITING, seq):
            waited = time.monotonic() - start
            if waited > WAIT_S:
                return False
            if waited < _SPIN_S:
                os.sched_yield()
            else:
                time.sleep(0.0001)
            if _lock(seg.fd, fcntl.F_RDLCK, slot):
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
            _lock(seg.fd, fcntl.F_UNLCK, slot)
            self._unlease(seg)
        self.leases = kept
        return len(kept)

    def _unlease(self, seg: _Segment) -> None:
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

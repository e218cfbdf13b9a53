"""A shared-memory segment's layout, names and slot locks: what writer and reader agree on.

A segment is a file in /dev/shm (the run directory when there is none), mode 0600, named after the
run directory and topic. Page 0 holds the layout and one sequence word per slot; then one body
record per slot (for bells); then the slots. Each slot is guarded by an OFD byte-range lock on
the file: the kernel drops a dead process's locks, and lock calls order memory accesses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

import msgspec
import numpy as np

__all__ = ["ALIGN", "BODY", "DESCRIPTOR_MAGIC", "MAX_SLOTS", "META_BYTES", "META_LEN", "RECORDS_START", "WRITING",
           "Descriptor", "Segment", "create_layout", "data_start", "descriptor_decoder", "descriptor_encoder",
           "lock", "record_holds", "record_start", "remove_segments", "run_prefix", "segment_dir", "topic_stem"]

DESCRIPTOR_MAGIC = b"DCSHM1"
RECORDS_START = 4096  # page 0: magic, layout, and one 64-byte line per slot (its sequence word)
MAX_SLOTS = 62  # slot lines must fit in page 0 after the layout line
# One record per slot after page 0: the message's body (`BODY` + descriptor + header) for a
# subscriber woken by its bell. A body that does not fit is not stored (it goes by ZeroMQ only).
META_BYTES = 1024
BODY = struct.Struct("<QH")  # a message's body starts with: the writer's seq, the descriptor's length
META_LEN = struct.Struct("<I")
ALIGN = 64
WRITING = 1 << 63  # in a slot's sequence word: the message of that seq is being copied in
_SEG_MAGIC = b"DCSEG1\0\0"
_LAYOUT = struct.Struct("<8sQQ")  # magic, slots, slot_size
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux (l_pid must be 0 for OFD locks)
_BUSY = (errno.EAGAIN, errno.EACCES)


class Descriptor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    segment: str
    slot: int
    seq: int
    arrays: list[tuple[int, int]]  # (offset in slot, length) per array


descriptor_encoder = msgspec.msgpack.Encoder()
descriptor_decoder = msgspec.msgpack.Decoder(Descriptor)


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


def topic_stem(run_dir: Path, topic: str) -> str:
    """What every segment name of `topic` starts with (a 12-hex-digit suffix follows)."""
    return f"{run_prefix(run_dir)}.{topic.replace('/', '.')}."


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
          for kind in (fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK) for slot in range(MAX_SLOTS)}


def lock(fd: int, kind: int, slot: int) -> bool:
    """Non-blocking OFD lock (or unlock) of the byte that stands for `slot`; False if held by another."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _LOCKS[kind, slot])
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise


def data_start(slots: int) -> int:
    """Where slot 0 starts: after page 0 and the slots' body records, on a page boundary."""
    return RECORDS_START + -(-slots * META_BYTES // 4096) * 4096


def create_layout(fd: int, slots: int, slot_size: int) -> None:
    """Size a new segment file and write its layout line."""
    os.ftruncate(fd, data_start(slots) + slots * slot_size)
    os.pwrite(fd, _LAYOUT.pack(_SEG_MAGIC, slots, slot_size), 0)


class Segment:
    """One mapped segment: page 0 (layout, one sequence word per slot), one body record per slot
    (`META_BYTES`, page-aligned in all), then `slots` slots of `slot_size` bytes."""

    def __init__(self, path: Path, fd: int, writable: bool) -> None:
        self.path = path
        self.name = path.name
        self.fd = fd  # kept for the slot locks (Python's mmap holds a second, private duplicate)
        try:
            size = os.fstat(fd).st_size
            if size < RECORDS_START:
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
        magic, slots, slot_size = _LAYOUT.unpack_from(self.mm, 0)
        self.slots: int = slots
        self.slot_size: int = slot_size
        self.data_start = data_start(self.slots) if 0 < self.slots <= MAX_SLOTS else 0
        if magic != _SEG_MAGIC or not self.data_start or size != self.data_start + self.slots * self.slot_size:
            self.mm.close()
            os.close(fd)
            raise ValueError(f"{path}: not a drivecast segment of a consistent size")
        # A uint8 view of the whole segment; slices of it are what nodes receive.
        self.array = np.frombuffer(self.mm, dtype=np.uint8)
        # Each slot's sequence word (on its own 64-byte line of page 0), read and written as one
        # aligned 8-byte access: a reader peeks at it without the lock, and struct.pack_into
        # writes a byte at a time (a peek could then see values never written).
        self.seq_words = np.frombuffer(self.mm, dtype=np.uint64, count=RECORDS_START // 8)[ALIGN // 8::ALIGN // 8]
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


def record_start(slot: int) -> int:
    """Where `slot`'s body record starts: its length (`META_LEN`), then the body."""
    return RECORDS_START + slot * META_BYTES


def record_holds(seg: Segment, slot: int, body: bytes | None) -> bool:
    """Whether `slot`'s record is empty or holds exactly `body` (call with the slot locked)."""
    if body is None:
        return True
    start = record_start(slot)
    n = META_LEN.unpack_from(seg.mm, start)[0]
    return bool(n == 0 or seg.mm[start + META_LEN.size:start + META_LEN.size + n] == body)

"""Salvage a damaged drivecast MCAP: every intact chunk and message, and what was left out.

What `drivecast bag recover` keeps. The reader (`mcap_reader`) stops at the first damaged chunk, as
a player must; salvage walks the file record by record instead, skipping a damaged record by its
length when the next record starts where it says, else by scanning for the next chunk that parses,
decompresses and passes its CRC, and describes each stretch it drops from whatever the file still
says about it (the summary's chunk indexes, the damaged chunk's header, the message indexes after it).
"""

from __future__ import annotations

import io
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, Chunk, ChunkIndex, Message, MessageIndex
from mcap.stream_reader import breakup_chunk
from mcap.summary import Summary

from pipeline.errors import DecodeError
from pipeline.recordings.base import Item, RecordingError
from pipeline.recordings.mcap_format import MAGIC
from pipeline.recordings.mcap_reader import plays_as, to_item
from pipeline.wire.codec import peek_header
from pipeline.wire.messages import SCHEMAS

__all__ = ["Dropped", "Salvage"]

_MAX_CHUNK_UNCOMPRESSED = 1 << 30  # a damaged size field must not make zstd allocate more
_COMPRESSIONS = {"", "zstd", "lz4"}


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Dropped:
    """A damaged stretch of a file (bytes `start`..`end`) that `Salvage` leaves out: its time range,
    topics and message count where the summary or the records around it still say them. `bounded`:
    the times are those of the kept messages on either side, not of the dropped ones."""

    start: int
    end: int
    reason: str
    start_ns: int | None = None
    end_ns: int | None = None
    count: int | None = None  # None: not knowable (no summary and no message index left for it)
    topics: set[str] = field(default_factory=set)
    counted: bool = True
    bounded: bool = False

    def add(self, count: int | None, start_ns: int, end_ns: int, topics: Iterable[str]) -> None:
        self.counted = self.counted and count is not None
        self.count = (self.count or 0) + count if self.counted and count is not None else None
        self.start_ns = start_ns if self.start_ns is None else min(self.start_ns, start_ns)
        self.end_ns = end_ns if self.end_ns is None else max(self.end_ns, end_ns)
        self.topics.update(topics)

    def describe(self) -> str:
        """One line: what was dropped, when, on which topics, and why."""
        what = f"{self.count} messages" if self.count is not None else "an unknown number of messages"
        a, b = (_utc(t) if t is not None else "?" for t in (self.start_ns, self.end_ns))
        when = f" logged {'between' if self.bounded else 'from'} {a} ({self.start_ns} ns) " \
               f"{'and' if self.bounded else 'to'} {b} ({self.end_ns} ns)"
        on = f" on {', '.join(sorted(self.topics))}" if self.topics else ""
        where = f" (bytes {self.start}..{self.end})" if self.end else ""
        return f"dropped {what}{when}{on}: {self.reason}{where}"


class Salvage:
    """Every intact chunk and message of a drivecast MCAP, in file order, skipping damaged ones:
    what `drivecast bag recover` keeps. A record whose CRC, decompression or parse fails is skipped
    by its length when the next record starts where it says, else by scanning for the next chunk
    record that parses, decompresses and passes its CRC. A message whose frames do not unpack, or whose
    header the recorder could not store again, is dropped alone. `dropped` then lists what was left out,
    described from the summary's chunk indexes when it is readable, else from the damaged chunk's own
    header and the message indexes written after it."""

    def __init__(self, path: Path, summary: Summary | None) -> None:
        self.path = path
        self.summary = summary
        self.dropped: list[Dropped] = []
        self._channels: dict[int, Channel] = dict(summary.channels) if summary else {}
        self._orphans: dict[int, list[int]] = {}  # channel id -> log times of messages with no channel
        self._last_ns: int | None = None  # the log time of the last message kept

    def _topic(self, cid: int) -> str | None:
        """The topic recover would keep for channel `cid` (None: a Foxglove mirror, not copied)."""
        ch = self._channels.get(cid)
        if ch is None:
            return f"channel {cid} (definition lost)"
        return ch.topic if plays_as(ch, None) is not None else None

    def items(self) -> Iterator[Item]:
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield from self._walk(mm, len(mm))
        if self._orphans:
            times = [t for ts in self._orphans.values() for t in ts]
            d = Dropped(0, 0, "their channel was defined in a damaged chunk")
            d.add(len(times), min(times), max(times), (f"channel {c} (definition lost)" for c in self._orphans))
            self.dropped.append(d)

    def _walk(self, mm: mmap.mmap, size: int) -> Iterator[Item]:
        p = len(MAGIC)
        bad: Dropped | None = None  # the damaged chunk whose message indexes may follow
        while p + 9 <= size:
            op = mm[p]
            (length,) = struct.unpack_from("<Q", mm, p + 1)
            end = p + 9 + length
            if op == Opcode.DATA_END or op == Opcode.FOOTER:
                return
            body = io.BytesIO(mm[p + 9:end]) if _record_fits(mm, p) else None
            try:
                if body is None:
                    raise RecordingError(f"opcode {op:#x}, length {length}, {size - p - 9} bytes left")
                if op == Opcode.CHUNK:
                    records = self._open_chunk(Chunk.read(ReadDataStream(body)), p)
                    bad = None
                    yield from self._chunk_items(records, p, end)
                elif op == Opcode.MESSAGE_INDEX and bad is not None:
                    self._count_index(bad, MessageIndex.read(ReadDataStream(body)))
                elif op == Opcode.CHANNEL:
                    c = Channel.read(ReadDataStream(body))
                    self._channels[c.id] = c
                elif op == Opcode.MESSAGE:
                    yield from self._chunk_items([Message.read(ReadDataStream(body), length)], p, end)
            except Exception as exc:  # mcap, zstd, lz4, struct, unicode errors: a damaged record
                why = f"{type(exc).__name__}: {str(exc)[:80]}"
                if op == Opcode.CHUNK and body is not None and _record_fits(mm, end):
                    d = self._drop(p, end, f"damaged chunk at byte {p} ({why})", mm, header=True)
                    bad = d if self.summary is None else None  # else the summary's index counted it
                else:
                    skipped = self._skip(mm, p, size, f"damaged record at byte {p} ({why})")
                    if skipped is None:
                        return
                    end, bad = skipped.end, None
            p = end

    def _count_index(self, d: Dropped, idx: MessageIndex) -> None:
        topic = self._topic(idx.channel_id)
        if topic is not None and idx.records:
            times = [t for t, _ in idx.records]
            d.add(len(idx.records), min(times), max(times), [topic])

    def _open_chunk(self, chunk: Chunk, offset: int) -> list[Any]:
        if chunk.compression not in _COMPRESSIONS or chunk.uncompressed_size > _MAX_CHUNK_UNCOMPRESSED:
            raise RecordingError(f"chunk at byte {offset}: compression {chunk.compression!r}, "
                                 f"{chunk.uncompressed_size} bytes uncompressed")
        return breakup_chunk(chunk, validate_crc=True)

    def _chunk_items(self, records: list[Any], start: int, end: int) -> Iterator[Item]:
        batch = sorted((r for r in records if isinstance(r, Message)), key=lambda m: m.log_time)
        self._channels.update((r.id, r) for r in records if isinstance(r, Channel))
        for m in batch:
            ch = self._channels.get(m.channel_id)
            if ch is None:
                self._orphans.setdefault(m.channel_id, []).append(m.log_time)
            elif plays_as(ch, None) is not None:
                try:
                    item = to_item(self.path, ch, m)
                    _check_header(item)
                except (RecordingError, DecodeError) as exc:
                    last = self.dropped[-1] if self.dropped else None
                    d = last if last is not None and last.start == start else \
                        Dropped(start, end, f"a message in the chunk at byte {start} does not unpack: {exc}")
                    if d is not last:
                        self.dropped.append(d)
                    d.add(1, m.log_time, m.log_time, [ch.topic])
                    continue
                self._last_ns = m.log_time
                yield item

    def _drop(self, start: int, end: int, reason: str, mm: mmap.mmap, header: bool = False,
              next_ns: int | None = None) -> Dropped:
        """Record bytes `start`..`end` as dropped, described by the summary's chunk indexes in that range,
        else by the chunk record's own header at `start` (`header`, or when it is a chunk's), else bounded
        by the kept messages around it (the last one kept and `next_ns`)."""
        d = Dropped(start, end, reason)
        self.dropped.append(d)
        if self.summary is not None:
            for ci in self.summary.chunk_indexes:
                if start <= ci.chunk_start_offset < end:
                    d.add(self._indexed_count(mm, ci), ci.message_start_time, ci.message_end_time,
                          [t for t in map(self._topic, ci.message_index_offsets) if t is not None])
            if d.start_ns is not None:
                return d
        if (header or mm[start] == Opcode.CHUNK) and start + 25 <= len(mm):
            start_ns, end_ns = struct.unpack_from("<QQ", mm, start + 9)
            if (self._last_ns or 0) <= start_ns <= end_ns <= (next_ns if next_ns is not None else end_ns):
                d.start_ns, d.end_ns = start_ns, end_ns  # the count comes from the message indexes after it
                return d
        d.start_ns, d.end_ns, d.bounded = self._last_ns, next_ns, True
        return d

    def _indexed_count(self, mm: mmap.mmap, ci: ChunkIndex) -> int | None:
        """The messages of kept topics in an indexed chunk, from its message index records."""
        n = 0
        for cid, off in ci.message_index_offsets.items():
            try:
                (length,) = struct.unpack_from("<Q", mm, off + 1)
                if mm[off] != Opcode.MESSAGE_INDEX or not _record_fits(mm, off):
                    return None
                idx = MessageIndex.read(ReadDataStream(io.BytesIO(mm[off + 9:off + 9 + length])))
            except Exception:  # the index is damaged too: the count is not knowable
                return None
            n += len(idx.records) if self._topic(cid) is not None else 0
        return n

    def _skip(self, mm: mmap.mmap, p: int, size: int, reason: str) -> Dropped | None:
        """Drop from `p` to the next chunk record that checks out; None when there is none (the rest of
        the file is dropped)."""
        q = mm.find(b"\x06", p + 1)
        while q != -1:
            if _chunk_header_fits(mm, q):
                (length,) = struct.unpack_from("<Q", mm, q + 1)
                try:
                    chunk = Chunk.read(ReadDataStream(io.BytesIO(mm[q + 9:q + 9 + length])))
                    self._open_chunk(chunk, q)
                except Exception:  # not a chunk after all: a byte 0x06 inside damaged data
                    pass
                else:
                    d = self._drop(p, q, reason, mm, next_ns=chunk.message_start_time)
                    if self.summary is None and d.count is None and not d.bounded:
                        for idx in _trailing_message_indexes(mm, p, q):
                            self._count_index(d, idx)
                    return d
            q = mm.find(b"\x06", q + 1)
        self._drop(p, size, reason + "; no intact chunk after it", mm)
        return None


def _check_header(item: Item) -> None:
    """DecodeError unless the recorder can store `item` again: its header decodes and names a known
    schema (a message of an uncompressed chunk without a CRC can be damaged and still unpack)."""
    schema = peek_header(item.frames[0]).schema
    if schema not in SCHEMAS:
        raise DecodeError("unknown_schema", f"schema {schema[:80]!r} is not known")


_OPCODES = frozenset(int(o) for o in Opcode)
_CHUNK_FIXED = 8 + 8 + 8 + 4 + 4 + 8  # start, end, uncompressed size, crc, compression length, data length


def _record_fits(buf: Any, p: int) -> bool:
    """Whether a record of a known MCAP opcode, ending within `buf`, starts at `p` (or `buf` ends there)."""
    if p + 9 > len(buf):
        return p == len(buf)
    (length,) = struct.unpack_from("<Q", buf, p + 1)
    return buf[p] in _OPCODES and p + 9 + length <= len(buf)


def _chunk_header_fits(buf: Any, p: int) -> bool:
    """Whether the bytes at `p` lay out as a chunk record whose data length agrees with its record length
    (a cheap test before decompressing a candidate found by scanning damaged bytes)."""
    if buf[p] != Opcode.CHUNK or p + 9 + _CHUNK_FIXED > len(buf):
        return False
    (length,) = struct.unpack_from("<Q", buf, p + 1)
    (clen,) = struct.unpack_from("<I", buf, p + 9 + 28)
    if clen > 4 or _CHUNK_FIXED + clen > length or p + 9 + length > len(buf):
        return False
    return bool(struct.unpack_from("<Q", buf, p + 9 + 32 + clen)[0] == length - _CHUNK_FIXED - clen)


def _trailing_message_indexes(buf: Any, start: int, end: int) -> list[MessageIndex]:
    """The message index records that exactly fill `buf[r:end]` for the first `r` after `start`: those a
    chunk at `start` was followed by when its own length is damaged and the next record is at `end`."""
    r = buf.find(b"\x07", start + 1, end)
    while r != -1:
        found, q = [], r
        while q < end and buf[q] == Opcode.MESSAGE_INDEX and q + 15 <= end:
            (length,) = struct.unpack_from("<Q", buf, q + 1)
            (n,) = struct.unpack_from("<I", buf, q + 11)
            if length != 6 + n or n % 16 or q + 9 + length > end:
                break
            found.append(MessageIndex.read(ReadDataStream(io.BytesIO(buf[q + 9:q + 9 + length]))))
            q += 9 + length
        if q == end and found:
            return found
        r = buf.find(b"\x07", r + 1, end)
    return []

"""Read drivecast MCAP files (the layout of `mcap_format`, what `drivecast record` writes).

A file with a summary is read through its index. A file without one (cut by `kill -9`, or still
being written), or whose summary does not match the footer's CRC, is read by a linear scan up to its
last complete chunk: `info().truncated` is then True and `info().note` says where the scan stopped.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Footer, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.summary import Summary

from pipeline.recordings.base import Item, Recording, RecordingError, RecordingInfo, TopicInfo
from pipeline.recordings.foxglove import STORED
from pipeline.recordings.mcap_format import DRIVECAST_SCHEMA_KEY, MESSAGE_ENCODING, unpack_frames, unpack_stored

__all__ = ["DrivecastMcap", "plays_as", "to_item"]


def plays_as(ch: Channel, schema: Schema | None) -> str | None:
    """The drivecast schema a channel's messages replay as, or None for a channel replay skips
    (a Foxglove mirror)."""
    if ch.message_encoding == MESSAGE_ENCODING:
        return schema.name if schema else ""
    stored_as = ch.metadata.get(DRIVECAST_SCHEMA_KEY, "")
    return stored_as if ch.message_encoding == "cdr" and stored_as in STORED else None


def to_item(path: Path, ch: Channel, msg: Message) -> Item:
    """The recorded message as an `Item` of drivecast wire frames; RecordingError names a bad one."""
    where = f"{path}: {ch.topic} @ {msg.log_time}"
    if max(msg.log_time, msg.publish_time) >= 2**63:  # MCAP times are u64; drivecast's, int64 ns
        raise RecordingError(f"{where}: log or publish time {max(msg.log_time, msg.publish_time)} beyond int64")
    frames = unpack_frames(msg.data, where) if ch.message_encoding == MESSAGE_ENCODING else \
        unpack_stored(msg.data, ch.metadata.get(DRIVECAST_SCHEMA_KEY, ""), where)
    return Item(ch.topic, msg.log_time, msg.publish_time, frames)


class DrivecastMcap(Recording):
    """Our MCAP files; falls back to a linear scan when the summary is missing (cut files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise RecordingError(f"{path}: cannot open: {exc.strerror or exc}") from None
        self._summary: Summary | None = None
        self._info: RecordingInfo | None = None
        self._damaged = ""  # why a summary that is there is not used
        try:
            size = self._f.seek(0, io.SEEK_END)
            self._f.seek(0)
            # no record is longer than the file: a damaged length must not allocate gigabytes
            reader = SeekingReader(self._f, record_size_limit=max(size, 1))
            self._summary = reader.get_summary()
            if self._summary is not None and not self._summary.chunk_indexes and self._summary.statistics \
                    and self._summary.statistics.message_count:
                self._summary = None
            if self._summary is not None and not _summary_crc_ok(self._f, size):
                self._summary, self._damaged = None, "the summary does not match its CRC; "
        except Exception:  # McapError, struct, unicode, overflow, key errors from a damaged summary
            self._summary = None  # no footer / summary: cut file; info() scans
        self._reader = reader if self._summary is not None else None  # a second reader read magic mid-file

    def close(self) -> None:
        self._f.close()

    @property
    def summary(self) -> Summary | None:
        """The file's summary section (None for a file cut before it was written)."""
        return self._summary

    def _channels(self) -> dict[int, Channel]:
        assert self._summary is not None
        return self._summary.channels

    def info(self) -> RecordingInfo:
        if self._info is not None:
            return self._info
        counts: dict[str, int] = {}  # per topic: a topic can have two channels (see Recorder.write)
        types: dict[str, str] = {}
        if self._summary is not None and self._summary.statistics is not None and all(
                ch.schema_id == 0 or ch.schema_id in self._summary.schemas for ch in self._channels().values()):
            st = self._summary.statistics
            for cid, ch in sorted(self._channels().items()):
                kind = plays_as(ch, self._summary.schemas.get(ch.schema_id))
                if kind is not None:
                    counts[ch.topic] = counts.get(ch.topic, 0) + st.channel_message_counts.get(cid, 0)
                    types[ch.topic] = kind
            topics = [TopicInfo(t, types[t], c, True, types[t]) for t, c in counts.items()]
            count = sum(t.count for t in topics)
            self._info = RecordingInfo(str(self.path), "drivecast-mcap", st.message_start_time if st.message_count else 0,
                                       st.message_end_time if st.message_count else 0, count, topics)
            # start/end from statistics cover the Foxglove mirror too; it shares log times, so they agree
            return self._info
        # linear scan: count what is readable
        start, end, n = None, None, 0
        scan = _Scan(self._f)
        for ch, schema, msg in scan.messages():
            kind = plays_as(ch, schema)
            if kind is None:
                continue
            counts[ch.topic] = counts.get(ch.topic, 0) + 1
            types[ch.topic] = kind
            start = msg.log_time if start is None else min(start, msg.log_time)
            end = msg.log_time if end is None else max(end, msg.log_time)
            n += 1
        topics = [TopicInfo(t, types[t], c, True, types[t]) for t, c in counts.items()]
        self._info = RecordingInfo(str(self.path), "drivecast-mcap", start or 0, end or 0, n, topics,
                                   truncated=True, note=self._damaged + scan.note)
        return self._info

    def items(self, topics: Iterable[str] | None = None, start_ns: int | None = None) -> Iterator[Item]:
        wanted = None if topics is None else set(topics)
        if self._reader is not None:
            want = [ch.topic for ch in self._channels().values()
                    if plays_as(ch, None) is not None and (wanted is None or ch.topic in wanted)]
            if not want:
                return
            it = iter(self._reader.iter_messages(topics=want, starting_at=start_ns, log_time_order=True))
            n = 0
            while True:
                try:
                    _, ch, msg = next(it)
                except StopIteration:
                    return
                except Exception as exc:  # mcap, zstd, lz4 and struct errors from a damaged chunk or index
                    raise RecordingError(f"{self.path}: corrupt data after {n} messages: {type(exc).__name__}: "
                                         f"{str(exc)[:120]}; `drivecast bag recover` keeps what is readable") from None
                n += 1
                yield to_item(self.path, ch, msg)
        # Linear scan: chunks are written in log-time order by one recorder, so file order is
        # log-time order within a small window; sort each chunk's messages to be safe.
        for ch, _, msg in _Scan(self._f).messages():
            if plays_as(ch, None) is None or (wanted is not None and ch.topic not in wanted):
                continue
            if start_ns is not None and msg.log_time < start_ns:
                continue
            yield to_item(self.path, ch, msg)


_FOOTER = struct.Struct("<B Q Q Q I 8s")  # opcode, length, summary start, summary offset start, summary CRC, magic


def _summary_crc_ok(f: IO[bytes], size: int) -> bool:
    """Whether the summary section is the one the footer's CRC was computed over (a CRC of 0: none was).
    The summary's channels, counts and chunk indexes have no other check: a damaged one would rename a
    topic or misplace a chunk."""
    f.seek(size - _FOOTER.size)
    _, _, start, _, crc, _ = _FOOTER.unpack(f.read(_FOOTER.size))
    if crc == 0:
        return True
    f.seek(start)
    return bool(zlib.crc32(f.read(size - 12 - start)) == crc)  # up to the CRC field itself


class _Scan:
    """A linear scan over an MCAP stream that stops cleanly at the first incomplete record."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.note = ""

    def messages(self) -> Iterator[tuple[Channel, Schema | None, Message]]:
        self.f.seek(0)
        size = self.f.seek(0, io.SEEK_END)
        self.f.seek(0)
        schemas: dict[int, Schema] = {}
        channels: dict[int, Channel] = {}
        reader = StreamReader(self.f, emit_chunks=True, record_size_limit=size)
        chunks = 0
        try:
            for rec in reader.records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                elif isinstance(rec, Channel):
                    channels[rec.id] = rec
                elif isinstance(rec, Chunk):
                    batch = []
                    for r in breakup_chunk(rec, validate_crc=True):
                        if isinstance(r, Schema):
                            schemas[r.id] = r
                        elif isinstance(r, Channel):
                            channels[r.id] = r
                        elif isinstance(r, Message) and r.channel_id in channels:
                            batch.append(r)
                    chunks += 1
                    batch.sort(key=lambda m: m.log_time)
                    for m in batch:
                        ch = channels[m.channel_id]
                        yield ch, schemas.get(ch.schema_id), m
                elif isinstance(rec, Message) and rec.channel_id in channels:
                    ch = channels[rec.channel_id]
                    yield ch, schemas.get(ch.schema_id), rec
                elif isinstance(rec, Footer):
                    return
        except Exception as exc:  # the cut: a short read, a bad length, a bad CRC
            self.note = (f"no summary; read {chunks} complete chunks by a linear scan, stopped at byte "
                         f"{self.f.tell()} of {size}: {type(exc).__name__}: {str(exc)[:120]}")
            return
        self.note = f"no summary; read {chunks} chunks by a linear scan"

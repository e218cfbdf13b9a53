"""Read recordings: drivecast MCAP files (ours) and ROS bags, behind one interface.

`open_recording(path)` picks the reader from what the path is:

- an MCAP file whose header profile is `drivecast` (what `drivecast record` writes): `DrivecastMcap`
- a ROS 1 `.bag`, a ROS 2 bag directory (`metadata.yaml` + `.db3`/`.mcap`) or a ROS 2 `.mcap`
  (profile `ros2`): `pipeline.rosbag.RosRecording`, through the `rosbags` library (no ROS install);
  supported ROS types are converted into drivecast schemas, the others are listed and skipped.

Every reader yields `Item(topic, log_ns, publish_ns, frames)` in log-time order, where `frames` are
the drivecast wire frames `[header, array_0, ...]` of the message, so the player sends exactly
these bytes. `Recording.info()` gives topics, schemas, counts, start, end and duration.

## The drivecast MCAP layout

- Header profile `drivecast`. Chunks are zstd-compressed (chunk size 1 MiB, and the recorder closes
  a chunk at least once a second so that a `kill -9` loses at most about a second).
- One channel per topic: topic = the drivecast topic (`sim/tracks`), message_encoding `drivecast`,
  schema name = the drivecast schema (`drivecast/Tracks`), schema encoding `drivecast-v1`, schema
  data = JSON listing the version, scalar and array fields (dtype, shape), for other tools.
- Message data = the wire frames, packed: `u32 n` then `n` x `u32 length` then the frames'
  bytes, little-endian (`pack_frames` / `unpack_frames`). Replay slices these bytes without a copy.
- Images (`drivecast/Image`) are stored once, in a form both Foxglove and replay read: the topic's
  channel has message_encoding `cdr`, schema `foxglove_msgs/msg/RawImage` (encoding `ros2msg`:
  Foxglove's RawImage plus a trailing `uint8[] drivecast_header`) and metadata
  `{"drivecast_schema": "drivecast/Image", "schema_version": ...}`. Message data = ROS 2 CDR of
  the RawImage whose `data` is the wire data frame and `drivecast_header` the wire header frame,
  byte for byte (`foxglove.stored_image` / `unpack_image`, which slices both out without a copy).
  An image Foxglove cannot show (another encoding, bytes per pixel that are not its C) goes to a
  drivecast channel of the same topic instead, so a topic can have both; files written before
  this form have only the drivecast channel (and a preview mirror) and read as before.
- log_time = receive time at the recorder; publish_time = the publish time in the message header;
  the sensor stamp stays in the header (and in the Foxglove form's `timestamp`).
- Foxglove mirror channels `/foxglove/<topic>` (JSON or CDR, foxglove schemas: see
  `pipeline.foxglove`) for the other schemas; readers here skip them.

A file without a summary (cut by `kill -9`, or still being written) is read by a linear scan up to
its last complete chunk: `info().truncated` is then True and `info().note` says where it stopped.
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Any, NamedTuple

from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap.records import Channel, Chunk, Footer, Header, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk

from pipeline.codec import peek_header
from pipeline.errors import DecodeError, DrivecastError
from pipeline.messages import Image
from pipeline.messages import Message as DcMessage

__all__ = [
    "DRIVECAST_SCHEMA_KEY", "FOXGLOVE_PREFIX", "MESSAGE_ENCODING", "PROFILE", "Item", "Recording", "RecordingError",
    "RecordingInfo", "TopicInfo", "open_recording", "pack_frames", "prefetch", "schema_description",
    "unpack_frames", "unpack_image",
]

PROFILE = "drivecast"
MESSAGE_ENCODING = "drivecast"
SCHEMA_ENCODING = "drivecast-v1"
FOXGLOVE_PREFIX = "/foxglove/"
DRIVECAST_SCHEMA_KEY = "drivecast_schema"  # channel metadata of a CDR channel that stores drivecast messages
MAX_FRAMES = 64
MAGIC = b"\x89MCAP0\r\n"


class RecordingError(DrivecastError):
    """A recording cannot be read: the message names the path and what is wrong with it."""


class Item(NamedTuple):
    topic: str
    log_ns: int
    publish_ns: int
    frames: list[Any]  # drivecast wire frames: bytes or memoryviews


@dataclass
class TopicInfo:
    name: str
    type: str                  # drivecast schema, or the ROS type for a ROS bag
    count: int
    converted: bool = True     # False: a ROS type without a drivecast conversion (skipped on play)
    schema: str = ""           # drivecast schema the topic plays as ("" if not converted)

    def rate_hz(self, duration_ns: int) -> float:
        return (self.count - 1) / (duration_ns * 1e-9) if self.count > 1 and duration_ns > 0 else 0.0


@dataclass
class RecordingInfo:
    path: str
    format: str                # "drivecast-mcap", "ros1-bag", "ros2-sqlite3", "ros2-mcap"
    start_ns: int
    end_ns: int
    count: int
    topics: list[TopicInfo] = field(default_factory=list)
    truncated: bool = False
    note: str = ""

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def to_json(self) -> dict[str, Any]:
        d = self.duration_ns
        return {
            "path": self.path, "format": self.format, "start_ns": self.start_ns, "end_ns": self.end_ns,
            "duration_s": d * 1e-9, "messages": self.count, "truncated": self.truncated, "note": self.note,
            "topics": [{"name": t.name, "type": t.type, "count": t.count, "rate_hz": round(t.rate_hz(d), 3),
                        "converted": t.converted, "schema": t.schema} for t in self.topics],
        }


class Recording:
    """A readable recording. Subclasses implement `info` and `items`."""

    path: Path

    def info(self) -> RecordingInfo:
        raise NotImplementedError

    def items(self, topics: Iterable[str] | None = None, start_ns: int | None = None) -> Iterator[Item]:
        """Messages in log-time order, optionally only `topics`, from `start_ns` on."""
        raise NotImplementedError

    def missing_types(self, topics: Iterable[str] | None = None) -> list[str]:
        """Message types (of `topics`) that cannot be decoded for lack of a definition."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- frame packing ------------------------------------------------------------------------------------

def pack_frames(frames: list[Any]) -> bytes:
    """`u32 n, n x u32 len, bytes...` (little-endian): one MCAP message body for one wire message."""
    views = [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]
    head = struct.pack(f"<{len(views) + 1}I", len(views), *(v.nbytes for v in views))
    return b"".join([head, *views])


def unpack_frames(data: bytes | memoryview, where: str = "message") -> list[memoryview]:
    """Inverse of `pack_frames`; validates counts and lengths (file bytes are untrusted)."""
    buf = memoryview(data).cast("B")
    if len(buf) < 4:
        raise RecordingError(f"{where}: {len(buf)} bytes, too short for a frame count")
    (n,) = struct.unpack_from("<I", buf, 0)
    if n < 1 or n > MAX_FRAMES:
        raise RecordingError(f"{where}: frame count {n}, expected 1..{MAX_FRAMES}")
    if len(buf) < 4 + 4 * n:
        raise RecordingError(f"{where}: {len(buf)} bytes, too short for {n} frame lengths")
    lengths = struct.unpack_from(f"<{n}I", buf, 4)
    pos = 4 + 4 * n
    if pos + sum(lengths) != len(buf):
        raise RecordingError(f"{where}: frame lengths sum to {sum(lengths)}, body has {len(buf) - pos} bytes")
    out = []
    for length in lengths:
        out.append(buf[pos:pos + length])
        pos += length
    return out


def _cdr_u32(body: memoryview, pos: int, what: str, where: str) -> tuple[int, int]:
    pos += -pos % 4  # CDR aligns a u32 to 4 bytes after the encapsulation header
    if pos + 4 > len(body):
        raise RecordingError(f"{where}: image record of {len(body) + 4} bytes ends before its {what}")
    return struct.unpack_from("<I", body, pos)[0], pos + 4


def _cdr_bytes(body: memoryview, pos: int, what: str, where: str) -> tuple[memoryview, int]:
    n, pos = _cdr_u32(body, pos, f"{what} length", where)
    if n > len(body) - pos:
        raise RecordingError(f"{where}: {what} of {n} bytes, only {len(body) - pos} left in the image record")
    return body[pos:pos + n], pos + n


def unpack_image(data: bytes | memoryview, where: str = "message") -> list[memoryview]:
    """The wire frames `[header, data]` of an Image stored as RawImage CDR (`foxglove.stored_image`):
    slices of `data`, no copy. Validates the lengths, and that the header is a drivecast Image
    header (file bytes are untrusted)."""
    buf = memoryview(data).cast("B")
    if buf[:4] != b"\x00\x01\x00\x00":
        raise RecordingError(f"{where}: image record starts with {bytes(buf[:4]).hex()}, "
                             "not the little-endian CDR header 00010000")
    body = buf[4:]
    _, pos = _cdr_bytes(body, 8, "frame_id", where)  # after the timestamp (sec, nanosec)
    _, pos = _cdr_u32(body, pos, "width", where)
    height, pos = _cdr_u32(body, pos, "height", where)
    _, pos = _cdr_bytes(body, pos, "encoding", where)
    step, pos = _cdr_u32(body, pos, "step", where)
    pixels, pos = _cdr_bytes(body, pos, "data", where)
    header, pos = _cdr_bytes(body, pos, "drivecast_header", where)
    if pos != len(body):
        raise RecordingError(f"{where}: {len(body) - pos} bytes after the drivecast_header of the image record")
    if len(pixels) != step * height:
        raise RecordingError(f"{where}: image data of {len(pixels)} bytes, step {step} x height {height} "
                             f"is {step * height}")
    try:
        schema = peek_header(header).schema
    except DecodeError as exc:
        raise RecordingError(f"{where}: drivecast_header is not a drivecast header: {exc}") from None
    if schema != Image.SCHEMA:
        raise RecordingError(f"{where}: drivecast_header is a {schema[:80]} header, expected {Image.SCHEMA}")
    return [header, pixels]


def schema_description(cls: type[DcMessage]) -> bytes:
    """The JSON put in a drivecast channel's schema record (for humans and other tools)."""
    return json.dumps({
        "schema": cls.SCHEMA, "version": cls.VERSION, "encoding": "drivecast wire frames, see pipeline.codec",
        "scalars": {n: t.__name__ for n, t in cls.SCALARS.items()},
        "arrays": {n: {"dtype": s.dtype.str, "shape": list(s.shape)} for n, s in cls.ARRAYS.items()},
    }, sort_keys=True).encode()


def _plays_as(ch: Channel, schema: Schema | None) -> str | None:
    """The drivecast schema a channel's messages replay as, or None for a channel replay skips
    (a Foxglove mirror)."""
    if ch.message_encoding == MESSAGE_ENCODING:
        return schema.name if schema else ""
    if ch.message_encoding == "cdr" and ch.metadata.get(DRIVECAST_SCHEMA_KEY) == Image.SCHEMA:
        return Image.SCHEMA
    return None


def _item(path: Path, ch: Channel, msg: Message) -> Item:
    where = f"{path}: {ch.topic} @ {msg.log_time}"
    unpack = unpack_frames if ch.message_encoding == MESSAGE_ENCODING else unpack_image
    return Item(ch.topic, msg.log_time, msg.publish_time, unpack(msg.data, where))


# -- read-ahead ---------------------------------------------------------------------------------------

_END = object()


def prefetch(it: Iterator[Item], depth: int = 256) -> Generator[Item, None, None]:
    """Read `it` in a background thread, `depth` items ahead: decompression and conversion overlap
    the player's waits, so a large file never starves the schedule. The thread stops when the
    consumer stops iterating (closing the generator)."""
    q: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        """Hand over one item unless the consumer has stopped (then give up, never block)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    t = threading.Thread(target=work, name="recording-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=2.0)


# -- drivecast MCAP -----------------------------------------------------------------------------------

class DrivecastMcap(Recording):
    """Our MCAP files; falls back to a linear scan when the summary is missing (cut files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise RecordingError(f"{path}: cannot open: {exc.strerror or exc}") from None
        self._summary: Any = None
        self._info: RecordingInfo | None = None
        try:
            size = self._f.seek(0, io.SEEK_END)
            self._f.seek(0)
            # no record is longer than the file: a damaged length must not allocate gigabytes
            reader = SeekingReader(self._f, record_size_limit=max(size, 1))
            self._summary = reader.get_summary()
            if self._summary is not None and not self._summary.chunk_indexes and self._summary.statistics \
                    and self._summary.statistics.message_count:
                self._summary = None
        except Exception:  # McapError, struct, unicode, overflow, key errors from a damaged summary
            self._summary = None  # no footer / summary: cut file; info() scans
        self._reader = reader if self._summary is not None else None  # a second reader read magic mid-file

    def close(self) -> None:
        self._f.close()

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
                kind = _plays_as(ch, self._summary.schemas.get(ch.schema_id))
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
        scan = _Scan(self._f, self.path)
        for ch, schema, msg in scan.messages():
            kind = _plays_as(ch, schema)
            if kind is None:
                continue
            counts[ch.topic] = counts.get(ch.topic, 0) + 1
            types[ch.topic] = kind
            start = msg.log_time if start is None else min(start, msg.log_time)
            end = msg.log_time if end is None else max(end, msg.log_time)
            n += 1
        topics = [TopicInfo(t, types[t], c, True, types[t]) for t, c in counts.items()]
        self._info = RecordingInfo(str(self.path), "drivecast-mcap", start or 0, end or 0, n, topics,
                                   truncated=True, note=scan.note)
        return self._info

    def items(self, topics: Iterable[str] | None = None, start_ns: int | None = None) -> Iterator[Item]:
        wanted = None if topics is None else set(topics)
        if self._reader is not None:
            want = [ch.topic for ch in self._channels().values()
                    if _plays_as(ch, None) is not None and (wanted is None or ch.topic in wanted)]
            if not want:
                return
            source: Iterable[tuple[Any, Channel, Message]] = self._reader.iter_messages(
                topics=want, starting_at=start_ns, log_time_order=True)
            it = iter(source)
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
                yield _item(self.path, ch, msg)
        # Linear scan: chunks are written in log-time order by one recorder, so file order is
        # log-time order within a small window; sort each chunk's messages to be safe.
        for ch, _, msg in _Scan(self._f, self.path).messages():
            if _plays_as(ch, None) is None or (wanted is not None and ch.topic not in wanted):
                continue
            if start_ns is not None and msg.log_time < start_ns:
                continue
            yield _item(self.path, ch, msg)


class _Scan:
    """A linear scan over an MCAP stream that stops cleanly at the first incomplete record."""

    def __init__(self, f: Any, path: Path) -> None:
        self.f = f
        self.path = path
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


# -- choosing a reader --------------------------------------------------------------------------------

def _mcap_profile(path: Path) -> str | None:
    """The MCAP header profile, or None if `path` is not an MCAP file."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                return None
            f.seek(0)
            rec = next(iter(StreamReader(f, record_size_limit=1 << 20).records))
    except (OSError, McapError, StopIteration, struct.error, ValueError, EOFError):
        return None
    return rec.profile if isinstance(rec, Header) else None


def open_recording(path: str | Path, types_dir: str | Path | None = None) -> Recording:
    """Open any supported recording; raise RecordingError naming the path and the problem.

    `types_dir`: a directory of ROS `.msg` files (`pkg/msg/Name.msg`) for bags that store no type
    definitions (ROS 2 sqlite3 bags before Iron).
    """
    p = Path(path)
    if not p.exists():
        raise RecordingError(f"{p}: no such file or directory")
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(13)
        if head[:8] == MAGIC:
            profile = _mcap_profile(p)
            if profile is None:
                raise RecordingError(f"{p}: MCAP magic, but the MCAP header record cannot be read: "
                                     "the file is corrupt")
            if profile == PROFILE:
                return DrivecastMcap(p)
        elif not head.startswith(b"#ROSBAG V2.0") and p.suffix not in (".db3",):
            raise RecordingError(f"{p}: not a recording: expected an MCAP file, a ROS 1 bag (#ROSBAG V2.0) "
                                 f"or a ROS 2 bag directory; the file starts with {head[:13]!r}")
    elif p.is_dir() and not (p / "metadata.yaml").exists():
        raise RecordingError(f"{p}: a directory without metadata.yaml is not a ROS 2 bag")
    try:
        import rosbags  # noqa: F401  (a heavier import: only when a ROS bag is opened)
    except ModuleNotFoundError:
        raise RecordingError(f"{p}: reading ROS bags needs the rosbags package: "
                             "pip install 'drivecast[ros]'") from None
    from pipeline.rosbag import RosRecording
    return RosRecording(p, types_dir=types_dir)

"""Read recordings: drivecast MCAP files (ours) and ROS bags, behind one interface.

`open_recording(path)` picks the reader from what the path is:

- an MCAP file whose header profile is `drivecast` (what `drivecast record` writes): `DrivecastMcap`
- a ROS 1 `.bag`, a ROS 2 bag directory (`metadata.yaml` + `.db3`/`.mcap`) or a ROS 2 `.mcap`
  (profile `ros2`): `pipeline.recordings.rosbag_reader.RosRecording`, through the `rosbags` library (no ROS install);
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
- Images (`drivecast/Image`) and point clouds (`drivecast/PointCloud`) are stored once, in a form
  both Foxglove and replay read: the topic's channel has message_encoding `cdr`, schema
  `foxglove_msgs/msg/RawImage` or `foxglove_msgs/msg/PointCloud` (encoding `ros2msg`: Foxglove's
  type plus a trailing `uint8[] drivecast_header`) and metadata
  `{"drivecast_schema": "drivecast/Image" or "drivecast/PointCloud", "schema_version": ...}`.
  Message data = ROS 2 CDR of that type whose `data` is the wire array frame and
  `drivecast_header` the wire header frame, byte for byte (`foxglove.stored` / `unpack_stored`,
  which slices both out without a copy). A RawImage has the image's width, height, encoding and
  step; a PointCloud has an identity pose, point_stride = 4*F and one FLOAT32 field per column
  (named as in `fields`, offset 4*i): the points are row-major float32 as on the wire. A message
  that does not fit (an image encoding Foxglove cannot show or bytes per pixel that are not its C;
  a cloud whose `fields` do not name its F columns) goes to a drivecast channel of the same topic
  instead, so a topic can have both; files written before this form have only the drivecast
  channel (and a preview mirror) and read as before.
- log_time = receive time at the recorder; publish_time = the publish time in the message header;
  the sensor stamp stays in the header (and in the Foxglove form's `timestamp`).
- Foxglove mirror channels `/foxglove/<topic>` (JSON or CDR, foxglove schemas: see
  `pipeline.recordings.foxglove`) for the other schemas and the messages that do not fit the stored form;
  readers here skip them.

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

from pipeline.errors import DecodeError, DrivecastError
from pipeline.recordings.foxglove import STORED
from pipeline.wire.codec import decode
from pipeline.wire.messages import SCHEMAS
from pipeline.wire.messages import Message as DcMessage

__all__ = [
    "DRIVECAST_SCHEMA_KEY", "FOXGLOVE_PREFIX", "MESSAGE_ENCODING", "PROFILE", "Item", "Recording", "RecordingError",
    "RecordingInfo", "TopicInfo", "open_recording", "pack_frames", "prefetch", "schema_description",
    "unpack_frames", "unpack_stored",
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


class _CdrReader:
    """Reads the fields of a little-endian ROS 2 CDR record in order, aligned like `foxglove._Cdr`
    writes them, each length checked against the record: file bytes are untrusted, so a damaged
    record is a RecordingError naming `where`, never an IndexError or a struct.error. The methods
    named like `foxglove.Layout` kinds read one field of that kind."""

    def __init__(self, data: bytes | memoryview, what: str, where: str) -> None:
        buf = memoryview(data).cast("B")
        self.what, self.where = what, where
        if buf[:4] != b"\x00\x01\x00\x00":
            raise self._error(f"{what} record starts with {bytes(buf[:4]).hex()}, "
                              "not the little-endian CDR header 00010000")
        self.body = buf[4:]
        self.pos = 0

    def _error(self, text: str) -> RecordingError:
        return RecordingError(f"{self.where}: {text}")

    def _take(self, n: int, align: int, field: str) -> memoryview:
        pos = self.pos + -self.pos % align
        if pos + n > len(self.body):
            raise self._error(f"{self.what} record of {len(self.body) + 4} bytes ends before its {field}")
        self.pos = pos + n
        return self.body[pos:self.pos]

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self._take(4, 4, field))[0])

    def u8(self, field: str) -> int:
        return self._take(1, 1, field)[0]

    def time(self, field: str) -> tuple[int, int]:
        sec, nanosec = struct.unpack("<iI", self._take(8, 4, field))
        return sec, nanosec

    def pose(self, field: str) -> tuple[float, ...]:
        return struct.unpack("<7d", self._take(56, 8, field))

    def blob(self, field: str) -> memoryview:
        n = self.u32(f"{field} length")
        if n > len(self.body) - self.pos:
            raise self._error(f"{field} of {n} bytes, only {len(self.body) - self.pos} left in the {self.what} record")
        return self._take(n, 1, field)

    def string(self, field: str) -> str:
        raw = self.blob(field)
        if not raw or raw[-1] != 0:
            raise self._error(f"{field} of the {self.what} record is not a NUL-terminated string")
        return bytes(raw[:-1]).decode(errors="replace")

    def packed_fields(self, field: str) -> list[tuple[str, int, int]]:
        n = self.u32(f"{field} count")
        if n > (len(self.body) - self.pos) // 9:  # an element is at least 9 bytes: a bound before the loop
            raise self._error(f"{field} count {n}, only {len(self.body) - self.pos} bytes left "
                              f"in the {self.what} record")
        return [(self.string(f"{field}[{i}].name"), self.u32(f"{field}[{i}].offset"), self.u8(f"{field}[{i}].type"))
                for i in range(n)]


def unpack_stored(record: bytes | memoryview, schema: str, where: str = "message") -> list[memoryview]:
    """The wire frames `[header, data]` of a `schema` message stored as its Foxglove CDR type
    (`foxglove.stored`): slices of `record`, no copy. File bytes are untrusted, so this checks every
    length, that nothing trails the `drivecast_header`, that the two frames are a valid `schema`
    message (which makes `data` as long as the header's array: an image's H*W*C bytes, a cloud's
    N*F float32) and that the fields describing `data` say what the header says (an image's size,
    encoding and step; a cloud's point_stride = 4*F and its F fields), so Foxglove shows what replay
    sends."""
    form = STORED[schema]
    what = form.spec.schema_name.rsplit("/", 1)[-1]
    r = _CdrReader(record, what, where)
    values = [getattr(r, kind)(name) for name, kind in form.layout]
    array = r.blob("data")
    header = r.blob("drivecast_header")
    if r.pos != len(r.body):
        raise RecordingError(f"{where}: {len(r.body) - r.pos} bytes after the drivecast_header of the {what} record")
    try:
        msg, _ = decode([header, array], expect=SCHEMAS[schema])
    except DecodeError as exc:
        raise RecordingError(f"{where}: drivecast_header and data are not a {schema} message: {exc}") from None
    expected = form.values(msg)
    if expected is None:
        raise RecordingError(f"{where}: the drivecast_header is a {schema} message that does not fit "
                             f"a {what} record")
    for (name, _), got, want in zip(form.layout, values, expected, strict=True):
        if name in form.checked and got != want:
            raise RecordingError(f"{where}: {name} {got!r:.200} in the {what} record, "
                                 f"the drivecast_header says {want!r:.200}")
    return [header, array]


def schema_description(cls: type[DcMessage]) -> bytes:
    """The JSON put in a drivecast channel's schema record (for humans and other tools)."""
    return json.dumps({
        "schema": cls.SCHEMA, "version": cls.VERSION, "encoding": "drivecast wire frames, see pipeline.wire.codec",
        "scalars": {n: t.__name__ for n, t in cls.SCALARS.items()},
        "arrays": {n: {"dtype": s.dtype.str, "shape": list(s.shape)} for n, s in cls.ARRAYS.items()},
    }, sort_keys=True).encode()


def _plays_as(ch: Channel, schema: Schema | None) -> str | None:
    """The drivecast schema a channel's messages replay as, or None for a channel replay skips
    (a Foxglove mirror)."""
    if ch.message_encoding == MESSAGE_ENCODING:
        return schema.name if schema else ""
    stored_as = ch.metadata.get(DRIVECAST_SCHEMA_KEY, "")
    return stored_as if ch.message_encoding == "cdr" and stored_as in STORED else None


def _item(path: Path, ch: Channel, msg: Message) -> Item:
    where = f"{path}: {ch.topic} @ {msg.log_time}"
    frames = unpack_frames(msg.data, where) if ch.message_encoding == MESSAGE_ENCODING else \
        unpack_stored(msg.data, ch.metadata[DRIVECAST_SCHEMA_KEY], where)
    return Item(ch.topic, msg.log_time, msg.publish_time, frames)


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
    from pipeline.recordings.rosbag_reader import RosRecording
    return RosRecording(p, types_dir=types_dir)

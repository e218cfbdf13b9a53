"""The drivecast MCAP format, shared by the writer and the reader: constants, frame packing, and
reading back the Foxglove form that images and point clouds are stored in.

- Header profile `drivecast`; zstd chunks. One channel per topic, message_encoding `drivecast`,
  schema = the drivecast schema (`drivecast/Tracks`), schema encoding `drivecast-v1`, schema data
  = JSON of its version, scalars and arrays (`schema_description`), for other tools.
- Message data = the wire frames packed as `u32 n`, `n` x `u32 length`, the frames' bytes,
  little-endian (`pack_frames` / `unpack_frames`, which slices without a copy).
- Images and point clouds fitting their Foxglove type are stored once as that type: channel
  encoding `cdr`, schema `foxglove_msgs/msg/RawImage` or `.../PointCloud` plus a trailing
  `uint8[] drivecast_header`, metadata `{"drivecast_schema": ..., "schema_version": ...}`. `data`
  is the wire array frame and `drivecast_header` the wire header frame, byte for byte
  (`foxglove.stored` writes, `unpack_stored` reads). Those that do not fit go to a drivecast
  channel of the same topic, so a topic can have both.
- log_time = receive time at the recorder; publish_time = the publish time in the wire header.
- Records are found in damaged bytes by their opcode and length (`record_fits`, `chunk_header_fits`,
  `trailing_message_indexes`), for `drivecast bag recover`.
- Foxglove mirror channels `/foxglove/<topic>` (`pipeline.recordings.foxglove`) are for viewers;
  replay skips them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pipeline.errors import DecodeError
from pipeline.recordings.base import RecordingError
from pipeline.recordings.foxglove import STORED
from pipeline.wire.codec import decode
from pipeline.wire.messages import SCHEMAS
from pipeline.wire.messages import Message as DcMessage

__all__ = [
    "DRIVECAST_SCHEMA_KEY", "FOXGLOVE_PREFIX", "MAGIC", "MAX_FRAMES", "MESSAGE_ENCODING", "PROFILE",
    "SCHEMA_ENCODING", "pack_frames", "schema_description", "unpack_frames", "unpack_stored",
]

PROFILE = "drivecast"
MESSAGE_ENCODING = "drivecast"
SCHEMA_ENCODING = "drivecast-v1"
FOXGLOVE_PREFIX = "/foxglove/"
DRIVECAST_SCHEMA_KEY = "drivecast_schema"  # channel metadata of a CDR channel that stores drivecast messages
MAX_FRAMES = 64
MAGIC = b"\x89MCAP0\r\n"


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
        if buf[:4].tobytes() != b"\x00\x01\x00\x00":
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
    form = STORED.get(schema)
    if form is None:  # the channel that says so is file bytes too
        raise RecordingError(f"{where}: a CDR channel storing {schema[:80]!r}, expected one of {', '.join(STORED)}")
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
        "arrays": {n: {"dtype": s.dtype.str, "shape": list(s.shape), **({"optional": True} if s.optional else {})}
                   for n, s in cls.ARRAYS.items()},
    }, sort_keys=True).encode()

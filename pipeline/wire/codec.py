"""The wire format: one message = frames `[header, array_0, array_1, ...]`.

The header is msgpack (schema name and version, seq, stamps, scalar fields, and each array's
name, dtype and shape). Arrays travel as their own frames, so the sender passes numpy buffers to
ZeroMQ without copying them and the receiver wraps the received frames with `np.frombuffer`:
read-only views, no Python copy on the way. A schema's optional arrays travel only when a message
fills them (`pipeline.wire.messages`): the header then lists them after the required ones, and the
frame count says which of the two layouts a message has.

Received bytes are untrusted. `decode` checks, before any array is built: the schema is known and
at the same version, the scalar fields are exactly the declared ones with the declared types, the
arrays are exactly the declared ones, each dtype is the declared one (which is on an allow-list of
plain numeric types: no object arrays), shapes match the declaration and the byte length, and
sizes stay below the limits. Anything else raises `DecodeError` with a `kind` for counting.
No pickle, no eval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import numpy as np

from pipeline.errors import DecodeError
from pipeline.wire.messages import SCHEMAS, Message

__all__ = ["ALLOWED_DTYPES", "HeaderInfo", "Limits", "decode", "encode", "peek_header"]

# Plain numeric little-endian dtypes only: never object, void or structured arrays.
ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32",
                               "uint64", "int64", "float16", "float32", "float64")
)


class Limits(msgspec.Struct, frozen=True):
    """Size limits for decoding; defaults fit a 4K RGB image and a 2M-point cloud."""

    max_header_bytes: int = 64 * 1024
    max_array_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 256 * 1024 * 1024
    max_ndim: int = 4


DEFAULT_LIMITS = Limits()


class _ArrayHeader(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    name: str
    dtype: str
    shape: list[int]


_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Header(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    schema: str
    version: int
    seq: _Int64       # msgpack carries uint64; stamps and seq end up in int64 arrays
    stamp_ns: _Int64
    publish_ns: _Int64
    frame_id: str
    scalars: dict[str, Any]
    arrays: list[_ArrayHeader]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Header)


def encode(msg: Message, publish_ns: int | None = None) -> list[Any]:
    """Frames for `msg`: the msgpack header, then each array as a buffer (not copied).

    Optional arrays that are empty along their own axes are left out (`pipeline.wire.messages`).
    The caller must not modify the arrays until ZeroMQ has sent them (they go zero-copy).
    """
    cls = type(msg)
    plan = _PLANS.get(cls) or _plan(cls)
    layout = plan.full
    arrays: list[tuple[str, str, tuple[int, ...]]] = []
    buffers: list[Any] = []
    for name, spec, dtype_str in layout.arrays:
        a = getattr(msg, name)
        if type(a) is not np.ndarray or a.dtype != spec.dtype or not a.data.c_contiguous:
            a = np.ascontiguousarray(a, dtype=spec.dtype)
        arrays.append((name, dtype_str, a.shape))
        buffers.append(a.data.cast("B") if a.size else b"")
    if plan.own and all(len(arrays[i][2]) > j and arrays[i][2][j] == 0 for i, j in plan.own):
        layout = plan.required
        del arrays[layout.count:], buffers[layout.count:]
    if not layout.shapes_ok(arrays):
        axes: dict[str, tuple[str, int]] = {}
        for (name, _, shape), (_, spec, _) in zip(arrays, layout.arrays, strict=True):
            _check_shape(cls.SCHEMA, name, list(shape), spec.shape, axes, ValueError)
    # A tuple encodes as the msgpack array that `_Header` and `_Layout.decoder` decode.
    header = (cls.SCHEMA, cls.VERSION, msg.seq, msg.stamp_ns, time.time_ns() if publish_ns is None else publish_ns,
              msg.frame_id, {name: getattr(msg, name) for name in plan.scalar_names}, arrays)
    return [_encoder.encode(header), *buffers]


_HEADER_FIELDS = ("stamp_ns", "frame_id", "seq")


_NonNegative = Annotated[int, msgspec.Meta(ge=0)]
_SCALAR_TYPES: dict[type, Any] = {int: int, float: float, str: str, bool: bool, dict: dict[str, float]}


class _Layout:
    """The arrays one message of a schema carries: all of them, or the required ones when the optional
    ones are left out. What encode/decode need to know about them, computed once, not per message.

    `decoder` decodes such a header into a Struct that msgspec validates in C (schema name, version,
    scalar names and types, array names, dtypes, ranks, fixed axis lengths): the fast path of
    `decode`. Named axes (one length across the message) and byte lengths stay in Python.
    """

    def __init__(self, cls: type[Message], names: list[str], scalars: Any) -> None:
        specs = [(n, cls.ARRAYS[n]) for n in names]
        self.count = len(names)
        self.array_names = names
        self.arrays = tuple((n, spec, spec.dtype.str) for n, spec in specs)
        self.dtypes = tuple((spec.dtype, spec.dtype.itemsize) for _, spec in specs)
        # (array, axis) pairs that must equal an earlier (array, axis) of the same name
        first: dict[str, tuple[int, int]] = {}
        self.same_axes: list[tuple[int, int, int, int]] = []
        self.fixed: list[tuple[int, int, int]] = []
        for i, (_, spec) in enumerate(specs):
            for j, d in enumerate(spec.shape):
                if isinstance(d, str):
                    i0, j0 = first.setdefault(d, (i, j))
                    if (i0, j0) != (i, j):
                        self.same_axes.append((i, j, i0, j0))
                else:
                    self.fixed.append((i, j, d))
        self.ranks = tuple(len(spec.shape) for _, spec in specs)
        self.max_rank = max(self.ranks, default=0)
        # Types built from values at run time (msgspec reads them; a type checker cannot).
        lit: Any = Literal
        tup: Any = tuple
        arrays = tup[tuple(
            tup[lit[n], lit[spec.dtype.str], tup[tuple(lit[d] if isinstance(d, int) else _NonNegative for d in spec.shape)]]
            for n, spec in specs)] if specs else tuple[()]
        header = msgspec.defstruct(
            f"{cls.__name__}Header{self.count}",
            [("version", lit[cls.VERSION]), ("seq", _Int64), ("stamp_ns", _Int64), ("publish_ns", _Int64),
             ("frame_id", str), ("scalars", scalars), ("arrays", arrays)],
            array_like=True, tag=cls.SCHEMA, forbid_unknown_fields=True)
        self.decoder = msgspec.msgpack.Decoder(header)

    def shapes_ok(self, arrays: Sequence[tuple[str, str, Sequence[int]]]) -> bool:
        """Ranks, fixed lengths and named axes of `(name, dtype, shape)` entries of numpy arrays
        (whose lengths are never negative), in plain loops: encode runs this per message."""
        for (_, _, shape), rank in zip(arrays, self.ranks, strict=True):
            if len(shape) != rank:
                return False
        for i, j, d in self.fixed:
            if arrays[i][2][j] != d:
                return False
        for i, j, i0, j0 in self.same_axes:  # noqa: SIM110 (a generator costs more, per message)
            if arrays[i][2][j] != arrays[i0][2][j0]:
                return False
        return True


class _Plan:
    """What encode/decode need to know about a schema: its scalars, and the `_Layout` of a message with
    every array (`full`) and of one without the optional arrays (`required`; the same one when the
    schema has none), told apart by their array count (`layouts`)."""

    def __init__(self, cls: type[Message]) -> None:
        self.scalar_names = tuple(n for n in cls.SCALARS if n not in _HEADER_FIELDS)
        self.scalar_set = frozenset(self.scalar_names)
        self.scalar_types = tuple((n, cls.SCALARS[n]) for n in self.scalar_names)
        for n, spec in cls.ARRAYS.items():  # decode compares dtype strings: each must be a safe one
            if spec.dtype.str not in ALLOWED_DTYPES:
                raise TypeError(f"{cls.SCHEMA}.{n}: dtype {spec.dtype} is not on the codec's allow-list")
        scalars = msgspec.defstruct(f"{cls.__name__}Scalars", [(n, _SCALAR_TYPES[t]) for n, t in self.scalar_types],
                                    forbid_unknown_fields=True)
        names = list(cls.ARRAYS)
        required = [n for n in names if n not in cls.ABSENT]  # `Message` puts the optional ones last
        self.full = _Layout(cls, names, scalars)
        self.required = _Layout(cls, required, scalars) if cls.ABSENT else self.full
        self.layouts = {self.full.count: self.full, self.required.count: self.required}
        # the optional arrays' own axes (array, axis), all 0 in a message that leaves them out
        self.own = [(names.index(n), j) for n, axes in cls.ABSENT.items() for j, src in enumerate(axes) if src is None]
        # each left-out array's name, dtype and axis lengths: fixed, 0, or (required array, axis) of the message
        self.fill: list[tuple[str, np.ndarray, tuple[Any, ...]]] = []
        for n, axes in cls.ABSENT.items():
            empty = np.zeros(0, cls.ARRAYS[n].dtype)
            empty.flags.writeable = False  # its reshapes are read-only views, like every decoded array
            self.fill.append((n, empty, tuple(src if src is None or isinstance(src, int)
                                              else (required.index(src[0]), src[1]) for src in axes)))

    def fill_absent(self, fields: dict[str, Any], shapes: Sequence[Sequence[int]]) -> None:
        """Put the optional arrays a message left out into `fields`: empty, shaped as the message's
        required arrays (`shapes`) say, as `Message` shapes an empty one."""
        for name, empty, axes in self.fill:
            fields[name] = empty.reshape(
                [0 if src is None else src if type(src) is int else shapes[src[0]][src[1]] for src in axes])


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[Message]) -> _Plan:
    plan = _PLANS[cls] = _Plan(cls)
    return plan


class HeaderInfo(NamedTuple):
    schema: str
    seq: int
    stamp_ns: int
    publish_ns: int


def peek_header(header: Any) -> HeaderInfo:
    """What a header frame says, validated like `decode` does, without touching the arrays
    (recorders and tools that store or count messages without decoding them)."""
    h = _decode_header(_buffer(header), DEFAULT_LIMITS)
    return HeaderInfo(h.schema, h.seq, h.stamp_ns, h.publish_ns)


def _decode_header(header: Any, limits: Limits) -> _Header:
    if len(header) > limits.max_header_bytes:
        raise DecodeError("oversized", f"header of {len(header)} bytes exceeds limit {limits.max_header_bytes}")
    try:
        return _decoder.decode(header)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # invalid UTF-8 in a string surfaces as UnicodeDecodeError, not as msgspec's own error
        raise DecodeError("bad_header", str(exc)[:200]) from None


def decode(frames: Sequence[Any], expect: type[Message] | None = None,
           limits: Limits = DEFAULT_LIMITS) -> tuple[Message, int]:
    """Decode `[header, arrays...]` (bytes, memoryviews or zmq.Frames) into (message, publish_ns).

    `expect` restricts the schema (an input declared as Tracks accepts nothing else). Arrays in the
    result are read-only views of the received frames.

    With `expect`, msgspec validates the header against that schema in C (`_Plan.decoder`): a
    node's input pays for a few Python lines per message. Whatever that path refuses goes through
    `_decode_checked`, which finds what exactly is wrong and raises the `DecodeError` for it.
    """
    if expect is not None and frames:
        header = _buffer(frames[0])
        plan = _PLANS.get(expect) or _plan(expect)
        layout = plan.layouts.get(len(frames) - 1)  # the frame count says whether optional arrays came
        if layout is not None and len(header) <= limits.max_header_bytes:
            h: Any
            try:
                h = layout.decoder.decode(header)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                h = None
            if h is not None:
                msg = _build(expect, plan, layout, h, frames, limits)
                if msg is not None:
                    return msg, h.publish_ns
    return _decode_checked(frames, expect, limits)


def _build(cls: type[Message], plan: _Plan, layout: _Layout, h: Any, frames: Sequence[Any],
           limits: Limits) -> Message | None:
    """The message of a header that msgspec validated, or None if the frames do not fit it."""
    specs = h.arrays
    if len(frames) - 1 != len(specs) or layout.max_rank > limits.max_ndim:
        return None
    for i, j, i0, j0 in layout.same_axes:
        if specs[i][2][j] != specs[i0][2][j0]:
            return None
    msg = cls.__new__(cls)
    fields = msg.__dict__
    fields["stamp_ns"], fields["frame_id"], fields["seq"] = h.stamp_ns, h.frame_id, h.seq
    scalars = h.scalars
    for name in plan.scalar_names:
        fields[name] = getattr(scalars, name)
    total = 0
    for (name, _, shape), frame, (dtype, itemsize) in zip(specs, frames[1:], layout.dtypes, strict=False):
        buf = _buffer(frame)
        nbytes = itemsize * math.prod(shape)
        total += nbytes
        if nbytes != len(buf) or nbytes > limits.max_array_bytes or total > limits.max_total_bytes:
            return None
        # frombuffer of a memoryview: the array's base holds the frame, so `ShmReader.release`
        # can tell by the frame's reference count whether a decoded array is still alive.
        fields[name] = np.frombuffer(buf.toreadonly(), dtype).reshape(shape)
    if layout is not plan.full:
        plan.fill_absent(fields, [a[2] for a in specs])
    return msg


def _decode_checked(frames: Sequence[Any], expect: type[Message] | None, limits: Limits) -> tuple[Message, int]:
    """`decode` that checks one thing after the other in Python, to say which one is wrong."""
    if not frames:
        raise DecodeError("truncated", "no header frame")
    h = _decode_header(_buffer(frames[0]), limits)
    cls = SCHEMAS.get(h.schema)
    if cls is None:
        raise DecodeError("unknown_schema", f"schema {h.schema[:80]!r} is not known")
    if expect is not None and cls is not expect:
        raise DecodeError("wrong_schema", f"expected {expect.SCHEMA}, got {h.schema}")
    if h.version != cls.VERSION:
        raise DecodeError("bad_version", f"{h.schema} version {h.version}, expected {cls.VERSION}")
    if len(frames) - 1 != len(h.arrays):
        raise DecodeError("truncated" if len(frames) - 1 < len(h.arrays) else "bad_frames",
                          f"{h.schema}: header lists {len(h.arrays)} arrays, got {len(frames) - 1} frames")

    plan = _PLANS.get(cls) or _plan(cls)
    fields: dict[str, Any] = {"stamp_ns": h.stamp_ns, "frame_id": h.frame_id, "seq": h.seq}
    if h.scalars.keys() != plan.scalar_set:
        raise DecodeError("bad_fields", f"{h.schema}: scalar fields {sorted(h.scalars)[:16]}, "
                          f"expected {sorted(plan.scalar_set)}")
    for name, typ in plan.scalar_types:
        value = h.scalars[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise DecodeError("bad_fields", f"{h.schema}.{name}: expected {typ.__name__}, "
                              f"got {type(value).__name__}")
        if isinstance(value, dict) and not all(isinstance(k, str) and isinstance(v, (int, float)) and
                                   not isinstance(v, bool) for k, v in value.items()):
            raise DecodeError("bad_fields", f"{h.schema}.{name}: expected a map of str to number")
        fields[name] = value

    names = [a.name for a in h.arrays]
    layout = plan.layouts.get(len(names))
    if layout is None or names != layout.array_names:
        without = f" (or without the optional {', '.join(cls.ABSENT)})" if cls.ABSENT else ""
        raise DecodeError("bad_fields", f"{h.schema}: arrays {names[:16]}, expected {list(cls.ARRAYS)}{without}")
    total = 0
    axes: dict[str, tuple[str, int]] = {}
    for a, frame, (_, spec, dtype_str) in zip(h.arrays, frames[1:], layout.arrays, strict=False):
        if a.dtype != dtype_str:  # declared dtypes are all on the allow-list: one compare checks both
            raise DecodeError("bad_dtype", f"{h.schema}.{a.name}: dtype {a.dtype[:16]!r}, "
                              f"expected {spec.dtype.str!r}")
        if len(a.shape) > limits.max_ndim:
            raise DecodeError("bad_shape", f"{h.schema}.{a.name}: {len(a.shape)} axes exceed the limit")
        _check_shape(h.schema, a.name, a.shape, spec.shape, axes, _bad_shape)
        buf = _buffer(frame)
        nbytes = spec.dtype.itemsize * math.prod(a.shape)
        if nbytes != len(buf):
            raise DecodeError("bad_size", f"{h.schema}.{a.name}: shape {a.shape} needs {nbytes} bytes, "
                              f"frame has {len(buf)}")
        total += nbytes
        if nbytes > limits.max_array_bytes or total > limits.max_total_bytes:
            raise DecodeError("oversized", f"{h.schema}.{a.name}: {nbytes} bytes exceeds the limits")
        arr = np.frombuffer(buf, dtype=spec.dtype).reshape(a.shape)
        arr.flags.writeable = False
        fields[a.name] = arr
    if layout is not plan.full:
        plan.fill_absent(fields, [a.shape for a in h.arrays])
    # Every field was checked above: skip the dataclass __init__ and its dtype-coercion pass.
    msg = cls.__new__(cls)
    msg.__dict__.update(fields)
    return msg, h.publish_ns


def _bad_shape(text: str) -> DecodeError:
    return DecodeError("bad_shape", text)


def _check_shape(schema: str, name: str, shape: list[int], want: tuple[int | str, ...],
                 axes: dict[str, tuple[str, int]], error: Any) -> None:
    """Shape against the declaration; a named axis must have one length across the message."""
    if len(shape) != len(want) or any(d < 0 or (isinstance(w, int) and d != w) for d, w in zip(shape, want, strict=False)):
        raise error(f"{schema}.{name}: shape {shape[:8]}, expected {list(want)}")
    for d, w in zip(shape, want, strict=False):
        if isinstance(w, str):
            first = axes.setdefault(w, (name, d))
            if first[1] != d:
                raise error(f"{schema}.{name}: axis {w} has length {d}, but {first[0]} has {first[1]}")


def _buffer(frame: Any) -> memoryview:
    """The bytes of a frame without copying: zmq.Frame exposes `.buffer`, bytes are wrapped as is."""
    buf = memoryview(getattr(frame, "buffer", frame))
    return buf if buf.format == "B" and buf.ndim == 1 else buf.cast("B")

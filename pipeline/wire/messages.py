"""Message schemas: typed headers plus struct-of-arrays numpy fields.

Every message carries the same header fields (`stamp_ns` = sensor time in integer nanoseconds,
`frame_id`, `seq`). Per-item data are numpy arrays in struct-of-arrays form (`Tracks.xy` is
`float32[N, 2]`, never a list of objects), so a message of 1000 agents is a handful of buffers that
travel zero-copy. Each array field declares its dtype and shape (a name for a free axis); the codec
checks received arrays against exactly these declarations.

A schema is a dataclass subclass of `Message` with a `SCHEMA` name and a `VERSION`; subclassing
registers it. Bump `VERSION` when a field changes meaning or layout: peers refuse other versions.

An array declared `optional` (after every required one) may be left out of a message: one whose
optional arrays are all empty along their own axes (the axes no required array names, `K` of
`Predictions.modes`) travels exactly as if the schema had no such arrays, and decodes with them empty.
So a schema can gain optional arrays without a new `VERSION`: messages that leave them empty keep
their bytes, recordings made before still decode, and an older peer refuses only a message that
fills them, naming the arrays it does not know.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = [
    "SCHEMAS",
    "AgentKind",
    "ArraySpec",
    "AxisSource",
    "Clock",
    "Detections",
    "Diagnostics",
    "GnssFix",
    "Image",
    "Imu",
    "LaserScan",
    "Message",
    "Odometry",
    "PointCloud",
    "Predictions",
    "StateEvent",
    "Tracks",
    "schema_by_name",
]


class AgentKind:
    """Values of the `kind` arrays (uint8). Kept as plain ints: they travel in arrays."""

    UNKNOWN = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    NAMES: ClassVar[dict[int, str]] = {0: "unknown", 1: "vehicle", 2: "pedestrian", 3: "cyclist"}


@dataclass(frozen=True)
class ArraySpec:
    """Declared dtype and shape of an array field. An axis is a fixed size (int) or a name (str):
    arrays of one message that name the same axis must agree on its length (`Tracks.ids` and
    `Tracks.xy` both have N rows), which the codec checks on both sides of the wire."""

    dtype: np.dtype
    shape: tuple[int | str, ...]
    optional: bool = False  # left out of a message whose optional arrays are all empty (module docstring)

    def empty(self) -> np.ndarray:
        return np.zeros(tuple(0 if isinstance(d, str) else d for d in self.shape), dtype=self.dtype)


def array(dtype: str, *shape: int | str, optional: bool = False) -> Any:
    """Declare an array field of a message (used as a dataclass field default)."""
    spec = ArraySpec(np.dtype(dtype), tuple(shape), optional)
    # an optional array's default is replaced in `__post_init__`: a shared read-only one costs nothing
    shape0 = tuple(0 if isinstance(d, str) else d for d in spec.shape)
    return field(default_factory=partial(_empty, spec.dtype, shape0) if optional else spec.empty, metadata={"array": spec})


_EMPTY: dict[np.dtype, np.ndarray] = {}


def _empty(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only array of no elements: a view of one shared per dtype, cheaper than a new one."""
    base = _EMPTY.get(dtype)
    if base is None:
        base = _EMPTY[dtype] = np.zeros(0, dtype)
        base.flags.writeable = False
    return base.reshape(shape)


# Where each axis of an absent optional array takes its length: a fixed int, (required array, axis)
# for a named axis a required array has, or None for the optional arrays' own axes (length 0).
AxisSource = int | tuple[str, int] | None


SCHEMAS: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound="type[Message]")


@dataclass(kw_only=True, eq=False)
class Message:
    """Base of all schemas: the header fields every message has."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # Sensor data of any size (camera frames, 3D clouds): queues hold fewer of them (`endpoints.BULK_HWM`).
    BULK: ClassVar[bool] = False
    ARRAYS: ClassVar[dict[str, ArraySpec]]
    SCALARS: ClassVar[dict[str, type]]
    # optional array -> the source of each axis when it is absent (`_shape_absent`); {} for most schemas
    ABSENT: ClassVar[dict[str, tuple[AxisSource, ...]]] = {}
    _OWN: ClassVar[tuple[tuple[str, int], ...]] = ()  # (optional array, axis) of their own axes: 0 when absent

    stamp_ns: int = 0
    frame_id: str = ""
    seq: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.SCHEMA:
            SCHEMAS[cls.SCHEMA] = cls

    def __post_init__(self) -> None:
        # Coerce arrays to their declared dtype once, at construction: a publisher that builds
        # `xy` from float64 data still sends float32, and decode never sees a surprise.
        for name, spec in self.ARRAYS.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != spec.dtype:
                setattr(self, name, np.asarray(a, dtype=spec.dtype))
        if self.ABSENT:
            self._shape_absent()

    def _shape_absent(self) -> None:
        """Give optional arrays left empty the shape decode gives them (Predictions.modes [N,0,T,2], not
        the default [0,0,0,2]): a message equals its round trip, and `modes.shape[1]` is K either way."""
        for name, j in self._OWN:
            shape = getattr(self, name).shape
            if len(shape) <= j or shape[j]:
                return
        for name, axes in self.ABSENT.items():
            setattr(self, name, _empty(self.ARRAYS[name].dtype, tuple(
                [0 if src is None else src if isinstance(src, int) else getattr(self, src[0]).shape[src[1]]
                 for src in axes])))

    def __eq__(self, other: object) -> bool:
        """Field-wise equality, arrays compared by dtype, shape and value (tests, replay checks)."""
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                    return False
            elif a != b:
                return False
        return True


def _absent_axes(cls: type, arrays: dict[str, ArraySpec]) -> dict[str, tuple[AxisSource, ...]]:
    """`Message.ABSENT` of a schema; TypeError for optional arrays the codec could not leave out."""
    required = {n: s for n, s in arrays.items() if not s.optional}
    if list(arrays)[:len(required)] != list(required):
        raise TypeError(f"{cls.__name__}: optional arrays must come after the required ones")
    named: dict[str, tuple[str, int]] = {}
    for n, s in required.items():
        for j, d in enumerate(s.shape):
            if isinstance(d, str):
                named.setdefault(d, (n, j))
    out: dict[str, tuple[AxisSource, ...]] = {}
    for n, s in arrays.items():
        if s.optional:
            out[n] = tuple(d if isinstance(d, int) else named.get(d) for d in s.shape)
            if None not in out[n]:  # always empty or never: no axis says whether it is there
                raise TypeError(f"{cls.__name__}.{n}: an optional array needs an axis no required array has")
    return out


def _finish(cls: _M) -> _M:
    """Collect a schema's array and scalar fields once, so the codec never introspects per message."""
    arrays, scalars = {}, {}
    hints = {"int": int, "float": float, "str": str, "bool": bool, "dict[str, float]": dict}
    for f in dataclasses.fields(cls):
        if "array" in f.metadata:
            arrays[f.name] = f.metadata["array"]
        else:
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            scalars[f.name] = hints[t]
    cls.ARRAYS, cls.SCALARS, cls.ABSENT = arrays, scalars, _absent_axes(cls, arrays)
    cls._OWN = tuple((n, j) for n, axes in cls.ABSENT.items() for j, src in enumerate(axes) if src is None)
    return cls


@_finish
@dataclass(kw_only=True, eq=False)
class Tracks(Message):
    """Tracked agents at one time: world-frame positions (m) and velocities (m/s)."""

    SCHEMA = "drivecast/Tracks"
    ids: np.ndarray = array("int64", "N")
    xy: np.ndarray = array("float32", "N", 2)
    vxy: np.ndarray = array("float32", "N", 2)
    kind: np.ndarray = array("uint8", "N")


@_finish
@dataclass(kw_only=True, eq=False)
class Detections(Message):
    """Objects seen in one sensor frame, or a tracker's boxes: centre (m), footprint and heading.

    `length` is along `heading` (rad, counter-clockwise from the frame's x axis), `width` across it;
    `observed` says which of them the sensor saw (`OBSERVED_*` bits: a lidar that sees one side of a
    car knows its length, not its width; 0 for a point-like object). `ids` are -1 for untracked
    detections and the track id in a tracker's output."""

    SCHEMA = "drivecast/Detections"
    VERSION = 2
    OBSERVED_LENGTH: ClassVar[int] = 1
    OBSERVED_WIDTH: ClassVar[int] = 2
    OBSERVED_HEADING: ClassVar[int] = 4
    xy: np.ndarray = array("float32", "N", 2)
    kind: np.ndarray = array("uint8", "N")
    score: np.ndarray = array("float32", "N")
    ids: np.ndarray = array("int64", "N")
    length: np.ndarray = array("float32", "N")
    width: np.ndarray = array("float32", "N")
    heading: np.ndarray = array("float32", "N")
    observed: np.ndarray = array("uint8", "N")


@_finish
@dataclass(kw_only=True, eq=False)
class LaserScan(Message):
    """A planar lidar scan (ROS sensor_msgs/LaserScan): beam i at angle `angle_min + i *
    angle_increment` (rad, in `frame_id`) measured `ranges[i]` (m); a range outside [`range_min`,
    `range_max`] or not finite is no return. `intensities` is empty or one per beam. `stamp_ns` is
    the time of the first beam, `time_increment` (s) the time between beams."""

    SCHEMA = "drivecast/LaserScan"
    angle_min: float = 0.0
    angle_increment: float = 0.0
    time_increment: float = 0.0
    range_min: float = 0.0
    range_max: float = 0.0
    ranges: np.ndarray = array("float32", "N")
    intensities: np.ndarray = array("float32", "M")


@_finish
@dataclass(kw_only=True, eq=False)
class Predictions(Message):
    """Future positions per agent in world coordinates at absolute times `t_ns`.

    `stamp_ns` is the stamp of the Tracks message the prediction was made from. One message holds
    agents of one model (one sample period), so `t_ns` is shared by all rows.

    `xy` is each agent's most probable future: a consumer of one future reads only it. A model of
    K futures also fills `modes` (every future, `xy` being `modes[n, argmax(prob[n])]`) and `prob`
    (their probabilities, summing to 1 per agent); a model of one future leaves both empty (K = 0),
    and such a message is byte for byte what it was before they existed (optional arrays).
    """

    SCHEMA = "drivecast/Predictions"
    model: str = ""
    ids: np.ndarray = array("int64", "N")
    kind: np.ndarray = array("uint8", "N")
    t_ns: np.ndarray = array("int64", "T")
    xy: np.ndarray = array("float32", "N", "T", 2)
    modes: np.ndarray = array("float32", "N", "K", "T", 2, optional=True)
    prob: np.ndarray = array("float32", "N", "K", optional=True)


@_finish
@dataclass(kw_only=True, eq=False)
class Odometry(Message):
    """Pose and twist of `child_frame_id` in `frame_id` (ROS nav_msgs/Odometry, no covariances)."""

    SCHEMA = "drivecast/Odometry"
    child_frame_id: str = ""
    position: np.ndarray = array("float64", 3)
    orientation: np.ndarray = array("float64", 4)  # quaternion x, y, z, w
    linear: np.ndarray = array("float64", 3)
    angular: np.ndarray = array("float64", 3)


@_finish
@dataclass(kw_only=True, eq=False)
class Imu(Message):
    SCHEMA = "drivecast/Imu"
    orientation: np.ndarray = array("float64", 4)
    angular_velocity: np.ndarray = array("float64", 3)
    linear_acceleration: np.ndarray = array("float64", 3)


@_finish
@dataclass(kw_only=True, eq=False)
class GnssFix(Message):
    SCHEMA = "drivecast/GnssFix"
    latitude: float = 0.0
    longitude: float = 0.0
    altitude: float = 0.0
    status: int = 0


@_finish
@dataclass(kw_only=True, eq=False)
class Image(Message):
    """A camera image, `data` is uint8[height, width, channels]."""

    SCHEMA = "drivecast/Image"
    BULK = True
    encoding: str = "rgb8"
    data: np.ndarray = array("uint8", "H", "W", "C")


@_finish
@dataclass(kw_only=True, eq=False)
class PointCloud(Message):
    """Points as float32[N, len(fields)]; `fields` names the columns ("x,y,z,intensity")."""

    SCHEMA = "drivecast/PointCloud"
    BULK = True
    fields: str = "x,y,z"
    points: np.ndarray = array("float32", "N", "F")


@_finish
@dataclass(kw_only=True, eq=False)
class Clock(Message):
    """The replayed time: `stamp_ns` is the clock value."""

    SCHEMA = "drivecast/Clock"


@_finish
@dataclass(kw_only=True, eq=False)
class Diagnostics(Message):
    """Per-node counters and latency figures, published about once a second."""

    SCHEMA = "drivecast/Diagnostics"
    node: str = ""
    values: dict[str, float] = field(default_factory=dict)


@_finish
@dataclass(kw_only=True, eq=False)
class StateEvent(Message):
    """A node tells downstream that agent states were `restored` or `reset` (and why)."""

    SCHEMA = "drivecast/StateEvent"
    event: str = ""
    reason: str = ""
    ids: np.ndarray = array("int64", "N")


def schema_by_name(name: str) -> type[Message]:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMAS))}") from None

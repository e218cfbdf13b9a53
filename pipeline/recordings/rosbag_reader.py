"""ROS 1 `.bag`, ROS 2 bag directories (sqlite3 or mcap storage) and ROS 2 `.mcap` files, read
through the `rosbags` library (pure Python, no ROS install), converted into drivecast messages.

Conversions (ROS type -> drivecast schema):

| ROS type                                  | drivecast                                            |
|-------------------------------------------|------------------------------------------------------|
| nav_msgs/Odometry                         | Odometry (pose + twist, covariances dropped)         |
| geometry_msgs/PoseStamped                 | Odometry (pose, zero twist, child_frame_id = topic)  |
| geometry_msgs/PoseWithCovarianceStamped   | Odometry (as PoseStamped)                            |
| sensor_msgs/NavSatFix                     | GnssFix                                              |
| sensor_msgs/Imu                           | Imu                                                  |
| sensor_msgs/LaserScan                     | LaserScan (the same fields; intensities kept only one per beam) |
| tf2_msgs/TFMessage                        | one Odometry per transform (frame_id = parent, child_frame_id = child) |

A TFMessage holds several transforms and plays as several messages: `info()` counts the bag's
messages and its note says which topics play more (`drivecast bag info --played` counts them).

`stamp_ns` is the ROS header stamp; the wire `publish_ns` is the bag's log time (ROS bags store one
time per message). Other types are listed by `info()` with `converted=False` and skipped on play.

Bags without type definitions (ROS 2 sqlite3 bags before Iron): standard types come from the
rosbags ROS 2 Humble type store; others must be supplied as `.msg` files in a directory
(`--types DIR`, laid out `DIR/<pkg>/msg/<Name>.msg`). Reading messages of such a bag without them
raises `RecordingError` naming the missing types and this option.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.recordings.base import Item, Recording, RecordingError, RecordingInfo, TopicInfo
from pipeline.wire.codec import encode
from pipeline.wire.messages import GnssFix, Imu, LaserScan, Message, Odometry

__all__ = ["CONVERSIONS", "EXPANDING", "RosRecording", "load_msg_types"]


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _vec(v: Any) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def _quat(q: Any) -> np.ndarray:
    return np.array([q.x, q.y, q.z, q.w], dtype=np.float64)


def _odometry(m: Any, topic: str) -> list[Message]:
    return [Odometry(stamp_ns=_stamp(m.header), frame_id=m.header.frame_id, child_frame_id=m.child_frame_id,
                     position=_vec(m.pose.pose.position), orientation=_quat(m.pose.pose.orientation),
                     linear=_vec(m.twist.twist.linear), angular=_vec(m.twist.twist.angular))]


def _pose_stamped(m: Any, topic: str) -> list[Message]:
    pose = m.pose.pose if hasattr(m.pose, "pose") else m.pose  # PoseWithCovarianceStamped nests once more
    return [Odometry(stamp_ns=_stamp(m.header), frame_id=m.header.frame_id, child_frame_id=topic.strip("/"),
                     position=_vec(pose.position), orientation=_quat(pose.orientation))]


def _navsatfix(m: Any, topic: str) -> list[Message]:
    return [GnssFix(stamp_ns=_stamp(m.header), frame_id=m.header.frame_id, latitude=float(m.latitude),
                    longitude=float(m.longitude), altitude=float(m.altitude), status=int(m.status.status))]


def _imu(m: Any, topic: str) -> list[Message]:
    return [Imu(stamp_ns=_stamp(m.header), frame_id=m.header.frame_id, orientation=_quat(m.orientation),
                angular_velocity=_vec(m.angular_velocity), linear_acceleration=_vec(m.linear_acceleration))]


def _laserscan(m: Any, topic: str) -> list[Message]:
    r = np.asarray(m.ranges, dtype=np.float32)
    inten = np.asarray(m.intensities, dtype=np.float32)
    return [LaserScan(stamp_ns=_stamp(m.header), frame_id=m.header.frame_id, angle_min=float(m.angle_min),
                      angle_increment=float(m.angle_increment), time_increment=float(m.time_increment),
                      range_min=float(m.range_min), range_max=float(m.range_max), ranges=r,
                      intensities=inten if inten.shape == r.shape else np.zeros(0, np.float32))]


def _tf(m: Any, topic: str) -> list[Message]:
    return [Odometry(stamp_ns=_stamp(t.header), frame_id=t.header.frame_id, child_frame_id=t.child_frame_id,
                     position=_vec(t.transform.translation), orientation=_quat(t.transform.rotation))
            for t in m.transforms]


Conversion = Callable[[Any, str], list[Message]]

#: ROS type (rosbags naming, `pkg/msg/Name` for ROS 1 too) -> (drivecast schema, conversion)
CONVERSIONS: dict[str, tuple[str, Conversion]] = {
    "nav_msgs/msg/Odometry": (Odometry.SCHEMA, _odometry),
    "geometry_msgs/msg/PoseStamped": (Odometry.SCHEMA, _pose_stamped),
    "geometry_msgs/msg/PoseWithCovarianceStamped": (Odometry.SCHEMA, _pose_stamped),
    "sensor_msgs/msg/NavSatFix": (GnssFix.SCHEMA, _navsatfix),
    "sensor_msgs/msg/Imu": (Imu.SCHEMA, _imu),
    "sensor_msgs/msg/LaserScan": (LaserScan.SCHEMA, _laserscan),
    "tf2_msgs/msg/TFMessage": (Odometry.SCHEMA, _tf),
}

#: ROS types whose one message plays as any number of drivecast messages (one per transform)
EXPANDING = frozenset({"tf2_msgs/msg/TFMessage"})


def load_msg_types(types_dir: str | Path) -> dict[str, Any]:
    """Types from `.msg` files under `types_dir` (`<pkg>/msg/<Name>.msg`, or `<pkg>/<Name>.msg`)."""
    from rosbags.typesys import get_types_from_msg

    root = Path(types_dir)
    if not root.is_dir():
        raise RecordingError(f"--types {root}: not a directory of .msg files")
    typs: dict[str, Any] = {}
    for f in sorted(root.rglob("*.msg")):
        rel = f.relative_to(root).with_suffix("").parts
        if len(rel) < 2:
            raise RecordingError(f"{f}: expected <pkg>/msg/<Name>.msg under {root}")
        name = f"{rel[0]}/msg/{rel[-1]}"
        try:
            typs.update(get_types_from_msg(f.read_text(), name))
        except Exception as exc:  # rosbags raises its own parse errors
            raise RecordingError(f"{f}: cannot parse message definition: {exc}") from None
    return typs


class RosRecording(Recording):
    """A ROS bag, opened with `rosbags.highlevel.AnyReader`."""

    def __init__(self, path: Path, types_dir: str | Path | None = None) -> None:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore

        if path.is_file() and path.suffix == ".db3":
            path = path.parent  # the bag is the directory holding metadata.yaml
        self.path = path
        store = get_typestore(Stores.ROS2_HUMBLE)
        self._extra: dict[str, Any] = load_msg_types(types_dir) if types_dir else {}
        if self._extra:
            store.register(self._extra)
        self._known = set(store.fielddefs)
        self._reader = AnyReader([path], default_typestore=store)
        try:
            self._reader.open()
        except (AnyReaderError, FileNotFoundError, ValueError, KeyError) as exc:
            raise RecordingError(f"{path}: cannot read as a ROS bag: {exc}") from None
        except Exception as exc:  # the rosbags readers raise various errors on garbage
            raise RecordingError(f"{path}: cannot read as a ROS bag: {type(exc).__name__}: {exc}") from None
        if self._extra:
            self._reader.typestore.register(self._extra)
        try:
            self._info = self._describe(path)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            with contextlib.suppress(RecordingError):
                self.close()
            raise RecordingError(f"{path}: cannot read as a ROS bag: damaged metadata: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None

    def _describe(self, path: Path) -> RecordingInfo:
        """The bag's info, its values checked: a ROS 2 bag's come from metadata.yaml, which rosbags takes as
        it is (a count that is a string, a topic that is a number)."""
        from rosbags.interfaces import MessageDefinitionFormat

        r = self._reader
        if path.is_dir():
            fmt = "ros2-" + ("mcap" if any(path.glob("*.mcap")) else "sqlite3")
        else:
            fmt = "ros1-bag" if path.suffix == ".bag" else "ros2-mcap"
        self._no_defs = sorted({c.msgtype for c in r.connections
                                if c.msgdef.format == MessageDefinitionFormat.NONE})
        topics = []
        for name, t in sorted(r.topics.items()):
            typ = t.msgtype or "?"
            if not isinstance(name, str) or not isinstance(typ, str) or type(t.msgcount) is not int or t.msgcount < 0:
                raise ValueError(f"topic {name!r} of type {typ!r} with {t.msgcount!r} messages")
            conv = CONVERSIONS.get(typ)
            topics.append(TopicInfo(name, typ, t.msgcount, conv is not None, conv[0] if conv else ""))
        count, start, end = r.message_count, r.start_time, r.end_time
        if any(type(v) is not int for v in (count, start, end)) or count < 0:
            raise ValueError(f"{count!r} messages from {start!r} to {end!r}")
        # rosbag2 readers report end as "after the last message" (+1 ns); rosbag1 reports the last one
        end -= 1 if r.is2 and count else 0
        note = ""
        if self._no_defs:
            missing = self.missing_types()
            note = "no type definitions stored in the bag" + (
                f"; missing definitions: {', '.join(missing)}" if missing else "")
        expanding = [t.name for t in topics if t.type in EXPANDING]
        if expanding:
            note += ("; " if note else "") + (
                f"{', '.join(expanding)}: a TFMessage plays as one Odometry per transform, so play sends "
                "more messages than counted here (--played counts them)")
        return RecordingInfo(str(path), fmt, start if count else 0, end if count else 0, count, topics, note=note)

    def missing_types(self, topics: Iterable[str] | None = None) -> list[str]:
        """Types of the bag (of `topics`) that have neither a stored nor a supplied definition."""
        wanted = None if topics is None else set(topics)
        return sorted({c.msgtype for c in self._reader.connections
                       if c.msgtype in self._no_defs and c.msgtype not in self._known
                       and (wanted is None or c.topic in wanted)})

    def info(self) -> RecordingInfo:
        return self._info

    def close(self) -> None:
        if self._reader.stack is None:
            return
        try:
            self._reader.close()
        except Exception as exc:  # rosbags' close trips over what a damaged metadata.yaml said (its `files`)
            raise RecordingError(f"{self.path}: cannot close the ROS bag: damaged metadata: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from None

    def items(self, topics: Iterable[str] | None = None, start_ns: int | None = None) -> Iterator[Item]:
        wanted = None if topics is None else set(topics)
        missing = self.missing_types(wanted)
        if missing:
            users = sorted({c.topic for c in self._reader.connections if c.msgtype in missing})
            raise RecordingError(
                f"{self.path}: the bag stores no type definitions and these types are unknown: "
                f"{', '.join(missing)} (topics {', '.join(users)}). Supply them with --types DIR, a "
                f"directory of .msg files laid out <pkg>/msg/<Name>.msg (e.g. "
                f"DIR/{missing[0].split('/')[0]}/msg/{missing[0].split('/')[-1]}.msg), or leave these "
                f"topics out with --topics")
        conns = [c for c in self._reader.connections
                 if c.msgtype in CONVERSIONS and (wanted is None or c.topic in wanted)]
        if not conns:
            return
        deser = self._reader.deserialize
        for conn, t_ns, raw in _guarded(self._reader.messages(connections=conns, start=start_ns), self.path):
            try:
                ros = deser(raw, conn.msgtype)
            except Exception as exc:
                raise RecordingError(f"{self.path}: {conn.topic} @ {t_ns}: cannot deserialize "
                                     f"{conn.msgtype}: {exc}") from None
            try:
                frames = [encode(msg, publish_ns=t_ns) for msg in CONVERSIONS[conn.msgtype][1](ros, conn.topic)]
            except Exception as exc:  # the bag's own definition of the type lacks a field, or types it otherwise
                raise RecordingError(f"{self.path}: {conn.topic} @ {t_ns}: cannot convert {conn.msgtype}: "
                                     f"{type(exc).__name__}: {str(exc)[:200]} (is the bag's definition of "
                                     f"the type the standard one?)") from None
            for f in frames:
                yield Item(conn.topic, t_ns, t_ns, f)


def _guarded(it: Iterator[Any], path: Path) -> Iterator[Any]:
    """`it`, with any error of the bag reader (a corrupt chunk: bz2, lz4, zstd, struct errors) as RecordingError."""
    n = 0
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:  # rosbags raises whatever its decompressor or parser raises
            raise RecordingError(f"{path}: corrupt data after {n} messages: {type(exc).__name__}: {exc}") from None
        n += 1
        yield item

"""The reader interface every recording format implements, and the types it returns.

A `Recording` yields `Item(topic, log_ns, publish_ns, frames)` in log-time order, `frames` being the
drivecast wire frames `[header, array_0, ...]` the player sends as they are, and describes itself
with `RecordingInfo`. Format modules (`mcap_reader`, `rosbag_reader`) import this one, never `reader`,
so the dispatcher in `reader` can import them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.errors import DrivecastError

__all__ = ["Item", "Recording", "RecordingError", "RecordingInfo", "TopicInfo"]


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

"""Open any recording through one interface: `open_recording(path)` picks the format's reader.

- an MCAP file with header profile `drivecast` (what `drivecast record` writes):
  `mcap_reader.DrivecastMcap`
- a ROS 1 `.bag`, a ROS 2 bag directory (`metadata.yaml` + `.db3`/`.mcap`) or a ROS 2 `.mcap`:
  `rosbag_reader.RosRecording`, through the `rosbags` library, imported only when needed

Each returns a `Recording` (`pipeline.recordings.base`, with its types); `prefetch` reads one ahead
in a thread.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from queue import Full, Queue
from typing import Any

from mcap.exceptions import McapError
from mcap.records import Header
from mcap.stream_reader import StreamReader

from pipeline.recordings.base import Item, Recording, RecordingError
from pipeline.recordings.mcap_format import MAGIC, PROFILE
from pipeline.recordings.mcap_reader import DrivecastMcap

__all__ = ["open_recording", "prefetch"]

_ROS1_MAGIC = b"#ROSBAG V2.0\n"


def _mcap_profile(path: Path) -> str | None:
    """The MCAP header profile, or None if `path` is not an MCAP file or its first record is no header.
    Chunks are not opened: a damaged first record may read as one, and only the header is wanted."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != MAGIC:
                return None
            f.seek(0)
            rec = next(iter(StreamReader(f, record_size_limit=1 << 20, emit_chunks=True).records))
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
        elif head and len(head) < len(MAGIC) and MAGIC.startswith(head):
            raise RecordingError(f"{p}: truncated recording: {len(head)} bytes, the MCAP magic alone is {len(MAGIC)}")
        elif head and len(head) < len(_ROS1_MAGIC) and _ROS1_MAGIC.startswith(head):
            raise RecordingError(f"{p}: truncated recording: {len(head)} bytes, the ROS 1 bag magic alone is "
                                 f"{len(_ROS1_MAGIC)}")
        elif not head.startswith(_ROS1_MAGIC[:12]) and p.suffix not in (".db3",):
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

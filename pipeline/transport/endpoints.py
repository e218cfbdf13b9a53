"""Where a topic's sockets live and whether they use shared memory.

An ipc endpoint is a socket file in the run directory (`ipc_endpoint`); a tcp one takes a port
the launcher found free (`free_tcp_port`). Shared memory is `"auto"` (on for ipc, the same
machine by construction; off for tcp), `"on"` or `"off"`; DRIVECAST_SHM=on|off overrides
`"auto"` for a whole graph.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import zmq

from pipeline.errors import ConfigError
from pipeline.wire.messages import Message

__all__ = ["BULK_HWM", "LOSSLESS_HWM", "QUEUE_BYTES", "SHM_MODES", "bind", "byte_hwm", "default_hwm", "free_tcp_port",
           "ipc_endpoint", "shm_namespace", "shm_wanted",
           "size_receive_queue"]

SHM_MODES = ("auto", "on", "off")
# What ZeroMQ may hold for one subscriber of a lossy topic, at each end: high-water marks count
# messages, so large messages get a lower mark (`byte_hwm`); a stalled consumer of 2.7 MB camera
# frames over tcp otherwise held 1,000 of them (2.7 GB) in its queue.
QUEUE_BYTES = 64 << 20
# A lossless queue's mark at each end, fixed: its publisher waits beyond it.
LOSSLESS_HWM = 16
# The mark of a topic of bulk sensor data (`Message.BULK`) at each end until its first message
# says how large they are (ROS 2's sensor-data profile keeps 5).
BULK_HWM = 8
_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux


def ipc_endpoint(run_dir: Path, topic: str, lossless: bool = False) -> str:
    path = Path(run_dir) / (topic.replace("/", ".") + (".block" if lossless else "") + ".sock")
    if len(str(path)) > _IPC_PATH_MAX:
        raise ConfigError(f"ipc path {path} is longer than {_IPC_PATH_MAX} characters; "
                          "use a shorter run directory (DRIVECAST_RUN_DIR)")
    return f"ipc://{path}"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the launcher hands it to the publishing node)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_hwm(cls: type[Message] | None, default: int) -> int:
    """A topic's mark before its first message: `BULK_HWM` for bulk sensor data, else `default`."""
    return BULK_HWM if cls is not None and cls.BULK else default


def byte_hwm(nbytes: int, max_bytes: int, current: int) -> int:
    """The high-water mark at which messages of `nbytes` fill at most `max_bytes`: at most
    `current`, at least 2.

    libzmq applies a new mark to the pipes that exist, but lowering it on a pipe that has carried
    messages can stop that pipe for good: its writer counts what the reader acknowledged, which the
    reader does every half of the *old* mark, so the writer can stay "full" under the new one while
    the reader has taken everything (libzmq issue 2509; tests/test_queue_bytes.py reaches it every
    time). Before the first message of a pipe (a publisher) or right after it (a subscriber: one
    read, nothing acknowledged yet) it cannot: that is when a socket lowers it (`size_receive_queue`)."""
    return max(2, min(current, max_bytes // max(1, nbytes)))


def size_receive_queue(sock: zmq.Socket[Any], endpoint: str, hwm: int, nbytes: int, max_bytes: int,
                       first: bool, lossless: bool) -> tuple[int, int]:
    """A subscribing socket's mark for messages of `nbytes` (at most `max_bytes` queued), and the
    message size from which it should look again. Right after its first message the mark is set in
    place (`byte_hwm` says why only then); later a lossy socket connects again with a lower one, at
    least halved so that happens a few times at most, losing what was on the way as a lossy queue
    may; a lossless one keeps its mark."""
    if first:
        new = byte_hwm(nbytes, max_bytes, hwm)
        if new < hwm:
            sock.setsockopt(zmq.RCVHWM, new)
    elif lossless:
        new = hwm
    else:
        new = byte_hwm(nbytes, max_bytes, hwm // 2)
        sock.disconnect(endpoint)
        sock.setsockopt(zmq.RCVHWM, new)
        sock.connect(endpoint)
    return new, max_bytes // new if new > 2 and not lossless else 1 << 62


def shm_wanted(mode: str, endpoint: str) -> bool:
    """Whether a topic at `endpoint` uses shared memory in `mode` (see the module)."""
    if mode not in SHM_MODES:
        raise ConfigError(f"shm: expected one of {', '.join(SHM_MODES)}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get("DRIVECAST_SHM", "auto")
        mode = env if env in ("on", "off") else "auto"
    if mode == "auto":
        return endpoint.startswith("ipc://")
    return mode == "on"


def shm_namespace(endpoint: str, run_dir: Path | str | None) -> Path | None:
    """The run directory whose namespace holds a topic's segments: given, or the ipc socket's."""
    if run_dir is not None:
        return Path(run_dir)
    if endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://"):]).parent
    return None


def bind(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Bind `sock`, replacing a stale ipc socket file of a previous incarnation of this node."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if os.path.exists(path):
            os.unlink(path)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {endpoint}: {exc}") from None
    if endpoint.startswith("ipc://"):
        os.chmod(path, 0o600)  # owner-only itself, not only through the run directory (connecting needs write)

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

__all__ = ["QUEUE_BYTES", "SHM_MODES", "bind", "bounded_hwm", "free_tcp_port", "ipc_endpoint", "shm_namespace",
           "shm_wanted"]

SHM_MODES = ("auto", "on", "off")
# What ZeroMQ may hold for one subscriber, at each end: high-water marks count messages, so once
# messages are this large the HWM is lowered to fit (`bounded_hwm`); a stalled consumer of 2.7 MB
# camera frames over tcp otherwise held 1,000 of them (2.7 GB) in its queue.
QUEUE_BYTES = 64 << 20
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


def bounded_hwm(sock: zmq.Socket[Any], option: int, current: int, nbytes: int, max_bytes: int) -> int:
    """Lower `sock`'s high-water mark `option` (RCVHWM or SNDHWM) so that messages of `nbytes`
    fill at most `max_bytes` (never below 2), and return it. libzmq (>= 4.2) applies the new mark
    to pipes that exist already, so a connected socket need not be made again."""
    hwm = max(2, max_bytes // max(1, nbytes))
    if hwm >= current:
        return current
    sock.setsockopt(option, hwm)
    return hwm


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

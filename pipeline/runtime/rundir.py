"""The run directory of a graph and its manifest.

A launched graph owns one directory (mode 0700) under `runs_base()`: its ipc sockets, shared-memory
names, each node's state directory and `manifest.json`. The manifest says which nodes run where and
which endpoint carries each topic; the launcher writes it, each node's runner reads its own entry,
and the tools (`topic`, `record`) and `play` find a running graph by it. An `external` topic has
no publisher in the graph: its subscribers connect to an endpoint in the run directory that
`drivecast play` binds while it feeds the graph (ZeroMQ lets a bind follow the connects). It is typed here, once, so
every reader agrees on its fields and a damaged file is an error that names it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq

from pipeline.errors import ConfigError
from pipeline.transport.curve import Curve

__all__ = ["InputEntry", "Manifest", "NodeEntry", "ShmOptions", "TopicEntry", "find_run", "make_run_dir",
           "live_runs", "pid_alive", "read_manifest", "runs_base", "tool_client", "write_manifest"]

MANIFEST = "manifest.json"


class ShmOptions(msgspec.Struct, forbid_unknown_fields=True):
    """How a topic's large frames go through shared memory (Publisher/Subscriber keywords)."""

    shm: str = "auto"  # auto | on | off
    shm_threshold: int = 65536
    shm_slots: int = 4


class TopicEntry(msgspec.Struct, forbid_unknown_fields=True):
    schema: str
    endpoint: str
    publisher: str = ""  # the node (or tool) that publishes it; "" for an external topic
    lossless_endpoint: str | None = None  # only where a subscriber asked for `block`
    lossless_subscribers: int = 0
    machine: str = ""
    shm: ShmOptions = msgspec.field(default_factory=ShmOptions)
    external: bool = False  # no node publishes it: `drivecast play` binds its endpoints


class InputEntry(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    queue: str = "drop_oldest"
    depth: int = 10
    max_mb: float = 64.0


class NodeEntry(msgspec.Struct, forbid_unknown_fields=True):
    run: str
    params: dict[str, Any] = {}
    required: bool = False
    pid: int | None = None  # set by the launcher once the process runs
    restarts: int = 0
    machine: str = ""
    inputs: dict[str, InputEntry] = {}


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    run_dir: str
    file: str = ""
    launcher_pid: int = -1
    started_ns: int = 0
    clock: str = ""  # topic of the graph's clock, "" for wall time
    security: str | None = None  # CURVE keys directory
    machine: str = ""  # the launcher's machine, in a graph split over hosts (whose key a tool uses)
    topics: dict[str, TopicEntry] = {}
    nodes: dict[str, NodeEntry] = {}


def runs_base() -> Path:
    """Where run directories live: $DRIVECAST_RUN_DIR, else /tmp/drivecast-<uid> (mode 0700)."""
    base = Path(os.environ.get("DRIVECAST_RUN_DIR") or f"/tmp/drivecast-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"run directory {base} belongs to another user")
    if st.st_mode & 0o077:
        raise ConfigError(f"run directory {base} is open to other users (mode {st.st_mode & 0o777:o}); chmod 700 it")
    return base


def make_run_dir(name: str) -> Path:
    run = runs_base() / f"{name}-{os.getpid()}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(mode=0o700)
    return run


def tool_client(manifest: Manifest) -> Callable[[zmq.Socket[Any], str], None] | None:
    """How a tool (record, topic, view) connects to a graph's topics, `configure(sock, topic)`: as a
    CURVE client with the key pair of the launcher's machine when the graph uses CURVE; else None."""
    if not manifest.security:
        return None
    machine = manifest.machine or next((n.machine for n in manifest.nodes.values() if n.machine), "")
    curve = Curve(Path(manifest.security), machine or "default")
    return lambda sock, topic: curve.make_client(sock, manifest.topics[topic].machine or "default")


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    tmp = run_dir / f"{MANIFEST}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only, whatever the umask
    with os.fdopen(fd, "wb") as fh:
        fh.write(msgspec.json.format(msgspec.json.encode(manifest), indent=1))
    os.replace(tmp, run_dir / MANIFEST)  # readers never see a half-written file


def read_manifest(path: Path) -> Manifest:
    """A manifest file, or ConfigError naming the file and what is wrong with it."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Manifest)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the run manifest: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not a drivecast run manifest: {exc}") from None
    except RecursionError:  # what msgspec raises for JSON nested deeper than its stack allows
        raise ConfigError(f"{path}: not a drivecast run manifest: JSON nested too deeply") from None


def pid_alive(pid: int) -> bool:
    """Whether a process exists (a graph's launcher still runs). A pid of 0 or below names a process
    group, not a process, and one beyond pid_t is no process: both are not alive."""
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_runs(which: str | None = None) -> list[Manifest]:
    """The manifests of running graphs: `which` is a run directory or a graph name; None: all."""
    in_dir = bool(which) and Path(str(which)).is_dir()
    candidates = [Path(str(which)) / MANIFEST] if in_dir else list(runs_base().glob(f"*/{MANIFEST}"))
    live = []
    for path in candidates:
        try:
            m = read_manifest(path)
        except ConfigError:
            if in_dir and path.exists():
                raise  # the run asked for by its directory has a damaged manifest: say so, not "no graph"
            continue  # a run being set up, or one left by another version
        if pid_alive(m.launcher_pid) and (not which or in_dir or m.name == which):
            live.append(m)
    return live


def find_run(which: str | None = None) -> Manifest:
    """The manifest of a running graph: `which` is a run directory or a graph name; default newest."""
    live = live_runs(which)
    if not live:
        where = which or str(runs_base())
        raise ConfigError(f"no running graph found in {where} (start one with `drivecast launch FILE`)")
    return max(live, key=lambda m: m.started_ns)

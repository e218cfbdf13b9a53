"""One drive of a fleet evaluation: a lockstep replay through the graph, its report and output digest.

`eval_drive(task)` is the worker function every back-end runs (`pipeline.fleet.backends`): it opens
the recording, loads the graph with each evaluator's `report_json` pointed at a file of its own in
a temporary directory, replays the drive as `drivecast play FILE --lockstep --graph G` does (the graph
in this process on the replayed clock), and returns a `DriveResult` as plain builtins (a dict that
pickles, goes through Ray and into JSON alike):

- `digest`: sha256 over everything the graph published, in order: for each message its topic, log
  time and wire frames, each length-prefixed. Injected (recorded) messages are not in it. Lockstep
  replay is deterministic, so the digest is the same whichever back-end or worker ran the drive
  (on one build: onnxruntime's kernels may differ between CPUs).
- `rows`: every evaluator's final table (`{"evaluator", "kind", "age", "n", "ade", "fde", "cv_ade",
  "cv_fde", "cv_k"}`, as the evaluator's `report_json` writes it).
- `status` "ok", or "error" with `error` the reason: a corrupt file, a drive with nothing to play, a
  node that raised (its exception and where). One drive's failure never reaches the others.

What nodes print (the evaluator's table) and log during the drive is kept out of the terminal: the
last lines of the log go into `log`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DrivecastError
from pipeline.recordings.lockstep import lockstep, plan
from pipeline.recordings.reader import open_recording
from pipeline.recordings.schedule import PlayOptions
from pipeline.runtime.config import parse_set
from pipeline.runtime.graph import Graph, load_graph
from pipeline.wire.messages import Message

__all__ = ["EVALUATOR_CLASS", "DriveResult", "DriveTask", "eval_drive", "evaluators"]

#: the node class whose `report_json` a fleet evaluation collects, named by path: pipeline imports no node
EVALUATOR_CLASS = "nodes.evaluator.Evaluator"
_LOG_TAIL = 20  # log lines kept per drive


@dataclass(frozen=True)
class DriveTask:
    """What a worker needs for one drive; paths absolute (a Ray worker's directory may be elsewhere)."""

    drive: str
    graph: str
    evaluators: tuple[str, ...] = ()            # node names whose report_json is collected
    topics: tuple[str, ...] | None = None       # --topics
    remap: tuple[tuple[str, str], ...] = ()     # --remap FROM:=TO
    cwd: str = ""                               # relative params in the graph (model files) resolve here
    sets: tuple[str, ...] = ()                  # --set NODE.PARAM=VALUE


@dataclass
class DriveResult:
    drive: str
    status: str = "error"                       # "ok" or "error"
    error: str = ""
    digest: str = ""
    injected: int = 0
    published: int = 0
    replayed_s: float = 0.0
    wall_s: float = 0.0
    worker: str = ""                            # host:pid
    rows: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def evaluators(graph: Graph) -> tuple[str, ...]:
    """The graph's nodes that are an Evaluator (or a subclass), in file order."""
    def is_evaluator(cls: type) -> bool:
        return any(f"{c.__module__}.{c.__qualname__}" == EVALUATOR_CLASS for c in cls.__mro__)
    return tuple(name for name, spec in graph.nodes.items() if is_evaluator(spec.cls))


class _Digest:
    """The lockstep sink: hashes what the graph publishes (not the `injected` topics), in order."""

    def __init__(self, injected: set[str]) -> None:
        self.injected = injected
        self.sha = hashlib.sha256()
        self.count = 0

    def __call__(self, topic: str, frames: list[Any], log_ns: int, msg: Message) -> None:
        if topic in self.injected:
            return
        self.count += 1
        t = topic.encode()
        self.sha.update(len(t).to_bytes(4, "little") + t + log_ns.to_bytes(8, "little", signed=True)
                        + len(frames).to_bytes(4, "little"))
        for f in frames:
            mv = memoryview(f)
            self.sha.update(mv.nbytes.to_bytes(8, "little"))
            self.sha.update(mv)


@contextlib.contextmanager
def _quiet(lines: list[str]) -> Iterator[None]:
    """Nodes' prints dropped, log records (INFO and up) kept in `lines` instead of the terminal."""
    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"[{record.name}] {record.levelname} {record.getMessage()}")
            del lines[:-_LOG_TAIL]

    root = logging.getLogger()
    handler, level, old = Keep(logging.INFO), root.level, root.handlers[:]
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.handlers = old
        root.setLevel(level)


def _where(exc: BaseException) -> str:
    """` (at file:line in function)` of the innermost frame of `exc`, '' without a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    name = os.path.relpath(f.filename) if f.filename.startswith(os.getcwd() + os.sep) else f.filename
    return f" (at {name}:{f.lineno} in {f.name})"


def _load_rows(reports: dict[str, Path]) -> list[dict[str, Any]]:
    rows = []
    for name, path in reports.items():
        if not path.exists():
            raise ConfigError(f"evaluator {name!r} wrote no report_json (did it shut down?)")
        try:
            data = json.loads(path.read_text())
            got = data["rows"]
            if not isinstance(got, list) or not all(isinstance(r, dict) for r in got):
                raise TypeError("'rows' is not a list of objects")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"evaluator {name!r}: unreadable report_json {path}: {exc}") from None
        rows += [{"evaluator": name, **r} for r in got]
    return rows


def eval_drive(task: DriveTask, stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Replay one drive; a `DriveResult` as a dict. Never raises for a bad drive or a failing node.
    `stop()` true ends the replay at its next message (status "stopped": no result)."""
    res = DriveResult(drive=task.drive, worker=f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.perf_counter()
    if task.cwd and os.path.isdir(task.cwd) and os.getcwd() != task.cwd:
        os.chdir(task.cwd)  # a Ray worker starts elsewhere; a relative model path means the submitter's
    opts = PlayOptions(topics=list(task.topics) if task.topics is not None else None, remap=dict(task.remap))
    with tempfile.TemporaryDirectory(prefix="drivecast-fleet-") as tmp, _quiet(res.log):
        reports = {name: Path(tmp) / f"{name}.json" for name in task.evaluators}
        try:
            overrides = parse_set(list(task.sets))
            for name, report in reports.items():
                overrides.setdefault(name, {})["report_json"] = str(report)
            graph = load_graph(task.graph, overrides)
            with open_recording(task.drive) as rec:
                p = plan(rec.info(), graph, opts)
                injected = set(p.sources) | ({p.opts.clock_topic} if p.opts.clock_hz else set())
                sink = _Digest(injected)
                stats = lockstep(rec, graph, opts, sink, stop)
            if stop():
                res.status = "stopped"
                return asdict(res)
            res.rows = _load_rows(reports)
            res.digest, res.published = sink.sha.hexdigest(), sink.count
            res.injected, res.replayed_s = stats.injected, stats.replayed_ns / 1e9
            res.status = "ok"
        except DrivecastError as exc:
            res.error = str(exc)
        except Exception as exc:  # a node's bug: this drive fails, the fleet goes on
            res.error = f"{type(exc).__name__}: {exc}{_where(exc)}"
    res.wall_s = time.perf_counter() - t0
    return asdict(res)

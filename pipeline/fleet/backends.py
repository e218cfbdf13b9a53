"""Where the drives of a fleet evaluation run: one worker API, three back-ends (the nuPlan devkit pattern).

Each back-end is `run_*(tasks, workers, stop, timeout_s) -> Iterator[dict]`: it runs
`drive.eval_drive` on every task and yields each result as its drive finishes (in finishing order,
not task order), until all are done or `stop()` turns true. Closing the iterator (or `stop()`) ends
every worker: results not yet yielded are lost, nothing keeps running behind the caller's back. A
drive still running after `timeout_s` (None: no limit) is ended and becomes an error row.

- `run_sequential`: in this process, one drive after the other (`--workers 1`). A stop, or the
  timeout, interrupts the drive being replayed at its next message (a callback that never returns
  cannot be interrupted in this process: the other back-ends end its worker).
- `run_pool`: a local `ProcessPoolExecutor` of `workers` spawned processes (spawn: no inherited
  threads or sockets; the default on macOS, and fork is unsafe with onnxruntime's threads). Workers
  ignore SIGINT (a terminal's Ctrl-C reaches the whole process group): the parent decides, and on a
  stop terminates them (SIGTERM, then SIGKILL after a deadline). A worker process that dies (a
  segfault in a native library, the OOM killer) breaks the whole pool, so the drives that were in
  flight are replayed again, each in a pool of its own: the one that kills its worker alone gets the
  error row, the rest of the fleet is not blamed. A drive past the timeout ends its pool the same
  way (a pool cannot end one worker): it gets the error row, the others in flight start again.
- `run_ray`: Ray tasks (`num_cpus=1`, no retries: a failure is the drive's result, not a reason to
  run it again; a task past the timeout is cancelled, its worker killed; the timeout counts from the
  moment the task reports it started, not from its submission, so a task the cluster never starts
  is never timed out). Without an address, a local Ray instance of `workers` CPUs for this run, shut down
  at the end; with `"auto"` or an address, the cluster it names (drives and graph must be at the
  same paths on every node, e.g. a shared file system), left running. A Ray already initialised in
  this process (a test's fixture, a notebook) is used as it is. Ray is imported here only.

The pool has at most 2 x `workers` drives submitted (one queued behind each running one), so a stop
has little to cancel and a crash few suspects; Ray has exactly `workers` in flight, which is what
bounds its concurrency on a cluster of any size.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from typing import Any

from pipeline.errors import ConfigError
from pipeline.fleet.drive import DriveResult, DriveTask, eval_drive
from pipeline.runtime.signals import STOP_SIGNALS

__all__ = ["close_pool", "run_pool", "run_ray", "run_sequential"]

_POLL_S = 0.1       # how often a waiting back-end looks at stop(): a stop is seen within this
_TERM_S = 3.0       # after SIGTERM, workers get this long to exit before SIGKILL (5 s budget in all)
_BOARD_S = 30.0     # the start board answers in milliseconds; this long without an answer is an error

Stop = Callable[[], bool]
Results = Generator[dict[str, Any], None, None]  # closing it ends the workers


def _failed(task: DriveTask, why: str) -> dict[str, Any]:
    return asdict(DriveResult(drive=task.drive, error=why))


def _timed_out(task: DriveTask, timeout_s: float) -> dict[str, Any]:
    return _failed(task, f"timed out: still running after {timeout_s:g} s (--timeout)")


def run_sequential(tasks: Iterable[DriveTask], stop: Stop = lambda: False, timeout_s: float | None = None) -> Results:
    """Each drive in this process, in order."""
    for task in tasks:
        if stop():
            return
        end = time.monotonic() + (timeout_s if timeout_s is not None else float("inf"))
        result = eval_drive(task, lambda: stop() or time.monotonic() > end)  # noqa: B023 (called within this step)
        if stop():  # interrupted mid-drive: a partial replay is no result
            return
        yield _timed_out(task, timeout_s) if timeout_s is not None and result["status"] == "stopped" else result


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def close_pool(ex: ProcessPoolExecutor, kill: bool) -> None:
    """Shut the pool down; with `kill`, end its workers now (SIGTERM, SIGKILL after `_TERM_S`)."""
    if not kill:
        ex.shutdown(wait=True)
        return
    procs = list((getattr(ex, "_processes", None) or {}).values())  # no public handle before Python 3.14
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _TERM_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def _round(queue: deque[DriveTask], workers: int, stop: Stop, suspects: list[DriveTask],
           timeout_s: float | None) -> Results:
    """Run tasks from `queue` in one fresh pool until it is empty, `stop()`, a worker dies (then
    `suspects` holds the drives that were in flight), or a drive runs past `timeout_s` (its error
    row; the others in flight go back to the front of `queue`)."""
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    inflight: dict[Future[dict[str, Any]], DriveTask] = {}
    started: dict[Future[dict[str, Any]], float] = {}
    kill = False
    try:
        while (queue or inflight) and not stop():
            while queue and len(inflight) < 2 * workers:
                task = queue.popleft()
                inflight[ex.submit(eval_drive, task)] = task
            done, _ = wait(inflight, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            if timeout_s is not None:
                now = time.monotonic()
                for f in inflight:
                    if f.running():
                        started.setdefault(f, now)
                late = [f for f in inflight if f not in done and now - started.get(f, now) > timeout_s]
                if late:
                    kill = True
                    for f in late:
                        yield _timed_out(inflight.pop(f), timeout_s)
                    queue.extendleft(reversed([inflight.pop(f) for f in list(inflight) if f not in done]))
            # the drives that finished before the pool broke first: theirs are results, not suspicions
            for f in sorted(done, key=lambda f: isinstance(f.exception(), BrokenProcessPool)):
                task = inflight.pop(f)
                try:
                    result = f.result()
                except BrokenProcessPool:
                    suspects += [task, *inflight.values()]
                    inflight.clear()
                    return
                except Exception as exc:  # e.g. the task could not be sent; the drive's error, not the fleet's
                    result = _failed(task, f"{type(exc).__name__}: {exc}")
                yield result
            if kill and not inflight:
                return  # the late drive's worker cannot be ended alone: a fresh pool for the rest
    finally:
        close_pool(ex, kill=kill or bool(inflight) or stop())


def run_pool(tasks: Iterable[DriveTask], workers: int, stop: Stop = lambda: False,
             timeout_s: float | None = None) -> Results:
    """The drives in a local pool of `workers` processes (see the module doc)."""
    queue = deque(tasks)
    while queue and not stop():
        suspects: list[DriveTask] = []
        yield from _round(queue, workers, stop, suspects, timeout_s)
        for task in suspects:  # each alone: only a drive that kills its own worker is to blame
            if stop():
                return
            again: list[DriveTask] = []
            yield from _round(deque([task]), 1, stop, again, timeout_s)
            if again and not stop():
                yield _failed(task, "its worker process died (a crash in native code, or killed: out of memory?)")


class StartBoard:
    """A Ray actor of no CPU that Ray tasks tell when they start: a worker process that takes seconds to
    start (after a cancelled one, on a loaded machine) is not timed for it, only the drive is (loading
    the graph included)."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def mark(self, key: int) -> None:
        self.started.append(key)

    def take(self) -> list[int]:
        """The keys marked since the last call."""
        started, self.started = self.started, []
        return started


def _ray_drive(task: DriveTask, board: Any, key: int) -> dict[str, Any]:
    if board is not None:   # None: no --timeout, nobody reads the board
        board.mark.remote(key)
    return eval_drive(task)


def run_ray(tasks: Iterable[DriveTask], workers: int, stop: Stop = lambda: False,
            address: str | None = None, timeout_s: float | None = None) -> Results:
    """The drives as Ray tasks (see the module doc). `workers` 0: as many as the cluster has CPUs."""
    import logging

    try:
        import ray  # only here: the runtime and `import pipeline.cli.fleet` never load Ray
    except ModuleNotFoundError:
        raise ConfigError("--ray needs the ray package: pip install 'drivecast[fleet]'") from None
    started = not ray.is_initialized()
    if started:
        handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        try:
            ray.init(address=address, num_cpus=(workers or None) if address is None else None,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--ray {address or 'local'}: cannot start or join Ray: {exc}") from None
        for s, h in handlers.items():  # Ray installs its own SIGTERM handler: ours decides how to stop
            if h is not None:
                signal.signal(s, h)
    if not workers:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_drive)
    board: Any = ray.remote(num_cpus=0)(StartBoard).remote() if timeout_s is not None else None
    queue = deque(tasks)
    inflight: dict[Any, tuple[DriveTask, int]] = {}   # ref -> its task and the number it reports its start with
    ends: dict[Any, float] = {}  # when each started task times out: its clock starts when it starts running
    submitted = 0
    try:
        while (queue or inflight) and not stop():
            while queue and len(inflight) < workers:  # exactly `workers` at a time, whatever the cluster's size
                task = queue.popleft()
                inflight[remote.remote(task, board, submitted)] = (task, submitted)
                submitted += 1
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
            if timeout_s is not None:
                started_now = set(ray.get(board.take.remote(), timeout=_BOARD_S))
                now = time.monotonic()
                ends.update({ref: now + timeout_s for ref, (_, key) in inflight.items() if key in started_now})
                for ref in [r for r in inflight if r not in done and now > ends.get(r, float("inf"))]:
                    ray.cancel(ref, force=True)
                    ends.pop(ref)
                    yield _timed_out(inflight.pop(ref)[0], timeout_s)
            for ref in done:
                task = inflight.pop(ref)[0]
                ends.pop(ref, None)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died, the task was cancelled, ...
                    result = _failed(task, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                yield result
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()

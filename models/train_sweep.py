"""`drivecast train` sweeps: the seeds of `--seeds N`, every fold of a cross-validation (`--fold all`), a grid
of recipes (`--grid KEY=V1,V2`). Each is a list of ordinary runs (`Run`), each with its own --out, run one
after another in this process, in a local pool of `--jobs` processes, or as Ray tasks (`--ray`), and
collected as they finish into one table (`write_table`: OUT/<stem>.csv and .json, and printed).

- Folds: `--fold all` on a dataset split by file or recording (argoverse, apolloscape, drives...) is every
  part of a 5-fold cross-validation, `--fold all/K` of K; on eth_ucy, whose folds are named scenes and
  whose `--fold all` is one run on every scene's training files, `--fold each` runs every named fold
  (each directory of DIR with a train/ and a val/). Each fold is the run `--fold F --out OUT/fold_F`
  would be (F "2/5" is written 2of5), so its metrics are that run's. The table adds the pooled figures:
  every validation window scored by the fold that held it out, i.e. the folds' figures weighted by
  their windows.
- Grid: the product of every `--grid KEY=V1,V2,...` (KEY a flag of `drivecast train`, e.g. hidden, lr,
  cell, reverse=on,off), each point under OUT/<key><value>_.../, with the folds inside it if both.
- Runs are `main(argv)` calls (the caller passes models.train.main: this module does not import it),
  with the argv written from the run's config (`config_argv`), so a run's recorded command is the
  whole recipe. A run that fails (an exception, a nonzero exit, a worker that died) is a row with its
  error; the others go on. Ctrl-C (or SIGTERM) ends every worker: a pool's processes are terminated,
  Ray tasks cancelled. Pool and Ray runs write their output to OUT/<run>/train.log.
- Ray (`--ray [ADDRESS]`, the conventions of pipeline/fleet/backends.py): tasks with `num_cpus=1` and no
  retries; without an address a local Ray instance of --jobs CPUs (default: one per CPU, at most one per
  run) for this sweep, shut down at the end; with `auto` or an address the cluster it names, left
  running (data and OUT must be at the same paths on every node, e.g. a shared file system). A Ray
  already initialised in this process is used as it is. Ray is imported only when --ray is given.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from models.train_config import TrainConfig, TrainError, parser
from pipeline.fleet.backends import close_pool

__all__ = ["Run", "collect", "config_argv", "fold_plan", "grid_points", "pooled", "run_all", "run_and_collect", "run_one",
           "start_ray", "sweep", "sweep_runs", "write_table"]

Main = Callable[[list[str]], int]
Rows = Generator[dict[str, Any], None, None]   # closing it ends the workers

_POLL_S = 0.2       # how often a waiting runner wakes up (a Ctrl-C is seen at once regardless)
# flags a grid may not vary: they say where and how the sweep runs, not what a run trains
_NOT_GRID = {"dataset", "data", "fold", "out", "name", "seeds", "jobs", "ray", "grid", "no_progress", "help"}
_SCORES = ("window_ade", "window_fde", "stream_ade", "stream_fde", "cv_ade", "cv_fde")


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: `main(argv)` writes its checkpoint and metrics under `out`."""

    name: str                       # its directory under the sweep's OUT, e.g. "fold_2of5", "hidden64/fold_eth"
    argv: tuple[str, ...]
    out: str
    metrics: str                    # the metrics JSON the run writes
    labels: tuple[tuple[str, str], ...] = ()  # its table columns: fold, seed, grid keys


# ---------------------------------------------------------------- what to run


def config_argv(cfg: TrainConfig) -> list[str]:
    """`cfg` as the command line that gives it back: every flag not at its default (and the required ones)."""
    argv: list[str] = []
    for action in parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value, flag = getattr(cfg, action.dest), action.option_strings[0]
        if value == action.default and not action.required:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]   # str() of a float reads back as the same float
    return argv


def fold_plan(cfg: TrainConfig) -> list[str] | None:
    """The folds `--fold` asks for one by one (`all`, `all/K`, eth_ucy's `each`), or None for a single fold."""
    fold = cfg.fold or ""
    m = re.fullmatch(r"(all|each)(?:/(.*))?", fold)
    if m is None or (cfg.dataset == "eth_ucy" and fold == "all"):
        return None   # eth_ucy's "all": one run on every scene's training files (models/datasets.py)
    if cfg.dataset == "eth_ucy":
        if m.group(2) is not None:
            raise TrainError(f"--fold {fold!r}: eth_ucy's folds are named scenes, not parts: --fold each runs "
                             "every one (--fold all is one run on every scene's training files)", 2)
        root = Path(cfg.data)
        names = sorted(d.name for d in root.iterdir() if (d / "train").is_dir() and (d / "val").is_dir()) \
            if root.is_dir() else []
        if not names:
            raise TrainError(f"--fold each: no fold directory <DIR>/<fold>/train and /val under {cfg.data!r}", 1)
        return names
    k = m.group(2)
    if k is not None and not (k.isdigit() and int(k) >= 2):
        raise TrainError(f"--fold {fold!r}: expected all/K with K >= 2 parts, e.g. all/5 (or I/K for one part)", 2)
    parts = int(k) if k is not None else 5
    return [f"{i}/{parts}" for i in range(1, parts + 1)]


def grid_points(items: list[str]) -> list[dict[str, str]]:
    """The product of the `--grid KEY=V1,V2,...` items, each point a {dest: value}; TrainError on a bad one."""
    actions = {a.dest: a for a in parser()._actions if a.option_strings and a.dest not in _NOT_GRID}
    axes: list[list[tuple[str, str]]] = []
    for item in items:
        key, _, values = item.partition("=")
        key = key.strip().replace("-", "_")
        vals = [v.strip() for v in values.split(",")]
        if key not in actions or not all(vals):
            raise TrainError(f"--grid {item!r}: expected KEY=V1,V2,... with KEY a flag of drivecast train "
                             f"(one of {sorted(actions)})", 2)
        if key in {k for axis in axes for k, _ in axis}:
            raise TrainError(f"--grid {item!r}: {key} is already a grid axis", 2)
        for v in vals:
            _grid_flag(actions[key], v, item)   # refuse a bad value now, not in the middle of the sweep
        axes.append([(key, v) for v in vals])
    return [dict(point) for point in itertools.product(*axes)]


def _grid_flag(action: argparse.Action, value: str, item: str) -> list[str]:
    """The command-line words that set `action` to `value`."""
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
        on = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}.get(value.lower())
        if on is None:
            raise TrainError(f"--grid {item!r}: {flag} takes on or off, got {value!r}", 2)
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if on else "--no-" + flag[2:]]
        return [flag] if on else []
    if isinstance(action, argparse._AppendAction):
        return [flag, value]
    try:
        typed = action.type(value) if callable(action.type) else value
    except (ValueError, argparse.ArgumentTypeError):
        name = getattr(action.type, "__name__", "value")
        raise TrainError(f"--grid {item!r}: {value!r} is not a valid {name} for {flag}", 2) from None
    if action.choices is not None and typed not in action.choices:
        raise TrainError(f"--grid {item!r}: {flag} is one of {sorted(action.choices)}, got {value!r}", 2)
    return [flag, value]


def _safe(text: str) -> str:
    return re.sub(r"[^\w.=+-]", "_", text)


def sweep_runs(cfg: TrainConfig, out: Path) -> tuple[list[Run], list[str]]:
    """The runs of a `--fold all` / `--grid` sweep under `out`, and the grid's keys (the table's columns)."""
    folds = fold_plan(cfg)
    points = grid_points(cfg.grid)
    keys = list(points[0]) if points and points[0] else []
    # absolute paths: a Ray worker's working directory is not ours
    out = out.absolute()
    base = dataclasses.replace(cfg, data=os.path.abspath(cfg.data), fold=cfg.fold if folds is None else None,
                               grid=[], jobs=None, ray=None, no_progress=True)
    actions = {a.dest: a for a in parser()._actions if a.option_strings}
    runs = []
    for point in points:
        pdir = "_".join(f"{k}{_safe(v)}" for k, v in point.items())
        extra = [w for k, v in point.items() for w in _grid_flag(actions[k], v, f"{k}={v}")]
        for fold in folds if folds is not None else [None]:
            parts = [p for p in (pdir, f"fold_{fold.replace('/', 'of')}" if fold else "") if p]
            run_out = out.joinpath(*parts)
            run_cfg = dataclasses.replace(base, fold=fold or base.fold, out=str(run_out))
            argv = config_argv(run_cfg) + extra
            labels = ((("fold", fold),) if fold else ()) + tuple(point.items())
            runs.append(Run("/".join(parts), tuple(argv), str(run_out),
                            str(run_out / (Path(cfg.name).stem + ".metrics.json")), labels))
    return runs, keys


# ---------------------------------------------------------------- one run


def run_one(main: Main, run: Run, capture: bool) -> dict[str, Any]:
    """`main(run.argv)` as a table row; with `capture` its output goes to OUT/<run>/train.log (pool, Ray)."""
    t0 = time.monotonic()
    log = Path(run.out) / "train.log"
    try:
        if capture:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                code = main(list(run.argv))
        else:
            code = main(list(run.argv))
    except SystemExit as exc:   # argparse refusing a flag: the run's error, not the sweep's
        return _row(run, error=f"exit code {exc.code} (bad flags; see {log if capture else 'above'})")
    except Exception as exc:
        return _row(run, error=f"{type(exc).__name__}: {exc}")
    if code:
        why = ""
        if capture and log.exists():
            why = next((ln[7:] for ln in reversed(log.read_text().splitlines()) if ln.startswith("ERROR: ")), "")
        return _row(run, error=f"exit code {code}" + (f": {why}" if why else ""))
    try:
        metrics = json.loads(Path(run.metrics).read_text())
    except (OSError, ValueError) as exc:
        return _row(run, error=f"no metrics after the run: {exc}")
    row = _row(run, error="")
    row.update(_scores(metrics), best_epoch=metrics.get("best_epoch"),
               minutes=round((time.monotonic() - t0) / 60, 3))
    return row


def _row(run: Run, error: str) -> dict[str, Any]:
    return {"run": run.name, **dict(run.labels), "status": "error" if error else "ok", "error": error,
            "worker": f"{socket.gethostname()}:{os.getpid()}"}


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"windows": int(metrics["model"]["n"])}
    for proto, key in (("window", "model"), ("stream", "stream"), ("cv", "cv")):
        for m in ("ade", "fde"):
            out[f"{proto}_{m}"] = metrics[key][m] if metrics.get(key) else None
    return out


def _failed(run: Run, why: str) -> dict[str, Any]:
    return {**_row(run, why), "worker": ""}


# ---------------------------------------------------------------- runners


def run_all(main: Main, runs: list[Run], jobs: int | None, ray_address: str | None) -> Rows:
    """Every run's row as it finishes: in this process (jobs 1), a local pool, or Ray (`ray_address`
    "local" for a Ray of this sweep's own). Close the generator to end every worker."""
    if ray_address is not None:
        return _run_ray(main, runs, jobs, None if ray_address == "local" else ray_address)
    if (jobs or 1) == 1:
        return (run_one(main, r, capture=False) for r in runs)
    return _run_pool(main, runs, min(jobs or 1, len(runs)))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a terminal's Ctrl-C reaches the group: the parent decides


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Generator[None, None, None]:
    """SIGTERM stops the sweep like Ctrl-C does (workers ended, not orphaned); the old handler afterwards."""
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_pool(main: Main, runs: list[Run], jobs: int) -> Rows:
    # spawn: no inherited threads; one torch thread per run, so J runs on J cores give the weights of J in a row
    ex = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    inflight: dict[Future[dict[str, Any]], Run] = {}
    try:
        with _sigterm_interrupts():
            for r in runs:
                inflight[ex.submit(run_one, main, r, True)] = r
            while inflight:
                done, _ = wait(inflight, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                for f in done:
                    run = inflight.pop(f)
                    try:
                        yield f.result()
                    except BrokenProcessPool:
                        yield _failed(run, "its worker process died (a crash in native code, or killed: out of memory?)")
                    except Exception as exc:
                        yield _failed(run, f"{type(exc).__name__}: {exc}")
    finally:
        close_pool(ex, kill=bool(inflight))   # runs left: end their workers (SIGTERM, then SIGKILL)


def _run_ray(main: Main, runs: list[Run], jobs: int | None, address: str | None) -> Rows:
    ray, started = start_ray(address, jobs or min(os.cpu_count() or 1, len(runs)), log_to_driver=False)
    return _ray_rows(ray, main, runs, jobs, started)


def start_ray(address: str | None, cpus: int, log_to_driver: bool) -> tuple[Any, bool]:
    """The ray module, joined to `address` (None: a local Ray of `cpus` CPUs started here), and
    whether this call started it (the caller then shuts it down)."""
    import logging

    try:
        import ray  # only here: `drivecast train` without --ray never loads Ray
    except ModuleNotFoundError:
        raise TrainError("--ray and --workers need the ray package: pip install 'drivecast[fleet]'", 2) from None
    if ray.is_initialized():
        return ray, False
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address, num_cpus=cpus if address is None else None, include_dashboard=False,
                 log_to_driver=log_to_driver, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TrainError(f"--ray {address or 'local'}: cannot start or join Ray: {exc}", 2) from None
    for s, h in handlers.items():   # Ray installs its own SIGTERM handler: ours decides how to stop
        if h is not None:
            signal.signal(s, h)
    return ray, True


def _ray_rows(ray: Any, main: Main, runs: list[Run], jobs: int | None, started: bool) -> Rows:
    if not jobs:
        jobs = max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1, max_retries=0)(run_one)   # a failed run is a row, not a retry
    queue = list(reversed(runs))
    inflight: dict[Any, Run] = {}
    try:
        with _sigterm_interrupts():
            while queue or inflight:
                while queue and len(inflight) < jobs:   # `jobs` at a time, whatever the cluster's size
                    run = queue.pop()
                    inflight[remote.remote(main, run, True)] = run
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
                for ref in done:
                    run = inflight.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as exc:   # the worker died, the task was cancelled, ...
                        yield _failed(run, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- the table


def pooled(rows: list[dict[str, Any]], name: str, labels: dict[str, str]) -> dict[str, Any]:
    """The folds' figures weighted by their validation windows: each window scored by the fold that held it out."""
    ok = [r for r in rows if r["status"] == "ok"]
    n = sum(r["windows"] for r in ok)
    row: dict[str, Any] = {"run": name, **labels, "status": "ok" if ok and len(ok) == len(rows) else "error",
                           "error": "" if len(ok) == len(rows) else f"pooled over {len(ok)} of {len(rows)} folds",
                           "windows": n, "worker": ""}
    for key in _SCORES:
        vals = [(r[key], r["windows"]) for r in ok if r.get(key) is not None]
        row[key] = sum(v * w for v, w in vals) / n if vals and n else None
    return row


def write_table(out: Path, stem: str, rows: list[dict[str, Any]]) -> tuple[Path, Path, str]:
    """OUT/<stem>.csv and .json, and the table as printed."""
    cols = ["run", *dict.fromkeys(k for r in rows for k in r if k not in _FIXED_COLS), "status", "windows",
            *_SCORES, "best_epoch", "minutes", "worker", "error"]
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=1))
    return csv_path, json_path, _text(rows, cols)


_FIXED_COLS = {"run", "status", "windows", *_SCORES, "best_epoch", "minutes", "worker", "error"}


def _text(rows: list[dict[str, Any]], cols: list[str]) -> str:
    shown = [c for c in cols if c not in ("worker", "error", "status")]
    width = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in shown}
    lines = ["  ".join(f"{c:>{width[c]}}" for c in shown)]
    for r in rows:
        line = "  ".join(f"{_cell(r.get(c)):>{width[c]}}" for c in shown)
        lines.append(line + (f"  ERROR: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def collect(rows: Iterable[dict[str, Any]], total: int, t0: float) -> list[dict[str, Any]]:
    """The rows as they come, each announced with a progress line."""
    got = []
    for i, row in enumerate(rows, 1):
        got.append(row)
        what = (f"val window {row['window_ade']:.3f}/{row['window_fde']:.3f}, stream {row['stream_ade']:.3f}/"
                f"{row['stream_fde']:.3f}, CV {row['cv_ade']:.3f}/{row['cv_fde']:.3f}"
                if row["status"] == "ok" else f"ERROR: {row['error']}")
        print(f"[{i}/{total}] {row['run']}: {what} ({(time.monotonic() - t0) / 60:.1f} min)", flush=True)
    return got


# ---------------------------------------------------------------- the sweep


def sweep(main: Main, cfg: TrainConfig, out: Path) -> int:
    """`--fold all` / `--grid`: every run, then one table (OUT/folds or OUT/grid .csv/.json); the exit code."""
    runs, keys = sweep_runs(cfg, out)
    folds = fold_plan(cfg)
    print(f"{len(runs)} runs ({len(folds) if folds else 1} folds x {len(runs) // len(folds or [1])} recipe(s)) "
          f"{_where(cfg, len(runs))}; each run's checkpoint, metrics and log under {out}/", flush=True)
    rows = run_and_collect(main, runs, cfg.jobs, cfg.ray)
    if rows is None:
        return 130
    if folds:
        by_point: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in rows:
            by_point.setdefault(tuple(r[k] for k in keys), []).append(r)
        for point, group in by_point.items():
            labels = dict(zip(keys, point, strict=True))
            prefix = "_".join(f"{k}{_safe(v)}" for k, v in labels.items())
            rows.append(pooled(group, f"{prefix}/pooled" if prefix else "pooled", labels))
    csv_path, json_path, text = write_table(out, "grid" if cfg.grid else "folds", rows)
    print(text)
    bad = sum(r["status"] != "ok" for r in rows if not r["run"].endswith("pooled"))
    print(f"wrote {csv_path} and {json_path}" + (f"; {bad} of {len(runs)} runs failed" if bad else ""))
    return 1 if bad else 0


def _where(cfg: TrainConfig, n: int) -> str:
    if cfg.ray is not None:
        return f"as Ray tasks ({'a local Ray' if cfg.ray == 'local' else cfg.ray})"
    jobs = min(cfg.jobs or 1, n)
    return "one after another in this process" if jobs == 1 else f"in a local pool of {jobs} processes"


def run_and_collect(main: Main, runs: list[Run], jobs: int | None, ray: str | None) -> list[dict[str, Any]] | None:
    """Every run's row, in the order of `runs`; None after Ctrl-C (every worker ended)."""
    t0 = time.monotonic()
    it = run_all(main, runs, jobs, ray)
    try:
        got = collect(it, len(runs), t0)
    except KeyboardInterrupt:
        print("interrupted: every run stopped", file=sys.stderr, flush=True)
        return None
    finally:
        it.close()   # ends every worker, whatever stopped the loop
    by_name = {r["run"]: r for r in got}
    return [by_name[r.name] for r in runs]

"""`drivecast fleet eval --graph FILE DRIVES...`: one graph, evaluated over many recorded drives.

Each drive is replayed through the graph in lockstep (as `drivecast play FILE --lockstep --graph
FILE`: deterministic, on the replayed clock), on a local process pool (default: one worker per CPU;
`--workers 1` runs in this process) or on Ray (`--ray`: a local Ray instance for this run; `--ray
auto` or `--ray HOST:PORT` / `ray://...` joins a cluster). See `pipeline.fleet.backends`. DRIVES are
recording files (.mcap, .bag), ROS 2 bag directories, or directories searched for them (sorted).

Each finished drive prints a progress line (stderr) and goes into REPORT_DIR/drives.jsonl at once;
at the end, or on Ctrl-C / SIGTERM (every worker stopped within 5 s), the tables of what finished
(`pipeline.fleet.report`) are written and the totals printed per agent kind and age, beside constant
velocity in the evaluator's words. A drive that fails (a corrupt file, nothing to play, a node that
raised) is a row with its reason; the others go on.

Exit codes: 0 every drive evaluated, 1 some failed, 2 bad arguments (no graph, no drives, a report
directory holding another run), 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from pipeline.cv_compare import VS_CV_MEANS, vs_cv
from pipeline.errors import ConfigError, DrivecastError
from pipeline.fleet.drive import DriveTask, evaluators
from pipeline.fleet.report import JOURNAL, Journal, check_run, graph_digest, summary, write_tables
from pipeline.recordings.lockstep import plan
from pipeline.recordings.reader import open_recording
from pipeline.recordings.schedule import PlayOptions, parse_remap
from pipeline.runtime.config import parse_set
from pipeline.runtime.graph import Graph, load_graph
from pipeline.runtime.signals import StopSignals

__all__ = ["find_drives", "main"]

SUFFIXES = (".mcap", ".bag")
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-\[\]:]+:\d+)$")


def find_drives(paths: list[str]) -> list[Path]:
    """Recording files and ROS 2 bag directories named by `paths`, directories searched (sorted);
    each once. ConfigError for a path that does not exist or when no drive is found."""
    out: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if not p.exists():
            raise ConfigError(f"{arg}: no such file or directory")
        if p.is_file() or (p / "metadata.yaml").is_file():
            out.append(p)
            continue
        found: list[Path] = []
        for root, dirs, files in os.walk(p):
            if "metadata.yaml" in files:  # a ROS 2 bag: one drive, whatever files it holds
                found.append(Path(root))
                dirs.clear()
                continue
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [Path(root) / f for f in files if f.endswith(SUFFIXES) and not f.startswith(".")]
        if not found:
            print(f"WARNING: {arg}: no recording inside (*{', *'.join(SUFFIXES)}, ROS 2 bag directories)",
                  file=sys.stderr)
        out += sorted(found)
    unique = list({str(p.resolve()): p for p in out}.values())
    if not unique:
        raise ConfigError(f"no drives found in {', '.join(paths)}")
    return unique


def _name(drive: str) -> str:
    """A drive as the user would type it: relative to the working directory when inside it."""
    cwd = os.getcwd() + os.sep
    return drive[len(cwd):] if drive.startswith(cwd) else drive


def _progress(result: dict[str, Any], done: int, failed: int, total: int, t0: float,
              vs_cv: Callable[[float, float], str]) -> str:
    rate = done / max(time.monotonic() - t0, 1e-9)
    head = f"[fleet] {done}/{total} done, {failed} failed, {rate:.2f} drives/s, ETA {(total - done) / rate:.0f} s"
    if result["status"] != "ok":
        return f"{head} | {_name(result['drive'])}: FAILED: {result['error']}"
    overall = next((r for r in result["rows"] if r["kind"] == "all" and r["age"] == "all"), None)
    acc = (f"ADE {overall['ade']:.3f} m, CV {overall['cv_ade']:.3f} m ({vs_cv(overall['ade'], overall['cv_ade'])}), "
           if overall else "no accuracy rows, ")
    return f"{head} | {_name(result['drive'])}: ok, {acc}{result['wall_s']:.2f} s"


def _backend(args: argparse.Namespace, tasks: list[DriveTask], workers: int,
             stop: Callable[[], bool]) -> tuple[Generator[dict[str, Any], None, None], str]:
    from pipeline.fleet import backends

    timeout = args.timeout or None

    if args.ray is not None:
        address = None if args.ray == "local" else args.ray
        where = "on a local Ray instance" if address is None else f"on the Ray cluster at {address}"
        return (backends.run_ray(tasks, workers, stop, address, timeout),
                f"{where}, {workers or 'all its'} workers")
    if workers == 1:
        return backends.run_sequential(tasks, stop, timeout), "in this process (sequential)"
    return backends.run_pool(tasks, workers, stop, timeout), f"on a local pool of {workers} processes"


def _preflight(drive: Path, graph: Graph, opts: PlayOptions) -> None:
    """The graph against the first drive's topics, before any worker starts: a graph that nothing of the
    fleet feeds (the wrong launch file, a missing --remap) is one error, not a failed row per drive. A
    first drive that cannot be read is left to its own row."""
    try:
        with open_recording(drive) as rec:
            info = rec.info()
    except DrivecastError:
        return
    try:
        plan(info, graph, opts)
    except ConfigError as exc:
        raise ConfigError(f"checked on the first drive, {drive}: {exc}; nothing was run") from None


def _eval(args: argparse.Namespace) -> int:
    try:
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers: expected at least 1, got {args.workers}")
        if not args.timeout >= 0:
            raise ConfigError(f"--timeout: expected seconds >= 0 (0: no limit), got {args.timeout}")
        if args.ray is not None and not _ADDRESS.match(args.ray):
            raise ConfigError(f"--ray {args.ray}: expected auto, local, HOST:PORT or ray://HOST:PORT (DRIVES go "
                              "before --ray, or write --ray local)")
        remap = parse_remap(args.remap)
        topics = sorted({t for item in args.topics for t in item.split(",") if t}) if args.topics else None
        graph_path = Path(args.graph).resolve()
        # checked here once: a bad graph (or --set) is a bad argument, not N failed drives
        graph = load_graph(graph_path, parse_set(args.sets))
        names = evaluators(graph)
        drives = find_drives(args.drives)
        out = Path(args.output)
        run = {"graph": str(graph_path), "graph_sha256": graph_digest(graph_path), "evaluators": list(names),
               "topics": topics, "remap": remap, "sets": args.sets}
        _preflight(drives[0], graph, PlayOptions(topics=topics, remap=remap))  # before the report is begun
        before = check_run(out, run, args.resume)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    ids = [str(d.resolve()) for d in drives]
    results = {d: before[d] for d in ids if d in before}
    tasks = [DriveTask(d, str(graph_path), names, tuple(topics) if topics else None, tuple(remap.items()), os.getcwd(),
                       tuple(args.sets)) for d in ids if d not in results]
    workers = args.workers or (0 if args.ray not in (None, "local") else min(os.cpu_count() or 1, max(len(tasks), 1)))
    stopped = StopSignals()
    journal = Journal(out / JOURNAL)
    done = failed = 0
    t0 = time.monotonic()
    try:
        it, where = _backend(args, tasks, workers, stopped)
        if not args.quiet:
            print(f"[fleet] {len(tasks)} drives to evaluate" + (f" ({len(results)} done before, skipped)"
                  if results else "") + f" {where}; evaluators: {', '.join(names) or 'none (digests only)'}; "
                  f"report in {out}", file=sys.stderr, flush=True)
        try:
            for r in it:
                journal.add(r)
                results[r["drive"]] = r
                done, failed = done + 1, failed + (r["status"] != "ok")
                if not args.quiet:
                    print(_progress(r, done, failed, len(tasks), t0, vs_cv), file=sys.stderr, flush=True)
        finally:
            it.close()  # ends every worker, whatever stopped the loop
    except DrivecastError as exc:  # a Ray cluster that cannot be reached
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        journal.close()
        stopped.restore()
    wall = time.monotonic() - t0
    ordered = [results[d] for d in ids if d in results]
    notes = write_tables(out, ordered)
    text = summary(ordered, vs_cv, VS_CV_MEANS, _name)
    if text:
        print(text, flush=True)
    bad = sum(r["status"] != "ok" for r in ordered)
    print(f"[fleet] {done} drives in {wall:.1f} s ({done / max(wall, 1e-9):.2f} drives/s); "
          f"{len(ordered) - bad} of {len(ids)} evaluated, {bad} failed"
          + (f", {len(ids) - len(ordered)} not run (stopped)" if len(ordered) < len(ids) else "")
          + f"; report: {out}/{{drives,accuracy,totals}}.csv", file=sys.stderr)
    for note in notes:
        print(f"NOTE: {note}", file=sys.stderr)
    if stopped.signum is not None:
        return 128 + stopped.signum
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast fleet", description="Evaluate a graph over many recorded drives.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="one lockstep replay per drive; per-drive reports, digests and totals",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("drives", nargs="+", metavar="DRIVE", help="recording files or directories of them")
    e.add_argument("--graph", required=True, help="launch file replayed for each drive (e.g. launch.yaml)")
    e.add_argument("-o", "--output", default="fleet-report", metavar="REPORT_DIR",
                   help="where the journal, tables and summary.png go (default fleet-report)")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="drives at a time (default: one per CPU; with --ray ADDRESS the cluster's CPUs); "
                        "1 without --ray: in this process")
    e.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray: a local instance for this run, or `auto` / an address to join a cluster")
    e.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="wall seconds a drive may take before it is ended and reported as an error (default "
                        "3600; 0: no limit); with --workers 1 checked between messages only")
    e.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a node parameter of --graph, as `drivecast launch --set`; repeatable")
    e.add_argument("--resume", action="store_true", help="skip the drives REPORT_DIR already reports as evaluated")
    e.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="feed a recorded topic as another (e.g. argoverse/tracks:=sim/tracks); repeatable")
    e.add_argument("--topics", action="append", default=None, metavar="T[,T...]",
                   help="replay only these recorded topics; repeatable")
    e.add_argument("-q", "--quiet", action="store_true", help="no per-drive progress lines")
    args = ap.parse_args(argv)
    return _eval(args)

"""Replay a recording paced like `ros2 bag play`, and the `drivecast play` command.

`drivecast play FILE` feeds a running graph that waits for topics from outside (launched
`--without` its source node, or with `topics: {T: {external: true}}`; `--run` picks one, else the
newest): the recorded topics (after `--topics`, `--remap`) that are its external topics are
published at the graph's own endpoints (`attach`), the others are named and not played. Without
such a graph, it publishes the recording as a graph of its own: a run manifest named `play`, so
`drivecast topic echo`, `drivecast record --run play` and other tools attach to it. `--wait-for N`
holds the first message until N lossless subscribers per topic are connected; `--clock [HZ]`
publishes the replayed time on `clock` (a fed graph with an external clock always gets it);
`--lockstep --graph launch.yaml` runs the graph in this process instead (`lockstep`). The player
node (`nodes.player:Player`) puts a replay inside a launch file.

Pacing: message i is due at `t0 + (log_i - log_0) / rate`, one reference point for the whole run,
so lateness never accumulates and bursts go out back to back as they were received. A read-ahead
thread (`reader.prefetch`) decompresses and converts ahead of the schedule. Frames are sent
exactly as recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, DrivecastError
from pipeline.recordings.base import Recording, RecordingInfo
from pipeline.recordings.lockstep import lockstep
from pipeline.recordings.reader import open_recording, prefetch
from pipeline.recordings.schedule import PlayOptions, parse_remap, schedule
from pipeline.runtime.signals import StopSignals
from pipeline.wire.codec import encode
from pipeline.wire.messages import SCHEMAS, Clock

__all__ = ["PlayStats", "main", "play"]

_SPIN_NS = 300_000      # sleep until this close to a deadline, then spin
_CLOCK_HZ = 100.0       # a fed graph's clock ticks per second of recording, unless --clock says otherwise
_SWITCH_S = 0.0002      # thread switch interval while playing: bounds how long read-ahead delays the sender


@dataclass
class PlayStats:
    messages: int = 0
    replayed_ns: int = 0
    wall_s: float = 0.0
    # the last 100k sends' lateness (a --loop replay must not grow without bound), and the worst ever
    lateness_ns: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))
    late_max_ns: int = 0

    def summary(self) -> dict[str, float]:
        late = np.asarray(self.lateness_ns or [0], dtype=np.float64) / 1e6
        return {"messages": self.messages, "wall_s": self.wall_s, "replayed_s": self.replayed_ns / 1e9,
                "late_median_ms": float(np.median(late)), "late_p99_ms": float(np.percentile(late, 99)),
                "late_max_ms": max(float(late.max()), self.late_max_ns / 1e6)}


def _wait_until(deadline_ns: int, stop: Callable[[], bool]) -> int:
    """Sleep, then spin, until `deadline_ns` (perf_counter). Returns the lateness in ns."""
    while True:
        now = time.perf_counter_ns()
        remain = deadline_ns - now
        if remain <= 0:
            return -remain
        if remain > _SPIN_NS:
            time.sleep(min(remain - _SPIN_NS, 100_000_000) / 1e9)
            if stop():
                return 0


class _Progress:
    """`[play] 12.3 / 395.3 s  x1.00  1234 msgs` on a terminal, rewritten 4 times a second."""

    def __init__(self, duration_ns: int, rate: float, enabled: bool) -> None:
        self.duration_s = duration_ns / 1e9
        self.rate = rate
        self.enabled = enabled and sys.stderr.isatty()
        self.next = 0.0

    def update(self, replayed_ns: int, n: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next and not force:
            return
        self.next = now + 0.25
        sys.stderr.write(f"\r[play] {replayed_ns / 1e9:8.2f} / {self.duration_s:.2f} s  x{self.rate:g}  {n} msgs ")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def play(rec: Recording, opts: PlayOptions, send: Callable[[str, list[Any]], None],
         stop: Callable[[], bool] = lambda: False, progress: bool = False,
         clock: Callable[[], int] = time.perf_counter_ns) -> PlayStats:
    """Send each scheduled message with `send(topic, frames)` at its deadline; see the module doc."""
    opts.check()
    stats = PlayStats()
    info = rec.info()
    bar = _Progress(info.duration_ns, opts.rate, progress)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_S)
    items = prefetch(schedule(rec, opts))
    t0 = None
    first_log = 0
    start = time.perf_counter()
    try:
        for item in items:
            if t0 is None:
                t0, first_log = clock(), item.log_ns
            deadline = t0 + int((item.log_ns - first_log) / opts.rate)
            late = _wait_until(deadline, stop)
            if stop():
                break
            send(item.topic, item.frames)
            stats.lateness_ns.append(late)
            stats.late_max_ns = max(stats.late_max_ns, late)
            stats.messages += 1
            stats.replayed_ns = item.log_ns - first_log
            bar.update(stats.replayed_ns, stats.messages)
    finally:
        items.close()
        sys.setswitchinterval(old_switch)
    stats.wall_s = time.perf_counter() - start
    bar.update(stats.replayed_ns, stats.messages, force=True)
    return stats


# -- drivecast play ---------------------------------------------------------------------------------------

def _publishers(topics: dict[str, str], wait_for: int) -> tuple[Any, dict[str, Any], Any]:
    """A run directory + manifest named `play`, and one Publisher per topic."""
    import zmq

    from pipeline.runtime.rundir import Manifest, TopicEntry, make_run_dir, write_manifest
    from pipeline.transport.endpoints import default_hwm, ipc_endpoint
    from pipeline.transport.publisher import Publisher

    run_dir = make_run_dir("play")
    ctx = zmq.Context()
    pubs = {}
    manifest = Manifest(name="play", run_dir=str(run_dir), launcher_pid=os.getpid(), started_ns=time.time_ns())
    for topic, schema in topics.items():
        ep, lep = ipc_endpoint(run_dir, topic), ipc_endpoint(run_dir, topic, lossless=True)
        pubs[topic] = Publisher(ctx, topic, ep, lep, wait_for, sndhwm=default_hwm(SCHEMAS.get(schema), 1000))
        manifest.topics[topic] = TopicEntry(schema=schema, publisher="play", endpoint=ep, lossless_endpoint=lep,
                                            lossless_subscribers=wait_for)
    write_manifest(run_dir, manifest)
    return run_dir, pubs, ctx


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast play", description="Replay an MCAP or ROS bag recording.")
    ap.add_argument("file")
    ap.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    ap.add_argument("--loop", action="store_true", help="replay forever")
    ap.add_argument("--start-offset", type=float, default=0.0, metavar="S", help="skip the first S seconds")
    ap.add_argument("--topics", nargs="+", default=None, help="play only these topics")
    ap.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="rename a topic")
    ap.add_argument("--clock", type=float, nargs="?", const=100.0, default=0.0, metavar="HZ",
                    help="publish the replayed time on 'clock' (default 100 Hz of recording)")
    ap.add_argument("--lockstep", action="store_true", help="run --graph in-process, deterministically")
    ap.add_argument("--graph", default=None, help="launch file for --lockstep")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="with --lockstep: override a node parameter of --graph, as `drivecast launch --set`")
    ap.add_argument("-o", "--output", default=None, help="with --lockstep: write inputs and outputs to this MCAP")
    ap.add_argument("--wait-for", type=int, default=0, metavar="N",
                    help="wait until N lossless subscribers per topic are connected before the first message")
    ap.add_argument("--delay", type=float, default=0.0, metavar="S",
                    help="wait S seconds before the first message (with --clock: holding the clock at the start time)")
    ap.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    ap.add_argument("--run", default=None, metavar="NAME_OR_DIR",
                    help="the running graph to feed (default: the newest one that waits for external topics)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_args(argv)
    opts = PlayOptions(args.rate, args.loop, args.start_offset, args.topics, {}, args.clock)
    try:
        opts.remap = parse_remap(args.remap)
        opts.check()
        if args.lockstep != bool(args.graph):
            raise ConfigError("--lockstep and --graph go together")
        if args.output and not args.lockstep:
            raise ConfigError("-o is for --lockstep (record a live replay with `drivecast record`)")
        if args.sets and not args.lockstep:
            raise ConfigError("--set overrides a parameter of --graph, with --lockstep (a running graph's are its own)")
        if args.run and args.lockstep:
            raise ConfigError("--run feeds a running graph; --lockstep runs --graph in this process")
        rec = open_recording(args.file, args.types)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    try:
        info = rec.info()
        if rec.missing_types(opts.topics):
            next(iter(rec.items(opts.topics)), None)  # raises the error naming the types and --types
        if not any(t.converted for t in info.topics):
            raise ConfigError(f"{args.file}: no topic converts to a drivecast schema; nothing to play "
                              f"(topics: {', '.join(f'{t.name} ({t.type})' for t in info.topics)})")
        if info.truncated and not args.quiet:
            print(f"WARNING: {args.file}: {info.note}", file=sys.stderr)
        if args.lockstep:
            return _run_lockstep(rec, args, opts)
        return _run_live(rec, args, opts, info)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        rec.close()


def _run_lockstep(rec: Recording, args: argparse.Namespace, opts: PlayOptions) -> int:
    from pipeline.recordings.writer import Recorder
    from pipeline.runtime.config import parse_set
    from pipeline.runtime.graph import load_graph

    graph = load_graph(args.graph, parse_set(args.sets))
    out = Recorder(args.output, max_chunk_age_s=0) if args.output else None
    stopped = StopSignals()
    try:
        stats = lockstep(rec, graph, opts, out.write if out else None, stop=stopped)
    finally:
        stopped.restore()
        if out is not None:
            out.close()
    if not args.quiet:
        print(f"lockstep: {stats.injected} messages in, {stats.published} deliveries, "
              f"{stats.replayed_ns / 1e9:.2f} s replayed in {stats.wall_s:.2f} s "
              f"(x{stats.x_realtime:.0f} real time)" + (f"; wrote {args.output}" if out else ""), file=sys.stderr)
    return 130 if stopped() else 0


def _run_live(rec: Recording, args: argparse.Namespace, opts: PlayOptions, info: RecordingInfo) -> int:
    from pipeline.recordings.attach import Feed, plan_feed, target_graph

    try:
        graph = target_graph(args.run)
        if graph is None:
            return _run_alone(rec, args, opts, info)
        plan = plan_feed(graph, info, opts, args.file)
        played = [*dict.fromkeys(plan.topics.values())] + ([plan.clock] if plan.clock else [])
        feed = Feed(graph, played, args.wait_for)
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr)

    say(f"feeding graph {graph.name!r} ({graph.run_dir}): "
        + ", ".join(a if a == b else f"{a} -> {b}" for a, b in plan.topics.items())
        + (f", clock -> {plan.clock}" if plan.clock else ""))
    if plan.unused:
        say(f"not played, nothing in the graph subscribes to: {', '.join(plan.unused)}")
    if plan.missing:
        say(f"the graph also waits for {', '.join(plan.missing)}: not in this recording (--remap FROM:=TO)")
    clock_hz = (opts.clock_hz or _CLOCK_HZ) if plan.clock else 0.0
    opts = PlayOptions(**{**opts.__dict__, "topics": sorted(plan.topics), "clock_hz": clock_hz,
                          "clock_topic": plan.clock or opts.clock_topic})
    stopped = StopSignals()
    next_check = [time.monotonic() + 1.0]
    gone = [False]

    def stop() -> bool:
        if stopped() or gone[0]:
            return True
        if time.monotonic() >= next_check[0]:  # once a second: is the graph still there?
            next_check[0] = time.monotonic() + 1.0
            gone[0] = not feed.graph_alive()
        return gone[0]

    try:
        for line in feed.wait_for_subscribers(stop):
            say(f"WARNING: {line}; starting anyway")
        stats = _paced(rec, args, opts, info, lambda topic, frames: feed.send(topic, list(frames), stop), stop)
    finally:
        feed.close(drain=not stop())
        stopped.restore()
    _summary(args, stats)
    if gone[0]:
        print(f"ERROR: graph {graph.name!r} ended during the replay", file=sys.stderr)
        return 1
    return 130 if stopped() else 0


def _paced(rec: Recording, args: argparse.Namespace, opts: PlayOptions, info: RecordingInfo,
           send: Callable[[str, list[Any]], None], stop: Callable[[], bool]) -> PlayStats:
    """`--delay` (holding the clock at the start), then `play`."""
    end = time.monotonic() + max(0.0, args.delay)
    while time.monotonic() < end and not stop():  # --delay: subscribers join meanwhile
        if opts.clock_hz:
            t = info.start_ns + int(opts.start_offset_s * 1e9)
            send(opts.clock_topic, encode(Clock(stamp_ns=t), publish_ns=t))
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    return play(rec, opts, send, stop, progress=not args.quiet)


def _summary(args: argparse.Namespace, stats: PlayStats) -> None:
    if not args.quiet:
        s = stats.summary()
        print(f"played {stats.messages} messages, {s['replayed_s']:.2f} s of recording in {s['wall_s']:.2f} s; "
              f"lateness median {s['late_median_ms']:.3f} ms, p99 {s['late_p99_ms']:.3f} ms, "
              f"max {s['late_max_ms']:.3f} ms", file=sys.stderr)


def _run_alone(rec: Recording, args: argparse.Namespace, opts: PlayOptions, info: RecordingInfo) -> int:
    import shutil

    topics = {opts.remap.get(t.name, t.name): t.schema for t in info.topics
              if t.converted and (opts.topics is None or t.name in opts.topics)}
    if opts.clock_hz:
        topics[opts.clock_topic] = Clock.SCHEMA
    run_dir, pubs, ctx = _publishers(topics, args.wait_for)
    stopped = StopSignals()

    def send(topic: str, frames: list[Any]) -> None:
        pubs[topic].send(list(frames), stopped)

    try:
        stats = _paced(rec, args, opts, info, send, stopped)
        for p in pubs.values():  # a recorder with --lossless takes everything, as from a launched graph
            p.end_of_stream(stopped)
    finally:
        for p in pubs.values():
            p.close()
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)
        stopped.restore()
    _summary(args, stats)
    return 130 if stopped() else 0


"""Replay recordings: paced like `ros2 bag play`, or in lockstep through an in-process graph.

`drivecast play FILE [--rate R] [--loop] [--start-offset S] [--topics T...] [--remap a:=b]
[--clock [HZ]] [--quiet]` publishes a recording (drivecast MCAP or any ROS bag that
`pipeline.recordings.reader.open_recording` reads) as a graph of its own: it writes a run manifest named
`play`, so `drivecast topic echo`, `drivecast record --run play` and other tools attach to it.
Each topic has a lossy and a lossless endpoint; `--wait-for N` holds the first message until N
lossless subscribers per topic are connected (nothing lost to ZeroMQ's slow-joiner window).
To feed a launched graph, put the player node (`nodes.player:Player`, same options) in launch.yaml
and wire `player/tracks` into the predictor.

Pacing: message i is due at `t0 + (log_i - log_0) / rate`, one reference point for the whole run,
so lateness never accumulates (a late message does not shift the next) and bursts in the recording
(messages with equal or close log times) go out back to back as they were received. The wait is a
sleep to ~0.3 ms before the deadline, then a spin. A read-ahead thread (`recording.prefetch`)
decompresses chunks and converts ROS messages ahead of the schedule; the interpreter's thread
switch interval is lowered during play so that this thread cannot delay the sender by more than
~0.2 ms. Frames are sent exactly as recorded (byte-identical to the original wire messages).
`--clock [HZ]` publishes `Clock` messages carrying the replayed log time on topic `clock` (HZ times
per second of recording, default 100, and before the first message); a graph whose launch file says
`clock: player/clock` runs its timers and `now()` on it.
`--delay S` waits before the first message (holding the clock at the start time, so that lossy
clock subscribers know it before any message). `--loop` replays forever, pass k shifted by k x (span + 1 ns) in log time: still one reference.

Lockstep (`--lockstep --graph launch.yaml [-o out.mcap]`): the graph runs in this process
(`pipeline.runtime.local.LocalGraph`) on the replayed clock: for each message in log-time order the clock
advances to its log time (firing due timers), the message is injected, and every callback it
causes runs before the next message is read. Nothing is dropped and nothing depends on wall time,
so two runs write byte-identical output files. Topic mapping: if the graph has a player node
(a class with `REPLAYS_RECORDING = True`), recorded topics feed its outputs (`<player>/<output>`,
output chosen by schema, see `SCHEMA_OUTPUTS`, or by `--remap topic:=output`); otherwise recorded
topics (after `--remap`) are injected under their names. Nodes that publish an injected topic are
not instantiated: the recording replaces them. The output file holds the injected messages and
everything the graph published, with log_time = the replayed clock.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, DrivecastError
from pipeline.recordings.reader import Item, Recording, open_recording, prefetch
from pipeline.runtime.signals import StopSignals
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import (
    Clock,
    Detections,
    GnssFix,
    Image,
    Imu,
    Message,
    Odometry,
    PointCloud,
    Predictions,
    Tracks,
)

__all__ = ["SCHEMA_OUTPUTS", "PlayOptions", "PlayStats", "lockstep", "main", "parse_remap", "play",
           "player_topics", "schedule"]

#: The player node's outputs: one per schema (recorded topics map here by schema or `remap`).
SCHEMA_OUTPUTS: dict[str, tuple[str, type[Message]]] = {
    Tracks.SCHEMA: ("tracks", Tracks), Detections.SCHEMA: ("detections", Detections),
    Predictions.SCHEMA: ("predictions", Predictions), Odometry.SCHEMA: ("odom", Odometry),
    Imu.SCHEMA: ("imu", Imu), GnssFix.SCHEMA: ("fix", GnssFix), Image.SCHEMA: ("image", Image),
    PointCloud.SCHEMA: ("points", PointCloud), Clock.SCHEMA: ("clock", Clock),
}
CLOCK_TOPIC = "clock"
_SPIN_NS = 300_000      # sleep until this close to a deadline, then spin
_SWITCH_S = 0.0002      # thread switch interval while playing (read-ahead vs sender)


@dataclass
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    topics: list[str] | None = None
    remap: dict[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0                 # 0: no clock
    clock_topic: str = CLOCK_TOPIC
    max_loops: int = 0                    # with loop: stop after this many passes (0 = forever)

    def check(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"--rate: expected a positive number, got {self.rate:g}")
        if self.start_offset_s < 0:
            raise ConfigError(f"--start-offset: expected >= 0 seconds, got {self.start_offset_s:g}")
        if self.clock_hz < 0:
            raise ConfigError(f"--clock: expected a positive rate in Hz, got {self.clock_hz:g}")


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


def parse_remap(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        a, sep, b = item.partition(":=")
        if not sep or not a or not b:
            raise ConfigError(f"--remap {item!r}: expected FROM:=TO")
        out[a] = b
    return out


def schedule(rec: Recording, opts: PlayOptions) -> Iterator[Item]:
    """The messages to play, in order, with remapped topics, clock ticks and loop shifts applied."""
    info = rec.info()
    wanted = {t.name for t in info.topics if t.converted}
    if opts.topics is not None:
        unknown = sorted(set(opts.topics) - {t.name for t in info.topics})
        if unknown:
            raise ConfigError(f"--topics: {rec.path} has no topic {', '.join(unknown)} "
                              f"(topics: {', '.join(t.name for t in info.topics)})")
        wanted &= set(opts.topics)
    start = info.start_ns + int(opts.start_offset_s * 1e9)
    span = max(0, info.end_ns - start) + 1
    period = int(1e9 / opts.clock_hz) if opts.clock_hz else 0
    k = 0
    while True:
        shift = k * span
        next_tick = start
        for item in rec.items(sorted(wanted), start_ns=start):
            t = item.log_ns + shift
            while period and next_tick + shift <= t:
                yield _clock_item(opts.clock_topic, next_tick + shift)
                next_tick += period
            yield Item(opts.remap.get(item.topic, item.topic), t, item.publish_ns, item.frames)
        k += 1
        if not opts.loop or (opts.max_loops and k >= opts.max_loops):
            return


def _clock_item(topic: str, t_ns: int) -> Item:
    return Item(topic, t_ns, t_ns, encode(Clock(stamp_ns=t_ns), publish_ns=t_ns))


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


# -- lockstep ---------------------------------------------------------------------------------------------

def player_topics(rec_info: Any, remap: dict[str, str], player: str) -> dict[str, str]:
    """Recorded topic -> `<player>/<output>` for a player node: by `remap`, else by schema (the first
    recorded topic of each schema, in name order; the others are not played)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    outputs = {name for name, _ in SCHEMA_OUTPUTS.values()}
    for t in rec_info.topics:
        if t.name in remap:
            if remap[t.name] not in outputs:
                raise ConfigError(f"--remap {t.name}:={remap[t.name]}: the player has no output "
                                  f"{remap[t.name]!r} (outputs: {', '.join(sorted(outputs))})")
            out[t.name] = f"{player}/{remap[t.name]}"
            taken.add(remap[t.name])
    for t in sorted(rec_info.topics, key=lambda t: t.name):
        if t.name in out or not t.converted or t.schema not in SCHEMA_OUTPUTS:
            continue
        name = SCHEMA_OUTPUTS[t.schema][0]
        if name not in taken:
            out[t.name] = f"{player}/{name}"
            taken.add(name)
    return out


@dataclass
class LockstepStats:
    injected: int = 0
    published: int = 0
    replayed_ns: int = 0
    wall_s: float = 0.0

    @property
    def x_realtime(self) -> float:
        return self.replayed_ns / 1e9 / self.wall_s if self.wall_s > 0 else 0.0


def lockstep(rec: Recording, graph: Any, opts: PlayOptions,
             sink: Callable[[str, list[Any], int, Message], object] | None = None,
             stop: Callable[[], bool] = lambda: False) -> LockstepStats:
    """Replay `rec` through `graph` (a `pipeline.runtime.graph.Graph`) in this process; see the module doc.
    `sink(topic, frames, log_ns, msg)` receives every injected and published message in order."""
    from pipeline.runtime.local import LocalGraph

    opts.check()
    info = rec.info()
    players = [n for n, s in graph.nodes.items() if getattr(s.cls, "REPLAYS_RECORDING", False)]
    if len(players) > 1:
        raise ConfigError(f"{graph.path}: lockstep feeds one player node, the graph has {', '.join(players)}")
    if players:
        mapping = player_topics(info, opts.remap, players[0])
        opts = PlayOptions(opts.rate, opts.loop, opts.start_offset_s,
                           sorted(mapping) if opts.topics is None else [t for t in opts.topics if t in mapping],
                           mapping, opts.clock_hz, f"{players[0]}/clock", opts.max_loops or 1)
    else:
        mapping = {t.name: opts.remap.get(t.name, t.name) for t in info.topics if t.converted}
        opts = PlayOptions(**{**opts.__dict__, "max_loops": opts.max_loops or 1})
    injected = set(mapping.values()) | ({opts.clock_topic} if opts.clock_hz else set())
    replaced = set(players) | {t.split("/", 1)[0] for t in injected if t in graph.topics}

    stats = LockstepStats()
    first = None
    g = None
    t_start = time.perf_counter()
    for item in schedule(rec, opts):
        if stop():
            break
        if g is None:
            first = item.log_ns
            # on_publish hands the sink the same frames the subscribers decoded: same bytes, same clock
            g = LocalGraph(start_ns=item.log_ns, record=False, on_publish=sink)
            for name, spec in graph.nodes.items():
                if name not in replaced:
                    g.add(name, spec.cls, spec.params, {i: s.topic for i, s in spec.inputs.items()})
            g.start()
        g.advance_to(item.log_ns)
        msg, _ = decode(item.frames)
        if sink is not None:
            sink(item.topic, item.frames, item.log_ns, msg)
        g.inject(item.topic, msg)
        stats.published += g.spin()
        stats.injected += 1
        stats.replayed_ns = item.log_ns - (first or 0)
    if g is not None:
        g.stop()
    stats.wall_s = time.perf_counter() - t_start
    return stats


# -- drivecast play ---------------------------------------------------------------------------------------

def _publishers(topics: dict[str, str], wait_for: int) -> tuple[Any, dict[str, Any], Any]:
    """A run directory + manifest named `play`, and one Publisher per topic."""
    import zmq

    from pipeline.runtime.rundir import Manifest, TopicEntry, make_run_dir, write_manifest
    from pipeline.transport.pubsub import Publisher, ipc_endpoint

    run_dir = make_run_dir("play")
    ctx = zmq.Context()
    pubs = {}
    manifest = Manifest(name="play", run_dir=str(run_dir), launcher_pid=os.getpid(), started_ns=time.time_ns())
    for topic, schema in topics.items():
        ep, lep = ipc_endpoint(run_dir, topic), ipc_endpoint(run_dir, topic, lossless=True)
        pubs[topic] = Publisher(ctx, topic, ep, lep, wait_for, sndhwm=1000)
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
    ap.add_argument("-o", "--output", default=None, help="with --lockstep: write inputs and outputs to this MCAP")
    ap.add_argument("--wait-for", type=int, default=0, metavar="N",
                    help="wait until N lossless subscribers per topic are connected before the first message")
    ap.add_argument("--delay", type=float, default=0.0, metavar="S",
                    help="wait S seconds before the first message (with --clock: holding the clock at the start time)")
    ap.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
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
    from pipeline.runtime.graph import load_graph

    graph = load_graph(args.graph)
    out = Recorder(args.output, flush_s=0) if args.output else None
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


def _run_live(rec: Recording, args: argparse.Namespace, opts: PlayOptions, info: Any) -> int:
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
        end = time.monotonic() + max(0.0, args.delay)
        while time.monotonic() < end and not stopped():  # --delay: subscribers join meanwhile
            if opts.clock_hz:
                t = info.start_ns + int(opts.start_offset_s * 1e9)
                send(opts.clock_topic, encode(Clock(stamp_ns=t), publish_ns=t))
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        stats = play(rec, opts, send, stopped, progress=not args.quiet)
    finally:
        for p in pubs.values():
            p.close()
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)
        stopped.restore()
    if not args.quiet:
        s = stats.summary()
        print(f"played {stats.messages} messages, {s['replayed_s']:.2f} s of recording in {s['wall_s']:.2f} s; "
              f"lateness median {s['late_median_ms']:.3f} ms, p99 {s['late_p99_ms']:.3f} ms, "
              f"max {s['late_max_ms']:.3f} ms", file=sys.stderr)
    return 130 if stopped() else 0


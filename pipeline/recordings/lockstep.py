"""Replay a recording through a graph in this process, deterministically (`drivecast play --lockstep`).

The graph runs in a `pipeline.runtime.local.LocalGraph` on the replayed clock: for each message in
log-time order the clock advances to its log time (firing due timers), the message is injected,
and every callback it causes runs before the next message is read. Nothing is dropped and nothing
depends on wall time, so two runs write byte-identical output files.

Topic mapping: if the graph has a player node (a class with `REPLAYS_RECORDING = True`), every
selected recorded topic feeds the player output of its schema (`SCHEMA_OUTPUTS`), or the output
`--remap topic:=output` names; several topics on one output carry `frame_id` = their recorded
topic (`player_options`, shared with the launched node). Otherwise the selected topics (after
`--remap`) are injected under their names. A node that publishes an injected topic is not
instantiated: the recording replaces it. Only what is injected replaces (`--topics sim/tracks`
replaces `sim` and nothing else). Before anything runs, `plan` refuses a replay that could score
nothing: every node replaced, nothing subscribed to any injected topic, or a schema mismatch; the
ConfigError names what was replaced and what the graph subscribes to. A replay that still
delivered nothing is an error too. With `-o out.mcap` the output holds the injected messages and
everything the graph published, log_time = the replayed clock.

Timers fire at every tick of the replayed clock, except across a gap between two messages long
enough for `MAX_GAP_TICKS` ticks (a paused drive, a forged stamp years ahead): there each timer
skips its missed ticks, as a node stalled that long would, and the node counts `timer.skipped_gaps`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.recordings.base import Recording, RecordingInfo
from pipeline.recordings.schedule import PlayOptions, check_names, schedule
from pipeline.wire.codec import decode
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

__all__ = ["SCHEMA_OUTPUTS", "LockstepPlan", "LockstepStats", "lockstep", "plan", "player_options"]

log = logging.getLogger(__name__)
MAX_GAP_TICKS = 10_000  # per gap between two recorded messages: 1000 s of a 10 Hz timer

#: The player node's outputs: one per schema (recorded topics map here by schema or `remap`).
SCHEMA_OUTPUTS: dict[str, tuple[str, type[Message]]] = {
    Tracks.SCHEMA: ("tracks", Tracks), Detections.SCHEMA: ("detections", Detections),
    Predictions.SCHEMA: ("predictions", Predictions), Odometry.SCHEMA: ("odom", Odometry),
    Imu.SCHEMA: ("imu", Imu), GnssFix.SCHEMA: ("fix", GnssFix), Image.SCHEMA: ("image", Image),
    PointCloud.SCHEMA: ("points", PointCloud), Clock.SCHEMA: ("clock", Clock),
}


def player_options(info: RecordingInfo, opts: PlayOptions, prefix: str = "") -> tuple[PlayOptions, list[str]]:
    """What a player node plays: every converted recorded topic (or those of `opts.topics`) onto the
    output `opts.remap` names, else the output of its schema, as `prefix + output`. Topics that share an
    output are tagged (`tag_source`: frame_id = the recorded topic). Also returns the selected topics it
    cannot play, each with the reason. Raises ConfigError for a bad name."""
    check_names(info, opts)
    outputs = {name for name, _ in SCHEMA_OUTPUTS.values()}
    mapping: dict[str, str] = {}
    skipped: list[str] = []
    for t in sorted(info.topics, key=lambda t: t.name):
        if opts.topics is not None and t.name not in opts.topics:
            continue
        out = opts.remap.get(t.name) or SCHEMA_OUTPUTS.get(t.schema, ("", Message))[0]
        if not t.converted:
            skipped.append(f"{t.name} ({t.type}: no drivecast schema)")
        elif not out:
            skipped.append(f"{t.name} ({t.schema}: the player has no output for it)")
        elif out not in outputs:
            raise ConfigError(f"--remap {t.name}:={out}: the player has no output {out!r} "
                              f"(outputs: {', '.join(sorted(outputs))})")
        else:
            mapping[t.name] = prefix + out
    shared = frozenset(t for t, out in mapping.items() if list(mapping.values()).count(out) > 1)
    return PlayOptions(opts.rate, opts.loop, opts.start_offset_s, sorted(mapping), mapping, opts.clock_hz,
                       prefix + "clock", opts.max_loops, shared), skipped


@dataclass
class LockstepPlan:
    """What a lockstep replay injects, which nodes it replaces and which it runs (see `plan`)."""

    opts: PlayOptions                                          # what `schedule` plays
    sources: dict[str, list[str]]                              # injected topic -> recorded topics
    replaced: dict[str, list[str]]                             # node -> the injected topics it published
    run: list[str]                                             # nodes instantiated, in file order
    unsubscribed: list[str] = field(default_factory=list)      # injected topics no running node reads
    skipped: list[str] = field(default_factory=list)           # selected topics not played, with why


def _describe(topics: dict[str, list[str]]) -> str:
    return ", ".join(t + ("" if src == [t] else f" (from {', '.join(src)})") for t, src in sorted(topics.items()))


def plan(info: RecordingInfo, graph: Any, opts: PlayOptions) -> LockstepPlan:
    """Map recorded topics onto `graph` (a `pipeline.runtime.graph.Graph`) and check that the replay
    can deliver something; see the module doc. Raises ConfigError naming topics and nodes."""
    check_names(info, opts)
    players = [n for n, s in graph.nodes.items() if getattr(s.cls, "REPLAYS_RECORDING", False)]
    if len(players) > 1:
        raise ConfigError(f"{graph.path}: lockstep feeds one player node, the graph has {', '.join(players)}")
    if players:
        opts, skipped = player_options(info, opts, f"{players[0]}/")
        opts.max_loops = opts.max_loops or 1
    else:
        chosen = [t for t in info.topics if opts.topics is None or t.name in opts.topics]
        skipped = [f"{t.name} ({t.type}: no drivecast schema)" for t in chosen if not t.converted]
        opts = PlayOptions(**{**opts.__dict__, "topics": sorted(t.name for t in chosen if t.converted),
                              "max_loops": opts.max_loops or 1})
    schemas = {t.name: t.schema for t in info.topics}
    sources: dict[str, list[str]] = {}
    for t in opts.topics or []:
        sources.setdefault(opts.remap.get(t, t), []).append(t)
    if not sources:
        raise ConfigError(f"{info.path}: no selected topic converts to a drivecast schema; nothing to replay")
    for topic, src in sources.items():
        # a node's output, or an external topic (one the graph's inputs read and no node publishes)
        want = graph.topics.get(topic) or graph.external.get(topic)
        bad = [s for s in src if want is not None and schemas[s] != want.SCHEMA]
        if want is not None and bad:
            raise ConfigError(f"{bad[0]} is replayed as {topic}, which carries {want.SCHEMA} in {graph.path}, "
                              f"but {bad[0]} is {schemas[bad[0]]}")
    injected = set(sources) | ({opts.clock_topic} if opts.clock_hz else set())
    replaced: dict[str, list[str]] = {p: [] for p in players}
    for topic in sorted(injected):
        if topic in graph.topics:
            replaced.setdefault(topic.split("/", 1)[0], []).append(topic)
    run = [n for n in graph.nodes if n not in replaced]
    by = "; ".join(f"{n} (publishes {', '.join(ts)})" if ts else f"{n} (the player)" for n, ts in replaced.items())
    if not run:
        # the recorded inputs of the graph: published by a node without inputs, read by another node
        sourcing = [t for t in sorted(sources) if t in graph.topics and graph.subscribers.get(t)
                    and not graph.nodes[t.split("/", 1)[0]].inputs]
        hint = f", e.g. --topics {' '.join(s for t in sourcing for s in sources[t])}" if sourcing else ""
        raise ConfigError(f"{graph.path}: the recording replaces every node: {by}; nothing would run. "
                          f"Pick the recorded topics to inject with --topics{hint}")
    readers = {t: [f"{n}.{i}" for n, i in graph.subscribers.get(t, []) if n in run] for t in sources}
    unsubscribed = sorted(t for t, r in readers.items() if not r)
    if len(unsubscribed) == len(sources):
        inputs = ", ".join(f"{n}.{i} <- {graph.nodes[n].inputs[i].topic}" for n in run for i in graph.nodes[n].inputs)
        raise ConfigError(f"{graph.path}: nothing in the graph subscribes to the replayed topics "
                          f"{_describe(sources)}" + (f"; replaced: {by}" if replaced else "")
                          + f"; the graph's inputs: {inputs or 'none'}. "
                          "Map a recorded topic onto one of them with --remap FROM:=TO")
    return LockstepPlan(opts, sources, replaced, run, unsubscribed, skipped)


@dataclass
class LockstepStats:
    injected: int = 0
    published: int = 0
    replayed_ns: int = 0
    wall_s: float = 0.0
    replaced: dict[str, list[str]] = field(default_factory=dict)   # node -> injected topics it published
    unsubscribed: list[str] = field(default_factory=list)          # injected topics nothing read

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
    p = plan(rec.info(), graph, opts)
    if p.skipped:
        log.warning("lockstep: not played: %s", ", ".join(p.skipped))
    if p.unsubscribed:
        log.warning("lockstep: nothing in %s subscribes to %s", graph.path,
                    _describe({t: p.sources[t] for t in p.unsubscribed}))
    stats = LockstepStats(replaced=p.replaced, unsubscribed=p.unsubscribed)
    first = None
    g = None
    t_start = time.perf_counter()
    try:
        for item in schedule(rec, p.opts):
            if stop():
                break
            if g is None:
                first = item.log_ns
                # on_publish hands the sink the same frames the subscribers decoded: same bytes, same clock
                g = LocalGraph(start_ns=item.log_ns, record=False, on_publish=sink)
                for name in p.run:
                    spec = graph.nodes[name]
                    g.add(name, spec.cls, spec.params, {i: s.topic for i, s in spec.inputs.items()})
                g.start()
            g.advance_to(item.log_ns, max_ticks=MAX_GAP_TICKS)
            msg, _ = decode(item.frames)
            if sink is not None:
                sink(item.topic, item.frames, item.log_ns, msg)
            g.inject(item.topic, msg)
            stats.published += g.spin()
            stats.injected += 1
            stats.replayed_ns = item.log_ns - (first or 0)
    finally:  # every node shuts down, also when one of them raised
        if g is not None:
            g.stop()
    stats.wall_s = time.perf_counter() - t_start
    if not stop() and (stats.injected == 0 or stats.published == 0):
        raise ConfigError(f"lockstep: {stats.injected} messages injected, 0 deliveries: nothing in {graph.path} "
                          f"received a message (replayed: {_describe(p.sources)}; subscribed by nobody: "
                          f"{', '.join(p.unsubscribed) or 'none'}; start offset {p.opts.start_offset_s:g} s)")
    return stats

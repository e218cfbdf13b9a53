"""Replay a recording through a graph in this process, deterministically (`drivecast play --lockstep`).

The graph runs in a `pipeline.runtime.local.LocalGraph` on the replayed clock: for each message in
log-time order the clock advances to its log time (firing due timers), the message is injected,
and every callback it causes runs before the next message is read. Nothing is dropped and nothing
depends on wall time, so two runs write byte-identical output files.

Topic mapping: if the graph has a player node (a class with `REPLAYS_RECORDING = True`), recorded
topics feed its outputs `<player>/<output>`, chosen by schema (`SCHEMA_OUTPUTS`) or by
`--remap topic:=output`; otherwise recorded topics (after `--remap`) are injected under their
names. Nodes that publish an injected topic are not instantiated: the recording replaces them.
With `-o out.mcap` the output holds the injected messages and everything the graph published,
log_time = the replayed clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.recordings.base import Recording, RecordingInfo
from pipeline.recordings.schedule import PlayOptions, schedule
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

__all__ = ["SCHEMA_OUTPUTS", "LockstepStats", "lockstep", "player_topics"]

#: The player node's outputs: one per schema (recorded topics map here by schema or `remap`).
SCHEMA_OUTPUTS: dict[str, tuple[str, type[Message]]] = {
    Tracks.SCHEMA: ("tracks", Tracks), Detections.SCHEMA: ("detections", Detections),
    Predictions.SCHEMA: ("predictions", Predictions), Odometry.SCHEMA: ("odom", Odometry),
    Imu.SCHEMA: ("imu", Imu), GnssFix.SCHEMA: ("fix", GnssFix), Image.SCHEMA: ("image", Image),
    PointCloud.SCHEMA: ("points", PointCloud), Clock.SCHEMA: ("clock", Clock),
}


def player_topics(rec_info: RecordingInfo, remap: dict[str, str], player: str) -> dict[str, str]:
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

"""Play a recording into a launched graph: `player/tracks`, `player/odom`, ... (one output per schema).

```yaml
nodes:
  player:
    run: nodes.player:Player
    params: {file: drive.mcap, rate: 1.0, clock_hz: 100}
    required: true                  # the graph ends when the recording does
  predictor:
    run: nodes.predictor:Predictor
    inputs: {tracks: {topic: player/tracks, queue: block}}
clock: player/clock                 # nodes' timers and now() follow the replayed time
```

Options are `drivecast play`'s (`pipeline.recordings.replay`): rate, loop, start_offset, topics, remap
(`{recorded topic: output}`; default: the output of the topic's schema), clock_hz
(0 = no clock), delay_s (a wait before the first message, during which the clock is held at the
first log time: subscribers of the clock, a lossy topic, then know the time before any message;
default 0.3 s with a clock). The node publishes from a timer every `tick_s` (1 ms) of wall time, each message at
its absolute deadline `t0 + (log - log0) / rate`; the read-ahead thread keeps the next messages
ready. Messages are re-published by this node, so `seq` and the publish time are the player's
(the content is the recording's). For byte-identical frames use `drivecast play`; for a
deterministic replay through the graph, `drivecast play --lockstep --graph launch.yaml`, which
recognises this node (`REPLAYS_RECORDING`) and feeds its outputs in-process.

Every recorded topic plays (or every one in `topics`). Several topics of one schema share its output,
in log-time order, each message's `frame_id` set to its recorded topic (`/ego_pose`, `/red_pose`), so
a subscriber tells them apart; a topic alone on its output keeps its recorded frame_id. Topics the
player cannot publish (a ROS type without a drivecast schema, Diagnostics) are logged as not played.
The mapping is `pipeline.recordings.lockstep.player_options`, the same as a lockstep replay's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from msgspec import Meta

from pipeline.errors import ConfigError
from pipeline.recordings.lockstep import player_options
from pipeline.recordings.reader import open_recording, prefetch
from pipeline.recordings.schedule import PlayOptions, schedule
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.codec import decode
from pipeline.wire.messages import Clock, Detections, GnssFix, Image, Imu, Odometry, PointCloud, Predictions, Tracks

__all__ = ["Player"]


class Player(Node):
    REPLAYS_RECORDING = True

    class Params(NodeParams):
        file: str
        rate: Annotated[float, Meta(gt=0)] = 1.0
        loop: bool = False
        start_offset: Annotated[float, Meta(ge=0)] = 0.0
        topics: list[str] | None = None
        remap: dict[str, str] = {}
        clock_hz: Annotated[float, Meta(ge=0)] = 0.0
        types: str = ""
        tick_s: Annotated[float, Meta(gt=0)] = 0.001
        delay_s: float = -1.0     # wait before the first message; -1: 0.3 s with a clock, else 0

        def __post_init__(self) -> None:  # a missing recording is a launch-file error, not a failed node
            if not Path(self.file).exists():
                raise ValueError(f"file: no such recording {self.file!r}")

    params: Params

    outputs = {"tracks": Tracks, "detections": Detections, "predictions": Predictions, "odom": Odometry,
               "imu": Imu, "fix": GnssFix, "image": Image, "points": PointCloud, "clock": Clock}

    def setup(self) -> None:
        p = self.params
        self.rec = open_recording(p.file, p.types or None)
        opts, skipped = player_options(self.rec.info(), PlayOptions(p.rate, p.loop, p.start_offset, p.topics,
                                                                    dict(p.remap), p.clock_hz))
        opts.check()
        if skipped:
            self.log.warning("not played: %s", ", ".join(skipped))
        if not opts.remap:
            raise ConfigError(f"{p.file}: no topic to play (not played: {', '.join(skipped) or 'none'})")
        self.items = prefetch(schedule(self.rec, opts))
        self.pending = next(self.items, None)
        delay = p.delay_s if p.delay_s >= 0 else (0.3 if p.clock_hz else 0.0)
        self.t0 = time.perf_counter_ns() + int(delay * 1e9)
        self.next_hold = 0
        self.log0 = self.pending.log_ns if self.pending else 0
        self.rate = p.rate
        self.sent = 0
        self.log.info("playing %s: %s", p.file, ", ".join(
            f"{k} -> {v}" + (" (frame_id = topic)" if k in opts.tag_source else "") for k, v in opts.remap.items()))
        self.every(p.tick_s, self.tick)

    def tick(self) -> None:
        now = time.perf_counter_ns()
        if now < self.t0 and self.params.clock_hz and self.pending is not None and now >= self.next_hold:
            # before the start, hold the clock at the first log time: late-joining clock
            # subscribers (the lossy endpoint) have it before the first message arrives
            self.next_hold = now + 50_000_000
            self.publish("clock", Clock(stamp_ns=self.log0))
        while self.pending is not None and self.t0 + (self.pending.log_ns - self.log0) / self.rate <= now:
            item = self.pending
            msg, _ = decode(item.frames)
            self.publish(item.topic, msg)
            self.sent += 1
            self.pending = next(self.items, None)
        self.diagnostics["played"] = self.sent
        if self.pending is None:
            self.stop("end of recording")

    def shutdown(self) -> None:
        self.items.close()
        self.rec.close()

"""Record a graph's topics from inside the graph (the launch.yaml form of `drivecast record`).

```yaml
  recorder:
    run: nodes.recorder:Recorder
    params: {file: run.mcap, names: {tracks: sim/tracks, predictions: predictor/predictions}}
    inputs: {tracks: {topic: sim/tracks, queue: block}, predictions: {topic: predictor/predictions, queue: block}}
```

One input per schema (wire the ones you want); `names` gives each input's channel name in the file
(default: the input name). With `queue: block` nothing is lost. The file layout is
`pipeline.recordings.writer`'s (zstd chunks, Foxglove mirror channels unless `foxglove: false`).
log_time = the node clock when the message arrives. A chunk goes to the disk once its oldest message is
`max_chunk_age_s` old (default 0.1 s: a crash loses about that much), checked on each message and by a
timer every half of it, so a pause in the inputs does not keep the last messages in memory.

Difference from `drivecast record`: a node receives decoded messages, not wire frames, so the
recorder re-encodes them and the header's publish time becomes the receive time (content, stamps
and seq are the publisher's). `drivecast record` stores the received frames byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from pipeline.recordings.writer import MAX_CHUNK_AGE_S
from pipeline.recordings.writer import Recorder as McapRecorder
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.codec import encode
from pipeline.wire.messages import (
    Detections,
    GnssFix,
    Image,
    Imu,
    LaserScan,
    Message,
    Odometry,
    PointCloud,
    Predictions,
    Tracks,
)

__all__ = ["Recorder"]


class Recorder(Node):
    class Params(NodeParams):
        file: str
        names: dict[str, str] = {}
        foxglove: bool = True
        max_chunk_age_s: Annotated[float, msgspec.Meta(ge=0)] = MAX_CHUNK_AGE_S  # 0: chunks closed by size only

    params: Params

    inputs = {"tracks": Tracks, "detections": Detections, "predictions": Predictions, "odom": Odometry,
              "imu": Imu, "fix": GnssFix, "image": Image, "points": PointCloud, "scan": LaserScan}

    def setup(self) -> None:
        p = self.params
        path = Path(p.file)
        if self.is_restart and path.exists():  # the previous life's recording: keep it, go on in a new file
            n = 1
            while (nxt := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
                n += 1
            self.log.warning("respawned: keeping %s, recording into %s", path, nxt)
            path = nxt
        age = p.max_chunk_age_s
        self.out = McapRecorder(path, foxglove_mirror=p.foxglove, max_chunk_age_s=age)
        if age > 0:  # not below 10 ms: a tiny age (each message flushed) must not make the timer spin
            self.every(max(age / 2, 0.01), self._flush_if_due)

    def on_input(self, inp: str, msg: Message) -> None:
        now = self.now_ns()
        self.out.write(self.params.names.get(inp, inp), encode(msg, publish_ns=now), now, msg)
        self.diagnostics["recorded"] = self.out.count

    def _flush_if_due(self) -> None:
        self.out.flush_if_due()

    def shutdown(self) -> None:
        self.out.close()

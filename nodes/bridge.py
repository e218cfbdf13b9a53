"""Live view: serve a running graph's tracks, predictions, poses, images and clouds to Foxglove or
Lichtblick over a local WebSocket (foxglove-sdk; optional extra `pip install 'drivecast[bridge]'`).

```yaml
  bridge:
    run: nodes.bridge:Bridge
    params: {port: 8765, names: {tracks: sim/tracks, predictions: predictor/predictions}}
    inputs: {tracks: sim/tracks, predictions: predictor/predictions}   # queue: latest is fine
```

Open Foxglove -> "Open connection" -> `ws://127.0.0.1:8765`. Each input becomes a channel named by
`names` (default: the input name) with the Foxglove well-known schema of `pipeline.recordings.foxglove`
(SceneUpdate for tracks and predictions, PoseInFrame, LocationFix as JSON; RawImage and PointCloud
as CDR); log time = the message stamp. A message is converted only while a client is subscribed.
The server binds `host` (default 127.0.0.1: local only; the WebSocket has no authentication).
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError
from pipeline.recordings import foxglove as fx
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import GnssFix, Image, Imu, Message, Odometry, PointCloud, Predictions, Tracks

__all__ = ["Bridge"]


class Bridge(Node):
    class Params(NodeParams):
        host: str = "127.0.0.1"
        port: int = 8765          # 0: any free port (logged)
        names: dict[str, str] = {}

    params: Params

    inputs = {"tracks": Tracks, "predictions": Predictions, "odom": Odometry, "fix": GnssFix, "imu": Imu,
              "image": Image, "points": PointCloud}

    def setup(self) -> None:
        try:
            import foxglove
        except ImportError:
            raise ConfigError(f"{self.name}: nodes.bridge needs foxglove-sdk: pip install 'drivecast[bridge]'") from None
        self._fox = foxglove
        self.context = foxglove.Context()
        self.server = foxglove.start_server(name=f"drivecast {self.name}", host=self.params.host,
                                            port=self.params.port, context=self.context)
        self.port = int(self.server.port)
        self.channels: dict[str, Any] = {}
        self.log.info("Foxglove WebSocket on ws://%s:%d", self.params.host, self.port)

    def on_input(self, inp: str, msg: Message) -> None:
        ch = self.channels.get(inp)
        if ch is None:
            topic = self.params.names.get(inp, inp)
            spec = fx.channel_spec(type(msg).SCHEMA)
            schema = self._fox.Schema(name=spec.schema_name, encoding=spec.schema_encoding, data=spec.schema_data)
            ch = self._fox.Channel(topic, schema=schema, message_encoding=spec.message_encoding, context=self.context)
            self.channels[inp] = ch
        if ch.has_sinks():  # converting costs; skip it while nobody watches
            ch.log(fx.convert(msg, self.params.names.get(inp, inp)), log_time=msg.stamp_ns)
            self.diagnostics[f"sent.{inp}"] = self.diagnostics.get(f"sent.{inp}", 0) + 1

    def shutdown(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.server.stop()

"""A consumer that prints a one-line summary of what it receives (a stand-in sink, and a demo)."""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np

from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import AgentKind, Tracks

__all__ = ["TrackPrinter"]


class TrackPrinter(Node):
    class Params(NodeParams):
        every_n: Annotated[int, msgspec.Meta(ge=1)] = 10  # print one line per this many messages

    params: Params

    inputs = {"tracks": Tracks}

    def setup(self) -> None:
        self.count = 0
        self.latency_us: list[float] = []

    def on_tracks(self, msg: Tracks) -> None:
        self.count += 1
        self.latency_us.append((self.now_ns() - msg.stamp_ns) / 1e3)
        if self.count % self.params.every_n == 0:
            codes, counts = np.unique(msg.kind, return_counts=True)
            # any uint8 may arrive: an unknown code is shown as its number, never a KeyError
            kinds = {AgentKind.NAMES.get(int(k), str(int(k))): int(n) for k, n in zip(codes, counts, strict=True)}
            lat = np.percentile(self.latency_us, [50, 99])
            self.log.info("seq %d: %d agents %s, latency p50 %.0f us p99 %.0f us",
                          msg.seq, len(msg.ids), kinds, lat[0], lat[1])
            self.latency_us.clear()

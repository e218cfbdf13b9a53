"""The drivecast side of `bench/transport.py`: two real nodes run by the real runtime.

`FrameSource` publishes one `Image` per trigger it receives on its `go` input (a `Clock` whose
`frame_id` is the index of the payload size), a freshly written frame each time; the harness
publishes the triggers itself, so no node spins on a timer while another system is measured. `stamp_ns` is CLOCK_MONOTONIC
(system-wide on Linux) taken right before `publish`. `FrameSink` takes CLOCK_MONOTONIC again in
its callback and appends `(latency_ns, nbytes)` to a shared results file (`bench._results.Results`).
"""

from __future__ import annotations

import time

import numpy as np

from bench._results import Results
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import Clock, Image

__all__ = ["FrameSink", "FrameSource", "Trigger", "image_shape"]


def image_shape(nbytes: int) -> tuple[int, int, int]:
    """An HxWxC uint8 shape of exactly `nbytes`: the camera frame when it fits, else one row."""
    if nbytes == 1280 * 720 * 3:
        return (720, 1280, 3)
    return (1, nbytes, 1)


class Trigger(Node):
    """Declares the `go` topic; never started (the harness binds and publishes it)."""

    outputs = {"go": Clock}


class FrameSource(Node):
    class Params(NodeParams):
        sizes: list[int]
        loan: bool = False  # fill a loaned shared-memory slot instead of a fresh array

    inputs = {"go": Clock}
    outputs = {"frame": Image}

    def on_go(self, msg: Clock) -> None:
        # A sensor hands over a frame it has just produced: a fresh buffer, just written (so it is
        # in cache, as a camera driver's frame would be). Producing it is not timed.
        nbytes = self.params.sizes[int(msg.frame_id)]
        if self.params.loan:
            # Until the Node API has `loan`, reach the runtime's publisher (a benchmark may).
            data = self._runtime.publishers["frame"].loan(image_shape(nbytes), np.uint8)  # type: ignore[attr-defined]
        else:
            data = np.empty(image_shape(nbytes), dtype=np.uint8)
        data.fill(msg.seq & 0xFF)
        out = Image(data=data, encoding="mono8")
        out.stamp_ns = time.monotonic_ns()
        self.publish("frame", out)


class FrameSink(Node):
    class Params(NodeParams):
        results: str

    inputs = {"frame": Image}

    def setup(self) -> None:
        self.results = Results(self.params.results)

    def on_frame(self, msg: Image) -> None:
        now = time.monotonic_ns()
        self.results.add(now - msg.stamp_ns, msg.data.nbytes)

    def shutdown(self) -> None:
        self.log.info("received %d", self.results.count)

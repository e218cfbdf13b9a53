"""Small nodes for launcher and runtime tests (importable by node processes as tests.graph_nodes)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np

from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import Image, Tracks


class Ramp(Node):
    """Publishes `count` Tracks messages (message i carries id i), `per_tick` per timer tick, then stops."""

    class Params(NodeParams):
        count: int = 100
        per_tick: int = 10
        period_s: float = 0.001
        linger: bool = False  # keep running after the last message

    outputs = {"tracks": Tracks}

    def setup(self) -> None:
        self.sent = 0
        self.every(self.params.period_s, self.tick)

    def tick(self) -> None:
        for _ in range(self.params.per_tick):
            if self.sent >= self.params.count:
                if not self.params.linger:
                    self.stop("done")
                return
            self.sent += 1
            self.publish("tracks", Tracks(ids=np.array([self.sent]), xy=np.zeros((1, 2)), vxy=np.zeros((1, 2)),
                                          kind=np.ones(1)))


class Relay(Node):
    """Republishes what it receives."""

    inputs = {"tracks": Tracks}
    outputs = {"tracks": Tracks}

    def on_tracks(self, msg: Tracks) -> None:
        self.publish("tracks", Tracks(stamp_ns=msg.stamp_ns, ids=msg.ids, xy=msg.xy, vxy=msg.vxy, kind=msg.kind))


class Collect(Node):
    """Appends each received id to a JSON-lines file; stops after `expect` messages (if > 0)."""

    class Params(NodeParams):
        out: str
        expect: int = 0
        slow_s: float = 0.0  # work per message, to make a slow consumer

    inputs = {"tracks": Tracks}

    def setup(self) -> None:
        self.fh = Path(self.params.out).open("a")  # noqa: SIM115 (closed in shutdown)
        self.n = 0

    def on_tracks(self, msg: Tracks) -> None:
        # [first id, ..., age of the message in ms when its callback ran]
        age_ms = (time.time_ns() - msg.stamp_ns) / 1e6
        self.fh.write(json.dumps([*(int(i) for i in msg.ids), round(age_ms, 3)]) + "\n")
        self.fh.flush()
        self.n += 1
        if self.params.slow_s:
            time.sleep(self.params.slow_s)  # simulated work in the node, not test synchronisation
        if self.params.expect and self.n >= self.params.expect:
            self.stop("got everything")

    def shutdown(self) -> None:
        self.fh.close()


class Stubborn(Node):
    """Ignores SIGINT and SIGTERM: the launcher must escalate to SIGKILL."""

    inputs = {"tracks": Tracks}

    def setup(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def on_tracks(self, msg: Tracks) -> None:
        pass


class Crash(Node):
    """Exits with an error at setup (a crash loop under respawn)."""

    def setup(self) -> None:
        raise RuntimeError("crash on purpose")


class Cam(Node):
    """Publishes a uniform `rows`x1024 image every `period_s`, filled in a loaned slot when `loan`."""

    class Params(NodeParams):
        rows: int = 256
        loan: bool = False
        period_s: float = 0.01

    outputs = {"image": Image}

    def setup(self) -> None:
        self.seq = 0
        self.every(self.params.period_s, self.tick)

    def tick(self) -> None:
        self.seq += 1
        shape = (self.params.rows, 1024, 1)
        data = self.loan("image", shape) if self.params.loan else np.empty(shape, np.uint8)
        data.fill(self.seq & 0xFF)
        self.publish("image", Image(data=data))


class FrameCheck(Node):
    """Checks that every image is uniform (a torn frame is not) and logs the count every 20 frames."""

    inputs = {"image": Image}

    def setup(self) -> None:
        self.n = 0

    def on_image(self, msg: Image) -> None:
        assert (msg.data == msg.data.flat[0]).all(), "torn frame"
        self.n += 1
        if self.n % 20 == 0:
            self.log.info("frames %d", self.n)


class Stall(Node):
    """Stalls in its first callback for `stall_s` (a stuck consumer), with marker files `DIR/stalled`
    and `DIR/resumed` around it; then appends each image's seq to `DIR/seqs`."""

    class Params(NodeParams):
        dir: str
        stall_s: float = 5.0

    inputs = {"image": Image}

    def setup(self) -> None:
        self.stalled = False

    def on_image(self, msg: Image) -> None:
        d = Path(self.params.dir)
        if not self.stalled:
            self.stalled = True
            (d / "stalled").write_text(str(msg.seq))
            time.sleep(self.params.stall_s)
            (d / "resumed").write_text(str(msg.seq))
            return
        with (d / "seqs").open("a") as fh:
            fh.write(f"{msg.seq}\n")

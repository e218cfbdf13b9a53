"""Merge per-robot pose topics into one Tracks stream at a fixed rate: one agent per input topic.

A robot recording or a live fleet gives one pose topic per robot (ROS PoseStamped or Odometry,
converted to drivecast `Odometry`); the predictor wants one `Tracks` message holding every agent.
Node inputs are declared per class, so this node declares a fixed set of them, `pose0` ... `pose7`,
and a launch file wires as many as it has robots. Input `poseN` is the agent with id `id_base + N`
and the kind `kinds.poseN` (default vehicle).

```yaml
  poses:
    run: nodes.poses:PosesToTracks
    params: {rate_hz: 10, kinds: {pose1: pedestrian}}
    inputs: {pose0: /ego_pose, pose1: /red_pose}   # topics: {/ego_pose: {external: true}, ...}
```

Only the poses' header stamps count, never their arrival: a pose whose stamp repeats, goes back, or
implies a speed above `max_speed_mps` since the last accepted one is dropped and counted
(`drops.duplicate`, `drops.out_of_order`, `drops.jump`); a gap or a step back longer than `timeout_s`
restarts the agent's history instead (`restarts`), so a replay that loops or a robot that was away
does not drop every later pose. The velocity is the least-squares slope of the accepted positions
within `window_s` of stamp time (at least the last two): one noisy pose does not set it, and it is
the velocity of about `window_s`/2 ago. An Odometry's own twist is not used (it is in the robot's
frame, and a PoseStamped has none).

Every 1/`rate_hz` s of the node clock a Tracks message is published, stamped with the newest accepted
stamp; each agent's position is its last pose moved by its velocity to that stamp (a few ms with
sources at similar rates), so the rows of one message belong to one time. A tick with no newer stamp
publishes nothing (`ticks_idle`); an input whose stamp lags the newest by more than `timeout_s` (a
robot on another clock) is left out of it (`stale`). An input whose last accepted pose arrived more
than `timeout_s` ago (node clock) is dropped and forgotten (`timeouts`). Poses must share one frame:
the first pose's `frame_id` is the output's, others are dropped (`drops.frame`).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import AgentKind, Odometry, Tracks

__all__ = ["INPUTS", "PosesToTracks"]

#: The node's inputs: wire one per pose topic.
INPUTS = tuple(f"pose{i}" for i in range(8))
_KIND_CODE = {name: code for code, name in AgentKind.NAMES.items()}
_Kind = Literal["unknown", "vehicle", "pedestrian", "cyclist"]


class _Kinds(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The agent kind of each input: one field per input, so a misspelt input or kind is a
    launch-file error naming its key."""

    pose0: _Kind = "vehicle"
    pose1: _Kind = "vehicle"
    pose2: _Kind = "vehicle"
    pose3: _Kind = "vehicle"
    pose4: _Kind = "vehicle"
    pose5: _Kind = "vehicle"
    pose6: _Kind = "vehicle"
    pose7: _Kind = "vehicle"


class _Source:
    """One input's accepted poses within the velocity window, newest last."""

    def __init__(self, arrived_ns: int) -> None:
        self.t: deque[int] = deque()
        self.xy: deque[tuple[float, float]] = deque()
        self.arrived_ns = arrived_ns

    def accept(self, s: int, xy: tuple[float, float], p: PosesToTracks.Params, counts: Counter[str]) -> bool:
        """Add the pose stamped `s` unless it is a duplicate, out of order or a jump (counted)."""
        timeout_ns = p.timeout_s * 1e9
        if self.t:
            dt = s - self.t[-1]
            if abs(dt) > timeout_ns:
                self.t.clear()
                self.xy.clear()
                counts["restarts"] += 1
            elif dt <= 0:
                counts["drops.duplicate" if dt == 0 else "drops.out_of_order"] += 1
                return False
            elif np.hypot(xy[0] - self.xy[-1][0], xy[1] - self.xy[-1][1]) > p.max_speed_mps * dt * 1e-9:
                counts["drops.jump"] += 1
                return False
        self.t.append(s)
        self.xy.append(xy)
        while len(self.t) > 2 and self.t[0] < s - p.window_s * 1e9:
            self.t.popleft()
            self.xy.popleft()
        return True

    def velocity(self) -> np.ndarray:
        """Least-squares slope of position over stamp time (m/s); zero from a single pose."""
        if len(self.t) < 2:
            return np.zeros(2)
        t = (np.fromiter(self.t, np.int64, len(self.t)) - self.t[-1]) * 1e-9
        xy = np.array(self.xy)
        tc = t - t.mean()
        return np.asarray(tc @ (xy - xy.mean(0)) / (tc @ tc))


class PosesToTracks(Node):
    """Odometry on `pose0`..`pose7` in, one Tracks message every 1/rate_hz s out; see the module docstring."""

    class Params(NodeParams):
        rate_hz: Annotated[float, Meta(gt=0)] = 10.0          # Tracks messages per second of node clock
        kinds: _Kinds = _Kinds()                               # input -> agent kind (default vehicle)
        id_base: Annotated[int, Meta(ge=0)] = 0                # input poseN is agent id_base + N
        window_s: Annotated[float, Meta(gt=0)] = 0.1           # velocity fit over this much stamp time
        timeout_s: Annotated[float, Meta(gt=0)] = 0.5          # drop an input silent this long
        max_speed_mps: Annotated[float, Meta(gt=0)] = 60.0     # a faster move between poses is a jump

    params: Params
    inputs = dict.fromkeys(INPUTS, Odometry)
    outputs = {"tracks": Tracks}

    def setup(self) -> None:
        self.sources: dict[str, _Source] = {}
        self.counts: Counter[str] = Counter()
        self.frame: str | None = None
        self.last_stamp: int | None = None
        self.kind = {name: _KIND_CODE[getattr(self.params.kinds, name)] for name in INPUTS}
        self.every(1.0 / self.params.rate_hz, self._tick)
        self.every(1.0, self._update_diagnostics)

    def on_input(self, name: str, msg: Odometry) -> None:  # type: ignore[override]
        x, y = float(msg.position[0]), float(msg.position[1])
        if not (np.isfinite(x) and np.isfinite(y)):
            self.counts["drops.not_finite"] += 1
            return
        if self.frame is None:
            self.frame = msg.frame_id
        elif msg.frame_id != self.frame:
            self.counts["drops.frame"] += 1
            return
        src = self.sources.get(name)
        if src is None:
            src = self.sources[name] = _Source(self.now_ns())
        if src.accept(msg.stamp_ns, (x, y), self.params, self.counts):
            src.arrived_ns = self.now_ns()

    def _tick(self) -> None:
        p, now = self.params, self.now_ns()
        for name in [n for n, src in self.sources.items() if now - src.arrived_ns > p.timeout_s * 1e9]:
            del self.sources[name]
            self.counts["timeouts"] += 1
            self.log.info("%s: no pose for %.2f s, dropped", name, p.timeout_s)
        if not self.sources:
            return
        stamp = max(src.t[-1] for src in self.sources.values())
        # an input whose stamps lag the others' by more than the timeout (another clock) is not moved that far
        live = {n: src for n, src in self.sources.items() if stamp - src.t[-1] <= p.timeout_s * 1e9}
        self.counts["stale"] += len(self.sources) - len(live)
        if self.last_stamp is not None and 0 <= self.last_stamp - stamp <= p.timeout_s * 1e9:
            self.counts["ticks_idle"] += 1  # nothing newer (a step back beyond the timeout starts over)
            return
        self.last_stamp = stamp
        names = sorted(live, key=INPUTS.index)
        vxy = np.array([live[n].velocity() for n in names]).reshape(-1, 2)
        ahead_s = np.array([(stamp - live[n].t[-1]) * 1e-9 for n in names])
        xy = np.array([live[n].xy[-1] for n in names]).reshape(-1, 2) + vxy * ahead_s[:, None]
        self.publish("tracks", Tracks(stamp_ns=stamp, frame_id=self.frame or "", xy=xy, vxy=vxy,
                                      ids=np.array([p.id_base + INPUTS.index(n) for n in names], np.int64),
                                      kind=np.array([self.kind[n] for n in names], np.uint8)))

    def _update_diagnostics(self) -> None:
        self.diagnostics.update({k: float(v) for k, v in self.counts.items()})
        self.diagnostics["agents"] = float(len(self.sources))

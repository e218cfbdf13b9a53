"""The simulator's pedestrians: each walks a plan of three waypoints and may have to wait at one.

A plan is a walk along a sidewalk to a crossing, the crossing, and a walk along the far sidewalk
(or, for people walking the whole road, a stretch, the crosswalk over the cross street, the rest).
A leg over a signalised crosswalk starts only while its walk signal is on: people slow down to wait
at its kerb, in a small crowd (each aims at its own point near the kerb), and set off together.
Velocities relax towards the wanted one over TAU_S, so people speed up, slow down and turn as
people do rather than jump between constant velocities.
"""

from __future__ import annotations

import numpy as np

from nodes.sim_cars import append_row
from nodes.sim_junction import ARM_HALF, Junction

__all__ = ["Walkers"]

TAU_S = 0.5      # how quickly a walker reaches the velocity it wants (s)
ARRIVED_M = 0.4  # how close to a waypoint counts as there
CLEAR_M = 4.0    # a car this close to a crossing keeps people at its kerb
FREE, MAIN_WALK, CROSS_WALK = 0, 1, 2   # what a leg needs before it starts


class Walkers:
    """Pedestrians on a road of `length` with zebra `crossings` (cars stop for them) and a `junction`."""

    def __init__(self, length: float, sidewalk_y: float, crossings: np.ndarray, junction: Junction) -> None:
        self.length, self.sidewalk_y, self.crossings, self.junction = length, sidewalk_y, crossings, junction
        self.ped: dict[str, np.ndarray] = {k: np.zeros(0) for k in ("id", "x", "y", "vx", "vy", "speed", "leg")}
        self.ped["wp"] = np.zeros((0, 3, 2))     # waypoints
        self.ped["need"] = np.zeros((0, 3))      # FREE, MAIN_WALK or CROSS_WALK before each leg

    def spawn(self, rng: np.random.Generator, ped_id: int) -> None:
        sw, jx = self.sidewalk_y, self.junction.x
        side, d = rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])
        need = [FREE, FREE, FREE]
        plan = rng.random()
        if plan < 0.35:    # over a zebra crossing
            cx = self.crossings[rng.integers(len(self.crossings))] + rng.normal(0, 0.5)
            start = (cx + d * rng.uniform(5.0, 30.0), side * sw)
            wps = [(cx, side * sw), (cx, -side * sw), (cx + rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 40.0), -side * sw)]
        elif plan < 0.7:   # over the main road at the junction, on its walk signal
            cx = jx + d * self.junction.crosswalk_dx + rng.normal(0, 0.3)
            start = (cx + d * rng.uniform(5.0, 40.0), side * sw)
            wps = [(cx, side * sw), (cx, -side * sw), (cx + d * rng.uniform(10.0, 40.0), -side * sw)]
            need[1] = CROSS_WALK
        else:              # along a sidewalk, over the cross street on its walk signal
            y = side * (sw + rng.uniform(-0.8, 0.8))
            start = (0.0 if d > 0 else self.length, y)
            wps = [(jx - d * (ARM_HALF + 1.5), y), (jx + d * (ARM_HALF + 1.5), y), (self.length if d > 0 else 0.0, y)]
            need[1] = MAIN_WALK
        wp = np.array(wps) + rng.normal(0, 0.3, (3, 2))   # each aims at its own spot: a crowd, not a point
        speed = float(np.clip(rng.normal(1.3, 0.2), 0.6, 2.0))
        heading = wp[0] - np.array(start)
        vel = heading / max(float(np.hypot(*heading)), 1e-6) * speed
        append_row(self.ped, {"id": ped_id, "x": start[0], "y": start[1], "vx": vel[0], "vy": vel[1], "speed": speed,
                              "leg": 0.0, "wp": wp, "need": np.array(need, float)})

    def step(self, rng: np.random.Generator, dt: float, t: float, cars: np.ndarray) -> None:
        """Advance `dt` at time `t`; `cars` [C, 2]: where the cars are (nobody steps in front of one)."""
        ped = self.ped
        n = len(ped["x"])
        if n == 0:
            return
        walk_main, walk_cross = self.junction.walk(t)
        allowed = np.array([True, walk_main, walk_cross])
        rows = np.arange(n)
        leg = ped["leg"].astype(int)
        target = ped["wp"][rows, leg]
        dist = np.hypot(target[:, 0] - ped["x"], target[:, 1] - ped["y"])
        clear = self._clear(leg, cars)   # the same after the step below: only those clear start their crossing

        def may_start(leg: np.ndarray) -> np.ndarray:
            """Whether each walker's next leg may start now."""
            return allowed[ped["need"][rows, np.minimum(leg + 1, 2)].astype(int)] & clear  # type: ignore[no-any-return]

        done = (dist < ARRIVED_M) & (leg == 2)
        go = (dist < ARRIVED_M) & (leg < 2) & may_start(leg)
        leg = leg + go
        ped["leg"] = leg.astype(float)
        target = ped["wp"][rows, leg]
        dx, dy = target[:, 0] - ped["x"], target[:, 1] - ped["y"]
        dist = np.maximum(np.hypot(dx, dy), 1e-6)
        waits = (leg < 2) & ~may_start(leg)
        speed = np.where(waits, np.minimum(ped["speed"], 0.8 * np.maximum(dist - 0.1, 0.0)), ped["speed"])
        relax = min(1.0, dt / TAU_S)
        ped["vx"] += (dx / dist * speed - ped["vx"]) * relax + rng.normal(0, 0.03, n)
        ped["vy"] += (dy / dist * speed - ped["vy"]) * relax + rng.normal(0, 0.03, n)
        ped["x"] = ped["x"] + ped["vx"] * dt
        ped["y"] = ped["y"] + ped["vy"] * dt
        keep = ~done & (ped["x"] >= -1.0) & (ped["x"] <= self.length + 1.0)
        for k in ped:
            ped[k] = ped[k][keep]

    def _clear(self, leg: np.ndarray, cars: np.ndarray) -> np.ndarray:
        """Per walker: False while it heads for the kerb of its crossing (leg 1 of every plan) and a car
        is within CLEAR_M of that crossing: people do not step out in front of a car that stands on the
        crosswalk, or is turning into it."""
        clear = np.ones(len(leg), bool)
        ahead = np.flatnonzero(leg == 0)
        if len(ahead) == 0 or len(cars) == 0:
            return clear
        a, b = self.ped["wp"][ahead, 0], self.ped["wp"][ahead, 1]            # [A, 2] the crossing's ends
        ab = b - a
        rel = cars[None, :, :] - a[:, None, :]                                 # [A, C, 2]
        u = np.clip((rel * ab[:, None, :]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9)[:, None], 0.0, 1.0)
        near = np.hypot(*(rel - u[..., None] * ab[:, None, :]).transpose(2, 0, 1)) < CLEAR_M
        clear[ahead] = ~near.any(axis=1)
        return clear

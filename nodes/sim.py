"""A seeded traffic simulator: ground-truth `Tracks` and noisy `Detections` at a fixed rate, and,
with `lidar: true`, an ego vehicle's `Odometry` and the `LaserScan` of the 2D lidar it carries.

A straight two-way road (three lanes each way) with two zebra crossings and, at its middle, a
signalised junction with a cross street (`nodes.sim_junction`). Vehicles follow the Intelligent
Driver Model (IDM), change lanes when their lane is slower and the neighbouring lane has room, stop
for red, queue and start again, turn into and out of the cross street along curves, and yield to
pedestrians on a crosswalk. Pedestrians (`nodes.sim_walkers`) walk to a crossing, wait for their
signal (and for the cars on it to clear), cross and walk on. Cars enter at the ends of the roads and
leave at the other ends, pedestrians appear on a sidewalk and leave where their walk ends, so ids
come and go as in a real tracker's output. Each tick advances the world by exactly `1 / rate_hz`
seconds from a seeded generator, so the same seed gives the same traffic, whatever the machine's timing.

The ego (id `EGO_ID`) is one of the world's vehicles: others follow it and it follows them. At the
road's end it re-enters at the start (one jump in its pose per lap) instead of leaving. It is not in
`tracks` or `detections`: the lidar cannot see the car that carries it. With the lidar off there is
no ego and no extra random draw.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
from msgspec import Meta

from nodes.sim_cars import CAR_LEN, CAR_W, append_row, blocking, idm, leader_gaps, obey
from nodes.sim_junction import ARM_END, ARM_HALF, ARM_LANE, TURN_R, Junction, arc_pose, free_speed
from nodes.sim_lidar import SimLidar, returns_on, roadside
from nodes.sim_walkers import Walkers
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import AgentKind, Detections, LaserScan, Odometry, Tracks

__all__ = ["EGO_ID", "TrafficSim", "TrafficWorld"]

LANE_W = 3.5
LANES_PER_DIR = 3
ROAD_Y = LANES_PER_DIR * LANE_W  # the carriageway's edge
SIDEWALK_Y = ROAD_Y + 2.5
PED_R = 0.25  # the lidar's footprint of a pedestrian: a circle
LANE_CHANGE_S = 3.0
LOOK_S = 2.5  # how far ahead walkers and cars at a crosswalk look (s)
MIN_CHANGE_V, MAX_CHANGE_SLOPE = 3.0, math.tan(math.radians(15))  # lane changes: above 3 m/s, at most 15 deg
CROSS_STREET_SHARE, TURN_SHARE = 0.2, 0.4  # cars entering on the cross street; outer-lane cars that turn
EGO_ID = 0  # agents' ids start at 1
MAX_WARMUP_S = 1200.0  # the longest warm-up: a road too short for `agents` never fills
KERB_Y, WALL_Y = ROAD_Y + 0.8, SIDEWALK_Y + 3.0  # posts; walls and parked boxes inside them


class TrafficWorld:
    """The simulation state; `step()` advances it by `dt` seconds. Usable without a graph."""

    def __init__(self, agents: int = 32, pedestrian_fraction: float = 0.25, road_length_m: float = 300.0,
                 dt: float = 0.1, seed: int = 7, ego: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.dt = dt
        self.length = road_length_m
        self.target_veh = max(0, round(agents * (1 - pedestrian_fraction)))
        self.target_ped = max(0, agents - self.target_veh)
        self.crossings = np.array([road_length_m / 3, 2 * road_length_m / 3])
        self.junction = Junction(road_length_m / 2, LANE_W, LANES_PER_DIR, SIDEWALK_Y)
        self.walkers = Walkers(road_length_m, SIDEWALK_Y, self.crossings, self.junction)
        self.ped = self.walkers.ped
        self.next_id = 1
        # main-road vehicles: s (distance along travel direction), lane (0..2), dir (+1/-1), v, v0, y offset,
        # turn 1: turns into the cross street from the outer lane
        self.veh: dict[str, np.ndarray] = {k: np.zeros(0) for k in ("id", "s", "lane", "dir", "v", "v0", "y", "vy", "target", "turn")}
        self.t = 0.0  # the signal's clock
        self.ego = ego
        if ego:  # middle lane, eastbound, counted among the vehicles
            append_row(self.veh, {"id": EGO_ID, "s": 0.0, "lane": 1.0, "dir": 1.0, "v": 10.0, "v0": 13.0,
                               "y": 1.5 * LANE_W, "vy": 0.0, "target": 1.0, "turn": 0.0})
        # Warm up so the first message already shows traffic: 30 s, longer while fewer than 95% of the
        # agents are in (they enter only at the road's ends: 1,000 agents took 9 simulated minutes).
        for i in range(int(MAX_WARMUP_S / dt)):
            if i >= int(30 / dt) and self._count() >= 0.95 * agents:
                break
            self.step()

    def _count(self) -> int:
        return len(self.veh["s"]) + len(self.junction.cars["p"]) + len(self.ped["x"])

    # -- spawning ----------------------------------------------------------------------------
    def _spawn_vehicle(self) -> None:
        if self.rng.random() < CROSS_STREET_SHARE:
            if self.junction.spawn(self.rng, self.next_id):
                self.next_id += 1
            return
        d = self.rng.choice([-1.0, 1.0])
        lane = float(self.rng.integers(LANES_PER_DIR))
        same = (self.veh["dir"] == d) & (np.abs(self.veh["lane"] - lane) < 0.5)
        if same.any() and self.veh["s"][same].min() < 25.0:
            return  # the lane entry is occupied
        v0 = self.rng.uniform(10.0, 16.0) * (0.9 if lane == 0 else 1.0 + 0.1 * lane)
        turn = float(lane == LANES_PER_DIR - 1 and self.rng.random() < TURN_SHARE)
        append_row(self.veh, {"id": self.next_id, "s": 0.0, "lane": lane, "dir": d, "v": v0 * 0.8, "v0": v0,
                           "y": d * (lane + 0.5) * LANE_W, "vy": 0.0, "target": lane, "turn": turn})
        self.next_id += 1

    # -- dynamics ----------------------------------------------------------------------------
    def _crossing_gaps(self, s: np.ndarray, d: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance to a crosswalk with someone on the road in this vehicle's path (inf when clear)."""
        gap = np.full(len(s), np.inf)
        px, py = self.ped["x"], self.ped["y"]
        j = self.junction
        for cx in (*self.crossings, j.x - j.crosswalk_dx, j.x + j.crosswalk_dx):
            on = (np.abs(px - cx) < 2.5) & (np.abs(py) < ROAD_Y + 0.5)
            if not on.any():
                continue
            stop_s = np.where(d > 0, cx - 3.0, self.length - cx - 3.0)
            ahead = (stop_s - s > -1.0) & (stop_s - s < 60.0)
            # someone on this car's half of the road, or heading into it within LOOK_S, has the right of way
            side = np.sign(np.concatenate([py[on], py[on] + self.ped["vy"][on] * LOOK_S]))
            blocked = (side[None, :] == np.sign(y)[:, None]).any(axis=1) & ahead
            gap = np.where(blocked, np.minimum(gap, np.maximum(stop_s - s, 0.1)), gap)
        return gap

    def _walkers_ahead(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the pedestrians are and will be in LOOK_S: a turning car yields to both."""
        ped = self.ped
        return (np.concatenate([ped["x"], ped["x"] + ped["vx"] * LOOK_S]),
                np.concatenate([ped["y"], ped["y"] + ped["vy"] * LOOK_S]))

    def _along(self, d: float, x: np.ndarray) -> np.ndarray:
        """World x as distance travelled by a main-road car heading `d`."""
        return x if d > 0 else self.length - x

    def _turn_exit(self, d: float) -> tuple[float, float]:
        """Where a main-road car heading `d` ends its turn into the cross street."""
        j = self.junction
        return j.x - d * ARM_LANE, d * (j.outer_y + TURN_R)

    def step(self) -> None:
        dt, veh, j = self.dt, self.veh, self.junction
        if len(veh["s"]) + len(j.cars["p"]) < self.target_veh and self.rng.random() < 0.5:
            self._spawn_vehicle()
        if len(self.ped["x"]) < self.target_ped and self.rng.random() < 0.1:
            self.walkers.spawn(self.rng, self.next_id)
            self.next_id += 1
        main_light, cross_light, _ = j.phase(self.t)
        walkers = self._walkers_ahead()
        into_cross = self._step_main(main_light, walkers) if len(veh["s"]) else []
        onto_main = self._step_cross(cross_light, walkers) if len(j.cars["p"]) else []
        for row in into_cross:   # after both moved, so no car moves twice in a step
            append_row(j.cars, row)
        for row in onto_main:
            append_row(self.veh, row)
        _, x, y, _, vx, vy = self._all_vehicles(with_ego=True)
        # nobody steps out where a car is, or will be within LOOK_S
        cars = np.concatenate([np.stack([x, y], 1), np.stack([x + vx * LOOK_S, y + vy * LOOK_S], 1)])
        self.walkers.step(self.rng, dt, self.t, cars)
        self.t += dt

    def _step_main(self, light: str, walkers: tuple[np.ndarray, np.ndarray]) -> list[dict[str, float]]:
        """Move the main road's cars (`walkers`: `_walkers_ahead()`); those that turned off it, as rows
        for the cross street."""
        dt, veh, j = self.dt, self.veh, self.junction
        turning = veh["turn"] > 0
        car_gap, car_v = leader_gaps(veh["dir"] * 10 + veh["target"], veh["s"], veh["v"], veh["dir"] * 10 + veh["lane"])
        stop = np.minimum(self._crossing_gaps(veh["s"], veh["dir"], veh["y"]), j.stop_gap(light, j.main_stop - veh["s"], veh["v"]))
        cx, cy, _ = j.poses()
        for d in (-1.0, 1.0):   # a cross-street car still in the box
            mine = veh["dir"] == d
            stop[mine] = np.minimum(stop[mine], blocking(veh["s"][mine], veh["y"][mine], self._along(d, cx), cy))
        for d in (-1.0, 1.0):   # turners yield to whoever is on, or about to reach, the crosswalk their turn crosses
            if j.turn_blocked(*walkers, *self._turn_exit(d)):
                mine = turning & (veh["dir"] == d)
                stop = np.where(mine, np.minimum(stop, j.turn_stop(veh["s"] - j.main_arc)), stop)
        gap, lead_v = obey(car_gap, car_v, stop)
        acc = idm(veh["v"], free_speed(veh["v0"], j.main_arc - veh["s"], turning), gap, lead_v)
        # Lane change (simplified MOBIL): when moving behind a slower car (not a red light), try a
        # neighbour lane that is free 20 m ahead and 10 m behind. Turners keep to the outer lane.
        settled = (np.abs(veh["lane"] - veh["target"]) < 1e-6) & ~turning & (veh["v"] > MIN_CHANGE_V)
        want = settled & (car_gap < 40.0) & (car_v < veh["v0"] - 2.0) & (self.rng.random(len(gap)) < 0.05)
        for i in np.flatnonzero(want):
            for cand in (veh["lane"][i] + 1, veh["lane"][i] - 1):
                if not 0 <= cand < LANES_PER_DIR:
                    continue
                other = (veh["dir"] == veh["dir"][i]) & ((np.abs(veh["target"] - cand) < 0.5) | (np.abs(veh["lane"] - cand) < 0.5))
                ds = veh["s"][other] - veh["s"][i]
                if not np.any((ds > -10.0) & (ds < 20.0)):
                    veh["target"][i] = cand
                    break
        veh["v"] = np.maximum(0.0, veh["v"] + acc * dt)
        veh["s"] = veh["s"] + veh["v"] * dt
        # lateral motion towards the target lane centre, at most one lane per LANE_CHANGE_S
        y_target = veh["dir"] * (veh["target"] + 0.5) * LANE_W
        lateral = np.minimum(LANE_W / LANE_CHANGE_S * 1.5, veh["v"] * MAX_CHANGE_SLOPE)   # a car steers, not slides
        veh["vy"] = np.clip((y_target - veh["y"]) / 0.8, -lateral, lateral)
        veh["y"] = veh["y"] + veh["vy"] * dt
        arrived = np.abs(y_target - veh["y"]) < 0.05
        veh["lane"] = np.where(arrived, veh["target"], veh["lane"])
        if self.ego:
            self._ego_lap()
        turned = turning & (veh["s"] - j.main_arc >= j.ARC_LEN)
        rows = [{"id": veh["id"][i], "dir": veh["dir"][i], "p": j.outer_y + TURN_R + veh["s"][i] - j.main_arc - j.ARC_LEN,
                 "v": veh["v"][i], "v0": veh["v0"][i], "turn": 0.0} for i in np.flatnonzero(turned)]
        keep = (veh["s"] <= self.length) & ~turned
        for k in veh:
            veh[k] = veh[k][keep]
        return rows   # on the cross street now, driving away from the junction

    def _step_cross(self, light: str, walkers: tuple[np.ndarray, np.ndarray]) -> list[dict[str, float]]:
        """Move the cross street's cars (`walkers` as for `_step_main`); those that turned onto the main
        road, as its rows."""
        dt, j = self.dt, self.junction
        c = j.cars
        turning = c["turn"] > 0
        gap, lead_v = leader_gaps(c["dir"], c["p"], c["v"])
        blocked = np.zeros(len(gap), bool)
        for d in (-1.0, 1.0):   # a turn onto the main road ends in its outer lane, heading -d's way
            exit_xy = (j.x - d * (ARM_LANE + TURN_R), -d * j.outer_y)
            blocked |= (c["dir"] == d) & turning & j.turn_blocked(*walkers, *exit_xy)
        stop = np.minimum(j.stop_gap(light, j.arm_stop - c["p"], c["v"]),
                          j.yield_gap(self.ped["x"], self.ped["y"], c["p"], c["dir"], blocked))
        _, mx, my, _, _, _ = self._all_vehicles(with_ego=True)
        for d in (-1.0, 1.0):   # a main-road car still in the box (a queue beyond it holds it there)
            mine = c["dir"] == d
            stop[mine] = np.minimum(stop[mine], blocking(c["p"][mine], np.full(int(mine.sum()), j.x - d * ARM_LANE), d * my, mx))
        gap, lead_v = obey(gap, lead_v, stop)
        acc = idm(c["v"], free_speed(c["v0"], j.arm_arc - c["p"], turning), gap, lead_v)
        c["v"] = np.maximum(0.0, c["v"] + acc * dt)
        c["p"] = c["p"] + c["v"] * dt
        turned = turning & (c["p"] - j.arm_arc >= j.ARC_LEN)
        outer = LANES_PER_DIR - 1.0
        rows = [{"id": c["id"][i], "s": j.x + ARM_LANE + TURN_R + c["p"][i] - j.arm_arc - j.ARC_LEN, "lane": outer,
                 "dir": -c["dir"][i], "v": c["v"][i], "v0": max(c["v0"][i], 10.0), "y": -c["dir"][i] * j.outer_y,
                 "vy": 0.0, "target": outer, "turn": 0.0} for i in np.flatnonzero(turned)]
        keep = (c["p"] <= ARM_END) & ~turned
        for k in c:
            c[k] = c[k][keep]
        return rows   # on the main road now: its outer lane, eastbound from the north, westbound from the south

    def _ego_lap(self) -> None:
        """Past the road's end the ego re-enters at its start, behind whoever is entering its lane."""
        veh = self.veh
        i = int(np.flatnonzero(veh["id"] == EGO_ID)[0])
        if veh["s"][i] <= self.length:
            return
        lane = (veh["dir"] == veh["dir"][i]) & (np.abs(veh["target"] - veh["target"][i]) < 0.5) & (veh["id"] != EGO_ID)
        entering = veh["s"][lane][veh["s"][lane] < 25.0]
        veh["s"][i] = min(veh["s"][i] - self.length, entering.min() - 25.0 if len(entering) else 0.0)

    def _vehicles(self) -> dict[str, np.ndarray]:
        """The main-road vehicles other than the ego."""
        if not self.ego:
            return self.veh
        keep = self.veh["id"] != EGO_ID
        return {k: a[keep] for k, a in self.veh.items()}

    def _pose(self, veh: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, heading, vx, vy of main-road vehicles; a stopped car keeps its lane's direction."""
        x = np.where(veh["dir"] > 0, veh["s"], self.length - veh["s"])
        h = np.arctan2(veh["vy"], veh["dir"] * np.maximum(veh["v"], 0.1))
        vx, vy = veh["dir"] * veh["v"], veh["vy"]
        u = veh["s"] - self.junction.main_arc
        on_arc = (veh["turn"] > 0) & (u >= 0)
        if on_arc.any():
            x0 = np.where(veh["dir"] > 0, self.junction.main_arc, self.length - self.junction.main_arc)
            ax, ay, ah = arc_pose(x0, veh["y"], np.where(veh["dir"] > 0, 0.0, math.pi), np.maximum(u, 0.0))
            x, h = np.where(on_arc, ax, x), np.where(on_arc, ah, h)
            y = np.where(on_arc, ay, veh["y"])
            vx, vy = np.where(on_arc, veh["v"] * np.cos(ah), vx), np.where(on_arc, veh["v"] * np.sin(ah), vy)
            return x, y, h, vx, vy
        return x, veh["y"], h, vx, vy

    def _all_vehicles(self, with_ego: bool = False) -> tuple[np.ndarray, ...]:
        """(ids, x, y, heading, vx, vy) of every vehicle but the ego (unless `with_ego`): the main
        road's, then the cross street's."""
        veh, c = self.veh if with_ego else self._vehicles(), self.junction.cars
        cx, cy, ch = self.junction.poses()
        parts = (self._pose(veh), (cx, cy, ch, c["v"] * np.cos(ch), c["v"] * np.sin(ch)))
        ids = np.concatenate([veh["id"], c["id"]])
        return (ids, *(np.concatenate([a[i] for a in parts]) for i in range(5)))

    def ego_state(self) -> tuple[float, float, float, float, float]:
        """(x, y, yaw, vx, vy) of the ego in the world."""
        i = np.flatnonzero(self.veh["id"] == EGO_ID)
        x, y, yaw, vx, vy = (float(a[i][0]) for a in self._pose(self.veh))
        return x, y, yaw, vx, vy

    def shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """The moving agents as lidar shapes: vehicle boxes float64[V, 5], pedestrian circles float64[P, 3]."""
        _, x, y, yaw, _, _ = self._all_vehicles()
        boxes = np.stack([x, y, yaw, np.full(len(x), CAR_LEN / 2), np.full(len(x), CAR_W / 2)], 1)
        circles = np.stack([self.ped["x"], self.ped["y"], np.full(len(self.ped["x"]), PED_R)], 1)
        return boxes.reshape(-1, 5), circles.reshape(-1, 3)

    def tracks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, xy, vxy, kind) of every agent but the ego, in world coordinates (x east)."""
        vid, x, y, _, vx, vy = self._all_vehicles()
        ped = self.ped
        ids = np.concatenate([vid, ped["id"]]).astype(np.int64)
        xy = np.concatenate([np.stack([x, y], 1), np.stack([ped["x"], ped["y"]], 1)]).reshape(-1, 2)
        vxy = np.concatenate([np.stack([vx, vy], 1), np.stack([ped["vx"], ped["vy"]], 1)]).reshape(-1, 2)
        kind = np.concatenate([np.full(len(vid), AgentKind.VEHICLE), np.full(len(ped["id"]), AgentKind.PEDESTRIAN)])
        return ids, xy.astype(np.float32), vxy.astype(np.float32), kind.astype(np.uint8)


class TrafficSim(Node):
    """Publishes the simulated world on `tracks` (truth) and `detections` (noisy, with misses); with
    `lidar`, also the ego's pose on `ego`, its lidar's scan on `scan`, and on `visible` the truth rows
    the scan put a return on (what a lidar tracker can be expected to see), at the same stamp."""

    class Params(NodeParams):
        agents: Annotated[int, Meta(ge=1)] = 32  # 0 would run a graph that scores nothing
        pedestrian_fraction: float = 0.25
        rate_hz: Annotated[float, Meta(gt=0)] = 10.0
        seed: int = 7
        road_length_m: float = 300.0
        detection_noise_m: float = 0.3
        miss_rate: float = 0.05
        max_ticks: int = 0  # stop after this many messages (0: run until stopped)
        lidar: bool = False  # an ego vehicle (one of `agents`) carrying a 2D lidar: `ego` and `scan` outputs
        lidar_beams: Annotated[int, Meta(ge=4, le=100_000)] = 360  # over a full turn, one scan per tick
        lidar_range_min_m: Annotated[float, Meta(ge=0)] = 0.1
        lidar_range_max_m: Annotated[float, Meta(gt=0)] = 60.0
        lidar_noise_m: Annotated[float, Meta(ge=0)] = 0.02  # standard deviation of the range noise
        lidar_dropout: Annotated[float, Meta(ge=0, le=1)] = 0.01  # share of hits that return nothing (NaN)
        lidar_offset: tuple[float, float, float] = (1.0, 0.0, 0.0)  # x, y (m), yaw (rad) of `laser` in `ego`

        def __post_init__(self) -> None:
            if self.lidar_range_min_m >= self.lidar_range_max_m:
                raise ValueError(f"lidar_range_min_m: expected < lidar_range_max_m ({self.lidar_range_max_m}), "
                                 f"got {self.lidar_range_min_m}")

    params: Params

    outputs = {"tracks": Tracks, "detections": Detections, "ego": Odometry, "scan": LaserScan, "visible": Tracks}

    def setup(self) -> None:
        p = self.params
        self.world = TrafficWorld(p.agents, p.pedestrian_fraction, p.road_length_m, 1.0 / p.rate_hz, p.seed, p.lidar)
        self.noise = np.random.default_rng(p.seed + 1)
        if p.lidar:
            self.lidar = SimLidar(p.lidar_beams, p.lidar_range_min_m, p.lidar_range_max_m, p.lidar_noise_m,
                                  p.lidar_dropout, np.random.default_rng(p.seed + 2))
            j = self.world.junction
            walks = np.array([*self.world.crossings, j.x - j.crosswalk_dx, j.x + j.crosswalk_dx])
            self.static = roadside(p.road_length_m, KERB_Y, WALL_Y, walks, np.random.default_rng(p.seed + 3),
                                   opening=(j.x - ARM_HALF - 1.0, j.x + ARM_HALF + 1.0))
            self.last_yaw: float | None = None
        self.ticks = 0
        self.every(1.0 / p.rate_hz, self.tick)

    def tick(self) -> None:
        self.world.step()
        ids, xy, vxy, kind = self.world.tracks()
        stamp = self.now_ns()
        self.publish("tracks", Tracks(stamp_ns=stamp, frame_id="map", ids=ids, xy=xy, vxy=vxy, kind=kind))
        seen = self.noise.random(len(ids)) >= self.params.miss_rate
        noisy = xy[seen] + self.noise.normal(0, self.params.detection_noise_m, (int(seen.sum()), 2))
        score = np.clip(self.noise.normal(0.85, 0.1, int(seen.sum())), 0, 1)
        k, v = kind[seen], vxy[seen]
        car = k == AgentKind.VEHICLE
        self.publish("detections", Detections(
            stamp_ns=stamp, frame_id="map", xy=noisy, kind=k, score=score, ids=np.full(len(k), -1),
            length=np.where(car, 4.5, 0.5), width=np.where(car, 1.9, 0.5), heading=np.arctan2(v[:, 1], v[:, 0]),
            observed=np.where(car, Detections.OBSERVED_LENGTH | Detections.OBSERVED_WIDTH | Detections.OBSERVED_HEADING, 0)))
        if self.params.lidar:
            self.sense(Tracks(stamp_ns=stamp, frame_id="map", ids=ids, xy=xy, vxy=vxy, kind=kind))
        self.diagnostics["agents"] = float(len(ids))
        self.ticks += 1
        if self.params.max_ticks and self.ticks >= self.params.max_ticks:
            self.stop("max_ticks reached")

    def sense(self, truth: Tracks) -> None:
        """Publish the ego's pose, the scan its lidar takes from that pose, and which of `truth` it saw."""
        stamp = truth.stamp_ns
        x, y, yaw, vx, vy = self.world.ego_state()
        rate = 0.0 if self.last_yaw is None else math.remainder(yaw - self.last_yaw, math.tau) * self.params.rate_hz
        self.last_yaw = yaw
        c, s = math.cos(yaw), math.sin(yaw)
        self.publish("ego", Odometry(  # twist in the ego's own frame, as in ROS
            stamp_ns=stamp, frame_id="map", child_frame_id="ego", position=np.array([x, y, 0.0]),
            orientation=np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]),
            linear=np.array([c * vx + s * vy, c * vy - s * vx, 0.0]), angular=np.array([0.0, 0.0, rate])))
        ox, oy, oyaw = self.params.lidar_offset
        boxes, circles = self.world.shapes()
        pose = (x + c * ox - s * oy, y + s * ox + c * oy, yaw + oyaw)
        ranges = self.lidar.scan(pose, np.concatenate([boxes, self.static[0]]), np.concatenate([circles, self.static[1]]))
        lidar = self.lidar
        self.publish("scan", LaserScan(
            stamp_ns=stamp, frame_id="laser", angle_min=lidar.angle_min, angle_increment=lidar.angle_increment,
            time_increment=0.0, range_min=lidar.range_min, range_max=lidar.range_max, ranges=ranges))
        self.diagnostics["lidar_returns"] = float(np.count_nonzero(np.isfinite(ranges)))
        seen = returns_on(ranges.astype(np.float64), pose, lidar.angle_min, lidar.angle_increment, boxes, circles,
                          margin=4 * self.params.lidar_noise_m + 0.02) > 0   # shapes in tracks' row order
        self.publish("visible", Tracks(stamp_ns=stamp, frame_id="map", ids=truth.ids[seen], xy=truth.xy[seen],
                                       vxy=truth.vxy[seen], kind=truth.kind[seen]))

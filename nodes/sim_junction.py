"""The simulator's signalised junction: a two-lane cross street meets the main road at its middle.

Traffic drives on the left (the main road's eastbound lanes are at +y), so a turn into or out of the
cross street is a left turn along a quarter circle that crosses no oncoming lane: eastbound cars in
the outer lane turn north, westbound ones south, and cross-street cars turn onto the main road's
outer lane or go straight across. A fixed-time signal (CYCLE_S) gives the main road green, amber and
all-red, then the cross street the same; cars stop for red and for an amber they can stop for, so
queues form and start again. Pedestrians walk to a crossing, wait there for their walk signal (the
main road's green lets them across the cross street, the cross street's green across the main road)
and go on along the far sidewalk; cars yield to whoever is on a crosswalk in their path.
"""

from __future__ import annotations

import math

import numpy as np

from nodes.sim_cars import append_row

__all__ = ["Junction", "arc_pose", "free_speed"]

CYCLE_S = 60.0
MAIN_GREEN_S, CROSS_GREEN_S, AMBER_S, ALL_RED_S = 25.0, 25.0, 3.0, 2.0
WALK_MAIN_S, WALK_CROSS_S = 17.0, 8.0  # how long into its green a walk signal lets people start
ARM_LANE = 1.75   # a cross-street lane's centre from the cross street's axis (one lane each way)
ARM_HALF = 3.5    # the cross street's half width
ARM_END = 70.0    # its ends, |y| (m)
TURN_R = 5.0      # radius of every turn (m)
V_TURN = 5.0      # speed through a turn (m/s)
BRAKE_AMBER, BRAKE_RED = 3.0, 7.0  # decelerations (m/s^2) a car accepts to stop for amber, for red


def arc_pose(x0: np.ndarray, y0: np.ndarray, h0: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose after `u` metres along a left turn of radius TURN_R from (x0, y0) heading h0."""
    phi = u / TURN_R
    cx, cy = x0 - TURN_R * np.sin(h0), y0 + TURN_R * np.cos(h0)
    return cx + TURN_R * np.sin(h0 + phi), cy - TURN_R * np.cos(h0 + phi), h0 + phi


class Junction:
    """The junction at x = `x` of a main road of `lanes` lanes of `lane_w` each way, sidewalks at
    +-`sidewalk_y`: its signal, its crosswalks and the cars on its cross street (`cars`)."""

    ARC_LEN = math.pi * TURN_R / 2

    def __init__(self, x: float, lane_w: float, lanes: int, sidewalk_y: float) -> None:
        self.x = x
        self.outer_y = (lanes - 0.5) * lane_w    # the main road's outer lane, where turns start and end
        self.sidewalk_y = sidewalk_y
        self.crosswalk_dx = ARM_HALF + 3.0        # the crosswalks over the main road, either side of the axis
        self.main_stop = x - self.crosswalk_dx - 3.0   # the main road's stop line, as distance travelled
        self.main_arc = x - ARM_LANE - TURN_R      # where a main-road car's turn starts, likewise
        self.arm_arc = -(self.outer_y + TURN_R)    # and a cross-street car's, as progress (below)
        self.arm_stop = -(sidewalk_y + 3.0)
        # Cross-street cars: dir +1 northbound (x = x - ARM_LANE), -1 southbound; p: progress along the
        # direction of travel, dir * y; turn 1: turns onto the main road at arm_arc.
        self.cars: dict[str, np.ndarray] = {k: np.zeros(0) for k in ("id", "dir", "p", "v", "v0", "turn")}

    # -- the signal ----------------------------------------------------------------------------
    @staticmethod
    def phase(t: float) -> tuple[str, str, float]:
        """(main road's light, cross street's light, seconds into the current green) at time t."""
        c = t % CYCLE_S
        cross_start = MAIN_GREEN_S + AMBER_S + ALL_RED_S
        if c < MAIN_GREEN_S:
            return "green", "red", c
        if c < MAIN_GREEN_S + AMBER_S:
            return "amber", "red", math.inf
        if c < cross_start:
            return "red", "red", math.inf
        if c < cross_start + CROSS_GREEN_S:
            return "red", "green", c - cross_start
        if c < cross_start + CROSS_GREEN_S + AMBER_S:
            return "red", "amber", math.inf
        return "red", "red", math.inf

    def walk(self, t: float) -> tuple[bool, bool]:
        """May people start over (the cross street, the main road) now?"""
        main, cross, into = self.phase(t)
        return main == "green" and into < WALK_MAIN_S, cross == "green" and into < WALK_CROSS_S

    @staticmethod
    def stop_gap(light: str, dist: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Gap to a stop line `dist` ahead for cars at speed `v`: inf where the light lets them on
        (green, or a car too close to stop at the deceleration it accepts)."""
        if light == "green":
            return np.full(len(dist), np.inf)
        can_stop = dist >= v * v / (2 * (BRAKE_AMBER if light == "amber" else BRAKE_RED))
        return np.where((dist > -0.5) & can_stop, np.maximum(dist, 0.1), np.inf)

    # -- cross-street cars -------------------------------------------------------------------------
    def poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y and heading of the cross-street cars."""
        c = self.cars
        x = self.x - c["dir"] * ARM_LANE
        y = c["dir"] * c["p"]
        h = c["dir"] * math.pi / 2
        u = c["p"] - self.arm_arc
        on_arc = (c["turn"] > 0) & (u >= 0)
        ax, ay, ah = arc_pose(x, c["dir"] * self.arm_arc, h, np.maximum(u, 0.0))
        return np.where(on_arc, ax, x), np.where(on_arc, ay, y), np.where(on_arc, ah, h)

    def spawn(self, rng: np.random.Generator, car_id: int) -> bool:
        """Try to start a car at one end of the cross street; False when that entry is occupied."""
        d = rng.choice([-1.0, 1.0])
        c = self.cars
        if np.any((c["dir"] == d) & (c["p"] < -ARM_END + 20.0)):
            return False
        v0 = rng.uniform(8.0, 12.0)
        append_row(self.cars, {"id": car_id, "dir": d, "p": -ARM_END, "v": v0 * 0.8, "v0": v0,
                               "turn": float(rng.random() < 0.5)})
        return True

    def yield_gap(self, ped_x: np.ndarray, ped_y: np.ndarray, car_p: np.ndarray, car_dir: np.ndarray,
                  turn_blocked: np.ndarray) -> np.ndarray:
        """Gap to the next crosswalk someone is on, for cross-street cars (inf when clear); turning cars
        (`turn_blocked`: whose turn crosses an occupied crosswalk) stop before their turn, or within it
        short of the crosswalk at its end."""
        gap = np.full(len(car_p), np.inf)
        on_arm = np.abs(ped_x - self.x) < ARM_HALF + 0.5
        for side in (-1.0, 1.0):   # the crosswalks at y = +-sidewalk_y
            walkers = on_arm & (np.abs(ped_y - side * self.sidewalk_y) < 1.5)
            if not walkers.any():
                continue
            pc = car_dir * side * self.sidewalk_y    # the crosswalk as progress of each car
            ahead = (pc - car_p > 1.0) & (pc - car_p < 40.0)
            gap = np.where(ahead, np.minimum(gap, np.maximum(pc - 2.5 - car_p, 0.1)), gap)
        out: np.ndarray = np.minimum(gap, np.where(turn_blocked, self.turn_stop(car_p - self.arm_arc), np.inf))
        return out

    def turn_stop(self, u: np.ndarray) -> np.ndarray:
        """Gap to where a car `u` metres into its turn (negative: before it) stops for the crosswalk the
        turn ends on: the turn's start, or, once in it, a car length short of its end (inf past that)."""
        short = self.ARC_LEN - 2.5
        return np.where(u <= 0.5, np.maximum(-u, 0.1), np.where(u < short, np.maximum(short - u, 0.1), np.inf))

    def turn_blocked(self, ped_x: np.ndarray, ped_y: np.ndarray, exit_x: float, exit_y: float) -> bool:
        """Is someone on the crosswalk a turn ending at (exit_x, exit_y) crosses near its end?"""
        if abs(exit_x - self.x) < ARM_HALF:   # the turn ends on the cross street: its crosswalk
            near = (np.abs(ped_x - self.x) < ARM_HALF + 0.5) & (np.abs(ped_y - math.copysign(self.sidewalk_y, exit_y)) < 1.5)
        else:                                  # it ends on the main road: the crosswalk over it
            cw = self.x + math.copysign(self.crosswalk_dx, exit_x - self.x)
            near = (np.abs(ped_x - cw) < 1.5) & (np.abs(ped_y - exit_y) < 2.5)
        return bool(near.any())


def free_speed(v0: np.ndarray, dist: np.ndarray, turning: np.ndarray) -> np.ndarray:
    """Desired speed: `v0`, or for a car `dist` metres before its turn, slowing at 1.5 m/s^2 to V_TURN."""
    slow = np.maximum(V_TURN, np.sqrt(V_TURN ** 2 + 3.0 * np.maximum(dist, 0.0)))
    return np.where(turning, np.minimum(v0, slow), v0)

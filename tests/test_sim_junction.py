"""The simulator's signalised junction: lights that never give two conflicting greens, cars that stop
for red, queue and go again, turns along curves, pedestrians who wait for their walk signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.sim import ROAD_Y, TrafficSim, TrafficWorld
from nodes.sim_junction import AMBER_S, ARM_END, ARM_HALF, CYCLE_S, MAIN_GREEN_S, Junction
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind

DT = 0.1


def run_world(seconds: float, seed: int = 3, agents: int = 48) -> tuple[TrafficWorld, list[dict[int, tuple]], list[float]]:
    """Each step's {id: (x, y, vx, vy, kind)} and the signal clock at it."""
    world = TrafficWorld(agents=agents, seed=seed, dt=DT)
    steps, clock = [], []
    for _ in range(int(seconds / DT)):
        clock.append(world.t)   # the light the step obeyed
        world.step()
        ids, xy, vxy, kind = world.tracks()
        steps.append({int(i): (*p, *v, k) for i, p, v, k in zip(ids, xy.tolist(), vxy.tolist(), kind.tolist(), strict=True)})
    return world, steps, clock


@pytest.fixture(scope="module")
def traffic() -> tuple[TrafficWorld, list[dict[int, tuple]], list[float]]:
    return run_world(300.0)


def test_the_lights_never_show_two_greens_and_cycle() -> None:
    lights = [Junction.phase(t)[:2] for t in np.arange(0.0, 2 * CYCLE_S, DT)]
    assert all("red" in pair for pair in lights)            # one street at most may go
    assert {m for m, _ in lights} == {"green", "amber", "red"} == {c for _, c in lights}
    assert Junction.phase(5.0)[:2] == Junction.phase(5.0 + CYCLE_S)[:2]


def test_cars_stop_for_red_queue_and_go_on_green(traffic: tuple) -> None:
    world, steps, clock = traffic
    stop_x = world.junction.main_stop    # eastbound: distance travelled is x
    crossed_late, queued, restarted = 0, 0, 0
    for k in range(1, len(steps)):
        light, _, _ = Junction.phase(clock[k])
        red_for = (clock[k] % CYCLE_S) - MAIN_GREEN_S - AMBER_S   # seconds since the main road's amber ended
        for i, (x, y, _, _, kind) in steps[k].items():
            prev = steps[k - 1].get(i)
            if kind != AgentKind.VEHICLE or prev is None or not 0 < y < ROAD_Y:
                continue
            if prev[0] < stop_x <= x and light == "red" and red_for > 2.0:
                crossed_late += 1
        if light == "red" and abs(red_for - 20.0) < DT / 2:   # late in the red: a standing queue
            queued += sum(1 for x, y, vx, vy, kind in steps[k].values()
                          if kind == AgentKind.VEHICLE and 0 < y < ROAD_Y and stop_x - 40 < x < stop_x and math.hypot(vx, vy) < 0.1)
        if light == "green" and abs(clock[k] % CYCLE_S - 8.0) < DT / 2:   # 8 s into the green
            restarted += sum(1 for x, y, vx, vy, kind in steps[k].values()
                             if kind == AgentKind.VEHICLE and 0 < y < ROAD_Y and stop_x - 30 < x < stop_x + 30 and vx > 2.0)
    assert crossed_late == 0
    assert queued >= 5 and restarted >= 5


def test_turning_cars_follow_curves_without_jumps(traffic: tuple) -> None:
    world, steps, _ = traffic
    jx = world.junction.x
    into, out_of = 0, 0
    tracks: dict[int, list[tuple]] = {}
    for step in steps:
        for i, row in step.items():
            if row[4] == AgentKind.VEHICLE:
                tracks.setdefault(i, []).append(row)
    for rows in tracks.values():
        r = np.array(rows)
        moved = np.hypot(*np.diff(r[:, :2], axis=0).T)
        lateral = np.abs(np.diff(r[:, 3])) > 1.0   # a lane change starts at full lateral speed: not a jump
        assert np.all(np.abs(moved - np.hypot(r[:-1, 2], r[:-1, 3]) * DT)[~lateral] < 0.1)
        heading = np.unwrap(np.arctan2(r[:, 3], r[:, 2])[np.hypot(r[:, 2], r[:, 3]) > 1.0])
        if len(heading) and abs(heading[-1] - heading[0]) > math.radians(80):   # a quarter turn
            on_main_first = abs(r[0, 1]) < ROAD_Y
            into += on_main_first and abs(r[-1, 0] - jx) < ARM_HALF
            out_of += (not on_main_first) and abs(r[-1, 1]) < ROAD_Y
    assert into >= 3 and out_of >= 3


def test_cars_never_touch_and_steer_rather_than_slide(traffic: tuple) -> None:
    """No two cars' centres within 2 m; outside the junction's box a car heads within 15 degrees of its
    street (a lane change at walking pace used to move a car sideways at up to 87 degrees)."""
    world, steps, _ = traffic
    jx = world.junction.x
    for step in steps:
        cars = np.array([(x, y, vx, vy) for x, y, vx, vy, kind in step.values() if kind == AgentKind.VEHICLE])
        d = np.hypot(*(cars[:, None, :2] - cars[None, :, :2]).transpose(2, 0, 1))
        np.fill_diagonal(d, np.inf)
        assert d.min() >= 2.0
        moving = (np.hypot(cars[:, 2], cars[:, 3]) > 0.5) & ~((np.abs(cars[:, 0] - jx) < 12) & (np.abs(cars[:, 1]) < 20))
        angle = np.abs(np.arctan2(cars[moving, 3], cars[moving, 2]))
        off_axis = np.minimum(np.minimum(angle, np.pi - angle), np.abs(np.pi / 2 - angle))
        assert np.all(off_axis <= math.radians(15.5))


def test_nobody_walks_through_a_car(traffic: tuple) -> None:
    world, _, _ = traffic
    for _ in range(3000):   # 300 s more of the same world, pedestrians against every car's box
        world.step()
        boxes, people = world.shapes()
        rel = people[None, :, :2] - boxes[:, None, :2]                        # [V, P, 2]
        c, s = np.cos(boxes[:, 2])[:, None], np.sin(boxes[:, 2])[:, None]
        along, across = rel[..., 0] * c + rel[..., 1] * s, -rel[..., 0] * s + rel[..., 1] * c
        assert not np.any((np.abs(along) < boxes[:, 3:4]) & (np.abs(across) < boxes[:, 4:5]))


def test_pedestrians_wait_for_their_walk_signal_and_cross_on_it(traffic: tuple) -> None:
    world, steps, clock = traffic
    j = world.junction
    starts, waited = [], 0
    for k in range(1, len(steps)):
        for i, (x, y, vx, vy, kind) in steps[k].items():
            prev = steps[k - 1].get(i)
            if kind != AgentKind.PEDESTRIAN or prev is None:
                continue
            at_crosswalk = min(abs(x - j.x - j.crosswalk_dx), abs(x - j.x + j.crosswalk_dx)) < 1.5
            if at_crosswalk and abs(prev[1]) >= ROAD_Y > abs(y):   # steps onto the main road
                starts.append(clock[k])
            if at_crosswalk and abs(abs(y) - j.sidewalk_y) < 1.0 and math.hypot(vx, vy) < 0.2:
                waited += 1
    assert len(starts) >= 5 and waited >= 100
    # people step off the kerb only on their walk signal (or within the seconds it takes to reach the road)
    assert all(j.walk(t - 2.0)[1] or j.walk(t)[1] for t in starts)


def test_nothing_static_stands_in_the_cross_street() -> None:
    g = LocalGraph()
    sim = g.add("sim", TrafficSim, {"lidar": True, "seed": 5})
    g.start()
    try:
        boxes, posts = sim.static
        jx = sim.world.junction.x
        assert len(boxes) and len(posts)
        assert not np.any((np.abs(boxes[:, 0] - jx) < ARM_HALF + boxes[:, 3]) & (np.abs(boxes[:, 1]) < ARM_END))
        assert not np.any(np.abs(posts[:, 0] - jx) < ARM_HALF)
    finally:
        g.stop()

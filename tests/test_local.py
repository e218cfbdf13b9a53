"""In-process graphs: the same node classes, deterministic delivery on a manual clock."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.sim import TrafficSim
from pipeline.runtime.local import LocalGraph
from pipeline.runtime.node import Node
from pipeline.wire.messages import AgentKind, Detections, Message, Odometry, Tracks
from tests.graph_nodes import Relay


def run_sim(seed: int, seconds: float = 5.0) -> list[Tracks]:
    g = LocalGraph()
    g.add("sim", TrafficSim, {"agents": 24, "rate_hz": 10, "seed": seed})
    g.add("relay", Relay, inputs={"tracks": "sim/tracks"})
    g.start()
    g.advance_to(int(seconds * 1e9))
    return g.published["relay/tracks"]


def test_timers_fire_on_the_manual_clock_and_messages_flow_through_nodes() -> None:
    out = run_sim(7)
    assert len(out) == 50  # 10 Hz for 5 s
    assert [m.seq for m in out] == list(range(1, 51))
    assert out[0].stamp_ns == 100_000_000 and out[-1].stamp_ns == 5_000_000_000


def test_same_seed_gives_identical_traffic_and_another_seed_differs() -> None:
    a, b, c = run_sim(7), run_sim(7), run_sim(8)
    assert all(x == y for x, y in zip(a, b, strict=True))
    assert any(x != y for x, y in zip(a, c, strict=False))


def test_sim_has_vehicles_and_pedestrians_that_enter_and_leave() -> None:
    out = run_sim(3, seconds=60)
    kinds = np.concatenate([m.kind for m in out])
    assert {AgentKind.VEHICLE, AgentKind.PEDESTRIAN} <= set(kinds.tolist())
    ids_first, ids_last = set(out[0].ids.tolist()), set(out[-1].ids.tolist())
    assert ids_first - ids_last and ids_last - ids_first  # some left, some arrived
    for m in out:  # velocities agree with position changes (a consistent world)
        assert len(np.unique(m.ids)) == len(m.ids)
    v = np.linalg.norm(np.concatenate([m.vxy[m.kind == AgentKind.VEHICLE] for m in out]), axis=1)
    assert 3 < np.median(v) < 20


def test_received_arrays_are_read_only() -> None:
    g = LocalGraph()
    g.add("sim", TrafficSim, {"agents": 4})
    got: list[Tracks] = []
    relay = g.add("relay", Relay, inputs={"tracks": "sim/tracks"})
    relay.on_tracks = got.append  # type: ignore[method-assign]
    g.start()
    g.advance_to(200_000_000)
    assert got and not got[0].xy.flags.writeable
    with pytest.raises(ValueError):
        got[0].xy[0, 0] = 1.0


def test_unknown_input_is_an_error() -> None:
    with pytest.raises(KeyError, match="Relay has no input 'nope'"):
        LocalGraph().add("relay", Relay, inputs={"nope": "x/y"})


class _PassThrough(Node):
    """Every input arrives at on_input, except `tracks`, which has its own method."""

    inputs = {"tracks": Tracks, "detections": Detections, "odom": Odometry}

    def setup(self) -> None:
        self.got: list[tuple[str, str]] = []

    def on_tracks(self, msg: Tracks) -> None:
        self.got.append(("on_tracks", msg.SCHEMA))

    def on_input(self, name: str, msg: Message) -> None:
        self.got.append((name, msg.SCHEMA))


def test_inputs_without_their_own_method_arrive_at_on_input_with_their_name() -> None:
    g = LocalGraph()
    node = g.add("p", _PassThrough, inputs={"tracks": "s/tracks", "detections": "s/detections", "odom": "s/odom"})
    g.start()
    g.inject("s/detections", Detections())
    g.inject("s/tracks", Tracks(ids=np.zeros(0), xy=np.zeros((0, 2)), vxy=np.zeros((0, 2)), kind=np.zeros(0)))
    g.inject("s/odom", Odometry())
    g.spin()
    assert isinstance(node, _PassThrough)
    assert node.got == [("detections", "drivecast/Detections"), ("on_tracks", "drivecast/Tracks"),
                        ("odom", "drivecast/Odometry")]
    assert node.callback("tracks") == node.on_tracks


def test_a_node_with_an_input_it_cannot_receive_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Deaf declares input 'tracks' but has no on_tracks\(msg\) method "
                                        r"and no on_input\(name, msg\)"):
        type("Deaf", (Node,), {"inputs": {"tracks": Tracks}})


def test_the_input_name_input_is_reserved_for_on_input() -> None:
    with pytest.raises(TypeError, match=r"Odd: the input name 'input' is reserved"):
        type("Odd", (Node,), {"inputs": {"input": Tracks}, "on_input": lambda self, name, msg: None})


def test_a_tick_budget_skips_a_long_gap_like_a_stalled_node_and_counts_it() -> None:
    """Lockstep's gap bound: without it, a stamp ten years ahead fired a 10 Hz timer 3e9 times."""
    fired: list[int] = []

    def graph() -> LocalGraph:
        g = LocalGraph()
        n = g.add("relay", Relay)
        g.add_timer(n, 0.1, lambda: fired.append(g.now_ns()))
        g.start()
        return g

    g = graph()
    g.advance_to(50 * 10**8, max_ticks=100)  # 50 ticks: within the budget, every one fires
    assert fired == [i * 10**8 for i in range(1, 51)]
    assert "timer.skipped_gaps" not in g.stats["relay"].counts
    fired.clear()
    g = graph()
    g.advance_to(3 * 10**17, max_ticks=100)
    assert fired[:100] == [i * 10**8 for i in range(1, 101)] and fired[100:] == [3 * 10**17]
    assert g.stats["relay"].counts["timer.skipped_gaps"] == 1 and g.now_ns() == 3 * 10**17

"""`drivecast launch FILE --lockstep`: the graph in one process on a simulated clock, deterministic."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.launch import main as launch_main
from pipeline.runtime.lockstep_launch import START_NS, run_lockstep
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import Message, Tracks

REPO = Path(__file__).resolve().parents[1]

SIM_GRAPH = """
name: ls
nodes:
  sim: {run: nodes.sim:TrafficSim, params: {agents: 8, rate_hz: 10, seed: 3}}
  predictor:
    run: nodes.predictor:Predictor
    params: {models: {vehicle: MODELS/vehicle_lstm.onnx, pedestrian: MODELS/pedestrian_lstm.onnx}}
    inputs: {tracks: sim/tracks}
  evaluator:
    run: nodes.evaluator:Evaluator
    params: {report_s: 1}
    inputs: {predictions: predictor/predictions, truth: sim/tracks}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(text.replace("MODELS", str(REPO / "models" / "pretrained")))
    return path


def published(path: Path, duration_s: float) -> tuple[list[tuple[str, int, bytes]], str]:
    seen: list[tuple[str, int, bytes]] = []

    def sink(topic: str, frames: list[Any], t_ns: int, msg: Message) -> None:
        seen.append((topic, t_ns, b"".join(bytes(f) for f in frames)))

    out = io.StringIO()
    assert run_lockstep(load_graph(path), duration_s, lambda: False, out, sink) == 0
    return seen, out.getvalue()


def test_two_runs_publish_the_same_bytes_at_the_same_simulated_times(tmp_path: Path) -> None:
    path = write(tmp_path, SIM_GRAPH)
    a, text = published(path, 3.0)
    b, _ = published(path, 3.0)
    topics = {t for t, _, _ in a}
    assert {"sim/tracks", "predictor/predictions"} <= topics
    assert sum(t == "sim/tracks" for t, _, _ in a) == 30                  # 10 Hz for 3 simulated s
    assert max(t for _, t, _ in a) == START_NS + 3 * 10**9
    assert a == b
    assert "duration of 3 s reached: 3.0 simulated s" in text and "final accuracy" in text  # shutdown ran
    assert "\n[evaluator] INFO " in text     # what nodes log, as launch shows it


def test_a_node_that_stops_itself_ends_the_run(tmp_path: Path) -> None:
    path = write(tmp_path, SIM_GRAPH.replace("seed: 3}", "seed: 3, max_ticks: 12}"))
    seen, text = published(path, None)  # no duration: only the simulator's end stops it
    assert sum(t == "sim/tracks" for t, _, _ in seen) == 12
    assert "sim: max_ticks reached: 1.2 simulated s" in text


class Boom(Node):
    """Raises on its third message, and records that it was shut down all the same."""

    class Params(NodeParams):
        out: str

    inputs = {"tracks": Tracks}

    def setup(self) -> None:
        self.n = 0

    def on_tracks(self, msg: Tracks) -> None:
        self.n += 1
        if self.n == 3:
            raise RuntimeError("boom")

    def shutdown(self) -> None:
        Path(self.params.out).write_text(f"shut down after {self.n}")


def test_a_node_that_raises_fails_the_run_and_every_node_still_shuts_down(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
name: bad
nodes:
  ramp: {{run: tests.graph_nodes:Ramp, params: {{count: 5, per_tick: 1, period_s: 0.1}}}}
  boom: {{run: tests.test_lockstep_launch:Boom, params: {{out: {tmp_path}/a}}, inputs: {{tracks: ramp/tracks}}}}
  late: {{run: tests.test_lockstep_launch:Boom, params: {{out: {tmp_path}/b}}, inputs: {{tracks: ramp/tracks}}}}
""")
    out = io.StringIO()
    assert run_lockstep(load_graph(path), 10.0, lambda: False, out) == 1
    assert "a node raised at 0.300 s" in out.getvalue() and "RuntimeError: boom" in out.getvalue()
    assert (tmp_path / "a").read_text() == "shut down after 3" and (tmp_path / "b").exists()


def test_the_cli_runs_a_graph_for_a_simulated_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SIM_GRAPH)
    assert launch_main([str(path), "--lockstep", "--duration", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 nodes in lockstep" in out and "2.0 simulated s in" in out and "x real time" in out


def test_lockstep_refuses_topics_from_outside_and_a_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SIM_GRAPH)
    with pytest.raises(ConfigError, match=r"--lockstep: clock, sim/tracks would come from outside the graph; .*play FILE"):
        run_lockstep(load_graph(path, without=["sim"]), 1.0, lambda: False, io.StringIO())
    assert launch_main([str(path), "--lockstep", "--without", "sim"]) == 2
    assert "would come from outside" in capsys.readouterr().err
    assert launch_main([str(path), "--lockstep", "--machine", "a"]) == 2
    assert "--lockstep runs every node in one process" in capsys.readouterr().err


def test_a_stop_request_ends_the_run_with_every_node_shut_down(tmp_path: Path) -> None:
    path = write(tmp_path, SIM_GRAPH)
    calls = iter(range(10**6))
    out = io.StringIO()
    assert run_lockstep(load_graph(path), None, lambda: next(calls) >= 15, out) == 0   # Ctrl-C after 15 steps
    assert "stopped: 1.5 simulated s" in out.getvalue() and "final accuracy" in out.getvalue()

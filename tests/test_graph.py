"""Launch files: every class of error is reported with file and key before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph, parse_set
from tests.conftest import REPO

GOOD = """
name: t
nodes:
  sim: {run: nodes.sim:TrafficSim, params: {agents: 4}}
  printer: {run: nodes.printer:TrackPrinter, inputs: {tracks: sim/tracks}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(text)
    return p


def test_good_file_resolves_nodes_topics_and_edges(tmp_path: Path) -> None:
    g = load_graph(write(tmp_path, GOOD))
    assert list(g.nodes) == ["sim", "printer"]
    assert g.nodes["sim"].params.agents == 4
    assert g.topics["sim/tracks"].SCHEMA == "drivecast/Tracks"
    assert "printer/diagnostics" in g.topics
    assert g.subscribers["sim/tracks"] == [("printer", "tracks")]
    assert g.nodes["printer"].inputs["tracks"].queue == "drop_oldest"


def test_default_launch_file_is_valid() -> None:
    g = load_graph(REPO / "launch.yaml")
    assert g.nodes


@pytest.mark.parametrize("text, message", [
    ("nodes: [\n  a: b\n", r"launch.yaml: line \d+, column \d+: invalid YAML"),
    ("- 1\n- 2\n", r"launch.yaml: expected a mapping with a 'nodes' key, got list"),
    ("name: x\n", r"launch.yaml: missing required key 'nodes'"),
    ("nodes: {}\nfoo: 1\n", r"launch.yaml: unknown key 'foo'"),
    ("nodes: {}\n", r"launch.yaml: nodes: expected at least one node"),
    ("nodes:\n  a: {run: nodes.sim:TrafficSim, param: {}}\n", r"launch.yaml: nodes.a: unknown key 'param'"),
    ("nodes:\n  a: {run: nodes.nope:Sim}\n", r"launch.yaml: nodes.a.run: cannot import module 'nodes.nope'"),
    ("nodes:\n  a: {run: nodes.sim:Nope}\n", r"launch.yaml: nodes.a.run: 'nodes.sim' has no Node class 'Nope'"),
    ("nodes:\n  a: {run: nodes.sim}\n", r"launch.yaml: nodes.a.run: expected 'module:Class', got 'nodes.sim'"),
    ("nodes:\n  a: {run: nodes.sim:TrafficSim, params: {agentz: 3}}\n",
     r"launch.yaml: nodes.a.params: unknown key 'agentz'"),
    ("nodes:\n  a: {run: nodes.sim:TrafficSim, params: {rate_hz: fast}}\n",
     r"launch.yaml: nodes.a.params.rate_hz: expected float, got str"),
    ("nodes:\n  a: {run: nodes.printer:TrackPrinter, inputs: {tracks: sim/tracks}}\n",
     r"launch.yaml: nodes.a.inputs.tracks: unknown topic 'sim/tracks'"),
    ("nodes:\n  s: {run: nodes.sim:TrafficSim}\n  a: {run: nodes.printer:TrackPrinter, inputs: {tracks: s/detections}}\n",
     r"launch.yaml: nodes.a.inputs.tracks: topic 's/detections' carries drivecast/Detections, input 'tracks' expects drivecast/Tracks"),
    ("nodes:\n  s: {run: nodes.sim:TrafficSim}\n  a: {run: nodes.printer:TrackPrinter, inputs: {trax: s/tracks}}\n",
     r"launch.yaml: nodes.a.inputs.trax: nodes.printer:TrackPrinter has no input 'trax' \(inputs: tracks\)"),
    ("nodes:\n  s: {run: nodes.sim:TrafficSim}\n  a: {run: nodes.printer:TrackPrinter, inputs: {tracks: {topic: s/tracks, queue: fifo}}}\n",
     r"launch.yaml: nodes.a.inputs.tracks.queue: expected latest, drop_oldest or block, got 'fifo'"),
    ("nodes:\n  a: {run: tests.graph_nodes:Relay, inputs: {tracks: {topic: b/tracks, queue: block}}}\n"
     "  b: {run: tests.graph_nodes:Relay, inputs: {tracks: {topic: a/tracks, queue: block}}}\n",
     r"launch.yaml: nodes: cycle of 'block' inputs a -> b -> a"),
    ("nodes:\n  a: {run: nodes.sim:TrafficSim, respawn: {max: many}}\n",
     r"launch.yaml: nodes.a.respawn.max: expected int, got str"),
])
def test_each_error_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_graph(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read launch file: No such file"):
        load_graph(tmp_path / "nope.yaml")


def test_set_overrides_params_and_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    g = load_graph(path, parse_set(["sim.agents=9", "sim.rate_hz=2.5"]))
    assert g.nodes["sim"].params.agents == 9 and g.nodes["sim"].params.rate_hz == 2.5
    with pytest.raises(ConfigError, match=r"nodes.sim.params.agents: expected int, got str"):
        load_graph(path, parse_set(["sim.agents=many"]))
    with pytest.raises(ConfigError, match=r"--set ghost.\*: no node 'ghost'"):
        load_graph(path, parse_set(["ghost.x=1"]))
    with pytest.raises(ConfigError, match=r"--set 'agents=3': expected node.param=value"):
        parse_set(["agents=3"])


def test_a_longer_set_path_sets_one_entry_of_a_mapping_param(tmp_path: Path) -> None:
    """As ROS 2 nested parameter names: `predictor.models.vehicle=...` swaps one model, keeps the other
    (before, every key with a dot was an unknown param)."""
    models = REPO / "models" / "pretrained"
    path = tmp_path / "g.yaml"
    path.write_text(f"""
nodes:
  sim: {{run: nodes.sim:TrafficSim}}
  predictor:
    run: nodes.predictor:Predictor
    params: {{models: {{vehicle: {models}/vehicle_lstm.onnx, pedestrian: {models}/pedestrian_lstm.onnx}}}}
    inputs: {{tracks: sim/tracks}}
""")
    g = load_graph(path, parse_set([f"predictor.models.vehicle={models}/vehicle_lstm.int8.onnx"]))
    assert g.nodes["predictor"].params.models == {"vehicle": f"{models}/vehicle_lstm.int8.onnx",
                                                   "pedestrian": f"{models}/pedestrian_lstm.onnx"}
    with pytest.raises(ConfigError, match=r"^--set predictor.ttl_s.x: predictor.ttl_s is a float, not a mapping$"):
        load_graph(path, parse_set(["predictor.ttl_s=2.0", "predictor.ttl_s.x=1"]))
    with pytest.raises(ConfigError, match=r"nodes.predictor.params: models.vehicle: no such model file '/nope.onnx'"):
        load_graph(path, parse_set(["predictor.models.vehicle=/nope.onnx"]))


def test_cli_reports_config_errors_with_exit_code_2_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "nodes:\n  a: {run: nodes.sim:TrafficSim, params: {rate_hz: fast}}\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "launch", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"ERROR: {path}: nodes.a.params.rate_hz: expected float, got str"
    assert "Traceback" not in r.stdout + r.stderr


def test_graph_command_prints_nodes_topics_and_edges() -> None:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "graph", "launch.yaml"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "nodes:" in r.stdout and "topics:" in r.stdout and "edges:" in r.stdout
    assert "sim/tracks" in r.stdout


@pytest.mark.parametrize("name", ["../../tmp/x", "a/b", ""])
def test_graph_name_cannot_escape_the_run_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"launch.yaml: name: letters, digits, '_' and '-' only"):
        load_graph(write(tmp_path, f"name: {name!r}\n" + GOOD.split("\n", 2)[2]))


def test_non_loopback_machines_need_security_or_an_explicit_insecure(tmp_path: Path) -> None:
    text = "machines: {a: {host: 192.0.2.7}}\nnodes:\n  s: {run: nodes.sim:TrafficSim, machine: a}\n"
    with pytest.raises(ConfigError, match=r"machines.a.host: 192.0.2.7: plaintext tcp would let anyone on the "
                                          r"network connect; add security"):
        load_graph(write(tmp_path, text))
    assert load_graph(write(tmp_path, "insecure: true\n" + text)).machines == {"a": ("192.0.2.7", 7400)}

"""Nodes' declared param ranges: a value out of range is a launch-file error naming file, key, range and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.predictor import Predictor
from nodes.sim import TrafficSim
from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph, parse_set
from pipeline.runtime.local import LocalGraph


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(text)
    return p


SIM = "nodes.sim:TrafficSim"
PRED = "nodes.predictor:Predictor"
EVAL = "nodes.evaluator:Evaluator"


@pytest.mark.parametrize(("run", "params", "message"), [
    (SIM, "{rate_hz: 0}", "nodes.a.params.rate_hz: expected float > 0.0, got 0"),
    (SIM, "{rate_hz: -2.5}", "nodes.a.params.rate_hz: expected float > 0.0, got -2.5"),
    (SIM, "{agents: 0}", "nodes.a.params.agents: expected int >= 1, got 0"),
    (PRED, "{models: {vehicle: m.onnx}, capacity: 0}", "nodes.a.params.capacity: expected int >= 1, got 0"),
    (PRED, "{models: {vehicle: m.onnx}, min_obs: 0}", "nodes.a.params.min_obs: expected int >= 1, got 0"),
    (PRED, "{models: {vehicle: m.onnx}, ttl_s: 0}", "nodes.a.params.ttl_s: expected float > 0.0, got 0"),
    (PRED, "{models: {vehicle: m.onnx}, max_gap_steps: 0.5}", "nodes.a.params.max_gap_steps: expected float >= 1.0, got 0.5"),
    (PRED, "{models: {vehicle: m.onnx}, lag_s: -0.01}", "nodes.a.params.lag_s: expected float >= 0.0, got -0.01"),
    (PRED, "{models: {vehicle: m.onnx}, max_age_s: -1}", "nodes.a.params.max_age_s: expected float >= 0.0, got -1"),
    (PRED, "{models: {vehicle: m.onnx}, save_every_s: -1}", "nodes.a.params.save_every_s: expected float >= 0.0, got -1"),
    (PRED, "{models: {vehicle: m.onnx}, threads: 0}", "nodes.a.params.threads: expected int >= 1, got 0"),
    (EVAL, "{cv_ks: []}", "nodes.a.params.cv_ks: expected array of length >= 1, got []"),
    (EVAL, "{cv_ks: [1, 0]}", "nodes.a.params.cv_ks[1]: expected int >= 1, got 0"),
    ("nodes.printer:TrackPrinter", "{every_n: 0}", "nodes.a.params.every_n: expected int >= 1, got 0"),
])
def test_a_param_out_of_its_declared_range_names_file_key_and_range(
        tmp_path: Path, run: str, params: str, message: str) -> None:
    path = write(tmp_path, f"nodes:\n  a: {{run: {run}, params: {params}}}\n")
    with pytest.raises(ConfigError) as info:
        load_graph(path)
    assert str(info.value) == f"{path}: {message}"


def test_values_on_the_edge_of_a_declared_range_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
nodes:
  a: {{run: {SIM}, params: {{agents: 1, rate_hz: 0.001}}}}
  b: {{run: {PRED}, params: {{models: {{vehicle: models/pretrained/vehicle_lstm.onnx}}, capacity: 1, min_obs: 1, max_gap_steps: 1, lag_s: 0,
                              max_age_s: 0, save_every_s: 0, threads: 1}}}}
  c: {{run: {EVAL}, params: {{cv_ks: [1]}}}}
""")
    g = load_graph(path)
    assert g.nodes["a"].params.agents == 1 and g.nodes["b"].params.max_gap_steps == 1.0
    assert g.nodes["c"].params.cv_ks == (1,)


def test_an_in_process_graph_checks_params_like_a_launch_file() -> None:
    with pytest.raises(ConfigError, match=r"^sim: params\.rate_hz: expected float > 0\.0"):
        LocalGraph().add("sim", TrafficSim, {"rate_hz": 0})


def test_a_check_that_cannot_be_declared_stays_in_setup_with_its_message() -> None:
    g = LocalGraph()
    g.add("pred", Predictor, {})  # the default (no models) is valid to msgspec, not to the node
    with pytest.raises(ConfigError, match=r"^pred: params\.models: expected at least one 'kind: model.onnx' entry"):
        g.start()


def test_a_params_instance_built_in_code_is_checked_like_a_launch_file() -> None:
    # msgspec constructors do not validate: Params(rate_hz=0) must not slip past the declared range.
    with pytest.raises(ConfigError, match=r"^s: params.rate_hz: expected float > 0.0, got 0"):
        LocalGraph().add("s", TrafficSim, TrafficSim.Params(rate_hz=0))


def test_an_unknown_param_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, f"nodes:\n  a: {{run: {SIM}, params: {{speed: 3}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_graph(path)
    assert str(info.value) == (f"{path}: nodes.a.params: unknown key 'speed' (expected one of: agents, "
                               "pedestrian_fraction, rate_hz, seed, road_length_m, detection_noise_m, miss_rate, "
                               "max_ticks, lidar, lidar_beams, lidar_range_min_m, lidar_range_max_m, lidar_noise_m, "
                               "lidar_dropout, lidar_offset)")


def test_a_bad_value_from_set_names_the_set_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"nodes:\n  a: {{run: {SIM}}}\n")
    with pytest.raises(ConfigError, match=r"^--set a\.rate_hz=0: nodes\.a\.params\.rate_hz: expected float > 0\.0"):
        load_graph(path, parse_set(["a.rate_hz=0"]))
    with pytest.raises(ConfigError, match=r"^--set a\.speed=3: nodes\.a\.params: unknown key 'speed'"):
        load_graph(path, parse_set(["a.speed=3"]))


def test_a_params_own_check_on_a_set_value_names_the_set(tmp_path: Path) -> None:
    """The predictor's model-file check runs in its Params' __post_init__: the error named the launch
    file although the file named in it came from --set."""
    path = write(tmp_path, "nodes:\n  p: {run: nodes.predictor:Predictor}\n")
    with pytest.raises(ConfigError, match=r"^--set p\.models\.vehicle=/nope\.onnx: nodes\.p\.params: "
                                          r"models\.vehicle: no such model file '/nope\.onnx'"):
        load_graph(path, parse_set(["p.models.vehicle=/nope.onnx"]))


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_non_finite_param_is_refused_at_load(tmp_path: Path, value: str) -> None:
    # JSON carries params to each node process and cannot hold it: the node would die at start.
    path = write(tmp_path, f"nodes:\n  a: {{run: {SIM}, params: {{road_length_m: {value}}}}}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: nodes\.a\.params\.road_length_m: expected a finite number"):
        load_graph(path)

"""Files named by node params are checked with the launch file, before any node process starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from tests.conftest import REPO


def write(tmp_path: Path, models: str, evaluator: str = "") -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(f"""
nodes:
  sim: {{run: nodes.sim:TrafficSim}}
  pred:
    run: nodes.predictor:Predictor
    params: {{models: {models}}}
    inputs: {{tracks: sim/tracks}}
{evaluator}""")
    return p


def test_launch_with_a_missing_model_exits_2_naming_file_key_and_path_and_starts_no_node(
        tmp_path: Path, run_base: Path) -> None:
    missing = tmp_path / "no" / "vehicle.onnx"
    path = write(tmp_path, f"{{vehicle: {missing}}}")
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "launch", str(path), "--duration", "5"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == f"ERROR: {path}: nodes.pred.params: models.vehicle: no such model file '{missing}'"
    assert list(run_base.iterdir()) == []  # no run directory: the launcher started nothing
    assert "[launch]" not in r.stdout


def test_load_graph_names_the_kind_whose_model_is_missing(tmp_path: Path) -> None:
    model = REPO / "models" / "pretrained" / "vehicle_lstm.onnx"
    path = write(tmp_path, f"{{vehicle: {model}, pedestrian: {tmp_path / 'ped.onnx'}}}")
    with pytest.raises(ConfigError, match=r"launch\.yaml: nodes\.pred\.params: models\.pedestrian: "
                                          r"no such model file '.*/ped\.onnx'$"):
        load_graph(path)


def test_a_relative_model_path_is_resolved_as_the_node_resolves_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """From any working directory, models/pretrained is found under the install root; a relative path
    found nowhere names both places looked in."""
    monkeypatch.chdir(tmp_path)
    graph = load_graph(write(tmp_path, "{vehicle: models/pretrained/vehicle_lstm.onnx}"))
    assert graph.nodes["pred"].params.models == {"vehicle": "models/pretrained/vehicle_lstm.onnx"}
    with pytest.raises(ConfigError, match=rf"models\.vehicle: no such model file 'models/nope\.onnx' "
                                          rf"\(looked in {tmp_path} and {REPO}\)$"):
        load_graph(write(tmp_path, "{vehicle: models/nope.onnx}"))


def test_a_directory_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"models\.vehicle: no such model file '{tmp_path}'$"):
        load_graph(write(tmp_path, f"{{vehicle: {tmp_path}}}"))


def test_an_evaluator_plot_in_a_missing_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    model = REPO / "models" / "pretrained" / "vehicle_lstm.onnx"
    evaluator = f"""  eval:
    run: nodes.evaluator:Evaluator
    params: {{plot: {tmp_path / 'no' / 'paths.png'}}}
    inputs: {{predictions: pred/predictions, truth: sim/tracks}}
"""
    with pytest.raises(ConfigError, match=rf"nodes\.eval\.params: plot: no such directory '{tmp_path}/no' "
                                          r"to write '.*/no/paths\.png' in$"):
        load_graph(write(tmp_path, f"{{vehicle: {model}}}", evaluator))
    (tmp_path / "no").mkdir()
    assert load_graph(write(tmp_path, f"{{vehicle: {model}}}", evaluator)).nodes["eval"].params.plot


def test_a_player_with_no_recording_is_refused_at_load(tmp_path: Path) -> None:
    launch = tmp_path / "launch.yaml"
    launch.write_text(f"nodes:\n  player: {{run: nodes.player:Player, params: {{file: {tmp_path / 'nope.mcap'}}}}}\n")
    with pytest.raises(ConfigError, match=rf"^{launch}: nodes\.player\.params: file: no such recording '.*nope\.mcap'$"):
        load_graph(launch)
    launch.write_text(f"nodes:\n  player: {{run: nodes.player:Player, params: {{file: {launch}, rate: 0}}}}\n")
    with pytest.raises(ConfigError, match=r"nodes\.player\.params\.rate: expected float > 0\.0, got 0"):
        load_graph(launch)

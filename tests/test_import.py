"""models/drive_import.py: datasets as drives of Tracks at their native rate, byte-deterministic, and
replayed in lockstep through a predictor graph with identical prediction hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from models.drive_import import main as import_main
from pipeline.recordings.lockstep import lockstep
from pipeline.recordings.reader import open_recording
from pipeline.recordings.schedule import PlayOptions
from pipeline.wire.codec import decode
from pipeline.wire.messages import AgentKind, Predictions, Tracks
from tests.conftest import REPLAY_GRAPH

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCENES = {
    "eth-ucy": ("eth_ucy/zara1/val/crowds_zara02_val.txt", 0.4, AgentKind.PEDESTRIAN),
    "argoverse": ("argoverse1_forecasting/data/1000.csv", 0.1, AgentKind.VEHICLE),
    "apolloscape": ("apolloscape_trajectory/prediction_train/result_9049_3_frame.txt", 0.5, None),
}


def need(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.skip(f"dataset file {path} not present (../shared/data beside the checkout)")
    return path


def _tracks(path: Path) -> list[tuple[int, Tracks]]:
    with open_recording(path) as rec:
        return [(it.log_ns, decode(it.frames, expect=Tracks)[0]) for it in rec.items()]


@pytest.mark.parametrize("dataset", list(SCENES))
def test_import_writes_tracks_at_the_native_rate(dataset: str, tmp_path: Path) -> None:
    rel, dt_s, kind = SCENES[dataset]
    src = need(rel)
    out = tmp_path / "drive.mcap"
    assert import_main([dataset, str(src), "-o", str(out)]) == 0
    msgs = _tracks(out)
    assert len(msgs) > 10
    stamps = np.array([m.stamp_ns for _, m in msgs])
    assert np.all(np.diff(stamps) > 0) and [t for t, _ in msgs] == stamps.tolist()
    assert np.median(np.diff(stamps)) / 1e9 == pytest.approx(dt_s, rel=1e-3)
    for _, m in msgs:
        assert len(np.unique(m.ids)) == len(m.ids) > 0 and np.all(np.isfinite(m.xy)) and np.all(np.isfinite(m.vxy))
    speeds = np.concatenate([np.hypot(*m.vxy.T) for _, m in msgs])
    assert np.median(speeds) < (3.0 if kind == AgentKind.PEDESTRIAN else 40.0)
    if kind is not None:
        assert all(np.all((m.kind == kind) | (m.kind == AgentKind.UNKNOWN)) for _, m in msgs)
    again = tmp_path / "again.mcap"
    assert import_main([dataset, str(src), "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_import_of_a_directory_chains_scenes_with_unique_ids(tmp_path: Path) -> None:
    d = need("eth_ucy/zara1/val")
    out = tmp_path / "fold.mcap"
    assert import_main(["eth-ucy", str(d), "-o", str(out)]) == 0
    msgs = _tracks(out)
    scenes = {int(i) // 1_000_000 for _, m in msgs for i in m.ids}
    assert len(scenes) == len(list(d.glob("*.txt")))


def test_import_errors_name_the_path(tmp_path: Path, capsys) -> None:
    assert import_main(["eth-ucy", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.mcap")]) == 1
    assert "nope.txt: no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    assert import_main(["eth-ucy", str(bad), "-o", str(tmp_path / "x.mcap")]) == 1
    assert "bad.txt:1: expected 4 tab-separated columns" in capsys.readouterr().err


def _prediction_hash(drive: Path, launch: Path) -> tuple[str, float, int]:
    from pipeline.runtime.graph import load_graph

    h = hashlib.sha256()
    n = 0
    graph = load_graph(launch)

    def sink(topic: str, frames: list, log_ns: int, msg: object) -> None:
        nonlocal n
        if isinstance(msg, Predictions):
            n += 1
            for f in frames:
                h.update(bytes(f))

    with open_recording(drive) as rec:
        stats = lockstep(rec, graph, PlayOptions(), sink)
    return h.hexdigest(), stats.x_realtime, n


@pytest.mark.parametrize("predictor", ["cv", "lstm"])
def test_two_lockstep_replays_of_an_imported_scene_give_identical_predictions(predictor: str, tmp_path: Path) -> None:
    src = need(SCENES["eth-ucy"][0])
    if predictor == "cv":
        run, params = "tests.test_play:CvPredictor", "{}"
    else:
        model = REPO / "models" / "pretrained" / "pedestrian_lstm.onnx"
        if not model.exists():
            pytest.skip(f"{model} not present yet (shipped by the models work)")
        run, params = "nodes.predictor:Predictor", f"{{models: {{pedestrian: {model}}}, save_every_s: 0}}"
    drive = tmp_path / "eth.mcap"
    assert import_main(["eth-ucy", str(src), "-o", str(drive), "--no-foxglove"]) == 0
    launch = tmp_path / "launch.yaml"
    launch.write_text(REPLAY_GRAPH.format(file=drive, predictor=run, params=params))
    first, speed, n = _prediction_hash(drive, launch)
    second, _, _ = _prediction_hash(drive, launch)
    print(f"lockstep {predictor}: {n} Predictions, x{speed:.0f} real time")
    assert n > 100 and first == second
    assert speed > 20


def test_an_imported_scene_remapped_onto_the_default_graph_is_scored_and_a_misspelt_remap_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.recordings.replay import main as play_main

    src = need("eth_ucy/zara1/val")
    drive = tmp_path / "zara1.mcap"
    assert import_main(["eth-ucy", str(src), "-o", str(drive), "--no-foxglove"]) == 0
    launch = str(REPO / "launch.yaml")
    assert play_main([str(drive), "--lockstep", "--graph", launch, "--remap", "eth/tracks:=sim/tracks"]) != 0
    out, err = capsys.readouterr()
    assert "ERROR: --remap eth/tracks:=sim/tracks: " in err and "has no topic 'eth/tracks' (topics: eth_ucy/tracks)" in err
    assert "final accuracy" not in out
    real = f"predictor.models.pedestrian={REPO / 'models' / 'pretrained' / 'pedestrian_lstm.onnx'}"
    assert play_main([str(drive), "--lockstep", "--graph", launch, "--remap", "eth_ucy/tracks:=sim/tracks", "--set", real]) == 0
    out, err = capsys.readouterr()
    # the README's figures for this scene (the sim is replaced; the predictor and evaluator run)
    assert "pedestrian      6792   0.462   1.012" in out and "lockstep: 1117 messages in, 3335 deliveries" in err


def test_per_scene_import_writes_one_drive_per_scene_and_resumes(tmp_path: Path, capsys) -> None:
    src = tmp_path / "scenes"
    src.mkdir()
    for name in ("1000.csv", "1001.csv", "1002.csv"):
        (src / name).write_bytes(need(f"argoverse1_forecasting/data/{name}").read_bytes())
    out = tmp_path / "fleet"
    assert import_main(["argoverse", str(src), "-o", str(out), "--per-scene"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1000.mcap", "1001.mcap", "1002.mcap"]
    assert import_main(["argoverse", str(src / "1001.csv"), "-o", str(tmp_path / "one.mcap")]) == 0
    assert (out / "1001.mcap").read_bytes() == (tmp_path / "one.mcap").read_bytes()   # as a one-scene import
    (out / "1002.mcap").unlink()
    capsys.readouterr()
    assert import_main(["argoverse", str(src), "-o", str(out), "--per-scene"]) == 0
    assert "wrote 1 drive(s)" in capsys.readouterr().out and (out / "1002.mcap").exists()
    assert not list(out.glob(".*.part"))

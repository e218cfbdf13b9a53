"""The `drives` datasets (models/datasets.py, models/drive_tracks.py): recordings of Tracks -> scenes,
split by file, trained on through `drivecast train --dataset drives`; bad inputs name the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models import drive_import, drive_tracks, evaluate, train
from models.datasets import DatasetError, load_scene, load_scenes, scene_files
from models.trajectory import load_checkpoint
from nodes.sim import TrafficWorld
from pipeline.recordings.writer import Recorder
from pipeline.wire.codec import encode
from pipeline.wire.messages import AgentKind, Odometry, Tracks

START_NS = 1_700_000_000 * 1_000_000_000


def _write_drive(path: Path, seed: int, seconds: float = 12.0, topics: tuple[str, ...] = ("sim/tracks",),
                 kinds: tuple[int, ...] = (AgentKind.VEHICLE, AgentKind.PEDESTRIAN)) -> list[Tracks]:
    """A simulated drive at 10 Hz (the sim node's `tracks` output); the messages written."""
    world = TrafficWorld(agents=12, dt=0.1, seed=seed)
    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with Recorder(path, foxglove_mirror=False, max_chunk_age_s=0) as rec:
        for k in range(int(seconds * 10)):
            world.step()
            ids, xy, vxy, kind = world.tracks()
            sel = np.isin(kind, kinds)
            stamp = START_NS + (k + 1) * 100_000_000
            msg = Tracks(stamp_ns=stamp, frame_id="map", ids=ids[sel], xy=xy[sel], vxy=vxy[sel], kind=kind[sel])
            for topic in topics:
                rec.write(topic, encode(msg, publish_ns=stamp), stamp, msg)
            out.append(msg)
    return out


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drives")
    for i, seed in enumerate((101, 102, 103, 104)):
        _write_drive(root / ("day2" if i % 2 else "day1") / f"drive_{seed}.mcap", seed)
    return root


def test_a_drive_reads_as_its_vehicles_by_id_in_seconds_from_the_first_stamp(tmp_path: Path) -> None:
    msgs = _write_drive(tmp_path / "d.mcap", 101)
    scene = load_scene("drives", tmp_path / "d.mcap")
    vehicles = {int(i) for m in msgs for i, k in zip(m.ids, m.kind, strict=True) if k == AgentKind.VEHICLE}
    assert {int(tr.agent_id) for tr in scene.tracks} == vehicles and scene.group == "d"
    assert min(tr.t_s[0] for tr in scene.tracks) == 0.0
    tr = scene.tracks[0]
    k = np.flatnonzero(msgs[5].ids == int(tr.agent_id))[0]
    step = round(float(np.searchsorted(tr.t_s, 0.5 - 1e-9)))
    assert tr.t_s[step] == pytest.approx(0.5) and np.allclose(tr.xy[step], msgs[5].xy[k])
    assert all(t.kind == "vehicle" and np.all(np.diff(t.t_s) > 0) for t in scene.tracks)
    peds = load_scene("drives_pedestrian", tmp_path / "d.mcap")
    assert peds.tracks and {t.kind for t in peds.tracks} == {"pedestrian"}


def test_an_imported_eth_ucy_scene_reads_back_as_drives_pedestrian(tmp_path: Path) -> None:
    rows = [(10 * (j + p), p, 0.5 * j + p, 0.1 * j * p) for p in range(3) for j in range(20)]
    src = tmp_path / "zz_val.txt"
    src.write_text("".join(f"{f}\t{i}\t{x:.4f}\t{y:.4f}\n" for f, i, x, y in sorted(rows)))
    drive_import.write_drive("eth_ucy", [src], tmp_path / "zz.mcap", foxglove_mirror=False)
    native, drive = load_scene("eth_ucy", src), load_scene("drives_pedestrian", tmp_path / "zz.mcap")
    assert [tr.agent_id for tr in drive.tracks] == [tr.agent_id for tr in native.tracks]
    for a, b in zip(native.tracks, drive.tracks, strict=True):
        assert np.allclose(a.t_s - native.tracks[0].t_s[0], b.t_s) and np.allclose(a.xy, b.xy, atol=1e-5)


def test_drives_split_by_file_and_cross_validation_folds_leave_test_alone(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"{i:02d}.mcap").write_bytes(b"")
    parts = {s: set(scene_files("drives", tmp_path, s)) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert set.union(*parts.values()) == set(scene_files("drives", tmp_path, "all"))
    for i in (1, 2):
        train_f, val_f = (set(scene_files("drives", tmp_path, s, f"{i}/2")) for s in ("train", "val"))
        assert not train_f & val_f and train_f | val_f == parts["train"] | parts["val"]
        assert set(scene_files("drives", tmp_path, "test", f"{i}/2")) == parts["test"]


def test_a_long_drive_is_read_in_pieces_cut_at_their_borders(drives: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("models.datasets.DRIVE_PIECE_S", 5.0)
    path = scene_files("drives", drives, "val")[0]
    scenes = load_scenes("drives", drives, "val")
    whole = load_scene("drives", path)
    assert [s.name for s in scenes] == [f"{path.stem}_{t}s" for t in (0, 5, 10)]
    assert {s.group for s in scenes} == {path.stem} and {s.path for s in scenes} == {str(path)}
    assert all(5 * i <= tr.t_s[0] and tr.t_s[-1] < 5 * (i + 1) for i, s in enumerate(scenes) for tr in s.tracks)
    assert sum(len(tr.t_s) for s in scenes for tr in s.tracks) == sum(len(tr.t_s) for tr in whole.tracks)


def test_train_on_drives_writes_a_checkpoint_and_metrics_and_keeps_splits_apart(
        drives: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = train.main(["--dataset", "drives", "--data", str(drives), "--epochs", "1", "--hidden", "8", "--batch", "8",
                     "--bptt", "10", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "train: 2 files" in capsys.readouterr().out
    metrics = json.loads((out / "best.metrics.json").read_text())
    assert metrics["dataset"] == "drives" and metrics["model"]["n"] > 0 and metrics["cv"]["ade"] >= 0
    _, cfg, blob = load_checkpoint(out / "best.pt")
    train_f, val_f = set(blob["data"]["train_files"]), set(blob["data"]["val_files"])
    test_f = {p.name for p in scene_files("drives", drives, "test")}
    assert len(train_f) == 2 and len(val_f) == len(test_f) == 1
    assert not train_f & val_f and not train_f & test_f and not val_f & test_f
    assert (cfg.obs_len, cfg.horizon, cfg.dt_s, cfg.agent_kind) == (20, 30, 0.1, "vehicle")
    capsys.readouterr()
    assert evaluate.main([str(out / "best.pt"), "--dataset", "drives", "--data", str(drives), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "age" in printed and "situation" not in printed   # a walker's situations are not shown for vehicles


def _no_tracks(path: Path) -> None:
    with Recorder(path, foxglove_mirror=False) as rec:
        msg = Odometry(stamp_ns=START_NS, frame_id="map", child_frame_id="ego")
        rec.write("ego/odom", encode(msg, publish_ns=START_NS), START_NS, msg)


@pytest.mark.parametrize(("make", "match"), ids=["no-tracks", "not-a-recording", "corrupt-mcap", "no-vehicles",
                                                 "two-tracks-topics"], argvalues=[
    (_no_tracks, r"bad\.mcap: no topic of schema drivecast/Tracks .*its topics: \['ego/odom'\]"),
    (lambda p: p.write_bytes(b"PK\x03\x04 a zip file"), r"bad\.mcap: not a recording"),
    (lambda p: p.write_bytes(b"\x89MCAP0\r\n" + bytes(64)), r"bad\.mcap: MCAP magic.*corrupt"),
    (lambda p: _write_drive(p, 5, 2.0, kinds=(AgentKind.PEDESTRIAN,)),
     r"bad\.mcap: Tracks topic 'sim/tracks': no vehicle rows in 20 messages; rows by kind: \{'pedestrian'"),
    (lambda p: _write_drive(p, 5, 1.0, topics=("sim/tracks", "tracker/tracks")),
     r"bad\.mcap: 2 Tracks topics \['sim/tracks', 'tracker/tracks'\]: choose one with --topic"),
])
def test_a_bad_recording_names_the_file(tmp_path: Path, make: Callable[[Path], object], match: str) -> None:
    make(tmp_path / "bad.mcap")
    with pytest.raises(DatasetError, match=match):
        load_scene("drives", tmp_path / "bad.mcap")


def test_topic_picks_one_of_several_tracks_topics(tmp_path: Path) -> None:
    _write_drive(tmp_path / "d.mcap", 5, 1.0, topics=("sim/tracks", "tracker/tracks"))
    assert load_scene("drives", tmp_path / "d.mcap", "tracker/tracks").tracks
    with pytest.raises(DatasetError, match=r"d\.mcap: no Tracks topic 'x'; its Tracks topics: \['sim/tracks', "):
        load_scene("drives", tmp_path / "d.mcap", "x")


def test_train_on_bad_drive_directories_prints_an_error_naming_the_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(data: Path, *extra: str) -> tuple[int, str]:
        rc = train.main(["--dataset", "drives", "--data", str(data), "--epochs", "1", "--no-progress", *extra])
        return rc, capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    rc, err = run(tmp_path / "empty")
    assert rc == 1 and f"no recording files (*.mcap, *.bag) under '{tmp_path / 'empty'}'" in err
    for i in range(3):
        (tmp_path / "junk" / f"{i}.mcap").parent.mkdir(exist_ok=True)
        (tmp_path / "junk" / f"{i}.mcap").write_bytes(b"not a drive at all")
    rc, err = run(tmp_path / "junk")
    assert rc == 1 and "junk/" in err and ".mcap: not a recording" in err
    (tmp_path / "junk" / "2.mcap").unlink()
    rc, err = run(tmp_path / "junk")
    assert rc == 1 and "2 recording file(s)" in err and "needs at least 3 (train, val, test)" in err
    rc, err = run(tmp_path / "junk", "--dataset", "argoverse", "--topic", "sim/tracks")
    assert rc == 2 and "--topic is for" in err


def test_eval_takes_the_topic_a_model_was_trained_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A drive with the simulator's tracks and a tracker's: `drivecast eval` could not be told which."""
    from models import evaluate

    for seed in (101, 102, 103):
        _write_drive(tmp_path / "d" / f"drive_{seed}.mcap", seed, 6.0, topics=("sim/tracks", "tracker/tracks"))
    assert train.main(["--dataset", "drives", "--data", str(tmp_path / "d"), "--topic", "tracker/tracks", "--epochs",
                       "1", "--hidden", "8", "--no-progress", "--out", str(tmp_path / "m")]) == 0
    ev = [str(tmp_path / "m" / "best.pt"), "--dataset", "drives", "--data", str(tmp_path / "d"), "--split", "test"]
    capsys.readouterr()
    assert evaluate.main(ev) == 1 and "choose one with --topic" in capsys.readouterr().err
    assert evaluate.main([*ev, "--topic", "tracker/tracks"]) == 0 and "ALL" in capsys.readouterr().out
    assert evaluate.main([*ev, "--dataset", "argoverse", "--topic", "x"]) == 2


def test_cut_keeps_every_row_once_in_its_piece() -> None:
    t = np.arange(0.0, 10.0, 0.1)
    pieces = drive_tracks.cut([(7, t, np.stack([t, t], 1))], 4.0)
    assert [start for start, _ in pieces] == [0.0, 4.0, 8.0]
    assert np.array_equal(np.concatenate([p[0][1] for _, p in pieces]), t)
    assert all(start <= p[0][1][0] and p[0][1][-1] < start + 4.0 for start, p in pieces)

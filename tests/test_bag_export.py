"""pipeline/recordings/table_export.py + `drivecast bag export`: Tracks, Detections and Predictions
topics of a recording made here become flat CSV / Parquet tables (one row per agent per message,
per horizon step for Predictions); an unknown topic, a schema without a table form, a damaged file and
a missing pyarrow each give one line and exit 2, and leave no output behind."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.bag import main as bag_main
from pipeline.recordings.writer import Recorder
from pipeline.wire.codec import encode
from pipeline.wire.messages import Detections, Odometry, Predictions, Tracks

T0 = 1_700_000_000_000_000_000


def _drive(path: Path) -> Path:
    """Two Tracks messages (2 then 3 agents), one Detections, two Predictions (2 agents x 3 steps), one Odometry."""
    with Recorder(path, max_chunk_age_s=0) as rec:
        for i, n in enumerate((2, 3)):
            rec.write("sim/tracks", encode(Tracks(
                stamp_ns=T0 + i * 100, seq=i + 1, frame_id="map", ids=np.arange(n) + 10,
                xy=np.arange(2 * n).reshape(n, 2) + 0.5, vxy=-np.arange(2 * n).reshape(n, 2) * 0.1,
                kind=np.array([1, 2, 3][:n]))), T0 + i * 100 + 7)
            rec.write("pred/predictions", encode(Predictions(
                stamp_ns=T0 + i * 100, seq=i + 1, model="lstm", ids=[10, 11], kind=[1, 2],
                t_ns=T0 + i * 100 + np.array([1, 2, 3]) * 10**8,
                xy=np.arange(12).reshape(2, 3, 2) + i)), T0 + i * 100 + 8)
        rec.write("sim/detections", encode(Detections(
            stamp_ns=T0, seq=1, xy=[[1, 2], [3, 4]], kind=[2, 0], score=[0.9, 0.25], ids=[-1, -1], length=[0.5, 1],
            width=[0.5, 1], heading=[0, 0], observed=[0, 0])), T0 + 9)
        rec.write("car/odom", encode(Odometry(stamp_ns=T0)), T0 + 10)
    return path


@pytest.fixture
def drive(tmp_path: Path) -> Path:
    return _drive(tmp_path / "drive.mcap")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tracks_export_as_one_csv_row_per_agent_per_message(drive: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tracks.csv"
    assert bag_main(["export", str(drive), "--topic", "sim/tracks", "--csv", str(out)]) == 0
    assert f"wrote 5 rows of sim/tracks to {out}" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0]) == ["log_time_ns", "stamp_ns", "seq", "frame_id", "id", "kind", "kind_name",
                             "x", "y", "vx", "vy"]
    assert [(r["log_time_ns"], r["stamp_ns"], r["seq"], r["id"], r["kind_name"]) for r in rows] == [
        (str(T0 + 7), str(T0), "1", "10", "vehicle"), (str(T0 + 7), str(T0), "1", "11", "pedestrian"),
        (str(T0 + 107), str(T0 + 100), "2", "10", "vehicle"), (str(T0 + 107), str(T0 + 100), "2", "11", "pedestrian"),
        (str(T0 + 107), str(T0 + 100), "2", "12", "cyclist")]
    assert (rows[4]["x"], rows[4]["y"], rows[4]["vx"], rows[4]["vy"]) == ("4.5", "5.5", "-0.4", "-0.5")
    assert rows[0]["frame_id"] == "map" and rows[0]["kind"] == "1"


def test_predictions_export_as_one_row_per_agent_per_horizon_step(drive: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    assert bag_main(["export", str(drive), "--topic", "pred/predictions", "--csv", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 2 * 2 * 3 and list(rows[0])[3:] == ["model", "id", "kind", "kind_name", "step", "t_ns",
                                                             "x", "y", "mode", "prob"]
    assert {(r["mode"], r["prob"]) for r in rows} == {("0", "1.0")}  # one future: the most probable, certain
    second = [r for r in rows if r["seq"] == "2" and r["id"] == "11"]
    assert [(r["step"], r["t_ns"], r["x"], r["y"]) for r in second] == [
        ("1", str(T0 + 100 + 10**8), "7.0", "8.0"), ("2", str(T0 + 100 + 2 * 10**8), "9.0", "10.0"),
        ("3", str(T0 + 100 + 3 * 10**8), "11.0", "12.0")]
    assert {r["model"] for r in rows} == {"lstm"}


def test_predictions_of_k_futures_export_a_row_per_future_ranked_by_probability(tmp_path: Path) -> None:
    modes = np.zeros((2, 3, 2, 2), np.float32)
    modes[..., 0] = np.arange(3)[None, :, None] + 10 * np.arange(2)[:, None, None]  # x: 10 * agent + future
    modes[..., 1] = np.arange(1, 3)  # y: the step
    prob = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
    path = tmp_path / "k.mcap"
    with Recorder(path, max_chunk_age_s=0) as rec:
        rec.write("pred/predictions", encode(Predictions(
            stamp_ns=T0, model="k3", ids=[4, 5], kind=[1, 1], t_ns=T0 + np.array([1, 2]) * 10**8,
            xy=modes[[0, 1], [1, 0]], modes=modes, prob=prob)), T0 + 1)
    out = tmp_path / "k.csv"
    assert bag_main(["export", str(path), "--topic", "pred/predictions", "--csv", str(out)]) == 0
    got = [(r["id"], r["mode"], r["prob"], r["step"], r["x"], r["y"]) for r in _rows(out)]
    assert got == [(agent, str(rank), p, step, x, step + ".0")
                   for agent, futures in (("4", (("1.0", "0.5"), ("2.0", "0.3"), ("0.0", "0.2"))),
                                          ("5", (("10.0", "0.6"), ("12.0", "0.3"), ("11.0", "0.1"))))
                   for rank, (x, p) in enumerate(futures) for step in ("1", "2")]


def test_detections_export_with_their_index_and_score(drive: Path, tmp_path: Path) -> None:
    out = tmp_path / "det.csv"
    assert bag_main(["export", str(drive), "--topic", "sim/detections", "--csv", str(out)]) == 0
    assert [(r["index"], r["kind_name"], r["x"], r["y"], r["score"]) for r in _rows(out)] == [
        ("0", "pedestrian", "1.0", "2.0", "0.9"), ("1", "unknown", "3.0", "4.0", "0.25")]


def test_csv_to_stdout(drive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bag_main(["export", str(drive), "--topic", "sim/detections", "--csv", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("log_time_ns,stamp_ns,seq,frame_id,index") and len(lines) == 3


def test_parquet_round_trips_columns_and_dtypes(drive: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is the optional [tables] extra")
    out = tmp_path / "pred.parquet"
    assert bag_main(["export", str(drive), "--topic", "pred/predictions", "--parquet", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 12
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {"log_time_ns": "int64", "stamp_ns": "int64", "seq": "int64", "model": "string", "id": "int64",
                     "kind": "uint8", "kind_name": "string", "step": "int64", "t_ns": "int64", "x": "float",
                     "y": "float", "mode": "int64", "prob": "float"}
    assert table.column("x").to_pylist()[-3:] == [7.0, 9.0, 11.0]


def test_parquet_without_pyarrow_names_the_extra(drive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ModuleNotFoundError
    out = tmp_path / "t.parquet"
    assert bag_main(["export", str(drive), "--topic", "sim/tracks", "--parquet", str(out)]) == 2
    assert "--parquet needs pyarrow: pip install 'drivecast[tables]'" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_topic_lists_the_topics(drive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.csv"
    assert bag_main(["export", str(drive), "--topic", "sim/track", "--csv", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: {drive}: no topic 'sim/track' (topics: car/odom, pred/predictions, sim/detections, " \
           "sim/tracks)" in err
    assert not out.exists()


def test_a_schema_without_a_table_form_is_refused(drive: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.csv"
    assert bag_main(["export", str(drive), "--topic", "car/odom", "--csv", str(out)]) == 2
    assert "topic 'car/odom' is drivecast/Odometry; export makes tables of drivecast/Tracks, " \
           "drivecast/Detections, drivecast/Predictions" in capsys.readouterr().err
    assert not out.exists()


def test_a_damaged_file_is_an_error_and_leaves_no_output(drive: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"\xff" * 64)
    out = tmp_path / "x.csv"
    assert bag_main(["export", str(bad), "--topic", "sim/tracks", "--csv", str(out)]) == 2
    assert f"ERROR: {bad}: MCAP magic, but the MCAP header record cannot be read" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".*part")) == []


def test_a_topic_whose_messages_do_not_decode_exports_the_others(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "odd.mcap"
    good = [bytes(f) for f in encode(Tracks(stamp_ns=T0, ids=[1, 2], xy=np.zeros((2, 2)), vxy=np.zeros((2, 2)),
                                            kind=[1, 1]))]
    with Recorder(path) as rec:
        rec.write("sim/tracks", good, T0)
        rec.write("sim/tracks", [good[0], good[1][:8], *good[2:]], T0 + 1)  # header says 2 ids, frame holds 1
    out = tmp_path / "t.csv"
    assert bag_main(["export", str(path), "--topic", "sim/tracks", "--csv", str(out)]) == 0
    said = capsys.readouterr().out
    assert "wrote 2 rows of sim/tracks" in said and "1 messages left out: their arrays do not decode" in said
    assert len(_rows(out)) == 2


def test_csv_and_parquet_are_exclusive_and_one_is_required(drive: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        bag_main(["export", str(drive), "--topic", "sim/tracks"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        bag_main(["export", str(drive), "--topic", "sim/tracks", "--csv", "a", "--parquet", "b"])
    assert exc.value.code == 2

"""`drivecast sim record`: simulated drives, headless, deterministic, replayable."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nodes.sim_record import main
from pipeline.recordings.reader import open_recording
from pipeline.wire.codec import decode
from pipeline.wire.messages import Tracks


def test_each_seed_gets_a_file_of_the_asked_minutes_and_a_rerun_gives_the_same_bytes(tmp_path: Path) -> None:
    args = ["record", "--minutes", "0.1", "--seed", "40", "--count", "2", "--set", "sim.agents=6"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["sim-seed40.mcap", "sim-seed41.mcap"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with open_recording(tmp_path / "a" / "sim-seed40.mcap") as rec:
        assert {t.name for t in rec.info().topics} == {"sim/tracks"}
        msgs = [decode(i.frames)[0] for i in rec.items(["sim/tracks"])]
    assert len(msgs) == 60 and all(isinstance(m, Tracks) for m in msgs)      # 10 Hz for 6 s
    assert np.diff([m.stamp_ns for m in msgs]).tolist() == [10**8] * 59
    assert 3 <= len(msgs[0].ids) <= 6                                          # warmed up: the road is full
    seed41 = (tmp_path / "a" / "sim-seed41.mcap").read_bytes()
    assert seed41 != (tmp_path / "a" / "sim-seed40.mcap").read_bytes()


def test_extra_outputs_are_written_under_the_default_graphs_topics(tmp_path: Path) -> None:
    assert main(["record", "-o", str(tmp_path), "--minutes", "0.02", "--outputs", "tracks,scan,ego",
                 "--set", "sim.lidar=true", "--set", "sim.agents=4"]) == 0
    with open_recording(tmp_path / "sim-seed0.mcap") as rec:
        counts = {t.name: t.count for t in rec.info().topics}
    assert counts == {"sim/tracks": 12, "sim/scan": 12, "sim/ego": 12}


@pytest.mark.parametrize(("args", "error"), [
    (["--minutes", "0"], r"--minutes: expected a number of minutes in \(0, 1440\], got 0"),
    (["--minutes", "1", "--count", "0"], r"--count: expected at least 1 drive, got 0"),
    (["--minutes", "1", "--outputs", "tracks,radar"], r"--outputs 'tracks,radar': expected some of tracks, detections"),
    (["--minutes", "1", "--set", "pred.x=1"], r"--set: only sim.PARAM=VALUE, got node\(s\) pred"),
    (["--minutes", "1", "--set", "sim.seed=3"], r"--set sim.seed: each drive has its own seed"),
    (["--minutes", "1", "--set", "sim.agents=0"], r"sim: params.agents: .*>= 1"),
])
def test_bad_arguments_are_one_error_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      args: list[str], error: str) -> None:
    assert main(["record", "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1
    assert re.search(error, err), err
    assert not list((tmp_path / "out").glob("*.mcap"))   # nothing half-written is left


def test_an_existing_drive_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sim-seed5.mcap").write_bytes(b"mine")
    assert main(["record", "-o", str(tmp_path), "--minutes", "0.01", "--seed", "4", "--count", "2"]) == 2
    assert f"not overwriting {tmp_path}/sim-seed5.mcap" in capsys.readouterr().err
    assert (tmp_path / "sim-seed5.mcap").read_bytes() == b"mine" and not (tmp_path / "sim-seed4.mcap").exists()

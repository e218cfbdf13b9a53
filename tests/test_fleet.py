"""`drivecast fleet eval`: one lockstep replay per drive on every back-end, the same results on each.

Drives are small simulated ones (`drivecast sim record`, 0.1 simulated minutes: about 0.3 s of
replay each). The Ray tests start a local Ray instance of 2 CPUs for this module and stop it at the end.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodes.sim_record import main as sim_record
from pipeline.cli.fleet import main as fleet
from pipeline.fleet.report import totals
from pipeline.recordings.mcap_format import MAGIC
from pipeline.runtime.lockstep_launch import START_NS
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import Tracks
from tests.conftest import REPO, group_alive, wait_for

GRAPH = REPO / "launch.yaml"


class Boom(Node):
    """Raises on the first Tracks message (a node's bug)."""

    inputs = {"tracks": Tracks}

    def on_tracks(self, msg: Tracks) -> None:
        raise RuntimeError("boom")


class Crash(Node):
    """Kills its process (a segfault, the OOM killer) on a Tracks message stamped after `after_s`."""

    class Params(NodeParams):
        after_s: float = 8.0

    inputs = {"tracks": Tracks}

    def on_tracks(self, msg: Tracks) -> None:
        if msg.stamp_ns > START_NS + self.params.after_s * 1e9:
            self.fail()

    def fail(self) -> None:
        os._exit(3)


class Hang(Crash):
    """Never returns from that message instead (an endless loop in a node)."""

    def fail(self) -> None:
        while True:
            time.sleep(0.05)  # the node's endless loop, not a wait in the test


class Slow(Node):
    """Takes 50 ms per Tracks message: a 6 s drive replays in 3 s."""

    inputs = {"tracks": Tracks}

    def on_tracks(self, msg: Tracks) -> None:
        time.sleep(0.05)  # the node's work, not a wait in the test


def _graph(tmp: Path, run: str) -> Path:
    path = tmp / "graph.yaml"
    path.write_text(f"nodes:\n  n: {{run: '{run}', inputs: {{tracks: sim/tracks}}}}\n"
                    "topics: {sim/tracks: {external: true}}\n")
    return path


def _record(out: Path, seed: int, count: int, minutes: float = 0.1) -> list[Path]:
    assert sim_record(["record", "-o", str(out), "--minutes", str(minutes), "--seed", str(seed),
                       "--count", str(count)]) == 0
    return [out / f"sim-seed{s}.mcap" for s in range(seed, seed + count)]


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four drives of 0.1 simulated minutes, seeds 100-103."""
    out = tmp_path_factory.mktemp("drives")
    _record(out, 100, 4)
    return out


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _digests(report: Path) -> dict[str, str]:
    return {Path(r["drive"]).name: r["digest"] for r in _table(report / "drives.csv")}


def _run(*args: str | Path) -> int:
    return fleet(["eval", "--graph", str(GRAPH), "-q", *map(str, args)])


def test_sequential_pool_and_a_repeated_run_give_the_same_digests(drives: Path, tmp_path: Path) -> None:
    assert _run(drives, "--workers", "1", "-o", tmp_path / "seq") == 0
    assert _run(drives, "--workers", "2", "-o", tmp_path / "pool") == 0
    assert _run(drives, "--workers", "2", "-o", tmp_path / "again") == 0
    seq = _digests(tmp_path / "seq")
    assert sorted(seq) == [f"sim-seed{s}.mcap" for s in range(100, 104)]
    assert all(len(d) == 64 for d in seq.values()) and len(set(seq.values())) == 4  # each drive its own
    assert _digests(tmp_path / "pool") == seq == _digests(tmp_path / "again")
    rows = _table(tmp_path / "pool" / "drives.csv")
    assert {r["status"] for r in rows} == {"ok"} and all(int(r["published"]) > 0 and int(r["n"]) > 0 for r in rows)


def test_totals_are_means_weighted_by_rows(drives: Path, tmp_path: Path) -> None:
    assert _run(drives, "--workers", "2", "-o", tmp_path) == 0
    acc = _table(tmp_path / "accuracy.csv")
    for t in _table(tmp_path / "totals.csv"):
        group = [r for r in acc if (r["evaluator"], r["kind"], r["age"]) == (t["evaluator"], t["kind"], t["age"])]
        n = np.array([int(r["n"]) for r in group])
        assert int(t["drives"]) == len(group) and int(t["n"]) == n.sum()
        for m in ("ade", "fde", "cv_ade", "cv_fde"):
            assert float(t[m]) == pytest.approx((n * [float(r[m]) for r in group]).sum() / n.sum(), abs=1e-4)
    # and by hand: a drive with 3 rows counts three times one with 1 row
    rows = [{"drive": d, "rows": [{"evaluator": "e", "kind": "all", "age": "all", "n": n, "ade": a, "fde": 2 * a,
                                   "cv_ade": 1.0, "cv_fde": 2.0}]} for d, n, a in (("a", 3, 1.0), ("b", 1, 2.0))]
    assert totals(rows) == [{"evaluator": "e", "kind": "all", "age": "all", "drives": 2, "n": 4, "ade": 1.25,
                             "fde": 2.5, "cv_ade": 1.0, "cv_fde": 2.0}]


def test_totals_of_k_futures_weigh_by_the_rows_that_had_them() -> None:
    k_row = {"k": 6, "n_k": 2, "min_ade_k": 0.5, "min_fde_k": 1.0, "miss_rate_k": 0.5, "brier_min_fde_k": 1.5,
             "cv_min_ade_k": 1.0, "cv_min_fde_k": 2.0, "cv_miss_rate_k": 1.0}
    one = {"evaluator": "e", "kind": "all", "age": "all", "n": 2, "ade": 1.0, "fde": 2.0, "cv_ade": 1.0, "cv_fde": 2.0}
    rows = [{"drive": "a", "rows": [{**one, **k_row}]},
            {"drive": "b", "rows": [{**one, **k_row, "n": 4, "n_k": 6, "min_ade_k": 1.0, "miss_rate_k": 0.0}]},
            {"drive": "c", "rows": [one]}]   # a model of one future: no K figures to weigh
    (t,) = totals(rows)
    assert t["n"] == 8 and t["n_k"] == 8
    assert t["min_ade_k"] == pytest.approx((2 * 0.5 + 6 * 1.0) / 8) and t["miss_rate_k"] == pytest.approx(2 * 0.5 / 8)
    assert "min_ade_k" not in totals(rows[2:])[0]


def test_a_corrupt_drive_is_an_error_row_naming_it_and_the_others_are_reported(
        drives: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(drives, mixed)
    (mixed / "broken.mcap").write_bytes(MAGIC + b"\x01garbage" * 10)
    (mixed / "empty.bag").write_bytes(b"")
    assert _run(mixed, "--workers", "2", "-o", tmp_path / "report") == 1
    rows = {Path(r["drive"]).name: r for r in _table(tmp_path / "report" / "drives.csv")}
    assert sorted(rows) == ["broken.mcap", "empty.bag", *(f"sim-seed{s}.mcap" for s in range(100, 104))]
    assert rows["broken.mcap"]["status"] == "error" and "broken.mcap" in rows["broken.mcap"]["error"]
    assert "corrupt" in rows["broken.mcap"]["error"]
    assert rows["empty.bag"]["status"] == "error" and "empty.bag" in rows["empty.bag"]["error"]
    assert all(rows[f"sim-seed{s}.mcap"]["status"] == "ok" for s in range(100, 104))
    out = capsys.readouterr().out
    assert "2 drive(s) failed:" in out and "broken.mcap: " in out and "totals of 'evaluator' over 4 drives" in out


def test_a_node_that_raises_fails_its_drive_with_the_exception_and_where(drives: Path, tmp_path: Path) -> None:
    graph = _graph(tmp_path, "tests.test_fleet:Boom")
    rc = fleet(["eval", "--graph", str(graph), "-q", str(drives / "sim-seed100.mcap"), "--workers", "1",
                "-o", str(tmp_path / "r")])
    assert rc == 1
    [row] = _table(tmp_path / "r" / "drives.csv")
    assert row["status"] == "error" and row["error"].startswith("RuntimeError: boom (at ")
    assert "test_fleet.py" in row["error"] and "in on_tracks" in row["error"]


def test_a_drive_that_kills_its_worker_is_blamed_alone(one_long: Path, tmp_path: Path) -> None:
    graph = _graph(tmp_path, "tests.test_fleet:Crash")
    assert fleet(["eval", "--graph", str(graph), "-q", str(one_long), "--workers", "2", "-o", str(tmp_path / "r")]) == 1
    rows = {Path(r["drive"]).name: r for r in _table(tmp_path / "r" / "drives.csv")}
    assert len(rows) == 5 and rows["sim-seed200.mcap"]["error"].startswith("its worker process died")
    assert [n for n, r in rows.items() if r["status"] != "ok"] == ["sim-seed200.mcap"]


@pytest.fixture(scope="module")
def one_long(drives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four drives of 6 s and one of 12 s: only that one reaches the Crash and Hang nodes' 8 s."""
    mixed = tmp_path_factory.mktemp("mixed")
    shutil.copytree(drives, mixed, dirs_exist_ok=True)
    _record(mixed, 200, 1, minutes=0.2)
    return mixed


@pytest.mark.parametrize("backend", [["--workers", "2"], ["--ray", "--workers", "2"]], ids=["pool", "ray"])
def test_a_drive_past_the_timeout_is_ended_and_the_rest_are_reported(
        one_long: Path, tmp_path: Path, request: pytest.FixtureRequest, backend: list[str]) -> None:
    if "--ray" in backend:
        request.getfixturevalue("local_ray")
    graph = _graph(tmp_path, "tests.test_fleet:Hang")
    t0 = time.monotonic()
    # 5 s from each drive's start: on Ray, a worker process started after a cancelled one can take 5 s
    # and more to start on this 2-core box when training runs beside the tests, which is not counted
    assert fleet(["eval", "--graph", str(graph), "-q", str(one_long), *backend, "--timeout", "5",
                  "-o", str(tmp_path / "r")]) == 1
    assert time.monotonic() - t0 < 60   # not for ever
    rows = {Path(r["drive"]).name: r for r in _table(tmp_path / "r" / "drives.csv")}
    assert len(rows) == 5 and [n for n, r in rows.items() if r["status"] != "ok"] == ["sim-seed200.mcap"]
    assert rows["sim-seed200.mcap"]["error"] == "timed out: still running after 5 s (--timeout)"


def test_in_this_process_the_timeout_ends_a_drive_between_messages(drives: Path, tmp_path: Path) -> None:
    graph = _graph(tmp_path, "tests.test_fleet:Slow")
    assert fleet(["eval", "--graph", str(graph), "-q", str(drives / "sim-seed100.mcap"), "--workers", "1",
                  "--timeout", "1", "-o", str(tmp_path / "r")]) == 1
    [row] = _table(tmp_path / "r" / "drives.csv")
    assert row["status"] == "error" and row["error"] == "timed out: still running after 1 s (--timeout)"


def test_resume_skips_the_drives_the_report_has(drives: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r"
    first = sorted(drives.glob("*.mcap"))[:2]
    assert fleet(["eval", "--graph", str(GRAPH), *map(str, first), "--workers", "1", "-o", str(report)]) == 0
    before = _digests(report)
    capsys.readouterr()
    assert fleet(["eval", "--graph", str(GRAPH), str(drives), "--workers", "2", "-o", str(report), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "2 drives to evaluate (2 done before, skipped)" in err and err.count("done, 0 failed") == 2
    assert all(first[i].name not in line for i in range(2) for line in err.splitlines() if "done, 0 failed" in line)
    after = _digests(report)
    assert len(after) == 4 and {k: after[k] for k in before} == before
    lines = (report / "drives.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["status"] == "ok" for x in lines)
    # a report is never mixed: another graph, or no --resume, is refused
    assert _run(drives, "-o", report) == 2
    other = _graph(tmp_path, "tests.test_fleet:Boom")
    assert fleet(["eval", "--graph", str(other), str(drives), "-o", str(report), "--resume"]) == 2
    assert "was made with other graph, graph_sha256, evaluators" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--graph", "nope.yaml", "{drives}"], "nope.yaml: cannot read launch file"),
    (["--graph", str(GRAPH), "{empty}"], "no drives found in"),
    (["--graph", str(GRAPH), "{drives}/nope.mcap"], "nope.mcap: no such file or directory"),
    (["--graph", str(GRAPH), "{drives}", "--workers", "0"], "--workers: expected at least 1, got 0"),
    (["--graph", str(GRAPH), "--ray", "{drives}/sim-seed100.mcap", "{drives}/sim-seed101.mcap"],
     "DRIVES go before --ray, or write --ray local"),
    (["--graph", str(GRAPH), "{drives}", "--remap", "sim/tracks"], "expected FROM:=TO"),
    # a graph that nothing of the fleet feeds: one error before any worker, not a failed row per drive
    (["--graph", str(GRAPH), "{drives}", "--remap", "sim/tracks:=elsewhere/tracks"],
     "checked on the first drive, {drives}/sim-seed100.mcap: "),
])
def test_bad_arguments_exit_2_with_the_reason(drives: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.format(drives=drives, empty=tmp_path / "empty") for a in args]
    assert fleet(["eval", *argv, "-o", str(tmp_path / "r")]) == 2
    assert message.format(drives=drives) in capsys.readouterr().err
    assert not (tmp_path / "r" / "drives.jsonl").exists() and not (tmp_path / "r" / "run.json").exists()


def test_ray_without_the_package_is_a_bad_argument(drives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ModuleNotFoundError
    assert _run(drives / "sim-seed100.mcap", "--ray", "-o", tmp_path / "r") == 2
    assert "--ray needs the ray package: pip install 'drivecast[fleet]'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "drives.jsonl").exists()


def test_no_graph_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        fleet(["eval", "x.mcap"])
    assert exc.value.code == 2


def test_importing_the_command_loads_neither_ray_nor_torch() -> None:
    code = ("import sys, pipeline.cli.fleet, pipeline.fleet.backends, pipeline.fleet.report; "
            "sys.exit(sorted(m for m in ('ray', 'torch', 'pyarrow', 'matplotlib') if m in sys.modules) or 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# -- Ray ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the Ray back-end needs ray: pip install 'drivecast[fleet]'")
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    print(f"local Ray started in {time.monotonic() - t0:.1f} s")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_gives_the_same_digests_as_the_local_pool(drives: Path, tmp_path: Path, local_ray: Any) -> None:
    assert _run(drives, "--workers", "2", "-o", tmp_path / "pool") == 0
    t0 = time.monotonic()
    assert _run(drives, "--ray", "--workers", "2", "-o", tmp_path / "ray") == 0
    print(f"fleet eval of 4 drives on Ray: {time.monotonic() - t0:.1f} s")
    assert local_ray.is_initialized()  # a Ray this process started is left to its owner
    assert _digests(tmp_path / "ray") == _digests(tmp_path / "pool")
    workers = {r["worker"] for r in _table(tmp_path / "ray" / "drives.csv")}
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)


# -- Ctrl-C --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_ends_every_worker_within_5_s_and_reports_what_finished(tmp_path: Path, sig: int, code: int) -> None:
    one = _record(tmp_path / "src", 300, 1, minutes=0.5)[0]  # ~1.5 s of replay each: a stop lands mid-run
    many = tmp_path / "drives"
    many.mkdir()
    for i in range(6):
        shutil.copy(one, many / f"drive{i}.mcap")
    report = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "fleet", "eval", "--graph", str(GRAPH), str(many),
                             "--workers", "2", "-o", str(report)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any("[fleet] 1/6 done" in x for x in lines), 120, "the first drive's report")
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=5)
        took = time.monotonic() - t0
        reader.join(5)
        out = "".join(lines)
        assert rc == code, out
        assert took < 5
        finished = {x.split(" | ")[1].split(":")[0].rsplit("/", 1)[-1] for x in lines if " done, " in x}
        rows = _table(report / "drives.csv")
        assert 1 <= len(rows) < 6 and {Path(r["drive"]).name for r in rows} == finished, out
        assert {r["status"] for r in rows} == {"ok"}
        assert len((report / "drives.jsonl").read_text().splitlines()) == len(rows)
        # the workers are gone with it (the group also held multiprocessing's resource tracker: it exits on EOF)
        wait_for(lambda: not group_alive(proc.pid), 5, "every process of the run to exit")
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_set_reaches_every_worker_and_a_resume_must_repeat_it(drives: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(drives, "--workers", "2", "-o", tmp_path / "plain") == 0
    # the evaluator's CV windows are a param: set on the command line, every drive's table says so
    assert _run(drives, "--workers", "2", "-o", tmp_path / "set", "--set", "evaluator.cv_ks=[4]") == 0
    plain, k4 = _table(tmp_path / "plain" / "accuracy.csv"), _table(tmp_path / "set" / "accuracy.csv")
    assert {r["cv_k"] for r in k4} == {"4"} and {r["cv_k"] for r in plain} != {"4"}
    capsys.readouterr()
    assert _run(drives, "-o", tmp_path / "set", "--resume") == 2
    assert "sets" in capsys.readouterr().err
    assert _run(drives, "-o", tmp_path / "bad", "--set", "evaluator.cv_ks=many") == 2
    assert "evaluator.cv_ks" in capsys.readouterr().err and not (tmp_path / "bad").exists()

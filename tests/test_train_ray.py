"""models/train_sweep.py through `drivecast train`: --fold all, --grid, --seeds in this process, a pool and on Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import train, train_sweep
from models.train_config import parse_config
from tests.conftest import group_alive, wait_for

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--hidden", "8", "--batch", "4", "--no-progress"]
SCORES = ["windows", "window_ade", "window_fde", "stream_ade", "stream_fde", "cv_ade", "cv_fde", "best_epoch"]


def _write_argoverse(path: Path, seed: int) -> None:
    """One Argoverse-like sequence: an AGENT, the AV and an other car, 56 samples at 10 Hz, gently turning."""
    rng = np.random.default_rng(seed)
    lines = ["TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME"]
    for tid, kind in (("a", "AGENT"), ("b", "AV"), ("c", "OTHERS")):
        p, v, w = rng.uniform(-20, 20, 2), rng.normal(0, 5, 2), rng.normal(0, 0.02)
        for j in range(56):
            v = np.array([[np.cos(w), -np.sin(w)], [np.sin(w), np.cos(w)]]) @ v
            p = p + 0.1 * v
            lines.append(f"{j * 0.1:.1f},{tid},{kind},{p[0]:.3f},{p[1]:.3f},PIT")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _write_eth(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for ped in range(6):
        start, p, v = int(rng.integers(0, 10)), rng.uniform(-5, 5, 2), rng.normal(0, 0.5, 2)
        for j in range(int(rng.integers(22, 30))):
            q = p + v * j
            rows.append((10 * (start + j), ped, q[0], q[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f:.1f}\t{i:.1f}\t{x:.4f}\t{y:.4f}\n" for f, i, x, y in sorted(rows)))


@pytest.fixture(scope="module")
def argo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("argoverse")
    for i in range(6):   # 1 test file, 5 in the cross-validation pool: parts of 2 and 3 with --fold all/2
        _write_argoverse(root / f"{i}.csv", i)
    return root


@pytest.fixture(scope="module")
def eth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eth_ucy")
    for k, fold in enumerate(("aa", "bb")):
        for split, seed in (("train", 0), ("val", 1), ("test", 2)):
            _write_eth(root / fold / split / f"scene_{fold}_{split}.txt", seed + 100 * k)
    return root


def _table(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _scores(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return [(r["run"], *(r[k] for k in SCORES)) for r in rows]


def _argo_all(argo: Path, out: Path, *extra: str) -> int:
    return train.main(["--dataset", "argoverse", "--data", str(argo), "--fold", "all/2", *TINY, "--out", str(out),
                       *extra])


# -- --fold all ----------------------------------------------------------------------------------------------------

def test_fold_all_writes_a_row_per_fold_and_pools_them_weighted_by_windows(argo: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    assert _argo_all(argo, tmp_path / "cv") == 0
    print(f"--fold all/2 in this process: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    rows = _table(tmp_path / "cv" / "folds.csv")
    assert [r["run"] for r in rows] == ["fold_1of2", "fold_2of2", "pooled"]
    assert [r["fold"] for r in rows[:2]] == ["1/2", "2/2"] and all(r["status"] == "ok" for r in rows)
    folds, pool = rows[:2], rows[2]
    n = [int(r["windows"]) for r in folds]
    assert int(pool["windows"]) == sum(n) and min(n) > 0
    for key in SCORES[1:-1]:
        assert float(pool[key]) == pytest.approx(sum(float(r[key]) * w for r, w in zip(folds, n, strict=True)) / sum(n), rel=1e-9)
    assert json.loads((tmp_path / "cv" / "folds.json").read_text())[2]["run"] == "pooled"
    assert "pooled" in capsys.readouterr().out
    # each fold is an ordinary run: its checkpoint and metrics where `--fold I/K --out OUT/fold_IofK` puts them
    meta = json.loads((tmp_path / "cv" / "fold_2of2" / "best.metrics.json").read_text())
    assert meta["fold"] == "2/2" and (tmp_path / "cv" / "fold_2of2" / "best.pt").stat().st_size > 0


def test_a_fold_inside_fold_all_equals_the_same_fold_run_alone(argo: Path, tmp_path: Path) -> None:
    import torch

    from models.trajectory import load_checkpoint

    assert _argo_all(argo, tmp_path / "cv", "--seed", "7") == 0
    alone = tmp_path / "alone"
    assert train.main(["--dataset", "argoverse", "--data", str(argo), "--fold", "2/2", *TINY, "--seed", "7",
                       "--out", str(alone)]) == 0
    inside = json.loads((tmp_path / "cv" / "fold_2of2" / "best.metrics.json").read_text())
    single = json.loads((alone / "best.metrics.json").read_text())
    for key in ("model", "stream", "cv", "cv_k", "best_epoch"):
        assert inside[key] == single[key], key   # exactly: one torch thread, every generator seeded
    a = load_checkpoint(tmp_path / "cv" / "fold_2of2" / "best.pt")[0].state_dict()
    b = load_checkpoint(alone / "best.pt")[0].state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_fold_all_in_a_pool_of_processes_gives_the_same_table(argo: Path, tmp_path: Path) -> None:
    assert _argo_all(argo, tmp_path / "seq") == 0
    t0 = time.monotonic()
    assert _argo_all(argo, tmp_path / "pool", "--jobs", "2") == 0
    print(f"--fold all/2 --jobs 2: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    pool = _table(tmp_path / "pool" / "folds.csv")
    assert _scores(pool) == _scores(_table(tmp_path / "seq" / "folds.csv"))
    assert {r["worker"].rsplit(":", 1)[1] for r in pool[:2]} != {str(os.getpid())}
    assert "best epoch 1" in (tmp_path / "pool" / "fold_1of2" / "train.log").read_text()


def test_eth_ucy_fold_each_runs_every_named_fold_and_a_failing_one_is_a_row(eth: Path, tmp_path: Path) -> None:
    (eth / "zz" / "train").mkdir(parents=True)   # a fold with nothing in it: its run fails, the others finish
    (eth / "zz" / "val").mkdir()
    try:
        rc = train.main(["--dataset", "eth_ucy", "--data", str(eth), "--fold", "each", *TINY,
                         "--out", str(tmp_path / "each")])
    finally:
        for d in ("train", "val", ""):
            (eth / "zz" / d).rmdir()
    assert rc == 1
    rows = {r["run"]: r for r in _table(tmp_path / "each" / "folds.csv")}
    assert list(rows) == ["fold_aa", "fold_bb", "fold_zz", "pooled"]
    assert rows["fold_aa"]["status"] == rows["fold_bb"]["status"] == "ok"
    assert rows["fold_zz"]["status"] == "error" and "exit code 1" in rows["fold_zz"]["error"]
    assert rows["pooled"]["error"] == "pooled over 2 of 3 folds"
    assert int(rows["pooled"]["windows"]) == int(rows["fold_aa"]["windows"]) + int(rows["fold_bb"]["windows"])


@pytest.mark.parametrize(("args", "expected"), [
    (["--dataset", "argoverse", "--fold", "all/1"], "--fold 'all/1': expected all/K with K >= 2 parts"),
    (["--dataset", "drives", "--fold", "all/x"], "--fold 'all/x': expected all/K with K >= 2 parts"),
    (["--dataset", "eth_ucy", "--fold", "each/5"], "eth_ucy's folds are named scenes, not parts"),
    (["--dataset", "argoverse", "--grid", "nope=1,2"], "--grid 'nope=1,2': expected KEY=V1,V2,... with KEY a flag"),
    (["--dataset", "argoverse", "--grid", "hidden=8,x"], "'x' is not a valid int for --hidden"),
    (["--dataset", "argoverse", "--grid", "cell=lstm,rnn"], "--cell is one of ['gru', 'lstm'], got 'rnn'"),
    (["--dataset", "argoverse", "--grid", "reverse=on,maybe"], "--reverse takes on or off, got 'maybe'"),
    (["--dataset", "argoverse", "--ray"], "one run has nothing to spread over Ray"),
    (["--dataset", "argoverse", "--seeds", "2", "--ray", "no address"], "expected auto, local, HOST:PORT"),
    (["--dataset", "argoverse", "--seeds", "2", "--workers", "2"], "data-parallel training is for one run"),
    (["--dataset", "argoverse", "--workers", "0"], "--workers 0: expected at least 1 each"),
])
def test_a_bad_sweep_flag_exits_2_with_what_was_expected(args: list[str], expected: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main([*args, "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()   # refused before any run started


def test_config_argv_gives_the_config_back() -> None:
    argv = ["--dataset", "drives", "--data", "d", "--fold", "2/5", "--lr", "0.003", "--no-cv-init", "--reverse",
            "--feature", "history=6", "--feature", "k_neighbors=4", "--ray", "--grid", "hidden=4,8"]
    cfg = parse_config(argv)
    assert parse_config(train_sweep.config_argv(cfg)) == cfg


def test_grid_runs_the_product_with_its_folds_and_pools_each_recipe(argo: Path, tmp_path: Path) -> None:
    assert _argo_all(argo, tmp_path / "g", "--grid", "hidden=4,8", "--grid", "no-mirror=on,off") == 0
    rows = _table(tmp_path / "g" / "grid.csv")
    assert len(rows) == 4 * 3 and [r["run"] for r in rows[-4:]] == [
        "hidden4_no_mirroron/pooled", "hidden4_no_mirroroff/pooled", "hidden8_no_mirroron/pooled",
        "hidden8_no_mirroroff/pooled"]
    assert {(r["hidden"], r["no_mirror"]) for r in rows} == {(h, m) for h in ("4", "8") for m in ("on", "off")}
    run = json.loads((tmp_path / "g" / "hidden4_no_mirroron" / "fold_1of2" / "best.metrics.json").read_text())
    assert "--hidden 4" in run["command"] and "--no-mirror" in run["command"]


# -- Ray -------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="--ray needs ray: pip install 'drivecast[fleet]'")
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    print(f"local Ray started in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_fold_all_on_ray_gives_the_same_table_as_in_this_process(argo: Path, tmp_path: Path, local_ray: Any) -> None:
    assert _argo_all(argo, tmp_path / "seq") == 0
    t0 = time.monotonic()
    assert _argo_all(argo, tmp_path / "ray", "--ray") == 0
    print(f"--fold all/2 --ray: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert local_ray.is_initialized()   # a Ray this process started is left to its owner
    ray_rows = _table(tmp_path / "ray" / "folds.csv")
    assert _scores(ray_rows) == _scores(_table(tmp_path / "seq" / "folds.csv"))
    assert all(int(r["worker"].rsplit(":", 1)[1]) != os.getpid() for r in ray_rows[:2])


def test_seeds_on_ray_merge_into_the_weights_of_seeds_in_a_row(eth: Path, tmp_path: Path, local_ray: Any) -> None:
    import torch

    from models.trajectory import load_checkpoint

    base = ["--dataset", "eth_ucy", "--data", str(eth), "--fold", "aa", *TINY, "--seeds", "2"]
    assert train.main([*base, "--out", str(tmp_path / "seq")]) == 0
    assert train.main([*base, "--ray", "--out", str(tmp_path / "ray")]) == 0
    a = load_checkpoint(tmp_path / "seq" / "best.pt")[0].state_dict()
    b = load_checkpoint(tmp_path / "ray" / "best.pt")[0].state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert [r["run"] for r in _table(tmp_path / "ray" / "seeds.csv")] == ["seed0", "seed1"]


@pytest.mark.timeout(240)   # a worker with one chunk fewer than the other leaves DDP waiting for ever
def test_workers_train_one_model_data_parallel_on_ray_train(eth: Path, tmp_path: Path, local_ray: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Tracks of 22 to 30 samples: each batch is split across the two workers after it is padded whole,
    so both take the same optimiser steps; the checkpoint is an ordinary one that exports and runs."""
    from export.runtime.step_model import StepModel
    from export.torch_export.onnx_export import export_onnx
    from models.trajectory import load_checkpoint

    out = tmp_path / "ddp"
    t0 = time.monotonic()
    assert train.main(["--dataset", "eth_ucy", "--data", str(eth), "--fold", "aa", "--epochs", "2", "--hidden", "8",
                       "--batch", "4", "--no-progress", "--workers", "2", "--out", str(out)]) == 0
    print(f"--workers 2: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    shown = capsys.readouterr().out   # worker 0's lines, once each, as a one-process run prints them
    assert shown.count("epoch 1: loss") == 1 and "best epoch" in shown and shown == (out / "train.log").read_text()
    metrics = json.loads((out / "best.metrics.json").read_text())
    steps = metrics["data_parallel"]["optimizer_steps"]
    assert metrics["data_parallel"]["workers"] == 2 and steps[0] == steps[1] > 0, metrics["data_parallel"]
    assert "--workers 2" in metrics["command"] and len(metrics["history"]) == 2
    model = load_checkpoint(out / "best.pt")[0]
    onnx = export_onnx(out / "best.pt", tmp_path / "ddp.onnx")[0]
    assert StepModel(onnx).meta.hidden == model.cfg.hidden == 8
    assert local_ray.is_initialized()   # a Ray this process started is left to its owner


def test_a_failing_data_parallel_run_exits_1_with_the_workers_reason(tmp_path: Path, local_ray: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(["--dataset", "eth_ucy", "--data", str(tmp_path / "nope"), "--fold", "aa", *TINY,
                       "--workers", "2", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().endswith(f"data directory '{tmp_path / 'nope'}' does not exist or is not "
                                                    "a directory")


# -- Ctrl-C ------------------------------------------------------------------------------------------------------------

def test_ctrl_c_ends_every_pool_worker(argo: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--dataset", "argoverse", "--data", str(argo),
           "--fold", "all/2", "--jobs", "2", "--epochs", "100000", "--patience", "100000", "--hidden", "8",
           "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        logs = [out / "fold_1of2" / "train.log", out / "fold_2of2" / "train.log"]

        def training() -> bool:   # both workers past their first epoch (or the sweep died: say why)
            assert proc.poll() is None, proc.communicate(timeout=5)[0]
            return all(p.exists() and "epoch 1:" in p.read_text() for p in logs)

        wait_for(training, 60, "both fold workers to train", interval=0.2)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)   # what a terminal's Ctrl-C does: the whole group
        text = proc.communicate(timeout=30)[0]
        wait_for(lambda: not group_alive(proc.pid), 10, "every worker of the sweep to exit", interval=0.1)
        assert proc.returncode == 130 and "interrupted: every run stopped" in text
        print(f"Ctrl-C to every worker gone: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

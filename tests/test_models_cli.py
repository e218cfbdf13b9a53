"""models/train.py and models/evaluate.py end to end on a tiny synthetic ETH/UCY-layout directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import evaluate, train, train_data


def _write_scene(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for ped in range(6):
        start = int(rng.integers(0, 10))
        p = rng.uniform(-5, 5, 2)
        v = rng.normal(0, 0.5, 2)
        for j in range(int(rng.integers(22, 30))):
            q = p + v * j
            rows.append((10 * (start + j), ped, q[0], q[1]))
    rows.sort()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f:.1f}\t{i:.1f}\t{x:.4f}\t{y:.4f}\n" for f, i, x, y in rows))


@pytest.fixture()
def tiny_eth(tmp_path: Path) -> Path:
    root = tmp_path / "eth_ucy"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        _write_scene(root / "zz" / split / f"scene_a_{split}.txt", seed)
        _write_scene(root / "zz" / split / f"scene_b_{split}.txt", seed + 10)
    return root


def test_train_then_eval_both_protocols_and_json(tiny_eth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "2",
                     "--hidden", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "best.metrics.json").read_text())
    assert {"model", "stream", "cv", "cv_k", "per_scene"} <= set(metrics)
    report = tmp_path / "eval.json"
    rc = evaluate.main([str(out / "best.pt"), "--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz",
                        "--split", "test", "--json", str(report), "--plot", str(tmp_path / "plots")])
    assert rc == 0
    res = json.loads(report.read_text())
    for name in ("model", "stream", "cv"):
        assert res[name]["ade"] >= 0 and res[name]["fde"] >= 0
    assert set(res["per_scene"]) == {"scene_a", "scene_b"}
    assert res["cv"]["ade"] < 1e-3   # straight walkers (4-decimal files): constant velocity is exact
    assert (tmp_path / "plots" / "scene_a.png").stat().st_size > 0
    printed, err = capsys.readouterr()
    assert "scene_a" in printed and "not held out" not in err
    # another fold, whose test scene is one this model trained on (ETH/UCY names a scene's test file after it)
    shutil.copytree(tiny_eth / "zz", tiny_eth / "yy")
    shutil.copy(tiny_eth / "zz" / "train" / "scene_a_train.txt", tiny_eth / "yy" / "test" / "scene_a.txt")
    assert evaluate.main([str(out / "best.pt"), "--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "yy",
                          "--split", "test"]) == 0
    assert ("1 of the 3 scored files hold scenes this model trained or stopped early on (scene_a.txt): the figures "
            "below are not held out") in capsys.readouterr().err


def test_eval_of_a_missing_model_prints_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = evaluate.main([str(tmp_path / "no.pt"), "--dataset", "eth_ucy", "--data", str(tmp_path)])
    assert rc == 1
    assert "ERROR:" in capsys.readouterr().err


def test_train_on_a_wrong_path_prints_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = train.main(["--dataset", "argoverse", "--data", str(tmp_path / "missing"), "--no-progress"])
    assert rc == 1
    assert "missing" in capsys.readouterr().err


def test_train_feature_overrides_reach_the_checkpoint_and_bad_ones_are_refused(
        tiny_eth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from models.trajectory import load_checkpoint

    out = tmp_path / "look"
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "1", "--hidden", "8",
                     "--feature", "heading_lookback=6", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert load_checkpoint(out / "best.pt")[1].features["heading_lookback"] == 6
    for bad, expected in (("heading_lookback=1", "heading_lookback=1: expected an int >= heading_steps (2)"),
                          ("nope=1", "KEY one of ['crowd', 'heading_lookback', 'heading_steps', 'history'"),
                          ("history=two", "expected a number of type int")):
        capsys.readouterr()
        rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--feature", bad,
                         "--out", str(tmp_path / "bad"), "--no-progress"])
        assert rc == 2, bad
        assert expected in capsys.readouterr().err, bad


def test_train_with_window_loss_cv_init_and_reversed_scenes(tiny_eth: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    tracks = {}
    for extra in ([], ["--reverse"]):
        out = tmp_path / f"run_w{len(extra)}"
        rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "2",
                         "--hidden", "8", "--window-weight", "1", "--window-batch", "8", "--cv-init", *extra,
                         "--out", str(out), "--no-progress"])
        assert rc == 0
        metrics = json.loads((out / "best.metrics.json").read_text())
        assert metrics["model"]["ade"] >= 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("train: "))
        tracks[len(extra)] = int(line.split(" tracks")[0].rsplit(" ", 1)[1])
    assert tracks[1] == 2 * tracks[0] > 0  # every track once more, backwards


@pytest.mark.parametrize("modes", [1, 6])
def test_cv_init_head_reproduces_constant_velocity(modes: int) -> None:
    import torch

    from export.runtime.features import default_spec, feature_dim
    from models.baselines import ConstantVelocityStep
    from models.trajectory import ModelConfig, TrajectoryModel

    spec = default_spec("vehicle")
    cfg = ModelConfig(input_dim=feature_dim(spec), hidden=16, horizon=30, obs_len=20, dt_s=0.1, features=spec,
                      modes=modes)
    model = TrajectoryModel(cfg)
    train.init_head_cv(model, spec, 8)
    with torch.no_grad():
        model.head.weight[:, :16] = 0.0   # K > 1 keeps its recurrent part random: left out of the comparison
    x = np.random.default_rng(0).normal(size=(5, feature_dim(spec))).astype(np.float32)
    x[:, 16:24] = 1.0   # all 8 displacements known
    h, c = model.zero_state(5)
    pred, _, _, _ = model.step_modes(torch.from_numpy(x), h, c)
    cv, _ = ConstantVelocityStep(spec, 8, 30, 20, 0.1).step(x, ())
    assert pred.shape == (5, modes, 30, 2)
    np.testing.assert_allclose(pred.detach().numpy(), np.broadcast_to(cv[:, None], pred.shape), atol=1e-4)


def test_training_windows_match_the_window_protocol(tiny_eth: Path) -> None:
    from export.runtime.features import default_spec
    from models.datasets import load_scenes, to_grid

    spec = default_spec("pedestrian")
    grids = [to_grid(s, 0.4) for s in load_scenes("eth_ucy", tiny_eth, "train", "zz")]
    x, y = train_data.training_windows(spec, grids, 8, 12)
    assert x.shape[1:] == (8, 3 * 4 + 5 * 4) and y.shape[1:] == (12, 2) and len(x) == len(y) > 0
    # straight walkers: the target is the current velocity extrapolated, in the heading frame (+x)
    v = x[:, -1, 0:2]
    steps = np.arange(1, 13, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(y.numpy(), v.numpy()[:, None, :] * steps, atol=2e-2)


def test_train_seeds_ships_their_mirror_averaged_merge(tiny_eth: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    import torch

    from export.runtime.features import mirror_sign
    from models.trajectory import load_checkpoint

    out = tmp_path / "avg"
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "2", "--hidden", "8",
                     "--seed", "3", "--seeds", "2", "--jobs", "2", "--mirror-average", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    model, cfg, blob = load_checkpoint(out / "best.pt")
    members = [load_checkpoint(out / f"seed{s}" / "best.pt")[0] for s in (3, 4)]
    assert [m.cfg.hidden for m in members] == [8, 8] and cfg.hidden == 32
    metrics = json.loads((out / "best.metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [3, 4] and metrics["mirror_average"] is True
    assert metrics["model"]["ade"] == blob["metrics"]["model"]["ade"] >= 0
    sign = torch.from_numpy(mirror_sign(cfg.features))
    x = torch.randn(4, 6, cfg.input_dim)
    with torch.no_grad():
        refs = [m(x)[0] for m in members] + [m(x * sign)[0] * torch.tensor([1.0, -1.0]) for m in members]
        assert (model(x)[0] - torch.stack(refs).mean(0)).abs().max().item() <= 1e-5
    # seeds trained side by side in processes give the weights they give one after another
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "2", "--hidden", "8",
                     "--seed", "3", "--seeds", "2", "--mirror-average", "--out", str(tmp_path / "seq"), "--no-progress"])
    assert rc == 0
    again = load_checkpoint(tmp_path / "seq" / "best.pt")[0].state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    assert train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--seeds", "0"]) == 2
    assert "--seeds 0" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["eth_ucy", "eth-ucy", "ETH-UCY"])
def test_train_eval_and_import_accept_both_spellings_of_eth_ucy(spelling: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from models import drive_import, train_config

    assert train_config.parser().parse_args(["--dataset", spelling, "--data", "d"]).dataset == "eth_ucy"
    assert evaluate._parser().parse_args(["m.pt", "--dataset", spelling, "--data", "d"]).dataset == "eth_ucy"
    assert drive_import.main([spelling, str(tmp_path / "nope"), "-o", str(tmp_path / "x.mcap")]) == 1
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_dataset_help_names_one_canonical_spelling() -> None:
    from models import drive_import, train_config

    for p in (train_config.parser(), evaluate._parser()):
        assert "{apolloscape,argoverse,drives,drives_pedestrian,eth_ucy}" in p.format_help()
    with pytest.raises(SystemExit):
        drive_import.main(["nope", "x", "-o", "y"])


def test_eval_plot_panels_have_units_per_panel_errors_and_say_how_they_were_chosen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import matplotlib.pyplot as plt

    from models import plots

    t = np.arange(1, 4, dtype=np.float64)[None, :, None]
    truth = np.concatenate([t * [1.0, 0.0]] * 4)                      # 4 windows, 3 steps along +x
    es = types.SimpleNamespace(obs=np.zeros((4, 2, 2)), truth=truth, scene=np.array(["s", "s", "s", "s"]),
                               window_ref=[("s", a, 10) for a in range(4)])
    preds = {"model": truth + [0.0, 0.3], "cv": truth * 2}           # model 0.3 m off everywhere; CV 1, 2, 3 m
    assert plots.panel_errors(preds, truth, 0) == "ADE/FDE model 0.30/0.30  CV 2.00/3.00 m"
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)                  # keep the figure to read it back
    [png] = plots.plot_windows(es, preds, tmp_path, per_scene=3, seed=5, dt_s=0.4)
    assert png.stat().st_size > 0
    fig = figs[0]
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 3
    assert all((ax.get_xlabel(), ax.get_ylabel()) == ("x (m)", "y (m)") for ax in drawn)
    assert all(ax.get_title().endswith("ADE/FDE model 0.30/0.30  CV 2.00/3.00 m") for ax in drawn)
    assert fig.get_suptitle() == ("s: 3 of 4 windows, drawn uniformly at random (seed 5), not chosen by "
                                  "error; prediction 3 steps = 1.2 s ahead; axes in metres (world frame)")
    monkeypatch.undo()
    plt.close(fig)


def test_extra_data_trains_on_more_scenes_and_leaves_the_split_alone(tiny_eth: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import torch

    extra = tmp_path / "extra"
    _write_scene(extra / "more_c.txt", 5)
    _write_scene(extra / "more_d.txt", 6)
    blobs = {}
    for name, flags in (("plain", []), ("extra", ["--extra-data", str(extra)])):
        rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "1",
                         "--hidden", "8", "--out", str(tmp_path / name), "--no-progress", *flags])
        assert rc == 0
        blobs[name] = torch.load(tmp_path / name / "best.pt", weights_only=True)["data"]
    assert blobs["extra"]["val_files"] == blobs["plain"]["val_files"]
    assert blobs["extra"]["train_files"] == blobs["plain"]["train_files"] + ["more_c.txt", "more_d.txt"]
    assert blobs["extra"]["extra_data"] == [str(extra)]

    # a scene that is also under --data could be a val or test scene: refused, naming the file
    _write_scene(extra / "scene_a_test.txt", 2)
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "1",
                     "--hidden", "8", "--out", str(tmp_path / "leak"), "--no-progress", "--extra-data", str(extra)])
    assert rc == 1
    assert "scene_a_test.txt" in capsys.readouterr().err
    assert not (tmp_path / "leak" / "best.pt").exists()


def test_train_and_eval_a_model_of_k_futures(tiny_eth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "k3"
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "2", "--hidden", "8",
                     "--modes", "3", "--cv-init", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "minADE/minFDE_3" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    rc = evaluate.main([str(out / "best.pt"), "--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz",
                        "--split", "test", "--json", str(report)])
    assert rc == 0
    res = json.loads(report.read_text())
    for name in ("model", "stream", "cv"):
        r = res[name]
        assert r["k"] == 3 and 0 <= r["miss_rate_k"] <= 1
        # the best of three is never worse than the most probable one; brier adds at most 1
        assert r["min_fde_k"] <= r["fde"] + 1e-9 and r["min_fde_k"] <= r["brier_min_fde_k"] <= r["min_fde_k"] + 1
    assert res["cv"]["cv_ks"][0] == res["cv_k"] and len(set(res["cv"]["cv_ks"])) == 3
    assert res["per_age"]["0-5"]["model"]["k"] == 3
    assert "of the most probable of 3 futures" in capsys.readouterr().out
    # K futures are not averaged across seeds: refused before any training
    rc = train.main(["--dataset", "eth_ucy", "--data", str(tiny_eth), "--fold", "zz", "--epochs", "1", "--hidden", "8",
                     "--modes", "3", "--seeds", "2", "--out", str(tmp_path / "avg"), "--no-progress"])
    assert rc == 2 and "--modes" in capsys.readouterr().err


def test_a_long_run_is_not_cut_by_wall_time_unless_asked(tmp_path: Path) -> None:
    import time

    from models.train_config import parse_config

    # a run 3x larger than the shipped recipe's took 45 min here: a default budget of 30 min cut it at
    # epoch 14 of 30, mid-way down the learning-rate schedule
    cfg = parse_config(["--dataset", "argoverse", "--data", str(tmp_path)])
    an_hour_ago = time.time() - 3600
    assert not train._should_stop(dataclasses.replace(cfg, patience=30), 13, 13, an_hour_ago)
    asked = dataclasses.replace(cfg, patience=30, max_minutes=45.0)
    assert train._should_stop(asked, 13, 13, an_hour_ago)

"""models/datasets.py: loaders on the real files, resampling, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.datasets import DatasetError, Scene, Track, load_scene, load_scenes, reversed_grid, scene_files, to_grid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(sub: str) -> Path:
    path = DATA / sub
    if not path.is_dir():
        pytest.skip(f"dataset {path} not present (../shared/data beside the checkout)")
    return path


def test_eth_ucy_fold_loads_train_files_at_2_5_hz() -> None:
    root = _need("eth_ucy")
    files = scene_files("eth_ucy", root, "train", "zara1")
    assert "crowds_zara01_train.txt" not in {p.name for p in files}   # the held-out scene
    scene = load_scene("eth_ucy", root / "zara1" / "train" / "crowds_zara02_train.txt")
    assert scene.group == "crowds_zara02" and len(scene.tracks) > 50
    steps = np.concatenate([np.diff(t.t_s) for t in scene.tracks])
    assert np.isclose(np.median(steps), 0.4)


def test_eth_ucy_fold_all_counts_each_scene_once() -> None:
    root = _need("eth_ucy")
    names = [p.name for p in scene_files("eth_ucy", root, "train", "all")]
    assert len(names) == len(set(names)) == 8   # 8 scene files, each in 4 folds on disk


def test_argoverse_split_is_seeded_and_disjoint() -> None:
    root = _need("argoverse1_forecasting")
    parts = {s: set(scene_files("argoverse", root, s)) for s in ("train", "val", "test")}
    assert not parts["train"] & parts["val"] and not parts["val"] & parts["test"]
    assert len(parts["val"]) == len(parts["test"]) == 120
    scene = load_scene("argoverse", sorted(parts["val"])[0])
    agent = [t for t in scene.tracks if t.focal]
    assert len(agent) == 1 and len(agent[0].t_s) == 50
    grid = to_grid(scene, 0.1)
    assert grid.valid[grid.focal].sum() == 50


def test_apolloscape_splits_by_recording() -> None:
    root = _need("apolloscape_trajectory")
    rec = {s: {p.name.split("_")[1] for p in scene_files("apolloscape", root, s)} for s in ("train", "val", "test")}
    assert not rec["train"] & rec["val"] and not rec["train"] & rec["test"]
    scene = load_scenes("apolloscape", root, "val")[0]
    assert {t.kind for t in scene.tracks} <= {"vehicle", "pedestrian", "bicycle", "other"}


@pytest.mark.parametrize(("dataset", "names"), [
    ("argoverse", [f"{i}.csv" for i in range(40)]),
    ("apolloscape", [f"result_{r}_{seg}_frame.txt" for r in range(12) for seg in range(3)]),
])
def test_cross_validation_folds_partition_train_and_val_and_leave_test_alone(
        tmp_path: Path, dataset: str, names: list[str]) -> None:
    for name in names:
        (tmp_path / name).write_text("")
    plain = {s: set(scene_files(dataset, tmp_path, s)) for s in ("train", "val", "test")}
    vals = []
    for i in (1, 2, 3):
        train, val = (set(scene_files(dataset, tmp_path, s, f"{i}/3")) for s in ("train", "val"))
        assert val and not train & val and train | val == plain["train"] | plain["val"]
        assert set(scene_files(dataset, tmp_path, "test", f"{i}/3")) == plain["test"]
        if dataset == "apolloscape":   # a recording never straddles train and val
            assert not {p.name.split("_")[1] for p in train} & {p.name.split("_")[1] for p in val}
        vals.append(val)
    assert set.union(*vals) == plain["train"] | plain["val"] and sum(map(len, vals)) == len(set.union(*vals))
    for bad in ("0/3", "4/3", "1/1", "two"):
        with pytest.raises(DatasetError, match=rf"{dataset} --fold '{bad}': expected I/K"):
            scene_files(dataset, tmp_path, "test", bad)


def test_wrong_data_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="nope.*does not exist"):
        scene_files("eth_ucy", missing, "train", "eth")
    with pytest.raises(DatasetError, match=r"no directory .*zara9.*folds here"):
        scene_files("eth_ucy", tmp_path, "train", "zara9")


@pytest.mark.parametrize(("dataset", "name", "cases"), [
    ("eth_ucy", "bad.txt", [("0\t1\t1.0\t2.0\n10\t1\t1.5\n", r"bad\.txt:2: expected 4 tab-separated columns"),
                            ("0\t1\t1.0\tabc\n", r"bad\.txt:1: expected numbers")]),
    ("argoverse", "7.csv", [("TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME\n1.0,a,AGENT,1,2,MIA\n1.1,a,AGENT,x,2,MIA\n",
                             r"7\.csv:3: expected numbers"),
                            ("T,ID\n", r"7\.csv:1: expected header")]),
    ("apolloscape", "result_1_1_frame.txt", [("0 4 1 256.2 76.9 37.7 4.6 2.0 1.4 -0.02\n1 4 9 256.2 76.9 37.7 4.6 2.0 1.4 -0.02\n",
                                              r"result_1_1_frame\.txt:2: object_type 9")]),
])
def test_a_malformed_file_names_file_and_line(tmp_path: Path, dataset: str, name: str,
                                               cases: list[tuple[str, str]]) -> None:
    bad = tmp_path / name
    for text, match in cases:
        bad.write_text(text)
        with pytest.raises(DatasetError, match=match):
            load_scene(dataset, bad)


def test_to_grid_interpolates_short_gaps_and_splits_long_ones() -> None:
    t = np.array([0.0, 0.4, 1.2, 1.6, 4.0, 4.4])   # a 0.8 s gap (interpolated) and a 2.4 s gap (split)
    xy = np.stack([t, 2 * t], -1)
    grid = to_grid(Scene("s", "s", "mem", [Track("1", "pedestrian", t, xy)]), 0.4)
    assert grid.xy.shape[0] == 2
    np.testing.assert_allclose(grid.xy[0, 2], [0.8, 1.6])
    assert grid.valid[0].sum() == 5 and grid.valid[1].sum() == 2


def test_a_reversed_scene_retraces_every_path_backwards_on_the_same_grid() -> None:
    t = np.array([0.0, 0.4, 0.8, 1.2])
    walker = Track("1", "pedestrian", t, np.stack([t, 0 * t], -1))       # east, 1 m/s
    late = Track("2", "pedestrian", t[2:], np.array([[5.0, 0.0], [5.0, 1.0]]))  # appears at 0.8 s
    grid = to_grid(Scene("s", "s", "mem", [walker, late]), 0.4)
    back = reversed_grid(grid)
    np.testing.assert_allclose(back.xy[0], grid.xy[0][::-1])             # now walks west
    assert back.valid[1].tolist() == [True, True, False, False]          # and leaves at 0.4 s
    np.testing.assert_allclose(back.xy[1, :2], [[5.0, 1.0], [5.0, 0.0]])
    assert back.kinds == grid.kinds and back.name == "s_reversed"
    assert grid.xy[0, 0, 0] == 0.0  # the original is untouched

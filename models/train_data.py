"""What `drivecast train` trains on: scenes -> training tracks, windows and the validation set, then batches.

Everything is read and prepared once (`load_data`), before the first epoch; each epoch then draws
shuffled batches of similar-length tracks (`train_batches`), padded and augmented by mirror image and
speed (`pad_batch`), and with --window-weight a batch of window-protocol samples (`window_batch`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from export.runtime.features import OPTIONAL_KEYS, default_spec, feature_dim, spec_version, to_frame, validate_spec
from models.baselines import choose_k
from models.datasets import DATASETS, DatasetError, load_scenes, reversed_grid, scene_files, to_grid
from models.evaluate import EvalSet, prepare
from models.sequences import TrackSeq, find_windows, track_sequences, window_inputs
from models.train_config import TrainConfig, TrainError, filled

__all__ = [
    "TrainData",
    "extra_scenes",
    "feature_spec",
    "load_data",
    "pad_batch",
    "train_batches",
    "training_windows",
    "val_set",
    "window_batch",
]


@dataclass
class TrainData:
    """What one run trains and validates on."""

    spec: dict[str, Any]                # the feature spec: the dataset's defaults plus --feature overrides
    train_scenes: list[Any]
    val_scenes: list[Any]
    seqs: list[TrackSeq]                # training tracks, focal ones repeated --focal-repeat times
    windows: tuple[torch.Tensor, torch.Tensor] | None  # window-protocol inputs and targets (--window-weight)
    val: EvalSet                        # the validation split as both protocols score it
    cv_k: int                           # the constant-velocity baseline's k, chosen on val
    cv_scores: dict[int, tuple[float, float]]

    def summary(self, load_s: float) -> str:
        """The line printed once the data is ready."""
        return (f"train: {_n_files(self.train_scenes)} files, {len(self.seqs)} tracks, "
                f"{sum(len(q.x) for q in self.seqs)} samples; val: {_n_files(self.val_scenes)} files, "
                f"{len(self.val.truth)} windows; CV k={self.cv_k} (chosen on val); {load_s:.1f}s to load")


def _n_files(scenes: list[Any]) -> int:
    return len({s.path for s in scenes})   # a drive is several scenes of one file


def feature_spec(agent_kind: str, overrides: list[str]) -> dict[str, Any]:
    """The agent kind's default feature spec with the --feature KEY=VALUE overrides, validated."""
    spec = default_spec(agent_kind)
    keys = {**{k: type(v) for k, v in spec.items() if k not in ("name", "version")}, **OPTIONAL_KEYS}
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in keys or not value:
            raise TrainError(f"--feature {item!r}: expected KEY=VALUE with KEY one of {sorted(keys)}", 2)
        try:
            spec[key] = keys[key](value)
        except ValueError:
            raise TrainError(f"--feature {item!r}: expected a number of type {keys[key].__name__}", 2) from None
    spec["version"] = spec_version(spec)
    try:
        validate_spec(spec)
    except ValueError as exc:
        raise TrainError(str(exc), 2) from None
    return spec


def load_data(cfg: TrainConfig) -> TrainData:
    """Scenes -> training tracks (and windows) and the validation set; TrainError when it cannot."""
    proto = DATASETS[cfg.dataset]
    min_len = filled(cfg.min_len)
    spec = feature_spec(proto.agent_kind, cfg.feature)
    try:
        train_scenes = load_scenes(cfg.dataset, cfg.data, "train", cfg.fold, cfg.topic)
        val_scenes = load_scenes(cfg.dataset, cfg.data, "val", cfg.fold, cfg.topic)
        train_scenes += extra_scenes(cfg)
    except DatasetError as exc:
        raise TrainError(str(exc), 1) from None
    train_grids = [to_grid(s, proto.dt_s) for s in train_scenes]
    if cfg.reverse:
        train_grids += [reversed_grid(g) for g in train_grids]
    # copies: a track's arrays are views of its grid's agents x samples arrays, mostly empty in a long drive
    seqs = [_compact(q) for g in train_grids for q in track_sequences(spec, g, proto.horizon, min_len)
            if q.mask.any()]
    if not seqs:
        raise TrainError(f"no training track of at least {min_len} samples in {cfg.data} (dataset={cfg.dataset}, "
                         f"fold={cfg.fold})", 1)
    # the evaluated agents (Argoverse AGENT: chosen for interesting motion) weigh more than parked OTHERS
    seqs += [q for q in seqs if q.focal] * (filled(cfg.focal_repeat) - 1)
    windows = None
    if cfg.window_weight > 0:
        windows = training_windows(spec, train_grids, proto.obs_len, proto.horizon, cfg.window_stride)
        print(f"train windows: {len(windows[0])} (window-protocol loss weight {cfg.window_weight})")
    try:
        val = val_set(cfg.dataset, spec, val_scenes)
    except DatasetError as exc:
        raise TrainError(f"validation split: {exc}", 1) from None
    cv_k, cv_scores = choose_k(val.obs, val.truth)
    return TrainData(spec, train_scenes, val_scenes, seqs, windows, val, cv_k, cv_scores)


def extra_scenes(cfg: TrainConfig) -> list[Any]:
    """Every scene of each --extra-data directory, for training only.

    They are kept out of --data's seeded split, which would otherwise reshuffle and leak test scenes into
    training; a file whose name is also under --data is refused, as the same scene would be on both sides.
    """
    if not cfg.extra_data:
        return []
    own = {p.name for p in scene_files(cfg.dataset, cfg.data, "all")}
    scenes = []
    for root in cfg.extra_data:
        files = scene_files(cfg.dataset, root, "all")
        twice = sorted(own.intersection(p.name for p in files))
        if twice:
            raise DatasetError(f"--extra-data {root}: {len(twice)} file(s) also under --data {cfg.data} "
                               f"(e.g. {twice[0]}): extra scenes must be new ones, or they can leak into val/test")
        scenes += load_scenes(cfg.dataset, root, "all", None, cfg.topic)
    return scenes


def _compact(q: TrackSeq) -> TrackSeq:
    return dataclasses.replace(q, x=q.x.copy(), y=q.y.copy(), mask=q.mask.copy())


def val_set(dataset: str, spec: dict[str, Any], scenes: list[Any]) -> EvalSet:
    """The validation split as both protocols score it (built once, reused every epoch)."""
    proto = DATASETS[dataset]
    return prepare(spec, [to_grid(s, proto.dt_s) for s in scenes], proto.obs_len, proto.horizon, proto.focal_only)


def training_windows(spec: dict[str, Any], grids: list[Any], obs_len: int, horizon: int, stride: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-protocol inputs x[W,obs_len,F] and last-step targets y[W,T,2] of every agent in `grids`."""
    xs, ys = [], []
    for g in grids:
        win = find_windows(g, obs_len, horizon, False, stride)
        if len(win.agent) == 0:
            continue
        x, hist, n = window_inputs(spec, g, win, obs_len)
        xs.append(x)
        ys.append(to_frame(spec, win.truth, hist, n).astype(np.float32))
    f = feature_dim(spec)
    if not xs:
        return torch.zeros(0, obs_len, f), torch.zeros(0, horizon, 2)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def train_batches(seqs: list[TrackSeq], batch: int, rng: random.Random) -> list[list[TrackSeq]]:
    """Shuffled batches of similar-length tracks (little padding), in shuffled order."""
    order = seqs[:]
    rng.shuffle(order)
    pool = 32 * batch
    batches = []
    for lo in range(0, len(order), pool):
        chunk = sorted(order[lo: lo + pool], key=lambda q: len(q.x))
        batches += [chunk[i: i + batch] for i in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


def pad_batch(group: list[TrackSeq], sign: np.ndarray | None, lengths: np.ndarray, speed_aug: float,
              rng: random.Random) -> tuple[torch.Tensor, ...]:
    """x, y, mask of a batch of tracks padded to the longest, each mirrored (p=0.5) and speed-scaled."""
    length = max(len(q.x) for q in group)
    b, f = len(group), group[0].x.shape[1]
    t = group[0].y.shape[1]
    x = np.zeros((b, length, f), np.float32)
    y = np.zeros((b, length, t, 2), np.float32)
    m = np.zeros((b, length, t), np.float32)
    for i, q in enumerate(group):
        n = len(q.x)
        x[i, :n], y[i, :n], m[i, :n] = q.x, q.y, q.mask
        if sign is not None and rng.random() < 0.5:
            x[i, :n] *= sign
            y[i, :n, :, 1] *= -1.0
        if speed_aug > 0:
            k = rng.uniform(1 - speed_aug, 1 + speed_aug)
            x[i, :n] *= np.where(lengths, k, 1.0).astype(np.float32)
            y[i, :n] *= k
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(m)


def window_batch(windows: tuple[torch.Tensor, torch.Tensor], size: int, sign: np.ndarray | None,
                 lengths: np.ndarray, speed_aug: float, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of training windows, augmented like the tracks (mirror image, speed)."""
    win_x, win_y = windows
    sel = torch.from_numpy(np.array(rng.sample(range(len(win_x)), min(size, len(win_x)))))
    wx, wy = win_x[sel].clone(), win_y[sel].clone()
    if sign is not None:
        flip = torch.rand(len(sel)) < 0.5
        wx[flip] *= torch.from_numpy(sign)
        wy[flip, :, 1] *= -1.0
    if speed_aug > 0:
        k = 1 + speed_aug * (2 * torch.rand(len(sel), 1) - 1)
        wx = torch.where(torch.from_numpy(lengths)[None, None, :], wx * k[:, :, None], wx)
        wy = wy * k[:, :, None]
    return wx, wy

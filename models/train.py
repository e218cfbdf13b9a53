"""`drivecast train --dataset {eth_ucy,argoverse,apolloscape} --data DIR [--fold F] [--cell lstm|gru] ...`

Reads top to bottom, nanoGPT style: defaults, data, model, evaluation, one loop.

Training is many-to-many over whole tracks: every agent from its first to its last sample, a prediction
of the whole horizon at every step, the loss masked where the future is not in the data (partial tracks
still teach). Sequences are cut into chunks of --bptt steps for truncated back-propagation through time,
the state carried (detached) from chunk to chunk, so the state a streaming node carries over a track's
whole life is in distribution. Gradients are clipped by norm. Loss = mean Euclidean error in the
normalised agent frame (the ADE the benchmark measures, not its square: a few wild tracks do not dominate).
Options: --cv-init starts the head at constant velocity (the model learns a residual over CV);
--window-weight adds a loss on training windows run exactly as the window protocol evaluates them.

Validation (each epoch) runs both protocols on the validation split; the checkpoint with the lowest mean
of window and streaming ADE is kept, and training stops after --patience epochs without improvement.
Outputs under --out: the checkpoint (--name, default best.pt) and <name stem>.metrics.json.
--seeds N trains N runs (seeds --seed, --seed+1, ...) under OUT/seed<S>/ and ships their average, merged
exactly into one model of N times the hidden size (models.trajectory.average_models); --mirror-average
also averages each run with its own mirror image across the heading axis (2N members).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.runtime.features import (
    OPTIONAL_KEYS,
    default_spec,
    feature_dim,
    flag_mask,
    mirror_sign,
    to_frame,
    validate_spec,
)
from models.baselines import choose_k
from models.datasets import DATASETS, DatasetError, load_scenes, reversed_grid, to_grid
from models.evaluate import EvalSet, TorchStepper, evaluate, prepare
from models.sequences import TrackSeq, find_windows, track_sequences, window_inputs
from models.trajectory import ModelConfig, TrajectoryModel, average_models, load_checkpoint, save_checkpoint

__all__ = ["init_head_cv", "main", "masked_ade_loss", "train_batches", "training_windows"]

# Defaults per dataset, measured on this 2-core CPU. ETH/UCY is small (56k samples per fold, ~2 s an
# epoch): many epochs and small batches. Argoverse has 750k samples (~10 s an epoch at hidden 128): fewer
# epochs; tracks shorter than 1 s are mostly parked cars and tracker fragments and only slow it down.
_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "eth_ucy": {"bptt": 16, "min_len": 3, "epochs": 150, "batch": 32, "patience": 25, "focal_repeat": 1},
    "argoverse": {"bptt": 25, "min_len": 10, "epochs": 30, "batch": 64, "patience": 8, "focal_repeat": 3},
    "apolloscape": {"bptt": 12, "min_len": 3, "epochs": 100, "batch": 32, "patience": 20, "focal_repeat": 1},
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drivecast train", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--data", required=True, help="dataset directory (e.g. ../shared/data/eth_ucy)")
    p.add_argument("--fold", default=None,
                   help="eth_ucy fold (eth, hotel, univ, zara1, zara2) or 'all'; argoverse/apolloscape: I/K, "
                        "cross-validation part I of K over train+val (test untouched)")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0, help="between stacked layers")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default per dataset)")
    p.add_argument("--batch", type=int, default=None, help="tracks per batch (default per dataset)")
    p.add_argument("--bptt", type=int, default=None, help="truncated BPTT chunk, samples (default per dataset)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--no-mirror", action="store_true", help="disable left/right mirror augmentation")
    p.add_argument("--reverse", action="store_true",
                   help="also train on every training scene played backwards (people walk both ways)")
    p.add_argument("--speed-aug", type=float, default=0.2,
                   help="scale each training track's lengths by U(1-a, 1+a): other walkers, other cars")
    p.add_argument("--ema", type=float, default=0.995,
                   help="exponential moving average of the weights, per batch (0 = off); validated and saved")
    p.add_argument("--focal-repeat", type=int, default=None,
                   help="each epoch sees focal tracks (the Argoverse AGENT) this many times (default per dataset)")
    p.add_argument("--min-len", type=int, default=None, help="shortest track used for training, samples")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without validation improvement before stopping (default per dataset)")
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="wall-clock budget (of each seed with --seeds); stops after the epoch")
    p.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE",
                   help="override a feature-spec entry (export/runtime/features.py), e.g. --feature k_neighbors=6")
    p.add_argument("--cv-init", action="store_true",
                   help="initialise the head's skip path to constant velocity (CV k from val, capped at the "
                        "feature history): the model starts at CV and learns a residual correction")
    p.add_argument("--window-weight", type=float, default=0.0,
                   help="add this weight times the window-protocol loss on training windows (state from zero "
                        "obs_len samples before the prediction, own history cut at the window start, loss on "
                        "the last step's whole horizon), one batch of --window-batch windows per track batch")
    p.add_argument("--window-batch", type=int, default=128)
    p.add_argument("--window-stride", type=int, default=1, help="stride of the training windows, samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="train this many seeds from --seed and ship their average, merged into one model")
    p.add_argument("--jobs", type=int, default=1, help="with --seeds: train this many seeds at once (processes)")
    p.add_argument("--mirror-average", action="store_true",
                   help="average each model with its mirror image across the heading axis (pedestrians: "
                        "left and right are alike; vehicles drive on one side, so not for them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small LSTMs)")
    p.add_argument("--out", default=None, help="output directory (default runs/<dataset>_<fold>_<cell>)")
    p.add_argument("--name", default="best.pt", help="checkpoint file name inside --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    return p


# ---------------------------------------------------------------- batches and loss


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


def _pad(group: list[TrackSeq], sign: np.ndarray | None, lengths: np.ndarray, speed_aug: float,
         rng: random.Random) -> tuple[torch.Tensor, ...]:
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


def init_head_cv(model: TrajectoryModel, spec: dict[str, Any], k: int) -> None:
    """Set the head so that pred = CV(k) from x_t's own displacements (recurrent part and bias zero).

    x_t holds the last `history` displacements newest first, (x, y) in the agent frame in units of scale,
    and pred is the offset from the current position in the same units: CV(k) at step t is
    t * mean of the last k displacements, a linear function of x_t. Same architecture and graph, only
    the starting point moves: training learns the correction over CV instead of CV itself.
    """
    cfg = model.cfg
    with torch.no_grad():
        w = model.head.weight            # [2T, H + F]
        w.zero_()
        model.head.bias.zero_()
        for t in range(cfg.horizon):
            for j in range(k):
                for d in range(2):
                    w[2 * t + d, cfg.hidden + 2 * j + d] = (t + 1) / k


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


def masked_ade_loss(pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean error over the (step, horizon) cells whose future is known."""
    d = torch.sqrt(((pred - y) ** 2).sum(-1) + 1e-6)
    return (d * m).sum() / m.sum().clamp(min=1.0)


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        print(f"ERROR: --seeds {args.seeds} --jobs {args.jobs}: expected at least 1 each", file=sys.stderr)
        return 2
    if args.seeds > 1 or args.mirror_average:
        return _train_average(args, argv)
    proto = DATASETS[args.dataset]
    for key, value in _DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    bptt, min_len, epochs = args.bptt, args.min_len, args.epochs
    out = _out_dir(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    t_start = time.time()

    # -- data: train tracks (many-to-many sequences) and the validation evaluation set
    spec = default_spec(proto.agent_kind)
    keys = {**{k: type(v) for k, v in spec.items() if k not in ("name", "version")}, **OPTIONAL_KEYS}
    for item in args.feature:
        key, _, value = item.partition("=")
        if key not in keys or not value:
            print(f"ERROR: --feature {item!r}: expected KEY=VALUE with KEY one of {sorted(keys)}", file=sys.stderr)
            return 2
        try:
            spec[key] = keys[key](value)
        except ValueError:
            print(f"ERROR: --feature {item!r}: expected a number of type {keys[key].__name__}", file=sys.stderr)
            return 2
    try:
        validate_spec(spec)
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    try:
        train_scenes = load_scenes(args.dataset, args.data, "train", args.fold)
        val_scenes = load_scenes(args.dataset, args.data, "val", args.fold)
    except DatasetError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    train_grids = [to_grid(s, proto.dt_s) for s in train_scenes]
    if args.reverse:
        train_grids += [reversed_grid(g) for g in train_grids]
    seqs = [q for g in train_grids for q in track_sequences(spec, g, proto.horizon, min_len)]
    seqs = [q for q in seqs if q.mask.any()]
    if not seqs:
        print(f"ERROR: no training track of at least {min_len} samples in {args.data} (dataset={args.dataset}, "
              f"fold={args.fold})", file=sys.stderr)
        return 1
    # the evaluated agents (Argoverse AGENT: chosen for interesting motion) weigh more than parked OTHERS
    seqs += [q for q in seqs if q.focal] * (args.focal_repeat - 1)
    win_x = win_y = None
    if args.window_weight > 0:
        win_x, win_y = training_windows(spec, train_grids, proto.obs_len, proto.horizon, args.window_stride)
        print(f"train windows: {len(win_x)} (window-protocol loss weight {args.window_weight})")
    try:
        val = _val_set(args, spec, val_scenes)
    except DatasetError as exc:
        print(f"ERROR: validation split: {exc}", file=sys.stderr)
        return 1
    cv_k, cv_scores = choose_k(val.obs, val.truth)
    steps = sum(len(q.x) for q in seqs)
    print(f"train: {len(train_scenes)} files, {len(seqs)} tracks, {steps} samples; val: {len(val_scenes)} files, "
          f"{len(val.truth)} windows; CV k={cv_k} (chosen on val); {time.time() - t_start:.1f}s to load")

    # -- model
    cfg = ModelConfig(cell=args.cell, input_dim=feature_dim(spec), hidden=args.hidden, layers=args.layers,
                      horizon=proto.horizon, obs_len=proto.obs_len, dt_s=proto.dt_s, features=spec,
                      dropout=args.dropout, agent_kind=proto.agent_kind)
    model = TrajectoryModel(cfg)
    if args.cv_init:
        init_head_cv(model, spec, min(cv_k, int(spec["history"])))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sign = None if args.no_mirror else mirror_sign(spec)
    lengths = ~flag_mask(spec)
    # averaged weights: SGD noise on small data moves validation ADE by several percent epoch to epoch
    ema = [p.detach().clone() for p in model.parameters()] if args.ema > 0 else None
    n_batches = math.ceil(len(seqs) / args.batch)
    total = epochs * n_batches

    def lr_at(it: int) -> float:
        # short warm-up, then cosine to a tenth: the nanoGPT schedule, counted in batches
        warm = min(100, total // 10)
        if it < warm:
            return args.lr * (it + 1) / warm
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warm) / max(1, total - warm)))))

    def update(loss: torch.Tensor) -> None:
        """One optimiser step with gradient-norm clipping (against exploding gradients through
        time), then the weight average (EMA) follows the raw weights."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(model.parameters(), ema, strict=True):
                    e.lerp_(p, 1.0 - args.ema)

    def swap_ema() -> None:
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(model.parameters(), ema, strict=True):
                    tmp = p.detach().clone()
                    p.copy_(e)
                    e.copy_(tmp)

    def validate() -> dict[str, Any]:
        model.eval()
        res = evaluate(TorchStepper(model, cfg), val, cv_k)
        res.pop("_preds")
        model.train()
        return res

    # -- the loop
    best, best_epoch, history, it = math.inf, -1, [], 0
    best_res: dict[str, Any] = {}
    for epoch in range(epochs):
        model.train()
        batches = train_batches(seqs, args.batch, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=args.no_progress, leave=False)
        run_loss, run_n = 0.0, 0
        for group in bar:
            x, y, m = _pad(group, sign, lengths, args.speed_aug, rng)
            h = c = None
            for t0 in range(0, x.shape[1], bptt):
                for g in opt.param_groups:
                    g["lr"] = lr_at(it)
                pred, h, c = model(x[:, t0: t0 + bptt], h, c)
                loss = masked_ade_loss(pred, y[:, t0: t0 + bptt], m[:, t0: t0 + bptt])
                update(loss)
                # truncated BPTT: keep the state, cut the graph
                h = h.detach()
                c = c.detach() if c is not None else None
                run_loss += float(loss.detach()) * len(group)
                run_n += len(group)
            if win_x is not None and win_y is not None:
                sel = torch.from_numpy(np.array(rng.sample(range(len(win_x)), min(args.window_batch, len(win_x)))))
                wx, wy = win_x[sel].clone(), win_y[sel].clone()
                if sign is not None:
                    flip = torch.rand(len(sel)) < 0.5
                    wx[flip] *= torch.from_numpy(sign)
                    wy[flip, :, 1] *= -1.0
                if args.speed_aug > 0:
                    k = 1 + args.speed_aug * (2 * torch.rand(len(sel), 1) - 1)
                    wx = torch.where(torch.from_numpy(lengths)[None, None, :], wx * k[:, :, None], wx)
                    wy = wy * k[:, :, None]
                pred, _, _ = model(wx)
                loss = args.window_weight * masked_ade_loss(pred[:, -1], wy, torch.ones(wy.shape[:2]))
                update(loss)
            it += 1
            bar.set_postfix(loss=f"{run_loss / max(run_n, 1):.4f}")
        swap_ema()   # validate and save the averaged weights; train on with the raw ones
        res = validate()
        score = 0.5 * (res["model"]["ade"] + res["stream"]["ade"])
        entry = {"epoch": epoch + 1, "train_loss": run_loss / max(run_n, 1), "val_window_ade": res["model"]["ade"],
                 "val_window_fde": res["model"]["fde"], "val_stream_ade": res["stream"]["ade"],
                 "val_stream_fde": res["stream"]["fde"], "minutes": (time.time() - t_start) / 60}
        history.append(entry)
        improved = score < best
        print(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f} | val window {res['model']['ade']:.3f}/"
              f"{res['model']['fde']:.3f} stream {res['stream']['ade']:.3f}/{res['stream']['fde']:.3f} | "
              f"CV(k={cv_k}) {res['cv']['ade']:.3f}/{res['cv']['fde']:.3f}{' *' if improved else ''}", flush=True)
        if improved:
            best, best_epoch, best_res = score, epoch + 1, res
            metrics = _metrics(args, argv, best_res, cv_k, cv_scores, history, best_epoch, t_start)
            save_checkpoint(out / args.name, model, cfg, metrics, _data_info(args, train_scenes, val_scenes),
                            {"train_args": vars(args), "epoch": epoch + 1})
        swap_ema()
        if epoch + 1 - best_epoch >= args.patience:
            print(f"early stop: no validation improvement for {args.patience} epochs")
            break
        if (time.time() - t_start) / 60 > args.max_minutes:
            print(f"stopping: --max-minutes {args.max_minutes} reached")
            break

    metrics = _metrics(args, argv, best_res, cv_k, cv_scores, history, best_epoch, t_start)
    metrics_path = out / (Path(args.name).stem + ".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=1))
    print(f"best epoch {best_epoch}: val window {best_res['model']['ade']:.3f}/{best_res['model']['fde']:.3f}, "
          f"stream {best_res['stream']['ade']:.3f}/{best_res['stream']['fde']:.3f}, CV {best_res['cv']['ade']:.3f}/"
          f"{best_res['cv']['fde']:.3f}; wrote {out / args.name} and {metrics_path}")
    return 0


def _train_average(args: argparse.Namespace, argv: list[str]) -> int:
    """--seeds / --mirror-average: each seed is an ordinary run under OUT/seed<S>/ (its own early stopping,
    checkpoint and metrics); the shipped checkpoint is their average, validated like any other model."""
    t_start = time.time()
    out = _out_dir(args)
    # the last occurrence of an option wins in argparse, so a member's settings are appended
    member_argv = [a for a in argv if a != "--mirror-average"]
    seeds = range(args.seed, args.seed + args.seeds)
    paths = [out / f"seed{seed}" / "best.pt" for seed in seeds]
    runs = [member_argv + ["--seeds", "1", "--seed", str(seed), "--out", str(path.parent), "--name", path.name]
            for seed, path in zip(seeds, paths, strict=True)]
    if args.jobs > 1:
        # one torch thread per member (the default): on N cores N members train in the time of one,
        # and give the same weights as one after another
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            codes = list(pool.map(main, [r + ["--no-progress"] for r in runs]))
    else:
        codes = [main(r) for r in runs]
    if any(codes):
        return max(codes)
    loaded = [load_checkpoint(p) for p in paths]
    models, blobs = [m for m, _, _ in loaded], [b for _, _, b in loaded]
    sign = torch.from_numpy(mirror_sign(models[0].cfg.features)) if args.mirror_average else None
    model = average_models(models, sign)
    val = _val_set(args, model.cfg.features, load_scenes(args.dataset, args.data, "val", args.fold))
    first = blobs[0]["metrics"]
    res = evaluate(TorchStepper(model, model.cfg), val, first["cv_k"])
    res.pop("_preds")
    metrics = _metrics(args, argv, res, first["cv_k"], first["cv_k_scores"], [], -1, t_start)
    metrics["members"] = [{"checkpoint": str(p), "seed": b["data"]["seed"], "best_epoch": b["metrics"]["best_epoch"],
                           "model": b["metrics"]["model"], "stream": b["metrics"]["stream"]}
                          for p, b in zip(paths, blobs, strict=True)]
    metrics["mirror_average"] = args.mirror_average
    save_checkpoint(out / args.name, model, model.cfg, metrics, {**blobs[0]["data"], "seed": args.seed},
                    {"train_args": vars(args)})
    metrics_path = out / (Path(args.name).stem + ".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=1))
    for m in metrics["members"]:
        print(f"seed {m['seed']}: val window {m['model']['ade']:.3f}/{m['model']['fde']:.3f}, "
              f"stream {m['stream']['ade']:.3f}/{m['stream']['fde']:.3f}")
    print(f"average of {len(models) * (2 if sign is not None else 1)} (hidden {model.cfg.hidden}): val window "
          f"{res['model']['ade']:.3f}/{res['model']['fde']:.3f}, stream {res['stream']['ade']:.3f}/"
          f"{res['stream']['fde']:.3f}, CV {res['cv']['ade']:.3f}/{res['cv']['fde']:.3f}; wrote {out / args.name} "
          f"and {metrics_path}")
    return 0


def _out_dir(args: argparse.Namespace) -> Path:
    fold = (args.fold or "all").replace("/", "of")   # a cross-validation fold "2/5" names runs/..._2of5_...
    return Path(args.out or f"runs/{args.dataset}_{fold}_{args.cell}")


def _val_set(args: argparse.Namespace, spec: dict[str, Any], scenes: list[Any]) -> EvalSet:
    """The validation split as both protocols score it (built once, reused every epoch)."""
    proto = DATASETS[args.dataset]
    return prepare(spec, [to_grid(s, proto.dt_s) for s in scenes], proto.obs_len, proto.horizon, proto.focal_only)


def _metrics(args: argparse.Namespace, argv: list[str], res: dict[str, Any], cv_k: int,
             cv_scores: dict[int, tuple[float, float]], history: list[dict[str, Any]], best_epoch: int,
             t_start: float) -> dict[str, Any]:
    return {"split": "val", "dataset": args.dataset, "fold": args.fold, "cv_k": cv_k,
            "cv_k_scores": {str(k): v for k, v in cv_scores.items()},
            "model": res.get("model"), "stream": res.get("stream"), "cv": res.get("cv"),
            "per_scene": res.get("per_scene"), "per_class": res.get("per_class"),
            "best_epoch": best_epoch, "history": history, "train_minutes": (time.time() - t_start) / 60,
            "command": "drivecast train " + " ".join(argv)}


def _data_info(args: argparse.Namespace, train: list[Any], val: list[Any]) -> dict[str, Any]:
    return {"dataset": args.dataset, "fold": args.fold, "train_files": [Path(s.path).name for s in train],
            "val_files": [Path(s.path).name for s in val], "seed": args.seed}

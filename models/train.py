"""`drivecast train --dataset {eth_ucy,argoverse,apolloscape,drives,...} --data DIR [--fold F] [--cell lstm|gru] ...`

Reads top to bottom like nanoGPT's train.py: `main` is the whole run (the config from
models/train_config.py, the data from models/train_data.py, the model, one loop, the checkpoint), and
the helpers below it follow in that order.

Training is many-to-many over whole tracks in truncated-BPTT chunks, the state carried (detached) from
chunk to chunk, so the state a streaming node carries over a track's whole life is in distribution.
Each epoch validates both protocols; the weights with the lowest mean of window and streaming ADE are
kept (--name under --out, and <name stem>.metrics.json), and training stops after --patience epochs
without a new best.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.runtime.features import feature_dim, mirror_sign, unscaled_mask
from models.datasets import DATASETS, load_scenes
from models.evaluate import TorchStepper, evaluate
from models.train_config import TrainConfig, TrainError, filled, parse_config, with_dataset_defaults
from models.train_data import TrainData, load_data, pad_batch, train_batches, val_set, window_batch
from models.train_ddp import Shard, train_data_parallel
from models.train_sweep import Run, config_argv, fold_plan, run_and_collect, sweep, write_table
from models.trajectory import ModelConfig, TrajectoryModel, average_models, load_checkpoint, save_checkpoint

__all__ = ["fit", "init_head_cv", "main", "masked_ade_loss", "modes_loss"]


def main(argv: list[str]) -> int:
    """`drivecast train`: one run, with --seeds / --mirror-average their merged average, with --fold all or
    --grid a sweep of runs and their table (models/train_sweep.py), with --workers one run data-parallel
    on Ray Train (models/train_ddp.py); the exit code."""
    try:
        cfg = parse_config(argv)
        if fold_plan(cfg) is not None or cfg.grid:
            return sweep(main, cfg, _out_dir(cfg))
        if cfg.seeds > 1 or cfg.mirror_average:
            return _train_average(cfg, argv)
        if cfg.workers > 1:
            return train_data_parallel(cfg, argv, _out_dir(cfg), fit)
        if cfg.ray is not None:
            raise TrainError(f"--ray {cfg.ray}: one run has nothing to spread over Ray: with --seeds N, --fold all "
                             "or --grid each run is a Ray task, with --workers N a Ray Train worker", 2)
    except TrainError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    return fit(cfg, argv)


def fit(cfg: TrainConfig, argv: list[str], shard: Shard | None = None) -> int:
    """One run, or with `shard` this worker's part of a data-parallel one; the exit code."""
    lead = shard is None or shard.lead   # the worker that validates, saves and prints
    # -- config (models/train_config.py), then the data (models/train_data.py)
    try:
        cfg = with_dataset_defaults(cfg)
        _seed_everything(cfg)
        rng = random.Random(cfg.seed)   # the same batches on every worker of a data-parallel run
        t_start = time.time()
        data = load_data(cfg)
    except TrainError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    if lead:
        print(data.summary(time.time() - t_start))

    # -- model: the optimiser trains the raw weights; their moving average (EMA) is validated and saved
    model = _new_model(cfg, data)
    net = model if shard is None else shard.wrap(model)   # what the batches go through
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # averaged weights: SGD noise on small data moves validation ADE by several percent epoch to epoch
    ema = [p.detach().clone() for p in model.parameters()] if cfg.ema > 0 else None

    # -- the loop: an epoch of training, then validation; each new best writes the checkpoint
    best, best_epoch, best_res, history = math.inf, -1, {}, []
    for epoch in range(filled(cfg.epochs)):
        train_loss = _train_epoch(net, opt, ema, data, cfg, rng, epoch, shard)
        stop = False
        if lead:
            _swap_ema(model, ema)   # validate and save the averaged weights; train on with the raw ones
            res = _validate(model, data)
            history.append(_epoch_entry(epoch, train_loss, res, t_start))
            score = _score(res)
            print(_epoch_line(epoch, train_loss, res, data.cv_k, improved=score < best), flush=True)
            if score < best:
                best, best_epoch, best_res = score, epoch + 1, res
                metrics = _metrics(cfg, argv, res, data.cv_k, data.cv_scores, history, best_epoch, t_start)
                _save(cfg, model, metrics, data, epoch)
            _swap_ema(model, ema)
            stop = _should_stop(cfg, epoch, best_epoch, t_start)
        if shard is not None:
            stop = shard.agree(stop)
        if stop:
            break
    steps = None if shard is None else shard.gather(shard.steps)
    if not lead:
        return 0

    # -- the best epoch's metrics, next to its checkpoint
    metrics = _metrics(cfg, argv, best_res, data.cv_k, data.cv_scores, history, best_epoch, t_start)
    if steps is not None:
        metrics["data_parallel"] = {"workers": len(steps), "optimizer_steps": steps}
    metrics_path = _write_metrics(cfg, metrics)
    print(f"best epoch {best_epoch}: val window {best_res['model']['ade']:.3f}/{best_res['model']['fde']:.3f}, "
          f"stream {best_res['stream']['ade']:.3f}/{best_res['stream']['fde']:.3f}, CV {best_res['cv']['ade']:.3f}/"
          f"{best_res['cv']['fde']:.3f}; wrote {_out_dir(cfg) / cfg.name} and {metrics_path}")
    return 0


# ---------------------------------------------------------------- config


def _seed_everything(cfg: TrainConfig) -> None:
    """Seed every generator and fix torch's threads, so that a seed gives the same weights every time."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)


def _out_dir(cfg: TrainConfig) -> Path:
    """--out, or runs/<dataset>_<fold>_<cell>."""
    fold = (cfg.fold or "all").replace("/", "of")   # a cross-validation fold "2/5" names runs/..._2of5_...
    return Path(cfg.out or f"runs/{cfg.dataset}_{fold}_{cfg.cell}")


# ---------------------------------------------------------------- model and loss


def _new_model(cfg: TrainConfig, data: TrainData) -> TrajectoryModel:
    """A fresh model for the dataset's protocol, its head at constant velocity with --cv-init."""
    proto = DATASETS[cfg.dataset]
    model_cfg = ModelConfig(cell=cfg.cell, input_dim=feature_dim(data.spec), hidden=cfg.hidden, layers=cfg.layers,
                            horizon=proto.horizon, obs_len=proto.obs_len, dt_s=proto.dt_s, features=data.spec,
                            dropout=cfg.dropout, agent_kind=proto.agent_kind, modes=cfg.modes)
    model = TrajectoryModel(model_cfg)
    if cfg.cv_init:
        init_head_cv(model, data.spec, min(data.cv_k, int(data.spec["history"])))
    return model


def init_head_cv(model: TrajectoryModel, spec: dict[str, Any], k: int) -> None:
    """Set the head so that pred = CV(k) from x_t's own displacements (recurrent part and bias zero).

    x_t holds the last `history` displacements newest first, (x, y) in the agent frame in units of scale,
    and pred is the offset from the current position in the same units: CV(k) at step t is
    t * mean of the last k displacements, a linear function of x_t. Same architecture and graph, only
    the starting point moves: training learns the correction over CV instead of CV itself.
    With K modes every mode starts at CV; their recurrent part keeps its random start, or all K would be
    the same future and winner-takes-all would only ever train the first.
    """
    cfg = model.cfg
    with torch.no_grad():
        w = model.head.weight            # [2TK (+K), H + F]
        if cfg.modes == 1:
            w[:, : cfg.hidden].zero_()
        w[:, cfg.hidden:].zero_()
        model.head.bias.zero_()
        for m in range(cfg.modes):
            for t in range(cfg.horizon):
                for j in range(k):
                    for d in range(2):
                        w[2 * (m * cfg.horizon + t) + d, cfg.hidden + 2 * j + d] = (t + 1) / k


def masked_ade_loss(pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean error over the (step, horizon) cells whose future is known.

    The ADE the benchmark measures, not its square, so that a few wild tracks do not dominate.
    """
    d = torch.sqrt(((pred - y) ** 2).sum(-1) + 1e-6)
    return (d * m).sum() / m.sum().clamp(min=1.0)


def modes_loss(pred: torch.Tensor, logit: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """pred[...,K,T,2], logit[...,K] against y[...,T,2] known where m[...,T]: the loss of K futures.

    K=1: `masked_ade_loss`. K>1, as MTP (Cui et al. 2019): only the future closest to the truth (least ADE
    over the known cells) is regressed, so the others stay free for other manoeuvres, plus the cross-entropy
    of the logits against that future's index, so the probabilities say which one to expect.
    """
    if pred.shape[-3] == 1:
        return masked_ade_loss(pred[..., 0, :, :], y, m)
    d = torch.sqrt(((pred - y.unsqueeze(-3)) ** 2).sum(-1) + 1e-6)   # [..., K, T]
    err = (d * m.unsqueeze(-2)).sum(-1)                               # [..., K]
    best = err.detach().argmin(-1)
    reg = err.gather(-1, best[..., None]).sum() / m.sum().clamp(min=1.0)
    rows = m.sum(-1) > 0
    if not bool(rows.any()):
        return reg
    return reg + torch.nn.functional.cross_entropy(logit[rows], best[rows])


# ---------------------------------------------------------------- the loop


def _lr_at(it: int, total: int, lr: float) -> float:
    """Short warm-up, then cosine to a tenth: the nanoGPT schedule, counted in batches."""
    warm = min(100, total // 10)
    if it < warm:
        return lr * (it + 1) / warm
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warm) / max(1, total - warm)))))


def _update(model: torch.nn.Module, opt: torch.optim.Optimizer, ema: list[torch.Tensor] | None,
            loss: torch.Tensor, cfg: TrainConfig) -> None:
    """One optimiser step, the gradient norm clipped against exploding gradients through time; the EMA follows."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    opt.step()
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema, strict=True):
                e.lerp_(p, 1.0 - cfg.ema)


def _swap_ema(model: TrajectoryModel, ema: list[torch.Tensor] | None) -> None:
    """Exchange the raw and the averaged weights (twice: back to where they were)."""
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema, strict=True):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)


def _train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, ema: list[torch.Tensor] | None,
                 data: TrainData, cfg: TrainConfig, rng: random.Random, epoch: int, shard: Shard | None) -> float:
    """One pass over the training tracks (and a window batch per track batch); the mean track loss (of
    this worker's rows, with a `shard`)."""
    epochs, bptt = filled(cfg.epochs), filled(cfg.bptt)
    sign = None if cfg.no_mirror else mirror_sign(data.spec)
    lengths = ~unscaled_mask(data.spec)
    model.train()
    batches = train_batches(data.seqs, filled(cfg.batch), rng)
    total = epochs * len(batches)   # every epoch has the same number of batches
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=cfg.no_progress or not (shard is None or shard.lead),
               leave=False)
    run_loss, run_n = 0.0, 0
    for i, group in enumerate(bar):
        for g in opt.param_groups:
            g["lr"] = _lr_at(epoch * len(batches) + i, total, cfg.lr)
        x, y, m = pad_batch(group, sign, lengths, cfg.speed_aug, rng)
        if shard is not None:
            if len(group) < shard.world:
                continue   # a worker would get no row: every worker skips it alike
            x, y, m = shard.rows(x, y, m)
        h = c = None
        for t0 in range(0, x.shape[1], bptt):
            pred, logit, h, c = model(x[:, t0: t0 + bptt], h, c)
            loss = modes_loss(pred, logit, y[:, t0: t0 + bptt], m[:, t0: t0 + bptt])
            _update(model, opt, ema, loss, cfg)
            if shard is not None:
                shard.steps += 1
            # truncated BPTT: keep the state, cut the graph
            h = h.detach()
            c = c.detach() if c is not None else None
            run_loss += float(loss.detach()) * len(group)
            run_n += len(group)
        if data.windows is not None:
            wx, wy = window_batch(data.windows, cfg.window_batch, sign, lengths, cfg.speed_aug, rng)
            if shard is not None:
                wx, wy = shard.rows(wx, wy)
            pred, logit, _, _ = model(wx)
            loss = cfg.window_weight * modes_loss(pred[:, -1], logit[:, -1], wy, torch.ones(wy.shape[:2]))
            _update(model, opt, ema, loss, cfg)
            if shard is not None:
                shard.steps += 1
        bar.set_postfix(loss=f"{run_loss / max(run_n, 1):.4f}")
    return run_loss / max(run_n, 1)


def _validate(model: TrajectoryModel, data: TrainData) -> dict[str, Any]:
    """Both protocols and the CV baseline on the validation set, the model in eval mode meanwhile."""
    model.eval()
    res = evaluate(TorchStepper(model, model.cfg), data.val, data.cv_k)
    del res["_preds"], res["_modes"]
    model.train()
    return res


def _score(res: dict[str, Any]) -> float:
    """What early stopping minimises: the mean ADE of both protocols; with K futures the mean of the most
    probable one's ADE and minADE_K, as both are asked of such a model."""
    protos = [res["model"], res["stream"]]
    if "min_ade_k" in res["model"]:
        return sum(0.5 * (p["ade"] + p["min_ade_k"]) for p in protos) / 2
    return sum(p["ade"] for p in protos) / 2


def _epoch_entry(epoch: int, train_loss: float, res: dict[str, Any], t_start: float) -> dict[str, Any]:
    """One epoch's line of the training curve kept in metrics.json."""
    entry = {"epoch": epoch + 1, "train_loss": train_loss, "val_window_ade": res["model"]["ade"],
             "val_window_fde": res["model"]["fde"], "val_stream_ade": res["stream"]["ade"],
             "val_stream_fde": res["stream"]["fde"], "minutes": (time.time() - t_start) / 60}
    if "min_ade_k" in res["model"]:
        entry.update({"val_window_min_ade_k": res["model"]["min_ade_k"], "val_window_min_fde_k": res["model"]["min_fde_k"],
                      "val_window_miss_rate_k": res["model"]["miss_rate_k"]})
    return entry


def _epoch_line(epoch: int, train_loss: float, res: dict[str, Any], cv_k: int, improved: bool) -> str:
    """The line printed after each epoch; ' *' marks a new best."""
    m = res["model"]
    multi = (f" minADE/minFDE_{m['k']} {m['min_ade_k']:.3f}/{m['min_fde_k']:.3f} miss {m['miss_rate_k']:.3f}"
             if "k" in m else "")
    return (f"epoch {epoch + 1}: loss {train_loss:.4f} | val window {m['ade']:.3f}/{m['fde']:.3f}{multi} stream "
            f"{res['stream']['ade']:.3f}/{res['stream']['fde']:.3f} | "
            f"CV(k={cv_k}) {res['cv']['ade']:.3f}/{res['cv']['fde']:.3f}{' *' if improved else ''}")


def _should_stop(cfg: TrainConfig, epoch: int, best_epoch: int, t_start: float) -> bool:
    """Early stopping after --patience epochs without a new best, or past --max-minutes; says which."""
    if epoch + 1 - best_epoch >= filled(cfg.patience):
        print(f"early stop: no validation improvement for {cfg.patience} epochs")
        return True
    if cfg.max_minutes is not None and (time.time() - t_start) / 60 > cfg.max_minutes:
        print(f"stopping: --max-minutes {cfg.max_minutes} reached")
        return True
    return False


# ---------------------------------------------------------------- checkpoint and metrics


def _save(cfg: TrainConfig, model: TrajectoryModel, metrics: dict[str, Any], data: TrainData, epoch: int) -> None:
    """The checkpoint: weights, model config, metrics, the files it was trained on and the flags."""
    save_checkpoint(_out_dir(cfg) / cfg.name, model, model.cfg, metrics, _data_info(cfg, data),
                    {"train_args": dataclasses.asdict(cfg), "epoch": epoch + 1})


def _metrics(cfg: TrainConfig, argv: list[str], res: dict[str, Any], cv_k: int,
             cv_scores: dict[int, tuple[float, float]], history: list[dict[str, Any]], best_epoch: int,
             t_start: float) -> dict[str, Any]:
    """What the checkpoint and metrics.json say about the run: scores, curve and the exact command."""
    return {"split": "val", "dataset": cfg.dataset, "fold": cfg.fold, "cv_k": cv_k,
            "cv_k_scores": {str(k): v for k, v in cv_scores.items()},
            "model": res.get("model"), "stream": res.get("stream"), "cv": res.get("cv"),
            "per_scene": res.get("per_scene"), "per_class": res.get("per_class"),
            "best_epoch": best_epoch, "history": history, "train_minutes": (time.time() - t_start) / 60,
            "command": "drivecast train " + " ".join(argv)}


def _data_info(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """Which files the model was trained and validated on, and the seed."""
    return {"dataset": cfg.dataset, "fold": cfg.fold, "train_files": _file_names(data.train_scenes),
            "val_files": _file_names(data.val_scenes), "extra_data": cfg.extra_data, "seed": cfg.seed}


def _file_names(scenes: list[Any]) -> list[str]:
    """Each file once, in order: a drive is read as several scenes."""
    return list(dict.fromkeys(Path(s.path).name for s in scenes))


def _write_metrics(cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """<name stem>.metrics.json next to the checkpoint; its path."""
    path = _out_dir(cfg) / (Path(cfg.name).stem + ".metrics.json")
    path.write_text(json.dumps(metrics, indent=1))
    return path


def _train_average(cfg: TrainConfig, argv: list[str]) -> int:
    """--seeds N / --mirror-average: N ordinary runs, shipped as one model merged from them all.

    Each seed (--seed, --seed+1, ...) is an ordinary run under OUT/seed<S>/ with its own early stopping,
    checkpoint and metrics; the shipped checkpoint is their average, merged exactly into one model of N
    times the hidden size (models.trajectory.average_models), with --mirror-average also each run's mirror
    image across the heading axis (2N members), validated like any other model.
    """
    t_start = time.time()
    out = _out_dir(cfg).absolute()   # absolute paths: a Ray worker's working directory is not ours
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    paths = [out / f"seed{seed}" / "best.pt" for seed in seeds]
    runs = [Run(f"seed{seed}", tuple(config_argv(dataclasses.replace(
                cfg, data=str(Path(cfg.data).absolute()), seeds=1, seed=seed, mirror_average=False, jobs=None,
                ray=None, out=str(path.parent),
                name=path.name, no_progress=cfg.no_progress or (cfg.jobs or 1) > 1 or cfg.ray is not None))),
                str(path.parent), str(path.with_suffix(".metrics.json")), (("seed", str(seed)),))
            for seed, path in zip(seeds, paths, strict=True)]
    # one torch thread per member (the default): on N cores N members train in the time of one, and give the
    # same weights as one after another, in processes or as Ray tasks
    rows = run_and_collect(main, runs, cfg.jobs, cfg.ray)
    if rows is None:
        return 130
    write_table(out, "seeds", rows)
    if any(r["status"] != "ok" for r in rows):
        for r in rows:
            if r["error"]:
                print(f"ERROR: {r['run']}: {r['error']}", file=sys.stderr)
        return 1
    loaded = [load_checkpoint(p) for p in paths]
    models, blobs = [m for m, _, _ in loaded], [b for _, _, b in loaded]
    sign = torch.from_numpy(mirror_sign(models[0].cfg.features)) if cfg.mirror_average else None
    model = average_models(models, sign)
    val = val_set(cfg.dataset, model.cfg.features, load_scenes(cfg.dataset, cfg.data, "val", cfg.fold, cfg.topic))
    first = blobs[0]["metrics"]
    res = evaluate(TorchStepper(model, model.cfg), val, first["cv_k"])
    del res["_preds"], res["_modes"]
    metrics = _metrics(cfg, argv, res, first["cv_k"], first["cv_k_scores"], [], -1, t_start)
    metrics["members"] = [{"checkpoint": str(p), "seed": b["data"]["seed"], "best_epoch": b["metrics"]["best_epoch"],
                           "model": b["metrics"]["model"], "stream": b["metrics"]["stream"]}
                          for p, b in zip(paths, blobs, strict=True)]
    metrics["mirror_average"] = cfg.mirror_average
    save_checkpoint(out / cfg.name, model, model.cfg, metrics, {**blobs[0]["data"], "seed": cfg.seed},
                    {"train_args": dataclasses.asdict(cfg)})
    metrics_path = _write_metrics(cfg, metrics)
    for m in metrics["members"]:
        print(f"seed {m['seed']}: val window {m['model']['ade']:.3f}/{m['model']['fde']:.3f}, "
              f"stream {m['stream']['ade']:.3f}/{m['stream']['fde']:.3f}")
    print(f"average of {len(models) * (2 if sign is not None else 1)} (hidden {model.cfg.hidden}): val window "
          f"{res['model']['ade']:.3f}/{res['model']['fde']:.3f}, stream {res['stream']['ade']:.3f}/"
          f"{res['stream']['fde']:.3f}, CV {res['cv']['ade']:.3f}/{res['cv']['fde']:.3f}; wrote {out / cfg.name} "
          f"and {metrics_path}")
    return 0

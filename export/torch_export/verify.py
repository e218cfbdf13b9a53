"""`drivecast verify MODEL.onnx CKPT`: does the exported step model compute what the checkpoint does?

Checks, in order, each failing with one `ERROR:` line:
1. `onnx.checker` (full check, with shape inference) passes;
2. the runtime loads it (metadata and graph inputs/outputs agree: export/runtime/step_model.py);
3. it was exported from this checkpoint: layer sizes, horizon, period and feature spec match the
   checkpoint's config, the weights hash matches the checkpoint's weights, and the graph's content hash
   matches its metadata (not edited since export);
4. parity: onnxruntime vs torch over `--steps` (200) steps with the state carried from zero, at batch
   sizes 1, 7 and 64 (7 and 64 are not the batch the graph was traced with). The max abs diff of the
   predictions is printed per batch, and beside it each diff over max(1, |prediction|) (`parity.rollout_diff`):
   an fp32 model fails when that scaled diff is above 1e-4 anywhere, or anything is not finite.

int8/fp16 variants cannot meet 1e-4 by construction: their diffs are printed for information, and with
`--dataset/--data` the ADE/FDE change in meters on a split (models.evaluate, window and streaming
protocols) is what matters. With `--data`, an fp32 model must also give the checkpoint's ADE/FDE to 1e-4 m.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.runtime.step_model import ModelError, StepModel
from export.torch_export.parity import ExportError, graph_hash, load_checkpoint, rollout_diff, weights_hash

__all__ = ["VerifyError", "check_matches_checkpoint", "dataset_change", "main"]

TOL = 1e-4
BATCHES = (1, 7, 64)


class VerifyError(ValueError):
    """The model and the checkpoint do not belong together, or the model file was altered."""


def check_matches_checkpoint(step_model: StepModel, model: Any, cfg: Any, model_path: Path) -> None:
    """The .onnx metadata describes the checkpoint's config; the graph is the one that was hashed."""
    meta = step_model.meta
    for key in ("cell", "layers", "hidden", "input_dim", "horizon", "obs_len", "dt_s", "features"):
        want, got = getattr(cfg, key), getattr(meta, key)
        if key == "cell":
            want = str(want).lower()
        if want != got:
            raise VerifyError(
                f"{model_path}: metadata {key}={got!r} but the checkpoint has {key}={want!r}: "
                "not exported from this checkpoint"
            )
    if meta.weights_hash and meta.weights_hash != weights_hash(model):
        raise VerifyError(
            f"{model_path}: metadata weights_hash {meta.weights_hash[:19]}... differs from the checkpoint's "
            f"{weights_hash(model)[:19]}...: exported from other weights of the same shape"
        )
    proto = onnx.load(str(model_path))
    found = graph_hash(proto)
    if found != meta.content_hash:
        raise VerifyError(
            f"{model_path}: graph hash {found[:19]}... does not match metadata content_hash "
            f"{meta.content_hash[:19]}...: the graph was changed after export"
        )


def dataset_change(
    step_model: StepModel, model: Any, cfg: Any, dataset: str, data: str, split: str, fold: str | None
) -> dict[str, dict[str, float]]:
    """ADE/FDE (meters) of torch and onnxruntime on one split, window and streaming protocols, and how
    far apart their predicted points are (mean and max, meters)."""
    from models.baselines import choose_k
    from models.datasets import DATASETS, load_scenes, to_grid
    from models.evaluate import TorchStepper, evaluate, prepare

    proto = DATASETS[dataset]
    meta = step_model.meta
    grids = [to_grid(s, meta.dt_s) for s in load_scenes(dataset, data, split, fold)]
    es = prepare(meta.features, grids, meta.obs_len, meta.horizon, proto.focal_only)
    stored = meta.metrics.get("cv_k")
    cv_k = stored if isinstance(stored, int) else choose_k(es.obs, es.truth)[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see parity.torch_rollout: more threads only wait on each other here
    try:
        torch_res = evaluate(TorchStepper(model, cfg), es, cv_k)
    finally:
        torch.set_num_threads(threads)
    ort_res = evaluate(step_model, es, cv_k)
    out: dict[str, dict[str, float]] = {}
    for proto_name in ("model", "stream"):
        t, o = torch_res[proto_name], ort_res[proto_name]
        # ADE changes can cancel (some paths better, some worse); the mean distance between the two
        # models' predicted points cannot: it is the quantisation error itself, in meters.
        shift = np.linalg.norm(ort_res["_preds"][proto_name] - torch_res["_preds"][proto_name], axis=-1)
        out[proto_name] = {"torch_ade": t["ade"], "torch_fde": t["fde"], "onnx_ade": o["ade"], "onnx_fde": o["fde"],
                           "n": t["n"], "shift_mean_m": float(shift.mean()), "shift_max_m": float(shift.max())}
        if "min_ade_k" in t:   # K futures: the best of them as well as the most probable
            out[proto_name].update({f"{side}_{key}": r[key] for side, r in (("torch", t), ("onnx", o))
                                    for key in ("min_ade_k", "min_fde_k", "miss_rate_k")})
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drivecast verify", description=__doc__.splitlines()[0])
    p.add_argument("model", help="exported step model (.onnx)")
    p.add_argument("ckpt", help="the checkpoint it was exported from (.pt)")
    p.add_argument("--steps", type=int, default=200, help="rollout length, state carried (default 200)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (default 1,7,64)")
    p.add_argument("--tol", type=float, default=TOL,
                   help=f"fp32 diff allowed, over max(1, |prediction|) element by element (default {TOL})")
    p.add_argument("--dataset", default=None, help="also compare ADE/FDE on this dataset (eth_ucy, ...)")
    p.add_argument("--data", default=None, help="the dataset's directory (with --dataset)")
    p.add_argument("--fold", default=None, help="eth_ucy fold")
    p.add_argument("--split", default="val", choices=["val", "test", "all"])
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    model_path = Path(args.model)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        if not batches or min(batches) < 1 or args.steps < 1:
            raise ValueError
    except ValueError:
        print(f"ERROR: --batches {args.batches!r} / --steps {args.steps}: expected positive ints", file=sys.stderr)
        return 2
    if (args.dataset is None) != (args.data is None):
        print("ERROR: --dataset and --data go together", file=sys.stderr)
        return 2
    try:
        if not model_path.is_file():
            raise ModelError(f"{model_path}: no such model file")
        try:
            onnx.checker.check_model(str(model_path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise VerifyError(f"{model_path}: onnx.checker failed: {first}") from None
        step_model = StepModel(model_path)
        model, cfg, _ = load_checkpoint(args.ckpt)
        check_matches_checkpoint(step_model, model, cfg, model_path)
    except (ModelError, ExportError, VerifyError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

    meta = step_model.meta
    fp32 = meta.precision == "fp32"
    print(f"{model_path}: {meta.precision} {meta.cell} {meta.input_dim}->{meta.hidden}x{meta.layers}, "
          f"T={meta.horizon}; onnx.checker ok, metadata ok, content hash ok")
    print(f"{'batch':>6} {'steps':>6} {'max_abs_diff':>13} {'scaled_diff':>12}")
    worst = scaled = 0.0
    for b in batches:
        diff, rel = rollout_diff(model, step_model, args.steps, b)
        worst, scaled = max(worst, diff), max(scaled, rel)
        print(f"{b:>6} {args.steps:>6} {diff:>13.3e} {rel:>12.3e}")
    failed = False
    if fp32:
        failed = not scaled <= args.tol
        print(f"max scaled diff {scaled:.3e} {'>' if failed else '<='} {args.tol:g}: {'FAIL' if failed else 'ok'}")
    else:
        print(f"{meta.precision}: max abs diff {worst:.3e} (normalised units; not held to {args.tol:g}: "
              "the ADE/FDE change below is the measure)")

    if args.dataset:
        from models.datasets import DatasetError

        try:
            res = dataset_change(step_model, model, cfg, args.dataset, args.data, args.split, args.fold)
        except DatasetError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
        k = meta.modes
        print(f"{args.dataset} split={args.split} fold={args.fold}, meters, "
              + ("K=1" if k == 1 else f"ADE/FDE of the most probable of K={k} futures"))
        print(f"{'protocol':<9}{'n':>7}{'torch ADE/FDE':>20}{'onnx ADE/FDE':>20}{'change ADE/FDE':>22}"
              f"{'point shift mean/max':>24}")
        for name, r in res.items():
            d_ade, d_fde = r["onnx_ade"] - r["torch_ade"], r["onnx_fde"] - r["torch_fde"]
            print(f"{name:<9}{r['n']:>7}{r['torch_ade']:>11.4f}/{r['torch_fde']:<8.4f}"
                  f"{r['onnx_ade']:>11.4f}/{r['onnx_fde']:<8.4f}{d_ade:>+11.2e}/{d_fde:<+10.2e}"
                  f"{r['shift_mean_m']:>13.2e}/{r['shift_max_m']:<10.2e}")
            if "torch_min_ade_k" in r:
                d_ade = max(abs(d_ade), abs(r["onnx_min_ade_k"] - r["torch_min_ade_k"]))
                print(f"{'':<9}minADE/minFDE_{k} {r['torch_min_ade_k']:.4f}/{r['torch_min_fde_k']:.4f} -> "
                      f"{r['onnx_min_ade_k']:.4f}/{r['onnx_min_fde_k']:.4f}, miss rate {r['torch_miss_rate_k']:.4f} "
                      f"-> {r['onnx_miss_rate_k']:.4f}")
            if fp32 and max(abs(d_ade), abs(d_fde)) > args.tol:
                failed = True
                print(f"{name}: ADE/FDE change above {args.tol:g} m for an fp32 model: FAIL")
    elif not fp32:
        print(f"note: pass --dataset/--data to measure the {meta.precision} model's ADE/FDE change")
    return 1 if failed else 0

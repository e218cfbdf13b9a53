"""`drivecast eval MODEL --dataset D --data DIR [--fold F] [--split val|test|all] [--json FILE] [--plot DIR]`.

Everything here runs a plain step callable: `.meta` (cell, layers, hidden, input_dim, horizon, obs_len,
dt_s, features, modes), `.zero_state(batch)`, `.step(x float32[B,F], state) -> (pred[B,T,2], state)`, numpy
in and out, and for K > 1 modes `.step_modes(x, state) -> (pred[B,K,T,2], prob[B,K], state)`. A checkpoint is wrapped in `TorchStepper`; an .onnx file is `export.runtime.step_model.StepModel`; both go
through the same code and so give the same ADE/FDE up to float error.

Two protocols, on the same windows (obs_len observed + horizon future samples, all present):
- window: the state starts at zero obs_len samples before the prediction, and the agent's own history
  features are cut at the window start (the standard benchmark);
- streaming: the state is carried from the agent's first sample (what the predictor node does).
Constant velocity (best k, chosen on the validation split) is computed on the same windows.

Tables per scene, per agent class and per agent age: the time from the agent's first sample in its scene
(a track split at a long gap starts again) to the window's last observed sample, which is how long the
streaming protocol has carried its state, in the evaluator node's buckets (`nodes.eval_table`: 0-5, 5-20,
20-60, 60+ s). The window protocol's rows are bucketed by the same age, for comparison. The comparison with
constant velocity is worded as everywhere: "18% better" = the model's ADE is 18% below CV's. A fourth table
splits the windows by situation (`models.situations`: standing, crossing, group, crowded, alone, other).

A model of K > 1 futures is scored as Argoverse scores them (`nodes.eval_table.mode_errors`): ADE/FDE are the
most probable future's, and minADE_K, minFDE_K, the miss rate at 2 m and brier-minFDE_K are added. CV gets
the same K metrics with K of its variants as the futures, each equally probable: CV(k) for k spread over the
observed window, the chosen k among them (`cv_variants`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np

from export.runtime.features import constant_velocity, history_len, to_world
from models.baselines import choose_k, displacement_errors
from models.datasets import (
    DATASETS,
    DRIVE_DATASETS,
    DatasetError,
    Grid,
    dataset_name,
    eth_ucy_scene,
    load_scenes,
    to_grid,
)
from models.sequences import find_windows, track_sequences, window_inputs
from models.situations import SITUATIONS, SITUATIONS_MEANS, label_windows
from nodes.eval_table import AGE_BUCKETS, CV_K_MEANS, MODES_MEANS, VS_CV_MEANS, age_bucket, mode_errors, vs_cv

__all__ = ["EvalSet", "Stepper", "TorchStepper", "cv_variants", "evaluate", "held_out_note", "load_stepper", "main",
           "modes_of", "prepare", "run_streams"]


class Stepper(TypingProtocol):
    meta: Any

    def zero_state(self, batch: int) -> tuple[np.ndarray, ...]: ...

    def step(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]: ...


class TorchStepper:
    """A TrajectoryModel behind the numpy step interface that export.runtime.step_model.StepModel also has.

    State is (h, c) for an LSTM and (h,) for a GRU, each float32[L,B,H].
    """

    def __init__(self, model: Any, cfg: Any, metrics: dict[str, Any] | None = None,
                 training_data: dict[str, Any] | None = None) -> None:
        import torch  # lazily: an .onnx evaluation must not need torch

        self._torch = torch
        self.model = model.eval()
        self.meta = {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "input_dim": cfg.input_dim,
                     "horizon": cfg.horizon, "obs_len": cfg.obs_len, "dt_s": cfg.dt_s,
                     "features": cfg.features, "metrics": metrics or {}, "modes": cfg.modes,
                     "training_data": training_data or {}}

    def zero_state(self, batch: int) -> tuple[np.ndarray, ...]:
        h = np.zeros((self.meta["layers"], batch, self.meta["hidden"]), np.float32)
        return (h, h.copy()) if self.meta["cell"] == "lstm" else (h,)

    def step(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """x[B,F] -> (pred[B,T,2], new state): the most probable future."""
        pred, prob, new = self.step_modes(x, state)
        return pred[np.arange(len(pred)), prob.argmax(-1)], new

    def step_modes(self, x: np.ndarray, state: tuple[np.ndarray, ...]
                   ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """x[B,F] -> (pred[B,K,T,2], prob[B,K], new state): every future, the softmax of their logits."""
        t = self._torch
        with t.no_grad():
            h = t.from_numpy(np.ascontiguousarray(state[0]))
            c = t.from_numpy(np.ascontiguousarray(state[1])) if len(state) > 1 else None
            pred, logit, h, c = self.model.step_modes(t.from_numpy(np.ascontiguousarray(x, np.float32)), h, c)
        new = (h.numpy(), c.numpy()) if c is not None else (h.numpy(),)
        return pred.numpy(), logit.softmax(-1).numpy(), new


def modes_of(stepper: Any) -> int:
    """K, the futures a step gives per agent (1 for every model without modes)."""
    meta = stepper.meta
    return int(meta.get("modes", 1) or 1) if hasattr(meta, "get") else 1


def _step(stepper: Any, x: np.ndarray, state: tuple[np.ndarray, ...], k: int
          ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(pred[B,K,T,2], prob[B,K], state) of any stepper; K=1 through its plain `step`."""
    if k == 1:
        pred, state = stepper.step(x, state)
        return pred[:, None], np.ones((len(pred), 1), np.float32), state
    return stepper.step_modes(x, state)


def load_stepper(path: str | Path) -> Stepper:
    """A checkpoint (.pt, anything torch.load reads) or an .onnx step model."""
    path = Path(path)
    if path.suffix == ".onnx":
        from export.runtime.step_model import StepModel  # torch-free runtime, written for the predictor node

        return StepModel(str(path))
    from models.trajectory import load_checkpoint

    model, cfg, blob = load_checkpoint(path)
    return TorchStepper(model, cfg, blob.get("metrics"), blob.get("data"))


def held_out_note(trained: dict[str, Any], scored: list[str]) -> str:
    """Why the scored files of a test (or all) split are not held out from this model ("" when nothing says
    so): a scene among them is one the model trained or stopped early on. ETH/UCY names a scene's test file
    after the scene and its parts `<scene>_train`/`_val`, and each fold trains on the other folds' test
    scenes, so a fold's model scored on another fold's test split, or the all-scenes model on any, is caught."""
    stems = [Path(f).stem for f in [*trained.get("train_files", []), *trained.get("val_files", [])]]
    seen = {*stems, *map(eth_ucy_scene, stems)}   # a file itself, or the whole scene it is a part of
    hit = sorted({Path(f).name for f in scored if Path(f).stem in seen})
    if not hit:
        return ""
    return (f"{len(hit)} of the {len(set(scored))} scored files hold scenes this model trained or stopped early on "
            f"({', '.join(hit[:3])}{', ...' if len(hit) > 3 else ''}): the figures below are not held out")


# ---------------------------------------------------------------- evaluation sets


@dataclass
class EvalSet:
    """Everything needed to score one split, built once (the validation set is reused every epoch)."""

    obs_len: int
    horizon: int
    x_win: np.ndarray          # [W, obs_len, F] window-protocol inputs
    hist_win: np.ndarray       # [W, K+1, 2] history at the window end (window-capped)
    n_win: np.ndarray          # [W]
    streams: list[np.ndarray]  # per streamed agent x[L,F]
    stream_idx: np.ndarray     # [W] which stream
    stream_step: np.ndarray    # [W] index in that stream of the window end
    hist_stream: np.ndarray    # [W, K+1, 2] history at the window end (whole past)
    n_stream: np.ndarray
    obs: np.ndarray            # [W, obs_len, 2] observed positions
    truth: np.ndarray          # [W, T, 2]
    scene: np.ndarray          # [W] per-scene group (ETH/UCY scene, Argoverse city, ApolloScape recording)
    kind: np.ndarray           # [W] agent class
    situation: np.ndarray      # [W] models.situations label, from what is observed up to the window end
    window_ref: list[tuple[str, int, int]]   # (grid name, agent, end) for plots


def prepare(spec: dict[str, Any], grids: list[Grid], obs_len: int, horizon: int, focal_only: bool) -> EvalSet:
    hl = history_len(spec)
    parts: dict[str, list[Any]] = defaultdict(list)
    streams: list[np.ndarray] = []
    for g in grids:
        win = find_windows(g, obs_len, horizon, focal_only)
        if len(win.agent) == 0:
            continue
        x, hist, n = window_inputs(spec, g, win, obs_len)
        agents = np.unique(win.agent)
        wanted = set(agents.tolist())
        seqs = {q.agent: q for q in track_sequences(spec, g, 1, min_len=1) if q.agent in wanted}
        base = len(streams)
        slot = {a: base + i for i, a in enumerate(agents.tolist())}
        streams += [seqs[a].x for a in agents.tolist()]
        first = g.first()
        hs = np.zeros((len(win.agent), hl, 2))
        ns = np.minimum(win.end - first[win.agent] + 1, hl)
        for i, (a, e) in enumerate(zip(win.agent, win.end, strict=True)):
            lo = e - hl + 1
            hs[i, max(0, -lo):] = g.xy[a, max(0, lo): e + 1]
        parts["x_win"].append(x)
        parts["hist_win"].append(hist)
        parts["n_win"].append(n)
        parts["stream_idx"].append(np.array([slot[a] for a in win.agent.tolist()]))
        parts["stream_step"].append(win.end - first[win.agent])
        parts["hist_stream"].append(hs)
        parts["n_stream"].append(ns)
        parts["obs"].append(win.obs)
        parts["truth"].append(win.truth)
        parts["scene"].append(np.array([g.group] * len(win.agent), dtype=object))
        parts["kind"].append(np.array([g.kinds[a] for a in win.agent], dtype=object))
        parts["situation"].append(label_windows(g, win.agent, win.end, obs_len))
        parts["ref"].append([(g.name, int(a), int(e)) for a, e in zip(win.agent, win.end, strict=True)])
    if not streams:
        raise DatasetError(f"no evaluation windows of {obs_len}+{horizon} samples in {len(grids)} scenes")
    cat = {k: np.concatenate(v) for k, v in parts.items() if k != "ref"}
    return EvalSet(obs_len, horizon, cat["x_win"], cat["hist_win"], cat["n_win"], streams, cat["stream_idx"],
                   cat["stream_step"], cat["hist_stream"], cat["n_stream"], cat["obs"], cat["truth"],
                   cat["scene"], cat["kind"], cat["situation"], [r for rs in parts["ref"] for r in rs])


def run_windows(stepper: Stepper, x: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Window protocol: zero state, step obs_len times, keep the last prediction.
    x[W,S,F] -> (pred[W,K,T,2], prob[W,K])."""
    k = modes_of(stepper)
    out, probs = [], []
    for lo in range(0, len(x), batch):
        xb = x[lo: lo + batch]
        state = stepper.zero_state(len(xb))
        for j in range(xb.shape[1]):
            pred, prob, state = _step(stepper, xb[:, j], state, k)
        out.append(pred)
        probs.append(prob)
    return np.concatenate(out), np.concatenate(probs)


def run_streams(stepper: Stepper, streams: list[np.ndarray], batch: int = 4096
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Streaming: every agent from its first sample, state carried; (pred[L,K,T,2], prob[L,K]) per agent."""
    k = modes_of(stepper)
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0))] * len(streams)
    order = sorted(range(len(streams)), key=lambda i: len(streams[i]))
    for lo in range(0, len(order), batch):
        ids = order[lo: lo + batch]
        length = max(len(streams[i]) for i in ids)
        f = streams[ids[0]].shape[1]
        x = np.zeros((len(ids), length, f), np.float32)
        for j, i in enumerate(ids):
            x[j, : len(streams[i])] = streams[i]
        state = stepper.zero_state(len(ids))
        preds, probs = [], []
        for s in range(length):   # padded tails run on zeros; their predictions are never read
            pred, prob, state = _step(stepper, x[:, s], state, k)
            preds.append(pred)
            probs.append(prob)
        p, q = np.stack(preds, 1), np.stack(probs, 1)
        for j, i in enumerate(ids):
            out[i] = (p[j, : len(streams[i])], q[j, : len(streams[i])])
    return out


def _summary(ade: np.ndarray, fde: np.ndarray, multi: dict[str, np.ndarray] | None = None, k: int = 1
             ) -> dict[str, float]:
    out: dict[str, Any] = {"ade": float(ade.mean()), "fde": float(fde.mean()), "n": int(len(ade))}
    if multi is not None:
        out.update({"k": k, "min_ade_k": float(multi["min_ade_k"].mean()), "min_fde_k": float(multi["min_fde_k"].mean()),
                    "miss_rate_k": float(multi["miss_k"].mean()),
                    "brier_min_fde_k": float(multi["brier_min_fde_k"].mean())})
    return out


def cv_variants(cv_k: int, k: int, obs_len: int) -> list[int]:
    """The k windows of CV's k futures: `cv_k` and k - 1 more spread evenly over 1 .. obs_len - 1 (fewer when
    there are fewer windows)."""
    others = [v for v in range(1, obs_len) if v != cv_k]
    picked = [others[int(round(i))] for i in np.linspace(0, len(others) - 1, k - 1)] if k > 1 else []
    return [cv_k, *dict.fromkeys(picked)]


def _world_modes(spec: dict[str, Any], raw: np.ndarray, hist: np.ndarray, n: np.ndarray) -> np.ndarray:
    """raw[W,K,T,2] in each agent's frame -> world [W,K,T,2] (every future of a row shares its frame)."""
    w, k, t, _ = raw.shape
    return to_world(spec, raw.reshape(w, k * t, 2), hist, n).reshape(w, k, t, 2)


def _most_probable(modes: np.ndarray, prob: np.ndarray) -> np.ndarray:
    return modes[np.arange(len(modes)), prob.argmax(-1)]


def evaluate(stepper: Stepper, es: EvalSet, cv_k: int, streaming: bool = True) -> dict[str, Any]:
    """ADE/FDE (meters) of the model (window and streaming protocols) and CV(k) on the same windows; with
    K > 1 futures also the K metrics of both and of CV's K variants. `_preds` holds the world paths scored
    (the most probable future's), `_modes` every future and its probability."""
    spec = stepper.meta["features"]
    if isinstance(spec, str):
        spec = json.loads(spec)
    k = modes_of(stepper)
    modes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    raw, prob = run_windows(stepper, es.x_win)
    modes["model"] = (_world_modes(spec, raw, es.hist_win, es.n_win), prob)
    if streaming:
        sp = run_streams(stepper, es.streams)
        raw = np.stack([sp[i][0][j] for i, j in zip(es.stream_idx, es.stream_step, strict=True)])
        prob = np.stack([sp[i][1][j] for i, j in zip(es.stream_idx, es.stream_step, strict=True)])
        modes["stream"] = (_world_modes(spec, raw, es.hist_stream, es.n_stream), prob)
    steps = np.arange(1, es.horizon + 1)
    if k > 1:
        ks = cv_variants(cv_k, k, es.obs_len)
        cvs = np.stack([constant_velocity(es.obs[:, ::-1], v, steps) for v in ks], 1)
        modes["cv"] = (cvs, np.full((len(cvs), len(ks)), 1.0 / len(ks)))
    preds = {name: _most_probable(*m) for name, m in modes.items()}
    if k == 1:
        preds["cv"] = constant_velocity(es.obs[:, ::-1], cv_k, steps)  # obs: newest last
    else:   # CV's most probable future is CV(cv_k), its first
        preds["cv"] = modes["cv"][0][:, 0]
    result: dict[str, Any] = {"cv_k": cv_k, "windows": int(len(es.truth))}
    errs = {name: displacement_errors(p, es.truth) for name, p in preds.items()}
    multi = ({name: mode_errors(np.linalg.norm(m - es.truth[:, None], axis=-1), p) for name, (m, p) in modes.items()}
             if k > 1 else {})
    for name, (ade, fde) in errs.items():
        result[name] = _summary(ade, fde, multi.get(name), k)
    if k > 1:
        result["cv"]["cv_ks"] = ks
    # the agent's age at the window end: steps since its first sample (`EvalSet.stream_step`)
    age = np.array(AGE_BUCKETS, dtype=object)[age_bucket(es.stream_step * float(stepper.meta["dt_s"]))]
    order = {"per_age": AGE_BUCKETS, "per_situation": SITUATIONS}   # fixed row orders; the rest sorted
    for key, labels in (("per_scene", es.scene), ("per_class", es.kind), ("per_age", age),
                        ("per_situation", es.situation)):
        table = {}
        present = set(labels.tolist())
        for lab in [a for a in order[key] if a in present] if key in order else sorted(present):
            m = labels == lab
            table[lab] = {name: _summary(ade[m], fde[m], {q: v[m] for q, v in multi[name].items()} if multi else None,
                                         k) for name, (ade, fde) in errs.items()}
        result[key] = table
    result["_preds"] = preds
    result["_modes"] = modes
    return result


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drivecast eval", description=__doc__.split("\n")[0])
    p.add_argument("model", help="checkpoint (.pt) or exported step model (.onnx)")
    p.add_argument("--dataset", required=True, type=dataset_name, choices=sorted(DATASETS),
                   help="dataset (eth-ucy is accepted for eth_ucy)")
    p.add_argument("--data", required=True, help="dataset directory (e.g. ../shared/data/eth_ucy)")
    p.add_argument("--fold", default=None,
                   help="eth_ucy fold: eth, hotel, univ, zara1, zara2 (or all); argoverse/apolloscape: I/K "
                        "(cross-validation part I of K, as trained)")
    p.add_argument("--split", default="val", choices=["val", "test", "all"])
    p.add_argument("--topic", default=None,
                   help="drives: the Tracks topic to evaluate on (default: each recording's only Tracks topic)")
    p.add_argument("--cv-k", type=int, default=None,
                   help="CV k (default: the model's validation choice, else chosen on the val split)")
    p.add_argument("--no-streaming", action="store_true", help="skip the streaming protocol")
    p.add_argument("--json", default=None, help="write the metrics JSON here")
    p.add_argument("--plot", default=None, help="write PNG plots of predicted vs true paths here")
    return p


def _cv_k(args: argparse.Namespace, stepper: Stepper, spec: dict[str, Any], proto: Any, es: EvalSet
          ) -> tuple[int, str]:
    if args.cv_k is not None:
        return args.cv_k, "command line"
    metrics = stepper.meta.get("metrics") if hasattr(stepper.meta, "get") else None
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    if isinstance(metrics, dict) and isinstance(metrics.get("cv_k"), int):
        return metrics["cv_k"], "model's validation split"
    try:
        grids = [to_grid(s, proto.dt_s) for s in load_scenes(args.dataset, args.data, "val", args.fold, args.topic)]
        val = prepare(spec, grids, proto.obs_len, proto.horizon, proto.focal_only)
        return choose_k(val.obs, val.truth)[0], "val split"
    except DatasetError:
        return choose_k(es.obs, es.truth)[0], "evaluated split (no val split found: optimistic for CV)"


def _table(res: dict[str, Any], key: str) -> str:
    names = [n for n in ("model", "stream", "cv") if n in res]
    versus = [n for n in names if n != "cv"] if "cv" in res else []
    head = (f"{key[4:]:<22}{'n':>7}" + "".join(f"{n + ' ADE/FDE':>20}" for n in names)
            + "".join(f"{n + ' vs CV, ADE':>20}" for n in versus))
    lines = [head]
    rows = list(res[key].items()) + [("ALL", {n: res[n] for n in names})]
    for lab, r in rows:
        cells = "".join(f"{r[n]['ade']:>11.3f}/{r[n]['fde']:<8.3f}" for n in names)
        cells += "".join(f"{vs_cv(r[n]['ade'], r['cv']['ade']):>20}" for n in versus)
        lines.append(f"{lab:<22}{r[names[0]]['n']:>7}" + cells)
    return "\n".join(lines)


def _modes_table(res: dict[str, Any]) -> str:
    """The K-futures metrics of the model's protocols beside CV's K variants."""
    k = res["model"]["k"]
    lines = [f"{'K=' + str(k):<22}{'minADE/minFDE':>20}{'miss rate':>12}{'brier-minFDE':>14}{'top ADE/FDE':>20}"]
    for name in ("model", "stream", "cv"):
        if name in res:
            r = res[name]
            label = f"cv k={','.join(map(str, r['cv_ks']))}" if name == "cv" else name
            lines.append(f"{label:<22}{r['min_ade_k']:>11.3f}/{r['min_fde_k']:<8.3f}{r['miss_rate_k']:>12.3f}"
                         f"{r['brier_min_fde_k']:>14.3f}{r['ade']:>11.3f}/{r['fde']:<8.3f}")
    lines.append(f"{MODES_MEANS}; top: the most probable future; cv: CV's variants as equally probable futures, "
                 "the first the chosen k")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.topic is not None and args.dataset not in DRIVE_DATASETS:
        print(f"ERROR: --topic {args.topic!r} with --dataset {args.dataset}: --topic is for {DRIVE_DATASETS}",
              file=sys.stderr)
        return 2
    if not str(args.model).endswith(".onnx"):
        import torch

        # one thread: a small LSTM step spin-waits for OpenMP workers on a shared CPU (measured 23-47 ms
        # per step with 2 threads against 0.07-0.35 ms with 1, by the export engineer)
        torch.set_num_threads(1)
    try:
        stepper = load_stepper(args.model)
    except (ValueError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    meta = stepper.meta
    spec = meta["features"] if not isinstance(meta["features"], str) else json.loads(meta["features"])
    proto = DATASETS[args.dataset]
    obs_len, horizon, dt_s = int(meta["obs_len"]), int(meta["horizon"]), float(meta["dt_s"])
    if (obs_len, horizon) != (proto.obs_len, proto.horizon) or abs(dt_s - proto.dt_s) > 1e-9:
        print(f"note: model protocol {obs_len}->{horizon} at {dt_s}s differs from {args.dataset}'s "
              f"{proto.obs_len}->{proto.horizon} at {proto.dt_s}s; evaluating the model's", file=sys.stderr)
    proto = type(proto)(obs_len, horizon, dt_s, proto.focal_only, proto.agent_kind)
    try:
        scenes = load_scenes(args.dataset, args.data, args.split, args.fold, args.topic)
        leak = held_out_note(meta.get("training_data") or {}, [s.path for s in scenes]) if args.split != "val" else ""
        if leak:
            print(f"note: {leak}", file=sys.stderr)
        grids = [to_grid(s, dt_s) for s in scenes]
        es = prepare(spec, grids, obs_len, horizon, proto.focal_only)
        cv_k, cv_from = _cv_k(args, stepper, spec, proto, es)
    except DatasetError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    res = evaluate(stepper, es, cv_k, streaming=not args.no_streaming)
    preds = res.pop("_preds")
    res.pop("_modes")
    res.update({"cv_k_from": cv_from, "dataset": args.dataset, "split": args.split, "fold": args.fold,
                "model_path": str(args.model), "files": [s.path for s in scenes]})
    print(f"{args.dataset} split={args.split} fold={args.fold}: {res['windows']} windows, "
          f"CV k={cv_k} ({cv_from}); ADE/FDE in meters"
          + (f", of the most probable of {modes_of(stepper)} futures" if modes_of(stepper) > 1 else ", K=1"))
    print(f"CV k: {CV_K_MEANS}; model: the window protocol, stream: the streaming protocol; "
          f"vs CV: {VS_CV_MEANS}")
    print(_table(res, "per_scene"))
    if "k" in res["model"]:
        print(_modes_table(res))
    if len(res["per_class"]) > 1:
        print(_table(res, "per_class"))
    print(_table(res, "per_age") + "\nage: time since the agent's first sample, at the window end")
    if proto.agent_kind != "vehicle":   # its thresholds are a walker's (the JSON keeps the table for any kind)
        print(_table(res, "per_situation") + f"\nsituation: {SITUATIONS_MEANS}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.plot:
        from models.plots import plot_windows

        for path in plot_windows(es, preds, Path(args.plot), dt_s=dt_s):
            print(f"wrote {path}")
    return 0

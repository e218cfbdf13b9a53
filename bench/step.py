"""One predictor step, onnxruntime (export/runtime/step_model.py) vs torch, same model, same run.

    python bench/step.py [--quick] [--json FILE] [--ckpt CKPT] [--threads N]

What is timed is what the predictor node calls: numpy x[B,F] and state in, numpy prediction and state
out, for B = 1, 16, 64 and 256 agents; for a model of K > 1 futures every future and its probability
(`StepModel.step_modes`, torch's `step_modes` and softmax). Candidates:
- ort: `StepModel.step` (one intra-op thread: the headline), its int8 and fp16 variants, the same
  model exported by the dynamo exporter (the exporter choice, re-measured), and for information the
  fp32 model with all cores;
- torch eager at each of its settings: threads 1 or all cores, mkldnn on or off, `inference_mode` or
  `no_grad`; the fastest of them per batch is "best torch";
- torch.jit: the step traced and frozen (`torch.jit.trace` + `torch.jit.freeze`), one thread.

Timing is interleaved: every round runs every candidate in turn, so a noisy neighbour slows them all
alike; reported are the median and p99 over all rounds. The model is the shipped vehicle checkpoint
(models/pretrained/vehicle_lstm.pt: F=44, LSTM 112x1, T=30) unless --ckpt names another.

Beside the step, for information: the node's other per-message cost that grows with the agents,
`step_features` for the checkpoint's feature spec (crowd features included where it has them), with the
agents spread over a square of 2 x radius, so about half the pairs count (a dense crowd: the dear case).

Bars (issue 4): speedup_b1_vs_best_torch >= 3, ort_b64_p50_us <= 150.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from export.runtime.features import history_len, step_features
from export.runtime.step_model import StepModel
from export.torch_export.onnx_export import export_module, write_variant
from export.torch_export.parity import load_checkpoint

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "pretrained" / "vehicle_lstm.pt"
BATCHES = (1, 16, 64, 256)
StepFn = Callable[[np.ndarray, tuple[np.ndarray, ...]], object]


def _torch_step(model: Any, cell: str, grad_mode: str) -> StepFn:
    ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad

    def step(x: np.ndarray, state: tuple[np.ndarray, ...]) -> object:
        with ctx():
            h = torch.from_numpy(state[0])
            c = torch.from_numpy(state[1]) if cell == "lstm" else None
            if model.cfg.modes == 1:
                pred, h, c = model.step(torch.from_numpy(x), h, c)
                return pred.numpy(), h.numpy(), (c.numpy() if c is not None else None)
            pred, logit, h, c = model.step_modes(torch.from_numpy(x), h, c)
            return pred.numpy(), logit.softmax(-1).numpy(), h.numpy(), (c.numpy() if c is not None else None)

    return step


def _ort(path: Path, threads: int = 1) -> StepFn:
    """What the predictor node calls: `step`, or every future's `step_modes` for a model of K > 1."""
    model = StepModel(path, threads=threads)
    return model.step_modes if model.meta.modes > 1 else model.step


def _jit_step(model: Any, cell: str, input_dim: int, layers: int, hidden: int) -> StepFn:
    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if self.m.cfg.modes == 1:
                pred, h2, c2 = self.m.step(x, h, c if cell == "lstm" else None)
                return (pred, h2, c2) if cell == "lstm" else (pred, h2)
            pred, logit, h2, c2 = self.m.step_modes(x, h, c if cell == "lstm" else None)
            return (pred, logit.softmax(-1), h2, c2) if cell == "lstm" else (pred, logit.softmax(-1), h2)

    ex = (torch.zeros(2, input_dim), torch.zeros(layers, 2, hidden), torch.zeros(layers, 2, hidden))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(Step().eval(), ex))

    def step(x: np.ndarray, state: tuple[np.ndarray, ...]) -> object:
        with torch.inference_mode():
            h = torch.from_numpy(state[0])
            c = torch.from_numpy(state[1]) if cell == "lstm" else torch.zeros(0)
            return tuple(t.numpy() for t in traced(torch.from_numpy(x), h, c))

    return step


def _measure(fn: StepFn, x: np.ndarray, state: tuple[np.ndarray, ...], n: int, budget_s: float,
             warm: int) -> list[int]:
    # Both loops are bounded in time as well as in count: torch with 2 threads on a busy 2-core box
    # took 40 ms a step here, and --quick must stay under a minute.
    deadline = time.perf_counter() + budget_s / 4
    for i in range(warm):
        fn(x, state)
        if i >= 2 and time.perf_counter() > deadline:
            break
    out: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(out) < n and (len(out) < 5 or time.perf_counter() < deadline):
        t0 = time.perf_counter_ns()
        fn(x, state)
        out.append(time.perf_counter_ns() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (< 60 s)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--ckpt", default=str(SHIPPED), help="the checkpoint to benchmark (default: the shipped vehicle model)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch's 'all cores' setting")
    args = p.parse_args(argv)
    rounds, n, budget, warm = (3, 250, 0.08, 10) if args.quick else (7, 2000, 0.6, 50)

    model, cfg, _ = load_checkpoint(args.ckpt)
    model = model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="bench_step_"))
    export_module(model, cfg, tmp / "m.onnx")
    export_module(model, cfg, tmp / "m_dynamo.onnx", exporter="dynamo")  # the exporter choice, re-measured
    int8 = write_variant(tmp / "m.onnx", "int8")
    fp16 = write_variant(tmp / "m.onnx", "fp16")

    threads_all = max(1, args.threads)
    # name -> (step function, torch threads to set, mkldnn enabled)
    cands: dict[str, tuple[StepFn, int, bool]] = {
        "ort": (_ort(tmp / "m.onnx"), 1, True),
        "ort_int8": (_ort(int8), 1, True),
        "ort_fp16": (_ort(fp16), 1, True),
        "ort_dynamo_export": (_ort(tmp / "m_dynamo.onnx"), 1, True),
    }
    if threads_all > 1:  # for information: the node defaults to one thread (a node must not take the box)
        cands[f"ort_t{threads_all}"] = (_ort(tmp / "m.onnx", threads_all), 1, True)
    for threads in sorted({1, threads_all}):
        for mkldnn in (True, False):
            for mode in ("inference_mode", "no_grad"):
                if threads > 1 and mode == "no_grad":
                    continue  # grad mode does not interact with threads: halve the matrix
                name = f"torch_t{threads}_{'mkldnn' if mkldnn else 'nomkldnn'}_{mode}"
                cands[name] = (_torch_step(model, cfg.cell, mode), threads, mkldnn)
    torch.set_num_threads(1)
    cands["torch_jit_t1"] = (_jit_step(model, cfg.cell, cfg.input_dim, cfg.layers, cfg.hidden), 1, True)

    rng = np.random.default_rng(0)
    samples: dict[tuple[int, str], list[int]] = {}
    t_start = time.perf_counter()
    for b in BATCHES:
        x = rng.normal(size=(b, cfg.input_dim)).astype(np.float32)
        state = tuple(rng.normal(0, 0.3, (cfg.layers, b, cfg.hidden)).astype(np.float32)
                      for _ in range(2 if cfg.cell == "lstm" else 1))
        for _ in range(rounds):
            for name, (fn, threads, mkldnn) in cands.items():
                torch.set_num_threads(threads)
                torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]
                samples.setdefault((b, name), []).extend(_measure(fn, x, state, n, budget, warm))
    torch.set_num_threads(threads_all)
    torch.backends.mkldnn.enabled = True  # type: ignore[assignment]
    elapsed = time.perf_counter() - t_start

    spec = cfg.features
    for b in BATCHES:   # the features, after the step candidates: not interleaved with them
        hist = rng.uniform(-spec["radius"], spec["radius"], (b, 1, 2)) + rng.normal(
            0, spec["scale"], (b, history_len(spec), 2)).cumsum(axis=1)
        samples[(b, "features_numpy")] = _measure(lambda h, n_obs: step_features(spec, h, n_obs[0]), hist,
                                                  (np.full(b, history_len(spec)),), n, budget * rounds, warm)

    results: list[dict[str, Any]] = []
    for (b, name), ns in samples.items():
        arr = np.array(ns) / 1e3
        results.append({"batch": b, "impl": name, "p50_us": float(np.median(arr)),
                        "p99_us": float(np.percentile(arr, 99)), "n": len(ns)})
    by = {(r["batch"], r["impl"]): r for r in results}
    print(f"model: {cfg.cell} {cfg.input_dim}->{cfg.hidden}x{cfg.layers}, T={cfg.horizon}, K={cfg.modes}; torch "
          f"{torch.__version__}, {threads_all} cores; {rounds} interleaved rounds, {elapsed:.0f} s")
    print(f"{'batch':>5}  {'impl':<40}{'p50 us':>9}{'p99 us':>9}{'p50 / ort':>11}")
    best_torch: dict[int, dict[str, Any]] = {}
    for b in BATCHES:
        rows = sorted((r for r in results if r["batch"] == b), key=lambda r: r["p50_us"])
        ort_p50 = by[(b, "ort")]["p50_us"]
        for r in rows:
            print(f"{b:>5}  {r['impl']:<40}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}{r['p50_us'] / ort_p50:>10.2f}x")
        best_torch[b] = min((r for r in rows if r["impl"].startswith("torch")), key=lambda r: r["p50_us"])
        print(f"{'':>5}  best torch: {best_torch[b]['impl']}, ort is "
              f"{best_torch[b]['p50_us'] / ort_p50:.2f}x faster at p50")
    speedup = best_torch[1]["p50_us"] / by[(1, "ort")]["p50_us"]
    ort_b64 = by[(64, "ort")]["p50_us"]
    print(f"speedup_b1_vs_best_torch = {speedup:.2f} (bar >= 3: {'ok' if speedup >= 3 else 'MISSED'})")
    print(f"ort_b64_p50_us = {ort_b64:.1f} (bar <= 150: {'ok' if ort_b64 <= 150 else 'MISSED'}); "
          f"int8 variant {by[(64, 'ort_int8')]['p50_us']:.1f}")
    feats = by[(64, "features_numpy")]
    print(f"features_b64_p50_us = {feats['p50_us']:.1f} (p99 {feats['p99_us']:.1f}; crowd={spec.get('crowd', 0)}, "
          f"not a bar: the node's step_features for this spec)")
    if args.json:
        doc = {"results": results, "speedup_b1_vs_best_torch": speedup, "ort_b64_p50_us": ort_b64,
               "ort_int8_b64_p50_us": by[(64, "ort_int8")]["p50_us"],
               "features_b64_p50_us": feats["p50_us"],
               "best_torch": {str(b): r["impl"] for b, r in best_torch.items()},
               "model": {"cell": cfg.cell, "input_dim": cfg.input_dim, "hidden": cfg.hidden, "layers": cfg.layers,
                         "horizon": cfg.horizon}, "quick": args.quick, "torch": torch.__version__}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is an ONNX step model its checkpoint? What the exporter, the verifier and the model card all check.

Loads a checkpoint (every failure one `ExportError` naming the file), hashes the weights and the graph
(which weights, which graph), and rolls torch and onnxruntime side by side with the state carried.
`onnx_export`, `verify` and `model_card` import this module; it imports none of them, so they form no circle.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.runtime.step_model import StepModel

__all__ = [
    "ExportError",
    "graph_hash",
    "load_checkpoint",
    "max_abs_diff",
    "compare",
    "rollout_diff",
    "ort_rollout",
    "rollout_inputs",
    "torch_rollout",
    "weights_hash",
]


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that does not match torch."""


def load_checkpoint(ckpt_path: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """models.trajectory.load_checkpoint with its failures as one ExportError naming the file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    from models.trajectory import load_checkpoint as _load

    try:
        return _load(path)
    except (KeyError, ValueError, TypeError, RuntimeError, EOFError, OSError) as exc:
        raise ExportError(f"{path}: cannot load checkpoint: {type(exc).__name__}: {exc}") from None


def graph_hash(proto: onnx.ModelProto) -> str:
    """'sha256:<hex>' of the graph and opsets, metadata excluded: the same weights and ops, the same hash."""
    h = hashlib.sha256()
    for op in proto.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    h.update(proto.graph.SerializeToString(deterministic=True))
    return "sha256:" + h.hexdigest()


def weights_hash(model: torch.nn.Module) -> str:
    """'sha256:<hex>' of the state_dict (names, dtypes, shapes, values): which trained weights these are."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        arr = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def torch_rollout(
    model: Any, cell: str, xs: np.ndarray, layers: int, hidden: int
) -> list[np.ndarray]:
    """torch predictions for xs[S,B,F], stepping with the state carried from zero; with K > 1 futures
    every future and its probability, flattened per agent (as `ort_rollout`)."""
    modes = int(getattr(getattr(model, "cfg", None), "modes", 1))
    s_n, b = xs.shape[0], xs.shape[1]
    h = torch.zeros(layers, b, hidden)
    c = torch.zeros(layers, b, hidden) if cell == "lstm" else None
    preds = []
    # One thread: small steps gain nothing from OpenMP, and on a busy machine its spin-waiting
    # threads make a rollout many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for t in range(s_n):
                if modes > 1:
                    pred, logit, h, c = model.step_modes(torch.from_numpy(xs[t]), h, c)
                    pred = torch.cat([pred.reshape(b, -1), logit.softmax(-1)], 1)
                else:
                    pred, h, c = model.step(torch.from_numpy(xs[t]), h, c)
                preds.append(pred.numpy().copy())
    finally:
        torch.set_num_threads(threads)
    return preds


def ort_rollout(step_model: StepModel, xs: np.ndarray) -> list[np.ndarray]:
    """onnxruntime predictions for xs[S,B,F], stepping with the state carried from zero."""
    state = step_model.zero_state(xs.shape[1])
    preds = []
    for t in range(xs.shape[0]):
        if step_model.meta.modes > 1:
            pred, prob, state = step_model.step_modes(xs[t], state)
            preds.append(np.concatenate([pred.reshape(len(pred), -1), prob], 1))
        else:
            pred, state = step_model.step(xs[t], state)
            preds.append(pred)
    return preds


def rollout_inputs(steps: int, batch: int, input_dim: int, seed: int = 0) -> np.ndarray:
    """Deterministic inputs xs[S,B,F] for parity checks: smooth, of feature-like scale, some zeros."""
    rng = np.random.default_rng(seed + 1000 * batch)
    xs = rng.normal(0.0, 1.0, (steps, batch, input_dim)).astype(np.float32)
    xs[:, :, input_dim // 2:] *= rng.random((steps, batch, 1)) < 0.7  # neighbours come and go
    return xs


def max_abs_diff(model: Any, step_model: StepModel, steps: int, batch: int) -> float:
    """The largest |torch - onnxruntime| over a `steps`-step rollout at `batch` agents, state carried."""
    return rollout_diff(model, step_model, steps, batch)[0]


def rollout_diff(model: Any, step_model: StepModel, steps: int, batch: int) -> tuple[float, float]:
    """`compare` torch's and onnxruntime's predictions over a `steps`-step rollout at `batch` agents,
    state carried."""
    m = step_model.meta
    xs = rollout_inputs(steps, batch, m.input_dim)
    return compare(torch_rollout(model, m.cell, xs, m.layers, m.hidden), ort_rollout(step_model, xs))


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(largest |ref - got|, largest |ref - got| / max(1, |ref|)), both inf if anything is not finite.
    The second is what parity is held to: random inputs can drive a model's outputs to 100 normalised
    units, where 200 recurrent steps of float32 rounding alone (eps 1.2e-7 a step) reach a few 1e-4."""
    worst, scaled = 0.0, 0.0
    for a, b in zip(ref, got, strict=True):
        d = np.abs(a - b)
        if not (np.isfinite(d).all() and np.isfinite(a).all()):
            return math.inf, math.inf
        worst = max(worst, float(d.max()))
        scaled = max(scaled, float((d / np.maximum(1.0, np.abs(a))).max()))
    return worst, scaled

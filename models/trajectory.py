"""The stateful trajectory model: one LSTM/GRU step per sample, predicting the whole horizon every step.

`step` is the contract the runtime uses (and what export turns into ONNX with a native LSTM/GRU op);
`forward` is the same computation unrolled over a sequence for training. The head sees the recurrent
output and x_t itself: the skip path makes constant velocity (a linear function of the recent
displacements in x_t) easy to represent, so the recurrent part only has to learn corrections.
pred is in the normalised agent frame of export/runtime/features.py; `export.runtime.features.to_world` maps it back.

With `modes` K > 1 the same head also gives K futures and a logit per future (MTP, Cui et al. 2019):
`forward` and `step_modes` give pred[B,(S,)K,T,2] and logit[B,(S,)K]; `step` gives the most probable
future, so every K=1 consumer works unchanged. A K=1 head is exactly the K=1 model's (old checkpoints load).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "ModelConfig", "TrajectoryModel", "average_models", "load_checkpoint", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one of ours. The message names the path."""


@dataclass
class ModelConfig:
    cell: str = "lstm"            # "lstm" | "gru"
    input_dim: int = 32
    hidden: int = 64
    layers: int = 1
    horizon: int = 12             # T predicted samples
    obs_len: int = 8              # standard window protocol's observed samples
    dt_s: float = 0.4             # sample period, seconds
    features: dict[str, Any] = field(default_factory=dict)   # export.runtime.features spec
    dropout: float = 0.0          # between stacked layers only (layers > 1)
    agent_kind: str = ""          # "pedestrian" | "vehicle" | "mixed": lets a node pick a model per class
    modes: int = 1                # K futures per step, each with a logit when K > 1


class TrajectoryModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.cell not in ("lstm", "gru"):
            raise ValueError(f"ModelConfig.cell={cfg.cell!r}: expected 'lstm' or 'gru'")
        if not 1 <= cfg.modes <= 64:
            raise ValueError(f"ModelConfig.modes={cfg.modes}: expected 1 to 64")
        self.cfg = cfg
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(cfg.input_dim, cfg.hidden, cfg.layers, batch_first=True,
                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        k = cfg.modes
        self.head = nn.Linear(cfg.hidden + cfg.input_dim, 2 * cfg.horizon * k + (k if k > 1 else 0))

    def zero_state(self, batch: int) -> tuple[Tensor, Tensor | None]:
        h = torch.zeros(self.cfg.layers, batch, self.cfg.hidden)
        return h, (torch.zeros_like(h) if self.cfg.cell == "lstm" else None)

    def forward(self, x: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x[B,S,F] -> pred[B,S,K,T,2], logit[B,S,K] (zeros for K=1), h[L,B,H], c[L,B,H] (None for GRU)."""
        b, s, _ = x.shape
        if h0 is None:
            h0, c0 = self.zero_state(b)
        if self.cfg.cell == "lstm":
            if c0 is None:
                c0 = torch.zeros_like(h0)
            out, (h, c) = self.rnn(x, (h0, c0))
        else:
            out, h = self.rnn(x, h0)
            c = None
        y = self.head(torch.cat([out, x], dim=-1))
        k, t = self.cfg.modes, self.cfg.horizon
        pred = y[..., : 2 * t * k].reshape(b, s, k, t, 2)
        logit = y[..., 2 * t * k:] if k > 1 else y.new_zeros(b, s, 1)
        return pred, logit, h, c

    def step_modes(self, x: Tensor, h: Tensor, c: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x[B,F] -> pred[B,K,T,2], logit[B,K], h, c: every future and its logit, one sample period on."""
        pred, logit, h, c = self.forward(x[:, None, :], h, c)
        return pred[:, 0], logit[:, 0], h, c

    def step(self, x: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """x[B,F] -> pred[B,T,2] (the most probable future), h, c."""
        pred, logit, h, c = self.step_modes(x, h, c)
        if self.cfg.modes == 1:
            return pred[:, 0], h, c
        best = logit.argmax(-1)[:, None, None, None].expand(-1, 1, *pred.shape[2:])
        return pred.gather(1, best)[:, 0], h, c


def average_models(models: list[TrajectoryModel], mirror: Tensor | None = None) -> TrajectoryModel:
    """One model whose prediction is exactly the mean of the members' (and, given `mirror`, of their
    mirror images'), for the same step API, state and ONNX graph as any other model.

    Averaging seeds (and a model with its own reflection across the heading axis) removes part of the
    variance a single small model has on ETH/UCY-sized data. The members run side by side in one cell:
    each gate's weights are block-diagonal in the hidden units, so member m owns hidden units
    [m*H, (m+1)*H) and never sees the others'. A mirrored member reads x * mirror (mirror: float32[F]
    of +-1, export.runtime.features.mirror_sign) and its prediction's lateral component is negated back. The
    head averages the members' heads. Cost: hidden grows to H * members (* 2 with mirror).
    """
    cfg0 = models[0].cfg
    if any(m.cfg.cell != cfg0.cell or m.cfg.hidden != cfg0.hidden or m.cfg.layers != cfg0.layers
           or m.cfg.input_dim != cfg0.input_dim or m.cfg.horizon != cfg0.horizon for m in models):
        raise ValueError("average_models: every member needs the same cell, hidden, layers, input_dim and horizon")
    if cfg0.modes > 1:   # mode k of one seed is not mode k of another: their mean is no future at all
        raise ValueError(f"average_models: a model of {cfg0.modes} modes cannot be averaged; train one seed")
    hid, gates = cfg0.hidden, 4 if cfg0.cell == "lstm" else 3
    members = [(m, None) for m in models] + ([(m, mirror.float()) for m in models] if mirror is not None else [])
    n = len(members)
    cfg = ModelConfig(**{**asdict(cfg0), "hidden": hid * n})
    out = TrajectoryModel(cfg).eval()
    flip = torch.ones(cfg.horizon * 2)
    flip[1::2] = -1.0                      # the lateral component of every horizon step
    with torch.no_grad():
        for p in out.parameters():
            p.zero_()
        for i, (m, sign) in enumerate(members):
            lo, own = i * hid, slice(i * hid, (i + 1) * hid)
            for layer in range(cfg.layers):
                for g in range(gates):
                    rows, new = slice(g * hid, (g + 1) * hid), slice(g * hid * n + lo, g * hid * n + lo + hid)
                    ih = getattr(m.rnn, f"weight_ih_l{layer}")[rows]
                    if layer == 0:
                        getattr(out.rnn, f"weight_ih_l{layer}")[new] = ih if sign is None else ih * sign
                    else:
                        getattr(out.rnn, f"weight_ih_l{layer}")[new, own] = ih
                    getattr(out.rnn, f"weight_hh_l{layer}")[new, own] = getattr(m.rnn, f"weight_hh_l{layer}")[rows]
                    for name in ("bias_ih", "bias_hh"):
                        getattr(out.rnn, f"{name}_l{layer}")[new] = getattr(m.rnn, f"{name}_l{layer}")[rows]
            w: Tensor = m.head.weight.detach()
            b: Tensor = m.head.bias.detach()
            if sign is not None:
                w, b = flip[:, None] * w * torch.cat([torch.ones(hid), sign]), flip * b
            out.head.weight[:, own] = w[:, :hid] / n
            out.head.weight[:, cfg.hidden:] += w[:, hid:] / n
            out.head.bias.add_(b / n)
    return out


def save_checkpoint(path: str | Path, model: TrajectoryModel, cfg: ModelConfig, metrics: dict[str, Any],
                    data: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """A self-sufficient checkpoint: weights, config (to rebuild), metrics and where the data came from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": model.state_dict(), "config": asdict(cfg), "metrics": metrics, "data": data}
    blob.update(extra or {})
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)   # never leave a half-written checkpoint under the real name


def load_checkpoint(path: str | Path) -> tuple[TrajectoryModel, ModelConfig, dict[str, Any]]:
    """(model in eval mode on CPU, its config, the whole checkpoint dict)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt zip/pickle
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch checkpoint: {exc}") from None
    if not isinstance(blob, dict) or "model" not in blob or "config" not in blob:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected keys 'model' and 'config'")
    try:
        cfg = ModelConfig(**blob["config"])
        model = TrajectoryModel(cfg)
        model.load_state_dict(blob["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: config/weights do not match: {exc}") from None
    model.eval()
    return model, cfg, blob

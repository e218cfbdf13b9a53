"""The stateful trajectory model: one LSTM/GRU step per sample, predicting the whole horizon every step.

`step` is the contract the runtime uses (and what export turns into ONNX with a native LSTM/GRU op);
`forward` is the same computation unrolled over a sequence for training. The head sees the recurrent
output and x_t itself: the skip path makes constant velocity (a linear function of the recent
displacements in x_t) easy to represent, so the recurrent part only has to learn corrections.
pred is in the normalised agent frame of export/features.py; `export.features.to_world` maps it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "ModelConfig", "TrajectoryModel", "load_checkpoint", "save_checkpoint"]


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
    features: dict[str, Any] = field(default_factory=dict)   # export.features spec
    dropout: float = 0.0          # between stacked layers only (layers > 1)
    agent_kind: str = ""          # "pedestrian" | "vehicle" | "mixed": lets a node pick a model per class


class TrajectoryModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.cell not in ("lstm", "gru"):
            raise ValueError(f"ModelConfig.cell={cfg.cell!r}: expected 'lstm' or 'gru'")
        self.cfg = cfg
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(cfg.input_dim, cfg.hidden, cfg.layers, batch_first=True,
                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden + cfg.input_dim, 2 * cfg.horizon)

    def zero_state(self, batch: int) -> tuple[Tensor, Tensor | None]:
        h = torch.zeros(self.cfg.layers, batch, self.cfg.hidden)
        return h, (torch.zeros_like(h) if self.cfg.cell == "lstm" else None)

    def forward(self, x: Tensor, h0: Tensor | None = None, c0: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x[B,S,F] -> pred[B,S,T,2], h[L,B,H], c[L,B,H] (None for GRU)."""
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
        pred = self.head(torch.cat([out, x], dim=-1)).view(b, s, self.cfg.horizon, 2)
        return pred, h, c

    def step(self, x: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """x[B,F] -> pred[B,T,2], h, c: the single-step form of forward (sequence length 1)."""
        pred, h, c = self.forward(x[:, None, :], h, c)
        return pred[:, 0], h, c


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

"""Constant-velocity baseline: choosing its k, scoring it, and running it behind the model step interface.

CV(k) itself (`export.runtime.features.constant_velocity`) is the velocity averaged over the last k observed
steps, extrapolated; it needs k+1 observed positions. k is chosen on a validation split (`choose_k`):
on Argoverse k=5 is about 40% better than k=1, so reporting CV(k=1) beside a model would flatter the model.
"""

from __future__ import annotations

import numpy as np

from export.runtime.features import constant_velocity

__all__ = ["ConstantVelocityStep", "choose_k", "displacement_errors"]


def displacement_errors(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window ADE (mean L2 over the horizon) and FDE (L2 at the last step), meters."""
    d = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(truth, np.float64), axis=-1)
    return d.mean(axis=1), d[:, -1]


def choose_k(obs: np.ndarray, truth: np.ndarray, ks: list[int] | None = None) -> tuple[int, dict[int, tuple[float, float]]]:
    """The k with the lowest mean ADE on these windows (ties: smaller k), and every k's (ADE, FDE)."""
    n = obs.shape[1]
    ks = ks or list(range(1, n))
    scores = {}
    for k in ks:
        ade, fde = displacement_errors(constant_velocity(obs[:, ::-1], k, np.arange(1, truth.shape[1] + 1)), truth)
        scores[k] = (float(ade.mean()), float(fde.mean()))
    best = min(ks, key=lambda k: (scores[k][0], k))
    return best, scores


class ConstantVelocityStep:
    """Constant velocity behind the same step interface as the models (numpy, stateless).

    It reads the agent's last k displacements from x_t (export/runtime/features.py puts the last `history` of
    them there, in the heading frame, in units of scale), so it needs k <= history. Where an agent has
    fewer than k known displacements it averages those it has. It plugs into the evaluation, or into the
    predictor node as a fallback model.
    """

    def __init__(self, spec: dict, k: int, horizon: int, obs_len: int, dt_s: float) -> None:
        if not 1 <= k <= int(spec["history"]):
            raise ValueError(f"ConstantVelocityStep k={k}: expected 1 <= k <= history={spec['history']}")
        self.k, self.hist = k, int(spec["history"])
        self.meta = {"cell": "cv", "layers": 0, "hidden": 0, "input_dim": 3 * self.hist + 5 * int(spec["k_neighbors"]),
                     "horizon": horizon, "obs_len": obs_len, "dt_s": dt_s, "features": spec,
                     "metrics": {"cv_k": k}}
        self._steps = np.arange(1, horizon + 1)

    def zero_state(self, batch: int) -> tuple[np.ndarray, ...]:
        return ()

    def step(self, x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        b = x.shape[0]
        disp = x[:, : 2 * self.hist].reshape(b, self.hist, 2)[:, : self.k].astype(np.float64)
        known = x[:, 2 * self.hist: 3 * self.hist][:, : self.k] > 0
        # positions relative to now, newest first, rebuilt from the displacements (known ones come first)
        past = np.concatenate((np.zeros((b, 1, 2)), -disp.cumsum(1)), axis=1)
        pred = constant_velocity(past, self.k, self._steps, known=np.concatenate((np.ones((b, 1), bool), known), 1))
        return pred.astype(np.float32), state

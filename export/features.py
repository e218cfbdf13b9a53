"""Model input features and output decoding, shared by training and the streaming predictor node.

numpy only: the predictor node runs without torch, and it must compute exactly the inputs the model saw
in training. Training builds its input sequences by calling `step_features` once per sample time
(`models.datasets.build_sequences`), so a node that calls it with the same history reproduces the training
inputs bit for bit.

What a caller keeps per agent is a short position history, resampled to the model's period `dt_s`:
`hist[i, -1]` is the agent's position now, `hist[i, -1 - j]` its position j samples ago, and `n_obs[i]`
how many of those `history_len(spec)` entries are real (1 = the agent just appeared; older entries are
ignored, they may hold anything, NaN included).

Frame: every agent is seen in its own frame, origin at its current position, x axis along its recent
heading (the direction of travel over the last `heading_steps` samples), lengths divided by `scale`
(meters, about one typical step). A model trained on Beijing vehicles or Zurich pedestrians then sees a
simulated car on any road the same way. An agent that has not moved `min_move` meters keeps the world
axes (its heading is noise). The model output `pred[B,T,2]` is the future position offset in that frame,
in units of `scale`; `to_world` undoes both.

Input vector x_t (feature spec "disp_nbr" version 1), `feature_dim(spec)` = 3*history + 5*k_neighbors:
- own: the last `history` displacements (newest first), rotated and scaled, zero where unknown, then one
  0/1 flag per displacement telling whether it is known;
- neighbours: the `k_neighbors` nearest other agents present at this time within `radius` meters, nearest
  first, each as (relative x, relative y) / radius, (relative velocity x, y) per sample / scale, present
  flag; missing neighbours are all zero. Velocity = last displacement (zero for an agent with n_obs = 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "FEATURE_NAME",
    "FEATURE_VERSION",
    "FeatureSpecError",
    "agent_frames",
    "default_spec",
    "feature_dim",
    "flag_mask",
    "history_len",
    "mirror_sign",
    "step_features",
    "to_frame",
    "to_world",
    "validate_spec",
]

FEATURE_NAME = "disp_nbr"
FEATURE_VERSION = 1

_REQUIRED: dict[str, type] = {
    "history": int,
    "heading_steps": int,
    "k_neighbors": int,
    "radius": float,
    "scale": float,
    "min_move": float,
}


class FeatureSpecError(ValueError):
    """A feature spec (from a checkpoint or ONNX metadata) that this code cannot honour."""


def default_spec(kind: str) -> dict[str, Any]:
    """The spec used for a dataset family: 'pedestrian' (2.5 Hz), 'vehicle' (10 Hz), 'mixed' (2 Hz).

    scale is about one step of a typical agent (1.3 m/s * 0.4 s; 10 m/s * 0.1 s), radius the range
    in which other agents change a path.
    """
    if kind == "pedestrian":
        return {"name": FEATURE_NAME, "version": FEATURE_VERSION, "history": 4, "heading_steps": 2,
                "k_neighbors": 4, "radius": 6.0, "scale": 0.5, "min_move": 0.1}
    if kind == "vehicle":
        return {"name": FEATURE_NAME, "version": FEATURE_VERSION, "history": 8, "heading_steps": 4,
                "k_neighbors": 4, "radius": 30.0, "scale": 1.0, "min_move": 0.5}
    if kind == "mixed":   # ApolloScape: vehicles, cyclists and pedestrians together at 2 Hz
        return {"name": FEATURE_NAME, "version": FEATURE_VERSION, "history": 4, "heading_steps": 2,
                "k_neighbors": 4, "radius": 20.0, "scale": 2.0, "min_move": 0.3}
    raise FeatureSpecError(f"unknown agent kind {kind!r}: expected 'pedestrian', 'vehicle' or 'mixed'")


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check name, version and every key; return the spec. Errors name the key, value and expectation."""
    if spec.get("name") != FEATURE_NAME or spec.get("version") != FEATURE_VERSION:
        raise FeatureSpecError(
            f"feature spec name/version {spec.get('name')!r}/{spec.get('version')!r}: "
            f"expected {FEATURE_NAME!r}/{FEATURE_VERSION}")
    for key, typ in _REQUIRED.items():
        if key not in spec:
            raise FeatureSpecError(f"feature spec: missing key {key!r}")
        value = spec[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise FeatureSpecError(f"feature spec: {key}={value!r}: expected a non-negative {typ.__name__}")
    if spec["history"] < 1 or spec["heading_steps"] < 1 or spec["heading_steps"] > spec["history"]:
        raise FeatureSpecError(
            f"feature spec: history={spec['history']}, heading_steps={spec['heading_steps']}: "
            "expected 1 <= heading_steps <= history")
    if spec["scale"] <= 0 or spec["radius"] <= 0:
        raise FeatureSpecError(f"feature spec: scale={spec['scale']}, radius={spec['radius']}: expected > 0")
    return spec


def feature_dim(spec: dict[str, Any]) -> int:
    """Length F of x_t."""
    return 3 * int(spec["history"]) + 5 * int(spec["k_neighbors"])


def history_len(spec: dict[str, Any]) -> int:
    """How many recent positions (the current one included) a caller keeps per agent."""
    return int(spec["history"]) + 1


def agent_frames(spec: dict[str, Any], hist: np.ndarray, n_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's frame: origin [N,2] (current position) and rotation [N,2,2] world -> agent frame.

    The heading is the direction from the position `m = min(n_obs - 1, heading_steps)` samples ago to now,
    averaged over m steps so that tracker jitter does not spin the frame.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n_obs = np.asarray(n_obs)
    origin = hist[:, -1, :]
    m = np.clip(n_obs - 1, 0, int(spec["heading_steps"]))
    back = hist[np.arange(len(hist)), hist.shape[1] - 1 - m, :]
    d = np.where((m > 0)[:, None], origin - back, 0.0)
    norm = np.hypot(d[:, 0], d[:, 1])
    moving = norm >= float(spec["min_move"])
    safe = np.where(moving, norm, 1.0)
    cos = np.where(moving, d[:, 0] / safe, 1.0)
    sin = np.where(moving, d[:, 1] / safe, 0.0)
    # rows of R are the frame's axes: R @ v gives v in the agent frame.
    rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    return origin, rot


def step_features(
    spec: dict[str, Any],
    hist: np.ndarray,
    n_obs: np.ndarray,
    rows: np.ndarray | None = None,
    row_n_obs: np.ndarray | None = None,
) -> np.ndarray:
    """x_t [B,F] float32 for the agents `rows` among the N agents present at one sample time.

    hist: float[N, history_len, 2] positions (newest last); n_obs: int[N] >= 1, how many are real.
    All N agents form the neighbour pool. rows: int[B] indices into N (default: all). row_n_obs: optional
    int[B] that caps the agent's OWN history for that row (the window protocol forgets what came before
    the window; a row may repeat an agent with different caps); neighbours always use n_obs.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n_obs = np.asarray(n_obs, dtype=np.int64)
    n, hlen = hist.shape[0], hist.shape[1]
    k_hist = int(spec["history"])
    if hlen != k_hist + 1 or hist.shape[2:] != (2,):
        raise FeatureSpecError(f"hist shape {hist.shape}: expected (N, {k_hist + 1}, 2)")
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    own_n = n_obs[rows] if row_n_obs is None else np.minimum(np.asarray(row_n_obs, dtype=np.int64), n_obs[rows])
    b = len(rows)
    scale, radius, kn = float(spec["scale"]), float(spec["radius"]), int(spec["k_neighbors"])
    out = np.zeros((b, feature_dim(spec)), dtype=np.float64)
    if b == 0:
        return out.astype(np.float32)

    h = hist[rows]
    origin, rot = agent_frames(spec, h, own_n)
    # own displacements, newest first: hist[-1]-hist[-2], hist[-2]-hist[-3], ...
    disp = h[:, :0:-1, :] - h[:, -2::-1, :]                       # [B, K, 2]
    known = np.arange(1, k_hist + 1)[None, :] < own_n[:, None]     # displacement j needs j+1 positions
    disp = np.where(known[:, :, None], disp, 0.0)
    disp_f = _rotate(rot, disp) / scale
    out[:, : 2 * k_hist] = disp_f.reshape(b, 2 * k_hist)
    out[:, 2 * k_hist: 3 * k_hist] = known

    if kn > 0 and n > 1:
        pos = hist[:, -1, :]
        vel = np.where((n_obs >= 2)[:, None], hist[:, -1, :] - hist[:, -2, :], 0.0)
        own_vel = np.where((own_n >= 2)[:, None], h[:, -1, :] - h[:, -2, :], 0.0)
        rel = pos[None, :, :] - pos[rows][:, None, :]                 # [B, N, 2]
        dist = np.hypot(rel[..., 0], rel[..., 1])
        dist[np.arange(b), rows] = np.inf                             # not your own neighbour
        dist[dist > radius] = np.inf
        k = min(kn, n - 1)
        # stable sort: ties broken by index, so every caller picks the same neighbours.
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]         # [B, k]
        near = np.take_along_axis(dist, order, axis=1)
        present = np.isfinite(near)
        nrel = np.take_along_axis(rel, order[:, :, None], axis=1)
        nvel = vel[order] - own_vel[:, None, :]
        nrel_f = _rotate(rot, nrel) / radius
        nvel_f = _rotate(rot, nvel) / scale
        block = np.concatenate([nrel_f, nvel_f, np.ones((b, k, 1))], axis=2)
        block = np.where(present[:, :, None], block, 0.0)
        out[:, 3 * k_hist: 3 * k_hist + 5 * k] = block.reshape(b, 5 * k)
    return out.astype(np.float32)


def _rotate(rot: np.ndarray, v: np.ndarray, inverse: bool = False) -> np.ndarray:
    """rot[b] (2x2) applied to every vector v[b, k, :] (its transpose, the inverse, if `inverse`).

    Written out as multiply-adds: np.einsum took ~100 us for 48 agents x 30 steps where these take
    ~5 us, a third of the predictor's budget per message. Same products, same sums.
    """
    r = rot.transpose(0, 2, 1) if inverse else rot
    x, y = v[..., 0], v[..., 1]
    return np.stack([r[:, None, 0, 0] * x + r[:, None, 0, 1] * y,
                     r[:, None, 1, 0] * x + r[:, None, 1, 1] * y], axis=-1)


def to_world(spec: dict[str, Any], pred: np.ndarray, hist: np.ndarray, n_obs: np.ndarray) -> np.ndarray:
    """Model output pred[B,T,2] (agent frame, units of scale) -> absolute world positions [B,T,2] float64.

    hist/n_obs are the predicted agents' own histories, as given to `step_features` (after any row cap).
    """
    origin, rot = agent_frames(spec, hist, n_obs)
    p = np.asarray(pred, dtype=np.float64) * float(spec["scale"])
    return origin[:, None, :] + _rotate(rot, p, inverse=True)  # world = origin + R^T p


def to_frame(spec: dict[str, Any], xy: np.ndarray, hist: np.ndarray, n_obs: np.ndarray) -> np.ndarray:
    """Inverse of `to_world`: world positions [B,T,2] -> model output space (training targets)."""
    origin, rot = agent_frames(spec, hist, n_obs)
    d = np.asarray(xy, dtype=np.float64) - origin[:, None, :]
    return _rotate(rot, d) / float(spec["scale"])


def mirror_sign(spec: dict[str, Any]) -> np.ndarray:
    """float32[F] of +-1: multiplying x_t by it mirrors the scene across the agent's heading axis.

    Every lateral (y) component in the agent frame flips sign; training uses it as data augmentation
    (mirror the targets' y too), since left and right turns are equally plausible a priori.
    """
    k_hist, kn = int(spec["history"]), int(spec["k_neighbors"])
    sign = np.ones(feature_dim(spec), np.float32)
    sign[1: 2 * k_hist: 2] = -1.0
    for j in range(kn):
        base = 3 * k_hist + 5 * j
        sign[base + 1] = -1.0
        sign[base + 3] = -1.0
    return sign


def flag_mask(spec: dict[str, Any]) -> np.ndarray:
    """bool[F]: the 0/1 flag columns of x_t (known displacement, neighbour present).

    Training's speed augmentation multiplies every other column (lengths) by a factor and must leave
    these alone.
    """
    k_hist = int(spec["history"])
    mask = np.zeros(feature_dim(spec), bool)
    mask[2 * k_hist: 3 * k_hist] = True
    mask[3 * k_hist + 4:: 5] = True
    return mask

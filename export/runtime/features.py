"""Model input features and output decoding, shared by training and the streaming predictor node.

numpy only: the predictor node runs without torch, and it must compute exactly the inputs the model saw
in training. Training builds its input sequences by calling `step_features` once per sample time
(`models.sequences.track_sequences`), so a node that calls it with the same history reproduces the training
inputs bit for bit.

What a caller keeps per agent is a short position history, resampled to the model's period `dt_s`:
`hist[i, -1]` is the agent's position now, `hist[i, -1 - j]` its position j samples ago, and `n_obs[i]`
how many of those `history_len(spec)` entries are real (1 = the agent just appeared; older entries are
ignored, they may hold anything, NaN included).

Frame: every agent is seen in its own frame, origin at its current position, x axis along its recent
heading (the direction of travel over the last `heading_steps` samples), lengths divided by `scale`
(meters, about one typical step). A model trained on Beijing vehicles or Zurich pedestrians then sees a
simulated car on any road the same way. An agent that has not moved `min_move` meters over
`heading_steps` takes the direction from the newest position up to `heading_lookback` samples back that
lies `min_move` away (a car creeping to a stop line still faces its lane), and keeps the world axes only
where there is none (its heading would be noise). The model output `pred[B,T,2]` is the future position
offset in that frame, in units of `scale`; `to_world` undoes both.

Input vector x_t (feature spec "disp_nbr"), `feature_dim(spec)` = 3*history + 5*k_neighbors (+ 12 with crowd):
- own: the last `history` displacements (newest first), rotated and scaled, zero where unknown, then one
  0/1 flag per displacement telling whether it is known;
- neighbours: the `k_neighbors` nearest other agents present at this time within `radius` meters, nearest
  first, each as (relative x, relative y) / radius, (relative velocity x, y) per sample / scale, present
  flag; missing neighbours are all zero. Velocity = last displacement (zero for an agent with n_obs = 1);
- crowd (version 2, spec key `crowd` = L > 0, the closest-approach look-ahead in samples; CROWD_DIM = 12
  columns, whatever L): sums over EVERY other agent within `radius`, in the agent
  frame, of three kernels, each with the neighbours' kernel-weighted relative positions: nearness
  (exp(-d / (radius/4)), with the weighted relative velocities too), collision threat (exp(-(d*/(radius/6))^2),
  d* the distance at the closest approach within L samples at today's relative velocity, with the weighted
  time to it / L) and walking together (nearness times exp(-(|relative velocity| / (scale/4))^2)). Four
  nearest neighbours miss the rest of a crowd; these pool it in a fixed width, so the step stays one LSTM
  step and the ONNX contract stays (x_t, h, c) -> (pred, h', c'). Column order: `_CROWD_XY` below. They
  need the pool the node holds to be the pool training saw: a neighbour inside a gap of its track
  (interpolated offline, absent from a node's Tracks) changes the sums of everyone near it.

The constant-velocity baseline (`constant_velocity`) is here too: the evaluator node (runtime, no torch)
and models/ (evaluation, choice of k, the step-interface baseline) must score the same baseline, and
models/ may import export/ but nodes/ must not import models/.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CROWD_DIM",
    "FEATURE_NAME",
    "FEATURE_VERSION",
    "FeatureSpecError",
    "OPTIONAL_KEYS",
    "agent_frames",
    "constant_velocity",
    "default_spec",
    "feature_dim",
    "heading_lookback",
    "history_len",
    "mirror_sign",
    "spec_version",
    "step_features",
    "to_frame",
    "to_world",
    "unscaled_mask",
    "validate_spec",
]

FEATURE_NAME = "disp_nbr"
FEATURE_VERSION = 2   # the newest this code reads: 2 = version 1 plus the optional crowd columns
CROWD_DIM = 12
# The crowd columns: 0 nearness sum, 1-2 its weighted relative position (x, y) / radius, 3-4 its weighted
# relative velocity / scale, 5 threat sum, 6-7 its weighted position, 8 its weighted time to the closest
# approach / L, 9 walking-together sum, 10-11 its weighted position. The (x, y) pairs turn with the frame:
_CROWD_XY = np.array([1, 2, 3, 4, 6, 7, 10, 11])

_REQUIRED: dict[str, type] = {
    "history": int,
    "heading_steps": int,
    "k_neighbors": int,
    "radius": float,
    "scale": float,
    "min_move": float,
}
# Optional keys: a spec saved before a key existed means what it meant then. heading_lookback
# defaults to heading_steps: no look-back, the rule of the models shipped before it.
OPTIONAL_KEYS: dict[str, type] = {"heading_lookback": int, "crowd": int}

# agent_frames builds R = [[cos, sin], [-sin, cos]] from (cos, sin) with one gather and one product.
_WORLD_X = np.array([1.0, 0.0])  # (cos, sin) of an agent that keeps the world axes
_ROT_INDEX = np.array([[0, 1], [1, 0]])
_ROT_SIGN = np.array([[1.0, 1.0], [-1.0, 1.0]])


class FeatureSpecError(ValueError):
    """A feature spec (from a checkpoint or ONNX metadata) that this code cannot honour."""


def default_spec(kind: str) -> dict[str, Any]:
    """The spec used for a dataset family: 'pedestrian' (2.5 Hz), 'vehicle' (10 Hz), 'mixed' (2 Hz).

    scale is about one step of a typical agent (1.3 m/s * 0.4 s; 10 m/s * 0.1 s), radius the range
    in which other agents change a path.
    """
    if kind == "pedestrian":
        return {"name": FEATURE_NAME, "version": 1, "history": 4, "heading_steps": 2,
                "k_neighbors": 4, "radius": 6.0, "scale": 0.5, "min_move": 0.1}
    if kind == "vehicle":
        return {"name": FEATURE_NAME, "version": 1, "history": 8, "heading_steps": 4,
                "k_neighbors": 4, "radius": 30.0, "scale": 1.0, "min_move": 0.5}
    if kind == "mixed":   # ApolloScape: vehicles, cyclists and pedestrians together at 2 Hz
        return {"name": FEATURE_NAME, "version": 1, "history": 4, "heading_steps": 2,
                "k_neighbors": 4, "radius": 20.0, "scale": 2.0, "min_move": 0.3}
    raise FeatureSpecError(f"unknown agent kind {kind!r}: expected 'pedestrian', 'vehicle' or 'mixed'")


def spec_version(spec: dict[str, Any]) -> int:
    """The version a spec must carry: 2 once it asks for crowd features (a reader of version 1 must
    refuse such a model by name rather than feed it 12 inputs too few), else 1."""
    return 2 if spec.get("crowd", 0) else 1


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check name, version and every key; return the spec. Errors name the key, value and expectation."""
    version = spec.get("version")
    if (spec.get("name") != FEATURE_NAME or not isinstance(version, int) or isinstance(version, bool)
            or not 1 <= version <= FEATURE_VERSION):
        raise FeatureSpecError(
            f"feature spec name/version {spec.get('name')!r}/{spec.get('version')!r}: "
            f"expected {FEATURE_NAME!r}/1 to {FEATURE_VERSION}")
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
    look = spec.get("heading_lookback", spec["heading_steps"])
    if not isinstance(look, int) or isinstance(look, bool) or look < spec["heading_steps"]:
        raise FeatureSpecError(f"feature spec: heading_lookback={look!r}: expected an int >= heading_steps "
                               f"({spec['heading_steps']})")
    crowd = spec.get("crowd", 0)
    if not isinstance(crowd, int) or isinstance(crowd, bool) or not 0 <= crowd <= 1000:
        raise FeatureSpecError(f"feature spec: crowd={crowd!r}: expected an int from 0 (off) to 1000 samples")
    if spec["version"] != spec_version(spec):
        raise FeatureSpecError(f"feature spec: version {spec['version']} with crowd={crowd}: expected version "
                               f"{spec_version(spec)} (crowd features are version 2)")
    if spec["scale"] <= 0 or spec["radius"] <= 0:
        raise FeatureSpecError(f"feature spec: scale={spec['scale']}, radius={spec['radius']}: expected > 0")
    return spec


def feature_dim(spec: dict[str, Any]) -> int:
    """Length F of x_t."""
    return 3 * int(spec["history"]) + 5 * int(spec["k_neighbors"]) + (CROWD_DIM if spec.get("crowd", 0) else 0)


def heading_lookback(spec: dict[str, Any]) -> int:
    """How many samples back `agent_frames` may look for the direction of a slow agent."""
    return int(spec.get("heading_lookback", spec["heading_steps"]))


def history_len(spec: dict[str, Any]) -> int:
    """How many recent positions (the current one included) a caller keeps per agent."""
    return max(int(spec["history"]), heading_lookback(spec)) + 1


def agent_frames(spec: dict[str, Any], hist: np.ndarray, n_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's frame: origin [N,2] (current position) and rotation [N,2,2] world -> agent frame.

    The heading is the direction from the position `m = min(n_obs - 1, heading_steps)` samples ago to now,
    averaged over m steps so that tracker jitter does not spin the frame (m = 0 reads the current position
    itself: no direction). An agent that moved less than min_move over those m samples looks further
    back, up to `heading_lookback` samples (and its n_obs), for the newest position min_move away.
    """
    hist, n_obs = np.asarray(hist, dtype=np.float64), np.asarray(n_obs)
    origin, steps, min_move = hist[:, -1, :], int(spec["heading_steps"]), float(spec["min_move"])
    if n_obs.min(initial=steps + 1) > steps:  # all have m = heading_steps (a node's steady state): no gather
        back = hist[:, -1 - steps, :]
    else:
        back = hist[np.arange(len(hist)), hist.shape[1] - 1 - np.minimum(np.maximum(n_obs - 1, 0), steps)]
    d = origin - back
    norm = np.hypot(d[:, 0], d[:, 1])
    moving = norm >= min_move
    look = heading_lookback(spec)
    if look > steps and not moving.all():   # stopped or creeping agents: the newest lag in (steps, look]
        slow = np.flatnonzero(~moving & (n_obs > steps + 1))     # that lies min_move away, if observed
        lags = np.arange(steps + 1, look + 1)
        dl = origin[slow, None, :] - hist[slow[:, None], hist.shape[1] - 1 - lags]   # [S, L, 2]
        nl = np.hypot(dl[..., 0], dl[..., 1])
        ok = (nl >= min_move) & (lags < n_obs[slow, None])
        found, pick = ok.any(axis=1), np.argmax(ok, axis=1)
        rows = slow[found]
        d[rows], norm[rows] = dl[found, pick[found]], nl[found, pick[found]]
        moving[rows] = True
    cos_sin = np.where(moving[:, None], d / np.where(moving, norm, 1.0)[:, None], _WORLD_X)
    # rows of R are the frame's axes, (cos, sin) and (-sin, cos): R @ v gives v in the agent frame.
    return origin, cos_sin[:, _ROT_INDEX] * _ROT_SIGN


def step_features(
    spec: dict[str, Any],
    hist: np.ndarray,
    n_obs: np.ndarray,
    rows: np.ndarray | None = None,
    row_n_obs: np.ndarray | None = None,
    frames: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """x_t [B,F] float32 for the agents `rows` among the N agents present at one sample time.

    hist: float[N, history_len, 2] positions (newest last); n_obs: int[N] >= 1, how many are real.
    All N agents form the neighbour pool. rows: int[B] indices into N (default: all). row_n_obs: optional
    int[B] that caps the agent's OWN history for that row (the window protocol forgets what came before
    the window; a row may repeat an agent with different caps); neighbours always use n_obs.
    frames: `agent_frames` of the B rows (with their capped n_obs), when the caller already has them:
    the predictor node computes them once per step for both this and `to_world`.

    Few numpy calls rather than clear intermediate arrays: the node calls this once per message,
    right after it wakes, where each call costs several microseconds of cold caches.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n_obs = np.asarray(n_obs, dtype=np.int64)
    n, hlen = hist.shape[0], hist.shape[1]
    k_hist, hl = int(spec["history"]), history_len(spec)
    if hlen != hl or hist.shape[2:] != (2,):
        raise FeatureSpecError(f"hist shape {hist.shape}: expected (N, {hl}, 2)")
    if rows is None:
        h, own_n = hist, n_obs
    else:
        rows = np.asarray(rows, dtype=np.int64)
        h, own_n = hist[rows], n_obs[rows]
    if row_n_obs is not None:
        own_n = np.minimum(np.asarray(row_n_obs, dtype=np.int64), own_n)
    b = len(h)
    scale, radius, kn = float(spec["scale"]), float(spec["radius"]), int(spec["k_neighbors"])
    out = np.zeros((b, feature_dim(spec)))  # rounded to float32 once, at the end
    if b == 0:
        return out.astype(np.float32)

    origin, rot = agent_frames(spec, h, own_n) if frames is None else frames
    # Layout matters as much as the number of calls: numpy runs its inner loop over the last axis, and an
    # operation that broadcasts along a trailing (x, y) axis of 2 runs it 2 elements at a time (several
    # times slower); a float64 -> float32 store inside an operation is slower still. So the work below is on
    # flat rows, on x and y planes or on whole (x, y) rows, in float64, and every vector (own
    # displacements, neighbour positions and velocities) is rotated and scaled by one set of calls.
    known = _needs(k_hist) < own_n[:, None]                      # [B, 2K]: x, y of each displacement
    # own displacements: hist[1]-hist[0], ..., hist[-1]-hist[-2], turned newest first
    hk = h[:, hl - k_hist - 1:]                                   # the positions the displacements use
    vec = np.where(known, (hk[:, 1:] - hk[:, :-1]).reshape(b, 2 * k_hist), 0.0).reshape(b, k_hist, 2)[:, ::-1]
    k = min(kn, n - 1)
    look = int(spec.get("crowd", 0)) if n > 1 else 0
    if k > 0 or look:
        # pool rows: x, y, vx, vy of every agent (velocity = last displacement, 0 if unknown)
        if rows is None and row_n_obs is None:  # the rows are the pool: vec[:, 0] is that displacement
            own = pool = np.concatenate((hist[:, -1, :], vec[:, 0, :]), axis=1)
        else:
            pool = np.zeros((n, 4))
            pool[:, :2] = hist[:, -1, :]
            np.subtract(hist[:, -1, :], hist[:, -2, :], out=pool[:, 2:], where=(n_obs >= 2)[:, None])
            if row_n_obs is None:
                own = pool[rows]
            else:
                own = np.zeros((b, 4))
                own[:, :2] = origin
                np.subtract(origin, h[:, -2, :], out=own[:, 2:], where=(own_n >= 2)[:, None])
        rel = np.subtract(pool.T[:2, None, :], own.T[:2, :, None], order="C")  # [2, B, N]: x and y planes
        sq = rel * rel
        # hypot (slow) only where the squared sum (a few ulp off) says a pair may lie within radius;
        # not your own neighbour
        near = sq[0] + sq[1] <= (radius * (1 + 1e-9)) ** 2
        near[np.arange(b), np.arange(n) if rows is None else rows] = False
        dist = np.empty((b, n))
        dist.fill(np.inf)
        np.hypot(rel[0], rel[1], out=dist, where=near)
    if look:
        out[:, feature_dim(spec) - CROWD_DIM:] = _crowd(rel, dist, pool, own, rot, radius, scale, look)
    if k > 0:
        # stable sort: ties broken by index, so every caller picks the same neighbours. (Beyond radius
        # by less than the margin: sorted after those within, marked absent like them.)
        if n > _SORT_ALL_MAX and np.count_nonzero(near) * 8 < near.size:
            order, present = _nearest_pairs(near, dist, k, radius)
        else:
            order = np.argsort(dist, axis=1, kind="stable")[:, :k]     # [B, k]
            present = dist[np.arange(b)[:, None], order] <= radius
        nbr = pool[order] - own[:, None, :]                             # [B, k, (x, y, vx, vy)]
        vec = np.concatenate((vec, nbr.reshape(b, 2 * k, 2)), axis=1)  # [B, K + 2k, 2]
    vec = _rotate(rot, vec) / _divisors(k_hist, k, scale, radius)
    out[:, : 2 * k_hist] = vec[:, :k_hist].reshape(b, 2 * k_hist)
    out[:, 2 * k_hist: 3 * k_hist] = known[:, -2::-2]
    if k > 0:
        block = out[:, 3 * k_hist: 3 * k_hist + 5 * k].reshape(b, k, 5)  # a view: writes land in out
        block[:, :, :4] = np.where(present[:, :, None], vec[:, k_hist:].reshape(b, k, 4), 0.0)
        block[:, :, 4] = present
    return out.astype(np.float32)


def _crowd(rel: np.ndarray, dist: np.ndarray, pool: np.ndarray, own: np.ndarray, rot: np.ndarray,
           radius: float, scale: float, look: int) -> np.ndarray:
    """[B, CROWD_DIM] crowd columns (module docstring) from the pairs' world-frame offsets rel[2,B,N] and
    distances dist[B,N] (inf for a pair beyond the near margin or the agent itself; within the margin but
    beyond radius does not count either).

    Sums, not means: an empty neighbourhood is all zeros, and the nearness sum counts the crowd. Only the
    pairs that count are worked on (a road or a square holds far fewer than B x N), row by row in index
    order, each row summed on its own: a row gets the same bits whichever other rows a caller asks for.
    Distances and closest approaches do not depend on the frame, and a sum of vectors turns like each of
    them, so the pairs stay in the world frame and only the sums are rotated.
    """
    out = np.zeros((len(own), CROWD_DIM))
    bi, ni = np.nonzero(dist <= radius)                # row-major: each row's pairs together
    if len(bi) == 0:
        return out
    px, py, d = rel[0][bi, ni], rel[1][bi, ni], dist[bi, ni]
    ux, uy = pool[ni, 2] - own[bi, 2], pool[ni, 3] - own[bi, 3]   # relative velocities
    pv, vv = px * ux + py * uy, ux * ux + uy * uy
    # closest approach within `look` samples at today's relative velocity: t* = -(p.v)/|v|^2, clipped
    t = np.clip(-pv / np.maximum(vv, 1e-12), 0.0, float(look))
    w_near = np.exp(d * (-4.0 / radius))                                       # >= exp(-4)
    w_threat = np.exp((d * d + t * (2.0 * pv + t * vv)) * (-36.0 / radius**2))  # |p + v t*|^2 <= radius^2
    # never an exp below -50: a subnormal result costs some 30x a normal one
    w_group = w_near * np.exp(np.maximum(vv * (-16.0 / scale**2), -50.0))
    cols = np.stack((w_near, w_near * px, w_near * py, w_near * ux, w_near * uy,
                     w_threat, w_threat * px, w_threat * py, w_threat * t, w_group, w_group * px, w_group * py))
    starts = np.flatnonzero(np.r_[True, bi[1:] != bi[:-1]])
    hit = bi[starts]
    sums = np.add.reduceat(cols, starts, axis=1).T                           # [R, CROWD_DIM]
    turned = _rotate(rot[hit], sums[:, _CROWD_XY].reshape(-1, 4, 2))
    sums[:, _CROWD_XY] = turned.reshape(-1, 8) / np.array([radius, radius, scale, scale] + [radius] * 4)
    sums[:, 8] /= look
    out[hit] = sums
    return out


# Above this many agents, and when few pairs lie within radius (agents spread along roads), sorting the
# pairs within radius costs less than sorting every row of [B, N]: at 1,000 agents on a road 21 ms
# instead of 74 ms per call here. Where most pairs are near (a crowd), the row sort stays faster.
_SORT_ALL_MAX = 256


def _nearest_pairs(near: np.ndarray, dist: np.ndarray, k: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The same [B, k] neighbour indices and presence as a stable argsort of each row of `dist` (by
    distance, ties by index), from the pairs that may lie within radius only: a slot without such a
    neighbour gets index 0, absent (its values are masked out)."""
    b = near.shape[0]
    bi, ni = np.nonzero(near)
    d = dist[bi, ni]
    o = np.lexsort((ni, d, bi))  # by row, then distance, then index
    bi, ni, d = bi[o], ni[o], d[o]
    counts = np.bincount(bi, minlength=b)
    rank = np.arange(len(bi)) - (np.cumsum(counts) - counts)[bi]
    keep = rank < k
    order = np.zeros((b, k), np.int64)
    present = np.zeros((b, k), bool)
    order[bi[keep], rank[keep]] = ni[keep]
    present[bi[keep], rank[keep]] = d[keep] <= radius
    return order, present


@functools.cache
def _needs(k_hist: int) -> np.ndarray:
    """[2K]: how many positions the x and y of each own displacement (oldest first) need to be known."""
    needs = k_hist - np.arange(2 * k_hist) // 2
    needs.flags.writeable = False  # shared by every call
    return needs


@functools.cache
def _divisors(k_hist: int, k: int, scale: float, radius: float) -> np.ndarray:
    """[K + 2k, 2]: what each rotated vector of `step_features` is divided by (x and y alike)."""
    div = np.repeat([scale] * k_hist + [radius, scale] * k, 2).reshape(-1, 2)
    div.flags.writeable = False  # shared by every call
    return div


def _rotate(rot: np.ndarray, v: np.ndarray, inverse: bool = False) -> np.ndarray:
    """rot[b] (2x2) applied to every vector v[b, k, :] (its transpose, the inverse, if `inverse`).

    Written out as multiply-adds: np.einsum is many times slower at these sizes, and np.matmul may fuse
    a multiply-add (other bits than training's features).
    """
    r = rot.transpose(0, 2, 1) if inverse else rot
    x, y = v[..., 0], v[..., 1]
    out = np.empty(v.shape)
    np.add(r[:, None, 0, 0] * x, r[:, None, 0, 1] * y, out=out[..., 0])
    np.add(r[:, None, 1, 0] * x, r[:, None, 1, 1] * y, out=out[..., 1])
    return out


def to_world(spec: dict[str, Any], pred: np.ndarray, hist: np.ndarray, n_obs: np.ndarray,
             frames: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Model output pred[B,T,2] (agent frame, units of scale) -> absolute world positions [B,T,2] float64.

    hist/n_obs are the predicted agents' own histories, as given to `step_features` (after any row cap);
    frames: their `agent_frames`, when the caller already has them.
    """
    origin, rot = agent_frames(spec, hist, n_obs) if frames is None else frames
    world = _rotate(rot, np.multiply(pred, float(spec["scale"]), dtype=np.float64), inverse=True)  # R^T p
    world[..., 0] += origin[:, None, 0]
    world[..., 1] += origin[:, None, 1]
    return world


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
    if spec.get("crowd", 0):   # the y of each weighted position and velocity
        sign[3 * k_hist + 5 * kn + _CROWD_XY[1::2]] = -1.0
    return sign


def constant_velocity(past: np.ndarray, k: int, steps: np.ndarray, lags: Sequence[int] | np.ndarray | None = None,
                      known: np.ndarray | None = None) -> np.ndarray:
    """Constant velocity CV(k): positions [B,T,2] float64 `steps[T]` sample periods ahead of now.

    past[B,L,2]: each agent's position now (past[:, 0]) and `lags[l]` periods ago (lags increasing from 0;
    default 0, 1, ..., L-1: one period apart). known[B,L]: which of those are real (default: all;
    past[:, 0] must be). The velocity is averaged over the longest window up to k periods the agent has
    been seen for, (past[:, 0] - past[:, l]) / lags[l] for the largest known lags[l] <= k: a partial
    history averages over what there is, and an agent seen only now stands still.
    """
    past = np.asarray(past, dtype=np.float64)
    lags = np.arange(past.shape[1]) if lags is None else np.asarray(lags)
    if not 1 <= k <= lags[-1]:
        raise ValueError(f"constant velocity k={k}: expected 1 <= k <= {lags[-1]} for {len(lags)} observed samples")
    ok = lags[1:] <= k if known is None else np.asarray(known, bool)[:, 1:] & (lags[1:] <= k)
    # index into past of the longest usable window (0: none)
    j = np.broadcast_to(np.where(ok, np.arange(1, len(lags)), 0).max(-1), past.shape[:1])
    back = past[np.arange(len(past)), j]
    v = np.where((j > 0)[:, None], (past[:, 0] - back) / np.maximum(lags[j], 1)[:, None], 0.0)
    return past[:, 0, None, :] + np.asarray(steps, dtype=np.float64)[None, :, None] * v[:, None, :]


def unscaled_mask(spec: dict[str, Any]) -> np.ndarray:
    """bool[F]: the columns of x_t that are not lengths: the 0/1 flags (known displacement, neighbour
    present) and the crowd columns. Those are kernels of lengths and vectors weighted by them: scaling the
    vectors and not their kernels describes no real scene either, so they are left as they are (the shipped
    recipes were measured so; docs/EXPERIMENTS.md, Pedestrian 8).

    Training's speed augmentation multiplies every other column (lengths) by a factor and must leave
    these alone.
    """
    k_hist, kn = int(spec["history"]), int(spec["k_neighbors"])
    mask = np.zeros(feature_dim(spec), bool)
    mask[2 * k_hist: 3 * k_hist] = True
    mask[3 * k_hist + 4: 3 * k_hist + 5 * kn: 5] = True
    mask[3 * k_hist + 5 * kn:] = True
    return mask

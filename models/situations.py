"""One situation label per evaluation window, so `drivecast eval` can say where a model loses (issue 26).

A window is labelled from what is observed up to and including its last observed sample e, never from the
future (the label must be known when the prediction is made). Velocities are the last displacement over one
sample period, v(e) = (p(e) - p(e-1)) / dt; an agent absent at e-1 has velocity 0. The first rule that
matches wins, so the labels split the windows and their rows sum to the whole:

1. standing: the agent's mean speed over its observed window (mean of its per-step speeds) is below
   STANDING_MPS = 0.3 m/s;
2. crossing: another agent present at e, within NEAR_M = 6 m, moving in a direction more than
   CROSS_ANGLE_DEG = 45 degrees from the agent's, whose closest approach at today's relative velocity comes
   within CROSS_MISS_M = 1.0 m in the next CROSS_HORIZON_S = 4.8 s (t* = -(p.v)/|v|^2 clipped to
   [0, 4.8 s], p and v the neighbour's position and velocity relative to the agent). A velocity below
   STANDING_MPS has no direction (a standing neighbour is not a crossing flow, and the direction of a
   few-centimetre jitter is noise), so both must move at least that fast;
3. group: another agent within GROUP_M = 2.0 m at e whose velocity differs from the agent's by less than
   GROUP_DV_MPS = 0.3 m/s (walking together);
4. crowded: CROWD_N = 6 or more other agents within NEAR_M = 6 m at e;
5. alone: no other agent within NEAR_M = 6 m at e;
6. other: the rest.

The thresholds are for pedestrians; on vehicles the labels still run (most windows are alone or other).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.datasets import Grid

__all__ = ["CROSS_ANGLE_DEG", "CROSS_HORIZON_S", "CROSS_MISS_M", "CROWD_N", "GROUP_DV_MPS", "GROUP_M", "NEAR_M",
           "SITUATIONS", "SITUATIONS_MEANS", "STANDING_MPS", "label_windows"]

STANDING_MPS = 0.3       # below this mean speed over the observed window: standing
NEAR_M = 6.0             # "near": the radius for crossing, crowded and alone
CROSS_ANGLE_DEG = 45.0   # crossing: directions differ by more than this
CROSS_MISS_M = 1.0       # crossing: closest approach within this ...
CROSS_HORIZON_S = 4.8    # ... in the next this many seconds, at today's relative velocity
GROUP_M = 2.0            # group: a neighbour within this ...
GROUP_DV_MPS = 0.3       # ... whose velocity differs by less than this
CROWD_N = 6              # crowded: this many or more others within NEAR_M

SITUATIONS = ("standing", "crossing", "group", "crowded", "alone", "other")   # the rule order, first match wins
SITUATIONS_MEANS = (f"standing: mean speed < {STANDING_MPS:g} m/s; crossing: someone within {NEAR_M:g} m, heading "
                    f"over {CROSS_ANGLE_DEG:g} deg apart, passing within {CROSS_MISS_M:g} m in {CROSS_HORIZON_S:g} s; "
                    f"group: someone within {GROUP_M:g} m at the same velocity (+-{GROUP_DV_MPS:g} m/s); "
                    f"crowded: {CROWD_N}+ others within {NEAR_M:g} m; alone: nobody within {NEAR_M:g} m; "
                    "first match wins, at the last observed sample")


def _velocities(grid: Grid, dt_s: float) -> np.ndarray:
    """v[A,S,2] = (p(s) - p(s-1)) / dt where both samples are present, else 0 (no previous sample, no speed)."""
    v = np.zeros_like(grid.xy, dtype=np.float64)
    both = grid.valid[:, 1:] & grid.valid[:, :-1]
    step = np.where(both[..., None], grid.xy[:, 1:] - grid.xy[:, :-1], 0.0)
    v[:, 1:] = step / dt_s
    return v


def _mean_speed(grid: Grid, agent: np.ndarray, end: np.ndarray, obs_len: int, dt_s: float) -> np.ndarray:
    """Each window's mean per-step speed over its observed samples end-obs_len+1 .. end (0 if no step)."""
    s = end[:, None] - obs_len + 1 + np.arange(obs_len)[None, :]
    ok = (s >= 0) & grid.valid[agent[:, None], np.clip(s, 0, None)]
    xy = grid.xy[agent[:, None], np.clip(s, 0, None)]
    steps = ok[:, 1:] & ok[:, :-1]
    speed = np.where(steps, np.linalg.norm(np.nan_to_num(xy[:, 1:] - xy[:, :-1]), axis=-1), 0.0) / dt_s
    return speed.sum(1) / np.maximum(steps.sum(1), 1)


def label_windows(grid: Grid, agent: np.ndarray, end: np.ndarray, obs_len: int) -> np.ndarray:
    """The situation (one of SITUATIONS) of each window: agent a observed up to sample e, object[W].

    Raises ValueError if an agent is absent at its end.
    """
    dt = float(grid.dt_s)
    agent, end = np.asarray(agent, np.int64), np.asarray(end, np.int64)
    out = np.full(len(agent), "other", dtype=object)
    if len(agent) == 0:
        return out
    if not grid.valid[agent, end].all():
        bad = int(np.argmin(grid.valid[agent, end]))
        raise ValueError(f"{grid.name}: agent {agent[bad]} is absent at its window end {end[bad]}")
    standing = _mean_speed(grid, agent, end, obs_len, dt) < STANDING_MPS
    vel = _velocities(grid, dt)
    cos_max = np.cos(np.radians(CROSS_ANGLE_DEG))
    for s in np.unique(end).tolist():
        here = np.nonzero(grid.valid[:, s])[0]
        rows = np.nonzero(end == s)[0]
        me = np.searchsorted(here, agent[rows])                      # [R] the window agent among those here
        p = grid.xy[here, s][None] - grid.xy[here[me], s][:, None]   # [R,N,2] neighbours relative to the agent
        v = vel[here, s][None] - vel[here[me], s][:, None]
        other = here[None, :] != agent[rows][:, None]
        dist = np.linalg.norm(p, axis=-1)
        near = other & (dist <= NEAR_M)
        va, vn = vel[here[me], s], vel[here, s]                       # [R,2], [N,2]
        sa, sn = np.linalg.norm(va, axis=-1), np.linalg.norm(vn, axis=-1)
        moving = (sa[:, None] >= STANDING_MPS) & (sn[None, :] >= STANDING_MPS)
        cos = (va @ vn.T) / np.maximum(sa[:, None] * sn[None, :], 1e-12)
        vv = (v * v).sum(-1)
        t = np.clip(-(p * v).sum(-1) / np.maximum(vv, 1e-12), 0.0, CROSS_HORIZON_S)
        miss = np.linalg.norm(p + v * t[..., None], axis=-1)
        crossing = (near & moving & (cos < cos_max) & (miss <= CROSS_MISS_M)).any(1)
        group = (other & (dist <= GROUP_M) & (np.linalg.norm(v, axis=-1) < GROUP_DV_MPS)).any(1)
        n_near = near.sum(1)
        label = np.select([standing[rows], crossing, group, n_near >= CROWD_N, n_near == 0],
                          list(SITUATIONS[:5]), SITUATIONS[5])
        out[rows] = label.astype(object)
    return out

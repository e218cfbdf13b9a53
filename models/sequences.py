"""Model inputs and targets built from a `Grid`, one sample time at a time with export.runtime.features.

Training (`track_sequences`) and the streaming protocol see each agent from its first sample with its whole
past; the window protocol (`window_inputs`) sees only the obs_len samples of the window. Both call
`export.runtime.features.step_features` once per sample time on everyone present, exactly as the streaming
predictor node does, so offline and streaming inputs are the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from export.runtime.features import feature_dim, history_len, step_features, to_frame
from models.datasets import Grid

__all__ = ["TrackSeq", "Windows", "find_windows", "pool_at", "track_sequences", "window_inputs"]


@dataclass
class TrackSeq:
    """One agent from its first to its last sample: inputs x[L,F], targets y[L,T,2], mask[L,T]."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    agent: int
    first: int
    focal: bool = False


def pool_at(spec: dict[str, Any], grid: Grid, s: int, first: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(agent indices present at s, their hist[N,K+1,2], n_obs[N]) as a streaming node would hold them."""
    hl = history_len(spec)
    idx = np.nonzero(grid.valid[:, s])[0]
    lo = s - hl + 1
    if lo >= 0:
        hist = grid.xy[idx, lo: s + 1]
    else:
        hist = np.concatenate([np.full((len(idx), -lo, 2), np.nan), grid.xy[idx, : s + 1]], axis=1)
    n_obs = np.minimum(s - first[idx] + 1, hl)
    return idx, hist, n_obs


def track_sequences(spec: dict[str, Any], grid: Grid, horizon: int, min_len: int = 2) -> list[TrackSeq]:
    """Every agent's whole-track inputs and future targets (masked where the future is not in the data)."""
    a_n, s_n = grid.valid.shape
    first = grid.first()
    f = feature_dim(spec)
    x = np.zeros((a_n, s_n, f), np.float32)
    y = np.zeros((a_n, s_n, horizon, 2), np.float32)
    m = np.zeros((a_n, s_n, horizon), bool)
    xy_pad = np.concatenate([grid.xy, np.full((a_n, horizon, 2), np.nan)], axis=1)
    valid_pad = np.concatenate([grid.valid, np.zeros((a_n, horizon), bool)], axis=1)
    for s in range(s_n):
        idx, hist, n_obs = pool_at(spec, grid, s, first)
        if len(idx) == 0:
            continue
        x[idx, s] = step_features(spec, hist, n_obs)
        fut = xy_pad[idx, s + 1: s + 1 + horizon]
        ok = valid_pad[idx, s + 1: s + 1 + horizon]
        tgt = to_frame(spec, np.where(ok[..., None], fut, hist[:, -1:, :]), hist, n_obs)
        y[idx, s] = tgt
        m[idx, s] = ok
    out = []
    for a in range(a_n):
        steps = np.nonzero(grid.valid[a])[0]
        if len(steps) < min_len:
            continue
        lo, hi = steps[0], steps[-1] + 1
        out.append(TrackSeq(x[a, lo:hi], y[a, lo:hi], m[a, lo:hi], a, int(lo), bool(grid.focal[a])))
    return out


@dataclass
class Windows:
    """Evaluation windows of one grid: agent a, last observed sample e; truth[W,T,2], obs[W,obs_len,2]."""

    agent: np.ndarray
    end: np.ndarray
    obs: np.ndarray
    truth: np.ndarray


def find_windows(grid: Grid, obs_len: int, horizon: int, focal_only: bool, stride: int = 1) -> Windows:
    """Every (agent, end) with obs_len + horizon consecutive valid samples (sliding, stride `stride`)."""
    n = obs_len + horizon
    agents, ends = [], []
    for a in range(grid.valid.shape[0]):
        if focal_only and not grid.focal[a]:
            continue
        steps = np.nonzero(grid.valid[a])[0]
        if len(steps) < n:
            continue
        lo, hi = steps[0], steps[-1]
        for start in range(lo, hi - n + 2, stride):
            agents.append(a)
            ends.append(start + obs_len - 1)
    ag, en = np.array(agents, dtype=np.int64), np.array(ends, dtype=np.int64)
    if len(ag) == 0:
        z = np.zeros((0, 0, 2))
        return Windows(ag, en, z.reshape(0, obs_len, 2), z.reshape(0, horizon, 2))
    obs = np.stack([grid.xy[a, e - obs_len + 1: e + 1] for a, e in zip(ag, en, strict=True)])
    truth = np.stack([grid.xy[a, e + 1: e + 1 + horizon] for a, e in zip(ag, en, strict=True)])
    return Windows(ag, en, obs, truth)


def window_inputs(spec: dict[str, Any], grid: Grid, win: Windows, obs_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window protocol inputs x[W,obs_len,F] plus the final hist[W,K+1,2] and n_obs[W] for to_world.

    The agent's own history is capped at the window start (it observes obs_len samples and nothing
    earlier); its neighbours are whoever is present at each time, as in streaming.
    """
    w = len(win.agent)
    x = np.zeros((w, obs_len, feature_dim(spec)), np.float32)
    hl = history_len(spec)
    last_hist = np.zeros((w, hl, 2))
    last_n = np.ones(w, np.int64)
    if w == 0:
        return x, last_hist, last_n
    first = grid.first()
    starts = win.end - obs_len + 1
    for s in range(int(starts.min()), int(win.end.max()) + 1):
        sel = np.nonzero((starts <= s) & (s <= win.end))[0]
        if len(sel) == 0:
            continue
        idx, hist, n_obs = pool_at(spec, grid, s, first)
        slot = np.searchsorted(idx, win.agent[sel])
        cap = s - starts[sel] + 1
        x[sel, s - starts[sel]] = step_features(spec, hist, n_obs, rows=slot, row_n_obs=cap)
        done = win.end[sel] == s
        last_hist[sel[done]] = hist[slot[done]]
        last_n[sel[done]] = np.minimum(n_obs[slot[done]], cap[done])
    return x, last_hist, last_n

"""Score a tracker's output against a ground-truth object (motion capture), scan by scan.

`score` takes, for each scan, the confirmed tracks and the truth interpolated at the scan's stamp,
and returns position RMSE, speed RMSE, coverage, identity switches and false tracks (`Score`):

- Matching: a track matches the truth when its centre is within `gate` (0.5 m) of it. The id matched
  at the previous match is kept while it stays within the gate (as CLEAR-MOT does), otherwise the
  nearest track within the gate is taken. RMSE and speed RMSE are over the matched scans (speed =
  the norm of the velocity; the truth's comes from a central difference over +-`SPEED_HALF_WINDOW_S`).
- Identity switches: the matched id differs from the id of the previous match (gaps in between do
  not reset it).
- Coverage: the share of the scans in which the truth can be seen that have a match. "Can be seen"
  is the caller's `visible` flag; `visible_in_scan` computes it as: the truth is within the
  lidar's [range_min, range_max] and at least `min_returns` returns of the scan lie within
  `radius` of it (a hidden car gives no returns where it is; an empty spot gives none either).
- False tracks: ids that stay more than `gate` from the truth over more than `false_after_s` (1 s),
  from the first scan that has them far to the last. A scan without the track (coasting, unpublished)
  does not break the run: an id is never reused, so it is the same track. Coming within `gate`
  breaks it, and so does a scan whose truth is unknown (a gap in the truth), which judges nothing.

The lidar pose at a scan is the carrier's pose interpolated at the scan's stamp, composed with the
mounting offset (x, y, yaw in the carrier's frame); `interpolate` and `pose_at` do it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_GAP_S", "SPEED_HALF_WINDOW_S", "Score", "TrackFrame", "interpolate", "pose_at", "score",
           "truth_at", "visible_in_scan", "yaw_of"]

#: truth or pose samples further apart than this are a gap: nothing is interpolated across it
MAX_GAP_S = 0.25
#: the truth velocity at t is (p(t + h) - p(t - h)) / 2h with this h: 120 Hz mocap noise stays below 1 cm/s
SPEED_HALF_WINDOW_S = 0.05


@dataclass
class TrackFrame:
    """The confirmed tracks published for one scan: ids, centres (m) and velocities (m/s), map frame."""

    ids: np.ndarray
    xy: np.ndarray
    vxy: np.ndarray

    @classmethod
    def empty(cls) -> TrackFrame:
        return cls(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2)))


@dataclass
class Score:
    scans: int = 0                 # scans scored (truth known at their stamp)
    matched: int = 0               # of them, with a track within the gate
    visible: int = 0               # of them, with the truth in range and not hidden
    covered: int = 0               # of the visible ones, with a track within the gate
    rmse_m: float = math.nan
    speed_rmse_mps: float = math.nan
    id_switches: int = 0
    false_tracks: int = 0
    false_ids: list[int] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.covered / self.visible if self.visible else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"rmse_m": _round(self.rmse_m), "speed_rmse_mps": _round(self.speed_rmse_mps),
                "coverage": _round(self.coverage), "id_switches": self.id_switches,
                "false_tracks": self.false_tracks, "scans": self.scans, "visible_scans": self.visible,
                "matched_scans": self.matched}

    def line(self) -> str:
        return (f"position RMSE {self.rmse_m:.3f} m, speed RMSE {self.speed_rmse_mps:.3f} m/s, "
                f"coverage {self.coverage:.1%} ({self.covered}/{self.visible} scans with the car visible), "
                f"identity switches {self.id_switches}, false tracks {self.false_tracks}, "
                f"{self.matched}/{self.scans} scans matched")


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def interpolate(t_ns: np.ndarray, values: np.ndarray, at_ns: np.ndarray,
                max_gap_s: float = MAX_GAP_S) -> tuple[np.ndarray, np.ndarray]:
    """`values` (rows at sorted `t_ns`) linearly interpolated at `at_ns`, and whether each is known:
    inside the samples' span, between samples at most `max_gap_s` apart (or on a sample)."""
    t = np.asarray(t_ns, np.int64)
    v = np.asarray(values, np.float64)
    v = v[:, None] if v.ndim == 1 else v
    at = np.asarray(at_ns, np.int64)
    out = np.full((len(at), v.shape[1]), np.nan)
    ok = np.zeros(len(at), bool)
    if len(t) == 0:
        return out, ok
    hi = np.clip(np.searchsorted(t, at, side="left"), 0, len(t) - 1)
    lo = np.clip(hi - 1, 0, len(t) - 1)
    exact = t[hi] == at
    lo = np.where(exact, hi, lo)
    span = (t[hi] - t[lo]).astype(np.float64)
    ok = exact | ((t[lo] <= at) & (at <= t[hi]) & (span > 0) & (span <= max_gap_s * 1e9))
    w = np.divide((at - t[lo]).astype(np.float64), span, out=np.zeros(len(at)), where=span > 0)[:, None]
    out = np.where(ok[:, None], v[lo] + w * (v[hi] - v[lo]), np.nan)
    return out, ok


def yaw_of(quat_xyzw: np.ndarray) -> np.ndarray:
    """Yaw (rad) of quaternions given as rows x, y, z, w."""
    q = np.asarray(quat_xyzw, np.float64).reshape(-1, 4)
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def pose_at(t_ns: np.ndarray, xy: np.ndarray, yaw: np.ndarray, at_ns: np.ndarray,
            offset: Sequence[float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rows x, y, yaw of a sensor mounted at `offset` (x, y, yaw in the carrier's frame) on a
    carrier whose poses are (`t_ns`, `xy`, `yaw`), at `at_ns`; and whether each is known."""
    vals, ok = interpolate(t_ns, np.column_stack([xy, np.unwrap(yaw)]), at_ns)
    c, s = np.cos(vals[:, 2]), np.sin(vals[:, 2])
    ox, oy, oyaw = (float(v) for v in offset)
    pose = np.column_stack([vals[:, 0] + c * ox - s * oy, vals[:, 1] + s * ox + c * oy, vals[:, 2] + oyaw])
    return pose, ok


def truth_at(t_ns: np.ndarray, xy: np.ndarray, at_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The truth's position and velocity at `at_ns`, and whether both are known there."""
    pos, ok = interpolate(t_ns, xy, at_ns)
    h = int(SPEED_HALF_WINDOW_S * 1e9)
    ahead, ok_a = interpolate(t_ns, xy, np.asarray(at_ns, np.int64) + h)
    behind, ok_b = interpolate(t_ns, xy, np.asarray(at_ns, np.int64) - h)
    return pos, (ahead - behind) / (2 * SPEED_HALF_WINDOW_S), ok & ok_a & ok_b


def visible_in_scan(ranges: np.ndarray, angle_min: float, angle_increment: float, range_min: float,
                    range_max: float, lidar_pose: np.ndarray, target_xy: np.ndarray,
                    radius: float = 0.35, min_returns: int = 3) -> bool:
    """Whether the lidar at `lidar_pose` (x, y, yaw) could see an object at `target_xy` in this scan:
    within [range_min, range_max] of it, with at least `min_returns` returns within `radius` of it."""
    x, y, yaw = (float(v) for v in lidar_pose)
    dist = math.hypot(float(target_xy[0]) - x, float(target_xy[1]) - y)
    if not range_min <= dist <= range_max:
        return False
    r = np.asarray(ranges, np.float64)
    a = angle_min + angle_increment * np.arange(len(r)) + yaw
    good = np.isfinite(r) & (r >= range_min) & (r <= range_max)
    px, py = x + r[good] * np.cos(a[good]), y + r[good] * np.sin(a[good])
    near = np.hypot(px - float(target_xy[0]), py - float(target_xy[1])) <= radius
    return int(near.sum()) >= min_returns


def score(stamps: Sequence[int] | np.ndarray, frames: Sequence[TrackFrame], truth_xy: np.ndarray, truth_vxy: np.ndarray,
          truth_ok: np.ndarray, visible: np.ndarray, gate: float = 0.5, false_after_s: float = 1.0) -> Score:
    """Score one truth object over scans (see the module doc). Per scan i: `stamps[i]` (ns),
    `frames[i]` (the confirmed tracks), the truth at it (`truth_xy[i]`, `truth_vxy[i]`, known where
    `truth_ok[i]`) and whether it was visible (`visible[i]`)."""
    if not len(stamps) == len(frames) == len(truth_xy) == len(truth_vxy) == len(truth_ok) == len(visible):
        raise ValueError("score: stamps, frames, truth_xy, truth_vxy, truth_ok and visible differ in length")
    s = Score()
    pos_err: list[float] = []
    speed_err: list[float] = []
    last_id: int | None = None
    far_since: dict[int, int] = {}   # track id -> stamp of the first scan of its current run far from the truth
    false_ids: set[int] = set()
    for stamp, f, txy, tv, ok, vis in zip(stamps, frames, truth_xy, truth_vxy, truth_ok, visible, strict=True):
        ids = np.asarray(f.ids, np.int64)
        if not ok:
            far_since.clear()
            continue
        s.scans += 1
        d = np.hypot(*(np.asarray(f.xy, np.float64).reshape(-1, 2) - txy).T) if len(ids) else np.zeros(0)
        within = np.flatnonzero(d <= gate)
        keep = [i for i in within if int(ids[i]) == last_id]
        i = keep[0] if keep else (int(within[np.argmin(d[within])]) if len(within) else None)
        if vis:
            s.visible += 1
            s.covered += i is not None
        if i is not None:
            s.matched += 1
            pos_err.append(float(d[i]))
            speed_err.append(float(np.hypot(*np.asarray(f.vxy, np.float64)[i]) - np.hypot(*tv)))
            if last_id is not None and int(ids[i]) != last_id:
                s.id_switches += 1
            last_id = int(ids[i])
        for tid, dist in zip(ids.tolist(), d.tolist(), strict=True):
            if dist <= gate:
                far_since.pop(tid, None)
            elif int(stamp) - far_since.setdefault(tid, int(stamp)) > false_after_s * 1e9:
                false_ids.add(tid)
    s.rmse_m = _rms(pos_err)
    s.speed_rmse_mps = _rms(speed_err)
    s.false_ids = sorted(false_ids)
    s.false_tracks = len(false_ids)
    return s


def _rms(errors: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan

"""Multi-object tracking of detected boxes: prediction, gating, assignment, confirmation, deletion.

One `TrackSet.step` per detections message, at the message's stamp (dt from stamps, never arrival):
every track is predicted to the stamp (`nodes.kalman`, constant velocity); detections are assigned to
tracks by the Hungarian algorithm (scipy's `linear_sum_assignment`) on the squared Mahalanobis
distance, pairs beyond `gate_chi2` or `gate_m` being refused; assigned tracks are corrected. A track
is confirmed after `confirm_m` hits in its last `confirm_n` scans and then coasts without detections
for at most `max_coast_s` (published for the first `publish_coast_s` of it: a prediction is shown
only while it is recent); a tentative track missed in two scans in a row is dropped. A detection
that no track takes starts a tentative track unless it lies within `min_separation` of one (a car
split in two by a dark panel is one car). Ids count up from 1 and are never reused.

Measurement noise follows what the detector saw (`Detections.observed`): a box centre along a side
it saw (`sigma_seen`), along one it placed from the vehicle's size (`sigma_guessed`), or a box with
no side seen (`sigma_point`, loose: a far, sparse cluster must not set a new track's velocity).
Length, width and heading are smoothed from the detections that observed them; the published
heading points along the velocity once the track moves (a box alone cannot tell front from back).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from msgspec import Meta
from scipy.optimize import linear_sum_assignment

from nodes.kalman import measurement_noise, pairwise_gate, predict, update
from pipeline.runtime.node import NodeParams
from pipeline.wire.messages import Detections

__all__ = ["TrackSet", "TrackerParams"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int64)
_L, _W, _H = Detections.OBSERVED_LENGTH, Detections.OBSERVED_WIDTH, Detections.OBSERVED_HEADING
_LW = np.array([_L, _W], np.uint8)
_Pos = Annotated[float, Meta(gt=0)]


class TrackerParams(NodeParams):
    """The tracker's params (nodes.tracker:Tracker); defaults for 1:10 RC cars seen by a 2D lidar."""

    accel_sigma: _Pos = 1.5           # white acceleration noise (m/s^2)
    gate_chi2: _Pos = 13.8            # squared Mahalanobis gate (chi2, 2 dof, 99.9 %)
    gate_m: _Pos = 0.6                # and never further than this (m)
    confirm_m: Annotated[int, Meta(ge=1, le=8)] = 4
    confirm_n: Annotated[int, Meta(ge=1, le=8)] = 5
    max_coast_s: _Pos = 0.5           # a confirmed track unseen this long is deleted
    publish_coast_s: Annotated[float, Meta(ge=0)] = 0.1  # and unpublished after this long unseen
    min_separation: Annotated[float, Meta(ge=0)] = 0.3  # no new track this close to one (m)
    sigma_seen: _Pos = 0.05           # centre noise along a side that was seen (m)
    sigma_guessed: _Pos = 0.05        # along a side placed from the vehicle's size (raise if unsure of it)
    sigma_point: _Pos = 0.3           # a box with no side seen, a centroid
    init_speed_sigma: _Pos = 2.5      # speed uncertainty of a new track (m/s)
    box_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.2   # smoothing of length, width, heading
    max_box_turn: Annotated[float, Meta(gt=0, le=1.6)] = 0.5  # a box turned more from its track is a point (rad)
    moving_speed: _Pos = 0.3          # above this speed the heading follows the velocity (m/s)
    capacity: Annotated[int, Meta(ge=1)] = 256           # tracks at most (new ones beyond are dropped)


class TrackSet:
    """The tracks, as arrays with one row per track; see the module docstring."""

    def __init__(self, p: TrackerParams) -> None:
        self.p = p
        # measurement variances (along, across the box) by the low bits of Detections.observed
        self.variances = np.array([[p.sigma_point] * 2 if not o & _H else
                                   [p.sigma_seen if o & bit else p.sigma_guessed for bit in (_L, _W)]
                                   for o in range(8)]) ** 2
        self.next_id = 1
        self.stamp_ns: int | None = None
        self.clear()

    def clear(self) -> None:
        """Forget every track (ids keep counting)."""
        self.stamp_ns = None
        self.ids = np.zeros(0, np.int64)
        self.x, self.P = np.zeros((0, 4)), np.zeros((0, 4, 4))
        self.kind = np.zeros(0, np.uint8)
        self.hits = np.zeros(0, np.int64)        # bit k: a detection k scans ago
        self.confirmed = np.zeros(0, bool)
        self.last_hit = np.zeros(0, np.int64)    # stamp of the last detection
        self.size, self.heading = np.zeros((0, 2)), np.zeros(0)   # length, width; box heading in [0, pi)
        self.observed = np.zeros(0, np.uint8)    # OBSERVED_* bits ever seen

    def __len__(self) -> int:
        return len(self.ids)

    def step(self, stamp_ns: int, det: Detections, rows: np.ndarray) -> int:
        """Advance to `stamp_ns` with the detections `rows` of `det`; returns how many tracks were
        dropped for want of capacity."""
        p = self.p
        if self.stamp_ns is not None and len(self.ids):
            self.x, self.P = predict(self.x, self.P, (stamp_ns - self.stamp_ns) * 1e-9, p.accel_sigma)
        self.stamp_ns = stamp_ns
        if len(rows) == 0:
            self._age(stamp_ns, np.zeros(0, np.int64))
            return 0
        z = det.xy[rows].astype(np.float64)
        obs = det.observed[rows]
        var = self.variances[obs & 7]
        R = measurement_noise(det.heading[rows].astype(np.float64), var[:, 0], var[:, 1])
        ti, di = self._assign(z, R)
        if len(ti):
            Rd, turned = R[di], self._turned(ti, det.heading[rows[di]], obs[di])
            if turned.any():
                Rd[turned] = np.eye(2) * p.sigma_point ** 2
                ti_box, rows_box = ti[~turned], rows[di[~turned]]
            else:
                ti_box, rows_box = ti, rows[di]
            self.x[ti], self.P[ti] = update(self.x[ti], self.P[ti], z[di], Rd)
            self._boxes(ti_box, det, rows_box)
            self.last_hit[ti] = stamp_ns
        self._age(stamp_ns, ti)
        if len(di) == len(z):
            return 0
        free = np.ones(len(z), bool)
        free[di] = False
        return self._spawn(stamp_ns, z[free], R[free], det, rows[free])

    def _assign(self, z: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Track and detection indices of the accepted pairs."""
        if len(self.ids) == 0 or len(z) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        y = z[None, :, :] - self.x[:, None, :2]
        d2 = pairwise_gate(y, self.P, R)
        ok = (d2 <= self.p.gate_chi2) & ((y * y).sum(axis=2) <= self.p.gate_m ** 2)
        cost = np.where(ok, d2, 1e9)
        ti, di = linear_sum_assignment(cost)
        good = ok[ti, di]
        return ti[good], di[good]

    def _turned(self, ti: np.ndarray, heading: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Which detections' boxes turned more than `max_box_turn` from their tracks' heading: a
        rectangle fitted the wrong way round (an L seen near its corner), whose centre is then off by
        half the difference of length and width. Such a box counts as a point and leaves the shape alone."""
        turn = np.mod(heading - self.heading[ti] + np.pi / 2, np.pi) - np.pi / 2
        return (obs & _H != 0) & (self.observed[ti] & _H != 0) & (np.abs(turn) > self.p.max_box_turn)

    def _boxes(self, ti: np.ndarray, det: Detections, rows: np.ndarray) -> None:
        """Smooth each track's length, width and heading with what its detection observed."""
        a = self.p.box_alpha
        obs, known = det.observed[rows], self.observed[ti]
        seen, old = _pairs(det.length[rows], det.width[rows]), self.size[ti]
        obs_lw, known_lw = (obs[:, None] & _LW) != 0, (known[:, None] & _LW) != 0
        # a size first seen replaces the guess; one seen again is smoothed; one not seen stays
        self.size[ti] = np.where(known_lw, np.where(obs_lw, old + a * (seen - old), old),
                                 np.where(obs_lw, seen, np.maximum(old, seen)))
        h, old = det.heading[rows], self.heading[ti]
        turn = np.mod(h - old + np.pi / 2, np.pi) - np.pi / 2   # a box's heading is modulo pi
        self.heading[ti] = np.where(obs & _H, np.mod(np.where(known & _H, old + a * turn, h), np.pi), old)
        self.observed[ti] = known | obs
        self.kind[ti] = np.maximum(self.kind[ti], det.kind[rows])

    def _age(self, stamp_ns: int, ti: np.ndarray) -> None:
        """Record which tracks were hit (`ti`), confirm, and drop confirmed tracks unseen for
        `max_coast_s` and tentative ones missed twice in a row."""
        if len(self.ids) == 0:
            return
        self.hits <<= 1
        self.hits[ti] |= 1
        self.hits &= 0xFF
        self.confirmed |= _POPCOUNT[self.hits & ((1 << self.p.confirm_n) - 1)] >= self.p.confirm_m
        stale = (stamp_ns - self.last_hit) > self.p.max_coast_s * 1e9
        keep = ~(stale | (~self.confirmed & ((self.hits & 3) == 0)))
        if not keep.all():
            for name in ("ids", "x", "P", "kind", "hits", "confirmed", "last_hit", "size", "heading", "observed"):
                setattr(self, name, getattr(self, name)[keep])

    def _spawn(self, stamp_ns: int, z: np.ndarray, R: np.ndarray, det: Detections, rows: np.ndarray) -> int:
        p = self.p
        if len(z) and len(self.ids):
            near = np.hypot(*(z[:, None, :] - self.x[None, :, :2]).transpose(2, 0, 1)).min(axis=1)
            far = near >= p.min_separation
            z, R, rows = z[far], R[far], rows[far]
        room = max(p.capacity - len(self.ids), 0)
        dropped = max(len(z) - room, 0)
        z, R, rows = z[:room], R[:room], rows[:room]
        k = len(z)
        if k == 0:
            return dropped
        P = np.zeros((k, 4, 4))
        P[:, :2, :2] = R
        P[:, 2, 2] = P[:, 3, 3] = p.init_speed_sigma ** 2
        self.ids = np.concatenate([self.ids, np.arange(self.next_id, self.next_id + k, dtype=np.int64)])
        self.next_id += k
        self.x = np.concatenate([self.x, np.column_stack([z, np.zeros((k, 2))])])
        self.P = np.concatenate([self.P, P])
        self.kind = np.concatenate([self.kind, det.kind[rows]])
        self.hits = np.concatenate([self.hits, np.ones(k, np.int64)])
        self.confirmed = np.concatenate([self.confirmed, np.full(k, p.confirm_m <= 1)])
        self.last_hit = np.concatenate([self.last_hit, np.full(k, stamp_ns, np.int64)])
        self.size = np.concatenate([self.size, _pairs(det.length[rows], det.width[rows])])
        self.heading = np.concatenate([self.heading, np.mod(det.heading[rows].astype(np.float64), np.pi)])
        self.observed = np.concatenate([self.observed, det.observed[rows]])
        return dropped

    def published(self) -> np.ndarray:
        """Indices of the confirmed tracks seen within `publish_coast_s`."""
        fresh = (self.stamp_ns or 0) - self.last_hit <= self.p.publish_coast_s * 1e9
        return np.flatnonzero(self.confirmed & fresh)

    def box_heading(self, idx: np.ndarray) -> np.ndarray:
        """Heading of tracks `idx` in [-pi, pi] (box headings are in [0, pi]): along the velocity when
        moving, else the box's."""
        h, vx, vy = self.heading[idx], self.x[idx, 2], self.x[idx, 3]
        back = (vx * np.cos(h) + vy * np.sin(h) < 0) & (vx * vx + vy * vy > self.p.moving_speed ** 2)
        return np.where(back, h - np.pi, h)  # type: ignore[no-any-return]


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K, 2] float64 of two [K] arrays, by two assignments (np.column_stack is Python-level code)."""
    out = np.empty((len(a), 2))
    out[:, 0], out[:, 1] = a, b
    return out

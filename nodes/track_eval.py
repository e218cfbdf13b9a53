"""Score a tracker against ground truth, and give the truth the tracker's ids.

Inputs: `tracks`, a tracker's confirmed tracks, and `truth`, the true agents (the simulator's tracks,
or motion capture through `nodes.poses:PosesToTracks`); with `ego` (the sensor carrier's pose) and
`range_m`, only what lies within that range of it is scored: beyond it is a don't-care region, as
MOT16's ignored objects, on both sides. A track there is no false positive, nor is one matched to
truth there (a car at 30.5 m tracked at 29.8 m): a tracker that sees farther than the scored range is
not penalised for it. With `visible` (the truth rows the sensor saw, e.g. the simulator's agents its
lidar put a return on, stamped like the scan), truth not seen at a frame's stamp is don't-care in the
same way: nuScenes scores no box without a lidar point, and a tracker cannot be faulted for a car
hidden behind another. Each tracks message is matched with the truth
at its stamp (interpolated between the two truth messages around it, per id; a truth message stamped
exactly then is used as is): a track and a truth object match when their centres are within `match_m`,
by the Hungarian algorithm (scipy's `linear_sum_assignment`), a pair matched before staying matched
while within `match_m` (the CLEAR-MOT rule).

Two outputs of that matching:
- `truth`: the matched truth rows, relabelled with their track's id, stamped like the tracks. The
  `nodes.evaluator:Evaluator` pairs predictions with truth by id, so wired to this output (and to the
  tracks as `observed`) it scores predictions made from tracked input against the truth, beside
  constant velocity on the same tracked input.
- tracking metrics as the `motmetrics` library defines and computes them (CLEAR-MOT: MOTA, MOTP,
  identity switches; identity: IDF1), fed every matched frame with the centre distances: a summary every
  `report_s`, a table at shutdown, and with `report_json: PATH` that table as JSON. motmetrics is the
  optional `[eval]` extra; without it the node still relabels the truth and reports no metrics.

Rows of `tracks` or `truth` whose position or velocity is not finite or beyond the `Plausible` bounds
are dropped and counted (`drops.rows`), as is an `ego` pose that is not finite (`drops.ego`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from msgspec import Meta
from scipy.optimize import linear_sum_assignment

from nodes.plausible import Plausible, plausible_rows
from pipeline.runtime.node import Node
from pipeline.wire.messages import Odometry, Tracks

__all__ = ["METRICS", "TrackEvaluator", "truth_at"]

METRICS = ["mota", "motp", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects", "recall",
           "precision"]


def truth_at(before: Tracks, after: Tracks | None, t_ns: int) -> Tracks:
    """The truth at `t_ns`: `before` if stamped then; else each id in both messages interpolated
    between them, and without `after`, each row of `before` moved by its velocity."""
    if before.stamp_ns == t_ns or after is None:
        dt = (t_ns - before.stamp_ns) / 1e9
        return Tracks(stamp_ns=t_ns, frame_id=before.frame_id, ids=before.ids, xy=before.xy + dt * before.vxy,
                      vxy=before.vxy, kind=before.kind)
    w = (t_ns - before.stamp_ns) / (after.stamp_ns - before.stamp_ns)
    both, ia, ib = np.intersect1d(before.ids, after.ids, return_indices=True)
    xy = (1 - w) * before.xy[ia] + w * after.xy[ib]
    vxy = (1 - w) * before.vxy[ia] + w * after.vxy[ib]
    return Tracks(stamp_ns=t_ns, frame_id=before.frame_id, ids=both, xy=xy, vxy=vxy, kind=before.kind[ia])


class TrackEvaluator(Node):
    """Tracks and truth in, truth relabelled with track ids out, MOT metrics in the log; see the module."""

    class Params(Plausible):
        match_m: Annotated[float, Meta(gt=0)] = 2.0        # farther apart: no match (motmetrics' max distance)
        max_truth_gap_s: Annotated[float, Meta(gt=0)] = 0.5  # truth this far from a track's stamp: not scored
        report_s: Annotated[float, Meta(ge=0)] = 10.0      # a summary line this often (0: only at shutdown)
        report_json: str = ""                              # write the final metrics here
        range_m: Annotated[float, Meta(ge=0)] = 0.0        # with `ego` wired: score truth this near it only (0: all)
        max_rows: Annotated[int, Meta(ge=1)] = 1024        # rows kept per truth or tracks message (matching is rows^2)

    params: Params
    inputs = {"tracks": Tracks, "truth": Tracks, "ego": Odometry, "visible": Tracks}
    outputs = {"truth": Tracks}

    def setup(self) -> None:
        self.truth: deque[Tracks] = deque(maxlen=64)
        self.waiting: deque[Tracks] = deque(maxlen=256)  # tracks messages whose truth has not come yet
        self.pairs: dict[int, int] = {}  # truth id -> track id, matched in the last frame
        self.frames = 0
        self.ego_xy: np.ndarray | None = None
        self.visible: deque[Tracks] = deque(maxlen=64)
        self.visible_wired = False
        try:
            import motmetrics
        except ImportError:
            self.log.warning("motmetrics is not installed (the [eval] extra): no tracking metrics")
            self.acc: Any = None
        else:
            self.mm = motmetrics
            self.acc = motmetrics.MOTAccumulator(auto_id=True)
        if self.params.report_s > 0:
            self.every(self.params.report_s, lambda: self.log.info("%s", self.summary()))

    def _count(self, key: str, n: int = 1) -> None:
        self.diagnostics[key] = self.diagnostics.get(key, 0) + n

    def on_truth(self, msg: Tracks) -> None:
        if self.truth and msg.stamp_ns <= self.truth[-1].stamp_ns:
            return  # out of order or repeated: the truth history is ordered by stamp
        self.truth.append(_checked(msg, self.params, self._count))
        while self.waiting and self.waiting[0].stamp_ns <= msg.stamp_ns:
            self._score(self.waiting.popleft())

    def on_visible(self, msg: Tracks) -> None:
        self.visible_wired = True
        self.visible.append(msg)

    def on_ego(self, msg: Odometry) -> None:
        if not np.isfinite(msg.position[:2]).all():
            self._count("drops.ego")
            return
        self.ego_xy = msg.position[:2].astype(np.float64)

    def on_tracks(self, msg: Tracks) -> None:
        msg = _checked(msg, self.params, self._count)
        if self.truth and msg.stamp_ns <= self.truth[-1].stamp_ns:
            self._score(msg)
        else:
            self.waiting.append(msg)

    def _truth_for(self, t_ns: int) -> Tracks | None:
        gap = self.params.max_truth_gap_s * 1e9
        stamps = [m.stamp_ns for m in self.truth]
        i = int(np.searchsorted(stamps, t_ns, side="right")) - 1
        if i < 0 or t_ns - stamps[i] > gap:
            return None
        after = self.truth[i + 1] if i + 1 < len(stamps) and stamps[i + 1] - t_ns <= gap else None
        return truth_at(self.truth[i], after, t_ns)

    def _score(self, tracks: Tracks) -> None:
        truth = self._truth_for(tracks.stamp_ns)
        if truth is None:
            self._count("unscored_frames")
            return
        if (self.params.range_m and self.ego_xy is not None) or self.visible_wired:
            truth, tracks = self._expected(truth, tracks)
        d = np.linalg.norm(truth.xy[:, None, :].astype(np.float64) - tracks.xy[None, :, :], axis=-1)
        far = ~(d <= self.params.match_m)  # NaN positions never match
        cost = np.where(far, 1e9, d)
        # CLEAR-MOT: a pair matched in the previous frame keeps its match while within reach
        tid = {int(t): j for j, t in enumerate(tracks.ids.tolist())}
        for i, o in enumerate(truth.ids.tolist()):
            j = tid.get(self.pairs.get(o, -1))
            if j is not None and not far[i, j]:
                cost[i, j] = -1.0
        rows, cols = linear_sum_assignment(cost)
        keep = ~far[rows, cols]
        rows, cols = rows[keep], cols[keep]
        self.pairs = {int(truth.ids[i]): int(tracks.ids[j]) for i, j in zip(rows, cols, strict=True)}
        if self.acc is not None:
            self.acc.update(truth.ids.tolist(), tracks.ids.tolist(), np.where(far, np.nan, d))
        self.frames += 1
        self.publish("truth", Tracks(stamp_ns=tracks.stamp_ns, frame_id=truth.frame_id, ids=tracks.ids[cols],
                                     xy=truth.xy[rows], vxy=truth.vxy[rows], kind=truth.kind[rows]))
        self.diagnostics["frames"] = float(self.frames)

    def _expected(self, truth: Tracks, tracks: Tracks) -> tuple[Tracks, Tracks]:
        """The truth expected to be seen (within `range_m` of the ego; with `visible` wired, seen by the
        sensor at this stamp) and the tracks outside the don't-care region: those matched (within
        `match_m`) to expected truth, and the unmatched within range."""
        r, m = self.params.range_m, self.params.match_m
        expected, reach = np.ones(len(truth.ids), bool), np.ones(len(tracks.ids), bool)
        pool = np.arange(len(truth.ids))
        if r and self.ego_xy is not None:  # a sensor's reach: farther truth is not expected
            t_dist = np.linalg.norm(truth.xy - self.ego_xy, axis=1)
            expected, reach = t_dist <= r, np.linalg.norm(tracks.xy - self.ego_xy, axis=1) <= r
            pool = np.flatnonzero(t_dist <= r + m)  # farther truth is more than match_m from any kept track
        seen = next((v.ids for v in self.visible if v.stamp_ns == tracks.stamp_ns), None)
        if seen is not None:
            expected &= np.isin(truth.ids, seen)
        elif self.visible_wired:
            self._count("frames_without_visible")
        keep = reach.copy()
        if len(pool) and len(tracks.ids):
            d = np.linalg.norm(truth.xy[pool, None, :].astype(np.float64) - tracks.xy[None, :, :], axis=-1)
            far = ~(d <= m)
            rows, cols = linear_sum_assignment(np.where(far, 1e9, d))
            ok = ~far[rows, cols]
            keep[cols[ok]] = expected[pool[rows[ok]]]
        return _rows(truth, expected), _rows(tracks, keep)

    def metrics(self) -> dict[str, float]:
        if self.acc is None or not self.frames:
            return {}
        table = self.mm.metrics.create().compute(self.acc, metrics=METRICS, name="all")
        return {k: float(table[k].iloc[0]) for k in METRICS}

    def summary(self) -> str:
        m = self.metrics()
        if not m:
            return f"tracking: {self.frames} frames scored"
        return (f"tracking over {self.frames} frames: MOTA {m['mota']:.3f}, IDF1 {m['idf1']:.3f}, "
                f"MOTP {m['motp']:.3f} m, {m['num_switches']:.0f} switches, {m['num_false_positives']:.0f} false "
                f"positives, {m['num_misses']:.0f} misses of {m['num_objects']:.0f}")

    def shutdown(self) -> None:
        self.log.info("%s", self.summary())
        if self.params.report_json:
            Path(self.params.report_json).write_text(json.dumps({"frames": self.frames, **self.metrics()}, indent=1))


def _checked(msg: Tracks, p: TrackEvaluator.Params, count: Callable[[str, int], None]) -> Tracks:
    """`msg` without implausible rows (`drops.rows`), and with at most `max_rows` rows: matching costs
    truth rows x track rows, and one message of 10,000 of each took seconds per frame
    (`drops.too_many_rows` counts what is left out)."""
    ok = plausible_rows(msg.xy, p.max_abs_xy, msg.vxy, p.max_speed)
    if not ok.all():
        count("drops.rows", int(len(ok) - ok.sum()))
        msg = _rows(msg, np.flatnonzero(ok))
    if len(msg.ids) <= p.max_rows:
        return msg
    count("drops.too_many_rows", len(msg.ids) - p.max_rows)
    return _rows(msg, np.arange(p.max_rows))


def _rows(t: Tracks, keep: np.ndarray) -> Tracks:
    return Tracks(stamp_ns=t.stamp_ns, frame_id=t.frame_id, ids=t.ids[keep], xy=t.xy[keep], vxy=t.vxy[keep],
                  kind=t.kind[keep])

"""Live accuracy of a predictor: predictions matched with the ground truth that arrives later.

Each Predictions row (agent, future positions at absolute times `t_ns`) waits until the truth Tracks
cover its last time; truth positions at `t_ns` are interpolated between the two truth messages around
each time (a row whose agent is missing from either is skipped: no made-up truth). ADE is the mean L2
error over the horizon, FDE the error at its end, in meters, per agent kind and overall (overall
averages rows of every model, each over its own horizon), and per agent age: the time from the agent's
first truth message to the prediction's stamp, in buckets 0-5, 5-20, 20-60 and 60+ s (`nodes.eval_table`).
An agent absent from the truth for longer than `keep_s` is forgotten and starts a new life when it comes
back; at most 65536 agents are remembered (the most recently seen), so ids cannot grow the memory.

Beside the model, on exactly the same rows: constant velocity (`export.runtime.features.constant_velocity`) from
the same inputs (positions up to the prediction's sample time t0 = t_ns[0] - dt: the truth's, or with the
input `observed` wired, those of the tracks the predictor was fed, e.g. a tracker's; the truth then carries
the tracks' ids, see `nodes.track_eval`):
v = (p(t0) - p(t0 - k*dt)) / (k*dt), for each k in `cv_ks` (an agent seen for less than k*dt uses the
longest of `cv_ks` it has been seen for); the best k per kind is reported, which flatters the baseline
rather than the model (models/baselines.py picks k on validation data instead).

A message of K futures (`modes`, `prob`) is scored as Argoverse scores them (`nodes.eval_table.mode_errors`):
ADE/FDE stay those of `xy`, the most probable future; beside them minADE_K, minFDE_K, the miss rate at
2 m and brier-minFDE, and the same of constant velocity with its `cv_ks` windows as equally probable
futures, on the same rows.

Rows are checked at the edge (`nodes.plausible`): a truth or predicted row with a position (or a truth
velocity) that is NaN, inf or beyond the bounds, in any of its futures, is dropped and counted
(`drops.truth_rows`, `drops.prediction_rows`), a predicted row whose probabilities are not in [0, 1] or
do not sum to 1 too (`drops.prediction_probs`), and so is a truth message stamped more than
`max_future_s` ahead of the node clock (`drops.future_truth`, it would make every later truth look late). One row cannot turn a
running mean into nan or 1e36 m.

Output: a summary line every `report_s` (accuracy, prediction latency = receive time - Tracks stamp,
and the predictor's own step latency when its diagnostics are wired in), a table at shutdown per kind and
age, where "ADE vs CV: 18% better" means the model's ADE is 18% below constant velocity's (CV - model) / CV
(the one wording of `nodes.eval_table.vs_cv`); with `report_json: FILE.json` the same table as
`{"rows": [{"kind", "age", "n", "ade", "fde", "cv_ade", "cv_fde", "cv_k"}, ...]}` (rows with n > 0,
kind and age "all" included, written atomically; a row with rows of K futures adds `k`, `n_k`,
`min_ade_k`, `min_fde_k`, `miss_rate_k`, `brier_min_fde_k`, `cv_futures` and `cv_` of the four); with
`plot: FILE.png` a picture of recent predicted, constant-velocity and true paths (needs matplotlib).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from logging import Logger
from pathlib import Path
from typing import Annotated

import numpy as np
from msgspec import Meta

from export.runtime.features import constant_velocity
from nodes.eval_table import CV_K_MEANS, AccuracyTable, FirstSeen, age_bucket, mode_table, write_report
from nodes.plausible import Plausible, plausible_rows
from pipeline.errors import ConfigError
from pipeline.runtime.node import Node
from pipeline.wire.messages import AgentKind, Diagnostics, Predictions, StateEvent, Tracks

__all__ = ["Evaluator"]


class _Frame:
    """One truth message, ids sorted for vectorised lookups."""

    def __init__(self, msg: Tracks, ok: np.ndarray) -> None:
        """`ok`: the rows to keep."""
        order = np.argsort(msg.ids[ok], kind="stable")
        self.stamp = msg.stamp_ns
        self.ids = msg.ids[ok][order]
        self.xy = msg.xy[ok][order].astype(np.float64)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        ok = (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), bool)
        return self.xy[pos] if len(self.ids) else np.zeros((len(ids), 2)), ok


class _History:
    """Tracks messages in stamp order, kept for `keep_s`; positions at given times, interpolated."""

    def __init__(self, keep_s: float) -> None:
        self.frames: deque[_Frame] = deque()
        self.stamps: deque[int] = deque()
        self.keep_ns = keep_s * 1e9

    def add(self, msg: Tracks, ok: np.ndarray) -> bool:
        """Keep `msg` (its rows `ok`); False for a duplicate or late message (the history is ordered)."""
        if self.stamps and msg.stamp_ns <= self.stamps[-1]:
            return False
        self.frames.append(_Frame(msg, ok))
        self.stamps.append(msg.stamp_ns)
        while self.stamps[0] < msg.stamp_ns - self.keep_ns:
            self.frames.popleft()
            self.stamps.popleft()
        return True

    def at(self, ids: np.ndarray, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _truth_at(self.frames, self.stamps, ids, t_ns)


class Evaluator(Node):
    """Predictions + truth Tracks in; ADE/FDE beside constant velocity out (log lines, final table)."""

    class Params(Plausible):
        report_s: float = 5.0               # period of the summary line (0: only the final table)
        # constant-velocity windows, in model periods
        cv_ks: Annotated[tuple[Annotated[int, Meta(ge=1)], ...], Meta(min_length=1)] = (1, 2, 3, 5)
        keep_s: float = 12.0                # truth history kept (>= longest horizon + k*dt + latency)
        plot: str = ""                      # write a PNG of recent paths here at shutdown
        max_future_s: Annotated[float, Meta(ge=0)] = 5.0  # drop truth this far ahead of the node clock (0: off)
        report_json: str = ""               # write the final table here at shutdown, as JSON ("": no file)

        def __post_init__(self) -> None:  # run by msgspec.convert: a bad path fails the launch, not the end
            _check_output("plot", self.plot)
            _check_output("report_json", self.report_json)

    params: Params
    inputs = {"predictions": Predictions, "truth": Tracks, "observed": Tracks, "events": StateEvent,
              "diagnostics": Diagnostics}

    def setup(self) -> None:
        self.ks = sorted(set(self.params.cv_ks))
        self.truth = _History(self.params.keep_s)
        self.observed = _History(self.params.keep_s)  # what the predictor saw, when wired: the CV's input
        # per model, in stamp order; bounded, in case the truth stops coming
        self.pending: dict[str, deque[Predictions]] = defaultdict(lambda: deque(maxlen=1000))
        self.accuracy = AccuracyTable(self.ks)
        self.scores = self.accuracy.by_kind  # kind -> score over every age
        self.first_seen = FirstSeen(self.params.keep_s)  # forgets agents as the truth history does
        self.latency_ms: deque[float] = deque(maxlen=2048)
        self.predicted_rows = 0   # agent rows of predictions taken, for a run that scores none
        self.dropped: Counter[str] = Counter()
        self.events: list[str] = []
        self.pred_diag: dict[str, float] = {}
        self.paths: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=30)
        if self.params.report_s > 0:
            self.log.info("accuracy every %g s, in meters; CV k: %s", self.params.report_s, CV_K_MEANS)
            self.every(self.params.report_s, lambda: self.log.info("%s", self.summary()))

    def on_truth(self, msg: Tracks) -> None:
        if self._keep(msg, self.truth, "truth"):
            self.first_seen.see(msg.stamp_ns, self.truth.frames[-1].ids)
            self._flush()

    def on_observed(self, msg: Tracks) -> None:
        self._keep(msg, self.observed, "observed")

    def _keep(self, msg: Tracks, history: _History, what: str) -> bool:
        p, now = self.params, self.now_ns()
        if p.max_future_s > 0 and now > 0 and msg.stamp_ns - now > p.max_future_s * 1e9:  # now 0: no clock yet
            self._drop(f"future_{what}")
            return False
        ok = plausible_rows(msg.xy, p.max_abs_xy, msg.vxy, p.max_speed)
        if not ok.all():
            self._drop(f"{what}_rows", int(len(ok) - ok.sum()))
        return history.add(msg, ok)

    def _flush(self) -> None:
        """Evaluate every pending prediction whose horizon the truth now covers."""
        latest = self.truth.stamps[-1] if self.truth.stamps else -1
        for queue in self.pending.values():
            while queue and queue[0].t_ns[-1] <= latest:
                self._evaluate(queue.popleft())

    def on_predictions(self, msg: Predictions) -> None:
        self.latency_ms.append((self.now_ns() - msg.stamp_ns) / 1e6)
        t = msg.t_ns
        if not len(msg.ids) or len(t) < 2:
            return
        # times a predictor produces: increasing, within int64 with room for the CV window (no overflow)
        if t[0] < 0 or t[-1] > 2**62 or not (np.diff(t) > 0).all():
            self._drop("bad_times")
            return
        if msg.model not in self.pending and len(self.pending) >= 16:  # a model per agent kind: a handful
            self._drop("too_many_models")
            return
        ok = _valid_rows(msg, self.params.max_abs_xy, self._drop)
        if not ok.all():  # a new message, not an edited one: other subscribers may share `msg`
            msg = Predictions(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, model=msg.model, ids=msg.ids[ok],
                              kind=msg.kind[ok], t_ns=t, xy=msg.xy[ok], modes=msg.modes[ok], prob=msg.prob[ok])
        self.pending[msg.model].append(msg)
        self.predicted_rows += len(msg.ids)
        self._flush()

    def _drop(self, key: str, n: int = 1) -> None:
        self.dropped[key] += n
        self.diagnostics[f"drops.{key}"] = float(self.dropped[key])

    def on_events(self, msg: StateEvent) -> None:
        self.events.append(f"{msg.event} {len(msg.ids)} ({msg.reason})")
        self.log.info("predictor states %s: %d agents (%s)", msg.event, len(msg.ids), msg.reason)

    def on_diagnostics(self, msg: Diagnostics) -> None:
        self.pred_diag = dict(msg.values)

    # -- matching ---------------------------------------------------------------------------------
    def _evaluate(self, msg: Predictions) -> None:
        dt = int(msg.t_ns[1] - msg.t_ns[0])
        t0 = int(msg.t_ns[0]) - dt
        ks = self.ks
        truth, ok = self.truth.at(msg.ids, msg.t_ns)
        # the CV's input: what the predictor saw (the observed tracks, when wired), else the truth
        past, past_ok = (self.observed if self.observed.stamps else self.truth).at(
            msg.ids, t0 - dt * np.array([0, *ks], np.int64))
        rows = ok.all(1) & past_ok[:, 0]
        if not rows.any():
            return
        truth, past, past_ok = truth[rows], past[rows], past_ok[rows]
        pred = msg.xy[rows].astype(np.float64)
        err = np.linalg.norm(pred - truth, axis=-1)
        steps = (msg.t_ns - t0) / dt
        # each k falls back to the longest window in ks the agent has been seen for (none: it stands still)
        cv = np.stack([constant_velocity(past, k, steps, lags=[0, *ks], known=past_ok) for k in ks])
        cv_err = np.linalg.norm(cv - truth[None], axis=-1)
        age, known = self.first_seen.age_s(msg.ids[rows], msg.stamp_ns)  # at the prediction's stamp
        modes, cv_modes = _mode_tables(msg, rows, truth, cv_err)
        self.accuracy.add(_kind_names(msg.kind[rows]), np.where(known, age_bucket(age), -1), err, cv_err,
                          modes, cv_modes, msg.modes.shape[1])
        if self.params.plot:
            self.paths.append((pred[0], cv[-1, 0], truth[0]))

    # -- reporting -----------------------------------------------------------------------------------
    def summary(self) -> str:
        line = self.accuracy.line() or "no predictions matched yet"
        if self.latency_ms:
            p50, p99 = np.percentile(np.fromiter(self.latency_ms, float), [50, 99])
            line += f" | latency p50 {p50:.1f} ms p99 {p99:.1f} ms"
        d = self.pred_diag
        if "step_p50_us" in d:
            line += f" | predictor step p50 {d['step_p50_us']:.0f} us p99 {d.get('step_p99_us', 0):.0f} us"
        if "agents" in d:
            line += f", {d['agents']:.0f} agents"
        return line

    def table(self) -> str:
        empty = "" if self.accuracy.by_kind else _nothing_scored(self.predicted_rows, bool(self.truth.stamps))
        return "\n".join([self.accuracy.text(), *_footer(empty, self.events, self.pred_diag)])

    def shutdown(self) -> None:
        print(self.table(), flush=True)
        if self.params.report_json:
            try:
                write_report(self.params.report_json, self.accuracy.rows())
            except ConfigError as exc:  # the table is printed all the same; other nodes still shut down
                self.log.error("%s", exc)
        if self.params.plot and self.paths:
            _plot(self.paths, self.ks[-1], self.params.plot, self.log)


def _footer(nothing_scored: str, events: list[str], pred_diag: dict[str, float]) -> list[str]:
    """The lines under the final table: why it is empty, if it is (a run that scored nothing must read as
    such), the predictor's state events, and whether it kept up (its queue's drops, what it dropped, what
    was lost upstream)."""
    lines = [f"no prediction was scored: {nothing_scored}"] if nothing_scored else []
    if events:
        lines.append("predictor state events: " + "; ".join(events))
    if pred_diag:
        lost = {k: v for k, v in pred_diag.items() if k.startswith(("drops.", "gaps.")) and v}
        lines.append("predictor drops: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(lost.items())) or "0"))
    return lines


def _nothing_scored(predicted_rows: int, truth_seen: bool) -> str:
    """Why a run scored no prediction, from what arrived."""
    if not predicted_rows:
        return "no prediction of any agent arrived (did the predictor get tracks with agents in them?)"
    if not truth_seen:
        return f"{predicted_rows} predicted agent rows arrived and no truth (is the evaluator's truth input wired?)"
    return (f"{predicted_rows} predicted agent rows arrived, but the truth never held their agents over a whole "
            "horizon (a run shorter than one, or other ids)")


def _check_output(key: str, file: str) -> None:
    """ValueError (a ConfigError naming the node and param, once converted) unless `file` can be written."""
    if file and not Path(file).resolve().parent.is_dir():
        raise ValueError(f"{key}: no such directory '{Path(file).resolve().parent}' to write {file!r} in")
    if file and Path(file).is_dir():
        raise ValueError(f"{key}: {file!r} is a directory, expected a file to write")


def _valid_rows(msg: Predictions, max_abs_xy: float, drop: Callable[[str, int], None]) -> np.ndarray:
    """The rows of `msg` whose futures are plausible positions and whose probabilities are probabilities
    (each in [0, 1], summing to 1 to float32 rounding); `drop` counts the others."""
    ok = plausible_rows(msg.xy, max_abs_xy)
    if msg.modes.shape[1]:
        ok &= plausible_rows(msg.modes, max_abs_xy)
    if not ok.all():
        drop("prediction_rows", int(len(ok) - ok.sum()))
    if msg.modes.shape[1]:
        p = msg.prob
        in_unit = ((p >= 0) & (p <= 1)).all(1)   # NaN and inf fail it: summed as 0, no warning
        probable = in_unit & (np.abs(np.where(in_unit[:, None], p, 0).sum(1, dtype=np.float64) - 1) <= 1e-3)
        if not probable[ok].all():
            drop("prediction_probs", int((ok & ~probable).sum()))
            ok &= probable
    return ok


def _mode_tables(msg: Predictions, rows: np.ndarray, truth: np.ndarray, cv_err: np.ndarray
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """`mode_table`s of the model's futures and of CV's (its windows as equally probable futures, from
    cv_err[Kcv,R,T]) for the `rows` of a message of K futures, whose truth is truth[R,T,2]; else None."""
    if not msg.modes.shape[1]:
        return None, None
    d = np.linalg.norm(msg.modes[rows].astype(np.float64) - truth[:, None], axis=-1)
    n_cv = len(cv_err)
    return (mode_table(d, msg.prob[rows].astype(np.float64)),
            mode_table(cv_err.transpose(1, 0, 2), np.full((len(truth), n_cv), 1.0 / n_cv)))


def _kind_names(codes: np.ndarray) -> np.ndarray:
    """AgentKind codes[R] -> names[R] ("vehicle", ...; an unknown code as its number)."""
    u, at = np.unique(codes, return_inverse=True)
    return np.array([AgentKind.NAMES.get(c, str(c)) for c in u.tolist()], object)[at.ravel()]


def _truth_at(frames: deque[_Frame], stamps: deque[int], ids: np.ndarray, t_ns: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Truth xy[N,T,2] at the times t_ns, interpolated; ok[N,T] where both neighbours hold the agent."""
    xy = np.zeros((len(ids), len(t_ns), 2))
    ok = np.zeros((len(ids), len(t_ns)), bool)
    for j, t in enumerate(t_ns.tolist()):
        b = bisect_left(stamps, t)
        if b == len(stamps) or (stamps[b] != t and b == 0):
            continue
        fb = frames[b]
        pb, okb = fb.lookup(ids)
        if fb.stamp == t:
            xy[:, j], ok[:, j] = pb, okb
            continue
        fa = frames[b - 1]
        pa, oka = fa.lookup(ids)
        w = (t - fa.stamp) / (fb.stamp - fa.stamp)
        xy[:, j], ok[:, j] = pa + w * (pb - pa), oka & okb
    return xy, ok


def _plot(paths: deque[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int, file: str, log: Logger) -> None:
    """Draw recent (model, constant velocity with window k, truth) paths into the PNG `file`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("plot %s not written: matplotlib is not installed", file)
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (pred, cv, truth) in enumerate(paths):
        lab = i == 0
        ax.plot(truth[:, 0], truth[:, 1], "k-", lw=1, label="truth" if lab else None)
        ax.plot(pred[:, 0], pred[:, 1], "r.-", ms=2, lw=0.8, label="model" if lab else None)
        ax.plot(cv[:, 0], cv[:, 1], "b:", lw=0.8, label=f"CV k={k}" if lab else None)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="upper right")
    ax.set_title("recent predictions vs truth")
    fig.savefig(file, dpi=120, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", file)

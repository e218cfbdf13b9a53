"""Accuracy tables beside constant velocity, per agent kind and per agent age: the parts that the evaluator
node and `drivecast eval` (models/evaluate.py) share, so that both bucket ages and word the comparison alike.

- Age: the time since the agent was first seen, at the prediction's time, in the buckets `AGE_BUCKETS`
  (seconds, lower bound inclusive: an agent 5.0 s old is in "5-20"). A state that drifts over an agent's
  life shows in the late buckets instead of hiding in the average.
- One wording for the comparison with constant velocity (CV), everywhere: `vs_cv` writes "18% better"
  when the model's error is 18% below CV's, (CV - model) / CV, and "7% worse" when it is 7% above. Never a
  bare signed percentage, whose sign one reader takes for a gain and another for a change of error.
- Several futures per agent (`mode_errors`): the Argoverse conventions, the best future being the one
  whose end is nearest the truth: minADE_K (that future's ADE), minFDE_K, the miss rate (minFDE_K over
  MISS_M), brier-minFDE (minFDE_K + (1 - its probability)^2).
- `FirstSeen` remembers when each agent was first seen, in bounded memory; `AccuracyTable` keeps running
  ADE/FDE sums per (kind, age) and writes them as text or as the JSON report (`write_report`); for rows of
  K futures also the sums of `mode_errors` (`MODE_KEYS`), the model's and CV's (its windows as equally
  probable futures), shown in a second block of the text (`MODES_MEANS`) and as `k`, `n_k`, `min_ade_k`,
  `min_fde_k`, `miss_rate_k`, `brier_min_fde_k` and `cv_*` of the same in the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cv_compare import VS_CV_MEANS, vs_cv
from pipeline.errors import ConfigError

__all__ = ["AGE_BUCKETS", "CV_K_MEANS", "MISS_M", "MODES_MEANS", "MODE_KEYS", "VS_CV_MEANS", "AccuracyTable",
           "FirstSeen", "Score", "age_bucket", "mode_errors", "mode_table", "vs_cv", "write_report"]

AGE_BUCKETS = ("0-5", "5-20", "20-60", "60+")
_AGE_EDGES_S = np.array([5.0, 20.0, 60.0])  # the buckets' lower bounds after the first

CV_K_MEANS = ("constant velocity (CV) from the mean velocity over the last k sample periods dt before the "
              "prediction, (p(t0) - p(t0 - k dt)) / (k dt)")


MISS_M = 2.0   # a miss: the best future's end is further than this from the truth (Argoverse)


def mode_errors(d: np.ndarray, prob: np.ndarray) -> dict[str, np.ndarray]:
    """Per row, from d[R,K,T] (each future's distance to the truth at each step, meters) and prob[R,K]:
    min_ade_k, min_fde_k, miss_k (0/1) and brier_min_fde_k, all of the future whose end is nearest."""
    best = np.argmin(d[:, :, -1], axis=1)
    rows = np.arange(len(d))
    fde = d[rows, best, -1]
    return {"min_ade_k": d[rows, best].mean(-1), "min_fde_k": fde, "miss_k": (fde > MISS_M).astype(np.float64),
            "brier_min_fde_k": fde + (1.0 - prob[rows, best]) ** 2}


MODE_KEYS = ("min_ade_k", "min_fde_k", "miss_k", "brier_min_fde_k")  # `mode_errors`' keys, the order of `mode_table`
_REPORT_KEYS = ("min_ade_k", "min_fde_k", "miss_rate_k", "brier_min_fde_k")  # their means, as the report names them
MODES_MEANS = ("minADE/minFDE: of the future whose end is nearest the truth; miss: the share of rows whose minFDE "
               f"is over {MISS_M:g} m; brier: minFDE + (1 - that future's probability)^2")


def mode_table(d: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """`mode_errors` of d[R,K,T] and prob[R,K] as columns [R,4] in `MODE_KEYS` order (`AccuracyTable.add`)."""
    errors = mode_errors(d, prob)
    return np.stack([errors[key] for key in MODE_KEYS], 1) if len(d) else np.zeros((0, len(MODE_KEYS)))


def age_bucket(age_s: np.ndarray) -> np.ndarray:
    """Index into AGE_BUCKETS of each age in seconds (int[R]); a negative age counts as 0. Ages are taken to
    the microsecond: 150 samples of 0.4 s are 60 s old, whatever the float product's last bit."""
    return np.searchsorted(_AGE_EDGES_S, np.round(np.asarray(age_s, np.float64), 6), side="right")


class Score:
    """Running sums for one group of rows: the model's ADE and FDE, and CV's for each window k; over the
    rows that had K futures (`n_k` of the `n`), the sums of `MODE_KEYS`, the model's and CV's."""

    def __init__(self, n_k: int) -> None:
        self.n = 0
        self.nonfinite = 0                # rows left out: their errors were nan or inf
        self.model = np.zeros(2)          # sum of ADE, FDE
        self.cv = np.zeros((n_k, 2))      # per k
        self.n_k = 0                      # rows scored with K futures
        self.modes = np.zeros(len(MODE_KEYS))
        self.cv_modes = np.zeros(len(MODE_KEYS))
        self.futures: set[int] = set()    # the K of those rows (a few models: a handful of values)

    def add(self, model: np.ndarray, cv: np.ndarray, modes: np.ndarray | None = None,
            cv_modes: np.ndarray | None = None, k: int = 0) -> None:
        """model: [R,T] errors; cv: [K,R,T]; for rows of k futures, `mode_table` rows [R,4] of the model's
        and of CV's. Within the node's bounds errors are finite; a row whose are not is left out all the
        same: one row must not turn the sums into nan for the rest of the run."""
        finite = np.isfinite(model).all(1) & np.isfinite(cv).all((0, 2))
        if modes is not None and cv_modes is not None:
            finite &= np.isfinite(modes).all(1) & np.isfinite(cv_modes).all(1)
        if not finite.all():
            self.nonfinite += int(len(finite) - finite.sum())
            model, cv = model[finite], cv[:, finite]
            if modes is not None and cv_modes is not None:
                modes, cv_modes = modes[finite], cv_modes[finite]
        self.n += model.shape[0]
        self.model += (model.mean(1).sum(), model[:, -1].sum())
        self.cv += np.stack([cv.mean(2).sum(1), cv[:, :, -1].sum(1)], 1)
        if modes is not None and cv_modes is not None and len(modes):
            self.n_k += len(modes)
            self.modes += modes.sum(0)
            self.cv_modes += cv_modes.sum(0)
            self.futures.add(k)

    def modes_row(self, n_cv: int) -> dict[str, Any]:
        """The report's K entries (empty without rows of K futures); CV's futures are its `n_cv` windows."""
        if not self.n_k:
            return {}
        ks = sorted(self.futures)
        m, c = self.modes / self.n_k, self.cv_modes / self.n_k
        if not (np.isfinite(m).all() and np.isfinite(c).all()):
            return {}
        return {"k": ks[0] if len(ks) == 1 else ks, "n_k": self.n_k,
                **{key: round(float(v), 4) for key, v in zip(_REPORT_KEYS, m, strict=True)},
                "cv_futures": n_cv, **{f"cv_{key}": round(float(v), 4) for key, v in zip(_REPORT_KEYS, c, strict=True)}}

    def row(self, name: str, ks: list[int]) -> tuple[str, int, float, float, int, float, float]:
        """(name, rows, ADE, FDE, best k, its CV ADE, its CV FDE): the k with the lowest CV ADE in this group."""
        m = self.model / max(self.n, 1)
        cv = self.cv / max(self.n, 1)
        b = int(np.argmin(cv[:, 0]))
        return name, self.n, float(m[0]), float(m[1]), ks[b], float(cv[b, 0]), float(cv[b, 1])


class FirstSeen:
    """Agent id -> the stamp it was first seen at, for agents seen within the last `forget_s`.

    An agent unseen for longer is forgotten: when it comes back, its age starts again (a predictor has
    restarted its state long before: its `ttl_s` is shorter). At most `cap` agents are kept, the most
    recently seen (24 bytes each: 1.5 MiB at the default cap), so a stream of new ids cannot grow it.
    `see` must be called in stamp order (the evaluator calls it for truth messages its history accepted).
    """

    def __init__(self, forget_s: float, cap: int = 65536) -> None:
        self.forget_ns = forget_s * 1e9
        self.cap = cap
        self.ids = np.zeros(0, np.int64)      # sorted
        self.first = np.zeros(0, np.int64)
        self.last = np.zeros(0, np.int64)

    def see(self, stamp_ns: int, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, np.int64))
        pos = np.searchsorted(self.ids, ids)
        known = pos < len(self.ids)
        known[known] = self.ids[pos[known]] == ids[known]
        self.last[pos[known]] = stamp_ns
        new = ids[~known]
        if len(new):
            stamps = np.full(len(new), stamp_ns, np.int64)
            ids_all, first, last = (np.concatenate(p) for p in ((self.ids, new), (self.first, stamps),
                                                                 (self.last, stamps)))
            order = np.argsort(ids_all, kind="stable")
            self.ids, self.first, self.last = ids_all[order], first[order], last[order]
        keep = self.last >= stamp_ns - self.forget_ns
        if keep.sum() > self.cap:  # keep the most recently seen
            keep &= self.last >= np.sort(self.last[keep])[-self.cap]
            keep &= np.cumsum(keep) <= self.cap  # ties at the threshold: the lowest ids
        if not keep.all():
            self.ids, self.first, self.last = self.ids[keep], self.first[keep], self.last[keep]

    def age_s(self, ids: np.ndarray, at_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """(age in seconds at `at_ns`, known) per id; an unknown agent's age is 0 and known False."""
        ids = np.asarray(ids, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        known = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), bool)
        first = self.first[pos] if len(self.ids) else np.zeros(len(ids), np.int64)
        return np.where(known, (at_ns - first) / 1e9, 0.0), known


class AccuracyTable:
    """Scores per agent kind (`by_kind`, every age) and per (kind, age bucket) (`by_age`); kind "all" holds
    every kind. Bounded: kinds come from a uint8 code, ages from four buckets."""

    def __init__(self, ks: list[int]) -> None:
        self.ks = ks
        self.by_kind: dict[str, Score] = {}
        self.by_age: dict[tuple[str, str], Score] = {}

    def add(self, kind: np.ndarray, age: np.ndarray, err: np.ndarray, cv_err: np.ndarray,
            modes: np.ndarray | None = None, cv_modes: np.ndarray | None = None, k: int = 0) -> None:
        """kind[R]: names; age[R]: index into AGE_BUCKETS, -1 for an unknown age (counted in the kind's
        rows, in no age's); err[R,T] the model's errors (of its most probable future), cv_err[K,R,T] CV's
        for each k; for rows of `k` futures, `mode_table` rows [R,4] of the model's and CV's futures."""
        for name in ["all", *np.unique(kind).tolist()]:
            sel = np.ones(len(kind), bool) if name == "all" else kind == name
            groups: list[tuple[dict[Any, Score], Any, np.ndarray]] = [(self.by_kind, name, sel)]
            groups += [(self.by_age, (name, AGE_BUCKETS[a]), sel & (age == a))
                       for a in np.unique(age[sel & (age >= 0)]).tolist()]
            for table, key, s in groups:
                self._score(table, key).add(err[s], cv_err[:, s], None if modes is None else modes[s],
                                            None if cv_modes is None else cv_modes[s], k)

    def _score(self, table: dict[Any, Score], key: Any) -> Score:
        if key not in table:
            table[key] = Score(len(self.ks))
        return table[key]

    def rows(self) -> list[dict[str, Any]]:
        """Every (kind, age) with rows: kinds by name, "all" last; per kind age "all", then each bucket."""
        out = []
        for kind in sorted(self.by_kind, key=lambda n: (n == "all", n)):
            groups = [("all", self.by_kind[kind])]
            groups += [(a, self.by_age[(kind, a)]) for a in AGE_BUCKETS if (kind, a) in self.by_age]
            for age, score in groups:
                _, n, ade, fde, k, cade, cfde = score.row(kind, self.ks)
                if n > 0 and all(math.isfinite(v) for v in (ade, fde, cade, cfde)):
                    out.append({"kind": kind, "age": age, "n": n, "ade": round(ade, 4), "fde": round(fde, 4),
                                "cv_ade": round(cade, 4), "cv_fde": round(cfde, 4), "cv_k": k,
                                **score.modes_row(len(self.ks))})
        return out

    def line(self) -> str:
        """One line per kind over every age: "vehicle n=12 ADE/FDE 1.19/2.88 m (CV k=1: 1.12/2.93) | ...",
        with " minFDE_6 0.91 m, miss 12%" after the FDE for rows of K futures."""
        parts = []
        for name in sorted(self.by_kind, key=lambda n: (n == "all", n)):
            score = self.by_kind[name]
            _, n, ade, fde, k, cade, cfde = score.row(name, self.ks)
            m = score.modes_row(len(self.ks))
            futures = (f", minFDE_{_k_text(m['k'])} {m['min_fde_k']:.2f} m, miss {100 * m['miss_rate_k']:.0f}%"
                       if m else "")
            parts.append(f"{name} n={n} ADE/FDE {ade:.2f}/{fde:.2f} m{futures} (CV k={k}: {cade:.2f}/{cfde:.2f})")
        return " | ".join(parts)

    def text(self) -> str:
        """A row per kind over every age, each followed by its age buckets, indented; then the legend."""
        head = (f"{'kind / age':<12}{'rows':>8}{'ADE':>8}{'FDE':>8}{'CV k':>6}{'CV ADE':>8}{'CV FDE':>8}"
                f"{'ADE vs CV':>12}{'FDE vs CV':>12}")
        lines = ["final accuracy (meters)", head]
        for r in self.rows():
            label = r["kind"] if r["age"] == "all" else f"  {r['age']} s"
            lines.append(f"{label:<12}{r['n']:>8}{r['ade']:>8.3f}{r['fde']:>8.3f}{r['cv_k']:>6}"
                         f"{r['cv_ade']:>8.3f}{r['cv_fde']:>8.3f}{vs_cv(r['ade'], r['cv_ade']):>12}"
                         f"{vs_cv(r['fde'], r['cv_fde']):>12}")
        lines += ["age: time since the agent was first seen in the truth, at the prediction's stamp",
                  f"CV k: {CV_K_MEANS}; the best of cv_ks {self.ks} for each row (which flatters CV)",
                  f"ADE/FDE vs CV: {VS_CV_MEANS}"]
        return "\n".join(lines + self._modes_text())

    def _modes_text(self) -> list[str]:
        """The block of the rows of K futures (none without such rows)."""
        rows = [r for r in self.rows() if "n_k" in r]
        if not rows:
            return []
        lines = ["", "rows of K futures per agent (the ADE/FDE above: the most probable one)",
                 f"{'kind / age':<12}{'rows':>8}{'K':>6}{'minADE':>8}{'minFDE':>8}{'miss':>7}{'brier':>8}"
                 f"{'CV minADE':>11}{'CV minFDE':>11}{'CV miss':>9}{'CV brier':>10}"]
        for r in rows:
            label = r["kind"] if r["age"] == "all" else f"  {r['age']} s"
            lines.append(f"{label:<12}{r['n_k']:>8}{_k_text(r['k']):>6}{r['min_ade_k']:>8.3f}{r['min_fde_k']:>8.3f}"
                         f"{100 * r['miss_rate_k']:>6.0f}%{r['brier_min_fde_k']:>8.3f}{r['cv_min_ade_k']:>11.3f}"
                         f"{r['cv_min_fde_k']:>11.3f}{100 * r['cv_miss_rate_k']:>8.0f}%{r['cv_brier_min_fde_k']:>10.3f}")
        lines += [MODES_MEANS,
                  f"CV: constant velocity over each of cv_ks {self.ks}, as {len(self.ks)} equally probable futures"]
        return lines


def _k_text(k: int | list[int]) -> str:
    """K of a row: "6", or "3,6" for rows of models with different K."""
    return str(k) if isinstance(k, int) else ",".join(map(str, k))


def write_report(path: str | Path, rows: list[dict[str, Any]], param: str = "report_json") -> None:
    """Write `{"rows": rows}` to `path` atomically (a temporary file beside it, then a rename): a reader
    never sees half a report. ConfigError naming the param and path when it cannot be written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        text = json.dumps({"rows": rows}, indent=1, allow_nan=False)  # rows hold no NaN: `AccuracyTable.rows`
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"{param}: cannot write '{path}': {exc.strerror or exc}") from None

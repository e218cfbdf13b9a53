"""The report of a fleet evaluation: a journal written as drives finish, and tables over all of them.

REPORT_DIR holds:

- `run.json`: what was run (graph path and sha256, evaluators, --topics, --remap); `--resume` refuses
  a directory made with another graph or other options.
- `drives.jsonl`: one line per finished drive (a `drive.DriveResult`, its evaluator rows included),
  appended and flushed as each drive finishes, so a Ctrl-C or a crash loses no finished drive. It is
  the per-drive table `--resume` reads: a drive whose last line is "ok" is skipped; failed ones run again.
- `drives.csv`: one row per drive: status, error, digest, messages injected and published, replayed and
  wall seconds, the worker, and the overall accuracy (kind "all", age "all") of the first evaluator.
- `accuracy.csv`: one row per drive, evaluator, agent kind and age bucket (as the evaluator reports them).
- `totals.csv`: per evaluator, kind and age over every drive that finished: `drives`, `n` and the
  means weighted by rows, ADE = sum(n * ade) / sum(n), likewise FDE and constant velocity's.
- the same three tables as `.parquet` with pyarrow (`pip install 'drivecast[tables]'`), and
  `summary.png`, per-drive ADE beside CV's, worst first (needs matplotlib).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError

__all__ = ["JOURNAL", "Journal", "check_run", "drive_rows", "graph_digest", "summary", "totals", "write_tables"]

JOURNAL = "drives.jsonl"
DRIVE_COLUMNS = ("drive", "status", "error", "digest", "injected", "published", "replayed_s", "wall_s", "worker",
                 "n", "ade", "fde", "cv_ade", "cv_fde")
# a model of K futures adds these, over the n_k of the n rows that had them (nodes.eval_table)
MODE_COLUMNS = ("n_k", "min_ade_k", "min_fde_k", "miss_rate_k", "brier_min_fde_k", "cv_min_ade_k", "cv_min_fde_k",
                "cv_miss_rate_k")
ACCURACY_COLUMNS = ("drive", "evaluator", "kind", "age", "n", "ade", "fde", "cv_ade", "cv_fde", "cv_k", "k",
                    *MODE_COLUMNS)
TOTAL_COLUMNS = ("evaluator", "kind", "age", "drives", "n", "ade", "fde", "cv_ade", "cv_fde", *MODE_COLUMNS)
_METRICS = ("ade", "fde", "cv_ade", "cv_fde")
_PLOT_MAX = 40  # drives shown in summary.png (the worst)


def check_run(out_dir: Path, run: dict[str, Any], resume: bool) -> dict[str, dict[str, Any]]:
    """Prepare `out_dir` for a run described by `run`; the finished drives to keep (drive -> result).
    ConfigError when it holds another run's report, or any report without `resume`."""
    journal, meta = out_dir / JOURNAL, out_dir / "run.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o {out_dir}: not a directory")
    if journal.exists() and not resume:
        raise ConfigError(f"-o {out_dir}: holds a fleet report already ({journal}); --resume continues it, "
                          "or pick another directory")
    done: dict[str, dict[str, Any]] = {}
    if resume and meta.exists():
        try:
            before = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--resume: cannot read {meta}: {exc}") from None
        changed = [k for k in run if before.get(k) != run[k]]
        if changed:
            raise ConfigError(f"--resume: {out_dir} was made with other {', '.join(changed)} "
                              f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); pick another -o")
        done = {d: r for d, r in Journal.read(journal).items() if r.get("status") == "ok"}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(run, indent=1) + "\n")
    return done


def graph_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Journal:
    """`drives.jsonl`, appended one finished drive at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] | None = None  # opened by the first drive: a run that never starts leaves no journal

    def add(self, result: dict[str, Any]) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run)
        self._f.write(json.dumps(result, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    @staticmethod
    def read(path: Path) -> dict[str, dict[str, Any]]:
        """drive -> its last result; a torn last line (a killed run) is skipped."""
        out: dict[str, dict[str, Any]] = {}
        if not path.exists():
            return out
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get("drive"), str):
                out[r["drive"]] = r
        return out


def _overall(result: dict[str, Any]) -> dict[str, Any]:
    """The first evaluator's kind "all", age "all" row of a drive, or {}."""
    return next((r for r in result.get("rows", []) if r.get("kind") == "all" and r.get("age") == "all"), {})


def drive_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{c: r.get(c) for c in DRIVE_COLUMNS[:9]}, **{c: _overall(r).get(c) for c in DRIVE_COLUMNS[9:]}}
            for r in results]


def _accuracy_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"drive": r["drive"], **{c: _cell(row.get(c)) for c in ACCURACY_COLUMNS[1:]}}
            for r in results for row in r.get("rows", [])]


def _cell(value: Any) -> Any:
    """A table cell: K of models with different K in one row ([6, 20]) as "6,20"."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _age_key(age: str) -> tuple[int, int]:
    """"all" first, then buckets by their lower bound ("0-5" < "5-20" < "60+")."""
    m = re.match(r"\d+", age)
    return (0, 0) if age == "all" else (1, int(m.group()) if m else 1 << 30)


def totals(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (evaluator, kind, age) over the drives: rows weighted, sum(n * metric) / sum(n)."""
    sums: dict[tuple[str, str, str], dict[str, float]] = {}
    order: list[str] = []
    for r in results:
        for row in r.get("rows", []):
            key = (row["evaluator"], row["kind"], row["age"])
            if row["evaluator"] not in order:
                order.append(row["evaluator"])
            s = sums.setdefault(key, {"drives": 0, "n": 0, "n_k": 0, **dict.fromkeys(_METRICS + MODE_COLUMNS[1:], 0.0)})
            s["drives"] += 1
            s["n"] += row["n"]
            for m in _METRICS:
                s[m] += row["n"] * row[m]
            if row.get("n_k"):   # rows of K futures: their metrics weigh by the rows that had them
                s["n_k"] += row["n_k"]
                for m in MODE_COLUMNS[1:]:
                    s[m] += row["n_k"] * row[m]
    keys = sorted(sums, key=lambda k: (order.index(k[0]), k[1] == "all", k[1], _age_key(k[2])))
    out = []
    for e, k, a in keys:
        s = sums[e, k, a]
        row = {"evaluator": e, "kind": k, "age": a, "drives": int(s["drives"]), "n": int(s["n"]),
               **{m: round(s[m] / max(s["n"], 1), 4) for m in _METRICS}}
        if s["n_k"]:
            row.update({"n_k": int(s["n_k"]), **{m: round(s[m] / s["n_k"], 4) for m in MODE_COLUMNS[1:]}})
        out.append(row)
    return out


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)  # a reader never sees half a table


def write_tables(out_dir: Path, results: list[dict[str, Any]]) -> list[str]:
    """Write the tables (CSV; Parquet and the PNG when their packages are here); notes on what was not."""
    tables = {"drives": (DRIVE_COLUMNS, drive_rows(results)), "accuracy": (ACCURACY_COLUMNS, _accuracy_rows(results)),
              "totals": (TOTAL_COLUMNS, totals(results))}
    for name, (columns, rows) in tables.items():
        _write_csv(out_dir / f"{name}.csv", columns, rows)
    notes = []
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        notes.append("Parquet tables need pyarrow: pip install 'drivecast[tables]' (CSV written)")
    else:
        for name, (columns, rows) in tables.items():
            pq.write_table(pa.Table.from_pylist(rows) if rows else
                           pa.table({c: pa.array([], pa.null()) for c in columns}), out_dir / f"{name}.parquet")
    notes += _plot(out_dir / "summary.png", results)
    return notes


def _plot(path: Path, results: list[dict[str, Any]]) -> list[str]:
    ok = [(Path(r["drive"]).name, o["ade"], o["cv_ade"]) for r in results if r["status"] == "ok" and (o := _overall(r))]
    if not ok:
        return []
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return ["summary.png needs matplotlib: pip install matplotlib (skipped)"]
    ok.sort(key=lambda t: -t[1])
    shown = ok[:_PLOT_MAX]
    failed = sum(r["status"] != "ok" for r in results)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * len(shown)))
    y = range(len(shown))
    ax.barh(y, [s[1] for s in shown], color="tab:blue", label="model ADE")
    ax.scatter([s[2] for s in shown], y, color="tab:orange", marker="|", s=120, zorder=3, label="constant velocity ADE")
    ax.set_yticks(list(y), [s[0] for s in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ADE (m), every kind and age")
    ax.set_title(f"per-drive ADE, worst first: {len(shown)} of {len(ok)} drives"
                 + (f" ({failed} failed, not shown)" if failed else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return []


def summary(results: list[dict[str, Any]], vs_cv: Callable[[float, float], str], vs_cv_means: str,
            name: Callable[[str], str] = str) -> str:
    """The totals per kind and per age beside CV (in `vs_cv`'s words), then the failed drives."""
    ok = [r for r in results if r["status"] == "ok"]
    lines = []
    rows = totals(ok)
    for ev in dict.fromkeys(t["evaluator"] for t in rows):
        lines += [f"totals of {ev!r} over {sum(1 for r in ok if any(x['evaluator'] == ev for x in r['rows']))} "
                  "drives (meters; means weighted by rows: sum(n * ADE) / sum(n))",
                  f"{'kind / age':<12}{'drives':>7}{'rows':>9}{'ADE':>8}{'FDE':>8}{'CV ADE':>8}{'CV FDE':>8}"
                  f"{'ADE vs CV':>12}{'FDE vs CV':>12}"]
        for t in (t for t in rows if t["evaluator"] == ev):
            label = t["kind"] if t["age"] == "all" else f"  {t['age']} s"
            lines.append(f"{label:<12}{t['drives']:>7}{t['n']:>9}{t['ade']:>8.3f}{t['fde']:>8.3f}{t['cv_ade']:>8.3f}"
                         f"{t['cv_fde']:>8.3f}{vs_cv(t['ade'], t['cv_ade']):>12}{vs_cv(t['fde'], t['cv_fde']):>12}")
    if rows:
        lines += ["CV: constant velocity, each drive's best window k per row (as the evaluator reports it)",
                  f"ADE/FDE vs CV: {vs_cv_means}"]
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines.append(f"{len(failed)} drive(s) failed:")
        lines += [f"  {name(r['drive'])}: {r['error']}" for r in failed]
    return "\n".join(lines)

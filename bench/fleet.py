"""Fleet evaluation benchmark: `drivecast fleet eval` on a local process pool and on Ray, side by side (issue 25).

    python bench/fleet.py [--quick] [--json FILE] [--drives N] [--minutes M]

200 simulated drives (--quick: 40) of 0.2 simulated minutes each (`drivecast sim record`, seeds 1000...)
go through the default graph (launch.yaml: predictor + evaluator) with `pipeline.cli.fleet` four times,
in this order, in this process: local 1 worker (sequential, in-process), local pool of 2 processes, Ray 1
worker, Ray 2 workers. One local Ray instance of 2 CPUs serves both Ray runs; its start is timed apart
(`ray_start_s`) and not in their walls. Each wall runs from the command's start to its return (pool
start-up, worker imports and model loading included). Every run must report every drive "ok" with the
same digests as the first: the back-ends compute the same thing.

Printed and written: per run wall, drives/s and drives per core-hour (drives / (wall x workers) x 3600);
`speedup_local_2v1`, `speedup_ray_2v1` (wall 1 worker / wall 2 workers), and `ray_overhead_per_drive`:
(Ray's wall per drive - the local pool's) / the local pool's, at 2 workers (at 1 worker, against the
sequential run: `ray_overhead_per_drive_1w`). On a shared, busy machine these move by tens of percent
between runs: compare numbers of one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodes.sim_record import main as sim_record  # noqa: E402
from pipeline.cli.fleet import main as fleet  # noqa: E402

RUNS = (("local_1", 1, False), ("local_2", 2, False), ("ray_1", 1, True), ("ray_2", 2, True))


def _digests(report: Path) -> dict[str, str]:
    with open(report / "drives.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    bad = [r["drive"] for r in rows if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"{report}: {len(bad)} drives failed, e.g. {bad[0]}")
    return {r["drive"]: r["digest"] for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 drives instead of 200")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("--drives", type=int, default=None, help="override the number of drives")
    ap.add_argument("--minutes", type=float, default=0.2, help="simulated minutes per drive (default 0.2)")
    args = ap.parse_args()
    n = args.drives or (40 if args.quick else 200)
    try:
        import ray
    except ModuleNotFoundError:
        print("bench/fleet.py needs ray: pip install -e '.[fleet]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="drivecast-bench-fleet-") as tmp:
        drives = Path(tmp) / "drives"
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert sim_record(["record", "-o", str(drives), "--minutes", f"{args.minutes:g}", "--seed", "1000",
                               "--count", str(n)]) == 0
        print(f"{n} drives of {args.minutes:g} simulated min recorded in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        runs: dict[str, dict[str, Any]] = {}
        first: dict[str, str] | None = None
        ray_start_s = 0.0
        try:
            for name, workers, on_ray in RUNS:
                if on_ray and not ray.is_initialized():
                    t0 = time.perf_counter()
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
                    ray_start_s = time.perf_counter() - t0
                report = Path(tmp) / name
                argv = ["eval", "--graph", str(REPO / "launch.yaml"), str(drives), "-q", "--workers", str(workers),
                        "-o", str(report), *(["--ray"] if on_ray else [])]
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = fleet(argv)
                wall = time.perf_counter() - t0
                if rc != 0:
                    raise SystemExit(f"{name}: fleet eval exited {rc}")
                digests = _digests(report)
                if first is None:
                    first = digests
                elif digests != first:
                    raise SystemExit(f"{name}: digests differ from {RUNS[0][0]}'s")
                runs[name] = {"workers": workers, "wall_s": round(wall, 3), "drives_per_s": round(n / wall, 3),
                              "drives_per_core_hour": round(n / (wall * workers) * 3600)}
                print(f"{name:<8} {workers} worker(s)  wall {wall:7.2f} s  {n / wall:6.2f} drives/s  "
                      f"{runs[name]['drives_per_core_hour']:>7} drives per core-hour", flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
    w = {k: v["wall_s"] for k, v in runs.items()}
    out = {"drives": n, "minutes_per_drive": args.minutes, "cpus": os.cpu_count(),
           "load_average_1m": round(os.getloadavg()[0], 2), "ray_start_s": round(ray_start_s, 2), "runs": runs,
           "speedup_local_2v1": round(w["local_1"] / w["local_2"], 3),
           "speedup_ray_2v1": round(w["ray_1"] / w["ray_2"], 3),
           "ray_overhead_per_drive": round((w["ray_2"] - w["local_2"]) / w["local_2"], 3),
           "ray_overhead_per_drive_1w": round((w["ray_1"] - w["local_1"]) / w["local_1"], 3),
           "digests_identical": True}
    print(f"speedup 2 vs 1 worker: local {out['speedup_local_2v1']:.2f}x, Ray {out['speedup_ray_2v1']:.2f}x; "
          f"Ray overhead per drive vs the local pool: {out['ray_overhead_per_drive']:+.1%} at 2 workers, "
          f"{out['ray_overhead_per_drive_1w']:+.1%} at 1 (vs sequential); Ray start {ray_start_s:.1f} s (not in the walls)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one fleet-eval drive's time goes: reading, the graph's nodes, the codec, the report (issue 25).

    python bench/fleet_profile.py [--drives N] [--minutes M] [--json FILE]

Records N simulated drives (default 5 of 0.2 min, seeds 1000..., as bench/fleet.py's), evaluates one to
warm up (imports, onnxruntime sessions), then evaluates all N in this process under cProfile with the
default graph, as one fleet worker does (`pipeline.fleet.drive.eval_drive`). Prints the cumulative time
of each entry point as a share of the whole: the nodes' callbacks (the graph), MCAP reading, the codec,
the lockstep runtime, the digest and the report. cProfile slows Python calls down, not native code, so
the shares lean towards the Python-heavy parts; the per-drive wall without the profiler is printed too.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodes.sim_record import main as sim_record  # noqa: E402
from pipeline.fleet.drive import DriveTask, eval_drive  # noqa: E402

# (label, file part, function names or None for every `on_*` callback)
ENTRIES = (
    ("evaluator node", "nodes/evaluator.py", None),
    ("predictor node", "nodes/predictor.py", None),
    ("MCAP reading", "pipeline/recordings/mcap_reader.py", ("items",)),
    ("decode", "pipeline/wire/codec.py", ("decode",)),
    ("encode", "pipeline/wire/codec.py", ("encode",)),
    ("lockstep runtime", "pipeline/runtime/local.py", ("advance_to",)),
    ("digest", "pipeline/fleet/drive.py", ("__call__",)),
    ("report rows", "pipeline/fleet/drive.py", ("_load_rows",)),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drives", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=0.2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        assert sim_record(["record", "-o", str(out), "--minutes", f"{args.minutes:g}", "--seed", "1000",
                           "--count", str(args.drives)]) == 0
        tasks = [DriveTask(drive=str(out / f"sim-seed{1000 + i}.mcap"), graph=str(REPO / "launch.yaml"),
                           evaluators=("evaluator",), cwd=str(REPO)) for i in range(args.drives)]
        eval_drive(tasks[0])
        t0 = time.perf_counter()
        for t in tasks:
            assert eval_drive(t)["status"] == "ok"
        wall = (time.perf_counter() - t0) / len(tasks)
        prof = cProfile.Profile()
        prof.enable()
        for t in tasks:
            eval_drive(t)
        prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    shares = {}
    for label, part, names in ENTRIES:
        cum = sum(ct for (file, _, fn), (_, _, _, ct, _) in stats.items()
                  if file.endswith(part) and (fn in names if names else fn.startswith("on_")))
        shares[label] = cum / total
    shares["the rest (graph load, node setup)"] = 1.0 - sum(shares.values())
    print(f"{args.drives} drives of {args.minutes:g} simulated min: {wall:.3f} s per drive without the profiler")
    for label, share in shares.items():
        print(f"  {label:38s} {100 * share:5.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_per_drive_s": wall, "shares": shares}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

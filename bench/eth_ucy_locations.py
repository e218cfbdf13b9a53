"""ETH/UCY recipes on a location the model never saw, with no test file: the check behind issue 26's choices.

    python bench/eth_ucy_locations.py --data ../shared/data/eth_ucy --out runs/locations [--jobs 2] \
        [--json FILE] -- [drivecast train flags...]

Why: the five folds' val files are later frames of the scenes each fold trains on, so a recipe that learns a
place scores well there and not on the held-out test scene (the fold recipe read 8% better than constant
velocity on val and 4-5% on the maintainers' test run). Here a whole location is left out instead, and the
model is scored on a scene of it that is no fold's test scene:

- zara: fold zara1's files without crowds_zara02/03 (so no zara scene at all), scored on crowds_zara03
  (its train and val files);
- univ: fold univ's files without uni_examples (so no univ scene at all), scored on uni_examples.

Each location trains the fold recipe (`--cell lstm --seed 0 --epochs 60 --patience 60 --window-weight 1
--reverse --hidden 64`) plus the flags after `--`, early-stopped on its own val files, then runs
`drivecast eval --split test`. Printed: ADE/FDE of the window and streaming protocols beside CV on the same
windows, and "% better than CV" (negative: worse), per location and their mean.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.datasets import eth_ucy_scene

RECIPE = ["--cell", "lstm", "--seed", "0", "--epochs", "60", "--patience", "60", "--window-weight", "1",
          "--reverse", "--hidden", "64", "--no-progress"]
# location: (the fold whose files it uses, the scenes left out of training, the scene scored)
LOCATIONS = {"zara": ("zara1", ("crowds_zara02", "crowds_zara03"), "crowds_zara03"),
             "univ": ("univ", ("uni_examples",), "uni_examples")}


def layout(data: Path, root: Path) -> None:
    """root/<location>/{train,val,test}: links to the fold's files minus the location; test = the scored scene."""
    for loc, (fold, out, scored) in LOCATIONS.items():
        for split in ("train", "val", "test"):
            (root / loc / split).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            files = sorted((data / fold / split).glob("*.txt"))
            if not files:
                raise SystemExit(f"ERROR: no {split} files under {data / fold / split}: expected the ETH/UCY folds")
            for f in files:
                scene = eth_ucy_scene(f.stem)
                dest = root / loc / ("test" if scene == scored else split) / f.name
                if scene not in out or scene == scored:
                    dest.symlink_to(f.resolve())


def run(loc: str, root: Path, out: Path, flags: list[str]) -> dict:
    cli = Path(sys.executable).with_name("drivecast")
    run_dir = out / loc
    with open(out / f"{loc}.log", "w") as log:
        subprocess.run([str(cli), "train", "--dataset", "eth_ucy", "--data", str(root), "--fold", loc, *RECIPE,
                        *flags, "--out", str(run_dir)], stdout=log, stderr=subprocess.STDOUT, check=True)
        subprocess.run([str(cli), "eval", str(run_dir / "best.pt"), "--dataset", "eth_ucy", "--data", str(root),
                        "--fold", loc, "--split", "test", "--json", str(out / f"{loc}.eval.json")],
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((out / f"{loc}.eval.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="the ETH/UCY folds (../shared/data/eth_ucy)")
    p.add_argument("--out", required=True, type=Path, help="runs, logs and eval JSON go here")
    p.add_argument("--jobs", type=int, default=2, help="locations trained at once (one core each)")
    p.add_argument("--json", type=Path, help="also write the table here")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="-- then extra `drivecast train` flags")
    args = p.parse_args()
    flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
    root = args.out / "data"
    shutil.rmtree(root, ignore_errors=True)
    layout(args.data, root)
    with ThreadPoolExecutor(args.jobs) as pool:
        res = dict(zip(LOCATIONS, pool.map(lambda loc: run(loc, root, args.out, flags), LOCATIONS), strict=True))
    print(f"train flags: {' '.join(RECIPE + flags)}")
    print(f"{'location':<10}{'scored on':<16}{'n':>6}{'window ADE/FDE':>16}{'stream ADE/FDE':>16}{'CV ADE/FDE':>14}"
          f"{'window vs CV':>16}{'stream vs CV':>16}")
    rows = {}
    for loc, r in res.items():
        gain = {name: [100 * (1 - r[name][m] / r["cv"][m]) for m in ("ade", "fde")] for name in ("model", "stream")}
        rows[loc] = {**{n: {m: r[n][m] for m in ("ade", "fde")} for n in ("model", "stream", "cv")},
                     "n": r["windows"], "better_than_cv_pct": gain}
        print(f"{loc:<10}{LOCATIONS[loc][2]:<16}{r['windows']:>6}"
              + "".join(f"{r[n]['ade']:>10.3f}/{r[n]['fde']:.3f}" for n in ("model", "stream", "cv"))
              + "".join(f"{g[0]:>9.1f}%/{g[1]:.1f}%" for g in gain.values()))
    mean = {n: [sum(rows[loc]["better_than_cv_pct"][n][i] for loc in rows) / len(rows) for i in (0, 1)]
            for n in ("model", "stream")}
    print(f"mean % better than CV (ADE/FDE): window {mean['model'][0]:.1f}/{mean['model'][1]:.1f}, "
          f"stream {mean['stream'][0]:.1f}/{mean['stream'][1]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"flags": flags, "locations": rows, "mean_better_than_cv_pct": mean}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

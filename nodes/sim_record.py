"""`drivecast sim record -o DIR --minutes M [--seed S] [--count N]`: simulated drives, headless.

The traffic simulator (`nodes.sim:TrafficSim`, the default graph's `sim`) runs alone on a simulated
clock (`pipeline.runtime.local.LocalGraph`), as fast as the CPU allows, and what it publishes is
written as a drive: `DIR/sim-seed<S>.mcap`, one file per seed S, S+1, ..., S+N-1, each of M simulated
minutes after the simulator's warm-up (the road already full). The topics are the default graph's
(`sim/tracks`, and with `--outputs` also `sim/detections` or, with `--set sim.lidar=true`, `sim/ego`
and `sim/scan`), so a drive replays through launch.yaml in place of `sim` and trains a model with
`drivecast train --dataset drives`. Stamp = log time = publish time, from 2001-09-09 (the lockstep
clock); the same arguments give byte-identical files. An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from nodes.sim import TrafficSim
from pipeline.errors import ConfigError, DrivecastError
from pipeline.recordings.writer import Recorder
from pipeline.runtime.config import convert, parse_set
from pipeline.runtime.local import LocalGraph
from pipeline.runtime.lockstep_launch import START_NS, STEP_S
from pipeline.wire.messages import Message

__all__ = ["main", "record_drive"]

MAX_MINUTES = 24 * 60  # one simulated day per file


def record_drive(path: Path, minutes: float, params: dict[str, Any], outputs: list[str]) -> int:
    """Write `minutes` simulated minutes of TrafficSim(`params`)'s `outputs` to `path`; the message count."""
    checked = convert(params, TrafficSim.Params, "sim", "params", strict=False)  # as a launch file's
    wanted = {f"sim/{o}" for o in outputs}
    meta = {"generator": "drivecast sim record", "minutes": f"{minutes:g}",
            "sim_params": json.dumps(msgspec.to_builtins(checked), sort_keys=True)}
    with Recorder(path, max_chunk_age_s=0, foxglove_mirror=False, metadata=meta) as rec:

        def write(topic: str, frames: list[Any], t_ns: int, msg: Message) -> None:
            if topic in wanted:
                rec.write(topic, frames, t_ns, msg)

        g = LocalGraph(start_ns=START_NS, record=False, on_publish=write)
        g.add("sim", TrafficSim, checked)
        g.start()
        end = START_NS + int(minutes * 60e9)
        while g.now_ns() < end and not g.stopped:
            g.advance_to(min(g.now_ns() + int(STEP_S * 1e9), end))
        g.stop()
        return rec.count


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast sim", description="Generate simulated drives, headless.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="write simulated drives (MCAP of Tracks) faster than real time")
    r.add_argument("-o", "--out", required=True, metavar="DIR", help="directory for sim-seed<S>.mcap (made if absent)")
    r.add_argument("--minutes", type=float, required=True, help="simulated minutes per drive")
    r.add_argument("--seed", type=int, default=0, help="seed of the first drive (default 0; launch.yaml uses 7)")
    r.add_argument("--count", type=int, default=1, help="drives, seeds S to S+N-1 (default 1)")
    r.add_argument("--outputs", default="tracks", metavar="NAMES",
                   help="comma-separated sim outputs to write: tracks, detections, ego, scan (default tracks)")
    r.add_argument("--set", action="append", default=[], metavar="sim.PARAM=VALUE",
                   help="a TrafficSim param, as in launch (e.g. sim.agents=64); repeatable")
    args = ap.parse_args(argv)
    try:
        if not 0 < args.minutes <= MAX_MINUTES:
            raise ConfigError(f"--minutes: expected a number of minutes in (0, {MAX_MINUTES}], got {args.minutes:g}")
        if args.count < 1:
            raise ConfigError(f"--count: expected at least 1 drive, got {args.count}")
        outputs = [o.strip() for o in args.outputs.split(",") if o.strip()]
        unknown = sorted(set(outputs) - set(TrafficSim.outputs))
        if unknown or not outputs:
            raise ConfigError(f"--outputs {args.outputs!r}: expected some of {', '.join(TrafficSim.outputs)}")
        sets = parse_set(args.set)
        if set(sets) - {"sim"}:
            raise ConfigError(f"--set: only sim.PARAM=VALUE, got node(s) {', '.join(sorted(set(sets) - {'sim'}))}")
        if "seed" in sets.get("sim", {}):
            raise ConfigError("--set sim.seed: each drive has its own seed: use --seed S (and --count N)")
        out = Path(args.out)
        paths = [out / f"sim-seed{s}.mcap" for s in range(args.seed, args.seed + args.count)]
        taken = [str(p) for p in paths if p.exists()]
        if taken:
            raise ConfigError(f"not overwriting {', '.join(taken)}: remove it or pick other seeds")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"-o {out}: cannot create the directory: {exc.strerror or exc}") from None
        for seed, path in zip(range(args.seed, args.seed + args.count), paths, strict=True):
            t0 = time.perf_counter()
            try:
                n = record_drive(path, args.minutes, {**sets.get("sim", {}), "seed": seed}, outputs)
            except BaseException:
                path.unlink(missing_ok=True)   # no half drive left behind
                raise
            wall = time.perf_counter() - t0
            print(f"sim record: {path}: {n} messages, {args.minutes:g} simulated min in {wall:.1f} s "
                  f"({args.minutes * 60 / max(wall, 1e-9):.0f}x real time)")
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0

"""Perception benchmark: lidar detector + tracker on the five shared RC-car bags (issue 21).

    python bench/perception.py [--quick] [--json FILE] [--lidar-offset X,Y,YAW] [--set NODE.PARAM=VALUE]

(a) accuracy: each bag through `drivecast track BAG --scan /scan --ego-pose /ego_pose --truth /red_pose`
    (`pipeline.cli.track.track`: the two nodes replayed by lockstep in scan-stamp order), scored by
    `pipeline.recordings.track_score`: position RMSE of the red car's centre, speed RMSE, coverage of
    the scans in which the car is in range and not hidden (>= 3 returns within 0.35 m of it),
    identity switches, false tracks (> 0.5 m from the red car for over 1 s).
(b) time: the two nodes called directly on one core (no codec, no queues), over the same messages in
    the same order; a scan's time is all detector and tracker callback time from that scan up to the
    next one (the poses in between and the nodes' timers included: a detector may hold a scan until
    the pose after it). It is CPU time (CLOCK_THREAD_CPUTIME_ID): on a shared machine the wall clock
    of a callback also counts the other processes that preempt it, which is printed beside
    (`scan_wall_*`). A first untimed pass warms caches; then every bag `--rounds` times (5, --quick 1)
    with fresh nodes. p50 / p99 / max over all scans of all rounds (the bar's p99), and the p99 over
    scans of each scan's median over the rounds (`scan_median_p99_ms`: what the scan itself costs,
    without what another process sharing the core's caches adds to a single sample).
Bars: rmse_m <= 0.10, speed_rmse_mps <= 0.15, coverage >= 0.90, id_switches <= 1, false_tracks <= 2
per bag, scan_p99_ms <= 1. Exit 1 if one is missed, 2 if the bags or the nodes are absent.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cli.track import DETECTOR, TRACKER, StampOrder, offset_argv, parse_offset, track, track_graph  # noqa: E402
from pipeline.errors import DrivecastError  # noqa: E402
from pipeline.recordings.reader import open_recording  # noqa: E402
from pipeline.runtime.graph import parse_set  # noqa: E402
from pipeline.runtime.node import Node  # noqa: E402
from pipeline.wire.codec import decode  # noqa: E402
from pipeline.wire.messages import Message  # noqa: E402

RECORDINGS = REPO.parent / "shared" / "recordings"
BAGS = [RECORDINGS / "rc_cars_overtakes_mocap_lidar_ros1" / "overtakes.bag"] + [
    RECORDINGS / "rc_cars_scenarios_mocap_lidar_ros1" / f"{n}.bag"
    for n in ("intersection", "overtake_ego", "overtake_red", "parallel")]
SCAN, EGO, TRUTH = "/scan", "/ego_pose", "/red_pose"
# key -> (bar, "max" or "min", printed heading)
BARS: dict[str, tuple[float, str, str]] = {
    "rmse_m": (0.10, "max", "RMSE m"), "speed_rmse_mps": (0.15, "max", "speed RMSE m/s"),
    "coverage": (0.90, "min", "coverage"), "id_switches": (1, "max", "id switches"),
    "false_tracks": (2, "max", "false tracks"),
}
SCAN_P99_BAR_MS = 1.0


class _Direct:
    """A runtime that hands the detector's detections straight to the tracker and runs timers on the
    message clock (what is timed is node code: no codec, no queues)."""

    def __init__(self) -> None:
        self.now = 0
        self.tracker: Node | None = None
        self.timers: list[list[Any]] = []  # [next due ns, period ns, fn]
        self.tracker_ns = 0  # CPU time spent in the tracker's callback, of all that is timed

    def publish(self, node: Node, output: str, msg: Message) -> None:
        if output == "detections" and self.tracker is not None and node is not self.tracker:
            t0 = time.thread_time_ns()
            self.tracker.callback("detections")(msg)
            self.tracker_ns += time.thread_time_ns() - t0

    def add_timer(self, node: Node, period_s: float, fn: Callable[[], None]) -> None:
        self.timers.append([None, int(period_s * 1e9), fn])

    def advance_to(self, t_ns: int) -> None:
        """Set the clock, firing the timers due by then (the first tick comes one period after start)."""
        self.now = t_ns
        for timer in self.timers:
            if timer[0] is None:
                timer[0] = t_ns + timer[1]
            while timer[0] <= t_ns:
                timer[0] += timer[1]
                timer[2]()

    def now_ns(self) -> int:
        return self.now

    def request_stop(self, node: Node, reason: str) -> None:
        pass


def _messages(bag: Path) -> list[tuple[str, Message]]:
    with open_recording(bag) as rec:
        return [(i.topic, decode(i.frames)[0]) for i in StampOrder(rec, [SCAN, EGO]).items()]


def _time_bag(graph: Any, messages: list[tuple[str, Message]]) -> np.ndarray:
    """Per scan, [CPU time, wall time, the tracker's CPU time] (ms) of fresh detector and tracker
    nodes over `messages`."""
    rt = _Direct()
    det_spec, trk_spec = graph.nodes["detector"], graph.nodes["tracker"]
    det = det_spec.cls("detector", det_spec.params, rt)
    rt.tracker = trk_spec.cls("tracker", trk_spec.params, rt)
    det.setup()
    rt.tracker.setup()
    on = {SCAN: det.callback("scan"), EGO: det.callback("ego")}
    per_scan: list[np.ndarray] = []
    cpu, wall = time.thread_time_ns, time.perf_counter_ns
    for topic, msg in messages:
        rt.tracker_ns = 0
        c0, w0 = cpu(), wall()
        rt.advance_to(msg.stamp_ns)
        on[topic](msg)
        dt = np.array([cpu() - c0, wall() - w0, rt.tracker_ns]) / 1e6
        if topic == SCAN:
            per_scan.append(dt)
        elif per_scan:
            per_scan[-1] += dt
    det.shutdown()
    rt.tracker.shutdown()
    return np.array(per_scan).reshape(-1, 3)


def _passes(value: float | None, bar: float, kind: str) -> bool:
    if value is None:
        return False
    return value <= bar if kind == "max" else value >= bar


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one timed round instead of five")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds over the five bags")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--lidar-offset", default=None, metavar="X,Y,YAW", help="default: the detector's own")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    ap.add_argument("--detector", default=DETECTOR, metavar="MODULE:CLASS")
    ap.add_argument("--tracker", default=TRACKER, metavar="MODULE:CLASS")
    args = ap.parse_args(offset_argv(sys.argv[1:] if argv is None else argv))
    rounds = args.rounds or (1 if args.quick else 5)
    missing = [str(b) for b in BAGS if not b.exists()]
    if missing:
        print(f"ERROR: the shared RC-car bags are absent: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        offset = parse_offset(args.lidar_offset) if args.lidar_offset else None
        overrides = parse_set(args.set)
        graph = track_graph(SCAN, EGO, args.detector, args.tracker, offset, overrides)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        cpu = -1

    bags: dict[str, dict[str, Any]] = {}
    for bag in BAGS:
        res = track(bag, SCAN, EGO, truth=TRUTH, lidar_offset=offset, overrides=overrides, detector=args.detector,
                    tracker=args.tracker)
        bags[bag.name] = {**(res.score.to_json() if res.score else {}), "replay_s": round(res.stats.wall_s, 3)}

    messages = {bag.name: _messages(bag) for bag in BAGS}
    _time_bag(graph, messages[BAGS[0].name])  # warm-up, untimed
    t = np.concatenate([_time_bag(graph, messages[bag.name]) for _ in range(rounds) for bag in BAGS])
    scan_cpu, scan_wall, tracker = t[:, 0], t[:, 1], t[:, 2]
    per_scan = np.median(scan_cpu.reshape(rounds, -1), axis=0)   # each scan's median over the rounds

    def pct(a: np.ndarray, q: float) -> float:
        return round(float(np.percentile(a, q)), 4)

    timing = {"scan_p50_ms": pct(scan_cpu, 50), "scan_p99_ms": pct(scan_cpu, 99),
              "scan_max_ms": round(float(scan_cpu.max()), 4), "scan_mean_ms": round(float(scan_cpu.mean()), 4),
              "scan_median_p99_ms": pct(per_scan, 99),
              "scan_wall_p50_ms": pct(scan_wall, 50), "scan_wall_p99_ms": pct(scan_wall, 99),
              "detector_p50_ms": pct(scan_cpu - tracker, 50), "detector_p99_ms": pct(scan_cpu - tracker, 99),
              "tracker_p50_ms": pct(tracker, 50), "tracker_p99_ms": pct(tracker, 99),
              "scans_timed": len(t), "rounds": rounds, "cpu": cpu,
              "loadavg_1m": round(os.getloadavg()[0], 2)}  # other work on the machine inflates p99

    failed: list[str] = []
    heads = ["bag", "scans", "visible", *(h for _, _, h in BARS.values())]
    rows = []
    for name, r in bags.items():
        cells = [name, str(r["scans"]), str(r["visible_scans"])]
        for key, (bar, kind, _) in BARS.items():
            v = r[key]
            ok = _passes(v, bar, kind)
            failed += [] if ok else [f"{name} {key} {v}"]
            text = "n/a" if v is None else (f"{v:.1%}" if key == "coverage" else
                                            f"{v:.3f}" if isinstance(v, float) else str(v))
            cells.append(text + ("" if ok else " x"))
        rows.append(cells)
    rows.append(["bar", "", "", *(f"{'<=' if k == 'max' else '>='} {b:.0%}" if key == "coverage"
                                   else f"{'<=' if k == 'max' else '>='} {b:g}" for key, (b, k, _) in BARS.items())])
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    for r in [heads, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    p99_ok = timing["scan_p99_ms"] <= SCAN_P99_BAR_MS
    failed += [] if p99_ok else [f"scan_p99_ms {timing['scan_p99_ms']}"]
    print(f"\nper scan, detector + tracker CPU time, one core (cpu {cpu}), {timing['scans_timed']} scans in "
          f"{rounds} round(s): p50 {timing['scan_p50_ms']:.3f} ms, p99 {timing['scan_p99_ms']:.3f} ms "
          f"(bar <= {SCAN_P99_BAR_MS:g} ms{'' if p99_ok else ', MISSED'}), max {timing['scan_max_ms']:.3f} ms; "
          f"p99 of each scan's median over the rounds {timing['scan_median_p99_ms']:.3f} ms\n"
          f"  detector p50 {timing['detector_p50_ms']:.3f} / p99 {timing['detector_p99_ms']:.3f} ms, "
          f"tracker p50 {timing['tracker_p50_ms']:.3f} / p99 {timing['tracker_p99_ms']:.3f} ms; wall clock p50 "
          f"{timing['scan_wall_p50_ms']:.3f} / p99 {timing['scan_wall_p99_ms']:.3f} ms at load average "
          f"{timing['loadavg_1m']}")
    print(f"nodes: {graph.nodes['detector'].run}, {graph.nodes['tracker'].run}; lidar offset "
          f"{getattr(graph.nodes['detector'].params, 'lidar_offset', 'n/a')}")
    print("all bars met" if not failed else f"bars missed: {'; '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            **timing, "bags": bags, "pass": not failed, "missed": failed,
            "bars": {**{k: b for k, (b, _, _) in BARS.items()}, "scan_p99_ms": SCAN_P99_BAR_MS},
            "detector": args.detector, "tracker": args.tracker,
            "params": {n: str(graph.nodes[n].params) for n in ("detector", "tracker")}}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

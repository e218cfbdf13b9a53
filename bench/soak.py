"""Soak: run a graph for a while and check that nothing grows and nothing is lost.

    python bench/soak.py [--seconds N] [--file launch.yaml] [--json FILE] [--set node.param=value ...]

Launches the graph with `drivecast launch` (one process per node), waits a warm-up (model loading,
allocator pools, the first respawn-free stretch), then samples each node's RSS and open file
descriptors from /proc, and reads every node's Diagnostics topic for message counts, drops and
sequence gaps until the end. Prints a per-node table; the JSON has `rss_growth_mb` and `fd_growth`
(worst node), `drops_block_mode` (drops and gaps on `block` inputs, which promise to lose nothing)
and `per_node`. Bars (issue 7): rss_growth_mb <= 5, fd_growth == 0, drops_block_mode == 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.errors import DecodeError  # noqa: E402
from pipeline.wire.codec import decode  # noqa: E402
from pipeline.wire.messages import Diagnostics  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = {"rss_mb": rss_mb(pid), "fds": fds(pid), "pid": pid}
        except OSError:
            out[name] = {"rss_mb": float("nan"), "fds": -1, "pid": pid}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="how long the graph runs (default 600)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the first sample (default 10%%, 3-30 s)")
    ap.add_argument("--file", default=str(REPO / "launch.yaml"), help="launch file (default: the repository's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a param, as drivecast launch --set")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(30.0, max(3.0, args.seconds * 0.1))

    base = Path(tempfile.mkdtemp(prefix="dc-soak-", dir="/tmp"))
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "launch", args.file, *sum((["--set", s] for s in args.sets), [])]
    log = open(base / "launch.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    try:
        deadline = time.monotonic() + 60
        manifest: dict[str, Any] | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            paths = list(base.glob("*/manifest.json"))
            if paths:
                try:
                    manifest = json.loads(paths[0].read_text())
                except ValueError:
                    manifest = None
                if manifest and all(e["pid"] for e in manifest["nodes"].values()):
                    break
            time.sleep(0.1)  # polling the launcher's manifest
        if not manifest or proc.poll() is not None:
            print((base / "launch.log").read_text(), file=sys.stderr)
            print("ERROR: the graph did not start", file=sys.stderr)
            return 1
        block_inputs = {(n, i) for n, e in manifest["nodes"].items() for i, s in e["inputs"].items() if s["queue"] == "block"}
        poller = zmq.Poller()
        for topic, t in manifest["topics"].items():
            if topic.endswith("/diagnostics"):
                s = ctx.socket(zmq.SUB)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SUBSCRIBE, topic.encode())
                s.connect(t["endpoint"])
                poller.register(s, zmq.POLLIN)
                socks.append(s)
        latest: dict[str, dict[str, float]] = {}

        def pump(until: float) -> None:
            while time.monotonic() < until:
                for s, _ in poller.poll(100):
                    frames = s.recv_multipart()
                    try:
                        msg, _ = decode(frames[1:], expect=Diagnostics)
                    except DecodeError:
                        continue
                    latest[msg.node] = msg.values

        pids = {n: e["pid"] for n, e in manifest["nodes"].items()}
        t0 = time.monotonic()
        pump(t0 + warmup)
        start = sample(pids)
        start_counts = {n: dict(v) for n, v in latest.items()}
        pump(t0 + args.seconds)
        end = sample(pids)
        m2 = json.loads(next(base.glob("*/manifest.json")).read_text())
        restarts = {n: e["restarts"] for n, e in m2["nodes"].items()}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for s in socks:
            s.close(0)
        ctx.term()
        log.close()

    per_node: dict[str, Any] = {}
    drops_block = 0.0
    for n in pids:
        v, v0 = latest.get(n, {}), start_counts.get(n, {})
        msgs_in = sum(x for k, x in v.items() if k.startswith("in."))
        msgs_out = sum(x for k, x in v.items() if k.startswith("out.") and k != "out.diagnostics")
        drops = sum(x for k, x in v.items() if k.startswith(("drops.", "gaps.")))
        drops_block += sum(x for k, x in v.items() if k.startswith(("drops.", "gaps.")) and (n, k.split(".", 1)[1]) in block_inputs)
        per_node[n] = {
            "msgs_in": msgs_in, "msgs_out": msgs_out, "drops": drops,
            "decode_errors": sum(x for k, x in v.items() if k.startswith("decode_errors.")),
            "rss_start_mb": round(start[n]["rss_mb"], 1), "rss_end_mb": round(end[n]["rss_mb"], 1),
            "rss_growth_mb": round(end[n]["rss_mb"] - start[n]["rss_mb"], 2),
            "fds_start": start[n]["fds"], "fds_end": end[n]["fds"], "fd_growth": end[n]["fds"] - start[n]["fds"],
            "restarts": restarts.get(n, 0), "msgs_in_after_warmup": msgs_in - sum(
                x for k, x in v0.items() if k.startswith("in.")),
        }
    result = {
        "seconds": args.seconds, "warmup_s": warmup, "file": args.file,
        "rss_growth_mb": max(p["rss_growth_mb"] for p in per_node.values()),
        "fd_growth": max(p["fd_growth"] for p in per_node.values()),
        "drops_block_mode": drops_block,
        "restarts": sum(restarts.values()),
        "per_node": per_node,
    }
    print(f"soak: {args.seconds:g} s of {args.file} (warm-up {warmup:g} s)")
    print(f"{'node':<12}{'in':>9}{'out':>9}{'drops':>7}{'bad':>5}{'RSS start':>11}{'RSS end':>9}{'growth':>8}{'fds':>9}{'restarts':>9}")
    for n, p in per_node.items():
        print(f"{n:<12}{p['msgs_in']:>9.0f}{p['msgs_out']:>9.0f}{p['drops']:>7.0f}{p['decode_errors']:>5.0f}"
              f"{p['rss_start_mb']:>10.1f}M{p['rss_end_mb']:>8.1f}M{p['rss_growth_mb']:>+7.2f}M"
              f"{p['fds_start']:>4}->{p['fds_end']:<4}{p['restarts']:>7}")
    ok = result["rss_growth_mb"] <= 5 and result["fd_growth"] <= 0 and drops_block == 0
    print(f"rss_growth_mb={result['rss_growth_mb']:.2f} (bar 5)  fd_growth={result['fd_growth']} (bar 0)  "
          f"drops_block_mode={drops_block:.0f} (bar 0)  -> {'PASS' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

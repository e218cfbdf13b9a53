"""Soak: run a graph under load for a while; check that nothing grows, and say what is lost and how late.

    python bench/soak.py [--agents N] [--seconds N] [--file launch.yaml] [--json FILE] [--set node.param=value ...]

Launches the graph with `drivecast launch` (one process per node) and waits a warm-up (model loading,
allocator pools; with `--agents`, also until the simulator holds 95% of the agents: it fills its road
from the ends, minutes for a thousand). Then, for `--seconds`, samples each node's RSS, open file
descriptors and CPU time from /proc every second and reads every node's Diagnostics topic: messages in
and out, queue drops and seq gaps per input, drops a node counts itself (stale, capacity...) and its
latency percentiles. RSS growth compares the floor (minimum) of the first and the last minute: one
sample can land inside a callback whose temporaries are still mapped (at 1,000 agents the predictor's
[B, N] neighbour arrays swing its RSS by tens of MB), and a leak raises the floor. The end-to-end
latency is the evaluator's prediction age (receive time - the simulator's Tracks stamp), read from its
summary lines in the launch log.

`--agents N` sets every TrafficSim's `agents` (and `road_length_m` to at least 4 m per agent: the
default 300 m road holds a couple of hundred) and every Predictor's `capacity` to 1.25 N (agents per model,
with room for those that left within `ttl_s`; beyond it agents are dropped, `drops.capacity`).
A later `--set` overrides them.

JSON: `rss_growth_mb` and `fd_growth` (worst node), `drops_block_mode` (drops and gaps on `block`
inputs, which promise to lose nothing, whole run), `drops_by_policy`, `node_drops`, `latency`, `sims`
(achieved rate, agents held), `keeps_up` (the simulators at their rate, every input taking what its
publisher sent without drops or gaps, no stale drops), `cpu` and `per_node` (rates in and out per
second, per input rows, RSS series). Bars (issue 7, 24): rss_growth_mb <= 5 per node, fd_growth == 0, drops_block_mode == 0,
and with `--agents` the load reached; exit 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodes.predictor import Predictor  # noqa: E402
from nodes.sim import TrafficSim  # noqa: E402
from pipeline.errors import ConfigError, DecodeError  # noqa: E402
from pipeline.runtime.graph import load_graph, parse_set  # noqa: E402
from pipeline.wire.codec import decode  # noqa: E402
from pipeline.wire.messages import Diagnostics  # noqa: E402

SAMPLE_S = 1.0         # /proc and diagnostics sampling period during the measured stretch
EDGE_S = 60.0          # RSS and fds at the start (end): their floor over this first (last) stretch
SERIES_S = 10.0        # the RSS series in the JSON: the floor of each such stretch
LOAD_FRACTION = 0.95   # the simulator holds this share of --agents: the load is reached
POLICIES = ("latest", "drop_oldest", "block")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_E2E = re.compile(rb"^\[([\w-]+)\] .*latency p50 ([\d.]+) ms p99 ([\d.]+) ms", re.M)


# -- /proc ------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process, every thread (ZeroMQ's I/O threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])  # guest time is already in user
    return (total - v[3] - v[4]) / _CLK_TCK, total / _CLK_TCK


def sample(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = {"rss_mb": rss_mb(pid), "fds": fds(pid), "cpu_s": cpu_s(pid), "pid": pid}
        except OSError:
            out[name] = {"rss_mb": float("nan"), "fds": -1, "cpu_s": float("nan"), "pid": pid}
    return out


# -- the load -----------------------------------------------------------------------------------
def load_sets(file: str, agents: int) -> list[str]:
    """The `--set` overrides that make the graph in `file` carry `agents` agents (see the docstring)."""
    graph = load_graph(file)
    sims = [name for name, spec in graph.nodes.items() if issubclass(spec.cls, TrafficSim)]
    if not sims:
        raise ConfigError(f"--agents: no TrafficSim node in {file} to set agents on")
    sets = []
    for name in sims:
        sets.append(f"{name}.agents={agents}")
        if getattr(graph.nodes[name].params, "road_length_m", 0.0) < 4.0 * agents:
            sets.append(f"{name}.road_length_m={4.0 * agents:g}")
    for name, spec in graph.nodes.items():
        if issubclass(spec.cls, Predictor):
            sets.append(f"{name}.capacity={math.ceil(1.25 * agents)}")
    return sets


# -- watching the graph ---------------------------------------------------------------------------
class Watch:
    """Every node's latest Diagnostics, and /proc samples of its process."""

    def __init__(self, ctx: zmq.Context[Any], manifest: dict[str, Any], alive: Callable[[], bool]) -> None:
        """`alive()`: whether the graph still runs; every wait ends early when it does not."""
        self.alive = alive
        self.poller = zmq.Poller()
        self.socks: list[zmq.Socket[Any]] = []
        for topic, t in manifest["topics"].items():
            if topic.endswith("/diagnostics"):
                s = ctx.socket(zmq.SUB)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SUBSCRIBE, topic.encode())
                s.connect(t["endpoint"])
                self.poller.register(s, zmq.POLLIN)
                self.socks.append(s)
        self.pids = {n: e["pid"] for n, e in manifest["nodes"].items()}
        self.latest: dict[str, dict[str, float]] = {}
        self.samples: list[tuple[float, dict[str, dict[str, float]], dict[str, dict[str, float]]]] = []

    def pump(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Read diagnostics until `until` (monotonic) or `stop()` holds; return whether it held."""
        while time.monotonic() < until and self.alive():
            for s, _ in self.poller.poll(100):
                frames = s.recv_multipart()
                try:
                    msg, _ = decode(frames[1:], expect=Diagnostics)
                except DecodeError:
                    continue
                if isinstance(msg, Diagnostics):
                    self.latest[msg.node] = msg.values
            if stop is not None and stop():
                return True
        return False

    def measure(self, seconds: float) -> None:
        """Sample /proc and the diagnostics every SAMPLE_S for `seconds`, the first sample now."""
        t0 = time.monotonic()
        n = math.ceil(seconds / SAMPLE_S)
        for i in range(n + 1):
            if not self.alive():
                return
            self.pump(t0 + min(i * SAMPLE_S, seconds))
            self.samples.append((time.monotonic(), sample(self.pids), {k: dict(v) for k, v in self.latest.items()}))

    def close(self) -> None:
        for s in self.socks:
            s.close(0)


def run_graph(args: argparse.Namespace, sets: list[str], sims: list[str]) -> dict[str, Any]:
    """Launch, warm up, measure, stop; return what was observed (or raise SystemExit)."""
    base = Path(tempfile.mkdtemp(prefix="dc-soak-", dir="/tmp"))
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "launch", args.file, *sum((["--set", s] for s in sets), [])]
    log_path = base / "launch.log"
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx: zmq.Context[Any] = zmq.Context()
    watch: Watch | None = None
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
            print(log_path.read_text(), file=sys.stderr)
            raise SystemExit("ERROR: the graph did not start")
        watch = Watch(ctx, manifest, lambda: proc.poll() is None)
        t0 = time.monotonic()
        watch.pump(t0 + args.warmup)
        load_reached = True
        if args.agents:
            def loaded() -> bool:
                return all(watch.latest.get(n, {}).get("agents", 0) >= LOAD_FRACTION * args.agents for n in sims)
            load_reached = watch.pump(time.monotonic() + args.fill_timeout, loaded) or loaded()
        warmup = time.monotonic() - t0
        log_offset = log_path.stat().st_size
        cpu0 = machine_cpu()
        watch.measure(args.seconds)
        cpu1 = machine_cpu()
        if proc.poll() is not None:
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise SystemExit(f"ERROR: the graph ended {time.monotonic() - t0:.0f} s after its start "
                             f"(exit {proc.returncode}; log: {log_path})")
        m2 = json.loads(next(base.glob("*/manifest.json")).read_text())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if watch is not None:
            watch.close()
        ctx.term()
        log.close()
    return {"manifest": m2, "samples": watch.samples, "warmup_s": warmup, "load_reached": load_reached,
            "sims": sims, "machine_cpu": (cpu0, cpu1), "log": log_path.read_bytes()[log_offset:],
            "log_path": str(log_path)}


# -- what it means ------------------------------------------------------------------------------------
def _delta(end: dict[str, float], start: dict[str, float], key: str) -> float:
    """A counter's growth over the window; a counter that went back (a respawn) counts from zero."""
    a, b = start.get(key, 0.0), end.get(key, 0.0)
    return b - a if b >= a else b


def analyse(obs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    manifest, samples = obs["manifest"], obs["samples"]
    (t_a, proc_a, diag_a), (t_b, proc_b, diag_b) = samples[0], samples[-1]
    window = t_b - t_a
    edge = max(SAMPLE_S, min(EDGE_S, window / 5))
    nodes = manifest["nodes"]
    per_node: dict[str, Any] = {}
    by_policy = {p: {"inputs": 0, "in": 0.0, "drops": 0.0, "gaps": 0.0, "drops_total": 0.0, "gaps_total": 0.0}
                 for p in POLICIES}
    for n, entry in nodes.items():
        v, v0 = diag_b.get(n, {}), diag_a.get(n, {})
        start, end = proc_a[n], proc_b[n]
        inputs = {}
        for inp, spec in entry["inputs"].items():
            topic = spec["topic"]
            publisher = manifest["topics"].get(topic, {}).get("publisher", "")
            up_key = f"out.{topic[len(publisher) + 1:]}" if publisher and topic.startswith(publisher + "/") else None
            row = {
                "topic": topic, "policy": spec["queue"], "depth": spec["depth"],
                "in_per_s": _delta(v, v0, f"in.{inp}") / window,
                "upstream_out_per_s": (_delta(diag_b.get(publisher, {}), diag_a.get(publisher, {}), up_key) / window
                                       if up_key else None),
                "drops": _delta(v, v0, f"drops.{inp}"), "gaps": _delta(v, v0, f"gaps.{inp}"),
                "seq_jumps": _delta(v, v0, f"seq_jumps.{inp}"),
                "drops_total": v.get(f"drops.{inp}", 0.0), "gaps_total": v.get(f"gaps.{inp}", 0.0),
            }
            inputs[inp] = row
            agg = by_policy.setdefault(spec["queue"], {k: 0.0 for k in by_policy["block"]})
            agg["inputs"] += 1
            agg["in"] += _delta(v, v0, f"in.{inp}")
            for k in ("drops", "gaps", "drops_total", "gaps_total"):
                agg[k] += row[k]
        # drops a node counts itself (`drops.stale`, `drops.capacity`...): `drops.<name>` not an input's queue
        node_drops = {k: _delta(v, v0, k) for k in v if k.startswith("drops.") and k[6:] not in entry["inputs"]}
        latency = {k: round(x, 1) for k, x in v.items() if k.endswith(("_p50_us", "_p99_us"))}
        p99_max = {k: round(max(d.get(n, {}).get(k, 0.0) for _, _, d in samples), 1)
                   for k in latency if k.endswith("_p99_us")}
        t = np.array([s[0] - t_a for s in samples])
        rss = np.array([s[1][n]["rss_mb"] for s in samples])
        nfd = np.array([s[1][n]["fds"] for s in samples])
        first, last = t <= edge, t >= window - edge
        buckets = (t // SERIES_S).astype(int)
        series = [float(np.nanmin(rss[buckets == b])) for b in range(buckets[-1] + 1) if (buckets == b).any()]
        slope = (float(np.polyfit(np.arange(len(series)) * SERIES_S, series, 1)[0]) * 600
                 if len(series) > 2 and np.isfinite(series).all() else float("nan"))
        per_node[n] = {
            "msgs_in": sum(x for k, x in v.items() if k.startswith("in.")),
            "msgs_out": sum(x for k, x in v.items() if k.startswith("out.") and k != "out.diagnostics"),
            "in_per_s": {k[3:]: round(_delta(v, v0, k) / window, 2) for k in v if k.startswith("in.")},
            "out_per_s": {k[4:]: round(_delta(v, v0, k) / window, 2) for k in v
                          if k.startswith("out.") and k != "out.diagnostics"},
            "inputs": inputs,
            "node_drops": node_drops,
            "decode_errors": sum(x for k, x in v.items() if k.startswith("decode_errors.")),
            "latency_us": latency, "latency_p99_max_us": p99_max,
            "cpu_pct": round((end["cpu_s"] - start["cpu_s"]) / window * 100, 1),
            "rss_start_mb": round(float(np.nanmin(rss[first])), 1), "rss_end_mb": round(float(np.nanmin(rss[last])), 1),
            "rss_max_mb": round(float(np.nanmax(rss)), 1),
            "rss_growth_mb": round(float(np.nanmin(rss[last]) - np.nanmin(rss[first])), 2),
            "rss_slope_mb_per_10min": round(slope, 2),
            "rss_series_mb": [round(x, 1) for x in series],
            "fds_start": int(nfd[first].min()), "fds_end": int(nfd[last].min()),
            "fd_growth": int(nfd[last].min() - nfd[first].min()),
            "restarts": entry["restarts"],
        }
    # the simulators' achieved rate, and the agents they held
    sims = {}
    for n in obs["sims"]:
        v, v0 = diag_b.get(n, {}), diag_a.get(n, {})
        agents = [d.get(n, {}).get("agents", float("nan")) for _, _, d in samples]
        sims[n] = {"rate_hz": float(nodes[n]["params"].get("rate_hz", 10.0)),
                   "achieved_hz": round(_delta(v, v0, "out.tracks") / window, 3),
                   "agents_min": min(agents), "agents_mean": round(float(np.mean(agents)), 1),
                   "agents_max": max(agents)}
    e2e = [(m[1].decode(), float(m[2]), float(m[3])) for m in _E2E.finditer(obs["log"])]
    e2e_latency = None
    if e2e:
        e2e_latency = {
            "what": f"prediction age at {e2e[0][0]}: its receive time - the simulator's Tracks stamp, ms "
                    "(p50: median of its summary lines, p99: their max; each line covers its last 2048 messages)",
            "p50_ms": round(float(np.median([x[1] for x in e2e])), 2), "p99_ms": max(x[2] for x in e2e),
            "last_p50_ms": e2e[-1][1], "last_p99_ms": e2e[-1][2], "lines": len(e2e)}
    keeps_up = all(abs(s["achieved_hz"] - s["rate_hz"]) <= 0.02 * s["rate_hz"] for s in sims.values()) and all(
        r["drops"] + r["gaps"] == 0 and (r["upstream_out_per_s"] is None or r["in_per_s"] >= 0.98 * r["upstream_out_per_s"])
        for p in per_node.values() for r in p["inputs"].values()
    ) and not any(x for p in per_node.values() for k, x in p["node_drops"].items() if k == "drops.stale")
    (busy0, total0), (busy1, total1) = obs["machine_cpu"]
    graph_cpu = sum(p["cpu_pct"] for p in per_node.values())
    return {
        "seconds": round(window, 1), "warmup_s": round(obs["warmup_s"], 1), "file": args.file,
        "agents": args.agents, "sets": obs["sets"], "load_reached": obs["load_reached"],
        "rss_growth_mb": max(p["rss_growth_mb"] for p in per_node.values()),
        "fd_growth": max(p["fd_growth"] for p in per_node.values()),
        "drops_block_mode": by_policy["block"]["drops_total"] + by_policy["block"]["gaps_total"],
        "drops_by_policy": by_policy,
        "node_drops": {n: p["node_drops"] for n, p in per_node.items() if any(p["node_drops"].values())},
        "latency": {"end_to_end": e2e_latency,
                    "per_node_us": {n: p["latency_us"] for n, p in per_node.items()},
                    "per_node_p99_max_us": {n: p["latency_p99_max_us"] for n, p in per_node.items()}},
        "sims": sims, "keeps_up": keeps_up,
        "cpu": {"machine_busy_pct": round((busy1 - busy0) / (total1 - total0) * 100 * (os.cpu_count() or 1), 1),
                "graph_pct": round(graph_cpu, 1), "cores": os.cpu_count(),
                "per_node_pct": {n: p["cpu_pct"] for n, p in per_node.items()}},
        "restarts": sum(p["restarts"] for p in per_node.values()),
        "per_node": per_node,
    }


def _mb(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.2f}M"


def report(r: dict[str, Any]) -> bool:
    """Print the tables; return whether every bar is met."""
    print(f"soak: {r['seconds']:g} s of {r['file']} after a {r['warmup_s']:g} s warm-up"
          + (f", {r['agents']} agents ({' '.join(r['sets'])})" if r["agents"] else ""))
    for n, s in r["sims"].items():
        print(f"{n}: {s['achieved_hz']:.3f} Hz of {s['rate_hz']:g}, agents {s['agents_min']:.0f}-{s['agents_max']:.0f}"
              f" (mean {s['agents_mean']:.0f})")
    print(f"{'node':<12}{'in/s':>8}{'out/s':>8}{'CPU':>7}{'RSS start':>11}{'RSS end':>9}{'growth':>8}{'/10min':>8}"
          f"{'fds':>9}{'restarts':>9}")
    for n, p in r["per_node"].items():
        print(f"{n:<12}{sum(p['in_per_s'].values()):>8.1f}{sum(p['out_per_s'].values()):>8.1f}{p['cpu_pct']:>6.1f}%"
              f"{p['rss_start_mb']:>10.1f}M{p['rss_end_mb']:>8.1f}M{p['rss_growth_mb']:>+7.2f}M"
              f"{_mb(p['rss_slope_mb_per_10min']):>8}{p['fds_start']:>4}->{p['fds_end']:<4}{p['restarts']:>7}")
    print(f"{'input':<24}{'policy':<12}{'depth':>6}{'in/s':>8}{'up/s':>8}{'drops':>7}{'gaps':>6}{'whole run':>11}")
    for n, p in r["per_node"].items():
        for inp, x in p["inputs"].items():
            up = "-" if x["upstream_out_per_s"] is None else f"{x['upstream_out_per_s']:.1f}"
            print(f"{n + '.' + inp:<24}{x['policy']:<12}{x['depth']:>6}{x['in_per_s']:>8.1f}{up:>8}{x['drops']:>7.0f}"
                  f"{x['gaps']:>6.0f}{x['drops_total'] + x['gaps_total']:>11.0f}")
    for n, d in r["node_drops"].items():
        print(f"{n} drops itself: " + ", ".join(f"{k[6:]} {x:.0f}" for k, x in d.items()))
    print("drops by policy, measured (whole run): " + ", ".join(
        f"{p} {x['drops']:.0f}+{x['gaps']:.0f} gaps ({x['drops_total']:.0f}+{x['gaps_total']:.0f}) on {x['inputs']:.0f}"
        for p, x in r["drops_by_policy"].items()))
    e2e = r["latency"]["end_to_end"]
    if e2e:
        print(f"end-to-end, prediction age at the evaluator (receive - Tracks stamp): p50 {e2e['p50_ms']:.1f} ms,"
              f" p99 {e2e['p99_ms']:.1f} ms")
    for n, lat in r["latency"]["per_node_us"].items():
        names = sorted({k.rsplit("_", 2)[0] for k in lat})
        if names:
            print(f"{n}: " + ", ".join(f"{x} p50 {lat[x + '_p50_us']:.0f} us p99 {lat[x + '_p99_us']:.0f} us "
                                       f"(max {r['latency']['per_node_p99_max_us'][n][x + '_p99_us']:.0f})"
                                       for x in names if x + "_p50_us" in lat and x + "_p99_us" in lat))
    c = r["cpu"]
    print(f"CPU: graph {c['graph_pct']:.0f}%, machine {c['machine_busy_pct']:.0f}% (of {100 * c['cores']}%);"
          f" keeps up: {'yes' if r['keeps_up'] else 'no'}")
    ok = bool(r["rss_growth_mb"] <= 5 and r["fd_growth"] <= 0 and r["drops_block_mode"] == 0 and r["load_reached"])
    print(f"rss_growth_mb={r['rss_growth_mb']:.2f} (bar 5)  fd_growth={r['fd_growth']} (bar 0)  "
          f"drops_block_mode={r['drops_block_mode']:.0f} (bar 0)"
          + ("" if r["load_reached"] else f"  load NOT reached ({LOAD_FRACTION:.0%} of {r['agents']} agents)")
          + f"  -> {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="the measured stretch, after the warm-up (default 600)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the load wait (default 10%%, 3-30 s)")
    ap.add_argument("--agents", type=int, default=0, help="simulated agents (sets sim and predictor params: see the module docstring)")
    ap.add_argument("--fill-timeout", type=float, default=900.0,
                    help="with --agents: the longest wait for the simulator to hold them (default 900 s)")
    ap.add_argument("--file", default=str(REPO / "launch.yaml"), help="launch file (default: the repository's)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a param, as drivecast launch --set (after those --agents sets)")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = min(30.0, max(3.0, args.seconds * 0.1))
    try:
        sets = [*(load_sets(args.file, args.agents) if args.agents else []), *args.sets]
        graph = load_graph(args.file, parse_set(sets))  # refused here, before anything starts
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    obs = run_graph(args, sets, [n for n, spec in graph.nodes.items() if issubclass(spec.cls, TrafficSim)])
    obs["sets"] = sets
    result = analyse(obs, args)
    ok = report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

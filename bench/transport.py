"""Node-to-node one-way latency: drivecast vs raw pyzmq (and shm, dora-rs, zenoh), same run.

    python bench/transport.py [--quick] [--json FILE] [--n N]

What is measured: one-way latency of one message carrying a uint8 payload of 64 B, 4 KiB, 1 MiB
and 2.7 MB (a 1280x720x3 camera frame), from the moment the sender takes CLOCK_MONOTONIC right
before its send call to the moment the receiver, woken up by the message, holds the payload as an
array (CLOCK_MONOTONIC is one clock for all processes of the machine, so one-way stamps are exact;
no ping-pong, no RTT/2). Candidates, each a sender process and a receiver process:

- drivecast: `bench/_transport_nodes.py` FrameSource -> FrameSink, two real nodes run by
  `python -m pipeline.runtime.runner` from a manifest built by `pipeline.runtime.launch.build_manifest` out of a
  launch file (ipc transport, input queue `drop_oldest`, so that a burst after a stall of the
  sender loses no sample), shared memory off (`DRIVECAST_SHM=off`);
  payload = `Image.data`, so the header, the codec's checks and the callback dispatch are in;
- shm: the same graph with the shared-memory path on (`DRIVECAST_SHM=on`, issue 8): node code
  unchanged, the publisher copies the frame into a slot once;
- loan: the same with the source filling a loaned slot (`Publisher.loan`): no copy at all;
- pyzmq: PUB/SUB over ipc, `send_multipart([topic, stamp, payload], copy=False)`,
  `recv_multipart(copy=False)` + `np.frombuffer`: the floor for the first two;
- dora: dora-rs Python nodes under `dora run` (no daemon), payload as a pyarrow array;
- zenoh: eclipse-zenoh Python, two peers, explicit tcp endpoints on 127.0.0.1, no scouting.
dora and zenoh are measured only where installed (`pip install -e .[bench]`).

Interleaving: every sender waits for triggers from this process, which sends one message per
candidate in turn (rotating the order), a gap apart, so that a noisy neighbour slows them all
alike and only one message is in flight at a time. Per candidate and size the first
`WARMUP` samples are dropped; reported are median and p99 of the rest.

Bar (issue 2): worst_ratio_p50 (drivecast vs pyzmq over all sizes) <= 1.3.
Bars (issue 8): shm_2p7mib_p50_us <= 400 and below dora_2p7mib_p50_us (shm_loan_2p7mib_p50_us is
reported beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import Results  # noqa: E402
from pipeline.runtime.graph import load_graph  # noqa: E402
from pipeline.runtime.launch import build_manifest  # noqa: E402
from pipeline.runtime.rundir import make_run_dir, write_manifest  # noqa: E402
from pipeline.transport.endpoints import free_tcp_port  # noqa: E402
from pipeline.transport.publisher import Publisher  # noqa: E402
from pipeline.wire.codec import encode  # noqa: E402
from pipeline.wire.messages import Clock  # noqa: E402

SIZES = (64, 4096, 1 << 20, 1280 * 720 * 3)
LABELS = {64: "64 B", 4096: "4 KiB", 1 << 20: "1 MiB", 1280 * 720 * 3: "2.7 MB"}
WARMUP = 10
NAMES = ("drivecast", "pyzmq", "shm", "loan", "dora", "zenoh")
PY = sys.executable
PEERS = str(ROOT / "bench" / "_transport_peers.py")


def _gap_s(nbytes: int) -> float:
    """Time between two messages: one message in flight at a time, with room for a slow one."""
    return 0.006 if nbytes > 512 * 1024 else 0.002


@dataclass
class Candidate:
    name: str
    results: Results
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    trigger: Any = None  # callable(size_index) sending one trigger
    stop: Any = None  # callable() asking the senders to end
    cleanup: list[Any] = field(default_factory=list)
    start_index: int = 0
    note: str = ""


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - closed when the process is reaped (see _stop_all)
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=str(ROOT),
                            start_new_session=True)


def _raw_trigger(ctx: zmq.Context, endpoint: str) -> tuple[Any, Any, zmq.Socket]:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    return (lambda i: sock.send(b"%d" % i)), (lambda: sock.send(b"stop")), sock


def start_drivecast(name: str, tmp: Path, cap: int, ctx: zmq.Context, shm: str, loan: bool = False) -> Candidate:
    res_path = tmp / f"{name}.res"
    results = Results(res_path, cap)
    launch = tmp / f"{name}.yaml"
    launch.write_text(
        f"name: bench-{name}\n"
        "nodes:\n"
        "  ctl: {run: bench._transport_nodes:Trigger}\n"
        f"  src: {{run: bench._transport_nodes:FrameSource, params: {{sizes: {list(SIZES)}, "
        f"loan: {str(loan).lower()}}}, "
        "inputs: {go: ctl/go}}\n"
        f"  dst: {{run: bench._transport_nodes:FrameSink, params: {{results: '{res_path}'}}, "
        "inputs: {frame: {topic: src/frame, queue: drop_oldest}}}\n")
    graph = load_graph(launch)
    run_dir = make_run_dir(f"bench-{name}")
    manifest = build_manifest(graph, run_dir)
    write_manifest(run_dir, manifest)
    # The harness is the `ctl` node: a real Publisher on the manifest's endpoint.
    pub = Publisher(ctx, "ctl/go", manifest.topics["ctl/go"].endpoint)
    env = {"DRIVECAST_SHM": shm}
    cand = Candidate(name, results)
    cand.procs = [_spawn([PY, "-m", "pipeline.runtime.runner", str(run_dir), n], tmp / f"{name}.{n}.log", env)
                  for n in ("dst", "src")]
    count = [0]

    def trigger(i: int) -> None:
        count[0] += 1
        pub.send(encode(Clock(frame_id=str(i), seq=count[0])), lambda: False)

    cand.trigger = trigger
    cand.stop = lambda: None  # runner nodes stop on SIGINT

    def cleanup() -> None:
        pub.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        if importlib.util.find_spec("pipeline.transport.shm") is not None:
            from pipeline.transport.shm import remove_segments
            remove_segments(run_dir)

    cand.cleanup.append(cleanup)
    return cand


def start_pyzmq(tmp: Path, cap: int, ctx: zmq.Context) -> Candidate:
    results = Results(tmp / "pyzmq.res", cap)
    data, ctl = f"ipc://{tmp}/pyzmq.sock", f"ipc://{tmp}/pyzmq.ctl"
    trig, stop, sock = _raw_trigger(ctx, ctl)
    sizes = ",".join(map(str, SIZES))
    cand = Candidate("pyzmq", results, trigger=trig, stop=stop)
    cand.procs = [_spawn([PY, PEERS, "pyzmq-recv", data, str(tmp / "pyzmq.res")], tmp / "pyzmq.recv.log"),
                  _spawn([PY, PEERS, "pyzmq-send", ctl, data, sizes], tmp / "pyzmq.send.log")]
    cand.cleanup.append(lambda: sock.close(0))
    return cand


def start_zenoh(tmp: Path, cap: int, ctx: zmq.Context) -> Candidate:
    results = Results(tmp / "zenoh.res", cap)
    endpoint, ctl = f"tcp/127.0.0.1:{free_tcp_port()}", f"ipc://{tmp}/zenoh.ctl"
    trig, stop, sock = _raw_trigger(ctx, ctl)
    sizes = ",".join(map(str, SIZES))
    res = str(tmp / "zenoh.res")

    def stop_zenoh() -> None:
        stop()
        Path(res + ".stop").touch()  # the receiver only waits; this tells it the run is over

    cand = Candidate("zenoh", results, trigger=trig, stop=stop_zenoh)
    cand.procs = [_spawn([PY, PEERS, "zenoh-recv", endpoint, res], tmp / "zenoh.recv.log"),
                  _spawn([PY, PEERS, "zenoh-send", ctl, endpoint, sizes], tmp / "zenoh.send.log")]
    cand.cleanup.append(lambda: sock.close(0))
    return cand


def start_dora(tmp: Path, cap: int, ctx: zmq.Context) -> Candidate:
    results = Results(tmp / "dora.res", cap)
    ctl = f"ipc://{tmp}/dora.ctl"
    trig, stop, sock = _raw_trigger(ctx, ctl)
    sizes = ",".join(map(str, SIZES))
    flow = tmp / "dora-flow.yml"
    flow.write_text(
        "nodes:\n"
        "  - id: src\n"
        f"    path: {PY}\n"
        f"    args: {PEERS} dora-send {ctl} {sizes}\n"
        "    outputs: [frame]\n"
        "  - id: dst\n"
        f"    path: {PY}\n"
        f"    args: {PEERS} dora-recv {tmp / 'dora.res'}\n"
        "    inputs: {frame: src/frame}\n")
    dora = shutil.which("dora") or str(Path(PY).parent / "dora")
    cand = Candidate("dora", results, trigger=trig, stop=stop)
    cand.procs = [_spawn([dora, "run", str(flow)], tmp / "dora.log")]
    cand.cleanup.append(lambda: sock.close(0))
    return cand


def _wait_ready(cands: list[Candidate], deadline_s: float) -> list[Candidate]:
    """Send small probes until each candidate's receiver has seen one; drop those that never do."""
    end = time.monotonic() + deadline_s
    pending = list(cands)
    while pending and time.monotonic() < end:
        for c in pending:
            c.trigger(0)
        time.sleep(0.05)
        for c in list(pending):
            if c.results.count > 0:
                pending.remove(c)
            elif any(p.poll() is not None for p in c.procs):
                c.note = "exited during start-up"
                pending.remove(c)
    for c in pending:
        c.note = c.note or f"not ready after {deadline_s:g} s"
    time.sleep(0.1)  # let the last probes land before the measurement starts
    ready = [c for c in cands if not c.note]
    for c in ready:
        c.start_index = c.results.count
    return ready


def _stop_all(cands: list[Candidate]) -> None:
    for c in cands:
        with contextlib.suppress(Exception):  # best effort: the processes are signalled below anyway
            c.stop()
    procs = [p for c in cands for p in c.procs]
    for sig, wait_s in ((signal.SIGINT, 3.0), (signal.SIGKILL, 2.0)):
        deadline = time.monotonic() + wait_s
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
    for c in cands:
        for fn in c.cleanup:
            fn()


def _stats(lat_ns: np.ndarray) -> tuple[float | None, float | None, int]:
    lat = lat_ns[WARMUP:]
    if len(lat) == 0:
        return None, None, 0
    p50, p99 = np.percentile(lat, [50, 99]) / 1e3
    return round(float(p50), 1), round(float(p99), 1), len(lat)


def run(n: int, only: set[str] | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dc-bench-"))
    ctx = zmq.Context()
    cap = n * len(SIZES) + 5000
    cands: list[Candidate] = []
    skipped: dict[str, str] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    try:
        if want("drivecast"):
            cands.append(start_drivecast("drivecast", tmp, cap, ctx, "off"))
        if want("shm"):
            if importlib.util.find_spec("pipeline.transport.shm") is not None:
                cands.append(start_drivecast("shm", tmp, cap, ctx, "on"))
                if want("loan"):
                    cands.append(start_drivecast("loan", tmp, cap, ctx, "on", loan=True))
            else:
                skipped["shm"] = "pipeline.transport.shm not present"
        if want("pyzmq"):
            cands.append(start_pyzmq(tmp, cap, ctx))
        if want("dora"):
            if importlib.util.find_spec("dora") is not None:
                cands.append(start_dora(tmp, cap, ctx))
            else:
                skipped["dora"] = "dora-rs not installed"
        if want("zenoh"):
            if importlib.util.find_spec("zenoh") is not None:
                cands.append(start_zenoh(tmp, cap, ctx))
            else:
                skipped["zenoh"] = "eclipse-zenoh not installed"
        ready = _wait_ready(cands, 20.0)
        for c in cands:
            if c.note:
                skipped[c.name] = c.note
        t0 = time.monotonic()
        for si, size in enumerate(SIZES):
            gap = _gap_s(size)
            for k in range(n + WARMUP):
                rot = k % len(ready)
                for c in ready[rot:] + ready[:rot]:
                    c.trigger(si)
                    time.sleep(gap)
        # wait (with a deadline) for the last messages to land
        end = time.monotonic() + 3.0
        expected = (n + WARMUP) * len(SIZES)
        while time.monotonic() < end and any(c.results.count - c.start_index < expected for c in ready):
            time.sleep(0.01)
        wall = time.monotonic() - t0
        data = {c.name: c.results.entries()[c.start_index:] for c in ready}
    finally:
        _stop_all(cands)
        ctx.term()
        logs = {p.name: p.read_text(errors="replace")[-2000:] for p in tmp.glob("*.log")}
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)

    results = []
    for size in SIZES:
        row: dict[str, Any] = {"size_bytes": size, "label": LABELS[size]}
        for name in NAMES:
            if name in data:
                e = data[name]
                p50, p99, cnt = _stats(e[e[:, 1] == size][:, 0])
                row.update({f"{name}_p50_us": p50, f"{name}_p99_us": p99, f"{name}_n": cnt,
                            f"{name}_lost": n + WARMUP - int((e[:, 1] == size).sum())})
            else:
                row.update({f"{name}_p50_us": None, f"{name}_p99_us": None})
        for name in ("drivecast", "shm", "loan", "dora", "zenoh"):
            a, b = row.get(f"{name}_p50_us"), row.get("pyzmq_p50_us")
            key = "ratio_p50" if name == "drivecast" else f"{name}_ratio_p50"
            row[key] = round(a / b, 3) if a is not None and b else None
        results.append(row)
    ratios = [r["ratio_p50"] for r in results if r["ratio_p50"] is not None]
    big = next(r for r in results if r["size_bytes"] == SIZES[-1])
    return {
        "bench": "transport", "n_per_size": n, "wall_s": round(wall, 1), "cpus": os.cpu_count(),
        "method": "one-way, CLOCK_MONOTONIC stamp before send -> after the array is in hand; interleaved",
        "results": results,
        "worst_ratio_p50": max(ratios) if ratios else None,
        "shm_2p7mib_p50_us": big.get("shm_p50_us"),
        "shm_loan_2p7mib_p50_us": big.get("loan_p50_us"),
        "dora_2p7mib_p50_us": big.get("dora_p50_us"),
        "zenoh_2p7mib_p50_us": big.get("zenoh_p50_us"),
        "skipped": skipped,
        "bars": {"worst_ratio_p50_max": 1.3, "shm_2p7mib_p50_us_max": 400},
        "logs_on_failure": {k: v for k, v in logs.items() if "Traceback" in v or "Error" in v},
    }


def _fmt(v: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.0f}"


def print_table(out: dict[str, Any]) -> None:
    names = NAMES
    print(f"one-way latency, us (p50 / p99), {out['n_per_size']} messages per size and candidate, "
          f"interleaved, {out['cpus']} CPUs, {out['wall_s']} s")
    print(f"{'size':>8} " + " ".join(f"{n:>15}" for n in names) + f" {'dc/zmq':>7} {'shm/zmq':>8}")
    for r in out["results"]:
        cells = " ".join(f"{_fmt(r.get(f'{n}_p50_us'), 6)} /{_fmt(r.get(f'{n}_p99_us'), 7)}" for n in names)
        ratio = "-" if r["ratio_p50"] is None else f"{r['ratio_p50']:.2f}"
        sratio = "-" if r.get("shm_ratio_p50") is None else f"{r['shm_ratio_p50']:.2f}"
        print(f"{r['label']:>8} {cells} {ratio:>7} {sratio:>8}")
    w = out["worst_ratio_p50"]
    print(f"worst_ratio_p50 = {w} (bar <= 1.3: {'PASS' if w is not None and w <= 1.3 else 'FAIL'})")
    shm, dora, loan = out["shm_2p7mib_p50_us"], out["dora_2p7mib_p50_us"], out["shm_loan_2p7mib_p50_us"]
    if shm is not None:
        ok = shm <= 400 and (dora is None or shm < dora)
        print(f"shm_2p7mib_p50_us = {shm}, dora_2p7mib_p50_us = {dora} "
              f"(bar <= 400 and below dora: {'PASS' if ok else 'FAIL'}); with a loaned frame: {loan}")
    for name, why in out["skipped"].items():
        print(f"skipped {name}: {why}")
    lost = {(r["label"], n): r[f"{n}_lost"] for r in out["results"] for n in names if r.get(f"{n}_lost")}
    if lost:
        print("messages lost (not received): " + ", ".join(f"{k[1]} {k[0]}: {v}" for k, v in lost.items()))
    for name, text in out["logs_on_failure"].items():
        print(f"--- {name} (tail) ---\n{text}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages (under 60 s in all)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--n", type=int, default=None, help="messages per size and candidate")
    ap.add_argument("--only", default="", help="comma-separated candidates (default: all available)")
    args = ap.parse_args(argv)
    n = args.n or (250 if args.quick else 1000)
    out = run(n, set(args.only.split(",")) if args.only else None)
    print_table(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

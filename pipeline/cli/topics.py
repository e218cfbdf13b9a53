"""`drivecast graph FILE` and `drivecast topic list|echo|hz|bw`: look inside graphs.

`topic` attaches to a running graph from another shell: it finds the graph's manifest in the run
directory (the newest live one, or `--run` NAME_OR_DIR) and subscribes to a topic's lossy endpoint,
so watching never slows the graph down.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import zmq

from pipeline.errors import ConfigError, DecodeError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.rundir import Manifest, find_run, tool_client
from pipeline.runtime.signals import StopSignals
from pipeline.wire.codec import decode
from pipeline.wire.messages import Message

__all__ = ["format_message", "graph_main", "topic_main"]


def graph_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast graph", description="Print the nodes, topics and edges of a launch file.")
    ap.add_argument("file")
    args = ap.parse_args(argv)
    try:
        g = load_graph(args.file)
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(f"graph {g.name!r} ({g.path}): {len(g.nodes)} nodes, {len(g.topics)} topics")
    print("nodes:")
    for name, n in g.nodes.items():
        flags = [f for f, on in (("required", n.required), (f"respawn<={n.respawn_max}", n.respawn_max)) if on]
        print(f"  {name}: {n.run}" + (f" [{', '.join(flags)}]" if flags else ""))
    print("topics:")
    for topic, schema in g.topics.items():
        subs = ", ".join(f"{n}.{i}" for n, i in g.subscribers.get(topic, [])) or "-"
        print(f"  {topic} ({schema.SCHEMA}) -> {subs}")
    for topic, schema in g.external.items():
        subs = ", ".join(f"{n}.{i}" for n, i in g.subscribers.get(topic, [])) or "-"
        print(f"  {topic} ({schema.SCHEMA}, external: fed by `drivecast play`) -> {subs}")
    print("edges:")
    for name, n in g.nodes.items():
        for inp, spec in n.inputs.items():
            depth = f"({spec.depth})" if spec.queue == "drop_oldest" else ""
            print(f"  {spec.topic} -> {name}.{inp} [{spec.queue}{depth}]")
    return 0


def format_message(msg: Message, max_items: int = 4) -> str:
    lines = [f"{type(msg).SCHEMA} seq={msg.seq} stamp_ns={msg.stamp_ns} frame_id={msg.frame_id!r}"]
    for name in type(msg).SCALARS:
        if name not in ("seq", "stamp_ns", "frame_id"):
            lines.append(f"  {name}: {getattr(msg, name)!r}")
    for name in type(msg).ARRAYS:
        a = getattr(msg, name)
        with np.printoptions(precision=3, suppress=True, threshold=max_items * 2, edgeitems=2):
            body = np.array2string(a[:max_items], separator=", ").replace("\n", " ")
        more = " ..." if len(a) > max_items else ""
        lines.append(f"  {name}: {a.dtype}{list(a.shape)} {body}{more}")
    return "\n".join(lines)


class _Watch:
    def __init__(self, manifest: Manifest, topic: str) -> None:
        topics = manifest.topics
        if topic not in topics:
            raise ConfigError(f"graph {manifest.name!r} has no topic {topic!r} (topics: {', '.join(sorted(topics))})")
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())  # the plain variant (not shared memory)
        configure = tool_client(manifest)
        if configure is not None:
            configure(self.sock, topic)
        self.sock.connect(topics[topic].endpoint)
        self.stop = StopSignals()

    def recv(self, timeout_s: float) -> list[zmq.Frame] | None:
        if self.sock.poll(int(timeout_s * 1000)):
            return self.sock.recv_multipart(copy=False)
        return None

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
        self.stop.restore()


def topic_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast topic", description="Inspect topics of a running graph.")
    run_help = "graph name or run directory (default: the newest running graph)"
    ap.add_argument("--run", default=None, help=run_help)
    sub = ap.add_subparsers(dest="cmd", required=True)
    # --run is accepted after the subcommand too (`topic list --run demo`); SUPPRESS keeps the first one given.
    sub.add_parser("list", help="topics with schema, publisher and subscribers").add_argument(
        "--run", default=argparse.SUPPRESS, help=run_help)
    for name, help_ in (("echo", "print messages"), ("hz", "print the publishing rate"), ("bw", "print the bandwidth")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--run", default=argparse.SUPPRESS, help=run_help)
        p.add_argument("topic")
        p.add_argument("-n", type=int, default=0, help="stop after N messages (echo) or N reports (hz, bw)")
        p.add_argument("--window", type=float, default=1.0, help="seconds per report (hz, bw)")
        p.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds without a message")
    args = ap.parse_args(argv)
    try:
        manifest = find_run(args.run)
        if args.cmd == "list":
            return _list(manifest)
        watch = _Watch(manifest, args.topic)
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    try:
        rc = {"echo": _echo, "hz": _hz, "bw": _hz}[args.cmd](watch, args)
    finally:
        watch.close()
    # Stopped by Ctrl-C or SIGTERM, exit as `drivecast launch` does (130, 143), not as a finished -n.
    return 128 + watch.stop.signum if watch.stop.signum is not None else rc


def _list(manifest: Manifest) -> int:
    subs: dict[str, list[str]] = {}
    for node, entry in manifest.nodes.items():
        for inp, spec in entry.inputs.items():
            subs.setdefault(spec.topic, []).append(f"{node}.{inp}[{spec.queue}]")
    print(f"graph {manifest.name!r} (run directory {manifest.run_dir})")
    for topic, t in sorted(manifest.topics.items()):
        source = "  (external: fed by `drivecast play`)" if t.external else ""
        print(f"{topic}  {t.schema}{source}  -> {', '.join(subs.get(topic, [])) or '-'}")
    return 0


def _echo(watch: _Watch, args: argparse.Namespace) -> int:
    count = 0
    while not watch.stop():
        frames = watch.recv(args.timeout or 0.2)
        if frames is None:
            if args.timeout:
                print(f"ERROR: no message on {args.topic} within {args.timeout:g} s", file=sys.stderr)
                return 1
            continue
        try:
            msg, _ = decode(frames[1:])
        except DecodeError as exc:
            print(f"(undecodable message: {exc})")
            continue
        print(format_message(msg), flush=True)
        print("---", flush=True)
        count += 1
        if args.n and count >= args.n:
            break
    return 0


def _hz(watch: _Watch, args: argparse.Namespace) -> int:
    reports = 0
    stamps: list[float] = []
    sizes: list[int] = []
    window_end = time.monotonic() + args.window
    last_msg = time.monotonic()
    while not watch.stop():
        frames = watch.recv(0.05)
        now = time.monotonic()
        if frames is not None:
            stamps.append(now)
            sizes.append(sum(len(f.buffer) for f in frames))
            last_msg = now
        elif args.timeout and now - last_msg > args.timeout:
            print(f"ERROR: no message on {args.topic} within {args.timeout:g} s", file=sys.stderr)
            return 1
        if now < window_end:
            continue
        window_end = now + args.window
        if args.cmd == "hz":
            if len(stamps) >= 2:
                dt = np.diff(stamps)
                print(f"average rate: {1 / dt.mean():.3f} Hz  min: {dt.min():.4f}s max: {dt.max():.4f}s "
                      f"std dev: {dt.std():.5f}s window: {args.window:g} s, {len(stamps)} messages", flush=True)
            else:
                print("no new messages", flush=True)
        else:
            total = sum(sizes)
            mean = total / len(sizes) if sizes else 0
            print(f"{total / args.window / 1024:.2f} KiB/s from {len(sizes)} messages "
                  f"mean: {mean / 1024:.2f} KiB max: {max(sizes, default=0) / 1024:.2f} KiB", flush=True)
        stamps, sizes = stamps[-1:] if args.cmd == "hz" else [], []
        reports += 1
        if args.n and reports >= args.n:
            break
    return 0

"""`drivecast launch FILE`: run a validated graph, one process per node, and supervise it.

- The graph is validated before anything starts (`pipeline.runtime.graph`); an error exits with code 2.
- A run directory (mode 0700) holds the ipc sockets, each node's state directory and
  `manifest.json` (nodes, topics, endpoints, pids) that `drivecast topic ...` attaches to.
- Each node's output lines are printed prefixed with `[node]`.
- `--without NODE` leaves a node out; the topics it published that others subscribe to become
  external (see `pipeline.runtime.graph`): their endpoints wait in the run directory for
  `drivecast play FILE` in another shell, which binds them and feeds the running graph.
- A node that fails (non-zero exit, or killed) is respawned after `backoff_s * 2**k` (capped at
  30 s) up to `respawn.max` times, except for exit code 2 (bad configuration: a respawn would not
  help); a `required` node that exits ends the graph.
- A graph that ends (duration, required node finished) drains: nodes with lossless (`block`) inputs
  finish their queues and stop on their publishers' end of stream, so nothing is lost at the end.
- `--lockstep` runs the graph in this process on a simulated clock instead, as fast as it goes and
  deterministically (`pipeline.runtime.lockstep_launch`).
- Ctrl-C / SIGTERM / `--duration`: SIGINT to every node, SIGTERM to those left after 2 s, SIGKILL
  after 3.5 s; everything is gone within 5 s. That holds during start-up too: a stop while the file
  loads exits at once (nothing runs yet), one while nodes start ends the start-up before the next node
  and stops those already started.

Exit codes: 0 the graph ran to its end (duration, or its required node / all nodes finished
cleanly); 1 a node failed for good (a required node failed, or respawns ran out); 2 the launch file
or a command-line value is wrong; 130 interrupted (SIGINT); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import ConfigError
from pipeline.runtime.graph import Graph, load_graph, parse_set
from pipeline.runtime.rundir import (
    InputEntry,
    Manifest,
    NodeEntry,
    ShmOptions,
    TopicEntry,
    make_run_dir,
    write_manifest,
)
from pipeline.runtime.signals import STOP_SIGNALS, StopSignals
from pipeline.transport.curve import generate_keys
from pipeline.transport.endpoints import free_tcp_port, ipc_endpoint
from pipeline.transport.shm import remove_segments

__all__ = ["Supervisor", "build_manifest", "main"]

STOP_SIGINT_S = 2.0
DRAIN_S = 10.0  # at a graph's end, how long nodes with lossless inputs may take to finish their queues
STOP_SIGTERM_S = 1.5
MAX_BACKOFF_S = 30.0


def build_manifest(graph: Graph, run_dir: Path) -> Manifest:
    topics: dict[str, TopicEntry] = {}
    next_port = {m: base for m, (_, base) in graph.machines.items()}
    # External topics come last, so that the node topics' ports are those of the file without them;
    # one lives on its first subscriber's machine, where `drivecast play` runs.
    published = [(t, s, graph.nodes[t.split("/", 1)[0]].machine) for t, s in graph.topics.items()]
    external = [(t, s, graph.nodes[graph.subscribers[t][0][0]].machine if graph.subscribers.get(t) else "")
                for t, s in graph.external.items()]
    for topic, schema, machine in published + external:
        lossless = graph.lossless_subscribers(topic)
        if graph.machines:
            # Deterministic ports: each machine's launcher computes the same endpoints from the file.
            host, port = graph.machines[machine][0], next_port[machine]
            next_port[machine] += 2
            endpoint = f"tcp://{host}:{port}"
            lossless_ep = f"tcp://{host}:{port + 1}" if lossless else None
        elif graph.transport == "tcp" and graph.tcp_base_port:
            port = graph.tcp_base_port + 2 * len(topics)  # the user's ports, two per topic
            endpoint = f"tcp://{graph.tcp_host}:{port}"
            lossless_ep = f"tcp://{graph.tcp_host}:{port + 1}" if lossless else None
        elif graph.transport == "tcp":
            endpoint = f"tcp://{graph.tcp_host}:{free_tcp_port(graph.tcp_host)}"
            lossless_ep = f"tcp://{graph.tcp_host}:{free_tcp_port(graph.tcp_host)}" if lossless else None
        else:
            endpoint = ipc_endpoint(run_dir, topic)
            lossless_ep = ipc_endpoint(run_dir, topic, lossless=True) if lossless else None
        is_external = topic in graph.external
        topics[topic] = TopicEntry(schema=schema.SCHEMA, publisher="" if is_external else topic.split("/", 1)[0],
                                   endpoint=endpoint, lossless_endpoint=lossless_ep, lossless_subscribers=lossless,
                                   machine=machine, shm=_shm_options(graph, topic), external=is_external)
    nodes = {
        name: NodeEntry(run=n.run, params=n.raw_params, required=n.required, machine=n.machine,
                        inputs={i: InputEntry(s.topic, s.queue, s.depth, s.max_mb) for i, s in n.inputs.items()})
        for name, n in graph.nodes.items()
    }
    security = graph.keys_dir or None
    if graph.run_keys:  # tcp on one machine: CURVE with a key pair of this run, in its 0700 directory
        generate_keys(run_dir / "keys", ["default"])
        security = str(run_dir / "keys")
    return Manifest(name=graph.name, file=graph.path, run_dir=str(run_dir), launcher_pid=os.getpid(),
                    started_ns=time.time_ns(), clock=graph.clock, security=security, topics=topics, nodes=nodes)


def _shm_options(graph: Graph, topic: str) -> ShmOptions:
    """Publisher/Subscriber keywords of a topic; the ring outlasts the deepest local queue."""
    opt = graph.topic_options.get(topic)
    depth = max((graph.nodes[n].inputs[i].depth for n, i in graph.subscribers.get(topic, [])
                 if graph.nodes[n].inputs[i].queue == "drop_oldest"), default=1)
    slots = opt.shm_slots if opt is not None and opt.shm_slots else min(62, max(4, depth + 2))
    mode = "auto" if opt is None or opt.shm == "auto" else ("on" if opt.shm else "off")
    return ShmOptions(shm=mode, shm_threshold=opt.shm_threshold if opt is not None else 65536, shm_slots=slots)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    respawn_at: float | None = None
    done: bool = False
    failed: bool = False


class Supervisor:
    """Starts, watches, respawns and stops the node processes of one graph."""

    def __init__(self, graph: Graph, run_dir: Path, out: IO[str] | None = None, machine: str | None = None) -> None:
        """`machine`: run only that machine's nodes (a graph split over hosts); None runs all."""
        self.graph = graph
        self.run_dir = run_dir
        self.out = out or sys.stdout
        self.manifest = build_manifest(graph, run_dir)
        self.manifest.machine = machine or ""
        self.children = {name: _Child(name) for name, n in graph.nodes.items()
                         if machine is None or n.machine == machine}
        self._lock = threading.Lock()
        self._signals: StopSignals | None = None
        self._readers: list[threading.Thread] = []

    def say(self, text: str, node: str = "launch") -> None:
        with self._lock:
            self.out.write(f"[{node}] {text}\n")
            self.out.flush()

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(raw.decode(errors="replace").rstrip("\n"), name)
        stream.close()

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.manifest.nodes[child.name].restarts = child.restarts
        write_manifest(self.run_dir, self.manifest)
        # The node starts with SIGINT and SIGTERM blocked (a child inherits the mask): a stop that comes
        # while it still imports stays pending until its StopSignals handler takes it, instead of a
        # KeyboardInterrupt traceback from the middle of an import.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.runtime.runner", str(self.run_dir), child.name],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.respawn_at = None
        self.manifest.nodes[child.name].pid = child.proc.pid
        write_manifest(self.run_dir, self.manifest)
        assert child.proc.stdout is not None
        t = threading.Thread(target=self._pump, args=(child.name, child.proc.stdout), daemon=True)
        t.start()
        self._readers.append(t)

    def run(self, duration_s: float | None = None, signals: StopSignals | None = None) -> int:
        """Run until the duration passes, a signal arrives or the graph ends; return the exit code.
        `signals`: the caller's, installed before the graph loaded (then the caller restores them)."""
        own = signals is None
        self._signals = signals = signals or StopSignals()
        rc = 0
        try:
            self.say(f"graph {self.graph.name!r}: {len(self.children)} nodes, run directory {self.run_dir}")
            if self.graph.external:
                self.say(f"waiting for {', '.join(sorted(self.graph.external))} from outside: "
                         f"feed them with `drivecast play FILE` (--remap FROM:=TO)")
            for started, child in enumerate(self.children.values()):
                if signals():  # a stop during start-up starts no further node
                    self.say(f"start-up interrupted after {started} of {len(self.children)} nodes")
                    break
                self._spawn(child)
            end = None if duration_s is None else time.monotonic() + duration_s
            while True:
                if signals.signum is not None:
                    rc = 128 + signals.signum
                    self.say(f"{signal.Signals(signals.signum).name}: stopping the graph")
                    break
                if end is not None and time.monotonic() >= end:
                    self.say(f"duration of {duration_s:g} s reached: stopping the graph")
                    self._drain()
                    break
                outcome = self._watch()
                if outcome is not None:
                    rc = outcome
                    if rc == 0:
                        self._drain()
                    break
                time.sleep(0.05)  # supervision tick, not synchronisation
        finally:
            self.stop()
            if own:
                signals.restore()
        if rc == 0 and any(c.failed for c in self.children.values()):
            rc = 1
        self.say(f"exit code {rc}")
        return rc

    def _watch(self) -> int | None:
        """Handle exited children; return an exit code when the graph must end."""
        now = time.monotonic()
        for child in self.children.values():
            spec = self.graph.nodes[child.name]
            if child.respawn_at is not None and now >= child.respawn_at:
                self.say(f"respawning {child.name} (restart {child.restarts}/{spec.respawn_max})")
                self._spawn(child)
                continue
            if child.done or child.proc is None or child.respawn_at is not None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            if code == 0:
                child.done = True
                self.say(f"{child.name} finished")
                if spec.required:
                    self.say(f"required node {child.name} finished: ending the graph")
                    return 0
            else:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                if code == 2:
                    how += " (a configuration error: not respawned)"
                if child.restarts < spec.respawn_max and code != 2:
                    delay = min(MAX_BACKOFF_S, spec.respawn_backoff_s * 2 ** child.restarts)
                    child.restarts += 1
                    child.respawn_at = now + delay
                    self.say(f"{child.name} {how}; respawn in {delay:.2f} s")
                else:
                    child.done = child.failed = True
                    extra = f" after {child.restarts} restarts" if spec.respawn_max else ""
                    self.say(f"{child.name} {how}{extra}; giving up on it")
                    if spec.required:
                        self.say(f"required node {child.name} failed: ending the graph")
                        return 1
        if all(c.done for c in self.children.values()):
            self.say("all nodes have exited")
            return 0
        return None

    def _drain(self) -> None:
        """A graph that ends (duration, required node finished) first stops every node without
        lossless inputs; the others finish their queues and stop on their publishers' end of
        stream (pipeline.runtime.runner), in a cascade, so `block` mode loses nothing at the end either.
        Nodes still running after DRAIN_S are stopped as usual."""
        lossless = {n for n, spec in self.graph.nodes.items() if any(i.queue == "block" for i in spec.inputs.values())}
        running = {n: c.proc for n, c in self.children.items() if c.proc is not None and c.proc.poll() is None}
        waiting = [p for n, p in running.items() if n in lossless]
        if not waiting:
            return
        for n, p in running.items():
            if n not in lossless:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + DRAIN_S
        while any(p.poll() is None for p in waiting):
            if self._signals is not None and self._signals():  # Ctrl-C while draining: stop now, as always
                return
            if time.monotonic() > deadline:
                self.say(f"nodes with lossless inputs still busy after {DRAIN_S:g} s: stopping them")
                return
            time.sleep(0.05)  # supervision tick

    def stop(self) -> None:
        """SIGINT, then SIGTERM, then SIGKILL: every node is gone within 5 s."""
        procs = [c.proc for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for sig, wait_s in ((signal.SIGINT, STOP_SIGINT_S), (signal.SIGTERM, STOP_SIGTERM_S), (signal.SIGKILL, 1.0)):
            procs = [p for p in procs if p.poll() is None]
            if not procs:
                break
            if sig != signal.SIGINT:
                self.say(f"{len(procs)} node(s) still running: {sig.name}")
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
            deadline = time.monotonic() + wait_s
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
        for t in self._readers:
            t.join(timeout=1.0)
        remove_segments(self.run_dir)  # shared memory of nodes that died by kill -9 (or were killed now)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast launch", description="Run a node graph from a launch file.")
    ap.add_argument("file", help="launch file (YAML)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a node parameter (value parsed as YAML); repeatable")
    ap.add_argument("--machine", default=None, help="run only this machine's nodes (see machines: in the file)")
    ap.add_argument("--without", action="append", default=[], metavar="NODE",
                    help="leave this node out; the topics it published are fed by `drivecast play` (repeatable)")
    ap.add_argument("--lockstep", action="store_true",
                    help="run every node in this process on a simulated clock, as fast as it goes, deterministically "
                         "(--duration in simulated seconds)")
    args = ap.parse_args(argv)
    loading = True

    def before_start(signum: int) -> None:
        if loading:  # nothing runs yet, and importing the nodes' modules may take seconds: leave now
            print(f"[launch] {signal.Signals(signum).name} while loading {args.file}: exit", flush=True)
            raise SystemExit(128 + signum)

    signals = StopSignals(on_stop=before_start)
    try:
        try:
            if args.duration is not None and args.duration <= 0:
                raise ConfigError(f"--duration: expected a positive number of seconds, got {args.duration:g}")
            graph = load_graph(args.file, parse_set(args.sets), without=args.without)
            if args.lockstep and args.machine is not None:
                raise ConfigError("--lockstep runs every node in one process: it takes no --machine")
            if args.machine is not None and args.machine not in graph.machines:
                raise ConfigError(f"--machine {args.machine!r}: {args.file} has machines "
                                  f"{', '.join(graph.machines) or '(none)'}")
            loading = False  # from here a stop is a flag: Supervisor.run stops before starting any node
            if args.lockstep:
                from pipeline.runtime.lockstep_launch import run_lockstep

                rc = run_lockstep(graph, args.duration, signals, sys.stdout)
                return 128 + signals.signum if signals.signum is not None else rc
            run_dir = make_run_dir(f"{graph.name}.{args.machine}" if args.machine else graph.name)
        except ConfigError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
        return Supervisor(graph, run_dir, machine=args.machine).run(args.duration, signals)
    finally:
        signals.restore()

"""Feed a running graph's external topics: `drivecast play` into a graph launched `--without` its source.

An external topic (`pipeline.runtime.graph`) has endpoints in the graph's run directory that its
subscribers already connect to; the player binds a Publisher there with the manifest's options
(ZeroMQ lets a bind follow the connects), so every subscriber gets the replay through its own
queue policy and `drivecast record` of the graph records it too. Before the first message the
player waits until the graph's lossy subscribers are connected and its `block` ones subscribed:
a lossy subscriber misses what is sent before it subscribes (ZeroMQ's slow joiner). One player
feeds a topic at a time (a lock file in the run directory): a second bind would take the endpoint
from the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline.errors import ConfigError
from pipeline.recordings.base import RecordingInfo
from pipeline.recordings.schedule import PlayOptions
from pipeline.runtime.rundir import Manifest, find_run, live_runs, pid_alive
from pipeline.transport.curve import Curve
from pipeline.transport.endpoints import default_hwm
from pipeline.transport.publisher import DRAIN_S, JOIN_S, Publisher
from pipeline.wire.messages import SCHEMAS

__all__ = ["Feed", "FeedPlan", "plan_feed", "target_graph"]

JOIN_LOSSY_S = 10.0  # longest the player waits for a graph's lossy subscribers before it starts anyway


def target_graph(which: str | None) -> Manifest | None:
    """The running graph to feed: `which` (a name or run directory; it must have external topics),
    else the newest running graph that has any; None when there is none (play stands alone)."""
    if which is not None:
        m = find_run(which)
        if not any(t.external for t in m.topics.values()):
            raise ConfigError(f"--run {which}: graph {m.name!r} has no external topic to feed (launch it "
                              "--without its source node, or mark an input's topic `topics: {T: {external: true}}`)")
        return m
    live = [m for m in live_runs() if any(t.external for t in m.topics.values())]
    return max(live, key=lambda m: m.started_ns) if live else None


@dataclass
class FeedPlan:
    topics: dict[str, str]  # recorded topic -> the graph's external topic it is played on
    unused: list[str]       # recorded topics (remapped) that the graph does not take: not played
    missing: list[str]      # external topics of the graph that nothing in the recording feeds
    clock: str = ""         # the graph's external clock topic: the replay publishes its time there


def plan_feed(graph: Manifest, info: RecordingInfo, opts: PlayOptions, file: str) -> FeedPlan:
    """Which recorded topics go to which external topic; ConfigError if a schema differs or none fits."""
    external = {t: e for t, e in graph.topics.items() if e.external}
    chosen = [t for t in info.topics if t.converted and (opts.topics is None or t.name in opts.topics)]
    played: dict[str, str] = {}
    unused: list[str] = []
    for t in chosen:
        name = opts.remap.get(t.name, t.name)
        entry = external.get(name)
        if entry is None:
            unused.append(name)
            continue
        if t.schema != entry.schema:
            how = f" (played as {name!r})" if name != t.name else ""
            raise ConfigError(f"{file}: topic {t.name!r}{how}: graph {graph.name!r} expects {entry.schema} on "
                              f"{name!r}, the recording has {t.schema}")
        played[t.name] = name
    clock = graph.clock if graph.clock in external else ""  # the graph follows the replayed time
    if not played:
        waits = ", ".join(f"{t} ({e.schema})" for t, e in sorted(external.items()) if t != clock)
        has = ", ".join(f"{t.name} ({t.schema})" for t in chosen) or "none that converts"
        taken = [f"{t} is published by the graph's node {graph.topics[t].publisher!r}" for t in unused
                 if t in graph.topics and not graph.topics[t].external]
        raise ConfigError(f"{file}: no recorded topic is one that graph {graph.name!r} waits for (it waits for "
                          f"{waits}; the recording has {has}{''.join('; ' + x for x in taken)}); "
                          "map one with --remap FROM:=TO")
    missing = sorted(set(external) - set(played.values()) - {clock})
    if opts.clock_hz and not clock:
        unused.append(opts.clock_topic)
    return FeedPlan(played, unused, missing, clock)


def _lock(run_dir: Path, graph: str, topic: str) -> int:
    """An exclusive lock on feeding `topic` (released when this process ends, however it ends)."""
    path = run_dir / (topic.replace("/", ".") + ".play.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"topic {topic!r} of graph {graph!r} is already fed by another `drivecast play` "
                          f"(pid {pid})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Feed:
    """Publishers bound at a running graph's external endpoints, one per topic to play."""

    def __init__(self, graph: Manifest, topics: Iterable[str], wait_for: int = 0) -> None:
        """`wait_for`: lossless subscribers per topic to wait for (default: the graph's `block` inputs)."""
        self.graph = graph
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pubs: dict[str, Publisher] = {}
        self._monitors: dict[str, tuple[zmq.Socket[Any], int]] = {}
        self._locks: list[int] = []
        self._socks: list[zmq.Socket[Any]] = []  # every socket made, closed even if a bind failed
        self._curve: Curve | None = None
        run_dir = Path(graph.run_dir)
        try:
            for topic in topics:
                self._locks.append(_lock(run_dir, graph.name, topic))
                self._bind(run_dir, topic, wait_for)
        except BaseException:
            self.close(drain=False)
            raise

    def _bind(self, run_dir: Path, topic: str, wait_for: int) -> None:
        e = self.graph.topics[topic]
        if self.graph.security and self._curve is None:
            self._curve = Curve(Path(self.graph.security), e.machine or "default")
            self._curve.start_authenticator(self.ctx)
        curve = self._curve
        socks: list[zmq.Socket[Any]] = []  # this topic's

        def configure(sock: zmq.Socket[Any]) -> None:  # before each bind: see who connects from the start
            if curve is not None:
                curve.make_server(sock)
            socks.append(sock)
            self._socks.append(sock)
            if len(socks) == 1:  # the lossy socket
                lossy = sum(1 for n in self.graph.nodes.values() for i in n.inputs.values()
                            if i.topic == topic and i.queue != "block")
                if topic == self.graph.clock:
                    lossy += len(self.graph.nodes)  # every node follows the clock (`latest`)
                self._monitors[topic] = (sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED), lossy)

        lossless = (wait_for or e.lossless_subscribers) if e.lossless_endpoint else 0
        self.pubs[topic] = Publisher(self.ctx, topic, e.endpoint, e.lossless_endpoint, lossless,
                                     sndhwm=default_hwm(SCHEMAS.get(e.schema), 1000),
                                     configure=configure, run_dir=run_dir, shm=e.shm.shm,
                                     shm_threshold=e.shm.shm_threshold, shm_slots=e.shm.shm_slots)

    def wait_for_subscribers(self, stopped: Callable[[], bool]) -> list[str]:
        """Wait until the graph's subscribers of every topic are there; return what did not come."""
        late = []
        for topic, (mon, expected) in self._monitors.items():
            pub = self.pubs[topic]
            end = time.monotonic() + JOIN_LOSSY_S
            joined = 0
            while joined < expected and time.monotonic() < end and not stopped():
                if mon.poll(50) and recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    joined += 1
            # A subscriber's subscription follows its handshake: wait until one is waiting on the socket.
            while expected and not pub.sock.poll(50, zmq.POLLIN) and time.monotonic() < end and not stopped():
                pass
            if joined < expected and not stopped():
                late.append(f"{topic}: {joined} of {expected} lossy subscribers connected")
            if pub.lossless is not None and not pub.wait_for_subscribers(JOIN_S, stopped) and not stopped():
                late.append(f"{topic}: not every lossless subscriber joined within {JOIN_S:g} s")
        return late

    def graph_alive(self) -> bool:
        return pid_alive(self.graph.launcher_pid)

    def send(self, topic: str, frames: list[Any], stopped: Callable[[], bool]) -> None:
        self.pubs[topic].send(frames, stopped)

    def close(self, drain: bool) -> None:
        """Close; with `drain`, lossless subscribers get up to DRAIN_S to take what is on its way.
        No end of stream is sent: the graph keeps running after the replay, as after `ros2 bag play`."""
        for topic, (mon, _) in self._monitors.items():
            if topic in self.pubs:
                with contextlib.suppress(zmq.ZMQError):
                    self.pubs[topic].sock.disable_monitor()
            mon.close(0)
        for pub in self.pubs.values():
            pub.close(DRAIN_S if drain else 0.0)
        for sock in self._socks:
            if not sock.closed:
                sock.close(0)
        if self._curve is not None:
            self._curve.stop()
        self.ctx.term()  # waits for the lossless sockets' linger: everything sent is delivered
        for fd in self._locks:
            os.close(fd)

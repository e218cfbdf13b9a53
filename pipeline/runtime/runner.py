"""Run one node in this process over ZeroMQ: what the launcher starts for every node.

`python -m pipeline.runtime.runner RUN_DIR NODE` reads `RUN_DIR/manifest.json` (written by the launcher),
builds the node, connects its inputs, binds its outputs and runs one loop: poll the inputs (sleep,
for a node without any) with a timeout up to the next timer, take each ready input's messages (its
`Subscriber` applies the queue policy), decode (a bad message is counted, logged once per kind and dropped), call `on_<input>`,
fire due timers, publish Diagnostics each second. SIGINT/SIGTERM end the loop; `shutdown()` runs;
the exit code is 0, or 2 for a configuration error (bad params, a model file gone since launch).
If the launcher dies, the node notices (its parent changes) and exits, so no orphan outlives its graph.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline.errors import ConfigError, DecodeError
from pipeline.runtime.config import convert
from pipeline.runtime.graph import resolve_class
from pipeline.runtime.node import Node
from pipeline.runtime.rundir import Manifest, TopicEntry, read_manifest
from pipeline.runtime.signals import StopSignals
from pipeline.runtime.stats import NodeStats
from pipeline.runtime.timers import Timers
from pipeline.transport.curve import Curve
from pipeline.transport.endpoints import default_hwm
from pipeline.transport.publisher import END_OF_STREAM, JOIN_S, Publisher
from pipeline.transport.subscriber import Source, Subscriber
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Clock, Diagnostics, Message

__all__ = ["ProcessRuntime", "main"]

DIAGNOSTICS_PERIOD_S = 1.0
_POLL_MAX_MS = 100
# A larger jump in an input's seq is not counted as lost messages: no queue or stall loses a million in
# a row, but one forged seq of 2**62 would make `gaps.<input>` read 4.6e18 for the rest of the run.
_MAX_SEQ_GAP = 1_000_000


class ProcessRuntime:
    """Delivers one node's messages over ZeroMQ, per the run manifest."""

    def __init__(self, manifest: Manifest, node_name: str, ctx: zmq.Context[Any] | None = None) -> None:
        self.manifest = manifest
        self.node_name = node_name
        entry = manifest.nodes[node_name]
        cls = resolve_class(entry.run)
        params = convert(entry.params, cls.Params, node_name, "params", strict=False)
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._stopping = False
        self.stop_reason = ""
        self.stats = NodeStats()
        self.timers = Timers()
        self._seq: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()
        self._clock_ns: int | None = None
        self._parent = os.getppid()

        self.curve: Curve | None = None
        if manifest.security:
            self.curve = Curve(Path(manifest.security), entry.machine or "default")
            self.curve.start_authenticator(self.ctx)
        serve = self.curve.make_server if self.curve else None
        run_dir = Path(manifest.run_dir)
        state_dir = run_dir / "state" / node_name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.publishers: dict[str, Publisher] = {}
        for out, out_cls in cls.all_outputs().items():
            t = manifest.topics[f"{node_name}/{out}"]
            self.publishers[out] = Publisher(self.ctx, f"{node_name}/{out}", t.endpoint, t.lossless_endpoint,
                                             t.lossless_subscribers, sndhwm=default_hwm(out_cls, 100),
                                             configure=serve, run_dir=run_dir,
                                             shm=t.shm.shm, shm_threshold=t.shm.shm_threshold,
                                             shm_slots=t.shm.shm_slots)
        # What to poll, each subscriber's sources (its socket, maybe a bell's pipe) to its input.
        self.inputs: dict[Source, tuple[str, type[Message], Subscriber]] = {}
        for inp, spec in entry.inputs.items():
            t = manifest.topics[spec.topic]
            endpoint = t.lossless_endpoint if spec.queue == "block" else t.endpoint
            if endpoint is None:
                raise ConfigError(f"{run_dir / 'manifest.json'}: topics.{spec.topic}: no lossless_endpoint for "
                                  f"the block input {node_name}.{inp}")
            sub = Subscriber(self.ctx, spec.topic, endpoint, spec.queue, spec.depth, configure=self._client(t),
                             shm=t.shm.shm, run_dir=run_dir, bell=True, max_bytes=int(spec.max_mb * 2**20),
                             rcvhwm=default_hwm(cls.inputs[inp], 1000))
            for source in sub.sources:
                self.inputs[source] = (inp, cls.inputs[inp], sub)
        self.clock_sub: Subscriber | None = None
        clock_topic = manifest.clock
        if clock_topic and not clock_topic.startswith(f"{node_name}/"):
            t = manifest.topics[clock_topic]
            self.clock_sub = Subscriber(self.ctx, clock_topic, t.endpoint, "latest", configure=self._client(t),
                                        shm=t.shm.shm, run_dir=run_dir)
            self._clock_ns = 0
        self.node: Node = cls(node_name, params, self, state_dir=state_dir,
                              is_restart=bool(entry.restarts))
        # Per-message work without string formatting or attribute lookups by name.
        self._in_key = {inp: f"in.{inp}" for inp in cls.inputs}
        self._out_key = {out: f"out.{out}" for out in self.publishers}
        self._callbacks = {inp: self.node.callback(inp) for inp in cls.inputs}
        # What `Subscriber.take` calls for each message of an input: decode, then deliver.
        self._handlers = {inp: (partial(self._decode, inp, schema, sub), partial(self._call, inp))
                          for inp, schema, sub in dict.fromkeys(self.inputs.values())}
        # Lossless inputs whose publisher has not ended its stream: when the last one ends, this
        # node has processed everything it was promised and stops by itself (graph end, replay).
        self._open_block_inputs = {inp for inp, spec in entry.inputs.items() if spec.queue == "block"}
        self.setup_done = False

    def _client(self, topic: TopicEntry) -> Callable[[zmq.Socket[Any]], None] | None:
        curve = self.curve
        if curve is None:
            return None
        return lambda sock: curve.make_client(sock, topic.machine or "default")

    # -- Runtime protocol ------------------------------------------------------------------------
    def now_ns(self) -> int:
        return time.time_ns() if self._clock_ns is None else self._clock_ns

    def publish(self, node: Node, output: str, msg: Message) -> None:
        pub = self.publishers.get(output)
        if pub is None:
            raise KeyError(f"{node.name}: no output {output!r} (outputs: {', '.join(self.publishers)})")
        seq = self._seq.get(output, 0) + 1
        self._seq[output] = seq
        msg.seq = seq
        if not msg.stamp_ns:
            msg.stamp_ns = self.now_ns()
        pub.send(encode(msg), self.stopped)
        self.stats.counts[self._out_key[output]] += 1

    def loan(self, node: Node, output: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        pub = self.publishers.get(output)
        if pub is None:
            raise KeyError(f"{node.name}: no output {output!r} (outputs: {', '.join(self.publishers)})")
        return pub.loan(shape, dtype)

    def add_timer(self, node: Node, period_s: float, fn: Callable[[], None]) -> None:
        self.timers.add(self.now_ns(), period_s, fn)

    def request_stop(self, node: Node, reason: str) -> None:
        self._stopping = True
        self.stop_reason = reason

    def stopped(self) -> bool:
        if not self._stopping and os.getppid() != self._parent:
            self.node.log.error("launcher is gone; stopping")
            self._stopping = True
        return self._stopping

    # -- the loop --------------------------------------------------------------------------------
    def _deliver(self, inp: str, schema: type[Message], frames: list[Any], sub: Subscriber) -> None:
        """One message through `_decode` and `_call`, what `run` has `Subscriber.take` do for each."""
        msg = self._decode(inp, schema, sub, frames)
        if msg is not None:
            self._call(inp, msg)

    def _decode(self, inp: str, schema: type[Message], sub: Subscriber, frames: list[Any]) -> Message | None:
        """The message in `frames`, or None: the stream ended, a bad message (counted, logged once
        per kind), or the node is stopping. Reads the header only: the arrays may not be ready."""
        if self._stopping:
            return None
        if len(frames) == 2 and bytes(frames[1]) == END_OF_STREAM:
            sub.end()
            self._open_block_inputs.discard(inp)
            if not self._open_block_inputs:
                self.request_stop(self.node, "every lossless input ended")
            return None
        self.stats.counts[self._in_key[inp]] += 1
        try:
            if len(frames) < 2:
                raise DecodeError("truncated", "missing topic or header frame")
            msg, _ = decode(frames[1:], expect=schema)
        except DecodeError as exc:
            self.stats.counts[f"decode_errors.{exc.kind}"] += 1
            if (inp, exc.kind) not in self._logged:  # once per kind: a flood must not flood the log
                self._logged.add((inp, exc.kind))
                self.node.log.warning("dropped a bad message on input %r: %s", inp, exc)
            return None
        return msg

    def _call(self, inp: str, msg: Message) -> None:
        last = self._last_seq.get(inp)
        if last is not None and msg.seq > last + 1:
            if msg.seq - last - 1 <= _MAX_SEQ_GAP:
                self.stats.counts[f"gaps.{inp}"] += msg.seq - last - 1
            else:  # a forged or corrupt seq: one event, then resync, not 4.6e18 lost messages
                self.stats.counts[f"seq_jumps.{inp}"] += 1
        self._last_seq[inp] = msg.seq
        t0 = time.perf_counter()
        self._callbacks[inp](msg)
        self.stats.callback_done(time.perf_counter() - t0)

    def _publish_diagnostics(self) -> None:
        for inp, _, sub in dict.fromkeys(self.inputs.values()):  # once per input, not per source
            for key, value in sub.counters().items():
                self.stats.counts[f"{key}.{inp}"] = value
        values = self.stats.values(self.node.diagnostics)
        self.publish(self.node, "diagnostics", Diagnostics(node=self.node_name, values=values))

    def _update_clock(self) -> None:
        assert self.clock_sub is not None
        q = self.clock_sub.drain()
        while q:
            frames = q.popleft()
            try:
                msg, _ = decode(frames[1:], expect=Clock)
            except DecodeError:
                continue
            self._clock_ns = max(self._clock_ns or 0, msg.stamp_ns)

    def run(self) -> int:
        poller = zmq.Poller()
        # Pipes (bells) before sockets, of all inputs: the earlier path (ZeroMQ's copy is then skipped).
        for source in sorted(self.inputs, key=lambda s: isinstance(s, zmq.Socket)):
            poller.register(source, zmq.POLLIN)
        if self.clock_sub is not None:
            poller.register(self.clock_sub.sock, zmq.POLLIN)
        self.node.setup()
        self.setup_done = True
        # Everything allocated so far (modules, models, tables) lives as long as the node: move it out
        # of the collector's sight, so that a full collection does not walk it between messages.
        gc.freeze()
        self.timers.add(self.now_ns(), DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        for pub in self.publishers.values():
            if pub.lossless is not None:
                pub.wait_for_subscribers(JOIN_S, self.stopped)
        while not self.stopped():
            due = self.timers.next_due_ns()
            # ceil, not floor: poll(0) in a loop for the last millisecond before a timer is a busy wait
            timeout = _POLL_MAX_MS if due is None else max(0, min(_POLL_MAX_MS, -((self.now_ns() - due) // 1_000_000)))
            if poller.sockets:
                ready = dict(poller.poll(timeout))
            else:  # pyzmq's poll returns at once with nothing registered: a node without inputs would spin
                time.sleep(timeout / 1000)
                ready = {}
            if self.clock_sub is not None and self.clock_sub.sock in ready:
                self._update_clock()
            for source in ready:
                item = self.inputs.get(source)
                if item is not None:
                    decode_frames, call = self._handlers[item[0]]
                    item[2].take(source, decode_frames, call)
            for fn in self.timers.pop_due(self.now_ns()):
                fn()
        return 0

    def end_streams(self, interrupted: Callable[[], bool]) -> None:
        """After a clean finish: tell lossless subscribers that nothing more will come, and wait
        until they have taken everything (see `Publisher.end_of_stream`), unless `interrupted()`."""
        for name, pub in self.publishers.items():
            if not pub.end_of_stream(interrupted) and not interrupted():
                self.node.log.warning("output %r: lossless subscribers had not taken everything "
                                      "when the node stopped waiting for them", name)

    def close(self) -> None:
        for pub in self.publishers.values():
            pub.close()
        for _, _, sub in self.inputs.values():
            sub.close()
        if self.clock_sub is not None:
            self.clock_sub.close()
        if self.curve is not None:
            self.curve.stop()
        if self._own_ctx:
            self.ctx.term()  # waits for the lossless sockets' linger, then frees everything


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipeline.runtime.runner RUN_DIR NODE", file=sys.stderr)
        return 2
    run_dir, node_name = Path(args[0]), args[1]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    manifest = read_manifest(run_dir / "manifest.json")
    try:
        runtime = ProcessRuntime(manifest, node_name)
    except ConfigError as exc:  # params checked again here: a file named by them may be gone since launch
        logging.getLogger(node_name).error("%s", exc)
        return 2

    signals = StopSignals(lambda signum: runtime.request_stop(runtime.node, signal.Signals(signum).name))
    clean = False
    try:
        rc = runtime.run()
        clean = True
    except ConfigError as exc:  # bad params found by setup(): a respawn would not help
        runtime.node.log.error("%s", exc)
        rc = 2
    finally:
        try:
            if runtime.setup_done:  # shutdown() may rely on what setup() made
                runtime.node.shutdown()
            # Not after a crash: a respawned publisher carries on the stream. Stopped by a signal,
            # a node still ends its streams, without waiting for its subscribers: the launcher ends
            # a graph by stopping its sources, and their lossless subscribers then finish their
            # queues and stop on the end of stream (`pipeline.runtime.launch`).
            if clean:
                runtime.end_streams(signals)
        finally:
            runtime.close()
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())

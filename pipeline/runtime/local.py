"""Several nodes in one process with in-process delivery: deterministic replay, evaluation, tests.

`LocalGraph` runs node classes unchanged. A published message goes through the same codec as on
the wire (encode, then a validating decode that wraps the same buffers: no array copy), so a node
sees exactly what it would see over ZeroMQ, read-only arrays included. Delivery is lossless and in
order (every input behaves as `block`), and time is a manual clock that only moves when the caller
says so, so two runs over the same input give the same outputs.

```python
g = LocalGraph()
g.add("pred", Predictor, {"model": "..."}, inputs={"tracks": "player/tracks"})
g.start()
g.inject("player/tracks", msg)   # or g.advance_to(t_ns) to fire timers
g.spin()                         # deliver until every queue is empty
g.published["pred/predictions"]  # what was published, in order
```
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from pipeline.runtime.config import convert
from pipeline.runtime.graph import Graph
from pipeline.runtime.node import Node, NodeParams
from pipeline.runtime.stats import NodeStats
from pipeline.runtime.timers import Timers
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Message

__all__ = ["LocalGraph"]


class LocalGraph:
    """Runs nodes in this process on a manual clock; see the module docstring."""

    def __init__(self, start_ns: int = 0, state_root: Path | None = None, record: bool = True,
                 on_publish: Callable[[str, list[Any], int, Message], object] | None = None) -> None:
        """`record`: keep every published message in `published`. `on_publish(topic, frames,
        t_ns, msg)`: called for each message a node publishes, with the wire frames its
        subscribers decoded (lockstep replay records them)."""
        self._now = start_ns
        self.state_root = state_root
        self.nodes: dict[str, Node] = {}
        self.stats: dict[str, NodeStats] = {}
        self._subs: dict[str, list[tuple[Node, str, type[Message]]]] = {}
        self._queue: deque[tuple[Node, str, Message]] = deque()
        self._timers: dict[str, Timers] = {}
        self._seq: dict[str, int] = {}
        self._record = record
        self._on_publish = on_publish
        self.published: dict[str, list[Message]] = {}
        self.stopped: dict[str, str] = {}
        self._started = False

    @classmethod
    def from_graph(cls, graph: Graph, **kwargs: Any) -> LocalGraph:
        g = cls(**kwargs)
        for name, spec in graph.nodes.items():
            g.add(name, spec.cls, spec.params, {i: s.topic for i, s in spec.inputs.items()})
        return g

    def add(self, name: str, cls: type[Node], params: NodeParams | dict[str, Any] | None = None,
            inputs: dict[str, str] | None = None, is_restart: bool = False) -> Node:
        # Checked as in a launch file (ConfigError "NAME: params.KEY: ..."), an instance too: msgspec
        # constructors do not check declared ranges.
        raw = msgspec.to_builtins(params) if isinstance(params, NodeParams) else params or {}
        checked: NodeParams = convert(raw, cls.Params, name, "params", strict=False)
        state_dir = None
        if self.state_root is not None:
            state_dir = self.state_root / name
            state_dir.mkdir(parents=True, exist_ok=True)
        node = cls(name, checked, self, state_dir=state_dir, is_restart=is_restart)
        self.nodes[name] = node
        self.stats[name] = NodeStats()
        self._timers[name] = Timers()
        for inp, topic in (inputs or {}).items():
            if inp not in cls.inputs:
                raise KeyError(f"{name}: {cls.__name__} has no input {inp!r}")
            self._subs.setdefault(topic, []).append((node, inp, cls.inputs[inp]))
        if self._started:
            node.setup()
        return node

    def start(self) -> None:
        for node in self.nodes.values():
            node.setup()
        self._started = True

    def stop(self) -> None:
        """Shut every node down, whatever another's shutdown raises; the first error is raised after."""
        error: Exception | None = None
        for node in self.nodes.values():
            try:
                node.shutdown()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    # -- Runtime protocol ------------------------------------------------------------------------
    def now_ns(self) -> int:
        return self._now

    def publish(self, node: Node, output: str, msg: Message) -> None:
        if output not in node.all_outputs():
            raise KeyError(f"{node.name}: no output {output!r}")
        topic = f"{node.name}/{output}"
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        msg.seq = seq
        if not msg.stamp_ns:
            msg.stamp_ns = self._now
        self.stats[node.name].counts[f"out.{output}"] += 1
        frames = self._deliver(topic, msg)
        if self._on_publish is not None:
            self._on_publish(topic, frames, self._now, msg)

    def add_timer(self, node: Node, period_s: float, fn: Callable[[], None]) -> None:
        self._timers[node.name].add(self._now, period_s, fn)

    def request_stop(self, node: Node, reason: str) -> None:
        self.stopped[node.name] = reason

    # -- driving the graph -------------------------------------------------------------------------
    def inject(self, topic: str, msg: Message) -> None:
        """Deliver `msg` on `topic` as if a node had published it (through the codec)."""
        self._deliver(topic, msg)

    def _deliver(self, topic: str, msg: Message) -> list[Any]:
        frames = encode(msg, publish_ns=self._now)
        if self._record:
            self.published.setdefault(topic, []).append(decode(frames)[0])
        for node, inp, schema in self._subs.get(topic, []):
            received, _ = decode(frames, expect=schema)
            self._queue.append((node, inp, received))
        return frames

    def spin(self) -> int:
        """Deliver queued messages (and what their callbacks publish) until none is left."""
        n = 0
        while self._queue:
            node, inp, msg = self._queue.popleft()
            self.stats[node.name].counts[f"in.{inp}"] += 1
            node.callback(inp)(msg)
            n += 1
        return n

    def advance_to(self, t_ns: int, max_ticks: int | None = None) -> None:
        """Move the clock to `t_ns`, firing due timers in time order, spinning after each.

        `max_ticks` bounds a replay's gap between recorded messages (a paused drive, a spliced file,
        a forged stamp), which would otherwise fire a 10 Hz timer 3e9 times for ten years: after that
        many ticks the clock jumps to `t_ns` and each due timer fires once more, its missed ticks
        skipped as for a node stalled that long (counted in the node's `timer.skipped_gaps`)."""
        fired = 0
        while True:
            due = [(when, name) for name, tm in self._timers.items()
                   if (when := tm.next_due_ns()) is not None and when <= t_ns]
            if not due:
                break
            when, name = min(due)
            if max_ticks is not None and fired >= max_ticks:
                self.stats[name].counts["timer.skipped_gaps"] += 1
                when = t_ns
            self._now = max(self._now, when)
            for fn in self._timers[name].pop_due(self._now):
                fn()
                fired += 1
            self.spin()
        self._now = max(self._now, t_ns)
        self.spin()

"""The Node API: a node is a small class with typed params, declared inputs and outputs, one
callback per input (or one `on_input` for all of them), timers and a clock.

```python
class Printer(Node):
    class Params(NodeParams):
        every_n: int = 10
    inputs = {"tracks": Tracks}
    outputs = {}

    def on_tracks(self, msg: Tracks) -> None:
        ...
```

Node code never sees sockets, topics, threads or signals. A *runtime* delivers messages and runs
timers: `pipeline.runtime.runner` runs one node per process over ZeroMQ (under the launcher), and
`pipeline.runtime.local.LocalGraph` runs several nodes in one process with in-process delivery
(deterministic replay, evaluation, tests). The same class runs unchanged under both.

Every node also has a `diagnostics` output: the runtime publishes its counters (messages in and
out, drops, decode errors, callback latency) merged with `self.diagnostics` about once a second.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec
import numpy as np

from pipeline.wire.messages import Diagnostics, Message

__all__ = ["Node", "NodeParams", "Runtime"]


class NodeParams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of a node's `Params`: fields with types and defaults, validated from launch.yaml.

    An unknown key, a value of the wrong type or one outside its declared range is an error before
    the graph starts. Declare ranges on the field, not in `setup()`:
    `rate_hz: Annotated[float, msgspec.Meta(gt=0)] = 10.0`.
    """


class Runtime(Protocol):
    """What a node needs from whatever runs it."""

    def publish(self, node: Node, output: str, msg: Message) -> None: ...
    def add_timer(self, node: Node, period_s: float, fn: Callable[[], None]) -> None: ...
    def now_ns(self) -> int: ...
    def request_stop(self, node: Node, reason: str) -> None: ...


class Node:
    """Base class of all nodes. Subclasses declare `Params`, `inputs`, `outputs`, and for each input
    an `on_<input>(msg)` method or, for a node that treats its inputs alike, one `on_input(name, msg)`."""

    Params: ClassVar[type[NodeParams]] = NodeParams
    inputs: ClassVar[dict[str, type[Message]]] = {}
    outputs: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "diagnostics" in cls.outputs and cls.outputs["diagnostics"] is not Diagnostics:
            raise TypeError(f"{cls.__name__}: the output 'diagnostics' is reserved for Diagnostics")
        if "input" in cls.inputs:
            raise TypeError(f"{cls.__name__}: the input name 'input' is reserved (on_input receives any input)")
        generic = cls.on_input is not Node.on_input
        for name in cls.inputs:
            if not generic and not callable(getattr(cls, f"on_{name}", None)):
                raise TypeError(f"{cls.__name__} declares input {name!r} but has no on_{name}(msg) method "
                                f"and no on_input(name, msg)")

    def __init__(self, name: str, params: NodeParams, runtime: Runtime, *,
                 state_dir: Path | None = None, is_restart: bool = False) -> None:
        self.name = name
        self.params = params
        self.log = logging.getLogger(name)
        #: Values merged into this node's Diagnostics each second (numbers only).
        self.diagnostics: dict[str, float] = {}
        #: A directory that survives a respawn of this node (state to restore).
        self.state_dir = state_dir
        #: True when the launcher respawned this node after it died.
        self.is_restart = is_restart
        self._runtime = runtime

    @classmethod
    def all_outputs(cls) -> dict[str, type[Message]]:
        return {**cls.outputs, "diagnostics": Diagnostics}

    def callback(self, name: str) -> Callable[[Message], None]:
        """What a runtime calls with each message of input `name`: `on_<name>` if the node has one,
        else `on_input` bound to the name."""
        own: Callable[[Message], None] | None = getattr(self, f"on_{name}", None)
        return own if own is not None else functools.partial(self.on_input, name)

    # -- lifecycle, overridden by nodes ------------------------------------------------------
    def setup(self) -> None:
        """Load models, allocate state, start timers. Runs once before any message."""

    def shutdown(self) -> None:
        """Save what must survive a restart. Runs once on a clean stop."""

    def on_input(self, name: str, msg: Message) -> None:
        """Receives each message of every input that has no `on_<name>` method (pass-through nodes)."""
        raise NotImplementedError(f"{type(self).__name__} has no on_{name}(msg) method and no on_input(name, msg)")

    # -- services for node code ---------------------------------------------------------------
    def publish(self, output: str, msg: Message) -> None:
        """Send `msg` on one of this node's outputs. `seq` is set per output; arrays are sent
        without a copy, so do not modify them afterwards."""
        self._runtime.publish(self, output, msg)

    def loan(self, output: str, shape: tuple[int, ...], dtype: Any = "uint8") -> np.ndarray:
        """A writable array to fill and then publish on `output` (as the message's one array)
        without any copy to subscribers on this machine: it lives in shared memory when the
        runtime has it, else it is a plain `np.empty`. Do not modify it after publishing it."""
        loan = getattr(self._runtime, "loan", None)
        if loan is None:
            return np.empty(shape, dtype=dtype)
        return loan(self, output, tuple(shape), np.dtype(dtype))  # type: ignore[no-any-return]

    def every(self, period_s: float, fn: Callable[[], None]) -> None:
        """Call `fn` every `period_s` seconds of the node's clock (wall time, or replayed time)."""
        if period_s <= 0:
            raise ValueError(f"{self.name}: timer period must be > 0, got {period_s}")
        self._runtime.add_timer(self, period_s, fn)

    def now_ns(self) -> int:
        """The node's clock in ns: wall time, or the replayed clock when the graph runs on one."""
        return self._runtime.now_ns()

    def now(self) -> float:
        return self._runtime.now_ns() * 1e-9

    def stop(self, reason: str = "finished") -> None:
        """Ask the runtime to end this node (a finite source, such as a player, at its end)."""
        self._runtime.request_stop(self, reason)

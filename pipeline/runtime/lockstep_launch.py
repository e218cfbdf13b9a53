"""`drivecast launch FILE --lockstep`: a graph in one process on a simulated clock, as fast as it goes.

The nodes run unchanged in a `pipeline.runtime.local.LocalGraph`: the clock moves from one due timer
to the next (a simulator's tick, an evaluator's report), and every message a tick causes is delivered
and handled before the clock moves on. Nothing depends on wall time, so two runs of the same file
give the same messages and the same reports, at whatever speed the CPU allows: CARLA's synchronous
mode, or Gazebo without real-time pacing. Delivery is lossless (every input behaves as `block`), so
queue policies and the predictor's `max_age_s` never drop here.

The run ends at `--duration` simulated seconds, when a node stops itself (a simulator's
`max_ticks`), or on Ctrl-C / SIGTERM; each ends with every node's `shutdown` (the evaluator's final
table). A graph whose topics come from outside (`--without`, `external: true`) cannot run so: a
recording plays through a graph deterministically with `drivecast play FILE --lockstep`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ConfigError
from pipeline.runtime.graph import Graph
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import Message

__all__ = ["START_NS", "run_lockstep"]

#: the simulated clock starts here (2001-09-09), the same every run: stamps look like wall time
START_NS = 10**18
#: the clock advances in steps of this (simulated seconds) between checks for a stop
STEP_S = 0.1


def run_lockstep(graph: Graph, duration_s: float | None, stopped: Callable[[], bool], out: IO[str],
                 on_publish: Callable[[str, list[Any], int, Message], object] | None = None) -> int:
    """Run `graph` until `duration_s` simulated seconds, a node stops or `stopped()`; the exit code
    (0, or 1 if a node raised). `on_publish(topic, frames, t_ns, msg)` sees every published message."""
    if graph.external:
        raise ConfigError(f"{graph.path}: --lockstep: {', '.join(sorted(graph.external))} would come from "
                          f"outside the graph; replay a recording deterministically with `drivecast play FILE "
                          f"--lockstep` instead")
    # what nodes print and log (the evaluators' tables) goes to `out` too, in order with the launcher's lines
    log = logging.StreamHandler(out)
    log.setFormatter(logging.Formatter("[%(name)s] %(levelname)s %(message)s"))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(log)
    root.setLevel(min(level, logging.INFO) or logging.INFO)
    try:
        return _run(graph, duration_s, stopped, out, on_publish)
    finally:
        root.removeHandler(log)
        root.setLevel(level)


def _run(graph: Graph, duration_s: float | None, stopped: Callable[[], bool], out: IO[str],
         on_publish: Callable[[str, list[Any], int, Message], object] | None) -> int:
    with tempfile.TemporaryDirectory(prefix=f"drivecast-{graph.name}-") as state, contextlib.redirect_stdout(out):
        g = LocalGraph(start_ns=START_NS, state_root=Path(state), record=False, on_publish=on_publish)
        for name, spec in graph.nodes.items():
            g.add(name, spec.cls, spec.params, {i: s.topic for i, s in spec.inputs.items()})
        out.write(f"[launch] graph {graph.name!r}: {len(graph.nodes)} nodes in lockstep on a simulated clock\n")
        out.flush()
        end_ns = None if duration_s is None else START_NS + int(duration_s * 1e9)
        rc, why = 0, "stopped"
        t0 = time.perf_counter()
        try:
            g.start()
            while not stopped():
                if g.stopped:
                    why = "; ".join(f"{n}: {r}" for n, r in g.stopped.items())
                    break
                if end_ns is not None and g.now_ns() >= end_ns:
                    why = f"duration of {duration_s:g} s reached"
                    break
                step = g.now_ns() + int(STEP_S * 1e9)
                g.advance_to(step if end_ns is None else min(step, end_ns))
        except Exception:  # a node's bug: report it, still shut the others down
            out.write(f"[launch] a node raised at {(g.now_ns() - START_NS) / 1e9:.3f} s:\n{traceback.format_exc()}")
            rc, why = 1, "a node failed"
        try:
            g.stop()   # every node, whatever another raises (the evaluator's final table)
        except Exception:
            out.write(f"[launch] a node's shutdown raised:\n{traceback.format_exc()}")
            rc = 1
        sim_s, wall_s = (g.now_ns() - START_NS) / 1e9, time.perf_counter() - t0
        out.write(f"[launch] {why}: {sim_s:.1f} simulated s in {wall_s:.1f} s "
                  f"({sim_s / max(wall_s, 1e-9):.1f}x real time)\n")
        out.flush()
    return rc

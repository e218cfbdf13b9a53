"""The stateful trajectory predictor: Tracks in, one Predictions message per model out.

Each agent kind is routed to a step model (`models: {vehicle: a.onnx, pedestrian: b.onnx}`) that
carries one recurrent state per agent across messages. A message closes the ticks of each model's
sample grid that its stamp passes (`nodes.resample`, exactly as training resamples a recording);
each closed tick is ONE batched `StepModel.step` over the agents sampled at it, and the last tick's
predictions are published (world frame, `t_ns` = t_k + j*dt, stamp = the Tracks stamp) for agents
with at least `min_obs` samples. A model of K > 1 futures is stepped with `step_modes` instead (the
same state update: `step` is `step_modes` keeping the most probable future), and its message carries
every future (`modes`) with its probability (`prob`) beside the most probable one (`xy`). Neighbours
in the feature vector are the agents of the same model sampled at the same tick, as in its training data.

Duplicate, out-of-order, (with `max_age_s`) stale and future stamps are dropped and counted: a stamp
more than `max_future_s` ahead of the node clock (wall time, or the replayed clock) is not adopted, or
the next normal message would look like time jumping back and reset every agent. So are rows with a
position or velocity outside `nodes.plausible` bounds (NaN and inf included), a negative id or an id
already in the message.

Crash safety: the tables are saved every `save_every_s` and at shutdown (`nodes.state_file`) and
restored after a respawn when younger than `ttl_s`; the first message after setup publishes a
StateEvent saying `restored` (with the ids) or `reset` (with the reason). That first message bridges
the downtime like a slow input, stepping every tick of it on interpolated positions, rather than
resetting every restored agent for the gap.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from msgspec import Meta

from export.runtime.features import (
    FeatureSpecError,
    agent_frames,
    feature_dim,
    history_len,
    step_features,
    to_world,
    validate_spec,
)
from export.runtime.step_model import ModelError, ModelMeta, StepModel
from nodes import state_file
from nodes.plausible import Plausible, plausible_rows
from nodes.resample import Grid, Sample
from nodes.state_file import STATE_FILE
from nodes.state_table import AgentTable, check_size
from nodes.timing import Timing
from pipeline.errors import ConfigError
from pipeline.runtime.node import Node
from pipeline.wire.messages import AgentKind, Predictions, StateEvent, Tracks

__all__ = ["Predictor"]

_KIND_CODE = {name: code for code, name in AgentKind.NAMES.items()}


class _Route:
    """One model and the sample grid of the agents routed to it."""

    def __init__(self, name: str, path: str, threads: int, capacity: int, max_gap_steps: float, where: str) -> None:
        """Load the model at `path`; a bad one is a ConfigError that starts with `where`."""
        try:
            model = StepModel(_resolve(path), threads=threads)
            self.spec, self.hl = _checked_spec(model.meta, str(model.path), capacity)
        except ModelError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        self.name, self.model = name, model
        dt_ns = int(round(model.meta.dt_s * 1e9))
        self.steps_ns = dt_ns * np.arange(1, model.meta.horizon + 1, dtype=np.int64)
        n_state = 2 if model.meta.cell == "lstm" else 1
        table = AgentTable(capacity, n_state, model.meta.layers, model.meta.hidden, self.hl)
        self.grid = Grid(table, dt_ns, max_gap_steps)


def _message(r: _Route, smp: Sample, pred: np.ndarray, prob: np.ndarray, frames: Any, min_obs: int) -> Predictions:
    """The predictions of a sample's agents with `min_obs` samples, unstamped: pred[B,K,T,2] and prob[B,K] as
    `StepModel.step_modes` gave them; a model of one future puts it in `xy` alone."""
    n_obs = np.minimum(smp.n_obs, r.hl)
    # every future of an agent is in its frame: one to_world over [B, K*T, 2]
    world = to_world(r.spec, pred.reshape(len(pred), -1, 2), smp.hist, n_obs, frames=frames)
    world = world.astype(np.float32).reshape(pred.shape)
    ready = smp.n_obs >= min_obs
    ids, kind, t_ns = smp.ids, smp.kind, smp.t_ns + r.steps_ns
    if not ready.all():
        ids, kind, world, prob = ids[ready], kind[ready], world[ready], prob[ready]
    if r.model.meta.modes == 1:
        return Predictions(model=r.name, ids=ids, kind=kind, t_ns=t_ns, xy=world[:, 0])
    xy = world[np.arange(len(world)), prob.argmax(-1)]  # the future `step` would have given
    return Predictions(model=r.name, ids=ids, kind=kind, t_ns=t_ns, xy=xy, modes=world, prob=prob)


def _checked_spec(meta: ModelMeta, source: str, capacity: int) -> tuple[dict[str, Any], int]:
    """The model's feature spec and history length, once the spec is known to give the model's input width
    and a table of `capacity` agents to fit `MAX_TABLE_BYTES`; else ModelError starting with `source`."""
    try:
        spec = validate_spec(meta.features)
        width, hist_len = feature_dim(spec), history_len(spec)
    except FeatureSpecError as exc:
        raise ModelError(f"{source}: {exc}") from None
    except (ValueError, OverflowError) as exc:  # a NaN or infinity that JSON carried past validate_spec
        raise ModelError(f"{source}: feature spec: {exc}") from None
    if width != meta.input_dim:
        raise ModelError(f"{source}: features give {width} inputs, the model takes {meta.input_dim}")
    try:
        check_size(capacity, 2 if meta.cell == "lstm" else 1, meta.layers, meta.hidden, hist_len)
    except ValueError as exc:
        raise ModelError(f"{source}: {exc}") from None
    return spec, hist_len


class _ModelFiles(Plausible):
    """The `models` param and the agents each model keeps state for. msgspec.convert runs `__post_init__`:
    a missing or unusable model (graph, metadata and its bounds, feature spec, table size) fails the launch
    file's validation (exit 2, the key named), before any process starts, not the node's setup."""

    models: dict[str, str] = {}  # agent kind (vehicle, pedestrian, cyclist, unknown) -> step model .onnx
    capacity: Annotated[int, Meta(ge=1)] = 256  # agents per model: state table slots, preallocated

    def __post_init__(self) -> None:
        for kind, path in self.models.items():
            resolved = _resolve(path)
            if not resolved.is_file():
                raise ValueError(f"models.{kind}: no such model file {_searched(path)}")
            try:  # a light session: no graph optimisation, no warm-up
                _checked_spec(StepModel.inspect(resolved), str(resolved), self.capacity)
            except ModelError as exc:
                raise ValueError(f"models.{kind}: {exc}") from None


class Predictor(Node):
    """Tracks in, one Predictions message per model out; see the module docstring."""

    class Params(_ModelFiles):
        min_obs: Annotated[int, Meta(ge=1)] = 2           # samples an agent needs before it is predicted
        ttl_s: Annotated[float, Meta(gt=0)] = 2.0         # evict agents unseen this long; restore only younger state
        max_gap_steps: Annotated[float, Meta(ge=1)] = 2.5  # a longer gap (in model periods) resets the agent
        lag_s: Annotated[float, Meta(ge=0)] = 0.03        # the sample grid trails the first stamp by this
        max_age_s: Annotated[float, Meta(ge=0)] = 0.0     # drop Tracks older than this by the node clock (0: off)
        max_future_s: Annotated[float, Meta(ge=0)] = 5.0  # drop Tracks this far ahead of the node clock (0: off)
        save_every_s: Annotated[float, Meta(ge=0)] = 1.0  # periodic state save (0: only at shutdown)
        threads: Annotated[int, Meta(ge=1)] = 1           # onnxruntime intra-op threads per model

    params: Params
    inputs = {"tracks": Tracks}
    outputs = {"predictions": Predictions, "events": StateEvent}

    def setup(self) -> None:
        p = self.params
        if not p.models:
            raise ConfigError(f"{self.name}: params.models: expected at least one 'kind: model.onnx' entry")
        self.routes: list[_Route] = []
        self.kind_route = np.full(256, -1, np.int64)  # kind code -> route index
        for kind, path in p.models.items():
            if kind not in _KIND_CODE:
                raise ConfigError(f"{self.name}: params.models.{kind}: unknown agent kind; "
                                  f"expected one of {', '.join(_KIND_CODE)}")
            self.kind_route[_KIND_CODE[kind]] = len(self.routes)
            self.routes.append(_Route(kind, path, p.threads, p.capacity, p.max_gap_steps,
                                      f"{self.name}: params.models.{kind}"))
        self.route_edges = np.arange(len(self.routes) + 1)  # route i's rows lie between edges i and i + 1
        self.last_stamp: int | None = None
        self.counts: Counter[str] = Counter()
        self.timing = Timing("step", "tracks")
        self.dirty, self.bridging = False, False
        self.event: StateEvent | None = (self._restore() if self.is_restart
                                         else StateEvent(event="reset", reason="start"))
        if p.save_every_s > 0:
            self.every(p.save_every_s, self._save_if_dirty)
        self.every(1.0, self._update_diagnostics)

    def on_tracks(self, msg: Tracks) -> None:
        # Written for few numpy calls rather than per-agent steps: right after a wake-up each call costs
        # several times what it does in a hot loop.
        t_cb, cpu0 = time.perf_counter(), time.process_time()
        if self.event is not None:  # after setup, once: downstream learns what our states are
            self.publish("events", self.event)
            self.event = None
        s, p = msg.stamp_ns, self.params
        if self.last_stamp is not None and self.last_stamp - s > p.ttl_s * 1e9:
            # Time went back by more than any state lives (a replay restarted, a source resynced its clock):
            # start over, as ROS nodes do on a jump back, instead of dropping every later message as old.
            for r in self.routes:
                r.grid.clear()
            self.counts["time_jumps_back"] += 1
            back_s = (self.last_stamp - s) / 1e9
            self.publish("events", StateEvent(event="reset", reason=f"time jumped back {back_s:.3g} s"))
            self.last_stamp = None
        if self.last_stamp is not None and s <= self.last_stamp:
            self.counts["drops.duplicate" if s == self.last_stamp else "drops.out_of_order"] += 1
            return
        if (untimely := _untimely(s, self.now_ns(), p)) is not None:
            self.counts[untimely] += 1
            return
        if self.bridging and self.last_stamp is not None:
            self.log.info("bridging %.2f s of downtime for the restored agents", (s - self.last_stamp) / 1e9)
        self.last_stamp = s
        ids, xy, kinds, bad = _valid_rows(msg, p)
        if bad:
            self.counts["drops.bad_rows"] += bad
        # one stable sort by route instead of a mask per route: each route's rows are a slice, in message order
        route_of = self.kind_route[kinds]
        by_route = np.argsort(route_of, kind="stable")
        ids, xy, kinds = ids[by_route], xy[by_route].astype(np.float64), kinds[by_route]
        edges = np.searchsorted(route_of[by_route], self.route_edges).tolist()
        for i, r in enumerate(self.routes):
            if evicted := r.grid.evict(s, p.ttl_s * 1e9):  # a counter appears once something happened
                self.counts["evictions"] += evicted
            rows = slice(edges[i], edges[i + 1])
            last = None
            for sample in r.grid.samples(s, ids[rows], xy[rows], kinds[rows], int(p.lag_s * 1e9), self.bridging,
                                         self.counts):
                last = (sample, *self._step(r, sample))
            if last is not None:   # only the last tick's predictions are published: only they go to the world frame
                out = _message(r, *last, p.min_obs)
                out.stamp_ns, out.frame_id = s, msg.frame_id
                self.publish("predictions", out)
        self.counts["unrouted"] += edges[0]  # kind_route -1 sorts first
        self.dirty, self.bridging = True, False
        self.timing.message("tracks", t_cb, cpu0)

    def _step(self, r: _Route, smp: Sample) -> tuple[np.ndarray, np.ndarray, Any]:
        """One batched model step for the agents sampled at a tick, their states updated; (pred[B,K,T,2],
        prob[B,K], their frames) for `_message`. `step_modes` updates the state as `step` does."""
        tab, slots = r.grid.table, smp.slots
        n_obs = np.minimum(smp.n_obs, r.hl)
        frames = agent_frames(r.spec, smp.hist, n_obs)  # once, for the features and for to_world
        x = step_features(r.spec, smp.hist, n_obs, frames=frames)
        t0 = time.perf_counter()
        pred, prob, new_state = r.model.step_modes(x, tuple(tab.state[:, :, slots]))
        self.timing.add("step", t0)
        for st, ns in zip(tab.state, new_state, strict=True):
            st[:, slots] = ns
        self.counts["steps"] += 1
        self.counts["agent_steps"] += len(slots)
        return pred, prob, frames

    def _update_diagnostics(self) -> None:
        d = self.diagnostics
        d.update({k: float(v) for k, v in self.counts.items()})
        for r in self.routes:
            d[f"agents.{r.name}"] = float(len(r.grid.table))
        d["agents"] = float(sum(len(r.grid.table) for r in self.routes))
        self.timing.report(d)

    # -- state that survives a crash --------------------------------------------------------------
    def _grids(self) -> dict[str, tuple[Grid, str]]:
        return {r.name: (r.grid, r.model.meta.content_hash) for r in self.routes}

    def _save_if_dirty(self) -> None:
        if self.dirty:
            self.save_state()

    def save_state(self) -> None:
        """Write every table to state_dir (atomic replace)."""
        if self.state_dir is not None:
            state_file.save(Path(self.state_dir) / STATE_FILE, self._grids(), self.now_ns(), self.last_stamp)
            self.dirty = False

    def _restore(self) -> StateEvent:
        """Load the saved tables after a respawn; say what happened (a bad file is a reset, not an error)."""
        path = None if self.state_dir is None else Path(self.state_dir) / STATE_FILE
        try:
            self.last_stamp, age_s = state_file.restore(path, self._grids(), self.now_ns(), self.params.ttl_s)
        except state_file.NotRestored as exc:
            if exc.cause is not None:
                self.log.warning("state file %s not restored: %s", path, exc.cause)
            return StateEvent(event="reset", reason=f"respawn: {exc}")
        ids = np.concatenate([r.grid.table.ids[r.grid.table.active()] for r in self.routes])
        self.log.info("restored %d agent states (%.2f s old) from %s", len(ids), age_s, path)
        self.diagnostics["restored"] = float(len(ids))
        self.bridging = True
        return StateEvent(event="restored", reason=f"respawn: state {age_s:.2f} s old", ids=ids)

    def shutdown(self) -> None:
        if hasattr(self, "routes"):
            self.save_state()


def _resolve(path: str) -> Path:
    """A relative model path is tried in the working directory, then under the install root, where
    models/pretrained ships: the default launch.yaml then works from any directory."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    packaged = Path(__file__).resolve().parent.parent / p
    return packaged if packaged.exists() else p


def _searched(path: str) -> str:
    """Where `_resolve` looked for `path`, for an error message."""
    p = Path(path)
    if p.is_absolute():
        return f"'{p}'"
    return f"'{p}' (looked in {Path.cwd()} and {Path(__file__).resolve().parent.parent})"


def _untimely(stamp: int, now: int, p: Predictor.Params) -> str | None:
    """The drop counter for a stamp too old (`max_age_s`) or too far ahead (`max_future_s`) of the node
    clock `now`, else None. A clock of 0 is none yet (a replay's first clock message not in): no check."""
    if p.max_age_s > 0 and now - stamp > p.max_age_s * 1e9:
        return "drops.stale"
    if p.max_future_s > 0 and now > 0 and stamp - now > p.max_future_s * 1e9:
        return "drops.future"
    return None


def _valid_rows(msg: Tracks, p: Plausible) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows with a plausible position and velocity and a non-negative id not already in the message
    (a repeated id keeps its first row), and how many were dropped."""
    ids, xy, kinds = msg.ids, msg.xy, msg.kind
    ok = plausible_rows(xy, p.max_abs_xy, msg.vxy, p.max_speed)
    if len(ids) == 0 or (ok.all() and ids.min() >= 0 and _distinct(ids)):
        return ids, xy, kinds, 0
    ok &= (ids >= 0) & _first_occurrence(ids)
    return ids[ok], xy[ok], kinds[ok], int(len(ids) - ok.sum())


def _distinct(ids: np.ndarray) -> bool:
    ordered = np.sort(ids)
    return not (ordered[1:] == ordered[:-1]).any()


def _first_occurrence(ids: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(ids), bool)
    keep[np.unique(ids, return_index=True)[1]] = True
    return keep

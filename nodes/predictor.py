"""The stateful trajectory predictor: one recurrent state per tracked agent, carried across messages.

Each agent kind is routed to a step model (`models: {vehicle: a.onnx, pedestrian: b.onnx}`); each model
has its own sample period `dt_s`, sample grid and state table (`nodes.state_table.AgentTable`).

Sampling (why it is exact offline): a model sees positions on a fixed grid t_k = t0 + k*dt, as training
resamples a recording (`models.datasets.to_grid`: linear interpolation between the two observations
around each tick, never extrapolation). t0 = the first stamp holding one of its agents, minus `lag_s`.
A message with stamp s closes every tick t_k <= s; an agent's position at t_k is interpolated between
its previous observation and this one, and an agent first seen at s joins at the first tick t_k >= s.
The lag keeps ticks a little behind the stamps, so a live source whose stamps jitter by up to `lag_s`
still closes one tick per message instead of sometimes none and then two (the prediction starts from
the interpolated position `lag_s` before the newest stamp; its `t_ns` say so). With `lag_s: 0` and a
source at an exact rate (a replayed recording) the grid is `to_grid`'s and the node's inputs are
`to_grid` + `step_features` of the same track set, bit for bit (tests/test_predictor.py). Replaying a
recording through the node reproduces a live run exactly either way: only the stamps matter. 10 Hz
Tracks drive a 2.5 Hz model one step every 4th message. Neighbours (in the feature vector) are the
agents of the same model sampled at the same tick, as in its training data (ETH/UCY has only
pedestrians, Argoverse vehicles).

Per tick: gather the slots sampled at it, ONE batched `StepModel.step`, scatter the state back, publish
one Predictions message per model (world frame, `t_ns` = t_k + j*dt, stamp = the Tracks stamp) for
agents with at least `min_obs` samples. A message normally closes at most one tick; when Tracks come
slower than the model period (or a message was lost) it closes several, and each is one step.

Cost: the node runs right after it wakes for a message, when each numpy call costs several times what
it does in a hot loop (and each distinct kind of call more than a repeated one). So the message path
is written for few calls rather than per-agent steps: one stable sort splits the rows by route, one
sorted-array search finds the slots, the usual case (no new agent, all last seen in one message)
skips its masks, and one `agent_frames` per step serves both the features and `to_world`.

Lifecycle: a new id starts from the zero state; an agent unseen for `ttl_s` is evicted (the table is
scanned every ttl_s/8 of stamp time; a reused id then starts fresh); one whose previous observation
is more than `max_gap_steps` periods old is reset (to_grid splits such tracks). A missed tick within
that limit is filled into the position history by interpolation when the agent comes back, but its
state does not step for it (offline parity holds for complete tracks). Duplicate, out-of-order and
(with `max_age_s`) stale stamps are dropped and counted, and so are rows with a non-finite position,
a negative id or an id already in the message.

Crash safety: the tables are saved (`.npz`, atomic replace, no pickle) every `save_every_s` and at
shutdown into `state_dir`, and restored after a respawn when younger than `ttl_s`; the first message
after setup publishes a StateEvent saying `restored` (with the ids) or `reset` (with the reason).
The node's downtime is a gap in every restored agent's track, longer than `max_gap_steps` for a 10 Hz
model, which would reset them all and make the restore pointless: the first message after a restore
bridges it instead, like a slow input, stepping every tick of the downtime on positions interpolated
between the last observation before the crash and the first after it (about 20 batched steps for a
2 s outage of a 0.1 s model, once). Agents unseen for `ttl_s` are still evicted first.
"""

from __future__ import annotations

import math
import os
import time
import zipfile
from collections import Counter, deque
from pathlib import Path

import numpy as np

from export.runtime.features import (
    FeatureSpecError,
    agent_frames,
    feature_dim,
    history_len,
    step_features,
    to_world,
    validate_spec,
)
from export.runtime.step_model import ModelError, StepModel
from nodes.state_table import AgentTable, save_npz
from pipeline.errors import ConfigError
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import AgentKind, Predictions, StateEvent, Tracks

__all__ = ["Predictor"]

STATE_FILE = "predictor_state.npz"
STATE_VERSION = 2  # 2: no per-agent kind and first_k (nothing read them); last_k = NEVER until sampled
_KIND_CODE = {name: code for code, name in AgentKind.NAMES.items()}


class _Route:
    """One model and its agents: its sample grid (t0, next tick) and its state table."""

    def __init__(self, name: str, model: StepModel, capacity: int, max_gap_steps: float) -> None:
        self.name, self.model = name, model
        self.spec = model.meta.features
        self.dt_ns = int(round(model.meta.dt_s * 1e9))
        # a gap resets an agent when s - last_t > max_gap_steps * dt_ns, i.e. (integers) > this:
        self.max_gap_ns = math.floor(max_gap_steps * self.dt_ns)
        self.hl = history_len(self.spec)
        self.steps_ns = self.dt_ns * np.arange(1, model.meta.horizon + 1, dtype=np.int64)
        n_state = 2 if model.meta.cell == "lstm" else 1
        self.table = AgentTable(capacity, n_state, model.meta.layers, model.meta.hidden, self.hl)
        self.t0: int | None = None
        self.k_next = 0
        self.next_evict = 0  # stamp of the next eviction scan


class Predictor(Node):
    """Tracks in, one Predictions message per model out; see the module docstring."""

    class Params(NodeParams):
        models: dict[str, str] = {}   # agent kind (vehicle, pedestrian, cyclist, unknown) -> step model .onnx
        capacity: int = 256           # agents per model: state table slots, preallocated
        min_obs: int = 2              # samples an agent needs before it is predicted
        ttl_s: float = 2.0            # evict agents unseen this long; restore only state younger than this
        max_gap_steps: float = 2.5    # a longer gap (in model periods) resets the agent, as to_grid splits it
        lag_s: float = 0.03           # the sample grid trails the first stamp by this (absorbs stamp jitter)
        max_age_s: float = 0.0        # drop Tracks older than this on arrival, by the node clock (0: off)
        save_every_s: float = 1.0     # periodic state save (0: only at shutdown)
        threads: int = 1              # onnxruntime intra-op threads per model

    params: Params
    inputs = {"tracks": Tracks}
    outputs = {"predictions": Predictions, "events": StateEvent}

    def setup(self) -> None:
        p = self.params
        if not p.models:
            raise ConfigError(f"{self.name}: params.models: expected at least one 'kind: model.onnx' entry")
        for key, low in (("capacity", 1), ("min_obs", 1), ("ttl_s", 1e-9), ("max_gap_steps", 1.0), ("lag_s", 0.0),
                         ("max_age_s", 0.0), ("save_every_s", 0.0), ("threads", 1)):
            if getattr(p, key) < low:
                raise ConfigError(f"{self.name}: params.{key}: expected >= {low:g}, got {getattr(p, key)}")
        self.routes: list[_Route] = []
        self.kind_route = np.full(256, -1, np.int64)  # kind code -> route index
        for kind, path in p.models.items():
            if kind not in _KIND_CODE:
                raise ConfigError(f"{self.name}: params.models.{kind}: unknown agent kind; "
                                 f"expected one of {', '.join(_KIND_CODE)}")
            try:
                model = StepModel(_resolve(path), threads=p.threads)
                spec = validate_spec(model.meta.features)
            except (ModelError, FeatureSpecError) as exc:
                raise ConfigError(f"{self.name}: params.models.{kind}: {exc}") from None
            if feature_dim(spec) != model.meta.input_dim:
                raise ConfigError(f"{self.name}: params.models.{kind}: {path}: features give "
                                 f"{feature_dim(spec)} inputs, the model takes {model.meta.input_dim}")
            self.kind_route[_KIND_CODE[kind]] = len(self.routes)
            self.routes.append(_Route(kind, model, p.capacity, p.max_gap_steps))
        self.route_edges = np.arange(len(self.routes) + 1)  # route i's rows lie between edges i and i + 1
        self.last_stamp: int | None = None
        self.counts: Counter[str] = Counter()
        self.step_us: deque[float] = deque(maxlen=1024)
        self.cb_us: deque[float] = deque(maxlen=1024)
        self.cpu_s, self.n_msgs, self.dirty, self.bridging = 0.0, 0, False, False
        self.event: StateEvent | None = (self._restore() if self.is_restart
                                         else StateEvent(event="reset", reason="start"))
        if p.save_every_s > 0:
            self.every(p.save_every_s, self._save_if_dirty)
        self.every(1.0, self._update_diagnostics)

    # -- messages ---------------------------------------------------------------------------------
    def on_tracks(self, msg: Tracks) -> None:
        t_cb, cpu0 = time.perf_counter(), time.process_time()
        if self.event is not None:  # after setup, once: downstream learns what our states are
            self.publish("events", self.event)
            self.event = None
        s = msg.stamp_ns
        if self.last_stamp is not None and self.last_stamp - s > self.params.ttl_s * 1e9:
            # Time went back by more than any state lives (a replay restarted, a source that resynced its
            # clock, a corrupt stamp before): start over, as ROS nodes do on a jump back, instead of
            # dropping every later message as out of order.
            self._reset_tables()
            self.counts["time_jumps_back"] += 1
            back_s = (self.last_stamp - s) / 1e9
            self.publish("events", StateEvent(event="reset", reason=f"time jumped back {back_s:.3g} s"))
            self.last_stamp = None
        if self.last_stamp is not None and s <= self.last_stamp:
            self.counts["drops.duplicate" if s == self.last_stamp else "drops.out_of_order"] += 1
            return
        if self.params.max_age_s > 0 and self.now_ns() - s > self.params.max_age_s * 1e9:
            self.counts["drops.stale"] += 1
            return
        if self.bridging and self.last_stamp is not None:
            self.log.info("bridging %.2f s of downtime for the restored agents", (s - self.last_stamp) / 1e9)
        self.last_stamp = s
        ids, xy, kinds = msg.ids, msg.xy, msg.kind
        if len(ids) and not (np.isfinite(xy).all() and ids.min() >= 0 and _distinct(ids)):
            ok = np.isfinite(xy).all(1) & (ids >= 0) & _first_occurrence(ids)  # a repeated id: keep its first row
            self.counts["drops.bad_rows"] += int(len(ids) - ok.sum())
            ids, xy, kinds = ids[ok], xy[ok], kinds[ok]
        # one stable sort by route instead of a mask per route: each route's rows are a slice, in message order
        route_of = self.kind_route[kinds]
        by_route = np.argsort(route_of, kind="stable")
        ids, xy, kinds = ids[by_route], xy[by_route].astype(np.float64), kinds[by_route]
        edges = np.searchsorted(route_of[by_route], self.route_edges).tolist()
        for i, route in enumerate(self.routes):
            rows = slice(edges[i], edges[i + 1])
            out = self._advance(route, s, ids[rows], xy[rows], kinds[rows])
            if out is not None:
                self.publish("predictions", Predictions(stamp_ns=s, frame_id=msg.frame_id, model=route.name,
                                                        ids=out[0], kind=out[1], t_ns=out[2], xy=out[3]))
        self.counts["unrouted"] += edges[0]  # kind_route -1 sorts first
        self.dirty = True
        self.bridging = False
        self.n_msgs += 1
        self.cpu_s += time.process_time() - cpu0
        self.cb_us.append((time.perf_counter() - t_cb) * 1e6)

    def _advance(self, route: _Route, s: int, ids: np.ndarray, xy: np.ndarray, kind: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Ingest one message's agents of `route`; step every tick it closes; return the last predictions."""
        tab, p = route.table, self.params
        if s >= route.next_evict:  # every ttl_s/8 of stamp time: a scan of the table is not free
            route.next_evict = s + int(p.ttl_s * 1e9 / 8)
            act = tab.active()
            gone = act[s - tab.last_t[act] > p.ttl_s * 1e9]
            if len(gone):
                tab.free(gone)
                self.counts["evictions"] += len(gone)
        if len(ids) == 0:
            return None
        slots, new = tab.slots_for(ids)
        fresh = bool(new.any())  # most messages bring no new agent: skip the masks that follow
        if fresh and (full := slots < 0).any():
            self.counts["drops.capacity"] += int(full.sum())
            slots, new, ids, xy, kind = slots[~full], new[~full], ids[~full], xy[~full], kind[~full]
            fresh = bool(new.any())
        gap = tab.last_t[slots] < s - route.max_gap_ns  # (a new agent's last_t is stale: excluded below)
        if not self.bridging and gap.any():
            gap &= ~new
            if gap.any():
                tab.reset(slots[gap])
                self.counts["resets"] += int(gap.sum())
                new |= gap
                fresh = True
        if route.t0 is None:
            route.t0 = s - int(p.lag_s * 1e9)
        k_last = (s - route.t0) // route.dt_ns
        out = None
        # only old agents can be sampled before the last tick: after an idle hour, skip its ticks at once
        all_new = bool(new.all()) if fresh else len(slots) == 0
        k_first = max(route.k_next, k_last) if all_new else route.k_next
        for k in range(k_first, k_last + 1):
            t_k = route.t0 + k * route.dt_ns
            if t_k >= s or not fresh:
                if len(slots):
                    out = self._step(route, k, t_k, s, slots, xy, ids, kind, new if fresh else None)
            elif not all_new:  # a new agent joins at the first tick not before it appeared
                old = ~new
                out = self._step(route, k, t_k, s, slots[old], xy[old], ids[old], kind[old], None)
        route.k_next = max(route.k_next, k_last + 1)
        tab.last_t[slots], tab.last_xy[slots] = s, xy
        return out

    def _step(self, route: _Route, k: int, t_k: int, s: int, slots: np.ndarray, xy: np.ndarray, ids: np.ndarray,
              kind: np.ndarray, new: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample the agents in `slots` at tick k, run one batched model step, return predictions.

        new: which agents have no sample yet (None: none), sampled at their observation itself.
        """
        tab = route.table
        prev_t, prev_xy, last_k = tab.last_t[slots], tab.last_xy[slots], tab.last_k[slots]
        for j in np.flatnonzero(last_k < k - 1).tolist():  # absent from earlier ticks (within the gap limit;
            for kk in range(int(last_k[j]) + 1, k):         # not sampled yet: NEVER): fill the history only
                pos = _interp(prev_t[j:j + 1], prev_xy[j:j + 1], s, xy[j:j + 1], t_k - (k - kk) * route.dt_ns, None)
                tab.hist[slots[j]] = np.concatenate((tab.hist[slots[j], 1:], pos))
                tab.n_obs[slots[j]] += 1
        hist = np.concatenate((tab.hist[slots, 1:], _interp(prev_t, prev_xy, s, xy, t_k, new)[:, None]), axis=1)
        count = tab.n_obs[slots] + 1
        tab.hist[slots], tab.n_obs[slots], tab.last_k[slots] = hist, count, k
        n_obs = np.minimum(count, route.hl)
        frames = agent_frames(route.spec, hist, n_obs)  # once, for the features and for to_world
        x = step_features(route.spec, hist, n_obs, frames=frames)
        state = tab.state[:, :, slots]
        t0 = time.perf_counter()
        pred, new_state = route.model.step(x, tuple(state))  # the one batched step of this tick
        self.step_us.append((time.perf_counter() - t0) * 1e6)
        for st, ns in zip(tab.state, new_state, strict=True):
            st[:, slots] = ns
        self.counts["steps"] += 1
        self.counts["agent_steps"] += len(slots)
        world = to_world(route.spec, pred, hist, n_obs, frames=frames).astype(np.float32)
        ready = count >= self.params.min_obs
        if not ready.all():
            ids, kind, world = ids[ready], kind[ready], world[ready]
        return ids, kind, t_k + route.steps_ns, world

    # -- diagnostics --------------------------------------------------------------------------------
    def _update_diagnostics(self) -> None:
        d = self.diagnostics
        d.update({k: float(v) for k, v in self.counts.items()})
        for route in self.routes:
            d[f"agents.{route.name}"] = float(len(route.table))
        d["agents"] = float(sum(len(r.table) for r in self.routes))
        for name, window in (("step", self.step_us), ("tracks", self.cb_us)):
            if window:
                p50, p99 = np.percentile(np.fromiter(window, float), [50, 99])
                d[f"{name}_p50_us"], d[f"{name}_p99_us"] = float(p50), float(p99)
        if self.n_msgs:  # callback CPU per message over the last period
            d["cpu_us_per_msg"] = self.cpu_s / self.n_msgs * 1e6
            self.cpu_s, self.n_msgs = 0.0, 0
        d["cpu_s"] = time.process_time()  # the whole process (runtime included): benchmarks diff it
        d["rss_mb"] = _rss_mb()

    # -- state that survives a crash --------------------------------------------------------------
    def _state_path(self) -> Path | None:
        return None if self.state_dir is None else Path(self.state_dir) / STATE_FILE

    def _save_if_dirty(self) -> None:
        if self.dirty:
            self.save_state()

    def save_state(self) -> None:
        """Write every table to state_dir (atomic replace)."""
        path = self._state_path()
        if path is None:
            return
        arrays: dict[str, np.ndarray] = {
            "version": np.array(STATE_VERSION, np.int64), "saved_ns": np.array(self.now_ns(), np.int64),
            "last_stamp": np.array(-1 if self.last_stamp is None else self.last_stamp, np.int64)}
        for r in self.routes:
            arrays.update(r.table.arrays(f"{r.name}."))
            arrays[f"{r.name}.grid"] = np.array([-1 if r.t0 is None else r.t0, r.k_next, r.t0 is not None], np.int64)
            arrays[f"{r.name}.model_hash"] = np.array(r.model.meta.content_hash)
        save_npz(path, arrays)
        self.dirty = False

    def _restore(self) -> StateEvent:
        """Load the saved tables after a respawn; say what happened (never raise: a bad file = reset)."""
        path = self._state_path()
        if path is None or not path.is_file():
            return StateEvent(event="reset", reason="respawn: no saved state")
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["version"]) != STATE_VERSION:
                    raise ValueError(f"version {int(data['version'])}, expected {STATE_VERSION}")
                age_s = (self.now_ns() - int(data["saved_ns"])) / 1e9
                if age_s > self.params.ttl_s:
                    return StateEvent(event="reset", reason=f"respawn: saved state is {age_s:.1f} s old "
                                                            f"(ttl_s {self.params.ttl_s:g})")
                for r in self.routes:
                    if str(data[f"{r.name}.model_hash"]) != r.model.meta.content_hash:
                        raise ValueError(f"model {r.name!r} changed since the save")
                for r in self.routes:
                    r.table.restore(data, f"{r.name}.")
                    t0, k_next, has_t0 = (int(v) for v in data[f"{r.name}.grid"])
                    r.t0, r.k_next = (t0 if has_t0 else None), k_next
                last = int(data["last_stamp"])
                self.last_stamp = None if last < 0 else last
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            for r in self.routes:  # a half-applied restore must not survive
                r.table = AgentTable(r.table.capacity, len(r.table.state), r.model.meta.layers,
                                     r.model.meta.hidden, r.hl)
                r.t0, r.k_next = None, 0
            self.log.warning("state file %s not restored: %s", path, exc)
            return StateEvent(event="reset", reason=f"respawn: bad state file: {exc}")
        ids = np.concatenate([r.table.ids[r.table.active()] for r in self.routes])
        self.log.info("restored %d agent states (%.2f s old) from %s", len(ids), age_s, path)
        self.diagnostics["restored"] = float(len(ids))
        self.bridging = True
        return StateEvent(event="restored", reason=f"respawn: state {age_s:.2f} s old", ids=ids)

    def _reset_tables(self) -> None:
        for r in self.routes:
            m = r.model.meta
            r.table = AgentTable(r.table.capacity, len(r.table.state), m.layers, m.hidden, r.hl)
            r.t0, r.k_next = None, 0

    def shutdown(self) -> None:
        if hasattr(self, "routes"):
            self.save_state()


def _interp(prev_t: np.ndarray, prev_xy: np.ndarray, s: int, xy: np.ndarray, t: int,
            new: np.ndarray | None) -> np.ndarray:
    """Positions at time t between the previous observation and this one (no extrapolation); the new
    agents' (no previous observation) are this one."""
    if (prev_t == prev_t[0]).all():  # usually all were last seen in one message: one weight, fewer calls
        w0 = min(max(float(t - int(prev_t[0])) / float(max(s - int(prev_t[0]), 1)), 0.0), 1.0)  # as numpy's
        pos = xy if w0 >= 1.0 else prev_xy + w0 * (xy - prev_xy)
        return pos if new is None else np.where(new[:, None], xy, pos)
    w = np.minimum(np.maximum((t - prev_t) / np.maximum(s - prev_t, 1), 0.0), 1.0)
    at_xy = w >= 1.0 if new is None else (w >= 1.0) | new
    return np.where(at_xy[:, None], xy, prev_xy + w[:, None] * (xy - prev_xy))


def _resolve(path: str) -> Path:
    """A relative model path is tried in the working directory, then under the install root, where
    models/pretrained ships: the default launch.yaml then works from any directory."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    packaged = Path(__file__).resolve().parent.parent / p
    return packaged if packaged.exists() else p


def _distinct(ids: np.ndarray) -> bool:
    ordered = np.sort(ids)
    return not (ordered[1:] == ordered[:-1]).any()


def _first_occurrence(ids: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(ids), bool)
    keep[np.unique(ids, return_index=True)[1]] = True
    return keep


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")

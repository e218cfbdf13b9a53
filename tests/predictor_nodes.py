"""Helpers for the predictor tests: a scripted Tracks source, a sink that logs what it gets, tiny models.

The nodes are importable by node processes (`tests.predictor_nodes:ScriptedTracks`), so this module
imports no torch at module level; `make_models` imports it when a test calls it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nodes.sim import TrafficWorld
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import AgentKind, Diagnostics, Predictions, StateEvent, Tracks

BASE_NS = 1_000_000_000_000  # synthetic stamps: BASE_NS + i * period, the same in every run
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def scripted_tracks(count: int, agents: int = 24, seed: int = 3, rate_hz: float = 10.0,
                    pedestrian_fraction: float = 0.25) -> list[Tracks]:
    """A deterministic drive: the traffic simulator's truth at exact stamps."""
    world = TrafficWorld(agents, pedestrian_fraction, dt=1.0 / rate_hz, seed=seed)
    period = int(round(1e9 / rate_hz))
    out = []
    for i in range(count):
        world.step()
        ids, xy, vxy, kind = world.tracks()
        out.append(Tracks(stamp_ns=BASE_NS + i * period, frame_id="map", ids=ids, xy=xy, vxy=vxy, kind=kind))
    return out


def eth_tracks(limit_s: float = 60.0) -> list[Tracks]:
    """ETH/UCY crowds_zara01 as 2.5 Hz pedestrian Tracks (its first `limit_s` seconds of arrivals), keeping
    only tracks without interior gaps (to_grid would interpolate those, a causal node cannot)."""
    from models.datasets import load_scene  # numpy only

    files = sorted((DATA / "eth_ucy").rglob("crowds_zara01*.txt"))
    if not files:
        raise FileNotFoundError(f"no crowds_zara01*.txt under {DATA / 'eth_ucy'}")
    scene = load_scene("eth_ucy", files[0])
    t0 = min(float(tr.t_s[0]) for tr in scene.tracks)
    by_t: dict[int, list[tuple[int, float, float]]] = {}
    for n, tr in enumerate(scene.tracks):
        if len(tr.t_s) < 2 or np.any(np.diff(tr.t_s) > 0.41) or tr.t_s[0] - t0 > limit_s:
            continue
        for t, (x, y) in zip(tr.t_s, tr.xy, strict=True):
            by_t.setdefault(int(round((t - t0) * 1e9)), []).append((n, x, y))
    return [Tracks(stamp_ns=BASE_NS + t, frame_id="map", ids=np.array([r[0] for r in rows]),
                   xy=np.array([(r[1], r[2]) for r in rows], np.float32), vxy=np.zeros((len(rows), 2)),
                   kind=np.full(len(rows), AgentKind.PEDESTRIAN)) for t, rows in sorted(by_t.items())]


class ScriptedTracks(Node):
    """Publishes `scripted_tracks(...)` as fast as its consumers take it; after `pause_after` messages it
    waits until the file `go_file` exists (the test kills and respawns a consumer meanwhile)."""

    class Params(NodeParams):
        count: int = 50
        agents: int = 24
        seed: int = 3
        rate_hz: float = 10.0
        pause_after: int = 0
        go_file: str = ""
        data: str = "sim"  # or "eth": eth_tracks() (count ignored)

    params: Params
    outputs = {"tracks": Tracks}

    def setup(self) -> None:
        p = self.params
        self.msgs = eth_tracks() if p.data == "eth" else scripted_tracks(p.count, p.agents, p.seed, p.rate_hz)
        self.sent = 0
        self.every(0.005, self.tick)

    def tick(self) -> None:
        p = self.params
        while self.sent < len(self.msgs):
            if p.pause_after and self.sent == p.pause_after and not Path(p.go_file).exists():
                return
            self.publish("tracks", self.msgs[self.sent])
            self.sent += 1
        self.stop("all messages sent")


class PredictionLog(Node):
    """Appends every Predictions, StateEvent and predictor Diagnostics it receives to a JSON-lines file."""

    class Params(NodeParams):
        out: str

    params: Params
    inputs = {"predictions": Predictions, "events": StateEvent, "diagnostics": Diagnostics}

    def setup(self) -> None:
        self.fh = Path(self.params.out).open("a")  # noqa: SIM115 - open for the node's life

    def _write(self, obj: dict) -> None:
        self.fh.write(json.dumps(obj) + "\n")
        self.fh.flush()

    def on_predictions(self, msg: Predictions) -> None:
        self._write({"type": "pred", "model": msg.model, "stamp": msg.stamp_ns, "ids": msg.ids.tolist(),
                     "t_ns": msg.t_ns.tolist(), "xy": msg.xy.tolist()})

    def on_events(self, msg: StateEvent) -> None:
        self._write({"type": "event", "event": msg.event, "reason": msg.reason, "ids": msg.ids.tolist()})

    def on_diagnostics(self, msg: Diagnostics) -> None:
        self._write({"type": "diag", "values": msg.values})

    def shutdown(self) -> None:
        self.fh.close()


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written right now
            break
    return out


def make_models(tmp: Path, hidden: int = 16, seed: int = 0, features: dict | None = None,
                modes: int = 1) -> dict[str, Path]:
    """A tiny random vehicle model (dt 0.1 s, T 30) and pedestrian model (dt 0.4 s, T 12), exported;
    `features` overrides keys of both default feature specs; `modes` is each model's number of futures K."""
    import torch

    from export.runtime.features import default_spec, feature_dim
    from export.torch_export.onnx_export import export_onnx
    from models.trajectory import ModelConfig, TrajectoryModel, save_checkpoint

    out = {}
    for kind, dt, horizon, obs in (("vehicle", 0.1, 30, 20), ("pedestrian", 0.4, 12, 8)):
        torch.manual_seed(seed)
        spec = {**default_spec(kind), **(features or {})}
        cfg = ModelConfig(cell="lstm", input_dim=feature_dim(spec), hidden=hidden, layers=2, horizon=horizon,
                          obs_len=obs, dt_s=dt, features=spec, modes=modes)
        model = TrajectoryModel(cfg).eval()
        ckpt = tmp / f"{kind}.pt"
        save_checkpoint(ckpt, model, cfg, {"cv_k": 1}, {"dataset": "random"})
        export_onnx(ckpt, tmp / f"{kind}.onnx")
        out[kind] = tmp / f"{kind}.onnx"
    return out

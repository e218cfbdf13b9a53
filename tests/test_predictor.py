"""nodes/predictor.py in one process (LocalGraph): parity with the offline model, the agent lifecycle,
drops, routing, errors and state that survives a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.runtime.features import step_features, to_world
from export.runtime.step_model import StepModel
from nodes.predictor import Predictor
from nodes.state_file import STATE_FILE
from pipeline.errors import ConfigError
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Predictions, StateEvent, Tracks
from tests.predictor_nodes import BASE_NS, DATA, eth_tracks, make_models, scripted_tracks

pytest.importorskip("torch")
from models.datasets import Scene, Track, to_grid  # noqa: E402
from models.sequences import pool_at  # noqa: E402

KIND_NAME = {AgentKind.VEHICLE: "vehicle", AgentKind.PEDESTRIAN: "pedestrian"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


# -- helpers -------------------------------------------------------------------------------------------
def offline(msgs: list[Tracks], model_path: Path, kind: int, min_obs: int = 2, max_gap_steps: float = 2.5,
            final_state: dict[int, np.ndarray] | None = None, modes: bool = False,
            ) -> dict[tuple[int, int], np.ndarray]:
    """The training pipeline on the same track set: to_grid + pool_at + step_features, state carried.

    Returns {(tick time ns, agent id): predicted world xy[T,2]} for agents with >= min_obs samples
    (`modes`: every future, xy[K,T,2], each mapped to the world on its own, by `step_modes`);
    fills `final_state` with {agent id: its state [n_state, L, H] after the last tick}.
    """
    model = StepModel(model_path)
    spec, dt = model.meta.features, model.meta.dt_s
    rows: dict[int, list[tuple[float, float, float]]] = {}
    for m in msgs:
        for i in np.flatnonzero(m.kind == kind):
            x, y = (float(v) for v in m.xy[i])
            rows.setdefault(int(m.ids[i]), []).append(((m.stamp_ns - BASE_NS) / 1e9, x, y))
    if not rows:
        return {}
    tracks = [Track(str(a), "x", np.array([r[0] for r in v]), np.array([r[1:] for r in v])) for a, v in rows.items()]
    ids = list(rows)
    grid = to_grid(Scene("s", "g", "", tracks), dt, max_gap_steps)
    assert grid.xy.shape[0] == len(ids), "a track was split: the test input must have no gaps"
    first = grid.first()
    state = model.zero_state(len(ids))
    out = {}
    for s in range(grid.xy.shape[1]):
        idx, hist, n_obs = pool_at(spec, grid, s, first)
        if len(idx) == 0:
            continue
        x, st_in = step_features(spec, hist, n_obs), tuple(st[:, idx] for st in state)
        if modes:
            futures, _, new = model.step_modes(x, st_in)
            world = np.stack([to_world(spec, futures[:, k], hist, n_obs) for k in range(futures.shape[1])], 1)
        else:
            pred, new = model.step(x, st_in)
            world = to_world(spec, pred, hist, n_obs)
        for st, ns in zip(state, new, strict=True):
            st[:, idx] = ns
        t_ns = BASE_NS + int(round((grid.t0_s + s * dt) * 1e9))
        for j, a in enumerate(idx):
            if s - first[a] + 1 >= min_obs:
                out[(t_ns, ids[a])] = world[j]
    if final_state is not None:
        final_state.update({agent: np.stack([st[:, a] for st in state]) for a, agent in enumerate(ids)})
    return out


def run_local(msgs: list[Tracks], params: dict, state_root: Path | None = None, is_restart: bool = False,
              ) -> tuple[LocalGraph, Predictor]:
    """Run the predictor over msgs; `lag_s` defaults to 0 here (the grid is to_grid's) unless given."""
    g = LocalGraph(start_ns=BASE_NS, state_root=state_root)
    node = g.add("pred", Predictor, {"lag_s": 0, **params}, inputs={"tracks": "src/tracks"}, is_restart=is_restart)
    g.start()
    feed(g, msgs)
    return g, node  # type: ignore[return-value]


def feed(g: LocalGraph, msgs: list[Tracks]) -> None:
    for m in msgs:
        g.advance_to(m.stamp_ns)
        g.inject("src/tracks", m)
        g.spin()


def streamed(g: LocalGraph, model: str, modes: bool = False) -> dict[tuple[int, int], np.ndarray]:
    out = {}
    for p in g.published.get("pred/predictions", []):
        assert isinstance(p, Predictions)
        if p.model == model:
            t_k = int(p.t_ns[0]) - int(p.t_ns[1] - p.t_ns[0])
            for i, a in enumerate(p.ids.tolist()):
                out[(t_k, a)] = p.modes[i] if modes else p.xy[i]
    return out


def assert_same(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), f"{len(a.keys() - b.keys())} extra, {len(b.keys() - a.keys())} missing"
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff <= 1e-4
    return diff


def tracks(stamp_ns: int, ids: list[int], xy: list[tuple[float, float]], kind: int = AgentKind.VEHICLE) -> Tracks:
    n = len(ids)
    return Tracks(stamp_ns=stamp_ns, ids=np.array(ids), xy=np.array(xy, dtype=np.float32).reshape(n, 2),
                  vxy=np.zeros((n, 2)), kind=np.full(n, kind))


def straight(n: int, ids: list[int], start: int = 0, period_ns: int = 100_000_000, speed: float = 1.0) -> list[Tracks]:
    return [tracks(BASE_NS + (start + i) * period_ns, ids, [(speed * (start + i) * 0.1, 3.0 * a) for a in ids])
            for i in range(n)]


# -- parity ----------------------------------------------------------------------------------------------
def test_streaming_predictions_equal_the_offline_model_for_both_models_of_a_simulated_drive(
        models: dict[str, Path]) -> None:
    msgs = scripted_tracks(60)
    g, node = run_local(msgs, {"models": {k: str(v) for k, v in models.items()}, "lag_s": 0})
    for code, name in KIND_NAME.items():
        ref = offline(msgs, models[name], code)
        assert ref, name
        assert_same(streamed(g, name), ref)
    # 10 Hz Tracks: the vehicle model (0.1 s) steps on every message, the pedestrian model (0.4 s) every 4th
    assert node.counts["steps"] == 60 + 15


def test_streaming_equals_offline_for_a_spec_that_looks_back_for_the_heading_of_slow_agents(
        models: dict[str, Path], tmp_path: Path) -> None:
    """heading_lookback lengthens the history the node keeps; node and training still agree, and the
    vehicle that slows down in this drive does get other frames than without it (same weights)."""
    look = make_models(tmp_path, features={"heading_lookback": 12})
    msgs = scripted_tracks(60)
    g, _ = run_local(msgs, {"models": {k: str(v) for k, v in look.items()}, "lag_s": 0})
    refs = {name: offline(msgs, look[name], code) for code, name in KIND_NAME.items()}
    for name, ref in refs.items():
        assert_same(streamed(g, name), ref)
    plain = offline(msgs, models["vehicle"], AgentKind.VEHICLE)
    assert any(not np.allclose(refs["vehicle"][k], plain[k]) for k in plain)


def _eth_messages() -> list[Tracks]:
    if not (DATA / "eth_ucy").is_dir():
        pytest.skip("no ETH/UCY data under ../shared/data")
    return eth_tracks()


def test_streaming_predictions_equal_the_offline_model_on_a_real_pedestrian_recording(models: dict[str, Path]) -> None:
    msgs = _eth_messages()
    g, _ = run_local(msgs, {"models": {"pedestrian": str(models["pedestrian"])}, "lag_s": 0})
    ref = offline(msgs, models["pedestrian"], AgentKind.PEDESTRIAN)
    assert len(ref) > 100
    assert_same(streamed(g, "pedestrian"), ref)


def test_streaming_equals_offline_with_crowd_features_on_a_real_pedestrian_recording(tmp_path: Path) -> None:
    """Crowd features (spec version 2) pool every neighbour within radius: the node's pool is whoever
    its Tracks hold, training's whoever the grid holds, and the two must still agree."""
    msgs = _eth_messages()
    crowd = make_models(tmp_path, features={"crowd": 12, "version": 2})
    g, _ = run_local(msgs, {"models": {"pedestrian": str(crowd["pedestrian"])}, "lag_s": 0})
    ref = offline(msgs, crowd["pedestrian"], AgentKind.PEDESTRIAN)
    assert len(ref) > 100
    assert_same(streamed(g, "pedestrian"), ref)


def test_tracks_slower_than_the_model_step_once_per_tick_on_interpolated_positions(models: dict[str, Path]) -> None:
    msgs = scripted_tracks(120)[::5]  # 2 Hz Tracks for the 10 Hz vehicle model: 5 ticks per message
    g, node = run_local(msgs, {"models": {"vehicle": str(models["vehicle"])}, "max_gap_steps": 6, "lag_s": 0})
    got = streamed(g, "vehicle")
    ref = offline(msgs, models["vehicle"], AgentKind.VEHICLE, max_gap_steps=6)
    # one Predictions message per Tracks message: the last tick it closed (the stamp's own tick)
    published_ticks = {t for t, _ in got}
    assert published_ticks == {m.stamp_ns for m in msgs[1:]}  # the first has no agent with 2 samples
    assert_same(got, {k: v for k, v in ref.items() if k[0] in published_ticks})
    assert node.counts["steps"] == 1 + 5 * (len(msgs) - 1)


# -- lifecycle -------------------------------------------------------------------------------------------
def _preds(g: LocalGraph) -> list[Predictions]:
    return [p for p in g.published.get("pred/predictions", []) if isinstance(p, Predictions)]


def test_a_new_agent_is_predicted_only_after_min_obs_samples(models: dict[str, Path]) -> None:
    g, _ = run_local(straight(5, [1]), {"models": {"vehicle": str(models["vehicle"])}, "min_obs": 3})
    assert [len(p.ids) for p in _preds(g)] == [0, 0, 1, 1, 1]


def test_predictions_are_in_world_coordinates_at_absolute_future_times(models: dict[str, Path]) -> None:
    g, _ = run_local(straight(4, [7]), {"models": {"vehicle": str(models["vehicle"])}})
    last = _preds(g)[-1]
    assert last.model == "vehicle" and last.ids.tolist() == [7] and last.kind.tolist() == [AgentKind.VEHICLE]
    assert last.stamp_ns == BASE_NS + 3 * 100_000_000
    assert np.array_equal(last.t_ns, last.stamp_ns + 100_000_000 * np.arange(1, 31))
    assert last.xy.shape == (1, 30, 2)
    assert np.abs(last.xy[0, 0] - (0.3, 21.0)).max() < 5.0  # near the agent, not near the origin


def test_a_model_of_one_future_publishes_no_alternatives(models: dict[str, Path]) -> None:
    last = _preds(run_local(straight(4, [7]), {"models": {"vehicle": str(models["vehicle"])}})[0])[-1]
    assert last.modes.shape == (1, 0, 30, 2) and last.prob.shape == (1, 0)


@pytest.fixture(scope="module")
def models_k6(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models_k6"), modes=6)


def test_a_model_of_k_futures_publishes_each_with_its_probability_and_steps_like_step(
        models_k6: dict[str, Path]) -> None:
    msgs = scripted_tracks(40)
    g, node = run_local(msgs, {"models": {"vehicle": str(models_k6["vehicle"])}})
    preds = _preds(g)
    assert sum(len(p.ids) for p in preds) > 100
    for p in preds:
        n = len(p.ids)
        assert p.modes.shape == (n, 6, 30, 2) and p.prob.shape == (n, 6)
        assert (np.abs(p.prob.sum(1) - 1) < 1e-5).all() and (p.prob > 0).all()
        assert np.array_equal(p.xy, p.modes[np.arange(n), p.prob.argmax(1)])  # xy: the most probable future
    last = preds[-1].modes
    assert np.ptp(last, axis=1).max() > 0.1  # K different futures, not one six times
    # every future is mapped to the world as the most probable one is
    assert_same(streamed(g, "vehicle", modes=True), offline(msgs, models_k6["vehicle"], AgentKind.VEHICLE, modes=True))
    # xy, and the state after every tick, are what a consumer of `step` (the most probable future) gets
    state: dict[int, np.ndarray] = {}
    assert_same(streamed(g, "vehicle"), offline(msgs, models_k6["vehicle"], AgentKind.VEHICLE, final_state=state))
    tab = node.routes[0].grid.table
    live = np.flatnonzero(tab.ids >= 0)
    assert len(live) > 10 and set(tab.ids[live].tolist()) <= set(state)
    for slot in live.tolist():
        assert np.abs(tab.state[:, :, slot] - state[int(tab.ids[slot])]).max() <= 1e-5


def test_duplicate_and_out_of_order_stamps_are_dropped_and_counted(models: dict[str, Path]) -> None:
    msgs = straight(4, [1])
    g, node = run_local([msgs[0], msgs[1], msgs[1], msgs[0], msgs[2]], {"models": {"vehicle": str(models["vehicle"])}})
    assert node.counts["drops.duplicate"] == 1 and node.counts["drops.out_of_order"] == 1
    assert len(_preds(g)) == 3


def test_stale_tracks_are_dropped_when_max_age_is_set(models: dict[str, Path]) -> None:
    g = LocalGraph(start_ns=BASE_NS + 10**9)
    node = g.add("pred", Predictor, {"models": {"vehicle": str(models["vehicle"])}, "max_age_s": 0.5},
                 inputs={"tracks": "src/tracks"})
    g.start()
    g.inject("src/tracks", straight(1, [1])[0])
    g.spin()
    assert isinstance(node, Predictor) and node.counts["drops.stale"] == 1 and not _preds(g)


def test_an_agent_unseen_for_ttl_is_evicted_and_its_reused_id_starts_fresh(models: dict[str, Path]) -> None:
    params = {"models": {"vehicle": str(models["vehicle"])}, "ttl_s": 0.5}
    first = straight(10, [1, 2])
    later = [tracks(m.stamp_ns + 2 * 10**9, [1, 2, 3], [(0.0, 50.0), (x, y), (x, y)])
             for m in first for (x, y) in [tuple(map(float, m.xy[1]))]]
    g, node = run_local(first + later, params)
    assert node.counts["evictions"] == 2
    # after eviction, id 2 is a stranger: same inputs as the brand-new id 3, so the same prediction
    p = _preds(g)[-1]
    xy = dict(zip(p.ids.tolist(), p.xy, strict=True))
    np.testing.assert_array_equal(xy[2], xy[3])


def test_a_gap_longer_than_the_limit_resets_the_agent(models: dict[str, Path]) -> None:
    msgs = straight(5, [1]) + straight(5, [1], start=9)  # 0.5 s gap > 2.5 * 0.1 s
    g, node = run_local(msgs, {"models": {"vehicle": str(models["vehicle"])}})
    assert node.counts["resets"] == 1
    assert [len(p.ids) for p in _preds(g)][5:] == [0, 1, 1, 1, 1]  # min_obs again after the reset


def test_an_agent_missing_from_a_message_gets_its_missed_sample_interpolated_into_its_history(
        models: dict[str, Path]) -> None:
    both, only_1 = straight(6, [1, 2]), straight(6, [1])
    g, node = run_local([*both[:3], only_1[3], *both[4:]], {"models": {"vehicle": str(models["vehicle"])}})
    tab = node.routes[0].grid.table
    slot = tab.slots_for(np.array([2]))[0][0]
    assert tab.n_obs[slot] == 6 and node.counts["resets"] == 0
    # a straight line at 1 m/s: the filled sample at 0.3 s is exact
    np.testing.assert_allclose(tab.hist[slot, -6:, 0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-6)


def test_agents_after_days_of_silence_start_fresh_without_replaying_the_silent_ticks(models: dict[str, Path]) -> None:
    import time
    four_days = 4 * 24 * 3600 * 10  # in 0.1 s periods
    msgs = straight(3, [1]) + straight(3, [2], start=four_days)
    g = LocalGraph(start_ns=BASE_NS)
    node = g.add("pred", Predictor, {"models": {"vehicle": str(models["vehicle"])}, "lag_s": 0, "max_future_s": 0},
                 inputs={"tracks": "src/tracks"})
    g.start()
    t = time.perf_counter()
    for m in msgs:  # the clock stays put (max_future_s off): days of timer ticks are not the point here
        g.inject("src/tracks", m)
        g.spin()
    assert time.perf_counter() - t < 2.0  # 3.5 million empty ticks are not walked one by one
    assert isinstance(node, Predictor)
    assert node.counts["steps"] == 6 and node.counts["evictions"] == 1
    assert [len(p.ids) for p in _preds(g)] == [0, 1, 1, 0, 1, 1]


def test_the_table_capacity_bounds_the_agents_and_the_rest_are_counted(models: dict[str, Path]) -> None:
    g, node = run_local(straight(3, [1, 2, 3, 4, 5]), {"models": {"vehicle": str(models["vehicle"])}, "capacity": 3})
    assert node.counts["drops.capacity"] == 6
    assert sorted(_preds(g)[-1].ids.tolist()) == [1, 2, 3]


def test_agent_kinds_route_to_their_own_model_and_unrouted_kinds_are_counted(models: dict[str, Path]) -> None:
    msgs = [Tracks(stamp_ns=BASE_NS + i * 100_000_000, ids=np.array([1, 2, 3]),
                   xy=np.array([[i * 1.0, 0], [i * 0.13, 9], [0, i]], np.float32), vxy=np.zeros((3, 2)),
                   kind=np.array([AgentKind.VEHICLE, AgentKind.PEDESTRIAN, AgentKind.CYCLIST])) for i in range(9)]
    g, node = run_local(msgs, {"models": {k: str(v) for k, v in models.items()}})
    last = {p.model: p for p in _preds(g)[-2:]}
    assert last["vehicle"].ids.tolist() == [1] and last["pedestrian"].ids.tolist() == [2]
    assert last["vehicle"].xy.shape[1] == 30 and last["pedestrian"].xy.shape[1] == 12
    assert node.counts["unrouted"] == 9
    assert [p.model for p in _preds(g)].count("pedestrian") == 3  # 2.5 Hz: ticks at messages 0, 4, 8


def test_diagnostics_report_agents_steps_and_latency(models: dict[str, Path]) -> None:
    g, node = run_local(straight(20, [1, 2]), {"models": {"vehicle": str(models["vehicle"])}})
    g.advance_to(BASE_NS + 5 * 10**9)
    d = node.diagnostics
    assert d["agents"] == 2 and d["agents.vehicle"] == 2 and d["steps"] == 20
    for key in ("step_p50_us", "step_p99_us", "tracks_p50_us", "tracks_p99_us", "cpu_us_per_msg", "rss_mb"):
        assert d[key] > 0, key


# -- errors -------------------------------------------------------------------------------------------------
def test_a_missing_model_file_names_the_param_and_the_path(tmp_path: Path) -> None:
    # Found when the params are checked (LocalGraph.add, or load_graph before any process starts).
    with pytest.raises(ConfigError, match=r"^pred: params: models\.vehicle: no such model file '.*nope\.onnx'$"):
        LocalGraph().add("pred", Predictor, {"models": {"vehicle": str(tmp_path / "nope.onnx")}})


def test_an_unknown_agent_kind_is_refused(models: dict[str, Path]) -> None:
    g = LocalGraph()
    g.add("pred", Predictor, {"models": {"truck": str(models["vehicle"])}})
    with pytest.raises(ValueError, match=r"params\.models\.truck: unknown agent kind; expected one of unknown, vehicle"):
        g.start()


@pytest.mark.parametrize(("key", "value", "expected"), [("capacity", 0, "int >= 1"), ("ttl_s", -1.0, "float > 0.0"),
                                                        ("max_gap_steps", 0.5, "float >= 1.0"),
                                                        ("lag_s", -0.1, "float >= 0.0")])
def test_out_of_range_params_are_named(models: dict[str, Path], key: str, value: float, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"^pred: params\.{key}: expected {expected}"):
        LocalGraph().add("pred", Predictor, {"models": {"vehicle": str(models["vehicle"])}, key: value})


def test_no_models_is_refused() -> None:
    g = LocalGraph()
    g.add("pred", Predictor, {})
    with pytest.raises(ValueError, match=r"params\.models: expected at least one"):
        g.start()


# -- state that survives a restart ---------------------------------------------------------------------------
def _events(g: LocalGraph) -> list[StateEvent]:
    return [e for e in g.published.get("pred/events", []) if isinstance(e, StateEvent)]


def test_a_restarted_node_restores_the_saved_state_and_continues_like_an_uninterrupted_one(
        models: dict[str, Path], tmp_path: Path) -> None:
    params = {"models": {k: str(v) for k, v in models.items()}}
    msgs = scripted_tracks(40)
    whole, _ = run_local(msgs, params)
    first, node = run_local(msgs[:23], params, state_root=tmp_path)
    node.shutdown()  # saves
    assert (tmp_path / "pred" / STATE_FILE).is_file()
    second, _ = run_local(msgs[23:], params, state_root=tmp_path, is_restart=True)
    (event,) = _events(second)
    assert event.event == "restored" and len(event.ids) > 10
    for name in KIND_NAME.values():
        after = {k: v for k, v in streamed(whole, name).items() if k[0] > msgs[22].stamp_ns}
        assert_same(streamed(second, name), after)


def test_after_a_restore_the_downtime_is_bridged_like_to_grid_interpolates_a_gap(
        models: dict[str, Path], tmp_path: Path) -> None:
    params = {"models": {k: str(v) for k, v in models.items()}, "ttl_s": 60.0}
    msgs = scripted_tracks(60)
    _, node = run_local(msgs[:20], params, state_root=tmp_path)
    node.shutdown()
    second, restarted = run_local(msgs[35:], params, state_root=tmp_path, is_restart=True)  # 1.5 s down
    assert restarted.counts["resets"] == 0
    kept = [*msgs[:20], *msgs[35:]]
    for code, name in KIND_NAME.items():
        got = streamed(second, name)
        ref = offline(kept, models[name], code, max_gap_steps=100)  # to_grid interpolates the gap too
        assert_same(got, {k: v for k, v in ref.items() if k[0] in {t for t, _ in got}})
    first_after = [p for p in _preds(second) if p.model == "vehicle"][0]
    assert len(first_after.ids) > 10  # the restored agents are predicted at once, not after min_obs


def test_a_fresh_start_says_reset(models: dict[str, Path]) -> None:
    g, _ = run_local(straight(2, [1]), {"models": {"vehicle": str(models["vehicle"])}})
    assert [(e.event, e.reason) for e in _events(g)] == [("reset", "start")]


def test_state_older_than_ttl_is_not_restored(models: dict[str, Path], tmp_path: Path) -> None:
    params = {"models": {"vehicle": str(models["vehicle"])}, "ttl_s": 1.0}
    _, node = run_local(straight(5, [1]), params, state_root=tmp_path)
    node.shutdown()
    g = LocalGraph(start_ns=BASE_NS + 10 * 10**9, state_root=tmp_path)
    g.add("pred", Predictor, params, inputs={"tracks": "src/tracks"}, is_restart=True)
    g.start()
    feed(g, straight(2, [1], start=100))
    (event,) = _events(g)
    assert event.event == "reset" and "old (ttl_s 1)" in event.reason


@pytest.mark.parametrize("damage", ["garbage", "other_model", "pickle"])
def test_a_bad_state_file_resets_instead_of_crashing(models: dict[str, Path], tmp_path: Path, damage: str) -> None:
    params = {"models": {"vehicle": str(models["vehicle"])}}
    path = tmp_path / "pred" / STATE_FILE
    _, node = run_local(straight(5, [1]), params, state_root=tmp_path)
    node.shutdown()
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif damage == "other_model":
        data = dict(np.load(path))
        data["vehicle.model_hash"] = np.array("sha256:0")
        np.savez(path, **data)
    else:
        data = dict(np.load(path))
        data["version"] = np.array([{"evil": 1}], dtype=object)
        with open(path, "wb") as fh:
            np.savez(fh, **data)
    g, _ = run_local(straight(2, [1], start=5), params, state_root=tmp_path, is_restart=True)
    (event,) = _events(g)
    assert event.event == "reset" and "bad state file" in event.reason


def test_the_grid_lag_absorbs_stamp_jitter_so_each_message_closes_one_tick(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    msgs = straight(50, [1, 2])
    for m in msgs[1:]:
        m.stamp_ns += int(rng.uniform(-0.02, 0.02) * 1e9)  # a live source: +-20 ms around its period
    params = {"models": {"vehicle": str(models["vehicle"])}}
    g, node = run_local(msgs, {**params, "lag_s": 0.03})
    assert node.counts["steps"] == 49 and len(_preds(g)) == 49  # agents of the first message join at tick 1
    # without the lag, a message that comes early closes no tick, and the next one closes two
    g0, _ = run_local(msgs, params)
    assert len(_preds(g0)) < 45


def test_rows_with_bad_positions_negative_or_repeated_ids_are_dropped_and_counted(models: dict[str, Path]) -> None:
    msgs = straight(3, [1, 2])
    bad = Tracks(stamp_ns=msgs[2].stamp_ns + 10**8, ids=np.array([1, 2, 2, -5]),
                 xy=np.array([[0.3, 3.0], [np.nan, 6.0], [0.3, 6.0], [1.0, 1.0]], np.float32),
                 vxy=np.zeros((4, 2)), kind=np.full(4, AgentKind.VEHICLE))
    g, node = run_local([*msgs, bad], {"models": {"vehicle": str(models["vehicle"])}})
    assert node.counts["drops.bad_rows"] == 3
    assert _preds(g)[-1].ids.tolist() == [1] and np.isfinite(_preds(g)[-1].xy).all()


def test_state_saved_with_a_larger_table_resets_a_smaller_one(models: dict[str, Path], tmp_path: Path) -> None:
    params = {"models": {"vehicle": str(models["vehicle"])}}
    _, node = run_local(straight(3, [1, 2, 3, 4, 5]), params, state_root=tmp_path)
    node.shutdown()
    with np.load(tmp_path / "pred" / STATE_FILE, allow_pickle=False) as data:
        assert data["vehicle.slots"].tolist() == [0, 1, 2, 3, 4]  # only the rows in use are written
    g, _ = run_local(straight(2, [1], start=3), {**params, "capacity": 3}, state_root=tmp_path, is_restart=True)
    (event,) = _events(g)
    assert event.event == "reset" and "do not fit a table of 3 slots" in event.reason

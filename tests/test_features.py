"""export/runtime/features.py: frames, round trips, the training builder equals step-by-step calls, constant velocity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.runtime.features import (
    CROWD_DIM,
    FeatureSpecError,
    agent_frames,
    constant_velocity,
    default_spec,
    feature_dim,
    history_len,
    mirror_sign,
    step_features,
    to_frame,
    to_world,
    unscaled_mask,
    validate_spec,
)

CROWD = dict(default_spec("pedestrian"), crowd=12, version=2)   # every neighbour within radius, pooled


def _random_pool(rng: np.random.Generator, spec: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    hl = history_len(spec)
    start = rng.uniform(-5, 5, (n, 1, 2))
    steps = rng.normal(0, 0.4, (n, hl, 2)).cumsum(axis=1)
    hist = start + steps
    n_obs = rng.integers(1, hl + 1, n)
    # what a node does not know is not to be read: poison it
    for i in range(n):
        hist[i, : hl - n_obs[i]] = np.nan
    return hist, n_obs


def test_features_module_does_not_import_torch() -> None:
    import export.runtime.features as f

    assert "torch" not in f.__dict__
    src = Path(f.__file__).read_text()
    assert "import torch" not in src


def test_feature_dim_matches_step_features_output() -> None:
    for spec in (default_spec("pedestrian"), default_spec("vehicle"), CROWD):
        hist, n_obs = _random_pool(np.random.default_rng(0), spec, 7)
        x = step_features(spec, hist, n_obs)
        assert x.shape == (7, feature_dim(spec)) and x.dtype == np.float32
        assert np.isfinite(x).all()


def test_to_world_inverts_to_frame() -> None:
    spec = default_spec("pedestrian")
    rng = np.random.default_rng(1)
    hist, n_obs = _random_pool(rng, spec, 9)
    fut = rng.normal(0, 3, (9, 12, 2))
    back = to_world(spec, to_frame(spec, fut, hist, n_obs), hist, n_obs)
    np.testing.assert_allclose(back, fut, atol=1e-9)


def test_frame_x_axis_points_along_heading() -> None:
    spec = default_spec("vehicle")
    hl = history_len(spec)
    heading = np.deg2rad(30.0)
    line = np.arange(hl)[:, None] * np.array([np.cos(heading), np.sin(heading)])
    origin, rot = agent_frames(spec, line[None], np.array([hl]))
    np.testing.assert_allclose(rot[0] @ (line[-1] - line[-2]), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(origin[0], line[-1])


def test_a_stopped_agent_keeps_the_heading_it_stopped_with_when_the_spec_looks_back() -> None:
    """A car that drove north and stopped 0.6 s ago: heading_lookback finds its last motion; without it
    (the rule of specs saved before the key existed) the frame falls back to the world axes."""
    old = default_spec("vehicle")
    new = dict(old, heading_lookback=12)
    north = np.stack([np.zeros(13), np.r_[np.arange(7) * 1.0, np.full(6, 6.0)]], axis=1)[None]  # 13 positions
    _, rot = agent_frames(new, north, np.array([13]))
    np.testing.assert_allclose(rot[0] @ [0.0, 1.0], [1.0, 0.0], atol=1e-12)   # x axis = north
    _, rot_old = agent_frames(old, north[:, -history_len(old):], np.array([history_len(old)]))
    np.testing.assert_allclose(rot_old[0], np.eye(2), atol=1e-12)
    # the look-back stops at what the agent has observed (n_obs): 6 samples at rest, no earlier position
    _, rot_capped = agent_frames(new, north, np.array([6]))
    np.testing.assert_allclose(rot_capped[0], np.eye(2), atol=1e-12)
    # a moving agent's frame is the same with or without look-back
    line = np.arange(13)[:, None] * np.array([[0.6, 0.8]])
    np.testing.assert_array_equal(agent_frames(new, line[None], np.array([13]))[1],
                                  agent_frames(old, line[None, -9:], np.array([9]))[1])


@pytest.mark.parametrize("spec", [default_spec("pedestrian"), CROWD], ids=["nearest", "crowd"])
def test_features_are_rotation_and_translation_invariant(spec: dict) -> None:
    hist, n_obs = _random_pool(np.random.default_rng(2), spec, 6)
    n_obs[:] = history_len(spec)   # every agent moving with a known heading
    hist = np.nan_to_num(hist)
    a = np.deg2rad(73.0)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = hist @ r.T + np.array([100.0, -40.0])
    np.testing.assert_allclose(step_features(spec, moved, n_obs), step_features(spec, hist, n_obs), atol=1e-5)


@pytest.mark.parametrize("spec", [default_spec("pedestrian"), CROWD], ids=["nearest", "crowd"])
def test_mirror_sign_equals_features_of_mirrored_scene(spec: dict) -> None:
    hist, n_obs = _random_pool(np.random.default_rng(3), spec, 6)
    n_obs[:] = history_len(spec)
    hist = np.nan_to_num(hist)
    mirrored = hist * np.array([1.0, -1.0])
    np.testing.assert_allclose(step_features(spec, mirrored, n_obs),
                               step_features(spec, hist, n_obs) * mirror_sign(spec), atol=1e-5)


@pytest.mark.parametrize("spec", [default_spec("pedestrian"), CROWD], ids=["nearest", "crowd"])
def test_rows_and_row_cap_select_and_forget_history(spec: dict) -> None:
    hist, n_obs = _random_pool(np.random.default_rng(4), spec, 5)
    n_obs[:] = history_len(spec)
    full = step_features(spec, hist, n_obs)
    np.testing.assert_array_equal(step_features(spec, hist, n_obs, rows=np.array([3, 1])), full[[3, 1]])
    capped = step_features(spec, hist, n_obs, rows=np.array([2]), row_n_obs=np.array([1]))
    k = spec["history"]
    assert not capped[0, : 3 * k].any()   # a fresh agent knows no displacement


def test_neighbours_beyond_radius_are_absent() -> None:
    spec = default_spec("pedestrian")
    hl = history_len(spec)
    hist = np.zeros((2, hl, 2))
    hist[1] += [spec["radius"] + 1.0, 0.0]
    x = step_features(spec, hist, np.array([hl, hl]))
    assert not x[:, 3 * spec["history"]:].any()


def test_a_neighbour_at_exactly_the_radius_is_present_and_just_beyond_it_is_absent() -> None:
    spec = default_spec("pedestrian")
    hl, k = history_len(spec), spec["history"]
    hist = np.zeros((3, hl, 2))
    hist[1] += [spec["radius"], 0.0]
    hist[2] += [0.0, np.nextafter(spec["radius"], np.inf)]
    x = step_features(spec, hist, np.array([hl, hl, hl]))
    assert x[0, 3 * k + 4] == 1.0 and x[0, 3 * k] == 1.0   # agent 1, one radius east, relative x 1
    assert not x[0, 3 * k + 5:].any()                         # agent 2 is not there


def test_neighbours_at_equal_distance_are_ordered_by_index() -> None:
    spec = default_spec("pedestrian")
    hl, k = history_len(spec), spec["history"]
    hist = np.zeros((4, hl, 2))
    hist[1:] += np.array([[0.0, 2.0], [2.0, 0.0], [0.0, -2.0]])[:, None, :]  # all 2 m from agent 0
    x = step_features(spec, hist, np.full(4, hl))[0, 3 * k:].reshape(-1, 5)
    r = spec["radius"]
    np.testing.assert_array_equal(x[:3, :2], (np.array([[0.0, 2.0], [2.0, 0.0], [0.0, -2.0]]) / r).astype(np.float32))


def test_frames_given_by_the_caller_give_the_same_features_and_world_positions() -> None:
    """The predictor node computes agent_frames once per step and passes them to both."""
    for kind in ("pedestrian", "vehicle"):
        spec = default_spec(kind)
        rng = np.random.default_rng(6)
        hist, n_obs = _random_pool(rng, spec, 11)
        frames = agent_frames(spec, hist, n_obs)
        np.testing.assert_array_equal(step_features(spec, hist, n_obs, frames=frames), step_features(spec, hist, n_obs))
        pred = rng.normal(0, 2, (11, 12, 2)).astype(np.float32)
        np.testing.assert_array_equal(to_world(spec, pred, hist, n_obs, frames=frames), to_world(spec, pred, hist, n_obs))


def test_validate_spec_names_the_bad_key() -> None:
    spec = dict(default_spec("vehicle"), scale="big")
    with pytest.raises(FeatureSpecError, match="scale='big'"):
        validate_spec(spec)
    for version in (99, True, 1.0):   # a bool or a float is no version, though True == 1 == 1.0
        with pytest.raises(FeatureSpecError, match="name/version"):
            validate_spec(dict(spec, version=version))
    for bad in (2, 4.0, True):   # vehicle heading_steps is 4
        with pytest.raises(FeatureSpecError, match=f"heading_lookback={bad!r}"):
            validate_spec(dict(default_spec("vehicle"), heading_lookback=bad))


def _crowd_of(spec: dict, others: list[tuple[tuple[float, float], tuple[float, float]]]) -> np.ndarray:
    """Crowd columns of an agent at the origin walking +x at 1 step per sample, among `others`
    ((position now, displacement per sample) each, world frame = its frame)."""
    hl = history_len(spec)
    back = np.arange(-hl + 1, 1)[:, None]
    agents = [((0.0, 0.0), (spec["scale"], 0.0))] + others
    hist = np.stack([np.array(p) + back * np.array(v) for p, v in agents])
    return step_features(spec, hist, np.full(len(agents), hl))[0, -CROWD_DIM:]


def test_crowd_columns_on_hand_made_neighbours() -> None:
    spec, r, s = CROWD, CROWD["radius"], CROWD["scale"]
    assert not _crowd_of(spec, []).any()                                  # nobody: all zeros
    assert not _crowd_of(spec, [((r + 0.5, 0.0), (0.0, 0.0))]).any()     # beyond radius: nobody
    # a companion 1 m to the left, walking alike: near, together, no threat (never closer)
    c = _crowd_of(spec, [((0.0, 1.0), (s, 0.0))])
    near = np.exp(-1.0 / (r / 4))
    np.testing.assert_allclose(c[[0, 1, 2, 3, 4]], [near, 0.0, near / r, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(c[9:], [near, 0.0, near / r], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c[5:9], [np.exp(-36.0 / r**2), 0.0, np.exp(-36.0 / r**2) / r, 0.0], rtol=1e-6)
    # someone 4 m ahead walking straight at us: collision in 4 samples, a full threat, not a companion
    h = _crowd_of(spec, [((4.0, 0.0), (-s, 0.0))])
    np.testing.assert_allclose(h[5:9], [1.0, 4.0 / r, 0.0, 4.0 / 12], rtol=1e-6)
    np.testing.assert_allclose(h[3], np.exp(-4.0 / (r / 4)) * (-2 * s) / s, rtol=1e-6)  # closing at 2 steps
    assert h[9] < 1e-6
    # the same person walking away is no threat: closest approach now, at 4 m
    np.testing.assert_allclose(_crowd_of(spec, [((4.0, 0.0), (s, 0.0))])[5], np.exp(-36.0 * 16 / r**2), rtol=1e-6)


def test_crowd_columns_need_version_2_and_are_not_speed_scaled() -> None:
    with pytest.raises(FeatureSpecError, match="version 1 with crowd=12: expected version 2"):
        validate_spec(dict(CROWD, version=1))
    with pytest.raises(FeatureSpecError, match="version 2 with crowd=0: expected version 1"):
        validate_spec(dict(default_spec("pedestrian"), version=2))
    with pytest.raises(FeatureSpecError, match="crowd=-1"):
        validate_spec(dict(CROWD, crowd=-1))
    mask = unscaled_mask(CROWD)
    assert mask[-CROWD_DIM:].all() and len(mask) == feature_dim(CROWD) == feature_dim(default_spec("pedestrian")) + 12
    np.testing.assert_array_equal(mask[:-CROWD_DIM], unscaled_mask(default_spec("pedestrian")))


@pytest.mark.parametrize("extra", [{}, {"heading_lookback": 7}, {"crowd": 12, "version": 2}],
                         ids=["default", "lookback", "crowd"])
def test_training_sequences_equal_step_by_step_calls(extra: dict) -> None:
    """What training feeds the model is what a streaming node computes from its history buffers."""
    from models.datasets import Scene, Track, to_grid
    from models.sequences import track_sequences

    spec = dict(default_spec("pedestrian"), **extra)
    rng = np.random.default_rng(5)
    tracks = []
    for i in range(6):
        n = int(rng.integers(3, 15))
        t0 = float(rng.integers(0, 8)) * 0.4
        steps = rng.normal(0, 0.3, (n, 2)) * (rng.uniform(size=(n, 1)) < 0.6)   # standing still now and then
        xy = steps.cumsum(0) + rng.uniform(-3, 3, 2)
        tracks.append(Track(str(i), "pedestrian", t0 + 0.4 * np.arange(n), xy))
    grid = to_grid(Scene("s", "s", "mem", tracks), 0.4)
    seqs = {q.agent: q for q in track_sequences(spec, grid, 12, min_len=1)}

    # a node: one history buffer per agent, fed one sample time at a time
    hl = history_len(spec)
    buf: dict[int, list[np.ndarray]] = {}
    for s in range(grid.valid.shape[1]):
        present = np.nonzero(grid.valid[:, s])[0]
        for a in present:
            buf.setdefault(int(a), []).append(grid.xy[a, s])
        if len(present) == 0:
            continue
        hist = np.zeros((len(present), hl, 2))
        n_obs = np.zeros(len(present), np.int64)
        for i, a in enumerate(present):
            recent = buf[int(a)][-hl:]
            hist[i, hl - len(recent):] = recent
            n_obs[i] = len(recent)
        x = step_features(spec, hist, n_obs)
        for i, a in enumerate(present):
            q = seqs[int(a)]
            np.testing.assert_array_equal(q.x[s - q.first], x[i])


def test_rotation_written_out_equals_einsum() -> None:
    from export.runtime.features import _rotate

    rng = np.random.default_rng(1)
    ang = rng.uniform(-np.pi, np.pi, 40)
    rot = np.stack([np.stack([np.cos(ang), np.sin(ang)], 1), np.stack([-np.sin(ang), np.cos(ang)], 1)], 1)
    v = rng.normal(0, 50, (40, 30, 2))
    np.testing.assert_allclose(_rotate(rot, v), np.einsum("bij,bkj->bki", rot, v), rtol=0, atol=1e-12)
    np.testing.assert_allclose(_rotate(rot, v, inverse=True), np.einsum("bji,bkj->bki", rot, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_constant_velocity_is_exact_on_straight_lines(k: int) -> None:
    rng = np.random.default_rng(0)
    p0, v = rng.normal(size=(5, 1, 2)), rng.normal(size=(5, 1, 2))
    line = p0 + v * np.arange(20)[None, :, None]
    pred = constant_velocity(line[:, 7::-1], k, np.arange(1, 13))
    np.testing.assert_allclose(pred, line[:, 8:], atol=1e-12)


def test_constant_velocity_averages_a_partial_history_over_what_there_is() -> None:
    past = np.array([[[4.0, 0.0], [3.0, 0.0], [1.0, 0.0], [np.nan, np.nan]],   # seen 3 samples: 2 steps
                     [[4.0, 1.0], [np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan]]])  # seen once
    known = ~np.isnan(past[..., 0])
    pred = constant_velocity(past, 3, np.array([1.0, 2.0]), known=known)
    np.testing.assert_array_equal(pred, [[[5.5, 0.0], [7.0, 0.0]], [[4.0, 1.0], [4.0, 1.0]]])


def test_constant_velocity_falls_back_to_the_longest_known_lag_up_to_k() -> None:
    # positions now and 1, 2, 5 periods ago; 5 is not known, so k=5 uses lag 2 (not 1, not a lag between)
    past = np.array([[[10.0, 0.0], [9.0, 0.0], [6.0, 0.0], [0.0, 0.0]]])
    known = np.array([[True, True, True, False]])
    pred = constant_velocity(past, 5, np.array([1.0]), lags=[0, 1, 2, 5], known=known)
    np.testing.assert_array_equal(pred, [[[12.0, 0.0]]])
    np.testing.assert_array_equal(constant_velocity(past, 1, np.array([1.0]), lags=[0, 1, 2, 5]), [[[11.0, 0.0]]])


def test_constant_velocity_k_beyond_the_history_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"constant velocity k=8: expected 1 <= k <= 7 for 8 observed samples"):
        constant_velocity(np.zeros((1, 8, 2)), 8, np.arange(1, 13))


@pytest.mark.parametrize("rows", [False, True])
def test_many_spread_agents_pick_the_neighbours_the_row_sort_picks(monkeypatch: pytest.MonkeyPatch,
                                                                 rows: bool) -> None:
    """Above 256 agents with few pairs within radius the neighbours come from sorting those pairs, not
    every row: the same picks, ties by index included (integer positions on a long road tie often)."""
    import export.runtime.features as features

    spec = default_spec("vehicle")
    rng = np.random.default_rng(3)
    hist, n_obs = _random_pool(rng, spec, 600)
    hist += np.stack([rng.integers(0, 3000, 600), rng.integers(0, 3, 600)], axis=1)[:, None, :].astype(float)
    hist[:50] = np.round(hist[:50])  # exact ties
    sel = rng.choice(600, 200, replace=False) if rows else None
    fast = step_features(spec, hist, n_obs, rows=sel)
    monkeypatch.setattr(features, "_SORT_ALL_MAX", 10**9)
    np.testing.assert_array_equal(fast, step_features(spec, hist, n_obs, rows=sel))
    assert (fast[:, 3 * spec["history"]:].reshape(len(fast), -1, 5)[:, :, 4] > 0).any()  # some neighbours present

"""nodes/track_eval.py (tracks scored against truth, truth relabelled with track ids) and the evaluator's
`observed` input (constant velocity from what the predictor saw)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodes.evaluator import Evaluator
from nodes.track_eval import TrackEvaluator, truth_at
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Tracks
from tests.test_evaluator import DT, T, prediction
from tests.test_evaluator import truth as line_truth


def _tracks(t: int, ids: list[int], xy: list[tuple[float, float]]) -> Tracks:
    n = len(ids)
    return Tracks(stamp_ns=t, frame_id="map", ids=np.array(ids), xy=np.array(xy, np.float32).reshape(n, 2),
                  vxy=np.zeros((n, 2)), kind=np.full(n, AgentKind.VEHICLE))


def test_truth_is_interpolated_per_id_and_extrapolated_by_velocity_without_a_later_message() -> None:
    a = Tracks(stamp_ns=0, ids=np.array([1, 2]), xy=np.array([[0, 0], [10, 0]]), vxy=np.array([[1, 0], [0, 2]]),
               kind=np.array([1, 1]))
    b = Tracks(stamp_ns=10**9, ids=np.array([2, 3]), xy=np.array([[10, 2], [5, 5]]), vxy=np.array([[0, 2], [0, 0]]),
               kind=np.array([1, 1]))
    mid = truth_at(a, b, 250_000_000)
    assert mid.ids.tolist() == [2] and mid.xy.tolist() == [[10.0, 0.5]]  # only ids in both
    ahead = truth_at(a, None, 500_000_000)
    assert ahead.ids.tolist() == [1, 2] and ahead.xy.tolist() == [[0.5, 0.0], [10.0, 1.0]]
    assert truth_at(a, b, 0) is not a and truth_at(a, b, 0).xy.tolist() == a.xy.tolist()


def _run(frames: list[tuple[Tracks, Tracks]], tmp_path: Path | None = None) -> tuple[TrackEvaluator, list[Tracks]]:
    g = LocalGraph()
    params = {"report_s": 0, "report_json": str(tmp_path / "mot.json") if tmp_path else ""}
    node = g.add("mot", TrackEvaluator, params, inputs={"tracks": "trk/tracks", "truth": "sim/tracks"})
    g.start()
    for truth, tracks in frames:
        g.advance_to(truth.stamp_ns)
        g.inject("sim/tracks", truth)
        g.inject("trk/tracks", tracks)
        g.spin()
    g.stop()
    return node, g.published.get("mot/truth", [])  # type: ignore[return-value]


def _scene() -> list[tuple[Tracks, Tracks]]:
    """Two cars 10 m apart; the tracker follows both 0.2 m off (ids 100, 101), swaps their ids at frame 5,
    and from frame 8 on also reports a ghost far from both."""
    frames = []
    for i in range(10):
        t = (i + 1) * DT
        truth = _tracks(t, [1, 2], [(i, 0.0), (i, 10.0)])
        ids = [100, 101] if i < 5 else [101, 100]
        xy = [(i + 0.2, 0.0), (i, 10.2)]
        if i >= 8:
            ids, xy = [*ids, 555], [*xy, (50.0, 50.0)]
        frames.append((truth, _tracks(t, ids, xy)))
    return frames


def test_the_truth_comes_out_with_the_ids_of_the_tracks_matched_to_it() -> None:
    _, out = _run(_scene())
    assert len(out) == 10
    assert dict(zip(out[0].ids.tolist(), out[0].xy[:, 1].tolist(), strict=True)) == {100: 0.0, 101: 10.0}
    assert dict(zip(out[6].ids.tolist(), out[6].xy[:, 1].tolist(), strict=True)) == {101: 0.0, 100: 10.0}
    assert 555 not in out[9].ids  # the ghost matches no truth: no truth row for it
    assert out[3].stamp_ns == 4 * DT and np.allclose(out[3].xy[:, 0], 3.0)  # the truth's positions, not the tracks'


def test_tracking_metrics_are_motmetrics_clear_mot_and_identity(tmp_path: Path) -> None:
    pytest.importorskip("motmetrics", reason="motmetrics is the optional [eval] extra")
    node, _ = _run(_scene(), tmp_path)
    m = json.loads((tmp_path / "mot.json").read_text())
    assert m["frames"] == 10 and m["num_objects"] == 20
    assert m["num_switches"] == 2 and m["num_false_positives"] == 2 and m["num_misses"] == 0
    assert m["mota"] == pytest.approx(1 - (0 + 2 + 2) / 20)
    assert m["motp"] == pytest.approx(0.2)
    assert 0 < m["idf1"] < 1
    assert "MOTA 0.800" in node.summary()


def test_tracks_wait_for_the_truth_of_their_stamp() -> None:
    """A tracks message stamped between two truth messages is scored once the later one has come."""
    g = LocalGraph()
    g.add("mot", TrackEvaluator, {"report_s": 0}, inputs={"tracks": "trk/tracks", "truth": "sim/tracks"})
    g.start()
    g.inject("sim/tracks", _tracks(DT, [1], [(0.0, 0.0)]))
    g.inject("trk/tracks", _tracks(DT + DT // 2, [7], [(0.5, 0.0)]))
    g.spin()
    assert "mot/truth" not in g.published
    g.inject("sim/tracks", _tracks(2 * DT, [1], [(1.0, 0.0)]))
    g.spin()
    out = g.published["mot/truth"]
    assert len(out) == 1 and out[0].ids.tolist() == [7] and out[0].xy.tolist() == [[0.5, 0.0]]


def test_constant_velocity_runs_on_the_observed_tracks_when_they_are_wired() -> None:
    """Truth moves at 2 m/s on a line; the tracks the predictor saw are 1 m to its side: constant velocity
    from the truth is exact, from the observed tracks 1 m off all along."""
    def run(observed: bool) -> Evaluator:
        g = LocalGraph()
        inputs = {"predictions": "p/predictions", "truth": "s/tracks", **({"observed": "t/tracks"} if observed else {})}
        ev = g.add("eval", Evaluator, {"report_s": 0}, inputs=inputs)
        g.start()
        for i in range(30):
            g.inject("s/tracks", line_truth(i, [1]))
            if observed:
                seen = line_truth(i, [1])
                seen.xy = seen.xy + np.float32([0.0, 1.0])
                g.inject("t/tracks", seen)
            if i >= 3:
                g.inject("p/predictions", prediction(i, [1], 0.0))
            g.spin()
        return ev  # type: ignore[return-value]

    from_truth, from_tracks = run(False).scores["all"], run(True).scores["all"]
    assert from_truth.n == from_tracks.n == 30 - 3 - T
    assert np.abs(from_truth.cv / from_truth.n).max() < 1e-5
    assert from_tracks.cv / from_tracks.n == pytest.approx(np.ones((4, 2)), abs=1e-5)
    assert from_tracks.model / from_tracks.n == pytest.approx([0.0, 0.0], abs=1e-5)  # the model is scored as before


def test_with_the_ego_wired_only_truth_within_range_is_scored() -> None:
    from pipeline.wire.messages import Odometry

    g = LocalGraph()
    g.add("mot", TrackEvaluator, {"report_s": 0, "range_m": 5.0},
          inputs={"tracks": "trk/tracks", "truth": "sim/tracks", "ego": "sim/ego"})
    g.start()
    g.inject("sim/ego", Odometry(stamp_ns=DT, position=np.array([0.0, 0.0, 0.0])))
    g.inject("sim/tracks", _tracks(DT, [1, 2], [(1.0, 0.0), (40.0, 0.0)]))  # car 2 is far beyond 5 m
    g.inject("trk/tracks", _tracks(DT, [9], [(1.1, 0.0)]))
    g.spin()
    (out,) = g.published["mot/truth"]
    assert out.ids.tolist() == [9]
    pytest.importorskip("motmetrics", reason="motmetrics is the optional [eval] extra")
    node = g.nodes["mot"]
    assert isinstance(node, TrackEvaluator) and node.metrics()["num_misses"] == 0  # car 2 is no miss


def test_tracks_beyond_range_or_on_truth_beyond_it_are_not_false_positives() -> None:
    """Beyond `range_m` is a don't-care region: a track of a car farther out, or one just inside the range
    on a car just outside it, is no false positive; a ghost inside the range still is."""
    from pipeline.wire.messages import Odometry

    pytest.importorskip("motmetrics", reason="motmetrics is the optional [eval] extra")
    g = LocalGraph()
    node = g.add("mot", TrackEvaluator, {"report_s": 0, "range_m": 30.0, "match_m": 2.0},
                 inputs={"tracks": "trk/tracks", "truth": "sim/tracks", "ego": "sim/ego"})
    g.start()
    g.inject("sim/ego", Odometry(stamp_ns=DT, position=np.array([0.0, 0.0, 0.0])))
    # car 1 in range, car 2 at 45 m, car 3 at 30.5 m; tracks on all three (track 12 at 29.8 m) and a ghost
    g.inject("sim/tracks", _tracks(DT, [1, 2, 3], [(10.0, 0.0), (45.0, 0.0), (0.0, 30.5)]))
    g.inject("trk/tracks", _tracks(DT, [10, 11, 12, 13], [(10.1, 0.0), (45.2, 0.0), (0.0, 29.8), (-20.0, 0.0)]))
    g.spin()
    assert isinstance(node, TrackEvaluator)
    m = node.metrics()
    assert m["num_objects"] == 1 and m["num_misses"] == 0
    assert m["num_false_positives"] == 1  # the ghost at 20 m only
    (out,) = g.published["mot/truth"]
    assert out.ids.tolist() == [10]


def test_truth_the_sensor_did_not_see_is_dont_care_and_a_frame_without_visibility_is_counted() -> None:
    pytest.importorskip("motmetrics", reason="motmetrics is the optional [eval] extra")
    g = LocalGraph()
    node = g.add("mot", TrackEvaluator, {"report_s": 0, "match_m": 2.0},
                 inputs={"tracks": "trk/tracks", "truth": "sim/tracks", "visible": "sim/visible"})
    g.start()
    # cars 1-3; the lidar saw 1 and 2; tracks on 1 and 3 (a coasting track on the hidden car) and a ghost
    g.inject("sim/visible", _tracks(DT, [1, 2], [(10.0, 0.0), (20.0, 0.0)]))
    g.inject("sim/tracks", _tracks(DT, [1, 2, 3], [(10.0, 0.0), (20.0, 0.0), (30.0, 0.0)]))
    g.inject("trk/tracks", _tracks(DT, [10, 13, 14], [(10.1, 0.0), (30.2, 0.0), (-5.0, 0.0)]))
    g.spin()
    assert isinstance(node, TrackEvaluator)
    m = node.metrics()
    assert m["num_objects"] == 2 and m["num_misses"] == 1           # car 2 seen and missed; car 3 not expected
    assert m["num_false_positives"] == 1                             # the ghost, not the track on car 3
    g.inject("sim/tracks", _tracks(2 * DT, [1], [(10.0, 0.0)]))      # no visible message for this stamp
    g.inject("trk/tracks", _tracks(2 * DT, [10], [(10.1, 0.0)]))
    g.spin()
    assert node.metrics()["num_objects"] == 3 and node.diagnostics["frames_without_visible"] == 1


def test_rows_beyond_max_rows_are_dropped_and_counted() -> None:
    """Matching costs truth rows x track rows: 10,000 of each took tens of seconds for one frame."""
    g = LocalGraph()
    node = g.add("mot", TrackEvaluator, {"report_s": 0, "max_rows": 3}, inputs={"tracks": "trk/tracks", "truth": "sim/tracks"})
    g.start()
    g.inject("sim/tracks", _tracks(DT, [1, 2, 3, 4, 5], [(float(i), 0.0) for i in range(5)]))
    g.inject("trk/tracks", _tracks(DT, [10, 11, 12, 13], [(float(i), 0.1) for i in range(4)]))
    g.spin()
    (out,) = g.published["mot/truth"]
    assert out.ids.tolist() == [10, 11, 12] and node.diagnostics["drops.too_many_rows"] == 3


def test_rows_that_are_not_positions_are_dropped_and_counted_without_a_numpy_warning() -> None:
    frames = _scene()
    nan = float("nan")
    bad_truth = _tracks(11 * DT, [1, 2, 3], [(10.0, 0.0), (10.0, 10.0), (nan, 0.0)])
    bad_tracks = _tracks(11 * DT, [100, 101, 777], [(10.2, 0.0), (10.0, 10.2), (3e38, 0.0)])
    with np.errstate(all="raise"):   # a NaN or 3e38 row reaching the arithmetic would raise here
        node, out = _run([*frames, (bad_truth, bad_tracks)])
    assert node.diagnostics["drops.rows"] == 2
    assert out[-1].ids.tolist() == [100, 101]   # the good rows are still matched

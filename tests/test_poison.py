"""One poisoned message must not poison a node: non-finite or absurd positions and velocities are
dropped and counted at the predictor's and the evaluator's edge (running ADE/FDE stay finite and
right), a stamp far ahead of the node clock is dropped instead of resetting every agent, and a
forged `seq` is one counted jump, not 4.6e18 lost messages."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from nodes.evaluator import Evaluator
from nodes.predictor import Predictor
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Predictions, StateEvent, Tracks
from tests.predictor_nodes import BASE_NS, make_models
from tests.test_evaluator import DT, T, prediction, truth

POISON = {"nan": np.nan, "inf": np.inf, "absurd": 3e38}


# -- evaluator ---------------------------------------------------------------------------------------
def evaluate(poison_truth: Tracks | None = None, poison_pred: Predictions | None = None, at: int = 10,
             steps: int = 30) -> Evaluator:
    """The evaluator over straight-line truth and predictions 1 m off; message `at` replaced by the poison."""
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0},
               inputs={"predictions": "p/predictions", "truth": "s/tracks", "events": "p/events"})
    g.start()
    for i in range(steps):
        g.advance_to(i * DT)
        g.inject("s/tracks", poison_truth if poison_truth is not None and i == at else truth(i, [1, 2]))
        if i >= 3:
            g.inject("p/predictions", poison_pred if poison_pred is not None and i == at else prediction(i, [1, 2], 1.0))
        g.spin()
    assert isinstance(ev, Evaluator)
    return ev


def assert_unpoisoned(ev: Evaluator) -> None:
    for name, score in ev.scores.items():
        assert np.isfinite(score.model).all() and np.isfinite(score.cv).all(), name
        assert score.model / score.n == pytest.approx([1.0, 1.0], abs=1e-4), name
        assert np.abs(score.cv / score.n).max() < 1.0, name  # a window that needed the dropped row stands still
        _, _, _, _, _, cv_ade, cv_fde = score.row(name, ev.ks)
        assert max(cv_ade, cv_fde) < 1e-4, name  # the best window: exact on straight lines


@pytest.mark.parametrize("field", ["xy", "vxy"])
@pytest.mark.parametrize("value", POISON.values(), ids=POISON.keys())
def test_a_truth_row_with_a_nan_inf_or_absurd_value_is_dropped_counted_and_the_scores_stay_right(
        field: str, value: float) -> None:
    bad = truth(10, [1, 2])
    getattr(bad, field)[1] = value
    ev = evaluate(poison_truth=bad)
    assert_unpoisoned(ev)
    assert ev.dropped["truth_rows"] == 1 and ev.diagnostics["drops.truth_rows"] == 1.0
    assert ev.scores["vehicle"].n == 30 - 3 - T  # agent 1 untouched


@pytest.mark.parametrize("value", POISON.values(), ids=POISON.keys())
def test_a_predicted_row_with_a_nan_inf_or_absurd_position_is_dropped_counted_and_the_scores_stay_right(
        value: float) -> None:
    bad = prediction(10, [1, 2], 1.0)
    bad.xy[1, -1] = value
    ev = evaluate(poison_pred=bad)
    assert_unpoisoned(ev)
    assert ev.dropped["prediction_rows"] == 1 and ev.diagnostics["drops.prediction_rows"] == 1.0
    assert ev.scores["all"].n == 2 * (30 - 3 - T) - 1


def test_a_running_score_leaves_out_a_row_whose_errors_are_not_finite() -> None:
    ev = evaluate()
    s = ev.scores["all"]
    n, sums = s.n, s.model.copy()
    s.add(np.array([[1.0, np.nan], [2.0, 2.0]]), np.zeros((len(ev.ks), 2, 2)))
    assert s.n == n + 1 and s.nonfinite == 1 and np.isfinite(s.model).all()
    assert s.model - sums == pytest.approx([2.0, 2.0])


def test_a_truth_message_stamped_an_hour_ahead_is_dropped_and_later_truth_still_counts() -> None:
    bad = truth(10, [1, 2])
    bad.stamp_ns += 3600 * 10**9
    ev = evaluate(poison_truth=bad)
    # only the rows that needed the missing message 10 are lost, not every row after it
    assert ev.scores["all"].n >= 2 * (30 - 3 - T) - 2 * (T + 1)
    assert ev.dropped["future_truth"] == 1
    assert_unpoisoned(ev)


# -- predictor ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch")
    return make_models(tmp_path_factory.mktemp("models"))


def tracks(i: int, ids: list[int], stamp_ns: int | None = None) -> Tracks:
    """Agents on straight lines at 1 m/s, one message per 0.1 s from BASE_NS."""
    n = len(ids)
    xy = np.array([(0.1 * i, 3.0 * a) for a in ids], np.float32)
    return Tracks(stamp_ns=BASE_NS + i * 10**8 if stamp_ns is None else stamp_ns, ids=np.array(ids), xy=xy,
                  vxy=np.tile(np.array([1.0, 0.0], np.float32), (n, 1)), kind=np.full(n, AgentKind.VEHICLE))


def predict(models: dict[str, Path], msgs: list[Tracks], clock: list[int]) -> tuple[LocalGraph, Predictor]:
    g = LocalGraph(start_ns=BASE_NS)  # an old recording's clock: 1970, not today's wall time
    node = g.add("pred", Predictor, {"models": {"vehicle": str(models["vehicle"])}, "lag_s": 0},
                 inputs={"tracks": "src/tracks"})
    g.start()
    for m, now in zip(msgs, clock, strict=True):
        g.advance_to(now)
        g.inject("src/tracks", m)
        g.spin()
    assert isinstance(node, Predictor)
    return g, node


def preds(g: LocalGraph) -> list[Predictions]:
    return [p for p in g.published.get("pred/predictions", []) if isinstance(p, Predictions)]


@pytest.mark.parametrize("field", ["xy", "vxy"])
@pytest.mark.parametrize("value", POISON.values(), ids=POISON.keys())
def test_the_predictor_drops_and_counts_a_row_with_a_nan_inf_or_absurd_value(
        models: dict[str, Path], field: str, value: float) -> None:
    msgs = [tracks(i, [1, 2]) for i in range(6)]
    getattr(msgs[3], field)[1] = value
    g, node = predict(models, msgs, [m.stamp_ns for m in msgs])
    assert node.counts["drops.bad_rows"] == 1
    published = np.concatenate([p.xy.reshape(-1) for p in preds(g)])
    assert len(published) and np.abs(published).max() < 100.0  # meters: nothing near 3e38 is ever published


def test_an_out_of_range_bound_is_refused_by_the_launch_file_check() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `float` <= 1000000000.0 - at `\$.max_abs_xy`"):
        msgspec.convert({"max_abs_xy": 1e12}, Evaluator.Params)


def test_a_tracks_message_stamped_an_hour_ahead_is_dropped_not_adopted_and_no_agent_resets(
        models: dict[str, Path]) -> None:
    msgs = [tracks(i, [1, 2]) for i in range(8)]
    future = tracks(4, [1, 2], stamp_ns=msgs[3].stamp_ns + 3600 * 10**9)
    clock = [m.stamp_ns for m in msgs]
    g, node = predict(models, [*msgs[:4], future, *msgs[4:]], [*clock[:4], clock[3], *clock[4:]])
    assert node.counts["time_jumps_back"] == 0 and node.counts["resets"] == 0
    assert node.counts["drops.future"] == 1
    events = [e.event for e in g.published.get("pred/events", []) if isinstance(e, StateEvent)]
    assert events == ["reset"]  # the one at start, no second
    assert len(preds(g)) == 8 and preds(g)[-1].ids.tolist() == [1, 2]


def test_stamps_within_max_future_of_the_replayed_clock_are_kept(models: dict[str, Path]) -> None:
    msgs = [tracks(i, [1]) for i in range(5)]
    # a replayed clock that trails the stamps by a second (a slow clock topic): nothing dropped
    g, node = predict(models, msgs, [m.stamp_ns - 10**9 for m in msgs])
    assert node.counts["drops.future"] == 0 and len(preds(g)) == 5

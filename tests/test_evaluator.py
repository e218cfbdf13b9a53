"""nodes/evaluator.py: matching predictions with later truth, ADE/FDE beside constant velocity."""

from __future__ import annotations

import re

import numpy as np
import pytest

from nodes.evaluator import Evaluator
from pipeline.errors import ConfigError
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Predictions, StateEvent, Tracks

DT = 100_000_000
T = 5


def truth(i: int, ids: list[int], speed: float = 2.0) -> Tracks:
    """Agents on straight lines at constant speed, one message per 0.1 s."""
    n = len(ids)
    xy = np.array([(speed * i * 0.1, 5.0 * a) for a in ids], np.float32)
    return Tracks(stamp_ns=i * DT, ids=np.array(ids), xy=xy, vxy=np.zeros((n, 2)),
                  kind=np.array([AgentKind.VEHICLE if a % 2 else AgentKind.PEDESTRIAN for a in ids]))


def prediction(i: int, ids: list[int], offset: float, speed: float = 2.0) -> Predictions:
    t = i * DT + DT * np.arange(1, T + 1)
    xy = np.array([[(speed * tt / 1e9 + offset, 5.0 * a) for tt in t] for a in ids], np.float32)
    return Predictions(stamp_ns=i * DT, model="m", ids=np.array(ids), t_ns=t, xy=xy,
                       kind=np.array([AgentKind.VEHICLE if a % 2 else AgentKind.PEDESTRIAN for a in ids]))


def run(steps: int, ids: list[int], offset: float, truth_ids: list[int] | None = None, **params) -> Evaluator:
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0, **params},
               inputs={"predictions": "p/predictions", "truth": "s/tracks", "events": "p/events"})
    g.start()
    for i in range(steps):
        g.inject("s/tracks", truth(i, truth_ids if truth_ids is not None and i > 12 else ids))
        if i >= 3:
            g.inject("p/predictions", prediction(i, ids, offset))
        g.spin()
    return ev  # type: ignore[return-value]


def test_errors_are_measured_against_the_truth_that_arrives_later() -> None:
    ev = run(30, [1, 2], offset=1.0)
    all_ = ev.scores["all"]
    assert all_.n == 2 * (30 - 3 - T)
    assert all_.model / all_.n == pytest.approx([1.0, 1.0], abs=1e-5)
    # constant velocity is exact on straight lines at constant speed
    assert np.abs(all_.cv / all_.n).max() < 1e-5
    assert ev.scores["vehicle"].n == ev.scores["pedestrian"].n == all_.n / 2


def test_rows_whose_agent_leaves_the_truth_are_skipped() -> None:
    ev = run(30, [1, 2], offset=0.0, truth_ids=[1])  # agent 2 gone after message 12
    assert ev.scores["vehicle"].n == 30 - 3 - T
    assert ev.scores["pedestrian"].n == 12 - 3 - T + 1


def test_constant_velocity_uses_only_the_past_and_is_capped_by_how_long_the_agent_was_seen() -> None:
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0, "cv_ks": [1, 5]}, inputs={"predictions": "p/predictions", "truth": "s/tracks"})
    g.start()
    for i in range(12):
        g.inject("s/tracks", truth(i, [1]))
    g.inject("p/predictions", prediction(1, [1], 0.0))  # seen for one step only at t0: k=5 falls back to 1
    g.spin()
    assert isinstance(ev, Evaluator)
    s = ev.scores["all"]
    assert s.n == 1 and np.abs(s.cv).max() < 1e-5


def test_summary_and_final_table_show_model_beside_constant_velocity(capsys: pytest.CaptureFixture[str]) -> None:
    ev = run(30, [1, 2], offset=0.5)
    ev.on_events(StateEvent(event="restored", reason="respawn", ids=np.array([1, 2])))
    line = ev.summary()
    assert re.search(r"\| all n=44 ADE/FDE 0.50/0.50 m \(CV k=\d: 0.00/0.00\)", line) and "latency p50" in line
    ev.shutdown()
    out = capsys.readouterr().out
    assert "vehicle" in out and "pedestrian" in out and "CV ADE" in out and "restored 2 (respawn)" in out


@pytest.mark.parametrize(("cv_ks", "message"), [([0], r"^eval: params\.cv_ks\[0\]: expected int >= 1"),
                                                ([], r"^eval: params\.cv_ks: expected array of length >= 1")])
def test_bad_cv_windows_are_refused(cv_ks: list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalGraph().add("eval", Evaluator, {"cv_ks": cv_ks})


def test_a_png_of_recent_paths_is_written_at_shutdown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    png = tmp_path / "paths.png"
    ev = run(30, [1, 2], offset=0.5, plot=str(png))
    ev.shutdown()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

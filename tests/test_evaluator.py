"""nodes/evaluator.py: matching predictions with later truth, ADE/FDE beside constant velocity."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodes.evaluator import Evaluator
from pipeline.errors import ConfigError
from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import AgentKind, Diagnostics, Predictions, StateEvent, Tracks

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


def run(steps: int, ids: list[int], offset: float, truth_ids: list[int] | None = None, **params: Any) -> Evaluator:
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


@pytest.mark.parametrize(("values", "line"), [
    ({"step_p50_us": 90.0, "in.tracks": 600.0}, "predictor drops: 0"),
    ({"drops.tracks": 0.0, "in.tracks": 600.0}, "predictor drops: 0"),
    ({"drops.tracks": 3.0, "drops.stale": 1.0, "gaps.tracks": 2.0, "in.tracks": 600.0},
     "predictor drops: drops.stale 1, drops.tracks 3, gaps.tracks 2"),
])
def test_the_final_table_says_whether_the_predictor_kept_up(values: dict[str, float], line: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ev = run(30, [1], offset=0.5)
    ev.on_diagnostics(Diagnostics(stamp_ns=1, node="p", values=values))
    ev.shutdown()
    assert line in capsys.readouterr().out.splitlines()


def test_without_the_predictors_diagnostics_the_table_claims_nothing_about_drops(capsys: pytest.CaptureFixture[str]) -> None:
    run(30, [1], offset=0.5).shutdown()
    assert "drops" not in capsys.readouterr().out


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


# -- accuracy by agent age, and the JSON report ---------------------------------------------------------------
HALF_S = 500_000_000  # truth every 0.5 s; predictions H steps of 0.5 s ahead
H = 4


def _positions(t_ns: int, gone: tuple[float, float] | None = None) -> dict[int, tuple[int, tuple[float, float]]]:
    """id -> (kind, xy) at t: vehicle 1 from 0 s at 2 m/s along x; pedestrian 2 from 20 s at 1 m/s along y;
    vehicle 3 from 0 s at 1 m/s along x, absent over `gone` (seconds)."""
    t = t_ns / 1e9
    out = {1: (AgentKind.VEHICLE, (2.0 * t, 0.0))}
    if t >= 20:
        out[2] = (AgentKind.PEDESTRIAN, (100.0, t - 20.0))
    if gone is not None and not gone[0] <= t < gone[1]:
        out[3] = (AgentKind.VEHICLE, (t, 50.0))
    return out


def _age_truth(t_ns: int, gone: tuple[float, float] | None) -> Tracks:
    pos = _positions(t_ns, gone)
    return Tracks(stamp_ns=t_ns, ids=np.array(list(pos)), xy=np.array([p for _, p in pos.values()], np.float32),
                  vxy=np.zeros((len(pos), 2)), kind=np.array([k for k, _ in pos.values()]))


def _age_prediction(stamp_ns: int, offsets: dict[int, float], gone: tuple[float, float] | None) -> Predictions:
    """The truth, pushed sideways by offset * (j + 1) / H at step j: ADE = offset * (H + 1) / (2 H), FDE = offset."""
    t = stamp_ns + HALF_S * np.arange(1, H + 1)
    xy = np.array([[np.add(_positions(int(tt), gone)[a][1], (0.0, off * (j + 1) / H)) for j, tt in enumerate(t)]
                   for a, off in offsets.items()], np.float32)
    kind = np.array([_positions(stamp_ns, gone)[a][0] for a in offsets])
    return Predictions(stamp_ns=stamp_ns, model="m", ids=np.array(list(offsets)), kind=kind, t_ns=t, xy=xy)


def _age_run(predictions: dict[float, dict[int, float]], end_s: float, gone: tuple[float, float] | None = None,
             **params: Any) -> tuple[LocalGraph, Evaluator]:
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0, **params}, inputs={"predictions": "p/predictions", "truth": "s/tracks"})
    g.start()
    for i in range(int(end_s * 2) + 1):
        t = i * HALF_S
        g.advance_to(t)
        g.inject("s/tracks", _age_truth(t, gone))
        if t / 1e9 in predictions:
            g.inject("p/predictions", _age_prediction(t, predictions[t / 1e9], gone))
        g.spin()
    assert isinstance(ev, Evaluator)
    return g, ev


# (kind, age, n, ADE, FDE) for: vehicle 1 at 2 s (age 2: "0-5", offset 1 m), 5 s (age 5.0: "5-20", 2 m),
# 30 s (age 30: "20-60", 4 m), 61 s (age 61: "60+", 8 m); pedestrian 2 at 30 s (age 10: "5-20", 0.8 m).
AGE_ROWS = [("pedestrian", "all", 1, 0.5, 0.8), ("pedestrian", "5-20", 1, 0.5, 0.8),
            ("vehicle", "all", 4, 9.375 / 4, 15 / 4), ("vehicle", "0-5", 1, 0.625, 1.0),
            ("vehicle", "5-20", 1, 1.25, 2.0), ("vehicle", "20-60", 1, 2.5, 4.0), ("vehicle", "60+", 1, 5.0, 8.0),
            ("all", "all", 5, 9.875 / 5, 15.8 / 5), ("all", "0-5", 1, 0.625, 1.0), ("all", "5-20", 2, 0.875, 1.4),
            ("all", "20-60", 1, 2.5, 4.0), ("all", "60+", 1, 5.0, 8.0)]
AGE_PREDICTIONS = {2.0: {1: 1.0}, 5.0: {1: 2.0}, 30.0: {1: 4.0, 2: 0.8}, 61.0: {1: 8.0}}


def test_rows_are_bucketed_by_the_agents_age_at_the_prediction_with_known_errors(tmp_path: Path) -> None:
    report = tmp_path / "acc.json"
    g, ev = _age_run(AGE_PREDICTIONS, 64.0, report_json=str(report))
    g.stop()
    rows = json.loads(report.read_text())["rows"]
    assert [(r["kind"], r["age"], r["n"]) for r in rows] == [(k, a, n) for k, a, n, _, _ in AGE_ROWS]
    for r, (_, _, _, ade, fde) in zip(rows, AGE_ROWS, strict=True):
        assert (r["ade"], r["fde"]) == pytest.approx((ade, fde), abs=1e-4), r
        # straight lines at constant speed, truth on the prediction's times: CV is exact, with its shortest window
        assert (r["cv_ade"], r["cv_fde"], r["cv_k"]) == (0.0, 0.0, 1), r
        assert set(r) == {"kind", "age", "n", "ade", "fde", "cv_ade", "cv_fde", "cv_k"}
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed


def test_the_final_table_has_a_row_per_kind_and_age_and_explains_cv_k_and_the_comparison(
        capsys: pytest.CaptureFixture[str]) -> None:
    g, _ = _age_run(AGE_PREDICTIONS, 64.0)
    g.stop()
    out = capsys.readouterr().out
    vehicle = out[out.index("\nvehicle "):out.index("\nall ")]  # the kind's row, then its ages, indented
    assert re.search(r"^vehicle +4 +2\.344 +3\.750 +1 +0\.000 +0\.000 +worse +worse$", vehicle, re.M), out
    assert re.search(r"^  60\+ s +1 +5\.000 +8\.000 +1 +0\.000 +0\.000 +worse +worse$", vehicle, re.M), out
    assert re.search(r"^  5-20 s +2 +0\.875 +1\.400 ", out[out.index("\nall "):], re.M), out
    assert "CV k: constant velocity (CV) from the mean velocity over the last k sample periods" in out
    assert '"18% better" means the model\'s error is 18% below constant velocity\'s' in out
    assert not re.search(r"[+-]\d+%", out)  # never a bare signed percentage


def test_an_agent_unseen_for_longer_than_keep_s_starts_a_new_life() -> None:
    # vehicle 3 is seen from 0 s, gone from 3 s to 20 s (keep_s 12), back at 20 s: at 22 s it is 2 s old, not 22
    _, ev = _age_run({22.0: {3: 1.0}}, 25.0, gone=(3.0, 20.0))
    assert set(ev.accuracy.by_age) == {("vehicle", "0-5"), ("all", "0-5")}
    assert ev.accuracy.by_age[("vehicle", "0-5")].n == 1
    # with a longer memory it is the same agent, 22 s old
    _, ev = _age_run({22.0: {3: 1.0}}, 25.0, gone=(3.0, 20.0), keep_s=30.0)
    assert set(ev.accuracy.by_age) == {("vehicle", "20-60"), ("all", "20-60")}


@pytest.mark.parametrize(("where", "message"), [
    ("no/acc.json", r"^eval: params: report_json: no such directory '.*/no' to write '.*/no/acc\.json' in$"),
    (".", r"^eval: params: report_json: '.*' is a directory, expected a file to write$")])
def test_a_report_json_that_cannot_be_a_file_is_refused_before_the_run(tmp_path: Path, where: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalGraph().add("eval", Evaluator, {"report_json": str(tmp_path / where)})


def test_a_report_json_that_cannot_be_written_at_shutdown_is_an_error_naming_param_and_path(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    g, _ = _age_run({2.0: {1: 1.0}}, 5.0, report_json=str(out_dir / "acc.json"))
    out_dir.rmdir()  # gone since the launch
    with caplog.at_level(logging.ERROR, logger="eval"):
        g.stop()
    assert f"report_json: cannot write '{out_dir}/acc.json': No such file or directory" in caplog.text
    assert "final accuracy" in capsys.readouterr().out  # the table is printed all the same


def test_a_report_json_in_a_missing_directory_is_a_launch_file_error_naming_file_and_key(tmp_path: Path) -> None:
    from pipeline.runtime.graph import load_graph

    launch = tmp_path / "launch.yaml"
    launch.write_text(f"nodes:\n  eval: {{run: nodes.evaluator:Evaluator, params: {{report_json: {tmp_path}/no/a.json}}}}\n")
    with pytest.raises(ConfigError, match=rf"^{launch}: nodes\.eval\.params: report_json: no such directory '{tmp_path}/no'"):
        load_graph(launch)
    (tmp_path / "no").mkdir()
    assert load_graph(launch).nodes["eval"].params.report_json == f"{tmp_path}/no/a.json"


# -- K futures per agent --------------------------------------------------------------------------------------
# Per agent: each future's offset along x from the truth (so its error at every step) and the probabilities;
# xy is the most probable future (offset 1, 1 and 4 m).
FUTURES = {1: [0.0, 1.0, 3.0], 2: [2.5, 1.0, 3.0], 3: [2.5, 4.0, 3.0]}
PROB = [0.2, 0.5, 0.3]


def futures(i: int, ids: list[int], prob: list[float] = PROB) -> Predictions:
    one = prediction(i, ids, 0.0)
    modes = np.repeat(one.xy[:, None], 3, axis=1)
    modes[..., 0] += np.array([FUTURES[a] for a in ids], np.float32)[:, :, None]
    p = np.array([prob] * len(ids), np.float32)
    return Predictions(stamp_ns=one.stamp_ns, model="m", ids=one.ids, kind=one.kind, t_ns=one.t_ns,
                       xy=modes[np.arange(len(ids)), p.argmax(1)], modes=modes, prob=p)


def run_futures(steps: int, ids: list[int], make: Any = futures, **params: Any) -> tuple[LocalGraph, Evaluator]:
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0, **params}, inputs={"predictions": "p/predictions", "truth": "s/tracks"})
    g.start()
    for i in range(steps):
        g.inject("s/tracks", truth(i, ids))
        if i >= 3:
            g.inject("p/predictions", make(i, ids))
        g.spin()
    return g, ev  # type: ignore[return-value]


def test_k_futures_are_scored_by_the_nearest_one_beside_cv_windows_as_equally_probable_futures(tmp_path: Path) -> None:
    report = tmp_path / "acc.json"
    g, _ = run_futures(20, [1, 2, 3], report_json=str(report))
    g.stop()
    rows = {(r["kind"], r["age"]): r for r in json.loads(report.read_text())["rows"]}
    n = 20 - 3 - T
    # vehicles 1 and 3: nearest futures 0 m and 2.5 m (a miss); brier adds (1 - 0.2)^2 to each
    want = {"vehicle": (2 * n, 2.5, 1.25, 0.5, (0.64 + 3.14) / 2), "pedestrian": (n, 1.0, 1.0, 0.0, 1.25),
            "all": (3 * n, 2.0, 3.5 / 3, 1 / 3, (0.64 + 1.25 + 3.14) / 3)}
    for kind, (rows_n, ade, min_de, miss, brier) in want.items():
        r = rows[(kind, "all")]
        assert (r["n"], r["n_k"], r["k"]) == (rows_n, rows_n, 3), r
        assert (r["ade"], r["fde"]) == pytest.approx((ade, ade), abs=1e-4)  # of the most probable future
        assert (r["min_ade_k"], r["min_fde_k"], r["miss_rate_k"], r["brier_min_fde_k"]) == pytest.approx(
            (min_de, min_de, miss, brier), abs=1e-4)
        # CV is exact on straight lines: every window of cv_ks (4) is an exact future of probability 1/4
        assert r["cv_futures"] == 4
        assert (r["cv_min_ade_k"], r["cv_min_fde_k"], r["cv_miss_rate_k"], r["cv_brier_min_fde_k"]) == pytest.approx(
            (0.0, 0.0, 0.0, 0.75 ** 2), abs=1e-4)


def test_the_table_and_summary_show_k_futures_with_a_legend(capsys: pytest.CaptureFixture[str]) -> None:
    g, ev = run_futures(20, [1, 2, 3])
    assert re.search(r"vehicle n=24 ADE/FDE 2\.50/2\.50 m, minFDE_3 1\.25 m, miss 50% \(CV k=\d: 0\.00/0\.00\)",
                     ev.summary()), ev.summary()
    g.stop()
    out = capsys.readouterr().out
    block = out[out.index("rows of K futures per agent"):]
    assert re.search(r"^vehicle +24 +3 +1\.250 +1\.250 +50% +1\.890 +0\.000 +0\.000 +0% +0\.562$", block, re.M), out
    assert "minADE/minFDE: of the future whose end is nearest the truth; miss: the share of rows whose minFDE is " \
           "over 2 m" in block
    assert "CV: constant velocity over each of cv_ks [1, 2, 3, 5], as 4 equally probable futures" in block


def test_a_model_of_one_future_reports_no_k_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "acc.json"
    g, _ = run_futures(20, [1, 2], make=lambda i, ids: prediction(i, ids, 1.0), report_json=str(report))
    g.stop()
    assert all("n_k" not in r for r in json.loads(report.read_text())["rows"])
    assert "K futures" not in capsys.readouterr().out


@pytest.mark.parametrize(("prob", "position", "counter"), [
    ([0.5, 0.5, 0.5], 0.0, "drops.prediction_probs"), ([1.2, -0.1, -0.1], 0.0, "drops.prediction_probs"),
    ([float("nan"), 0.5, 0.5], 0.0, "drops.prediction_probs"), (PROB, float("nan"), "drops.prediction_rows"),
    ([float("inf"), float("-inf"), 1.0], 0.0, "drops.prediction_probs"), (PROB, 1e12, "drops.prediction_rows")])
def test_futures_that_are_not_positions_or_probabilities_drop_their_row(
        prob: list[float], position: float, counter: str) -> None:
    def bad_agent_2(i: int, ids: list[int]) -> Predictions:
        good, bad = futures(i, [1]), futures(i, [2], prob)
        modes = np.concatenate([good.modes, bad.modes])
        modes[1, 2, -1, 1] += position  # agent 2's last future, at its last step
        return Predictions(stamp_ns=good.stamp_ns, model="m", ids=np.array(ids), kind=np.array([1, 2]), t_ns=good.t_ns,
                           xy=np.concatenate([good.xy, bad.xy]), modes=modes, prob=np.concatenate([good.prob, bad.prob]))

    with np.errstate(all="raise"):   # the checks themselves must not do arithmetic on what they refuse
        g, ev = run_futures(20, [1, 2], make=bad_agent_2)
    assert ev.diagnostics[counter] == 20 - 3
    assert set(ev.scores) == {"all", "vehicle"} and ev.scores["all"].n_k == 20 - 3 - T
    g.stop()


@pytest.mark.parametrize(("predict", "truth_ids", "says"), [
    (False, [1], "no prediction was scored: no prediction of any agent arrived"),
    (True, [7], "no prediction was scored: 27 predicted agent rows arrived, but the truth never held their agents"),
])
def test_a_run_that_scores_nothing_says_why_under_its_empty_table(predict: bool, truth_ids: list[int], says: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    g = LocalGraph()
    ev = g.add("eval", Evaluator, {"report_s": 0}, inputs={"predictions": "p/predictions", "truth": "s/tracks"})
    g.start()
    for i in range(30):
        g.inject("s/tracks", truth(i, truth_ids))
        if predict and i >= 3:
            g.inject("p/predictions", prediction(i, [1], offset=0.5))
        g.spin()
    ev.shutdown()
    assert any(line.startswith(says) for line in capsys.readouterr().out.splitlines())


def test_a_run_that_scores_rows_claims_no_emptiness(capsys: pytest.CaptureFixture[str]) -> None:
    run(30, [1], offset=0.5).shutdown()
    assert "no prediction was scored" not in capsys.readouterr().out

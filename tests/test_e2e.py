"""The predictor under the real launcher (one process per node, ZeroMQ): parity with the offline model,
state that survives kill -9, and the default launch.yaml."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodes.state_file import STATE_FILE
from pipeline.wire.messages import Predictions
from tests.conftest import Launched, wait_for
from tests.predictor_nodes import BASE_NS, DATA, eth_tracks, make_models, read_log, scripted_tracks
from tests.test_predictor import KIND_NAME, assert_same, offline, run_local, streamed

COUNT = 40
PERIOD = 100_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("models"))


def graph_file(tmp: Path, models: dict[str, Path], log: Path, source: str = "", predictor: str = "") -> Path:
    path = tmp / "graph.yaml"
    path.write_text(f"""
name: e2e
nodes:
  src:
    run: tests.predictor_nodes:ScriptedTracks
    params: {{count: {COUNT}{source}}}
  predictor:
    run: nodes.predictor:Predictor
    params: {{models: {{vehicle: {models['vehicle']}, pedestrian: {models['pedestrian']}}}{predictor}}}
    inputs: {{tracks: {{topic: src/tracks, queue: block}}}}
    respawn: {{max: 2, backoff_s: 0.1}}
  log:
    run: tests.predictor_nodes:PredictionLog
    params: {{out: {log}}}
    inputs:
      predictions: {{topic: predictor/predictions, queue: block}}
      events: {{topic: predictor/events, queue: block}}
      diagnostics: {{topic: predictor/diagnostics, queue: block}}
""")
    return path


def logged(log: Path) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    out: dict[str, dict[tuple[int, int], np.ndarray]] = {"vehicle": {}, "pedestrian": {}}
    for rec in read_log(log):
        if rec["type"] == "pred":
            t_k = rec["t_ns"][0] - (rec["t_ns"][1] - rec["t_ns"][0])
            for a, xy in zip(rec["ids"], rec["xy"], strict=True):
                out[rec["model"]][(t_k, a)] = np.array(xy, np.float32)
    return out


def last_stamp_logged(log: Path) -> int:
    return max((r["stamp"] for r in read_log(log) if r["type"] == "pred"), default=0)


def finish(launched: Launched) -> str:
    """Stop the graph: it may already have ended by itself (the source finished, and the nodes with
    lossless inputs stopped on its end of stream: exit code 0), else Ctrl-C (130)."""
    try:  # a graph whose source finishes ends by itself: give it the chance, then Ctrl-C
        launched.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        launched.proc.send_signal(signal.SIGINT)
    rc, out = launched.wait(timeout=20)
    assert rc in (0, 130), out
    assert rc == 130 or "all nodes have exited" in out, out
    return out


@pytest.mark.parametrize("data", ["sim", "eth"])
def test_the_launched_graph_predicts_exactly_what_the_offline_model_does(
        models: dict[str, Path], tmp_path: Path, launch: Callable[..., Launched], data: str) -> None:
    if data == "eth" and not (DATA / "eth_ucy").is_dir():
        pytest.skip("no ETH/UCY data under ../shared/data")
    msgs = scripted_tracks(COUNT) if data == "sim" else eth_tracks()
    log = tmp_path / "log.jsonl"
    run = launch(graph_file(tmp_path, models, log, source=f", data: {data}", predictor=", lag_s: 0"))
    wait_for(lambda: last_stamp_logged(log) == msgs[-1].stamp_ns, 60, "the predictions of the last message")
    finish(run)
    got = logged(log)
    for code, name in KIND_NAME.items():
        ref = offline(msgs, models[name], code)
        if data == "sim" or name == "pedestrian":
            assert ref
        diff = assert_same(got[name], ref) if ref else 0.0
        print(f"{data} {name}: launched graph vs offline max abs diff {diff:.2e} over {len(ref)} predictions")


def test_a_predictor_killed_with_sigkill_is_respawned_and_continues_from_its_saved_state(
        models: dict[str, Path], tmp_path: Path, launch: Callable[..., Launched]) -> None:
    log, go = tmp_path / "log.jsonl", tmp_path / "go"
    pause = 20
    run = launch(graph_file(tmp_path, models, log, source=f", pause_after: {pause}, go_file: {go}",
                            predictor=", save_every_s: 0.05, ttl_s: 60, lag_s: 0"))
    pids = wait_for(run.node_pids, 30, "the node processes")
    state = Path(run.manifest()["run_dir"]) / "state" / "predictor" / STATE_FILE  # type: ignore[index]

    def saved_stamp() -> int:
        try:
            with np.load(state, allow_pickle=False) as data:
                return int(data["last_stamp"])
        except (OSError, ValueError, KeyError):
            return -1

    before = BASE_NS + (pause - 1) * PERIOD
    wait_for(lambda: saved_stamp() == before, 60, "a saved state holding the first 20 messages")
    os.kill(pids["predictor"], signal.SIGKILL)
    wait_for(lambda: (run.node_pids() or {}).get("predictor") not in (None, pids["predictor"]), 30, "a respawn")
    wait_for(lambda: any(r["type"] == "diag" and r["values"].get("restored", 0) > 0 for r in read_log(log)), 30,
             "the respawned predictor to run")
    go.touch()
    last = BASE_NS + (COUNT - 1) * PERIOD
    wait_for(lambda: last_stamp_logged(log) == last, 60, "the predictions of the last message")
    out = finish(run)
    assert "predictor killed by SIGKILL; respawn" in out

    events = [r for r in read_log(log) if r["type"] == "event"]
    assert [e["event"] for e in events] == ["reset", "restored"]
    assert len(events[1]["ids"]) > 10
    # after the restart: the same numbers as a run that was never interrupted
    msgs = scripted_tracks(COUNT)
    whole, _ = run_local(msgs, {"models": {k: str(v) for k, v in models.items()}})
    got = logged(log)
    for name in KIND_NAME.values():
        after = {k: v for k, v in got[name].items() if k[0] > before}
        ref = {k: v for k, v in streamed(whole, name).items() if k[0] > before}
        assert ref
        assert_same(after, ref)
        # and so the same as the offline model over the whole drive
        code = next(c for c, n in KIND_NAME.items() if n == name)
        assert_same(after, {k: v for k, v in offline(msgs, models[name], code).items() if k[0] > before})


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_the_default_launch_file_prints_live_metrics_and_a_final_table_and_exits_0(
        models: dict[str, Path], launch: Callable[..., Launched], which: str) -> None:
    repo = Path(__file__).resolve().parents[1]
    args = ["--duration", "6", "--set", "evaluator.report_s=1"]
    if which == "tiny":
        args += ["--set", f"predictor.models={{vehicle: {models['vehicle']}, pedestrian: {models['pedestrian']}}}"]
    elif not all((repo / "models/pretrained" / f"{k}_lstm.onnx").is_file() for k in ("vehicle", "pedestrian")):
        pytest.skip("the shipped models are not exported yet (models/pretrained/*_lstm.onnx)")
    rc, out = launch(repo / "launch.yaml", *args).wait(timeout=40)
    assert rc == 0, out
    assert "[evaluator] INFO vehicle n=" in out and "latency p50" in out and "predictor step p50" in out
    assert "[evaluator] final accuracy (meters)" in out and "CV ADE" in out


def test_the_predictor_and_evaluator_never_import_torch() -> None:
    code = ("import sys, nodes.predictor, nodes.evaluator, nodes.state_table; "
            "sys.exit('torch' in sys.modules or 'models' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_default_graph_runs_in_one_process_and_gives_the_same_numbers_twice(models: dict[str, Path]) -> None:
    from nodes.evaluator import Evaluator
    from pipeline.runtime.graph import load_graph
    from pipeline.runtime.local import LocalGraph

    repo = Path(__file__).resolve().parents[1]
    overrides: dict[str, dict[str, Any]] = {"predictor": {"models": {k: str(v) for k, v in models.items()}, "max_age_s": 0.0},
                 "evaluator": {"report_s": 0.0}}
    results = []
    for _ in range(2):
        g = LocalGraph.from_graph(load_graph(repo / "launch.yaml", overrides), start_ns=BASE_NS, record=False)
        g.start()
        g.advance_to(BASE_NS + 20 * 10**9)  # 20 s of simulated traffic, as fast as it computes
        ev = g.nodes["evaluator"]
        assert isinstance(ev, Evaluator)
        results.append(ev.table())
    assert results[0] == results[1]
    assert "vehicle" in results[0] and "pedestrian" in results[0]


def test_the_evaluator_scores_what_an_independent_count_over_the_same_predictions_gives(
        models: dict[str, Path]) -> None:
    from nodes.evaluator import Evaluator
    from nodes.predictor import Predictor
    from pipeline.runtime.local import LocalGraph

    msgs = scripted_tracks(120)
    g = LocalGraph(start_ns=BASE_NS)
    g.add("pred", Predictor, {"models": {k: str(v) for k, v in models.items()}, "lag_s": 0},
          inputs={"tracks": "src/tracks"})
    ev = g.add("eval", Evaluator, {"report_s": 0}, inputs={"predictions": "pred/predictions", "truth": "src/tracks"})
    g.start()
    for m in msgs:
        g.advance_to(m.stamp_ns)  # the graph's clock follows the stamps, as in a replay
        g.inject("src/tracks", m)
        g.spin()
    assert isinstance(ev, Evaluator)
    truth = {(m.stamp_ns, int(a)): m.xy[i].astype(np.float64) for m in msgs for i, a in enumerate(m.ids)}
    ade, fde = [], []
    for p in g.published["pred/predictions"]:
        assert isinstance(p, Predictions)
        for i, a in enumerate(p.ids.tolist()):
            fut = [truth.get((int(t), a)) for t in p.t_ns]
            if all(f is not None for f in fut):
                d = np.linalg.norm(p.xy[i].astype(np.float64) - np.array(fut), axis=1)
                ade.append(d.mean())
                fde.append(d[-1])
    s = ev.scores["all"]
    assert s.n == len(ade) > 500
    np.testing.assert_allclose(s.model / s.n, [np.mean(ade), np.mean(fde)], rtol=1e-9)

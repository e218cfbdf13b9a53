"""The launcher with real node processes: lossless delivery, shutdown deadlines, respawn, failures."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from pipeline.wire.codec import decode
from pipeline.wire.messages import Diagnostics
from tests.conftest import REPO, Launched, pid_alive, wait_for


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "launch.yaml"
    p.write_text(text)
    return p


def test_three_node_graph_in_block_mode_loses_nothing(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    n = 2000
    path = write(tmp_path, f"""
name: lossless
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: {n}, per_tick: 50}}}}
  relay: {{run: tests.graph_nodes:Relay, inputs: {{tracks: {{topic: src/tracks, queue: block}}}}}}
  sink:
    run: tests.graph_nodes:Collect
    params: {{out: {out}, expect: {n}, slow_s: 0.0005}}
    inputs: {{tracks: {{topic: relay/tracks, queue: block}}}}
    required: true
""")
    rc, log = launch(path).wait(timeout=90)
    assert rc == 0, log
    got = [json.loads(line)[0] for line in out.read_text().splitlines()]
    assert got == list(range(1, n + 1))
    assert "required node sink finished: ending the graph" in log


def test_at_the_end_of_its_duration_a_graph_stops_its_sources_and_lossless_nodes_finish_on_their_own(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """The launcher stops the nodes without lossless inputs; each ends its streams on the way out,
    so the relay and the sink take what is queued, get the end of stream and exit by themselves,
    in a cascade: nothing lost, and no wait for the drain deadline."""
    out = tmp_path / "got.jsonl"
    path = write(tmp_path, f"""
name: cascade
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: 100000000, per_tick: 5, period_s: 0.005, linger: true}}}}
  relay: {{run: tests.graph_nodes:Relay, inputs: {{tracks: {{topic: src/tracks, queue: block}}}}}}
  sink: {{run: tests.graph_nodes:Collect, params: {{out: {out}}}, inputs: {{tracks: {{topic: relay/tracks, queue: block}}}}}}
""")
    g = launch(path, "--duration", "3")
    rc, log = g.wait(timeout=60)
    assert rc == 0, log
    assert "still busy" not in log, log  # the drain deadline was not needed
    got = [json.loads(line)[0] for line in out.read_text().splitlines()]
    assert got and got == list(range(1, len(got) + 1))


def test_ctrl_c_stops_every_node_within_5_s(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path = write(tmp_path, """
name: stop
nodes:
  sim: {run: nodes.sim:TrafficSim, params: {agents: 8}}
  printer: {run: nodes.printer:TrackPrinter, inputs: {tracks: sim/tracks}}
  stubborn: {run: tests.graph_nodes:Stubborn, inputs: {tracks: sim/tracks}}
""")
    g = launch(path)
    pids = wait_for(g.node_pids, 30, "all nodes started")
    wait_for(lambda: "[printer] INFO seq" in g.output(), 30, "the printer to receive tracks")
    t0 = time.monotonic()
    os.kill(g.proc.pid, signal.SIGINT)
    rc, log = g.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert rc == 130, log
    assert elapsed < 5.0, f"shutdown took {elapsed:.2f} s"
    assert "still running: SIGTERM" in log and "still running: SIGKILL" in log  # stubborn needed escalation
    assert not [n for n, pid in pids.items() if pid_alive(pid)], "orphan node processes"
    assert not list(g.run_base.glob("*/manifest.json")), "run directory left behind"


def test_a_node_stopped_while_it_imports_stops_cleanly_once_started(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    """SIGINT reaches a node before its handler exists: it stays pending (the launcher starts nodes
    with the stop signals blocked) rather than raising KeyboardInterrupt inside an import."""
    path = write(tmp_path, "nodes:\n  gated: {run: tests.gated_import_node:Gated}\n")
    g = launch(path)
    wait_for(lambda: (g.run_base / "importing").exists(), 30, "the node to be importing")
    pid = wait_for(g.node_pids, 30, "the node's pid")["gated"]
    os.kill(g.proc.pid, signal.SIGINT)

    def sigint_pending() -> bool:
        status = Path(f"/proc/{pid}/status").read_text()
        masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd", "ShdPnd"))]
        return any(m & (1 << (signal.SIGINT - 1)) for m in masks)

    wait_for(sigint_pending, 10, "SIGINT pending in the importing node")
    (g.run_base / "gate").touch()
    rc, log = g.wait(timeout=10)
    assert rc == 130, log
    assert "Traceback" not in log and "still running" not in log, log
    assert not pid_alive(pid)


def test_sigterm_gives_exit_code_143(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path = write(tmp_path, "nodes:\n  sim: {run: nodes.sim:TrafficSim}\n")
    g = launch(path)
    pids = wait_for(g.node_pids, 30, "the node started")
    os.kill(g.proc.pid, signal.SIGTERM)
    rc, log = g.wait(timeout=10)
    assert rc == 143, log
    assert not pid_alive(pids["sim"])


def test_killed_node_is_respawned_and_the_graph_carries_on(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path = write(tmp_path, """
name: respawn
nodes:
  sim: {run: nodes.sim:TrafficSim, params: {agents: 8, rate_hz: 20}}
  printer:
    run: nodes.printer:TrackPrinter
    inputs: {tracks: sim/tracks}
    respawn: {max: 3, backoff_s: 0.1}
""")
    g = launch(path)
    old = wait_for(g.node_pids, 30, "all nodes started")["printer"]
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := g.node_pids()) and p["printer"] != old and pid_alive(p["printer"]) and p["printer"],
                   30, "the printer to be respawned")
    manifest = g.manifest()
    assert manifest and manifest["nodes"]["printer"]["restarts"] == 1
    # the new incarnation receives tracks: its diagnostics count them
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"printer/diagnostics")
    sock.connect(manifest["topics"]["printer/diagnostics"]["endpoint"])
    try:
        def received() -> bool:
            if not sock.poll(200):
                return False
            msg, _ = decode(sock.recv_multipart()[1:], expect=Diagnostics)
            return msg.values.get("in.tracks", 0) > 0
        wait_for(received, 20, "diagnostics from the respawned printer showing received tracks")
    finally:
        sock.close(0)
        ctx.term()
    assert pid_alive(new)
    os.kill(g.proc.pid, signal.SIGINT)
    rc, log = g.wait(timeout=10)
    assert "printer killed by SIGKILL; respawn in 0.10 s" in log
    assert rc == 130


def test_crash_loop_honours_the_maximum_and_fails_the_graph(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path = write(tmp_path, """
nodes:
  sim: {run: nodes.sim:TrafficSim}
  bad: {run: tests.graph_nodes:Crash, respawn: {max: 2, backoff_s: 0.05}, required: true}
""")
    t0 = time.monotonic()
    rc, log = launch(path).wait(timeout=60)
    assert rc == 1, log
    assert log.count("respawning bad") == 2
    assert "respawn in 0.05 s" in log and "respawn in 0.10 s" in log  # exponential back-off
    assert "bad exited with code 1 after 2 restarts; giving up on it" in log
    assert "required node bad failed: ending the graph" in log
    assert time.monotonic() - t0 < 30


def test_duration_ends_the_graph_with_exit_code_0(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path = write(tmp_path, "nodes:\n  sim: {run: nodes.sim:TrafficSim}\n")
    rc, log = launch(path, "--duration", "1.5").wait(timeout=30)
    assert rc == 0, log
    assert "duration of 1.5 s reached" in log


def test_tcp_transport_on_loopback_loses_nothing(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    path = write(tmp_path, f"""
name: tcp
transport: {{kind: tcp, host: 127.0.0.1}}
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: 300}}}}
  sink:
    run: tests.graph_nodes:Collect
    params: {{out: {out}, expect: 300}}
    inputs: {{tracks: {{topic: src/tracks, queue: block}}}}
    required: true
""")
    g = launch(path)
    manifest = wait_for(g.manifest, 30, "the manifest")
    assert manifest["topics"]["src/tracks"]["endpoint"].startswith("tcp://127.0.0.1:")
    rc, log = g.wait(timeout=60)
    assert rc == 0, log
    assert [json.loads(line)[0] for line in out.read_text().splitlines()] == list(range(1, 301))


def test_block_consumers_finish_their_queues_when_the_graph_ends(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    # The source (required) finishes long before the slow consumer: the graph must still deliver all.
    out = tmp_path / "got.jsonl"
    path = write(tmp_path, f"""
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: 300, per_tick: 100}}, required: true}}
  relay: {{run: tests.graph_nodes:Relay, inputs: {{tracks: {{topic: src/tracks, queue: block}}}}}}
  sink:
    run: tests.graph_nodes:Collect
    params: {{out: {out}, slow_s: 0.005}}
    inputs: {{tracks: {{topic: relay/tracks, queue: block}}}}
""")
    rc, log = launch(path).wait(timeout=60)
    assert rc == 0, log
    assert [json.loads(line)[0] for line in out.read_text().splitlines()] == list(range(1, 301))


def test_a_configuration_error_in_setup_is_not_respawned(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    # A valid launch file (a good model) whose node refuses its params in setup(): an unknown agent kind.
    path = write(tmp_path, f"""
nodes:
  sim: {{run: nodes.sim:TrafficSim}}
  pred:
    run: nodes.predictor:Predictor
    params: {{models: {{truck: {REPO / "models/pretrained/vehicle_lstm.onnx"}}}}}
    inputs: {{tracks: sim/tracks}}
    respawn: {{max: 5, backoff_s: 0.05}}
    required: true
""")
    rc, log = launch(path).wait(timeout=60)
    assert rc == 1, log
    assert "pred exited with code 2 (a configuration error: not respawned)" in log
    assert "unknown agent kind" in log
    assert "respawning pred" not in log and "Traceback" not in log

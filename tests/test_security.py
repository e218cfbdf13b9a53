"""A graph split over two machines (two launches here), over tcp with CURVE; strangers are refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq
import zmq.auth

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.transport.endpoints import free_tcp_port
from tests.conftest import REPO, Launched, wait_for


def keys(keys_dir: Path, *names: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", str(keys_dir), *names], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_keys_are_made_with_owner_only_secrets(tmp_path: Path) -> None:
    keys(tmp_path / "k", "a", "b")
    for name in ("a", "b"):
        assert (tmp_path / "k" / f"{name}.key").exists()
        mode = stat.S_IMODE((tmp_path / "k" / f"{name}.key_secret").stat().st_mode)
        assert mode == 0o600
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", str(tmp_path / "k"), "a"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "a.key_secret: exists" in r.stderr


def two_machine_file(tmp_path: Path, out: Path) -> Path:
    pa, pb = free_tcp_port(), free_tcp_port()
    path = tmp_path / "launch.yaml"
    path.write_text(f"""
name: split
machines:
  a: {{host: 127.0.0.1, base_port: {pa}}}
  b: {{host: 127.0.0.1, base_port: {pb}}}
security: {{keys: keys}}
nodes:
  src: {{run: tests.graph_nodes:Ramp, machine: a, params: {{count: 100000000, per_tick: 1, period_s: 0.01, linger: true}}}}
  sink: {{run: tests.graph_nodes:Collect, machine: b, params: {{out: {out}}}, inputs: {{tracks: src/tracks}}}}
""")
    return path


def test_split_graph_over_curve_delivers_and_refuses_unknown_peers(
        tmp_path: Path, launch: Callable[..., Launched]) -> None:
    out = tmp_path / "got.jsonl"
    keys(tmp_path / "keys", "a", "b")
    keys(tmp_path / "strangers", "mallory")
    path = two_machine_file(tmp_path, out)
    a = launch(path, "--machine", "a")
    b = launch(path, "--machine", "b")
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) > 5, 60, "b to receive a's messages")
    manifest_b = json.loads(next(b.run_base.glob("split.b-*/manifest.json")).read_text())
    assert manifest_b["nodes"]["src"]["pid"] is None and manifest_b["nodes"]["sink"]["pid"]  # b runs only sink
    manifest = json.loads(next(a.run_base.glob("split.a-*/manifest.json")).read_text())
    endpoint = manifest["topics"]["src/tracks"]["endpoint"]
    assert endpoint.startswith("tcp://127.0.0.1:")

    ctx = zmq.Context()
    try:
        pub_a, _ = zmq.auth.load_certificate(tmp_path / "keys" / "a.key")
        m_pub, m_sec = zmq.auth.load_certificate(tmp_path / "strangers" / "mallory.key_secret")
        mallory = ctx.socket(zmq.SUB)
        mallory.setsockopt(zmq.LINGER, 0)
        mallory.curve_publickey, mallory.curve_secretkey, mallory.curve_serverkey = m_pub, m_sec, pub_a
        mallory.setsockopt(zmq.SUBSCRIBE, b"src/tracks")
        mallory.connect(endpoint)
        plain = ctx.socket(zmq.SUB)  # no CURVE at all
        plain.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.SUBSCRIBE, b"src/tracks")
        plain.connect(endpoint)
        wait_for(lambda: "refused a peer with unknown CURVE key" in a.output(), 20, "a to log the refusal")
        n = len(out.read_text().splitlines())
        wait_for(lambda: len(out.read_text().splitlines()) > n + 20, 20, "b to keep receiving")
        assert mallory.poll(0) == 0 and plain.poll(0) == 0  # 20+ messages went by; none reached them
        mallory.close(0)
        plain.close(0)
    finally:
        ctx.term()
    assert json.loads(out.read_text().splitlines()[-1])[0] > 20


def test_security_without_keys_is_a_clear_error(tmp_path: Path) -> None:
    path = two_machine_file(tmp_path, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"security.keys: no public key .*a.key for machine 'a' \(make it with `drivecast keys keys a`\)"):
        load_graph(path)


def test_unknown_machine_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "l.yaml"
    path.write_text("machines: {a: {}}\nnodes:\n  s: {run: nodes.sim:TrafficSim, machine: c}\n")
    with pytest.raises(ConfigError, match=r"nodes.s.machine: expected one of a, got 'c'"):
        load_graph(path)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "launch", str(path), "--machine", "z"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode == 2

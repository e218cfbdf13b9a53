"""Other local users get nothing: tcp on loopback uses CURVE by default, and files are owner-only.

Any local user can connect to a 127.0.0.1 port, so a graph on tcp without `security:` gets a key pair
made for its run (in its 0700 run directory); the graph's own tools use it, a stranger's plaintext
or CURVE client gets nothing. Sockets, manifest and keys are owner-only themselves.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from tests.conftest import REPO, Launched, wait_for

TCP_GRAPH = """
name: {name}
transport: {{kind: tcp}}
{extra}
nodes:
  src: {{run: tests.graph_nodes:Ramp, params: {{count: 1000000, per_tick: 1, period_s: 0.01, linger: true}}}}
  sink:
    run: tests.graph_nodes:Collect
    params: {{out: {out}}}
    inputs: {{tracks: {{topic: src/tracks, queue: block}}}}
"""


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask (group and others may read new files), inherited by the launched graph."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _graph(tmp_path: Path, extra: str = "", name: str = "tcp") -> tuple[Path, Path]:
    out = tmp_path / "got.jsonl"
    path = tmp_path / "launch.yaml"
    path.write_text(TCP_GRAPH.format(name=name, extra=extra, out=out))
    return path, out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _stranger(ctx: zmq.Context, endpoint: str, keys: tuple[bytes, bytes, bytes] | None) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"src/tracks")
    if keys is not None:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = keys
    s.connect(endpoint)
    return s


def test_tcp_on_loopback_is_curve_by_default_and_strangers_get_nothing(
        tmp_path: Path, launch: Callable[..., Launched], umask_022: None) -> None:
    path, out = _graph(tmp_path)
    g = launch(path)
    manifest = wait_for(lambda: (m := g.manifest()) and all(e["pid"] for e in m["nodes"].values()) and m,
                        30, "the graph to start")
    keys = Path(manifest["security"])
    assert keys.parent == Path(manifest["run_dir"]) and (keys / "default.key_secret").exists()
    endpoint = manifest["topics"]["src/tracks"]["endpoint"]
    assert endpoint.startswith("tcp://127.0.0.1:")
    server_key, _ = zmq.auth.load_certificate(keys / "default.key")
    mallory_pub, mallory_sec = zmq.curve_keypair()
    ctx = zmq.Context()
    try:
        plain = _stranger(ctx, endpoint, None)
        mallory = _stranger(ctx, endpoint, (mallory_pub, mallory_sec, server_key))  # knows the server's key
        wait_for(lambda: "refused a peer with unknown CURVE key" in g.output(), 20, "the refusal to be logged")
        n = _lines(out)
        wait_for(lambda: _lines(out) > n + 20, 20, "the graph's own subscriber to keep receiving")
        assert plain.poll(0) == 0 and mallory.poll(0) == 0  # 20+ messages went by; none reached them
    finally:
        ctx.destroy(linger=0)
    # the graph's own tools connect with the run's keys
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(g.run_base)}
    echo = subprocess.run([sys.executable, "-m", "pipeline.cli", "topic", "echo", "src/tracks", "-n", "1",
                           "--timeout", "20"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0 and "Tracks" in echo.stdout, echo.stderr
    rec = subprocess.run([sys.executable, "-m", "pipeline.cli", "record", "src/tracks", "-o", str(tmp_path / "r.mcap"),
                          "--max-messages", "5", "--duration", "20"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert rec.returncode == 0 and "wrote 5 messages" in rec.stderr, rec.stderr

    # owner-only files, whatever the umask
    run_dir = Path(manifest["run_dir"])
    for f in [run_dir / "manifest.json", keys / "default.key_secret", *run_dir.glob("*.sock")]:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


def test_ipc_sockets_are_owner_only_themselves(tmp_path: Path, launch: Callable[..., Launched],
                                                umask_022: None) -> None:
    path, out = _graph(tmp_path)
    path.write_text(path.read_text().replace("transport: {kind: tcp}", ""))
    g = launch(path)
    manifest = wait_for(lambda: (m := g.manifest()) and all(e["pid"] for e in m["nodes"].values()) and m,
                        30, "the graph to start")
    wait_for(lambda: _lines(out) > 0, 20, "messages to flow")
    socks = list(Path(manifest["run_dir"]).glob("*.sock"))
    assert socks
    for f in [Path(manifest["run_dir"]) / "manifest.json", *socks]:
        assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f


def test_insecure_true_sends_plaintext_on_purpose(tmp_path: Path, launch: Callable[..., Launched]) -> None:
    path, _ = _graph(tmp_path, "insecure: true")
    g = launch(path)
    manifest = wait_for(lambda: (m := g.manifest()) and all(e["pid"] for e in m["nodes"].values()) and m,
                        30, "the graph to start")
    assert manifest["security"] is None
    ctx = zmq.Context()
    try:
        plain = _stranger(ctx, manifest["topics"]["src/tracks"]["endpoint"], None)
        assert plain.poll(20_000), "a plaintext subscriber gets messages of an insecure graph"
    finally:
        ctx.destroy(linger=0)


def test_machines_on_loopback_need_security_or_insecure(tmp_path: Path) -> None:
    path = tmp_path / "split.yaml"
    path.write_text("machines: {a: {host: 127.0.0.1}}\nnodes:\n  s: {run: nodes.sim:TrafficSim, machine: a}\n")
    with pytest.raises(ConfigError, match=r"machines\.a\.host: 127\.0\.0\.1: plaintext tcp would let any local "
                                          r"user connect; add security: \{keys: DIR\} \(CURVE\), or insecure: true"):
        load_graph(path)
    path.write_text("insecure: true\n" + path.read_text())
    assert load_graph(path).machines == {"a": ("127.0.0.1", 7400)}


def test_the_predictors_state_file_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    from nodes import state_file

    path = tmp_path / "state.npz"
    state_file.save(path, {}, saved_ns=1, last_stamp=None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

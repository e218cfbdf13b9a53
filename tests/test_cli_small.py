"""pipeline/cli/__init__.py, pipeline/cli/view.py and .gitignore: the help lists every `bag` subcommand,
`drivecast view` serves a recording or a running graph to Foxglove and prints the URL to open (and stops
on Ctrl-C), a missing `[bridge]` extra is one line, and the README's outputs are not left untracked."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import _usage
from pipeline.cli.bag import SUBCOMMANDS
from pipeline.cli.bag import main as bag_main
from pipeline.cli.view import foxglove_url
from pipeline.cli.view import main as view_main
from tests.conftest import REPO

URL = "https://app.foxglove.dev/?ds=foxglove-websocket&ds.url=ws://127.0.0.1:"


def test_top_level_help_and_bag_help_list_every_bag_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(SUBCOMMANDS) == ["info", "recover", "convert", "export"]
    bag_line = next(line for line in _usage().splitlines() if line.strip().startswith("bag "))
    assert "(info, recover, convert, export)" in bag_line
    with pytest.raises(SystemExit):
        bag_main(["--help"])
    out = capsys.readouterr().out
    assert "{info,recover,convert,export}" in out
    assert all(f"    {name} " in out for name in SUBCOMMANDS)
    assert "view " in _usage()


def test_foxglove_url_opens_the_websocket() -> None:
    assert foxglove_url("127.0.0.1", 8765) == URL + "8765"


def test_view_without_the_bridge_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_bag_export import _drive

    monkeypatch.setitem(sys.modules, "foxglove", None)  # import foxglove raises ImportError
    assert view_main([str(_drive(tmp_path / "d.mcap")), "--port", "0"]) == 2
    assert "ERROR: `drivecast view` needs foxglove-sdk: pip install 'drivecast[bridge]'" in capsys.readouterr().err


def test_view_refuses_a_recording_that_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert view_main([str(tmp_path / "missing.mcap")]) == 2
    assert "missing.mcap: no such file or directory" in capsys.readouterr().err


def _url_port(p: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """The port of the URL the command prints first (read with a deadline)."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "no URL printed"
    line = p.stdout.readline().decode()
    assert line.startswith("open " + URL), line
    return int(line.strip().rsplit(":", 1)[1])


def _stops_on_sigint(p: subprocess.Popen[bytes]) -> None:
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5


def _view(procs: list[subprocess.Popen[bytes]], env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "view", "--port", "0", *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.append(p)
    return p


def test_view_of_a_recording_prints_the_url_plays_to_a_subscriber_and_stops_on_sigint(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pytest.importorskip("foxglove", reason="foxglove-sdk is the optional [bridge] extra")
    from tests.test_bag_export import _drive
    from tests.test_play_bridge import _Ws

    p = _view(procs, dict(os.environ), str(_drive(tmp_path / "d.mcap")), "--rate", "100")
    ws = _Ws(_url_port(p))
    with contextlib.closing(ws.s):
        _, adv = ws.until(lambda op, d: op == 1 and json.loads(d).get("op") == "advertise", "advertise")
        channels = {c["topic"]: c for c in json.loads(adv)["channels"]}
        assert set(channels) == {"sim/tracks", "pred/predictions", "car/odom", "sim/detections"}
        ws.send_text(json.dumps({"op": "subscribe", "subscriptions": [
            {"id": 1, "channelId": channels["sim/tracks"]["id"]}]}))
        _, data = ws.until(lambda op, d: op == 2 and d[:1] == b"\x01", "message data")
    assert json.loads(data[13:])["entities"][0]["frame_id"] == "map"
    _stops_on_sigint(p)


def test_view_of_a_running_graph_prints_the_url_and_stops_on_sigint(
        run_base: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    pytest.importorskip("foxglove", reason="foxglove-sdk is the optional [bridge] extra")
    run_dir = run_base / "fake"
    run_dir.mkdir(mode=0o700)
    (run_dir / "manifest.json").write_text(json.dumps({
        "name": "fake", "run_dir": str(run_dir), "launcher_pid": os.getpid(), "started_ns": 1,
        "topics": {"sim/tracks": {"schema": "drivecast/Tracks", "endpoint": f"ipc://{run_dir}/t.sock"}}}))
    p = _view(procs, {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}, "--run", "fake")
    _url_port(p)
    _stops_on_sigint(p)
    assert p.stderr is not None and "serving graph 'fake', 1 topics" in p.stderr.read().decode()


def test_the_readme_outputs_are_ignored_and_no_tracked_file_is() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    run = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=True)
    assert run.stdout == ""
    outputs = ["drive.mcap", "out.mcap", "zara1_val.mcap", "tracks.csv", "t.parquet", "plots/scene_a.png",
               "m.json", "veh.onnx"]
    run = subprocess.run(["git", "check-ignore", *outputs], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.stdout.split() == outputs


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from pipeline.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"drivecast {version('drivecast')}\n"

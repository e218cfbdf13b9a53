"""`drivecast play` into a running graph: external topics (`pipeline.runtime.graph`), their manifest
entries (`pipeline.runtime.launch`), and the feed (`pipeline.recordings.attach`, `replay`).

The live tests run real processes: a graph launched `--without` its source, `drivecast record` of it
and `drivecast play` in other processes, each killed at the end even when the test fails. The error
tests that need a running graph fake it with a manifest whose launcher is this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.recordings.attach import Feed, _lock, plan_feed, target_graph
from pipeline.recordings.reader import open_recording
from pipeline.recordings.replay import main as play_main
from pipeline.recordings.schedule import PlayOptions
from pipeline.recordings.writer import Recorder
from pipeline.runtime.graph import EXTERNAL_CLOCK, load_graph
from pipeline.runtime.launch import build_manifest
from pipeline.runtime.launch import main as launch_main
from pipeline.runtime.rundir import write_manifest
from pipeline.wire.codec import encode
from pipeline.wire.messages import Clock, Odometry, Tracks
from tests.conftest import REPO, wait_for

T0 = 1_700_000_000_000_000_000
N = 60

GRAPH = """\
name: live
nodes:
  src:
    run: tests.graph_nodes:Ramp
    params: {{count: 5, linger: true}}
  collect:
    run: tests.graph_nodes:Collect
    params: {{out: {block}}}
    inputs: {{tracks: {{topic: src/tracks, queue: block}}}}
  lossy:
    run: tests.graph_nodes:Collect
    params: {{out: {lossy}}}
    inputs: {{tracks: {{topic: src/tracks, queue: drop_oldest, depth: 100}}}}
"""


def write_drive(path: Path, n: int = N) -> list[list[bytes]]:
    """n Tracks on `cam/tracks` (message i carries id i), 10 ms apart, and an Odometry every 10th step
    on `ego/odom`; returns the Tracks frames as recorded."""
    out = []
    with Recorder(path) as rec:
        for i in range(n):
            log = T0 + i * 10_000_000
            frames = encode(Tracks(seq=i + 1, stamp_ns=log, frame_id="map", ids=np.array([i]),
                                   xy=np.full((1, 2), float(i)), vxy=np.zeros((1, 2)), kind=np.ones(1)),
                            publish_ns=log - 1000)
            rec.write("cam/tracks", frames, log)
            out.append([bytes(f) for f in frames])
            if i % 10 == 0:
                rec.write("ego/odom", encode(Odometry(stamp_ns=log, position=[i, 0, 0]), publish_ns=log), log)
    return out


def ids(path: Path) -> list[int]:
    """The ids a Collect node wrote, in the order it received them."""
    if not path.exists():
        return []
    return [json.loads(line)[0] for line in path.read_text().splitlines() if line.endswith("]")]


def cli(procs: list[subprocess.Popen[bytes]], run_base: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.append(p)
    return p


def finish(p: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    """Its exit code and output (stdout, then stderr); killed and failed after `timeout` seconds."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=5)
        pytest.fail(f"{p.args} did not end within {timeout:g} s:\n{(out + err).decode(errors='replace')}")
    return p.returncode, (out + err).decode(errors="replace")


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    path = tmp_path / "live.yaml"
    path.write_text(GRAPH.format(block=tmp_path / "block.jsonl", lossy=tmp_path / "lossy.jsonl"))
    return path


# -- two processes: a graph launched without its source, then play ----------------------------------------

def test_play_feeds_a_graph_launched_without_its_source_and_record_still_records(
        tmp_path: Path, graph_file: Path, run_base: Path, launch, procs) -> None:
    drive = tmp_path / "drive.mcap"
    frames = write_drive(drive)
    graph = launch(graph_file, "--without", "src")
    manifest = wait_for(lambda: graph.node_pids() and graph.manifest(), 30, "the graph's nodes to start")
    assert set(manifest["nodes"]) == {"collect", "lossy"}
    entry = manifest["topics"]["src/tracks"]
    assert entry["external"] and entry["publisher"] == "" and entry["lossless_subscribers"] == 1
    run_dir = manifest["run_dir"]

    recorded = tmp_path / "recorded.mcap"
    recorder = cli(procs, run_base, "record", "src/tracks", "--lossless", "--run", run_dir, "-o", str(recorded),
                   "--max-messages", str(N), "--quiet")
    # --wait-for 2: the collect node and the recorder, both lossless, get every message
    player = cli(procs, run_base, "play", str(drive), "--remap", "cam/tracks:=src/tracks", "--wait-for", "2")
    rc, err = finish(player, 60)
    assert rc == 0, err
    assert "feeding graph 'live'" in err and "cam/tracks -> src/tracks" in err
    assert "nothing in the graph subscribes to: ego/odom" in err
    assert f"played {N + 60} messages" in err  # and a clock tick every 10 ms of recording: the graph's time

    got = wait_for(lambda: (v := ids(tmp_path / "block.jsonl")) and len(v) >= N and v, 30,
                   f"{N} messages at the block input")
    assert got == list(range(N))  # every message, in order
    assert ids(tmp_path / "lossy.jsonl") == list(range(N))  # subscribed before the first message: none lost

    rc, err = finish(recorder, 30)
    assert rc == 0, err
    with open_recording(recorded) as rec:
        again = [[bytes(f) for f in it.frames] for it in rec.items() if it.topic == "src/tracks"]
    assert again == frames  # byte for byte as recorded
    assert graph.proc.poll() is None, graph.output()  # the graph outlives the replay

    # The player let go of the topic: a second one feeds the same graph.
    rc, err = finish(cli(procs, run_base, "play", str(drive), "--remap", "cam/tracks:=src/tracks", "--quiet"), 60)
    assert rc == 0, err
    wait_for(lambda: len(ids(tmp_path / "block.jsonl")) >= 2 * N, 30, "the second replay at the block input")
    assert ids(tmp_path / "block.jsonl") == list(range(N)) * 2


def test_topic_list_shows_the_external_topics_of_a_running_graph(graph_file: Path, run_base: Path, launch,
                                                                 procs) -> None:
    graph = launch(graph_file, "--without", "src")
    wait_for(graph.node_pids, 30, "the graph's nodes to start")
    rc, out = finish(cli(procs, run_base, "topic", "list"), 30)
    assert rc == 0, out
    assert "src/tracks  drivecast/Tracks  (external: fed by `drivecast play`)" in out
    assert "clock  drivecast/Clock  (external" in out


# -- errors -----------------------------------------------------------------------------------------------

def test_launch_without_an_unknown_node_exits_2_naming_the_nodes(graph_file: Path, capsys) -> None:
    assert launch_main([str(graph_file), "--without", "sim"]) == 2
    err = capsys.readouterr().err
    assert f"ERROR: --without sim: no node 'sim' in {graph_file} (nodes: src, collect, lossy)" in err


def test_a_topic_no_node_publishes_is_an_error_unless_external(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("nodes:\n  c: {run: 'tests.graph_nodes:Collect', params: {out: x}, inputs: {tracks: cam/tracks}}\n")
    with pytest.raises(ConfigError, match=r"g.yaml: nodes.c.inputs.tracks: unknown topic 'cam/tracks' \(topics: "
                                          r"c/diagnostics; .* topics: \{cam/tracks: \{external: true\}\}\)"):
        load_graph(path)
    path.write_text(path.read_text() + "topics: {cam/tracks: {external: true}}\n")
    g = load_graph(path)
    assert g.external == {"cam/tracks": Tracks, EXTERNAL_CLOCK: Clock} and g.clock == EXTERNAL_CLOCK


@pytest.mark.parametrize(("extra", "message"), [
    ("topics: {c/diagnostics: {external: true}}",
     r"topics.c/diagnostics.external: node 'c' publishes 'c/diagnostics'; an external topic is one no node publishes"),
    ("topics: {cam/image: {external: true}}", r"topics.cam/image.external: no input subscribes to 'cam/image'"),
])
def test_external_marks_are_checked(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("nodes:\n  c: {run: 'tests.graph_nodes:Collect', params: {out: x}}\n" + extra + "\n")
    with pytest.raises(ConfigError, match=message):
        load_graph(path)


def test_without_checks_the_left_out_nodes_topics_and_overrides(graph_file: Path, tmp_path: Path) -> None:
    g = load_graph(graph_file, without=["src"])
    assert set(g.nodes) == {"collect", "lossy"} and g.external == {"src/tracks": Tracks, "clock": Clock}
    with pytest.raises(ConfigError, match=r"--set src.\*: node 'src' is left out by --without src"):
        load_graph(graph_file, {"src": {"count": 1}}, without=["src"])
    with pytest.raises(ConfigError, match=r"--without: leaves no node of .* to run"):
        load_graph(graph_file, without=["src", "collect", "lossy"])
    typo = tmp_path / "typo.yaml"
    typo.write_text(graph_file.read_text().replace("topic: src/tracks, queue: block", "topic: src/trakcs"))
    with pytest.raises(ConfigError, match=r"nodes.collect.inputs.tracks: unknown topic 'src/trakcs' \(node 'src', "
                                          r"left out by --without, has outputs tracks, diagnostics\)"):
        load_graph(typo, without=["src"])


def test_the_manifest_gives_external_topics_endpoints_in_the_run_directory(graph_file: Path, tmp_path: Path) -> None:
    m = build_manifest(load_graph(graph_file, without=["src"]), tmp_path)
    t = m.topics["src/tracks"]
    assert t.external and t.publisher == "" and t.schema == Tracks.SCHEMA
    assert t.endpoint == f"ipc://{tmp_path}/src.tracks.sock"
    assert t.lossless_endpoint == f"ipc://{tmp_path}/src.tracks.block.sock" and t.lossless_subscribers == 1
    assert m.clock == "clock" and m.topics["clock"].external and m.topics["clock"].lossless_endpoint is None
    assert not m.topics["collect/diagnostics"].external


@pytest.fixture
def fake_graph(graph_file: Path, run_base: Path, monkeypatch) -> Path:
    """A running graph (its launcher: this process) launched without `src`; nothing subscribes."""
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    run_dir = run_base / "live-1"
    run_dir.mkdir(mode=0o700)
    write_manifest(run_dir, build_manifest(load_graph(graph_file, without=["src"]), run_dir))
    return run_dir


def test_play_refuses_a_recorded_topic_whose_schema_differs(tmp_path: Path, fake_graph: Path, capsys) -> None:
    drive = tmp_path / "drive.mcap"
    write_drive(drive, 20)
    assert play_main([str(drive), "--remap", "ego/odom:=src/tracks", "--topics", "ego/odom", "--quiet"]) == 2
    assert (f"ERROR: {drive}: topic 'ego/odom' (played as 'src/tracks'): graph 'live' expects drivecast/Tracks on "
            "'src/tracks', the recording has drivecast/Odometry") in capsys.readouterr().err


def test_play_refuses_a_recording_with_nothing_the_graph_waits_for(tmp_path: Path, fake_graph: Path, capsys) -> None:
    drive = tmp_path / "drive.mcap"
    write_drive(drive, 20)
    assert play_main([str(drive), "--quiet"]) == 2
    assert (f"ERROR: {drive}: no recorded topic is one that graph 'live' waits for (it waits for src/tracks "
            "(drivecast/Tracks); the recording has cam/tracks (drivecast/Tracks), ego/odom (drivecast/Odometry)); "
            "map one with --remap FROM:=TO") in capsys.readouterr().err
    assert play_main([str(drive), "--remap", "cam/tracks:=collect/diagnostics", "--quiet"]) == 2
    assert ("collect/diagnostics is published by the graph's node 'collect'); map one with --remap FROM:=TO"
            in capsys.readouterr().err)


def test_a_second_player_of_a_topic_is_refused(tmp_path: Path, fake_graph: Path, capsys) -> None:
    drive = tmp_path / "drive.mcap"
    write_drive(drive, 20)
    fd = _lock(fake_graph, "live", "src/tracks")  # another player holds it
    try:
        assert play_main([str(drive), "--remap", "cam/tracks:=src/tracks", "--quiet"]) == 2
    finally:
        os.close(fd)
    assert (f"ERROR: topic 'src/tracks' of graph 'live' is already fed by another `drivecast play` "
            f"(pid {os.getpid()})") in capsys.readouterr().err


def test_play_run_names_a_graph_without_external_topics(tmp_path: Path, run_base: Path, monkeypatch,
                                                        capsys) -> None:
    monkeypatch.setenv("DRIVECAST_RUN_DIR", str(run_base))
    g = tmp_path / "full.yaml"
    g.write_text("name: full\nnodes:\n  src: {run: 'tests.graph_nodes:Ramp'}\n")
    run_dir = run_base / "full-1"
    run_dir.mkdir(mode=0o700)
    write_manifest(run_dir, build_manifest(load_graph(g), run_dir))
    assert target_graph(None) is None  # play then stands alone, as before
    drive = tmp_path / "drive.mcap"
    write_drive(drive, 5)
    assert play_main([str(drive), "--run", "full", "--quiet"]) == 2
    assert "ERROR: --run full: graph 'full' has no external topic to feed" in capsys.readouterr().err


def test_plan_feed_names_what_is_played_and_what_is_not(tmp_path: Path, fake_graph: Path) -> None:
    drive = tmp_path / "drive.mcap"
    write_drive(drive, 20)
    graph = target_graph(None)
    assert graph is not None and graph.run_dir == str(fake_graph)
    with open_recording(drive) as rec:
        plan = plan_feed(graph, rec.info(), PlayOptions(remap={"cam/tracks": "src/tracks"}), str(drive))
    assert plan.topics == {"cam/tracks": "src/tracks"} and plan.unused == ["ego/odom"]
    assert plan.missing == [] and plan.clock == "clock"


def test_feed_binds_the_graph_endpoints_and_closes_without_waiting(fake_graph: Path) -> None:
    from pipeline.runtime.rundir import find_run

    graph = find_run(str(fake_graph))
    feed = Feed(graph, ["src/tracks", "clock"])
    try:
        assert Path(graph.topics["src/tracks"].endpoint[len("ipc://"):]).exists()
        start = time.monotonic()
        # nobody connects in this fake graph: the wait gives up after its deadline, and says so
        late = feed.wait_for_subscribers(lambda: time.monotonic() - start > 0.5)
        assert late == []  # stopped before the deadline: nothing reported
    finally:
        feed.close(drain=False)

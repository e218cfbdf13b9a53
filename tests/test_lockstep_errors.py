"""pipeline/recordings/lockstep.py, schedule.py and nodes/player.py (issue 20): every recorded topic
plays, only what is injected replaces nodes, and a replay that cannot deliver is an error naming
what was replaced and what nothing subscribed to, never a table that scored nothing and exit 0."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.recordings.lockstep import lockstep
from pipeline.recordings.reader import open_recording
from pipeline.recordings.replay import main as play_main
from pipeline.recordings.replay import play
from pipeline.recordings.schedule import PlayOptions
from pipeline.recordings.writer import Recorder
from pipeline.runtime.graph import load_graph
from pipeline.runtime.node import Node
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Diagnostics, Message, Odometry, Tracks
from tests.conftest import REPO, SHARED
from tests.test_play import T0, _tracks

OVERTAKES = SHARED / "recordings" / "rc_cars_overtakes_mocap_lidar_ros1" / "overtakes.bag"
POSES = {"/ego_pose": 3161, "/red_pose": 3161, "/tf": 6322}   # the bag's README: counts per Odometry topic


class OdomEcho(Node):
    """Republishes each pose as a one-agent Tracks whose frame_id is the pose's: what a subscriber saw."""

    inputs = {"odom": Odometry}
    outputs = {"tracks": Tracks}

    def on_odom(self, msg: Odometry) -> None:
        self.publish("tracks", Tracks(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, ids=np.array([1]),
                                      xy=np.asarray(msg.position[None, :2]), vxy=np.zeros((1, 2)), kind=np.ones(1)))


def write_robots(path: Path, count: int = 20) -> None:
    """Two robots' odometry (`car/odom`, `red/odom`, both in frame `map`), Tracks on `sim/tracks` and
    the sim's Diagnostics: a recording with several topics of one schema."""
    with Recorder(path) as rec:
        for i in range(count):
            log = T0 + i * 10_000_000
            rec.write("sim/tracks", encode(_tracks(i), publish_ns=log), log)
            for k, topic in enumerate(("car/odom", "red/odom")):
                odo = Odometry(stamp_ns=log, frame_id="map", child_frame_id="base_link", position=[i, k, 0])
                rec.write(topic, encode(odo, publish_ns=log), log + k)
            if i % 10 == 0:
                rec.write("sim/diagnostics", encode(Diagnostics(stamp_ns=log), publish_ns=log), log)


def write_graph_drive(path: Path, count: int = 30) -> None:
    """A drive as `drivecast record --all` writes it from GRAPH: every node's outputs, diagnostics included."""
    with Recorder(path) as rec:
        for i in range(count):
            log = T0 + i * 100_000_000
            msg = _tracks(i)
            rec.write("sim/tracks", encode(msg, publish_ns=log), log)
            preds = Tracks(stamp_ns=msg.stamp_ns, frame_id="recorded", ids=msg.ids, xy=msg.xy, vxy=msg.vxy,
                           kind=msg.kind)
            rec.write("relay/tracks", encode(preds, publish_ns=log + 1), log + 1)
            if i % 10 == 0:
                for node in ("sim", "relay"):
                    rec.write(f"{node}/diagnostics", encode(Diagnostics(stamp_ns=log), publish_ns=log), log + 2)


PLAYER_GRAPH = """\
name: poses
nodes:
  player:
    run: nodes.player:Player
    params: {{file: '{file}'}}
  echo:
    run: tests.test_lockstep_errors:OdomEcho
    inputs: {{odom: {{topic: player/odom, queue: block}}}}
"""

# a source, a node computing from it, and a node reading both: the shape of the default graph
GRAPH = """\
name: g
nodes:
  sim:
    run: tests.graph_nodes:Ramp
    params: {count: 1000, period_s: 0.1, per_tick: 1}
  relay:
    run: tests.graph_nodes:Relay
    inputs: {tracks: {topic: sim/tracks, queue: block}}
"""


def _run(path: Path, graph_text: str, tmp_path: Path, opts: PlayOptions | None = None
         ) -> tuple[Any, list[tuple[str, Message]]]:
    launch = tmp_path / "launch.yaml"
    launch.write_text(graph_text)
    seen: list[tuple[str, Message]] = []
    with open_recording(path) as rec:
        stats = lockstep(rec, load_graph(launch), opts or PlayOptions(), lambda t, f, log, m: seen.append((t, m)))
    return stats, seen


# -- 1. every recorded topic plays ----------------------------------------------------------------------------

def test_lockstep_plays_every_topic_of_one_schema_with_frame_id_naming_its_source(tmp_path: Path) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    stats, seen = _run(path, PLAYER_GRAPH.format(file=path), tmp_path)
    echoed = [m.frame_id for t, m in seen if t == "echo/tracks"]
    assert echoed.count("car/odom") == 20 and echoed.count("red/odom") == 20 and len(echoed) == 40
    assert stats.published == 40
    tracks = [m for t, m in seen if t == "player/tracks"]
    assert len(tracks) == 20 and {m.frame_id for m in tracks} == {"map"}   # alone on its output: untouched


def test_player_options_map_every_topic_and_name_those_it_cannot_play(tmp_path: Path) -> None:
    from pipeline.recordings.lockstep import player_options

    path = tmp_path / "robots.mcap"
    write_robots(path)
    with open_recording(path) as rec:
        opts, skipped = player_options(rec.info(), PlayOptions())
        assert opts.remap == {"car/odom": "odom", "red/odom": "odom", "sim/tracks": "tracks"}
        assert opts.tag_source == {"car/odom", "red/odom"}
        assert skipped == ["sim/diagnostics (drivecast/Diagnostics: the player has no output for it)"]
        only, _ = player_options(rec.info(), PlayOptions(topics=["red/odom"]))
        assert only.remap == {"red/odom": "odom"} and not only.tag_source
        with pytest.raises(ConfigError, match="--remap car/odom:=wheels: the player has no output 'wheels'"):
            player_options(rec.info(), PlayOptions(remap={"car/odom": "wheels"}))


def test_launched_player_node_plays_every_pose_topic(tmp_path: Path, launch: Any) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    out = tmp_path / "nodes.mcap"
    graph = tmp_path / "nodes.yaml"
    graph.write_text(f"""\
name: nodes
nodes:
  player:
    run: nodes.player:Player
    params: {{file: '{path}', rate: 5.0}}
    required: true
  recorder:
    run: nodes.recorder:Recorder
    params: {{file: '{out}', names: {{odom: player/odom}}}}
    inputs: {{odom: {{topic: player/odom, queue: block}}}}
""")
    rc, text = launch(graph).wait(timeout=60)
    assert rc == 0, text
    assert "not played: sim/diagnostics (drivecast/Diagnostics" in text
    with open_recording(out) as rec:
        got = [decode(it.frames, expect=Odometry)[0] for it in rec.items(["player/odom"])]
    assert sorted(m.frame_id for m in got) == ["car/odom"] * 20 + ["red/odom"] * 20
    assert [m.position[1] for m in got if m.frame_id == "red/odom"] == [1.0] * 20   # the content is the recording's


def test_every_pose_topic_of_the_overtakes_bag_reaches_a_subscriber(tmp_path: Path) -> None:
    if not OVERTAKES.exists():
        pytest.skip(f"recording {OVERTAKES} not present (../shared/recordings beside the checkout)")
    stats, seen = _run(OVERTAKES, PLAYER_GRAPH.format(file=OVERTAKES), tmp_path, PlayOptions(topics=list(POSES)))
    echoed = [m.frame_id for t, m in seen if t == "echo/tracks"]
    assert {s: echoed.count(s) for s in POSES} == POSES and stats.published == sum(POSES.values())


# -- 2. only what is injected replaces nodes ------------------------------------------------------------------

def test_lockstep_of_a_graphs_own_drive_replaces_only_the_nodes_of_the_selected_topics(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_graph_drive(path)
    stats, seen = _run(path, GRAPH, tmp_path, PlayOptions(topics=["sim/tracks"]))
    relayed = [m for t, m in seen if t == "relay/tracks"]
    assert len(relayed) == 30 and {m.frame_id for m in relayed} == {""}  # computed, not "recorded"
    assert stats.published == 30 and stats.replaced == {"sim": ["sim/tracks"]}


def test_lockstep_refuses_a_replay_that_replaces_every_node(tmp_path: Path) -> None:
    path = tmp_path / "drive.mcap"
    write_graph_drive(path)
    with pytest.raises(ConfigError, match=r"the recording replaces every node: relay \(publishes relay/diagnostics, "
                                          r"relay/tracks\); sim \(publishes sim/diagnostics, sim/tracks\); nothing "
                                          r"would run\. Pick the recorded topics to inject with --topics, e\.g\. "
                                          r"--topics sim/tracks$"):
        _run(path, GRAPH, tmp_path)


# -- 3. a replay that cannot deliver is an error ---------------------------------------------------------------

def test_lockstep_refuses_topics_nothing_subscribes_to_and_names_the_graphs_inputs(tmp_path: Path) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    with pytest.raises(ConfigError, match=r"nothing in the graph subscribes to the replayed topics car/odom, red/odom, "
                                          r"sim/diagnostics; replaced: sim \(publishes sim/diagnostics\);"
                                          r" the graph's inputs: relay\.tracks <- sim/tracks\. Map a recorded topic"):
        _run(path, GRAPH, tmp_path, PlayOptions(topics=["car/odom", "red/odom", "sim/diagnostics"]))


def test_lockstep_refuses_a_remap_of_a_topic_the_recording_lacks(tmp_path: Path) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    with pytest.raises(ConfigError, match=r"--remap eth/tracks:=sim/tracks: .*robots\.mcap has no topic 'eth/tracks' "
                                          r"\(topics: sim/tracks, car/odom, red/odom, sim/diagnostics\)"):
        _run(path, GRAPH, tmp_path, PlayOptions(remap={"eth/tracks": "sim/tracks"}))
    with open_recording(path) as rec, pytest.raises(ConfigError, match="--remap eth/tracks:=sim/tracks: "):
        play(rec, PlayOptions(rate=1e6, remap={"eth/tracks": "sim/tracks"}), lambda t, f: None)


def test_lockstep_refuses_a_remap_onto_an_input_of_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    with pytest.raises(ConfigError, match=r"car/odom is replayed as sim/tracks, which carries drivecast/Tracks in "
                                          r".*launch\.yaml, but car/odom is drivecast/Odometry"):
        _run(path, GRAPH, tmp_path, PlayOptions(topics=["car/odom"], remap={"car/odom": "sim/tracks"}))


def test_lockstep_that_delivered_nothing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    with pytest.raises(ConfigError, match=r"lockstep: 0 messages injected, 0 deliveries: nothing in .* received a "
                                          r"message \(replayed: sim/tracks; .*start offset 5 s\)"):
        _run(path, GRAPH, tmp_path, PlayOptions(topics=["sim/tracks"], start_offset_s=5.0))


def test_lockstep_warns_about_topics_it_does_not_play_or_nothing_reads(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "robots.mcap"
    write_robots(path)
    with caplog.at_level(logging.WARNING, logger="pipeline.recordings.lockstep"):
        stats, _ = _run(path, PLAYER_GRAPH.format(file=path), tmp_path)
    assert stats.unsubscribed == ["player/tracks"]
    assert "not played: sim/diagnostics (drivecast/Diagnostics: the player has no output for it)" in caplog.text
    assert "subscribes to player/tracks (from sim/tracks)" in caplog.text


def test_play_cli_exits_non_zero_for_a_ros_bag_the_default_graph_cannot_read(capsys: Any) -> None:
    if not OVERTAKES.exists():
        pytest.skip(f"recording {OVERTAKES} not present (../shared/recordings beside the checkout)")
    assert play_main([str(OVERTAKES), "--lockstep", "--graph", str(REPO / "launch.yaml"), "--quiet"]) != 0
    out, err = capsys.readouterr()
    assert "ERROR: " in err and "nothing in the graph subscribes to the replayed topics /ego_pose, /imu/data" in err
    assert "replaced: sim" not in err and "predictor.tracks <- sim/tracks" in err
    assert "final accuracy" not in out + err


def test_a_node_that_raises_during_a_replay_does_not_keep_the_others_from_shutting_down(tmp_path: Path) -> None:
    """fleet eval replays thousands of drives in one worker: a node's error must not leave the other nodes'
    files open or their final tables unwritten (before, lockstep called no shutdown after an exception)."""
    path = tmp_path / "drive.mcap"
    write_robots(path)
    (tmp_path / "g.yaml").write_text(f"""
name: g
topics: {{sim/tracks: {{external: true}}}}
nodes:
  boom: {{run: tests.test_lockstep_launch:Boom, params: {{out: {tmp_path}/a}}, inputs: {{tracks: sim/tracks}}}}
  late: {{run: tests.test_lockstep_launch:Boom, params: {{out: {tmp_path}/b}}, inputs: {{tracks: sim/tracks}}}}
""")
    with open_recording(path) as rec, pytest.raises(RuntimeError, match="boom"):
        lockstep(rec, load_graph(tmp_path / "g.yaml"), PlayOptions(topics=["sim/tracks"]))
    assert (tmp_path / "a").read_text() == "shut down after 3"
    assert (tmp_path / "b").read_text() == "shut down after 2"   # it never saw the third message

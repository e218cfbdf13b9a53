"""One node over ZeroMQ (ProcessRuntime): bad messages are counted and dropped, the node lives on."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from pipeline.errors import ConfigError
from pipeline.runtime.rundir import Manifest, write_manifest
from pipeline.runtime.runner import ProcessRuntime, main
from pipeline.wire.codec import encode
from pipeline.wire.messages import Image, Tracks
from tests.conftest import wait_for


def manifest(run_dir: Path, out: Path) -> dict:
    def ep(name):
        return f"ipc://{run_dir}/{name}.sock"
    return {
        "name": "t", "run_dir": str(run_dir), "clock": "",
        "topics": {
            "src/tracks": {"schema": "drivecast/Tracks", "endpoint": ep("src"), "lossless_endpoint": None},
            "sink/diagnostics": {"schema": "drivecast/Diagnostics", "endpoint": ep("diag"), "lossless_endpoint": None},
        },
        "nodes": {"sink": {"run": "tests.graph_nodes:Collect", "params": {"out": str(out)},
                           "inputs": {"tracks": {"topic": "src/tracks", "queue": "block", "depth": 10}}}},
    }


@contextlib.contextmanager
def sink(run_base: Path) -> Iterator[tuple[zmq.Socket[bytes], ProcessRuntime, Path]]:
    """A Collect node (writes each Tracks message's ids to a file) in a ProcessRuntime fed by a PUB
    socket of the test's, stopped and closed at the end, even on failure."""
    out = run_base / "got.jsonl"
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{run_base}/src.sock")
    m = manifest(run_base, out)
    m["topics"]["src/tracks"]["lossless_endpoint"] = f"ipc://{run_base}/src.sock"
    rt = ProcessRuntime(msgspec.convert(m, Manifest), "sink", ctx=ctx)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    try:
        yield pub, rt, out
        assert thread.is_alive()
    finally:
        rt.request_stop(rt.node, "test over")
        thread.join(timeout=5)
        rt.node.shutdown()
        rt.close()
        pub.close(0)
        ctx.term()
    assert not thread.is_alive()


def test_bad_messages_are_counted_dropped_and_the_node_keeps_running(run_base: Path) -> None:
    with sink(run_base) as (pub, rt, out):
        good = [b"src/tracks", *encode(Tracks(ids=[7], xy=np.zeros((1, 2)), vxy=np.zeros((1, 2)), kind=[1]))]
        bad = [
            [b"src/tracks", b"\xc1garbage"],                                 # not msgpack
            [b"src/tracks"],                                                 # no header
            good[:3],                                                        # truncated
            [b"src/tracks", *encode(Image(data=np.zeros((2, 2, 3), np.uint8)))],  # wrong schema
        ]

        def delivered() -> bool:
            pub.send_multipart(bad[0])  # resent until the subscription is up (slow joiner)
            pub.send_multipart(good)
            return out.exists() and out.read_text().strip() != ""
        wait_for(delivered, 20, "the first good message")
        for frames in bad * 3:
            pub.send_multipart(frames)
        pub.send_multipart(good)
        counts = rt.stats.counts
        wait_for(lambda: counts["decode_errors.truncated"] >= 6 and counts["decode_errors.wrong_schema"] >= 3
                 and counts["decode_errors.bad_header"] >= 4, 20, "all bad messages counted")
        n_good = len(out.read_text().splitlines())
        pub.send_multipart(good)
        wait_for(lambda: len(out.read_text().splitlines()) > n_good, 20, "a good message after the bad ones")


def test_a_forged_seq_is_one_counted_jump_and_gaps_count_only_real_losses(run_base: Path) -> None:
    with sink(run_base) as (pub, rt, out):
        def send(agent: int, seq: int) -> None:
            msg = Tracks(ids=np.array([agent]), xy=np.zeros((1, 2)), vxy=np.zeros((1, 2)), kind=np.ones(1))
            msg.seq = seq
            pub.send_multipart([b"src/tracks", *encode(msg)])

        def got() -> list[int]:
            return [json.loads(line)[0] for line in out.read_text().splitlines()] if out.exists() else []

        def first() -> bool:
            send(1, 1)  # resent until the subscription is up (slow joiner); a repeated seq is no gap
            return 1 in got()
        wait_for(first, 20, "the first message")
        for agent, seq in [(2, 2**62), (3, 2), (4, 5)]:  # a forged seq, back to normal, then 2 lost
            send(agent, seq)
        wait_for(lambda: 4 in got(), 20, "the messages after the forged seq")
        assert rt.stats.counts["gaps.tracks"] == 2
        assert rt.stats.counts["seq_jumps.tracks"] == 1


def test_a_model_file_gone_since_launch_is_a_configuration_error_exit_2(run_base: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The node process checks its params again: a model removed after the launch file was validated
    ends the node with code 2 (not respawned), before any socket is made."""
    m = manifest(run_base, run_base / "got.jsonl")
    for out, schema in (("predictions", "Predictions"), ("events", "StateEvent"), ("diagnostics", "Diagnostics")):
        m["topics"][f"pred/{out}"] = {"schema": f"drivecast/{schema}", "endpoint": f"ipc://{run_base}/{out}.sock",
                                      "lossless_endpoint": None}
    m["nodes"]["pred"] = {"run": "nodes.predictor:Predictor", "inputs": {},
                          "params": {"models": {"vehicle": str(run_base / "gone.onnx")}}}
    write_manifest(run_base, msgspec.convert(m, Manifest))
    try:
        rt = ProcessRuntime(msgspec.convert(m, Manifest), "pred")
    except ConfigError as exc:
        assert re.fullmatch(r"pred: params: models\.vehicle: no such model file '.*gone\.onnx'", str(exc)), exc
    else:
        rt.close()  # its sockets would hold the interpreter at exit
        pytest.fail("a missing model file built a runtime")
    assert main([str(run_base), "pred"]) == 2
    assert "gone.onnx" in caplog.text

"""The reference sides of `bench/transport.py`: raw pyzmq, eclipse-zenoh and dora-rs peers.

    python bench/_transport_peers.py ROLE ...

Every sender waits for triggers from the harness (`[size index]` or `[b"stop"]` on a ZeroMQ SUB
socket), writes a fresh payload of that size (untimed, as a sensor produces a frame), takes
CLOCK_MONOTONIC and sends it; every receiver takes
CLOCK_MONOTONIC on arrival and appends `(latency_ns, nbytes)` to its results file. The payload is
touched by neither side beyond what each library needs to hand it over (pyzmq: `copy=False`
frames, read back with `np.frombuffer`; zenoh: `bytes`; dora: a pyarrow array, read back with
`to_numpy(zero_copy_only=True)`).
"""

from __future__ import annotations

import contextlib
import struct
import sys
import time
from collections.abc import Iterator

import numpy as np
import zmq

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _results import Results  # noqa: E402

_STAMP = struct.Struct("<q")


def _triggers(ctl: str, ctx: zmq.Context) -> Iterator[int]:
    """Size indices sent by the harness until it says stop (or goes away for 30 s)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(ctl)
    try:
        idle_ms = 0
        while idle_ms < 30_000:
            if not sock.poll(100):
                idle_ms += 100
                continue
            idle_ms = 0
            msg = sock.recv()
            if msg == b"stop":
                return
            yield int(msg)
    finally:
        sock.close(0)


def _sizes(sizes: str) -> list[int]:
    return [int(n) for n in sizes.split(",")]


def _fresh(nbytes: int, k: int) -> np.ndarray:
    """A frame as a sensor hands it over: a fresh buffer, just written (untimed)."""
    frame = np.empty(nbytes, dtype=np.uint8)
    frame.fill(k & 0xFF)
    return frame


def pyzmq_send(ctl: str, endpoint: str, sizes: str) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 100)
    pub.bind(endpoint)
    nbytes = _sizes(sizes)
    for k, i in enumerate(_triggers(ctl, ctx)):
        frame = _fresh(nbytes[i], k)
        pub.send_multipart([b"bench", _STAMP.pack(time.monotonic_ns()), frame], copy=False)
    pub.close(0)
    ctx.term()


def pyzmq_recv(endpoint: str, results: str) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    res = Results(results)
    idle_ms = 0
    while idle_ms < 30_000:
        if not sub.poll(100):
            idle_ms += 100
            continue
        idle_ms = 0
        _, stamp, payload = sub.recv_multipart(copy=False)
        arr = np.frombuffer(payload.buffer, dtype=np.uint8)
        now = time.monotonic_ns()
        res.add(now - _STAMP.unpack(stamp.bytes)[0], arr.nbytes)
    sub.close(0)
    ctx.term()


def _zenoh_session(key: str, endpoint: str) -> object:
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5(key, f'["{endpoint}"]')
    conf.insert_json5("scouting/multicast/enabled", "false")
    return zenoh.open(conf)


def zenoh_send(ctl: str, endpoint: str, sizes: str) -> None:
    session = _zenoh_session("connect/endpoints", endpoint)
    pub = session.declare_publisher("bench/frame")  # type: ignore[attr-defined]
    nbytes = _sizes(sizes)
    ctx = zmq.Context()
    for k, i in enumerate(_triggers(ctl, ctx)):
        payload = _fresh(nbytes[i], k).tobytes()
        pub.put(payload, attachment=_STAMP.pack(time.monotonic_ns()))
    ctx.term()
    session.close()  # type: ignore[attr-defined]


def zenoh_recv(endpoint: str, results: str) -> None:
    res = Results(results)
    last = [time.monotonic()]

    def on_sample(sample: object) -> None:
        now = time.monotonic_ns()
        stamp = _STAMP.unpack(sample.attachment.to_bytes())[0]  # type: ignore[attr-defined]
        res.add(now - stamp, len(sample.payload))  # type: ignore[attr-defined]
        last[0] = time.monotonic()

    session = _zenoh_session("listen/endpoints", endpoint)
    sub = session.declare_subscriber("bench/frame", on_sample)  # type: ignore[attr-defined]
    while time.monotonic() - last[0] < 30 and not _stopped(results):
        time.sleep(0.1)  # the callback runs on zenoh's thread; this thread only waits for the end
    sub.undeclare()
    session.close()  # type: ignore[attr-defined]


def _stopped(results: str) -> bool:
    import os

    return os.path.exists(results + ".stop")


def dora_send(ctl: str, sizes: str) -> None:
    import pyarrow as pa
    from dora import Node

    node = Node()
    nbytes = _sizes(sizes)
    ctx = zmq.Context()
    for k, i in enumerate(_triggers(ctl, ctx)):
        frame = pa.array(_fresh(nbytes[i], k))
        node.send_output("frame", frame, {"t": time.monotonic_ns()})
    ctx.term()


def dora_recv(results: str) -> None:
    from dora import Node

    node = Node()
    res = Results(results)
    for event in node:
        if event["type"] == "INPUT":
            arr = event["value"].to_numpy(zero_copy_only=True)
            now = time.monotonic_ns()
            res.add(now - int(event["metadata"]["t"]), arr.nbytes)
        elif event["type"] == "STOP":
            break


ROLES = {"pyzmq-send": pyzmq_send, "pyzmq-recv": pyzmq_recv, "zenoh-send": zenoh_send,
         "zenoh-recv": zenoh_recv, "dora-send": dora_send, "dora-recv": dora_recv}

if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # the harness ends a run with SIGINT
        ROLES[sys.argv[1]](*sys.argv[2:])

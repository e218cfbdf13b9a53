"""nodes/bridge.py: the Foxglove WebSocket bridge advertises the graph's topics with Foxglove schemas
and streams converted messages to a subscribed client (needs the optional foxglove-sdk)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.runtime.local import LocalGraph
from pipeline.wire.messages import Tracks

pytest.importorskip("foxglove", reason="foxglove-sdk is an optional extra (pip install 'drivecast[bridge]')")


class _Ws:
    """Just enough of a WebSocket client for the Foxglove protocol (text + binary frames)."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                        "Sec-WebSocket-Protocol: foxglove.sdk.v1, foxglove.websocket.v1\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            assert chunk, "connection closed"
            out += chunk
        return out

    def recv(self) -> tuple[int, bytes]:
        b0, b1 = self._exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._exact(8))[0]
        return b0 & 0x0F, self._exact(n)

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def until(self, pred, what: str, limit: int = 50) -> tuple[int, bytes]:
        for _ in range(limit):
            op, data = self.recv()
            if pred(op, data):
                return op, data
        raise AssertionError(f"no {what} in {limit} frames")


@pytest.fixture
def bridge_graph() -> Iterator[LocalGraph]:
    from nodes.bridge import Bridge

    g = LocalGraph(record=False)
    g.add("bridge", Bridge, {"port": 0, "names": {"tracks": "sim/tracks"}}, inputs={"tracks": "sim/tracks"})
    g.start()
    try:
        yield g
    finally:
        g.stop()


def test_bridge_advertises_and_streams_tracks_as_scene_updates(bridge_graph: LocalGraph) -> None:
    tracks = Tracks(stamp_ns=123, frame_id="map", ids=[7], xy=[[1.0, 2.0]], vxy=[[0.5, 0.0]], kind=[2])
    bridge_graph.inject("sim/tracks", tracks)   # creates the channel
    bridge_graph.spin()
    port = bridge_graph.nodes["bridge"].port
    ws = _Ws(port)
    with contextlib.closing(ws.s):
        _, adv = ws.until(lambda op, d: op == 1 and json.loads(d).get("op") == "advertise", "advertise")
        channels = json.loads(adv)["channels"]
        ch = next(c for c in channels if c["topic"] == "sim/tracks")
        assert ch["schemaName"] == "foxglove.SceneUpdate" and ch["encoding"] == "json"
        ws.send_text(json.dumps({"op": "subscribe", "subscriptions": [{"id": 1, "channelId": ch["id"]}]}))
        for _ in range(200):   # the subscription lands asynchronously: publish until a message arrives
            bridge_graph.inject("sim/tracks", tracks)
            bridge_graph.spin()
            ws.s.settimeout(0.05)
            try:
                op, data = ws.until(lambda op, d: op == 2 and d[:1] == b"\x01", "message data", limit=5)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no message data after subscribing")
    sub_id, log_time = struct.unpack_from("<IQ", data, 1)
    scene = json.loads(data[13:])
    assert sub_id == 1 and log_time == 123
    ent = scene["entities"][0]
    assert ent["frame_id"] == "map" and ent["texts"][0]["text"] == "7"
    assert np.isclose(ent["spheres"][0]["pose"]["position"]["x"], 1.0)

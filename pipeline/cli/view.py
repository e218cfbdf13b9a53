"""`drivecast view [FILE] [--run NAME]`: show a running graph, or a recording, in Foxglove.

Starts a Foxglove WebSocket server (foxglove-sdk, the `[bridge]` extra, as `nodes.bridge` uses) and
prints the URL that opens it in Foxglove. Every topic with a Foxglove form
(`pipeline.recordings.foxglove`) is a channel of that form, advertised at start.

- Without FILE: subscribes to the lossy endpoints of a running graph (`--run`, default the newest),
  like `drivecast record`, so viewing never slows the graph; ends with the graph or on Ctrl-C.
- With FILE (any recording `drivecast play` reads): waits for a viewer to subscribe, then sends the
  messages at their recorded pace (`--rate`), again with `--loop`, and serves until Ctrl-C.

A message is converted only while a viewer is subscribed to its topic. The server binds 127.0.0.1 by
default: the WebSocket has no authentication. Exit codes: 0 after Ctrl-C or the graph's end, 2 for
a wrong command line, a missing extra, a port in use or a recording that cannot be read.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pipeline.errors import ConfigError, DecodeError, DrivecastError
from pipeline.recordings import foxglove as fx
from pipeline.runtime.signals import StopSignals
from pipeline.wire.codec import decode

__all__ = ["foxglove_url", "main"]


def foxglove_url(host: str, port: int) -> str:
    """The link that opens Foxglove (web or desktop) on the server at host:port."""
    return f"https://app.foxglove.dev/?ds=foxglove-websocket&ds.url=ws://{host}:{port}"


class _Server:
    """One Foxglove server and a channel per topic, created up front so a viewer sees every topic."""

    def __init__(self, host: str, port: int, topics: dict[str, str]) -> None:
        try:
            import foxglove
        except ImportError:
            raise ConfigError("`drivecast view` needs foxglove-sdk: pip install 'drivecast[bridge]'") from None
        self.context = foxglove.Context()
        try:
            self.server = foxglove.start_server(name="drivecast view", host=host, port=port, context=self.context)
        except Exception as exc:  # the SDK raises its own error type for a port in use or a bad host
            raise ConfigError(f"cannot serve on {host}:{port}: {exc}") from None
        self.host, self.port = host, int(self.server.port)
        self.channels: dict[str, Any] = {}
        for topic, schema in sorted(topics.items()):
            spec = fx.channel_spec(schema)
            fs = foxglove.Schema(name=spec.schema_name, encoding=spec.schema_encoding, data=spec.schema_data)
            self.channels[topic] = foxglove.Channel(topic, schema=fs, message_encoding=spec.message_encoding,
                                                    context=self.context)

    def watched(self) -> bool:
        return any(ch.has_sinks() for ch in self.channels.values())

    def send(self, topic: str, frames: Any) -> None:
        ch = self.channels.get(topic)
        if ch is None or not ch.has_sinks():  # converting costs; skip it while nobody watches
            return
        try:
            msg, _ = decode(frames)
        except DecodeError:
            return  # a subscriber of the graph refuses it too
        ch.log(fx.convert(msg, topic), log_time=msg.stamp_ns)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.server.stop()


def _graph(args: argparse.Namespace, stopped: StopSignals) -> int:
    from pipeline.runtime.rundir import find_run, pid_alive, tool_client
    from pipeline.transport.tap import Tap

    manifest = find_run(args.run)
    topics = {t: e.schema for t, e in manifest.topics.items() if fx.supported(e.schema)}
    if not topics:
        raise ConfigError(f"graph {manifest.name!r} has no topic Foxglove can show (topics: "
                          f"{', '.join(sorted(manifest.topics)) or 'none'})")
    srv = _Server(args.host, args.port, topics)
    tap = Tap({t: manifest.topics[t].endpoint for t in topics}, configure=tool_client(manifest))
    try:
        _ready(srv, f"graph {manifest.name!r}, {len(topics)} topics")
        next_check = time.monotonic() + 1.0
        while not stopped():
            for topic, frames in tap.poll(100):
                if len(frames) > 2:  # [topic, header, arrays...]; the end-of-stream marker has 2
                    srv.send(topic, frames[1:])
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                if not pid_alive(manifest.launcher_pid):
                    print("the graph has ended", file=sys.stderr)
                    break
    finally:
        tap.close()
        srv.close()
    return 0


def _recording(args: argparse.Namespace, stopped: StopSignals) -> int:
    from pipeline.recordings.reader import open_recording

    with open_recording(args.file, args.types) as rec:
        info = rec.info()
        topics = {t.name: t.schema for t in info.topics if t.converted and fx.supported(t.schema)}
        if not topics:
            raise ConfigError(f"{args.file}: no topic Foxglove can show (topics: "
                              f"{', '.join(t.name for t in info.topics) or 'none'})")
        srv = _Server(args.host, args.port, topics)
        try:
            _ready(srv, f"{args.file}, {len(topics)} topics; it plays once a viewer subscribes "
                        f"(Foxglove also opens the file itself)")
            while not stopped() and not srv.watched():
                time.sleep(0.05)  # waiting for a person to open the link
            while not stopped():
                _play(rec, srv, topics, args.rate, stopped)
                if not args.loop:
                    break
            if not stopped():
                print("end of the recording; Ctrl-C to stop", file=sys.stderr)
            while not stopped():
                time.sleep(0.1)
        finally:
            srv.close()
    return 0


def _play(rec: Any, srv: _Server, topics: dict[str, str], rate: float, stopped: StopSignals) -> None:
    """One pass over the recording at `rate` times its recorded pace."""
    start: tuple[int, float] | None = None  # (log time, monotonic time) of the first message
    for item in rec.items(list(topics)):
        if stopped():
            return
        if start is None:
            start = (item.log_ns, time.monotonic())
        due = start[1] + (item.log_ns - start[0]) / 1e9 / rate
        while not stopped() and (wait := due - time.monotonic()) > 0:
            time.sleep(min(wait, 0.1))  # pacing; short slices so Ctrl-C is prompt
        srv.send(item.topic, item.frames)


def _ready(srv: _Server, what: str) -> None:
    print(f"serving {what} on ws://{srv.host}:{srv.port}", file=sys.stderr)
    print(f"open {foxglove_url(srv.host, srv.port)}", flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast view",
                                 description="Show a running graph or a recording in Foxglove; prints the URL.")
    ap.add_argument("file", nargs="?", help="a recording (MCAP or ROS bag); without it, a running graph")
    ap.add_argument("--run", default=None, help="graph name or run directory (default: the newest running graph)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default local only: no authentication)")
    ap.add_argument("--port", type=int, default=8765, help="WebSocket port (0: any free port)")
    ap.add_argument("--rate", type=float, default=1.0, help="recording: playback speed factor")
    ap.add_argument("--loop", action="store_true", help="recording: play again from the start at the end")
    ap.add_argument("--types", default=None, help="recording: directory of .msg files for bags without them")
    args = ap.parse_args(argv)
    if args.rate <= 0:
        print(f"ERROR: --rate {args.rate}: expected a number > 0", file=sys.stderr)
        return 2
    if args.file is not None and args.run is not None:
        print("ERROR: give FILE or --run, not both", file=sys.stderr)
        return 2
    stopped = StopSignals()
    try:
        return _recording(args, stopped) if args.file is not None else _graph(args, stopped)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    finally:
        stopped.restore()

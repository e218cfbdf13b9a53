"""Write drivecast MCAP files (`Recorder`), and `drivecast record`: record topics of a running graph.

`Recorder` writes the layout of `pipeline.recordings.mcap_format`: each message's wire frames byte
for byte, so replay republishes identical bytes, plus Foxglove mirror channels for viewers. It
hands a chunk to the OS once its oldest message is `max_chunk_age_s` old (`flush_if_due`, which a
loop waiting for messages calls on a deadline), so a process killed with `kill -9` loses about that
much whether or not more messages come; the OS page cache survives a kill, so there is no fsync.

`drivecast record` subscribes to the lossy endpoints of a running graph (recording never slows the
graph down; `--lossless` uses the lossless ones and applies back-pressure instead of dropping) and
writes until Ctrl-C, `--duration` or the graph ends; gaps in the per-topic `seq` are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcap.writer import CompressionType, Writer

from pipeline.errors import ConfigError, DecodeError, DrivecastError
from pipeline.recordings import foxglove
from pipeline.recordings.mcap_format import (
    DRIVECAST_SCHEMA_KEY,
    FOXGLOVE_PREFIX,
    MESSAGE_ENCODING,
    PROFILE,
    SCHEMA_ENCODING,
    pack_frames,
    schema_description,
)
from pipeline.runtime.signals import StopSignals
from pipeline.transport.publisher import END_OF_STREAM
from pipeline.wire.codec import HeaderInfo, decode, peek_header
from pipeline.wire.messages import SCHEMAS, Message

__all__ = ["LARGE_BYTES", "MAX_CHUNK_AGE_S", "RecordWriteError", "Recorder", "main"]

LARGE_BYTES = 256 * 1024
#: the default bound on a chunk's age: what a kill -9 of the recorder loses, about (bench/crash.py)
MAX_CHUNK_AGE_S = 0.1


class RecordWriteError(DrivecastError):
    """The recording cannot be written (disk full, I/O error): names the file and the cause."""


class Recorder:
    """An MCAP writer for drivecast messages.

    Images and point clouds are stored once, in full, as their Foxglove type carrying the wire
    frames verbatim (`foxglove.stored`): that is the storage format, not a mirror, so
    `foxglove_mirror=False` keeps it. A message that does not fit that form falls back to a
    drivecast channel of the same topic plus a mirror, like the other schemas. Mirrors of messages
    over `LARGE_BYTES` are previews (`foxglove.convert(preview=True)`), at most `fox_large_hz` per
    second of log time per topic (0: every message): a full mirror would write every byte twice.

    Crash safety: a chunk is closed when it reaches `chunk_size` bytes or when its oldest message is
    `max_chunk_age_s` old (0: by size only, for offline writers), and handed to the OS; a cut file
    is readable up to its last complete chunk and `drivecast bag recover` rewrites it. The age is
    checked on each write and by `flush_if_due`, which a live recorder calls when no message comes.
    """

    def __init__(self, path: str | Path, *, foxglove_mirror: bool = True, chunk_size: int = 1 << 20,
                 max_chunk_age_s: float = MAX_CHUNK_AGE_S, compression: str = "zstd",
                 metadata: dict[str, str] | None = None, fox_large_hz: float = 10.0) -> None:
        if max_chunk_age_s < 0:
            raise ConfigError(f"max_chunk_age_s: expected a number >= 0, got {max_chunk_age_s}")
        self.path = Path(path)
        try:
            self._f = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create: {exc.strerror or exc}") from None
        comp = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}[compression]
        self._w = Writer(self._f, chunk_size=chunk_size, compression=comp)
        self._w.start(profile=PROFILE, library="drivecast")
        if metadata:
            self._w.add_metadata("drivecast", metadata)
        self._foxglove = foxglove_mirror
        self._max_age_ns = int(max_chunk_age_s * 1e9)
        self._pending_since: int | None = None  # monotonic ns of the oldest message not handed to the OS
        self._channels: dict[str, int] = {}
        self._stored_channels: dict[str, int] = {}
        self._fox_channels: dict[str, int] = {}
        self._fox_period = int(1e9 / fox_large_hz) if fox_large_hz > 0 else 0
        self._fox_next: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self.count = 0
        self.bytes = 0
        self.unmirrored = 0  # messages whose header is valid but whose arrays do not decode: no mirror
        self._closed = False
        self._broken = False

    def _schema(self, key: str, name: str, encoding: str, data: bytes) -> int:
        sid = self._schemas.get(key)
        if sid is None:
            sid = self._schemas[key] = self._w.register_schema(name, encoding, data)
        return sid

    def _channel(self, topic: str, schema: str) -> int:
        cid = self._channels.get(topic)
        if cid is None:
            cls = SCHEMAS.get(schema)
            if cls is None:
                raise DecodeError("unknown_schema", f"{topic}: schema {schema[:80]!r} is not known")
            sid = self._schema(schema, schema, SCHEMA_ENCODING, schema_description(cls))
            cid = self._w.register_channel(topic, MESSAGE_ENCODING, sid, {"schema_version": str(cls.VERSION)})
            self._channels[topic] = cid
        return cid

    def _stored_channel(self, topic: str, schema: str) -> int:
        cid = self._stored_channels.get(topic)
        if cid is None:
            spec = foxglove.STORED[schema].spec
            sid = self._schema("stored:" + schema, spec.schema_name, spec.schema_encoding, spec.schema_data)
            cid = self._w.register_channel(topic, spec.message_encoding, sid, {
                DRIVECAST_SCHEMA_KEY: schema, "schema_version": str(SCHEMAS[schema].VERSION)})
            self._stored_channels[topic] = cid
        return cid

    def _fox_channel(self, topic: str, schema: str) -> int:
        cid = self._fox_channels.get(topic)
        if cid is None:
            spec = foxglove.channel_spec(schema)
            sid = self._schema("fox:" + spec.schema_name, spec.schema_name, spec.schema_encoding, spec.schema_data)
            cid = self._w.register_channel(FOXGLOVE_PREFIX + topic.lstrip("/"), spec.message_encoding, sid)
            self._fox_channels[topic] = cid
        return cid

    def write(self, topic: str, frames: Sequence[Any], log_ns: int | None = None,
              msg: Message | None = None) -> HeaderInfo:
        """Store one wire message (header + array frames) received on `topic` at `log_ns`, and
        return what its header says (the caller counts seq gaps without parsing it again).

        The header is validated (schema known, publish time read from it; DecodeError if not, and
        nothing is written). A message is otherwise stored as received, like rosbag2 does, also one
        whose arrays do not decode (counted in `unmirrored`: it gets no mirror). An Image or a PointCloud
        goes into the topic's channel of its Foxglove type when it fits (`foxglove.stored`);
        anything else is packed into the topic's drivecast channel, with a Foxglove mirror message
        beside it when the schema has a Foxglove form (from `msg` when the caller has the decoded
        message already, else decoded from `frames`).
        """
        log_ns = time.time_ns() if log_ns is None else log_ns
        info = peek_header(frames[0])
        schema, publish_ns = info.schema, info.publish_ns
        stored = foxglove.stored(schema, frames)
        if stored is not None:
            cid, data = self._stored_channel(topic, schema), stored
        else:
            cid, data = self._channel(topic, schema), pack_frames(list(frames))
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        try:
            self._w.add_message(cid, log_time=log_ns, data=data, publish_time=publish_ns, sequence=seq)
            if stored is None and self._foxglove and foxglove.supported(schema) \
                    and self._mirror_now(topic, len(data), log_ns):
                if msg is None:
                    try:
                        msg, _ = decode(frames)
                    except DecodeError:
                        self.unmirrored += 1  # recorded as received; its subscribers refused it too
                if msg is not None:
                    self._w.add_message(self._fox_channel(topic, schema), log_time=log_ns,
                                        data=foxglove.convert(msg, topic, preview=len(data) > LARGE_BYTES),
                                        publish_time=publish_ns, sequence=seq)
        except OSError as exc:
            raise self._failed(exc) from None
        self.count += 1
        self.bytes += len(data)
        if self._pending_since is None:
            self._pending_since = time.monotonic_ns()
        self.flush_if_due()
        return info

    def flush_if_due(self) -> float | None:
        """Close the chunk if its oldest message is `max_chunk_age_s` old; return the seconds until it
        will be (None: no message waiting, or no age bound). A loop waiting for messages waits no longer
        than that, so a pause in the data does not keep the last messages in memory."""
        if self._pending_since is None or not self._max_age_ns:
            return None
        left = self._pending_since + self._max_age_ns - time.monotonic_ns()
        if left > 0:
            return left / 1e9
        self.flush()
        return None

    @property
    def topic_counts(self) -> dict[str, int]:
        """Messages written per topic (topics without a message are absent, as in `bag info`)."""
        return dict(self._seq)

    def _mirror_now(self, topic: str, nbytes: int, log_ns: int) -> bool:
        if nbytes <= LARGE_BYTES or not self._fox_period:
            return True
        # absolute grid (no drift), a tenth of a period early still counts (camera jitter)
        due = self._fox_next.get(topic, log_ns)
        if log_ns < due - self._fox_period // 10:
            return False
        due += self._fox_period
        while due <= log_ns:
            due += self._fox_period
        self._fox_next[topic] = due
        return True

    def flush(self) -> None:
        """Close the chunk in progress and hand it to the OS (what survives a kill -9). The file is
        flushed here too: a chunk mcap closed by size may sit in Python's buffer, which a kill loses."""
        try:
            self._w.flush()  # type: ignore[no-untyped-call]  # mcap's Writer is unannotated
            self._f.flush()
        except OSError as exc:
            raise self._failed(exc) from None
        self._pending_since = None

    def _failed(self, exc: OSError) -> RecordWriteError:
        self._broken = True
        return RecordWriteError(f"{self.path}: write failed after {self.count} messages: {exc.strerror or exc}; "
                                "the file is readable up to its last complete chunk (`drivecast bag recover`)")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._broken:  # after a failed write the summary cannot be written either
                self._w.finish()  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise self._failed(exc) from None
        finally:
            with contextlib.suppress(OSError):
                self._f.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- drivecast record -----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast record", description="Record topics of a running graph into MCAP.")
    ap.add_argument("topics", nargs="*", help="topics to record (see `drivecast topic list`)")
    ap.add_argument("-o", "--output", required=True, help="output .mcap file")
    ap.add_argument("--all", action="store_true", help="record every topic of the graph")
    ap.add_argument("--run", default=None, help="graph name or run directory (default: the newest running graph)")
    ap.add_argument("--lossless", action="store_true",
                    help="use a topic's lossless endpoint where it has one (back-pressure instead of drops)")
    ap.add_argument("--no-foxglove", action="store_true",
                    help="do not write the /foxglove/* mirror channels (images and point clouds stay "
                         "channels of their Foxglove types)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--max-messages", type=int, default=0, help="stop after this many messages")
    ap.add_argument("--max-chunk-age", type=float, default=MAX_CHUNK_AGE_S, metavar="SECONDS",
                    help=f"hand a chunk to the disk once its oldest message is this old (default "
                         f"{MAX_CHUNK_AGE_S:g}): about what a kill -9 of the recorder loses; 0: by size only")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from pipeline.runtime.rundir import find_run, pid_alive, tool_client
    from pipeline.transport.tap import Tap

    try:
        if bool(args.topics) == args.all:
            raise ConfigError("give TOPICS or --all (not both)")
        manifest = find_run(args.run)
        known = manifest.topics
        topics = sorted(known) if args.all else args.topics
        unknown = [t for t in topics if t not in known]
        if unknown:
            raise ConfigError(f"graph {manifest.name!r} has no topic {', '.join(map(repr, unknown))} "
                              f"(topics: {', '.join(sorted(known))})")
        rec = Recorder(args.output, foxglove_mirror=not args.no_foxglove, max_chunk_age_s=args.max_chunk_age,
                       metadata={"graph": manifest.name, "file": manifest.file})
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2

    stopped = StopSignals()
    # the plain variant of each topic (not shared memory), its lossless endpoint with --lossless
    # a deep queue (the writer compresses while messages arrive), at most 256 MiB of large frames
    lossless = {t: e for t in topics if args.lossless and (e := known[t].lossless_endpoint)}
    tap = Tap({t: lossless.get(t) or known[t].endpoint for t in topics},
              rcvhwm=10000, configure=tool_client(manifest), max_bytes=256 << 20, lossless=lossless)
    launcher = manifest.launcher_pid
    end = None if args.duration is None else time.monotonic() + args.duration
    bad = 0
    failed = ""
    last_seq: dict[str, int] = {}
    gaps = 0
    next_check = time.monotonic() + 1.0
    ended = False  # the graph has ended: what is queued here already is still written
    if not args.quiet:
        print(f"recording {len(topics)} topics of graph {manifest.name!r} into {args.output}", file=sys.stderr)
    try:
        while not stopped() and not failed:
            try:
                due = rec.flush_if_due()
            except RecordWriteError as exc:
                failed = str(exc)
                break
            # wake up when the open chunk is due (ceil: a poll(0) loop in its last millisecond is a busy wait)
            taken = 0
            # (after the end: what ZeroMQ's I/O thread still moves in from the kernel arrives within 50 ms)
            for topic, frames in tap.poll(50 if ended else 100 if due is None else min(100, math.ceil(due * 1000))):
                taken += 1
                now = time.time_ns()
                if len(frames) == 2 and frames[1].bytes == END_OF_STREAM:
                    tap.unsubscribe(topic)
                    continue
                try:
                    seq = rec.write(topic, frames[1:], now).seq
                except DecodeError:
                    bad += 1
                    continue
                except RecordWriteError as exc:
                    failed = str(exc)
                    break
                if topic in last_seq and seq > last_seq[topic] + 1:
                    gaps += seq - last_seq[topic] - 1
                last_seq[topic] = seq
            now_m = time.monotonic()
            if (end is not None and now_m >= end) or (args.max_messages and rec.count >= args.max_messages):
                break
            if ended and not taken:
                break
            if now_m >= next_check and not ended:
                next_check = now_m + 1.0
                if not pid_alive(launcher):
                    if not args.quiet:
                        print("the graph has ended", file=sys.stderr)
                    ended = True
    finally:
        try:
            rec.close()
        except RecordWriteError as exc:
            failed = failed or str(exc)
        tap.close()
        stopped.restore()
    if failed:
        print(f"ERROR: {failed}", file=sys.stderr)
        return 1
    if not args.quiet:
        size = Path(args.output).stat().st_size
        # `bag info` lists the topics that hold messages: say which recorded topics got none, so the two agree
        silent = [t for t in topics if t not in rec.topic_counts]
        print(f"wrote {rec.count} messages ({size / 1e6:.2f} MB) on {len(topics) - len(silent)} of {len(topics)} "
              f"topics to {args.output}" + (f" (no message on {', '.join(silent)})" if silent else "") + "; "
              f"{gaps} lost on the way (seq gaps), {bad} with a bad header (not written)"
              + (f", {rec.unmirrored} stored as received though their arrays do not decode" if rec.unmirrored else ""),
              file=sys.stderr)
    return 0


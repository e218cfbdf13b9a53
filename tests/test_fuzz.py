"""Fuzzing: bad launch files, `--set` values, recordings, run manifests and state files give clear
errors, never crashes or hangs.

Each file reader is a `Target`: `case(rnd)` makes one damaged input from a `random.Random` and returns
`run`, which feeds it to the code under test and names the outcome; any other exception, a hang or a
broken invariant is a crash. Here each target runs a few hundred cases; `bench/fuzz.py` runs the same
targets beside its own (the codec, launch files, node inputs with tests/test_node_fuzz.py's generators,
shared memory, step models) for 100 000 cases each.

- mcap: damaged drivecast MCAP files (zstd chunks with CRCs, and uncompressed chunks without, so that
  damage reaches the record parsers) through `open_recording`, `info()`, `items()` and `decode`.
- record: damaged message bodies and channel metadata of a drivecast MCAP through `plays_as`/`to_item`
  (`unpack_frames`, `unpack_stored`) and `decode`.
- salvage: the same files through `drivecast bag recover` (`salvage.Salvage`): what it writes must read
  back whole, and from checksummed chunks it keeps only messages that were in the file.
- export: the same files through `drivecast bag export` to CSV and Parquet.
- lockstep: the same files through `drivecast play --lockstep` into a graph of the nodes that take them.
- ros1, ros2-mcap, ros2-sqlite3: small copies of the real recordings in ../shared/recordings, damaged,
  through `open_recording` (the `rosbags` readers and `rosbag_reader`'s conversions).
- manifest: damaged run manifests through what `topic`, `record`, `view` and `play` do with one.
- state: damaged predictor state files through a predictor's restart, then Tracks through it.
- set: random `--set node.param=value` overrides (and `--without`) of the default launch.yaml.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.util
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, DecodeError
from pipeline.runtime.graph import load_graph, parse_set
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import SCHEMAS, Detections, Predictions, Tracks
from tests.test_node_fuzz import BASE_NS, Harness, StampSource, deadline, hostile_message, known_bug, wire

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = REPO.parent / "shared" / "recordings"
CASE_DEADLINE_S = 10.0

# -- launch files (hypothesis) ---------------------------------------------------------------------------

# Values and keys drawn near the real schema, so that fuzzing reaches deep into validation.
KEYS = st.sampled_from(["name", "nodes", "run", "params", "inputs", "respawn", "required", "machine", "topic",
                        "queue", "depth", "max", "backoff_s", "transport", "kind", "clock", "machines",
                        "security", "keys", "agents", "rate_hz", "tracks", "sim", "printer", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["nodes.sim:TrafficSim", "nodes.printer:TrackPrinter", "sim/tracks",
                                     "block", "latest", "drop_oldest", "tcp", "ipc", "os:system", "a:b"]))
TREES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(KEYS, kids, max_size=5)), max_leaves=25)


def launch_text(tree: object) -> str:
    return yaml.safe_dump(tree)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(KEYS, TREES, max_size=5))
def test_random_launch_files_fail_only_with_config_errors(tmp_path: Path, tree: dict) -> None:
    path = tmp_path / "launch.yaml"
    path.write_text(launch_text(tree))
    try:
        load_graph(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text_fails_only_with_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "launch.yaml"
    path.write_text(text)
    with contextlib.suppress(ConfigError):
        load_graph(path)


# -- targets ------------------------------------------------------------------------------------------------

Run = Callable[[], str]


class Target:
    """One fuzz target. `case(rnd)` makes one input and returns (what it is, `run`); `run()` feeds it to
    the code under test and returns the outcome's name. Any exception out of `run` is a crash."""

    name = ""

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def damage(rnd: random.Random, data: bytes, lengths: Sequence[int] = ()) -> tuple[str, bytes]:
    """(what was done, a damaged copy of `data`): a cut, bit flips (anywhere, or in the last 4 KiB where
    an MCAP summary and footer are), a zeroed, duplicated or inserted range, one of the u64 record lengths
    at the offsets `lengths` set to a hostile value, or (1 in 50) nothing."""
    if rnd.random() < 0.02 or not data:
        return "intact", data
    b = bytearray(data)
    n = len(b)
    op = rnd.choice(("cut", "flip", "flip_tail", "zero", "duplicate", "insert", *(("length",) * 2 if lengths else ())))
    if op == "cut":
        return op, bytes(b[: rnd.randrange(n)])
    if op == "flip":
        for _ in range(rnd.choice((1, 1, 2, 4, rnd.randint(1, 32)))):
            b[rnd.randrange(n)] ^= rnd.randrange(1, 256)
    elif op == "flip_tail":
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(max(0, n - 4096), n)] ^= rnd.randrange(1, 256)
    elif op == "zero":
        i = rnd.randrange(n)
        k = min(n - i, rnd.randint(1, 4096))
        b[i:i + k] = bytes(k)
    elif op == "duplicate":
        i, k = rnd.randrange(n), rnd.randint(1, 4096)
        b[i:i] = b[i:i + k]
    elif op == "insert":
        i = rnd.randrange(n)
        b[i:i] = rnd.randbytes(rnd.randint(1, 64))
    else:
        at = rnd.choice(lengths)
        (old,) = struct.unpack_from("<Q", b, at)
        new = rnd.choice((0, 1, 8, old - 1, old + 1, old + rnd.randint(2, 64), old - rnd.randint(2, 64), n,
                          2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, rnd.randrange(2**64)))
        struct.pack_into("<Q", b, at, new % 2**64)
    return op, bytes(b)


# -- drivecast MCAP files ------------------------------------------------------------------------------------

_CHUNK, _FOOTER = 0x06, 0x02
EXPORTED = (Tracks, Detections, Predictions)


def _topic(cls: type) -> str:
    return "t/" + cls.SCHEMA.split("/")[1].lower()


@functools.cache
def drive_mcap(compression: str) -> bytes:
    """A drivecast MCAP of ~120 hostile but valid messages of every array schema (more Tracks, Detections
    and Predictions, which export makes tables of) in 4 KiB chunks; "none" chunks carry no CRC."""
    from pipeline.recordings.writer import Recorder

    rnd = random.Random(0)
    stamps = StampSource()
    kinds = [c for c in SCHEMAS.values() if c.ARRAYS] + [*EXPORTED] * 2
    with tempfile.TemporaryDirectory(prefix="dc-fz-drive-") as d:
        path = Path(d) / "drive.mcap"
        with Recorder(path, chunk_size=4096, max_chunk_age_s=0, compression=compression) as rec:
            for i in range(120):
                cls = rnd.choice(kinds)
                msg = hostile_message(rnd, cls, stamps, max_rows=6)
                msg.stamp_ns = i
                with contextlib.suppress(Exception):  # a message the Foxglove mirror cannot convert: not our subject
                    rec.write(_topic(cls), encode(msg), 1_000_000_000 + i * 10_000_000)
        data = path.read_bytes()
    return data if compression != "none" else _without_crcs(data)


def _without_crcs(data: bytes) -> bytes:
    """`data` with every chunk's CRC zeroed (none stored): damage inside a chunk then reaches the parsers."""
    b = bytearray(data)
    p = 8
    while p + 9 <= len(b) and b[p] != _FOOTER:
        if b[p] == _CHUNK:
            struct.pack_into("<I", b, p + 9 + 24, 0)
        p += 9 + struct.unpack_from("<Q", b, p + 1)[0]
    return bytes(b)


def mcap_lengths(data: bytes) -> list[int]:
    """Offsets of the u64 length fields of an MCAP file: every record's, a chunk's uncompressed size and
    data length, and those of the records inside uncompressed chunks."""
    out: list[int] = []

    def walk(p: int, end: int) -> None:
        while p + 9 <= end:
            op, (length,) = data[p], struct.unpack_from("<Q", data, p + 1)
            out.append(p + 1)
            if op == _CHUNK:
                body = p + 9
                (clen,) = struct.unpack_from("<I", data, body + 28)
                out.extend((body + 16, body + 32 + clen))
                if clen == 0:
                    (dlen,) = struct.unpack_from("<Q", data, body + 32 + clen)
                    walk(body + 40, body + 40 + dlen)
            elif op == _FOOTER:
                return
            p += 9 + length

    walk(8, len(data))
    return out


def read_recording(path: Path) -> str:
    """Open, describe and read every message of a recording, decoding each: the outcome's name. A
    RecordingError must name the file."""
    from pipeline.cli.bag import format_info
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    try:
        with open_recording(path) as rec:
            info = rec.info()
            format_info(info)
            json.dumps(info.to_json())
            n = bad = 0
            for item in rec.items():
                n += 1
                try:
                    decode(item.frames)
                except DecodeError:
                    bad += 1
    except RecordingError as exc:
        if str(path) not in str(exc):
            raise AssertionError(f"RecordingError does not name the file: {exc}") from None
        return "RecordingError"
    # a damaged summary can misstate the count (the summary has no CRC of its own): counted, not a crash;
    # a ROS bag's count is of its messages, played or not (a TFMessage plays as several)
    agree = "" if n == info.count or info.format != "drivecast-mcap" else ", count differs from info()"
    return ("truncated" if info.truncated else "read, bad messages" if bad else "read") + agree


class _DamagedDrives(Target):
    """Damaged copies of `drive_mcap("zstd")` and `drive_mcap("none")`, written to `self.path`."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / f"{self.name}.mcap"
        self.sources = {c: (drive_mcap(c), mcap_lengths(drive_mcap(c))) for c in ("zstd", "none")}

    def damaged(self, rnd: random.Random) -> tuple[str, str, str]:
        """Write a damaged drive; return (what, the source's compression, the damage)."""
        comp = rnd.choice(sorted(self.sources))
        data, lengths = self.sources[comp]
        op, bad = damage(rnd, data, lengths)
        self.path.write_bytes(bad)
        return f"{op} {comp}", comp, op


class McapFiles(_DamagedDrives):
    name = "mcap"

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        what, _, op = self.damaged(rnd)

        def run() -> str:
            out = read_recording(self.path)
            if op == "intact" and out != "read":
                raise AssertionError(f"an intact file reads as {out!r}")
            return out
        return what, run


def _kept(items: Iterator[Any]) -> Counter[tuple[str, int, bytes]]:
    return Counter((i.topic, i.log_ns, b"".join(bytes(f) for f in i.frames)) for i in items)


class Salvages(_DamagedDrives):
    """`drivecast bag recover`: what it writes must read back whole, with the count it reports, and a
    recovered zstd file (whose chunks have CRCs) holds only messages of the original file."""

    name = "salvage"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        from pipeline.recordings.reader import open_recording

        self.out = workdir / "recovered.mcap"
        self.original: dict[str, Counter[tuple[str, int, bytes]]] = {}
        for comp, (data, _) in self.sources.items():
            self.path.write_bytes(data)
            with open_recording(self.path) as rec:
                self.original[comp] = _kept(rec.items())

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from pipeline.cli.bag import recover
        from pipeline.recordings.base import RecordingError
        from pipeline.recordings.reader import open_recording

        what, comp, op = self.damaged(rnd)

        def run() -> str:
            self.out.unlink(missing_ok=True)
            try:
                n, dropped = recover(self.path, self.out)
            except RecordingError:
                return "RecordingError"
            with open_recording(self.out) as rec:
                info = rec.info()
                kept = _kept(rec.items())
            if info.truncated or info.count != n or sum(kept.values()) != n:
                raise AssertionError(f"recovered {n} messages, the output reads {info.count} "
                                     f"({sum(kept.values())} items, truncated {info.truncated})")
            invented = set(kept) - set(self.original[comp])
            if comp == "zstd" and invented:
                raise AssertionError(f"recover kept messages that were not in the file: {sorted(invented)[:2]}")
            if op == "intact" and (dropped or kept != self.original[comp]):
                raise AssertionError(f"an intact file lost messages: {dropped}")
            return "dropped stretches" if dropped else "kept all"
        return what, run


class Exports(_DamagedDrives):
    """`drivecast bag export` of a Tracks, Detections or Predictions topic (or one it refuses) to CSV or
    Parquet: rows written as said, or a clear error and no output file."""

    name = "export"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.out = workdir / "table"

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from pipeline.recordings.base import RecordingError
        from pipeline.recordings.table_export import export_table

        what, _, op = self.damaged(rnd)
        topic = rnd.choice([*map(_topic, EXPORTED), *map(_topic, EXPORTED), "t/image", "t/none"])
        fmt = "parquet" if rnd.random() < 0.1 else "csv"

        def run() -> str:
            out = self.out.with_suffix("." + fmt)
            out.unlink(missing_ok=True)
            try:
                rows, skipped = export_table(self.path, topic, out, fmt)
            except (ConfigError, RecordingError) as exc:
                if out.exists() or any(self.out.parent.glob("*.part")):
                    raise AssertionError(f"an export that failed ({exc}) left a file") from None
                return type(exc).__name__
            if fmt == "csv":
                with open(out, newline="") as f:
                    got = sum(1 for _ in csv.reader(f)) - 1
            else:
                import pyarrow.parquet as pq

                got = pq.read_metadata(out).num_rows
            if got != rows:
                raise AssertionError(f"export said {rows} rows, the {fmt} file has {got}")
            return f"{fmt}: " + ("rows" if rows else "no rows") + (", skipped messages" if skipped else "")
        return f"{what}, {topic} as {fmt}", run


class Lockstep(_DamagedDrives):
    """`drivecast play --lockstep` of a damaged drive through a graph of the nodes that take its topics
    (printer, evaluator, poses), in this process: replayed, or a clear error (a RecordingError, a
    DecodeError for a recorded message that does not decode, a ConfigError when nothing is left to play)."""

    name = "lockstep"
    LAUNCH = """
name: fz
topics: {t/tracks: {external: true}, t/predictions: {external: true}, t/odometry: {external: true}}
nodes:
  printer: {run: nodes.printer:TrackPrinter, params: {every_n: 1}, inputs: {tracks: t/tracks}}
  evaluator:
    run: nodes.evaluator:Evaluator
    params: {report_s: 1}
    inputs: {truth: t/tracks, predictions: t/predictions}
  poses: {run: nodes.poses:PosesToTracks, inputs: {pose0: t/odometry}}
"""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        (workdir / "launch.yaml").write_text(self.LAUNCH)
        self.graph = load_graph(workdir / "launch.yaml")

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from pipeline.recordings.base import RecordingError
        from pipeline.recordings.lockstep import lockstep
        from pipeline.recordings.reader import open_recording
        from pipeline.recordings.schedule import PlayOptions

        what, _, op = self.damaged(rnd)

        def run() -> str:
            try:
                with open_recording(self.path) as rec, contextlib.redirect_stdout(io.StringIO()):
                    lockstep(rec, self.graph, PlayOptions())
            except (RecordingError, ConfigError) as exc:
                return type(exc).__name__
            except DecodeError as exc:
                return f"DecodeError {exc.kind}"
            return "replayed"
        return what, run


class Records(Target):
    """Damaged recorded messages through `plays_as` and `to_item` (drivecast frames, and images and
    clouds stored as Foxglove CDR), then `decode`: a RecordingError naming file, topic and time, a
    DecodeError, or the message."""

    name = "record"

    def __init__(self, workdir: Path) -> None:
        from mcap.records import Channel, Message
        from mcap.stream_reader import StreamReader, breakup_chunk

        self.pairs: list[tuple[Channel, Message]] = []
        channels: dict[int, Channel] = {}
        for rec in StreamReader(io.BytesIO(drive_mcap("none")), emit_chunks=True).records:
            for r in (breakup_chunk(rec) if type(rec).__name__ == "Chunk" else [rec]):
                if isinstance(r, Channel):
                    channels[r.id] = r
                elif isinstance(r, Message) and not channels[r.channel_id].topic.startswith("/foxglove/"):
                    self.pairs.append((channels[r.channel_id], r))  # a Foxglove mirror is never played

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from mcap.records import Channel, Message

        from pipeline.recordings.base import RecordingError
        from pipeline.recordings.foxglove import STORED
        from pipeline.recordings.mcap_format import DRIVECAST_SCHEMA_KEY
        from pipeline.recordings.mcap_reader import plays_as, to_item

        ch, msg = rnd.choice(self.pairs)
        op, data = damage(rnd, msg.data)
        meta, enc = dict(ch.metadata), ch.message_encoding
        if rnd.random() < 0.15:
            meta[DRIVECAST_SCHEMA_KEY] = rnd.choice([*STORED, *SCHEMAS, "", "x"])
            enc = rnd.choice(("cdr", "drivecast", enc))
            op += ", channel changed"
        ch2 = Channel(id=ch.id, schema_id=ch.schema_id, topic=ch.topic, message_encoding=enc, metadata=meta)
        bad = Message(channel_id=msg.channel_id, sequence=msg.sequence, log_time=msg.log_time,
                      publish_time=msg.publish_time, data=data)

        direct = rnd.random() < 0.2  # as a reader that took the channel from elsewhere (its summary) calls it

        def run() -> str:
            if plays_as(ch2, None) is None and not direct:
                return "not played"
            try:
                item = to_item(Path("x.mcap"), ch2, bad)
            except RecordingError as exc:
                if not str(exc).startswith(f"x.mcap: {ch.topic} @ {msg.log_time}: "):
                    raise AssertionError(f"RecordingError does not name file, topic and time: {exc}") from None
                return "RecordingError"
            try:
                decode(item.frames)
            except DecodeError as exc:
                return f"DecodeError {exc.kind}"
            return "message"
        return f"{op} {ch.topic}", run


# -- ROS bags ------------------------------------------------------------------------------------------------

def _ros1_copy(src: Path, dst: Path, keep: Callable[[str], int], bz2: bool) -> None:
    from rosbags.rosbag1 import Reader, Writer

    w = Writer(dst)
    w.chunk_threshold = 16 * 1024  # several chunks, as a long recording has
    if bz2:
        w.set_compression(Writer.CompressionFormat.BZ2)
    with Reader(src) as r, w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, md5sum=c.digest,
                                        callerid=c.ext.callerid, latching=c.ext.latching) for c in r.connections}
        left = {c.id: keep(c.msgtype) for c in r.connections}
        for c, t, raw in r.messages():
            if left[c.id] > 0:
                left[c.id] -= 1
                w.write(conns[c.id], t, raw)


def _ros2_mcap_copy(src: Path, dst: Path, per_channel: int, zstd: bool = True) -> None:
    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer

    with open(src, "rb") as f, open(dst, "wb") as out:
        reader = make_reader(f)
        header = reader.get_header()
        w = Writer(out, chunk_size=8192, compression=CompressionType.ZSTD if zstd else CompressionType.NONE,
                   enable_crcs=zstd)
        w.start(profile=header.profile, library=header.library)
        schemas: dict[int, int] = {}
        channels: dict[int, int] = {}
        left: dict[int, int] = {}
        for schema, ch, msg in reader.iter_messages():
            if ch.id not in channels:
                if schema is not None and schema.id not in schemas:
                    schemas[schema.id] = w.register_schema(schema.name, schema.encoding, schema.data)
                channels[ch.id] = w.register_channel(ch.topic, ch.message_encoding,
                                                     schemas[schema.id] if schema else 0, ch.metadata)
                left[ch.id] = per_channel
            if left[ch.id] > 0:
                left[ch.id] -= 1
                w.add_message(channels[ch.id], msg.log_time, msg.data, msg.publish_time, msg.sequence)
        w.finish()


def _ros2_sqlite_copy(src: Path, dst: Path, per_topic: int) -> None:
    """The messages of the ROS 2 MCAP `src` (CDR, as sqlite3 bags store them) in a sqlite3 bag directory."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    with AnyReader([src], default_typestore=store) as r, Writer(dst, version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        conns = {c.id: w.add_connection(c.topic, c.msgtype, typestore=store) for c in r.connections}
        left = dict.fromkeys(conns, per_topic)
        for c, t, raw in r.messages():
            if left[c.id] > 0:
                left[c.id] -= 1
                w.write(conns[c.id], t, raw)


@functools.cache
def ros_sources(fmt: str) -> tuple[tuple[str, str, tuple[tuple[str, bytes], ...]], ...]:
    """(label, what to open, the files) of each source of `fmt`: small copies of the real recordings
    (tens of messages per topic, so that a case costs milliseconds) and the small real sqlite3 bag."""
    pytest.importorskip("rosbags")
    husky = RECORDINGS / "husky_outdoor_gps_imu_odom_ros1" / "test1.bag"
    cars = RECORDINGS / "rc_cars_overtakes_mocap_lidar_ros1" / "overtakes.bag"
    turtle = RECORDINGS / "turtlebot_nav2_sim_ros2_mcap" / "nav2_turtlebot.mcap"
    vlp = RECORDINGS / "vlp16_packets_ros2_sqlite3"
    out = []
    with tempfile.TemporaryDirectory(prefix="dc-fz-ros-") as d:
        tmp = Path(d)
        if fmt == "ros1":
            if husky.exists():
                _ros1_copy(husky, tmp / "husky.bag", lambda t: 60, bz2=True)
                out.append(("husky, bz2", "husky.bag", (("husky.bag", (tmp / "husky.bag").read_bytes()),)))
            if cars.exists():
                _ros1_copy(cars, tmp / "cars.bag", lambda t: 4 if t.endswith("LaserScan") else 30, bz2=False)
                out.append(("rc cars", "cars.bag", (("cars.bag", (tmp / "cars.bag").read_bytes()),)))
        elif fmt == "ros2-mcap" and turtle.exists():
            _ros2_mcap_copy(turtle, tmp / "turtle.mcap", 40)
            out.append(("turtlebot", "turtle.mcap", (("turtle.mcap", (tmp / "turtle.mcap").read_bytes()),)))
        elif fmt == "ros2-sqlite3":
            if turtle.exists():
                _ros2_sqlite_copy(turtle, tmp / "bag", 30)
                out.append(("turtlebot as sqlite3", "bag", tuple(
                    (f"bag/{p.name}", p.read_bytes()) for p in sorted((tmp / "bag").iterdir()))))
            if vlp.exists():
                out.append(("vlp16", "bag", tuple((f"bag/{p.name}", p.read_bytes()) for p in sorted(vlp.iterdir())
                                                  if p.suffix in (".db3", ".yaml"))))
    if not out:
        pytest.skip(f"no {fmt} recording in {RECORDINGS}")
    return tuple(out)


class RosBags(Target):
    """Damaged small ROS recordings of one format through `open_recording`, `info()` and `items()`."""

    def __init__(self, workdir: Path, fmt: str) -> None:
        self.name = fmt
        self.dir = workdir / fmt
        self.sources = ros_sources(fmt)

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        label, opened, files = rnd.choice(self.sources)
        which = rnd.choices(range(len(files)), [len(data) for _, data in files])[0]
        name, data = files[which]
        r = rnd.random()
        if name.endswith(".yaml") and r < 0.35:
            op, bad = "yaml lines", _mutate_text(rnd, data.decode()).encode()
        elif name.endswith(".yaml") and r < 0.7:
            op, tree = mutate_tree(rnd, yaml.safe_load(data))
            bad = yaml.safe_dump(tree).encode()
        else:
            op, bad = damage(rnd, data)
        shutil.rmtree(self.dir, ignore_errors=True)
        for i, (rel, content) in enumerate(files):
            (self.dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / rel).write_bytes(bad if i == which else content)

        def run() -> str:
            return read_recording(self.dir / opened)
        return f"{op} {label} {name}", run


_LINE_NOISE = ["", ":", "{", "]", "- ", "  ", "&a", "*a", "!!python/object:os.system", "\t", "'", "0x", "~", "<<: *a",
               "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!str ", "!!set "]


def _mutate_text(rnd: random.Random, text: str) -> str:
    """Line damage of YAML: lines deleted, repeated, cut into, appended."""
    lines = text.splitlines()
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        if op < 0.3 and lines:
            del lines[rnd.randrange(len(lines))]
        elif op < 0.5 and lines:
            lines.insert(rnd.randrange(len(lines)), lines[rnd.randrange(len(lines))])
        elif op < 0.8 and lines:
            i = rnd.randrange(len(lines))
            j = rnd.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rnd.choice(_LINE_NOISE) + lines[i][j + rnd.randint(0, 3):]
        else:
            lines.append(rnd.choice(["x: [", "  - 1", "nodes: {}", ": :", "%YAML 1.1", "---", "..."]))
    return "\n".join(lines)


# -- run manifests -------------------------------------------------------------------------------------------

_HOSTILE_JSON: list[Any] = [None, True, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1.5, 1e308, "",
                            "x" * 1000, "\x00", "../../etc", "a:b", "ipc://", "tcp://*:0", [], {}, [1, "a"],
                            {"x": 1}, "drivecast/Tracks", "block", "latest"]


def _paths(tree: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*at, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, (*at, i))


DEEP = "<5000 nested lists>"  # `to_json` writes it as such: a parser's recursion limit


def to_json(tree: Any) -> bytes:
    return json.dumps(tree).replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000).encode()


def mutate_tree(rnd: random.Random, tree: Any) -> tuple[str, Any]:
    """A JSON/YAML tree with one value replaced by a hostile one, a key dropped or an unknown key added."""
    tree = json.loads(json.dumps(tree))
    path = rnd.choice([p for p in _paths(tree) if p])
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    op = rnd.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"{'.'.join(map(str, path))} removed", tree
    if op < 0.25 and isinstance(parent, dict):
        parent[rnd.choice(("evil", "x", ""))] = rnd.choice(_HOSTILE_JSON)
        return f"key added beside {'.'.join(map(str, path))}", tree
    value = rnd.choice(_HOSTILE_JSON) if op < 0.95 else DEEP
    parent[path[-1]] = value
    return f"{'.'.join(map(str, path))}={str(value)[:20]!r}", tree


class Manifests(Target):
    """Damaged run manifests through what the tools do with one: `read_manifest`, `live_runs` and
    `find_run` (`drivecast topic`, `record`, `view`), `tool_client` (their CURVE keys), and
    `target_graph` and `plan_feed` (`drivecast play` into a running graph)."""

    name = "manifest"

    def __init__(self, workdir: Path) -> None:
        import zmq

        from pipeline.runtime.rundir import Manifest
        from pipeline.transport.curve import generate_keys

        self.run_dir = workdir / "runs" / "fuzz-1"
        self.run_dir.mkdir(parents=True, mode=0o700)
        keys = workdir / "keys"
        generate_keys(keys, ["default", "car"])
        self.path = self.run_dir / "manifest.json"
        ep = f"ipc://{self.run_dir}"
        shm = {"shm": "auto", "shm_threshold": 65536, "shm_slots": 4}
        self.tree = {
            "name": "fuzz", "run_dir": str(self.run_dir), "file": "launch.yaml", "launcher_pid": os.getpid(),
            "started_ns": 1, "clock": "ext/clock", "security": str(keys), "machine": "",
            "topics": {
                "sim/tracks": {"schema": "drivecast/Tracks", "endpoint": f"{ep}/t.sock", "publisher": "sim",
                               "lossless_endpoint": None, "lossless_subscribers": 0, "machine": "car", "shm": shm,
                               "external": False},
                "ext/odom": {"schema": "drivecast/Odometry", "endpoint": f"{ep}/o.sock", "publisher": "",
                             "lossless_endpoint": f"{ep}/o-ll.sock", "lossless_subscribers": 1, "machine": "",
                             "shm": shm, "external": True},
                "ext/clock": {"schema": "drivecast/Clock", "endpoint": f"{ep}/c.sock", "external": True}},
            "nodes": {
                "pred": {"run": "nodes.predictor:Predictor", "params": {"models": {"vehicle": "v.onnx"}},
                         "required": True, "pid": 1, "restarts": 0, "machine": "car",
                         "inputs": {"tracks": {"topic": "sim/tracks", "queue": "drop_oldest", "depth": 10}}},
                "poses": {"run": "nodes.poses:PosesToTracks",
                          "inputs": {"pose0": {"topic": "ext/odom", "queue": "block", "depth": 10}}}}}
        self.good = json.dumps(self.tree, indent=1).encode()
        import msgspec

        msgspec.json.decode(self.good, type=Manifest)  # the base case is a valid manifest
        self.ctx = zmq.Context()

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        if rnd.random() < 0.3:
            what, data = damage(rnd, self.good)
        else:
            what, tree = mutate_tree(rnd, self.tree)
            data = to_json(tree)
        self.path.write_bytes(data)
        return what, self._run

    @staticmethod
    def _refused(which: str) -> str:
        from pipeline.runtime.rundir import find_run

        try:
            find_run(which)
        except ConfigError as exc:
            if "manifest.json" not in str(exc):
                raise AssertionError(f"find_run hides what is wrong with the manifest: {exc}") from None
            return "ConfigError"
        raise AssertionError("find_run took a manifest that read_manifest refuses")

    def _run(self) -> str:
        import zmq

        from pipeline.recordings.attach import plan_feed, target_graph
        from pipeline.recordings.base import RecordingInfo, TopicInfo
        from pipeline.recordings.schedule import PlayOptions
        from pipeline.runtime.rundir import find_run, live_runs, read_manifest, tool_client

        which = str(self.run_dir)
        try:
            m = read_manifest(self.path)
        except ConfigError as exc:
            if not str(exc).startswith(str(self.path)):
                raise AssertionError(f"ConfigError does not name the manifest: {exc}") from None
            return self._refused(which)
        live_runs(which)
        out = "valid"
        try:
            find_run(which)
            graph = target_graph(which)
            if graph is not None:
                info = RecordingInfo("rec.mcap", "drivecast-mcap", 0, 1, 3, [
                    TopicInfo("ext/odom", "drivecast/Odometry", 2, True, "drivecast/Odometry"),
                    TopicInfo("sim/tracks", "drivecast/Tracks", 1, True, "drivecast/Tracks")])
                plan_feed(graph, info, PlayOptions(), "rec.mcap")
                out = "feed planned"
        except ConfigError:
            out = "valid, ConfigError from find_run or play"
        try:
            configure = tool_client(m)
            if configure is not None and m.topics:
                sock = self.ctx.socket(zmq.SUB)
                try:
                    configure(sock, next(iter(m.topics)))
                finally:
                    sock.close(0)
        except ConfigError:
            out += ", CURVE ConfigError"
        return out


# -- predictor state files ------------------------------------------------------------------------------------

_MODELS = {k: REPO / "models" / "pretrained" / f"{k}_lstm.onnx" for k in ("vehicle", "pedestrian")}


def _moving(stamp: int, ids: Sequence[int], kinds: Sequence[int]) -> Tracks:
    t = (stamp - BASE_NS) / 1e9
    n = len(ids)
    xy = np.array([[i * 3.0 + t * (1 + i % 3), i - t * 0.5] for i in ids], np.float32).reshape(n, 2)
    return Tracks(stamp_ns=stamp, ids=np.array(ids, np.int64), xy=xy, vxy=np.zeros((n, 2), np.float32),
                  kind=np.array(kinds, np.uint8))


class StateFiles(Target):
    """A predictor restarting on a damaged state file (`nodes.state_file`: bytes damaged, or arrays
    removed, added, reshaped, retyped or given hostile values), then Tracks continuing the drive: the
    restart restores or resets, and every later message is delivered."""

    name = "state"
    IDS, KINDS = (1, 2, 3, 4, 5, 6), (1, 1, 1, 2, 2, 0)

    def __init__(self, workdir: Path) -> None:
        from nodes.predictor import Predictor
        from nodes.state_file import STATE_FILE

        params = {"models": {k: str(v) for k, v in _MODELS.items()}, "capacity": 16, "save_every_s": 0.0,
                  "ttl_s": 5.0}
        self.h = Harness(Predictor, workdir, params)
        self.node: Any = self.h.rt.node
        for i in range(40):
            self.h.deliver("tracks", wire(_moving(BASE_NS + i * 100_000_000, self.IDS, self.KINDS)))
        self.node.save_state()
        self.file = Path(self.node.state_dir) / STATE_FILE
        self.good = self.file.read_bytes()
        with np.load(self.file, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files}
        now = int(self.arrays["saved_ns"]) + 500_000_000
        self.node.now_ns = lambda: now  # every restart half a second after the save, however long the run

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.h.close()

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        if rnd.random() < 0.3:
            what, data = damage(rnd, self.good)
        else:
            what, arrays = self._mutated(rnd)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            data = buf.getvalue()
        self.file.write_bytes(data)
        if what != "intact":
            return what, self._run

        def intact() -> str:
            out = self._run()
            if out != "restored":
                raise AssertionError(f"an intact state file was not restored: {self.node.event.reason}")
            return out
        return what, intact

    def _mutated(self, rnd: random.Random) -> tuple[str, dict[str, np.ndarray]]:
        arrays = dict(self.arrays)
        done = []
        for _ in range(rnd.randint(1, 2)):
            key = rnd.choice(sorted(arrays))
            a = arrays[key]
            op = rnd.choice(("remove", "values", "values", "values", "dtype", "shape", "scalar", "extra"))
            if op == "remove":
                del arrays[key]
            elif op == "extra":
                arrays[rnd.choice(("x", "vehicle.x", "cyclist.grid", "cyclist.model_hash"))] = a
            elif op == "dtype":
                # strings (one mutation may have made bytes of them already) only become other strings
                arrays[key] = a.astype(rnd.choice((np.float32, np.float64, np.int32, np.int64, np.uint8, bool, "U4"))
                                       if a.dtype.kind not in "US" else rnd.choice(("S", "U4")))
            elif op == "shape":
                flat = a.reshape(-1)
                arrays[key] = rnd.choice((flat, a[None], flat[:0], a[..., :1] if a.ndim else a, np.concatenate([flat] * 2)))
            elif op == "scalar":
                arrays[key] = np.array(rnd.choice((0, -1, 2**63 - 1, 1.5, "x")))
            else:
                arrays[key] = self._hostile_values(rnd, a)
            done.append(f"{key} {op}")
        return ", ".join(done), arrays

    @staticmethod
    def _hostile_values(rnd: random.Random, a: np.ndarray) -> np.ndarray:
        b = a.copy()
        if b.size == 0 or b.dtype.kind not in "iuf":
            return np.array(rnd.choice(("", "other", "x" * 100))) if b.dtype.kind == "U" else b
        flat = b.reshape(-1)
        if b.dtype.kind == "f":
            pool: list[Any] = [np.nan, np.inf, -np.inf, 1e300, -1e300, 3e38, 0.0]
        else:
            info = np.iinfo(b.dtype)
            pool = [info.min, info.max, -1, 0, 1, 2, 10**6, 2**40]
            pool = [v for v in pool if info.min <= v <= info.max]
        with np.errstate(over="ignore"):  # 3e38 into a float32 history: inf, as hostile as intended
            for i in rnd.sample(range(flat.size), k=rnd.randint(1, min(flat.size, 4))):
                flat[i] = rnd.choice(pool)
        return b

    def _run(self) -> str:
        node = self.node
        for r in node.routes:
            r.grid.clear()
        node.last_stamp, node.bridging = None, False
        node.event = node._restore()  # what setup does on a respawn
        out = "restored" if node.event.event == "restored" else \
            "reset: bad file" if "bad state file" in node.event.reason else f"reset: {node.event.reason[:30]}"
        start = (node.last_stamp if isinstance(node.last_stamp, int) else BASE_NS) + 100_000_000
        for i in range(3):
            stamp = min(start + i * 100_000_000, 2**63 - 1)
            got = self.h.deliver("tracks", wire(_moving(stamp, self.IDS, self.KINDS)))
            if got != "delivered":
                raise AssertionError(f"Tracks after the restart: {got}")
        return out


# -- --set values ---------------------------------------------------------------------------------------------

_SET_VALUES = ["0", "-1", "1", "3", "10", "0.5", "1e999", "-1e999", ".nan", ".inf", "-.inf", "1e-320", "true", "~",
               "null", "[]", "{}", "[1, 2]", "[0]", "[1, 2, 3, 5]", "{vehicle: x.onnx}", "{walker: x.onnx}",
               "{vehicle: models/pretrained/vehicle_lstm.onnx}", "{vehicle: /dev/null}", "{vehicle: /}",
               "'str'", '"\\x00"', "!!python/object/apply:os.system [ls]", "&a [*a]", "&a {k: *a}", "2001-12-14",
               "99999999999999999999999", "0x7fffffffffffffff", "{a: 1, a: 2}", "[", "{", ": :", "- x", "'''",
               "\t", "x" * 5000, "*undefined", "!!binary AAAA", "!!float nan", "!!set {a}", "!!omap [a: 1]",
               "[.nan]", "{x: .inf}", "/tmp/nowhere/plot.png", "plot.png", "[[[[[[[[[[1]]]]]]]]]]", "!!int x",
               "!!int", "!!float 1:x", "!!bool maybe", "!!timestamp x", "!!timestamp 2001-13-99", "!!int 3",
               "!!float 0.5", "!!str 5"]


class SetValues(Target):
    """`--set node.param=value` overrides (and `--without`) of the default launch.yaml, as `drivecast
    launch` parses and applies them: a graph, or a ConfigError naming the `--set` or the file. Half the
    values are near the param's default (so that most cases pass one check and reach the next)."""

    name = "set"

    def __init__(self, workdir: Path) -> None:
        import msgspec

        self.launch = REPO / "launch.yaml"
        graph = load_graph(self.launch)
        self.params = {name: {f.name: f.default for f in msgspec.structs.fields(n.cls.Params)}
                       for name, n in graph.nodes.items()}

    def _item(self, rnd: random.Random) -> str:
        node = rnd.choice([*self.params] * 6 + ["x", ""])
        fields = self.params.get(node, {})
        param = rnd.choice([*fields] * 4 + ["models.vehicle", "nope", ""]) if fields else "rate_hz"
        default = fields.get(param)
        if rnd.random() < 0.5 and isinstance(default, (int, float, str, tuple)) and not isinstance(default, bool):
            if isinstance(default, str):
                value = rnd.choice((default, "plot.png", "/tmp/nowhere/plot.png", "''"))
            elif isinstance(default, tuple):
                value = json.dumps([*default][:rnd.randint(0, len(default))] or [rnd.choice((0, 1, -1))])
            else:
                value = repr(type(default)(default * rnd.choice((1, 1, 2, 0.5, 0, -1))))
        else:
            value = rnd.choice(_SET_VALUES)
            if rnd.random() < 0.2:
                value = value[:rnd.randrange(len(value) + 1)] + rnd.choice(_SET_VALUES)
        return rnd.choice((f"{node}.{param}={value}",) * 8 + (f"{node}{param}={value}", f"{node}.{param}"))

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        items = [self._item(rnd) for _ in range(rnd.randint(1, 3))]
        without = rnd.choice(((),) * 6 + (("sim",), ("nope",), tuple(self.params)))

        def run() -> str:
            try:
                load_graph(self.launch, parse_set(items), without)
            except ConfigError as exc:
                if not str(exc).startswith(("--set ", "--without", str(self.launch))):
                    raise AssertionError(f"ConfigError names neither the --set nor the file: {exc}") from None
                return "ConfigError"
            return "valid"
        return " ".join(items)[:200] + (f" --without {' '.join(without)}" if without else ""), run


#: The targets of this module, by name (`bench/fuzz.py` adds codec, launch, nodes, shm and onnx).
TARGETS: dict[str, Callable[[Path], Target]] = {
    "mcap": McapFiles, "record": Records, "salvage": Salvages, "export": Exports, "lockstep": Lockstep,
    "ros1": lambda d: RosBags(d, "ros1"), "ros2-mcap": lambda d: RosBags(d, "ros2-mcap"),
    "ros2-sqlite3": lambda d: RosBags(d, "ros2-sqlite3"),
    "manifest": Manifests, "state": StateFiles, "set": SetValues,
}


def run_cases(target: Target, n: int, seed: int) -> Counter[str]:
    """`n` cases of `target`; the first crash fails with its case number, seed and input."""
    rnd = random.Random(seed)
    outcomes: Counter[str] = Counter()
    for i in range(n):
        what, run = target.case(rnd)
        try:  # numpy's warnings on NaN and inf inputs are expected here
            with deadline(CASE_DEADLINE_S, f"{target.name} case {i}"), np.errstate(all="ignore"):
                outcomes[run()] += 1
        except Exception as exc:
            bug = known_bug(exc)
            if bug is not None:  # reported and pinned by its own test
                outcomes[f"known.{bug}"] += 1
                continue
            raise AssertionError(f"{target.name} case {i} of seed {seed} ({what}): {type(exc).__name__}: {exc}") from exc
    return outcomes


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="dc-fz-", dir="/tmp") as d:
        t = TARGETS[request.param](Path(d))
        try:
            yield t
        finally:
            t.close()


#: How many cases each target runs here, and outcomes it must reach in them (it fuzzes more than errors).
QUICK = {"mcap": (300, {"RecordingError", "read"}), "record": (400, {"RecordingError", "message"}),
         "salvage": (200, {"kept all", "dropped stretches"}), "export": (200, {"csv: rows", "RecordingError"}),
         "lockstep": (150, {"replayed", "RecordingError"}),
         "ros1": (150, {"RecordingError", "read"}), "ros2-mcap": (150, {"RecordingError", "read"}),
         "ros2-sqlite3": (150, {"RecordingError", "read"}), "manifest": (300, {"ConfigError", "feed planned"}),
         "state": (150, {"restored", "reset: bad file"}), "set": (300, {"ConfigError", "valid"})}


def test_damaged_inputs_give_clear_errors_never_crashes(target: Target) -> None:
    n, reached = QUICK[target.name]
    outcomes = run_cases(target, n, seed=24)
    assert reached <= set(outcomes), f"{target.name}: outcomes {dict(outcomes)} miss {reached - set(outcomes)}"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_fuzz", REPO / "bench" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_fuzz_bench_has_a_target_for_every_reader_and_every_node() -> None:
    from tests.test_node_fuzz import NODES

    names = set(_bench().catalogue())
    assert set(TARGETS) <= names
    assert {f"node.{cls.__name__}" for cls in NODES.values()} <= names


def test_the_fuzz_bench_runs_n_cases_per_target_and_records_each_target(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, "bench/fuzz.py", "--cases", "30", "--seed", "1", "--only", "record", "manifest",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["bar"] == {"cases_per_target": 30, "met": True, "short": []}
    for name in ("record", "manifest"):
        t = doc["targets"][name]
        assert (t["cases"], t["crashes"], t["hangs"]) == (30, 0, 0) and t["wall_s"] >= 0 and sum(t["outcomes"].values()) == 30


# -- crashes and hangs found by the targets above, pinned one by one -----------------------------------------

def _plain_drive(path: Path, n: int) -> tuple[list[Any], bytearray]:
    """`n` Tracks messages on `tracks` (log times 1e9 + i) in an uncompressed drive without CRCs, so that a
    test can damage one record in place: (the messages' frames, the file's bytes)."""
    from pipeline.recordings.writer import Recorder

    frames = [encode(_moving(BASE_NS + i * 10**8, [1, 2], [1, 1])) for i in range(n)]
    with Recorder(path, compression="none", max_chunk_age_s=0, foxglove_mirror=False) as rec:
        for i, f in enumerate(frames):
            rec.write("tracks", f, 10**9 + i)
    return frames, bytearray(_without_crcs(path.read_bytes()))


def test_recover_drops_a_message_whose_header_does_not_decode_and_keeps_the_rest(tmp_path: Path) -> None:
    """In an uncompressed chunk without a CRC, a damaged header still unpacks as frames: `bag recover`
    handed it to the recorder, whose DecodeError ended the recovery there."""
    from pipeline.cli.bag import recover

    src = tmp_path / "drive.mcap"
    frames, data = _plain_drive(src, 3)
    data[data.index(bytes(frames[1][0]))] = 0xC1  # the second header's first byte: one msgpack never uses
    src.write_bytes(data)
    n, dropped = recover(src, tmp_path / "out.mcap")
    assert n == 2
    (line,) = dropped
    assert line.startswith("dropped 1 messages logged from") and "does not unpack: bad_header" in line


def test_a_summary_channel_that_names_no_stored_schema_is_a_recording_error(tmp_path: Path) -> None:
    """A topic with a stored (Foxglove CDR) channel and a drivecast one: the reader plays the topic for the
    drivecast channel's sake and got the stored channel's messages too, whose damaged `drivecast_schema`
    in a summary without a CRC made `unpack_stored` raise KeyError out of `items()` (found by the `mcap`
    target, before the summary's CRC was checked)."""
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording
    from pipeline.recordings.writer import Recorder
    from pipeline.wire.messages import PointCloud

    path = tmp_path / "drive.mcap"
    with Recorder(path, max_chunk_age_s=0, foxglove_mirror=False) as rec:
        for i, fields in enumerate(("x,y,z", "x,y")):  # stored as a Foxglove cloud; not (a column unnamed)
            cloud = PointCloud(stamp_ns=BASE_NS, fields=fields, points=np.zeros((3, 3), np.float32))
            rec.write("points", encode(cloud), 10**9 + i)
    data = path.read_bytes()
    field = b"drivecast_schema" + struct.pack("<I", 20) + b"drivecast/PointCloud"
    at = data.rindex(field)  # in the summary
    data = data[:at] + field.replace(b"/Point", b"/Qoint") + data[at + len(field):]
    path.write_bytes(data[:-12] + bytes(4) + data[-8:])  # a summary CRC of 0: none stored, as some writers do
    with open_recording(path) as rec, pytest.raises(RecordingError, match=r"drive\.mcap: points @ 1000000000: .*"
                                                                       r"'drivecast/QointCloud'"):
        list(rec.items())


def test_a_summary_that_does_not_match_its_crc_is_not_used(tmp_path: Path) -> None:
    """The summary section has no CRC of its own but the footer's: a damaged channel record there renamed
    the topic of every message of a chunk that does not repeat the channel, in play and in `bag recover`
    (found by the `salvage` target: a recovered message on a topic the file never had)."""
    from pipeline.cli.bag import recover
    from pipeline.recordings.reader import open_recording
    from pipeline.recordings.writer import Recorder

    path = tmp_path / "drive.mcap"
    with Recorder(path, max_chunk_age_s=0, foxglove_mirror=False) as rec:
        rec.write("tracks", encode(_moving(BASE_NS, [1], [1])), 10**9)
    data = path.read_bytes()
    at = data.rindex(b"tracks")  # the channel record of the summary
    path.write_bytes(data[:at] + b"trackz" + data[at + 6:])
    with open_recording(path) as rec:
        assert [i.topic for i in rec.items()] == ["tracks"]
        assert rec.info().truncated and "the summary does not match its CRC" in rec.info().note
    recover(path, tmp_path / "out.mcap")
    with open_recording(tmp_path / "out.mcap") as rec:
        assert [t.name for t in rec.info().topics] == ["tracks"]


@pytest.mark.parametrize("damage_", [("  - message_count: 0\n    topic_metadata", "  - message_count: many\n    topic_metadata"),
                                     ("      name: /odom", "      name: 7"),
                                     ("      type: nav_msgs/msg/Odometry", "      type: [1]"),
                                     ("  message_count: 0\n  relative", "  message_count: -3\n  relative")],
                         ids=["count_a_string", "topic_a_number", "type_a_list", "negative_count"])
def test_a_ros2_bag_whose_metadata_has_values_of_the_wrong_type_is_a_recording_error(
        tmp_path: Path, damage_: tuple[str, str]) -> None:
    """rosbags takes metadata.yaml's values as they are: a topic's message count that is a string made
    `RosRecording` raise TypeError (found by the `ros2-sqlite3` target), a number for a topic name broke
    `bag info`."""
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    bag = tmp_path / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=get_typestore(Stores.ROS2_HUMBLE))
    meta = bag / "metadata.yaml"
    old, new = damage_
    assert old in meta.read_text()
    meta.write_text(meta.read_text().replace(old, new))
    with pytest.raises(RecordingError, match=rf"^{bag}: cannot read as a ROS bag: damaged metadata: "):
        open_recording(bag)


def test_a_ros2_bag_whose_definition_of_a_converted_type_lacks_a_field_is_a_recording_error(tmp_path: Path) -> None:
    """A ROS 2 MCAP stores its own message definitions: one whose Twist has no `angular` (a damaged or a
    forked definition) deserializes, and the conversion to Odometry raised AttributeError out of `items()`
    (found by the `ros2-mcap` target)."""
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    turtle = RECORDINGS / "turtlebot_nav2_sim_ros2_mcap" / "nav2_turtlebot.mcap"
    if not turtle.exists():
        pytest.skip(f"no {turtle}")
    pytest.importorskip("rosbags")
    path = tmp_path / "turtle.mcap"
    _ros2_mcap_copy(turtle, path, 3, zstd=False)  # uncompressed, no CRCs: the definitions can be edited
    data = path.read_bytes()
    assert b"Vector3  angular" in data
    path.write_bytes(data.replace(b"Vector3  angular", b"Vector3  angulcr"))
    with open_recording(path) as rec, pytest.raises(
            RecordingError, match=r"turtle\.mcap: /odom @ \d+: cannot convert nav_msgs/msg/Odometry: AttributeError"):
        list(rec.items(["/odom"]))


def test_a_ros2_bag_whose_metadata_lists_no_files_is_a_recording_error_when_closed(tmp_path: Path) -> None:
    """`files: ''` in metadata.yaml: rosbags opens and reads the bag, then its own close raised
    AttributeError out of `RosRecording.close` (found by the `ros2-sqlite3` target)."""
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    bag = tmp_path / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.SQLITE3) as w:
        w.add_connection("/odom", "nav_msgs/msg/Odometry", typestore=get_typestore(Stores.ROS2_HUMBLE))
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    meta["rosbag2_bagfile_information"]["files"] = ""
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(RecordingError, match=rf"^{bag}: cannot close the ROS bag: damaged metadata"), \
            open_recording(bag) as rec:
        assert list(rec.items()) == []


def test_a_message_whose_log_time_is_beyond_int64_is_a_recording_error(tmp_path: Path) -> None:
    """An MCAP log time is u64: in an uncompressed chunk without a CRC a damaged one reached `bag export`'s
    `np.full(n, log_ns, np.int64)` and raised OverflowError (found by the `export` target), and made
    `play --lockstep` run the graph's timers through 400 years (the `lockstep` target's hang)."""
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.mcap_format import pack_frames
    from pipeline.recordings.table_export import export_table

    path = tmp_path / "drive.mcap"
    frames, data = _plain_drive(path, 2)
    at = data.index(pack_frames(frames[1])) - 16  # the message record's log time, before its publish time
    assert struct.unpack_from("<Q", data, at)[0] == 10**9 + 1
    struct.pack_into("<Q", data, at, 2**64 - 1)
    path.write_bytes(data)
    with pytest.raises(RecordingError, match=rf"drive\.mcap: tracks @ {2**64 - 1}: log or publish time .* beyond int64"):
        export_table(path, "tracks", tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_a_lockstep_replay_over_a_gap_of_years_does_not_fire_every_timer_tick(tmp_path: Path) -> None:
    from pipeline.recordings.lockstep import lockstep
    from pipeline.recordings.reader import open_recording
    from pipeline.recordings.schedule import PlayOptions
    from pipeline.recordings.writer import Recorder

    path = tmp_path / "drive.mcap"
    with Recorder(path, max_chunk_age_s=0, foxglove_mirror=False) as rec:
        for i, log_ns in enumerate((10**9, 10**9 + 3 * 10**17)):  # ten years apart
            rec.write("t/tracks", encode(_moving(BASE_NS + i * 10**8, [1, 2], [1, 1])), log_ns)
    (tmp_path / "launch.yaml").write_text(Lockstep.LAUNCH)
    graph = load_graph(tmp_path / "launch.yaml")
    with open_recording(path) as rec, contextlib.redirect_stdout(io.StringIO()), deadline(5, "lockstep"):
        assert lockstep(rec, graph, PlayOptions()).injected == 2


def test_a_manifest_nested_too_deeply_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """msgspec raises RecursionError, not a DecodeError, for JSON nested past its stack."""
    from pipeline.runtime.rundir import read_manifest

    path = tmp_path / "manifest.json"
    path.write_text('{"name": "g", "run_dir": "x", "nodes": {"n": {"run": "a:b", "params": {"p": '
                    + "[" * 5000 + "]" * 5000 + "}}}}")
    with pytest.raises(ConfigError, match=r"manifest\.json: not a drivecast run manifest: JSON nested too deeply"):
        read_manifest(path)


@pytest.mark.parametrize("pid", [2**63, 2**31, 0, -1])
def test_a_launcher_pid_that_names_no_process_is_not_alive(pid: int) -> None:
    """A damaged manifest's launcher_pid: beyond pid_t os.kill raised OverflowError; 0 and -1 name process
    groups, which always "exist", so a tool took a dead graph for a live one."""
    from pipeline.runtime.rundir import pid_alive

    assert not pid_alive(pid)


def test_find_run_names_the_damaged_manifest_of_the_run_it_is_given(tmp_path: Path) -> None:
    from pipeline.runtime.rundir import find_run

    (tmp_path / "manifest.json").write_text('{"name": "g", "run_dir": ')
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/manifest\.json: not a drivecast run manifest"):
        find_run(str(tmp_path))


@pytest.mark.parametrize("value", ["&a [*a]", "&a {k: *a}"])
def test_a_set_value_that_contains_itself_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--set sim\.seed="):
        load_graph(REPO / "launch.yaml", parse_set([f"sim.seed={value}"]))


@pytest.mark.parametrize("where", ["file", "--set"])
@pytest.mark.parametrize("value", ["!!int x", "!!float 1:x", "!!bool maybe", "!!timestamp x"])
def test_a_yaml_tag_with_a_value_it_cannot_take_is_a_config_error(tmp_path: Path, where: str, value: str) -> None:
    text = (REPO / "launch.yaml").read_text()
    assert "seed: 7" in text
    path = tmp_path / "launch.yaml"
    path.write_text(text.replace("seed: 7", f"seed: {value}") if where == "file" else text)
    with pytest.raises(ConfigError, match=rf"^{path}: " if where == "file" else r"^--set sim\.seed="):
        load_graph(path, parse_set([f"sim.seed={value}"]) if where == "--set" else None)


def test_a_keys_directory_whose_name_is_too_long_is_a_config_error(tmp_path: Path) -> None:
    from pipeline.runtime.rundir import Manifest, tool_client

    manifest = Manifest(name="g", run_dir=str(tmp_path), security=str(tmp_path / ("k" * 300)))
    with pytest.raises(ConfigError, match="k{300}"):
        tool_client(manifest)


def _saved(tmp_path: Path) -> tuple[Path, Callable[[], dict[str, Any]]]:
    """A state file of one model's grid, saved after five messages of two agents, and a maker of fresh
    grids to restore it into."""
    from nodes import state_file
    from nodes.resample import Grid
    from nodes.state_table import AgentTable

    def grids() -> dict[str, Any]:
        return {"m": (Grid(AgentTable(4, 2, 1, 3, 5), 100_000_000, 2.5), "hash")}

    saved = grids()
    grid = saved["m"][0]
    for i in range(5):
        xy = np.array([[i, 0.0], [0.0, i]])
        list(grid.samples(BASE_NS + i * 100_000_000, np.array([1, 2]), xy, np.ones(2, np.uint8), 0, False, Counter()))
    path = tmp_path / "state.npz"
    state_file.save(path, saved, 10**18, BASE_NS + 4 * 100_000_000)
    return path, grids


def _rewrite(path: Path, **changes: Any) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("damage_", ["version_not_a_scalar", "grid_a_scalar", "zip_version", "zip_compression"])
def test_a_state_file_damaged_where_numpy_and_zipfile_do_not_raise_value_errors_is_refused(
        tmp_path: Path, damage_: str) -> None:
    """`int()` of an array raised TypeError, and zipfile NotImplementedError for a zip version or compression
    it does not know: past restore's error handling, out of the predictor's setup on a respawn."""
    from nodes import state_file

    path, grids = _saved(tmp_path)
    if damage_ == "version_not_a_scalar":
        _rewrite(path, version=np.array([2, 2]))
    elif damage_ == "grid_a_scalar":
        _rewrite(path, **{"m.grid": np.array(5)})
    else:
        data = bytearray(path.read_bytes())
        at = data.index(b"PK\x01\x02") + (6 if damage_ == "zip_version" else 10)
        data[at:at + 2] = (79 if damage_ == "zip_version" else 99).to_bytes(2, "little")
        path.write_bytes(data)
    g = grids()
    with pytest.raises(state_file.NotRestored, match="bad state file"):
        state_file.restore(path, g, 10**18, 5.0)
    assert len(g["m"][0].table) == 0


@pytest.mark.parametrize("damage_", ["grid_behind_its_agents", "sampled_long_before_seen", "seen_after_last_stamp",
                                     "history_not_finite", "negative_samples"])
def test_a_state_file_with_times_or_values_a_predictor_cannot_have_is_refused(tmp_path: Path, damage_: str) -> None:
    """Restored as they were, these made the first message after the respawn step through a billion ticks
    (a hang: found by the `state` target), or carried NaN into every later prediction of the agent."""
    from nodes import state_file

    path, grids = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as z:
        grid, last_k, last_t, hist, n_obs = (z[f"m.{k}"].copy() for k in ("grid", "last_k", "last_t", "hist", "n_obs"))
    if damage_ == "grid_behind_its_agents":
        grid[0] -= 10**9 * 100_000_000  # t0 a billion ticks back, the next tick still 5
        changes = {"m.grid": grid}
    elif damage_ == "sampled_long_before_seen":
        last_k[0] = -(2**62)
        changes = {"m.last_k": last_k}
    elif damage_ == "seen_after_last_stamp":
        last_t[1] = 2**62
        changes = {"m.last_t": last_t}
    elif damage_ == "history_not_finite":
        hist[0, -1, 0] = np.nan
        changes = {"m.hist": hist}
    else:
        n_obs[1] = -5
        changes = {"m.n_obs": n_obs}
    _rewrite(path, **changes)
    g = grids()
    with pytest.raises(state_file.NotRestored, match="bad state file: m: "):
        state_file.restore(path, g, 10**18, 5.0)


def test_an_intact_state_file_is_restored(tmp_path: Path) -> None:
    from nodes import state_file

    path, grids = _saved(tmp_path)
    g = grids()
    assert state_file.restore(path, g, 10**18, 5.0) == (BASE_NS + 4 * 100_000_000, 0.0)
    assert len(g["m"][0].table) == 2


def test_an_mcap_whose_first_record_is_a_corrupt_chunk_is_a_corrupt_recording(tmp_path: Path) -> None:
    """The fuzzer's lockstep target, case 45,499 of 100,000: bit flips made the record after the magic
    read as a zstd chunk, and reading the header profile decompressed it (ZstdError out of open)."""
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    data = bytearray(drive_mcap("zstd"))
    p = 8
    while data[p] != _CHUNK:   # the first chunk, which follows the header
        p += 9 + struct.unpack_from("<Q", data, p + 1)[0]
    chunk = bytearray(data[p: p + 9 + struct.unpack_from("<Q", data, p + 1)[0]])
    chunk[-20] ^= 0xFF                                   # inside its compressed data
    (tmp_path / "d.mcap").write_bytes(bytes(data[:8] + chunk + data[p:]))
    with pytest.raises(RecordingError, match=r"d\.mcap: MCAP magic, but the MCAP header record cannot be read"):
        open_recording(tmp_path / "d.mcap")

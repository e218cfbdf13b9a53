"""`drivecast track FILE --scan TOPIC --ego-pose TOPIC`: lidar detection and tracking over a recording.

The detector (`nodes.lidar_detector:LidarDetector`) and the tracker (`nodes.tracker:Tracker`) run as
a two-node launch graph (`launch_text`, the same file a user can launch) loaded by `load_graph`, so
params are checked as in a launch file and `--set NODE.PARAM=VALUE` works, and replayed by
`lockstep.lockstep`: in this process, deterministic, nothing dropped. The one thing lockstep lacks
is the order: it plays by log time, and a scan's header stamp, not its log time, is when it was
measured. `StampOrder` is a `Recording` that holds the scan and pose topics and yields them by header
stamp (log time where a stamp is 0), with log time = stamp, so the replayed clock is measurement time.
It holds both topics in memory: a 360-beam scan is 1.5 kB, an hour at 13 Hz about 70 MB.

The lidar's mounting offset: `--lidar-offset`, else a `--set detector.lidar_offset`, else the
recording's `/tf_static` (`pipeline.recordings.static_tf`: from the ego pose's child frame, or its
topic's name, to the scan's frame), else the detector's default.

Outputs: `-o` an MCAP of the scans, poses, detections, tracks and boxes (log time = stamp), and
`--csv` one row per confirmed track per scan (`CSV_HEADER`, map frame; tracks give the centre and
velocity, the tracker's boxes the footprint). `--truth TOPIC` scores the tracks against that pose
topic (`pipeline.recordings.track_score`). Every error is one line and exit 2; nothing is written
before the inputs have been read, and a run that fails removes what it wrote.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import yaml

from pipeline.errors import ConfigError, DrivecastError
from pipeline.recordings import track_score
from pipeline.recordings.base import Item, Recording, RecordingInfo, TopicInfo
from pipeline.recordings.lockstep import LockstepStats, lockstep
from pipeline.recordings.reader import open_recording
from pipeline.recordings.rosbag_reader import EXPANDING
from pipeline.recordings.schedule import PlayOptions
from pipeline.recordings.static_tf import TF_STATIC, mounting_offset
from pipeline.runtime.graph import Graph, load_graph, parse_set
from pipeline.wire.codec import decode, peek_header
from pipeline.wire.messages import Detections, LaserScan, Message, Odometry, Tracks

__all__ = ["CSV_HEADER", "DETECTOR", "TRACKER", "StampOrder", "TrackResult", "launch_text", "main",
           "parse_offset", "score_result", "track", "track_graph"]

DETECTOR = "nodes.lidar_detector:LidarDetector"
TRACKER = "nodes.tracker:Tracker"
CSV_HEADER = ["stamp_ns", "id", "x", "y", "vx", "vy", "length", "width", "heading"]
_WANT = {LaserScan.SCHEMA: "a LaserScan (sensor_msgs/LaserScan)",
         Odometry.SCHEMA: "a pose (geometry_msgs/PoseStamped, PoseWithCovarianceStamped, nav_msgs/Odometry)"}


class StampOrder(Recording):
    """`topics` of `rec` in header-stamp order (ties keep log order), each with log time = its stamp."""

    def __init__(self, rec: Recording, topics: Sequence[str]) -> None:
        self.path = rec.path
        held: list[tuple[int, int, Item]] = []
        for n, item in enumerate(rec.items(topics)):
            stamp = peek_header(item.frames[0]).stamp_ns or item.log_ns
            held.append((stamp, n, Item(item.topic, stamp, item.publish_ns, item.frames)))
        held.sort(key=lambda h: (h[0], h[1]))
        self._items = [h[2] for h in held]
        src = {t.name: t for t in rec.info().topics}
        counts = {t: sum(1 for i in self._items if i.topic == t) for t in topics}
        stamps = [h[0] for h in held]
        self._info = RecordingInfo(str(rec.path), rec.info().format, min(stamps, default=0), max(stamps, default=0),
                                   len(held), [TopicInfo(t, src[t].type, counts[t], True, src[t].schema)
                                               for t in topics])

    def info(self) -> RecordingInfo:
        return self._info

    def items(self, topics: Iterable[str] | None = None, start_ns: int | None = None) -> Iterator[Item]:
        wanted = None if topics is None else set(topics)
        return (i for i in self._items if (wanted is None or i.topic in wanted)
                and (start_ns is None or i.log_ns >= start_ns))


def launch_text(scan: str, ego_pose: str, detector: str = DETECTOR, tracker: str = TRACKER,
                lidar_offset: Sequence[float] | None = None) -> str:
    """The launch file of the detector and tracker fed by the recorded topics `scan` and `ego_pose`."""
    det: dict[str, Any] = {"run": detector, "inputs": {"scan": {"topic": scan, "queue": "block"},
                                                        "ego": {"topic": ego_pose, "queue": "block"}}}
    if lidar_offset is not None:
        det["params"] = {"lidar_offset": [float(v) for v in lidar_offset]}
    graph = {"name": "track", "nodes": {
        "detector": det,
        "tracker": {"run": tracker, "inputs": {"detections": {"topic": "detector/detections", "queue": "block"}}}},
        "topics": {scan: {"external": True}, ego_pose: {"external": True}}}
    return str(yaml.safe_dump(graph, sort_keys=False))


def parse_offset(text: str) -> tuple[float, float, float]:
    """`X,Y,YAW` (m, m, rad: the lidar in the carrier's frame) as three finite numbers."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--lidar-offset {text!r}: expected X,Y,YAW, three finite numbers (m, m, rad), "
                          f"e.g. -0.153,-0.002,0.008")
    return values[0], values[1], values[2]


def offset_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with `--lidar-offset -0.1,0,0` joined into `--lidar-offset=-0.1,0,0`: argparse takes a
    value that starts with '-' for an option unless it is one plain number, and offsets often do."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        value = next(it, None) if arg == "--lidar-offset" else None
        if value is None:
            out.append(arg)
        elif re.match(r"-\.?\d", value):
            out.append(f"{arg}={value}")
        else:
            out += [arg, value]
    return out


def _check_topic(info: RecordingInfo, option: str, topic: str, schema: str) -> None:
    topics = {t.name: t for t in info.topics}
    t = topics.get(topic)
    if t is None:
        listing = ", ".join(f"{n} ({x.type})" for n, x in topics.items()) or "none"
        raise ConfigError(f"{option} {topic}: {info.path} has no topic {topic!r}; expected {_WANT[schema]} "
                          f"(topics: {listing})")
    if t.schema != schema or t.type in EXPANDING:
        got = t.type + (f" (plays as {t.schema})" if t.schema and t.schema != t.type else "")
        why = "; it holds the transforms of several frames" if t.type in EXPANDING else ""
        raise ConfigError(f"{option} {topic}: {info.path}: {topic} is {got}, expected {_WANT[schema]}{why}")
    if t.count == 0:
        raise ConfigError(f"{option} {topic}: {info.path}: {topic} has no messages")


class _CsvRows:
    """Joins each Tracks message with the tracker's boxes of the same stamp into CSV rows."""

    def __init__(self, f: IO[str]) -> None:
        self._w = csv.writer(f, lineterminator="\n")
        self._w.writerow(CSV_HEADER)
        self._tracks: dict[int, Tracks] = {}
        self._boxes: dict[int, Detections] = {}
        self.rows = 0

    def add(self, msg: Message) -> None:
        if isinstance(msg, Tracks):
            self._tracks[msg.stamp_ns] = msg
        elif isinstance(msg, Detections):
            self._boxes[msg.stamp_ns] = msg
        for stamp in sorted(set(self._tracks) & set(self._boxes)):
            self._write(self._tracks.pop(stamp), self._boxes.pop(stamp))

    def finish(self) -> None:
        """Tracks whose boxes never came: rows without a footprint."""
        for stamp in sorted(self._tracks):
            self._write(self._tracks.pop(stamp), None)

    def _write(self, t: Tracks, b: Detections | None) -> None:
        box = {} if b is None else {int(i): k for k, i in enumerate(b.ids)}
        for k, tid in enumerate(t.ids.tolist()):
            j = box.get(tid)
            shape = ["nan"] * 3 if b is None or j is None else [_num(b.length[j]), _num(b.width[j]),
                                                                 _num(b.heading[j])]
            self._w.writerow([t.stamp_ns, tid, _num(t.xy[k, 0]), _num(t.xy[k, 1]), _num(t.vxy[k, 0]),
                              _num(t.vxy[k, 1]), *shape])
            self.rows += 1


def _num(v: Any) -> str:
    return str(np.float32(v))  # the shortest text that reads back as the same float32


@dataclass
class TrackResult:
    """What `track` replayed and produced (the bench scores and times from it)."""

    stats: LockstepStats
    scans: list[LaserScan] = field(default_factory=list)
    poses: list[Odometry] = field(default_factory=list)
    tracks: dict[int, Tracks] = field(default_factory=dict)   # scan stamp -> the tracker's Tracks
    lidar_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    offset_from: str = "the detector's default"   # or --lidar-offset, --set, /tf_static (frames)
    csv_rows: int = 0
    score: track_score.Score | None = None

    def frames(self) -> list[track_score.TrackFrame]:
        """The confirmed tracks per scan, in scan order (empty where the tracker published none)."""
        return [track_score.TrackFrame(t.ids, t.xy, t.vxy) if (t := self.tracks.get(s.stamp_ns)) is not None
                else track_score.TrackFrame.empty() for s in self.scans]


def track_graph(scan: str, ego_pose: str, detector: str = DETECTOR, tracker: str = TRACKER,
                offset: Sequence[float] | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Graph:
    """`launch_text` loaded as a launch file (params checked, `overrides` from `--set` applied)."""
    with tempfile.TemporaryDirectory(prefix="drivecast-track-") as tmp:
        path = Path(tmp) / "track.yaml"
        path.write_text(launch_text(scan, ego_pose, detector, tracker, offset))
        try:
            return load_graph(path, overrides)
        except ConfigError as exc:  # name the command, not a temporary file
            raise ConfigError(str(exc).replace(f"{path}: ", "drivecast track: ")) from None


def _truth(rec: Recording, topic: str) -> tuple[np.ndarray, np.ndarray]:
    t, xy = [], []
    for item in rec.items([topic]):
        msg = cast(Odometry, decode(item.frames, expect=Odometry)[0])
        t.append(msg.stamp_ns or item.log_ns)
        xy.append(msg.position[:2])
    order = np.argsort(np.asarray(t, np.int64), kind="stable")
    return np.asarray(t, np.int64)[order], np.asarray(xy, np.float64).reshape(-1, 2)[order]


def _static_offset(rec: Recording, ordered: StampOrder, scan: str, ego_pose: str
                   ) -> tuple[tuple[float, float, float], str] | None:
    """The lidar's offset from the recording's /tf_static, from the ego pose's child frame to the scan's
    frame (their first messages name them), and where it came from; None without a /tf_static."""
    first: dict[str, Message] = {}
    for item in ordered.items([scan, ego_pose]):
        first.setdefault(item.topic, decode(item.frames)[0])
        if len(first) == 2:
            break
    pose, laser = first.get(ego_pose), first.get(scan)
    if not isinstance(pose, Odometry) or not isinstance(laser, LaserScan):
        return None
    carrier = pose.child_frame_id or ego_pose.strip("/")
    found = mounting_offset(rec, carrier, laser.frame_id)
    return None if found is None else (found, f"{TF_STATIC} ({carrier} -> {laser.frame_id})")


def score_result(res: TrackResult, truth_t: np.ndarray, truth_xy: np.ndarray) -> track_score.Score:
    """Score `res` against a truth trajectory (stamps, map-frame xy); visibility per `track_score`."""
    stamps = np.array([s.stamp_ns for s in res.scans], np.int64)
    txy, tv, ok = track_score.truth_at(truth_t, truth_xy, stamps)
    pt = np.array([p.stamp_ns for p in res.poses], np.int64)
    lidar, lok = track_score.pose_at(pt, np.array([p.position[:2] for p in res.poses]).reshape(-1, 2),
                                     track_score.yaw_of(np.array([p.orientation for p in res.poses])), stamps,
                                     res.lidar_offset)
    visible = np.array([bool(ok[i] and lok[i]) and track_score.visible_in_scan(
        s.ranges, s.angle_min, s.angle_increment, s.range_min, s.range_max, lidar[i], txy[i])
        for i, s in enumerate(res.scans)], bool)
    return track_score.score(stamps, res.frames(), txy, tv, ok, visible)


def track(path: str | Path, scan: str, ego_pose: str, *, lidar_offset: Sequence[float] | None = None,
          output: str | Path | None = None, csv_path: str | Path | None = None, truth: str | None = None,
          overrides: dict[str, dict[str, Any]] | None = None, detector: str = DETECTOR, tracker: str = TRACKER,
          types_dir: str | None = None) -> TrackResult:
    """Run the detector and tracker over the recording at `path` (see the module doc). Raises a
    DrivecastError naming the file, topic or option on bad input; leaves no output then."""
    from pipeline.recordings.writer import Recorder

    with open_recording(path, types_dir) as rec:
        info = rec.info()
        _check_topic(info, "--scan", scan, LaserScan.SCHEMA)
        _check_topic(info, "--ego-pose", ego_pose, Odometry.SCHEMA)
        if truth is not None:
            _check_topic(info, "--truth", truth, Odometry.SCHEMA)
        ordered = StampOrder(rec, [scan, ego_pose])
        offset_from = ("--lidar-offset" if lidar_offset is not None
                       else "--set" if "lidar_offset" in (overrides or {}).get("detector", {}) else None)
        if offset_from is None and (found := _static_offset(rec, ordered, scan, ego_pose)) is not None:
            lidar_offset, offset_from = found
        graph = track_graph(scan, ego_pose, detector, tracker, lidar_offset, overrides)
        truth_t, truth_xy = _truth(rec, truth) if truth is not None else (None, None)
    det_params = graph.nodes["detector"].params
    offset = tuple(float(v) for v in getattr(det_params, "lidar_offset", (0.0, 0.0, 0.0)))
    res = TrackResult(LockstepStats(), lidar_offset=(offset[0], offset[1], offset[2]),
                      offset_from=offset_from or TrackResult.offset_from)
    written = [Path(p) for p in (output, csv_path) if p is not None]
    out = f = None
    try:
        out = Recorder(output, max_chunk_age_s=0) if output is not None else None
        try:
            f = open(csv_path, "w", newline="") if csv_path is not None else None  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ConfigError(f"--csv {csv_path}: cannot create: {exc.strerror or exc}") from None
        rows = _CsvRows(f) if f is not None else None

        def sink(topic: str, frames: list[Any], log_ns: int, msg: Message) -> None:
            if out is not None:
                out.write(topic, frames, log_ns, msg)
            if topic == scan and isinstance(msg, LaserScan):
                res.scans.append(msg)
            elif topic == ego_pose and isinstance(msg, Odometry):
                res.poses.append(msg)
            elif topic == "tracker/tracks" and isinstance(msg, Tracks):
                res.tracks[msg.stamp_ns] = msg
            if rows is not None and topic in ("tracker/tracks", "tracker/boxes"):
                rows.add(msg)

        res.stats = lockstep(ordered, graph, PlayOptions(topics=[scan, ego_pose]), sink)
        if rows is not None:
            rows.finish()
            res.csv_rows = rows.rows
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    finally:
        if f is not None:
            f.close()
        if out is not None:
            out.close()
    if truth_t is not None and truth_xy is not None:
        res.score = score_result(res, truth_t, truth_xy)
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast track", description=(
        "Run the lidar detector and the tracker over a recording (ROS 1/2 bag or drivecast MCAP), in the "
        "stamp order of the scans, and write the confirmed tracks."))
    ap.add_argument("file")
    ap.add_argument("--scan", required=True, metavar="TOPIC", help="the LaserScan topic")
    ap.add_argument("--ego-pose", required=True, metavar="TOPIC", help="the pose topic of the car carrying the lidar")
    ap.add_argument("--lidar-offset", default=None, metavar="X,Y,YAW",
                    help="the lidar in the car's frame (m, m, rad), e.g. -0.153,-0.002,0.008")
    ap.add_argument("-o", "--output", default=None, metavar="OUT.mcap",
                    help="write the scans, poses, detections, tracks and boxes")
    ap.add_argument("--csv", default=None, metavar="FILE", help="write " + ",".join(CSV_HEADER))
    ap.add_argument("--truth", default=None, metavar="TOPIC", help="score the tracks against this pose topic")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="a detector or tracker param (nodes: detector, tracker)")
    ap.add_argument("--detector", default=DETECTOR, metavar="MODULE:CLASS", help=f"default {DETECTOR}")
    ap.add_argument("--tracker", default=TRACKER, metavar="MODULE:CLASS", help=f"default {TRACKER}")
    ap.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    args = ap.parse_args(offset_argv(argv))
    try:
        offset = parse_offset(args.lidar_offset) if args.lidar_offset is not None else None
        res = track(args.file, args.scan, args.ego_pose, lidar_offset=offset, output=args.output, csv_path=args.csv,
                    truth=args.truth, overrides=parse_set(args.set), detector=args.detector, tracker=args.tracker,
                    types_dir=args.types)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    n_tracks = sum(len(t.ids) for t in res.tracks.values())
    wrote = ([args.output] if args.output else []) + ([f"{args.csv} ({res.csv_rows} rows)"] if args.csv else [])
    print(f"track: {len(res.scans)} scans, {len(res.poses)} poses, {len(res.tracks)} Tracks messages "
          f"({n_tracks} confirmed track rows) in {res.stats.wall_s:.2f} s; lidar offset "
          f"{','.join(f'{v:.4g}' for v in res.lidar_offset)} from {res.offset_from}"
          + (f"; wrote {', '.join(wrote)}" if wrote else ""), file=sys.stderr)
    if res.score is not None:
        print(f"{args.file} vs {args.truth}: {res.score.line()}")
    return 0

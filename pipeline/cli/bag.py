"""`drivecast bag info|recover|convert`: inspect, repair and convert recordings.

- `info FILE [--json] [--types DIR]`: format, start, end, duration, message count, and per topic
  the type, the count, the mean rate ((count - 1) / the recording's duration: read from the index,
  no pass over the data) and whether it plays (ROS types without a drivecast conversion are listed
  and skipped on play).
  Works on drivecast MCAP (also cut files: the figures then come from a linear scan and the
  output says so), ROS 1 `.bag`, ROS 2 bag directories and ROS 2 `.mcap`.
- `recover FILE -o OUT`: rewrite what is readable of a cut drivecast MCAP into a complete file
  (summary and indexes included), so that seeking readers and Foxglove open it.
- `convert FILE -o OUT.mcap`: any supported recording (ROS bags included) into a drivecast MCAP.

Exit codes: 0 success, 1 the recording cannot be read, 2 a wrong command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import DrivecastError
from pipeline.recordings.reader import RecordingInfo, open_recording

__all__ = ["convert", "format_info", "main"]


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_info(info: RecordingInfo) -> str:
    d = info.duration_ns
    lines = [
        f"path:      {info.path}",
        f"format:    {info.format}" + ("  (TRUNCATED: read by linear scan)" if info.truncated else ""),
        f"duration:  {d / 1e9:.3f} s",
        f"start:     {_utc(info.start_ns)} ({info.start_ns} ns)",
        f"end:       {_utc(info.end_ns)} ({info.end_ns} ns)",
        f"messages:  {info.count}",
        "topics:",
    ]
    w_name = max((len(t.name) for t in info.topics), default=5)
    w_type = max((len(t.type) for t in info.topics), default=4)
    for t in info.topics:
        flag = "" if t.converted else "  (no drivecast conversion: skipped on play)"
        plays = f" -> {t.schema}" if t.schema and t.schema != t.type else ""
        lines.append(f"  {t.name:<{w_name}}  {t.type:<{w_type}}  {t.count:>8} msgs  {t.rate_hz(d):8.2f} Hz{plays}{flag}")
    if info.note:
        lines.append(f"note:      {info.note}")
    return "\n".join(lines)


def convert(src: str | Path, out: str | Path, types_dir: str | Path | None = None,
            topics: list[str] | None = None, foxglove_mirror: bool = True) -> int:
    """Copy every playable message of `src` into a drivecast MCAP at `out`; returns the count.
    Log and publish times are kept, so a converted file plays exactly like its source."""
    from pipeline.recordings.writer import Recorder

    n = 0
    with open_recording(src, types_dir) as rec, Recorder(out, foxglove_mirror=foxglove_mirror, flush_s=0) as w:
        for item in rec.items(topics):
            w.write(item.topic, item.frames, item.log_ns)
            n += 1
    return n


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast bag", description="Inspect, recover and convert recordings.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="topics, types, counts, rates, duration, start and end")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    p = sub.add_parser("recover", help="rewrite a cut drivecast MCAP into a complete file")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("convert", help="convert any supported recording into a drivecast MCAP")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    p.add_argument("--topics", nargs="+", default=None)
    p.add_argument("--no-foxglove", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            with open_recording(args.file, args.types) as rec:
                info = rec.info()
            print(json.dumps(info.to_json(), indent=1) if args.json else format_info(info))
            return 0
        if Path(args.output).resolve() == Path(args.file).resolve():
            print("ERROR: -o must differ from the input file", file=sys.stderr)
            return 2
        if args.cmd == "recover":
            with open_recording(args.file) as rec:
                info = rec.info()
                if info.format != "drivecast-mcap":
                    print(f"ERROR: {args.file}: recover rewrites drivecast MCAP files, this is {info.format}",
                          file=sys.stderr)
                    return 1
            n = convert(args.file, args.output)
            print(f"recovered {n} messages into {args.output}" + (f" ({info.note})" if info.note else ""))
            return 0
        n = convert(args.file, args.output, args.types, args.topics, not args.no_foxglove)
        print(f"converted {n} messages into {args.output}")
        return 0
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

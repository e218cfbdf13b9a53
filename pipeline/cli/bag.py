"""`drivecast bag info|recover|convert|export`: inspect, repair, convert and export recordings.

- `info FILE [--json] [--types DIR] [--played]`: format, start, end, duration, message count, and per
  topic the type, the count, the mean rate ((count - 1) / the recording's duration: read from the
  index, no pass over the data) and whether it plays (ROS types without a drivecast conversion are
  listed and skipped on play). A ROS TFMessage plays as one message per transform; `--played`
  reads the whole file once and adds the count of messages `play` sends per topic.
  Works on drivecast MCAP (also cut files: the figures then come from a linear scan and the
  output says so), ROS 1 `.bag`, ROS 2 bag directories and ROS 2 `.mcap`.
- `recover FILE -o OUT`: rewrite every intact chunk of a cut or damaged drivecast MCAP into a
  complete file (summary and indexes included), so that seeking readers and Foxglove open it.
  Damaged chunks are skipped, not the end of the road: each is reported on a `dropped ...` line
  with its time range, topics and message count where the summary or the message indexes keep them.
- `convert FILE -o OUT.mcap`: any supported recording (ROS bags included) into a drivecast MCAP.
- `export FILE --topic T --csv OUT | --parquet OUT`: a Tracks, Detections or Predictions topic as a
  flat table for pandas or polars (`pipeline.recordings.table_export` gives the columns).

Exit codes: 0 success, 1 the recording cannot be read, 2 a wrong command line (for `export`, every
error is 2: nothing was written).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import DrivecastError
from pipeline.recordings.base import Recording, RecordingError, RecordingInfo
from pipeline.recordings.reader import open_recording

__all__ = ["SUBCOMMANDS", "convert", "format_info", "main", "played_counts", "recover"]

#: every subcommand with its one-line help (`drivecast --help` lists the names)
SUBCOMMANDS = {
    "info": "topics, types, counts, rates, duration, start and end",
    "recover": "rewrite the intact chunks of a cut or damaged drivecast MCAP into a complete file",
    "convert": "convert any supported recording into a drivecast MCAP",
    "export": "write a Tracks, Detections or Predictions topic as a CSV or Parquet table",
}


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def played_counts(rec: Recording) -> dict[str, int]:
    """Per topic, how many messages `play` sends (a full pass: ROS messages are converted)."""
    counts: dict[str, int] = {}
    for item in rec.items():
        counts[item.topic] = counts.get(item.topic, 0) + 1
    return counts


def format_info(info: RecordingInfo, played: dict[str, int] | None = None) -> str:
    d = info.duration_ns
    lines = [
        f"path:      {info.path}",
        f"format:    {info.format}" + ("  (TRUNCATED: read by linear scan)" if info.truncated else ""),
        f"duration:  {d / 1e9:.3f} s",
        f"start:     {_utc(info.start_ns)} ({info.start_ns} ns)",
        f"end:       {_utc(info.end_ns)} ({info.end_ns} ns)",
        f"messages:  {info.count}" + (f"  ({sum(played.values())} played)" if played is not None else ""),
        "topics:",
    ]
    w_name = max((len(t.name) for t in info.topics), default=5)
    w_type = max((len(t.type) for t in info.topics), default=4)
    for t in info.topics:
        flag = "" if t.converted else "  (no drivecast conversion: skipped on play)"
        plays = f" -> {t.schema}" if t.schema and t.schema != t.type else ""
        sent = f"  {played.get(t.name, 0):>8} played" if played is not None else ""
        lines.append(f"  {t.name:<{w_name}}  {t.type:<{w_type}}  {t.count:>8} msgs{sent}  {t.rate_hz(d):8.2f} Hz"
                     f"{plays}{flag}")
    if info.note:
        lines.append(f"note:      {info.note}")
    return "\n".join(lines)


def convert(src: str | Path, out: str | Path, types_dir: str | Path | None = None,
            topics: list[str] | None = None, foxglove_mirror: bool = True) -> int:
    """Copy every playable message of `src` into a drivecast MCAP at `out`; returns the count.
    Log and publish times are kept, so a converted file plays exactly like its source."""
    from pipeline.recordings.writer import Recorder

    n = 0
    with open_recording(src, types_dir) as rec, Recorder(out, foxglove_mirror=foxglove_mirror, max_chunk_age_s=0) as w:
        for item in rec.items(topics):
            w.write(item.topic, item.frames, item.log_ns)
            n += 1
    return n


def recover(src: str | Path, out: str | Path) -> tuple[int, list[str]]:
    """Copy every intact message of the drivecast MCAP `src` into `out`, skipping damaged chunks;
    returns the count kept and one line per stretch dropped (what, when, on which topics, why)."""
    from pipeline.recordings.mcap_reader import DrivecastMcap
    from pipeline.recordings.salvage import Salvage
    from pipeline.recordings.writer import Recorder

    with open_recording(src) as rec:
        if not isinstance(rec, DrivecastMcap):
            raise RecordingError(f"{src}: recover rewrites drivecast MCAP files, this is {rec.info().format}")
        salvage = Salvage(rec.path, rec.summary)
    n = 0
    with Recorder(out, max_chunk_age_s=0) as w:
        for item in salvage.items():
            w.write(item.topic, item.frames, item.log_ns)
            n += 1
    return n, [d.describe() for d in salvage.dropped]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast bag",
                                 description="Inspect, recover, convert and export recordings.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    p = sub.add_parser("info", help=SUBCOMMANDS["info"])
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    p.add_argument("--played", action="store_true",
                   help="read the whole file and count the messages play sends per topic (a ROS TFMessage "
                        "plays as one message per transform)")
    p = sub.add_parser("recover", help=SUBCOMMANDS["recover"])
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("convert", help=SUBCOMMANDS["convert"])
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    p.add_argument("--topics", nargs="+", default=None)
    p.add_argument("--no-foxglove", action="store_true")
    p = sub.add_parser("export", help=SUBCOMMANDS["export"],
                       description="One row per agent per message (Predictions: per agent per horizon step); "
                                   "columns log_time_ns, stamp_ns, seq, then the schema's (see "
                                   "pipeline/recordings/table_export.py).")
    p.add_argument("file")
    p.add_argument("--topic", required=True, help="a Tracks, Detections or Predictions topic")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--csv", metavar="OUT", help="write CSV to OUT (- for stdout)")
    out.add_argument("--parquet", metavar="OUT", help="write Parquet to OUT (needs pyarrow: the [tables] extra)")
    p.add_argument("--types", default=None, help="directory of .msg files for bags without type definitions")
    args = ap.parse_args(argv)
    if args.cmd == "export":
        return _export(args)
    try:
        if args.cmd == "info":
            with open_recording(args.file, args.types) as rec:
                info = rec.info()
                played = played_counts(rec) if args.played else None
            if args.json:
                doc = info.to_json()
                if played is not None:
                    doc["played"] = sum(played.values())
                    for t in doc["topics"]:
                        t["played"] = played.get(t["name"], 0)
                print(json.dumps(doc, indent=1))
            else:
                print(format_info(info, played))
            return 0
        if Path(args.output).resolve() == Path(args.file).resolve():
            print("ERROR: -o must differ from the input file", file=sys.stderr)
            return 2
        if args.cmd == "recover":
            n, dropped = recover(args.file, args.output)
            print(f"recovered {n} messages into {args.output}" + (f"; {len(dropped)} damaged stretches skipped:"
                                                                   if dropped else ""))
            for line in dropped:
                print(f"  {line}")
            return 0
        n = convert(args.file, args.output, args.types, args.topics, not args.no_foxglove)
        print(f"converted {n} messages into {args.output}")
        return 0
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


def _export(args: argparse.Namespace) -> int:
    from pipeline.recordings.table_export import export_table

    fmt, out = ("csv", args.csv) if args.csv is not None else ("parquet", args.parquet)
    try:
        rows, skipped = export_table(args.file, args.topic, out, fmt, args.types)
    except DrivecastError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if out != "-":
        print(f"wrote {rows} rows of {args.topic} to {out}"
              + (f"; {skipped} messages left out: their arrays do not decode" if skipped else ""))
    elif skipped:
        print(f"{skipped} messages left out: their arrays do not decode", file=sys.stderr)
    return 0

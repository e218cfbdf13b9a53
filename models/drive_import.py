"""`drivecast import {eth_ucy,argoverse,apolloscape} PATH -o drive.mcap`: a dataset as a drive
(`eth-ucy` is accepted too: `models.datasets.dataset_name`).

PATH is one scene file, or a directory (every scene file of the dataset under it, in name order,
as `models.datasets.scene_files(..., "all")` finds them). Parsing is `models.datasets` (numpy only:
no torch here). Each distinct timestamp of a scene becomes one `Tracks` message at the dataset's
native rate (ETH/UCY 2.5 Hz, Argoverse 10 Hz, ApolloScape 2 Hz) holding the agents observed at
that time: ids, positions, velocities (central differences over the agent's own samples, one-sided
at its ends) and kinds. Scenes follow each other in one drive, separated by `--gap` seconds; agent
ids are `scene_index * 1_000_000 + n`, n numbering the scene's agents in order of appearance (ETH/UCY
and ApolloScape numeric ids are kept as n when they are below 1_000_000), so ids never collide.

`--per-scene -o DIR` writes each scene as a drive of its own, `DIR/<scene file stem>.mcap` (a fleet
to evaluate with `drivecast fleet eval`): each file is written under a temporary name and renamed
when complete, so a scene whose file exists is skipped, and an interrupted import resumes.

Times: stamp = log time = publish time = `--start` (default 2020-01-01T00:00:00Z) + the scene's own
time; the same input always gives a byte-identical file. The topic is `<dataset>/tracks`
(`--topic` to change it); the player node maps it to `player/tracks` by schema.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from models.datasets import DATASETS, DatasetError, Scene, dataset_name, load_scene, scene_files
from pipeline.errors import DrivecastError
from pipeline.recordings.writer import Recorder
from pipeline.wire.codec import encode
from pipeline.wire.messages import AgentKind, Tracks

__all__ = ["DATASET_NAMES", "main", "scene_tracks", "write_drive"]

#: command-line name -> models.datasets name (kept for callers; `dataset_name` accepts any spelling)
DATASET_NAMES = {"eth-ucy": "eth_ucy", "eth_ucy": "eth_ucy", "argoverse": "argoverse", "apolloscape": "apolloscape"}
_KINDS = {"pedestrian": AgentKind.PEDESTRIAN, "vehicle": AgentKind.VEHICLE, "bicycle": AgentKind.CYCLIST,
          "other": AgentKind.UNKNOWN}
START_NS = 1_577_836_800 * 1_000_000_000  # 2020-01-01T00:00:00Z
ID_STRIDE = 1_000_000


def _velocity(t: np.ndarray, xy: np.ndarray) -> np.ndarray:
    if len(t) < 2:
        return np.zeros_like(xy)
    return np.gradient(xy, t, axis=0)


def scene_tracks(scene: Scene, scene_index: int = 0, frame_id: str = "map") -> list[tuple[float, Tracks]]:
    """(time in s from the scene start, Tracks) for each distinct timestamp of `scene`."""
    rows: dict[float, list[tuple[int, float, float, float, float, int]]] = {}
    t0 = min(float(tr.t_s[0]) for tr in scene.tracks)
    numbers: dict[str, int] = {}
    for tr in scene.tracks:
        if tr.agent_id.isdigit() and int(tr.agent_id) < ID_STRIDE:
            n = int(tr.agent_id)
        else:
            n = numbers.setdefault(tr.agent_id, len(numbers) + 1)
        aid = scene_index * ID_STRIDE + n
        v = _velocity(tr.t_s, tr.xy)
        kind = _KINDS.get(tr.kind, AgentKind.UNKNOWN)
        for k in range(len(tr.t_s)):
            t = round(float(tr.t_s[k]) - t0, 6)
            rows.setdefault(t, []).append((aid, tr.xy[k, 0], tr.xy[k, 1], v[k, 0], v[k, 1], kind))
    out = []
    for t in sorted(rows):
        r = sorted(rows[t])
        a = np.array([x[:5] for x in r], dtype=np.float64)
        out.append((t, Tracks(frame_id=frame_id, ids=a[:, 0].astype(np.int64), xy=a[:, 1:3], vxy=a[:, 3:5],
                              kind=np.array([x[5] for x in r], dtype=np.uint8))))
    return out


def write_drive(dataset: str, files: list[Path], out: Path, topic: str = "", start_ns: int = START_NS,
                gap_s: float = 1.0, foxglove_mirror: bool = True) -> tuple[int, float]:
    """Write the scenes of `files` as one drive; returns (messages, duration in s)."""
    topic = topic or f"{dataset}/tracks"
    t_ns = start_ns
    n = 0
    with Recorder(out, foxglove_mirror=foxglove_mirror, max_chunk_age_s=0,
                  metadata={"dataset": dataset, "scenes": ",".join(p.name for p in files)[:4000]}) as rec:
        for i, path in enumerate(files):
            scene = load_scene(dataset, path)
            if not scene.tracks:
                continue
            base = t_ns
            for t, msg in scene_tracks(scene, i):
                t_ns = base + int(round(t * 1e9))
                msg.stamp_ns, msg.seq = t_ns, n + 1
                rec.write(topic, encode(msg, publish_ns=t_ns), t_ns, msg)
                n += 1
            t_ns += int(gap_s * 1e9)
    return n, (t_ns - start_ns) / 1e9


def write_scenes(dataset: str, files: list[Path], out_dir: Path, topic: str = "", start_ns: int = START_NS,
                 foxglove_mirror: bool = True) -> tuple[int, int]:
    """Write each scene of `files` as its own drive in `out_dir`; returns (drives written, kept)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"-o {out_dir}: cannot create the directory: {exc.strerror or exc}") from None
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"--per-scene: scene files share the names {', '.join(twice[:5])}: import each folder "
                           f"into a directory of its own")
    written = kept = 0
    for path in files:
        dst = out_dir / f"{path.stem}.mcap"
        if dst.exists():
            kept += 1
            continue
        part = dst.with_name(f".{dst.name}.part")
        try:
            write_drive(dataset, [path], part, topic, start_ns, foxglove_mirror=foxglove_mirror)
            part.replace(dst)
        finally:
            part.unlink(missing_ok=True)
        written += 1
    return written, kept


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast import", description="Turn a dataset into a drive recording of Tracks.")
    ap.add_argument("dataset", type=dataset_name, choices=sorted(DATASETS),
                    help="dataset (eth-ucy is accepted for eth_ucy)")
    ap.add_argument("path", help="a scene file, or a directory of them")
    ap.add_argument("-o", "--output", required=True, help="output .mcap (with --per-scene: a directory)")
    ap.add_argument("--per-scene", action="store_true",
                    help="one drive per scene file, OUTPUT/<scene>.mcap; existing ones are kept (resumes)")
    ap.add_argument("--topic", default="", help="topic name (default <dataset>/tracks)")
    ap.add_argument("--start", type=float, default=START_NS / 1e9, help="start time, unix seconds")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between scenes")
    ap.add_argument("--no-foxglove", action="store_true", help="do not write the /foxglove/* mirror channels")
    args = ap.parse_args(argv)
    dataset = args.dataset
    try:
        p = Path(args.path)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = scene_files(dataset, p, "all")
        else:
            raise DatasetError(f"{p}: no such file or directory")
        if args.per_scene:
            written, kept = write_scenes(dataset, files, Path(args.output), args.topic, int(args.start * 1e9),
                                         not args.no_foxglove)
            print(f"wrote {written} drive(s) to {args.output}" + (f", kept {kept} already there" if kept else ""))
            return 0
        n, dur = write_drive(dataset, files, Path(args.output), args.topic, int(args.start * 1e9), args.gap,
                             not args.no_foxglove)
    except (DatasetError, DrivecastError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {n} Tracks messages ({dur:.1f} s, {len(files)} scene(s)) to {args.output}")
    return 0

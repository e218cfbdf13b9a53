"""The agents of drivecast recordings: what the `drives` datasets of `models.datasets` read.

A drive is any recording `pipeline.recordings.reader.open_recording` opens (a drivecast MCAP: a
simulated drive, `drivecast import`'s output, a tracker's output taken with `drivecast record`; a ROS
bag) with a topic of schema `drivecast/Tracks`. `read_tracks` returns every agent of one kind on one
such topic as (id, t_s, xy): t_s in seconds from the topic's first stamp (the message's `stamp_ns`,
its log time where the stamp is 0), xy in meters in the messages' frame. Ids are per file.

Memory: the rows of one topic are held as arrays, 24 bytes a row (an hour at 10 Hz with 300 agents in
view is about 260 MB). The dense grid the model's inputs are built on is A agents x S samples of
one scene, so a long drive is trained on in pieces of a few minutes (`cut`): linear in the drive's
length instead of quadratic. Numpy and pipeline only: no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np

from pipeline.errors import DecodeError
from pipeline.recordings.base import RecordingError
from pipeline.recordings.reader import open_recording
from pipeline.wire.codec import decode
from pipeline.wire.messages import AgentKind, Tracks

__all__ = ["SUFFIXES", "AgentTrack", "DriveError", "cut", "read_tracks", "recording_files"]

SUFFIXES = (".mcap", ".bag")  # a ROS 2 bag directory holds its data in .mcap (found) or .db3 (not)

#: (agent id, t_s[n] increasing, xy[n, 2]) of one agent
AgentTrack = tuple[int, np.ndarray, np.ndarray]


class DriveError(ValueError):
    """A recording that cannot be read as a drive; the message names the file."""


def recording_files(root: Path) -> list[Path]:
    """Every recording file (*.mcap, *.bag) under `root`, at any depth, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())


def read_tracks(path: str | Path, kind: str, topic: str | None = None) -> list[AgentTrack]:
    """The `kind` agents (vehicle, pedestrian, cyclist) on the Tracks topic `topic` of one recording,
    by id; `topic` None: the recording's only Tracks topic. DriveError names the file and what is wrong."""
    path = Path(path)
    wanted = {v: k for k, v in AgentKind.NAMES.items()}[kind]
    stamps: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    xy: list[np.ndarray] = []
    seen, n, first = np.zeros(256, np.int64), 0, None   # rows by kind, messages, first stamp
    try:
        with open_recording(path) as rec:
            topics = rec.info().topics
            name = _choose_topic(path, sorted(t.name for t in topics if t.schema == Tracks.SCHEMA),
                                 sorted(t.name for t in topics), topic)
            for item in rec.items([name]):
                try:
                    msg = cast(Tracks, decode(item.frames, expect=Tracks)[0])
                except DecodeError as exc:
                    raise DriveError(f"{path}: {name} @ log time {item.log_ns}: {exc}") from None
                stamp = msg.stamp_ns or item.log_ns
                first = stamp if first is None else min(first, stamp)
                n += 1
                seen += np.bincount(msg.kind, minlength=256)
                sel = (msg.kind == wanted) & np.isfinite(msg.xy).all(1)
                stamps.append(np.full(int(sel.sum()), stamp, np.int64))
                ids.append(msg.ids[sel])
                xy.append(msg.xy[sel].astype(np.float64))   # copies out of the read-only frames
    except RecordingError as exc:   # it names the file
        raise DriveError(str(exc)) from None
    if first is None:
        raise DriveError(f"{path}: Tracks topic {name!r} holds no messages")
    t_ns = np.concatenate(stamps)
    if len(t_ns) == 0:
        found = {AgentKind.NAMES.get(k, str(k)): int(c) for k, c in enumerate(seen) if c}
        raise DriveError(f"{path}: Tracks topic {name!r}: no {kind} rows in {n} messages; rows by kind: {found}")
    # relative times in int64 first: a float64 of epoch nanoseconds keeps only about 0.1 us
    return _by_agent((t_ns - first) / 1e9, np.concatenate(ids), np.concatenate(xy))


def _choose_topic(path: Path, tracks_topics: list[str], all_topics: list[str], topic: str | None) -> str:
    if topic is not None:
        if topic not in tracks_topics:
            raise DriveError(f"{path}: no Tracks topic {topic!r}; its Tracks topics: {tracks_topics}")
        return topic
    if not tracks_topics:
        raise DriveError(f"{path}: no topic of schema {Tracks.SCHEMA} (expected a drive of Tracks); "
                         f"its topics: {sorted(all_topics)}")
    if len(tracks_topics) > 1:
        raise DriveError(f"{path}: {len(tracks_topics)} Tracks topics {tracks_topics}: choose one with --topic")
    return tracks_topics[0]


def _by_agent(t: np.ndarray, ids: np.ndarray, xy: np.ndarray) -> list[AgentTrack]:
    """Rows -> one (id, t, xy) per agent, in time order; a repeated (id, stamp) keeps the last row."""
    order = np.lexsort((t, ids))   # stable: of equal (id, t), the later message stays later
    t, ids, xy = t[order], ids[order], xy[order]
    new_agent = ids[1:] != ids[:-1]
    keep = np.r_[new_agent | (np.diff(t) > 1e-9), True]
    t, ids, xy = t[keep], ids[keep], xy[keep]
    starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
    ends = np.r_[starts[1:], len(ids)]
    return [(int(ids[a]), t[a:b], xy[a:b]) for a, b in zip(starts, ends, strict=True)]


def cut(tracks: list[AgentTrack], seconds: float) -> list[tuple[float, list[AgentTrack]]]:
    """The tracks in consecutive pieces [k*seconds, (k+1)*seconds): (piece start, its tracks, each cut
    at the piece's borders), pieces without a row left out."""
    pieces: dict[int, list[AgentTrack]] = {}
    for aid, t, xy in tracks:
        k = np.floor(t / seconds).astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(k)) + 1]
        for a, b in zip(starts, np.r_[starts[1:], len(t)], strict=True):
            pieces.setdefault(int(k[a]), []).append((aid, t[a:b], xy[a:b]))
    return [(k * seconds, pieces[k]) for k in sorted(pieces)]

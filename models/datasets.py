"""Dataset loaders: ETH/UCY, Argoverse 1, ApolloScape and drivecast drives -> one representation of tracks.

A file is one `Scene`: a list of `Track`s (agent id, kind, timestamps in seconds, xy in meters). For the
model a scene is resampled onto one time grid of period dt_s (`to_grid`): `Grid.xy[A,S,2]` with
`Grid.valid[A,S]`, each agent valid over one contiguous range (a track with a gap longer than
`max_gap_steps` samples is split into two agents, shorter gaps are interpolated linearly).

Splits (the `split` argument of `scene_files`):
- eth_ucy: `<DIR>/<fold>/<split>/*.txt` for split train|val|test (leave-one-scene-out folds). fold "all"
  takes every fold's files of that split once each, by file name: the folds hold duplicated copies, and
  pooling them would count scenes several times. split "all" = every *.txt under DIR, once per name.
- argoverse: `<DIR>/data/*.csv` (or `<DIR>/*.csv`), shuffled with seed 20261125 into train 80% / val 10% /
  test 10%; "all" = every file. fold "I/K" (here and for apolloscape): K-fold cross-validation over train
  + val, part I as val, test untouched. Evaluation predicts the AGENT: 20 observed -> 30 predicted at 10 Hz.
- apolloscape: `<DIR>/prediction_train/*.txt` (or `<DIR>/*.txt`), split by recording id (the first
  number in result_<recording>_<segment>_frame.txt) so that consecutive segments of one drive never land
  on both sides: recordings shuffled with seed 20261125, 3 for val, 3 for test, the rest train. Protocol:
  6 observed -> 6 predicted at 2 Hz, every agent present in 12 consecutive frames, per class.
- drives: every recording file (*.mcap, *.bag, at any depth) under DIR holding a Tracks topic, split by
  file like argoverse (at least 3 files: a split by time inside one drive would put the same agents
  on both sides), folds "I/K" too. Its vehicles, every one evaluated, 20 observed -> 30 predicted at
  10 Hz (argoverse's protocol); drives_pedestrian: its pedestrians, 8 -> 12 at 0.4 s (ETH/UCY's).
  Reading is `models.drive_tracks`. `load_scene` gives a whole file; `load_scenes` gives each file in
  scenes of DRIVE_PIECE_S seconds (named <stem>_<start>s, grouped by file), since the grid is dense
  in agents x samples: a scene's tracks are cut at its borders, which loses the windows across them.
"""

from __future__ import annotations

import csv
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.drive_tracks import DriveError, cut, read_tracks, recording_files

__all__ = [
    "DATASETS",
    "DRIVE_DATASETS",
    "DRIVE_PIECE_S",
    "DatasetError",
    "Grid",
    "Protocol",
    "Scene",
    "Track",
    "dataset_name",
    "eth_ucy_scene",
    "load_scene",
    "load_scenes",
    "reversed_grid",
    "scene_files",
    "to_grid",
]

SPLIT_SEED = 20261125


class DatasetError(ValueError):
    """A wrong data path or a malformed file. The message names the path (and line)."""


@dataclass(frozen=True)
class Protocol:
    """How a dataset is evaluated: obs_len observed samples -> horizon predicted, at dt_s."""

    obs_len: int
    horizon: int
    dt_s: float
    focal_only: bool          # only tracks marked focal are evaluated (the Argoverse AGENT)
    agent_kind: str           # default feature family in export.runtime.features.default_spec


DATASETS: dict[str, Protocol] = {
    "eth_ucy": Protocol(obs_len=8, horizon=12, dt_s=0.4, focal_only=False, agent_kind="pedestrian"),
    "argoverse": Protocol(obs_len=20, horizon=30, dt_s=0.1, focal_only=True, agent_kind="vehicle"),
    "apolloscape": Protocol(obs_len=6, horizon=6, dt_s=0.5, focal_only=False, agent_kind="mixed"),
    "drives": Protocol(obs_len=20, horizon=30, dt_s=0.1, focal_only=False, agent_kind="vehicle"),
    "drives_pedestrian": Protocol(obs_len=8, horizon=12, dt_s=0.4, focal_only=False, agent_kind="pedestrian"),
}
DRIVE_DATASETS = ("drives", "drives_pedestrian")   # read from recordings of Tracks, not from dataset files
#: scene length a drive is cut into by load_scenes: 3% of the 5 s windows lost at the cuts (simulated drives)
DRIVE_PIECE_S = 120.0


def dataset_name(text: str) -> str:
    """The canonical name of a dataset as typed on a command line: `eth-ucy`, `ETH_UCY` and `eth_ucy`
    are one dataset (an argparse `type=`; `choices=sorted(DATASETS)` then checks it and lists the
    canonical names in --help)."""
    return text.strip().lower().replace("-", "_")


@dataclass
class Track:
    agent_id: str
    kind: str                 # pedestrian | vehicle | bicycle | other
    t_s: np.ndarray           # float64[n], increasing
    xy: np.ndarray            # float64[n, 2] meters
    focal: bool = False


@dataclass
class Scene:
    name: str                 # e.g. "crowds_zara01_val", "1000", "result_9049_3_frame"
    group: str                # per-scene table key: ETH/UCY scene, Argoverse city, ApolloScape recording
    path: str
    tracks: list[Track] = field(default_factory=list)


@dataclass
class Grid:
    """A scene on one time grid: xy[A,S,2] (NaN where absent), valid[A,S], per-agent kind and focal flag."""

    name: str
    group: str
    dt_s: float
    t0_s: float
    xy: np.ndarray
    valid: np.ndarray
    kinds: list[str]
    focal: np.ndarray

    def first(self) -> np.ndarray:
        """Index of each agent's first valid sample."""
        return np.argmax(self.valid, axis=1)


# ---------------------------------------------------------------- file discovery


def scene_files(dataset: str, root: str | Path, split: str, fold: str | None = None) -> list[Path]:
    """The files of one split, sorted. Errors name the path that was looked at."""
    root = Path(root)
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    if not root.is_dir():
        raise DatasetError(f"data directory {str(root)!r} does not exist or is not a directory")
    if split not in ("train", "val", "test", "all"):
        raise DatasetError(f"unknown split {split!r}: expected train, val, test or all")
    if dataset == "eth_ucy":
        files = _eth_ucy_files(root, split, fold)
    elif dataset in DRIVE_DATASETS:
        files = recording_files(root)
        if not files:
            raise DatasetError(f"no recording files (*.mcap, *.bag) under {str(root)!r} (expected drives of Tracks)")
        if split != "all" and len(files) < 3:
            raise DatasetError(f"{len(files)} recording file(s) under {str(root)!r}: {dataset} splits by file "
                               f"and needs at least 3 (train, val, test); record more or shorter drives")
        if split != "all":
            files = _seeded_split(dataset, files, split, fold)
    else:
        ext = "*.csv" if dataset == "argoverse" else "*.txt"
        sub = root / ("data" if dataset == "argoverse" else "prediction_train")
        base = sub if sub.is_dir() else root
        files = sorted(base.glob(ext))
        if not files:
            raise DatasetError(f"no {ext} files in {str(base)!r} (expected the {dataset} layout)")
        if split != "all":
            files = _seeded_split(dataset, files, split, fold)
    if not files:
        raise DatasetError(f"no files for dataset={dataset} split={split} fold={fold} under {str(root)!r}")
    return files


def _eth_ucy_files(root: Path, split: str, fold: str | None) -> list[Path]:
    if split == "all":
        candidates = sorted(root.rglob("*.txt"))
    elif fold in (None, ""):
        raise DatasetError("eth_ucy needs --fold (eth, hotel, univ, zara1, zara2, or all)")
    elif fold == "all":
        candidates = sorted(root.glob(f"*/{split}/*.txt"))
    else:
        d = root / fold / split
        if not d.is_dir():
            folds = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DatasetError(f"no directory {str(d)!r}: expected <DIR>/<fold>/{split}/*.txt, folds here: {folds}")
        candidates = sorted(d.glob("*.txt"))
    seen: dict[str, Path] = {}
    for p in candidates:
        seen.setdefault(p.name, p)   # duplicated copies across folds count once
    return sorted(seen.values(), key=lambda p: p.name)


def eth_ucy_scene(stem: str) -> str:
    """The ETH/UCY scene of a file stem: `biwi_hotel_train` -> `biwi_hotel` (a test file bears the scene's name)."""
    return re.sub(r"_(train|val|test)$", "", stem)


def _recording(path: Path) -> str:
    m = re.match(r"result_(\d+)_", path.name)
    return m.group(1) if m else path.stem


def _seeded_split(dataset: str, files: list[Path], split: str, fold: str | None) -> list[Path]:
    """Argoverse and drives split by file, ApolloScape by recording. With fold "I/K" the test part stays as it is
    and the other units (train + val) are cut into K parts, part I (1-based) for validation: K-fold
    cross-validation for choosing a recipe on K times more held-out agents than one val split has."""
    by_file = dataset != "apolloscape"
    unit = (lambda p: p.name) if by_file else _recording
    units = sorted({unit(p) for p in files})
    random.Random(SPLIT_SEED).shuffle(units)
    n_hold = max(1, len(units) // 10) if by_file else (3 if len(units) >= 9 else 1)
    parts = {"val": units[:n_hold], "test": units[n_hold: 2 * n_hold], "train": units[2 * n_hold:]}
    if fold not in (None, ""):
        i, k = _cv_fold(dataset, fold)
        pool = parts["val"] + parts["train"]
        lo, hi = len(pool) * (i - 1) // k, len(pool) * i // k
        parts.update(val=pool[lo:hi], train=pool[:lo] + pool[hi:])
    wanted = set(parts[split])
    return [p for p in files if unit(p) in wanted]


def _cv_fold(dataset: str, fold: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", fold)
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)) or int(m.group(2)) < 2:
        raise DatasetError(f"{dataset} --fold {fold!r}: expected I/K, cross-validation part I of K "
                           f"(2 <= K, 1 <= I <= K), e.g. 1/5")
    return int(m.group(1)), int(m.group(2))


# ---------------------------------------------------------------- parsers


def load_scene(dataset: str, path: str | Path, topic: str | None = None) -> Scene:
    """One file as one scene; `topic`: the Tracks topic of a drive (None: its only one)."""
    path = Path(path)
    if dataset in DRIVE_DATASETS:
        return _drive_scenes(dataset, path, topic, None)[0]
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if dataset == "eth_ucy":
        return _parse_eth_ucy(path, text)
    if dataset == "argoverse":
        return _parse_argoverse(path, text)
    if dataset == "apolloscape":
        return _parse_apolloscape(path, text)
    raise DatasetError(f"unknown dataset {dataset!r}: expected one of {sorted(DATASETS)}")


def load_scenes(dataset: str, root: str | Path, split: str, fold: str | None = None,
                topic: str | None = None) -> list[Scene]:
    """The scenes of one split: a scene per file, a drive in scenes of DRIVE_PIECE_S seconds."""
    files = scene_files(dataset, root, split, fold)
    if dataset in DRIVE_DATASETS:
        return [s for p in files for s in _drive_scenes(dataset, p, topic, DRIVE_PIECE_S)]
    return [load_scene(dataset, p) for p in files]


def _drive_scenes(dataset: str, path: Path, topic: str | None, piece_s: float | None) -> list[Scene]:
    """A recording's agents of the dataset's kind as one scene (piece_s None) or scenes of piece_s seconds."""
    kind = DATASETS[dataset].agent_kind
    try:
        tracks = read_tracks(path, kind, topic)
    except DriveError as exc:
        raise DatasetError(str(exc)) from None
    pieces = [(0.0, tracks)] if piece_s is None else cut(tracks, piece_s)
    return [Scene(path.stem if piece_s is None else f"{path.stem}_{start:.0f}s", path.stem, str(path),
                  [Track(str(aid), kind, t, xy) for aid, t, xy in piece]) for start, piece in pieces]


def _floats(path: Path, lineno: int, parts: list[str], what: str) -> list[float]:
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: expected numbers ({what}), got {' '.join(parts)!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{path}:{lineno}: expected finite numbers ({what}), got {' '.join(parts)!r}")
    return values


def _tracks_from_rows(rows: dict[str, list[tuple[float, float, float]]], kinds: dict[str, str],
                      focal: set[str] = frozenset()) -> list[Track]:  # type: ignore[assignment]
    tracks = []
    for aid, pts in rows.items():
        arr = np.array(sorted(pts), dtype=np.float64)
        # a duplicated timestamp keeps the last row
        keep = np.append(np.diff(arr[:, 0]) > 1e-9, True)
        arr = arr[keep]
        tracks.append(Track(aid, kinds[aid], arr[:, 0], arr[:, 1:3], aid in focal))
    return tracks


def _parse_eth_ucy(path: Path, text: str) -> Scene:
    """frame ped x y, tab-separated; 10 frames = 0.4 s."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DatasetError(f"{path}:{lineno}: expected 4 tab-separated columns (frame ped x y), "
                               f"got {len(parts)}: {line.strip()!r}")
        frame, ped, x, y = _floats(path, lineno, parts, "frame ped x y")
        rows.setdefault(str(int(ped)), []).append((frame * 0.04, x, y))
    if not rows:
        raise DatasetError(f"{path}: no rows (expected tab-separated frame ped x y)")
    return Scene(path.stem, eth_ucy_scene(path.stem), str(path), _tracks_from_rows(rows, {k: "pedestrian" for k in rows}))


_AV_HEADER = ["TIMESTAMP", "TRACK_ID", "OBJECT_TYPE", "X", "Y", "CITY_NAME"]


def _parse_argoverse(path: Path, text: str) -> Scene:
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header != _AV_HEADER:
        raise DatasetError(f"{path}:1: expected header {','.join(_AV_HEADER)}, got {','.join(header or [])!r}")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    kinds: dict[str, str] = {}
    focal: set[str] = set()
    city = ""
    for lineno, rec in enumerate(reader, 2):
        if not rec:
            continue
        if len(rec) != 6:
            raise DatasetError(f"{path}:{lineno}: expected 6 comma-separated columns, got {len(rec)}: {rec!r}")
        t, x, y = _floats(path, lineno, [rec[0], rec[3], rec[4]], "TIMESTAMP, X, Y")
        aid, otype, city = rec[1], rec[2], rec[5]
        if otype not in ("AV", "AGENT", "OTHERS"):
            raise DatasetError(f"{path}:{lineno}: OBJECT_TYPE {otype!r}: expected AV, AGENT or OTHERS")
        rows.setdefault(aid, []).append((t, x, y))
        kinds[aid] = "vehicle" if otype in ("AV", "AGENT") else "other"
        if otype == "AGENT":
            focal.add(aid)
    if not focal:
        raise DatasetError(f"{path}: no AGENT track (expected one per Argoverse sequence)")
    # Timestamps jitter (some scenes run at 5-6 Hz for a while); the standard protocol counts samples,
    # so each distinct timestamp is one 0.1 s step.
    stamps = np.unique(np.concatenate([[p[0] for p in pts] for pts in rows.values()]))
    step = {t: i * 0.1 for i, t in enumerate(stamps.tolist())}
    rows = {aid: [(step[t], x, y) for t, x, y in pts] for aid, pts in rows.items()}
    return Scene(path.stem, city, str(path), _tracks_from_rows(rows, kinds, focal))


_APOLLO_KINDS = {1: "vehicle", 2: "vehicle", 3: "pedestrian", 4: "bicycle", 5: "other"}


def _parse_apolloscape(path: Path, text: str) -> Scene:
    """frame id type x y z length width height heading, space-separated; 2 frames per second."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    kinds: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 10:
            raise DatasetError(f"{path}:{lineno}: expected 10 space-separated columns "
                               f"(frame id type x y z l w h heading), got {len(parts)}: {line.strip()!r}")
        v = _floats(path, lineno, parts, "frame id type x y z l w h heading")
        otype = int(v[2])
        if otype not in _APOLLO_KINDS:
            raise DatasetError(f"{path}:{lineno}: object_type {otype}: expected 1..5")
        aid = str(int(v[1]))
        rows.setdefault(aid, []).append((v[0] * 0.5, v[3], v[4]))
        kinds[aid] = _APOLLO_KINDS[otype]
    if not rows:
        raise DatasetError(f"{path}: no rows (expected 10 space-separated columns)")
    return Scene(path.stem, _recording(path), str(path), _tracks_from_rows(rows, kinds))


# ---------------------------------------------------------------- resampling


def reversed_grid(grid: Grid) -> Grid:
    """The scene played backwards: every agent retraces its path, all at once (augmentation)."""
    return Grid(grid.name + "_reversed", grid.group, grid.dt_s, grid.t0_s, grid.xy[:, ::-1].copy(),
                grid.valid[:, ::-1].copy(), grid.kinds, grid.focal)


def to_grid(scene: Scene, dt_s: float, max_gap_steps: float = 2.5) -> Grid:
    """Resample every track onto t0 + s*dt_s (linear interpolation); split tracks at long gaps."""
    pieces: list[tuple[Track, np.ndarray, np.ndarray]] = []
    t0 = min(float(tr.t_s[0]) for tr in scene.tracks)
    for tr in scene.tracks:
        gaps = np.nonzero(np.diff(tr.t_s) > max_gap_steps * dt_s)[0]
        for lo, hi in zip(np.r_[0, gaps + 1], np.r_[gaps + 1, len(tr.t_s)], strict=True):
            t, xy = tr.t_s[lo:hi], tr.xy[lo:hi]
            s_a = math.ceil((t[0] - t0) / dt_s - 1e-3)
            s_b = math.floor((t[-1] - t0) / dt_s + 1e-3)
            if s_b < s_a:
                continue
            ts = np.clip(t0 + dt_s * np.arange(s_a, s_b + 1), t[0], t[-1])
            pts = np.stack([np.interp(ts, t, xy[:, 0]), np.interp(ts, t, xy[:, 1])], -1)
            pieces.append((tr, np.arange(s_a, s_b + 1), pts))
    n_steps = max(int(s[-1]) for _, s, _ in pieces) + 1
    xy = np.full((len(pieces), n_steps, 2), np.nan)
    valid = np.zeros((len(pieces), n_steps), dtype=bool)
    for i, (_, s, pts) in enumerate(pieces):
        xy[i, s] = pts
        valid[i, s] = True
    return Grid(scene.name, scene.group, dt_s, t0, xy, valid,
                [tr.kind for tr, _, _ in pieces], np.array([tr.focal for tr, _, _ in pieces], dtype=bool))

"""The `drivecast train` flags as one typed record, `TrainConfig`, and the per-dataset defaults.

The parser below is where every default and help text is written; `parse_config` turns its result
into a `TrainConfig` (one field per flag, same names), which is also what a checkpoint stores as
`train_args`. Flags left at None take the dataset's value (`with_dataset_defaults`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from models.datasets import DATASETS, DRIVE_DATASETS, dataset_name

__all__ = [
    "DATASET_DEFAULTS",
    "DESCRIPTION",
    "TrainConfig",
    "TrainError",
    "filled",
    "parse_config",
    "parser",
    "with_dataset_defaults",
]

DESCRIPTION = ("`drivecast train --dataset {eth_ucy,argoverse,apolloscape,drives,drives_pedestrian} --data DIR "
               "[--fold F] [--cell lstm|gru] ...`")

# ETH/UCY is small: many epochs and small batches. Argoverse is an order of magnitude larger: fewer
# epochs, and its tracks shorter than 1 s, mostly parked cars and tracker fragments, only slow it down.
# Drives: argoverse's recipe without focal tracks, started at constant velocity (cv_init). On 20
# simulated one-minute drives (`drivecast sim record --seed 100 --count 20`: 1,234 vehicle tracks) an
# epoch takes ~6 s on 2 cores; after 30 epochs a model trained from scratch was still 45% worse than CV
# on the test drives, one started at CV 10% (window) and 19% (streaming) better.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "eth_ucy": {"bptt": 16, "min_len": 3, "epochs": 150, "batch": 32, "patience": 25, "focal_repeat": 1,
                "cv_init": False},
    "argoverse": {"bptt": 25, "min_len": 10, "epochs": 30, "batch": 64, "patience": 8, "focal_repeat": 3,
                  "cv_init": False},
    "apolloscape": {"bptt": 12, "min_len": 3, "epochs": 100, "batch": 32, "patience": 20, "focal_repeat": 1,
                    "cv_init": False},
    "drives": {"bptt": 25, "min_len": 10, "epochs": 30, "batch": 64, "patience": 8, "focal_repeat": 1,
               "cv_init": True},
    "drives_pedestrian": {"bptt": 16, "min_len": 3, "epochs": 60, "batch": 32, "patience": 15, "focal_repeat": 1,
                          "cv_init": True},
}

_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-\[\]:]+:\d+)$")   # as `drivecast fleet eval --ray`


class TrainError(ValueError):
    """A run that cannot start: a bad flag value (exit code 2) or data it cannot train on (exit code 1)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainConfig:
    """One field per flag of `drivecast train`, in the parser's order; see `parser()` for each one's help."""

    dataset: str
    data: str
    fold: str | None
    topic: str | None       # drives only: the Tracks topic (None: each recording's only one)
    extra_data: list[str]   # more training scenes, outside --data's split (models/train_data.py)
    cell: str
    hidden: int
    layers: int
    modes: int              # K futures with probabilities (models/trajectory.py); 1: one future
    dropout: float
    epochs: int | None      # None: the dataset's default (DATASET_DEFAULTS), as for every other `| None` flag
    batch: int | None
    bptt: int | None
    lr: float
    weight_decay: float
    clip: float
    no_mirror: bool
    reverse: bool
    speed_aug: float
    ema: float
    focal_repeat: int | None
    min_len: int | None
    patience: int | None
    max_minutes: float | None
    feature: list[str]
    cv_init: bool | None    # None: the dataset's default
    window_weight: float
    window_batch: int
    window_stride: int
    seed: int
    seeds: int
    jobs: int | None        # None: 1 in this process; with --ray one per CPU (local) or the cluster's CPUs
    ray: str | None         # None: no Ray; "local": a Ray instance of this run's own; else the cluster's address
    workers: int            # > 1: one run, data-parallel over this many Ray Train workers (models/train_ddp.py)
    grid: list[str]
    mirror_average: bool
    threads: int
    out: str | None
    name: str
    no_progress: bool


def parser() -> argparse.ArgumentParser:
    """The command line: every flag with its default and help, in one place."""
    p = argparse.ArgumentParser(prog="drivecast train", description=DESCRIPTION)
    p.add_argument("--dataset", required=True, type=dataset_name, choices=sorted(DATASETS),
                   help="dataset (eth-ucy is accepted for eth_ucy)")
    p.add_argument("--data", required=True,
                   help="dataset directory (e.g. ../shared/data/eth_ucy); drives: a directory of recordings")
    p.add_argument("--fold", default=None,
                   help="eth_ucy fold (eth, hotel, univ, zara1, zara2), 'all' (one run on every scene's training "
                        "files) or 'each' (every fold, one run each, and one table); argoverse/apolloscape/drives: "
                        "I/K, cross-validation part I of K over train+val (test untouched), or 'all' / 'all/K' "
                        "(every part of 5 / of K, one run each, and one table with the pooled figures)")
    p.add_argument("--topic", default=None,
                   help="drives: the Tracks topic to train on (default: each recording's only Tracks topic)")
    p.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="more scenes of the same dataset, added whole to the training side of every split and "
                        "fold; --data's split (and so its val and test files) stays exactly as it is")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--modes", type=int, default=1, metavar="K",
                   help="K futures per agent with a probability each (winner-takes-all loss plus the mode's "
                        "classification); 1: one future")
    p.add_argument("--dropout", type=float, default=0.0, help="between stacked layers")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default per dataset)")
    p.add_argument("--batch", type=int, default=None, help="tracks per batch (default per dataset)")
    p.add_argument("--bptt", type=int, default=None, help="truncated BPTT chunk, samples (default per dataset)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--no-mirror", action="store_true", help="disable left/right mirror augmentation")
    p.add_argument("--reverse", action="store_true",
                   help="also train on every training scene played backwards (people walk both ways)")
    p.add_argument("--speed-aug", type=float, default=0.2,
                   help="scale each training track's lengths by U(1-a, 1+a): other walkers, other cars")
    p.add_argument("--ema", type=float, default=0.995,
                   help="exponential moving average of the weights, per batch (0 = off); validated and saved")
    p.add_argument("--focal-repeat", type=int, default=None,
                   help="each epoch sees focal tracks (the Argoverse AGENT) this many times (default per dataset)")
    p.add_argument("--min-len", type=int, default=None, help="shortest track used for training, samples")
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without validation improvement before stopping (default per dataset)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget (of each seed with --seeds), stopping after the epoch that passes it; "
                        "default none: the learning rate's schedule is set by --epochs, so a run cut by time "
                        "keeps weights from the middle of it")
    p.add_argument("--feature", action="append", default=[], metavar="KEY=VALUE",
                   help="override a feature-spec entry (export/runtime/features.py), e.g. --feature k_neighbors=6")
    p.add_argument("--cv-init", action=argparse.BooleanOptionalAction, default=None,
                   help="initialise the head's skip path to constant velocity (CV k from val, capped at the "
                        "feature history): the model starts at CV and learns a residual correction "
                        "(default per dataset: on for drives)")
    p.add_argument("--window-weight", type=float, default=0.0,
                   help="add this weight times the window-protocol loss on training windows (state from zero "
                        "obs_len samples before the prediction, own history cut at the window start, loss on "
                        "the last step's whole horizon), one batch of --window-batch windows per track batch")
    p.add_argument("--window-batch", type=int, default=128)
    p.add_argument("--window-stride", type=int, default=1, help="stride of the training windows, samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="train this many seeds from --seed and ship their average, merged into one model")
    p.add_argument("--jobs", type=int, default=None,
                   help="with --seeds, --fold all or --grid: this many runs at once (local processes; default 1), or "
                        "Ray tasks in flight with --ray (default: one per CPU, a cluster's CPUs with an ADDRESS)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the runs of --seeds, --fold all or --grid as Ray tasks (one CPU each): on a local Ray "
                        "of this command's own, or with auto / HOST:PORT / ray://HOST:PORT on that cluster (data "
                        "and --out at the same paths on every node); needs the ray package")
    p.add_argument("--workers", type=int, default=1,
                   help="train one model data-parallel on this many Ray Train workers (each takes 1/N of every "
                        "batch, gradients averaged with gloo on CPU), on a local Ray or the --ray cluster; "
                        "needs the ray package")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="train every combination of these values (repeatable), e.g. --grid hidden=64,128 "
                        "--grid lr=1e-3,3e-3, each under OUT/<key><value>.../, into one table (OUT/grid.csv)")
    p.add_argument("--mirror-average", action="store_true",
                   help="average each model with its mirror image across the heading axis (pedestrians: "
                        "left and right are alike; vehicles drive on one side, so not for them)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small LSTMs)")
    p.add_argument("--out", default=None, help="output directory (default runs/<dataset>_<fold>_<cell>)")
    p.add_argument("--name", default="best.pt", help="checkpoint file name inside --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    return p


def parse_config(argv: list[str]) -> TrainConfig:
    """The flags in `argv` as a TrainConfig; argparse itself exits with code 2 on a malformed flag."""
    cfg = TrainConfig(**vars(parser().parse_args(argv)))
    if not 1 <= cfg.modes <= 64:
        raise TrainError(f"--modes {cfg.modes}: expected 1 to 64", 2)
    if cfg.modes > 1 and (cfg.seeds > 1 or cfg.mirror_average):
        raise TrainError(f"--modes {cfg.modes} with --seeds/--mirror-average: the future k of one seed is not "
                         "the future k of another, so K futures are not averaged; train one seed", 2)
    if cfg.seeds < 1 or cfg.workers < 1 or (cfg.jobs is not None and cfg.jobs < 1):
        raise TrainError(f"--seeds {cfg.seeds} --jobs {cfg.jobs} --workers {cfg.workers}: expected at least 1 each", 2)
    if cfg.workers > 1 and (cfg.seeds > 1 or cfg.mirror_average or cfg.grid or cfg.fold in ("all", "each")
                            or (cfg.fold or "").startswith("all/")):
        raise TrainError(f"--workers {cfg.workers}: data-parallel training is for one run, not with --seeds, "
                         "--mirror-average, --grid or --fold all/each", 2)
    if cfg.ray is not None and not _RAY_ADDRESS.match(cfg.ray):
        raise TrainError(f"--ray {cfg.ray}: expected auto, local, HOST:PORT or ray://HOST:PORT", 2)
    if cfg.topic is not None and cfg.dataset not in DRIVE_DATASETS:
        raise TrainError(f"--topic {cfg.topic!r} with --dataset {cfg.dataset}: --topic is for {DRIVE_DATASETS}", 2)
    return cfg


def with_dataset_defaults(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every flag left at None set to its dataset's default."""
    unset = {k: v for k, v in DATASET_DEFAULTS[cfg.dataset].items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **unset)


def filled(value: int | None) -> int:
    """A per-dataset flag's value once `with_dataset_defaults` has run (None before: a caller's bug)."""
    if value is None:
        raise TypeError("a per-dataset flag was read before with_dataset_defaults")
    return value

"""The predictor's crash-safe state file: every model's agent table and sample grid in one `.npz`.

Written with an atomic replace, so a respawned node finds the old file or the new one, never half
of one; read without pickle; restored whole or not at all: a file from another format version,
another model or a smaller table is refused with the reason, and no table is left half restored.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nodes.resample import Grid

__all__ = ["STATE_FILE", "STATE_VERSION", "NotRestored", "restore", "save"]

STATE_FILE = "predictor_state.npz"
STATE_VERSION = 2  # bump when the layout changes: an older file is then refused, not misread


class NotRestored(Exception):
    """Why saved state was not restored. `cause` is the error when the file was bad (not merely
    absent or too old)."""

    def __init__(self, reason: str, cause: Exception | None = None) -> None:
        super().__init__(reason)
        self.cause = cause


def save(path: Path, grids: Mapping[str, tuple[Grid, str]], saved_ns: int, last_stamp: int | None) -> None:
    """Write every grid (name -> (grid, model content hash)) to `path`, replacing it atomically."""
    arrays: dict[str, np.ndarray] = {
        "version": np.array(STATE_VERSION, np.int64), "saved_ns": np.array(saved_ns, np.int64),
        "last_stamp": np.array(-1 if last_stamp is None else last_stamp, np.int64)}
    for name, (grid, model_hash) in grids.items():
        arrays.update(grid.table.arrays(f"{name}."))
        arrays[f"{name}.grid"] = np.array([-1 if grid.t0 is None else grid.t0, grid.k_next, grid.t0 is not None],
                                          np.int64)
        arrays[f"{name}.model_hash"] = np.array(model_hash)
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:  # owner-only
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first kwarg as allow_pickle
    tmp.replace(path)


def restore(path: Path | None, grids: Mapping[str, tuple[Grid, str]], now_ns: int, ttl_s: float
            ) -> tuple[int | None, float]:
    """Load the grids saved in `path` (None: nowhere to look); return (last stamp, age in s).

    Raises NotRestored when there is no file, when it is older than `ttl_s`, or when it is bad:
    then every grid is cleared, so that a half-applied restore cannot survive.
    """
    if path is None or not path.is_file():
        raise NotRestored("no saved state")
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != STATE_VERSION:
                raise ValueError(f"version {int(data['version'])}, expected {STATE_VERSION}")
            age_s = (now_ns - int(data["saved_ns"])) / 1e9
            if age_s > ttl_s:
                raise NotRestored(f"saved state is {age_s:.1f} s old (ttl_s {ttl_s:g})")
            for name, (_, model_hash) in grids.items():
                if str(data[f"{name}.model_hash"]) != model_hash:
                    raise ValueError(f"model {name!r} changed since the save")
            for name, (grid, _) in grids.items():
                grid.table.restore(data, f"{name}.")
                t0, k_next, has_t0 = (int(v) for v in data[f"{name}.grid"])
                grid.t0, grid.k_next = (t0 if has_t0 else None), k_next
            last = int(data["last_stamp"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        for grid, _ in grids.values():
            grid.clear()
        raise NotRestored(f"bad state file: {exc}", exc) from None
    return (None if last < 0 else last), age_s

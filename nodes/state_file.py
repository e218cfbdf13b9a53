"""The predictor's crash-safe state file: every model's agent table and sample grid in one `.npz`.

Written with an atomic replace, so a respawned node finds the old file or the new one, never half
of one; read without pickle; restored whole or not at all: a file from another format version,
another model or a smaller table is refused with the reason, and no table is left half restored.
"""

from __future__ import annotations

import lzma
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nodes.resample import Grid
from nodes.state_table import NEVER

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

    Raises NotRestored when there is no file, when it is older than `ttl_s`, or when it is bad (damaged,
    or holding values a running predictor cannot have: `_check`): then every grid is cleared, so that a
    half-applied restore cannot survive.
    """
    if path is None or not path.is_file():
        raise NotRestored("no saved state")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = _int(data, "version")
            if version != STATE_VERSION:
                raise ValueError(f"version {version}, expected {STATE_VERSION}")
            age_s = (now_ns - _int(data, "saved_ns")) / 1e9
            if age_s > ttl_s:
                raise NotRestored(f"saved state is {age_s:.1f} s old (ttl_s {ttl_s:g})")
            for name, (_, model_hash) in grids.items():
                if str(data[f"{name}.model_hash"]) != model_hash:
                    raise ValueError(f"model {name!r} changed since the save")
            last = _int(data, "last_stamp")
            for name, (grid, _) in grids.items():
                grid.table.restore(data, f"{name}.")
                t0, k_next, has_t0 = _array(data, f"{name}.grid", (3,)).tolist()
                grid.t0, grid.k_next = (t0 if has_t0 else None), k_next
                _check(name, grid, t0, has_t0, last)
    except NotRestored:
        _clear(grids)
        raise
    # what zipfile and numpy raise on a damaged file: its compression, version or encryption flags
    # damaged too (NotImplementedError, RuntimeError, zlib and lzma errors)
    except (OSError, KeyError, ValueError, EOFError, NotImplementedError, RuntimeError, zipfile.BadZipFile,
            zlib.error, lzma.LZMAError) as exc:
        _clear(grids)
        raise NotRestored(f"bad state file: {exc}", exc) from None
    return (None if last < 0 else last), age_s


def _clear(grids: Mapping[str, tuple[Grid, str]]) -> None:
    for grid, _ in grids.values():
        grid.clear()


def _array(data: Any, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The int64 array `key` of `shape`; ValueError naming it otherwise."""
    a = data[key]
    if a.dtype != np.int64 or a.shape != shape:
        raise ValueError(f"saved array {key!r} is {a.dtype}{list(a.shape)}, expected int64{list(shape)}")
    return np.asarray(a)


def _int(data: Any, key: str) -> int:
    return int(_array(data, key, ()))


def _check(name: str, grid: Grid, t0: int, has_t0: int, last: int) -> None:
    """ValueError unless the restored grid and table hold what a running predictor can: finite numbers,
    and times that agree: each agent seen between the grid's start and the last stamp, on a tick the
    grid has closed, and sampled last on that tick or within the gap limit before it. Times that do not
    agree would have the first message after the restart step through billions of ticks."""
    tab = grid.table
    act = tab.active()
    if has_t0 not in (0, 1) or grid.k_next < 0 or (not has_t0 and (len(act) or grid.k_next)):
        raise ValueError(f"{name}: grid [t0, next tick, has t0] {[grid.t0, grid.k_next, has_t0]} with {len(act)} agents")
    if not len(act):
        return
    if not t0 <= last or (last - t0) // grid.dt_ns + 1 < grid.k_next:
        raise ValueError(f"{name}: grid t0 {t0}, next tick {grid.k_next}, beyond the last stamp {last}")
    if not (np.isfinite(tab.state[:, :, act]).all() and np.isfinite(tab.hist[act]).all()
            and np.isfinite(tab.last_xy[act]).all()):
        raise ValueError(f"{name}: positions or states that are not finite")
    gap_ticks = grid.max_gap_ns // grid.dt_ns + 1
    for seen, k, n in zip(tab.last_t[act].tolist(), tab.last_k[act].tolist(), tab.n_obs[act].tolist(), strict=True):
        tick = (seen - t0) // grid.dt_ns  # Python ints: hostile int64 times must not wrap around
        if not t0 <= seen <= last or tick >= grid.k_next:
            raise ValueError(f"{name}: an agent last seen at {seen}, outside the grid's time {t0}..{last}")
        if n < 0 or (k == NEVER) != (n == 0) or (k != NEVER and not 0 <= tick - k <= gap_ticks):
            raise ValueError(f"{name}: an agent last seen on tick {tick} has {n} samples, the last on tick {k}")

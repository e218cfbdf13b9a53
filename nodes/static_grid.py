"""An online static map: which cells of the map frame have been hit by returns for a long time.

Each cell remembers when its current run of hits began and when it was last hit; a run ends when the
cell goes `gap_s` without a hit. A cell whose run spans `static_after_s` is static: a wall, a pole, a
parked car. A moving car hits a cell for the fraction of a second it takes to pass, and passes again
(a lap) only after the run has ended, so it never is. A point is static when a cell within one cell
of it is: a sparse far wall is hit in a different cell each scan, but its neighbourhood in every one.
A car that stops for longer than `static_after_s` joins the background: that is what static means.

The grid is a fixed square of cells around a centre that jumps (whole cells, contents kept) when the
sensor gets within a quarter of the side of its edge, so memory stays bounded however far it drives.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["StaticGrid"]


class StaticGrid:
    """Per-cell runs of hits on a square grid that follows the sensor; see the module docstring."""

    def __init__(self, cell_m: float, size_m: float, static_after_s: float, gap_s: float) -> None:
        self.cell = cell_m
        self.n = max(8, int(math.ceil(size_m / cell_m)))
        self.static_after_s = static_after_s
        self.gap_s = gap_s
        self.first = np.zeros((self.n, self.n), np.float64)   # start of the current run (s)
        self.last = np.full((self.n, self.n), -np.inf)        # last hit (s)
        self.corner = np.zeros(2, np.int64)                   # map cell of grid cell (0, 0)
        self.placed = False
        self._around = np.array([di * self.n + dj for di in (-1, 0, 1) for dj in (-1, 0, 1)])

    def clear(self) -> None:
        self.last[:] = -np.inf
        self.placed = False

    def follow(self, sensor_xy: np.ndarray) -> None:
        """Re-centre the grid on the sensor when it nears an edge, keeping the overlapping cells."""
        at = (math.floor(float(sensor_xy[0]) / self.cell), math.floor(float(sensor_xy[1]) / self.cell))
        corner = np.array(at, np.int64) - self.n // 2
        if not self.placed:
            self.corner, self.placed = corner, True
            return
        centre = self.corner + self.n // 2
        if abs(at[0] - int(centre[0])) <= self.n // 4 and abs(at[1] - int(centre[1])) <= self.n // 4:
            return
        sx, sy = (int(v) for v in corner - self.corner)
        first, last = np.zeros_like(self.first), np.full_like(self.last, -np.inf)
        if abs(sx) < self.n and abs(sy) < self.n:
            dst = (slice(max(0, -sx), self.n - max(0, sx)), slice(max(0, -sy), self.n - max(0, sy)))
            src = (slice(max(0, sx), self.n - max(0, -sx)), slice(max(0, sy), self.n - max(0, -sy)))
            first[dst], last[dst] = self.first[src], self.last[src]
        self.first, self.last, self.corner = first, last, corner

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat index of each point's cell (clipped to the grid's inner cells), and whether it is
        inside: what the other methods take, so a scan's cells are found once. Valid until the next
        `follow` moves the grid."""
        i = np.floor(xy[:, 0] * (1.0 / self.cell)).astype(np.int64) - self.corner[0]
        j = np.floor(xy[:, 1] * (1.0 / self.cell)).astype(np.int64) - self.corner[1]
        inside = (i >= 1) & (i < self.n - 1) & (j >= 1) & (j < self.n - 1)
        return np.minimum(np.maximum(i, 1), self.n - 2) * self.n + np.minimum(np.maximum(j, 1), self.n - 2), inside

    def is_static(self, cells: np.ndarray, inside: np.ndarray, t_s: float) -> np.ndarray:
        """Per point of `cells`, `inside` (see `cells`): whether its cell or one of the 8 around it is
        static at `t_s`."""
        if not self.placed or len(cells) == 0:
            return np.zeros(len(cells), bool)
        around = cells[:, None] + self._around                 # [N, 9] cells
        last = self.last.ravel()[around]
        static = (last - self.first.ravel()[around] >= self.static_after_s) & (t_s - last <= self.gap_s)
        return static.any(axis=1) & inside  # type: ignore[no-any-return]

    def restart(self, cells: np.ndarray, t_s: float) -> None:
        """Start the runs of `cells` (inside ones, see `cells`) again at `t_s`: what stands there is not static."""
        if self.placed:
            self.first.ravel()[cells] = t_s

    def add(self, cells: np.ndarray, t_s: float) -> None:
        """Count one scan at `t_s` whose returns hit `cells` (inside ones, see `cells`)."""
        if not self.placed or len(cells) == 0:
            return
        first, last = self.first.ravel(), self.last.ravel()   # views: the grids are contiguous
        ended = cells[t_s - last[cells] > self.gap_s]
        first[ended] = t_s
        last[cells] = t_s

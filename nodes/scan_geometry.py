"""Lidar geometry, pure numpy: returns of a scan, segmentation, rectangle fitting.

`segments` splits a scan into objects with the adaptive breakpoint rule of Borges & Aldon (2004):
two neighbouring returns belong to one object unless they are further apart than a surface seen at
the grazing angle `lam` could place them, plus three range sigmas. It adapts to range, which a fixed
distance threshold cannot (1 degree of beam spacing is 1 cm at 0.5 m and 14 cm at 8 m).

`grid_clusters` groups the points of a 3D cloud (ground removed) by touching cells of a bird's-eye
grid. `fit_rectangles` is the search-based L-shape fit of Zhang et al. (2017, closeness criterion):
for each candidate orientation in [0, pi/2) the points are projected on the two box axes and scored
by how close they lie to the nearest box edge; the best orientation gives the box. All clusters and
all candidate orientations are one array operation (`reduceat` over contiguous clusters), no Python
loop per point.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["Rectangles", "fit_rectangles", "grid_clusters", "scan_returns", "segments"]


def scan_returns(ranges: np.ndarray, angle_min: float, angle_increment: float, range_min: float,
                 range_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the beams with a return (finite, within [range_min, range_max]) and their angles."""
    r = np.asarray(ranges, np.float64)
    idx = np.flatnonzero((r >= range_min) & (r <= range_max) & (r < np.inf))  # NaN compares False
    return idx, angle_min + angle_increment * idx


def _breaks(r0: np.ndarray, r1: np.ndarray, skip: np.ndarray, increment: float, lam: float,
            sigma: float) -> np.ndarray:
    """Whether returns r0 and r1, `skip` beams apart, lie on different objects: further apart than
    one step along a surface seen at the grazing angle `lam` (two across missing beams), plus three
    range sigmas."""
    dphi = skip * increment
    gap = np.sqrt(np.maximum(r0 ** 2 + r1 ** 2 - 2 * r0 * r1 * np.cos(dphi), 0.0))
    step = np.minimum(r0, r1) * np.sin(increment) / np.sin(lam - increment)
    return gap > np.minimum(skip, 2) * step + 3 * sigma  # type: ignore[no-any-return]


def segments(r: np.ndarray, beam: np.ndarray, increment: float, n_beams: int, lam: float, sigma: float,
             max_skip: int = 4) -> np.ndarray:
    """Segment label (0, 1, ...) of each return, given in beam order with ranges `r` and beam indices
    `beam`. Up to `max_skip` beams without a return may lie inside one object (dark paint returns
    nothing at some angles); more always split. A full-turn scan joins its last segment to its first."""
    n = len(r)
    if n == 0:
        return np.zeros(0, np.int64)
    inc = abs(increment)
    if not 0 < inc < lam:
        return np.arange(n)  # beams too sparse for the rule: every return is its own object
    # pair i is return i and the next one; the last pair wraps round to the first return
    skip = np.empty(n, np.int64)
    skip[:-1] = beam[1:] - beam[:-1]
    skip[-1] = beam[0] + n_beams - beam[-1]
    split = (skip > max_skip + 1) | _breaks(r, np.concatenate((r[1:], r[:1])), skip, inc, lam, sigma)
    labels = np.zeros(n, np.int64)
    np.cumsum(split[:-1], out=labels[1:])
    if labels[-1] > 0 and n_beams * inc >= 2 * np.pi - inc / 2 and not split[-1]:
        labels[labels == labels[-1]] = 0
    return labels


def grid_clusters(xy: np.ndarray, cell: float) -> np.ndarray:
    """Cluster label of each point of `xy` [N, 2] (bird's-eye view): points whose cells of a `cell` grid
    touch (8-connected) share a label. For 3D clouds, which have no beam order to segment along. Only
    occupied cells are kept (sorted keys, neighbours found by search), so memory grows with the
    points, never with the area they span."""
    if len(xy) == 0:
        return np.zeros(0, np.int64)
    ij = np.floor(xy / cell).astype(np.int64)
    ij -= ij.min(axis=0) - 1
    key = ij[:, 0] * (1 << 32) + ij[:, 1]
    cells, of_point = np.unique(key, return_inverse=True)
    rows, cols = [], []
    for di, dj in ((0, 1), (1, -1), (1, 0), (1, 1)):     # half the 8 neighbours: edges are undirected
        j = np.searchsorted(cells, cells + di * (1 << 32) + dj)
        j = np.minimum(j, len(cells) - 1)
        hit = cells[j] == cells + di * (1 << 32) + dj
        rows.append(np.flatnonzero(hit))
        cols.append(j[hit])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(len(cells), len(cells)))
    _, labels = csgraph.connected_components(graph, directed=False)
    return labels[of_point].astype(np.int64)  # type: ignore[no-any-return]


class Rectangles(NamedTuple):
    """Boxes fitted to clusters: `theta` the first axis (rad, [0, pi/2)), `lo`/`hi` [K, 2] the extent of
    the points along the two axes (e1 = (cos, sin), e2 = (-sin, cos)) around `origin` [K, 2]."""

    theta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    origin: np.ndarray


def fit_rectangles(xy: np.ndarray, starts: np.ndarray, steps: int = 45, d0: float = 0.01) -> Rectangles:
    """Fit one rectangle to each cluster of `xy` [N, 2]; cluster k is rows `starts[k]` to the next start.
    `steps` orientations are tried over 90 degrees; `d0` (m) caps the reward of a point on an edge."""
    if len(starts) == 0:
        z = np.zeros((0, 2))
        return Rectangles(np.zeros(0), z, z, z)
    counts = np.append(starts[1:], len(xy)) - starts
    origin = np.add.reduceat(xy, starts, axis=0) / counts[:, None]
    member = np.arange(len(starts)).repeat(counts)        # cluster of each point
    theta, axes = _orientations(steps)
    # [2 steps, N]: each point along e1, then along e2, of every orientation; points last (a new
    # C-ordered array), so the reductions over a cluster run along contiguous memory
    proj = axes @ (xy - origin[member]).T
    lo, hi = np.minimum.reduceat(proj, starts, axis=1), np.maximum.reduceat(proj, starts, axis=1)
    d = np.minimum(proj - lo.take(member, axis=1), hi.take(member, axis=1) - proj)
    near = np.maximum(np.minimum(d[:steps], d[steps:]), d0)   # to the nearest edge
    best = np.add.reduceat(1.0 / near, starts, axis=1).argmax(axis=0)
    both, k = np.stack([best, best + steps]), np.arange(len(starts))
    return Rectangles(theta[best], lo[both, k].T, hi[both, k].T, origin)


@functools.cache
def _orientations(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidate orientations [steps] over 90 degrees, and their axes e1 then e2 [2 steps, 2]."""
    theta = np.arange(steps) * (np.pi / 2 / steps)
    c, s = np.cos(theta), np.sin(theta)
    return theta, np.concatenate([np.stack([c, s], axis=1), np.stack([-s, c], axis=1)])

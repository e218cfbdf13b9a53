"""One placed scan in, the objects in it out: segmentation, background removal, boxes.

`ObjectFinder.find` takes a scan's returns and the lidar's pose at each of them (map frame),
`find_cloud` a 3D cloud and the lidar's pose (ground removed by height, clusters on a bird's-eye
grid instead of along the beams); both keep the state that spans scans: the online static map (`nodes.static_grid`) and the sizes of
recently seen objects (`nodes.lidar_boxes.SizeMemory`). The rules, in order: returns within
`ego_radius` are the carrier's own body; the adaptive breakpoint rule (`nodes.scan_geometry`)
splits the rest into clusters; a cluster is background when most of its returns lie on static cells,
when it is larger than `max_extent` (a wall), when its mean range exceeds `max_range` (too few returns
to fit), or when it has fewer than `min_points` returns. A kept cluster is a vehicle, with a rectangle
fit and a box, when it spans at least `box_min_extent` or is a flat face at least `face_min` long (a
dark car seen end on returns part of its width); a smaller one of at least `min_extent` is a point,
its centroid (kind unknown, nothing observed: a pedestrian at road scale); one smaller still is
dropped (a pole). The RC-car defaults make every kept cluster a vehicle.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from nodes.lidar_boxes import SizeMemory, boxes
from nodes.scan_geometry import Rectangles, fit_rectangles, grid_clusters, segments
from nodes.static_grid import StaticGrid
from pipeline.wire.messages import AgentKind

__all__ = ["ObjectFinder", "Objects"]


class Objects(NamedTuple):
    """The objects of one scan, as the Detections arrays of the same names."""

    xy: np.ndarray
    kind: np.ndarray
    score: np.ndarray
    length: np.ndarray
    width: np.ndarray
    heading: np.ndarray
    observed: np.ndarray
    points: np.ndarray   # [N, 2] every return placed in the map (for scan matching)


HOLD_MARGIN_M, HOLD_DISC_M = 0.5, 1.0   # a held car's box beyond `vehicle_size`; another kind's radius
HOLD_MOVE_M = 1.0                        # how far a track must have moved to be held


class ObjectFinder:
    """The detector's per-scan work and the state it keeps between scans; `p` is its Params."""

    def __init__(self, p: Any) -> None:
        self.p = p
        self.grid = StaticGrid(p.static_cell, p.grid_size, p.static_after_s, p.static_gap_s)
        self.sizes = SizeMemory(radius_m=max(p.vehicle_size), keep_s=2.0)
        self.movers = Movers()
        self.static_clusters = 0

    def clear(self) -> None:
        self.grid.clear()
        self.sizes.clear()
        self.movers = Movers()

    def find(self, r: np.ndarray, beam: np.ndarray, angle: np.ndarray, increment: float, n_beams: int,
             sensor: np.ndarray, t_s: float) -> Objects:
        """Objects among the returns of ranges `r`, beam indices `beam` and angles `angle` (rad, lidar
        frame) of a scan of `n_beams`, the lidar at `sensor` [N, 3] (x, y, yaw) for each, at `t_s`."""
        p = self.p
        body = r <= p.ego_radius
        if body.any():
            r, beam, angle, sensor = r[~body], beam[~body], angle[~body], sensor[~body]
        heading = angle + sensor[:, 2]
        xy = np.empty((len(r), 2))
        xy[:, 0] = sensor[:, 0] + r * np.cos(heading)
        xy[:, 1] = sensor[:, 1] + r * np.sin(heading)
        labels = segments(r, beam, increment, n_beams, math.radians(p.breakpoint_deg), p.range_sigma, p.max_skip)
        return self._objects(xy, r, sensor[:, :2], labels, t_s)

    def find_cloud(self, local: np.ndarray, sensor: np.ndarray, t_s: float) -> Objects:
        """Objects among the points `local` [N, 3] (x, y, z in the lidar frame) of a 3D cloud, the lidar
        at `sensor` (x, y, yaw): points between `cloud_min_z` and `cloud_max_z` (the ground and what
        is overhead left out), clustered on a bird's-eye grid of `cloud_cell`."""
        p = self.p
        r = np.hypot(local[:, 0], local[:, 1])
        keep = (local[:, 2] > p.cloud_min_z) & (local[:, 2] < p.cloud_max_z) & (r > p.ego_radius) & (r <= p.max_range)
        local, r = local[keep], r[keep]
        c, s = math.cos(sensor[2]), math.sin(sensor[2])
        xy = np.empty((len(r), 2))
        xy[:, 0] = sensor[0] + c * local[:, 0] - s * local[:, 1]
        xy[:, 1] = sensor[1] + s * local[:, 0] + c * local[:, 1]
        labels = grid_clusters(local[:, :2], p.cloud_cell)
        return self._objects(xy, r, np.broadcast_to(sensor[:2], xy.shape), labels, t_s)

    def _objects(self, xy: np.ndarray, r: np.ndarray, origin: np.ndarray, labels: np.ndarray, t_s: float) -> Objects:
        """The objects among returns `xy` [N, 2] (map frame) at ranges `r`, seen from `origin` [N, 2],
        grouped by `labels`."""
        p = self.p
        if len(xy) == 0:
            return _nothing(xy)
        self.grid.follow(origin[0])
        cells, inside = self.grid.cells(xy)
        self.grid.add(cells[inside], t_s)
        order = labels.argsort(kind="stable")
        n = np.bincount(labels)   # labels are 0 .. L-1 (a scan's wrap joins the last to 0)
        # most clusters are a stray return or two: drop them before any geometry
        big = n >= p.min_points
        if not big.any():
            return _nothing(xy)
        members = order[big.repeat(n)]   # the points of the other clusters, cluster by cluster
        n = n[big]
        starts = np.cumsum(n) - n
        pts, rr, cells, inside = xy[members], r[members], cells[members], inside[members]
        extent = np.hypot(*(np.maximum.reduceat(pts, starts) - np.minimum.reduceat(pts, starts)).T)
        sums = np.add.reduceat(pts, starts)   # centroids: of the held clusters, and of the point-like ones
        mean_range = np.add.reduceat(rr, starts) / n
        sized = (extent <= p.max_extent) & (mean_range <= p.max_range)
        sel = sized.repeat(n)
        static = np.zeros(len(pts), bool)
        static[sel] = self.grid.is_static(cells[sel], inside[sel], t_s)
        static_share = np.add.reduceat(static, starts) / n
        background = static_share >= p.static_share
        if len(self.movers.pose):   # a stopped car with a track: its cells start their run again, it stays an object
            held = self.movers.holds(sums / n[:, None], p.vehicle_size) & sized
            self.grid.restart(cells[held.repeat(n) & inside], t_s)
            background &= ~held
        self.static_clusters += int((sized & background).sum())
        keep = np.flatnonzero(sized & ~background)
        sel = (sized & ~background).repeat(n)
        rect = fit_rectangles(pts[sel], np.cumsum(n[keep]) - n[keep])
        spread = rect.hi - rect.lo
        spread.sort(axis=1)                              # [K, 2]: thin side, long side
        face = (spread[:, 1] >= p.face_min) & (spread[:, 0] <= p.face_flatness * spread[:, 1])
        wide = extent[keep]
        vehicle = face | (wide >= max(p.box_min_extent, p.min_extent))
        box = keep[vehicle]
        b = boxes(rect if len(box) == len(keep) else Rectangles(*(a[vehicle] for a in rect)),
                  origin[members[starts[box]]], p.min_side, p.vehicle_size, self.sizes, t_s)
        dot = keep[~vehicle & (wide >= p.min_extent)]
        if len(dot) == 0:   # the RC-car defaults: every object a vehicle
            return Objects(xy=b.xy, kind=np.full(len(box), AgentKind.VEHICLE, np.uint8),
                           score=np.minimum(n[box] / p.full_points, 1.0), length=b.length, width=b.width,
                           heading=b.heading, observed=b.observed, points=xy)
        centroid = sums[dot] / n[dot, None]
        kind = np.repeat(np.array([AgentKind.VEHICLE, AgentKind.UNKNOWN], np.uint8), [len(b.xy), len(centroid)])
        return Objects(xy=np.concatenate([b.xy, centroid]), kind=kind,
                       score=np.minimum(np.concatenate([n[box], n[dot]]) / p.full_points, 1.0),
                       length=np.concatenate([b.length, extent[dot]]), width=np.concatenate([b.width, extent[dot]]),
                       heading=np.concatenate([b.heading, np.zeros(len(centroid))]),
                       observed=np.concatenate([b.observed, np.zeros(len(centroid), np.uint8)]), points=xy)


class Movers:
    """The tracks fed back to the detector that have moved: where they are and how they last headed.
    A track counts once it is HOLD_MOVE_M from where it was first seen: a velocity alone would let
    one noisy estimate on a parked box hold it for ever."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float, float]] = {}   # id -> first x, first y, last moving heading
        self.pose = np.zeros((0, 4))   # movers: x, y, heading, 1 for a vehicle

    def update(self, ids: np.ndarray, xy: np.ndarray, vxy: np.ndarray, kind: np.ndarray, min_speed: float) -> None:
        """Take a Tracks message: ids not in it are forgotten, so memory follows the live tracks."""
        speed = np.hypot(vxy[:, 0], vxy[:, 1])
        seen: dict[int, tuple[float, float, float]] = {}
        movers = []
        for i, track in enumerate(ids.tolist()):
            x, y = float(xy[i, 0]), float(xy[i, 1])
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            x0, y0, heading = self.seen.get(track, (x, y, math.nan))
            if speed[i] >= min_speed and math.isfinite(speed[i]):
                heading = math.atan2(float(vxy[i, 1]), float(vxy[i, 0]))
            seen[track] = (x0, y0, heading)
            if math.hypot(x - x0, y - y0) >= HOLD_MOVE_M:
                h = heading if math.isfinite(heading) else math.atan2(y - y0, x - x0)
                movers.append((x, y, h, float(kind[i] == AgentKind.VEHICLE)))
        self.seen = seen
        self.pose = np.array(movers).reshape(-1, 4)

    def holds(self, centroid: np.ndarray, size: tuple[float, float]) -> np.ndarray:
        """Per cluster centroid [K, 2]: whether it lies in a mover's box (vehicles) or disc (others)."""
        d = centroid[:, None, :] - self.pose[None, :, :2]                 # [K, M, 2]
        c, s = np.cos(self.pose[:, 2]), np.sin(self.pose[:, 2])
        along, across = d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c
        box = (np.abs(along) <= size[0] / 2 + HOLD_MARGIN_M) & (np.abs(across) <= size[1] / 2 + HOLD_MARGIN_M)
        disc = np.hypot(along, across) <= HOLD_DISC_M
        return np.asarray(np.where(self.pose[:, 3] > 0, box, disc).any(axis=1))


def _nothing(points: np.ndarray) -> Objects:
    z = np.zeros(0)
    return Objects(np.zeros((0, 2)), np.zeros(0, np.uint8), z, z, z, z, np.zeros(0, np.uint8), points)

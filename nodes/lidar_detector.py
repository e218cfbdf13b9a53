"""Lidar scans (or 3D clouds) in, object boxes in the map frame out: the detector in front of the tracker.

```yaml
  detector:
    run: nodes.lidar_detector:LidarDetector
    params: {lidar_offset: [-0.153, -0.002, 0.008]}
    inputs: {scan: /scan, ego: /ego_pose}        # or points: a PointCloud topic
```

Placing: each scan goes into the map with the carrier's pose (input `ego`) interpolated at every
beam's time and composed with `lidar_offset` (x, y, yaw of the lidar on the carrier), see
`nodes.lidar_pose`. A scan waits for a pose at or after its last beam, so live poses that come a few
ms after it are used, never extrapolated; one without poses around it at most `pose_gap_s` apart,
or still waiting after `pose_wait_s` of node clock, is dropped (`drops.no_pose`). Where the pose
topic repeats itself right after the car moved, scans are placed by scan matching instead
(`scans_matched`).

Finding: `nodes.lidar_objects` (adaptive breakpoint segmentation, the online static map, size and
shape rules, rectangle fits and boxes with the sides seen). Output `detections`: one message per
placed scan, stamped with it, frame of the pose topic, ids -1.

Feedback (optional input `tracks`, the tracker's output): a car that stops longer than
`static_after_s` (a queue at a red light) would join the background and lose its track. With the
tracks wired back, a track that has moved 1 m since it was first seen keeps the cluster at its box
(its last heading at `hold_speed` or faster, `vehicle_size` plus a margin; a 1 m disc for other
kinds) out of the background for as long as the track lives (Autoware's detection_by_tracker feeds
tracks back likewise). A Tracks message in another frame than the poses (`drops.tracks_frame`) or
with more than `max_tracks` rows (`drops.tracks_too_many`) is dropped; non-finite rows are skipped.

The defaults fit the RC-car recordings in `../shared/recordings/rc_cars_*` (1:10 cars, 0.43 x 0.19 m,
a 360-beam lidar at 13 Hz); `lidar_offset` is the pose that best aligns the red car's returns with
its motion-capture box over the five bags, and makes the lab's walls line up across time.

Bad input is counted, never raised: a scan without beams or with a non-finite or zero geometry
(`drops.bad_scan`) or without a return (`drops.no_returns`), a cloud without x, y, z columns
(`drops.bad_cloud`), a stamp not after the previous one (`drops.out_of_order`; more than `restart_s`
back: `restarts`, a replay that loops), a pose that is not finite (`drops.ego_not_finite`) or out of
order (`drops.ego_out_of_order`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Annotated

import numpy as np
from msgspec import Meta

from nodes.lidar_objects import ObjectFinder, Objects
from nodes.lidar_pose import LidarPose
from nodes.scan_geometry import scan_returns
from pipeline.runtime.node import Node, NodeParams
from pipeline.wire.messages import Detections, LaserScan, Odometry, PointCloud, Tracks

__all__ = ["DetectorParams", "LidarDetector"]

_Pos = Annotated[float, Meta(gt=0)]


class DetectorParams(NodeParams):
    """The detector's params (nodes.lidar_detector:LidarDetector); defaults for the RC-car bags."""

    lidar_offset: tuple[float, float, float] = (-0.153, -0.002, 0.008)  # x, y (m), yaw (rad) on the carrier
    pose_gap_s: _Pos = 0.1                                    # poses around a scan at most this far apart
    pose_wait_s: _Pos = 0.5                                   # node-clock time a scan waits for a later pose
    restart_s: _Pos = 1.0                                     # a stamp this far back is a new run (replay loop), not disorder
    ego_radius: Annotated[float, Meta(ge=0)] = 0.2            # returns this close are the carrier itself
    breakpoint_deg: Annotated[float, Meta(gt=0, lt=90)] = 10.0  # grazing angle of the breakpoint rule
    range_sigma: Annotated[float, Meta(ge=0)] = 0.01          # range noise (m), three of them added
    max_skip: Annotated[int, Meta(ge=0, le=64)] = 4           # beams without return inside one object
    max_range: Annotated[float, Meta(gt=0, le=1000)] = 3.0    # farther clusters are too sparse to fit (m)
    min_points: Annotated[int, Meta(ge=1)] = 3
    full_points: Annotated[int, Meta(ge=1)] = 10              # score = returns / this, at most 1
    min_extent: Annotated[float, Meta(ge=0)] = 0.12           # smaller clusters are dropped unless a flat face
    max_extent: _Pos = 0.7                                    # larger ones are background (walls)
    face_min: _Pos = 0.08                                     # a flat face this long is part of a vehicle
    face_flatness: Annotated[float, Meta(ge=0, le=1)] = 0.3   # thin/long spread of a flat face
    box_min_extent: Annotated[float, Meta(ge=0)] = 0.12       # kept ones smaller (not a face) are points
    min_side: _Pos = 0.1                                      # a box side spread less was not seen
    vehicle_size: tuple[_Pos, _Pos] = (0.43, 0.19)            # length, width assumed for a side not seen
    static_cell: _Pos = 0.1                                   # static map cell (m)
    static_after_s: _Pos = 2.0                                # hit this long -> background
    static_gap_s: _Pos = 2.0                                  # a cell unhit this long starts over
    static_share: Annotated[float, Meta(gt=0, le=1)] = 0.5    # this share of static returns -> background
    hold_speed: _Pos = 0.5        # with `tracks` wired: a track moved 1 m keeps its heading from this speed
    max_tracks: Annotated[int, Meta(ge=0)] = 1024   # a fed-back Tracks message with more rows is dropped
    grid_size: Annotated[float, Meta(gt=0, le=1000)] = 40.0   # side of the static map (m) around the lidar
    cloud_min_z: float = -0.05                                # 3D points at or below this (lidar frame, m) are ground
    cloud_max_z: float = 1.0                                  # and at or above this overhead
    cloud_cell: Annotated[float, Meta(ge=0.01)] = 0.1         # bird's-eye grid of 3D clustering (m)

    def __post_init__(self) -> None:
        if self.grid_size / self.static_cell > 2000:
            raise ValueError(f"grid_size / static_cell is {self.grid_size / self.static_cell:.0f} cells a side; "
                             f"at most 2000 (the static map holds their square)")


class LidarDetector(Node):
    """LaserScan on `scan` and the carrier's Odometry on `ego` in, Detections (map frame) out."""

    Params = DetectorParams
    params: DetectorParams
    inputs = {"scan": LaserScan, "ego": Odometry, "points": PointCloud, "tracks": Tracks}
    outputs = {"detections": Detections}

    def setup(self) -> None:
        p = self.params
        self.pose = LidarPose(p.lidar_offset, p.pose_gap_s, p.ego_radius)
        self.pending: deque[tuple[LaserScan | PointCloud, int]] = deque()   # scans waiting for a later pose
        self.finder = ObjectFinder(p)
        self.counts: Counter[str] = Counter()
        self.last_scan_ns: int | None = None   # of scans and clouds alike: one sensor per node
        self.frame = ""
        self.every(1.0, self._tick)

    def on_tracks(self, msg: Tracks) -> None:
        """The tracker's output, fed back: tracks that have moved are held out of the background."""
        if msg.frame_id != self.frame or not self.frame:
            self.counts["drops.tracks_frame"] += 1
            return
        if len(msg.ids) > self.params.max_tracks:
            self.counts["drops.tracks_too_many"] += 1
            return
        self.finder.movers.update(msg.ids, msg.xy, msg.vxy, msg.kind, self.params.hold_speed)

    def on_ego(self, msg: Odometry) -> None:
        pose = (*msg.position[:2].tolist(), *msg.orientation.tolist())
        if not all(map(math.isfinite, pose)):
            self.counts["drops.ego_not_finite"] += 1
            return
        newest = self.pose.newest_ns
        if newest is not None and msg.stamp_ns <= newest:
            if newest - msg.stamp_ns <= self.params.restart_s * 1e9:
                self.counts["drops.ego_out_of_order"] += 1
                return
            self._restart()
        self.frame = msg.frame_id
        if self.pose.add(msg.stamp_ns, pose):
            self.counts["ego_repeats"] += 1
        self._drain()

    def on_scan(self, msg: LaserScan) -> None:
        n, inc, dt = len(msg.ranges), msg.angle_increment, msg.time_increment
        if n == 0 or not (math.isfinite(msg.angle_min) and math.isfinite(inc) and inc != 0
                          and math.isfinite(dt) and 0 <= dt * n <= 1.0):
            self.counts["drops.bad_scan"] += 1
            return
        self._wait(msg)

    def on_points(self, msg: PointCloud) -> None:
        names = msg.fields.split(",")
        if not {"x", "y", "z"} <= set(names) or len(names) != msg.points.shape[1]:
            self.counts["drops.bad_cloud"] += 1
            return
        self._wait(msg)

    def _wait(self, msg: LaserScan | PointCloud) -> None:
        """Queue a scan or cloud stamped after the last until a pose at or after its end has come."""
        if self.last_scan_ns is not None and msg.stamp_ns <= self.last_scan_ns:
            if self.last_scan_ns - msg.stamp_ns <= self.params.restart_s * 1e9:
                self.counts["drops.out_of_order"] += 1
                return
            self._restart()
        self.last_scan_ns = msg.stamp_ns
        self.pending.append((msg, self.now_ns()))
        if len(self.pending) > 16:
            self.pending.popleft()
            self.counts["drops.no_pose"] += 1
        self._drain()

    def _restart(self) -> None:
        """Stamps went back further than `restart_s`: a new run (a replay that loops) starts afresh."""
        self.pose.clear()
        self.pending.clear()
        self.finder.clear()
        self.last_scan_ns = None
        self.counts["restarts"] += 1

    def _drain(self) -> None:
        """Process the waiting scans and clouds that poses now cover, oldest first."""
        newest = self.pose.newest_ns
        while self.pending and newest is not None:
            msg = self.pending[0][0]
            end = msg.stamp_ns + int(len(msg.ranges) * msg.time_increment * 1e9) if isinstance(msg, LaserScan) \
                else msg.stamp_ns
            if end > newest:
                return
            self.pending.popleft()
            o = self._scan(msg) if isinstance(msg, LaserScan) else self._cloud(msg)
            if o is not None:
                self.publish("detections", Detections(
                    stamp_ns=msg.stamp_ns, frame_id=self.frame, xy=o.xy, kind=o.kind, score=o.score,
                    ids=np.full(len(o.xy), -1, np.int64), length=o.length, width=o.width, heading=o.heading,
                    observed=o.observed))

    def _scan(self, scan: LaserScan) -> Objects | None:
        idx, angles = scan_returns(scan.ranges, scan.angle_min, scan.angle_increment, scan.range_min, scan.range_max)
        if len(idx) == 0:
            self.counts["drops.no_returns"] += 1
            return None
        sensor, matched = self.pose.at(scan, idx, angles)
        if matched:
            self.counts["scans_matched"] += 1
        if sensor is None:
            self.counts["drops.no_pose"] += 1
            return None
        o = self.finder.find(scan.ranges[idx].astype(np.float64), idx, angles, scan.angle_increment,
                             len(scan.ranges), sensor, scan.stamp_ns * 1e-9)
        self.pose.remember(scan.stamp_ns, sensor, o.points)
        return o

    def _cloud(self, cloud: PointCloud) -> Objects | None:
        names = cloud.fields.split(",")
        local = cloud.points[:, [names.index("x"), names.index("y"), names.index("z")]].astype(np.float64)
        local = local[np.isfinite(local).all(axis=1)]
        sensor = self.pose.at_stamp(cloud.stamp_ns)
        if sensor is None or len(local) == 0:
            self.counts["drops.no_pose" if sensor is None else "drops.no_returns"] += 1
            return None
        return self.finder.find_cloud(local, sensor, cloud.stamp_ns * 1e-9)

    def _tick(self) -> None:
        late = self.now_ns() - int(self.params.pose_wait_s * 1e9)
        while self.pending and self.pending[0][1] < late:
            self.pending.popleft()
            self.counts["drops.no_pose"] += 1
        self.counts["clusters.static"] = self.finder.static_clusters
        self.diagnostics.update({k: float(v) for k, v in self.counts.items()})
        self.diagnostics["pending"] = float(len(self.pending))

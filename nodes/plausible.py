"""What a tracked position and velocity can physically be, checked at a node's edge.

The finite check alone lets 3e38 m through, and one such row is enough to make a running mean read
1e36 m or inf for the rest of a run. `Plausible` params bound positions and speeds per node; a row
outside them (NaN and inf included: `abs(nan) <= bound` is False) is dropped and counted by the node.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from msgspec import Meta

from pipeline.runtime.node import NodeParams

__all__ = ["Plausible", "plausible_rows"]


class Plausible(NodeParams):
    """Bounds for the rows a node accepts; the defaults leave room for any map frame on Earth's surface
    near its origin and any road user."""

    max_abs_xy: Annotated[float, Meta(gt=0, le=1e9)] = 1e6   # |x|, |y| bound in meters
    max_speed: Annotated[float, Meta(gt=0, le=1e4)] = 200.0  # |v| bound in m/s


def plausible_rows(xy: np.ndarray, max_abs_xy: float, vxy: np.ndarray | None = None,
                   max_speed: float = 0.0) -> np.ndarray:
    """A mask over the first axis of `xy` ([N,2] or [N,T,2]): every coordinate finite and within
    `max_abs_xy`, and with `vxy` [N,2], a finite speed within `max_speed`."""
    ok: np.ndarray = (np.abs(xy) <= max_abs_xy).all(axis=tuple(range(1, xy.ndim)))
    if vxy is not None:
        v = vxy.astype(np.float64)  # float32 squares of 1e20 would overflow with a warning
        ok &= (v[:, 0] ** 2 + v[:, 1] ** 2) <= max_speed ** 2  # NaN compares False
    return ok

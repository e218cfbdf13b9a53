"""The simulator's car-following rules: the Intelligent Driver Model (IDM), the car ahead in a lane,
and standing obstacles (stop lines, crosswalks, cars of the other street in the junction's box)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["CAR_LEN", "CAR_W", "append_row", "blocking", "idm", "leader_gaps", "obey"]

# IDM constants (Treiber et al.): time headway, max acceleration, comfortable braking, jam gap.
IDM_T, IDM_A, IDM_B, IDM_S0 = 1.5, 1.2, 2.0, 2.0
CAR_LEN, CAR_W = 4.5, 1.9   # a car's footprint (m)


def append_row(columns: dict[str, np.ndarray], row: Mapping[str, object]) -> None:
    """Add one agent to a population kept as column arrays (a value may itself be an array: a row of
    a 2D column)."""
    for k, v in row.items():
        columns[k] = np.concatenate([columns[k], np.asarray(v, columns[k].dtype)[None]])


def idm(v: np.ndarray, v0: np.ndarray, gap: np.ndarray, lead_v: np.ndarray) -> np.ndarray:
    """IDM acceleration at speed `v` (desired `v0`) behind a leader `gap` metres ahead at `lead_v`."""
    s_star = IDM_S0 + np.maximum(0.0, v * IDM_T + v * (v - lead_v) / (2 * np.sqrt(IDM_A * IDM_B)))
    acc: np.ndarray = np.clip(IDM_A * (1 - (v / v0) ** 4 - (s_star / np.maximum(gap, 0.1)) ** 2), -8.0, IDM_A)
    return acc


def leader_gaps(key: np.ndarray, s: np.ndarray, v: np.ndarray, old_key: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Gap to and speed of the car ahead with the same `key` (a lane), by distance travelled `s`. A
    car changing lanes (`old_key` differs from `key`) is in both lanes: it leads and follows in each."""
    rows, keys = np.arange(len(s)), key
    if old_key is not None:
        two = old_key != key
        rows, keys = np.concatenate([rows, rows[two]]), np.concatenate([key, old_key[two]])
    gap = np.full(len(s), np.inf)
    lead_v = v.copy()
    for k in np.unique(keys):
        members = rows[keys == k]
        order = members[np.argsort(s[members], kind="stable")]
        g = s[order[1:]] - s[order[:-1]] - CAR_LEN
        nearer = g < gap[order[:-1]]   # a car in two lanes keeps the nearer leader
        gap[order[:-1][nearer]] = g[nearer]
        lead_v[order[:-1][nearer]] = v[order[1:]][nearer]
    return gap, lead_v


def blocking(along: np.ndarray, across: np.ndarray, other_along: np.ndarray, other_across: np.ndarray) -> np.ndarray:
    """Gap to the nearest car of the other street standing in this car's lane ahead (inf when none):
    cars in the junction's box, whichever street they came from, are obstacles to the other's."""
    if len(other_along) == 0 or len(along) == 0:
        return np.full(len(along), np.inf)
    ahead = other_along[None, :] - along[:, None] - CAR_LEN
    inside = (np.abs(other_across[None, :] - across[:, None]) < CAR_W + 0.3) & (ahead > -CAR_LEN) & (ahead < 40.0)
    return np.where(inside, np.maximum(ahead, 0.1), np.inf).min(axis=1)  # type: ignore[no-any-return]


def obey(gap: np.ndarray, lead_v: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leader, or a standing obstacle `stop` metres ahead (a stop line, a crosswalk) if nearer."""
    nearer = stop < gap
    return np.where(nearer, stop, gap), np.where(nearer, 0.0, lead_v)

"""A constant-velocity Kalman filter over many tracks at once: state (x, y, vx, vy), position measured.

Every function takes the states of all tracks as arrays (`x` [N, 4], `P` [N, 4, 4]) and works on them
in one numpy expression, so the cost per scan does not grow with a Python loop over tracks. Process
noise is white acceleration of spectral density `accel_sigma`^2 (the discrete form of Bar-Shalom's
continuous white-noise model), which makes the filter's speed follow a car that accelerates or brakes
within a few scans without trusting single jumpy positions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["measurement_noise", "pairwise_gate", "predict", "update"]

_ADJUGATE_SIGNS = np.array([[1.0, -1.0], [-1.0, 1.0]])
_EYE4 = np.eye(4)


def predict(x: np.ndarray, P: np.ndarray, dt: float, accel_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """States and covariances moved `dt` seconds ahead."""
    F = _EYE4.copy()
    F[0, 2] = F[1, 3] = dt
    q = accel_sigma ** 2
    a, b, c = q * dt ** 3 / 3, q * dt ** 2 / 2, q * dt
    Q = np.array([[a, 0, b, 0], [0, a, 0, b], [b, 0, c, 0], [0, b, 0, c]])
    return x @ F.T, F @ P @ F.T + Q


def measurement_noise(heading: np.ndarray, var_along: np.ndarray, var_across: np.ndarray) -> np.ndarray:
    """Position covariances [M, 2, 2] with the given variances along and across `heading` (rad)."""
    mean, half = (var_along + var_across) / 2, (var_along - var_across) / 2
    u, v = half * np.cos(2 * heading), half * np.sin(2 * heading)
    return np.array([[mean + u, v], [v, mean - u]]).transpose(2, 0, 1)


def pairwise_gate(y: np.ndarray, P: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance [N, M] of the residuals `y` [N, M, 2] (measurement `z` [M, 2] with
    noise `R` [M, 2, 2] minus each track's predicted position) under the innovation covariance, the
    track's position covariance (from `P`) plus `R`."""
    S = P[:, None, :2, :2] + R[None, :, :, :]                               # [N, M, 2, 2], symmetric
    a, b, d = S[..., 0, 0], S[..., 0, 1], S[..., 1, 1]
    y0, y1 = y[..., 0], y[..., 1]
    return (d * y0 * y0 - 2 * b * y0 * y1 + a * y1 * y1) / (a * d - b * b)  # type: ignore[no-any-return]


def update(x: np.ndarray, P: np.ndarray, z: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tracks `x` [K, 4], `P` [K, 4, 4] corrected by their measurements `z` [K, 2], `R` [K, 2, 2]."""
    S = P[:, :2, :2] + R
    det = S[:, 0, 0] * S[:, 1, 1] - S[:, 0, 1] * S[:, 1, 0]
    # S is symmetric (to rounding): its inverse [[d, -b], [-b, a]] / det is S flipped on both axes, signed
    K = P[:, :, :2] @ (S[:, ::-1, ::-1] * (_ADJUGATE_SIGNS / det[:, None, None]))   # [K, 4, 2]
    x = x + (K @ (z - x[:, :2])[:, :, None])[:, :, 0]
    P = P - K @ P[:, :2, :]
    return x, (P + P.transpose(0, 2, 1)) / 2    # kept symmetric against rounding

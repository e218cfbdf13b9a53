"""PNG plots of predicted vs true paths for `drivecast eval --plot DIR` (matplotlib, Agg backend).

Each panel is one evaluation window in world coordinates (metres), titled with that window's ADE/FDE
for each predictor, so a reader can tell a typical panel from an outlier; a line above the panels
says how they were chosen (a seeded random draw among the scene's windows, not the best or worst).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.baselines import displacement_errors

__all__ = ["STYLES", "panel_errors", "plot_windows", "selection_line"]

# name -> (colour, line style, legend label, short name in panel titles)
STYLES = {"model": ("tab:blue", "-", "model (window)", "model"),
          "stream": ("tab:blue", "--", "model (streaming)", "stream"),
          "cv": ("tab:red", ":", "constant velocity", "CV")}


def panel_errors(preds: dict[str, np.ndarray], truth: np.ndarray, i: int) -> str:
    """`model 0.31/0.62  CV 0.40/0.85 m`: window `i`'s ADE/FDE for each predictor, in metres."""
    parts = []
    for name, p in preds.items():
        ade, fde = displacement_errors(p[i:i + 1], truth[i:i + 1])
        parts.append(f"{STYLES.get(name, ('', '', '', name))[3]} {ade[0]:.2f}/{fde[0]:.2f}")
    return "ADE/FDE " + "  ".join(parts) + " m"


def selection_line(group: str, shown: int, total: int, seed: int, horizon: int, dt_s: float | None) -> str:
    """The line above a figure: which windows these are and how they were picked."""
    ahead = f"{horizon} steps" + (f" = {horizon * dt_s:g} s" if dt_s else "")
    return (f"{group}: {shown} of {total} windows, drawn uniformly at random (seed {seed}), not chosen by "
            f"error; prediction {ahead} ahead; axes in metres (world frame)")


def plot_windows(es: Any, preds: dict[str, np.ndarray], out: Path, per_scene: int = 6, seed: int = 0,
                 dt_s: float | None = None) -> list[Path]:
    """One PNG per scene group: `per_scene` windows drawn at random (seeded), each in its own panel.

    Observed (black), truth (green), model window protocol (blue), streaming (blue dashed), CV (red).
    `dt_s`, when given, turns the horizon into seconds in the figure's selection line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for group in sorted(set(es.scene.tolist())):
        idx = np.nonzero(es.scene == group)[0]
        pick = rng.choice(idx, size=min(per_scene, len(idx)), replace=False)
        cols = min(3, len(pick))
        rows = int(np.ceil(len(pick) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows + 0.4), squeeze=False)
        for ax, i in zip(axes.flat, pick, strict=False):
            ax.plot(*es.obs[i].T, "k.-", label="observed")
            ax.plot(*np.vstack([es.obs[i][-1:], es.truth[i]]).T, "g.-", label="truth")
            for name, p in preds.items():
                color, ls, label, _ = STYLES.get(name, ("gray", "-", name, name))
                ax.plot(*np.vstack([es.obs[i][-1:], p[i]]).T, color=color, ls=ls, label=label)
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel("x (m)", fontsize=8)
            ax.set_ylabel("y (m)", fontsize=8)
            ax.tick_params(labelsize=7)
            name, agent, end = es.window_ref[i]
            ax.set_title(f"{name} agent {agent} t={end}\n{panel_errors(preds, es.truth, i)}", fontsize=7)
        for ax in axes.flat[len(pick):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(selection_line(str(group), len(pick), len(idx), seed, es.truth.shape[1], dt_s), fontsize=8)
        fig.tight_layout()
        path = out / f"{group}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written

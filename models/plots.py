"""PNG plots of predicted vs true paths for `drivecast eval --plot DIR` (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_windows"]


def plot_windows(es: Any, preds: dict[str, np.ndarray], out: Path, per_scene: int = 6, seed: int = 0) -> list[Path]:
    """One PNG per scene group: `per_scene` windows drawn at random (seeded), each in its own panel.

    Observed (black), truth (green), model window protocol (blue), streaming (blue dashed), CV (red).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    styles = {"model": ("tab:blue", "-", "model (window)"), "stream": ("tab:blue", "--", "model (streaming)"),
              "cv": ("tab:red", ":", "constant velocity")}
    for group in sorted(set(es.scene.tolist())):
        idx = np.nonzero(es.scene == group)[0]
        pick = rng.choice(idx, size=min(per_scene, len(idx)), replace=False)
        cols = min(3, len(pick))
        rows = int(np.ceil(len(pick) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
        for ax, i in zip(axes.flat, pick, strict=False):
            ax.plot(*es.obs[i].T, "k.-", label="observed")
            ax.plot(*np.vstack([es.obs[i][-1:], es.truth[i]]).T, "g.-", label="truth")
            for name, p in preds.items():
                color, ls, label = styles.get(name, ("gray", "-", name))
                ax.plot(*np.vstack([es.obs[i][-1:], p[i]]).T, color=color, ls=ls, label=label)
            ax.set_aspect("equal", adjustable="datalim")
            name, agent, end = es.window_ref[i]
            ax.set_title(f"{name} agent {agent} t={end}", fontsize=8)
        for ax in axes.flat[len(pick):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{group}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written

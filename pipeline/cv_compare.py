"""The one wording of a model's error against constant velocity (CV), for every table that prints it.

"18% better" when the model's error is 18% below CV's, (CV - model) / CV, and "7% worse" when it is 7%
above: never a bare signed percentage, whose sign one reader takes for a gain and another for a change
of error. The evaluator node, `drivecast eval` and `drivecast fleet eval` all print through `vs_cv`.
"""

from __future__ import annotations

import math

__all__ = ["VS_CV_MEANS", "vs_cv"]

VS_CV_MEANS = ('"18% better" means the model\'s error is 18% below constant velocity\'s, (CV - model) / CV, '
               'and "7% worse" 7% above it')


def vs_cv(model: float, cv: float) -> str:
    """The model's error against constant velocity's, in words: "18% better", "7% worse", "same" (under
    0.5%); against an exact CV (error 0, no percentage of it) "same" or "worse"; "-" for no number."""
    if not (math.isfinite(cv) and math.isfinite(model)):
        return "-"
    if cv <= 0:
        return "same" if model <= 0 else "worse"
    pct = round((cv - model) / cv * 100)
    return "same" if pct == 0 else f"{abs(pct)}% {'better' if pct > 0 else 'worse'}"

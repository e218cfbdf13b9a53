"""Embedded deployment is real: the running default graph never loads torch."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.conftest import REPO, Launched, wait_for


def test_running_default_graph_has_no_torch_loaded(launch: Callable[..., Launched]) -> None:
    g = launch(REPO / "launch.yaml")
    pids = wait_for(g.node_pids, 60, "the default graph's nodes")
    # the predictor has loaded its models and stepped them once it reports predictions
    wait_for(lambda: "ADE/FDE" in g.output(), 60, "the evaluator's first report")
    for name, pid in pids.items():
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in maps or name != "predictor"
        assert "libtorch" not in maps and "/torch/" not in maps, f"{name} loaded torch"
    os.kill(g.proc.pid, signal.SIGINT)
    assert g.wait(timeout=15)[0] == 130

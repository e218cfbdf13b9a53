"""A node whose module import, in the node process (the launcher imports it too, to check the graph),
blocks until the test opens a gate: a node still importing (onnxruntime, a model) when its graph is
stopped. Importable by node processes as tests.gated_import_node."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pipeline.runtime.node import Node

if getattr(sys.modules["__main__"].__spec__, "name", "") == "pipeline.runtime.runner":  # the node, not the launcher
    _BASE = Path(os.environ["DRIVECAST_RUN_DIR"])
    (_BASE / "importing").touch()
    _deadline = time.monotonic() + 30
    while not (_BASE / "gate").exists() and time.monotonic() < _deadline:
        time.sleep(0.01)  # polling interval of a deadline wait


class Gated(Node):
    """Does nothing; it only has to start after its import and stop cleanly."""

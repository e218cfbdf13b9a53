"""Fuzzing: random launch files and random wire messages give clear errors, never crashes or hangs.

`bench/fuzz.py` runs the same properties for longer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph

# Values and keys drawn near the real schema, so that fuzzing reaches deep into validation.
KEYS = st.sampled_from(["name", "nodes", "run", "params", "inputs", "respawn", "required", "machine", "topic",
                        "queue", "depth", "max", "backoff_s", "transport", "kind", "clock", "machines",
                        "security", "keys", "agents", "rate_hz", "tracks", "sim", "printer", "x"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["nodes.sim:TrafficSim", "nodes.printer:TrackPrinter", "sim/tracks",
                                     "block", "latest", "drop_oldest", "tcp", "ipc", "os:system", "a:b"]))
TREES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(KEYS, kids, max_size=5)), max_leaves=25)


def launch_text(tree: object) -> str:
    return yaml.safe_dump(tree)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(KEYS, TREES, max_size=5))
def test_random_launch_files_fail_only_with_config_errors(tmp_path: Path, tree: dict) -> None:
    path = tmp_path / "launch.yaml"
    path.write_text(launch_text(tree))
    try:
        load_graph(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text_fails_only_with_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "launch.yaml"
    path.write_text(text)
    with contextlib.suppress(ConfigError):
        load_graph(path)

"""The house plan, checked: import rules (pyproject's import-linter contracts) and size limits.

The contracts say that pipeline's packages are layered (cli > recordings > runtime > transport >
wire), that pipeline imports nothing of nodes, models or export, that the runtime never imports
torch, and that no package has an import circle. The sizes keep modules and nodes readable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MAX_MODULE_LINES = 400  # in pipeline/ and nodes/
MAX_NODE_CLASS_LINES = 150


def test_import_contracts_hold() -> None:
    # In a process of its own: import-linter reconfigures logging (disabling every existing logger).
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BROKEN" not in r.stdout and "5 kept, 0 broken" in r.stdout, r.stdout


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def test_no_module_in_pipeline_or_nodes_is_over_the_limit() -> None:
    long = {str(p.relative_to(REPO)): n for p in _modules("pipeline", "nodes")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _node_classes(path: Path) -> list[ast.ClassDef]:
    tree = ast.parse(path.read_text())
    return [c for c in tree.body if isinstance(c, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id == "Node" for b in c.bases)]


def test_every_node_class_fits_on_a_screen() -> None:
    classes = {f"{p.relative_to(REPO)}:{c.name}": (c.end_lineno or c.lineno) - c.lineno + 1
               for p in _modules("nodes") for c in _node_classes(p)}
    assert len(classes) >= 7, classes  # the check finds the shipped nodes
    long = {k: n for k, n in classes.items() if n > MAX_NODE_CLASS_LINES}
    assert not long, f"node classes over {MAX_NODE_CLASS_LINES} lines: {long}"

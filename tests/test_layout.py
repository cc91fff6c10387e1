"""The house: imports run one way, from the CLI and demo down to the core and its ground floor.

    cli, demo, testing          users of the public API
    training                    trainer, phases, data, DDP
    methods                     EPFS, OICSR, importance, budgets
    report, export              counting, tables, HTML; saving, loading, ONNX
    core                        the pass alone
    config, errors              the ground floor
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fxprune

PACKAGE = Path(fxprune.__file__).resolve().parent
LAYERS = {"config": 0, "errors": 0, "core": 1, "report": 2, "export": 2, "methods": 3, "training": 4,
          "cli": 5, "demo": 5, "testing": 5}
ABOVE_CORE = [name for name, level in LAYERS.items() if level > LAYERS["core"]]


def _room(module: str) -> str:
    """``fxprune.core.prepare.trace`` -> ``core``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list:
    """Every fxprune module ``path`` imports (at the top or inside functions), with its line."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, node.lineno) for n in names if n.startswith("fxprune.") or n == "fxprune"]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("fxprune")]
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.append((f"<relative import at level {node.level}>", node.lineno))
    return found


def test_importing_the_core_loads_nothing_above_it():
    code = ("import sys, fxprune.core.prepare, fxprune.core.finalize, fxprune.core.rules\n"
            "print('\\n'.join(m for m in sys.modules if m.startswith('fxprune')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    above = [m for m in loaded if _room(m) in ABOVE_CORE]
    assert "fxprune.core.prepare" in loaded and above == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_room_above_its_own(path):
    room = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if room == "__init__":
        return  # the package's front door names everything public
    level = LAYERS[room]
    upward = [(name, line) for name, line in _imports(path)
              if name.startswith("<") or LAYERS.get(_room(name), -1) > level]
    assert upward == [], f"{path.relative_to(PACKAGE)} imports upwards (or relatively): {upward}"


def test_every_room_has_a_level():
    rooms = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert rooms - {"__init__"} == set(LAYERS)

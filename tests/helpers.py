"""Test helpers: the library's own testing tools, and loading a benchmark script as a module."""

import contextlib
import importlib.util
import sys
from pathlib import Path

from fxprune.testing import assert_finalized_equals_masked, outputs, randomize, zero_channels  # noqa: F401

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module, with ``benchmarks/`` on ``sys.path`` meanwhile
    so that it imports its sibling scripts as it does when run."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the script runs
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop(name, None)

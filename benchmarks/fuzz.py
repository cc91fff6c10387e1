"""The long property run (``make fuzz``): random CNNs, then a quarter as many token models, from a
fresh seed that it prints first, so that each run explores new examples and any run can be replayed.

    python benchmarks/fuzz.py --examples 10000 --out out/fuzz.json         # a fresh seed
    python benchmarks/fuzz.py --examples 10000 --seed 1234                  # replay a run

It runs ``pytest tests/test_property.py`` with hypothesis's ``fuzz`` profile (tests/conftest.py),
prints its output as it comes, and writes a JSON record: the seed, the examples each property ran
(from ``--hypothesis-show-statistics``), the wall time, pass or fail, and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASE = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
TEST = re.compile(r"^tests/test_property\.py::(\w+):\s*$")


def command(examples: int, seed: int) -> tuple[list, dict]:
    """The pytest command and environment of one run: no test may take longer than 2 s an example."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="fuzz", FXPRUNE_PROPERTY_EXAMPLES=str(examples))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
           "--hypothesis-show-statistics", f"--hypothesis-seed={seed}", f"--timeout={max(600, 2 * examples)}",
           "tests/test_property.py"]
    return cmd, env


def examples_run(output: str) -> dict:
    """Per property, the examples of every phase: passing, failing, invalid (hypothesis's statistics)."""
    runs, test = {}, None
    for line in output.splitlines():
        m = TEST.match(line.strip())
        if m:
            test = m.group(1)
            runs[test] = {"passing": 0, "failing": 0, "invalid": 0}
            continue
        m = PHASE.search(line)
        if m and test:
            for key, value in zip(("passing", "failing", "invalid"), m.groups()):
                runs[test][key] += int(value)
    return runs


def run(examples: int, seed: int) -> dict:
    cmd, env = command(examples, seed)
    print(f"fuzz seed: {seed}  (replay: python benchmarks/fuzz.py --examples {examples} --seed {seed})", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        if not line.startswith("DEBUG "):
            sys.stdout.write(line)
            sys.stdout.flush()
        lines.append(line)
    returncode = proc.wait()
    wall = time.perf_counter() - start
    import hypothesis
    import torch

    return {"seed": seed, "examples_requested": {"cnn": examples, "token": max(20, examples // 4)},
            "examples_run": examples_run("".join(lines)), "wall_s": round(wall, 1), "passed": returncode == 0,
            "returncode": returncode, "command": " ".join(["HYPOTHESIS_PROFILE=fuzz",
                                                           f"FXPRUNE_PROPERTY_EXAMPLES={examples}", *cmd[2:]]),
            "torch": torch.__version__, "hypothesis": hypothesis.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch_threads": int(os.environ.get("FXPRUNE_TEST_THREADS", "2")),
            "commit": _commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10000, help="CNN examples (token models: a quarter)")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "fuzz.json", help="where the JSON record goes")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    record = run(args.examples, seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"fuzz seed {seed}: {'passed' if record['passed'] else 'FAILED'} in {record['wall_s']:.0f} s; "
          f"examples run {record['examples_run']}; record in {args.out}", flush=True)
    return record["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/cifar10.py end to end on a tiny fake CIFAR-10: rows, their reuse, and one dense start per seed."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import BENCHMARKS, benchmark_script


@pytest.fixture(scope="module")
def cifar10():
    with benchmark_script("cifar10") as module:
        yield module


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A torchvision-layout CIFAR-10 root with 20 random images per batch file; the decode cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [i % 10 for i in range(20)]}
        (root / name).write_bytes(pickle.dumps(entry))
    return tmp_path


def _run(cifar10, data, out, *extra, methods=("dense", "l1")):
    flags = ["--data", str(data), "--model", "resnet20", "--methods", *methods, "--dense-epochs", "1",
             "--method-epochs", "1", "--sparse-epochs", "1", "--target", "0.3", "--threads", "1",
             "--out", str(out), "--no-progress"]
    assert cifar10.main(flags + list(extra)) == 0
    return json.loads((out / "resnet20" / "summary.json").read_text())


def test_dense_per_seed_trains_one_start_per_seed_and_records_it(cifar10, fake_cifar):
    out = fake_cifar / "out"
    summary = _run(cifar10, fake_cifar, out, "--seeds", "1", "2", "--dense-per-seed")
    assert sorted(p.name for p in (out / "resnet20").glob("dense-*.pt")) == [
        "dense-resnet20-1-seed1.pt", "dense-resnet20-1-seed2.pt"]
    for seed in (1, 2):
        saved = json.loads((out / "resnet20" / f"seed{seed}" / "results.json").read_text())
        assert saved["dense_seed"] == seed and {r["method"] for r in saved["rows"]} == {"dense", "l1"}
    l1 = next(r for r in summary["rows"] if r["method"] == "l1")
    assert l1["macs_reduction"] >= 0.29 and l1["vs_dense"] is not None

    # the same seeds with the shared start (seed 0's) must not reuse rows that began elsewhere
    before = (out / "resnet20" / "seed1" / "results.json").read_text()
    _run(cifar10, fake_cifar, out, "--seeds", "1")
    assert (out / "resnet20" / "dense-resnet20-1.pt").exists()
    assert json.loads((out / "resnet20" / "seed1" / "results.json").read_text())["dense_seed"] == 0
    assert (out / "resnet20" / "seed1" / "results.json").read_text() != before


def test_finished_rows_are_reused(cifar10, fake_cifar):
    out = fake_cifar / "out"
    summary = _run(cifar10, fake_cifar, out, "--seeds", "0", methods=("dense", "epfs", "slimming"))
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["epfs"]["macs_reduction"] >= 0.29 and rows["slimming"]["macs_reduction"] >= 0.29
    path = out / "resnet20" / "seed0" / "results.json"
    first = path.read_text()
    _run(cifar10, fake_cifar, out, "--seeds", "0", methods=("dense", "epfs", "slimming"))
    assert path.read_text() == first


def test_report_tables_seeds_that_ran_as_separate_processes(cifar10, fake_cifar):
    out = fake_cifar / "out"
    for seed in ("1", "2"):  # as a GPU run does: one process per seed, all writing under one --out
        _run(cifar10, fake_cifar, out, "--seeds", seed, "--dense-per-seed")
    flags = ["--data", "/nonexistent", "--model", "resnet20", "--dense-epochs", "1", "--method-epochs", "1",
             "--sparse-epochs", "1", "--target", "0.3", "--out", str(out), "--dense-per-seed", "--report"]
    assert cifar10.main(flags + ["--seeds", "1", "2", "3"]) == 0  # trains nothing, so needs no data; seed 3 never ran
    summary = json.loads((out / "resnet20" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    assert {r["method"]: r["seeds"] for r in summary["rows"]} == {"dense": [1, 2], "l1": [1, 2]}
    # rows from another dense start are not this table's
    assert cifar10.main([f for f in flags if f != "--dense-per-seed"] + ["--seeds", "1", "2"]) == 1


def test_seeds_script_runs_each_seed_in_its_own_process_then_tables_them_all(cifar10, fake_cifar):
    _run(cifar10, fake_cifar, fake_cifar / "warm", "--seeds", "0", methods=("dense",))  # decodes once
    out, logs = fake_cifar / "out", fake_cifar / "logs"
    env = {**os.environ, "PYTHON": sys.executable, "JOBS": "2", "LOG_DIR": str(logs)}
    flags = ["--data", str(fake_cifar), "--model", "resnet20", "--methods", "dense", "l1", "--dense-epochs", "1",
             "--method-epochs", "1", "--sparse-epochs", "1", "--target", "0.3", "--dense-per-seed", "--out", str(out)]
    done = subprocess.run(["bash", str(BENCHMARKS / "cifar10_seeds.sh"), "1 2 3", *flags], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["seed1.log", "seed2.log", "seed3.log"]
    summary = json.loads((out / "resnet20" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3]
    assert {r["method"]: r["seeds"] for r in summary["rows"]} == {"dense": [1, 2, 3], "l1": [1, 2, 3]}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_train_on_cuda(cifar10, fake_cifar):
    summary = _run(cifar10, fake_cifar, fake_cifar / "out", "--seeds", "0", "--device", "cuda",
                   methods=("dense", "epfs", "l1", "slimming"))
    assert {r["method"] for r in summary["rows"]} == {"dense", "epfs", "l1", "slimming"}
    assert summary["machine"]["cuda"] == torch.cuda.get_device_name()

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


# 20 of the 100 fake training images held out; one value per grid unless a test gives more
SMALL = ["--validation", "20", "--calib-images", "16", "--mask-l1", "0.003", "--oicsr-lam", "5e-4",
         "--slim-lam", "1e-4", "--block-l1", "0.01", "--ridge", "0.01"]


def _run(cifar10, data, out, *extra, methods=("dense", "l1")):
    flags = ["--data", str(data), "--model", "resnet20", "--methods", *methods, "--dense-epochs", "1",
             "--method-epochs", "1", "--sparse-epochs", "1", "--target", "0.3", "--threads", "1",
             "--out", str(out), "--no-progress", *SMALL]
    assert cifar10.main(flags + list(extra)) == 0
    return json.loads((out / "resnet20" / "summary.json").read_text())


def test_dense_per_seed_trains_one_start_per_seed_and_records_it(cifar10, fake_cifar):
    out = fake_cifar / "out"
    summary = _run(cifar10, fake_cifar, out, "--seeds", "1", "2", "--dense-per-seed")
    assert sorted(p.name for p in (out / "resnet20").glob("dense-*.pt")) == [
        "dense-resnet20-1-val20-seed1.pt", "dense-resnet20-1-val20-seed2.pt"]
    for seed in (1, 2):
        saved = json.loads((out / "resnet20" / f"seed{seed}" / "results.json").read_text())
        assert saved["dense_seed"] == seed and {r["method"] for r in saved["rows"]} == {"dense", "l1"}
    l1 = next(r for r in summary["rows"] if r["method"] == "l1")
    assert l1["macs_reduction"] >= 0.29 and l1["vs_dense"] is not None

    # the same seeds with the shared start (seed 0's) must not reuse rows that began elsewhere
    before = (out / "resnet20" / "seed1" / "results.json").read_text()
    _run(cifar10, fake_cifar, out, "--seeds", "1")
    assert (out / "resnet20" / "dense-resnet20-1-val20.pt").exists()
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
             "--sparse-epochs", "1", "--target", "0.3", "--out", str(out), "--dense-per-seed", "--report", *SMALL]
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
             "--method-epochs", "1", "--sparse-epochs", "1", "--target", "0.3", "--dense-per-seed", "--out", str(out),
             *SMALL]
    done = subprocess.run(["bash", str(BENCHMARKS / "cifar10_seeds.sh"), "1 2 3", *flags], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["seed1.log", "seed2.log", "seed3.log"]
    summary = json.loads((out / "resnet20" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2, 3]
    assert {r["method"]: r["seeds"] for r in summary["rows"]} == {"dense": [1, 2, 3], "l1": [1, 2, 3]}


def test_grids_choose_on_validation_and_every_pruned_row_is_read_before_fine_tuning(cifar10, fake_cifar):
    out = fake_cifar / "out"
    summary = _run(cifar10, fake_cifar, out, "--seeds", "0", "--mask-l1", "0.001", "0.01", "--ridge", "0.01", "1.0",
                   methods=("dense", "l1", "l1+rec", "epfs+rec"))
    grid = json.loads((out / "resnet20" / "grid.json").read_text())["methods"]
    assert set(grid) == {"l1", "epfs"}
    assert set(grid["epfs"]["validation_top1"]) == {"0.001", "0.01"} and grid["epfs"]["value"] in (0.001, 0.01)
    assert set(grid["l1"]["ridge_validation_top1"]) == {"0.01", "1.0"}
    rows = {r["method"]: r for r in summary["per_seed"]["0"].values()}
    for method in ("l1", "l1+rec", "epfs+rec"):
        assert set(rows[method]["no_finetune"]) == {"recalibrated", "reconstructed"}
        assert rows[method]["hyperparameters"]["ridge"] == grid[method.removesuffix("+rec")]["ridge"]
        assert rows[method]["no_finetune"]["reconstructed"]["macs"] == rows[method]["macs"]
    assert rows["l1+rec"]["reconstruction"]["sites"] > 0
    table = {r["method"]: r for r in summary["rows"]}
    assert table["l1+rec"]["vs_l1"]["n"] == 1 and table["l1+rec"]["best_baseline"] == "l1"
    assert summary["dense_starts"]["0"]["val"] is not None and (out / "resnet20" / "accuracy_vs_macs.png").exists()


def test_epfs_blocks_grid_is_over_the_gates_l1_and_its_rows_remove_whole_blocks(cifar10, fake_cifar):
    out = fake_cifar / "out"
    summary = _run(cifar10, fake_cifar, out, "--seeds", "0", "--block-l1", "0.003", "0.03",
                   methods=("dense", "epfs-blocks"))
    grid = json.loads((out / "resnet20" / "grid.json").read_text())["methods"]["epfs-blocks"]
    assert grid["hyperparameter"] == "block_l1" and set(grid["validation_top1"]) == {"0.003", "0.03"}
    row = summary["per_seed"]["0"]["epfs-blocks"]
    assert row["budget"]["branches"] and not row["budget"]["channels"]
    assert row["macs_reduction"] >= 0.29


def test_validation_is_held_out_of_training_the_same_way_for_every_run_seed(fake_cifar):
    from benchmarks.cifar_data import cifar10_splits

    a, b = (cifar10_splits(fake_cifar, 16, validation=20, seed=s) for s in (0, 3))
    assert len(a.val.labels) == 20 and len(a.train.labels) == 80
    assert torch.equal(a.val_indices, b.val_indices)
    held, trained = ({image.numpy().tobytes() for image in split.images} for split in (a.val, a.train))
    assert len(held) == 20 and not held & trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rows_train_on_cuda(cifar10, fake_cifar):
    summary = _run(cifar10, fake_cifar, fake_cifar / "out", "--seeds", "0", "--device", "cuda",
                   methods=("dense", "epfs", "l1", "slimming"))
    assert {r["method"] for r in summary["rows"]} == {"dense", "epfs", "l1", "slimming"}
    assert summary["machine"]["cuda"] == torch.cuda.get_device_name()

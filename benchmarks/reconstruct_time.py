"""How long ``fxprune.reconstruct`` takes on a CIFAR model, on this machine, with nothing else running.

Reconstruction's cost does not depend on what the weights or images are, only on their shapes,
so this needs no data: a CIFAR ResNet-20 with random weights (BatchNorm statistics made
informative), half its MACs removed by one-shot l1 (``prune_to_macs``, as the CIFAR-10
benchmark cuts), and 1,024 random 32x32 images in batches of 128, as the CIFAR benchmark's
calibration set. Each measurement is a fresh prepared model; the median of ``--repeats``
runs is reported, per thread count, the runs taken in turns.

    python benchmarks/reconstruct_time.py --out out/reconstruct     # writes reconstruct.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxprune  # noqa: E402
from benchmarks.cifar_models import build_model  # noqa: E402
from fxprune.report.machine import machine  # noqa: E402
from fxprune.testing import randomize  # noqa: E402


def one_run(model_name: str, images: int, batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = randomize(build_model(model_name).eval())
    pm = fxprune.prepare(model, torch.randn(1, 3, 32, 32))
    fxprune.prune_to_macs(pm, 0.5, fxprune.channel_importance(pm, "l1"))
    calib = [torch.randn(batch, 3, 32, 32) for _ in range(images // batch)]
    t0 = time.perf_counter()
    result = fxprune.reconstruct(pm, calib)
    seconds = time.perf_counter() - t0
    fxprune.finalize(pm)  # still exact
    return {"seconds": seconds, "reported_seconds": result.seconds, "sites": len(result.fits),
            "passes": result.passes, "images": result.images, "statistics_bytes": result.statistics_bytes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="out/reconstruct")
    args = parser.parse_args(argv)
    runs: dict = {t: [] for t in args.threads}
    for _ in range(args.repeats):  # in turns, so a slow spell of the machine touches every setting
        for t in args.threads:
            runs[t].append(one_run(args.model, args.images, args.batch, t))
            print(f"{t} thread(s): {runs[t][-1]['seconds']:.1f} s", flush=True)
    result = {"model": args.model, "images": args.images, "batch": args.batch, "target": "dense", "ridge": 1e-2,
              "median_seconds": {str(t): statistics.median(r["seconds"] for r in rs) for t, rs in runs.items()},
              "runs": {str(t): rs for t, rs in runs.items()},
              "command": " ".join(["python benchmarks/reconstruct_time.py", *(argv or sys.argv[1:])]),
              "machine": machine()}
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "reconstruct.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

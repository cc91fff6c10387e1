"""Prepare, prune and finalize a Llama with the shapes of a 1-billion-parameter model, on the CPU.

The model is built from a config with random weights (float32, nothing downloaded): hidden
size 2048, 16 layers, 32 query heads over 8 key/value heads, MLP width 8192, a vocabulary of
128,256 tied to the output head (Llama 3.2 1B's shapes). It is captured with torch.export,
half of each channel group is pruned (l1, local: whole key/value heads with their query
heads, MLP channels), and finalized with the exactness check. Reported: each stage's wall
time, the process's peak resident memory beside the model's own bytes, and the result's size.

    python benchmarks/llama.py --out out/llama            # writes out/llama/llama.json
    python benchmarks/llama.py --layers 2 --out /tmp/l2   # a quick run on fewer layers

The targets: prepare + prune + finalize in at most 3 minutes, peak memory at most 3x the
model's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import fxprune
from fxprune.report.machine import machine

SHAPES = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
          "vocab_size": 128256, "tie_word_embeddings": True, "max_position_embeddings": 8192}


def peak_rss_bytes() -> int:
    """The process's peak resident memory so far (VmHWM)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def run(layers: int, length: int) -> dict:
    import transformers

    config = transformers.LlamaConfig(num_hidden_layers=layers, **SHAPES)
    start = time.perf_counter()
    model = transformers.LlamaForCausalLM(config).eval()
    built = time.perf_counter() - start
    model_bytes = sum(t.numel() * t.element_size() for t in {id(p): p for p in model.parameters()}.values())
    example = {"input_ids": torch.randint(0, SHAPES["vocab_size"], (1, length)),
               "attention_mask": torch.ones(1, length, dtype=torch.long), "use_cache": False}
    before = rss_bytes()
    times = {}
    t0 = time.perf_counter()
    pm = fxprune.prepare(model, example)
    times["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    times["prune_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    small = fxprune.finalize(pm)
    times["finalize_s"] = time.perf_counter() - t0
    total = sum(times.values())
    small_bytes = sum(t.numel() * t.element_size() for t in {id(p): p for p in small.parameters()}.values())
    attention = small.get_submodule("model.layers.0.self_attn")
    peak = peak_rss_bytes()
    return {
        "layers": layers, "length": length, "config": {**SHAPES, "num_hidden_layers": layers},
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "model_bytes": model_bytes, "build_s": built, **times, "total_s": total,
        "rss_before_prepare_bytes": before, "peak_rss_bytes": peak, "peak_over_model": peak / model_bytes,
        "capture": fxprune.report.summary(pm)["capture"], "equivalence_error": small.fxprune_equivalence_error,
        "finalized_bytes": small_bytes, "finalized_over_model": small_bytes / model_bytes,
        "layer0_q_k_v_out": [getattr(attention, f"{p}_proj").weight.shape[0] for p in "qkv"],
        "layer0_mlp": small.get_submodule("model.layers.0.mlp.gate_proj").weight.shape[0],
        "targets": {"total_s_at_most": 180, "peak_over_model_at_most": 3.0},
        "met": {"time": total <= 180, "memory": peak / model_bytes <= 3.0},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16, help="decoder layers (16: the 1B model)")
    parser.add_argument("--length", type=int, default=16, help="example sequence length")
    parser.add_argument("--out", type=Path, default=Path("out/llama"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = run(args.layers, args.length)
    record["command"] = " ".join(["python benchmarks/llama.py", *(argv if argv is not None else sys.argv[1:])])
    record["machine"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llama.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{record['parameters'] / 1e9:.2f}B parameters ({record['model_bytes'] / 2**30:.2f} GiB): "
          f"prepare {record['prepare_s']:.1f} s, prune {record['prune_s']:.1f} s, "
          f"finalize {record['finalize_s']:.1f} s "
          f"(total {record['total_s']:.1f} s); peak memory {record['peak_rss_bytes'] / 2**30:.2f} GiB "
          f"= {record['peak_over_model']:.2f}x the model; finalized {record['finalized_over_model']:.2f}x its bytes, "
          f"check error {record['equivalence_error']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

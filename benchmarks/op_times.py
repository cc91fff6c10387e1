"""Where a pruned model's time goes: CPU time per kind of op, before and after pruning.

The zoo's latency efficiency (speed-up x MACs after / MACs before) stays below 1. This
splits a forward pass into kinds of op with ``torch.profiler`` (self time, so nested
aten calls are not counted twice) and says, per kind, how much faster the model pruned
as the zoo prunes it (fxprune, l1, ratio 0.5, the layers that produce the outputs left
alone) runs it. Convolutions and matrix products shrink with the MACs; the kinds that
shrink less are what holds efficiency down.

    python benchmarks/op_times.py resnet50 mobilenet_v2 regnet_x_1_6gf --batch 32
    python benchmarks/op_times.py resnet50 --batch 32 --channels-last   # as zoo.py --channels-last

Prints one table per model and the MACs ratio; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tabulate import tabulate
from torch.profiler import ProfilerActivity, profile

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_ROOT))

from zoo import RATIO, build  # noqa: E402  (a sibling script, as zoo.py imports zoo_plot)

import fxprune  # noqa: E402

# aten op -> kind; ops not named here are "other"
KINDS = {
    "convolution": ("mkldnn_convolution", "_convolution", "convolution", "conv2d", "thnn_conv2d",
                    "_slow_conv2d_forward", "_nnpack_spatial_convolution", "conv_depthwise2d", "_mkldnn_convolution"),
    "matmul": ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu"),
    "batch norm": ("native_batch_norm", "_batch_norm_impl_index", "batch_norm", "_native_batch_norm_legit_no_training"),
    "activation": ("relu", "relu_", "clamp_min", "clamp_min_", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
                   "silu", "silu_", "sigmoid", "gelu", "hardsigmoid", "hardsigmoid_", "clamp", "clamp_"),
    "add / mul": ("add", "add_", "mul", "mul_"),
    "pooling": ("max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "avg_pool2d", "mean",
                "_adaptive_avg_pool2d", "mkldnn_max_pool2d"),
    "layout and copies": ("cat", "copy_", "contiguous", "clone", "empty", "view", "reshape", "flatten", "permute",
                          "transpose", "as_strided", "_reshape_alias", "t", "expand", "slice", "select", "split",
                          "chunk", "to", "_to_copy", "empty_strided", "resize_", "narrow", "unsafe_view"),
}
_KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def kind_times(model, x: torch.Tensor, repeats: int) -> dict:
    """kind of op -> self CPU seconds per forward pass, the mean over ``repeats`` profiled passes."""
    with torch.inference_mode():
        for _ in range(2):
            model(x)  # warm-up: first calls pick kernels and allocate
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model(x)
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        kind = _KIND_OF.get(event.key[len("aten::"):], "other")
        times[kind] = times.get(kind, 0.0) + event.self_cpu_time_total / 1e6 / repeats
    return times


def pruned(model, x: torch.Tensor):
    """The model pruned as benchmarks/zoo.py prunes it."""
    pm = fxprune.prepare(model, x[:1])
    fxprune.prune_by_importance(pm, RATIO, importance="l1", scope="local")
    return fxprune.finalize(pm).eval()


def breakdown(name: str, batch: int, repeats: int, size: int, channels_last: bool = False) -> dict:
    model = build(name)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    small = pruned(model, x)
    macs = fxprune.count(model, x[:1]).macs, fxprune.count(small, x[:1]).macs
    if channels_last:  # both models' 4-d weights and the input, as in zoo.py --channels-last
        model, small = (m.to(memory_format=torch.channels_last) for m in (model, small))
        x = x.contiguous(memory_format=torch.channels_last)
    before, after = kind_times(model, x, repeats), kind_times(small, x, repeats)
    return {"model": name, "batch": batch, "layout": "channels_last" if channels_last else "contiguous",
            "macs_ratio": macs[0] / macs[1], "before_s": before, "after_s": after}


def table(result: dict) -> str:
    before, after = result["before_s"], result["after_s"]
    total_b, total_a = sum(before.values()), sum(after.values())
    rows = []
    for kind in sorted(before, key=before.get, reverse=True):
        b, a = before[kind], after.get(kind, 0.0)
        rows.append([kind, f"{1e3 * b:.1f}", f"{100 * b / total_b:.0f}%", f"{1e3 * a:.1f}", f"{100 * a / total_a:.0f}%",
                     f"{b / a:.2f}" if a else "-"])
    rows.append(["all", f"{1e3 * total_b:.1f}", "100%", f"{1e3 * total_a:.1f}", "100%", f"{total_b / total_a:.2f}"])
    head = (f"{result['model']}, batch {result['batch']}, {result['layout']}: MACs {result['macs_ratio']:.2f}x fewer, "
            f"profiled time {total_b / total_a:.2f}x less (efficiency {total_b / total_a / result['macs_ratio']:.2f})")
    return head + "\n" + tabulate(rows, headers=["kind", "ms before", "share", "ms after", "share", "faster by"],
                                  tablefmt="github")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="profiled forward passes per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="weights and input in channels_last memory format")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        results.append(breakdown(name, args.batch, args.repeats, args.size, args.channels_last))
        print(table(results[-1]) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

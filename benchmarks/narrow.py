"""How much of a MACs cut a runtime turns into speed when nothing is lost to pruning.

torchvision builds some models at two widths: MobileNet-V2 at ``width_mult`` 0.5, MNASNet
0.5 beside 1.0, ShuffleNet-V2 x1.0 beside x2.0, ResNet-50 beside Wide-ResNet-50-2 (half the
bottleneck width), and, through the configuration helpers its constructors use,
EfficientNet-B0 and MobileNet-V3-Large at ``width_mult`` 0.5. The narrow model is what a
perfect channel pruner could produce at those widths: designed so, with channel counts
rounded to multiples of 8, and nothing left of the wide model. Its latency efficiency
against the wide one (speed-up x MACs after / MACs before, as in ``zoo.py``) is what the
runtime gives a model that much smaller, whoever made it.

Beside it, the wide model pruned by fxprune as ``zoo.py`` prunes (l1, the same ratio 0.5
in every group, the output layer left alone), and again with ``--round-to`` (8, the
multiple torchvision rounds its widths to), all timed in the same rounds. Where the narrow
model falls as far short of 1.0 as the pruned one, what limits the efficiency is the
runtime, not the pruner.

    python benchmarks/narrow.py --out /tmp/narrow --channels-last --onnxruntime

Every model is timed plain and in each deployment variant asked for (``deploy.py``),
the wide one too, at ``--batch`` (32) on a 224-pixel input with ``--threads`` (2).
Writes ``narrow.json`` and ``narrow.md`` (table and medians) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torchvision
from tabulate import tabulate

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_ROOT))

from deploy import add_timing_arguments, check_timing_arguments, deployed  # noqa: E402
from zoo import RATIO, against_dense, run_meta, time_batch  # noqa: E402
from zoo_plot import VARIANTS, variant  # noqa: E402

import fxprune  # noqa: E402
from fxprune.testing import randomize  # noqa: E402

tv = torchvision.models


def _efficientnet_b0_half():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=0.5, depth_mult=1.0)
    return EfficientNet(setting, dropout=0.2, last_channel=last_channel)


def _mobilenet_v3_large_half():
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    return MobileNetV3(*_mobilenet_v3_conf("mobilenet_v3_large", width_mult=0.5))


# the wide model -> (how to build it, how to build its narrow version, what the narrow one is)
PAIRS = {
    "mobilenet_v2": (tv.mobilenet_v2, lambda: tv.mobilenet_v2(width_mult=0.5), "width_mult=0.5"),
    "mnasnet1_0": (tv.mnasnet1_0, tv.mnasnet0_5, "mnasnet0_5"),
    "shufflenet_v2_x2_0": (tv.shufflenet_v2_x2_0, tv.shufflenet_v2_x1_0, "shufflenet_v2_x1_0"),
    "efficientnet_b0": (tv.efficientnet_b0, _efficientnet_b0_half, "width_mult=0.5"),
    "mobilenet_v3_large": (tv.mobilenet_v3_large, _mobilenet_v3_large_half, "width_mult=0.5"),
    "wide_resnet50_2": (tv.wide_resnet50_2, tv.resnet50, "resnet50 (half the bottleneck width)"),
}


def labels(round_to: int) -> dict:
    """The small models timed against the wide one: label -> what it is."""
    out = {"narrow": "torchvision's narrow model", "fxprune": "fxprune's pruned wide model"}
    if round_to:
        out[f"fxprune_round{round_to}"] = f"the same with round_to={round_to}"
    return out


def pruned(wide: torch.nn.Module, x: torch.Tensor, round_to: int) -> torch.nn.Module:
    """``wide`` pruned as ``zoo.py`` prunes it, checked by finalize."""
    pm = fxprune.prepare(wide, x)
    fxprune.prune_by_importance(pm, RATIO, importance="l1", scope="local", round_to=round_to or None)
    return fxprune.finalize(pm)


def measure_pair(name: str, args) -> dict:
    """MACs, latency, speed-up and efficiency of the narrow model and of fxprune's, against the wide one."""
    torch.manual_seed(0)
    build_wide, build_narrow, narrow_is = PAIRS[name]
    wide, narrow = randomize(build_wide().eval()), randomize(build_narrow().eval())
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    models = {"before": wide, "narrow": narrow, "fxprune": pruned(wide, x, 0)}
    if args.round_to:
        models[f"fxprune_round{args.round_to}"] = pruned(wide, x, args.round_to)
    macs = {label: fxprune.count(m, x).macs for label, m in models.items()}
    record = {"model": name, "narrow_is": narrow_is, "batch": args.batch, "macs": macs}
    models.update(deployed(models, record, args))
    errors = record.setdefault("latency_errors", {})
    seconds = time_batch(models, args.batch, args.size, args, errors)
    record["latency_ms"] = {label: 1e3 * t for label, t in seconds.items()}
    record["speedup"], record["efficiency"] = against_dense(
        seconds, lambda label: macs[label.removesuffix(variant(label))], macs["before"])
    return record


def table(records: list, round_to: int) -> str:
    """A row per pair and runtime: each small model's MACs against the wide one's, and its efficiency."""
    rows = []
    for r in records:
        for suffix in [""] + [s for s in VARIANTS if "before" + s in r["latency_ms"]]:
            row = [r["model"], VARIANTS.get(suffix, "PyTorch")]
            for label in labels(round_to):
                row += [r["macs"][label] / r["macs"]["before"], r["efficiency"].get(label + suffix)]
            rows.append(row)
    headers = ["wide model", "runtime"] + [f"{label} {what}" for label in labels(round_to)
                                           for what in ("MACs", "efficiency")]
    return tabulate(rows, headers, floatfmt=".2f", missingval="-", tablefmt="github")


def medians(records: list, round_to: int) -> dict:
    """Median efficiency of each kind of small model, per runtime, over the pairs timed."""
    out = {}
    for suffix in [""] + list(VARIANTS):
        for label in labels(round_to):
            values = [r["efficiency"][label + suffix] for r in records if label + suffix in r["efficiency"]]
            if values:
                out.setdefault(VARIANTS.get(suffix, "PyTorch"), {})[label] = statistics.median(values)
    return out


def medians_text(m: dict, round_to: int) -> str:
    said = labels(round_to)
    return "\n".join(f"median efficiency {runtime}: " + ", ".join(f"{said[k]} {v:.2f}" for k, v in by.items())
                      for runtime, by in m.items())


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"wide models (default: every pair): {', '.join(PAIRS)}")
    parser.add_argument("--out", default="out/narrow", help="folder for the results")
    parser.add_argument("--batch", type=int, default=32, help="batch size timed")
    parser.add_argument("--size", type=int, default=224, help="input size")
    parser.add_argument("--round-to", type=int, default=8,
                        help="also prune with fxprune's round_to, as torchvision rounds its widths (0: not)")
    add_timing_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.models if name not in PAIRS]
    if unknown:
        parser.error(f"no narrow version of {', '.join(unknown)}; the pairs: {', '.join(PAIRS)}")
    check_timing_arguments(parser, args)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.models or PAIRS:
        records.append(measure_pair(name, args))
        print(name, json.dumps({k: round(v, 2) for k, v in records[-1]["efficiency"].items()}), flush=True)
    meta = run_meta(args, batch=args.batch, size=args.size)
    m = medians(records, args.round_to)
    (out / "narrow.json").write_text(json.dumps({"meta": meta, "medians": m, "records": records}, indent=1))
    text = f"{table(records, args.round_to)}\n\n{medians_text(m, args.round_to)}"
    (out / "narrow.md").write_text(f"{text}\n\n{json.dumps(meta)}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

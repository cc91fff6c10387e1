"""The ``fxprune`` command: inspect a model's channel groups, prune it, or run the demo.

    fxprune inspect torchvision:resnet18
    fxprune prune torchvision:resnet18 --method l1 --target-macs 0.5 --out small.pt2
    fxprune prune fxprune.demo.cifar_resnet:small_resnet --input-shape 3,32,32 --method epfs \\
        --target-macs 0.5 --data DIR --out small.pt2 --onnx small.onnx --report report.html
    fxprune demo                      # generated images, no download

MODEL is ``torchvision:NAME``, ``timm:NAME`` (when timm is installed), ``hf:CLASS`` (a
transformers class built from ``--config``), ``yolo:FILE.yaml`` (an ultralytics detector) or
``package.module:function`` for your own code (see :mod:`fxprune.cli.model_names`); ``--tokens
BATCH,LENGTH`` gives token models their example inputs. Nothing read is unpickled: weights and
checkpoints load with ``torch.load(weights_only=True)``, and the pruned model is written
with :func:`fxprune.export.save` (a ``.pt2`` that :func:`fxprune.export.load` opens).

Example:
    >>> main(["inspect", "fxprune.demo.cifar_resnet:small_resnet", "--input-shape", "3,32,32"])   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from fxprune.errors import FxPruneError


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 1 or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected sizes like 3,224,224, got {text!r}")
    return shape


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), e.g. 0.5; got {text}")
    return value


def _settings(text: str) -> dict:
    settings = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE,..., got {item!r}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="torchvision:NAME, timm:NAME, hf:CLASS, yolo:YAML or package.module:function")
    parser.add_argument("--input-shape", type=_shape, default=(3, 224, 224), metavar="C,H,W",
                        help="one input's shape without the batch (default 3,224,224)")
    parser.add_argument("--tokens", type=_shape, metavar="BATCH,LENGTH",
                        help="example token inputs instead of an image (input_ids and attention_mask)")
    parser.add_argument("--config", type=_settings, default={}, metavar="KEY=VALUE,...",
                        help="hf: the model config's entries, e.g. hidden_size=64,num_hidden_layers=2")
    parser.add_argument("--num-classes", type=int, help="passed to the model's constructor")
    parser.add_argument("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...); downloads")
    parser.add_argument("--checkpoint", type=Path, help="a state dict to load (read with weights_only=True)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", description="Structured pruning as a torch.fx compiler pass.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{inspect,prune,demo}")

    inspect = sub.add_parser("inspect", help="print a model's channel groups and what cannot be pruned")
    _model_arguments(inspect)
    inspect.add_argument("--format", default="simple", help="table format of tabulate: simple, github, ...")

    prune = sub.add_parser("prune", help="prune a model to a MACs target and save it")
    _model_arguments(prune)
    prune.add_argument("--method", choices=("l1", "epfs", "oicsr"), default="l1")
    prune.add_argument("--target-macs", type=_fraction, default=0.5, metavar="FRACTION",
                       help="share of the MACs to remove (default 0.5)")
    prune.add_argument("--data", type=Path, help="image folder with train/ and test/, one folder per class")
    prune.add_argument("--per-class", type=int, default=500, help="images per class read from --data (default 500)")
    prune.add_argument("--epochs", type=int, default=1, help="sparse-training epochs for epfs and oicsr")
    prune.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    prune.add_argument("--batch-size", type=int, default=64)
    prune.add_argument("--lr", type=float, default=0.01)
    prune.add_argument("--out", type=Path, required=True, help="the pruned model, a .pt2 file (fxprune.export)")
    prune.add_argument("--onnx", type=Path, help="also export to this .onnx file (needs fxprune[export])")
    prune.add_argument("--report", type=Path, help="also write this per-layer .html report (and a .png beside it)")
    prune.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="train, EPFS-prune, finalize and compare a small CNN")
    demo.add_argument("--data", type=Path, help="a CIFAR-10 image folder (train/, test/) instead of synthetic shapes")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    demo.add_argument("--target-macs", type=_fraction, help="share of the MACs to remove (default 0.5)")
    demo.add_argument("--quick", action="store_true", help="a few seconds on tiny data (a smoke test)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on an FxPruneError)."""
    args = build_parser().parse_args(argv)
    try:
        return {"inspect": cmd_inspect, "prune": cmd_prune, "demo": cmd_demo}[args.command](args)
    except FxPruneError as e:
        print(f"fxprune {args.command}: {e}", file=sys.stderr)
        return 2


def _model(args):
    from fxprune.cli.model_names import build_model

    return build_model(args.model, num_classes=args.num_classes, weights=args.weights, checkpoint=args.checkpoint,
                       config=args.config)


def _example(args, model):
    """The example inputs: random token ids (vocabulary from the model's config) or one random image."""
    if args.tokens is None:
        return torch.randn(1, *args.input_shape)
    if len(args.tokens) != 2:
        raise FxPruneError(f"--tokens takes BATCH,LENGTH, got {args.tokens}", hint="for example --tokens 1,16")
    vocab = getattr(getattr(model, "config", None), "vocab_size", 100)
    inputs = {"input_ids": torch.randint(0, vocab, args.tokens), "attention_mask": torch.ones(args.tokens,
                                                                                              dtype=torch.long)}
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False  # a cache object is not a tensor: no graph can return it
    return inputs


def cmd_inspect(args) -> int:
    from fxprune import report
    from fxprune.core.prepare import prepare
    from fxprune.report.count import count

    model = _model(args).eval()
    example = _example(args, model)
    pm = prepare(model, example)
    cost = count(model, example)
    summary = report.summary(pm)
    shape = args.tokens or (1, *args.input_shape)
    print(f"{args.model}: {cost.macs:,} MACs, {cost.params:,} parameters at input {tuple(shape)}, "
          f"captured with {'torch.export' if summary['capture'] == 'export' else 'torch.fx'}")
    print(f"{summary['groups']} channel groups ({summary['channels']} channels), {summary['branches']} removable "
          f"branches, {100 * summary['prunable_share']:.1f}% of filters prunable\n")
    print("Channel groups (each is pruned as one: a channel goes from every producer and consumer)")
    print(report.group_table(pm, tablefmt=args.format))
    frozen = any(r.prunable < r.channels for r in report.layer_rows(pm)) or summary["barriers"]
    print("\nFrozen channels (cannot be pruned) and why")
    print(report.frozen_table(pm, tablefmt=args.format) if frozen else "(none)")
    return 0


def cmd_prune(args) -> int:
    from fxprune import export
    from fxprune.report.compare import stats_table
    from fxprune.report.html import layer_channels, plot_layers, write_html
    from fxprune.training.data import ImageBatches, load_image_folder
    from fxprune.training.pipeline import prune_model

    train = test = None
    num_classes = args.num_classes
    if args.data is not None:
        size = args.input_shape[-1]
        *train_split, classes = load_image_folder(args.data, "train", size, per_class=args.per_class)
        *test_split, _ = load_image_folder(args.data, "test", size, per_class=max(1, args.per_class // 5))
        train = ImageBatches(*train_split, args.batch_size)
        test = ImageBatches(*test_split, 256, shuffle=False, augment=False)
        if num_classes is None and args.weights is None and args.checkpoint is None:
            num_classes = args.num_classes = len(classes)
        print(f"data: {args.data}: {len(train_split[1])} training, {len(test_split[1])} test images, "
              f"{len(classes)} classes")
    model = _model(args)
    example = _example(args, model)
    outcome = prune_model(model, example, args.method, args.target_macs, train, test, num_classes=num_classes,
                          epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=args.lr,
                          progress=not args.no_progress)
    print("\n" + stats_table(outcome.stats) + "\n")
    meta = {"model": args.model, "method": args.method, "target_macs": args.target_macs,
            "macs": outcome.stats[-1].macs, "params": outcome.stats[-1].params}
    print(f"model   {export.save(outcome.small, args.out, example, metadata=meta)}")
    if args.onnx is not None:
        print(f"onnx    {export.to_onnx(outcome.small, args.onnx, example)}")
    if args.report is not None:
        print(f"report  {write_html(outcome.pm, args.report, finalized=outcome.small, stats=outcome.stats)}")
        try:
            print(f"plot    {plot_layers(layer_channels(outcome.pm, outcome.small), args.report.with_suffix('.png'))}")
        except ImportError:
            print("plot    (skipped: pip install matplotlib)")
    return 0


def cmd_demo(args) -> int:
    from fxprune.demo import QUICK, DemoConfig, config_with, run_demo

    config = config_with(QUICK if args.quick else DemoConfig(), target_macs=args.target_macs)
    run_demo(str(args.out), data_dir=str(args.data) if args.data else None, config=config,
             progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())

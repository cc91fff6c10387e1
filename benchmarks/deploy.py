"""The zoo's models as they would be deployed for CPU inference: the variants ``zoo.py`` times.

Each variant is made of steps, one per command-line flag, and every model gets it, the
dense one too, so that a variant's speed-up compares like with like:

- ``+fold`` (``--fold-bn``): each BatchNorm folded into the convolution or linear layer
  before it (``torch.fx.experimental.optimization.fuse``);
- ``+nhwc`` (``--channels-last``): 4-d weights, and at timing the input, in channels_last
  memory format, which oneDNN's convolutions run without reordering;
- ``+ort`` (``--onnxruntime``): exported with ``fxprune.export.to_onnx`` (checked against
  the model there) and run by ONNX Runtime on the CPU with every graph optimisation, so
  BatchNorm folded, activations fused into the convolutions and its own blocked layouts.

    variants = deployed({"before": model, "fxprune": small}, record, args)
    # {"before+nhwc": ..., "fxprune+nhwc": ..., "before+ort": ..., "fxprune+ort": ...}
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse
from zoo_plot import VARIANTS

import fxprune.export


class OnnxRuntimeModel:
    """``model`` as ONNX Runtime runs it: called like the model on a tensor, returns ONNX Runtime's outputs.

    The export (with a dynamic batch, from the first batch's first sample) and the session are made
    on the first call, so a model that is never timed is never exported and the export falls in a
    warm-up pass (``zoo.py --onnxruntime`` needs ``--warmup`` of at least 1). The session runs
    ``threads`` intra-op threads that sleep between calls rather than spin: spinning threads
    would slow whatever runs next in the process.
    """

    def __init__(self, model: torch.nn.Module, threads: int):
        self.model, self.threads, self.session = model, threads, None

    def eval(self) -> "OnnxRuntimeModel":
        return self

    def __call__(self, x: torch.Tensor) -> list:
        if self.session is None:
            self.session = self._session(x[:1])
        return self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})

    def _session(self, example: torch.Tensor):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with tempfile.TemporaryDirectory() as folder:  # the session holds the graph; the file can go
            path = fxprune.export.to_onnx(self.model.eval(), Path(folder) / "model.onnx", example)
            return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_missing() -> str:
    """Why ``--onnxruntime`` cannot run here ('' when it can)."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    return f"--onnxruntime needs {', '.join(missing)}: pip install -e '.[export]'" if missing else ""


def add_timing_arguments(parser) -> None:
    """The flags of how models are timed and in which variants, the same in every benchmark that times them."""
    parser.add_argument("--threads", type=int, default=2, help="torch threads for everything")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes (the median is kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes first")
    parser.add_argument("--fold-bn", action="store_true",
                        help="also time every model (the dense one too) with BatchNorm folded into the layer "
                             "before it, as deployed for inference")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time every model (the dense one too) with weights and input in channels_last "
                             "memory format")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="also time every model (the dense one too) exported to ONNX and run by ONNX Runtime "
                             "(needs --warmup >= 1: the export happens in the warm-up)")


def check_timing_arguments(parser, args) -> None:
    """Refuse, through ``parser``, timing flags that cannot run here."""
    if args.onnxruntime:
        why = onnxruntime_missing() or ("" if args.warmup >= 1 else
                                        "--onnxruntime needs --warmup of at least 1 (the export happens there)")
        if why:
            parser.error(why)


# one step of a deployment variant (zoo_plot.VARIANTS): label suffix -> (the flag that asks for it, the step)
DEPLOY_STEPS = {"+fold": ("fold_bn", lambda m: fuse(m.eval())),
                "+nhwc": ("channels_last", lambda m: copy.deepcopy(m).to(memory_format=torch.channels_last)),
                "+ort": ("onnxruntime", lambda m: OnnxRuntimeModel(m, torch.get_num_threads()))}


def deployed(models: dict, record: dict, args) -> dict:
    """The models again in every variant of ``zoo_plot.VARIANTS`` whose flags ``args`` sets.

    Labels are the model's with the variant's suffix (``fxprune_round8+nhwc``, ``before+ort``). A
    step that fails is recorded in ``record["latency_errors"]`` and the plain model is still timed.
    """
    out = {}
    for suffix in sorted(VARIANTS, key=len):  # "+fold" and "+nhwc" before "+fold+nhwc"
        steps = ["+" + step for step in suffix.split("+")[1:]]
        if not all(getattr(args, DEPLOY_STEPS[step][0]) for step in steps):
            continue
        for label, model in models.items():
            try:
                for step in steps:
                    model = DEPLOY_STEPS[step][1](model)
                out[label + suffix] = model
            except Exception as e:  # recorded (fuse needs a traceable model); the plain one is still timed
                record.setdefault("latency_errors", {})[label + suffix] = f"{type(e).__name__}: {e}"[:300]
    return out


def runtimes(models: dict) -> list:
    """``models`` split into those PyTorch runs and those ONNX Runtime runs, to be timed apart.

    Timed in turns with each other, the two runtimes' thread pools slow each other: the dense
    mobilenet_v2 at batch 32 took 1.13 s in PyTorch between ONNX Runtime passes, 0.66 s alone.
    """
    onnx = {label: m for label, m in models.items() if isinstance(m, OnnxRuntimeModel)}
    return [group for group in ({k: m for k, m in models.items() if k not in onnx}, onnx) if group]

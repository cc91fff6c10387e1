"""The torchvision zoo, pruned by fxprune and by Torch-Pruning: coverage, analysis time, real speed-up.

Every torchvision classifier, segmentation model and detection backbone is pruned at
ratio 0.5 (l1 magnitude, the same ratio in every group, the layers that produce the
model's outputs left alone) by both libraries, and then timed on the CPU:

- fxprune: ``prepare``, ``prune_by_importance`` and ``finalize`` times, finalize's
  self-check (the masked and the pruned model run on the example input) timed apart and
  counted in the total; the equivalence error it measured against the masked model; the
  same again with ``round_to``.
- Torch-Pruning (when ``torch_pruning`` is installed): the time to build its dependency
  graph alone, to construct its ``MagnitudePruner`` (which builds the graph again) and to
  ``step()``; whether the pruned model runs, and its error against the masked model that
  zeroes, where they enter each convolution, linear layer or attention, the channels it
  removed (its pruning history replayed on an unpruned copy). A large error means the
  pruned model computes something no masking of the original computes (LayerNorm
  statistics over removed channels, for example).
- both: MACs and parameters, latency before and after (batch 1 and 32, a fixed thread
  count, the median of ``--repeats`` runs after ``--warmup``, all of a model's versions timed
  in turns, one pass each per round), speed-up, and latency efficiency = speed-up /
  (MACs before / MACs after): 1.0 means the model got as much faster as it got smaller.
  Two deployment variants time every model again (the dense one too, so speed-ups
  compare like with like): ``--fold-bn`` folds each BatchNorm into
  the convolution or linear layer before it (labels ending ``+fold``), and
  ``--channels-last`` runs weights and input in channels_last memory format (labels
  ending ``+nhwc``), which oneDNN's CPU convolutions run without reordering; with both
  flags, also folded and in channels_last (``+fold+nhwc``); ``--onnxruntime`` exports
  every model to ONNX and times it in ONNX Runtime (``+ort``). See ``deploy.py``.

Weights are random but informative (:func:`fxprune.testing.randomize`). Inputs are 224
pixels square (inception_v3 299, ssd300 300, ssdlite320 320); segmentation models and
the detection backbones run at 224 too, not at their 520 and 800 pixel training sizes,
and EfficientNets, vit_h_14 and regnet_y_128gf at 224, not at the larger sizes of their
best weights. Both libraries get the same model; googlenet and inception_v3 are built
without their auxiliary heads, and for ViTs Torch-Pruning gets what its own torchvision
example gives it (``round_to`` = heads, ``hidden_dim`` set after pruning). Where a
dimension is groups x channels per group (grouped convolutions: regnet, resnext) or
heads x head-dims (attention), fxprune removes half the groups or heads and keeps each
one's width; how Torch-Pruning shares the cut is its own.

Every model runs in a subprocess of its own (``--one``) with a timeout, and Torch-Pruning
within it with ``--tp-timeout`` (it does not finish on Swin). Each library first prunes a
small resnet18, untimed, so that the process's one-time costs fall on neither. A timed batch of more than
``--max-gmacs`` (batch x GMACs per image) is skipped and the skip recorded. Memory is the resident set size
sampled every 10 ms from /proc/self/statm while a library prunes, less the size when it
started (fxprune's includes the two copies it makes: it never changes its input;
Torch-Pruning prunes its copy in place); ``max_rss_mb`` is the subprocess's peak.

    python benchmarks/zoo.py --out out/zoo                      # the whole zoo (hours)
    python benchmarks/zoo.py resnet18 vit_b_16 --batches 1      # a few models
    python benchmarks/zoo.py --one resnet18 --json r.json       # one model, in this process

Writes ``models/<name>.json``, ``zoo.json`` (merged), ``zoo.md`` (table and summary) and
``zoo.png`` (see ``zoo_plot.py``) into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torch.utils import _pytree as pytree

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_ROOT))

from deploy import add_timing_arguments, check_timing_arguments, deployed, runtimes  # noqa: E402
from zoo_plot import status, variant, write_report  # noqa: E402

import fxprune  # noqa: E402
from fxprune.core.finalize.verify import verify  # noqa: E402
from fxprune.core.ir import state_of  # noqa: E402
from fxprune.report.machine import machine  # noqa: E402
from fxprune.testing import randomize, torchvision_classifiers  # noqa: E402

SIZES = {"inception_v3": 299, "ssd300_vgg16.backbone": 300, "ssdlite320_mobilenet_v3_large.backbone": 320}
MODEL_KWARGS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}  # as Torch-Pruning's example
RATIO = 0.5


def zoo_models() -> list:
    """Every classifier, every segmentation model, and every detection model's backbone."""
    seg = torchvision.models.list_models(module=torchvision.models.segmentation)
    det = torchvision.models.list_models(module=torchvision.models.detection)
    return torchvision_classifiers() + seg + [f"{d}.backbone" for d in det]


def family(name: str) -> str:
    if name.endswith(".backbone"):
        return "detection backbone"
    return "segmentation" if name in torchvision.models.list_models(module=torchvision.models.segmentation) \
        else "classifier"


def build(name: str) -> nn.Module:
    """The model, untrained (nothing is downloaded), in eval mode with informative random weights."""
    if name.endswith(".backbone"):
        model = torchvision.models.get_model(name[:-len(".backbone")], weights=None, weights_backbone=None).backbone
    elif family(name) == "segmentation":
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, aux_loss=None)
    else:
        model = torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {}))
    return randomize(model.eval())


class PeakRSS:
    """Samples this process's resident set size in a thread; ``.extra_mb`` is the peak above the start."""

    def __enter__(self):
        self._stop = threading.Event()
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.extra_mb = (self.peak - self.start) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def watch_memory(limit_gb: float) -> None:
    """Guard the machine: above ``limit_gb`` of resident memory, raise MemoryError in the main thread (the stage
    fails, the model goes on); above 1.25 times that, exit at once."""
    limit = limit_gb * 2**30

    def raise_memory_error(signum, frame):
        raise MemoryError(f"resident memory above --max-rss-gb {limit_gb:g}")

    def watch():
        raised = False
        while True:
            time.sleep(0.05)
            rss = _rss()
            if rss > 1.25 * limit:
                sys.stderr.write(f"resident memory {rss / 2**30:.1f} GB above 1.25 x --max-rss-gb {limit_gb:g}\n")
                os._exit(3)
            if rss > limit and not raised:
                os.kill(os.getpid(), signal.SIGUSR1)
            raised = rss > limit

    signal.signal(signal.SIGUSR1, raise_memory_error)
    threading.Thread(target=watch, daemon=True).start()


def leaves(out) -> list:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def relative_error(reference, result) -> float:
    """Largest absolute difference relative to the largest reference output (at least 1), as finalize measures."""
    ref, got = leaves(reference), leaves(result)
    if [t.shape for t in ref] != [t.shape for t in got]:
        return float("inf")
    scale = max([1.0] + [float(t.abs().max()) for t in ref if t.numel()])
    return max([0.0] + [float((a.double() - b.double()).abs().max()) / scale for a, b in zip(ref, got) if a.numel()])


def measure_fxprune(model, x, round_to, record) -> dict:
    """Prune with fxprune at RATIO (and again with ``round_to``); fills ``record["fxprune"]``, returns the models."""
    fx = record["fxprune"] = {"ok": False}
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        pm = fxprune.prepare(model, x)
        t1 = time.perf_counter()
        fxprune.prune_by_importance(pm, RATIO, importance="l1", scope="local")
        t2 = time.perf_counter()
        small = fxprune.finalize(pm, check=False)  # the check as finalize runs it, timed on its own:
        t3 = time.perf_counter()
        error = verify(pm, small, state_of(pm), 0.0)
        t4 = time.perf_counter()
    after = fxprune.count(small, x)
    fx.update(ok=True, prepare_s=t1 - t0, prune_s=t2 - t1, finalize_s=t3 - t2, check_s=t4 - t3, total_s=t4 - t0,
              trace_s=fx_trace_time(model),
              peak_extra_mb=mem.extra_mb, equivalence_error=error,
              prunable_share=fxprune.prunable_share(pm), groups=len(fxprune.channel_groups(pm)),
              macs_after=after.macs, params_after=after.params,
              output_layers=sorted({r.layer.rsplit(".", 1)[0] for r in fxprune.report.layer_rows(pm)
                                    if r.reaches_output}))
    models = {"fxprune": small}
    if round_to:
        fx["round_to"] = {"round_to": round_to}
        try:
            with torch.no_grad():
                for mask in pm.fxprune.masks.values():
                    mask.fill_(1.0)
            fxprune.prune_by_importance(pm, RATIO, importance="l1", scope="local", round_to=round_to)
            rounded = fxprune.finalize(pm)
        except Exception as e:  # the unrounded result stands; the failure is reported (summary, table, log)
            fx["round_to"].update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
            return models
        after = fxprune.count(rounded, x)
        fx["round_to"].update(ok=True, equivalence_error=rounded.fxprune_equivalence_error, macs_after=after.macs,
                              params_after=after.params)
        models[f"fxprune_round{round_to}"] = rounded
    return models


def fx_trace_time(model):
    """Seconds torch.fx's own ``symbolic_trace`` takes on the model; None where it cannot trace it.

    With the self-check's time, a floor under any pass that, like fxprune, traces with
    torch.fx and runs the model to check its result, however fast its own analysis.
    """
    try:
        t0 = time.perf_counter()
        torch.fx.symbolic_trace(model)
        return time.perf_counter() - t0
    except Exception:
        return None


def tp_ignored(model, fx: dict) -> list:
    """The layers Torch-Pruning must leave alone: those whose channels reach the output, as fxprune found them;
    failing that, every convolution or linear layer with as many outputs as there are classes."""
    names = [n for n in fx.get("output_layers", []) if _has_module(model, n)]
    if names:
        return names
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and (getattr(m, "out_features", None) or getattr(m, "out_channels", None)) in (1000, 21)]


def _has_module(model, name) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def measure_tp(model, x, record, timeout_s: int):
    """Prune a copy with Torch-Pruning's MagnitudePruner; fills ``record["tp"]`` and returns the pruned model."""
    import torch_pruning as tp

    rec = record["tp"] = {"ok": False, "version": tp.__version__, "phase": "graph"}
    rec["ignored"] = tp_ignored(model, record.get("fxprune", {}))
    pruned = copy.deepcopy(model)
    round_to = None
    if isinstance(model, torchvision.models.VisionTransformer):
        round_to = model.encoder.layers[0].num_heads  # what Torch-Pruning's own torchvision example does
    signal.signal(signal.SIGALRM, _raise_timeout)
    signal.alarm(timeout_s)
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            tp.DependencyGraph().build_dependency(pruned, example_inputs=x, verbose=False)
            rec.update(graph_s=time.perf_counter() - t0, phase="pruner")
            t0 = time.perf_counter()
            pruner = tp.pruner.MagnitudePruner(
                pruned, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
                ignored_layers=[pruned.get_submodule(n) for n in rec["ignored"]], round_to=round_to)
            rec.update(pruner_s=time.perf_counter() - t0, phase="step")
            t0 = time.perf_counter()
            pruner.step()
            rec.update(step_s=time.perf_counter() - t0, phase="run")
    finally:
        signal.alarm(0)
    if isinstance(pruned, torchvision.models.VisionTransformer):
        pruned.hidden_dim = pruned.conv_proj.out_channels  # as Torch-Pruning's example does
    rec.update(total_s=rec["pruner_s"] + rec["step_s"], peak_extra_mb=mem.extra_mb)
    rec["phase"] = "run"
    with torch.no_grad():
        reference, result = model(x), pruned(x)
    rec["same_output_shapes"] = [t.shape for t in leaves(reference)] == [t.shape for t in leaves(result)]
    after = fxprune.count(pruned, x)
    rec.update(ok=True, phase="done", macs_after=after.macs, params_after=after.params)
    rec["masked_error"] = tp_masked_error(model, pruned, x, pruner.DG.pruning_history())
    return pruned


def _raise_timeout(signum, frame):
    inside = [f for f in traceback.extract_stack(frame) if "torch_pruning" in f.filename]
    where = f" (in {Path(inside[-1].filename).name}:{inside[-1].lineno} {inside[-1].name})" if inside else ""
    raise TimeoutError(f"Torch-Pruning ran past --tp-timeout{where}")


def tp_masked_error(model, pruned, x, history) -> float:
    """Error of Torch-Pruning's model against the original with the same channels masked where they are mixed.

    The pruning history is replayed on a fresh dependency graph of an unpruned copy, so
    that every index is in the original model's frame; each convolution, linear layer and
    attention then gets a pre-hook zeroing the input channels Torch-Pruning removed.
    """
    import torch_pruning as tp

    masked = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(masked, example_inputs=x, verbose=False)
    removed = {}
    for name, is_out, idxs in history:
        module = masked.get_submodule(name)
        pruner = graph.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        for dep, dep_idxs in graph.get_pruning_group(module, fn, idxs).items:
            target = dep.target.module
            if graph.is_in_channel_pruning_fn(dep.handler) and _mixes_channels(target):
                removed.setdefault(target, set()).update(int(getattr(i, "idx", i)) for i in dep_idxs)
    for module, idxs in removed.items():
        module.register_forward_pre_hook(_zero_inputs(module, sorted(idxs)))
    with torch.no_grad():
        return relative_error(masked(x), pruned(x))


def _mixes_channels(module) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups < module.in_channels  # a depthwise convolution mixes nothing
    return isinstance(module, (nn.Linear, nn.MultiheadAttention))


def _zero_inputs(module, idxs):
    dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
    index = torch.tensor(idxs)

    def hook(mod, args):
        inputs = list(args)
        count = 3 if isinstance(mod, nn.MultiheadAttention) else 1  # query, key, value
        for i in range(min(count, len(inputs))):
            inputs[i] = inputs[i].index_fill(dim, index, 0.0)
        return tuple(inputs)
    return hook


def latencies(models: dict, inputs: dict, warmup: int, repeats: int, errors: dict) -> dict:
    """Median seconds of one forward pass of each model, timed in turns.

    Every model gets ``warmup`` untimed passes, then the models run one pass each, round after
    round, ``repeats`` rounds. A slow spell of the machine (another process, the host) then
    falls on every model alike instead of on whichever was being timed, and does not skew the
    ratios of the medians (speed-up, efficiency) as it does when each model's passes run in a row.
    A model that raises is left out and its error recorded in ``errors``.
    """
    times: dict = {label: [] for label in models}

    def run(label) -> bool:
        try:
            models[label](inputs[label])
            return True
        except Exception as e:  # recorded; the other models are still timed
            errors[label] = f"{type(e).__name__}: {e}"[:300]
            del times[label]
            return False

    with torch.inference_mode():
        for label in list(times):
            for _ in range(warmup):
                if not run(label):
                    break
        for _ in range(repeats):
            for label in list(times):
                t0 = time.perf_counter()
                if run(label):
                    times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(t) for label, t in times.items() if t}


def time_batch(models: dict, batch: int, size: int, args, errors: dict) -> dict:
    """Median seconds of one pass of each model on a random ``batch`` of ``size``-pixel images.

    The models PyTorch runs are timed in turns with each other and the ONNX Runtime ones apart
    (:func:`deploy.runtimes`); a ``+nhwc`` variant gets the batch in channels_last.
    """
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    nhwc = x.contiguous(memory_format=torch.channels_last)
    inputs = {label: nhwc if variant(label).endswith("+nhwc") else x for label in models}
    seconds = {}
    for group in runtimes(models):
        seconds.update(latencies({label: m.eval() for label, m in group.items()}, inputs, args.warmup,
                                 args.repeats, errors))
    return seconds


def measure_latency(models: dict, record: dict, args) -> None:
    """Latency of every model at every batch size, speed-up and efficiency against "before"."""
    size = record["input"][-1]
    gmacs = record["macs_before"] / 1e9
    for batch in args.batches:
        key = str(batch)
        if batch * gmacs > args.max_gmacs:
            record["latency_skipped"][key] = f"batch {batch} x {gmacs:.1f} GMACs > --max-gmacs {args.max_gmacs:g}"
            continue
        errors: dict = {}
        seconds = time_batch(models, batch, size, args, errors)
        ms = record["latency_ms"][key] = {label: 1e3 * s for label, s in seconds.items()}
        for label, error in errors.items():
            record.setdefault("latency_errors", {})[f"{label} b{batch}"] = error
        _save(record, args.json)
        speedup, efficiency = against_dense(ms, lambda label: _macs_after(record, label), record["macs_before"])
        if speedup:
            record["speedup"][key], record["efficiency"][key] = speedup, efficiency


def against_dense(times: dict, macs_after, macs_before: int) -> tuple:
    """Speed-up and latency efficiency (speed-up x MACs after / MACs before) of every timed model
    against the dense one ("before") in the same variant; ``macs_after(label)`` gives the MACs of
    the model a label times."""
    speedup, efficiency = {}, {}
    for label, t in times.items():
        base = "before" + variant(label)
        if label != base and base in times:
            speedup[label] = times[base] / t
            efficiency[label] = speedup[label] * macs_after(label) / macs_before
    return speedup, efficiency


def _macs_after(record, label) -> int:
    label = label.removesuffix(variant(label))
    if label == "tp":
        return record["tp"]["macs_after"]
    return record["fxprune"]["macs_after"] if label == "fxprune" else record["fxprune"]["round_to"]["macs_after"]


def measure_one(name: str, args) -> dict:
    """Everything about one model, saved to ``args.json`` after every stage so a crash keeps what was done."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    watch_memory(args.max_rss_gb)
    start = time.perf_counter()
    record = {"model": name, "family": family(name), "threads": args.threads, "stage": "build",
              "latency_ms": {}, "latency_skipped": {}, "speedup": {}, "efficiency": {}}
    model = build(name)
    size = args.size or SIZES.get(name, 224)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    before = fxprune.count(model, x)
    record.update(input=list(x.shape), macs_before=before.macs, params_before=before.params)
    models = {"before": model}
    warm_up(not args.no_tp and _tp_installed())
    pruned = _attempt(record, "fxprune", args.json, lambda: measure_fxprune(model, x, args.round_to, record))
    models.update(pruned or {})
    if args.no_tp or not _tp_installed():
        record["tp"] = {"ok": False, "error": "not run: " + ("--no-tp" if args.no_tp else "not installed")}
    else:
        pruned = _attempt(record, "tp", args.json, lambda: measure_tp(model, x, record, args.tp_timeout))
        if pruned is not None:
            models["tp"] = pruned
    models.update(deployed(models, record, args))
    record["stage"] = "latency"
    _save(record, args.json)
    measure_latency(models, record, args)
    record.update(stage="done", wall_s=time.perf_counter() - start,
                  max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _save(record, args.json)
    return record


def warm_up(tp: bool) -> None:
    """Prune a small resnet18 once with each library, untimed, so that neither pays for the process's one-time
    costs (imports, lazy initialisation) in the times measured: whichever went first would."""
    model, x = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    pm = fxprune.prepare(model, x)
    fxprune.prune_by_importance(pm, RATIO, importance="l1", scope="local")
    fxprune.finalize(pm)
    if tp:
        import torch_pruning as tp_lib

        tp_lib.pruner.MagnitudePruner(model, x, importance=tp_lib.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=RATIO, ignored_layers=[model.fc]).step()


def _attempt(record: dict, stage: str, path, measure):
    """Run one library's stage; an exception it raises is its result (``record[stage]["error"]``), not the end."""
    record["stage"] = stage
    _save(record, path)
    try:
        return measure()
    except Exception as e:  # a failure is a result to report, and the run goes on
        record.setdefault(stage, {}).update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
        return None


def _tp_installed() -> bool:
    try:
        import torch_pruning  # noqa: F401
        return True
    except ImportError:
        return False


def _save(record: dict, path) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, default=float)
        os.replace(tmp, path)


def run_isolated(name: str, path: Path, args) -> dict:
    """Measure one model in a subprocess with a timeout; a crash or a timeout is recorded, never raised."""
    command = [sys.executable, __file__, "--one", name, "--json", str(path)] + _child_flags(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    path.unlink(missing_ok=True)
    failure = None
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            failure = f"crashed (exit {done.returncode}): {done.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        failure = f"timed out after {args.timeout} s"
    record = json.loads(path.read_text()) if path.exists() else {"model": name, "stage": "start"}
    if failure:
        record["failure"] = f"{failure} (in stage {record['stage']})"
        if isinstance(record.get(record["stage"]), dict):
            record[record["stage"]].setdefault("error", failure)
        _save(record, path)
    return record


def _child_flags(args) -> list:
    flags = []
    for key in ("threads", "batches", "repeats", "warmup", "max_gmacs", "round_to", "size", "timeout", "tp_timeout",
                "max_rss_gb", "no_tp", "fold_bn", "channels_last", "onnxruntime"):
        value, flag = getattr(args, key), "--" + key.replace("_", "-")
        if isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, str(value)]
    return flags


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model names (default: the whole zoo); backbones as NAME.backbone")
    parser.add_argument("--out", default="out/zoo", help="folder for the results")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes timed")
    parser.add_argument("--max-gmacs", type=float, default=1000.0,
                        help="skip timing a batch when batch x GMACs per image exceeds this")
    parser.add_argument("--round-to", type=int, default=8, help="also prune with fxprune's round_to (0: not)")
    parser.add_argument("--size", type=int, default=0, help="input size for every model (default: its own)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per model before its process is killed")
    parser.add_argument("--tp-timeout", type=int, default=300, help="seconds for Torch-Pruning's analysis and step")
    parser.add_argument("--max-rss-gb", type=float, default=18.0,
                        help="a stage that needs more resident memory fails (the process exits above 1.25 x)")
    parser.add_argument("--no-tp", action="store_true", help="leave Torch-Pruning out")
    parser.add_argument("--resume", action="store_true", help="keep models/<name>.json that are complete")
    parser.add_argument("--one", metavar="NAME", help="measure one model in this process (what each subprocess runs)")
    parser.add_argument("--json", help="with --one: where to write its record")
    add_timing_arguments(parser)
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args)
    return args


def run_meta(args, **extra) -> dict:
    """Where and how a benchmark run timed its models, for its JSON; ``extra`` adds its own settings."""
    return {"machine": machine(), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, **extra,
            "ratio": RATIO, "round_to": args.round_to}


def main(argv=None) -> int:
    args = parse(argv)
    if args.one:
        measure_one(args.one, args)
        return 0
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    large = max(args.batches)
    rows = []
    for name in args.models or zoo_models():
        path = out / "models" / f"{name}.json"
        if args.resume and path.exists() and json.loads(path.read_text()).get("stage") == "done":
            rows.append(json.loads(path.read_text()))
        else:
            rows.append(run_isolated(name, path, args))
        r = rows[-1]
        speedups = "; ".join(f"b{b} " + " ".join(f"{k} {v:.2f}" for k, v in by.items())
                             for b, by in r.get("speedup", {}).items())
        print(f"{name}: {r.get('failure', 'ok')} | fxprune {status(r.get('fxprune', {}), 'equivalence_error')}"
              f" | round_to {status(r.get('fxprune', {}).get('round_to', {}), 'equivalence_error')}"
              f" | TP {status(r.get('tp', {}), 'masked_error')} | speed-up {speedups or '-'}", flush=True)
    meta = run_meta(args, batches=args.batches, max_gmacs=args.max_gmacs)
    if _tp_installed():
        import torch_pruning
        meta["torch_pruning"] = torch_pruning.__version__
    print(write_report(out, meta, rows, large))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shipping a finalized model: save and load it without pickles, and export it to ONNX.

:func:`save` writes a ``.pt2`` file with ``torch.export``: the graph as JSON and the
weights as raw tensor bytes, in eval mode, with a dynamic batch dimension. :func:`load`
reads it back as a module that needs neither fxprune nor the model's source code; it
checks the file first (:mod:`fxprune.export.archive`), so nothing in it is unpickled except by
``torch.load(weights_only=True)`` and nothing in it runs as code. :func:`to_onnx` writes
one self-contained ``.onnx`` file with the dynamo-based exporter (``onnxscript``). A model
returned in its own classes (``finalize(pm, keep_classes=True)``) is saved with
:func:`save_widths` and rebuilt from its constructor with :func:`load_widths`
(:mod:`fxprune.export.widths`).

    small = fxprune.finalize(pm)
    fxprune.export.save(small, "small.pt2", x)      # anywhere later, without fxprune's masks:
    model = fxprune.export.load("small.pt2")         # a torch.nn.Module; model(x) as before
    fxprune.export.to_onnx(small, "small.onnx", x)   # onnxruntime.InferenceSession("small.onnx")

Example:
    >>> import tempfile, os
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> path = save(model, os.path.join(tempfile.mkdtemp(), "m.pt2"), torch.randn(1, 3, 8, 8))
    >>> load(path)(torch.randn(5, 3, 8, 8)).shape
    torch.Size([5, 4, 6, 6])
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import types
import zipfile
from pathlib import Path
from typing import Optional

import torch

from fxprune.core.ir import ExampleInputs
from fxprune.core.prepare.export import at_least_two, dynamic_shape_choices
from fxprune.core.tensors import eval_mode
from fxprune.errors import EquivalenceError, FxPruneError
from fxprune.export import archive
from fxprune.export.widths import load_widths, save_widths  # noqa: F401 (shipping a model in its own classes)

METADATA = "fxprune.json"


def _tensors(value) -> list:
    """The tensors of a nested value (an :class:`ExampleInputs`, a model's outputs), in order."""
    if isinstance(value, ExampleInputs):
        value = (value.args, value.kwargs)
    return [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def export_program(model: torch.nn.Module, example_inputs, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode, the batch dimension dynamic.

    Args:
        model: a finalized model (any exportable module works); its mode is restored after.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs, first
            dimension the batch.
        dynamic_batch: let the exported program accept any batch size (and token inputs any length,
            where the model allows it).

    Returns:
        The ``ExportedProgram``.
    """
    example = ExampleInputs.of(example_inputs)
    args, kwargs = (at_least_two(example.args), at_least_two(example.kwargs)) if dynamic_batch else \
        (example.args, example.kwargs)
    error = None
    with torch.no_grad(), eval_mode(model):
        if not dynamic_batch:
            return torch.export.export(model, args, kwargs)
        for dynamic_shapes in list(dynamic_shape_choices(model, args, kwargs))[:-1]:  # the last one: none
            try:
                return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes)
            except Exception as e:  # the next choice keeps fewer dimensions dynamic
                error = e
    raise FxPruneError(f"torch.export could not keep the batch dimension dynamic: {type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}",
                       hint="pass dynamic_batch=False to export for the example's batch size only") from error


def save(model: torch.nn.Module, path: os.PathLike, example_inputs, *, dynamic_batch: bool = True,
         metadata: Optional[dict] = None) -> Path:
    """Write ``model`` (eval mode) to a ``.pt2`` file that :func:`load` opens without unpickling.

    Args:
        model: usually ``fxprune.finalize(pm)``.
        path: the file to write; should end in ``.pt2``.
        example_inputs: inputs to trace with: a tensor, a tuple of positional inputs or a dict
            of keyword inputs.
        dynamic_batch: accept any batch size when loaded.
        metadata: JSON-serialisable facts stored beside the model (read them with
            :func:`read_metadata`); the input shapes are added.

    Returns:
        ``path``.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise FxPruneError(f"the file name must end in .pt2, got {path.name}", hint=f"use {path.stem}.pt2")
    program = export_program(model, example_inputs, dynamic_batch)
    meta = dict(metadata or {})
    meta.setdefault("input_shapes", [list(t.shape) for t in _tensors(ExampleInputs.of(example_inputs))])
    meta.setdefault("dynamic_batch", dynamic_batch)
    meta.setdefault("torch_version", torch.__version__)
    # torch.export stores checks of the input sizes (a length limit, say) as Python code that loading
    # would compile; load() never runs code from a file, so they are kept as text only
    meta.setdefault("input_checks", list(getattr(program, "_guards_code", None) or []))
    if getattr(program, "_guards_code", None):
        program._guards_code = []
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path), extra_files={METADATA: json.dumps(meta)})
    return path


def load_program(path: os.PathLike) -> torch.export.ExportedProgram:
    """The checked ``ExportedProgram`` in a ``.pt2`` file (see :mod:`fxprune.export.archive`).

    Raises:
        fxprune.export.archive.UnsafeArchiveError: the file holds pickled payloads, compiled
            code, guard code, unusual shape expressions or non-operator calls.
    """
    data = Path(path).read_bytes()
    archive.check_archive(data)
    program = torch.export.load(io.BytesIO(data))
    archive.check_graph(program.graph_module)
    return program


def load(path: os.PathLike) -> torch.nn.Module:
    """Load a model written by :func:`save`: an inference module that needs no fxprune code.

    The module computes in eval mode for good: ``eval()`` does nothing and ``train()``
    raises; fine-tune the finalized GraphModule before saving, not the loaded one.

    Args:
        path: a ``.pt2`` file.

    Returns:
        A ``torch.nn.Module`` computing what the saved model computed in eval mode.
    """
    module = load_program(path).module()
    module.train = types.MethodType(_inference_only, module)
    module.eval = types.MethodType(lambda self: self, module)  # saved in eval mode: already is
    return module


def _inference_only(module, mode: bool = True):
    if mode:
        raise FxPruneError("a model loaded from .pt2 is inference-only: it was saved in eval mode",
                           hint="fine-tune the finalized GraphModule, then save it again")
    return module


def read_metadata(path: os.PathLike) -> dict:
    """The metadata :func:`save` stored, read as JSON (nothing else in the file is touched)."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(f"/extra/{METADATA}")]
        return json.loads(zf.read(names[0])) if names else {}


def to_onnx(model: torch.nn.Module, path: os.PathLike, example_inputs, *, dynamic_batch: bool = True,
            opset: Optional[int] = None, verify: bool = True) -> Path:
    """Export ``model`` (eval mode) to one self-contained ONNX file.

    Args:
        model: usually ``fxprune.finalize(pm)``.
        path: the ``.onnx`` file to write.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        dynamic_batch: a symbolic batch dimension in the ONNX graph.
        opset: the ONNX opset; the exporter's default when None.
        verify: run the file with onnxruntime on ``example_inputs`` (when installed) and
            raise :class:`~fxprune.errors.EquivalenceError` if it disagrees with ``model``.

    Returns:
        ``path``. Its inputs are the example's tensors, positional ones first, named ``input0,
        input1, ...``; non-tensor inputs are constants of the file.
    """
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise FxPruneError("ONNX export needs the onnx and onnxscript packages",
                           hint="pip install 'fxprune[export]' (or: pip install onnx onnxscript onnxruntime)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, example_inputs, dynamic_batch)
    example = ExampleInputs.of(example_inputs)
    names = [f"input{i}" for i in range(len(_tensors(example)))]
    onnx_program = torch.onnx.export(program, example.args, kwargs=example.kwargs, dynamo=True, external_data=False,
                                     opset_version=opset, input_names=names, verbose=False)
    onnx_program.save(str(path), external_data=False)
    if verify and importlib.util.find_spec("onnxruntime") is not None:
        error = onnx_difference(path, model, example)
        if error > 1e-4:  # relative to each output's scale
            raise EquivalenceError(f"onnxruntime's outputs differ from the model's by {error:.3g}",
                                   hint="report this with the model; export with opset=... or dynamic_batch=False")
    return path


def run_onnx(path: os.PathLike, *inputs: torch.Tensor) -> list:
    """Run an ONNX file with onnxruntime on the CPU; returns its outputs as tensors."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.detach().cpu().numpy() for arg, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def onnx_difference(path: os.PathLike, model: torch.nn.Module, example_inputs) -> float:
    """Largest difference between onnxruntime's outputs and ``model``'s (eval mode), relative to each
    output's largest magnitude (at least 1)."""
    example = ExampleInputs.of(example_inputs)
    with torch.no_grad(), eval_mode(model):
        expected = example(model)
    expected = _tensors(expected)
    got = run_onnx(path, *_tensors(example))
    return max(float((e - g).abs().max()) / max(1.0, float(e.abs().max())) for e, g in zip(expected, got))

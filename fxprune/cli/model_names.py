"""Model specs of the command line: ``torchvision:NAME``, ``timm:NAME``, ``hf:CLASS``, ``yolo:YAML``,
``package.module:function``.

Nothing here unpickles: torchvision weights and ``--checkpoint`` files are read with
``torch.load(weights_only=True)``, which restores tensors and plain containers only. Hugging
Face and ultralytics models are built from a config or a bundled yaml, with random weights.

    torchvision:resnet18            torchvision.models.get_model("resnet18")
    timm:resnet50                   timm.create_model("resnet50")        (when timm is installed)
    hf:LlamaForCausalLM             transformers.LlamaForCausalLM(LlamaConfig(**config))
    yolo:yolov8n.yaml               ultralytics DetectionModel("yolov8n.yaml")
    mypackage.models:build_net      mypackage.models.build_net()         (your own code)

Example:
    >>> type(build_model("torchvision:resnet18", num_classes=10)).__name__
    'ResNet'
    >>> build_model("fxprune.demo.cifar_resnet:small_resnet").fc.out_features
    10
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

import torch
from torch import nn

from fxprune.errors import FxPruneError

_FORMS = "torchvision:NAME, timm:NAME, hf:CLASS, yolo:YAML or package.module:function"


def build_model(spec: str, num_classes: Optional[int] = None, weights: Optional[str] = None,
                checkpoint: Optional[os.PathLike] = None, config: Optional[dict] = None) -> nn.Module:
    """The model a spec names, optionally with weights.

    Args:
        spec: ``torchvision:NAME``, ``timm:NAME``, ``hf:CLASS``, ``yolo:YAML`` or
            ``package.module:function``.
        num_classes: passed to the constructor when given.
        config: for ``hf:`` specs, the config's entries (sizes, numbers of layers and heads).
        weights: for ``torchvision:`` specs, a weights name (``DEFAULT``, ``IMAGENET1K_V1``);
            downloaded by torch.hub and loaded with ``weights_only=True``.
        checkpoint: a state dict (or a dict with a ``"model"`` state dict, as
            :class:`fxprune.training.Trainer` writes) loaded with ``weights_only=True``.

    Returns:
        The model, in training mode as constructed.
    """
    kind, sep, name = spec.partition(":")
    if not sep or not kind or not name:
        raise FxPruneError(f"cannot read the model spec {spec!r}", hint=f"write it as {_FORMS}")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if kind == "torchvision":
        model = _torchvision(name, kwargs, weights)
    elif kind == "timm":
        model = _timm(name, kwargs, weights)
    elif kind in ("hf", "yolo"):
        if weights is not None:
            raise FxPruneError(f"--weights applies to torchvision models only; {kind}: models have random weights",
                               hint="load trained weights with --checkpoint FILE (a state dict)")
        model = _hf(name, dict(config or {}), num_classes) if kind == "hf" else _yolo(name, num_classes)
    else:
        if weights is not None:
            raise FxPruneError("--weights applies to torchvision models only", hint="use --checkpoint FILE")
        model = _user_function(kind, name, kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _torchvision(name: str, kwargs: dict, weights: Optional[str]) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise FxPruneError(f"torchvision has no model {name!r}",
                           hint="choose one of torchvision.models.list_models(), e.g. torchvision:resnet18")
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        enum = torchvision.models.get_model_weights(name)
        try:
            entry = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError as e:
            raise FxPruneError(f"{name} has no weights {weights!r}",
                               hint=f"choose one of DEFAULT, {', '.join(w.name for w in enum)}") from e
        state = torch.hub.load_state_dict_from_url(entry.url, progress=True, check_hash=True, weights_only=True)
        model.load_state_dict(state)
    return model


def _timm(name: str, kwargs: dict, weights: Optional[str]) -> nn.Module:
    if importlib.util.find_spec("timm") is None:
        raise FxPruneError("timm: model specs need the timm package, which is not installed",
                           hint="pip install timm, or use torchvision:NAME or package.module:function")
    if weights is not None:
        raise FxPruneError("--weights applies to torchvision models only",
                           hint="load timm weights with --checkpoint FILE (a state dict)")
    import timm

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise FxPruneError(f"timm cannot build {name!r}: {e}", hint="see timm.list_models()") from e


def _package(name: str, pip: str):
    if importlib.util.find_spec(name) is None:
        raise FxPruneError(f"this model spec needs the {pip} package, which is not installed",
                           hint=f"pip install {pip}, or use torchvision:NAME or package.module:function")
    return importlib.import_module(name)


def _hf(name: str, config: dict, num_classes: Optional[int]) -> nn.Module:
    transformers = _package("transformers", "transformers")
    model_class = getattr(transformers, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)
            and getattr(model_class, "config_class", None) is not None):
        raise FxPruneError(f"transformers has no model class {name!r}",
                           hint="name a class with a config, e.g. hf:LlamaForCausalLM or hf:BertModel")
    if num_classes is not None:
        config.setdefault("num_labels", num_classes)
    try:
        return model_class(model_class.config_class(**config))
    except (TypeError, ValueError) as e:
        raise FxPruneError(f"cannot build {name} from its config: {e}", hint="check --config KEY=VALUE,...") from e


def _yolo(name: str, num_classes: Optional[int]) -> nn.Module:
    _package("ultralytics", "ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(name, nc=num_classes, verbose=False)
    model.model[-1].dynamic = True  # the detection head's anchors follow the input size, as ultralytics' export does
    return model


def _user_function(module_name: str, function_name: str, kwargs: dict) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FxPruneError(f"cannot import {module_name!r}: {e}",
                           hint=f"install the package or run from its folder; specs read {_FORMS}") from e
    target = module
    for part in function_name.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise FxPruneError(f"{module_name} has no {function_name!r}",
                               hint="name a function (or class) that builds the model, e.g. mypkg.models:build")
    model = target(**kwargs)
    if not isinstance(model, nn.Module):
        raise FxPruneError(f"{module_name}:{function_name}() returned {type(model).__name__}, not an nn.Module",
                           hint="point the spec at a function that returns the model")
    return model


def load_checkpoint(model: nn.Module, path: os.PathLike) -> None:
    """Load a state dict saved with ``torch.save`` into ``model``, with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FxPruneError(f"{path} does not load with torch.load(weights_only=True): {type(e).__name__}",
                           hint="save a state dict: torch.save(model.state_dict(), path)") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a fxprune.training.Trainer checkpoint
    if not isinstance(state, dict):
        raise FxPruneError(f"{path} holds a {type(state).__name__}, not a state dict",
                           hint="save a state dict: torch.save(model.state_dict(), path)")
    model.load_state_dict(state)

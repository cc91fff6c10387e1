"""The penultimate features of a prepared model: the input of its classifier.

fxprune finds the classifier itself: walking back from the graph's output through ops
that only reshape or drop out, the first layer with weights (a Linear, or a convolution
acting as one) is the classifier, and what enters it are the deep features Center Loss
stabilises. A forward pre-hook captures them on every forward pass:

    ... ── avgpool ── flatten ── [features] ── fc ── output

Example:
    >>> tap = FeatureTap(pm)                    # doctest: +SKIP
    >>> logits = pm(x); tap.features.shape      # doctest: +SKIP
    torch.Size([128, 64])
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx
import torch.nn as nn

from fxprune.errors import FxPruneError

_PASS_THROUGH = {"flatten", "view", "reshape", "contiguous", "squeeze"}
_PASS_THROUGH_MODULES = (nn.Dropout, nn.Identity, nn.Flatten)


def classifier_of(gm: torch.fx.GraphModule) -> str:
    """The module path of the classifier: the last layer with weights before the output."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    node = _only_input(output.args[0])
    while node is not None:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)):
                return node.target
            node = _only_input(node.args[0]) if isinstance(m, _PASS_THROUGH_MODULES) else None
        elif node.op == "call_method" and node.target in _PASS_THROUGH:
            node = _only_input(node.args[0])
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in _PASS_THROUGH:
            node = _only_input(node.args[0])
        else:
            node = None
    raise FxPruneError("cannot find the classifier: the model's output does not come straight from a Linear "
                       "or convolution layer", hint="pass the classifier's module path explicitly (classifier=...)")


def _only_input(arg) -> Optional[torch.fx.Node]:
    if isinstance(arg, torch.fx.Node):
        return arg
    if isinstance(arg, (tuple, list)) and len(arg) == 1 and isinstance(arg[0], torch.fx.Node):
        return arg[0]
    if isinstance(arg, dict) and len(arg) == 1:
        return _only_input(next(iter(arg.values())))
    return None


class FeatureTap:
    """Captures the input of the classifier on every forward pass (``tap.features``).

    Args:
        gm: a (prepared) GraphModule.
        classifier: the classifier's module path; found automatically when None.
    """

    def __init__(self, gm: torch.fx.GraphModule, classifier: Optional[str] = None):
        self.classifier = classifier or classifier_of(gm)
        self._recorder = _Recorder()
        self._handle = gm.get_submodule(self.classifier).register_forward_pre_hook(self._recorder)

    @property
    def features(self) -> Optional[torch.Tensor]:
        """The classifier's input from the latest forward pass."""
        return self._recorder.features

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()


class _Recorder:
    """The hook itself; ``__fxprune__`` lets finalize drop it from the models it returns."""

    __fxprune__ = True

    def __init__(self):
        self.features = None

    def __call__(self, module, args) -> None:
        self.features = args[0]

    def __deepcopy__(self, memo):
        return _Recorder()

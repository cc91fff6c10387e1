"""fxprune: structured pruning as a torch.fx compiler pass.

    pm = fxprune.prepare(model)          # capture, find coupled channels, insert masks
    fxprune.prune_by_importance(pm, 0.5)  # or train the masks (EPFS, OICSR)
    fxprune.reconstruct(pm, batches)     # optional: kept channels make up for removed ones (no labels)
    small = fxprune.finalize(pm)         # a GraphModule with physically smaller tensors
    fxprune.export.save(small, "small.pt2", x)   # ship it: fxprune.export.load opens it without pickle

The public names below are loaded on first use, so ``import fxprune.core`` (the pass
alone) loads nothing of the methods, training, reports, export, CLI or demo.
"""

from __future__ import annotations

import importlib

# public name -> (module, attribute in it; None: the module itself)
_PUBLIC = {
    "prepare": ("fxprune.core.prepare", "prepare"),
    "finalize": ("fxprune.core.finalize", "finalize"),
    "PruneConfig": ("fxprune.config", "PruneConfig"),
    "LayerHandler": ("fxprune.core.rules", "Handler"),
    "RuleContext": ("fxprune.core.rules", "RuleContext"),
    "register_handler": ("fxprune.core.rules", "register"),
    "mask_parameters": ("fxprune.core.masks", "mask_parameters"),
    "gate_parameters": ("fxprune.core.masks", "gate_parameters"),
    "weight_parameters": ("fxprune.core.masks", "weight_parameters"),
    **{name: ("fxprune.errors", name) for name in (
        "FxPruneError", "EquivalenceError", "MaskError", "NotPreparedError", "TraceError", "UnsupportedOpError")},
    "prune_to_macs": ("fxprune.methods.budget", "prune_to_macs"),
    "CenterLoss": ("fxprune.methods.center_loss", "CenterLoss"),
    "EPFS": ("fxprune.methods.epfs", "EPFS"),
    "normalised_groups": ("fxprune.methods.epfs", "normalised_groups"),
    "FeatureTap": ("fxprune.methods.features", "FeatureTap"),
    "FISTA": ("fxprune.methods.fista", "FISTA"),
    **{name: ("fxprune.methods.importance", name) for name in (
        "channel_importance", "prune_by_importance", "relative_to_group")},
    **{name: ("fxprune.methods.oicsr", name) for name in (
        "OutInGroupLasso", "greedy_prune", "oicsr_importance", "relative_oicsr_importance")},
    "reconstruct": ("fxprune.methods.reconstruct", "reconstruct"),
    **{name: ("fxprune.report", name) for name in (
        "branches", "channel_groups", "dependency_graph", "prunable_share")},
    "Count": ("fxprune.report.count", "Count"),
    "count": ("fxprune.report.count", "count"),
    "export": ("fxprune.export", None),
    "report": ("fxprune.report", None),
    "report_html": ("fxprune.report.html", None),
    "distributed": ("fxprune.training.distributed", None),
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fxprune' has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


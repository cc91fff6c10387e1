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

# module -> the public names it defines
_NAMES = {
    "fxprune.config": ("PruneConfig",),
    "fxprune.core.prepare": ("prepare",),
    "fxprune.core.finalize": ("finalize",),
    "fxprune.core.rules": ("RuleContext",),
    "fxprune.core.masks": ("mask_parameters", "gate_parameters", "weight_parameters"),
    "fxprune.errors": ("FxPruneError", "EquivalenceError", "MaskError", "NotPreparedError", "TraceError",
                       "UnsupportedOpError"),
    "fxprune.methods.budget": ("prune_to_macs",),
    "fxprune.methods.center_loss": ("CenterLoss",),
    "fxprune.methods.epfs": ("EPFS", "normalised_groups"),
    "fxprune.methods.features": ("FeatureTap",),
    "fxprune.methods.fista": ("FISTA",),
    "fxprune.methods.importance": ("channel_importance", "prune_by_importance", "relative_to_group"),
    "fxprune.methods.oicsr": ("OutInGroupLasso", "greedy_prune", "oicsr_importance", "relative_oicsr_importance"),
    "fxprune.methods.reconstruct": ("reconstruct",),
    "fxprune.report": ("branches", "channel_groups", "dependency_graph", "prunable_share"),
    "fxprune.report.count": ("Count", "count"),
}
# public name -> (module, attribute in it; None: the module itself), for the names above and these
_PUBLIC = {name: (module, name) for module, names in _NAMES.items() for name in names}
_PUBLIC.update({
    "LayerHandler": ("fxprune.core.rules", "Handler"),
    "register_handler": ("fxprune.core.rules", "register"),
    "export": ("fxprune.export", None),
    "report": ("fxprune.report", None),
    "report_html": ("fxprune.report.html", None),
    "distributed": ("fxprune.training.distributed", None),
})

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


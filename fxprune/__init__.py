"""fxprune: structured pruning as a torch.fx compiler pass.

    pm = fxprune.prepare(model)          # capture, find coupled channels, insert masks
    fxprune.prune_by_importance(pm, 0.5)  # or train the masks (EPFS, OICSR)
    small = fxprune.finalize(pm)         # a GraphModule with physically smaller tensors
    fxprune.export.save(small, "small.pt2", x)   # ship it: fxprune.export.load opens it without pickle
"""

from fxprune import export, report
from fxprune.config import PruneConfig
from fxprune.core.finalize import finalize
from fxprune.core.masks import gate_parameters, mask_parameters, weight_parameters
from fxprune.core.prepare import prepare
from fxprune.core.rules import Handler as LayerHandler
from fxprune.core.rules import RuleContext
from fxprune.core.rules import register as register_handler
from fxprune.errors import EquivalenceError, FxPruneError, MaskError, NotPreparedError, TraceError, UnsupportedOpError
from fxprune.methods.budget import prune_to_macs
from fxprune.methods.center_loss import CenterLoss
from fxprune.methods.epfs import EPFS, normalised_groups
from fxprune.methods.features import FeatureTap
from fxprune.methods.fista import FISTA
from fxprune.methods.importance import channel_importance, prune_by_importance, relative_to_group
from fxprune.methods.oicsr import OutInGroupLasso, greedy_prune, oicsr_importance, relative_oicsr_importance
from fxprune.report import branches, channel_groups, dependency_graph, prunable_share
from fxprune.report import html as report_html
from fxprune.report.count import Count, count
from fxprune.training import distributed

__all__ = [
    "CenterLoss", "EPFS", "FISTA", "FeatureTap", "OutInGroupLasso", "gate_parameters", "greedy_prune",
    "mask_parameters", "normalised_groups", "oicsr_importance", "prune_to_macs", "relative_oicsr_importance",
    "weight_parameters",
    "Count", "EquivalenceError", "FxPruneError", "MaskError", "NotPreparedError", "PruneConfig", "TraceError",
    "UnsupportedOpError", "branches", "channel_groups", "channel_importance", "count", "dependency_graph",
    "finalize", "prepare", "prunable_share", "prune_by_importance", "relative_to_group", "report",
    "distributed", "export", "report_html", "LayerHandler", "RuleContext", "register_handler",
]
__version__ = "0.1.0"

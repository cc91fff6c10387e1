"""fxprune: structured pruning as a torch.fx compiler pass.

    pm = fxprune.prepare(model)          # trace, find coupled channels, insert masks
    fxprune.prune_by_importance(pm, 0.5)  # or train the masks (EPFS, OICSR)
    small = fxprune.finalize(pm)         # a GraphModule with physically smaller tensors
    fxprune.export.save(small, "small.pt2", x)   # ship it: fxprune.export.load opens it without pickle
"""

from .api import finalize, prepare
from .config import PruneConfig
from .count import Count, count
from .errors import EquivalenceError, FxPruneError, MaskError, NotPreparedError, TraceError, UnsupportedOpError
from . import distributed, export, report, report_html
from .masks import gate_parameters, mask_parameters, weight_parameters
from .methods.budget import prune_to_macs
from .methods.center_loss import CenterLoss
from .methods.epfs import EPFS, normalised_groups
from .methods.features import FeatureTap
from .methods.fista import FISTA
from .methods.importance import channel_importance, prune_by_importance, relative_to_group
from .methods.oicsr import OutInGroupLasso, greedy_prune, oicsr_importance, relative_oicsr_importance
from .report import branches, channel_groups, dependency_graph, prunable_share

__all__ = [
    "CenterLoss", "EPFS", "FISTA", "FeatureTap", "OutInGroupLasso", "gate_parameters", "greedy_prune",
    "mask_parameters", "normalised_groups", "oicsr_importance", "prune_to_macs", "relative_oicsr_importance",
    "weight_parameters",
    "Count", "EquivalenceError", "FxPruneError", "MaskError", "NotPreparedError", "PruneConfig", "TraceError",
    "UnsupportedOpError", "branches", "channel_groups", "channel_importance", "count", "dependency_graph",
    "finalize", "prepare", "prunable_share", "prune_by_importance", "relative_to_group", "report",
    "distributed", "export", "report_html",
]
__version__ = "0.1.0"

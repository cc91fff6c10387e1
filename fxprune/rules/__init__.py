"""Op rules: how channels flow through each op. Importing this package fills the registry."""

from . import attention, elementwise, layers, movement, reduce, views  # noqa: F401  (registration; views after movement)
from .registry import MaskSite, ParamRecord, RuleContext, empty_like, lookup, rule

__all__ = ["MaskSite", "ParamRecord", "RuleContext", "empty_like", "lookup", "rule"]

"""Every torchvision classifier: prepare, prune half of every group at random, finalize, compare.

A model that raises here is a bug to fix, not a skip.
"""

import pytest
import torch
import torchvision
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune
from fxprune.testing import small_input, torchvision_classifiers

TRANSFORMERS = ("vit", "swin", "maxvit", "convnext")
# Classes that cannot hold what zero_channels prunes in them, so finalize(keep_classes=True) refuses: the
# ShuffleNets chunk a tensor into equal halves that pruning makes unequal; nn.MultiheadAttention
# (ViT) needs its projections as wide as its embedding; Swin and MaxViT derive their head width from
# their (unpruned) embedding. Prepared with PruneConfig(keep_classes=True), those channels are frozen
# and they come back as their own classes too; every other classifier does without it.
KEEP_CLASSES_REFUSED = ("shufflenet", "vit", "swin", "maxvit")


def _family(name: str) -> str:
    return "transformer" if name.startswith(TRANSFORMERS) else "convolutional"


@pytest.mark.zoo
@pytest.mark.timeout(900)  # the largest transformers are prepared twice, the second time holding what classes cannot
@pytest.mark.parametrize("name", torchvision_classifiers())
def test_zoo_model_prunes_exactly(name):
    torch.manual_seed(0)
    model = randomize(torchvision.models.get_model(name).eval())
    x = small_input(name)
    pm = fxprune.prepare(model, x)
    if _family(name) == "convolutional":
        assert fxprune.prunable_share(pm) >= 0.9, fxprune.report.frozen_table(pm)
    else:
        rows = {r.layer: r for r in fxprune.report.layer_rows(pm)}
        hidden = [r for layer, r in rows.items() if _is_mlp_hidden(name, layer)]
        heads = [r for layer, r in rows.items() if _is_attention_input(layer)]
        assert hidden and all(r.prunable == r.channels for r in hidden), fxprune.report.frozen_table(pm)
        assert all(r.prunable == r.channels for r in heads), fxprune.report.frozen_table(pm)
        assert bool(heads) == (not name.startswith("convnext"))
    zero_channels(pm, 0.5, seed=1)
    small = assert_finalized_equals_masked(pm)
    assert fxprune.count(small, x).macs < fxprune.count(model, x).macs
    if name.startswith(KEEP_CLASSES_REFUSED):
        with pytest.raises(fxprune.FxPruneError, match="cannot be returned as its own classes"):
            fxprune.finalize(pm, keep_classes=True)
        pm = fxprune.prepare(model, x, fxprune.PruneConfig(keep_classes=True))
        assert 0.4 <= fxprune.prunable_share(pm), fxprune.report.frozen_table(pm)
        zero_channels(pm, 0.5, seed=1)
        small = assert_finalized_equals_masked(pm)
    own = fxprune.finalize(pm, keep_classes=True)
    assert type(own) is type(model) and own.fxprune_equivalence_error < 1e-4
    x2 = small_input(name, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(own.eval()(x2), small(x2), rtol=1e-4, atol=1e-4)


def _is_mlp_hidden(name: str, layer: str) -> bool:
    """The first linear layer of each MLP block (its outputs are the hidden channels)."""
    if name.startswith("vit"):
        return layer.endswith("mlp.0.weight")
    if name.startswith("swin"):
        return layer.endswith("mlp.0.weight")
    if name.startswith("maxvit"):
        return layer.endswith("mlp_layer.1.weight")
    return layer.endswith("block.3.weight")  # convnext: dwconv, permute, norm, Linear(dim, 4 dim)


def _is_attention_input(layer: str) -> bool:
    """The q/k/v projections: their rows are heads x head-dims."""
    return layer.endswith(("in_proj_weight", "attn.qkv.weight", "to_qkv.weight"))


@pytest.mark.zoo
def test_swin3d_t_prunes_exactly():
    """Regression: prepare raised TypeError "'immutable_list' object does not support mutation" because
    propagation handed torchvision's _get_window_and_shift_size the node's own (immutable) list of window
    sizes, which it edits in place; the generated code builds a fresh list at every call."""
    torch.manual_seed(0)
    model = randomize(torchvision.models.video.swin3d_t().eval())
    x = torch.randn(1, 3, 4, 32, 32)
    pm = fxprune.prepare(model, x)
    rows = {r.layer: r for r in fxprune.report.layer_rows(pm)}
    hidden = [r for layer, r in rows.items() if layer.endswith("mlp.0.weight")]
    assert hidden and all(r.prunable == r.channels for r in hidden), fxprune.report.frozen_table(pm)
    zero_channels(pm, 0.5, seed=1)
    small = assert_finalized_equals_masked(pm)
    assert fxprune.count(small, x).macs < fxprune.count(model, x).macs

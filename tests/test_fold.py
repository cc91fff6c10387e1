"""finalize folds surviving fractional mask values into the weights, or keeps them as a multiply."""

import torch
from archs import TokenArch, TokenNet
from helpers import assert_finalized_equals_masked, randomize, zero_channels

import fxprune


def test_a_fractional_mask_before_attention_is_kept_as_a_multiply_and_its_sizes_rewritten():
    """Regression (issue 32's fractional-mask draws): a mask on the queries of scaled_dot_product_attention
    cannot fold into a layer, so finalize multiplies by the surviving values; resizing the attention then
    looked up that multiply's layout, which prepare never saw, and raised TypeError."""
    arch = TokenArch(blocks=(("attn", 1, 2, "sdpa"),), dim=4, tokens=2, norm=False, classes=1)
    pm = fxprune.prepare(randomize(TokenNet(arch).eval()), torch.randn(2, 2, 3))
    zero_channels(pm, 0.25, kept=(0.2, 1.5))
    small = assert_finalized_equals_masked(pm, more_inputs=[(torch.randn(3, 2, 3),)], train=True)
    assert any(name.startswith("folded_scale_") for name, _ in small.named_buffers())

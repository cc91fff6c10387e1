"""CenterLoss: loss value, gradient and centre update against a hand computation."""

import pytest
import torch

from fxprune.errors import FxPruneError
from fxprune.methods.center_loss import CenterLoss

# 4 samples, 2 features, 3 classes (class 1 absent from the batch).
FEATURES = [[1.0, 2.0], [3.0, 4.0], [0.0, 1.0], [2.0, -1.0]]
LABELS = [0, 0, 2, 0]
CENTERS = [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]
# x - c_y: [0, 1], [2, 3], [-1, 1], [1, -2]; squared norms 1, 13, 2, 5; 1/2 * mean = 21 / 8
LOSS = 2.625
# class 0: n = 3, sum(c_0 - x_i) = [3, 3] - [6, 5] = [-3, -2], delta = [-0.75, -0.5], c_0 <- [1.375, 1.25]
# class 2: n = 1, c_2 - x_2 = [1, -1], delta = [0.5, -0.5], c_2 <- [0.75, 0.25]; class 1 stays
UPDATED = [[1.375, 1.25], [0.0, 0.0], [0.75, 0.25]]


def make_loss(**kwargs) -> CenterLoss:
    loss = CenterLoss(num_classes=3, feat_dim=2, alpha=0.5, **kwargs)
    loss.centers.copy_(torch.tensor(CENTERS))
    return loss


def test_loss_gradient_and_update_match_the_hand_computation():
    criterion = make_loss()
    x = torch.tensor(FEATURES, requires_grad=True)
    value = criterion(x, torch.tensor(LABELS))
    assert value.item() == pytest.approx(LOSS)
    value.backward()
    expected_grad = (torch.tensor(FEATURES) - torch.tensor(CENTERS)[LABELS]) / 4
    torch.testing.assert_close(x.grad, expected_grad)  # the loss used the centres from before the update
    torch.testing.assert_close(criterion.centers, torch.tensor(UPDATED))


def test_explicit_update_without_auto_update():
    criterion = make_loss(auto_update=False)
    assert criterion(torch.tensor(FEATURES), torch.tensor(LABELS)).item() == pytest.approx(LOSS)
    torch.testing.assert_close(criterion.centers, torch.tensor(CENTERS))
    criterion.update(torch.tensor(FEATURES), torch.tensor(LABELS))
    torch.testing.assert_close(criterion.centers, torch.tensor(UPDATED))


def test_eval_mode_leaves_the_centres_alone():
    criterion = make_loss().eval()
    criterion(torch.tensor(FEATURES), torch.tensor(LABELS))
    torch.testing.assert_close(criterion.centers, torch.tensor(CENTERS))


def test_centres_are_a_buffer_not_a_parameter():
    criterion = make_loss()
    assert list(criterion.parameters()) == []
    assert "centers" in dict(criterion.named_buffers())


def test_lazy_centres_are_sized_on_first_call_and_load_from_a_state_dict():
    lazy = CenterLoss(num_classes=3)
    assert lazy.centers is None
    lazy(torch.randn(5, 2, 2, 2), torch.tensor([0, 1, 2, 0, 1]))  # (N, C, H, W) is flattened
    assert lazy.centers.shape == (3, 8) and lazy.feat_dim == 8
    fresh = CenterLoss(num_classes=3)
    fresh.load_state_dict(lazy.state_dict())
    assert torch.equal(fresh.centers, lazy.centers)


def test_feature_size_mismatch_is_an_error():
    with pytest.raises(FxPruneError, match="centres have 2 features but the batch has 3"):
        make_loss()(torch.zeros(2, 3), torch.tensor([0, 1]))

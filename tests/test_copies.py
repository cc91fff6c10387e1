"""Copy-on-write copies: each side keeps its values whatever the other writes."""

import pytest
import torch
import torch.nn as nn

import fxprune
from fxprune.core.copies import clone, copy_module


def values(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_write_on_either_side_never_reaches_the_other():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    original = values(model)
    copied = copy_module(model)
    with torch.no_grad():
        for t in list(copied.parameters()) + list(copied.buffers()):
            t.add_(1)
    assert_same(values(model), original)
    written = values(copied)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.mul_(0)
    assert_same(values(copied), written)


def test_copy_keeps_parameters_trainable_and_buffers_not():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model[0].bias.requires_grad_(False)
    copied = copy_module(model)
    assert isinstance(copied[0].weight, nn.Parameter) and copied[0].weight.requires_grad
    assert not copied[0].bias.requires_grad
    assert not isinstance(copied[1].running_mean, nn.Parameter)
    assert [n for n, _ in copied.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_attributes_set_on_parameters_and_buffers_survive_the_copy():
    # copy.deepcopy keeps a buffer's but drops a Parameter's (torch's Parameter.__deepcopy__)
    model = nn.BatchNorm1d(3)
    model.weight.fxprune_test_tag = "w"
    model.running_mean.fxprune_test_tag = "b"
    copied = copy_module(model)
    assert copied.weight.fxprune_test_tag == "w" and copied.running_mean.fxprune_test_tag == "b"
    assert copied.weight is not model.weight and copied.running_mean is not model.running_mean


def test_tied_parameters_stay_one_parameter():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    copied = copy_module(model)
    assert copied[1].weight is copied[0].weight and copied[0].weight is not model[0].weight


def test_views_of_one_storage_stay_views_of_one_storage():
    class Views(nn.Module):
        def __init__(self):
            super().__init__()
            flat = torch.zeros(6)
            self.register_buffer("a", flat[:3])
            self.register_buffer("b", flat[3:])

    model = Views()
    copied = copy_module(model)  # falls back to deepcopy, which keeps the sharing
    assert copied.a.untyped_storage()._cdata == copied.b.untyped_storage()._cdata
    copied.a.add_(1)
    assert model.a.sum() == 0


def test_clone_of_a_pinned_or_shared_tensor_is_an_ordinary_copy():
    shared = torch.zeros(3).share_memory_()
    copy_ = clone(shared)
    shared.add_(1)  # the user's write stays in shared memory
    assert shared.is_shared() and copy_.sum() == 0


def test_training_the_prepared_model_never_reaches_the_callers_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    original = values(model)
    pm = fxprune.prepare(model, torch.randn(2, 3, 8, 8))
    pm.train()
    opt = torch.optim.SGD(pm.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        pm(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
    assert_same(values(model), original)
    trained = values(pm)
    with torch.no_grad():
        model[0].weight.mul_(0)  # and the user's writes never reach the prepared model
    assert_same(values(pm), trained)


@pytest.mark.skipif(not hasattr(torch._C, "_is_cow_tensor"), reason="this torch has no copy-on-write tensors")
def test_prepare_and_finalize_never_materialise_the_copy():
    # data_ptr() or an in-place write anywhere in prepare would copy every weight it touches
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    pm = fxprune.prepare(model, torch.randn(1, 3, 8, 8))
    fxprune.prune_by_importance(pm, 0.5)
    fxprune.finalize(pm)
    copied = [p for name, p in pm.named_parameters() if not name.startswith("fxprune.")]
    assert len(copied) == len(list(model.parameters()))
    assert all(torch._C._is_cow_tensor(p) for p in copied)


def test_deepcopy_modules_copies_as_deepcopy_does():
    import copy

    import torchvision

    from fxprune.core.copies import deepcopy_modules

    class Odd(nn.Module):  # copies itself its own way: deepcopy_modules must defer to that
        def __init__(self):
            super().__init__()
            self.copied = False

        def __deepcopy__(self, memo):
            new = Odd()
            new.copied = True
            return new

    model = torchvision.models.resnet18()
    shared = nn.ReLU()
    model.extra = nn.Sequential(shared, nn.Linear(2, 2), shared, Odd())
    model.extra.sizes = [1, 2]
    model.extra.register_forward_hook(lambda m, args, out: None)
    fast, slow = deepcopy_modules(model, {}), copy.deepcopy(model)
    assert repr(fast) == repr(slow)
    assert_same(values(fast), values(slow))
    assert fast.extra[0] is fast.extra[2] and fast.extra[0] is not shared
    assert fast.extra[3].copied and fast.extra.sizes == [1, 2] and fast.extra.sizes is not model.extra.sizes
    assert len(fast.extra._forward_hooks) == 1
    for (name, a), (_, b) in zip(fast.named_modules(), slow.named_modules()):
        assert type(a) is type(b) and a.__dict__.keys() == b.__dict__.keys(), name
        plain = {k for k, v in vars(a).items() if not isinstance(v, (dict, torch.Tensor, nn.Module))}
        assert {k: vars(a)[k] for k in plain} == {k: vars(b)[k] for k in plain}, name
    assert all(p is not q for p, q in zip(fast.parameters(), model.parameters()))

"""finalize(keep_classes=True): the pruned model comes back as the user's own classes, checked."""

import pytest
import torch
import torch.nn as nn
import torchvision
from families import FAMILIES
from helpers import outputs, randomize, zero_channels

import fxprune
from fxprune.core.ir import ExampleInputs
from fxprune.testing import small_input


def _same_on(model, reference, inputs):
    for got, want in zip(outputs(model, ExampleInputs.of(inputs)), outputs(reference, ExampleInputs.of(inputs))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "convnext_tiny"])
def test_torchvision_classifiers_come_back_as_their_own_classes(name):
    model = randomize(torchvision.models.get_model(name).eval())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    pm = fxprune.prepare(model, small_input(name))
    zero_channels(pm, 0.5, seed=1)
    small = fxprune.finalize(pm, keep_classes=True)
    assert type(small) is type(model) and small is not model and small.fxprune_equivalence_error < 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    _same_on(small, fxprune.finalize(pm), small_input(name, batch=3))
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes  # the user's model is as it was


def _heads_and_mlp(pm, heads: int):
    """Half of every attention layer's heads and of every MLP's channels (head widths stay uniform)."""
    for g in fxprune.channel_groups(pm):
        names = " ".join(str(m) for m in g.members)
        if g.size == heads or "mlp" in names:
            with torch.no_grad():
                pm.fxprune.masks[g.name][: g.size // 2] = 0


@pytest.mark.parametrize("family, heads", [("hf_bert", None), ("hf_vit", None), ("hf_resnet", None),
                                           ("hf_gpt2", 4), ("hf_llama", 2), ("yolov8n", None), ("yolo11n", None),
                                           ("timm_mobilevit_s", None), ("timm_tf_efficientnetv2_s", None),
                                           ("smp_fpn", None)])
def test_model_families_come_back_as_their_own_classes(family, heads):
    case = FAMILIES[family]()
    model = randomize(case.model)
    pm = fxprune.prepare(model, case.example)
    if heads is None:
        fxprune.prune_by_importance(pm, 0.5, importance="l1", scope="local")
    else:  # GPT-2 and Llama keep one head width per layer: prune whole heads (and MLP channels)
        _heads_and_mlp(pm, heads)
    small = fxprune.finalize(pm, keep_classes=True)
    assert type(small) is type(model) and small.fxprune_equivalence_error < 1e-4
    for other in case.others:  # another batch size, and for token models another length
        _same_on(small, pm, other)


def test_a_pruned_llama_generates_tokens():
    case = FAMILIES["hf_llama"]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    _heads_and_mlp(pm, heads=2)
    small = fxprune.finalize(pm, keep_classes=True)
    attention = small.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (32, 16)  # 2 of 4 heads, 1 of 2 kv
    ids = case.example["input_ids"][:1]
    tokens = small.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, ids.shape[1] + 4)


def test_a_pruned_yolo_trains_a_step_with_ultralytics_loss_and_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxscript")
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    case = FAMILIES["yolov8n"]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    fxprune.prune_by_importance(pm, 0.5)
    small = fxprune.finalize(pm, keep_classes=True)
    small.args = get_cfg(DEFAULT_CFG)  # the hyper-parameters ultralytics' trainer sets
    small.train()
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])
    batch = {"img": torch.rand(2, 3, 64, 64), "cls": torch.tensor([[0.0], [3.0]]),
             "batch_idx": torch.tensor([0.0, 1.0]), "bboxes": boxes}
    before = [p.detach().clone() for p in small.parameters()]
    loss, _ = small.loss(batch)
    loss.sum().backward()
    torch.optim.SGD(small.parameters(), lr=0.01).step()
    assert torch.isfinite(loss).all() and any(not torch.equal(a, b) for a, b in zip(before, small.parameters()))
    small.eval()
    fxprune.export.to_onnx(small, tmp_path / "yolo.onnx", torch.randn(1, 3, 64, 64))  # checked by onnxruntime


class HardCoded(nn.Module):
    """Its forward names a width in the code: no attribute of its can follow the pruning."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.head(y.reshape(y.shape[0], 8, -1).mean(-1))


def test_a_width_hard_coded_in_the_forward_gets_a_clear_error():
    pm = fxprune.prepare(randomize(HardCoded().eval()), torch.randn(2, 3, 4, 4))
    zero_channels(pm, 0.5)
    fxprune.finalize(pm)  # the GraphModule is exact
    with pytest.raises(fxprune.FxPruneError) as e:
        fxprune.finalize(pm, keep_classes=True)
    message = str(e.value)
    assert "HardCoded cannot be returned as its own classes" in message
    assert "reshape" in message and "[8] -> [4]" in message
    assert "keep_classes=False, the default) returns a GraphModule that is exact" in message


def test_prepared_for_keep_classes_freezes_only_what_the_classes_cannot_hold():
    model = randomize(torchvision.models.shufflenet_v2_x0_5().eval())
    x = small_input("shufflenet_v2_x0_5")
    plain = fxprune.prepare(model, x)
    zero_channels(plain, 0.5, seed=1)
    with pytest.raises(fxprune.FxPruneError, match="cannot be returned as its own classes"):
        fxprune.finalize(plain, keep_classes=True)
    pm = fxprune.prepare(model, x, fxprune.PruneConfig(keep_classes=True))
    held = fxprune.report.frozen_table(pm)
    assert "keep_classes: ShuffleNetV2 cannot be returned as its own classes" in held
    assert 0.5 < fxprune.prunable_share(pm) < fxprune.prunable_share(plain)
    assert not fxprune.branches(pm)  # its classes cannot lose a branch: no gates
    for seed in (1, 2):  # any masks now come back as the user's classes
        zero_channels(pm, 0.5, seed=seed)
        small = fxprune.finalize(pm, keep_classes=True)
        assert type(small) is type(model) and small.fxprune_equivalence_error < 1e-4
        _same_on(small, fxprune.finalize(pm), small_input("shufflenet_v2_x0_5", batch=3))


class HalfHardCoded(nn.Module):
    """One width named in the code (``conv``'s 8, in the reshape), one free (``mid``'s 6)."""

    def __init__(self):
        super().__init__()
        self.mid, self.conv, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.conv(torch.relu(self.mid(x))))
        return self.head(y.reshape(y.shape[0], 8, -1).mean(-1))


def test_keep_classes_at_prepare_freezes_the_hard_coded_width_and_keeps_the_rest():
    model = randomize(HalfHardCoded().eval())
    assert len(fxprune.channel_groups(fxprune.prepare(model, torch.randn(2, 3, 4, 4)))) == 2
    pm = fxprune.prepare(model, torch.randn(2, 3, 4, 4), fxprune.PruneConfig(keep_classes=True))
    assert [g.size for g in fxprune.channel_groups(pm)] == [6]  # conv's outputs are held, mid's are not
    assert "[8] -> [7]" in fxprune.report.frozen_table(pm)  # the trial's error is the reason
    zero_channels(pm, 0.5)
    small = fxprune.finalize(pm, keep_classes=True)
    assert type(small) is HalfHardCoded and small.mid.out_channels == 3 and small.conv.out_channels == 8


def test_keep_classes_at_prepare_changes_nothing_where_the_classes_hold_everything():
    model = randomize(torchvision.models.resnet18(num_classes=4).eval())
    x = torch.randn(1, 3, 32, 32)
    plain, held = fxprune.prepare(model, x), fxprune.prepare(model, x, fxprune.PruneConfig(keep_classes=True))
    assert [g.size for g in fxprune.channel_groups(held)] == [g.size for g in fxprune.channel_groups(plain)]
    assert fxprune.branches(plain) and not fxprune.branches(held)


def test_removed_branches_are_refused_up_front():
    pm = fxprune.prepare(randomize(torchvision.models.resnet18(num_classes=4).eval()), torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        next(iter(pm.fxprune.gates.values())).zero_()
    with pytest.raises(fxprune.FxPruneError, match="removed residual branches"):
        fxprune.finalize(pm, keep_classes=True)


@pytest.mark.parametrize("family, build", [
    ("hf_llama", lambda model: type(model)(model.config)),
    ("yolov8n", lambda model: _yolo_again()),
])
def test_a_model_in_its_own_classes_saves_and_rebuilds_from_its_constructor(tmp_path, family, build):
    case = FAMILIES[family]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    if family == "hf_llama":
        _heads_and_mlp(pm, heads=2)
    else:
        fxprune.prune_by_importance(pm, 0.5)
    small = fxprune.finalize(pm, keep_classes=True)
    path = fxprune.export.save_widths(small, tmp_path / "pruned.pt")
    again = fxprune.export.load_widths(path, lambda: build(case.model))
    assert type(again) is type(small)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    _same_on(again, small, case.others[0])


def _yolo_again():
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False)
    model.model[-1].dynamic = True
    return model


def test_load_widths_refuses_another_model(tmp_path):
    small = torchvision.models.resnet18(num_classes=3)
    path = fxprune.export.save_widths(small, tmp_path / "r.pt")
    with pytest.raises(fxprune.FxPruneError, match="build\\(\\) made a MobileNetV2"):
        fxprune.export.load_widths(path, lambda: torchvision.models.mobilenet_v2())


def test_uniform_pruning_updates_the_config_so_the_class_rebuilds_from_it(tmp_path):
    case = FAMILIES["hf_llama"]()
    model = randomize(case.model)
    before = model.config.to_dict()
    pm = fxprune.prepare(model, case.example)
    _heads_and_mlp(pm, heads=2)
    small = fxprune.finalize(pm, keep_classes=True)
    entries = {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64}
    assert {k: getattr(small.config, k) for k in entries} == entries
    assert not hasattr(small, "fxprune_config_differs")
    assert model.config.to_dict() == before  # the user's config is as it was
    again = type(small)(small.config)
    again.load_state_dict(small.state_dict())  # strict: every shape as the config now says
    with torch.no_grad():  # randomize() changed the rotary frequencies, which the config would give
        for name, buffer in small.named_buffers():
            again.get_buffer(name).copy_(buffer)
    _same_on(again.eval(), small, case.others[0])
    small.save_pretrained(tmp_path)  # Hugging Face's own round trip: config.json and safetensors
    reloaded = type(small).from_pretrained(tmp_path)
    assert {k: v.shape for k, v in reloaded.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


def test_a_config_that_cannot_say_the_pruned_widths_keeps_them_and_says_so():
    case = FAMILIES["hf_gpt2"]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    _heads_and_mlp(pm, heads=4)
    small = fxprune.finalize(pm, keep_classes=True)
    assert small.config.n_inner == 128  # the MLP's width: GPT-2's config can say it
    assert small.config.n_head == 4  # two heads of 16 in a width of 64 it cannot: n_embd / n_head is the head width
    assert small.fxprune_config_differs == {"num_attention_heads": [2, 2]}
    assert all(block.attn.num_heads == 2 for block in small.transformer.h)  # the modules' own counts follow


def test_layers_pruned_differently_leave_the_config_and_say_so():
    case = FAMILIES["hf_llama"]()
    pm = fxprune.prepare(randomize(case.model), case.example)
    mlp = [g for g in fxprune.channel_groups(pm) if "mlp" in " ".join(map(str, g.members))]
    with torch.no_grad():
        pm.fxprune.masks[mlp[0].name][:3] = 0  # one MLP loses 3 channels, the other none
    small = fxprune.finalize(pm, keep_classes=True)
    assert small.config.intermediate_size == case.model.config.intermediate_size
    assert small.fxprune_config_differs == {"intermediate_size": [125, 128]}

"""Trainer: checkpoints readable with weights_only, exact resume, hooks, evaluate."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fxprune.errors import FxPruneError
from fxprune.methods.fista import FISTA
from fxprune.training import Trainer, evaluate, latest_checkpoint


class GatedNet(nn.Module):
    """A tiny classifier with a channel gate (trained by FISTA) and dropout (uses the RNG)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.gate = nn.Parameter(torch.ones(16))
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x))) * self.gate))


def synthetic_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)  # order from the global RNG
    test = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)
    return train, test


def make_trainer(checkpoint_dir, seed, epochs=2, **kwargs):
    torch.manual_seed(seed)
    model = GatedNet()
    weights = [p for n, p in model.named_parameters() if n != "gate"]
    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4 * epochs)
    masks = FISTA([{"params": [model.gate], "lam": 1e-2, "nonneg": True}], lr=0.05)
    return Trainer(model, opt, sched, extra_optimizers={"masks": masks}, checkpoint_dir=checkpoint_dir,
                   progress=False, **kwargs)


def test_checkpoints_load_with_weights_only(tmp_path):
    train, test = synthetic_data()
    history = make_trainer(tmp_path, seed=0).fit(train, test, epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
    state = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 8
    assert set(state) >= {"model", "optimizer", "extra_optimizers", "scheduler", "rng", "history"}
    assert state["extra_optimizers"]["masks"]["state"], "FISTA state (x, t) must be checkpointed"
    assert [h["epoch"] for h in state["history"]] == [1, 2] and state["history"] == history
    assert all(0.0 <= h["test_top1"] <= 1.0 and h["images_per_second"] > 0 for h in history)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    train, test = synthetic_data()
    straight = make_trainer(tmp_path / "straight", seed=0)  # seeds the global RNG: init, dropout, data order
    straight.fit(train, test, epochs=2)

    make_trainer(tmp_path / "split", seed=0).fit(train, test, epochs=1)
    resumed = make_trainer(tmp_path / "split", seed=1)  # a later process: other RNG state and initial weights
    history = resumed.fit(train, test, epochs=2)

    assert [h["epoch"] for h in history] == [1, 2]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.extra_optimizers["masks"].state_dict()["state"][0]["t"] == \
        straight.extra_optimizers["masks"].state_dict()["state"][0]["t"]
    assert history[-1]["test_top1"] == straight.history[-1]["test_top1"]


def test_extra_loss_sees_features_and_targets_and_hooks_run(tmp_path):
    train, test = synthetic_data()
    seen, steps, epochs = [], [], []

    def extra_loss(model, outputs, features, targets):
        seen.append((tuple(outputs.shape), tuple(features.shape), tuple(targets.shape)))
        return 1e-3 * features.pow(2).mean()

    trainer = make_trainer(None, seed=0, extra_loss=extra_loss, feature_module="fc2",
                           step_hooks=[lambda t, step: steps.append(step)],
                           epoch_hooks=[lambda t, metrics: epochs.append(metrics["epoch"])])
    trainer.fit(train, None, epochs=2)
    assert seen[0] == ((16, 3), (16, 16), (16,)) and len(seen) == 8
    assert steps == list(range(1, 9)) and epochs == [1, 2]
    assert trainer.history[0]["test_top1"] is None


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train, test = synthetic_data()
    make_trainer(tmp_path, seed=0, epochs=3, keep_last=1).fit(train, test, epochs=3)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0003.pt"]


def test_resuming_with_other_extra_optimizers_is_an_error(tmp_path):
    train, test = synthetic_data()
    make_trainer(tmp_path, seed=0).fit(train, test, epochs=1)
    model = GatedNet()
    bare = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(FxPruneError, match=r"disagree on extra optimizers: \['masks'\]"):
        bare.fit(train, test, epochs=2)


def test_evaluate_counts_top1_and_restores_the_mode():
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    model.train()
    x = torch.eye(3)
    assert evaluate(model, [(x, torch.tensor([0, 1, 2])), (x, torch.tensor([0, 0, 0]))]) == pytest.approx(4 / 6)
    assert model.training


def test_a_traced_graph_module_trains_and_resumes_like_any_module(tmp_path):
    train, test = synthetic_data()
    torch.manual_seed(0)
    model = torch.fx.symbolic_trace(GatedNet())
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), feature_module="fc2",
                      extra_loss=lambda m, out, feats, y: 1e-3 * feats.abs().mean(),
                      checkpoint_dir=tmp_path, progress=False)
    trainer.fit(train, test, epochs=1)
    state = torch.load(tmp_path / "epoch_0001.pt", weights_only=True)
    assert state["model"].keys() == model.state_dict().keys()
    assert torch.equal(state["model"]["gate"], model.gate)


def test_recalibrate_bn_replaces_stale_statistics_with_the_batches_average():
    from fxprune.training.trainer import recalibrate_bn

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.eval()
    with torch.no_grad():
        model[1].running_mean.fill_(100.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(16, 3), None) for _ in range(4)]
    assert recalibrate_bn(model, batches, num_batches=3) == 1
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:3]]
    expected_mean = torch.stack([f.mean(0) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(0, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert model[1].momentum == 0.1 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

"""EPFS under DDP with two CPU processes (gloo): the replicas agree, and agree with one process on the global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fxprune
from fxprune.training.distributed import check_replicas, sync_center_loss, training_state

WORLD = 2
STEPS = 6
BATCH = 16  # global batch; each of the two processes gets 8


class ResidualNet(nn.Module):
    """No BatchNorm: a split batch then computes exactly what the whole batch does."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(width, width, 3, padding=1)) for _ in range(2))
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def setup():
    torch.manual_seed(0)
    pm = fxprune.prepare(ResidualNet(), torch.randn(2, 3, 8, 8))
    epfs = fxprune.EPFS(pm, lr=0.2, l1=0.4, l2=1e-4, gate_l1=0.4, center=0.01, num_classes=4)
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return pm, epfs, opt


def global_batches():
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        y = torch.randint(0, 4, (BATCH,), generator=gen)
        x = torch.randn(BATCH, 3, 8, 8, generator=gen)
        x[:, 0] += y[:, None, None].float()  # something to learn
        yield x, y


def train(model, pm, epfs, opt, shard=slice(None)):
    pm.train()
    for x, y in global_batches():
        loss = F.cross_entropy(model(x[shard]), y[shard]) + epfs.loss(y[shard])
        opt.zero_grad()
        epfs.zero_grad()
        loss.backward()
        opt.step()
        epfs.step()


def worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pm, epfs, opt = setup()
        sync_center_loss(epfs)
        ddp = DistributedDataParallel(pm)
        per_rank = BATCH // WORLD
        train(ddp, pm, epfs, opt, slice(rank * per_rank, (rank + 1) * per_rank))
        state = training_state(pm, epfs)
        check_replicas(state)  # raises on any difference
        try:
            check_replicas({"probe": torch.tensor([1.0, float(rank)])})
            caught = ""
        except fxprune.FxPruneError as e:
            caught = str(e)
        torch.save({**{k: v.clone() for k, v in state.items()}, "caught": caught},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return [{k: v for k, v in r.items() if k != "caught"} for r in results], [r["caught"] for r in results]


def test_masks_gates_and_fista_state_are_identical_on_every_rank(ranks):
    first, second = ranks[0]
    assert first.keys() == second.keys()
    assert any(k.startswith("fista/fxprune.masks") for k in first), "FISTA state of the masks"
    assert any(k.startswith("fista/fxprune.gates") for k in first), "FISTA state of the gates"
    assert "center" in first
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_ddp_equals_one_process_on_the_global_batch(ranks):
    pm, epfs, opt = setup()
    train(pm, pm, epfs, opt)
    single = training_state(pm, epfs)
    assert single.keys() == ranks[0][0].keys()
    for name, value in single.items():
        torch.testing.assert_close(ranks[0][0][name], value, rtol=1e-5, atol=1e-6, msg=name)
    masks = [v for k, v in single.items() if k.startswith("fista/fxprune.masks")]
    assert any(bool((m == 0).any()) for m in masks), "EPFS should have driven some masks to exact zero"


def test_check_replicas_names_the_tensor_that_differs(ranks):
    for caught in ranks[1]:
        assert "replicas differ in 'probe'" in caught

"""EPFS under ``torch.nn.parallel.DistributedDataParallel``.

DDP averages the gradient of every parameter of the model it wraps across processes.
The masks and gates of a prepared model are its parameters, so every process gets the
same gradient for them and takes the same FISTA step: masks, gates and FISTA's state
stay identical everywhere, and equal to one process training on the global batch
(for models whose layers do not depend on the batch split; BatchNorm normalises each
process's share by itself, as in any DDP job).

What DDP does not cover is Center Loss: it moves its centres with the features of the
batch it sees, which under DDP is one process's share. :func:`sync_center_loss` makes
the centres move with the features of the whole global batch (gathered from every
process), so they too stay identical and equal to one process's.

    pm = fxprune.prepare(model, x)
    epfs = fxprune.EPFS(pm, center=0.01, num_classes=10)
    sync_center_loss(epfs)                     # after init_process_group
    ddp = DistributedDataParallel(pm)
    opt = torch.optim.SGD(fxprune.weight_parameters(pm), lr=0.1, momentum=0.9)
    for x, y in loader:                        # a DistributedSampler gives each process its share
        loss = F.cross_entropy(ddp(x), y) + epfs.loss(y)
        opt.zero_grad(); epfs.zero_grad(); loss.backward(); opt.step(); epfs.step()
    epfs.prune(target=0.5)                     # the same on every process
    if rank == 0: fxprune.export.save(fxprune.finalize(pm), "small.pt2", x)

Example:
    >>> check_replicas({"w": torch.ones(2)})   # outside torch.distributed there is nothing to compare
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.distributed as dist

from fxprune.errors import FxPruneError
from fxprune.methods.center_loss import CenterLoss


class GlobalCenterLoss(CenterLoss):
    """Center Loss whose centre update uses the features and labels of every process.

    The loss itself is the local batch's (DDP averages its gradient like the task
    loss's); only :meth:`update` gathers. Built from an existing :class:`CenterLoss`
    with :meth:`from_local`.
    """

    process_group = None

    @classmethod
    def from_local(cls, local: CenterLoss, process_group=None) -> "GlobalCenterLoss":
        """A GlobalCenterLoss with ``local``'s settings and centres."""
        synced = cls(local.num_classes, local.feat_dim, alpha=local.alpha, auto_update=local.auto_update)
        if local.centers is not None:
            synced.centers = local.centers.clone()
        synced.process_group = process_group
        synced.train(local.training)
        return synced

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        features = self._flat(features).detach()
        super().update(gather_batches(features, self.process_group), gather_batches(labels, self.process_group))


def sync_center_loss(epfs, process_group=None) -> None:
    """Make an :class:`fxprune.EPFS`'s Center Loss move its centres with the global batch.

    Call it after ``torch.distributed.init_process_group`` and before training; it does
    nothing when the EPFS has no Center Loss.

    Args:
        epfs: an :class:`fxprune.EPFS`.
        process_group: the DDP process group; the default group when None.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise FxPruneError("sync_center_loss needs torch.distributed to be initialised",
                           hint="call torch.distributed.init_process_group(...) first")
    if epfs.center_loss is not None and not isinstance(epfs.center_loss, GlobalCenterLoss):
        epfs.center_loss = GlobalCenterLoss.from_local(epfs.center_loss, process_group)


def gather_batches(tensor: torch.Tensor, process_group=None) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dimension 0, in rank order (sizes may differ)."""
    world = dist.get_world_size(process_group)
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=process_group)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=process_group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def training_state(pm, epfs=None) -> dict:
    """Masks, gates, weights and (with ``epfs``) FISTA's iterates and Center Loss centres, by name.

    The tensors that must agree across DDP processes; compare them with :func:`check_replicas`.
    """
    state = {f"param/{k}": v.detach() for k, v in pm.named_parameters()}
    if epfs is not None:
        params = {id(p): k for k, p in pm.named_parameters()}
        for p, s in epfs.optimizer.state.items():
            if "x" in s:
                state[f"fista/{params.get(id(p), '?')}"] = s["x"]
                state[f"fista_t/{params.get(id(p), '?')}"] = torch.tensor(s["t"], dtype=torch.float64)
        if epfs.center_loss is not None and epfs.center_loss.centers is not None:
            state["center"] = epfs.center_loss.centers
    return state


def check_replicas(tensors: Mapping[str, torch.Tensor], process_group=None, atol: float = 0.0) -> None:
    """Raise unless every process holds the same ``tensors`` as rank 0 (exactly, by default).

    Outside an initialised ``torch.distributed`` there is one replica and nothing to check.

    Raises:
        FxPruneError: naming the first tensor that differs and by how much.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for name in sorted(tensors):
        mine = tensors[name].detach().clone()
        reference = mine.clone()
        dist.broadcast(reference, src=_first_rank(process_group), group=process_group)
        difference = float((mine.double() - reference.double()).abs().max()) if mine.numel() else 0.0
        differs = torch.tensor([1.0 if difference > atol else 0.0])
        dist.all_reduce(differs, group=process_group)
        if differs.item() > 0:
            raise FxPruneError(f"replicas differ in {name!r} (rank {dist.get_rank()}: {difference:.3g} from rank 0)",
                               hint="wrap the prepared model in DistributedDataParallel and call "
                                    "fxprune.distributed.sync_center_loss(epfs) before training")


def _first_rank(process_group: Optional[object]) -> int:
    return 0 if process_group is None else dist.get_global_rank(process_group, 0)

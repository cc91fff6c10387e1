"""Center loss (Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach
for Deep Face Recognition", ECCV 2016).

Normalisation chosen here: the mean over the batch of half the squared distance,

    L_C = 1/2 * (1/m) * sum_i ||x_i - c_{y_i}||_2^2

(the paper writes the sum over the mini-batch; dividing by ``m`` makes the
loss weight independent of the batch size, as the authors' Caffe layer does).
The centres are a buffer, never touched by the weight optimiser; they move with
the paper's rule (its eq. 4)::

    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])
    c_j      <- c_j - alpha * delta_c_j
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fxprune.errors import FxPruneError


class CenterLoss(nn.Module):
    """Pull each feature towards its class centre.

    When ``auto_update`` is true (the default) and the module is in training
    mode, ``forward`` computes the loss with the current centres and then
    updates them from the same (detached) batch. This equals the paper's
    algorithm, which updates the centres after the backward pass from the
    features of that batch: the loss already holds the old centres, and the
    update does not depend on the weights' gradient. With ``auto_update=False``
    call :meth:`update` yourself after the backward pass.

    Args:
        num_classes: number of classes (rows of ``centers``).
        feat_dim: feature size; ``None`` sizes the centres on the first call.
        alpha: centre learning rate of the update rule, in ``[0, 1]``.
        auto_update: update the centres inside ``forward`` while training.

    Example:
        >>> loss_fn = CenterLoss(num_classes=3)
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> loss_fn(x, torch.tensor([0, 0])).item()  # centres start at zero
        2.5
        >>> loss_fn.centers[0]  # c_0 <- 0 - 0.5 * (0 - 4) / 3
        tensor([0.6667, 0.0000])
    """

    centers: Optional[torch.Tensor]

    def __init__(self, num_classes: int, feat_dim: Optional[int] = None, alpha: float = 0.5, auto_update: bool = True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise FxPruneError(f"CenterLoss alpha must lie in [0, 1], got {alpha}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.alpha = alpha
        self.auto_update = auto_update
        centers = torch.zeros(num_classes, feat_dim) if feat_dim is not None else None
        self.register_buffer("centers", centers)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss ``1/2 * mean_i ||x_i - c_{y_i}||^2``.

        Args:
            features: ``(m, d)`` or ``(m, ...)`` (flattened from dim 1).
            labels: ``(m,)`` integer class indices.

        Returns:
            A scalar tensor, differentiable in ``features``.
        """
        features = self._flat(features)
        self._materialize(features)
        diff = features - self.centers[labels]
        loss = 0.5 * diff.pow(2).sum(dim=1).mean()
        if self.training and self.auto_update:
            self.update(features, labels)
        return loss

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centres with the paper's rule, using this batch's features.

        Args:
            features: ``(m, d)`` or ``(m, ...)``; detached here.
            labels: ``(m,)`` integer class indices.
        """
        features = self._flat(features).detach()
        self._materialize(features)
        centers = self.centers
        counts = torch.bincount(labels, minlength=self.num_classes).to(centers.dtype).unsqueeze(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, features.to(centers.dtype))
        delta = (counts * centers - sums) / (1.0 + counts)
        centers.sub_(self.alpha * delta)

    def _flat(self, features: torch.Tensor) -> torch.Tensor:
        return features.flatten(1) if features.dim() > 2 else features

    def _materialize(self, features: torch.Tensor) -> None:
        dim = features.shape[1]
        if self.centers is None:
            self.feat_dim = dim
            self.centers = features.new_zeros(self.num_classes, dim, dtype=features.dtype)
        elif self.centers.shape[1] != dim:
            raise FxPruneError(
                f"CenterLoss centres have {self.centers.shape[1]} features but the batch has {dim}",
                hint="pass the features of the layer the centres were built for, or a fresh CenterLoss",
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "centers")
        if self.centers is None and saved is not None:
            self.feat_dim = saved.shape[1]
            self.centers = torch.empty_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}"

"""Knowledge distillation from the model before pruning (Hinton et al., 2015).

A pruned model recovers faster when it is fine-tuned to match the outputs of the model it
was cut from, not only the labels: the teacher's soft outputs carry what the removed
channels knew about every class, per image. This is the recovery step of pruning pipelines
such as Minitron (Muralidharan et al., 2024); here it plugs into :class:`~fxprune.training.Trainer`::

    small = fxprune.finalize(pm)
    kd = Distillation(teacher=model)                    # the dense model, untouched
    Trainer(small, optimizer, distill=kd).fit(batches, None, epochs=4)

The loss of a step is ``(1 - weight) * task + weight * T^2 * KL(teacher_T || student_T)``,
both distributions softened by the temperature ``T`` (the ``T^2`` keeps the gradient's scale
independent of ``T``). The teacher runs without gradients and in eval mode (its BatchNorm
uses its running statistics); its own training flag is given back after each call, so the
caller's model is left as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.core.tensors import eval_mode
from fxprune.errors import FxPruneError


class Distillation:
    """The distillation term of a training step: ``teacher``'s softened outputs as targets.

    Args:
        teacher: a model taking the student's inputs and returning logits of the same shape
            (typically the model before pruning). It is not modified.
        temperature: ``T``, the softening of both distributions (``> 0``).
        weight: the distillation term's share of the loss, in ``[0, 1]``; the task loss gets
            ``1 - weight``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> teacher = nn.Linear(4, 3)
        >>> kd = Distillation(teacher, temperature=2.0, weight=1.0)
        >>> x = torch.randn(8, 4)
        >>> float(kd.combine(torch.tensor(5.0), x, teacher(x))) < 1e-6   # a perfect student: no loss
        True
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, weight: float = 0.9):
        if temperature <= 0:
            raise FxPruneError(f"Distillation: temperature must be positive, got {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise FxPruneError(f"Distillation: weight must lie in [0, 1], got {weight}",
                               hint="it is the distillation term's share of the loss; the task loss gets 1 - weight")
        self.teacher = teacher
        self.temperature = float(temperature)
        self.weight = float(weight)

    @torch.no_grad()
    def targets(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (eval mode, no gradients; every submodule's mode is restored)."""
        with eval_mode(self.teacher):
            return self.teacher(inputs)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
        if student.shape != teacher.shape:
            raise FxPruneError(f"Distillation: the student's outputs are {tuple(student.shape)} but the teacher's "
                               f"are {tuple(teacher.shape)}", hint="the teacher must answer the same task")
        t = self.temperature
        return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                        reduction="batchmean", log_target=True) * t * t

    def combine(self, task_loss: torch.Tensor, inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """A step's loss: ``task_loss`` mixed with the distillation term for these ``inputs`` and ``outputs``."""
        return (1.0 - self.weight) * task_loss + self.weight * self.loss(outputs, self.targets(inputs))

    def describe(self) -> dict:
        """Plain values for a results file."""
        return {"temperature": self.temperature, "weight": self.weight}

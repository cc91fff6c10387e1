"""Training: a generic trainer with checkpoints, training phases, data loading, DDP helpers.

    trainer.py      Trainer, evaluate, recalibrate_bn
    distill.py      Distillation: fine-tune a pruned model to its dense teacher's outputs
    phases.py       one training phase (dense, sparse, fine-tuning) for the demo and the CLI
    pipeline.py     prune a model with a named method to a MACs target, end to end
    data.py         image folders as uint8 tensors, batched augmentation
    distributed.py  DDP: Center Loss across ranks, replica checks
"""

from fxprune.report.compare import evaluate
from fxprune.training.distill import Distillation
from fxprune.training.trainer import Trainer, latest_checkpoint, recalibrate_bn

__all__ = ["Distillation", "Trainer", "evaluate", "latest_checkpoint", "recalibrate_bn"]

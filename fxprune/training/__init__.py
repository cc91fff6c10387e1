"""Training: a generic trainer with checkpoints, training phases, data loading, DDP helpers.

    trainer.py      Trainer, evaluate, recalibrate_bn
    phases.py       one training phase (dense, sparse, fine-tuning) for the demo and the CLI
    pipeline.py     prune a model with a named method to a MACs target, end to end
    data.py         image folders as uint8 tensors, batched augmentation
    distributed.py  DDP: Center Loss across ranks, replica checks
"""

from fxprune.report.compare import evaluate
from fxprune.training.trainer import Trainer, latest_checkpoint, recalibrate_bn

__all__ = ["Trainer", "evaluate", "latest_checkpoint", "recalibrate_bn"]

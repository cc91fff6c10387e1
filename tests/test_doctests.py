"""The docstrings' examples run and print what they say (the Trainer's example checks that it learns).

Modules whose examples need a model or data they do not build (``# doctest: +SKIP``) are
not listed; those whose examples do not run yet are named in NOT_RUNNABLE."""

import doctest
import importlib

import pytest
import torch
import torch.nn as nn

RUNNABLE = ["fxprune.training.trainer", "fxprune.config", "fxprune.core.atoms", "fxprune.core.copies",
            "fxprune.core.tensors", "fxprune.core.prepare.propagate", "fxprune.errors", "fxprune.methods.fista",
            "fxprune.methods.center_loss", "fxprune.report.compare"]
NOT_RUNNABLE = ["fxprune.core.masks", "fxprune.export.archive", "fxprune.training.data"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), extraglobs={"torch": torch, "nn": nn},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} examples failed"

"""Leave a model's train/eval modes as they were found."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["evaluating", "restored_modes"]


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's ``training`` flag on exit (a model may mix train and eval)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad inside; every submodule's mode restored after."""
    with restored_modes(model), torch.no_grad():
        model.eval()
        yield

"""Watching what layers receive while a model runs over calibration batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["watch_inputs"]


def watch_inputs(
    model: nn.Module,
    modules: Iterable[nn.Module],
    batches: list[torch.Tensor],
    hook: Callable[[nn.Module, tuple], None],
) -> None:
    """Run ``model`` on every batch (no grad) with ``hook(module, args)`` seeing each of
    ``modules``' inputs; the hooks are removed afterwards, whatever happens."""
    handles = [module.register_forward_pre_hook(hook) for module in modules]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()

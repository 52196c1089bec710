from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_shapley.hooks import watch_inputs


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_the_hook_sees_every_batch_at_every_watched_module_without_grad():
    net = model()
    seen: list[tuple[int, tuple[int, ...], bool]] = []

    def hook(module: nn.Module, args: tuple) -> None:
        seen.append((list(net).index(module), tuple(args[0].shape), torch.is_grad_enabled()))

    watch_inputs(net, [net[0], net[2]], [torch.randn(5, 3), torch.randn(2, 3)], hook)
    assert seen == [(0, (5, 3), False), (2, (5, 4), False), (0, (2, 3), False), (2, (2, 4), False)]
    assert not net[0]._forward_pre_hooks and not net[2]._forward_pre_hooks


def test_hooks_are_removed_when_the_model_fails():
    net = model()

    def hook(module: nn.Module, args: tuple) -> None:
        raise RuntimeError("broken hook")

    with pytest.raises(RuntimeError, match="broken hook"):
        watch_inputs(net, [net[2]], [torch.randn(1, 3)], hook)
    assert not net[2]._forward_pre_hooks
    net(torch.randn(1, 3))  # runs normally afterwards

"""Plain training and evaluation loops for the recipes, the demo and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["evaluate", "train"]


def train(
    model: nn.Module, dataset: Dataset, epochs: int, lr: float, batch_size: int, *, seed: int,
    freeze_batchnorm: bool = False,
) -> None:  # fmt: skip
    """Adam on cross-entropy; ``freeze_batchnorm`` keeps BN statistics (few-shot fine-tuning)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    for _ in range(epochs):
        model.train()
        if freeze_batchnorm:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
    model.eval()


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` on a dataset."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss, count = 0, 0.0, 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            count += len(y)
    return correct / count, loss / count

"""How close an estimate is to the truth, in the terms pruning cares about."""

from __future__ import annotations

import torch

__all__ = ["bottom_k_precision", "relative_error", "spearman"]


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(values, stable=True), stable=True).double()


def spearman(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """Spearman rank correlation of two ``[n]`` vectors (ties broken by index).

    Example:
        >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])), 6)
        1.0
    """
    a, b = _ranks(estimate), _ranks(truth)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def bottom_k_precision(estimate: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Share of the ``k`` lowest players of ``estimate`` among the ``k`` lowest of ``truth``.

    Example:
        >>> truth = torch.tensor([0.0, 2.0, 1.0, 3.0])
        >>> bottom_k_precision(torch.tensor([0.0, 1.0, 2.0, 3.0]), truth, 2)
        0.5
    """
    if not 1 <= k <= len(truth):
        raise ValueError(f"k must be between 1 and {len(truth)}, got {k}")
    chosen = set(torch.argsort(estimate, stable=True)[:k].tolist())
    true = set(torch.argsort(truth, stable=True)[:k].tolist())
    return len(chosen & true) / k


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """``‖estimate − truth‖₂ / ‖truth‖₂``."""
    return float(
        (estimate.double() - truth.double()).norm() / truth.double().norm().clamp_min(1e-12)
    )

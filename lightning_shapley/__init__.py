"""Few-shot structured pruning of PyTorch Lightning models by channel Shapley values."""

from __future__ import annotations

from typing import Any

from lightning_shapley.calibration import few_shot_indices
from lightning_shapley.estimators import ExactShapley, LeaveOneOut, PermutationShapley
from lightning_shapley.games import ChannelGame

__all__ = [
    "ChannelGame",
    "ExactShapley",
    "LeaveOneOut",
    "PermutationShapley",
    "ShapleyPruningCallback",
    "few_shot_indices",
    "load_pruned_checkpoint",
    "restore_pruning",
]
__version__ = "0.1.0"

_LIGHTNING = {"ShapleyPruningCallback", "load_pruned_checkpoint", "restore_pruning"}


def __getattr__(name: str) -> Any:
    """Import the Lightning glue (and Lightning itself, a few seconds) only when asked for."""
    if name in _LIGHTNING:
        from lightning_shapley import callback

        return getattr(callback, name)
    raise AttributeError(f"module 'lightning_shapley' has no attribute {name!r}")

"""Few-shot structured pruning of PyTorch Lightning models by channel Shapley values."""

from lightning_shapley.calibration import few_shot_indices
from lightning_shapley.estimators import ExactShapley, LeaveOneOut, PermutationShapley
from lightning_shapley.games import ChannelGame

__all__ = ["ChannelGame", "ExactShapley", "LeaveOneOut", "PermutationShapley", "few_shot_indices"]
__version__ = "0.1.0"

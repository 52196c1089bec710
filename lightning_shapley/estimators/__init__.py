"""Shapley value estimators: ``Estimator().estimate(game, budget, *, seed) -> ShapleyEstimate``."""

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.estimators.exact import ExactShapley
from lightning_shapley.estimators.leave_one_out import LeaveOneOut
from lightning_shapley.estimators.permutation import PermutationShapley

__all__ = ["Estimator", "ExactShapley", "LeaveOneOut", "PermutationShapley", "ShapleyEstimate"]

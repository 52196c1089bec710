"""Shapley value estimators: ``Estimator().estimate(game, budget, *, seed) -> ShapleyEstimate``."""

from lightning_shapley.estimators.bandit import BanditShapley
from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.estimators.cut import CutEstimate
from lightning_shapley.estimators.cut_permutation import CutPermutationShapley
from lightning_shapley.estimators.dasp import DASPShapley
from lightning_shapley.estimators.exact import ExactShapley
from lightning_shapley.estimators.leave_one_out import LeaveOneOut
from lightning_shapley.estimators.permutation import PermutationShapley
from lightning_shapley.estimators.tmab import TMABShapley

__all__ = ["Estimator", "ExactShapley", "LeaveOneOut", "PermutationShapley", "ShapleyEstimate"]
__all__ += ["BanditShapley", "CutEstimate", "CutPermutationShapley", "DASPShapley", "TMABShapley"]

"""Shapley value estimators: ``Estimator().estimate(game, budget, *, seed) -> ShapleyEstimate``."""

from lightning_shapley.estimators.bandit import BanditShapley
from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.estimators.cut import CutEstimate, CutEstimator
from lightning_shapley.estimators.cut_permutation import CutPermutationShapley
from lightning_shapley.estimators.dasp import DASPShapley
from lightning_shapley.estimators.exact import ExactShapley
from lightning_shapley.estimators.leave_one_out import LeaveOneOut
from lightning_shapley.estimators.permutation import PermutationShapley
from lightning_shapley.estimators.tmab import TMABShapley

ESTIMATORS = {
    "exact": ExactShapley,
    "permutation": PermutationShapley,
    "loo": LeaveOneOut,
    "dasp": DASPShapley,
    "bandit": BanditShapley,
    "tmab": TMABShapley,
    "cut_permutation": CutPermutationShapley,
}
"""Every estimator by the name criteria, recipes and the callback give it."""


def estimator_by_name(name: str) -> Estimator:
    """A default-configured estimator by name (see ``ESTIMATORS``)."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator={name!r} is unknown; use one of {tuple(ESTIMATORS)}")
    return ESTIMATORS[name]()


__all__ = [
    "ESTIMATORS",
    "BanditShapley",
    "CutEstimate",
    "CutEstimator",
    "CutPermutationShapley",
    "DASPShapley",
    "Estimator",
    "ExactShapley",
    "LeaveOneOut",
    "PermutationShapley",
    "ShapleyEstimate",
    "TMABShapley",
    "estimator_by_name",
]

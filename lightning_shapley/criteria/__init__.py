"""Every channel criterion behind one interface: ``score(model, layers, data, *, seed)``.

``criterion_by_name`` builds them from the names recipes and the callback use.
"""

from __future__ import annotations

from lightning_shapley.criteria.bandit import BanditShapleyCriterion, stop_after
from lightning_shapley.criteria.base import ChannelScores, Criterion
from lightning_shapley.criteria.classic import (
    ActivationCriterion,
    ImportanceCriterion,
    RandomCriterion,
)
from lightning_shapley.criteria.game_based import (
    ESTIMATORS,
    AnconaShapley,
    ShapleyCriterion,
    estimator_by_name,
)
from lightning_shapley.criteria.gradient import GradientCriterion
from lightning_shapley.criteria.pruning_aware import (
    EliminationCriterion,
    IteratedShapleyCriterion,
)

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "ESTIMATORS",
    "ActivationCriterion",
    "AnconaShapley",
    "BanditShapleyCriterion",
    "ChannelScores",
    "Criterion",
    "EliminationCriterion",
    "GradientCriterion",
    "ImportanceCriterion",
    "IteratedShapleyCriterion",
    "RandomCriterion",
    "ShapleyCriterion",
    "criterion_by_name",
    "estimator_by_name",
    "stop_after",
]

DEFAULT_CRITERION = "bandit_shapley"
"""The criterion the callback and the recipes use unless told otherwise: channel Shapley values
estimated by the bandit sampler at the cut (see :class:`BanditShapleyCriterion`)."""

CRITERIA = {
    "bandit_shapley": BanditShapleyCriterion,
    "shapley": lambda: ShapleyCriterion("permutation"),
    "shapley_network": lambda: ShapleyCriterion("permutation", scope="network"),
    "ancona_shapley": AnconaShapley,
    "greedy": EliminationCriterion,
    "greedy_refit": lambda: EliminationCriterion(ablation="refit"),
    "beam": lambda: EliminationCriterion(beam=4),
    "iterated_shapley": IteratedShapleyCriterion,
    "cut_shapley": lambda: ShapleyCriterion("cut_permutation"),
    "loo": lambda: ShapleyCriterion("loo", budget=None),
    "random": RandomCriterion,
    "l1": lambda: ImportanceCriterion("l1"),
    "l2": lambda: ImportanceCriterion("l2"),
    "bn_scale": lambda: ImportanceCriterion("bn_scale"),
    "taylor": lambda: ImportanceCriterion("taylor"),
    "grad_input": lambda: GradientCriterion("grad_input"),
    "integrated_gradients": lambda: GradientCriterion("integrated_gradients"),
    "deeplift": lambda: GradientCriterion("deeplift"),
    "apoz": lambda: ActivationCriterion("apoz"),
    "activation_mean": lambda: ActivationCriterion("mean"),
}


def criterion_by_name(name: str) -> Criterion:
    """A default-configured criterion: one of ``CRITERIA``.

    Example:
        >>> criterion_by_name("l1")
        ImportanceCriterion('l1')
    """
    if name not in CRITERIA:
        raise ValueError(f"criterion {name!r} is unknown; use one of {sorted(CRITERIA)}")
    return CRITERIA[name]()

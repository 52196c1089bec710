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
from lightning_shapley.criteria.game_based import AnconaShapley, ShapleyCriterion
from lightning_shapley.criteria.gradient import GradientCriterion
from lightning_shapley.criteria.pruning_aware import (
    EliminationCriterion,
    IteratedShapleyCriterion,
)
from lightning_shapley.metrics import MetricLike

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
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
    "make_criterion",
    "stop_after",
]

DEFAULT_CRITERION = "bandit_shapley"
"""The criterion the callback and the recipes use unless told otherwise: channel Shapley values
estimated by the bandit sampler at the cut (see :class:`BanditShapleyCriterion`)."""

CRITERIA = {
    "bandit_shapley": BanditShapleyCriterion,
    "shapley": lambda: ShapleyCriterion("permutation"),
    "shapley_global": lambda: ShapleyCriterion("permutation", scope="global"),
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


CRITERION_OPTIONS = {
    "bandit_shapley": ("scope", "metric", "ablation"),
    "shapley": ("estimator", "budget", "scope", "metric", "ablation"),
    "cut_shapley": ("budget", "scope", "metric", "ablation"),
    "loo": ("scope", "metric", "ablation"),
    "iterated_shapley": ("estimator", "budget", "scope", "metric", "ablation"),
    "greedy": ("scope", "metric", "ablation", "cost"),
    "greedy_refit": ("scope", "metric"),
    "beam": ("scope", "metric", "ablation"),
    "ancona_shapley": ("ablation",),
}
"""The options :func:`make_criterion` passes to each criterion (the others take none)."""


def make_criterion(
    name: str,
    *,
    estimator: str | None = None,
    budget: int | None = None,
    scope: str | None = None,
    metric: MetricLike | None = None,
    ablation: str | None = None,
    cost: str | None = None,
) -> Criterion:
    """A criterion of ``CRITERIA`` with options; ``None`` keeps the criterion's own.

    Raises:
        ValueError: On an unknown name, or an option the criterion does not take (see
            ``CRITERION_OPTIONS``).

    Example:
        >>> make_criterion("cut_shapley", budget=64).budget
        64
        >>> make_criterion("l1", budget=64)
        Traceback (most recent call last):
        ...
        ValueError: criterion 'l1' takes no budget; options it takes: none
    """
    base = criterion_by_name(name)
    given = {"estimator": estimator, "budget": budget, "scope": scope, "metric": metric,
             "ablation": ablation, "cost": cost}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    takes = CRITERION_OPTIONS.get(name, ())
    for option in given:
        if option not in takes:
            raise ValueError(
                f"criterion {name!r} takes no {option}; options it takes: "
                f"{', '.join(takes) or 'none'}"
            )
    if not given:
        return base
    if name == "ancona_shapley":
        return AnconaShapley(**given)
    if name == "bandit_shapley":
        return BanditShapleyCriterion(**given)
    if isinstance(base, EliminationCriterion):
        defaults = {"beam": base.beam, "scope": base.scope, "metric": base.metric,
                    "ablation": base.ablation, "cost": base.cost}  # fmt: skip
        return EliminationCriterion(**{**defaults, **given})
    defaults = {"estimator": base.estimator, "budget": base.budget, "scope": base.scope,
                "metric": base.metric, "ablation": base.ablation}  # fmt: skip
    if isinstance(base, IteratedShapleyCriterion):
        return IteratedShapleyCriterion(rounds=base.rounds, **{**defaults, **given})
    return ShapleyCriterion(**{**defaults, **given})

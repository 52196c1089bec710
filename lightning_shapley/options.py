"""The vocabulary of the settings: one spelling of each choice, and one check of it.

The ``Literal`` types let type checkers and LightningCLI validate a choice where it is written;
:func:`check_choice` validates it at run time with a message that names the argument and lists
the valid values.

Example:
    >>> check_choice("schedule", "one_shot", SCHEDULES)
    'one_shot'
    >>> check_choice("scope", "globl", SCOPES)
    Traceback (most recent call last):
    ...
    ValueError: scope='globl' is invalid (did you mean 'global'?); use one of 'layer', 'global'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Literal, TypeVar, get_args

__all__ = [
    "ABLATIONS",
    "COMPENSATIONS",
    "COSTS",
    "METRICS",
    "PRUNE_ON",
    "SCHEDULES",
    "SCOPES",
    "Ablation",
    "Compensation",
    "Cost",
    "CriterionName",
    "EstimatorName",
    "MetricName",
    "PruneOn",
    "Schedule",
    "Scope",
    "check_choice",
]

CriterionName = Literal[
    "bandit_shapley", "greedy", "shapley", "shapley_global", "ancona_shapley", "greedy_refit",
    "beam", "iterated_shapley", "cut_shapley", "loo", "random", "l1", "l2", "bn_scale", "taylor",
    "grad_input", "integrated_gradients", "deeplift", "apoz", "activation_mean",
]  # fmt: skip
"""The criteria by name (:data:`lightning_shapley.criteria.CRITERIA`)."""
EstimatorName = Literal["exact", "permutation", "loo", "dasp", "bandit", "tmab", "cut_permutation"]
"""The Shapley estimators by name (:data:`lightning_shapley.estimators.ESTIMATORS`)."""
Scope = Literal["layer", "global"]
"""``"layer"``: every layer loses the ratio; ``"global"``: one ranking over all layers."""
Schedule = Literal["layer_by_layer", "one_shot"]
"""``"layer_by_layer"``: first to last, each scored on the partly pruned model; ``"one_shot"``:
every layer scored on the unpruned model."""
Ablation = Literal["zero", "mean", "regression", "refit"]
"""What the channel game puts in place of a removed channel."""
Compensation = Literal["least_squares", "none", "mean", "regression", "auto"]
"""What the consumers of removed channels get back after pruning (``"auto"``: what makes the
pruned model compute what the game evaluated)."""
MetricName = Literal["cross_entropy", "accuracy", "mse", "bce", "auto", "kl", "logit_mse"]
"""The built-in values of a coalition (higher is better)."""
Cost = Literal["channels", "params", "macs"]
"""What a global ratio counts."""
PruneOn = Literal["train_epoch_end", "validation_end"]
"""When the callback prunes in a training epoch."""

SCOPES: tuple[str, ...] = get_args(Scope)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
ABLATIONS: tuple[str, ...] = get_args(Ablation)
COMPENSATIONS: tuple[str, ...] = get_args(Compensation)
METRICS: tuple[str, ...] = get_args(MetricName)
COSTS: tuple[str, ...] = get_args(Cost)
PRUNE_ON: tuple[str, ...] = get_args(PruneOn)

T = TypeVar("T")


def check_choice(argument: str, value: T, choices: Iterable[str]) -> T:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming ``argument``, the
    closest valid value and all of them."""
    choices = tuple(choices)
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{argument}={value!r} is invalid{hint}; use one of {valid}")

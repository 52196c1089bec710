"""Prune a model by a plan: the one call that scores, removals and compensation lead to."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_shapley.calibration import CalibrationData, as_calibration_tensors
from lightning_shapley.compensation import (
    COMPENSATIONS,
    least_squares_updates,
    mean_bias_updates,
    regression_updates,
)
from lightning_shapley.plan import PruningPlan
from lightning_shapley.pruning import (
    ChannelGraph,
    apply_plan,
    check_not_compiled,
    count_params_and_macs,
)

__all__ = ["PruningReport", "prune"]


@dataclass(frozen=True)
class PruningReport:
    """What a prune changed.

    Attributes:
        params_before, params_after: Parameter counts.
        macs_before, macs_after: Multiply-accumulates of one example's forward.
        channels_before, channels_after: Channels of each pruned layer.
        requested_ratio, achieved_ratio: Share of the planned layers' channels asked for and
            removed.
        history: The steps taken, as plain data (what ``save_pruned`` stores).
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: dict[str, int]
    channels_after: dict[str, int]
    requested_ratio: float
    achieved_ratio: float
    history: list[dict] = field(repr=False)

    def table(self) -> str:
        """A Markdown summary: totals, then channels per layer."""
        lines = [
            "| | before | after | kept |",
            "|---|---|---|---|",
            f"| parameters | {self.params_before:,} | {self.params_after:,} | "
            f"{self.params_after / self.params_before:.1%} |",
            f"| MACs | {self.macs_before:,} | {self.macs_after:,} | "
            f"{self.macs_after / max(1, self.macs_before):.1%} |",
        ]
        for name, before in self.channels_before.items():
            after = self.channels_after[name]
            lines.append(f"| `{name}` channels | {before} | {after} | {after / before:.1%} |")
        lines.append(
            f"\nrequested ratio {self.requested_ratio:.1%}, achieved {self.achieved_ratio:.1%}"
        )
        return "\n".join(lines)


def prune(
    model: nn.Module,
    plan: PruningPlan,
    data: CalibrationData,
    *,
    compensation: str = "none",
    reference: nn.Module | None = None,
    count_macs: bool = True,
) -> PruningReport:
    """Remove the planned channels physically, all or nothing.

    Args:
        model: The network, pruned in place.
        plan: Channels to remove by layer (see :func:`~lightning_shapley.plan.make_plan`).
        data: Calibration data; inputs ``[N, ...]`` alone are enough (no labels are used).
        compensation: ``"none"``, ``"mean"`` (fold the removed channels' calibration means into
            the consumers' biases, so the pruned model matches the ``mean``-ablated game),
            ``"regression"`` (fold the kept channels' predictions of the removed ones, to match
            the ``regression``-ablated game) or ``"least_squares"`` (refit the consumers to
            their unpruned outputs); see
            :mod:`~lightning_shapley.compensation`.
        reference: With ``"least_squares"``: the unpruned model, whose consumer outputs the
            refit reproduces where sizes agree (for a model pruned in several steps).
        count_macs: Count MACs before and after (a traced forward each); ``False`` reports 0.

    Raises:
        ValueError: As :func:`~lightning_shapley.pruning.apply_plan` (also for a compiled
            module, or a pruned model that fails its check forward on the example input), or on
            an unknown compensation or a consumer it cannot handle; the model is then unchanged.
    """
    if compensation not in COMPENSATIONS:
        raise ValueError(f"compensation={compensation!r} is invalid; use one of {COMPENSATIONS}")
    check_not_compiled(model)
    inputs, _ = as_calibration_tensors(data)
    example = inputs[:1].to(next(model.parameters()).device)
    params_before, macs_before = _sizes(model, example, count_macs)
    graph = ChannelGraph(model, example)
    bias_updates = weight_updates = None
    if compensation != "none":
        groups = [graph.group(layer) for layer in plan.removed]
        batches = list(inputs.to(example.device).split(256))
        removed = list(plan.removed.values())
        if compensation == "mean":
            bias_updates = mean_bias_updates(model, groups, removed, batches)
        else:
            refit = regression_updates if compensation == "regression" else least_squares_updates
            options = {"reference": reference} if compensation == "least_squares" else {}
            weight_updates, bias_updates = refit(model, groups, removed, batches, **options)
    history = apply_plan(model, plan.removed, example, bias_updates, weight_updates)
    params_after, macs_after = _sizes(model, example, count_macs)
    return PruningReport(
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        channels_before=dict(plan.n_channels),
        channels_after={name: n - len(plan.removed[name]) for name, n in plan.n_channels.items()},
        requested_ratio=plan.requested_ratio,
        achieved_ratio=plan.achieved_ratio,
        history=history,
    )


def _sizes(model: nn.Module, example: torch.Tensor, count_macs: bool) -> tuple[int, int]:
    if count_macs:
        return count_params_and_macs(model, example)
    return sum(p.numel() for p in model.parameters()), 0

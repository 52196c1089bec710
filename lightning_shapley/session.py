"""One pruning session: calibration set → channel scores → plan → prune → refit, all or nothing.

Layers are scored and pruned first to last, each on the partly pruned model
(``"layer_by_layer"``), or all scored on the unpruned model and pruned together (``"one_shot"``,
and always for a global ranking). Whatever happens — a failed scoring, a failed removal, Ctrl-C
or a stop request — the model is left exactly as it was found.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_shapley.compensation import resolve_compensation
from lightning_shapley.criteria import Criterion
from lightning_shapley.criteria.base import GameWrapper
from lightning_shapley.metrics import reference_logits
from lightning_shapley.plan import PruningPlan, make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import Snapshot

__all__ = ["PruningSession", "SessionResult"]


@dataclass
class SessionResult:
    """What one session did.

    Attributes:
        channels: Channels of each pruned layer after the session.
        history: The pruning steps taken (what checkpoints replay).
        scores: ``[n_channels]`` scores of every scored layer, as lists.
        seconds: Time spent scoring.
        n_evals: Game evaluations spent scoring.
        settled: Channels the criterion's bandit sampler settled on their side of the cut (the
            default criterion's; 0 for the others), of those it scored.
    """

    channels: dict[str, int] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    n_evals: int = 0
    settled: int = 0


@dataclass
class PruningSession:
    """Prunes ``layers`` of a model to ``target`` of their original channels.

    Attributes:
        criterion: Scores the channels.
        scope: ``"layer"`` (each layer loses the share) or ``"global"`` (one ranking).
        schedule: ``"layer_by_layer"`` or ``"one_shot"``.
        compensation: What the pruned consumers get back (see
            :func:`~lightning_shapley.prune.prune`); ``"auto"`` resolves against the
            criterion's ablation.
        original_channels: Channels of each layer before any session (filled in as layers are
            first seen), against which ``target`` is counted.
        min_channels, round_to, cost: As :func:`~lightning_shapley.plan.make_plan` (``cost``:
            what one channel of each layer costs, for a global budget of parameters or MACs).
        shard: Wraps every game the criterion plays (progress, stop checks, sharing across
            processes).
        decide: Makes one decision of a plan's removals (e.g. a broadcast from rank 0).
        stop: Called between layers; raises to stop the session (the model is then restored).
        on_step: Called with ``(layers, index, steps)`` before each scoring step.
    """

    criterion: Criterion
    scope: str = "layer"
    schedule: str = "layer_by_layer"
    compensation: str = "least_squares"
    original_channels: dict[str, int] = field(default_factory=dict)
    min_channels: int = 1
    round_to: int | None = None
    cost: dict[str, float] | None = None
    shard: GameWrapper | None = None
    decide: Callable[[dict[str, list[int]]], dict[str, list[int]]] | None = None
    stop: Callable[[], None] | None = None
    on_step: Callable[[list[str], int, int], None] | None = None

    def run(
        self,
        model: nn.Module,
        layers: list[str],
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        target: float,
        *,
        seed: int = 0,
    ) -> SessionResult:
        """Score, plan, prune and refit ``layers`` on calibration ``inputs`` ``[N, ...]`` and
        ``targets`` (labels ``[N]``, or ``None``: a label-free criterion then compares with the
        unpruned model's logits, however far pruning has gone).

        Raises:
            RuntimeError: If scoring fails (the model is left unpruned).
            ValueError: If a removal fails (the model is left as it was).
        """
        reference = reference_logits(model, inputs)
        scoring_targets = reference if self.criterion.label_free else targets
        one_step = self.schedule == "one_shot" or self.scope == "global"
        ablation = getattr(self.criterion, "ablation", None) or "zero"
        compensation = resolve_compensation(self.compensation, ablation)
        steps = [layers] if one_step else [[layer] for layer in layers]
        snapshot = Snapshot(model)  # the same objects: optimizers keep working after a rollback
        backup = None if one_step else copy.deepcopy(model)  # what layer-by-layer refits toward
        result = SessionResult()
        try:
            for index, step in enumerate(steps):
                if self.stop is not None:
                    self.stop()
                if self.on_step is not None:
                    self.on_step(step, index, len(steps))
                began = time.perf_counter()
                current = {n: model.get_submodule(n).weight.shape[0] for n in step}
                ratio = self._ratios(current, target)
                shares = set(ratio.values()) if isinstance(ratio, dict) else {ratio}
                cut = shares.pop() if len(shares) == 1 else None
                try:
                    scores = self.criterion.score(model, step, (inputs, scoring_targets),
                                                  seed=seed + index, shard=self.shard,
                                                  cut=cut)  # fmt: skip
                except Exception as error:
                    raise RuntimeError(
                        f"scoring channels failed ({error}); the model was left unpruned"
                    ) from error
                result.seconds += time.perf_counter() - began
                result.n_evals += scores.n_evals
                result.settled += getattr(self.criterion, "settled_channels", 0)
                plan = self._plan(scores.values, ratio)
                removed = plan.removed if self.decide is None else self.decide(plan.removed)
                plan = dataclasses.replace(plan, removed=removed)
                report = prune(model, plan, inputs, compensation=compensation,
                               reference=backup,
                               count_macs=False)  # fmt: skip
                result.history += report.history
                result.channels.update(report.channels_after)
                result.scores.update({k: v.tolist() for k, v in scores.values.items()})
        except BaseException:  # Ctrl-C and stop requests too: the model is left as it was
            snapshot.restore()
            raise
        return result

    def _ratios(self, current: dict[str, int], target: float) -> float | dict[str, float]:
        """What each layer (or all, in global scope) must lose now to reach ``target`` of the
        original channels."""
        for name, n in current.items():
            self.original_channels.setdefault(name, n)
        if self.scope == "global":
            total0 = sum(self.original_channels[n] for n in current)
            total = sum(current.values())
            return max(0.0, (total - (1 - target) * total0) / total)
        return {
            n: max(0.0, (current[n] - (1 - target) * self.original_channels[n]) / current[n])
            for n in current
        }

    def _plan(
        self, scores: dict[str, torch.Tensor], ratio: float | dict[str, float]
    ) -> PruningPlan:
        normalize = "none" if getattr(self.criterion, "scope", "layer") == "global" else "mean"
        return make_plan(scores, ratio, scope=self.scope, normalize=normalize,
                         min_channels=self.min_channels, round_to=self.round_to,
                         cost=self.cost)  # fmt: skip

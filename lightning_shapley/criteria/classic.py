"""The classic criteria: random, weight magnitude, batch-norm scale, Taylor, activations.

Weight magnitude, BN scale and Taylor are torch-pruning's own importance classes, summed over
the group the way torch-pruning does (mean over the group's layers, no normalisation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.criteria.base import Criterion
from lightning_shapley.hooks import watch_inputs
from lightning_shapley.metrics import first_logits
from lightning_shapley.pruning import (
    ChannelGraph,
    importance_needs_gradients,
    is_importance,
)

__all__ = ["ActivationCriterion", "ImportanceCriterion", "RandomCriterion"]


class RandomCriterion(Criterion):
    """Uniform random scores, seeded (so a comparison can repeat its draw)."""

    name = "random"

    def _score(self, model, layers, inputs, targets, seed):
        generator = torch.Generator().manual_seed(seed)
        graph = ChannelGraph(model, inputs[:1])
        groups = {layer: graph.group(layer) for layer in layers}
        return {
            layer: torch.rand(g.n_channels, generator=generator) for layer, g in groups.items()
        }, 0


class ImportanceCriterion(Criterion):
    """A torch-pruning importance: ``"l1"``, ``"l2"``, ``"bn_scale"`` or ``"taylor"``, or any
    torch-pruning importance object (``tp.importance.MagnitudeImportance(p=1)``, ...).

    ``taylor`` is Molchanov et al.'s first-order estimate ``|w · ∂L/∂w|`` summed over each
    channel's weights, with the gradient of the mean cross-entropy on the calibration set; an
    importance object that reads gradients gets the same.
    """

    KINDS = ("l1", "l2", "bn_scale", "taylor")

    def __init__(self, kind: str | Callable[..., torch.Tensor]) -> None:
        if is_importance(kind):
            self.name = type(kind).__name__
            self.needs_gradients = importance_needs_gradients(kind)
        elif kind in self.KINDS:
            self.name, self.needs_gradients = kind, kind == "taylor"
        else:
            raise ValueError(f"kind={kind!r} is invalid; use one of {self.KINDS}")
        self.kind = kind
        self.label_free = not self.needs_gradients

    def _score(self, model, layers, inputs, targets, seed):
        if self.needs_gradients:
            if targets is None or targets.dim() != 1:
                raise ValueError(f"{self.name} reads gradients: it needs labelled calibration data")
            model.eval()
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for x, y in zip(inputs.split(256), targets.split(256), strict=True):
                    loss = F.cross_entropy(first_logits(model(x)), y) * len(x) / len(inputs)
                    loss.backward()
        graph = ChannelGraph(model, inputs[:1])
        return {layer: graph.importance(layer, self.kind) for layer in layers}, 0

    def __repr__(self) -> str:
        return f"ImportanceCriterion({self.kind!r})"


class ActivationCriterion(Criterion):
    """Statistics of each channel's activation where its consumers read it.

    ``"apoz"``: one minus the average percentage of zeros (Hu et al. 2016); ``"mean"``: the
    mean absolute activation. Averaged over the channel's features at every consumer.
    """

    KINDS = ("apoz", "mean")

    def __init__(self, kind: str = "apoz") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind={kind!r} is invalid; use one of {self.KINDS}")
        self.kind = kind
        self.name = "apoz" if kind == "apoz" else "activation_mean"

    def _score(self, model, layers, inputs, targets, seed):
        graph = ChannelGraph(model, inputs[:1])
        groups = {layer: graph.group(layer) for layer in layers}
        stats: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        names = {model.get_submodule(c.name): c for g in groups.values() for c in g.consumers}

        def record(module: nn.Module, args: tuple) -> None:
            consumer, x = names[module], args[0]
            dim = consumer.feature_dim(x)
            flat = x.movedim(dim, -1).reshape(-1, x.shape[dim])
            value = (flat != 0).float() if self.kind == "apoz" else flat.abs()
            stats[consumer.name] = stats.get(consumer.name, 0) + value.sum(dim=0)
            counts[consumer.name] = counts.get(consumer.name, 0) + len(flat)

        model.eval()
        watch_inputs(model, names, list(inputs.split(256)), record)
        scores = {}
        for layer, group in groups.items():
            total = torch.zeros(group.n_channels)
            seen = torch.zeros(group.n_channels)
            for c in group.consumers:
                per_feature = (stats[c.name] / counts[c.name]).cpu()[c.feature_idx]
                total.index_add_(0, c.player_idx, per_feature)
                seen.index_add_(0, c.player_idx, torch.ones(len(c.player_idx)))
            scores[layer] = total / seen
        return scores, 0

    def __repr__(self) -> str:
        return f"ActivationCriterion({self.kind!r})"

"""From channel scores to a pruning plan: which channels each layer loses.

Scores are *higher is more valuable*, one tensor ``[n_channels]`` per layer (one layer per
torch-pruning group). Three ways to decide how many channels go:

* ``ratio=0.3``: the same share of every layer;
* ``ratio={"layer1.0.conv1": 0.5, ...}``: a share per layer (layers not named keep everything);
* ``scope="global"``: one ranking across layers removes ``ratio`` of all channels. Scores of
  different layers are made comparable by ``normalize``: ``"mean"`` divides each layer's scores
  by their mean absolute value (torch-pruning's convention), ``"max"`` by their maximum absolute
  value, ``"none"`` leaves them as they are (right for a network-wide Shapley game, whose values
  share one scale). With ``cost`` (what one channel of each layer costs, e.g. from
  :func:`~lightning_shapley.pruning.channel_costs`), ``ratio`` is a share of the total cost
  instead: channels go in ranking order until their costs reach it, so how many each layer
  loses follows from the ranking at a fixed parameter or MAC budget (first-order costs: see
  :func:`~lightning_shapley.pruning.channel_costs`).

Every layer keeps at least ``min_channels`` (and never fewer than one); with ``round_to`` the
kept count is rounded up to a multiple of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lightning_shapley.names import valid_names
from lightning_shapley.options import SCOPES, check_choice

__all__ = ["NORMALIZATIONS", "PruningPlan", "make_plan"]
NORMALIZATIONS = ("mean", "max", "none")


@dataclass(frozen=True)
class PruningPlan:
    """Channels to remove, by layer.

    Attributes:
        removed: Sorted channel indices to remove, by layer name.
        n_channels: Channels each layer has before pruning.
        requested_ratio: The share of channels asked for (for a per-layer dict: the share of
            the named layers' channels).
        scores: ``[n_channels]`` the scores the plan was made from, by layer, if known (they
            let :func:`~lightning_shapley.prune.prune` round a removal a grouped convolution
            cannot hold).
    """

    removed: dict[str, list[int]]
    n_channels: dict[str, int]
    requested_ratio: float
    scores: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def achieved_ratio(self) -> float:
        """Share of all planned layers' channels actually removed."""
        total = sum(self.n_channels.values())
        return sum(len(r) for r in self.removed.values()) / max(1, total)

    def kept(self, layer: str) -> list[int]:
        """Indices of the channels ``layer`` keeps."""
        gone = set(self.removed[layer])
        return [c for c in range(self.n_channels[layer]) if c not in gone]


def _check_ratio(ratio: float, what: str) -> float:
    if not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise ValueError(f"{what} must be in [0, 1), got {ratio!r}")
    return float(ratio)


def _allowed(n: int, min_channels: int, round_to: int | None) -> int:
    """The most channels a layer of ``n`` may lose."""
    keep = max(1, min_channels)
    if round_to:
        keep = math.ceil(keep / round_to) * round_to
    return max(0, n - keep)


def _rounded_removal(n: int, wanted: int, round_to: int | None) -> int:
    if not round_to:
        return wanted
    kept = math.ceil((n - wanted) / round_to) * round_to
    return max(0, n - min(n, kept))


def make_plan(
    scores: dict[str, torch.Tensor],
    ratio: float | dict[str, float],
    *,
    scope: str = "layer",
    normalize: str = "mean",
    min_channels: int = 1,
    round_to: int | None = None,
    cost: dict[str, float] | None = None,
) -> PruningPlan:
    """Plan the removal of the lowest-scored channels.

    Args:
        scores: ``[n_channels]`` scores by layer, higher = more valuable.
        ratio: Share of channels to remove in ``[0, 1)``, or a share per layer.
        scope: ``"layer"`` (each layer loses its share) or ``"global"`` (one ranking).
        normalize: How a global ranking compares layers: ``"mean"``, ``"max"`` or ``"none"``.
        min_channels: Channels every layer keeps at least.
        round_to: Round every kept count up to a multiple of this.
        cost: With ``scope="global"``: the cost of one channel of each layer; ``ratio`` is then
            the share of the total cost to remove.

    Raises:
        ValueError: On a ratio outside ``[0, 1)``, an unknown scope or normalisation, a
            per-layer ratio for a layer without scores, empty scores, or a layer that would
            lose some of its channels while all of them score the same (the choice would fall
            to channel order).

    Example:
        >>> plan = make_plan({"conv": torch.tensor([0.3, 0.1, 0.9, 0.5])}, 0.5)
        >>> plan.removed, plan.achieved_ratio
        ({'conv': [0, 1]}, 0.5)
    """
    check_choice("scope", scope, SCOPES)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is invalid; use one of {NORMALIZATIONS}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be a positive integer, got {min_channels!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
    if not scores:
        raise ValueError("scores are empty: no layer to prune")
    scores = {name: torch.as_tensor(s, dtype=torch.float64).flatten() for name, s in scores.items()}
    n_channels = {name: len(s) for name, s in scores.items()}

    if cost is not None and scope != "global":
        raise ValueError("a cost budget needs scope='global'")
    if isinstance(ratio, dict):
        if scope == "global":
            raise ValueError("a per-layer ratio dict needs scope='layer'")
        unknown = sorted(set(ratio) - set(scores))
        if unknown:
            raise ValueError(
                f"ratio names layers without scores: {unknown}; scored: "
                f"{valid_names(unknown[0], scores)}"
            )
        ratios = {name: _check_ratio(ratio.get(name, 0.0), f"ratio[{name!r}]") for name in scores}
        named = sum(n_channels[name] for name in ratio)
        requested = sum(ratios[name] * n_channels[name] for name in ratio) / max(1, named)
    else:
        requested = _check_ratio(ratio, "ratio")
        ratios = dict.fromkeys(scores, requested)

    if scope == "layer":
        removed = {}
        for name, s in scores.items():
            n = n_channels[name]
            count = min(_rounded_removal(n, int(ratios[name] * n), round_to),
                        _allowed(n, min_channels, round_to))  # fmt: skip
            removed[name] = sorted(torch.argsort(s, stable=True)[:count].tolist())
        _check_distinguishable(scores, removed)
        return PruningPlan(removed, n_channels, requested, scores)

    if cost is not None and set(cost) < set(scores):
        raise ValueError(f"cost misses layers: {sorted(set(scores) - set(cost))}")
    return _global_plan(scores, n_channels, requested, normalize, min_channels, round_to, cost)


def _global_plan(
    scores, n_channels, ratio, normalize, min_channels, round_to, cost=None
) -> PruningPlan:
    def scaled(s: torch.Tensor) -> torch.Tensor:
        if normalize == "none":
            return s
        scale = s.abs().mean() if normalize == "mean" else s.abs().max()
        return s / scale.clamp_min(1e-12)

    names = list(scores)
    flat = torch.cat([scaled(scores[name]) for name in names])
    owner = torch.cat([torch.full((n_channels[name],), i) for i, name in enumerate(names)])
    index = torch.cat([torch.arange(n_channels[name]) for name in names])
    unit = {name: 1.0 for name in names} if cost is None else cost
    finite = [unit[name] * n_channels[name] for name in names if math.isfinite(unit[name])]
    target = int(ratio * len(flat)) if cost is None else ratio * sum(finite)
    allowed = {name: _allowed(n_channels[name], min_channels, round_to) for name in names}
    chosen: dict[str, list[int]] = {name: [] for name in names}
    total = 0.0
    for position in torch.argsort(flat, stable=True).tolist():
        if total >= target:
            break
        name = names[int(owner[position])]
        if len(chosen[name]) < allowed[name] and math.isfinite(unit[name]):
            chosen[name].append(int(index[position]))
            total += unit[name]
    removed = {}
    for name in names:  # rounding keeps the lowest-ranked of each layer's share
        n = n_channels[name]
        count = min(_rounded_removal(n, len(chosen[name]), round_to), allowed[name])
        order = torch.argsort(scaled(scores[name]), stable=True)
        removed[name] = sorted(order[:count].tolist())
    _check_distinguishable(scores, removed)
    return PruningPlan(removed, n_channels, ratio, scores)


TIE_TOLERANCE = 1e-6  # relative to the largest score: float32's resolution


def _check_distinguishable(scores: dict[str, torch.Tensor], removed: dict[str, list[int]]) -> None:
    """Raise ``ValueError`` if a layer loses some but not all of its channels while all its
    scores are equal: the choice would fall to channel order."""
    for name, s in scores.items():
        if not removed[name] or len(s) < 2:
            continue
        spread = float(s.max() - s.min())
        if spread <= max(TIE_TOLERANCE * float(s.abs().max()), 1e-12):
            raise ValueError(
                f"all {len(s)} channels of layer {name!r} have the same score "
                f"({float(s[0]):.4g}): the criterion cannot tell them apart, and removing "
                f"{len(removed[name])} would pick them by index. Either the game's value does "
                "not depend on the layer's channels (choose one that fits the model: "
                "metric='mse' for regression, 'bce' for multi-label targets, 'auto' to choose "
                "from the targets, or the label-free 'kl'), or the layer is dead (all-zero "
                "weights or activations: leave it out with ignored_layers, or give it "
                "a ratio of 0)"
            )

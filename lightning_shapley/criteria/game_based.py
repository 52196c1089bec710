"""Criteria that play the channel game: Shapley values (any estimator) and leave-one-out."""

from __future__ import annotations

import math
import warnings

import torch

from lightning_shapley.criteria.base import Criterion
from lightning_shapley.criteria.classic import ImportanceCriterion
from lightning_shapley.estimators import (
    CutEstimator,
    Estimator,
    LeaveOneOut,
    PermutationShapley,
    estimator_by_name,
)
from lightning_shapley.games import ChannelGame
from lightning_shapley.metrics import MetricLike, value_function
from lightning_shapley.options import ABLATIONS, SCOPES, check_choice

__all__ = ["AnconaShapley", "ShapleyCriterion"]


class ShapleyCriterion(Criterion):
    """Channel Shapley values from a :class:`~lightning_shapley.games.ChannelGame`.

    Args:
        estimator: An estimator name (``"exact"``, ``"permutation"``, ``"loo"``, ``"dasp"``,
            ``"bandit"``, ``"tmab"``, ``"cut_permutation"``) or object. The cut samplers
            (bandit, TMAB, cut permutation) work at the cut that ``score(..., cut=ratio)``
            names, or at their own ``cut`` without one.
        budget: Game evaluations per game (``None``: the estimator's own, e.g. ``n + 1`` for
            leave-one-out). Raised, with a warning, where a layer needs more than this for one
            estimate (an antithetic permutation pair costs ``2n`` on ``n`` channels).
        scope: ``"layer"`` (one game per layer) or ``"global"`` (one game over all layers'
            channels, whose values share one scale).
        metric: The game's value (see :class:`~lightning_shapley.games.ChannelGame`).
        ablation: ``"zero"`` or ``"mean"``.
    """

    def __init__(
        self,
        estimator: str | Estimator = "permutation",
        budget: int | None = 1024,
        *,
        scope: str = "layer",
        metric: MetricLike = "cross_entropy",
        ablation: str = "zero",
    ) -> None:
        self.estimator = estimator_by_name(estimator) if isinstance(estimator, str) else estimator
        if not isinstance(self.estimator, Estimator):
            raise TypeError(
                f"estimator must be a name or an Estimator, got {type(estimator).__name__}"
            )
        check_choice("scope", scope, SCOPES)
        check_choice("ablation", ablation, ABLATIONS)
        self.budget, self.scope, self.metric, self.ablation = budget, scope, metric, ablation
        self.label_free = value_function(metric).label_free
        self.name = "loo" if isinstance(self.estimator, LeaveOneOut) else "shapley"

    def _games(self, model, layers, inputs, targets):
        """``(layers, game)`` pairs, built one at a time: a game's caches (hundreds of MB on a
        wide layer) are freed once the next is asked for."""
        options = {"metric": self.metric, "ablation": self.ablation}
        data = inputs if targets is None else (inputs, targets)
        if self.scope == "global":
            yield layers, ChannelGame(model, layers, data, **options)
            return
        for layer in layers:
            yield [layer], ChannelGame(model, layer, data, **options)

    def _values(self, game: ChannelGame, seed: int) -> tuple[torch.Tensor, int]:
        estimator = self.estimator
        if isinstance(estimator, CutEstimator) and game.n_players > 1:
            estimator = estimator.at_cut(self._cut or estimator.cut, game.n_players)
        budget = self.budget
        if budget is not None and budget < estimator.min_budget(game.n_players):
            budget = estimator.min_budget(game.n_players)
            warnings.warn(
                f"budget={self.budget} is below what {type(estimator).__name__} needs for "
                f"the {game.n_players} channels of {[g.layer for g in game.groups]}; using "
                f"{budget} evaluations there",
                stacklevel=4,
            )
        result = estimator.estimate(self._shard(game), budget, seed=seed)
        return result.values, result.n_evals

    def _score(self, model, layers, inputs, targets, seed):
        scores, n_evals = {}, 0
        shard = self._shard
        for names, game in self._games(model, layers, inputs, targets):
            seen = _ValueRange()
            self._shard = lambda g, seen=seen: _Watched(shard(g), seen)
            try:
                values, spent = self._values(game, seed)
            finally:
                self._shard = shard
            if not torch.isfinite(values).all():
                raise ValueError(
                    f"the game on {names} gave non-finite values: the model's outputs or loss "
                    "are NaN or infinite on the calibration data"
                )
            if seen.blind:
                values = _weight_norms(game)
            n_evals += spent
            sizes = [g.n_channels for g in game.groups]
            scores.update(zip(names, values.split(sizes), strict=True))
            del game  # freed before the next game is built
        return scores, n_evals

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.estimator).__name__}, budget={self.budget}, "
            f"scope={self.scope!r})"
        )


class _ValueRange:
    """The lowest and highest values, and how many, that the games it watches gave."""

    def __init__(self) -> None:
        self.low, self.high, self.count = math.inf, -math.inf, 0

    @property
    def blind(self) -> bool:
        """Whether at least two values were measured and all were the same."""
        return self.count >= 2 and self.low == self.high


class _Watched:
    """A game that reports every value it gives to a :class:`_ValueRange`; anything else is
    the game's own."""

    def __init__(self, game, seen: _ValueRange) -> None:
        self._game, self._seen = game, seen

    def __getattr__(self, name: str):
        return getattr(self._game, name)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        values, seen = self._game(masks), self._seen
        if len(values):
            seen.low = min(seen.low, float(values.min()))
            seen.high = max(seen.high, float(values.max()))
            seen.count += len(values)
        return values


def _weight_norms(game: ChannelGame) -> torch.Tensor:
    """``[n]`` the weight L1 norms of the channels of a game that no coalition changes, with one
    warning: on the calibration data any cut is as good as another, and a dead or saturated
    layer (a gate stuck open, a residual branch scaled to zero) is no reason to stop a prune."""
    layers = [group.layer for group in game.groups]
    warnings.warn(
        f"the channel game of {', '.join(map(repr, layers))} gives every kept set the same value "
        "on the calibration data, so its channels are ranked by weight L1 norm instead: the "
        "layer is dead or saturated there, or the game's value does not see it (a multi-label "
        "or regression model needs metric='bce', 'mse' or 'auto')",
        stacklevel=5,
    )
    norms = ImportanceCriterion("l1").score(game.model, layers, game.example_input)
    return torch.cat([norms.values[layer] for layer in layers]).double()


class AnconaShapley(ShapleyCriterion):
    """Ancona et al.'s (2020) setting: removal-direction permutation Shapley values per example,
    ranked by their mean plus ``spread`` standard deviations over the calibration examples.

    Args:
        permutations: Permutations per game (theirs: 5), each costing ``n − 1`` evaluations.
        spread: Multiple of the per-example standard deviation added to the mean (theirs: 2;
            0 gives the plain mean).
    """

    def __init__(
        self, permutations: int = 5, spread: float = 2.0, *, ablation: str = "zero"
    ) -> None:
        if permutations < 1:
            raise ValueError(f"permutations must be at least 1, got {permutations}")
        super().__init__(PermutationShapley(antithetic=False), None, ablation=ablation)
        self.permutations, self.spread = permutations, spread
        self.name = "ancona_shapley"

    def _values(self, game: ChannelGame, seed: int) -> tuple[torch.Tensor, int]:
        per_example = self._shard(_PerExample(game))
        budget = 2 + self.permutations * max(1, game.n_players - 1)
        result = self.estimator.estimate(per_example, budget, seed=seed)  # values [n, N]
        return result.values.mean(dim=1) + self.spread * result.values.std(dim=1), result.n_evals


class _PerExample:
    """A channel game whose value is a vector: one value per calibration example."""

    def __init__(self, game: ChannelGame) -> None:
        self.game, self.n_players = game, game.n_players

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        return self.game.per_example(masks)

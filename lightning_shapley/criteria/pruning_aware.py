"""Criteria that search for the best kept set on the channel game instead of ranking channels by
their average worth (see :mod:`~lightning_shapley.selection`).

Both stop at the cut the plan will make (``score(..., cut=ratio)``); without one they remove all
but one channel of every group, which costs more and gives the full removal order.
"""

from __future__ import annotations

import torch

from lightning_shapley.criteria.game_based import ShapleyCriterion
from lightning_shapley.estimators import Estimator, estimator_by_name
from lightning_shapley.games import ChannelGame
from lightning_shapley.metrics import MetricLike
from lightning_shapley.pruning import channel_costs
from lightning_shapley.selection import (
    Elimination,
    backward_elimination,
    iterated_removal,
    order_scores,
)

__all__ = ["EliminationCriterion", "IteratedShapleyCriterion"]


class _KeptSetSearch(ShapleyCriterion):
    """Plays one game per layer (or one network-wide game) and turns a removal order into
    scores."""

    def _values(self, game: ChannelGame, seed: int) -> tuple[torch.Tensor, int]:
        sizes = torch.tensor([g.n_channels for g in game.groups])
        groups = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        most = game.n_players - len(sizes)
        k = most if self._cut is None else min(int(self._cut * game.n_players), most)
        result = self._search(self._shard(game), k, groups, seed, game)
        return order_scores(result.order, result.worth), result.n_evals

    def _search(
        self, game, k: int, groups: torch.Tensor, seed: int, channel_game: ChannelGame
    ) -> Elimination:
        raise NotImplementedError


class EliminationCriterion(_KeptSetSearch):
    """Greedy (or beam) backward elimination of channels on the game value of the kept set.

    The defaults are the product's: the value is agreement with the unpruned model (``"kl"``,
    no labels needed) and a removed channel is replaced by its least-squares prediction from
    the channels kept (``"regression"``), so a channel that others can stand in for goes
    first, as it would after a least-squares refit of its consumers.

    Args:
        beam: Kept sets followed at once (1: greedy).
        width: Channels measured again per round of the lazy search (default ``log2 n``).
        scope: ``"layer"`` or ``"global"`` (one search over all layers' channels, which also
            decides how many each layer loses).
        metric: The game's value (see :func:`~lightning_shapley.metrics.value_function`).
        ablation: ``"zero"``, ``"mean"``, ``"regression"`` or ``"refit"`` (see
            :class:`~lightning_shapley.games.ChannelGame`).
        cost: ``"params"`` or ``"macs"`` (global scope, greedy): the cut is then a share of
            the total parameters or MACs of the layers' channels, and each step removes the
            channel that loses least per unit saved, so the game decides how many each layer
            loses at a fixed budget. Plan it with the same ``cost`` (see
            :func:`~lightning_shapley.plan.make_plan`).
    """

    def __init__(
        self,
        beam: int = 1,
        width: int | None = None,
        *,
        scope: str = "layer",
        metric: MetricLike = "kl",
        ablation: str = "regression",
        cost: str | None = None,
    ) -> None:
        if beam < 1 or (width is not None and width < 1):
            raise ValueError(f"beam and width must be positive, got beam={beam}, width={width}")
        if cost not in (None, "params", "macs"):
            raise ValueError(f"cost={cost!r} is invalid; use None, 'params' or 'macs'")
        if cost is not None and (scope != "global" or beam != 1):
            raise ValueError("a cost budget needs scope='global' and beam=1")
        super().__init__("loo", None, scope=scope, metric=metric, ablation=ablation)
        self.beam, self.width, self.cost = beam, width, cost
        self.name = "greedy" if beam == 1 else "beam"

    def _search(self, game, k, groups, seed, channel_game):
        if self.cost is None or self._cut is None:
            return backward_elimination(game, k, beam=self.beam, width=self.width, groups=groups)
        # a share of the total cost instead of the channels: search until the cut's cost
        layers = [g.layer for g in channel_game.groups]
        example = channel_game.example_input
        per_layer = channel_costs(channel_game.model, layers, example, self.cost)
        costs = torch.tensor([per_layer[g.layer] for g in channel_game.groups])
        costs = torch.repeat_interleave(costs, torch.bincount(groups)).double()
        finite = torch.isfinite(costs)
        budget = self._cut * float(costs[finite].sum())
        costs[~finite] = 1.0  # single-channel layers: never removable anyway
        most = game.n_players - len(channel_game.groups)
        return backward_elimination(game, most, width=self.width, groups=groups, costs=costs,
                                    budget=budget)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beam={self.beam}, scope={self.scope!r}, metric={self.metric!r})"
        )


class IteratedShapleyCriterion(_KeptSetSearch):
    """Shapley values estimated in ``rounds``, the lowest share removed after each and the rest
    re-estimated on the subgame of the channels that remain.

    Args:
        estimator: An estimator name or object.
        budget: Evaluations per round.
        rounds: Estimation rounds.
        scope, metric, ablation: As :class:`~lightning_shapley.criteria.ShapleyCriterion`.
    """

    def __init__(
        self,
        estimator: str | Estimator = "permutation",
        budget: int | None = 256,
        rounds: int = 4,
        *,
        scope: str = "layer",
        metric: MetricLike = "cross_entropy",
        ablation: str = "zero",
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        estimator = estimator_by_name(estimator) if isinstance(estimator, str) else estimator
        super().__init__(estimator, budget, scope=scope, metric=metric, ablation=ablation)
        self.rounds = rounds
        self.name = "iterated_shapley"

    def _search(self, game, k, groups, seed, channel_game):
        return iterated_removal(game, k, self.estimator, self.budget, rounds=self.rounds,
                                groups=groups, seed=seed)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.estimator).__name__}, budget={self.budget}, "
            f"rounds={self.rounds}, scope={self.scope!r})"
        )

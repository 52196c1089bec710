"""Criteria that search for the best kept set on the channel game instead of ranking channels by
their average worth (see :mod:`~lightning_shapley.selection`).

Both stop at the cut the plan will make (``score(..., cut=ratio)``); without one they remove all
but one channel of every group, which costs more and gives the full removal order.
"""

from __future__ import annotations

import torch

from lightning_shapley.criteria.game_based import ShapleyCriterion, estimator_by_name
from lightning_shapley.estimators import Estimator
from lightning_shapley.games import ChannelGame
from lightning_shapley.metrics import MetricLike
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
        result = self._search(self._shard(game), k, groups, seed)
        return order_scores(result.order, result.worth), result.n_evals

    def _search(self, game, k: int, groups: torch.Tensor, seed: int) -> Elimination:
        raise NotImplementedError


class EliminationCriterion(_KeptSetSearch):
    """Greedy (or beam) backward elimination of channels on the game value of the kept set.

    Args:
        beam: Kept sets followed at once (1: greedy).
        width: Channels measured again per round of the lazy search (default ``log2 n``).
        scope: ``"layer"`` or ``"network"`` (one search over all layers' channels, which also
            decides how many each layer loses).
        metric: The game's value; ``"kl"`` needs no labels.
        ablation: ``"zero"`` or ``"mean"``.
    """

    def __init__(
        self,
        beam: int = 1,
        width: int | None = None,
        *,
        scope: str = "layer",
        metric: MetricLike = "cross_entropy",
        ablation: str = "zero",
    ) -> None:
        if beam < 1 or (width is not None and width < 1):
            raise ValueError(f"beam and width must be positive, got beam={beam}, width={width}")
        super().__init__("loo", None, scope=scope, metric=metric, ablation=ablation)
        self.beam, self.width = beam, width
        self.name = "greedy" if beam == 1 else "beam"

    def _search(self, game, k, groups, seed):
        return backward_elimination(game, k, beam=self.beam, width=self.width, groups=groups)

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

    def _search(self, game, k, groups, seed):
        return iterated_removal(game, k, self.estimator, self.budget, rounds=self.rounds,
                                groups=groups, seed=seed)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.estimator).__name__}, budget={self.budget}, "
            f"rounds={self.rounds}, scope={self.scope!r})"
        )

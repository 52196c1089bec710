"""Share a game's coalitions across processes (DDP ranks) and combine the values.

Every rank calls the game with the same coalitions (estimators are seeded alike); each rank
evaluates every ``world_size``-th coalition, and an all-gather puts the values back in order, so
every rank's estimator sees identical values and ends in the identical state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["ShardedGame"]


class ShardedGame:
    """A game whose evaluations are split across ranks.

    Args:
        n_players: Players of the game.
        evaluate: ``masks [m, n] -> values [m, ...]`` on this rank (e.g. a ``ChannelGame``).
        all_gather: Gathers a tensor ``[k, ...]`` from every rank into ``[world_size, k, ...]``
            (Lightning's ``trainer.strategy.all_gather``).
        rank, world_size: This process's rank and the number of processes.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0]))
        >>> alone = ShardedGame(2, game, lambda t: t.unsqueeze(0), rank=0, world_size=1)
        >>> alone(torch.tensor([[True, True], [False, True]])).tolist()
        [3.0, 2.0]
    """

    def __init__(
        self,
        n_players: int,
        evaluate: Callable[[torch.Tensor], torch.Tensor],
        all_gather: Callable[[torch.Tensor], torch.Tensor],
        *,
        rank: int,
        world_size: int,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} and world_size={world_size} are inconsistent")
        self.n_players, self.evaluate, self.all_gather = n_players, evaluate, all_gather
        self.rank, self.world_size = rank, world_size

    def __getattr__(self, name: str):
        """Anything else is the wrapped game's (an analytic estimator such as DASP reads a
        channel game's layers and calibration batches, the same on every rank)."""
        if name == "evaluate":  # not set yet: no game to ask
            raise AttributeError(name)
        return getattr(self.evaluate, name)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m, ...]`` of ``masks`` ``[m, n]``, this rank evaluating every k-th one."""
        m, world = len(masks), self.world_size
        share = math.ceil(m / world)
        mine = torch.as_tensor(self.evaluate(masks[self.rank :: world]))
        padded = mine.new_zeros(share, *mine.shape[1:])
        padded[: len(mine)] = mine
        gathered = torch.as_tensor(self.all_gather(padded)).reshape(world, share, *mine.shape[1:])
        values = mine.new_empty(m, *mine.shape[1:])
        for rank in range(world):
            count = len(range(rank, m, world))
            values[rank::world] = gathered[rank, :count].to(values)
        return values

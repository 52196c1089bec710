from __future__ import annotations

import threading

import pytest
import torch

from lightning_shapley import ChannelGame
from lightning_shapley.estimators import DASPShapley
from lightning_shapley.games import PairwiseGame
from lightning_shapley.games.distributed import ShardedGame
from lightning_shapley.lab.models import DigitsCNN


class CountingGame(PairwiseGame):
    """Records which coalitions one rank evaluated."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__(weights)
        self.seen: list[torch.Tensor] = []

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self.seen.append(masks.clone())
        return super().__call__(masks)


class ThreadGather:
    """``all_gather`` across threads standing in for ranks."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.shared: dict[int, torch.Tensor] = {}

    def for_rank(self, rank: int):
        def gather(tensor: torch.Tensor) -> torch.Tensor:
            self.shared[rank] = tensor
            self.barrier.wait()
            stacked = torch.stack([self.shared[r] for r in range(len(self.shared))])
            self.barrier.wait()
            return stacked

        return gather


@pytest.mark.parametrize(("m", "world"), [(7, 3), (2, 3), (6, 2), (1, 1)])
def test_ranks_split_the_coalitions_and_all_end_with_every_value_in_order(m, world):
    weights = torch.arange(1.0, 5.0)
    masks = torch.rand(m, 4, generator=torch.Generator().manual_seed(m)) > 0.5
    games = [CountingGame(weights) for _ in range(world)]
    gather = ThreadGather(world)
    results: dict[int, torch.Tensor] = {}

    def rank_main(rank: int) -> None:
        sharded = ShardedGame(4, games[rank], gather.for_rank(rank), rank=rank, world_size=world)
        results[rank] = sharded(masks)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    expected = PairwiseGame(weights)(masks)
    for rank in range(world):
        torch.testing.assert_close(results[rank], expected)
    counts = [sum(len(s) for s in g.seen) for g in games]
    assert counts == [len(range(r, m, world)) for r in range(world)]  # a share each, no overlap


def test_inconsistent_ranks_are_refused():
    with pytest.raises(ValueError, match="rank=2 and world_size=2"):
        ShardedGame(2, PairwiseGame(torch.ones(2)), lambda t: t, rank=2, world_size=2)


def test_an_analytic_estimator_reads_the_sharded_game_it_wraps():
    torch.manual_seed(0)
    model = DigitsCNN(width=4).eval()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    game = ChannelGame(model, "12", (x, y))
    sharded = ShardedGame(game.n_players, game, lambda t: t.unsqueeze(0), rank=0, world_size=1)
    assert sharded.batches is game.batches and sharded.groups is game.groups
    alone = DASPShapley().estimate(game, seed=0).values
    torch.testing.assert_close(DASPShapley().estimate(sharded, seed=0).values, alone)

"""A game restricted to some of its players, the others fixed out of every coalition."""

from __future__ import annotations

import torch

from lightning_shapley.games.base import Game, check_masks

__all__ = ["RestrictedGame"]


class RestrictedGame:
    """The subgame of ``game`` on ``players``: every other player is absent from every coalition.

    Args:
        game: The full game.
        players: ``[p]`` indices of the players that remain (distinct, in range).

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0, 3.0]))
        >>> RestrictedGame(game, torch.tensor([0, 2]))(torch.tensor([[True, True]])).tolist()
        [4.0]
    """

    def __init__(self, game: Game, players: torch.Tensor) -> None:
        players = torch.as_tensor(players, dtype=torch.long).flatten()
        if len(players) == 0:
            raise ValueError("a restricted game needs at least one player")
        if len(players.unique()) != len(players) or not (
            int(players.min()) >= 0 and int(players.max()) < game.n_players
        ):
            raise ValueError(
                f"players must be distinct indices below {game.n_players}, got {players.tolist()}"
            )
        self.game, self.players, self.n_players = game, players, len(players)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of coalitions ``[m, p]`` of the remaining players."""
        masks = check_masks(masks, self.n_players)
        full = torch.zeros(len(masks), self.game.n_players, dtype=torch.bool)
        full[:, self.players] = masks
        return self.game(full)

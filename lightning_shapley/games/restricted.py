"""A game restricted to some of its players, the others fixed out of (or in) every coalition."""

from __future__ import annotations

import torch

from lightning_shapley.games.base import Game, check_masks

__all__ = ["RestrictedGame"]


class RestrictedGame:
    """The subgame of ``game`` on ``players``: every other player is absent from every coalition,
    or present where ``present`` says so.

    Args:
        game: The full game.
        players: ``[p]`` indices of the players that remain (distinct, in range).
        present: ``[n]`` players of the full game in every coalition (those in ``players``
            are ignored); default: none.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0, 3.0]))
        >>> RestrictedGame(game, torch.tensor([0, 2]))(torch.tensor([[True, True]])).tolist()
        [4.0]
    """

    def __init__(
        self, game: Game, players: torch.Tensor, present: torch.Tensor | None = None
    ) -> None:
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
        self.present = torch.zeros(game.n_players, dtype=torch.bool)
        if present is not None:
            if present.shape != (game.n_players,):
                raise ValueError(f"present must be [{game.n_players}] booleans")
            self.present = present.bool().clone()

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of coalitions ``[m, p]`` of the remaining players."""
        masks = check_masks(masks, self.n_players)
        full = self.present.unsqueeze(0).repeat(len(masks), 1)
        full[:, self.players] = masks
        return self.game(full)

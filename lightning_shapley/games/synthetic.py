"""Games with known Shapley values, for tests and estimator benchmarks."""

from __future__ import annotations

import torch

from lightning_shapley.games.base import check_masks

__all__ = ["PairwiseGame", "SymmetricGame"]


class PairwiseGame:
    """``v(S) = Σ_{i∈S} w_i + Σ_{i<j; i,j∈S} a_ij``, with Shapley values ``φ_i = w_i + ½ Σ_j a_ij``.

    With ``interactions=None`` the game is additive (``φ = w``); a zero weight with no
    interactions is a dummy player (``φ = 0``). It counts the coalitions it evaluates.

    Args:
        weights: ``[n]`` individual worths.
        interactions: ``[n, n]`` symmetric pairwise worths (diagonal ignored), or ``None``.

    Example:
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 4.0], [4.0, 0.0]]))
        >>> game(torch.tensor([[True, True], [True, False]])).tolist()
        [7.0, 1.0]
        >>> game.shapley_values().tolist()
        [3.0, 4.0]
    """

    def __init__(self, weights: torch.Tensor, interactions: torch.Tensor | None = None) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.n_players = len(self.weights)
        if interactions is None:
            interactions = torch.zeros(self.n_players, self.n_players, dtype=torch.float64)
        interactions = torch.as_tensor(interactions, dtype=torch.float64)
        if interactions.shape != (self.n_players, self.n_players):
            raise ValueError(f"interactions must have shape [{self.n_players}, {self.n_players}]")
        upper = torch.triu(interactions, diagonal=1)
        self.interactions = upper + upper.T
        self.n_evals = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of coalitions ``masks`` ``[m, n]``."""
        s = check_masks(masks, self.n_players).double()
        self.n_evals += len(s)
        return s @ self.weights + 0.5 * ((s @ self.interactions) * s).sum(dim=1)

    def shapley_values(self) -> torch.Tensor:
        """The exact Shapley values ``[n]``."""
        return self.weights + 0.5 * self.interactions.sum(dim=1)


class SymmetricGame:
    """``v(S) = f(|S|)``: every player is interchangeable, so ``φ_i = (f(n) − f(0)) / n``.

    Args:
        n_players: Number of players.
        size_value: ``[n + 1]`` the value of a coalition of each size.
    """

    def __init__(self, n_players: int, size_value: torch.Tensor) -> None:
        self.n_players = n_players
        self.size_value = torch.as_tensor(size_value, dtype=torch.float64)
        if len(self.size_value) != n_players + 1:
            raise ValueError(f"size_value must have {n_players + 1} entries")
        self.n_evals = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of coalitions ``masks`` ``[m, n]``."""
        s = check_masks(masks, self.n_players)
        self.n_evals += len(s)
        return self.size_value[s.sum(dim=1)]

    def shapley_values(self) -> torch.Tensor:
        """The exact Shapley values ``[n]``."""
        share = (self.size_value[-1] - self.size_value[0]) / self.n_players
        return share.repeat(self.n_players)

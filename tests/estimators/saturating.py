"""A counting game with interactions of every order, shared by the sampler tests."""

from __future__ import annotations

import torch


class SaturatingGame:
    """``v(S) = tanh(Σ_{i∈S} w_i)``: interactions of every order; it counts evaluations."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights.double()
        self.n_players = len(weights)
        self.n_evals = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self.n_evals += len(masks)
        return torch.tanh(masks.double() @ self.weights)

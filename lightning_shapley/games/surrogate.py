"""A cheap stand-in for a channel game whose Shapley values are exact in closed form.

Removing channel ``j`` (zero ablation) changes the inputs ``x`` of its consumers by ``−x_j``. To
second order, the change of the log-likelihood of the model's own prediction is then a quadratic
form in the removal indicators ``r = 1 − s`` of a coalition ``s``::

    v̂(s) = −½ rᵀ G r,    G_jk = 1/N Σ_e Σ_y p(y | x_e) a_ej(y) a_ek(y),
    a_ej(y) = ⟨x_ej, ∂ log p(y | x_e) / ∂x_ej⟩,

with ``G`` the Fisher information projected on the channels (the expected Hessian of the
KL divergence to the unpruned model). A game with only pairwise terms has Shapley values
``φ_i = a_i + ½ Σ_j b_ij``; here that is ``φ̂ = ½ G 1``, exact, for ``n + 1`` forwards' worth of
work (one forward and one backward per class, or per sampled label where there are many
classes). Estimators use it as a control variate and to screen players far from a cut.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_shapley.hooks import attached
from lightning_shapley.metrics import first_logits
from lightning_shapley.modes import restored_modes
from lightning_shapley.pruning import Consumer

__all__ = ["QuadraticGame", "fisher_gram"]

EXACT_CLASSES = 16
"""Up to this many classes the Fisher information sums over all of them; above, it samples."""


class QuadraticGame:
    """The game ``v(s) = −½ (1 − s)ᵀ G (1 − s)`` and its exact Shapley values ``½ G 1``.

    Args:
        gram: ``[n, n]`` symmetric positive semi-definite matrix ``G``.

    Example:
        >>> game = QuadraticGame(torch.tensor([[2.0, 1.0], [1.0, 4.0]]))
        >>> game(torch.tensor([[True, True], [False, True], [False, False]])).tolist()
        [-0.0, -1.0, -4.0]
        >>> game.shapley_values.tolist()
        [1.5, 2.5]
    """

    def __init__(self, gram: torch.Tensor) -> None:
        if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
            raise ValueError(f"gram must be a square matrix, got shape {tuple(gram.shape)}")
        self.gram = gram.double()
        self.n_players = len(gram)
        self.shapley_values = 0.5 * self.gram.sum(dim=1)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of the coalitions ``masks`` ``[m, n]``."""
        removed = (~masks.bool()).double()
        return -0.5 * ((removed @ self.gram) * removed).sum(dim=1)

    def removal_drops(self, kept: torch.Tensor) -> torch.Tensor:
        """``[n]`` how much the value of coalition ``kept`` ``[n]`` falls when each player is
        removed from it as well: ``(G r)_i + ½ G_ii`` with ``r`` the removal indicators
        (meaningful for the players in ``kept``).

        Example:
            >>> game = QuadraticGame(torch.tensor([[2.0, 1.0], [1.0, 4.0]]))
            >>> kept, empty = torch.tensor([True, False]), torch.tensor([[False, False]])
            >>> game.removal_drops(kept)[0].item(), (game(kept[None]) - game(empty)).item()
            (2.0, 2.0)
        """
        removed = (~kept.bool()).double()
        return self.gram @ removed + 0.5 * self.gram.diagonal()


def fisher_gram(
    model: nn.Module,
    consumers: dict[str, Consumer],
    batches: list[torch.Tensor],
    n_players: int,
    *,
    draws: int = 8,
    seed: int = 0,
) -> torch.Tensor:
    """The channel Fisher matrix ``G`` ``[n, n]`` of the module docstring.

    Args:
        model: The network (evaluated in eval mode; its modes are restored).
        consumers: The consumers of the players' channels, by module name.
        batches: Calibration inputs ``[B, ...]``.
        n_players: Number of players.
        draws: Labels sampled per example from the model's prediction when it has more than
            ``EXACT_CLASSES`` classes.
        seed: Seed of those draws.
    """
    names = {model.get_submodule(name): name for name in consumers}
    captured: list[tuple[str, torch.Tensor]] = []

    def capture(module: nn.Module, args: tuple) -> tuple:
        # a node of its own, so that its gradient flows through this consumer only
        x = args[0]
        own = x.clone() if x.requires_grad else x.detach().requires_grad_()
        captured.append((names[module], own))
        return (own, *args[1:])

    gram = torch.zeros(n_players, n_players, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with attached(names, before=capture), restored_modes(model), torch.enable_grad():
        model.eval()
        for batch in batches:
            captured.clear()
            log_p = torch.log_softmax(first_logits(model(batch)).float(), dim=-1)
            for objective in _objectives(log_p, draws, generator):
                tensors = [x for _, x in captured]
                grads = torch.autograd.grad(
                    objective, tensors, retain_graph=True, allow_unused=True
                )
                first_order = torch.zeros(len(batch), n_players, dtype=torch.float64)
                for (name, x), grad in zip(captured, grads, strict=True):
                    if grad is not None:
                        first_order += _per_player(x.detach() * grad, consumers[name], n_players)
                gram += first_order.T @ first_order
            count += len(batch)
    return gram / max(count, 1)


def _objectives(log_p: torch.Tensor, draws: int, generator: torch.Generator):
    """Weighted log-likelihoods whose gradients' outer products sum to the Fisher matrix."""
    p = log_p.detach().exp()
    if log_p.shape[-1] <= EXACT_CLASSES:
        for label in range(log_p.shape[-1]):
            yield (p[:, label].sqrt() * log_p[:, label]).sum()
        return
    labels = torch.multinomial(p.cpu(), draws, replacement=True, generator=generator)
    for draw in range(draws):
        picked = labels[:, draw].to(log_p.device).unsqueeze(1)
        yield log_p.gather(1, picked).sum() / math.sqrt(draws)


def _per_player(product: torch.Tensor, consumer: Consumer, n_players: int) -> torch.Tensor:
    """Sum ``product`` ``[B, ...]`` (input × gradient at a consumer) over each player's
    features and positions: ``[B, n_players]``."""
    dim = consumer.feature_dim(product)
    per_feature = product.movedim(dim, -1).reshape(len(product), -1, product.shape[dim]).sum(1)
    out = torch.zeros(len(product), n_players, dtype=torch.float64, device=product.device)
    feature_idx = consumer.feature_idx.to(product.device)
    player_idx = consumer.player_idx.to(product.device)
    out.index_add_(1, player_idx, per_feature[:, feature_idx].double())
    return out.cpu()

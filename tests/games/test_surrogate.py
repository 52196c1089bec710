"""The quadratic surrogate: exact Shapley values in closed form, and close to the channel game."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_shapley.estimators import ExactShapley
from lightning_shapley.games import ChannelGame
from lightning_shapley.games.surrogate import QuadraticGame


def test_closed_form_values_are_the_exact_shapley_values():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    game = QuadraticGame(a @ a.T)
    exact = ExactShapley().estimate(game).values
    torch.testing.assert_close(game.shapley_values, exact.double())


def test_rejects_a_matrix_that_is_not_square():
    with pytest.raises(ValueError, match="square"):
        QuadraticGame(torch.ones(2, 3))


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 16, 5),
    )  # fmt: skip


def test_tracks_the_kl_game_near_the_full_coalition():
    model = small_net()
    game = ChannelGame(model, "0", torch.randn(64, 1, 8, 8), metric="kl")
    surrogate = game.surrogate()
    masks = torch.ones(8, 8, dtype=torch.bool)
    masks[torch.arange(8), torch.arange(8)] = False  # one channel removed each
    single = torch.stack([game(masks).double(), surrogate(masks)])
    assert torch.corrcoef(single)[0, 1] > 0.9
    assert not surrogate.gram.requires_grad
    assert not any(p.grad is not None for p in model.parameters())


def test_first_order_terms_are_input_times_gradient_at_the_consumer():
    """With one example and one class the Gram matrix is ``a aᵀ``, ``a_j`` the change of the
    log-likelihood to first order when channel ``j`` is zeroed at the consumer."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))  # one class: p = 1, grads vanish
    model2 = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    x = torch.randn(1, 3)
    gram = ChannelGame(model2, "0", x, metric="kl").surrogate().gram
    hidden = model2[0](x).detach().requires_grad_()
    log_p = torch.log_softmax(model2[1](hidden), dim=-1)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for label in range(2):
        (grad,) = torch.autograd.grad(log_p[0, label], hidden, retain_graph=True)
        a = (hidden * grad).detach().double()[0]
        expected += log_p[0, label].exp().item() * torch.outer(a, a)
    torch.testing.assert_close(gram, expected)
    assert ChannelGame(model, "0", x, metric="kl").surrogate().gram.abs().max() == 0


class LayerNorm2d(nn.LayerNorm):
    """torchvision's and timm's ConvNeXt norm: a ``LayerNorm`` over the channels of
    ``[B, C, H, W]``, permuting inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_a_layer_norm_that_reads_channels_first_is_summed_over_its_channels():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8), nn.Conv2d(8, 6, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    ).eval()  # fmt: skip
    game = ChannelGame(model, "0", torch.randn(16, 3, 8, 8), metric="kl")
    surrogate = game.surrogate()
    assert surrogate.gram.shape == (8, 8) and torch.isfinite(surrogate.gram).all()
    masks = torch.ones(8, 8, dtype=torch.bool)
    masks[torch.arange(8), torch.arange(8)] = False
    single = torch.stack([game(masks).double(), surrogate(masks)])
    assert torch.corrcoef(single)[0, 1] > 0.5

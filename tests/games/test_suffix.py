"""The cached prefix and the masked suffix: what runs once, what runs per coalition."""

from __future__ import annotations

import torch
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.games.suffix import SuffixProgram
from tests.games.test_channel import masks_for, one_by_one, sequential_cnn


def test_the_prefix_runs_once_and_the_suffix_per_coalition():
    model = sequential_cnn()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    game = ChannelGame(model, "3", (x, y), strategy="suffix")
    program = game._program
    calls = []
    first = model[0].register_forward_hook(lambda *a: calls.append("first"))
    last = model[-1].register_forward_hook(lambda *a: calls.append("last"))
    try:
        cache = program.run_prefix(x)
        assert calls == ["first"]  # the layers before the consumer run with the prefix
        calls.clear()
        masks = masks_for(game.n_players, m=3).float()
        out = program.run_suffix(cache, masks)
        assert calls == ["last"]  # one batched run of the suffix for the three coalitions
    finally:
        first.remove()
        last.remove()
    assert out.shape == (3 * 6, 10)
    expected = one_by_one(model, "3", (x, y), masks.bool())
    values = game.value_function(out.view(3, 6, -1), game.targets)
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-5)
    assert program.peak_bytes(cache, masks[:1]) > 0


class StandardizedConv2d(nn.Conv2d):
    """A convolution whose ``forward`` changes its weight (as timm's ``StdConv2d`` does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_the_suffix_runs_plain_convolutions_channels_last_and_leaves_others_as_they_are():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), StandardizedConv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 6, 1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.Flatten(), nn.Linear(6, 3),
    ).eval()  # fmt: skip
    data = (torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,)))
    game = ChannelGame(model, "0", data, strategy="suffix")
    plain = {node.target for node in game._program._channels_last}
    assert plain == {"3", "5", "7"}  # not the consumer, whose forward is its own
    masks = masks_for(game.n_players)
    torch.testing.assert_close(game(masks), one_by_one(model, "0", data, masks), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_first_consumer_is_factorized_when_it_fits():
    model = sequential_cnn()
    x = torch.randn(6, 1, 8, 8)
    game = ChannelGame(model, "7", (x, torch.randint(0, 10, (6,))), strategy="suffix")
    graph = torch.fx.symbolic_trace(model).graph
    fits = SuffixProgram(model, graph, game._masks, game.n_players, factorize_budget=2**30)
    assert fits.run_prefix(x).factorized  # last conv → linear head: a matrix product
    too_small = SuffixProgram(model, graph, game._masks, game.n_players, factorize_budget=10)
    assert not too_small.run_prefix(x).factorized
    assert not game._caches[0].factorized  # strategy="suffix" never factorizes

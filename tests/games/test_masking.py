"""Least-squares stand-ins that cannot fail: dead, constant and duplicated channels, fewer
samples than channels, consumers reading more than a thousand channels; normalisations that mix
channels, masked as pruning computes them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.normalisation import NormMask
from lightning_shapley.plan import PruningPlan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import Consumer


def degenerate_net() -> nn.Sequential:
    """Channels 0 and 1 dead after the ReLU, 3 a copy of 2, 5 constant, 7 twice 6."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 10, 3), nn.ReLU(), nn.Conv2d(10, 4, 3), nn.Flatten(),
                        nn.Linear(4 * 16, 3))  # fmt: skip
    with torch.no_grad():
        w, b = net[0].weight, net[0].bias
        w[:2], b[:2] = 0.0, -1.0
        w[3], b[3] = w[2], b[2]
        w[5], b[5] = 0.0, 0.7
        w[7], b[7] = 2 * w[6], 2 * b[6].abs()
        b[6] = b[6].abs()
    return net.eval()


def test_default_game_and_refit_survive_dead_and_duplicated_channels():
    net = degenerate_net()
    x = torch.randn(3, 2, 8, 8)  # 3 examples: fewer than the 10 channels × 9 kernel taps
    game = ChannelGame(net, "0", x, metric="kl", ablation="regression")
    masks = torch.rand(64, game.n_players, generator=torch.Generator().manual_seed(0)) > 0.5
    masks[:, 0] = True
    values = game(masks)
    assert torch.isfinite(values).all()
    without_copy = torch.ones(1, game.n_players, dtype=torch.bool)
    without_copy[0, 3] = False  # a duplicate stands in for itself
    assert game(without_copy).item() == pytest.approx(0.0, abs=1e-6)
    pruned = copy.deepcopy(net)
    prune(pruned, PruningPlan({"0": [0, 1, 3, 5, 7]}, {"0": 10}, 0.5), x,
          compensation="least_squares")  # fmt: skip
    with torch.no_grad():
        assert torch.isfinite(pruned(x)).all()
        assert (pruned(x) - net(x)).abs().max() < 1e-2 * net(x).abs().max()


def test_a_consumer_reading_more_than_a_thousand_channels():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 1100, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1100, 5)).eval()  # fmt: skip
    x = torch.randn(6, 3, 4, 4)
    game = ChannelGame(net, "0", x, metric="kl", ablation="regression")
    assert game._masks["4"].imputation.rank <= 6
    masks = torch.rand(8, 1100, generator=torch.Generator().manual_seed(0)) > 0.3
    assert torch.isfinite(game(masks)).all()
    pruned = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="on 6 samples for 734 weights per output"):
        prune(pruned, PruningPlan({"0": list(range(0, 1100, 3))}, {"0": 1100}, 0.33), x,
              compensation="least_squares")  # fmt: skip
    assert pruned[4].in_features == 1100 - 367


class ChannelsLastBlock(nn.Module):
    """ConvNeXt's pattern: a depthwise conv, a LayerNorm over channels (channels last), a
    linear layer; and a GroupNorm before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.group_norm = nn.GroupNorm(2, 8)
        self.mix = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        x = x + self.down(torch.relu(self.up(y))).permute(0, 3, 1, 2)
        x = torch.relu(self.mix(self.group_norm(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_channel_mixing_normalisations_are_masked_as_pruning_computes_them():
    torch.manual_seed(3)
    net = ChannelsLastBlock().eval()
    x = torch.randn(5, 3, 8, 8)
    data = (x, torch.zeros(5, dtype=torch.long))
    game = ChannelGame(net, "stem", data, metric=lambda logits, t: logits.sum(dim=(1, 2)))
    assert {type(m) for m in game._masks.values()} >= {NormMask}
    assert game.n_players == 4  # the group norm's 2 blocks: a player is a channel of each
    removed = [1, 2]
    mask = torch.ones(1, 4, dtype=torch.bool)
    mask[0, removed] = False
    masked = game._logits(mask)[0]
    full = game._logits(torch.ones(1, 4, dtype=torch.bool))[0]
    pruned = copy.deepcopy(net)
    prune(pruned, PruningPlan({"stem": removed}, {"stem": 4}, 0.5), x)
    assert pruned.norm.normalized_shape == (4,) and pruned.group_norm.num_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(masked, pruned(x), rtol=1e-4, atol=1e-5)
        assert (masked - full).abs().max() > 1e-2
    for strategy in ("suffix", "full"):
        other = ChannelGame(net, "stem", data, metric=lambda logits, t: logits.sum(dim=(1, 2)),
                            strategy=strategy)  # fmt: skip
        torch.testing.assert_close(other._logits(mask)[0], masked, rtol=1e-4, atol=1e-5)


def test_norm_mask_leaves_removed_channels_at_zero():
    site = Consumer("n", torch.arange(4), torch.arange(4), -1, 4)
    norm = nn.LayerNorm(4)
    x = torch.randn(2, 3, 4)
    out = NormMask(site).forward(norm, (x,), torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    assert torch.equal(out[..., 1], torch.zeros(2, 3))
    torch.testing.assert_close(
        out[..., [0, 2, 3]], nn.functional.layer_norm(x[..., [0, 2, 3]], (3,))
    )


def small_trained_vgg() -> tuple[nn.Sequential, torch.Tensor]:
    """Six 3×3 conv + batch norm + ReLU layers of 24/48/96 channels at 16×16, 30 SGD steps on
    a learnable task, and 12 calibration images: dead and nearly collinear channels appear."""
    torch.manual_seed(5)
    layers, channels = [], 3
    for width in (24, 24, "M", 48, 48, "M", 96, 96, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(96 * 4, 10))
    teacher = torch.randn(3 * 4, 10)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 3, 16, 16)
        return x, (nn.functional.avg_pool2d(x, 8).flatten(1) @ teacher).argmax(1)

    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        x, y = batch(32)
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval(), batch(12)[0]


def test_the_default_game_and_refit_on_a_small_trained_vgg():
    """The solves of the default criterion's game (regression ablation) and of the default
    compensation, on every layer of a small trained VGG with 12 calibration images."""
    from lightning_shapley.plan import make_plan
    from lightning_shapley.pruning import prunable_layer_names

    net, x = small_trained_vgg()
    layers = prunable_layer_names(net, x[:1])
    assert len(layers) == 6
    generator = torch.Generator().manual_seed(0)
    scores = {}
    for layer in layers:
        game = ChannelGame(net, layer, x, metric="kl", ablation="regression")
        masks = torch.rand(16, game.n_players, generator=generator) > 0.5
        masks[:, 0] = True
        assert torch.isfinite(game(masks)).all(), layer
        scores[layer] = torch.rand(game.n_players, generator=generator)
    with pytest.warns(UserWarning, match="fewer samples than weights"):
        prune(net, make_plan(scores, 0.5), x, compensation="least_squares")
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()

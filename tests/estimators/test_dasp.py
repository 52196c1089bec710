"""DASPShapley: moment propagation checked against enumeration, sampling and exact Shapley."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_shapley.estimators.dasp import DASPShapley, coalition_sizes
from lightning_shapley.estimators.exact import ExactShapley
from lightning_shapley.games import ChannelGame
from lightning_shapley.games.masking import ConsumerMask
from lightning_shapley.games.moments import MomentSuffix
from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.statistics import consumer_input_means
from tests.conftest import randomize_batchnorm


def small_cnn() -> nn.Sequential:
    """Masked conv "0" → BN → ReLU → consumer conv "3" → BN, ReLU, max pool, flatten, linear."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.Conv2d(5, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6),
    )  # fmt: skip
    return randomize_batchnorm(net)


def image_data(n: int = 12, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(
        0, classes, (n,), generator=generator
    )


def subsets(others: list[int], k: int, n: int, player: int, present: bool) -> torch.Tensor:
    """All coalitions ``[C(n−1, k), n]``: a size-``k`` subset of ``others``, ``player`` fixed."""
    rows = []
    for chosen in itertools.combinations(others, k):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[list(chosen)] = True
        mask[player] = present
        rows.append(mask)
    return torch.stack(rows)


def masked_run(game: ChannelGame, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Consumer outputs ``[m, N, ...]`` and logits ``[m, N, K]`` of ``masks``, by masking the
    consumer's input with the game's own masking code (independent of DASP)."""
    model, consumer = game.model, game.groups[0].consumers[0]
    x = torch.cat(game._batches)
    means = (
        consumer_input_means(model, {consumer.name: consumer}, game._batches)[consumer.name]
        if game.ablation == "mean"
        else None
    )
    mask = ConsumerMask(consumer, means)
    module = model.get_submodule(consumer.name)
    outputs: list[torch.Tensor] = []

    def apply(module: nn.Module, args: tuple) -> tuple:
        inputs = args[0].view(len(masks), len(x), *args[0].shape[1:])
        return (mask.apply(inputs, masks.to(x.dtype)).flatten(0, 1),)

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        outputs.append(output.view(len(masks), len(x), *output.shape[1:]))

    handles = [module.register_forward_pre_hook(apply), module.register_forward_hook(record)]
    try:
        with torch.no_grad():
            logits = model(x.repeat(len(masks), 1, 1, 1))
    finally:
        for handle in handles:
            handle.remove()
    return outputs[0], logits.view(len(masks), len(x), -1)


# -- moment rules -----------------------------------------------------------------------------


# -- against the game ---------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_first_layer_moments_equal_enumerated_coalitions(ablation):
    x, y = image_data()
    model = small_cnn().double()
    game = ChannelGame(model, "0", (x.double(), y), ablation=ablation)
    suffix = MomentSuffix(game)
    n = game.n_players
    players = torch.arange(n)
    naive_error = 0.0
    for k in range(n):
        mean, var = suffix.consumer_moments(players, k)  # [2, n, N, 4, 8, 8]
        for player, present in itertools.product(range(n), (False, True)):
            others = [j for j in range(n) if j != player]
            outputs, _ = masked_run(game, subsets(others, k, n, player, present))
            torch.testing.assert_close(mean[int(present), player], outputs.mean(0))
            torch.testing.assert_close(
                var[int(present), player], outputs.var(0, unbiased=False), atol=1e-10, rtol=1e-7
            )
        # leaving out the channels' covariance (sampling without replacement) is measurably off
        p = k / (n - 1)
        parts = suffix.parts(players)
        naive = p * (1 - p) * (suffix.squares - parts[0].square())
        naive_error = max(naive_error, float((naive - var[0, 0]).abs().max()))
    assert naive_error > 1e-2


def test_propagated_mean_logits_track_enumerated_coalitions():
    x, y = image_data()
    model = small_cnn().double()
    game = ChannelGame(model, "0", (x.double(), y))
    suffix = MomentSuffix(game)
    n, errors, plain_errors, spreads = game.n_players, [], [], []
    for k in range(n):
        mean, var = suffix.consumer_moments(torch.arange(n), k)
        logits, _ = suffix.propagate(mean.flatten(0, 2), var.flatten(0, 2))
        plain, _ = suffix.propagate(mean.flatten(0, 2), torch.zeros_like(var.flatten(0, 2)))
        logits, plain = logits.view(2, n, len(x), -1), plain.view(2, n, len(x), -1)
        for player, present in itertools.product(range(n), (0, 1)):
            others = [j for j in range(n) if j != player]
            _, exact = masked_run(game, subsets(others, k, n, player, bool(present)))
            if k in (0, n - 1):  # no randomness: propagation is exact
                torch.testing.assert_close(logits[present, player], exact.mean(0))
                continue
            errors.append((logits[present, player] - exact.mean(0)).abs().mean())
            plain_errors.append((plain[present, player] - exact.mean(0)).abs().mean())
            spreads.append(exact.std(0, unbiased=False).mean())
    # Gaussian, independent moments past the consumer are approximate (measured: errors 0.23 of
    # the logits' spread over coalitions), but the variances halve the error of the mean alone
    error = torch.stack(errors).mean()
    assert error < 0.35 * torch.stack(spreads).mean()
    assert error < 0.7 * torch.stack(plain_errors).mean()


def linear_metric(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A metric linear in the logits: the mean logit of the target class."""
    return logits.gather(1, targets.view(-1, 1)).mean()


def linear_suffix_net(kind: str) -> nn.Sequential:
    torch.manual_seed(0)
    if kind == "flatten-linear":  # consumer: the linear head, features grouped by channel
        return nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU(), nn.Flatten(), nn.Linear(7 * 36, 6))
    return nn.Sequential(  # consumer: a conv, then a linear chain
        nn.Conv2d(3, 7, 3), nn.ReLU(), nn.Conv2d(7, 4, 3, padding=1), nn.BatchNorm2d(4),
        nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(), nn.Linear(4 * 3 * 3, 6),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["flatten-linear", "conv-linear-chain"])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("logit_samples", [0, 4])
def test_linear_suffix_gives_exact_shapley(kind, ablation, logit_samples):
    """A linear suffix and a metric linear in the logits make the game additive and DASP exact
    (measured: 1e-8 off; values up to 0.05). The logit noise cancels: ``i`` in and out share
    the variances."""
    x, y = image_data()
    net = randomize_batchnorm(linear_suffix_net(kind))
    game = ChannelGame(net, "0", (x, y), metric=linear_metric, ablation=ablation)
    exact = ExactShapley().estimate(game)
    dasp = DASPShapley(logit_samples=logit_samples).estimate(game)
    torch.testing.assert_close(dasp.values, exact.values, atol=1e-6, rtol=1e-5)


def test_digits_cnn_linear_head_layer_is_exact():
    """Layer "12" of DigitsCNN feeds the linear head directly: a metric linear in the logits
    makes DASP exact there (n = 8)."""
    torch.manual_seed(0)
    x, y = load_digits()
    model = DigitsCNN(width=4).eval()
    model[12] = nn.Linear(32, 8)
    model[14] = nn.Linear(8, 10)
    game = ChannelGame(model, "12", (x[:50], y[:50]), metric=linear_metric)
    exact = ExactShapley().estimate(game)
    dasp = DASPShapley().estimate(game)
    torch.testing.assert_close(dasp.values, exact.values, atol=1e-6, rtol=1e-5)


def trained_digits_cnn(width: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = load_digits()
    model = DigitsCNN(width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[:1000]), y[:1000]).backward()
        optimizer.step()
    return model.eval(), x[1000:1100], y[1000:1100]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


def test_ranking_follows_exact_shapley_on_a_trained_digits_cnn():
    """Layer "0" of a trained DigitsCNN (n = 10): the suffix runs through batch norm, ReLU, max
    pooling, a second conv stage and the linear head. Measured Spearman 0.976 (cross-entropy,
    zero ablation) and 1.0 (mean ablation) for 2·10·10 = 200 propagations vs 1,024 evaluations."""
    model, x, y = trained_digits_cnn(10)
    for ablation, threshold in (("zero", 0.9), ("mean", 0.9)):
        game = ChannelGame(model, "0", (x, y), ablation=ablation)
        exact = ExactShapley().estimate(game)
        dasp = DASPShapley().estimate(game)
        assert dasp.n_evals == 200
        assert spearman(dasp.values, exact.values) > threshold, ablation


# -- errors, budget, seeds ------------------------------------------------------------------------


class Residual(nn.Module):
    """``head(mix(relu(conv(x))) + skip(x))``: the add couples ``mix`` and ``skip``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4 * 64, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.mix(torch.relu(self.conv(x))) + self.skip(x)).flatten(1))


class Fork(nn.Module):
    """``head(cat(a(y), b(y)))`` with ``y = relu(conv(x))``: ``conv`` has two consumers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 2, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.head = nn.Linear(4 * 64, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.head(torch.cat([self.a(y), self.b(y)], dim=1).flatten(1))


def test_unsupported_suffix_raises_naming_the_layer():
    x, y = image_data()
    tanh = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 16, 6),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"layer '3' \(Tanh\)"):
        DASPShapley().estimate(ChannelGame(tanh, "0", (x, y)))
    # "conv" has one consumer ("mix"), but the add after it reads the prefix's "skip"
    with pytest.raises(ValueError, match=r"node 'add'"):
        DASPShapley().estimate(ChannelGame(Residual(), "conv", (x, y)))
    with pytest.raises(ValueError, match="one consumer"):  # two branches read the channels
        DASPShapley().estimate(ChannelGame(Fork(), "conv", (x, y)))
    game = ChannelGame(small_cnn(), ["0", "3"], (x, y))
    with pytest.raises(ValueError, match="one-layer game"):
        DASPShapley().estimate(game)


def test_budget_and_evaluation_count():
    x, y = image_data()
    game = ChannelGame(small_cnn(), "0", (x, y))
    n = game.n_players
    estimator = DASPShapley()
    assert estimator.min_budget(n) == 2 * n
    full = estimator.estimate(game)
    assert full.n_evals == 2 * n * n and full.values.shape == (n,)
    assert full.stderr.eq(0).all() and game.n_evals == 0  # the game itself is never called
    assert estimator.estimate(game, budget=2 * n * 3 + 1).n_evals == 2 * n * 3
    assert DASPShapley(n_sizes=2).estimate(game, budget=10**6).n_evals == 2 * n * 2
    with pytest.raises(ValueError, match="too small"):
        estimator.estimate(game, budget=2 * n - 1)
    with pytest.raises(ValueError, match="n_sizes"):
        DASPShapley(n_sizes=0)


def test_seeded_runs_repeat_and_sizes_are_stratified():
    x, y = image_data()
    game = ChannelGame(small_cnn(), "0", (x, y), metric="accuracy")
    estimator = DASPShapley(n_sizes=2, logit_samples=8)
    first, again = estimator.estimate(game, seed=3), estimator.estimate(game, seed=3)
    torch.testing.assert_close(first.values, again.values, atol=0, rtol=0)
    others = [estimator.estimate(game, seed=s).values for s in range(4)]
    assert any(not torch.equal(first.values, v) for v in others)

    sizes, weights = coalition_sizes(10, 3, seed=0)
    assert weights.sum().item() == pytest.approx(1.0)
    lows, highs = torch.tensor([0, 3, 7]), torch.tensor([3, 7, 10])
    assert ((sizes >= lows) & (sizes < highs)).all()
    # unbiased: over seeds, every size gets weight 1/n on average
    average = torch.zeros(10, dtype=torch.float64)
    for seed in range(3000):
        sizes, weights = coalition_sizes(10, 3, seed)
        average.index_add_(0, sizes, weights / 3000)
    torch.testing.assert_close(
        average, torch.full((10,), 0.1, dtype=torch.float64), atol=0.015, rtol=0
    )
    all_sizes, uniform = coalition_sizes(5, 5, seed=0)
    assert all_sizes.tolist() == [0, 1, 2, 3, 4] and uniform.eq(0.2).all()


def test_memory_budget_chunks_give_the_same_values():
    x, y = image_data()
    game = ChannelGame(small_cnn(), "0", (x, y))
    whole = DASPShapley().estimate(game)
    chunked = DASPShapley(memory_budget_mb=0.05).estimate(game)  # one player, few examples
    torch.testing.assert_close(chunked.values, whole.values, atol=1e-6, rtol=1e-5)

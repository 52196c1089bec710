"""Each criterion's ranking is the one its definition gives, on a tiny hand-checkable model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.criteria import (
    CRITERIA,
    AnconaShapley,
    ShapleyCriterion,
    criterion_by_name,
)


def tiny_model() -> nn.Sequential:
    """conv 1→3 (1×1, weights 1, −3, 2), identity BN with scales 0.5, 2, 1, ReLU, linear head."""
    model = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -3.0, 2.0]).view(3, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([0.5, 2.0, 1.0]))
        model[1].bias.zero_()
        model[4].weight.copy_(torch.tensor([[1.0] * 4 + [-1.0] * 4 + [0.5] * 4,
                                            [-1.0] * 4 + [1.0] * 4 + [-0.5] * 4]))  # fmt: skip
        model[4].bias.zero_()
    return model.eval()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 2, 2, generator=generator) + 0.1  # positive inputs
    return x, (x.flatten(1).sum(1) > 1.2).long()


def value(model: nn.Module, kept: list[int]) -> float:
    """−cross-entropy with only ``kept`` channels, by hand (a channel is zeroed after ReLU)."""
    x, y = data()
    h = model[2](model[1](model[0](x)))
    mask = torch.zeros(3)
    mask[kept] = 1
    with torch.no_grad():
        return -F.cross_entropy(model[4]((h * mask.view(1, 3, 1, 1)).flatten(1)), y).item()


def scores(name: str, model: nn.Module | None = None) -> torch.Tensor:
    return criterion_by_name(name).score(model or tiny_model(), ["0"], data()).values["0"]


def test_weight_magnitude_and_bn_scale():
    model = tiny_model()
    conv, bn, fc = model[0].weight.flatten(1), model[1].weight, model[4].weight.view(2, 3, 4)
    l1 = (conv.abs().sum(1) + bn.abs() + fc.abs().sum((0, 2))) / 3  # mean over the group's layers
    torch.testing.assert_close(scores("l1"), l1)
    l2 = (conv.pow(2).sum(1) + bn.pow(2) + fc.pow(2).sum((0, 2))) / 3
    torch.testing.assert_close(scores("l2"), l2)
    torch.testing.assert_close(scores("bn_scale"), bn.abs())


def test_activation_statistics():
    # channel 1 (weight −3) is always negative before ReLU: all zeros
    torch.testing.assert_close(scores("apoz"), torch.tensor([1.0, 0.0, 1.0]))
    x, _ = data()
    means = torch.stack([(w * s * x).clamp_min(0).mean() for w, s in [(1, 0.5), (-3, 2), (2, 1)]])
    torch.testing.assert_close(scores("activation_mean"), means)


def test_taylor_is_weight_times_gradient():
    model = tiny_model()
    x, y = data()
    model.train(False)
    F.cross_entropy(model(x), y).backward()
    conv, bn, fc = model[0].weight, model[1], model[4].weight
    per_layer = [
        (conv * conv.grad).abs().flatten(1).sum(1),
        (bn.weight * bn.weight.grad).abs() + (bn.bias * bn.bias.grad).abs(),
        (fc * fc.grad).abs().view(2, 3, 4).sum((0, 2)),
    ]
    fresh = tiny_model()
    result = scores("taylor", fresh)
    assert all(p.grad is None for p in fresh.parameters())  # gradients left as they were
    assert torch.equal(torch.argsort(result), torch.argsort(sum(per_layer)))
    assert result[1] == 0  # a channel that is always zero has no gradient


def test_game_criteria_follow_their_definitions():
    loo = scores("loo")
    full = value(tiny_model(), [0, 1, 2])
    expected = [full - value(tiny_model(), [j for j in range(3) if j != i]) for i in range(3)]
    torch.testing.assert_close(loo, torch.tensor(expected))

    shapley = ShapleyCriterion("exact", budget=None).score(tiny_model(), ["0"], data()).values["0"]
    phi = torch.zeros(3)
    for order in itertools.permutations(range(3)):
        for step, player in enumerate(order):
            kept = list(order[:step])
            phi[player] += value(tiny_model(), [*kept, player]) - value(tiny_model(), kept)
    torch.testing.assert_close(shapley, phi / math.factorial(3), rtol=1e-4, atol=1e-5)
    assert shapley[1] == pytest.approx(0, abs=1e-6)  # the dead channel is a dummy player

    mean_only = AnconaShapley(permutations=400, spread=0).score(tiny_model(), ["0"], data()).values
    torch.testing.assert_close(mean_only["0"], phi / 6, atol=0.02, rtol=0)
    with_spread = AnconaShapley(permutations=400).score(tiny_model(), ["0"], data()).values["0"]
    assert (with_spread >= mean_only["0"] - 1e-6).all()


def test_random_is_seeded_and_every_name_builds():
    model = tiny_model()
    first = criterion_by_name("random").score(model, ["0"], data(), seed=3).values["0"]
    again = criterion_by_name("random").score(model, ["0"], data(), seed=3).values["0"]
    other = criterion_by_name("random").score(model, ["0"], data(), seed=4).values["0"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    for name in CRITERIA:
        result = criterion_by_name(name).score(model, ["0"], data())
        assert result.values["0"].shape == (3,), name
    assert model.training is False and torch.is_grad_enabled()


def test_global_scope_scores_every_layer_from_one_game():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))  # fmt: skip
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 2, (8,))
    result = ShapleyCriterion("exact", None, scope="global").score(model, ["0", "2"], (x, y))
    assert [len(v) for v in result.values.values()] == [4, 3]
    assert result.n_evals == 2**7


def test_bad_criteria_arguments():
    with pytest.raises(ValueError, match="criterion 'l3' is unknown"):
        criterion_by_name("l3")
    with pytest.raises(ValueError, match="estimator='magic' is unknown"):
        ShapleyCriterion("magic")
    with pytest.raises(ValueError, match="scope='everything'"):
        ShapleyCriterion(scope="everything")
    with pytest.raises(ValueError, match="layers is empty"):
        criterion_by_name("l1").score(tiny_model(), [], data())


def test_layer_games_are_built_one_at_a_time(monkeypatch):
    import weakref

    from lightning_shapley.criteria import game_based

    alive, most = weakref.WeakSet(), []

    class Counted(game_based.ChannelGame):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            alive.add(self)
            most.append(len(alive))

    monkeypatch.setattr(game_based, "ChannelGame", Counted)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 16, 2))  # fmt: skip
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 2, (8,))
    result = ShapleyCriterion("exact", None).score(model, ["0", "2", "4"], (x, y))
    assert list(result.values) == ["0", "2", "4"]
    assert most == [1, 1, 1]  # each game's caches are freed before the next is built

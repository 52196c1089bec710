"""Gradient criteria: exact where the value is linear, complete (IG, DeepLIFT), side-effect free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_shapley.criteria.gradient import GradientCriterion
from lightning_shapley.games import ChannelGame

KINDS = ("grad_input", "integrated_gradients", "deeplift")


def small_cnn(inplace: bool = False) -> nn.Sequential:
    """Two conv stages with ReLU and max pooling, a linear head; weights scaled up so that
    removing channels changes the loss by several nats."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5),
    )  # fmt: skip
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    return model.eval()


def cnn_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=generator), torch.randint(
        0, 5, (32,), generator=generator
    )


def full_and_empty(game: ChannelGame) -> tuple[float, float]:
    n = game.n_players
    values = game(torch.stack([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]))
    return float(values[0]), float(values[1])


def scores(kind: str, model: nn.Module, layer: str, data, **options) -> torch.Tensor:
    return GradientCriterion(kind, **options).score(model, [layer], data).values[layer]


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_linear_value_gives_the_exact_channel_contributions(ablation):
    # value = mean logit 0, linear in the channels' activations (after the ReLU): every kind
    # equals the exact change v(N) − v(N ∖ {j}) of removing channel j
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4, 3)).eval()
    x, y = torch.randn(16, 2, 4, 4), torch.randint(0, 3, (16,))
    game = ChannelGame(model, "0", (x, y), metric=lambda z, t: z[:, 0].mean(), ablation=ablation)
    contribution = game(torch.ones(1, 4, dtype=torch.bool)) - game(~torch.eye(4, dtype=torch.bool))
    for kind in KINDS:
        result = scores(kind, model, "0", (x, y), value=lambda z, t: z[:, 0], ablation=ablation)
        torch.testing.assert_close(result, contribution.float(), rtol=1e-5, atol=1e-6)


def test_grad_input_is_the_first_order_change():
    # −cross-entropy is smooth in a channel's scale: (v(1) − v(1 − ε on channel j)) / ε → score j
    model, (x, y) = small_cnn(), cnn_data()
    result = scores("grad_input", model, "3", (x, y))

    def value(scale: torch.Tensor) -> float:
        # scaling after the ReLU is scaling what the consumer (the head) reads: max pooling
        # commutes with a positive scale
        hook = model[4].register_forward_hook(lambda m, a, out: out * scale.view(1, -1, 1, 1))
        try:
            with torch.no_grad():
                return -float(nn.functional.cross_entropy(model(x), y))
        finally:
            hook.remove()

    eps = 1e-3
    base = value(torch.ones(8))
    slopes = torch.tensor([(base - value(1 - eps * torch.eye(8)[j])) / eps for j in range(8)])
    torch.testing.assert_close(result, slopes, rtol=0.02, atol=2e-3)


def test_integrated_gradients_are_complete():
    # Σ_j IG_j = v(N) − v(∅) up to the midpoint rule's error: measured 0.09 % (16 points) and
    # 0.014 % (128 points) of a 5.2-nat change here; tolerances 1 % and 0.1 %
    model, data = small_cnn(), cnn_data()
    for layer in ("0", "3"):
        full, empty = full_and_empty(ChannelGame(model, layer, data))
        assert abs(full - empty) > 1
        for steps, tolerance in ((16, 1e-2), (128, 1e-3)):
            total = scores("integrated_gradients", model, layer, data, steps=steps).sum()
            assert float(total) == pytest.approx(full - empty, rel=tolerance), (layer, steps)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_deeplift_sums_to_delta_through_relu_and_max_pooling(ablation):
    model, data = small_cnn(inplace=True), cnn_data()
    for layer in ("0", "3"):  # layer 0's suffix holds a conv, an in-place ReLU and two pools
        full, empty = full_and_empty(ChannelGame(model, layer, data, ablation=ablation))
        result = scores("deeplift", model, layer, data, ablation=ablation)
        assert float(result.sum()) == pytest.approx(full - empty, rel=1e-5, abs=1e-6)
        # DeepLIFT is not the gradient: it differs from grad_input where the ReLUs bend
        assert not torch.allclose(result, scores("grad_input", model, layer, data), rtol=0.01)


def test_deeplift_rescale_rule_by_hand():
    # channels → linear (2 → 1) → ReLU → value c·relu(h): DeepLIFT_j = c · Δrelu/Δh · w_j · x_j
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(2, 1),
                          nn.ReLU(), nn.Linear(1, 1, bias=False)).eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
        model[2].weight.copy_(torch.tensor([[2.0, -1.0]]))
        model[2].bias.fill_(-0.5)
        model[4].weight.fill_(3.0)
    x = torch.tensor([0.2, 1.0, 2.0, -1.5]).view(4, 1, 1, 1)
    result = scores("deeplift", model, "0", (x, torch.zeros(4)), value=lambda z, t: z[:, 0])
    features = x.view(4, 1) * torch.ones(1, 2)  # both channels read x
    h = features @ torch.tensor([2.0, -1.0]) - 0.5
    h_ref = torch.tensor(-0.5)
    slope = (h.clamp_min(0) - h_ref.clamp_min(0)) / (h - h_ref)
    expected = (3.0 * slope.view(4, 1) * torch.tensor([2.0, -1.0]) * features).mean(0)
    torch.testing.assert_close(result, expected)


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.hidden = nn.Linear(4 * 6 * 6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.conv(x).flatten(1))))  # no hook sees it


def test_deeplift_refuses_what_it_cannot_handle():
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    softmax = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.Softmax(dim=1),
                            nn.Flatten(), nn.Linear(4 * 6 * 6, 3))  # fmt: skip
    with pytest.raises(ValueError, match=r"no rule for module '2' \(Softmax\)"):
        scores("deeplift", softmax, "0", (x, y))
    with pytest.raises(ValueError, match="nonlinearity outside a module"):
        scores("deeplift", FunctionalRelu(), "conv", (x, y))
    scores("integrated_gradients", FunctionalRelu(), "conv", (x, y))  # the path needs no rules
    with pytest.raises(ValueError, match="kind='hessian'"):
        GradientCriterion("hessian")
    with pytest.raises(ValueError, match="labelled"):
        GradientCriterion().score(small_cnn(), ["0"], torch.randn(4, 1, 8, 8))


def test_criteria_leave_the_model_untouched():
    model = small_cnn()
    model.train()
    model[1].eval()  # mixed modes are restored as they were
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 7.0)
    grads = [p.grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    data = cnn_data()
    with torch.no_grad():
        for kind in KINDS:
            result = GradientCriterion(kind, steps=4).score(model, ["0", "3"], data)
            assert [len(v) for v in result.values.values()] == [6, 8]
            assert (
                result.n_evals == {"grad_input": 2, "integrated_gradients": 8, "deeplift": 4}[kind]
            )
        assert not torch.is_grad_enabled()
    assert [m.training for m in model] == [True, False, *[True] * 6]
    for parameter, grad, weight in zip(model.parameters(), grads, weights, strict=True):
        assert parameter.grad is grad and bool((grad == 7).all())
        assert torch.equal(parameter.detach(), weight)

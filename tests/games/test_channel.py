from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.lab.models import CifarResNet, DigitsCNN, cifar_vgg
from tests.conftest import BranchyNet, ConcatNet, randomize_batchnorm


def sequential_cnn() -> nn.Module:
    return randomize_batchnorm(DigitsCNN(width=6))


def masks_for(n: int, m: int = 5, seed: int = 0) -> torch.Tensor:
    masks = torch.rand(m, n, generator=torch.Generator().manual_seed(seed)) > 0.5
    masks[0] = True
    masks[1] = False
    return masks


def one_by_one(model: nn.Module, layer: str, data, masks: torch.Tensor, **options) -> torch.Tensor:
    """The straightforward reference: a whole forward per coalition."""
    game = ChannelGame(model, layer, data, strategy="full", chunk_size=1, **options)
    return torch.cat([game(mask.unsqueeze(0)) for mask in masks])


CASES = [
    (sequential_cnn, ["0", "3", "7", "12"], (1, 8, 8)),
    (lambda: randomize_batchnorm(torchvision.models.resnet18(num_classes=10)),
     ["conv1", "layer1.0.conv1", "layer2.0.conv2", "layer3.1.conv1", "layer4.1.conv2"],
     (3, 32, 32)),
    (lambda: randomize_batchnorm(CifarResNet(8, width=4)), ["conv1", "layer2.0.conv1"],
     (3, 16, 16)),
    (lambda: randomize_batchnorm(ConcatNet()), ["left", "right", "mix"], (3, 8, 8)),
    (lambda: randomize_batchnorm(cifar_vgg("vgg11", width=0.125)), ["0", "11", "25"], (3, 32, 32)),
    (lambda: randomize_batchnorm(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)),
     ["features.1.conv.0.0", "features.2.conv.0.0", "features.16.conv.2"], (3, 32, 32)),
]  # fmt: skip


@pytest.mark.parametrize("ablation", ["zero", "mean", "regression"])
@pytest.mark.parametrize("build, layers, shape", CASES)
def test_cached_strategies_equal_one_forward_per_coalition(build, layers, shape, ablation):
    torch.manual_seed(0)
    model = build()
    data = (torch.randn(6, *shape), torch.randint(0, 10, (6,)))
    for layer in layers:
        auto = ChannelGame(model, layer, data, ablation=ablation)
        assert auto.strategy == "auto", layer
        masks = masks_for(auto.n_players)
        expected = one_by_one(model, layer, data, masks, ablation=ablation)
        for game in (auto, ChannelGame(model, layer, data, strategy="suffix", ablation=ablation)):
            torch.testing.assert_close(game(masks), expected, rtol=1e-4, atol=1e-5)


def test_removing_channels_changes_the_value_and_full_coalition_is_the_model():
    model = sequential_cnn()
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    game = ChannelGame(model, "3", (x, y))
    full, empty = game(torch.tensor([[True] * 6, [False] * 6]))
    expected = -nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(full, expected.detach(), rtol=1e-5, atol=1e-6)
    assert full != empty


def test_several_calibration_batches_and_a_dataloader_agree_with_one():
    model = sequential_cnn()
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,))
    masks = masks_for(6)
    single = ChannelGame(model, "3", (x, y))(masks)
    split = ChannelGame(model, "3", (x, y), batch_size=3)(masks)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    torch.testing.assert_close(split, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ChannelGame(model, "3", loader)(masks), single, rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_values():
    model = sequential_cnn()
    data = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    masks = masks_for(6, m=37)
    reference = ChannelGame(model, "3", data, chunk_size=1)(masks)
    for chunk in (4, 64, "auto"):
        torch.testing.assert_close(
            ChannelGame(model, "3", data, chunk_size=chunk)(masks), reference
        )


def test_counts_evaluations_and_supports_other_metrics():
    model = sequential_cnn()
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    masks = masks_for(6, m=7)
    game = ChannelGame(model, "3", (x, y), metric="accuracy")
    values = game(masks)
    game.per_example(masks)
    assert game.n_evals == 14
    assert ((values >= 0) & (values <= 1)).all()
    per_example = ChannelGame(model, "3", (x, y)).per_example(masks)
    assert per_example.shape == (7, 12)
    torch.testing.assert_close(per_example.mean(dim=1), ChannelGame(model, "3", (x, y))(masks))

    import torchmetrics

    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=10, average="micro")
    torch.testing.assert_close(ChannelGame(model, "3", (x, y), metric=metric)(masks), values)
    top_logit = ChannelGame(
        model, "3", (x, y), metric=lambda logits, t: logits.max(1).values.mean()
    )
    assert top_logit(masks).shape == (7,)


def test_network_wide_game_concatenates_groups():
    model = randomize_batchnorm(CifarResNet(8, width=4))
    data = (torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    layers = ["conv1", "layer1.0.conv1", "layer2.0.conv1"]
    game = ChannelGame(model, layers, data)
    singles = [ChannelGame(model, layer, data) for layer in layers]
    assert game.n_players == sum(g.n_players for g in singles)
    masks = masks_for(game.n_players, m=6)
    torch.testing.assert_close(
        game(masks), one_by_one(model, layers, data, masks), rtol=1e-4, atol=1e-5
    )
    # keeping every channel of the other groups reduces the global game to the single-layer one
    sub = masks_for(singles[1].n_players, m=4)
    full = torch.ones(4, game.n_players, dtype=torch.bool)
    full[:, 4:8] = sub
    torch.testing.assert_close(game(full), singles[1](sub), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same group"):
        ChannelGame(model, ["layer1.0.conv2", "conv1"], data)


def test_untraceable_model_falls_back_with_one_warning_and_correct_values():
    model = BranchyNet().eval()
    data = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    with pytest.warns(UserWarning, match="whole model"):
        game = ChannelGame(model, "conv", data)
    assert game.strategy == "full"
    masks = masks_for(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = game(masks)
    torch.testing.assert_close(values, one_by_one(model, "conv", data, masks))


def test_model_modes_and_grad_mode_are_restored():
    model = sequential_cnn().train()
    model[1].eval()
    before = [m.training for m in model.modules()]
    data = (torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    game = ChannelGame(model, "3", data)
    game(masks_for(6))
    assert [m.training for m in model.modules()] == before
    assert torch.is_grad_enabled()
    with torch.no_grad():
        ChannelGame(model, "0", data)(masks_for(6))
        assert not torch.is_grad_enabled()


def test_bad_inputs_raise_clear_errors():
    model = sequential_cnn()
    data = (torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    game = ChannelGame(model, "3", data)
    with pytest.raises(ValueError, match=r"shape \[m, 6\]"):
        game(torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        game(torch.full((1, 6), 0.5))
    with pytest.raises(ValueError, match="'nope' is not in the model"):
        ChannelGame(model, "nope", data)
    with pytest.raises(ValueError, match=r"\(ReLU\) has no prunable output channels"):
        ChannelGame(model, "2", data)
    with pytest.raises(ValueError, match="classifier head"):
        ChannelGame(model, "14", data)
    with pytest.raises(ValueError, match="empty"):
        ChannelGame(model, "3", (torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="differ in length"):
        ChannelGame(model, "3", (torch.randn(4, 1, 8, 8), torch.zeros(3, dtype=torch.long)))
    bad_options = [("ablation", "noise"), ("strategy", "fast"), ("chunk_size", 0),
                   ("metric", "f1"), ("memory_budget_mb", 0), ("batch_size", 0)]  # fmt: skip
    for option, value in bad_options:
        with pytest.raises(ValueError, match=option if option != "metric" else "metric="):
            ChannelGame(model, "3", data, **{option: value})


def test_label_free_game_needs_no_labels_and_scores_agreement_with_the_model():
    torch.manual_seed(0)
    model = sequential_cnn()
    x = torch.randn(12, 1, 8, 8)
    game = ChannelGame(model, "3", x, metric="kl")  # inputs alone
    masks = masks_for(game.n_players)
    values = game(masks)
    assert values[0].item() == pytest.approx(0.0, abs=1e-6)  # the full model agrees with itself
    assert (values[1:] < 0).all()
    with torch.no_grad():
        given = ChannelGame(model, "3", (x, model.eval()(x)), metric="kl")
    torch.testing.assert_close(given(masks), values)
    with pytest.raises(ValueError, match="needs targets"):
        ChannelGame(model, "3", x, metric="cross_entropy")


def test_refit_ablation_is_the_least_squares_pruned_model_on_held_out_folds():
    torch.manual_seed(1)
    model = sequential_cnn()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for layer in ("0", "3"):
        game = ChannelGame(model, layer, (x, y), ablation="refit")
        full = ChannelGame(model, layer, (x, y), ablation="refit", strategy="full")
        masks = masks_for(game.n_players)
        torch.testing.assert_close(game(masks), full(masks), rtol=1e-4, atol=1e-5)
        assert game(masks[:1]).item() == pytest.approx(
            ChannelGame(model, layer, (x, y))(masks[:1]).item(), abs=1e-5
        )
    # cross-fitting: with 2 examples per fold a linear consumer would fit anything in-sample,
    # yet removing channels still costs value
    game = ChannelGame(model, "7", x[:4], metric="kl", ablation="refit")
    masks = masks_for(game.n_players)
    values = game(masks)
    assert values[0].item() == pytest.approx(0.0, abs=1e-6) and (values[1:] < -1e-6).all()
    data = (torch.randn(4, 2, 8, 8), torch.tensor([0, 1, 2, 0]))
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(),
                            nn.Linear(64, 3))  # fmt: skip
    game = ChannelGame(grouped, "0", data, ablation="refit")  # refit group by group
    masks = masks_for(game.n_players)
    full = ChannelGame(grouped, "0", data, ablation="refit", strategy="full")
    torch.testing.assert_close(game(masks), full(masks), rtol=1e-4, atol=1e-5)
    reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
    reflecting = nn.Sequential(nn.Conv2d(2, 4, 3), reflect, nn.Flatten(), nn.Linear(144, 3))
    with pytest.warns(UserWarning, match="refit ablation: '1' cannot be refit"):
        game = ChannelGame(reflecting, "0", data, ablation="refit")
    masks = masks_for(game.n_players)
    torch.testing.assert_close(game(masks), ChannelGame(reflecting, "0", data)(masks))

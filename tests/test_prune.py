"""Physical pruning: masked = pruned, mean folding, atomicity, reports, save and load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from lightning_shapley import ChannelGame
from lightning_shapley.checkpoint import load_pruned, save_pruned
from lightning_shapley.models import DigitsCNN
from lightning_shapley.plan import PruningPlan, make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import apply_plan
from tests.conftest import BranchyNet, ConcatNet, randomize_batchnorm

ARCHITECTURES = [
    ("sequential cnn", lambda: randomize_batchnorm(DigitsCNN(width=6)), ["0", "3", "7"], (1, 8, 8)),
    ("resnet18", lambda: randomize_batchnorm(torchvision.models.resnet18(num_classes=10)),
     ["conv1", "layer1.0.conv1", "layer3.0.conv2", "layer4.1.conv1"], (3, 32, 32)),
    ("mobilenet_v2", lambda: randomize_batchnorm(
        torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)),
     ["features.2.conv.0.0", "features.5.conv.0.0", "features.18.0"], (3, 32, 32)),
    ("vgg11_bn", lambda: randomize_batchnorm(torchvision.models.vgg11_bn(num_classes=10)),
     ["features.0", "features.25", "classifier.0"], (3, 32, 32)),
    ("concat", lambda: randomize_batchnorm(ConcatNet()), ["left", "right", "mix"], (3, 8, 8)),
]  # fmt: skip


def plan_for(game: ChannelGame, layer_removed: dict[str, list[int]]) -> PruningPlan:
    sizes = {g.layer: g.n_channels for g in game.groups}
    return PruningPlan(layer_removed, sizes, 0.0)


def random_removal(game: ChannelGame, seed: int) -> tuple[torch.Tensor, dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(game.n_players, dtype=torch.bool)
    removed, offset = {}, 0
    for group in game.groups:
        chosen = torch.randperm(group.n_channels, generator=generator)[: group.n_channels // 3]
        removed[group.layer] = sorted(chosen.tolist())
        mask[offset + chosen] = False
        offset += group.n_channels
    return mask, removed


MEAN_EXACT_ENOUGH = ("sequential cnn", "concat")  # feature maps large next to the padding
FOLDED = ("mean", "regression")


@pytest.mark.parametrize(
    "name, build, layers, shape, ablation",
    [(*case, "zero") for case in ARCHITECTURES]
    + [(*case, a) for case in ARCHITECTURES if case[0] in MEAN_EXACT_ENOUGH for a in FOLDED],
)
def test_masked_game_equals_pruned_model(name, build, layers, shape, ablation):
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(8, *shape), torch.randint(0, 10, (8,))
    game = ChannelGame(model, layers, (x, y), ablation=ablation)
    mask, removed = random_removal(game, seed=1)
    masked_value = game(mask.unsqueeze(0)).item()
    report = prune(
        model,
        plan_for(game, removed),
        (x, y),
        compensation=ablation if ablation != "zero" else "none",
    )
    with torch.no_grad():
        pruned_value = -F.cross_entropy(model(x), y).item()
    # zero ablation is exact; folded means and predictions are exact except at padded borders
    tolerance = 1e-4 if ablation == "zero" else 0.05
    assert pruned_value == pytest.approx(masked_value, abs=tolerance), name
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before


def test_mean_folding_is_exact_for_a_linear_consumer_and_creates_a_bias():
    model = randomize_batchnorm(DigitsCNN(width=6))
    model[12].bias = None  # the head's hidden layer consumes layer 12 ... make it bias-free
    model[14].bias = None
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    game = ChannelGame(model, "12", (x, y), ablation="mean")
    mask = torch.ones(1, game.n_players, dtype=torch.bool)
    mask[0, [0, 5, 9]] = False
    expected = game(mask).item()
    prune(model, plan_for(game, {"12": [0, 5, 9]}), (x, y), compensation="mean")
    assert model[14].bias is not None
    with torch.no_grad():
        assert -F.cross_entropy(model(x), y).item() == pytest.approx(expected, abs=1e-5)


def test_report_counts_resnet18_params_and_macs():
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    layers = ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    scores = {layer: torch.rand(model.get_submodule(layer).out_channels) for layer in layers}
    report = prune(model, make_plan(scores, 0.5), x)
    assert report.channels_after == {"layer1.0.conv1": 32, "layer2.0.conv1": 64,
                                     "layer3.0.conv1": 128, "layer4.0.conv1": 256}  # fmt: skip
    assert report.achieved_ratio == report.requested_ratio == 0.5
    assert 0.7 < report.params_after / report.params_before < 0.95
    assert (
        "parameters" in report.table() and "`layer4.0.conv1` channels | 512 | 256" in report.table()
    )
    assert model(x).shape == (2, 10)


def test_failed_prune_leaves_the_model_exactly_as_it_was():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv = model.layer1[0].conv1
    with pytest.raises(ValueError, match="would empty it"):
        apply_plan(model, {"layer2.0.conv1": [0, 1], "layer1.0.conv1": list(range(64))}, x[:1])
    with pytest.raises(ValueError, match="has 64 channels"):
        apply_plan(model, {"layer2.0.conv1": [0], "layer1.0.conv1": [70]}, x[:1])
    with pytest.raises(ValueError, match="same group"):
        apply_plan(model, {"layer1.0.conv2": [0], "conv1": [1]}, x[:1])
    with pytest.raises(ValueError, match="'nope' is not in the model"):
        apply_plan(model, {"nope": [0]}, x[:1])
    with pytest.raises(ValueError, match="no prunable output channels"):
        apply_plan(model, {"fc": [0]}, x[:1])
    # a failure inside torch-pruning after the first group was already removed
    with pytest.raises(ValueError, match="restored"):
        apply_plan(model, {"layer2.0.conv1": [0, 1]}, x[:1],
                   bias_updates={"layer2.0.conv2": torch.zeros(7)})  # fmt: skip
    assert model.layer1[0].conv1 is conv
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.layer2[0].conv1.out_channels == 128


def test_untraceable_model_gets_a_clear_error():
    model = BranchyNet()
    with pytest.raises(ValueError, match="could not trace BranchyNet"):
        apply_plan(model, {"conv": [0]}, torch.randn(1, 3, 9))


def test_save_and_load_round_trip_is_bitwise(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10))
    pristine = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    layers = ["conv1", "layer2.0.conv1", "layer4.1.conv1"]
    scores = {layer: torch.rand(model.get_submodule(layer).out_channels) for layer in layers}
    history = prune(model, make_plan(scores, 0.3), (x, y), compensation="mean").history
    second = prune(model, make_plan({"layer2.0.conv1": torch.rand(90)}, 0.5), x).history
    save_pruned(model, history + second, tmp_path / "pruned.pt")

    fresh = pristine
    load_pruned(fresh, tmp_path / "pruned.pt", x[:1])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh.layer2[0].conv1.out_channels == 45
    raw = torch.load(tmp_path / "pruned.pt", weights_only=True)
    assert {step["op"] for step in raw["history"]} == {"bias", "prune"}

    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a lightning-shapley pruned model"):
        load_pruned(torchvision.models.resnet18(num_classes=10), tmp_path / "other.pt", x[:1])
    with pytest.raises(ValueError, match="do not fit"):
        load_pruned(torchvision.models.resnet34(num_classes=10), tmp_path / "pruned.pt", x[:1])

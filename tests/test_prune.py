"""Physical pruning: masked = pruned, mean folding, atomicity, reports, save and load."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_shapley import ChannelGame, pruning
from lightning_shapley.checkpoint import load_pruned, save_pruned
from lightning_shapley.criteria import ShapleyCriterion
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.metrics import choose_metric, value_function
from lightning_shapley.plan import PruningPlan, make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import apply_plan, channel_group
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


class GroupedNet(nn.Module):
    """1×1 convs feeding grouped convs (groups=3, then 4); ``crossed`` makes the second one
    read the first one's output, whose blocks cannot both lose channels evenly."""

    def __init__(self, crossed: bool = False) -> None:
        super().__init__()
        self.crossed = crossed
        self.conv1 = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.conv3 = nn.Conv2d(12, 8, 1, groups=4 if crossed else 1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        x = torch.relu(self.conv4(torch.relu(self.conv3(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_a_player_of_a_grouped_layer_is_one_channel_in_every_block_and_pruning_it_runs():
    torch.manual_seed(0)
    model = randomize_batchnorm(GroupedNet())
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    layers = ["conv1", "conv2", "conv3"]
    # conv2's 3 groups tie conv1's and conv2's 12 channels into 4 players; conv4's 4 groups
    # tie conv3's 8 into 2
    assert [channel_group(model, n, x[:1]).n_channels for n in layers] == [4, 4, 2]
    game = ChannelGame(copy.deepcopy(model), layers, (x, y), strategy="full")
    plan = make_plan({"conv1": torch.rand(4), "conv2": torch.rand(4), "conv3": torch.rand(2)}, 0.5)
    report = prune(model, plan, (x, y))
    assert report.channels_after == {"conv1": 2, "conv2": 2, "conv3": 1}
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.groups) == (6, 6, 3)
    assert (model.conv4.in_channels, model.conv4.groups) == (4, 4)
    # the pruned model computes what the masked game evaluated
    mask = torch.ones(1, game.n_players, dtype=torch.bool)
    for offset, layer in zip((0, 4, 8), layers, strict=True):
        mask[0, [offset + c for c in plan.removed[layer]]] = False
    with torch.no_grad():
        assert -F.cross_entropy(model(x), y).item() == pytest.approx(game(mask).item(), abs=1e-5)


def test_groupings_that_leave_no_even_removal_make_one_player_that_is_never_removed():
    model = GroupedNet(crossed=True).eval()
    x = torch.randn(2, 3, 8, 8)
    # conv2's output blocks (3 of 4) feed conv3's input blocks (4 of 3): only all 12 together
    assert channel_group(model, "conv2", x[:1]).n_channels == 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="would empty it"):
        prune(model, PruningPlan({"conv2": [0]}, {"conv2": 1}, 0.5), x)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    plan = make_plan({"conv1": torch.rand(4), "conv2": torch.rand(1)}, 0.5)
    assert prune(model, plan, x).channels_after == {"conv1": 2, "conv2": 1}
    assert model(x).shape == (2, 10)


def test_convolutions_whose_groups_cannot_lose_channels():
    x = torch.randn(2, 3, 8, 8)
    # a depthwise convolution with a channel multiplier: the four inputs are one player
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=4), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 3),
    )  # fmt: skip
    report = prune(model, make_plan({"0": torch.rand(1)}, 0.5), x)
    assert report.channels_after == {"0": 1} and model[0].out_channels == 4
    # two input channels per group where torch-pruning sees a depthwise convolution
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"'2' \(Conv2d, 8 → 4 channels in 4 groups.*ignored"):
        channel_group(model, "0", x[:1])
    assert model[0].out_channels == 8 and model(x).shape == (2, 3)


class HardCodedWidth(nn.Module):
    """A forward that only runs at the original width (a hard-coded reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(y.reshape(len(y), 4, 16).flatten(1))


def test_a_pruned_model_that_fails_its_check_forward_is_rolled_back():
    model = HardCodedWidth()
    x = torch.randn(2, 3, 4, 4)
    weights = [p for p in model.parameters()]
    with pytest.raises(ValueError, match=r"fails on the example input.*restored"):
        prune(model, make_plan({"conv1": torch.rand(6), "conv2": torch.rand(4)}, 0.5), x)
    assert [p is q for p, q in zip(model.parameters(), weights, strict=True)] == [True] * 6
    assert model.conv2.out_channels == 4 and model(x).shape == (2, 10)


def test_a_compiled_submodule_is_refused_up_front_and_left_intact():
    model = DigitsCNN(width=6)
    model.features = torch.compile(nn.Sequential(*list(model)[:4]))
    n_modules = len(list(model.modules()))
    x = torch.randn(4, 1, 8, 8)
    plan = make_plan({"features._orig_mod.0": torch.rand(6)}, 0.5)
    with pytest.raises(ValueError, match=r"`model.features` is compiled.*model.features._orig_mod"):
        prune(model, plan, x)
    with pytest.raises(ValueError, match="compiled"):
        apply_plan(model, {"features._orig_mod.0": [0]}, x[:1])
    assert len(list(model.modules())) == n_modules
    model.cpu()  # no endless recursion


def test_a_failed_prune_leaves_the_optimizer_attached(monkeypatch):
    torch.manual_seed(0)
    model = randomize_batchnorm(DigitsCNN(width=6)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # momentum state keyed by the parameter objects
    grads = [p.grad for p in model.parameters()]
    values = [p.detach().clone() for p in model.parameters()]

    group_class = pruning.tp.Group
    original, calls = group_class.prune, []

    def fail_the_second(group, *args):
        calls.append(group)
        if len(calls) == 2:
            raise RuntimeError("torch-pruning failed midway")
        return original(group, *args)

    monkeypatch.setattr(group_class, "prune", fail_the_second)
    with pytest.raises(ValueError, match="failed midway"):
        # a bias shifted in place, the first layer pruned, then torch-pruning fails
        apply_plan(model, {"0": [0, 2], "3": [1, 3]}, x[:1],
                   bias_updates={"14": torch.ones(10)})  # fmt: skip
    assert len(calls) == 2
    owned = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(p is q for p, q in zip(model.parameters(), owned, strict=True))
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values, strict=True))
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # (biases before batch norms get no gradient in train mode)
    weights = [not torch.equal(p, v) for (n, p), v in zip(model.named_parameters(), values,
               strict=True) if n.endswith("weight")]  # fmt: skip
    assert weights == [True] * 8


@pytest.mark.parametrize(
    "outputs, make_targets, chosen",
    [
        (1, lambda g: torch.randn(16, generator=g), "mse"),  # regression
        (4, lambda g: torch.randint(0, 2, (16, 4), generator=g).float(), "bce"),  # multi-label
        (3, lambda g: torch.randn(16, 3, generator=g), "mse"),  # multi-output regression
    ],
)
def test_models_that_do_not_classify_are_scored_by_their_values_and_pruned(
    outputs, make_targets, chosen
):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, outputs),
    ).eval()  # fmt: skip
    x, y = torch.randn(16, 1, 8, 8), make_targets(torch.Generator().manual_seed(1))
    assert choose_metric(y, outputs) == chosen
    game = ChannelGame(model, "0", (x, y), metric="auto")
    drop_one = ~torch.eye(6, dtype=torch.bool)
    expected = value_function(chosen)(game._logits(drop_one), y)
    assert torch.allclose(game(drop_one), expected) and len(set(expected.tolist())) == 6
    # label-free: agreement with the unpruned outputs tells the channels apart
    label_free = ChannelGame(model, "0", x, metric="kl")
    values = label_free(torch.cat([torch.ones(1, 6, dtype=torch.bool), drop_one]))
    assert abs(values[0]) < 1e-6 and (values[1:] < -1e-6).all()
    assert len(set(values[1:].tolist())) == 6
    scores = ShapleyCriterion("permutation", 32, metric="auto").score(model, ["0", "2"], (x, y))
    prune(model, make_plan(scores.values, 0.5), (x, y))
    assert model(x).shape == (16, outputs)

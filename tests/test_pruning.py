from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from lightning_shapley import ChannelGame, pruning
from lightning_shapley.criteria import EliminationCriterion
from lightning_shapley.lab.models import CifarResNet, LeNet5
from lightning_shapley.plan import make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import (
    ChannelGraph,
    UnprunableLayerError,
    channel_costs,
    channel_group,
    prunable_layer_names,
    resolve_layer,
)
from tests.conftest import ConcatNet, randomize_batchnorm


def test_group_of_a_residual_stream_holds_every_coupled_layer():
    model = torchvision.models.resnet18()
    group = channel_group(model, "layer1.0.conv2", torch.zeros(1, 3, 32, 32))
    assert group.n_channels == 64
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.1.conv2"} <= set(group.pruned_layers)
    assert {c.name for c in group.consumers} == {
        "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"
    }  # fmt: skip
    for consumer in group.consumers:
        assert torch.equal(consumer.feature_idx, torch.arange(64))
        assert torch.equal(consumer.player_idx, torch.arange(64))


def test_a_channel_graph_traces_once_and_again_after_a_prune(monkeypatch):
    model = randomize_batchnorm(CifarResNet(8, width=4))
    x = torch.randn(4, 3, 16, 16)
    traces = []
    trace = pruning._dependency_graph
    monkeypatch.setattr(pruning, "_dependency_graph", lambda *a: traces.append(1) or trace(*a))
    graph = ChannelGraph(model, x[:1])
    before = [graph.group(layer).n_channels for layer in ("conv1", "layer2.0.conv1")]
    assert graph.importance("layer2.0.conv1", "l1").shape == (before[1],)
    assert len(traces) == 1  # every question about the unchanged model: one trace
    prune(model, make_plan({"layer2.0.conv1": torch.arange(before[1]).float()}, 0.5), x)
    traces.clear()
    assert graph.group("layer2.0.conv1").n_channels == before[1] - before[1] // 2
    assert graph.group("conv1").n_channels == before[0] and len(traces) == 1


def test_concat_branch_and_flatten_linear_indices():
    model = ConcatNet()
    right = channel_group(model, "right", torch.zeros(1, 3, 8, 8))
    (mix,) = right.consumers
    assert mix.name == "mix" and mix.channel_dim == 1 and mix.in_features == 9
    assert torch.equal(mix.feature_idx, torch.arange(4, 9))  # after the 4 channels of "left"
    assert torch.equal(mix.player_idx, torch.arange(5))

    head = channel_group(model, "mix", torch.zeros(1, 3, 8, 8)).consumers[0]
    assert head.name == "head" and head.channel_dim == -1
    assert torch.equal(head.player_idx, torch.arange(6).repeat_interleave(36))
    assert torch.equal(head.feature_idx, torch.arange(216))


def test_prunable_layers_leave_out_the_head_and_coupled_layers():
    assert prunable_layer_names(LeNet5(), torch.zeros(1, 1, 28, 28)) == ["0", "3", "7", "9"]
    names = prunable_layer_names(CifarResNet(8), torch.zeros(1, 3, 32, 32))
    assert names == ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.conv2",
                     "layer3.0.conv1", "layer3.0.conv2"]  # fmt: skip
    assert "9" not in prunable_layer_names(LeNet5(), torch.zeros(1, 1, 28, 28), ignored=("9",))


def test_tracing_restores_modes_and_reports_failures():
    model = LeNet5().train()
    with torch.no_grad():
        channel_group(model, "0", torch.zeros(1, 1, 28, 28))
        assert not torch.is_grad_enabled()
    assert model.training
    with pytest.raises(ValueError, match="could not trace LeNet5"):
        channel_group(model, "0", torch.zeros(1, 3, 28, 28))


def test_resolve_layer_by_module_and_errors():
    model = LeNet5()
    assert resolve_layer(model, model[3]) == ("3", model[3])
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="prunable layers are: '0', '3', '7', '9', '11'"):
        resolve_layer(model, "conv9")


def test_names_that_are_not_in_the_model_are_errors_listing_the_closest_first():
    model, x = torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv' is not in the model; prunable "
                       r"layers are: 'layer1\.0\.conv1', 'layer1\.0\.conv2'"):  # fmt: skip
        channel_group(model, "layer1.0.conv", x)
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv' is not in the model"):
        ChannelGame(model, "layer1.0.conv", x, metric="kl")
    small, x = LeNet5(), torch.zeros(1, 1, 28, 28)
    with pytest.raises(
        ValueError, match=r"ignored names '13', .* valid names: '3', '0', '7', '9', '11'$"
    ):
        prunable_layer_names(small, x, ignored=("9", "13"))
    assert prunable_layer_names(small, x, ignored="9") == ["0", "3", "7"]
    assert prunable_layer_names(small, x, ignored=("8",)) == ["0", "3", "7", "9"]  # a ReLU


def test_an_input_of_another_dtype_than_the_weights_is_explained():
    model = LeNet5().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"input is float32 but the model's weights are bfloat16: "
                       r"cast the calibration inputs"):  # fmt: skip
        prunable_layer_names(model, torch.zeros(1, 1, 28, 28))
    assert prunable_layer_names(model, torch.zeros(1, 1, 28, 28, dtype=torch.bfloat16)) == [
        "0", "3", "7", "9"
    ]  # fmt: skip


def test_channel_costs_are_what_removing_one_channel_saves():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(),
                          nn.Linear(5 * 4 * 4, 3))  # fmt: skip
    example = torch.randn(1, 1, 8, 8)
    costs = channel_costs(model, ["0", "2"], example)
    assert costs == {"0": 9 + 1 + 5 * 9, "2": 4 * 9 + 1 + 16 * 3}
    macs = channel_costs(model, ["0"], example, "macs")["0"]
    # the two convolutions' multiply-accumulates, plus the bias and ReLU per removed output
    assert 36 * 9 + 16 * 5 * 9 <= macs <= 36 * 9 + 16 * 5 * 9 + 2 * 36
    with pytest.raises(ValueError, match="kind"):
        channel_costs(model, ["0"], example, "flops")


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand, depthwise, project; the expansion's group holds the
    depthwise conv (in and out together) and ends at the projection."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(4, 12, 1), nn.BatchNorm2d(12), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12),
                                       nn.BatchNorm2d(12), nn.ReLU6())  # fmt: skip
        self.project = nn.Conv2d(12, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_a_depthwise_conv_goes_with_its_producer_channel_by_channel():
    model = randomize_batchnorm(InvertedResidual())
    x = torch.randn(6, 4, 8, 8)
    group = channel_group(model, "expand.0", x[:1])
    assert group.blocks == 1 and group.n_channels == 12
    assert "depthwise.0" in group.pruned_layers
    assert [c.name for c in group.consumers] == ["project"]
    game = ChannelGame(model, "expand.0", x, metric="kl", ablation="regression")
    scores = EliminationCriterion().score(model, ["expand.0"], x, cut=0.5)
    plan = make_plan(scores.values, 0.5)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, plan.removed["expand.0"]] = False
    zero = ChannelGame(model, "expand.0", (x, torch.zeros(6, dtype=torch.long)),
                       metric=lambda logits, t: logits.flatten(1).sum(1))  # fmt: skip
    masked = zero._logits(mask)[0]
    pruned = copy.deepcopy(model)
    prune(pruned, plan, x)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)
    prune(model, plan, x, compensation="least_squares")  # the default refit
    assert model.depthwise[0].groups == 6 and model.project.in_channels == 6
    assert game.n_players == 12


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=24,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval()


def test_attention_groups_are_left_out_with_one_warning_and_refused_when_asked_for():
    model = tiny_vit()
    x = torch.randn(4, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"cannot be pruned.*ignored_layers=\['conv_proj'"):
        layers = prunable_layer_names(model, x[:1])
    assert layers == ["encoder.layers.encoder_layer_0.mlp.0"]  # the MLP's hidden features
    with pytest.raises(UnprunableLayerError, match=r"MultiheadAttention.*ignored_layers"):
        channel_group(model, "conv_proj", x[:1])
    with pytest.raises(UnprunableLayerError, match="never calls it as a module"):
        channel_group(model, "encoder.layers.encoder_layer_0.self_attention.out_proj", x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ignoring the group silences the warning
        assert prunable_layer_names(model, x[:1], ignored=("conv_proj",)) == layers
    scores = EliminationCriterion().score(model, layers, x, cut=0.25)
    prune(model, make_plan(scores.values, 0.25), x, compensation="least_squares")
    assert model.encoder.layers[0].mlp[0].out_features == 18
    assert torch.isfinite(model(x)).all()


class GhostBlock(nn.Module):
    """GhostNet's module on a residual stream: the stream's channels ``i`` and ``i + 4`` are a
    primary channel and the depthwise "cheap" channel computed from it, so pruning either
    removes both."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.hidden = nn.Conv2d(8, 6, 1)
        self.primary = nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))
        self.cheap = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4))
        self.mix = nn.Conv2d(8, 5, 3)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        primary = self.primary(torch.relu(self.hidden(x)))
        x = x + torch.cat([primary, self.cheap(primary)], dim=1)
        return self.head(torch.relu(self.mix(x)).mean(dim=(2, 3)))


def test_channels_tied_by_a_depthwise_conv_are_one_player():
    model = randomize_batchnorm(GhostBlock())
    x = torch.randn(4, 3, 8, 8)
    group = channel_group(model, "stem.0", x[:1])
    assert group.n_channels == 4 and group.members == ((0, 4), (1, 5), (2, 6), (3, 7))
    assert ChannelGraph(model, x[:1]).importance("stem.0", "l1").shape == (4,)
    game = ChannelGame(model, "stem.0", (x, torch.zeros(4, dtype=torch.long)),
                       metric=lambda logits, t: logits.sum())  # fmt: skip
    mask = torch.tensor([[True, False, True, False]])
    masked = game._logits(mask)[0]
    pruned = copy.deepcopy(model)
    prune(pruned, make_plan({"stem.0": mask[0].float()}, 0.5), x)
    assert pruned.stem[0].out_channels == 4 and pruned.cheap[0].groups == 2
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked, rtol=1e-4, atol=1e-5)


def test_swin_is_refused_before_torch_pruning_builds_its_graph():
    model = torchvision.models.swin_t(weights=None, num_classes=10)
    with pytest.raises(ValueError, match=r"shifted-window attention \('features.1.0.attn'"):
        prunable_layer_names(model, torch.randn(1, 3, 32, 32))

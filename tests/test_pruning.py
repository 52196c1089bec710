from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.models import CifarResNet, LeNet5
from lightning_shapley.pruning import (
    channel_costs,
    channel_group,
    prunable_layer_names,
    resolve_layer,
)
from tests.conftest import ConcatNet
from tests.test_prune import GroupedNet


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


def test_channel_costs_through_grouped_convolutions_share_an_even_removal():
    example = torch.randn(1, 3, 8, 8)
    costs = channel_costs(GroupedNet(), ["conv1", "conv3"], example)
    # conv1: its 1×1 weights and bias, the batch norm's scale and shift, and a block of 4
    # output channels × 3×3 in the grouped conv2 (3 removed, one per block)
    assert costs == {"conv1": 3 + 1 + 2 + 4 * 9, "conv3": 12 + 1 + 2 * 9}
    assert channel_costs(GroupedNet(crossed=True), ["conv2"], example) == {"conv2": float("inf")}

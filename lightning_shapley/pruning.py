"""The only module that talks to torch-pruning.

It answers one question for the rest of the package: *when the output channels of a layer are
removed, which layers lose which input features?* torch-pruning's dependency graph follows the
channels through batch norms, residual additions, concatenations and flatten→linear heads; the
answer is a :class:`ChannelGroup`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["ChannelGroup", "Consumer", "channel_group", "prunable_layer_names", "resolve_layer"]


@dataclass(frozen=True)
class Consumer:
    """A layer whose input features are removed with the group's channels.

    Masking these input features (and nothing else) gives exactly the outputs of the physically
    pruned model, whatever lies between the pruned layer and the consumer.

    Attributes:
        name: Qualified module name in the model.
        feature_idx: ``[f]`` indices of the consumer's input features that belong to the group.
        player_idx: ``[f]`` the group channel (player) each of those features comes from.
        channel_dim: Dimension of the consumer's input that holds the features (1 for
            convolutions, -1 for linear layers).
        in_features: Size of that dimension.
    """

    name: str
    feature_idx: torch.Tensor
    player_idx: torch.Tensor
    channel_dim: int
    in_features: int


@dataclass(frozen=True)
class ChannelGroup:
    """The output channels of a layer and every layer coupled to them.

    Attributes:
        layer: Qualified name of the layer the group was built from.
        n_channels: Number of channels (players) in the group.
        pruned_layers: Names of the layers whose output channels go with the group.
        consumers: The layers whose input features go with the group.
    """

    layer: str
    n_channels: int
    pruned_layers: tuple[str, ...]
    consumers: tuple[Consumer, ...]


@contextmanager
def _preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and the grad mode after tracing."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(qualified name, module)`` for a layer given by name or by object."""
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"layer {layer!r} is not in the model; prunable layers are: "
                f"{', '.join(_weighted_layer_names(model)) or 'none'}"
            ) from None
    for name, module in model.named_modules():
        if module is layer:
            return name, module
    raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")


def _weighted_layer_names(model: nn.Module) -> list[str]:
    return [
        name for name, m in model.named_modules() if isinstance(m, tp.ops.TORCH_CONV | nn.Linear)
    ]


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced on ``example_input`` ``[1, ...]``.

    Raises:
        ValueError: If torch-pruning cannot trace the model.
    """
    with _preserved_state(model):
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
        except Exception as error:  # torch-pruning raises whatever the traced model raises
            raise ValueError(
                f"torch-pruning could not trace {type(model).__name__} on an input of shape "
                f"{tuple(example_input.shape)}: {error}. The model's forward must accept one "
                "calibration batch."
            ) from error


def channel_group(
    model: nn.Module,
    layer: str | nn.Module,
    example_input: torch.Tensor,
    graph: tp.DependencyGraph | None = None,
) -> ChannelGroup:
    """Find the channels of ``layer`` and the consumer features that go with them.

    Args:
        model: The network.
        layer: A convolution or linear layer, by qualified name or module.
        example_input: ``[1, ...]`` an input the model accepts.
        graph: A dependency graph already built for ``model`` (saves tracing it again).

    Raises:
        ValueError: If the layer is not in the model, is not a convolution or linear layer, or
            its channels reach the model output without any consumer (a classifier head).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> group = channel_group(net, "0", torch.zeros(1, 1, 8, 8))
        >>> group.n_channels, [c.name for c in group.consumers]
        (4, ['3'])
    """
    name, module = resolve_layer(model, layer)
    if not isinstance(module, tp.ops.TORCH_CONV | nn.Linear):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has no prunable output channels; choose a "
            f"convolution or linear layer: {', '.join(_weighted_layer_names(model))}"
        )
    graph = graph or build_dependency_graph(model, example_input)
    pruner = graph.get_pruner_of_module(module)
    n_channels = graph.get_out_channels(module)
    with _preserved_state(model):
        group = graph.get_pruning_group(
            module, pruner.prune_out_channels, idxs=list(range(n_channels))
        )

    names = {m: n for n, m in model.named_modules()}
    pruned, receiving = [], {}
    for item in group.items:
        target = item.dep.target.module
        if target not in names:  # torch-pruning's own nodes (add, cat, reshape, ...)
            continue
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            pruned.append(names[target])
        else:
            receiving[names[target]] = (target, item.idxs, item.root_idxs)
    consumers = tuple(
        Consumer(
            name=consumer_name,
            feature_idx=torch.as_tensor(idxs, dtype=torch.long),
            player_idx=torch.as_tensor(root_idxs, dtype=torch.long),
            channel_dim=-1 if isinstance(target, nn.Linear) else 1,
            in_features=target.in_features if isinstance(target, nn.Linear) else target.in_channels,
        )
        for consumer_name, (target, idxs, root_idxs) in receiving.items()
        if consumer_name not in pruned
    )
    if not consumers:
        raise ValueError(
            f"layer {name!r} has no prunable output channels: they reach the model output without "
            "passing through another layer (is it the classifier head?)"
        )
    return ChannelGroup(
        layer=name,
        n_channels=n_channels,
        pruned_layers=tuple(dict.fromkeys(pruned)),
        consumers=consumers,
    )


def prunable_layer_names(
    model: nn.Module, example_input: torch.Tensor, ignored: tuple[str, ...] = ()
) -> list[str]:
    """One layer name per prunable group of ``model``, in forward order.

    The classifier head (any group without consumers) and the ``ignored`` layers are left out.
    """
    graph = build_dependency_graph(model, example_input)
    names, seen = [], set()
    for name, module in model.named_modules():
        if not isinstance(module, tp.ops.TORCH_CONV | nn.Linear) or name in ignored or name in seen:
            continue
        try:
            group = channel_group(model, name, example_input, graph=graph)
        except ValueError:
            continue
        seen.update(group.pruned_layers)
        names.append(name)
    return names

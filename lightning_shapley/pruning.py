"""The only module that talks to torch-pruning.

It answers one question for the rest of the package: *when the output channels of a layer are
removed, which layers lose which input features?* torch-pruning's dependency graph follows the
channels through batch norms, residual additions, concatenations and flatten→linear heads; the
answer is a :class:`ChannelGroup`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from lightning_shapley.modes import evaluating, restored_modes
from lightning_shapley.names import check_names, valid_names

__all__ = [
    "IMPORTANCES",
    "ChannelGraph",
    "ChannelGroup",
    "Consumer",
    "Snapshot",
    "UnprunableLayerError",
    "apply_plan",
    "channel_costs",
    "channel_group",
    "check_distinct_groups",
    "check_not_compiled",
    "count_params_and_macs",
    "importance_needs_gradients",
    "is_importance",
    "merged_consumers",
    "prunable_layer_names",
    "resolve_layer",
]

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")


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

    def feature_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Float masks ``[m, in_features]`` of this consumer's inputs from player masks
        ``[m, n]`` (features of other groups kept)."""
        full = masks.new_ones(len(masks), self.in_features)
        full[:, self.feature_idx.to(masks.device)] = masks[:, self.player_idx.to(masks.device)]
        return full

    def feature_dim(self, x: torch.Tensor, leading: int = 1) -> int:
        """The dimension of ``x``, an input of this consumer with ``leading`` batch
        dimensions, that holds its features: ``channel_dim``'s, unless only the other one
        has ``in_features`` entries (a ``LayerNorm2d`` reads ``[B, C, H, W]`` and permutes
        inside).

        Example:
            >>> site = Consumer("norm", torch.arange(4), torch.arange(4), -1, 4)
            >>> site.feature_dim(torch.ones(2, 3, 4)), site.feature_dim(torch.ones(2, 4, 3, 3))
            (2, 1)
        """
        declared, other = (x.dim() - 1, leading) if self.channel_dim == -1 else (leading, -1)
        other %= x.dim()
        if x.shape[declared] != self.in_features and x.shape[other] == self.in_features:
            return other
        return declared


@dataclass(frozen=True)
class ChannelGroup:
    """The output channels of a layer and every layer coupled to them.

    A player is one channel, or, where a grouped convolution or a group norm splits the
    channels into ``blocks`` equal blocks that must stay equal (as torch-pruning's
    ``MetaPruner`` keeps them), the channel at the same position in every block: player ``j``
    is channels ``j, j + n, j + 2n, …`` (``n = n_channels``).

    Attributes:
        layer: Qualified name of the layer the group was built from.
        n_channels: Number of players in the group.
        pruned_layers: Names of the layers whose output channels go with the group.
        consumers: The layers whose input features go with the group.
        blocks: Channels per player (one in each block).
        members: Where channels are tied otherwise (a depthwise convolution that reads one
            channel of the group and writes another, as GhostNet's cheap operation does, so
            that pruning either removes both): the channels of each player; empty otherwise.
        norms: Normalisations among the pruned layers that mix the group's channels (a
            ``LayerNorm`` over channels, a ``GroupNorm``): a pruned model computes their
            statistics over the kept channels only, so a game masks inside them too (see
            :class:`~lightning_shapley.normalisation.NormMask`). Their features are the
            normalised channels.
    """

    layer: str
    n_channels: int
    pruned_layers: tuple[str, ...]
    consumers: tuple[Consumer, ...]
    blocks: int = 1
    norms: tuple[Consumer, ...] = ()
    members: tuple[tuple[int, ...], ...] = ()

    def channels(self, players: list[int]) -> list[int]:
        """The layer's channel indices that ``players`` stand for, sorted."""
        if self.members:
            return sorted(c for p in players for c in self.members[int(p)])
        return sorted(int(p) + b * self.n_channels for b in range(self.blocks) for p in players)


class UnprunableLayerError(ValueError):
    """A layer whose channels cannot be removed the way the games mask them.

    Attributes:
        layers: The layers of its group (ignoring any one of them leaves the group out).
    """

    def __init__(self, message: str, layers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.layers = layers


@contextmanager
def _preserved_state(model: nn.Module) -> Iterator[None]:
    """Grad enabled (tracing needs it); every module's train/eval flag restored after."""
    with restored_modes(model), torch.enable_grad():
        yield


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(qualified name, module)`` for a layer given by name or by object."""
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"layer {layer!r} is not in the model; prunable layers are: "
                f"{valid_names(layer, _weighted_layer_names(model))}"
            ) from None
    for name, module in model.named_modules():
        if module is layer:
            return name, module
    raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")


def _weighted_layer_names(model: nn.Module) -> list[str]:
    return [
        name for name, m in model.named_modules() if isinstance(m, tp.ops.TORCH_CONV | nn.Linear)
    ]


_UNTRACEABLE = {
    "ShiftedWindowAttention": "Swin's shifted-window attention",
    "ShiftedWindowAttentionV2": "Swin V2's shifted-window attention",
}
"""Modules whose graph torch-pruning does not finish: following the residual stream through the
windows' rolls and reshapes, its index mapping grows without bound (past 16 GB for a swin_t at
32×32, and still tracing after 5 minutes at 224×224)."""


def _refuse_untraceable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        what = _UNTRACEABLE.get(type(module).__name__)
        if what is not None:
            raise ValueError(
                f"torch-pruning's dependency graph does not finish on {what} ({name!r}: its index "
                "mapping grows without bound, past 16 GB), so no channel of this model can be "
                "pruned; ignored_layers cannot help, since the graph covers the whole model"
            )


def _dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced on ``example_input`` ``[1, ...]``.

    Raises:
        ValueError: If torch-pruning cannot trace the model, or is known not to finish on it.
    """
    _refuse_untraceable(model)
    frozen = [p for p in model.parameters() if not p.requires_grad]  # traced through autograd
    with _preserved_state(model):
        try:
            for parameter in frozen:
                parameter.requires_grad_(True)
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
        except Exception as error:  # torch-pruning raises whatever the traced model raises
            raise ValueError(
                f"torch-pruning could not trace {type(model).__name__} on an input of shape "
                f"{tuple(example_input.shape)}: {error}. The model's forward must accept one "
                f"calibration batch.{_dtype_hint(model, example_input)}"
            ) from error
        finally:
            for parameter in frozen:
                parameter.requires_grad_(False)


def _dtype_hint(model: nn.Module, example_input: torch.Tensor) -> str:
    """A sentence on a floating input whose dtype differs from the model's weights."""
    weights = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weights is None or not example_input.is_floating_point():
        return ""
    if weights.dtype == example_input.dtype:
        return ""
    return (
        f" The input is {str(example_input.dtype).removeprefix('torch.')} but the model's "
        f"weights are {str(weights.dtype).removeprefix('torch.')}: cast the calibration inputs "
        f"to the model's dtype (`inputs.to({weights.dtype})`; with Lightning's 'bf16-true' or "
        "'16-true' precision the Trainer casts batches only inside its own steps)."
    )


_IMPORTANCES = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1, normalizer=None),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2, normalizer=None),
    "bn_scale": lambda: tp.importance.BNScaleImportance(normalizer=None),
    "taylor": lambda: tp.importance.TaylorImportance(normalizer=None),
    "random": lambda: tp.importance.RandomImportance(),
}


class ChannelGraph:
    """Which channels of ``model`` go together: torch-pruning's dependency graph, traced on
    ``example_input`` ``[1, ...]`` and traced again when a layer's shape has changed since (after
    a prune). No torch-pruning object leaves it.

    Raises:
        ValueError: If torch-pruning cannot trace the model, or is known not to finish on it.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> graph = ChannelGraph(net, torch.zeros(1, 1, 8, 8))
        >>> group = graph.group("0")
        >>> group.n_channels, [c.name for c in group.consumers]
        (4, ['3'])
        >>> graph.importance("0", "l1").shape
        torch.Size([4])
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.model, self.example_input = model, example_input
        self._shapes = _parameter_shapes(model)
        self._graph = _dependency_graph(model, example_input)

    @property
    def _dependencies(self) -> tp.DependencyGraph:
        """torch-pruning's graph of the model as it is now."""
        shapes = _parameter_shapes(self.model)
        if shapes != self._shapes:
            self._shapes, self._graph = shapes, _dependency_graph(self.model, self.example_input)
        return self._graph

    def group(self, layer: str | nn.Module) -> ChannelGroup:
        """The channels of ``layer`` and the consumer features that go with them.

        Raises:
            ValueError: If the layer is not in the model, is not a convolution or linear layer,
                or its channels reach the model output without any consumer (a classifier head).
        """
        model = self.model
        name, module = _prunable_layer(model, layer)
        graph = self._dependencies
        if module not in graph.module2node:
            raise UnprunableLayerError(
                f"cannot prune layer {name!r}: the forward never calls it as a module (its weight "
                "is used directly, as attention layers do), so torch-pruning cannot follow its "
                f"channels; leave it out with ignored_layers=[{name!r}]"
            )
        pruner = graph.get_pruner_of_module(module)
        n_raw = graph.get_out_channels(module)
        with _preserved_state(model):
            group = graph.get_pruning_group(
                module, pruner.prune_out_channels, idxs=list(range(n_raw))
            )

        names = {m: n for n, m in model.named_modules()}
        owners = {id(p): n for n, m in model.named_modules() for p in m.parameters(recurse=False)
                  if isinstance(m, tp.ops.TORCH_CONV | nn.Linear | _NORMS)}  # fmt: skip
        pruned, receiving, blocks, problems = [], {}, 1, []
        for item in group.items:
            target = item.dep.target.module
            if isinstance(target, nn.Parameter):
                if id(target) in owners:  # a layer's weight used without calling the layer
                    problems.append(f"the weight of {owners[id(target)]!r}, used directly")
                elif n_raw not in target.shape:
                    problems.append(f"a parameter of shape {tuple(target.shape)}")
                continue
            if target not in names:  # torch-pruning's own nodes (add, cat, reshape, ...)
                continue
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            problem = _unsupported(target)
            if problem:
                problems.append(f"{names[target]!r} ({type(target).__name__}{problem})")
                continue
            blocks = math.lcm(blocks, _blocks(graph, target, out))  # every grouping holds
            if out:
                pruned.append(names[target])
            else:
                receiving[names[target]] = (target, item.idxs, item.root_idxs)
        if problems:
            raise UnprunableLayerError(
                f"cannot prune the channels of layer {name!r}: they also reach "
                f"{'; '.join(dict.fromkeys(problems))}, where removing a channel is not what "
                "masking it at the layers that read it does. Leave the group out with "
                f"ignored_layers=[{name!r}]",
                (name, *pruned),
            )
        if n_raw % blocks:
            raise UnprunableLayerError(
                f"cannot prune the channels of layer {name!r}: its {n_raw} channels do not split "
                f"into the {blocks} equal blocks a grouped layer of the group needs; leave it out "
                f"with ignored_layers=[{name!r}]"
            )
        tied = _tied_channels(graph, group, n_raw)
        if tied and blocks > 1:
            raise UnprunableLayerError(
                f"cannot prune the channels of layer {name!r}: a depthwise convolution ties some "
                f"of them together and a grouped layer splits them into {blocks} blocks; leave it "
                f"out with ignored_layers=[{name!r}]",
                (name, *pruned),
            )
        n_players = len(tied) if tied else n_raw // blocks
        player_of = torch.arange(n_raw) % n_players
        for player, channels in enumerate(tied):
            player_of[list(channels)] = player

        def site(site_name: str, target: nn.Module, idxs, root_idxs) -> Consumer:
            return Consumer(
                name=site_name,
                feature_idx=torch.as_tensor(idxs, dtype=torch.long),
                player_idx=player_of[torch.as_tensor(root_idxs, dtype=torch.long)],
                channel_dim=-1 if isinstance(target, nn.Linear | nn.LayerNorm) else 1,
                in_features=_in_features(target),
            )

        consumers = tuple(
            site(consumer_name, target, idxs, root_idxs)
            for consumer_name, (target, idxs, root_idxs) in receiving.items()
            if consumer_name not in pruned
        )
        if not consumers:
            raise ValueError(
                f"layer {name!r} has no prunable output channels: they reach the model output "
                "without passing through another layer (is it the classifier head?)"
            )
        norms = tuple(
            site(names[item.dep.target.module], item.dep.target.module, item.idxs, item.root_idxs)
            for item in group.items
            if _mixes_channels(item.dep.target.module)
            and graph.is_out_channel_pruning_fn(item.dep.handler)
        )
        return ChannelGroup(
            layer=name,
            n_channels=n_players,
            pruned_layers=tuple(dict.fromkeys(pruned)),
            consumers=consumers,
            blocks=blocks,
            norms=tuple({n.name: n for n in norms}.values()),
            members=tied,
        )

    def importance(self, layer: str | nn.Module, kind: str | object) -> torch.Tensor:
        """torch-pruning's importance of each channel of ``layer``'s group, ``[n_channels]``.

        Args:
            kind: ``"l1"``/``"l2"`` (weight magnitude), ``"bn_scale"`` (|γ| of the batch norms),
                ``"taylor"`` (|w · ∂L/∂w|; the gradients must already be in ``.grad``) or
                ``"random"``, or a torch-pruning importance object. Scores are averaged over
                the group's layers, not normalised.
        """
        if not is_importance(kind) and kind not in _IMPORTANCES:
            raise ValueError(f"importance {kind!r} is unknown; use one of {IMPORTANCES}")
        players = self.group(layer)
        graph, module = self._dependencies, self.model.get_submodule(players.layer)
        group = _pruning_group(graph, module, list(range(graph.get_out_channels(module))))
        scores = kind(group) if is_importance(kind) else _IMPORTANCES[kind]()(group)
        if scores is None:
            raise ValueError(
                f"the group of layer {players.layer!r} has no layer that {kind!r} can score"
            )
        # a player's score is the mean over its channels, as torch-pruning's over channel groups
        scores = scores.detach().float().cpu()
        if players.members:
            return torch.stack([scores[list(channels)].mean() for channels in players.members])
        return scores.view(players.blocks, -1).mean(dim=0)


def channel_group(
    model: nn.Module, layer: str | nn.Module, example_input: torch.Tensor
) -> ChannelGroup:
    """The :class:`ChannelGroup` of ``layer`` (see :meth:`ChannelGraph.group`); name several
    layers of one model through one :class:`ChannelGraph` instead, which traces it once.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> channel_group(net, "0", torch.zeros(1, 1, 8, 8)).n_channels
        4
    """
    _prunable_layer(model, layer)  # the cheap refusals first
    return ChannelGraph(model, example_input).group(layer)


def _prunable_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    name, module = resolve_layer(model, layer)
    if not isinstance(module, tp.ops.TORCH_CONV | nn.Linear):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) has no prunable output channels; choose a "
            f"convolution or linear layer: {', '.join(_weighted_layer_names(model))}"
        )
    return name, module


def _parameter_shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, p.shape) for name, p in model.named_parameters()]


def _tied_channels(graph: tp.DependencyGraph, group, n_raw: int) -> tuple[tuple[int, ...], ...]:
    """The group's channels that pruning removes together although they are different
    channels of the root: a depthwise convolution of the group whose input channel ``i`` and
    output channel ``i`` belong to two root channels (torch-pruning removes both when either
    goes). Empty when there are none."""
    roots = {
        item.dep.target.module: dict(zip(item.idxs, item.root_idxs, strict=True))
        for item in group.items
        if graph.is_out_channel_pruning_fn(item.dep.handler)
    }
    parent = list(range(n_raw))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for module, mapping in roots.items():
        if not (isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels):
            continue
        node = graph.module2node[module]
        for _ in range(8):  # up through elementwise nodes, which keep channel positions
            if len(node.inputs) != 1:
                break
            node = node.inputs[0]
            if node.module in roots:
                for idx, root in mapping.items():
                    other = roots[node.module].get(idx)
                    if other is not None:
                        parent[find(root)] = find(other)
                break
    classes: dict[int, list[int]] = {}
    for channel in range(n_raw):
        classes.setdefault(find(channel), []).append(channel)
    if len(classes) == n_raw:
        return ()
    return tuple(tuple(c) for c in classes.values())


_NORMS = nn.LayerNorm | nn.GroupNorm | tp.ops.TORCH_BATCHNORM | tp.ops.TORCH_INSTANCENORM
# layers whose channels a removal takes out one by one: masking the readers is pruning them
_PER_CHANNEL = tp.ops.TORCH_CONV | nn.Linear | _NORMS | nn.PReLU


def _unsupported(module: nn.Module) -> str:
    """Why removing channels at ``module`` is not masking them where they are read ('' if it
    is): a layer that mixes channels other than by a weight (attention, recurrent layers)."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return f", normalised over {tuple(module.normalized_shape)}"
    if _grouped_like_depthwise(module):
        return (
            f", {module.in_channels} → {module.out_channels} channels in {module.groups} groups, "
            "whose groups torch-pruning would shrink with its input channels"
        )
    return "" if isinstance(module, _PER_CHANNEL) else ", which mixes them"


def _grouped_like_depthwise(module: nn.Module) -> bool:
    """A grouped convolution with one output channel per group but several inputs, which
    torch-pruning mistakes for a depthwise one."""
    return (
        isinstance(module, tp.ops.TORCH_CONV)
        and 1 < module.groups == module.out_channels != module.in_channels
    )


def _mixes_channels(module: nn.Module) -> bool:
    """A normalisation whose statistics pool several channels."""
    if isinstance(module, nn.GroupNorm):
        return module.num_groups < module.num_channels
    return isinstance(module, nn.LayerNorm)


def _blocks(graph: tp.DependencyGraph, module: nn.Module, out: bool) -> int:
    """Equal blocks that pruning must keep equal in ``module``'s channels (torch-pruning's
    channel groups: a grouped convolution's groups, a group norm's groups)."""
    if isinstance(module, tp.ops.TORCH_CONV) and (
        module.groups == module.in_channels == module.out_channels
    ):
        return 1  # depthwise: channels go one by one, in and out together
    if isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels:
        return 1
    pruner = graph.get_pruner_of_module(module)
    return pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    return module.in_channels


def check_distinct_groups(groups: list[ChannelGroup]) -> None:
    """Raise ``ValueError`` if two of ``groups`` are the same group (named by two layers)."""
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            if other.layer in group.pruned_layers:
                raise ValueError(
                    f"layers {group.layer!r} and {other.layer!r} belong to the same group; "
                    "name one layer per group"
                )


def merged_consumers(groups: list[ChannelGroup], norms: bool = False) -> dict[str, Consumer]:
    """The consumers of several groups (or, with ``norms``, their channel-mixing
    normalisations), players numbered group after group.

    A consumer fed by several groups (a concatenation) appears once, with all their features.
    """
    parts: dict[str, list[Consumer]] = {}
    offset = 0
    for group in groups:
        for c in group.norms if norms else group.consumers:
            parts.setdefault(c.name, []).append(
                Consumer(c.name, c.feature_idx, c.player_idx + offset, c.channel_dim, c.in_features)
            )
        offset += group.n_channels
    return {
        name: Consumer(
            name,
            torch.cat([p.feature_idx for p in same]),
            torch.cat([p.player_idx for p in same]),
            same[0].channel_dim,
            same[0].in_features,
        )
        for name, same in parts.items()
    }


def prunable_layer_names(
    model: nn.Module, example_input: torch.Tensor, ignored: str | tuple[str, ...] = ()
) -> list[str]:
    """One layer name per prunable group of ``model``, in forward order.

    Left out: the classifier head (any group without consumers), every group that an
    ``ignored`` layer belongs to, and the groups that cannot be pruned as the games mask them
    (channels that pass through attention, say), named in one warning with the
    ``ignored_layers`` that silences it.

    Raises:
        ValueError: If an ``ignored`` name is not a module of the model (the message lists
            the valid names, the closest first), or as :class:`ChannelGraph`.
    """
    ignored = (ignored,) if isinstance(ignored, str) else tuple(ignored)
    check_names(
        ignored, [n for n, _ in model.named_modules()], "ignored", _weighted_layer_names(model)
    )
    graph = ChannelGraph(model, example_input)
    names, seen, unprunable = [], set(), {}
    for name, module in model.named_modules():
        if (
            not isinstance(module, tp.ops.TORCH_CONV | nn.Linear)
            or name in seen
            or module not in graph._dependencies.module2node  # never called: part of another
        ):
            continue
        error = None
        try:
            layers = graph.group(name).pruned_layers
        except UnprunableLayerError as unprunable_error:
            error, layers = unprunable_error, unprunable_error.layers
        except ValueError:
            continue
        seen.update(layers)
        if name in ignored or not set(ignored).isdisjoint(layers):
            continue  # a group holding an ignored layer
        if error is not None:
            unprunable[name] = str(error)
        else:
            names.append(name)
    if unprunable:
        reasons = "\n".join(f"  {reason}" for reason in unprunable.values())
        warnings.warn(
            f"{len(unprunable)} layer(s) of {type(model).__name__} cannot be pruned and are left "
            f"as they are (pass ignored_layers={sorted(unprunable)} to say so):\n{reasons}",
            stacklevel=2,
        )
    return names


def is_importance(criterion: object) -> bool:
    """Whether ``criterion`` is a torch-pruning importance (``tp.importance.Importance``)."""
    return isinstance(criterion, tp.importance.Importance)


def importance_needs_gradients(importance: object) -> bool:
    """Whether a torch-pruning importance reads the parameters' ``.grad`` (Taylor, Hessian)."""
    return isinstance(importance, tp.importance.TaylorImportance | tp.importance.HessianImportance)


def _pruning_group(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int]):
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, idxs=idxs)


def count_params_and_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(parameters, multiply-accumulates)`` of one forward on ``example_input`` ``[1, ...]``."""
    with _preserved_state(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(params), int(macs)


def channel_costs(
    model: nn.Module, layers: list[str], example_input: torch.Tensor, kind: str = "params"
) -> dict[str, float]:
    """What one player of each layer's group costs: the parameters (``kind="params"``) or
    multiply-accumulates (``"macs"``) that removing it saves, measured by removing one from a
    copy (a player is a channel in every block a grouped layer ties together).

    The costs are first-order: a weight joining two pruned layers counts in both layers'
    costs, so their sum over all channels exceeds the prunable total (about twice it in a plain
    chain of pruned layers), and a share of the summed cost removes more than that share of
    the parameters. A layer with one player costs ``inf`` (it cannot lose it).

    Raises:
        ValueError: On an unknown ``kind``.
    """
    if kind not in ("params", "macs"):
        raise ValueError(f"kind={kind!r} is invalid; use 'params' or 'macs'")
    index = 0 if kind == "params" else 1
    total = count_params_and_macs(model, example_input)[index]
    costs = {}
    for layer in layers:
        trial = copy.deepcopy(model)
        if channel_group(trial, layer, example_input).n_channels < 2:
            costs[layer] = float("inf")
            continue
        _remove(trial, {layer: [0]}, example_input)
        costs[layer] = float(total - count_params_and_macs(trial, example_input)[index])
    return costs


def apply_plan(
    model: nn.Module,
    removed: dict[str, list[int]],
    example_input: torch.Tensor,
    bias_updates: dict[str, torch.Tensor] | None = None,
    weight_updates: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Remove channels physically, all or nothing.

    Args:
        model: The network, pruned in place.
        removed: Channel indices to remove, by layer (one layer per group).
        example_input: ``[1, ...]`` an input the model accepts.
        bias_updates: Amounts ``[out_features]`` (of the unpruned layers) to add to consumer
            biases (compensation); a missing bias is created.
        weight_updates: Amounts (shaped as the unpruned layers' weights) to add to consumer
            weights before the removal (compensation).

    Returns:
        The history of what was done, as plain lists and dicts (see :func:`replay`).

    Raises:
        ValueError: If a layer is unknown or not prunable, an index is out of range, a group
            would be emptied, two layers share a group, or torch-pruning fails. The model is then
            left exactly as it was.
    """
    check_not_compiled(model)
    snapshot = Snapshot(model)
    expected = _output_shapes(model, example_input)
    try:
        # biases first: a consumer may itself lose output channels, and its bias with them
        with torch.no_grad():
            for name, update in (weight_updates or {}).items():
                weight = model.get_submodule(name).weight
                if update.shape != weight.shape:
                    raise ValueError(
                        f"weight update of {name!r} has shape {tuple(update.shape)}, the weight "
                        f"{tuple(weight.shape)}"
                    )
                weight.add_(update.to(weight))
        history = [
            _add_to_bias(model, name, update) for name, update in (bias_updates or {}).items()
        ]
        history += _remove(model, removed, example_input)
        _check_runs(model, example_input, expected)
        return history
    except Exception as error:
        snapshot.restore()
        if isinstance(error, ValueError):
            raise
        raise ValueError(f"pruning failed and the model was restored: {error}") from error


def replay(model: nn.Module, history: list[dict], example_input: torch.Tensor) -> None:
    """Repeat a pruning history on a fresh model of the same architecture (before loading its
    ``state_dict``)."""
    steps = [dict(step) for step in history]
    removed: dict[str, list[int]] = {}
    check_not_compiled(model)
    snapshot = Snapshot(model)
    try:
        for step in steps:
            if step["op"] == "prune":
                if step["layer"] in removed:  # a later round of pruning: indices are relative
                    _flush(model, removed, example_input)
                removed[step["layer"]] = list(step["channels"])
            elif step["op"] == "bias":
                _flush(model, removed, example_input)
                _add_to_bias(model, step["layer"], None)
            else:
                raise ValueError(f"unknown pruning history step {step!r}")
        _flush(model, removed, example_input)
    except Exception:
        snapshot.restore()
        raise


def _flush(model: nn.Module, removed: dict[str, list[int]], example_input: torch.Tensor) -> None:
    if removed:
        _remove(model, removed, example_input)
        removed.clear()


def _remove(
    model: nn.Module, removed: dict[str, list[int]], example_input: torch.Tensor
) -> list[dict]:
    graph = ChannelGraph(model, example_input)
    groups = {layer: graph.group(layer) for layer in removed}
    check_distinct_groups(list(groups.values()))
    plans = []
    for layer, channels in removed.items():
        group = groups[layer]
        channels = sorted({int(c) for c in channels})
        if channels and not 0 <= channels[0] <= channels[-1] < group.n_channels:
            raise ValueError(
                f"layer {layer!r} has {group.n_channels} channels; cannot remove {channels}"
            )
        if len(channels) >= group.n_channels:
            raise ValueError(
                f"removing all {group.n_channels} channels of layer {layer!r} would empty it; "
                "keep at least one (lower the ratio or set a minimum)"
            )
        plans.append((layer, channels))
    history = []
    dependencies = graph._dependencies  # one graph for every removal: it follows them itself
    with _preserved_state(model):
        for layer, channels in plans:
            if channels:
                raw = groups[layer].channels(channels)
                _pruning_group(dependencies, model.get_submodule(layer), raw).prune()
                history.append({"op": "prune", "layer": layer, "channels": channels})
    return history


def _add_to_bias(model: nn.Module, name: str, update: torch.Tensor | None) -> dict:
    """Add ``update`` to the bias of layer ``name``, creating a zero bias if it has none."""
    module = model.get_submodule(name)
    if module.bias is None:
        out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        module.bias = nn.Parameter(module.weight.new_zeros(out))
    if update is not None:
        with torch.no_grad():
            module.bias.add_(update.to(module.bias))
    return {"op": "bias", "layer": name}


class Snapshot:
    """A model's state to roll back to: the same module, parameter and buffer objects, with
    their values and attributes as they were when the snapshot was taken.

    Restoring puts the objects themselves back, so an optimizer built on the model keeps
    updating it. Costs one copy of the parameters and buffers.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> weight, snapshot = net[0].weight, Snapshot(net)
        >>> net[0].weight = nn.Parameter(torch.zeros(1, 2)); net[0].out_features = 1
        >>> snapshot.restore()
        >>> net[0].weight is weight, net[0].out_features
        (True, 3)
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers),
                          dict(m._modules), set(m._non_persistent_buffers_set))
                         for m in model.modules()]  # fmt: skip
        tensors = {}
        for module in model.modules():
            for t in [*module._parameters.values(), *module._buffers.values()]:
                if t is not None and id(t) not in tensors:
                    grad = t.grad if isinstance(t, nn.Parameter) else None
                    tensors[id(t)] = (t, t.detach().clone(), grad)
        self._tensors = list(tensors.values())

    def restore(self) -> None:
        """Put every module, attribute, parameter and buffer back as it was."""
        for module, attributes, parameters, buffers, children, non_persistent in self._modules:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            module._parameters, module._buffers = dict(parameters), dict(buffers)
            module._modules, module._non_persistent_buffers_set = dict(children), non_persistent
        with torch.no_grad():
            for tensor, value, grad in self._tensors:
                if tensor.shape == value.shape:
                    tensor.copy_(value)
                else:
                    tensor.data = value
                if isinstance(tensor, nn.Parameter):
                    tensor.grad = grad


def check_not_compiled(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` or a submodule is a ``torch.compile`` wrapper, which
    torch-pruning can neither trace nor change safely."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "_orig_mod", None), nn.Module):
            where = f"`model.{name}`" if name else "`model`"
            raise ValueError(
                f"{where} is compiled with torch.compile ({type(module).__name__}); pruning "
                f"changes its layers under the compiled code. Prune the original module "
                f"({where[:-1]}._orig_mod`), then compile it again"
            )


def _output_shapes(model: nn.Module, example_input: torch.Tensor) -> list[tuple] | None:
    """Shapes of the tensors in the model's output on ``example_input``; ``None`` if it fails
    (tracing then reports why)."""
    try:
        with evaluating(model):
            return _shapes(model(example_input))
    except Exception:
        return None


def _shapes(output: object) -> list[tuple]:
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, tuple | list):
        return [shape for item in output for shape in _shapes(item)]
    return []


def _check_runs(model: nn.Module, example_input: torch.Tensor, expected: list | None) -> None:
    """Raise ``ValueError`` unless the pruned model runs on ``example_input`` and its outputs
    keep their shapes."""
    try:
        with evaluating(model):
            shapes = _shapes(model(example_input))
    except Exception as error:
        raise ValueError(
            f"the pruned model fails on the example input ({type(error).__name__}: {error}); "
            "the model was restored. Leave the layer the error names (or the layers feeding "
            "it) out of the plan"
        ) from error
    if expected is not None and shapes != expected:
        raise ValueError(
            f"the pruned model's outputs have shapes {shapes} instead of {expected}; the model "
            "was restored"
        )

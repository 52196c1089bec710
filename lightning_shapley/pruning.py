"""The only module that talks to torch-pruning.

It answers one question for the rest of the package: *when the output channels of a layer are
removed, which layers lose which input features?* torch-pruning's dependency graph follows the
channels through batch norms, residual additions, concatenations and flatten→linear heads; the
answer is a :class:`ChannelGroup`.
"""

from __future__ import annotations

import copy
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
    "ChannelGroup",
    "Consumer",
    "GroupedConvolution",
    "Snapshot",
    "apply_plan",
    "channel_costs",
    "channel_group",
    "check_distinct_groups",
    "check_grouped_convolutions",
    "check_not_compiled",
    "count_params_and_macs",
    "group_importance",
    "grouped_convolutions",
    "importance_needs_gradients",
    "is_importance",
    "merged_consumers",
    "prunable_layer_names",
    "resolve_layer",
    "valid_removal_counts",
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


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced on ``example_input`` ``[1, ...]``.

    Raises:
        ValueError: If torch-pruning cannot trace the model.
    """
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


def check_distinct_groups(groups: list[ChannelGroup]) -> None:
    """Raise ``ValueError`` if two of ``groups`` are the same group (named by two layers)."""
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            if other.layer in group.pruned_layers:
                raise ValueError(
                    f"layers {group.layer!r} and {other.layer!r} belong to the same group; "
                    "name one layer per group"
                )


def merged_consumers(groups: list[ChannelGroup]) -> dict[str, Consumer]:
    """The consumers of several groups, players numbered group after group.

    A consumer fed by several groups (a concatenation) appears once, with all their features.
    """
    parts: dict[str, list[Consumer]] = {}
    offset = 0
    for group in groups:
        for c in group.consumers:
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

    The classifier head (any group without consumers) and the ``ignored`` layers are left out.

    Raises:
        ValueError: If an ``ignored`` name is not a module of the model (the message lists
            the valid names, the closest first), or as :func:`build_dependency_graph`.
    """
    ignored = (ignored,) if isinstance(ignored, str) else tuple(ignored)
    check_names(
        ignored, [n for n, _ in model.named_modules()], "ignored", _weighted_layer_names(model)
    )
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


def is_importance(criterion: object) -> bool:
    """Whether ``criterion`` is a torch-pruning importance (``tp.importance.Importance``)."""
    return isinstance(criterion, tp.importance.Importance)


def importance_needs_gradients(importance: object) -> bool:
    """Whether a torch-pruning importance reads the parameters' ``.grad`` (Taylor, Hessian)."""
    return isinstance(importance, tp.importance.TaylorImportance | tp.importance.HessianImportance)


def group_importance(
    model: nn.Module,
    layer: str | nn.Module,
    kind: str | object,
    example_input: torch.Tensor,
    graph: tp.DependencyGraph | None = None,
) -> torch.Tensor:
    """torch-pruning's importance of each channel of ``layer``'s group, ``[n_channels]``.

    Args:
        kind: ``"l1"``/``"l2"`` (weight magnitude), ``"bn_scale"`` (|γ| of the batch norms),
            ``"taylor"`` (|w · ∂L/∂w|; the gradients must already be in ``.grad``) or
            ``"random"``, or a torch-pruning importance object. Scores are averaged over the
            group's layers, not normalised.
    """
    importances = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1, normalizer=None),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2, normalizer=None),
        "bn_scale": lambda: tp.importance.BNScaleImportance(normalizer=None),
        "taylor": lambda: tp.importance.TaylorImportance(normalizer=None),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if not is_importance(kind) and kind not in importances:
        raise ValueError(f"importance {kind!r} is unknown; use one of {IMPORTANCES}")
    name, module = resolve_layer(model, layer)
    graph = graph or build_dependency_graph(model, example_input)
    group = _pruning_group(graph, module, list(range(graph.get_out_channels(module))))
    scores = kind(group) if is_importance(kind) else importances[kind]()(group)
    if scores is None:
        raise ValueError(f"the group of layer {name!r} has no layer that {kind!r} can score")
    return scores.detach().float().cpu()


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
    """What one channel of each layer's group costs: the parameters (``kind="params"``) or
    multiply-accumulates (``"macs"``) that removing it saves, measured by removing one channel
    from a copy (one from each block of a grouped convolution it feeds, the saving shared
    among them). Layers that cannot lose a channel cost ``inf``.

    The costs are first-order: a weight joining two pruned layers counts in both layers'
    costs, so their sum over all channels exceeds the prunable total (about twice it in a plain
    chain of pruned layers), and a share of the summed cost removes more than that share of
    the parameters.

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
        n = channel_group(trial, layer, example_input).n_channels
        grouped = grouped_convolutions(trial, layer, example_input)
        count = next((c for c in valid_removal_counts(grouped, n) if c > 0), None)
        if count is None:
            costs[layer] = float("inf")
            continue
        channels = [0]
        if grouped:  # the first channels of each block, as many from each
            blocks, per_block = grouped[0].block, count // grouped[0].groups
            channels = [
                int(i)
                for b in range(grouped[0].groups)
                for i in torch.nonzero(blocks == b).flatten()[:per_block]
            ]
        _remove(trial, {layer: channels}, example_input)
        saved = total - count_params_and_macs(trial, example_input)[index]
        costs[layer] = float(saved / count)
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
    graph = build_dependency_graph(model, example_input)
    groups = {layer: channel_group(model, layer, example_input, graph=graph) for layer in removed}
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
    check_grouped_convolutions(
        {
            layer: grouped_convolutions(model, layer, example_input, graph)
            for layer, channels in plans
            if channels
        },
        dict(plans),
    )
    history = []
    with _preserved_state(model):
        for layer, channels in plans:
            if channels:
                group = _pruning_group(graph, model.get_submodule(layer), channels)
                fixes = _grouped_input_weights(graph, group)
                group.prune()
                for module, weight, grad in fixes:
                    module.weight = nn.Parameter(weight)
                    module.weight.grad = grad
                history.append({"op": "prune", "layer": layer, "channels": channels})
    return history


@dataclass(frozen=True)
class GroupedConvolution:
    """A grouped convolution that a layer's channels feed (``side="in"``) or are (``"out"``).

    Its ``groups`` blocks of channels on that side must all lose the same number of channels,
    and each keep at least one.

    Attributes:
        name: Qualified name of the convolution.
        side: ``"in"`` or ``"out"``.
        groups: The convolution's ``groups``.
        block: ``[n_channels]`` the block of each of the layer's channels, -1 where the channel
            does not reach the convolution.
        block_size: Channels per block on that side.
    """

    name: str
    side: str
    groups: int
    block: torch.Tensor
    block_size: int

    def counts(self, removed: list[int]) -> torch.Tensor:
        """``[groups]`` how many of the ``removed`` channels fall in each block."""
        blocks = self.block[torch.as_tensor(removed, dtype=torch.long)]
        return torch.bincount(blocks[blocks >= 0], minlength=self.groups)

    def holds(self, removed: list[int]) -> bool:
        """Whether removing ``removed`` leaves every block the same size, none empty."""
        counts = self.counts(removed)
        return bool((counts == counts[0]).all()) and int(counts[0]) < self.block_size

    @property
    def covers_all(self) -> bool:
        """Whether every channel of the layer lies in a block and the blocks are all full."""
        return bool((self.block >= 0).all()) and len(self.block) == self.groups * self.block_size


def grouped_convolutions(
    model: nn.Module,
    layer: str,
    example_input: torch.Tensor,
    graph: tp.DependencyGraph | None = None,
) -> list[GroupedConvolution]:
    """The grouped convolutions whose channels go with ``layer``'s (depthwise ones, whose
    groups shrink with their channels, excepted).

    Raises:
        ValueError: As :func:`channel_group`, or where a convolution's groups cannot follow
            its channels at all (a depthwise convolution with a channel multiplier).
    """
    name, module = resolve_layer(model, layer)
    if not any(isinstance(m, tp.ops.TORCH_CONV) and m.groups > 1 for m in model.modules()):
        return []
    graph = graph or build_dependency_graph(model, example_input)
    n_channels = graph.get_out_channels(module)
    names = {m: n for n, m in model.named_modules()}
    with _preserved_state(model):
        group = _pruning_group(graph, module, list(range(n_channels)))
    found = []
    for item in group.items:
        conv = item.dep.target.module
        if not isinstance(conv, tp.ops.TORCH_CONV) or conv.groups == 1:
            continue
        if conv.groups == conv.out_channels:
            if conv.in_channels == conv.out_channels:
                continue  # depthwise: torch-pruning shrinks its groups with its channels
            raise ValueError(
                f"layer {name!r} feeds the convolution {names.get(conv, '?')!r} "
                f"({conv.in_channels} → {conv.out_channels} channels, groups={conv.groups}), "
                "whose groups torch-pruning cannot shrink with its input channels; leave "
                f"{name!r} out (ignored_layers)"
            )
        side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        size = conv.out_channels if side == "out" else conv.in_channels
        block = torch.full((n_channels,), -1, dtype=torch.long)
        block_size = size // conv.groups
        block[torch.as_tensor(item.root_idxs, dtype=torch.long)] = (
            torch.as_tensor(item.idxs, dtype=torch.long) // block_size
        )
        found.append(GroupedConvolution(names[conv], side, conv.groups, block, block_size))
    return found


def valid_removal_counts(convolutions: list[GroupedConvolution], n_channels: int) -> list[int]:
    """How many channels a layer of ``n_channels`` can lose through ``convolutions``: the
    counts that every convolution's blocks can share evenly, each block keeping one."""
    return [
        count
        for count in range(n_channels)
        if all(
            c.covers_all and count % c.groups == 0 and count // c.groups < c.block_size
            for c in convolutions
        )
    ]


def check_grouped_convolutions(
    convolutions: dict[str, list[GroupedConvolution]], removed: dict[str, list[int]]
) -> None:
    """Raise ``ValueError`` unless every grouped convolution loses the same number of channels
    in each of its blocks (and keeps one in each), over all the layers of a plan."""
    totals: dict[tuple[str, str], tuple[GroupedConvolution, torch.Tensor, list[str]]] = {}
    for layer, found in convolutions.items():
        for conv in found:
            counts = conv.counts(removed.get(layer, []))
            key = (conv.name, conv.side)
            if key in totals:
                first, total, layers = totals[key]
                totals[key] = (first, total + counts, [*layers, layer])
            else:
                totals[key] = (conv, counts, [layer])
    for conv, counts, layers in totals.values():
        if counts.sum() == 0 or (
            bool((counts == counts[0]).all()) and int(counts[0]) < conv.block_size
        ):
            continue
        valid = valid_removal_counts(convolutions[layers[0]], len(conv.block))
        shown = ", ".join(map(str, valid[:12])) + (", ..." if len(valid) > 12 else "")
        how = (
            f"valid counts for {layers[0]!r}: {shown}"
            if len(layers) == 1 and len(valid) > 1
            else f"leave {' or '.join(repr(x) for x in layers)} out (ignored_layers)"
        )
        raise ValueError(
            f"the plan removes {counts.tolist()} channels from the {conv.groups} blocks of "
            f"{conv.block_size} {conv.side}put channels of the grouped convolution "
            f"{conv.name!r} (through {', '.join(repr(x) for x in layers)}); a grouped "
            "convolution must lose the same number of channels in every block and keep at "
            f"least one in each: {how}. make_plan's scores let prune() round the count itself"
        )


def _grouped_input_weights(
    graph: tp.DependencyGraph, group
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]]:
    """The weights grouped convolutions must have after losing the group's input channels.

    torch-pruning keeps the same in-block positions in every block (those of the first);
    with the blocks' own positions, any even removal is exact.
    """
    fixes = []
    for item in group.items:
        conv = item.dep.target.module
        if (
            not isinstance(conv, tp.ops.TORCH_CONV)
            or conv.groups == 1
            or conv.groups == conv.out_channels
            or graph.is_out_channel_pruning_fn(item.dep.handler)
        ):
            continue
        gone = set(int(i) for i in item.idxs)
        keep = torch.tensor([i for i in range(conv.in_channels) if i not in gone])
        fixes.append(
            (
                conv,
                _grouped_input_selection(conv, conv.weight.detach(), keep),
                None
                if conv.weight.grad is None
                else _grouped_input_selection(conv, conv.weight.grad, keep),
            )
        )
    return fixes


def _grouped_input_selection(
    conv: nn.Module, weight: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """``weight`` of a grouped convolution reading only the input channels ``keep``."""
    keep = keep.to(weight.device)
    if conv.transposed:  # [in, out / groups, ...]: input channels are whole rows
        return weight.index_select(0, keep).clone()
    # [out, in / groups, ...]: each output block reads its own input block's kept positions
    per_block = conv.in_channels // conv.groups
    out_per_block = conv.out_channels // conv.groups
    rows = []
    for b in range(conv.groups):
        mine = keep[(keep >= b * per_block) & (keep < (b + 1) * per_block)] - b * per_block
        rows.append(weight[b * out_per_block : (b + 1) * out_per_block].index_select(1, mine))
    return torch.cat(rows).clone()


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

"""Run only the part of a network that a coalition changes.

The model is traced with ``torch.fx``. Nodes that depend on a masked consumer input form the
*suffix*; everything else (the *prefix*) does not depend on the coalition and is computed once
per calibration batch. The suffix is then run on ``m`` coalitions at once (batch ``m · B``), and
a consumer whose input lies in the prefix is replaced by its factorized form (see
:func:`~lightning_shapley.games.masking.factorize`) when memory allows. On a CPU, the suffix's
plain 2-D convolutions run on channels-last copies of their weights, so that their outputs, and
the suffix after them, are channels-last: oneDNN's convolutions are several times faster there
(a depthwise one most of all: a 32×32 mobilenet_v3_small runs 4× faster, a resnet18 2×).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from lightning_shapley.games.masking import ConsumerMask, factorize, factorized_bytes
from lightning_shapley.metrics import first_logits
from lightning_shapley.normalisation import NormMask

__all__ = ["PrefixCache", "SuffixProgram", "downstream"]


@dataclass
class PrefixCache:
    """What one calibration batch leaves at the border of the suffix.

    Attributes:
        batch_size: Examples in the batch (``B``).
        values: The prefix values the suffix reads, by node.
        factorized: ``(base, parts)`` of each factorized consumer, by node.
    """

    batch_size: int
    values: dict[fx.Node, Any]
    factorized: dict[fx.Node, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class SuffixProgram:
    """The traced model split into a coalition-independent prefix and a masked suffix.

    Args:
        model: The network (its modules and parameters are used live, not copied).
        graph: ``torch.fx`` graph of ``model``.
        masks: The consumer masks, by consumer module name.
        n_players: Number of players.
        factorize_budget: Bytes the factorized consumers may use per calibration batch
            (``0`` turns factorization off).

    Raises:
        ValueError: If no consumer is called in the graph, or the output does not depend on them.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: fx.Graph,
        masks: dict[str, ConsumerMask],
        n_players: int,
        factorize_budget: int,
    ) -> None:
        self.model, self.masks, self.n_players = model, masks, n_players
        self.factorize_budget = factorize_budget
        nodes = list(graph.nodes)
        consumers, tainted, self.output = downstream(graph, set(masks))
        self._consumers = set(consumers)
        batched: set[fx.Node] = set()
        for node in nodes:
            if node.op == "placeholder" or any(a in batched for a in node.all_input_nodes):
                batched.add(node)
        self._prefix = [n for n in nodes if n not in tainted]
        self._suffix = [n for n in nodes if n in tainted]
        self._border = [n for n in self._prefix if any(u in tainted for u in n.users)]
        self._batched = batched
        self._modules = dict(model.named_modules())
        self._last_use = _last_uses(self._suffix)
        self._channels_last = _channels_last_weights(self._suffix, self._modules)
        self.skip: set[fx.Node] = set()  # consumers measured faster as their own layer

    def run_prefix(self, inputs: torch.Tensor) -> PrefixCache:
        """Compute the prefix on a calibration batch ``[B, ...]`` and factorize what fits."""
        env: dict[fx.Node, Any] = {}
        for node in self._prefix:
            env[node] = self._execute(node, lambda n: env[n], inputs)
        cache = PrefixCache(len(inputs), {n: env[n] for n in self._border})
        budget = self.factorize_budget
        for node in self._consumers:
            source = node.args[0]
            if (
                source in self._suffix
                or len(node.args) != 1
                or node.kwargs
                or node in self.skip
                or isinstance(self.masks[node.target], NormMask)
            ):
                continue
            module, x = self._modules[node.target], cache.values[source]
            if factorized_bytes(module, x, self.n_players) > budget:
                continue
            result = factorize(module, x, self.masks[node.target], self.n_players)
            if result is not None:
                cache.factorized[node] = result
                budget -= result[1].numel() * result[1].element_size()
        return cache

    def peak_bytes(self, cache: PrefixCache, mask: torch.Tensor) -> int:
        """Most bytes of suffix values alive at once while one coalition ``mask`` ``[1, n]``
        runs on ``cache``."""
        self._peak = 0
        self.run_suffix(cache, mask, track=True)
        return max(1, self._peak)

    def run_suffix(
        self, cache: PrefixCache, masks: torch.Tensor, *, track: bool = False
    ) -> torch.Tensor:
        """Model outputs ``[m · B, ...]`` for coalitions ``masks`` ``[m, n]`` (float).

        With ``track``, the peak bytes of live suffix values are recorded (``peak_bytes``).
        """
        m, batch = len(masks), cache.batch_size
        env: dict[fx.Node, Any] = {}
        expanded: dict[fx.Node, Any] = {}
        live = 0

        def value(node: fx.Node) -> Any:
            if node in env:
                return env[node]
            if node not in expanded:
                expanded[node] = (
                    _repeat(cache.values[node], m) if node in self._batched else cache.values[node]
                )
            return expanded[node]

        for index, node in enumerate(self._suffix):
            if node.op == "output":
                return first_logits(fx.node.map_arg(node.args[0], value))
            if node in cache.factorized:
                base, parts = cache.factorized[node]
                out = torch.addmm(base.reshape(1, -1), masks, parts)
                env[node] = out.view(m * batch, *base.shape[1:])
            elif node in self._consumers and isinstance(self.masks[node.target], NormMask):
                args = fx.node.map_arg(node.args, value)
                env[node] = self.masks[node.target].forward(self._modules[node.target], args, masks)
            elif node in self._consumers:
                source = node.args[0]
                x = (
                    env[source].view(m, batch, *env[source].shape[1:])
                    if source in env
                    else cache.values[source].unsqueeze(0)
                )
                mask = self.masks[node.target]
                if mask.refit is not None:
                    env[node] = mask.refit.outputs(x, mask.consumer.feature_masks(masks).bool())
                else:
                    masked = mask.apply(x, masks).flatten(0, 1)
                    args = (masked, *fx.node.map_arg(node.args[1:], value))
                    kwargs = fx.node.map_arg(node.kwargs, value)
                    env[node] = self._call_module(node, args, kwargs)
            else:
                env[node] = self._execute(node, value, None)
            if track:
                live += _nbytes(env[node])
                self._peak = max(self._peak, live + sum(_nbytes(v) for v in expanded.values()))
            for done in self._last_use.get(index, ()):
                gone = env.pop(done, None)
                if track:
                    live -= _nbytes(gone)
        raise RuntimeError("the traced graph has no output")  # pragma: no cover

    def _execute(self, node: fx.Node, value: Callable[[fx.Node], Any], inputs: Any) -> Any:
        if node.op == "placeholder":
            if inputs is None:  # pragma: no cover - placeholders are always in the prefix
                raise RuntimeError("placeholder in the suffix")
            first = node is next(iter(node.graph.nodes))
            return inputs if first else (node.args[0] if node.args else None)
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node.op == "get_attr":
            return _get_attr(self.model, node.target)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        if node.op == "call_module":
            return self._call_module(node, args, kwargs)
        raise RuntimeError(f"unexpected fx node {node.op}")  # pragma: no cover

    def _call_module(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        module = self._modules[node.target]
        weight = self._channels_last.get(node)
        plain = weight is not None and not kwargs and len(args) == 1 and args[0].dim() == 4
        if not plain or torch.is_grad_enabled():
            return module(*args, **kwargs)
        return module._conv_forward(_channels_last(args[0]), weight, module.bias)


def downstream(graph: fx.Graph, consumers: set[str]) -> tuple[list[fx.Node], set[fx.Node], fx.Node]:
    """``(calls, suffix, output)``: the nodes calling the ``consumers`` modules, every node that
    depends on them (calls included: what a coalition changes), and the output node.

    Raises:
        ValueError: If no consumer is called, or the output does not depend on them.
    """
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target in consumers]
    if not calls:
        raise ValueError("none of the consumer layers is called in the traced graph")
    suffix = set(calls)
    for node in nodes:
        if any(a in suffix for a in node.all_input_nodes):
            suffix.add(node)
    output = next(n for n in nodes if n.op == "output")
    if output not in suffix:
        raise ValueError("the model output does not depend on the masked channels")
    return calls, suffix, output


def _channels_last_weights(
    suffix: list[fx.Node], modules: dict[str, nn.Module]
) -> dict[fx.Node, torch.Tensor]:
    """Channels-last copies of the weights of the plain CPU ``Conv2d`` modules in ``suffix``
    (not a subclass with its own ``forward``, no hooks), by node."""
    weights = {}
    for node in suffix:
        module = modules.get(node.target) if node.op == "call_module" else None
        if (
            module is not None
            and type(module).forward is nn.Conv2d.forward
            and module.weight.device.type == "cpu"
            and not module._forward_hooks
            and not module._forward_pre_hooks
        ):
            weights[node] = _channels_last(module.weight.detach())
    return weights


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` with channels-last strides: oneDNN reads a tensor's layout from its
    strides, and a tensor with a dimension of size 1 (a 1×1 feature map, a depthwise kernel) can
    be both contiguous and channels-last, so that ``x.contiguous(memory_format=...)`` keeps the
    strides it has."""
    _, c, h, w = x.shape
    if x.stride() == (c * h * w, 1, w * c, c):
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _nbytes(value: Any) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _last_uses(nodes: list[fx.Node]) -> dict[int, list[fx.Node]]:
    """For each position in ``nodes``, the earlier suffix nodes not needed after it."""
    position = {n: i for i, n in enumerate(nodes)}
    last: dict[int, list[fx.Node]] = {}
    for node in nodes:
        users = [position[u] for u in node.users if u in position]
        if users:
            last.setdefault(max(users), []).append(node)
    return last


def _repeat(value: Any, m: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.repeat(m, *[1] * (value.dim() - 1))
    return value


def _get_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj

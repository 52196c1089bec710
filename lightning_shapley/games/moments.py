"""Moment propagation through a one-layer channel game's suffix, for DASP.

The consumer's output moments under a random coalition of a given size are exact (see
:mod:`~lightning_shapley.estimators.dasp`); every later layer pushes element-wise means and
variances forward under the assumption of independent Gaussian inputs (Gast & Roth 2018).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from lightning_shapley.games.suffix import downstream
from lightning_shapley.hooks import attached
from lightning_shapley.metrics import first_logits
from lightning_shapley.modes import evaluating
from lightning_shapley.pruning import Consumer

if TYPE_CHECKING:
    from lightning_shapley.games.channel import ChannelGame

__all__ = ["MomentSuffix", "max_moments", "relu_moments"]

_SHAPE_OPS = ("flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous")
_RELUS = (F.relu, torch.relu)
_LIMIT = 40.0  # Φ(−40) underflows even in float64: clamping α there changes nothing


# -- moment rules -------------------------------------------------------------------------------


@dataclass
class _Moments:
    """Element-wise mean and variance of a random activation tensor (same shapes)."""

    mean: torch.Tensor
    var: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Moments:
        return _Moments(fn(self.mean), fn(self.var))


def _standardized(
    numerator: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(φ(α), Φ(α), Φ(−α))`` at ``α = numerator / std`` clamped to ±40; a zero ``std`` gives
    ``α = ±40`` (or 0), where the moment formulas below reduce to the deterministic case."""
    alpha = (numerator / std.clamp_min(torch.finfo(std.dtype).tiny)).clamp_(-_LIMIT, _LIMIT)
    pdf = alpha.square().mul_(-0.5).exp_().mul_((2 * torch.pi) ** -0.5)
    cdf = torch.special.ndtr(alpha)
    return pdf, cdf, torch.special.ndtr(alpha.neg_())


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``relu(X)``, ``X ~ N(mean, var)`` (rectified Gaussian), element-wise.

    ``E = μΦ(α) + σφ(α)``, ``Var = μ²Φ(α)Φ(−α) + σ²(Φ(α) − φ(α)²) + μσφ(α)(Φ(−α) − Φ(α))``
    with ``α = μ/σ`` (written without the cancellation of ``E[Y²] − E[Y]²``).
    """
    var = var.clamp_min(0)
    std = var.sqrt()
    pdf, cdf, tail = _standardized(mean, std)
    out_mean = mean * cdf + std * pdf
    out_var = (
        mean.square() * cdf * tail + var * (cdf - pdf.square()) + mean * std * pdf * (tail - cdf)
    )
    return out_mean, out_var.clamp_min_(0)


def max_moments(
    mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``max(X₁, X₂)`` for independent Gaussians (Clark 1961).

    With ``θ² = σ₁² + σ₂²``, ``δ = μ₁ − μ₂``, ``α = δ/θ``: ``E = μ₂ + δΦ(α) + θφ(α)`` and
    ``Var = δ²Φ(α)Φ(−α) + δθφ(α)(Φ(−α) − Φ(α)) − θ²φ(α)² + σ₁²Φ(α) + σ₂²Φ(−α)``.
    """
    var1, var2 = var1.clamp_min(0), var2.clamp_min(0)
    delta = mean1 - mean2
    theta = (var1 + var2).sqrt()
    pdf, cdf, tail = _standardized(delta, theta)
    mean = mean2 + delta * cdf + theta * pdf
    var = (
        delta.square() * cdf * tail
        + delta * theta * pdf * (tail - cdf)
        - (theta * pdf).square()
        + var1 * cdf
        + var2 * tail
    )
    return mean, var.clamp_min_(0)


def _relu(x: _Moments) -> _Moments:
    return _Moments(*relu_moments(x.mean, x.var))


def _linear_rule(module: nn.Linear) -> Callable[[_Moments], _Moments]:
    def rule(x: _Moments) -> _Moments:
        return _Moments(module(x.mean), F.linear(x.var, module.weight.square()))

    return rule


def _conv_rule(module: _ConvNd) -> Callable[[_Moments], _Moments]:
    def rule(x: _Moments) -> _Moments:
        return _Moments(module(x.mean), module._conv_forward(x.var, module.weight.square(), None))

    return rule


def _batch_norm_rule(module: _BatchNorm, name: str) -> Callable[[_Moments], _Moments]:
    if module.running_mean is None or module.running_var is None:
        raise ValueError(
            f"DASPShapley needs batch norm {name!r} to have running statistics "
            "(track_running_stats=True): in eval mode it would otherwise use batch statistics"
        )

    def rule(x: _Moments) -> _Moments:
        scale = (module.running_var + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight
        shift = -module.running_mean * scale
        if module.bias is not None:
            shift = shift + module.bias
        shape = [1, -1] + [1] * (x.mean.dim() - 2)
        scale, shift = scale.view(shape), shift.view(shape)
        return _Moments(x.mean * scale + shift, x.var * scale.square())

    return rule


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _max_pool_rule(module: nn.MaxPool2d, name: str) -> Callable[[_Moments], _Moments]:
    if _pair(module.padding) != (0, 0) or module.ceil_mode or module.return_indices:
        raise ValueError(
            f"DASPShapley supports max pooling {name!r} only without padding, ceil_mode or "
            "return_indices"
        )
    kernel, stride = _pair(module.kernel_size), _pair(module.stride)
    dilation = _pair(module.dilation)

    def rule(x: _Moments) -> _Moments:
        rows, channels, height, width = x.mean.shape
        out_h = (height - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        out_w = (width - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1

        def windows(t: torch.Tensor) -> torch.Tensor:
            unfolded = F.unfold(t, kernel, dilation=dilation, stride=stride)
            return unfolded.view(rows, channels, kernel[0] * kernel[1], out_h * out_w)

        means, variances = windows(x.mean).unbind(2), windows(x.var).unbind(2)
        items = list(zip(means, variances, strict=True))
        while len(items) > 1:  # balanced tree of pairwise maxima
            paired = [max_moments(*a, *b) for a, b in zip(items[::2], items[1::2], strict=False)]
            items = paired + ([items[-1]] if len(items) % 2 else [])
        mean, var = items[0]
        return _Moments(mean, var).map(lambda t: t.reshape(rows, channels, out_h, out_w))

    return rule


def _avg_pool_rule(module: nn.AvgPool2d, name: str) -> Callable[[_Moments], _Moments]:
    if _pair(module.padding) != (0, 0) or module.ceil_mode:
        raise ValueError(
            f"DASPShapley supports average pooling {name!r} only without padding or ceil_mode"
        )
    kernel = _pair(module.kernel_size)
    divisor = module.divisor_override or kernel[0] * kernel[1]

    def rule(x: _Moments) -> _Moments:  # mean = Σx/d, variance = Σσ²/d² (independent inputs)
        return _Moments(module(x.mean), module(x.var) / divisor)

    return rule


def _adaptive_avg_pool_rule(module: nn.AdaptiveAvgPool2d) -> Callable[[_Moments], _Moments]:
    def areas(size: int, out: int) -> torch.Tensor:
        index = torch.arange(out)
        return (-((-(index + 1) * size) // out)) - (index * size) // out  # ceil − floor

    def rule(x: _Moments) -> _Moments:
        mean = module(x.mean)
        height, width = x.mean.shape[-2:]
        out_h, out_w = mean.shape[-2:]
        area = areas(height, out_h).view(-1, 1) * areas(width, out_w).view(1, -1)
        return _Moments(mean, module(x.var) / area.to(x.var))

    return rule


def _module_rule(module: nn.Module, name: str) -> Callable[[_Moments], _Moments]:
    """The moment rule of a leaf module, or a ``ValueError`` naming it."""
    if isinstance(module, nn.Linear):
        return _linear_rule(module)
    if isinstance(module, _ConvNd) and not module.transposed:
        return _conv_rule(module)
    if isinstance(module, _BatchNorm):
        return _batch_norm_rule(module, name)
    if isinstance(module, nn.ReLU):
        return _relu
    if isinstance(module, nn.MaxPool2d):
        return _max_pool_rule(module, name)
    if isinstance(module, nn.AvgPool2d):
        return _avg_pool_rule(module, name)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return _adaptive_avg_pool_rule(module)
    if isinstance(module, nn.Flatten | nn.Unflatten):
        return lambda x: x.map(module)
    if isinstance(module, nn.Identity | _DropoutNd):  # dropout is the identity in eval mode
        return lambda x: x
    raise ValueError(
        f"DASPShapley cannot propagate moments through layer {name!r} "
        f"({type(module).__name__}); it supports Linear, Conv, eval-mode BatchNorm, ReLU, "
        "MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout and Identity in a chain"
    )


# -- the suffix -----------------------------------------------------------------------------------


class MomentSuffix:
    """The layers after a one-layer channel game's consumer, as moment rules.

    Args:
        game: A :class:`~lightning_shapley.games.ChannelGame` with one layer whose group has one
            consumer, followed by a chain of supported layers up to the model's output.

    Raises:
        TypeError: If ``game`` is not a channel game.
        ValueError: If the game has several layers or consumers, the model cannot be traced,
            or a node after the consumer has no moment rule (the message names it).
    """

    def __init__(self, game: ChannelGame) -> None:
        groups = getattr(game, "groups", None)
        if groups is None or not hasattr(game, "batches"):
            raise TypeError("DASPShapley needs a ChannelGame (layer, consumers, calibration data)")
        if len(groups) != 1:
            raise ValueError(f"DASPShapley needs a one-layer game, got {len(groups)} layers")
        if len(groups[0].consumers) != 1:
            names = [c.name for c in groups[0].consumers]
            raise ValueError(
                f"DASPShapley needs one consumer of layer {groups[0].layer!r}'s channels, got "
                f"{names} (branches that meet again cannot be propagated)"
            )
        if game.ablation not in ("zero", "mean"):
            raise ValueError(f"DASPShapley supports zero and mean ablation, not {game.ablation!r}")
        self.game, self.model = game, game.model
        self.consumer: Consumer = groups[0].consumers[0]
        self.layer = groups[0].layer
        self.n_players = groups[0].n_channels
        self.module = self.model.get_submodule(self.consumer.name)
        if not isinstance(self.module, nn.Linear | _ConvNd) or getattr(
            self.module, "transposed", False
        ):
            raise ValueError(
                f"DASPShapley needs a linear or convolution consumer, got {self.consumer.name!r} "
                f"({type(self.module).__name__})"
            )
        self._steps, self._output = self._compile()
        with evaluating(self.model):
            inputs = self._consumer_inputs()  # [N, ...] unmasked consumer inputs
            self.n_examples = len(inputs)
            self._prepare(inputs)

    # -- construction -------------------------------------------------------------------------

    def _compile(self) -> tuple[list[tuple[fx.Node, Callable[..., Any]]], fx.Node]:
        """The nodes after the consumer with their rules; errors name unsupported nodes."""
        try:
            graph = fx.symbolic_trace(self.model).graph
        except Exception as error:
            raise ValueError(
                f"DASPShapley traces the model with torch.fx, which failed: {error}"
            ) from error
        calls, tainted, output = downstream(graph, {self.consumer.name})
        if len(calls) != 1:
            raise ValueError(
                f"DASPShapley needs consumer {self.consumer.name!r} called once, got {len(calls)}"
            )
        nodes = list(graph.nodes)
        modules = dict(self.model.named_modules())
        steps = []
        for node in nodes:
            if node not in tainted or node is calls[0] or node is output:
                continue
            outside = [a.name for a in node.all_input_nodes if a not in tainted]
            if outside:
                raise ValueError(
                    f"DASPShapley cannot propagate node {node.name!r} ({node.format_node()}): it "
                    f"also reads {outside}, computed before the masked channels (e.g. a residual)"
                )
            steps.append((node, self._rule(node, modules)))
        self._consumer_node = calls[0]
        return steps, output

    @staticmethod
    def _rule(node: fx.Node, modules: dict[str, nn.Module]) -> Callable[..., Any]:
        target = node.target
        if node.op == "call_module":
            rule = _module_rule(modules[str(target)], str(target))
            return lambda x, *rest, **kwargs: rule(x)
        if node.op == "call_function" and target in _RELUS:
            return lambda x, *rest, **kwargs: _relu(x)
        if node.op == "call_function" and target is torch.flatten:
            return lambda x, *rest, **kwargs: x.map(lambda t: torch.flatten(t, *rest, **kwargs))
        if node.op == "call_method" and target == "relu":
            return lambda x: _relu(x)
        if node.op == "call_method" and target in _SHAPE_OPS:
            name = str(target)
            return lambda x, *rest, **kwargs: x.map(lambda t: getattr(t, name)(*rest, **kwargs))
        if node.op == "call_method" and target in ("size", "dim"):
            name = str(target)
            return lambda x, *rest, **kwargs: getattr(x.mean, name)(*rest, **kwargs)
        if node.op == "call_function" and target is getattr and node.args[1] == "shape":
            return lambda x, attribute: x.mean.shape
        if node.op == "call_function" and target in (operator.getitem, operator.mul):
            return _plain(node)
        raise ValueError(
            f"DASPShapley cannot propagate moments through node {node.name!r} "
            f"({node.format_node()}); supported after the masked layer: a chain of Linear, Conv, "
            "eval-mode BatchNorm, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, "
            "Dropout, Identity, and flatten/view/reshape/relu calls"
        )

    def _consumer_inputs(self) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: tuple) -> None:
            captured.append(args[0])

        with attached([self.module], before=capture):
            for x in self.game.batches:
                self.model(x)
        return torch.cat(captured)

    def _prepare(self, inputs: torch.Tensor) -> None:
        """Ablation values, the fixed part of the consumer's output and ``P``, ``Q`` over all
        players (float64, ``[N, ...out]``)."""
        c, x = self.consumer, inputs.double()
        dim = c.feature_dim(x)
        self._feature_shape = [1] * x.dim()
        self._feature_shape[dim] = c.in_features
        feature_idx = c.feature_idx.to(x.device)
        self._player_idx = c.player_idx.to(x.device)
        group = x.new_zeros(c.in_features)
        group[feature_idx] = 1
        fill = x.new_zeros(c.in_features)
        if self.game.ablation == "mean":  # as consumer_input_means: over examples and positions
            fill = x.movedim(dim, -1).reshape(-1, c.in_features).mean(dim=0) * group
        self._group_features = feature_idx
        fill, group = fill.view(self._feature_shape), group.view(self._feature_shape)
        self._delta = (x - fill) * group  # [N, ...] d_f on the group's features, 0 elsewhere
        self.base = self._apply(x * (1 - group) + fill, bias=True)
        self.total = self._apply(self._delta, bias=False)  # Σ_j t_j
        self.squares = torch.zeros_like(self.total)  # Σ_j t_j²
        for player in range(self.n_players):
            self.squares += self._part(player, slice(None)).square()

    def _apply(self, x: torch.Tensor, *, bias: bool) -> torch.Tensor:
        """The consumer as a linear map on float64 ``x`` (with or without its bias)."""
        weight = self.module.weight.to(x.dtype)
        b = self.module.bias.to(x.dtype) if bias and self.module.bias is not None else None
        if isinstance(self.module, nn.Linear):
            return F.linear(x, weight, b)
        return self.module._conv_forward(x, weight, b)

    @torch.no_grad()
    def parts(self, players: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``[c, b, ...out]`` the contributions ``t_i`` of ``players`` ``[c]`` on ``rows``."""
        return torch.stack([self._part(int(j), rows) for j in players])

    def _part(self, player: int, rows: slice) -> torch.Tensor:
        """``t_j`` ``[b, ...out]``: the consumer's output from channel ``player``'s features."""
        select = self._delta.new_zeros(self.consumer.in_features)
        select[self._group_features[self._player_idx == player]] = 1
        return self._apply(self._delta[rows] * select.view(self._feature_shape), bias=False)

    # -- moments ------------------------------------------------------------------------------

    @torch.no_grad()
    def consumer_moments(
        self,
        players: torch.Tensor,
        k: int,
        rows: slice = slice(None),
        parts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact mean and variance of the consumer's output under a random size-``k`` coalition
        of the other players, each of ``players`` ``[c]`` absent (index 0) or present (1).

        Args:
            players: ``[c]`` player indices.
            k: Coalition size, ``0 … n−1``.
            rows: The calibration examples.
            parts: ``[c, b, ...out]`` the players' contributions ``t_i`` if already computed.

        Returns:
            ``(mean, var)``, each ``[2, c, b, ...out]`` (float64) for the examples ``rows``.
        """
        if not 0 <= k < self.n_players:
            raise ValueError(f"k must be a coalition size in 0 … {self.n_players - 1}, got {k}")
        others = self.n_players - 1
        p = k / others if others else 0.0
        if parts is None:
            parts = self.parts(players, rows)
        rest = self.total[rows] - parts
        mean_out = self.base[rows] + p * rest
        if others > 1:
            squares = (self.squares[rows] - parts.square()).clamp_min(0)
            var = p * (1 - p) / (others - 1) * (others * squares - rest.square()).clamp_min(0)
        else:
            var = torch.zeros_like(rest)
        return torch.stack([mean_out, mean_out + parts]), torch.stack([var, var])

    @torch.no_grad()
    def propagate(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push consumer-output moments ``[R, ...out]`` to the model output ``[R, ...]``."""
        dtype = self.module.weight.dtype
        result = self._run(_Moments(mean.to(dtype), var.to(dtype)))
        return result.mean, result.var

    def _run(self, first: _Moments, sizes: list[int] | None = None) -> _Moments:
        """Run the rules from the consumer's output moments ``first``; append each step's
        element count to ``sizes`` when given."""
        env: dict[fx.Node, Any] = {self._consumer_node: first}
        with evaluating(self.model):
            for node, rule in self._steps:
                args = fx.node.map_arg(node.args, env.__getitem__)
                kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
                env[node] = rule(*args, **kwargs)
                if sizes is not None and isinstance(env[node], _Moments):
                    sizes.append(env[node].mean.numel())
            output = fx.node.map_arg(self._output.args[0], env.__getitem__)
            return first_logits(output, _Moments)

    @torch.no_grad()
    def marginals(
        self, sizes: torch.Tensor, memory_budget: int, logit_samples: int = 0, seed: int = 0
    ) -> torch.Tensor:
        """Approximate ``E[v(S ∪ {i}) − v(S)]`` ``[K, n]`` for each size and player.

        ``v`` is the metric at the mean logits, or (``logit_samples > 0``) its average over
        that many draws ``μ + σ ε`` of the logits, ``ε`` ``[N, ...]`` seeded and shared by every
        distribution. Players are taken ``c`` at a time and examples ``b`` at a time so that one
        pass of ``2 c b`` rows and the chunk's logits ``[K, 2, c, N, ...]`` fit in
        ``memory_budget``.
        """
        n, total, n_sizes = self.n_players, self.n_examples, len(sizes)
        dtype, element = self.module.weight.dtype, self.module.weight.element_size()
        numels = [self.base[0].numel()]
        row = self.base[:1].to(dtype)
        out_shape = self._run(_Moments(row, row), numels).mean.shape[1:]  # dry run: one row
        rows_per_pass = max(2, memory_budget // (4 * sum(numels) * element))  # mean, var, work
        logit_bytes = 4 * n_sizes * total * out_shape.numel() * element  # per player
        chunk = max(1, min(n, rows_per_pass // (2 * total), memory_budget // logit_bytes))
        step = total if 2 * total <= rows_per_pass else max(1, rows_per_pass // 2)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(logit_samples, total, *out_shape, generator=generator, dtype=dtype)
        noise = noise.to(self.base.device)
        out = torch.empty(n_sizes, n, dtype=torch.float64)
        for start in range(0, n, chunk):
            players = torch.arange(start, min(n, start + chunk))
            shape = (n_sizes, 2, len(players), total, *out_shape)
            logits = self.base.new_empty(shape, dtype=dtype)
            spread = self.base.new_empty(shape if logit_samples else (0,), dtype=dtype)
            for lo in range(0, total, step):
                rows = slice(lo, min(total, lo + step))
                parts = self.parts(players, rows)
                for t, k in enumerate(sizes.tolist()):
                    mean, var = self.consumer_moments(players, k, rows, parts)
                    mean_out, var_out = self.propagate(mean.flatten(0, 2), var.flatten(0, 2))
                    logits[t, :, :, rows] = mean_out.view(*mean.shape[:3], *out_shape)
                    if logit_samples:
                        spread[t, :, :, rows] = var_out.sqrt().view(*mean.shape[:3], *out_shape)
            value, targets = self.game.value_function, self.game.targets
            logits = logits.flatten(0, 2)
            if logit_samples:
                spread = spread.flatten(0, 2)
                draws = [value(logits + spread * e, targets).double() for e in noise]
                values = torch.stack(draws).mean(dim=0)
            else:
                values = value(logits, targets).double()
            values = values.cpu().view(n_sizes, 2, len(players))
            out[:, start : start + len(players)] = values[:, 1] - values[:, 0]
        return out


def _plain(node: fx.Node) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, _Moments) for a in (*args, *kwargs.values())):
            raise ValueError(
                f"DASPShapley cannot propagate moments through node {node.name!r} "
                f"({node.format_node()})"
            )
        return node.target(*args, **kwargs)  # type: ignore[operator]

    return run

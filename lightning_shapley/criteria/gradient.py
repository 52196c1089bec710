"""Gradient attributions of channels: gradient×input, integrated gradients, DeepLIFT-Rescale.

A channel's *activation* is what the group's consumers read: the input features of the layers
that :class:`~lightning_shapley.games.ChannelGame` masks (after the group's batch norms,
ReLUs, poolings and flattens, where the physically pruned model loses them). Each channel
``j`` gets a gate ``g_j`` at every consumer: the consumer reads ``ref + g_j · (x − ref)``, with
``ref = 0`` (``zero`` ablation) or the channel's calibration mean (``mean`` ablation). The
value ``v(g)`` is the mean over the calibration examples of −cross-entropy, so ``g = 1`` is the
full model, ``g = 0`` the model without the group's channels, and ``g = 1_S`` the channel
game's ``v(S)`` exactly. The three kinds are attributions of ``v`` to the gates:

* ``grad_input``: ``∂v/∂g_j`` at ``g = 1``, i.e. ``Σ_positions (x − ref) · ∂v/∂x`` over the
  channel's features: the first-order Taylor estimate of ``v(N) − v(N ∖ {j})``.
* ``integrated_gradients`` (channel conductance): ``∫₀¹ ∂v/∂g_j(α·1) dα``, i.e. the channel's
  ``x − ref`` times its gradient averaged along the straight path from the ablated activation
  to the actual one (midpoint rule, ``steps`` points). Completeness: the channels' attributions
  sum to ``v(N) − v(∅)`` up to the Riemann error.
* ``deeplift``: DeepLIFT-Rescale with the ablated activation as reference: the model runs on
  the actual and the reference activations side by side, and the backward pass replaces the
  derivative of every elementwise nonlinearity module (ReLU, sigmoid, …) by the secant
  ``Δy/Δx`` and routes max-pooling deltas through the maxima (Captum's rules). The last step,
  logits → −cross-entropy, is not elementwise; it gets its path-averaged gradient (32
  Gauss–Legendre points, exact to float precision for this smooth map). Summation-to-delta:
  the attributions sum to ``v(N) − v(∅)``, checked on every call.

All are signed and averaged over the calibration examples: a channel that helps the model
scores positive, one whose removal would lower the loss negative. ``ImportanceCriterion
("taylor")`` differs: it is torch-pruning's ``Σ |w · ∂L/∂w|`` in parameter space, the absolute
value of every weight's term, summed over the channel's weights and averaged over the group's
layers, so it is never negative and counts cancelling terms as value. Without the absolute
values, a consumer's ``Σ w · ∂L/∂w`` over the channel's input weights would equal
``−grad_input`` (zero ablation) exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.criteria.base import Criterion
from lightning_shapley.games.masking import ConsumerMask
from lightning_shapley.hooks import attached
from lightning_shapley.metrics import first_logits
from lightning_shapley.pruning import ChannelGraph, merged_consumers
from lightning_shapley.statistics import consumer_input_means

__all__ = ["GradientCriterion"]

ValueFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KINDS = ("grad_input", "integrated_gradients", "deeplift")
ABLATIONS = ("zero", "mean")

_LOSS_POINTS = 32  # Gauss–Legendre points of DeepLIFT's logits → value step
_EPS = 1e-6  # |Δx| below which DeepLIFT uses the ordinary derivative
_SUM_RTOL, _SUM_ATOL = 1e-3, 1e-5  # summation-to-delta check

_LINEAR = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Flatten, nn.Unflatten,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
    nn.ConstantPad2d, nn.ConstantPad3d, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle,
    nn.ChannelShuffle,
)  # fmt: skip
"""Affine in eval mode (batch norm with running statistics): DeepLIFT's multiplier is the
gradient."""

_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Hardsigmoid,
    nn.Hardswish, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink,
)  # fmt: skip
"""Elementwise nonlinearities: the Rescale rule ``Δy / Δx``."""

_MAX_POOLS = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def negative_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example values ``[B]``: −cross-entropy of logits ``[B, K]`` against labels ``[B]``."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


class GradientCriterion(Criterion):
    """Gradient attributions of each channel to the value (see the module docstring).

    ``n_evals`` counts passes over the calibration set, each a forward and a backward at one
    gate setting: 1 per layer for ``grad_input``, ``steps`` for ``integrated_gradients``, 2
    (actual and reference) for ``deeplift``.

    Args:
        kind: ``"grad_input"``, ``"integrated_gradients"`` or ``"deeplift"``.
        steps: Riemann points of integrated gradients (midpoint rule).
        ablation: The reference activation: ``"zero"`` or ``"mean"``, as in the channel game.
        value: Per-example values ``[B]`` (higher is better, differentiable) from logits
            ``[B, K]`` and targets ``[B]``; ``None`` for −cross-entropy. ``v`` is their mean.
        batch_size: Images per forward (calibration examples × gate settings).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        >>> GradientCriterion("integrated_gradients").score(net, ["0"], (x, y)).values["0"].shape
        torch.Size([4])
    """

    def __init__(
        self,
        kind: str = "grad_input",
        steps: int = 16,
        *,
        ablation: str = "zero",
        value: ValueFn | None = None,
        batch_size: int = 1024,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is invalid; use one of {KINDS}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation={ablation!r} is invalid; use one of {ABLATIONS}")
        if batch_size < 2:
            raise ValueError(f"batch_size must be at least 2, got {batch_size}")
        self.kind = self.name = kind
        self.steps, self.ablation, self.batch_size = steps, ablation, batch_size
        self.value = value

    def _score(self, model, layers, inputs, targets, seed):
        if targets is None and self.value is None:
            raise ValueError("the −cross-entropy value needs labelled calibration data")
        model.eval()
        graph = ChannelGraph(model, inputs[:1])
        scores, n_evals = {}, 0
        for layer in layers:
            group = graph.group(layer)
            consumers = merged_consumers([group])
            means = (
                consumer_input_means(model, consumers, list(inputs.split(self.batch_size)))
                if self.ablation == "mean"
                else {}
            )
            gates = _Gates(model, {n: ConsumerMask(c, means.get(n)) for n, c in consumers.items()})
            with torch.enable_grad():
                if self.kind == "deeplift":
                    scores[layer], passes = self._deeplift(model, gates, group.n_channels,
                                                           inputs, targets)  # fmt: skip
                else:
                    scores[layer], passes = self._path(gates, group.n_channels, inputs, targets)
            n_evals += passes
        return scores, n_evals

    def _values(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return (self.value or negative_cross_entropy)(logits, targets)

    def _path(
        self, gates: _Gates, n: int, inputs: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, int]:
        """Mean gradient ``[n]`` of ``v`` over the gate settings ``α·1`` (α = 1, or midpoints)."""
        rows = self.steps if self.kind == "integrated_gradients" else 1
        alphas = (torch.arange(rows, dtype=_dtype(inputs), device=inputs.device) + 0.5) / rows
        if rows == 1:
            alphas = torch.ones_like(alphas)
        total = torch.zeros(n, dtype=torch.float64, device=inputs.device)
        for x, y in _chunks(inputs, targets, max(1, self.batch_size // rows)):
            g = alphas.view(-1, 1).repeat(1, n).requires_grad_()
            logits = gates.forward(g, x)  # [rows, B, K]
            value = self._values(logits.flatten(0, 1), _repeat(y, rows)).sum()
            (grad,) = torch.autograd.grad(value / (len(inputs) * rows), g)
            total += grad.sum(dim=0).double()
        return total, rows

    def _deeplift(
        self,
        model: nn.Module,
        gates: _Gates,
        n: int,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, int]:
        """DeepLIFT-Rescale multipliers times ``x − ref`` ``[n]``, with the delta check."""
        total = torch.zeros(n, dtype=torch.float64, device=inputs.device)
        delta = 0.0
        for x, y in _chunks(inputs, targets, max(1, self.batch_size // 2)):
            g = torch.ones(1, n, dtype=_dtype(inputs), device=inputs.device, requires_grad=True)
            with _rescale_rules(model):
                logits = gates.forward(torch.cat([g, torch.zeros_like(g)]), x)  # [2, B, K]
            actual, reference = logits[0], logits[1].detach()
            multipliers = self._loss_multipliers(reference, actual.detach(), y)
            (grad,) = torch.autograd.grad((multipliers * actual).sum() / len(inputs), g)
            total += grad[0].double()
            with torch.no_grad():
                change = self._values(actual, y) - self._values(reference, y)
                delta += float(change.double().sum()) / len(inputs)
        if abs(float(total.sum()) - delta) > _SUM_RTOL * abs(delta) + _SUM_ATOL:
            raise ValueError(
                f"DeepLIFT's attributions sum to {float(total.sum()):.6g}, but the value changes "
                f"by {delta:.6g}: {type(model).__name__} applies a nonlinearity outside a module "
                "after the layer (torch.relu, F.max_pool2d, ... in a forward), which DeepLIFT's "
                "rules do not see. Use modules (nn.ReLU, nn.MaxPool2d) or another kind."
            )
        return total, 2

    def _loss_multipliers(
        self, reference: torch.Tensor, actual: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, K]``: the gradient of the values along the straight logit path, averaged."""
        nodes, weights = np.polynomial.legendre.leggauss(_LOSS_POINTS)
        alphas = torch.as_tensor((nodes + 1) / 2, dtype=actual.dtype, device=actual.device)
        weights = torch.as_tensor(weights / 2, dtype=actual.dtype, device=actual.device)
        path = (reference + alphas.view(-1, 1, 1) * (actual - reference)).requires_grad_()
        values = self._values(path.flatten(0, 1), _repeat(targets, _LOSS_POINTS))
        weighted = (values.view(_LOSS_POINTS, -1) * weights.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(weighted, path)
        return grad.sum(dim=0)

    def __repr__(self) -> str:
        steps = f", steps={self.steps}" if self.kind == "integrated_gradients" else ""
        return f"GradientCriterion({self.kind!r}{steps})"


class _Gates:
    """Runs the model with the consumers' inputs gated: row ``r`` of ``gates`` ``[R, n]``
    applies to the ``r``-th copy of the batch."""

    def __init__(self, model: nn.Module, masks: dict[str, ConsumerMask]) -> None:
        self.model = model
        self.masks = {model.get_submodule(name): mask for name, mask in masks.items()}

    def forward(self, gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, B, K]`` of the model on ``x`` ``[B, ...]`` under each gate row."""
        rows, batch = len(gates), len(x)

        def gate(module: nn.Module, args: tuple) -> tuple:
            first = args[0].reshape(rows, batch, *args[0].shape[1:])
            return (self.masks[module].apply(first, gates).flatten(0, 1), *args[1:])

        with attached(self.masks, before=gate):
            out = first_logits(self.model(x.repeat(rows, *[1] * (x.dim() - 1))))
        return out.reshape(rows, batch, -1)


@contextmanager
def _rescale_rules(model: nn.Module) -> Iterator[None]:
    """DeepLIFT's backward on a batch ``[actual; reference]``: every leaf module whose two halves
    differ passes its gradient (affine), or gets the Rescale or max-pool rule.

    Raises:
        ValueError: Naming a module after the gates that has no rule.
    """
    names = {module: name for name, module in model.named_modules()}
    saved: dict[nn.Module, torch.Tensor] = {}

    def before(module: nn.Module, args: tuple) -> tuple | None:
        if not args or not isinstance(args[0], torch.Tensor):
            return None
        saved[module] = args[0]
        if getattr(module, "inplace", False):  # keep the input the rule needs
            return (args[0].clone(), *args[1:])
        return None

    def after(module: nn.Module, args: tuple, output: object) -> torch.Tensor | None:
        x = saved.pop(module, None)
        if x is None or len(x) % 2:
            return None
        actual, reference = x.chunk(2)
        if torch.equal(actual, reference):  # upstream of the gates
            return None
        if isinstance(output, torch.Tensor):
            if isinstance(module, _LINEAR) and not _batch_statistics(module):
                return None
            if isinstance(module, _ELEMENTWISE):
                return _rescale(x, output)
            if type(module) in _MAX_POOLS and not module.return_indices:
                return _max_pool_rule(module, x, output)
        raise ValueError(
            f"DeepLIFT has no rule for module {names.get(module, '?')!r} "
            f"({type(module).__name__}) after the layer's channels; it handles affine layers, "
            "elementwise nonlinearities and max pooling. Use grad_input or integrated_gradients."
        )

    leaves = [m for m in model.modules() if not list(m.children())]
    with attached(leaves, before=before, after=after):
        yield


def _batch_statistics(module: nn.Module) -> bool:
    """A batch norm that normalises by the batch's own statistics (not affine per example)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None


def _rescale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` ``[2B, ...]`` whose backward multiplies by ``Δy/Δx`` (the derivative where
    ``|Δx| < ε``) on the actual half."""
    x_actual, x_reference = x.chunk(2)
    y_actual, y_reference = y.chunk(2)
    dx = (x_actual - x_reference).detach()
    dy = (y_actual - y_reference).detach()
    small = dx.abs() < _EPS
    slope = dy / torch.where(small, torch.ones_like(dx), dx)
    secant = y_actual.detach() + slope * (x_actual - x_actual.detach())
    return torch.cat([torch.where(small, y_actual, secant), y_reference])


def _max_pool_rule(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Captum's max-pool rule: ``Δy = (max(y, y_ref) − y_ref) + (y − max(y, y_ref))``, the first
    part through the actual maxima, the second through the reference ones, each divided by the
    ``Δx`` there (never smaller in size than the part it carries)."""
    pool = _MAX_POOLS[type(module)]
    options = (module.kernel_size, module.stride, module.padding, module.dilation)
    x_actual, x_reference = x.chunk(2)
    y_actual, y_reference = y.chunk(2)
    dx = (x_actual - x_reference).detach().flatten(2)
    top = torch.maximum(y_actual, y_reference).detach()
    parts = (top - y_reference.detach(), y_actual.detach() - top)
    out = y_actual.detach()
    for source, part in zip((x_actual, x_reference), parts, strict=True):
        _, index = pool(source.detach(), *options, module.ceil_mode, True)
        index = index.flatten(2)
        at_max = dx.gather(2, index).view_as(part)
        live = x_actual.flatten(2).gather(2, index).view_as(part)
        slope = torch.where(part != 0, part / torch.where(part != 0, at_max, 1.0), 0.0)
        out = out + slope * (live - live.detach())
    return torch.cat([out, y_reference])


def _dtype(inputs: torch.Tensor) -> torch.dtype:
    """The gates' dtype: the inputs' where they are floating point (token ids are not)."""
    return inputs.dtype if inputs.is_floating_point() else torch.get_default_dtype()


def _chunks(
    inputs: torch.Tensor, targets: torch.Tensor | None, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for start in range(0, len(inputs), size):
        y = None if targets is None else targets[start : start + size]
        yield inputs[start : start + size], y


def _repeat(targets: torch.Tensor | None, times: int) -> torch.Tensor | None:
    if targets is None:
        return None
    return targets.repeat(times, *[1] * (targets.dim() - 1))

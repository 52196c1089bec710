"""Channel-mixing normalisations (a ``LayerNorm`` over channels, a ``GroupNorm``) computed
over the channels a coalition keeps, as the pruned model computes them: for the games' masking
and for the statistics the compensation fits on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_shapley.hooks import attached
from lightning_shapley.pruning import Consumer, merged_consumers

__all__ = ["NormMask", "norm_masks", "pruned_normalisations"]


class NormMask:
    """A normalisation that mixes the group's channels (a ``LayerNorm`` over channels, a
    ``GroupNorm``), computed as the pruned model computes it: its statistics over the kept
    channels only. Zeroing a channel at its readers would leave it in these statistics, which
    is not what pruning does; the removed channels' own outputs are zero.

    The module runs its own ``forward`` under a function mode that replaces its
    ``layer_norm``/``group_norm`` call, so wrappers that permute around it (``LayerNorm2d``)
    work as they are.

    Args:
        site: The normalisation and which of its channels belong to which player.
    """

    def __init__(self, site: Consumer) -> None:
        self.consumer = site

    def forward(self, module: nn.Module, args: tuple, masks: torch.Tensor) -> torch.Tensor:
        """The module's output on inputs ``args`` (a batch of ``m · B``) for coalitions
        ``masks`` ``[m, n]``."""
        with _MaskedNormalisation(self.consumer.feature_masks(masks.to(args[0].dtype))):
            return module.forward(*args)


class _MaskedNormalisation(TorchFunctionMode):
    """``layer_norm`` and ``group_norm`` over the kept channels ``keep`` ``[m, C]`` (float) of
    inputs whose batch holds the ``m`` coalitions one after another."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.layer_norm:
            return self._layer_norm(*args, **kwargs)
        if func is F.group_norm:
            return self._group_norm(*args, **kwargs)
        return func(*args, **kwargs)

    def _layer_norm(self, x, normalized_shape, weight=None, bias=None, eps=1e-5):
        keep = self.keep.unsqueeze(1)  # [m, 1, C]
        y = self._normalise(x.reshape(len(keep), -1, x.shape[-1]), keep, -1, eps)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return (y * keep).reshape(x.shape)

    def _group_norm(self, x, num_groups, weight=None, bias=None, eps=1e-5):
        m, channels = self.keep.shape
        per_group = channels // num_groups
        grouped = x.reshape(m, -1, num_groups, per_group, x[0, 0].numel())
        keep = self.keep.view(m, 1, num_groups, per_group, 1)
        y = self._normalise(grouped, keep, (3, 4), eps)
        affine = (1, 1, num_groups, per_group, 1)
        if weight is not None:
            y = y * weight.view(affine)
        if bias is not None:
            y = y + bias.view(affine)
        return (y * keep).reshape(x.shape)

    @staticmethod
    def _normalise(x, keep, dims, eps):
        count = (keep * torch.ones_like(x[:1, :1])).sum(dims, keepdim=True).clamp_min(1)
        mean = (x * keep).sum(dims, keepdim=True) / count
        variance = ((x - mean) * keep).pow(2).sum(dims, keepdim=True) / count
        return (x - mean) * torch.rsqrt(variance + eps)


def norm_masks(groups: list) -> dict[str, NormMask]:
    """The :class:`NormMask` of every channel-mixing normalisation of ``groups``."""
    return {name: NormMask(site) for name, site in merged_consumers(groups, norms=True).items()}


@contextmanager
def pruned_normalisations(
    model: nn.Module, groups: list, removed: list[list[int]]
) -> Iterator[None]:
    """Within it, ``model``'s channel-mixing normalisations compute their statistics over the
    channels that ``groups`` keep after losing ``removed`` (players, per group), as the pruned
    model will."""
    masks = norm_masks(groups)
    if not masks:
        yield
        return
    kept = torch.ones(1, sum(g.n_channels for g in groups), dtype=torch.bool)
    offset = 0
    for group, gone in zip(groups, removed, strict=True):
        kept[0, offset + torch.as_tensor(gone, dtype=torch.long)] = False
        offset += group.n_channels

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = masks[names[module]]
        return mask.forward(module, args, kept.to(args[0].device))

    names = {model.get_submodule(name): name for name in masks}
    with attached(names, after=hook):
        yield

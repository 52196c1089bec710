"""Removing channels at the consumers' inputs, for many coalitions at once.

A coalition keeps some channels of a group; every consumer of the group sees the removed
channels' features replaced by zero (``zero`` ablation) or by their mean over the calibration
set (``mean`` ablation). Masking there, and only there, is what physical pruning does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.pruning import Consumer

__all__ = ["ConsumerMask", "consumer_input_means", "factorize"]


class ConsumerMask:
    """Masks the input features of one consumer.

    Args:
        consumer: The consumer and which of its input features belong to which player.
        mean: ``[in_features]`` the mean input feature over the calibration set (``mean``
            ablation), or ``None`` for zero ablation.
    """

    def __init__(self, consumer: Consumer, mean: torch.Tensor | None = None) -> None:
        self.consumer = consumer
        self.mean = mean

    def feature_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Float masks ``[m, in_features]`` of the consumer inputs from player masks ``[m, n]``."""
        c = self.consumer
        full = masks.new_ones(len(masks), c.in_features)
        full[:, c.feature_idx.to(masks.device)] = masks[:, c.player_idx.to(masks.device)]
        return full

    def apply(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mask ``x`` ``[m or 1, B, ...]`` (consumer inputs) with coalitions ``masks`` ``[m, n]``.

        Returns:
            ``[m, B, ...]`` the masked inputs.
        """
        feature = self.feature_masks(masks.to(x.dtype))
        shape = [len(masks), 1] + [1] * (x.dim() - 2)
        dim = x.dim() - 1 if self.consumer.channel_dim == -1 else 2
        shape[dim] = self.consumer.in_features
        feature = feature.view(shape)
        if self.mean is None:
            return x * feature
        return x * feature + self.mean.view(shape[1:]) * (1 - feature)


def consumer_input_means(
    model: nn.Module, consumers: dict[str, Consumer], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean ``[in_features]`` of each consumer's input features over the calibration batches
    (over examples and spatial positions), in the unmasked model."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    names = {model.get_submodule(name): name for name in consumers}

    def accumulate(module: nn.Module, args: tuple) -> None:
        name, x = names[module], args[0]
        dim = x.dim() - 1 if consumers[name].channel_dim == -1 else 1
        flat = x.movedim(dim, -1).reshape(-1, x.shape[dim])
        sums[name] = sums.get(name, 0) + flat.sum(dim=0)
        counts[name] = counts.get(name, 0) + len(flat)

    handles = [module.register_forward_pre_hook(accumulate) for module in names]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


def factorize(
    module: nn.Module, x: torch.Tensor, mask: ConsumerMask, n_players: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Split a linear consumer's output into a fixed part and one part per player.

    A convolution or linear layer is linear in its masked input, so for any coalition ``s``
    ``module(mask(x, s)) = base + Σ_j s_j · parts[j]``. Both are computed once per calibration
    batch; a coalition then costs a row of a matrix product instead of the layer.

    Args:
        module: The consumer (``nn.Linear`` or a zero-padded, ungrouped ``nn.Conv2d``).
        x: ``[B, ...]`` its unmasked input.
        mask: How the input features map to players.
        n_players: Number of players.

    Returns:
        ``(base [B, ...out], parts [n_players, B * out_numel])``, or ``None`` when the module
        cannot be factorized.
    """
    c = mask.consumer
    feature_idx, player_idx = c.feature_idx.to(x.device), c.player_idx.to(x.device)
    mean = None if mask.mean is None else mask.mean[feature_idx]
    others = torch.ones(c.in_features, dtype=x.dtype, device=x.device)
    others[feature_idx] = 0
    if isinstance(module, nn.Linear):
        base = F.linear(x * others, module.weight, module.bias)
        weight = module.weight[:, feature_idx]  # [O, f]
        parts = x.new_zeros(n_players, *x.shape[:-1], weight.shape[0])
        for player in torch.unique(player_idx).tolist():
            own = player_idx == player
            parts[player] = F.linear(x[..., feature_idx[own]], weight[:, own])
        if mean is not None:
            constant = x.new_zeros(n_players, weight.shape[0]).index_add_(
                0, player_idx, mean.unsqueeze(-1) * weight.T
            )  # [n, O]
            constant = constant.view(n_players, *[1] * (x.dim() - 1), -1)
            base = base + constant.sum(dim=0)
            parts = parts - constant
        return base, parts.reshape(n_players, -1)
    if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros":
        base = module(x * others.view(1, -1, 1, 1))
        weight = module.weight[:, feature_idx]  # [O, f, kh, kw]
        f, out_channels = len(feature_idx), weight.shape[0]
        per_channel_weight = weight.transpose(0, 1).reshape(f * out_channels, 1, *weight.shape[2:])

        def conv(inputs: torch.Tensor) -> torch.Tensor:
            out = F.conv2d(
                inputs,
                per_channel_weight,
                None,
                module.stride,
                module.padding,
                module.dilation,
                groups=f,
            )
            return out.view(len(inputs), f, out_channels, *out.shape[2:]).transpose(0, 1)

        per_feature = conv(x[:, feature_idx])  # [f, B, O, H', W']
        if mean is not None:
            constant = conv(mean.view(1, -1, 1, 1).expand(1, f, *x.shape[2:]))  # [f, 1, O, H', W']
            base = base + constant.sum(dim=0)
            per_feature = per_feature - constant
        parts = per_feature.new_zeros(n_players, *per_feature.shape[1:])
        parts.index_add_(0, player_idx, per_feature)
        return base, parts.reshape(n_players, -1)
    return None


def factorized_bytes(module: nn.Module, x: torch.Tensor, n_players: int) -> int:
    """Bytes the ``parts`` of :func:`factorize` take for the consumer input ``x`` ``[B, ...]``."""
    out = module(x[:1])
    return n_players * out.numel() * len(x) * out.element_size()

"""Removing channels at the consumers' inputs, for many coalitions at once.

A coalition keeps some channels of a group; every consumer of the group sees the removed
channels' features replaced by zero (``zero`` ablation), by their mean over the calibration
set (``mean`` ablation), or by their least-squares prediction from the channels the coalition
keeps (``regression`` ablation; both from :mod:`~lightning_shapley.statistics`). Masking there,
and only there, is what physical pruning does; the mean and the prediction fold into the
consumer's weights and bias (see :mod:`~lightning_shapley.compensation`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.pruning import Consumer
from lightning_shapley.refit import kept_columns, refit_parameters
from lightning_shapley.statistics import LinearImputation

__all__ = ["ConsumerMask", "ConsumerRefit", "factorize"]


class ConsumerRefit:
    """A consumer refit, per coalition, to its full output on the inputs the coalition keeps
    (``refit`` ablation; see :mod:`~lightning_shapley.refit`).

    With few calibration examples a refit can reproduce them whatever it lost, which would make
    every coalition look as good as the full one. So the refit is *cross-fitted*: the examples
    fall into ``folds`` by their position in the batch, and each is evaluated with the refit
    fitted on the other folds, which measures what the refit recovers on examples it has not
    seen.

    Args:
        module: The consumer (linear, or a zero-padded 2-d convolution).
        grams: ``[folds, G, D/G + 1, D/G + 1]`` Gram matrices of its input rows by fold (see
            :func:`~lightning_shapley.refit.input_grams`).
        ridge: Relative ridge of the refit.
    """

    def __init__(self, module: nn.Module, grams: torch.Tensor, ridge: float = 1e-3) -> None:
        self.module, self.grams, self.ridge = module, grams, ridge
        total = grams.sum(dim=0)
        self._fitting = [total - g for g in grams] if len(grams) > 1 else [total]
        self._last: tuple[torch.Tensor, list] | None = None

    def parameters_for(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per fold, refit weights ``[m, *weight.shape]`` and biases ``[m, O]`` for kept input
        features ``[m, in_features]`` (the last call's are reused: every batch asks)."""
        if self._last is not None and torch.equal(self._last[0], features):
            return self._last[1]
        kept = kept_columns(self.module, features)
        parameters = [refit_parameters(g, self.module, kept, self.ridge) for g in self._fitting]
        self._last = (features.clone(), parameters)
        return parameters

    def outputs(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Outputs ``[m · B, ...]`` from inputs ``x`` ``[m or 1, B, ...]`` and kept features
        ``[m, in_features]``."""
        folds = self.parameters_for(features)
        out = torch.stack([self._apply(x, w, b) for w, b in folds])  # [folds, m, B, ...]
        fold = torch.arange(x.shape[1], device=x.device) % len(folds)
        picked = out.gather(
            0, fold.view(1, 1, -1, *[1] * (out.dim() - 3)).expand(1, *out.shape[1:])
        )
        return picked[0].flatten(0, 1)

    def _apply(self, x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
        """``[m, B, ...]`` outputs of the ``m`` refit consumers."""
        m, module = len(weights), self.module
        if isinstance(module, nn.Linear):
            out = torch.einsum("mbi,moi->mbo", x.reshape(len(x), -1, x.shape[-1]), weights)
            out = out + biases.unsqueeze(1)
            return out.reshape(m, x.shape[1], *x.shape[2:-1], -1)
        convolve = lambda inputs, w, b: F.conv2d(  # noqa: E731
            inputs, w, b, module.stride, module.padding, module.dilation, module.groups
        )
        if len(x) == 1 and module.groups == 1:  # one input for every coalition: one convolution
            out = convolve(x[0], weights.flatten(0, 1), biases.flatten())
            return out.view(len(out), m, -1, *out.shape[2:]).transpose(0, 1)
        last = len(x) - 1
        return torch.stack([convolve(x[min(j, last)], weights[j], biases[j]) for j in range(m)])


class ConsumerMask:
    """Masks the input features of one consumer.

    Args:
        consumer: The consumer and which of its input features belong to which player.
        mean: ``[in_features]`` the mean input feature over the calibration set (``mean``
            ablation), or ``None`` for zero ablation.
        imputation: Predicts removed channels from kept ones (``regression`` ablation).
        refit: Refits the consumer to the kept channels (``refit`` ablation); its
            :meth:`ConsumerRefit.outputs` then replace the consumer's forward.
    """

    def __init__(
        self,
        consumer: Consumer,
        mean: torch.Tensor | None = None,
        imputation: LinearImputation | None = None,
        refit: ConsumerRefit | None = None,
    ) -> None:
        self.consumer = consumer
        self.mean = mean
        self.imputation = imputation
        self.refit = refit

    def apply(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mask ``x`` ``[m or 1, B, ...]`` (consumer inputs) with coalitions ``masks`` ``[m, n]``.

        Returns:
            ``[m, B, ...]`` the masked inputs.
        """
        dim = self.consumer.feature_dim(x, leading=2)
        if self.imputation is not None:
            return self._impute(x, masks, dim)
        feature = self.consumer.feature_masks(masks.to(x.dtype))
        shape = [len(masks), 1] + [1] * (x.dim() - 2)
        shape[dim] = self.consumer.in_features
        feature = feature.view(shape)
        if self.mean is None:
            return x * feature
        return x * feature + self.mean.view(shape[1:]) * (1 - feature)

    def _impute(self, x: torch.Tensor, masks: torch.Tensor, dim: int) -> torch.Tensor:
        imputation = self.imputation
        layout = imputation.layout.to(x.device)
        p, f = layout.shape
        y = x.index_select(dim, layout.flatten()).movedim(dim, 2)  # [m|1, B, p·f, ...]
        y = y.reshape(*y.shape[:2], p, f, *y.shape[3:])
        filled = imputation.fill(y, masks[:, imputation.players.to(masks.device)].bool())
        filled = filled.flatten(2, 3).movedim(2, dim)
        out = x.expand(len(masks), *x.shape[1:]).clone()
        return out.index_copy_(dim, layout.flatten(), filled)


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
    if mask.imputation is not None or mask.refit is not None:  # not linear in the coalition
        return None
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

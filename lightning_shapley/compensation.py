"""Giving back, without training, what removing channels takes away.

*Mean folding*: a removed channel whose activation is replaced by its calibration mean (the
``mean`` ablation of the game) contributes a constant to every consumer. Adding that constant to
the consumer's bias (creating one if it has none) makes the pruned model compute what the
mean-ablated game evaluated. It is exact for linear consumers and for convolutions away from the
border; where a convolution zero-pads, the border outputs of the game saw only part of the
constant, so there the folded model differs slightly.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_shapley.games.masking import consumer_input_means
from lightning_shapley.modes import evaluating
from lightning_shapley.pruning import ChannelGroup, merged_consumers

__all__ = ["mean_bias_updates"]


def mean_bias_updates(
    model: nn.Module,
    groups: list[ChannelGroup],
    removed: list[list[int]],
    batches: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Bias changes ``[out_features]`` of each consumer that fold in the removed channels' means.

    Args:
        model: The unpruned network.
        groups: The groups being pruned.
        removed: For each group, the channel indices it loses.
        batches: Calibration inputs ``[B, ...]`` the means are taken over.

    Raises:
        ValueError: If a consumer is neither a linear layer nor an ungrouped convolution.
    """
    consumers = merged_consumers(groups)
    offsets = torch.tensor([0] + [g.n_channels for g in groups]).cumsum(0)
    gone = torch.cat(
        [torch.as_tensor(r, dtype=torch.long) + offsets[i] for i, r in enumerate(removed)]
    )
    with evaluating(model):
        means = consumer_input_means(model, consumers, batches)
    updates = {}
    for name, consumer in consumers.items():
        features = consumer.feature_idx[torch.isin(consumer.player_idx, gone)]
        if len(features) == 0:
            continue
        module = model.get_submodule(name)
        mean = means[name][features].to(module.weight)
        if isinstance(module, nn.Linear):
            updates[name] = module.weight[:, features].detach() @ mean
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
            summed = module.weight[:, features].detach().flatten(2).sum(dim=2)  # [O, f]
            updates[name] = summed @ mean
        else:
            raise ValueError(
                f"cannot fold means into {name!r} ({type(module).__name__} with groups="
                f"{getattr(module, 'groups', 1)}): only linear layers and ungrouped convolutions"
            )
    return updates

"""Giving back, without training, what removing channels takes away.

Two ways, both computed on the calibration inputs before the channels go:

* *Mean folding* (``"mean"``): a removed channel whose activation is replaced by its calibration
  mean (the ``mean`` ablation of the game) contributes a constant to every consumer. Adding that
  constant to the consumer's bias (creating one if it has none) makes the pruned model compute
  what the mean-ablated game evaluated. It is exact for linear consumers and for convolutions
  away from the border; where a convolution zero-pads, the border outputs of the game saw only
  part of the constant, so there the folded model differs slightly.
* *Regression folding* (``"regression"``): a removed channel replaced by its least-squares
  prediction from the kept channels of its group (the ``regression`` ablation of the game, see
  :class:`~lightning_shapley.games.masking.LinearImputation`) reaches each consumer as a linear
  function of kept inputs plus a constant, which fold exactly into the consumer's kept weights
  and its bias (up to padded borders, as for the mean).
* *Least-squares refit* (``"least_squares"``, as in ThiNet and FLAP's compensation): every
  consumer's kept weights and bias are refit so that, on the calibration inputs, it reproduces
  the output it had with all its input channels (see :mod:`~lightning_shapley.refit`). It is
  the most a consumer can recover on its own; mean and regression folding are special cases.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_shapley.games.masking import consumer_input_means, linear_imputations
from lightning_shapley.modes import evaluating
from lightning_shapley.pruning import ChannelGroup, Consumer, merged_consumers
from lightning_shapley.refit import (
    check_refittable,
    input_grams,
    kept_columns,
    reference_targets,
    refit_parameters,
)

__all__ = [
    "COMPENSATIONS",
    "least_squares_updates",
    "mean_bias_updates",
    "regression_updates",
    "resolve_compensation",
]

COMPENSATIONS = ("none", "mean", "regression", "least_squares")


def resolve_compensation(compensation: str, ablation: str) -> str:
    """``"auto"``: what the game's ablation evaluated, or more. Means are folded after a
    mean-ablated game (the pruned model is then what the game evaluated), nothing after a
    zero-ablated one, and the least-squares refit after a ``regression`` or ``refit`` game (the
    refit recovers at least what the regression predicted on the calibration data). Any other
    choice stands.

    Raises:
        ValueError: On an unknown compensation.
    """
    if compensation == "auto":
        return {"mean": "mean", "regression": "least_squares", "refit": "least_squares"}.get(
            ablation, "none"
        )
    if compensation not in COMPENSATIONS:
        raise ValueError(
            f"compensation={compensation!r} is invalid; use 'auto' or one of {COMPENSATIONS}"
        )
    return compensation


def _removed_features(
    groups: list[ChannelGroup], removed: list[list[int]]
) -> tuple[dict[str, Consumer], dict[str, torch.Tensor]]:
    """Each consumer, and the input features ``[f]`` it loses."""
    consumers = merged_consumers(groups)
    offsets = torch.tensor([0] + [g.n_channels for g in groups]).cumsum(0)
    gone = torch.cat(
        [torch.as_tensor(r, dtype=torch.long) + offsets[i] for i, r in enumerate(removed)]
    )
    features = {
        name: c.feature_idx[torch.isin(c.player_idx, gone)] for name, c in consumers.items()
    }
    return consumers, {name: f for name, f in features.items() if len(f)}


def _check_consumer(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear) or (
        type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        and module.groups == 1
        and module.padding_mode == "zeros"
    ):
        return
    raise ValueError(
        f"cannot fold into {name!r} ({type(module).__name__}, groups="
        f"{getattr(module, 'groups', 1)}): only linear layers and ungrouped, zero-padded "
        "convolutions"
    )


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
    consumers, lost = _removed_features(groups, removed)
    for name in lost:
        _check_consumer(name, model.get_submodule(name))
    with evaluating(model):
        means = consumer_input_means(model, {n: consumers[n] for n in lost}, batches)
    updates = {}
    for name, features in lost.items():
        module = model.get_submodule(name)
        mean = means[name][features].to(module.weight)
        weight = module.weight[:, features].detach()
        columns = weight.reshape(len(weight), len(features), -1).sum(dim=2)  # [O, f]
        updates[name] = columns @ mean
    return updates


def regression_updates(
    model: nn.Module,
    groups: list[ChannelGroup],
    removed: list[list[int]],
    batches: list[torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weight and bias changes that fold the removed channels' predictions from the kept ones
    into each consumer.

    Args:
        model: The unpruned network.
        groups: The groups being pruned.
        removed: For each group, the channel indices it loses.
        batches: Calibration inputs ``[B, ...]``.

    Returns:
        ``(weight_updates, bias_updates)``, as :func:`least_squares_updates`.

    Raises:
        ValueError: As :func:`mean_bias_updates`, or where the prediction is not possible (see
            :func:`~lightning_shapley.games.masking.linear_imputations`).
    """
    consumers, lost = _removed_features(groups, removed)
    consumers = {name: consumers[name] for name in lost}
    for name in lost:
        _check_consumer(name, model.get_submodule(name))
    offsets = torch.tensor([0] + [g.n_channels for g in groups]).cumsum(0)
    gone = torch.cat(
        [torch.as_tensor(r, dtype=torch.long) + offsets[i] for i, r in enumerate(removed)]
    )
    with evaluating(model):
        means = consumer_input_means(model, consumers, batches)
        imputations = linear_imputations(model, consumers, batches, means)
    weight_updates, bias_updates = {}, {}
    for name, imputation in imputations.items():
        weight = model.get_submodule(name).weight.detach()
        kept = ~torch.isin(imputation.players, gone)
        predictor = imputation.predictors(kept.unsqueeze(0))[0].to(weight)  # [p, p], G[r, k]
        predictor = predictor * (~kept).to(weight).unsqueeze(1)  # only removed rows predict
        layout = imputation.layout.to(weight.device)  # [p, f]
        per_feature = weight[:, layout.flatten()]  # [O, p·f, ...kernel]
        per_feature = per_feature.reshape(len(weight), *layout.shape, *weight.shape[2:])
        folded = torch.einsum("rk,orf...->okf...", predictor, per_feature)  # onto kept inputs
        delta = torch.zeros_like(weight)
        delta[:, layout.flatten()] = folded.flatten(1, 2)
        mean = imputation.mean.to(weight)  # [p, f]
        constant = (mean - predictor @ mean) * (~kept).to(weight).unsqueeze(1)  # [p, f]
        kernel_sums = per_feature.reshape(*per_feature.shape[:3], -1).sum(dim=3)  # [O, p, f]
        weight_updates[name] = delta
        bias_updates[name] = torch.einsum("opf,pf->o", kernel_sums, constant)
    return weight_updates, bias_updates


def least_squares_updates(
    model: nn.Module,
    groups: list[ChannelGroup],
    removed: list[list[int]],
    batches: list[torch.Tensor],
    *,
    ridge: float = 1e-3,
    reference: nn.Module | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weight and bias changes that refit each consumer's kept inputs to its full output (see
    :mod:`~lightning_shapley.refit`), or to the output of the same consumer in ``reference``.

    Args:
        model: The unpruned network.
        groups: The groups being pruned.
        removed: For each group, the channel indices it loses.
        batches: Calibration inputs ``[B, ...]``.
        ridge: Pull toward the original weights, relative to the Gram matrix's mean diagonal.
        reference: The unpruned model, when ``model`` is already partly pruned: consumers
            whose output size is unchanged are refit to reproduce its outputs, undoing what
            earlier pruning lost too. ``None``: each consumer's own full output.

    Returns:
        ``(weight_updates, bias_updates)``: changes of each consumer's full weight (zero on the
        removed inputs, which go) and bias ``[out_features]``.

    Raises:
        ValueError: If a consumer is neither a linear layer nor an ungrouped, zero-padded
            2-d convolution, or ``ridge`` is not positive.
    """
    if not ridge > 0:
        raise ValueError(f"ridge must be positive, got {ridge}")
    consumers, lost = _removed_features(groups, removed)
    modules = {name: model.get_submodule(name) for name in lost}
    for name, module in modules.items():
        check_refittable(name, module)
    with evaluating(model), evaluating(reference or model):
        grams = input_grams(model, modules, batches)
        targets = {} if reference is None else reference_targets(model, reference, modules, batches)
    weight_updates, bias_updates = {}, {}
    for name, module in modules.items():
        gram, samples = grams[name][0].sum(dim=0), grams[name][1]
        kept_features = torch.ones(1, consumers[name].in_features, dtype=torch.bool)
        kept_features[0, lost[name]] = False
        kept = kept_columns(module, kept_features)
        if samples < int(kept.sum()):
            warnings.warn(
                f"refitting {name!r} on {samples} samples for {int(kept.sum())} weights per "
                "output: the ridge keeps it near its original weights",
                stacklevel=3,
            )
        weight, bias = refit_parameters(gram, module, kept, ridge, targets.get(name))
        weight_updates[name] = weight[0] - module.weight.detach()
        old_bias = module.bias.detach() if module.bias is not None else 0
        bias_updates[name] = bias[0] - old_bias
    return weight_updates, bias_updates

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
  :class:`~lightning_shapley.statistics.LinearImputation`) reaches each consumer as a linear
  function of kept inputs plus a constant, which fold exactly into the consumer's kept weights
  and its bias (up to padded borders, as for the mean).
* *Least-squares refit* (``"least_squares"``, as in ThiNet and FLAP's compensation): every
  consumer's kept weights and bias are refit so that, on the calibration inputs, it reproduces
  the output it had with all its input channels (see :mod:`~lightning_shapley.refit`). It is
  the most a consumer can recover on its own; mean and regression folding are special cases.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lightning_shapley.modes import evaluating
from lightning_shapley.normalisation import pruned_normalisations
from lightning_shapley.options import COMPENSATIONS as CHOICES
from lightning_shapley.options import check_choice
from lightning_shapley.pruning import ChannelGroup, Consumer, merged_consumers
from lightning_shapley.refit import (
    input_grams,
    kept_columns,
    reference_targets,
    refit_parameters,
    refittable,
)
from lightning_shapley.statistics import consumer_input_means, linear_imputations

__all__ = [
    "COMPENSATIONS",
    "least_squares_updates",
    "mean_bias_updates",
    "regression_updates",
    "resolve_compensation",
]

COMPENSATIONS = tuple(c for c in CHOICES if c != "auto")
"""What :func:`~lightning_shapley.prune.prune` applies (``"auto"`` is resolved first)."""


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
    check_choice("compensation", compensation, CHOICES)
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


def _foldable(module: nn.Module, grouped: bool = True) -> bool:
    """Linear layers and zero-padded convolutions (grouped ones where ``grouped``)."""
    return isinstance(module, nn.Linear) or (
        type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        and module.padding_mode == "zeros"
        and (grouped or module.groups == 1)
    )


def _left_as_they_are(what: str, skipped: dict[str, nn.Module], why: str) -> None:
    """One warning naming every consumer a compensation could not touch."""
    if skipped:
        names = ", ".join(
            f"{name!r} ({type(m).__name__}, groups={getattr(m, 'groups', 1)})"
            for name, m in skipped.items()
        )
        warnings.warn(
            f"{what}: left {len(skipped)} consumer(s) as they are, {why}: {names}", stacklevel=4
        )


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight ``[O, in_features, ...kernel]`` as if ungrouped (zero across groups)."""
    weight = module.weight.detach()
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return weight
    out, per_group = len(weight) // groups, weight.shape[1]
    dense = weight.new_zeros(len(weight), per_group * groups, *weight.shape[2:])
    for g in range(groups):
        rows, columns = slice(g * out, (g + 1) * out), slice(g * per_group, (g + 1) * per_group)
        dense[rows, columns] = weight[rows]
    return dense


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

    A consumer other than a linear layer or a zero-padded convolution is left as it is, with one
    warning naming it.
    """
    consumers, lost = _removed_features(groups, removed)
    skipped = {n: model.get_submodule(n) for n in lost if not _foldable(model.get_submodule(n))}
    _left_as_they_are("mean folding", skipped, "not linear layers or zero-padded convolutions")
    lost = {name: features for name, features in lost.items() if name not in skipped}
    with evaluating(model):
        means = consumer_input_means(model, {n: consumers[n] for n in lost}, batches)
    updates = {}
    for name, features in lost.items():
        module = model.get_submodule(name)
        mean = means[name][features].to(module.weight)
        weight = _dense_weight(module)[:, features]
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

    A consumer that cannot take the prediction (a grouped convolution, whose outputs do not read
    every kept channel; a layer that is neither linear nor a zero-padded convolution; channels
    owning uneven numbers of its features) is left as it is, with one warning naming it.
    """
    consumers, lost = _removed_features(groups, removed)
    skipped = {
        n: model.get_submodule(n) for n in lost if not _foldable(model.get_submodule(n), False)
    }
    _left_as_they_are("regression folding", skipped, "not linear layers or ungrouped, "
                      "zero-padded convolutions")  # fmt: skip
    consumers = {name: consumers[name] for name in lost if name not in skipped}
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

    A grouped convolution (depthwise included) is refit group by group. A consumer that is
    neither a linear layer nor a zero-padded 2-d convolution is left as it is, with one warning
    naming it.

    Raises:
        ValueError: If ``ridge`` is not positive.
    """
    if not ridge > 0:
        raise ValueError(f"ridge must be positive, got {ridge}")
    consumers, lost = _removed_features(groups, removed)
    modules = {name: model.get_submodule(name) for name in lost}
    skipped = {name: m for name, m in modules.items() if not refittable(m)}
    _left_as_they_are("least-squares refit", skipped, "not linear layers or zero-padded 2-d "
                      "convolutions")  # fmt: skip
    modules = {name: m for name, m in modules.items() if name not in skipped}
    with evaluating(model), evaluating(reference or model):
        if any(group.norms for group in groups):
            # the pruned model normalises over the kept channels: refit on the inputs it will
            # see, toward the outputs the unpruned one gave
            masked = copy.deepcopy(model)
            modules_there = {name: masked.get_submodule(name) for name in modules}
            with pruned_normalisations(masked, groups, removed):
                grams = input_grams(masked, modules_there, batches)
                targets = reference_targets(masked, reference or model, modules_there, batches)
        else:
            grams = input_grams(model, modules, batches)
            targets = (
                {} if reference is None else reference_targets(model, reference, modules, batches)
            )
    weight_updates, bias_updates, few = {}, {}, []
    for name, module in modules.items():
        gram, samples = grams[name][0].sum(dim=0), grams[name][1]
        kept_features = torch.ones(1, consumers[name].in_features, dtype=torch.bool)
        kept_features[0, lost[name]] = False
        kept = kept_columns(module, kept_features)
        per_output = int(kept[0].sum(-1).max())
        if samples < per_output:
            few.append(f"{name!r} on {samples} samples for {per_output} weights per output")
        weight, bias = refit_parameters(gram, module, kept, ridge, targets.get(name))
        weight_updates[name] = weight[0] - module.weight.detach()
        old_bias = module.bias.detach() if module.bias is not None else 0
        bias_updates[name] = bias[0] - old_bias
    if few:
        warnings.warn(
            f"least-squares refit of {len(few)} consumer(s) on fewer samples than weights (the "
            f"ridge keeps them near their original weights): {', '.join(few)}",
            stacklevel=3,
        )
    return weight_updates, bias_updates

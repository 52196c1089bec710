"""Least-squares refit of a layer on the input features it keeps.

A consumer layer (linear, or a zero-padded ungrouped 2-d convolution) with weights ``W``
``[O, D]`` over its input features (a convolution's unfolded patches, ``D = C·kh·kw``) and bias
``b`` loses some input features. Its kept weights and bias are refit so that, on calibration
inputs ``x`` ``[S, D]``, it reproduces its full output:

    θ = argmin ‖[x_K, 1] θ − (x Wᵀ + b)‖² + λ ‖θ − [W_K, b]ᵀ‖²

The ridge pulls toward the original weights, so that with fewer samples than features the refit
stays near them rather than overfitting (``λ`` is ``ridge`` times the mean diagonal of the Gram
matrix). Everything needed is the Gram matrix of ``[x, 1]``, accumulated once; any kept set is
then one linear solve, and many kept sets are one batched solve. When a removed feature is a
linear combination of kept ones, the refit is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.hooks import watch_inputs

__all__ = [
    "check_refittable",
    "input_grams",
    "kept_columns",
    "reference_targets",
    "refit_parameters",
]


def check_refittable(name: str, module: nn.Module) -> None:
    """Raise a ``ValueError`` naming ``module`` unless it is a linear layer or an ungrouped,
    zero-padded 2-d convolution."""
    if isinstance(module, nn.Linear) or (
        type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
    ):
        return
    raise ValueError(
        f"cannot refit {name!r} ({type(module).__name__}, groups={getattr(module, 'groups', 1)}):"
        " only linear layers and ungrouped, zero-padded 2-d convolutions"
    )


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``[S, D]``: patches of a convolution, rows of a linear layer."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def input_grams(
    model: nn.Module, modules: dict[str, nn.Module], batches: list[torch.Tensor], folds: int = 1
) -> dict[str, tuple[torch.Tensor, int]]:
    """Gram matrices ``[folds, D + 1, D + 1]`` (float64) of each layer's input rows with a ones
    column appended, and the number of rows (examples × output positions), over the batches.

    With ``folds > 1`` the example at position ``i`` of a batch counts toward fold
    ``i % folds`` (see :class:`~lightning_shapley.games.masking.ConsumerRefit`).
    """
    grams: dict[str, tuple[torch.Tensor, int]] = {}
    names = {module: name for name, module in modules.items()}

    def accumulate(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        gram, count = grams.get(names[module], (0, 0))
        parts = []
        for fold in range(folds):
            rows = input_rows(module, x[fold::folds])
            rows = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1).double()
            parts.append(rows.T @ rows)
            count += len(rows)
        grams[names[module]] = (gram + torch.stack(parts), count)

    watch_inputs(model, modules.values(), batches, accumulate)
    return grams


def reference_targets(
    model: nn.Module,
    reference: nn.Module,
    modules: dict[str, nn.Module],
    batches: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``[D + 1, O]`` products ``[x, 1]ᵀ y_ref`` of each layer's input rows in ``model`` with the
    same-named layer's output rows in ``reference`` (e.g. the unpruned model), for layers whose
    output sizes agree: a refit toward them reproduces the reference's outputs, which undoes
    the error that pruning upstream layers already caused."""
    inputs: dict[str, torch.Tensor] = {}
    products: dict[str, torch.Tensor] = {}
    own = {module: name for name, module in modules.items()}
    theirs = {reference.get_submodule(name): name for name in modules}

    def take_input(module: nn.Module, args: tuple) -> None:
        rows = input_rows(module, args[0].detach())
        inputs[own[module]] = torch.cat([rows, rows.new_ones(len(rows), 1)], dim=1).double()

    def take_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        name = theirs[module]
        out = output.detach()
        rows = out.reshape(-1, out.shape[-1]) if out.dim() == 2 or isinstance(module, nn.Linear) \
            else out.movedim(1, -1).reshape(-1, out.shape[1])  # fmt: skip
        if len(rows) == len(inputs[name]) and rows.shape[1] == len(modules[name].weight):
            products[name] = products.get(name, 0) + inputs[name].T @ rows.double()
        else:
            products[name] = None

    handles = [m.register_forward_pre_hook(take_input) for m in own]
    handles += [m.register_forward_hook(take_output) for m in theirs]
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                reference(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: p for name, p in products.items() if p is not None}


def kept_columns(module: nn.Module, kept_features: torch.Tensor) -> torch.Tensor:
    """Kept input rows' columns ``[m, D + 1]`` (the last, the bias, always kept) from kept
    input features ``[m, in_features]`` (channels of a convolution)."""
    per_feature = module.weight[0, 0].numel()  # kernel positions per input channel
    columns = kept_features.bool().repeat_interleave(per_feature, dim=1)
    return torch.cat([columns, columns.new_ones(len(columns), 1)], dim=1)


def refit_parameters(
    gram: torch.Tensor,
    module: nn.Module,
    kept: torch.Tensor,
    ridge: float = 1e-3,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit weights ``[m, *weight.shape]`` (zero on removed inputs) and biases ``[m, O]`` for
    ``m`` kept sets ``kept`` ``[m, D + 1]`` (see :func:`kept_columns`), toward the layer's own
    full output or, given ``targets`` ``[D + 1, O]``, a reference's (see
    :func:`reference_targets`)."""
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else weight.new_zeros(len(weight))
    theta = torch.cat([weight.flatten(1), bias.view(-1, 1)], dim=1).double().T  # [D + 1, O]
    d = kept.to(gram.device, torch.float64)  # [m, D + 1]
    scale = ridge * (gram.diagonal() * d).sum(1) / d.sum(1).clamp_min(1)  # λ per kept set
    lam = scale.clamp_min(1e-12).view(-1, 1)
    # the kept block (G_KK + λI) embedded in an identity, so one batched solve fits every set
    system = gram * (d.unsqueeze(2) * d.unsqueeze(1)) + torch.diag_embed(1 - d + lam * d)
    products = gram @ theta if targets is None else targets.to(gram)
    right = d.unsqueeze(2) * (products + lam.unsqueeze(2) * theta)
    fitted = torch.linalg.solve(system, right) * d.unsqueeze(2)  # [m, D + 1, O]
    weights = fitted[:, :-1].transpose(1, 2).reshape(len(kept), *weight.shape)
    return weights.to(weight.dtype), fitted[:, -1].to(weight.dtype)

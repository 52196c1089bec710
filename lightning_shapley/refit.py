"""Least-squares refit of a layer on the input features it keeps.

A consumer layer (linear, or a zero-padded 2-d convolution, grouped or not) with weights ``W``
``[O, D]`` over its input features (a convolution's unfolded patches, ``D = C·kh·kw``) and bias
``b`` loses some input features. Its kept weights and bias are refit so that, on calibration
inputs ``x`` ``[S, D]``, it reproduces its full output:

    θ = argmin ‖[x_K, 1] θ − (x Wᵀ + b)‖² + λ ‖θ − [W_K, b]ᵀ‖²

The ridge pulls toward the original weights, so that with fewer samples than features the refit
stays near them rather than overfitting (``λ`` is ``ridge`` times the mean diagonal of the Gram
matrix). Everything needed is the Gram matrix of ``[x, 1]``, accumulated once; any kept set is
then one linear solve, and many kept sets are one batched solve. When a removed feature is a
linear combination of kept ones, the refit is exact. A grouped convolution (depthwise included)
is refit group by group: each group's outputs read only its own input channels, so each has its
own Gram matrix ``[G, D/G + 1, D/G + 1]``.

The systems are symmetric positive definite (a Gram block plus ``λI``), solved by Cholesky
(:func:`spd_solve`), which cannot fail on dead, constant or duplicated inputs; where rounding
still breaks it, an eigenvalue pseudo-inverse takes over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.hooks import attached, watch_inputs

__all__ = [
    "check_refittable",
    "input_grams",
    "kept_columns",
    "reference_targets",
    "refit_parameters",
    "refittable",
    "spd_solve",
]


def spd_solve(system: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``system⁻¹ · right`` for symmetric positive (semi-)definite ``system`` ``[..., k, k]``
    and ``right`` ``[..., k, c]``.

    Cholesky first; the batch elements where it fails (numerically singular) are solved by a
    pseudo-inverse from the eigendecomposition instead, which never fails on finite input.
    """
    factor, info = torch.linalg.cholesky_ex(system)
    solved = torch.cholesky_solve(right, factor)
    failed = info != 0
    if bool(failed.any()):
        # non-finite entries (activations gone to nan) must not make the fallback raise
        values, vectors = torch.linalg.eigh(torch.nan_to_num(system[failed]))
        eps = torch.finfo(values.dtype).eps
        floor = values.abs().amax(-1, keepdim=True) * values.shape[-1] * eps
        inverse = torch.where(values > floor, 1 / values, torch.zeros_like(values))
        solved[failed] = vectors @ (inverse.unsqueeze(-1) * (vectors.mT @ right[failed]))
    return solved


def refittable(module: nn.Module) -> bool:
    """Whether :func:`refit_parameters` can refit ``module``: a linear layer, or a zero-padded
    2-d convolution (grouped and depthwise ones group by group)."""
    return isinstance(module, nn.Linear) or (
        type(module) is nn.Conv2d and module.padding_mode == "zeros"
    )


def check_refittable(name: str, module: nn.Module) -> None:
    """Raise a ``ValueError`` naming ``module`` unless it is :func:`refittable`."""
    if not refittable(module):
        raise ValueError(
            f"cannot refit {name!r} ({type(module).__name__}): only linear layers and "
            "zero-padded 2-d convolutions"
        )


def _groups(module: nn.Module) -> int:
    return getattr(module, "groups", 1)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``[S, G, D/G]`` per group ``G`` (1 but for a grouped
    convolution): patches of a convolution, rows of a linear layer."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, 1, x.shape[-1])
    patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return rows.view(len(rows), _groups(module), -1)


def _with_ones(rows: torch.Tensor) -> torch.Tensor:
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1).double()


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """``[G, D/G + 1, D/G + 1]`` Gram matrices of rows ``[S, G, D/G]`` with a ones column."""
    rows = _with_ones(rows).transpose(0, 1)  # [G, S, D/G + 1]
    return rows.mT @ rows


def input_grams(
    model: nn.Module, modules: dict[str, nn.Module], batches: list[torch.Tensor], folds: int = 1
) -> dict[str, tuple[torch.Tensor, int]]:
    """Gram matrices ``[folds, G, D/G + 1, D/G + 1]`` (float64) of each layer's input rows with
    a ones column appended, per group ``G`` of a convolution (1 otherwise), and the number of
    rows (examples × output positions), over the batches.

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
            parts.append(_gram(rows))
            count += len(rows)
        grams[names[module]] = (gram + torch.stack(parts), count)

    watch_inputs(model, modules.values(), batches, accumulate)
    return grams


def _output_rows(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Output rows ``[S, O]``: channels last."""
    if out.dim() == 2 or isinstance(module, nn.Linear):
        return out.reshape(-1, out.shape[-1])
    return out.movedim(1, -1).reshape(-1, out.shape[1])


def reference_targets(
    model: nn.Module,
    reference: nn.Module,
    modules: dict[str, nn.Module],
    batches: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``[G, D/G + 1, O/G]`` products ``[x, 1]ᵀ y_ref`` of each layer's input rows in ``model``
    with the same-named layer's output rows in ``reference`` (e.g. the unpruned model), group by
    group, for layers whose output sizes agree: a refit toward them reproduces the reference's
    outputs, which undoes the error that pruning upstream layers (or renormalising what the kept
    channels are) already caused. ``model`` and ``reference`` may be one module."""
    inputs: dict[str, list[torch.Tensor]] = {}
    products: dict[str, torch.Tensor | None] = {}
    own = {module: name for name, module in modules.items()}
    theirs = {reference.get_submodule(name): name for name in modules}

    def take_input(module: nn.Module, args: tuple) -> None:
        if module in own:
            inputs.setdefault(own[module], []).append(_with_ones(input_rows(module, args[0])))

    def take_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        name = theirs[module]
        rows = inputs[name].pop(0) if inputs.get(name) else None
        out = _output_rows(module, output.detach())
        groups = rows.shape[1] if rows is not None else 0
        if rows is None or len(out) != len(rows) or out.shape[1] != len(modules[name].weight):
            products[name] = None
        elif name not in products or products[name] is not None:
            out = out.double().view(len(out), groups, -1).transpose(0, 1)  # [G, S, O/G]
            products[name] = products.get(name, 0) + rows.transpose(0, 1).mT @ out

    with attached(own, before=take_input), attached(theirs, after=take_output), torch.no_grad():
        for x in batches:
            model(x)
            if reference is not model:
                reference(x)
    return {name: p for name, p in products.items() if p is not None}


def kept_columns(module: nn.Module, kept_features: torch.Tensor) -> torch.Tensor:
    """Kept input rows' columns ``[m, G, D/G + 1]`` (the last, the bias, always kept) from kept
    input features ``[m, in_features]`` (channels of a convolution), per group ``G``."""
    per_feature = module.weight[0, 0].numel()  # kernel positions per input channel
    columns = kept_features.bool().repeat_interleave(per_feature, dim=1)
    columns = columns.view(len(columns), _groups(module), -1)
    return torch.cat([columns, columns.new_ones(*columns.shape[:2], 1)], dim=2)


def refit_parameters(
    gram: torch.Tensor,
    module: nn.Module,
    kept: torch.Tensor,
    ridge: float = 1e-3,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit weights ``[m, *weight.shape]`` (zero on removed inputs) and biases ``[m, O]`` for
    ``m`` kept sets ``kept`` ``[m, G, D/G + 1]`` (see :func:`kept_columns`) from the Gram
    matrices ``gram`` ``[G, D/G + 1, D/G + 1]`` (see :func:`input_grams`), toward the layer's
    own full output or, given ``targets`` ``[G, D/G + 1, O/G]``, a reference's (see
    :func:`reference_targets`)."""
    weight = module.weight.detach()
    bias = module.bias.detach() if module.bias is not None else weight.new_zeros(len(weight))
    groups = _groups(module)
    theta = torch.cat([weight.flatten(1), bias.view(-1, 1)], dim=1).double()  # [O, D/G + 1]
    theta = theta.view(groups, -1, theta.shape[1]).mT.to(gram.device)  # [G, D/G + 1, O/G]
    d = kept.to(gram.device, torch.float64)  # [m, G, D/G + 1]
    scale = ridge * (gram.diagonal(dim1=-2, dim2=-1) * d).sum(-1) / d.sum(-1).clamp_min(1)
    lam = scale.clamp_min(1e-12).unsqueeze(-1)  # λ per kept set and group [m, G, 1]
    # the kept block (G_KK + λI) embedded in an identity, so one batched solve fits every set
    system = gram * (d.unsqueeze(-1) * d.unsqueeze(-2)) + torch.diag_embed(1 - d + lam * d)
    products = gram @ theta if targets is None else targets.to(gram)
    right = d.unsqueeze(-1) * (products + lam.unsqueeze(-1) * theta)
    fitted = spd_solve(system, right) * d.unsqueeze(-1)  # [m, G, D/G + 1, O/G]
    fitted = fitted.mT.reshape(len(kept), len(weight), -1)  # [m, O, D/G + 1]
    weights = fitted[..., :-1].reshape(len(kept), *weight.shape)
    return weights.to(weight.dtype), fitted[..., -1].to(weight.dtype)

"""What the calibration data says about the features a group's consumers read: their means and
the linear predictions of removed channels from kept ones.

Both the channel games (the ``mean`` and ``regression`` ablations, see
:mod:`~lightning_shapley.games.masking`) and the compensation after a prune (see
:mod:`~lightning_shapley.compensation`) read them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_shapley.hooks import watch_inputs
from lightning_shapley.pruning import Consumer
from lightning_shapley.refit import spd_solve

__all__ = ["LinearImputation", "consumer_input_means", "linear_imputations"]

_RANK_TOLERANCE = 1e-10  # eigenvalues below this share of the largest add no rank


class LinearImputation:
    """Removed channels predicted from kept ones: ``x_R ≈ μ_R + Σ_RK (Σ_KK + λI)⁻¹ (x_K − μ_K)``.

    At one consumer, each player (channel) owns ``f`` input features (1 for a convolution, the
    spatial positions for a linear layer after a flatten). ``μ`` ``[p, f]`` is each feature's
    calibration mean and ``Σ`` ``[p, p]`` the covariance between players, pooled over examples,
    positions and features. Removing a channel then costs the network only what the kept
    channels cannot linearly stand in for, which is what a pruned model whose consumer weights
    are refit can achieve (neuron merging is the special case of one stand-in per channel).
    ``λ`` is ``ridge`` times the mean variance.

    ``Σ = W Wᵀ`` is held as a factor ``W`` ``[p, r]`` whose rank ``r`` is at most the number of
    samples it was estimated on (dead, constant and duplicated channels add none), and the
    prediction is computed as ``Σ_{:,K} (Σ_KK + λI)⁻¹ = W (λI + W_Kᵀ W_K)⁻¹ W_Kᵀ``: one
    ``r × r`` symmetric positive-definite solve per coalition, which cannot be singular, and
    which stays small for a consumer that reads thousands of channels from few samples.

    Args:
        layout: ``[p, f]`` the consumer input features of each present player, in player order.
        players: ``[p]`` the player index of each row of ``layout``.
        mean: ``[p, f]`` feature means.
        factor: ``[p, r]`` a factor ``W`` of the player covariance, ``Σ = W Wᵀ``.
        ridge: Relative ridge ``λ``.
    """

    def __init__(
        self,
        layout: torch.Tensor,
        players: torch.Tensor,
        mean: torch.Tensor,
        factor: torch.Tensor,
        ridge: float = 1e-3,
    ) -> None:
        self.layout, self.players, self.mean = layout, players, mean
        self.factor = factor.double()
        variance = float(self.factor.pow(2).sum()) / max(1, len(self.factor))
        self.ridge = ridge * variance if variance > 0 else 1.0

    @classmethod
    def from_samples(
        cls,
        layout: torch.Tensor,
        players: torch.Tensor,
        mean: torch.Tensor,
        gram: torch.Tensor,
        count: int,
        rows: torch.Tensor | None = None,
        ridge: float = 1e-3,
    ) -> LinearImputation:
        """From the centred samples' Gram matrix ``gram`` ``[p, p]`` over ``count`` rows, or the
        rows ``[count, p]`` themselves when there are no more of them than players (then they
        are the factor, of rank ``count``)."""
        if rows is not None and len(rows) <= len(gram):
            return cls(layout, players, mean, rows.double().T / max(1, count) ** 0.5, ridge)
        # non-finite activations must reach the game's values, where they are reported
        values, vectors = torch.linalg.eigh(torch.nan_to_num(gram.double()) / max(1, count))
        keep = values > _RANK_TOLERANCE * values[-1].clamp_min(0)
        factor = vectors[:, keep] * values[keep].sqrt()
        return cls(layout, players, mean, factor, ridge)

    @property
    def rank(self) -> int:
        return self.factor.shape[1]

    def _systems(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``D W`` ``[m, p, r]`` (removed rows zero) and ``λI + W_Kᵀ W_K`` ``[m, r, r]``."""
        factor = self.factor.to(kept.device)
        kept_factor = factor * kept.to(torch.float64).unsqueeze(2)
        eye = torch.eye(self.rank, dtype=torch.float64, device=kept.device)
        return kept_factor, kept_factor.mT @ factor + self.ridge * eye

    def predictors(self, kept: torch.Tensor) -> torch.Tensor:
        """``[m, p, p]`` matrices ``G`` with ``x̂ − μ = G (x − μ)`` for kept sets ``[m, p]``
        (bool): ``Σ_{:,K} (Σ_KK + λI)⁻¹`` embedded, zero in removed columns."""
        kept_factor, system = self._systems(kept)
        return self.factor.to(kept.device) @ spd_solve(system, kept_factor.mT)

    def fill(self, y: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Replace removed players' features in ``y`` ``[m or 1, B, p, f, ...]`` by their
        prediction from the kept ones (``kept`` ``[m, p]``)."""
        shape = [1, 1, -1, self.layout.shape[1]] + [1] * (y.dim() - 4)
        centred = y - self.mean.view(shape)
        m = len(kept)
        if self.rank == 0:  # nothing varies: every channel is its mean
            predicted = torch.zeros_like(centred).expand(m, *y.shape[1:])
        else:
            kept_factor, system = self._systems(kept)
            reduced = spd_solve(system, kept_factor.mT).to(y.dtype)  # [m, r, p]
            if 2 * self.rank < len(self.factor):  # low rank: through the r coordinates
                coordinates = torch.einsum("mrp,mbp...->mbr...", reduced,
                                           centred.expand(m, *y.shape[1:]))  # fmt: skip
                predicted = torch.einsum("pr,mbr...->mbp...", self.factor.to(y), coordinates)
            else:
                g = self.factor.to(y) @ reduced  # [m, p, p]
                predicted = torch.einsum("mqp,mbp...->mbq...", g, centred.expand(m, *y.shape[1:]))
        keep = kept.to(y.dtype).view(m, 1, -1, *[1] * (y.dim() - 3))
        return y * keep + (predicted + self.mean.view(shape)) * (1 - keep)


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
        dim = consumers[name].feature_dim(x)
        flat = x.movedim(dim, -1).reshape(-1, x.shape[dim])
        sums[name] = sums.get(name, 0) + flat.sum(dim=0)
        counts[name] = counts.get(name, 0) + len(flat)

    watch_inputs(model, names, batches, accumulate)
    return {name: sums[name] / counts[name] for name in sums}


def linear_imputations(
    model: nn.Module,
    consumers: dict[str, Consumer],
    batches: list[torch.Tensor],
    means: dict[str, torch.Tensor],
    ridge: float = 1e-3,
) -> dict[str, LinearImputation]:
    """The :class:`LinearImputation` of each consumer from calibration batches.

    A consumer whose channels own different numbers of its input features (a linear layer
    reading flattened maps of several sizes) has none: it is left out, with one warning naming
    it, and its channels are best replaced by their means.

    Args:
        model: The network (unmasked).
        consumers: The consumers, by name.
        batches: Calibration inputs ``[B, ...]``.
        means: ``[in_features]`` mean input features by consumer (see
            :func:`consumer_input_means`).
        ridge: Relative ridge of the predictions.
    """
    layouts, uneven = {}, []
    for name, c in consumers.items():
        players = torch.unique(c.player_idx)
        rows = [torch.sort(c.feature_idx[c.player_idx == p]).values for p in players.tolist()]
        if len({len(r) for r in rows}) != 1:
            uneven.append(name)
            continue
        layouts[name] = (torch.stack(rows), players)
    if uneven:
        warnings.warn(
            f"regression ablation: the channels feeding {', '.join(map(repr, uneven))} own "
            "different numbers of their input features; their removed channels are replaced by "
            "their means there",
            stacklevel=3,
        )
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    samples: dict[str, list[torch.Tensor] | None] = {}
    names = {model.get_submodule(name): name for name in layouts}

    def accumulate(module: nn.Module, args: tuple) -> None:
        name, x = names[module], args[0]
        layout = layouts[name][0].to(x.device)
        dim = consumers[name].feature_dim(x)
        y = x.index_select(dim, layout.flatten()) - means[name][layout.flatten()].view(
            [-1 if d == dim else 1 for d in range(x.dim())]
        )
        y = y.movedim(dim, -1).reshape(-1, *layout.shape).transpose(1, 2).reshape(-1, len(layout))
        y = y.double()
        grams[name] = grams.get(name, 0) + y.T @ y
        counts[name] = counts.get(name, 0) + len(y)
        kept = samples.get(name, [])
        # the rows themselves while they are fewer than the channels: a factor of lower rank
        samples[name] = [*kept, y] if kept is not None and counts[name] <= len(layout) else None

    watch_inputs(model, names, batches, accumulate)
    imputations = {}
    for name, (layout, players) in layouts.items():
        rows = samples.get(name)
        imputations[name] = LinearImputation.from_samples(
            layout,
            players,
            means[name][layout.flatten()].view(layout.shape),
            grams[name],
            counts[name],
            torch.cat(rows) if rows else None,
            ridge,
        )
    return imputations

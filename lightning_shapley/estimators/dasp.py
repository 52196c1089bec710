r"""Deep Approximate Shapley Propagation (DASP; Ancona, Öztireli, Gross, ICML 2019) for channels.

The Shapley value of player ``i`` is the average over coalition sizes ``k = 0 … n−1`` of its
expected marginal contribution ``E[v(S ∪ {i}) − v(S)]``, ``S`` a uniformly random size-``k``
subset of the ``n − 1`` other players. DASP replaces the ``2^n`` evaluations by *moment
propagation*: for each ``(i, k)`` and ``i`` absent or present, the mean and variance of the
network's activations under the random ``S`` are pushed through the suffix (the layers after
the masked one), and the value is the metric at the propagated **mean logits** (DASP's own
output approximation; exact for a metric linear in the logits when the suffix is linear), or
optionally its average over Gaussian draws of the logits (``logit_samples``).

**Players are grouped features.** A player is a whole channel: its feature map ``[H, W]`` (or
its block of flattened features in a linear consumer) switches on and off together. The
consumer's input feature ``f`` of channel ``c(f)`` is ``x̃_f = a_f + m_{c(f)} d_f`` with
``a_f`` the ablation value (0, or the channel's calibration mean) and ``d_f = x_f − a_f``;
``m`` is the indicator of a size-``k`` subset of the ``N' = n − 1`` other players (``m_i``
fixed to 0 or 1). Sampling without replacement gives, with ``p = k / N'``::

    E[m_c] = p,   Var[m_c] = p (1 − p),   Cov[m_c, m_e] = −p (1 − p) / (N' − 1)   (c ≠ e)

so features of one channel are perfectly correlated (``Cov[x̃_f, x̃_g] = p(1−p) d_f d_g``)
and features of different channels are slightly anti-correlated. Treating each position as an
independent player would be wrong on both counts.

**First layer (the consumer) is exact.** The consumer (linear or convolution) is linear in the
indicators: its output unit ``u`` is ``y_u = base_u + m_i t_{iu} + Σ_{j≠i} m_j t_{ju}``, where
``t_{ju}`` is the contribution of *all* of channel ``j``'s features (every position it reads).
With ``P_u = Σ_{j≠i} t_{ju}`` and ``Q_u = Σ_{j≠i} t_{ju}²``::

    E[y_u]   = base_u + m_i t_{iu} + p P_u
    Var[y_u] = Σ_{j,l≠i} Cov[m_j, m_l] t_{ju} t_{lu} = p (1 − p) (N' Q_u − P_u²) / (N' − 1)

exactly, covariances between positions and channels included (``0`` when ``N' ≤ 1``).

**Further layers assume independent Gaussian inputs** (Lightweight Probabilistic Deep Networks,
Gast & Roth 2018), as DASP does: linear/conv ``μ → Wμ + b``, ``σ² → W² σ²``; eval-mode batch norm
is affine; ReLU gives rectified-Gaussian moments; average pooling is linear; max pooling folds
the window with Clark's (1961) moments of the max of two independent Gaussians, pairwise in a
balanced tree (exact for two inputs, an approximation beyond); flatten/view/reshape/dropout
(eval)/identity reshape both moments. Residual additions, concatenations, other activations
and anything else raise a :class:`ValueError` naming the node. At ``k = 0`` and ``k = n − 1``
the variance is 0 and the propagation is exact.

**Cost.** ``K`` coalition sizes (all ``n``, or ``n_sizes`` stratified at random) and two
distributions (``i`` out, ``i`` in) per player: ``2 n K`` *propagations*, each over the whole
calibration set; that is ``n_evals`` and what ``budget`` counts. A propagation does the
suffix's matrix work twice (mean with ``W``, variance with ``W²``) plus the element-wise ReLU and
max-pool formulas; measured on a CPU at 4–8 times one coalition evaluation of
:class:`~lightning_shapley.games.ChannelGame`'s cached suffix (DigitsCNN, LeNet-5, small VGG).
On top, one plain forward of the calibration set reads the consumer's input, and the consumer
alone runs about ``2 n`` times to split its output by channel (neither counted). The game itself
is never called.
"""

from __future__ import annotations

import torch

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.games.base import Game
from lightning_shapley.games.moments import MomentSuffix

__all__ = ["DASPShapley", "coalition_sizes"]


class DASPShapley(Estimator):
    """Deterministic Shapley values of a one-layer channel game by moment propagation.

    Args:
        n_sizes: Coalition sizes to propagate (``None``: all ``n``). With ``K < n``, the sizes
            ``0 … n−1`` are cut into ``K`` near-equal strata, one size is drawn per stratum
            (``seed``) and weighted by the stratum's width, which keeps the average over sizes
            unbiased.
        logit_samples: ``0`` (default, DASP's choice): the metric at the propagated mean
            logits. ``s > 0``: the metric averaged over ``s`` Gaussian draws of the logits with
            the propagated (diagonal) variances, one set of draws shared by all distributions
            (seeded). Costs ``s`` metric evaluations per distribution, no propagation; it helps
            step-like metrics such as accuracy, whose value at the mean logits ignores the spread.
        memory_budget_mb: Bound on the suffix activations (means and variances) of one pass.

    Example:
        >>> from torch import nn
        >>> from lightning_shapley.games import ChannelGame
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
        >>> game = ChannelGame(net, "0", (torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))))
        >>> result = DASPShapley().estimate(game)
        >>> result.values.shape, result.n_evals
        (torch.Size([4]), 32)
    """

    def __init__(
        self, n_sizes: int | None = None, logit_samples: int = 0, memory_budget_mb: float = 256
    ) -> None:
        if n_sizes is not None and (not isinstance(n_sizes, int) or n_sizes < 1):
            raise ValueError(f"n_sizes must be a positive integer or None, got {n_sizes!r}")
        if not isinstance(logit_samples, int) or logit_samples < 0:
            raise ValueError(f"logit_samples must be a non-negative integer, got {logit_samples!r}")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        self.n_sizes, self.logit_samples = n_sizes, logit_samples
        self.memory_budget = int(memory_budget_mb * 2**20)

    def min_budget(self, n_players: int) -> int:
        """One coalition size: ``2 n`` propagations."""
        return 2 * n_players

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Values ``[n]`` from ``K = min(n, n_sizes, budget // 2n)`` sizes (``stderr`` is 0:
        the estimate is deterministic given the sizes, its error is a bias)."""
        n = self._check_game(game)
        self._check_budget(budget, self.min_budget(n), type(self).__name__)
        n_sizes = n if self.n_sizes is None else min(n, self.n_sizes)
        if budget is not None:
            n_sizes = min(n_sizes, budget // (2 * n))
        sizes, weights = coalition_sizes(n, n_sizes, seed)
        suffix = MomentSuffix(game)
        marginals = suffix.marginals(sizes, self.memory_budget, self.logit_samples, seed)
        values = weights @ marginals
        return ShapleyEstimate(values, torch.zeros(n, dtype=torch.float64), 2 * n * len(sizes))

    def __repr__(self) -> str:
        return f"DASPShapley(n_sizes={self.n_sizes}, logit_samples={self.logit_samples})"


def coalition_sizes(n: int, n_sizes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sizes ``[K]`` and weights ``[K]`` (summing to 1) whose weighted average over sizes
    estimates the uniform average over ``0 … n−1``: all sizes when ``K = n``, else one random
    size per stratum of a near-equal split."""
    if n_sizes >= n:
        return torch.arange(n), torch.full((n,), 1 / n, dtype=torch.float64)
    bounds = torch.linspace(0, n, n_sizes + 1).round().long()
    widths = bounds[1:] - bounds[:-1]
    generator = torch.Generator().manual_seed(seed)
    offsets = (torch.rand(n_sizes, generator=generator, dtype=torch.float64) * widths).long()
    return bounds[:-1] + offsets, widths.double() / n

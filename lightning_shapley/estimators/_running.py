"""Per-player running moments of sampled marginal contributions, and Student-t quantiles."""

from __future__ import annotations

import math

import torch

__all__ = ["PairedMoments", "RunningMoments", "student_t_quantile"]


class RunningMoments:
    """Count, mean and variance of each player's samples, updated a batch at a time.

    Batches are merged with Chan et al.'s pairwise update, which stays accurate where a running
    sum of squares would cancel.

    Args:
        n_players: Number of players.

    Example:
        >>> moments = RunningMoments(2)
        >>> moments.update(torch.tensor([0, 0, 1]), torch.tensor([1.0, 3.0, 5.0]))
        >>> moments.mean.tolist(), moments.variance.tolist()
        ([2.0, 5.0], [2.0, inf])
    """

    def __init__(self, n_players: int) -> None:
        self.count = torch.zeros(n_players, dtype=torch.float64)
        self.mean = torch.zeros(n_players, dtype=torch.float64)
        self._m2 = torch.zeros(n_players, dtype=torch.float64)

    def update(self, players: torch.Tensor, samples: torch.Tensor) -> None:
        """Add ``samples`` ``[m]`` of the players ``players`` ``[m]`` (repeats allowed)."""
        samples = samples.to(torch.float64)
        n = len(self.count)
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, players, torch.ones_like(samples))
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, players, samples)
        mean = total / count.clamp_min(1)
        m2 = torch.zeros(n, dtype=torch.float64).index_add_(
            0, players, (samples - mean[players]) ** 2
        )
        merged = self.count + count
        delta = mean - self.mean
        self._m2 += m2 + delta**2 * self.count * count / merged.clamp_min(1)
        self.mean += delta * count / merged.clamp_min(1)
        self.count = merged

    @property
    def variance(self) -> torch.Tensor:
        """``[n]`` unbiased sample variance; ``inf`` for players with fewer than two samples."""
        variance = self._m2 / (self.count - 1).clamp_min(1)
        return torch.where(self.count >= 2, variance, torch.full_like(variance, math.inf))


def student_t_quantile(p: float, dof: torch.Tensor) -> torch.Tensor:
    """Quantile ``p`` of Student's t distribution for each of ``dof`` ``[m]`` degrees of freedom.

    Exact for one and two degrees of freedom; from three on, the Cornish–Fisher expansion of
    Abramowitz & Stegun 26.7.5 (off by less than 0.005 at ``p = 0.975`` and three degrees of
    freedom, less than 0.001 from five on). Degrees of freedom below one give ``inf``.

    Example:
        >>> student_t_quantile(0.975, torch.tensor([1.0, 2.0, 10.0, 1e9])).round(decimals=3)
        tensor([12.7060,  4.3030,  2.2280,  1.9600], dtype=torch.float64)
    """
    if not 0.5 <= p < 1.0:
        raise ValueError(f"p must lie in [0.5, 1), got {p}")
    nu = torch.as_tensor(dof, dtype=torch.float64)
    z = float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    safe = nu.clamp_min(1)
    t = z + g1 / safe + g2 / safe**2 + g3 / safe**3 + g4 / safe**4
    t = torch.where(nu == 1, torch.full_like(nu, math.tan(math.pi * (p - 0.5))), t)
    t = torch.where(nu == 2, torch.full_like(nu, (2 * p - 1) / math.sqrt(2 * p * (1 - p))), t)
    return torch.where(nu < 1, torch.full_like(nu, math.inf), t)


class PairedMoments:
    """Per-player moments of paired samples ``(d, h)``: a game's marginal contributions and a
    control variate's on the same coalitions, for regression-adjusted means.

    Example:
        >>> moments = PairedMoments(1)
        >>> moments.update(torch.tensor([0, 0, 0]), torch.tensor([1.0, 3.0, 5.0]),
        ...                torch.tensor([0.0, 1.0, 2.0]))
        >>> moments.coefficient(), moments.residual_mean(2.0).tolist()
        (2.0, [1.0])
    """

    def __init__(self, n_players: int) -> None:
        self.count = torch.zeros(n_players, dtype=torch.float64)
        self.mean_d = torch.zeros(n_players, dtype=torch.float64)
        self.mean_h = torch.zeros(n_players, dtype=torch.float64)
        self._dd = torch.zeros(n_players, dtype=torch.float64)
        self._hh = torch.zeros(n_players, dtype=torch.float64)
        self._dh = torch.zeros(n_players, dtype=torch.float64)

    def update(self, players: torch.Tensor, d: torch.Tensor, h: torch.Tensor) -> None:
        """Add samples ``d`` and ``h`` ``[m]`` of ``players`` ``[m]`` (Chan et al.'s merge)."""
        d, h, n = d.double(), h.double(), len(self.count)

        def per_player(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.float64).index_add_(0, players, values)

        count = per_player(torch.ones_like(d))
        mean_d, mean_h = per_player(d) / count.clamp_min(1), per_player(h) / count.clamp_min(1)
        cd, ch = d - mean_d[players], h - mean_h[players]
        merged = self.count + count
        delta_d, delta_h = mean_d - self.mean_d, mean_h - self.mean_h
        weight = self.count * count / merged.clamp_min(1)
        self._dd += per_player(cd * cd) + delta_d * delta_d * weight
        self._hh += per_player(ch * ch) + delta_h * delta_h * weight
        self._dh += per_player(cd * ch) + delta_d * delta_h * weight
        self.mean_d += delta_d * count / merged.clamp_min(1)
        self.mean_h += delta_h * count / merged.clamp_min(1)
        self.count = merged

    def coefficient(self) -> float:
        """The control's coefficient ``c`` that minimizes the residual variance, pooled over
        players (within each player's samples); 1 before there is any spread."""
        hh = float(self._hh.sum())
        return float(self._dh.sum()) / hh if hh > 0 else 1.0

    def residual_mean(self, c: float) -> torch.Tensor:
        """``[n]`` mean of ``d − c·h``."""
        return self.mean_d - c * self.mean_h

    def residual_variance(self, c: float) -> torch.Tensor:
        """``[n]`` unbiased variance of ``d − c·h``; ``inf`` below two samples."""
        m2 = (self._dd - 2 * c * self._dh + c * c * self._hh).clamp_min(0)
        variance = m2 / (self.count - 1).clamp_min(1)
        return torch.where(self.count >= 2, variance, torch.full_like(variance, math.inf))

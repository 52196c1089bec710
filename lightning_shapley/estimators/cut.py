"""The pruning cut: which players fall below it, and how sure an estimator is of each."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Self

import torch

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate

__all__ = ["CutEstimate", "CutEstimator", "check_cut", "resolve_cut"]


def check_cut(cut: float | int) -> float | int:
    """Validate a cut given as a share of the players in ``(0, 1)`` or a count ``>= 1``.

    Raises:
        ValueError: If ``cut`` is neither.
    """
    if isinstance(cut, bool) or not isinstance(cut, int | float):
        raise ValueError(f"cut must be a share in (0, 1) or a number of players, got {cut!r}")
    if isinstance(cut, float) and not 0.0 < cut < 1.0:
        raise ValueError(f"cut as a share of the players must lie in (0, 1), got {cut}")
    if isinstance(cut, int) and cut < 1:
        raise ValueError(f"cut as a number of players must be at least 1, got {cut}")
    return cut


def resolve_cut(cut: float | int, n_players: int) -> int:
    """The number ``k`` of players below the cut in a game of ``n_players``.

    A share is rounded down, as a pruning ratio is (``0.25`` of 10 players is 2).

    Raises:
        ValueError: If the cut leaves no player on one of its sides.

    Example:
        >>> resolve_cut(0.25, 16), resolve_cut(3, 16)
        (4, 3)
    """
    k = int(cut * n_players) if isinstance(cut, float) else cut
    if not 1 <= k <= n_players - 1:
        raise ValueError(
            f"cut={cut!r} puts {k} of {n_players} players below the cut; it must leave at "
            "least one player on each side"
        )
    return k


class CutEstimator(Estimator):
    """An estimator that works at a cut (the bandit, TMAB and cut-permutation samplers): it
    spends its budget on telling which players fall below the cut, not on every value.

    Args:
        cut: The share of players below the cut in ``(0, 1)``, or their number.
    """

    def __init__(self, cut: float | int = 0.25) -> None:
        self.cut = check_cut(cut)

    def at_cut(self, cut: float | int, n_players: int) -> Self:
        """A copy working at ``cut`` (a share or a number) in a game of ``n_players``, kept
        to at least one player on each side.

        Example:
            >>> from lightning_shapley.estimators import BanditShapley
            >>> BanditShapley(cut=0.25).at_cut(0.5, 10).cut, BanditShapley().at_cut(0.99, 10).cut
            (5, 9)
        """
        k = int(cut * n_players) if isinstance(cut, float) else cut
        estimator = copy.copy(self)
        estimator.cut = max(1, min(n_players - 1, k))
        return estimator


@dataclass(frozen=True)
class CutEstimate(ShapleyEstimate):
    """Shapley estimates with what they say about the cut between the ``k`` lowest and the rest.

    ``values``, ``stderr`` and ``n_evals`` mean what they mean in :class:`ShapleyEstimate`.

    Attributes:
        k: Players below the cut.
        below: ``[n]`` True for the ``k`` players with the lowest estimates.
        settled: ``[n]`` True where the player's confidence interval lies wholly on its side of
            the boundary value.
        radius: ``[n]`` half-width of each player's confidence interval (``inf`` before it has
            enough samples).
        boundary: The value the intervals are compared with: the midpoint of the ``k``-th and
            ``(k + 1)``-th lowest estimates.
        confidence: Nominal confidence of each interval (``1 − δ``).
        n_samples: ``[n]`` marginal contributions each player's estimate rests on.
    """

    k: int
    below: torch.Tensor
    settled: torch.Tensor
    radius: torch.Tensor
    boundary: float
    confidence: float
    n_samples: torch.Tensor

    @property
    def settled_below(self) -> torch.Tensor:
        """``[n]`` True for players confidently below the cut."""
        return self.below & self.settled

    @property
    def settled_above(self) -> torch.Tensor:
        """``[n]`` True for players confidently above the cut."""
        return ~self.below & self.settled

    @property
    def all_settled(self) -> bool:
        """Whether every player is settled, i.e. the cut is known at the stated confidence."""
        return bool(self.settled.all())


def cut_estimate(
    values: torch.Tensor,
    stderr: torch.Tensor,
    radius: torch.Tensor,
    k: int,
    n_evals: int,
    confidence: float,
    n_samples: torch.Tensor,
) -> CutEstimate:
    """Assemble a :class:`CutEstimate` from estimates ``[n]`` and interval radii ``[n]``."""
    below = torch.zeros(len(values), dtype=torch.bool)
    below[torch.argsort(values, stable=True)[:k]] = True
    boundary = boundary_value(values, k)
    return CutEstimate(
        values=values,
        stderr=stderr,
        n_evals=n_evals,
        k=k,
        below=below,
        settled=(values - boundary).abs() > radius,
        radius=radius,
        boundary=boundary,
        confidence=confidence,
        n_samples=n_samples,
    )


def boundary_value(values: torch.Tensor, k: int) -> float:
    """The midpoint of the ``k``-th and ``(k + 1)``-th lowest of ``values`` ``[n]``."""
    lowest = torch.sort(values).values
    return float((lowest[k - 1] + lowest[k]) / 2)

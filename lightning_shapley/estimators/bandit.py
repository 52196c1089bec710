"""BanditShapley: the fewest game evaluations that settle which players fall below the cut."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_shapley.estimators._running import (
    PairedMoments,
    RunningMoments,
    student_t_quantile,
)
from lightning_shapley.estimators.cut import (
    CutEstimate,
    CutEstimator,
    boundary_value,
    cut_estimate,
    resolve_cut,
)
from lightning_shapley.games.base import Game
from lightning_shapley.games.surrogate import QuadraticGame

__all__ = ["BanditShapley"]

MIN_SCREENED = 8
"""Fewest players screened in (all of them in a smaller game): the surrogate's error, which
settles the players never sampled, is measured on them."""

ROUND_GROWTH = 0.1
"""A round costs at least this share of the evaluations spent so far: rounds grow with the run,
so a player settles at most about 10 % later than it could have."""


class BanditShapley(CutEstimator):
    """Settle which players fall below the cut, sampling only the players still in doubt.

    The ingredients, each taken out in turn in ``benchmarks/estimator_quality.py``:

    1. **Shared coalitions in complement pairs.** A round draws base coalitions ``B`` (sizes
       cycling through ``0 … n`` in random order, members uniform) with their complements
       ``N ∖ B``. Each player ``i`` still in doubt is flipped in both: ``v(B) − v(B ∖ {i})`` if
       ``i ∈ B``, ``v(B ∪ {i}) − v(B)`` if not, and the same in the complement. ``v(B)`` is
       shared by all of them (as in CMCS, Kolpaczki et al. 2021), and the size of the
       coalition a player joins is uniform over ``0 … n − 1`` with uniform members: the
       Shapley distribution, so the mean is unbiased with no truncation. The two flips join
       coalitions of sizes ``s`` and ``n − 1 − s`` that split the other players between them,
       like an antithetic pair of permutations: their average is exact on games with only
       pairwise interactions, and one sample is that average.
    2. **Radii from the observed spread.** Each player's interval is a Student-t interval,
       ``t(1 − δ/2, m − 1) · sd / sqrt(m)`` over its ``m`` samples, not a bound from the
       metric's full range (TMAB's ``R``), which barely shrinks at these budgets.
    3. **Focus.** A player is in doubt while it has fewer than ``min_samples`` samples or its
       interval contains the boundary value (the midpoint of the ``k``-th and ``(k + 1)``-th
       lowest estimates); only those players are flipped, so a base pair costs
       ``2 · (1 + players in doubt)`` evaluations, and once the far players settle nearly all
       evaluations go to the few either side of the cut.
    4. **A stopping rule.** When no player is in doubt the sampler stops and leaves the rest
       of the budget unused.

    Optionally (``exact_border=True``), ``v(N)``, ``v(∅)``, ``v(N ∖ {i})`` and ``v({i})`` are
    evaluated up front (``2n + 2`` evaluations) and only the interior sizes ``1 … n − 2`` are
    sampled. It pays without complement pairs; with them it does not, since a pair that lands
    on the border sizes returns their exact sum anyway (measured in the benchmark).

    The stated confidence is per player and nominal: each interval covers with probability
    about ``1 − δ`` at a fixed sample size, with no correction for the repeated looks or the
    number of players. The benchmark reports how often settled players were on the wrong side.

    Rounds grow with the evaluations spent (``ROUND_GROWTH``), independently of the budget, so
    a run with a larger budget continues the run with a smaller one (same seed, same prefix).

    Args:
        cut: Share of the players below the cut, in ``(0, 1)``, or their number.
        delta: Error probability ``δ`` of each player's interval.
        min_samples: Samples a player needs before it may settle (at least 2).
        antithetic: Flip each player in complement pairs of base coalitions; without, every
            base is drawn independently and a sample is one flip.
        exact_border: Evaluate the border strata exactly up front and sample only the
            interior sizes.
        screen: With a control game (see :meth:`estimate`): sample at first only this share
            of the players (at least ``MIN_SCREENED``), those the control's Shapley values put
            nearest the cut. Their samples measure the surrogate's error (the spread of their
            residual means); a player screened out joins them once its estimate lies within
            that error of the boundary, and is settled on its side while it lies further.
            ``None``: sample every player.
        max_batch: Most coalitions per call to the game.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([0.1, 0.2, 3.0, 4.0, 5.0, 6.0]))
        >>> result = BanditShapley(cut=2).estimate(game, budget=200, seed=0)
        >>> result.below.tolist(), result.all_settled
        ([True, True, False, False, False, False], True)
    """

    def __init__(
        self,
        cut: float | int = 0.25,
        *,
        delta: float = 0.05,
        min_samples: int = 4,
        antithetic: bool = True,
        exact_border: bool = False,
        screen: float | None = None,
        max_batch: int = 4096,
    ) -> None:
        super().__init__(cut)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
            raise ValueError(f"min_samples must be an integer of at least 2, got {min_samples!r}")
        if max_batch < 4:
            raise ValueError(f"max_batch must be at least 4 coalitions, got {max_batch}")
        self.delta, self.min_samples, self.max_batch = delta, min_samples, max_batch
        if screen is not None and not 0.0 < screen <= 1.0:
            raise ValueError(f"screen must be a share in (0, 1] or None, got {screen!r}")
        self.antithetic, self.exact_border, self.screen = antithetic, exact_border, screen

    def min_budget(self, n_players: int, *, screened: bool = False) -> int:
        """A base (and its complement) with every player flipped (every screened-in player, with
        a control game and ``screened``), or the border strata."""
        if self.exact_border:
            return 2 * n_players + 2
        return (2 if self.antithetic else 1) * (self._sampled_first(n_players, screened) + 1)

    def _sampled_first(self, n_players: int, screened: bool) -> int:
        if screened and self.screen is not None:
            return min(n_players, max(MIN_SCREENED, math.ceil(self.screen * n_players)))
        return n_players

    def can_settle(self, n_players: int, budget: int, *, screened: bool = False) -> bool:
        """Whether ``budget`` evaluations give the players sampled first (all, or the screened
        share) the ``min_samples`` samples any of them needs to settle.

        Example:
            >>> BanditShapley(min_samples=3).can_settle(10, 66), BanditShapley().can_settle(10, 20)
            (True, False)
        """
        sampled = self._sampled_first(n_players, screened)
        return budget >= self.min_samples * (2 if self.antithetic else 1) * (1 + sampled)

    def estimate(
        self,
        game: Game,
        budget: int | None = None,
        *,
        seed: int = 0,
        control: QuadraticGame | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CutEstimate:
        """Sample until every player is settled, ``budget`` evaluations are spent or
        ``should_stop()`` says so (checked between rounds; the estimate so far is returned).

        Args:
            game: The game.
            budget: Most game evaluations.
            seed: Seed of the coalitions drawn.
            control: A cheap game with exact Shapley values that resembles ``game`` (see
                :class:`~lightning_shapley.games.surrogate.QuadraticGame`): each sample
                becomes ``Δv − c·Δv̂`` on the same coalitions, ``c`` fitted to the samples so
                far (regression-adjusted Monte Carlo), and ``c·φ̂`` is added back. With
                ``screen``, it also decides which players are sampled at all.
            should_stop: Called between rounds; True ends the sampling.
        """
        n = self._check_game(game)
        k = resolve_cut(self.cut, n)
        if budget is None:
            raise ValueError("BanditShapley needs a budget (game evaluations)")
        if control is not None and (self.exact_border or control.n_players != n):
            raise ValueError(
                f"control must be a game of the same {n} players, and needs exact_border=False"
            )
        unit = 2 if self.antithetic else 1
        screened = control is not None and self.screen is not None
        self._check_budget(budget, self.min_budget(n, screened=screened), "BanditShapley")
        generator = torch.Generator().manual_seed(seed)

        used, strata = 0, (0, n - 1)  # the coalition sizes to sample, both included
        exact_part = fallback = torch.zeros(n, dtype=torch.float64)
        if self.exact_border:
            eye, ones = torch.eye(n, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)
            border = torch.as_tensor(game(torch.cat([ones, ~eye, eye, ~ones]))).double()
            used, strata = len(border), (1, n - 2)
            top = border[0] - border[1 : n + 1]  # v(N) − v(N ∖ {i}): size n − 1
            bottom = border[n + 1 : -1] - border[-1]  # v({i}) − v(∅): size 0
            exact_part, fallback = (top + bottom) / n, (top + bottom) / 2
        weight = (strata[1] - strata[0] + 1) / n  # share of the sampled sizes in φ

        moments = _Moments(n, control)
        sizes = _SizeCycle(strata[0], strata[1] + 1, generator)
        window = torch.ones(n, dtype=torch.bool)
        if screened:
            window = _near_cut(control.shapley_values, k, self._sampled_first(n, True))
        doubt = window & (weight > 0)

        def values() -> torch.Tensor:
            return exact_part + weight * moments.values(fallback)

        def radius() -> torch.Tensor:
            """Student-t half-widths of the sampled players; the surrogate's measured error
            (``inf`` until measured) for the players never screened in."""
            if weight == 0:
                return torch.zeros(n, dtype=torch.float64)
            quantile = student_t_quantile(1 - self.delta / 2, moments.count - 1)
            spread = (moments.variance() / moments.count.clamp_min(1)).sqrt()
            unsampled = math.inf
            if not window.all():
                unsampled = moments.screening_margin(self.delta, self.min_samples)
            sampled = torch.where(moments.count >= 2, weight * quantile * spread, math.inf)
            return torch.where(window, sampled, unsampled)

        while doubt.any() and not (should_stop is not None and should_stop()):
            per_base = unit * (1 + int(doubt.sum()))
            target = min(self.max_batch, max(per_base, math.ceil(ROUND_GROWTH * used)))
            bases = min(target, budget - used) // per_base
            if bases == 0:
                break
            base = _coalitions(sizes.take(bases), n, generator)
            players, samples, spent = _flips(
                game, base, doubt, strata, self.antithetic, budget - used, control
            )
            if spent == 0:
                break
            used += spent
            moments.update(players, samples)
            estimate = values()
            distance = (estimate - boundary_value(estimate, k)).abs()
            if not window.all():  # a screened player joins once the surrogate may be wrong
                margin = moments.screening_margin(self.delta, self.min_samples)
                window |= distance <= (margin if math.isfinite(margin) else 0.0)
            doubt = window & ((distance <= radius()) | (moments.count < self.min_samples))

        stderr = weight * (moments.variance() / moments.count.clamp_min(1)).sqrt()
        stderr = torch.where(moments.count >= 2, stderr, math.nan if weight > 0 else 0.0)
        return cut_estimate(
            values(), stderr, radius(), k, used, 1 - self.delta, moments.count.clone()
        )


class _Moments:
    """Each player's sampled marginal contributions, plain or regression-adjusted by a control
    game with known Shapley values."""

    def __init__(self, n: int, control: QuadraticGame | None) -> None:
        self.control = control
        self.plain = RunningMoments(n) if control is None else None
        self.paired = PairedMoments(n) if control is not None else None

    @property
    def count(self) -> torch.Tensor:
        return self.plain.count if self.paired is None else self.paired.count

    def update(self, players: torch.Tensor, samples: torch.Tensor) -> None:
        if self.paired is None:
            self.plain.update(players, samples)
        else:
            self.paired.update(players, samples[:, 0], samples[:, 1])

    def _coefficient(self) -> float:
        return max(0.0, self.paired.coefficient())

    def values(self, fallback: torch.Tensor) -> torch.Tensor:
        """``[n]`` estimates; unsampled players get ``fallback``, or with a control its
        ``c·φ̂`` plus the mean residual of the sampled players."""
        if self.paired is None:
            return torch.where(self.count > 0, self.plain.mean, fallback)
        c, sampled = self._coefficient(), self.count > 0
        residual = self.paired.residual_mean(c)
        offset = residual[sampled].mean() if sampled.any() else torch.tensor(0.0)
        return c * self.control.shapley_values + torch.where(sampled, residual, offset)

    def variance(self) -> torch.Tensor:
        if self.paired is None:
            return self.plain.variance
        return self.paired.residual_variance(self._coefficient())

    def screening_margin(self, delta: float, min_samples: int) -> float:
        """How far from the boundary an unsampled player must lie to stay screened out (and be
        settled on the surrogate's word): the spread of the surrogate's errors (the residual
        means) over the well-sampled players; ``inf`` before two of them are."""
        known = self.count >= min_samples
        if int(known.sum()) < 2:
            return math.inf
        spread = float(self.paired.residual_mean(self._coefficient())[known].std())
        return float(torch.special.ndtri(torch.tensor(1 - delta / 2))) * spread


def _near_cut(values: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """``[n]`` the ``width`` players whose ``values`` rank nearest the cut at ``k``."""
    n = len(values)
    low = max(0, min(n - width, k - width // 2))
    window = torch.zeros(n, dtype=torch.bool)
    window[torch.argsort(values, stable=True)[low : low + width]] = True
    return window


class _SizeCycle:
    """Base-coalition sizes ``low … high``, each once per cycle, cycles in random order."""

    def __init__(self, low: int, high: int, generator: torch.Generator) -> None:
        self.low, self.high, self.generator = low, high, generator
        self.queue = torch.empty(0, dtype=torch.long)

    def take(self, m: int) -> torch.Tensor:
        while len(self.queue) < m:
            cycle = torch.randperm(self.high - self.low + 1, generator=self.generator) + self.low
            self.queue = torch.cat([self.queue, cycle])
        taken, self.queue = self.queue[:m], self.queue[m:]
        return taken


def _coalitions(sizes: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random coalitions ``[m, n]`` of the given sizes ``[m]``."""
    ranks = torch.argsort(torch.rand(len(sizes), n, generator=generator), dim=1)
    return ranks < sizes.unsqueeze(1)


def _flips(
    game: Game,
    base: torch.Tensor,
    doubt: torch.Tensor,
    strata: tuple[int, int],
    antithetic: bool,
    budget: int,
    control: QuadraticGame | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Marginal contributions of the players in doubt, each flipped in the base coalitions.

    A player ``i`` flipped in ``B`` gives ``v(B) − v(B ∖ {i})`` if ``i ∈ B`` and
    ``v(B ∪ {i}) − v(B)`` if not, a sample at the size of the coalition it joins. With a base
    of size uniform over ``low … high + 1`` that size is uniform over ``low … high`` for every
    player; flips landing outside those sizes are skipped.

    Args:
        game: The game.
        base: ``[m, n]`` base coalitions.
        doubt: ``[n]`` the players to flip.
        strata: ``(low, high)`` the coalition sizes sampled.
        antithetic: Also flip in the complements ``N ∖ B`` and average the two flips (the
            complement puts the player at size ``n − 1 − s``, and the player is valid in both).
        budget: Most evaluations to spend; bases that do not fit are dropped whole.
        control: A second game evaluated on the same coalitions (not counted).

    Returns:
        ``(players [s], samples [s], evaluations)``; with ``control``, samples ``[s, 2]``
        (the game's and the control's).
    """
    joined = base.sum(1, keepdim=True) - base.long()  # size of the coalition the player joins
    flipped = doubt & (joined >= strata[0]) & (joined <= strata[1])
    unit = 2 if antithetic else 1
    fits = (unit * (1 + flipped.sum(1))).cumsum(0) <= budget
    base, flipped = base[fits & flipped.any(1)], flipped[fits & flipped.any(1)]
    if len(base) == 0:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64), 0
    if antithetic:
        base, flipped = torch.cat([base, ~base]), torch.cat([flipped, flipped])

    rows, players = torch.nonzero(flipped, as_tuple=True)
    flips = base[rows].clone()
    flips[torch.arange(len(rows)), players] ^= True
    coalitions = torch.cat([base, flips])
    values = torch.as_tensor(game(coalitions)).double()
    if control is not None:
        values = torch.stack([values, control(coalitions)], dim=1)
    at_base, at_flip = values[: len(base)][rows], values[len(base) :]
    inside = base[rows, players].view(-1, *[1] * (values.dim() - 1))
    marginal = torch.where(inside, at_base - at_flip, at_flip - at_base)
    spent = len(base) + len(flips)
    if not antithetic:
        return players, marginal, spent
    half = len(rows) // 2  # the rows of B come first, then the same players in N ∖ B
    return players[:half], (marginal[:half] + marginal[half:]) / 2, spent

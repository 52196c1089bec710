"""Neuron Shapley's truncated multi-armed-bandit sampler (TMAB-Shapley), for a pruning cut."""

from __future__ import annotations

import math

import torch

from lightning_shapley.estimators._running import RunningMoments
from lightning_shapley.estimators.cut import (
    CutEstimate,
    CutEstimator,
    boundary_value,
    cut_estimate,
    resolve_cut,
)
from lightning_shapley.games.base import Game

__all__ = ["TMABShapley", "bernstein_radius"]


def bernstein_radius(
    variance: torch.Tensor, count: torch.Tensor, value_range: float, delta: float
) -> torch.Tensor:
    """Neuron Shapley's empirical-Bernstein confidence radius (Maurer & Pontil 2009).

    ``cb = sqrt(2 · Var · ln(2/δ) / n) + 7/3 · R · ln(2/δ) / (n − 1)`` for ``n >= 2`` samples;
    ``R`` itself for fewer, as in the authors' code.

    Args:
        variance: ``[m]`` unbiased sample variances of the marginal contributions.
        count: ``[m]`` number of samples behind each variance.
        value_range: ``R``, the range of the marginal contributions.
        delta: Error probability ``δ`` of each interval.

    Example:
        >>> r = bernstein_radius(torch.tensor([0.04]), torch.tensor([10.0]), 1.0, 0.2)
        >>> round(r.item(), 4)
        0.7327
    """
    count = torch.as_tensor(count, dtype=torch.float64)
    log_term = math.log(2 / delta)
    enough = count >= 2
    safe = torch.where(enough, count, torch.full_like(count, 2.0))
    spread = torch.where(enough, torch.as_tensor(variance, dtype=torch.float64), 0.0)
    radius = (2 * spread * log_term / safe).sqrt() + 7 / 3 * value_range * log_term / (safe - 1)
    return torch.where(enough, radius, torch.full_like(radius, value_range))


class TMABShapley(CutEstimator):
    """TMAB-Shapley (Ghorbani & Zou 2020) separating the ``k`` lowest players from the rest.

    Random permutations are walked in the removal direction, from the full coalition to the
    empty one; the marginal contribution of the player removed at each step is the value lost.
    Every player keeps the running mean and variance of its marginal contributions and an
    empirical-Bernstein confidence radius (:func:`bernstein_radius`, with ``δ`` and the range
    ``R``). A player is *active* while its interval contains the boundary value; the sampler
    stops when no player is active or the budget is spent. The authors' boundary for their top
    ``k`` is the value of the first player outside it; for a cut, which has two sides, it is the
    midpoint of the ``k``-th and ``(k + 1)``-th lowest means.

    Along a permutation, an inactive player is removed without evaluating the game and gets no
    sample from that permutation. An active player needs the value before and after its
    removal: the value after the previous step is reused, so only an active player that follows
    inactive ones costs a second evaluation (the coalition without them), exactly as in the
    authors' code. Truncation: once the value after a removal has been at or below
    ``chance_value + tolerance · R`` for ``patience`` consecutive evaluated steps, the rest of
    the permutation is not evaluated and every active player still in it is recorded with a
    marginal contribution of 0 — Neuron Shapley's choice, which saves evaluations in the
    near-chance tail at a price: the true contributions recorded as 0 add up to
    ``v(coalition left) − v(∅)``, at most ``tolerance · R`` with the default chance value, a
    bias shared among those players. No player is dropped silently: an active player gets
    exactly one sample (measured or 0) from every permutation it is active in.

    ``permutations_per_call`` permutations are walked in lockstep, so each call to the game
    evaluates one step of each. The active set is updated between these groups, as the
    authors' parallel workers did between permutations. A group is only started if it fits the
    remaining budget even without truncation, so the budget is never exceeded.

    Args:
        cut: Share of the players below the cut, in ``(0, 1)``, or their number. To separate
            the ``k`` highest players, cut at ``n − k``.
        delta: Error probability ``δ`` of each confidence interval (0.2 in the paper).
        value_range: ``R``; by default ``|v(N) − v(∅)|``, the range the metric spans in this
            game (1 if that is 0).
        tolerance: Truncation tolerance as a share of ``R`` (0.2, as in the authors' code).
        patience: Consecutive near-chance steps before truncating (6: the authors truncate once
            their counter exceeds 5).
        chance_value: The value of a network at chance level; by default ``v(∅)``, evaluated
            once.
        permutations_per_call: Permutations walked together.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([0.1, 0.2, 3.0, 4.0, 5.0, 6.0]))
        >>> result = TMABShapley(cut=2).estimate(game, budget=600, seed=0)
        >>> result.below.tolist()
        [True, True, False, False, False, False]
    """

    def __init__(
        self,
        cut: float | int = 0.25,
        *,
        delta: float = 0.2,
        value_range: float | None = None,
        tolerance: float = 0.2,
        patience: int = 6,
        chance_value: float | None = None,
        permutations_per_call: int = 32,
    ) -> None:
        super().__init__(cut)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta}")
        if value_range is not None and not value_range > 0:
            raise ValueError(
                f"value_range must be positive (or None for |v(N) − v(∅)|), got {value_range}"
            )
        if not tolerance >= 0:
            raise ValueError(
                f"tolerance must be a non-negative share of the range, got {tolerance}"
            )
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive number of steps, got {patience!r}")
        if permutations_per_call < 1:
            raise ValueError(
                f"permutations_per_call must be at least 1, got {permutations_per_call}"
            )
        self.delta, self.value_range = delta, value_range
        self.tolerance, self.patience = tolerance, patience
        self.chance_value = chance_value
        self.permutations_per_call = permutations_per_call

    def min_budget(self, n_players: int) -> int:
        """``v(N)``, ``v(∅)`` and one permutation."""
        return n_players + 1

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> CutEstimate:
        """Sample until no player is active or ``budget`` evaluations are spent."""
        n = self._check_game(game)
        k = resolve_cut(self.cut, n)
        if budget is None:
            raise ValueError("TMABShapley needs a budget (game evaluations)")
        self._check_budget(budget, self.min_budget(n), "TMABShapley (v(N), v(∅), a permutation)")
        generator = torch.Generator().manual_seed(seed)

        ends = torch.as_tensor(game(torch.tensor([[True] * n, [False] * n]))).double()
        full, empty = float(ends[0]), float(ends[1])
        value_range = self.value_range or abs(full - empty) or 1.0
        chance = empty if self.chance_value is None else self.chance_value
        floor = chance + self.tolerance * value_range

        moments = RunningMoments(n)
        active = torch.ones(n, dtype=torch.bool)
        used = 2
        while active.any():
            orders = torch.argsort(torch.rand(self.permutations_per_call, n, generator=generator))
            cost = _walk_cost(active[orders]).cumsum(0)
            orders = orders[cost <= budget - used]
            if len(orders) == 0:
                break
            players, samples, spent = _walk(game, orders, active, full, empty, floor, self.patience)
            used += spent
            moments.update(players, samples)
            radius = bernstein_radius(moments.variance, moments.count, value_range, self.delta)
            active = (moments.mean - boundary_value(moments.mean, k)).abs() < radius

        radius = bernstein_radius(moments.variance, moments.count, value_range, self.delta)
        stderr = (moments.variance / moments.count.clamp_min(1)).sqrt()
        stderr = torch.where(moments.count >= 2, stderr, torch.full_like(stderr, math.nan))
        return cut_estimate(
            moments.mean.clone(), stderr, radius, k, used, 1 - self.delta, moments.count.clone()
        )


def _walk_cost(active_in_order: torch.Tensor) -> torch.Tensor:
    """Evaluations ``[p]`` of each permutation walked without truncation.

    Args:
        active_in_order: ``[p, n]`` whether the player at each position is active.
    """
    n = active_in_order.shape[1]
    after = active_in_order[:, : n - 1].sum(1)  # the coalition after the last step is ∅, known
    stale = active_in_order[:, 1:] & ~active_in_order[:, :-1]  # inactive players skipped before
    return after + stale.sum(1)


def _walk(
    game: Game,
    orders: torch.Tensor,
    active: torch.Tensor,
    full: float,
    empty: float,
    floor: float,
    patience: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Walk permutations ``orders`` ``[p, n]`` in lockstep, one active step per call.

    Returns:
        ``(players [s], marginals [s], evaluations)``: the samples recorded (truncated players
        with marginal 0) and the number of coalitions evaluated.
    """
    p, n = orders.shape
    position = torch.argsort(orders, dim=1)  # [p, n]: step at which each player is removed
    active_in_order = active[orders]
    steps = torch.arange(n)
    pointer = torch.zeros(p, dtype=torch.long)  # next position to walk
    before = torch.full((p,), full, dtype=torch.float64)  # value of the current coalition
    known = torch.ones(p, dtype=torch.bool)  # whether `before` is up to date
    counter = torch.zeros(p, dtype=torch.long)
    done = torch.zeros(p, dtype=torch.bool)
    players, samples, spent = [], [], 0
    while True:
        candidates = active_in_order & (steps >= pointer.unsqueeze(1))
        done |= ~candidates.any(1)
        live = torch.nonzero(~done).flatten()
        if len(live) == 0:
            break
        step = candidates[live].int().argmax(1)  # next active position of each live walk
        known[live] &= step == pointer[live]  # inactive players removed without evaluating
        stale = live[~known[live]]
        last = step == n - 1
        masks = torch.cat(
            [
                position[stale] >= step[~known[live]].unsqueeze(1),
                position[live[~last]] >= step[~last].unsqueeze(1) + 1,
            ]
        )
        values = torch.empty(0, dtype=torch.float64)
        if len(masks):
            values = torch.as_tensor(game(masks)).double()
        spent += len(masks)
        before[stale] = values[: len(stale)]
        after = torch.full((len(live),), empty, dtype=torch.float64)
        after[~last] = values[len(stale) :]
        players.append(orders[live, step])
        samples.append(before[live] - after)

        counter[live] = torch.where(after <= floor, counter[live] + 1, 0)
        before[live], known[live], pointer[live] = after, True, step + 1
        truncated = live[counter[live] >= patience]
        if len(truncated):
            rest = active_in_order[truncated] & (steps >= pointer[truncated].unsqueeze(1))
            rows, cols = torch.nonzero(rest, as_tuple=True)
            players.append(orders[truncated[rows], cols])
            samples.append(torch.zeros(len(rows), dtype=torch.float64))
            done[truncated] = True
    if not players:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.float64), spent
    return torch.cat(players), torch.cat(samples), spent

"""Searching a game for the kept set that works best, which is what pruning asks.

A Shapley value answers "what is each channel worth on average over all coalition sizes"; a
pruning cut asks "which kept set of size ``n − k`` has the highest value". Two searches answer
the second question directly on the same batched game:

* :func:`backward_elimination` removes, ``k`` times, the player whose removal lowers the value of
  the kept set least (beam search keeps the ``beam`` best kept sets). A full step would cost one
  evaluation per remaining player, ``O(n·k)`` in all. It is *lazy* instead, as lazy greedy is
  for submodular functions: each player's last measured drop is kept, only the ``width`` players
  with the lowest stale drops are measured again, and a step is taken once the best fresh drop is
  no larger than every stale one. Drops mostly grow as the kept set shrinks (fewer channels
  left to stand in for a removed one), so most steps settle in one round: about
  ``n + k · width`` evaluations with ``width ≈ log2 n``.
* :func:`guided_elimination` is greedy too, but lets a cheap model of the game (a surrogate
  that predicts every removal's drop for free) propose the ``width`` removals that look
  cheapest at each step, measures only those, and takes the one that truly costs least:
  ``k · width`` evaluations (``k + steps · (width − 1)`` when a step may remove several), with
  no pass over every player first.
* :func:`iterated_removal` estimates Shapley values, removes a share of the lowest, and
  estimates again on the game restricted to the players that remain, for ``rounds`` rounds.

Both return the removal order, from which :func:`order_scores` makes channel scores that any
pruning plan cuts at the same place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightning_shapley.estimators.base import Estimator
from lightning_shapley.games.base import Game
from lightning_shapley.games.restricted import RestrictedGame

__all__ = [
    "Elimination",
    "backward_elimination",
    "guided_elimination",
    "iterated_removal",
    "order_scores",
]


@dataclass(frozen=True)
class Elimination:
    """The result of a removal search.

    Attributes:
        order: ``[k]`` players in the order they were removed.
        values: ``[k]`` value of the kept set after each removal (estimated, for
            :func:`iterated_removal`: ``nan``).
        worth: ``[n]`` the last measured worth of each player: its drop, or Shapley value.
        n_evals: Game evaluations spent.
    """

    order: torch.Tensor
    values: torch.Tensor
    worth: torch.Tensor
    n_evals: int


def order_scores(order: torch.Tensor, worth: torch.Tensor) -> torch.Tensor:
    """Scores ``[n]`` (higher = more valuable): removed players by removal step, below every kept
    player; kept players ranked by ``worth`` above them.

    Example:
        >>> order_scores(torch.tensor([2, 0]), torch.tensor([5.0, 1.0, 0.0, 3.0])).tolist()
        [1.0, 2.0, 0.0, 3.0]
    """
    n, k = len(worth), len(order)
    scores = torch.empty(n, dtype=torch.float64)
    scores[order] = torch.arange(k, dtype=torch.float64)
    kept = torch.ones(n, dtype=torch.bool)
    kept[order] = False
    rank = torch.argsort(torch.argsort(worth[kept].double(), stable=True), stable=True)
    scores[kept] = k + rank.double()
    return scores


def _removable(kept: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """``[n]`` players that may go: kept, and not the last one of their group."""
    if groups is None:
        return kept if int(kept.sum()) > 1 else torch.zeros_like(kept)
    left = torch.zeros(int(groups.max()) + 1, dtype=torch.long).index_add_(0, groups, kept.long())
    return kept & (left[groups] > 1)


def _check_k(k: int, game: Game, groups: torch.Tensor | None) -> None:
    most = game.n_players - (1 if groups is None else len(groups.unique()))
    if not isinstance(k, int) or not 0 <= k <= most:
        raise ValueError(
            f"cannot remove k={k!r} of {game.n_players} players: between 0 and {most} may go "
            "(every group keeps one)"
        )


@dataclass
class _Beam:
    kept: torch.Tensor  # [n] bool
    drops: torch.Tensor  # [n] float64, last measured v(kept) − v(kept ∖ {i}); −inf = never
    fresh: torch.Tensor  # [n] bool: measured on this kept set
    order: list[int]
    path: list[float]  # value of the kept set, before and after each removal

    @property
    def value(self) -> float:
        return self.path[-1]


def backward_elimination(
    game: Game,
    k: int,
    *,
    beam: int = 1,
    width: int | None = None,
    groups: torch.Tensor | None = None,
    costs: torch.Tensor | None = None,
    budget: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Elimination:
    """Remove ``k`` players one at a time, each time the one whose loss hurts the kept set least.

    With ``costs`` (what removing each player saves, e.g. parameters) the one removed is the
    one that loses least per unit saved (a removal that raises the value goes first), and with
    ``budget`` the search stops once the removed players' costs reach it (at most ``k``).

    Args:
        game: The game; its value is what the kept set should keep high.
        k: Players to remove.
        beam: Kept sets followed at once (1: greedy).
        width: Stale players measured again per round (default ``max(2, ceil(log2 n))``).
        groups: ``[n]`` group of each player; every group keeps at least one (default: one
            group).
        costs: ``[n]`` positive cost of each player.
        budget: Cost to remove (needs ``costs`` and ``beam=1``).
        should_stop: Called before each removal; True ends the search with the removals so far.

    Returns:
        The removal order of the best final kept set, its values along the way, each player's
        last measured drop (``worth``), and the evaluations spent.

    Raises:
        ValueError: If ``k`` would empty a group, or ``beam``/``width`` are not positive.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([3.0, 1.0, 2.0, 0.5]))
        >>> backward_elimination(game, 2).order.tolist()
        [3, 1]
    """
    n = game.n_players
    groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
    _check_k(k, game, groups)
    if beam < 1 or (width is not None and width < 1):
        raise ValueError(f"beam and width must be positive, got beam={beam}, width={width}")
    if budget is not None and (costs is None or beam != 1):
        raise ValueError("a cost budget needs costs and beam=1")
    if costs is not None:
        costs = torch.as_tensor(costs, dtype=torch.float64)
        if costs.shape != (n,) or not (costs > 0).all():
            raise ValueError(f"costs must be {n} positive numbers")
    width = width or max(2, math.ceil(math.log2(max(2, n))))
    full = torch.ones(n, dtype=torch.bool)
    top = float(_values(game, full.unsqueeze(0))[0])
    never = torch.full((n,), -math.inf, dtype=torch.float64)
    states = [_Beam(full, never, torch.zeros(n, dtype=torch.bool), [], [top])]
    n_evals = 1
    for _ in range(k):
        if budget is not None and float(costs[states[0].order].sum()) >= budget:
            break
        if should_stop is not None and should_stop():
            break
        n_evals += _measure_until_settled(game, states, beam, width, groups, costs)
        states = _children(states, beam, groups, costs)
    best = max(states, key=lambda s: s.value)
    return Elimination(
        torch.tensor(best.order, dtype=torch.long),
        torch.tensor(best.path[1:], dtype=torch.float64),
        best.drops.clone(),
        n_evals,
    )


def guided_elimination(
    game: Game,
    predicted_drops: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    *,
    width: int = 4,
    steps: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Elimination:
    """Remove ``k`` players one at a time, each time the one whose loss hurts the kept set least
    among the ``width`` that ``predicted_drops`` proposes.

    With ``steps`` below ``k``, each step removes ``r = ⌈left / steps left⌉`` players instead:
    the ``r`` whose single removals, measured, hurt least among the ``r + width − 1`` proposed
    (``k + steps · (width − 1)`` evaluations in all instead of ``k · width``).

    Args:
        game: The game; its value is what the kept set should keep high.
        predicted_drops: Maps the kept set ``[n]`` (bool) to each player's predicted drop
            ``[n]`` if it were removed as well (e.g.
            :meth:`~lightning_shapley.games.surrogate.QuadraticGame.removal_drops`).
        k: Players to remove.
        width: Removals measured per step (1: follow the prediction without measuring).
        steps: Most steps (``None``: ``k``, one removal each).
        should_stop: Called before each removal; True ends the search with the removals so far.

    Returns:
        The removal order, the kept set's value after each removal (``nan`` where a step
        removed several or measured none), each player's predicted drop from the final kept
        set (``worth``), and the evaluations spent.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([3.0, 1.0, 2.0, 0.5]))
        >>> wrong = lambda kept: -game.weights  # proposes the most valuable players first
        >>> guided_elimination(game, wrong, 2, width=4).order.tolist()
        [3, 1]
    """
    n = game.n_players
    _check_k(k, game, None)
    if width < 1 or (steps is not None and steps < 1):
        raise ValueError(f"width and steps must be positive, got width={width}, steps={steps}")
    steps = k if steps is None else min(steps, k)
    kept = torch.ones(n, dtype=torch.bool)
    order: list[int] = []
    path: list[float] = []
    n_evals = 0
    for step in range(steps):
        if should_stop is not None and should_stop():
            break
        removals = math.ceil((k - len(order)) / (steps - step))
        candidates = kept.nonzero().flatten()
        predicted = torch.as_tensor(predicted_drops(kept)).double()[candidates]
        proposed = candidates[torch.argsort(predicted, stable=True)[: removals + width - 1]]
        values = torch.full((len(proposed),), math.nan, dtype=torch.float64)
        if width > 1:
            masks = kept.expand(len(proposed), -1).clone()
            masks[torch.arange(len(proposed)), proposed] = False
            values = _values(game, masks)
            n_evals += len(proposed)
        best = torch.argsort(-values, stable=True)[:removals] if width > 1 else range(removals)
        for index in best:
            kept[proposed[index]] = False
            order.append(int(proposed[index]))
            path.append(float(values[index]) if removals == 1 else math.nan)
    return Elimination(
        torch.tensor(order, dtype=torch.long),
        torch.tensor(path, dtype=torch.float64),
        torch.as_tensor(predicted_drops(kept)).double(),
        n_evals,
    )


def _values(game: Game, masks: torch.Tensor) -> torch.Tensor:
    values = torch.as_tensor(game(masks)).double()
    if not torch.isfinite(values).all():
        raise ValueError(
            "the game gave non-finite values: the model's outputs or loss are NaN or infinite "
            "on the calibration data"
        )
    return values


def _keys(drops: torch.Tensor, costs: torch.Tensor | None) -> torch.Tensor:
    """What removals are ranked by: the drop, or the drop per unit of cost (a negative drop,
    a gain, as it is)."""
    return drops if costs is None else torch.where(drops > 0, drops / costs, drops)


def _measure_until_settled(
    game: Game,
    states: list[_Beam],
    beam: int,
    width: int,
    groups: torch.Tensor | None,
    costs: torch.Tensor | None,
) -> int:
    """Measure drops, in rounds batched over all beams, until every beam's ``beam`` best fresh
    keys are no larger than its lowest stale one. Returns the evaluations spent."""
    spent = 0
    while True:
        wanted: list[tuple[_Beam, torch.Tensor]] = []
        for state in states:
            removable = _removable(state.kept, groups)
            stale = removable & ~state.fresh
            if not stale.any():
                continue
            keys = _keys(state.drops, costs)
            fresh_keys = keys[removable & state.fresh].sort().values
            needed = min(beam, int(removable.sum()))
            if len(fresh_keys) >= needed and fresh_keys[needed - 1] <= keys[stale].min():
                continue
            candidates = stale.nonzero().flatten()
            unseen = candidates[torch.isinf(state.drops[candidates])]
            ranked = candidates[torch.argsort(keys[candidates], stable=True)]
            wanted.append((state, unseen if len(unseen) > width else ranked[:width]))
        if not wanted:
            return spent
        masks = torch.cat([s.kept.expand(len(p), -1).clone() for s, p in wanted])
        rows = torch.arange(len(masks))
        masks[rows, torch.cat([p for _, p in wanted])] = False
        values = _values(game, masks).split([len(p) for _, p in wanted])
        spent += len(masks)
        for (state, players), value in zip(wanted, values, strict=True):
            state.drops[players] = state.value - value
            state.fresh[players] = True


def _children(
    states: list[_Beam], beam: int, groups: torch.Tensor | None, costs: torch.Tensor | None
) -> list[_Beam]:
    """The ``beam`` best kept sets one removal further (distinct sets only)."""
    proposals = []
    for state in states:
        candidates = (_removable(state.kept, groups) & state.fresh).nonzero().flatten()
        keys = _keys(state.drops, costs)[candidates]
        for player in candidates[torch.argsort(keys, stable=True)][:beam]:
            proposals.append((state.value - float(state.drops[player]), state, int(player)))
    proposals.sort(key=lambda p: -p[0])
    children, seen = [], set()
    for value, state, player in proposals:
        kept = state.kept.clone()
        kept[player] = False
        key = bytes(kept.numpy())
        if key in seen:
            continue
        seen.add(key)
        fresh = torch.zeros_like(kept)
        children.append(
            _Beam(kept, state.drops.clone(), fresh, [*state.order, player], [*state.path, value])
        )
        if len(children) == beam:
            break
    return children


def iterated_removal(
    game: Game,
    k: int,
    estimator: Estimator,
    budget: int | None,
    *,
    rounds: int = 4,
    groups: torch.Tensor | None = None,
    seed: int = 0,
) -> Elimination:
    """Estimate Shapley values, remove the lowest share, re-estimate on what remains; repeat.

    Each round removes an equal share of the ``k`` players still to go, estimated on the game
    restricted to the players that remain (the removed ones fixed out), with ``budget``
    evaluations per round (raised to the estimator's minimum).

    Args:
        game: The game.
        k: Players to remove.
        estimator: Any Shapley estimator.
        budget: Evaluations per round, or ``None`` for the estimator's own.
        rounds: Estimation rounds (1: plain Shapley).
        groups: ``[n]`` group of each player; every group keeps at least one.
        seed: Seed of the estimator (each round offsets it).

    Returns:
        The removal order, ``nan`` values, the last Shapley estimate of each player (``worth``)
        and the evaluations spent.
    """
    n = game.n_players
    groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
    _check_k(k, game, groups)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    kept = torch.ones(n, dtype=torch.bool)
    worth = torch.zeros(n, dtype=torch.float64)
    order: list[int] = []
    n_evals = 0
    for round_ in range(rounds):
        if len(order) == k:
            break
        players = kept.nonzero().flatten()
        sub = RestrictedGame(game, players) if len(players) < n else game
        needed = estimator.min_budget(len(players))
        result = estimator.estimate(
            sub, None if budget is None else max(budget, needed), seed=seed + round_
        )
        worth[players] = result.values.double().reshape(len(players))
        n_evals += result.n_evals
        share = math.ceil((k - len(order)) / (rounds - round_))
        for player in players[torch.argsort(worth[players], stable=True)].tolist():
            if share == 0:
                break
            if _removable(kept, groups)[player]:
                kept[player] = False
                order.append(player)
                share -= 1
    values = torch.full((len(order),), math.nan, dtype=torch.float64)
    return Elimination(torch.tensor(order, dtype=torch.long), values, worth, n_evals)

"""The default criterion: channel Shapley values estimated by the bandit sampler at the cut."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_shapley.calibration import CalibrationData, spread_subset
from lightning_shapley.criteria.base import ChannelScores, GameWrapper
from lightning_shapley.criteria.game_based import ShapleyCriterion
from lightning_shapley.estimators import BanditShapley, CutEstimate
from lightning_shapley.estimators.cut import cut_estimate
from lightning_shapley.games import ChannelGame, RestrictedGame
from lightning_shapley.games.surrogate import QuadraticGame
from lightning_shapley.metrics import MetricLike, reference_logits
from lightning_shapley.selection import backward_elimination, guided_elimination, order_scores

__all__ = ["BanditShapleyCriterion", "stop_after"]


def stop_after(seconds: float) -> Callable[[], bool]:
    """A stop flag that turns True ``seconds`` from now (a time budget for a whole prune).

    Example:
        >>> stop = stop_after(3600)
        >>> stop()
        False
    """
    if seconds < 0:
        raise ValueError(f"seconds must be non-negative, got {seconds}")
    deadline = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= deadline


class BanditShapleyCriterion(ShapleyCriterion):
    """Shapley values of each layer's channels, estimated by
    :class:`~lightning_shapley.estimators.BanditShapley` only as far as the cut needs.

    The game is the agreement with the unpruned model (``"kl"``, no labels needed) with each
    removed channel replaced by its least-squares prediction from the kept ones (``"regression"``
    ablation): a channel that others can stand in for is cheap to remove, as it is once the
    consumers' least-squares refit has compensated its loss. It plays
    on at most ``max_examples`` of the calibration examples, spread over the classes (each
    evaluation costs a suffix forward over them; the refit uses all of them). Before any
    forward, the game's second-order surrogate (see
    :mod:`~lightning_shapley.games.surrogate`) gives exact Shapley values of a quadratic stand-in
    (of zero ablation: a guide, whatever the game's ablation; what the game measures decides).
    The bandit samples first only the ``screen`` share of channels the surrogate puts nearest the
    cut, with the surrogate as a control variate on every sample; their samples measure how far
    the surrogate's values stray from the game's. A channel the bandit never sampled is settled
    on its side of the cut once it lies further from the cut than that measured error, and
    brought into the sampling once it lies nearer; a sampled channel is settled once its
    confidence interval excludes the cut. At the default budget (one evaluation per channel)
    it samples layers of 54 channels or more, and settled 290 of VGG-8's 704 channels at 50 %
    (``benchmarks/end_to_end.py``). The channels it leaves in doubt at the cut are decided by a
    greedy kept-set search among them: the surrogate proposes the ``refine_width`` removals that
    look cheapest, the game measures them, and the truly cheapest goes (see
    :func:`~lightning_shapley.selection.guided_elimination`). Where ``evaluations_per_channel``
    cannot give the screened channels the ``min_samples`` they need, the bandit does not sample
    and the search decides every channel.

    Args:
        evaluations_per_channel: Most evaluations per channel of a layer the bandit spends
            (raised to what one complement pair with every screened channel flipped needs); the
            search at the cut spends its own.
        delta: Error probability of each channel's interval.
        min_samples: Samples a sampled channel needs before it may settle.
        screen: Share of the channels sampled from the start, at least 8 (``None``: all of
            them).
        surrogate: Use the surrogate (control variate and screening); without it, the plain
            bandit.
        metric: The game's value (see :func:`~lightning_shapley.metrics.value_function`).
        ablation: What a removed channel becomes in the game: ``"regression"``, ``"zero"``,
            ``"mean"`` or ``"refit"`` (see :class:`~lightning_shapley.games.ChannelGame`).
        scope: ``"layer"`` or ``"global"`` (one game over all layers' channels).
        refine: Decide the channels the bandit leaves in doubt at the cut by a greedy kept-set
            search among them, every settled channel fixed on its side (guided by the
            surrogate; without it, lazy backward elimination).
        refine_width: Removals the guided search measures per step.
        refine_steps: Most steps of the guided search per game; a layer with more channels to
            remove removes several per step (see
            :func:`~lightning_shapley.selection.guided_elimination`), so that its cost grows
            as ``k + refine_steps · (refine_width − 1)``, not ``k · refine_width``.
        refine_limit: Most channels that search looks at, as a share of the layer's: those in
            doubt nearest the cut (``None``: every channel in doubt).
        max_examples: Most calibration examples the game plays on (``None``: all).
        max_seconds: Time budget of one :meth:`score` call; channels of layers reached after it
            keep the estimates so far (the surrogate's values where nothing was sampled).
        should_stop: Called between sampling rounds; True stops the scoring the same way
            (e.g. a signal handler's flag, or :func:`stop_after` for a whole prune).

    Attributes:
        settled_channels: Channels the bandit settled on their side of the cut in the last
            :meth:`score` call (the search decided the others among ``scored_channels``).
        scored_channels: Channels scored in the last :meth:`score` call.
    """

    def __init__(
        self,
        evaluations_per_channel: float = 1.0,
        *,
        delta: float = 0.05,
        min_samples: int = 3,
        screen: float | None = 0.1,
        surrogate: bool = True,
        metric: MetricLike = "kl",
        ablation: str = "regression",
        scope: str = "layer",
        refine: bool = True,
        refine_limit: float | None = None,
        refine_width: int = 4,
        refine_steps: int | None = 32,
        max_examples: int | None = 32,
        max_seconds: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if evaluations_per_channel <= 0:
            raise ValueError(
                f"evaluations_per_channel must be positive, got {evaluations_per_channel}"
            )
        if refine_limit is not None and not 0 < refine_limit <= 1:
            raise ValueError(f"refine_limit must be a share in (0, 1] or None, got {refine_limit}")
        if refine_width < 1 or (refine_steps is not None and refine_steps < 1):
            raise ValueError(
                "refine_width and refine_steps must be positive, got "
                f"refine_width={refine_width}, refine_steps={refine_steps}"
            )
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be positive or None, got {max_examples}")
        if max_seconds is not None and max_seconds < 0:
            raise ValueError(f"max_seconds must be non-negative or None, got {max_seconds}")
        estimator = BanditShapley(
            delta=delta, min_samples=min_samples, screen=screen if surrogate else None
        )
        super().__init__(estimator, None, scope=scope, metric=metric, ablation=ablation)
        self.evaluations_per_channel, self.surrogate = evaluations_per_channel, surrogate
        self.max_seconds, self.should_stop, self.refine = max_seconds, should_stop, refine
        self.refine_limit, self.refine_width = refine_limit, refine_width
        self.refine_steps = refine_steps
        self.max_examples = max_examples
        self.name = "bandit_shapley"
        self._deadline: float | None = None
        self.settled_channels = self.scored_channels = 0

    def score(
        self,
        model: nn.Module,
        layers: list[str],
        data: CalibrationData,
        *,
        seed: int = 0,
        shard: GameWrapper | None = None,
        cut: float | None = None,
    ) -> ChannelScores:
        """As :meth:`Criterion.score`, within ``max_seconds`` and until ``should_stop()``."""
        self._deadline = None
        self.settled_channels = self.scored_channels = 0
        if self.max_seconds is not None:
            self._deadline = time.perf_counter() + self.max_seconds
        return super().score(model, layers, data, seed=seed, shard=shard, cut=cut)

    def _score(self, model, layers, inputs, targets, seed):
        if self.max_examples is not None and len(inputs) > self.max_examples:
            known = reference_logits(model, inputs) if targets is None else targets
            classes = known if known.dim() == 1 else known.argmax(-1)
            picked = spread_subset(classes.cpu(), self.max_examples, seed=seed).to(inputs.device)
            inputs, targets = inputs[picked], None if targets is None else targets[picked]
        return super()._score(model, layers, inputs, targets, seed)

    def _stopped(self) -> bool:
        late = self._deadline is not None and time.perf_counter() >= self._deadline
        return late or (self.should_stop is not None and bool(self.should_stop()))

    def _values(self, game: ChannelGame, seed: int) -> tuple[torch.Tensor, int]:
        n = game.n_players
        self.scored_channels += n
        if n == 1:
            return torch.zeros(1, dtype=torch.float64), 0
        estimator = self.estimator.at_cut(self._cut or self.estimator.cut, n)
        control = game.surrogate(seed=seed) if self.surrogate else None
        least = estimator.min_budget(n, screened=control is not None)
        budget = max(least, round(self.evaluations_per_channel * n))
        shared = self._shard(game)
        if (
            self.refine
            and control is not None
            and not estimator.can_settle(n, budget, screened=True)
        ):
            # no channel could settle: the search decides them all, on the surrogate's guide
            result = _unsampled(control, estimator.cut, 1 - estimator.delta)
        else:
            result = estimator.estimate(
                shared, budget, seed=seed, control=control, should_stop=self._stopped
            )
            self.settled_channels += int(result.settled.sum())
        if not self.refine or self._stopped():
            return result.values, result.n_evals
        limit = n if self.refine_limit is None else max(2, math.ceil(self.refine_limit * n))
        options = {"width": self.refine_width, "steps": self.refine_steps}
        return _refined(shared, result, limit, self._stopped, control, options)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(evaluations_per_channel={self.evaluations_per_channel}, "
            f"screen={self.estimator.screen}, surrogate={self.surrogate}, "
            f"max_examples={self.max_examples}, ablation={self.ablation!r}, scope={self.scope!r})"
        )


def _unsampled(control: QuadraticGame, k: int, confidence: float) -> CutEstimate:
    """The surrogate's exact Shapley values as an estimate that settles no player."""
    n = control.n_players
    unknown = torch.full((n,), math.inf, dtype=torch.float64)
    return cut_estimate(control.shapley_values, unknown, unknown, k, 0, confidence, torch.zeros(n))


def _refined(
    game,
    result: CutEstimate,
    limit: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    guide: QuadraticGame | None = None,
    options: dict | None = None,
) -> tuple[torch.Tensor, int]:
    """Scores whose lowest ``k`` are the settled-below players, then those a greedy kept-set
    search removes among the players in doubt (at most ``limit``, those nearest the boundary;
    every other player fixed on the side its estimate puts it): guided by ``guide``'s predicted
    drops where there is one (with ``options``). A search stopped early leaves the rest of the
    cut to the estimates."""
    below, doubt = result.settled_below, ~result.settled
    if limit is not None and int(doubt.sum()) > limit:
        distance = (result.values - result.boundary).abs()
        distance[~doubt] = math.inf
        doubt = torch.zeros_like(doubt)
        doubt[torch.argsort(distance, stable=True)[:limit]] = True
        below = result.below & ~doubt
    left = result.k - int(below.sum())
    if left <= 0 or int(doubt.sum()) <= left:
        return result.values, result.n_evals
    players = torch.nonzero(doubt).flatten()
    present = ~below & ~doubt
    subgame = RestrictedGame(game, players, present=present)
    if guide is None:
        search = backward_elimination(subgame, left, should_stop=should_stop)
    else:

        def predicted_drops(kept: torch.Tensor) -> torch.Tensor:
            whole = present.clone()
            whole[players] = kept
            return guide.removal_drops(whole)[players]

        search = guided_elimination(
            subgame, predicted_drops, left, should_stop=should_stop, **(options or {})
        )
    settled = torch.nonzero(below).flatten()
    settled = settled[torch.argsort(result.values[settled], stable=True)]
    order = torch.cat([settled, players[search.order]])
    return order_scores(order, result.values), result.n_evals + search.n_evals

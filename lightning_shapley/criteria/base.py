"""The criterion interface: score every channel of some layers from calibration data."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lightning_shapley.calibration import CalibrationData, as_calibration_tensors
from lightning_shapley.games.base import Game
from lightning_shapley.modes import restored_modes

__all__ = ["ChannelScores", "Criterion", "GameWrapper"]

GameWrapper = Callable[[Game], Game]


@dataclass(frozen=True)
class ChannelScores:
    """Scores of every channel, higher = more valuable.

    Attributes:
        values: ``[n_channels]`` scores by layer.
        n_evals: Game evaluations spent (0 for criteria that play no game).
        seconds: Wall-clock time of the scoring.
    """

    values: dict[str, torch.Tensor]
    n_evals: int
    seconds: float


class Criterion:
    """Scores the channels of each layer's group. Subclasses implement :meth:`_score`."""

    name: str = "criterion"
    label_free: bool = False
    """Whether the criterion's value needs no labels: its targets are then reference logits
    ``[N, K]`` (see :mod:`~lightning_shapley.metrics`), or none at all."""

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
        """Score the channels of ``layers`` (one per group) on calibration ``data``.

        Args:
            model: The network.
            layers: One layer name per group to score.
            data: Calibration data.
            seed: Seed of any randomness.
            shard: Wraps every game the criterion plays (e.g. to share its evaluations across
                processes, see :class:`~lightning_shapley.games.distributed.ShardedGame`).
            cut: The share of channels the plan will remove (of each layer, or of all of them
                for a network-wide game). Criteria that search for the best kept set stop there;
                the others ignore it.

        The model's train/eval modes, gradients and grad mode are left as they were.
        """
        self._shard = shard or (lambda game: game)
        if cut is not None and not 0 <= cut < 1:
            raise ValueError(f"cut must be a share in [0, 1), got {cut!r}")
        self._cut = cut
        if not layers:
            raise ValueError("layers is empty: name at least one layer to score")
        inputs, targets = as_calibration_tensors(data)
        device = next(model.parameters()).device
        began = time.perf_counter()
        with _untouched(model):
            values, n_evals = self._score(
                model, list(layers), inputs.to(device), _to(targets, device), seed
            )
        return ChannelScores(
            {k: v.detach().float().cpu() for k, v in values.items()},
            n_evals,
            time.perf_counter() - began,
        )

    def _score(
        self,
        model: nn.Module,
        layers: list[str],
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        seed: int,
    ) -> tuple[dict[str, torch.Tensor], int]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _to(targets: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if targets is None else targets.to(device)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Modes, gradients and grad mode as they were, whatever the criterion does."""
    grads = [(p, p.grad) for p in model.parameters()]
    grad_enabled = torch.is_grad_enabled()
    try:
        with restored_modes(model):
            yield
    finally:
        for parameter, grad in grads:
            parameter.grad = grad
        torch.set_grad_enabled(grad_enabled)

"""What every game is: ``n_players`` and a batched ``__call__(masks [m, n]) -> values [m]``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Game", "check_masks"]


@runtime_checkable
class Game(Protocol):
    """A cooperative game evaluated on many coalitions at once.

    ``masks`` is a boolean tensor ``[m, n_players]`` (True = the player is in the coalition); the
    result is a float tensor ``[m]`` of values, higher is better.
    """

    n_players: int

    def __call__(self, masks: torch.Tensor) -> torch.Tensor: ...


def check_masks(masks: torch.Tensor, n_players: int) -> torch.Tensor:
    """Validate a coalition matrix and return it as a boolean tensor ``[m, n_players]``.

    Raises:
        ValueError: If ``masks`` is not two-dimensional or has the wrong width.
    """
    masks = torch.as_tensor(masks)
    if masks.dim() != 2 or masks.shape[1] != n_players:
        raise ValueError(
            f"masks must have shape [m, {n_players}] (one per player), got {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must be boolean (or hold only 0 and 1)")
        masks = masks.bool()
    return masks

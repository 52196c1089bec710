"""Save and load a pruned model without pickling code: its pruning history and ``state_dict``.

The file holds only tensors and plain data, so it loads with ``torch.load(weights_only=True)``.
Loading replays the history on a freshly built model of the original architecture, then loads
the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lightning_shapley.pruning import Snapshot, replay

__all__ = ["load_pruned", "save_pruned"]

FORMAT = "lightning_shapley.pruned/1"


def save_pruned(model: nn.Module, history: list[dict], path: str | Path) -> None:
    """Write ``model``'s weights and the ``history`` that pruned it to ``path``."""
    torch.save({"format": FORMAT, "history": history, "state_dict": model.state_dict()}, path)


def load_pruned(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> list[dict]:
    """Prune a fresh ``model`` as recorded in ``path`` and load its weights.

    Args:
        model: A freshly built model of the original (unpruned) architecture.
        path: A file written by :func:`save_pruned`.
        example_input: ``[1, ...]`` an input the model accepts.

    Returns:
        The pruning history.

    Raises:
        ValueError: If the file is not a pruned-model file or does not fit the model; the
            model is then left as it was.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lightning-shapley pruned model ({FORMAT})")
    snapshot = Snapshot(model)
    replay(model, saved["history"], example_input)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        snapshot.restore()
        raise ValueError(
            f"the weights in {path} do not fit the model after replaying its pruning history: "
            f"is it built with the original architecture? ({error})"
        ) from error
    return saved["history"]

"""Calibration data: the few labelled examples every game and criterion is computed on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "BatchToXY",
    "CalibrationData",
    "as_calibration_tensors",
    "batch_inputs_targets",
    "draw_few_shot",
    "few_shot_indices",
    "split_per_class",
    "spread_subset",
]

CalibrationData = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | DataLoader | Dataset
BatchToXY = Callable[[Any], tuple[torch.Tensor, torch.Tensor | None]]
"""Where the inputs and targets are in a batch: ``batch -> (inputs [B, ...], targets [B])``."""


def as_calibration_tensors(
    data: CalibrationData, *, batch_to_xy: BatchToXY | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gather calibration data into ``(inputs [N, ...], targets)``.

    Targets are labels ``[N]``, reference logits ``[N, K]`` (for a label-free value, see
    :mod:`~lightning_shapley.metrics`), or ``None`` for unlabelled inputs.

    Args:
        data: A pair of tensors, unlabelled inputs (one tensor), a ``DataLoader`` or a
            map-style ``Dataset`` of ``(x, y)`` pairs.
        batch_to_xy: Where inputs and targets are in a batch (or dataset item) of ``data``;
            by default its first two items.

    Raises:
        ValueError: If the data is empty, the inputs and targets disagree in length, or a
            batch is not an ``(inputs, targets)`` pair and no ``batch_to_xy`` says where they are.
    """
    if isinstance(data, torch.Tensor):
        if len(data) == 0:
            raise ValueError("the calibration data is empty: it holds no examples")
        return data, None
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        inputs, targets = data
    elif isinstance(data, DataLoader | Dataset):
        batches = data if isinstance(data, DataLoader) else _samples(data)
        pairs = [batch_inputs_targets(batch, batch_to_xy) for batch in batches]
        if not pairs:
            raise ValueError("the calibration data is empty: it yields no examples")
        if isinstance(data, DataLoader):
            inputs, targets = torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])
        else:
            inputs, targets = torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
    else:
        raise TypeError(
            "calibration data must be a (inputs, targets) pair of tensors, a DataLoader or a "
            f"Dataset, got {type(data).__name__}"
        )
    if len(inputs) == 0:
        raise ValueError("the calibration data is empty: it holds no examples")
    if len(inputs) != len(targets):
        raise ValueError(
            f"calibration inputs and targets differ in length: {len(inputs)} vs {len(targets)}"
        )
    if targets.dim() != 2:  # reference logits stay [N, K]
        targets = targets.reshape(len(targets))
    return inputs, targets


def _samples(dataset: Dataset) -> Iterable:
    return (dataset[i] for i in range(len(dataset)))  # type: ignore[arg-type]


def batch_inputs_targets(
    batch: Any, batch_to_xy: BatchToXY | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one batch: ``batch_to_xy(batch)``, or the batch's first two items.

    Raises:
        ValueError: If the batch is not an ``(inputs, targets)`` pair and no ``batch_to_xy``
            says where they are, or ``batch_to_xy`` returns something else.

    Example:
        >>> x, y = batch_inputs_targets({"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])},
        ...                             lambda b: (b["image"], b["label"]))
        >>> x.shape, y.tolist()
        (torch.Size([2, 3]), [0, 1])
    """
    if batch_to_xy is not None:
        pair = batch_to_xy(batch)
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(
                f"batch_to_xy must return an (inputs, targets) pair, got {type(pair).__name__}"
            )
        return torch.as_tensor(pair[0]), torch.as_tensor(pair[1])
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
    what = (
        f"a dict with keys {sorted(map(str, batch))}"
        if isinstance(batch, dict)
        else f"a {type(batch).__name__}"
    )
    raise ValueError(
        f"calibration batches must be (inputs, targets) pairs, got {what}: say where the inputs "
        "and targets are with batch_to_xy= (e.g. batch_to_xy=lambda batch: (batch['image'], "
        "batch['label'])), or pass the calibration data itself with calibration="
    )


def few_shot_indices(targets: torch.Tensor, shots: int, *, seed: int = 0) -> torch.Tensor:
    """Indices of ``shots`` examples per class, drawn reproducibly.

    Args:
        targets: ``[N]`` integer class labels.
        shots: Examples per class (``>= 1``).
        seed: Seed of the draw.

    Returns:
        ``[shots * n_classes]`` indices, grouped by class in ascending class order.

    Raises:
        ValueError: If ``shots < 1`` or a class has fewer than ``shots`` examples.

    Example:
        >>> few_shot_indices(torch.tensor([0, 1, 0, 1, 0]), 1, seed=0).shape
        torch.Size([2])
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(targets).tolist():
        members = torch.nonzero(targets == label).flatten()
        if len(members) < shots:
            raise ValueError(f"class {label} has {len(members)} examples, fewer than shots={shots}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(chosen)


def draw_few_shot(
    data: DataLoader | Dataset,
    shots: int,
    *,
    seed: int = 0,
    batch_to_xy: BatchToXY | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``shots`` examples per class from a loader or dataset in one pass, reproducibly.

    Each class keeps a seeded reservoir sample, so every example of a class has the same chance
    and memory stays at ``shots`` examples per class. A class with fewer examples keeps them all.
    A loader's batches are what its ``collate_fn`` makes of the dataset's items, so inputs are
    drawn as the model sees them; ``batch_to_xy`` says where inputs and targets are in a batch.

    Returns:
        ``(inputs [k, ...], targets [k])`` ordered by class.

    Raises:
        ValueError: If ``shots < 1`` or the data yields no examples.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    generator = torch.Generator().manual_seed(seed)
    reservoirs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    seen: dict[int, int] = {}
    batches = data if isinstance(data, DataLoader) else _samples(data)
    for batch in batches:
        x, y = batch_inputs_targets(batch, batch_to_xy)
        if y.dim() == 0:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        _check_class_labels(y)
        for example, label in zip(x, y.reshape(len(y)), strict=True):
            c = int(label)
            seen[c] = seen.get(c, 0) + 1
            reservoir = reservoirs.setdefault(c, [])
            if len(reservoir) < shots:
                reservoir.append((example, label))
            else:
                slot = int(torch.randint(seen[c], (1,), generator=generator))
                if slot < shots:
                    reservoir[slot] = (example, label)
    if not reservoirs:
        raise ValueError("the calibration data is empty: it yields no examples")
    chosen = [pair for c in sorted(reservoirs) for pair in reservoirs[c]]
    return torch.stack([x for x, _ in chosen]), torch.stack([y for _, y in chosen])


def _check_class_labels(targets: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``targets`` ``[B]`` are one integer class label each."""
    if targets.is_floating_point() or targets.is_complex() or targets.numel() != len(targets):
        raise ValueError(
            "a few-shot draw takes `shots` examples per class, so it needs one integer class "
            f"label per example; the targets are {str(targets.dtype).removeprefix('torch.')} "
            f"of shape {list(targets.shape)} (regression or multi-label?). Pass the calibration "
            "examples themselves with calibration= (a Dataset, a DataLoader or an "
            "(inputs, targets) pair)"
        )


def split_per_class(
    inputs: torch.Tensor, targets: torch.Tensor, shots: int, *, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split labelled examples into ``shots`` per class and the rest, at random, reproducibly.

    Args:
        inputs: ``[N, ...]`` examples.
        targets: ``[N]`` integer class labels.
        shots: Examples per class in the first part (a class with fewer gives them all).
        seed: Seed of the split.

    Returns:
        ``((inputs, targets) of the chosen, (inputs, targets) of the rest)``, both ordered by
        class.

    Example:
        >>> labels = torch.tensor([0, 1] * 3)
        >>> (x, y), (rest_x, rest_y) = split_per_class(torch.arange(6.0), labels, 1)
        >>> y.tolist(), rest_y.tolist()
        ([0, 1], [0, 0, 1, 1])
    """
    generator = torch.Generator().manual_seed(seed)
    chosen, rest = [], []
    for label in torch.unique(targets).tolist():
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[:shots])
        rest.append(members[shots:])
    chosen_idx, rest_idx = torch.cat(chosen), torch.cat(rest)
    return (inputs[chosen_idx], targets[chosen_idx]), (inputs[rest_idx], targets[rest_idx])


def spread_subset(classes: torch.Tensor, size: int, *, seed: int = 0) -> torch.Tensor:
    """Indices of ``size`` examples drawn at random and spread evenly over the classes.

    Classes take turns (in a random order) until ``size`` are drawn, so that a class has at most
    one example more than any other class that still has examples left.

    Args:
        classes: ``[N]`` class of each example (a label, or the model's prediction).
        size: Examples wanted; all ``N`` (in order) when ``size >= N``.
        seed: Seed of the draw.

    Returns:
        ``[min(size, N)]`` indices into ``classes``, sorted.

    Example:
        >>> classes = torch.tensor([0, 0, 0, 0, 0, 1, 1])
        >>> classes[spread_subset(classes, 4)].bincount().tolist()
        [2, 2]
    """
    n = len(classes)
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if size >= n:
        return torch.arange(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = classes[order]
    turn = torch.empty(n, dtype=torch.long)
    for label in torch.unique(shuffled):
        members = torch.nonzero(shuffled == label).flatten()
        turn[members] = torch.arange(len(members))
    return order[torch.argsort(turn, stable=True)[:size]].sort().values

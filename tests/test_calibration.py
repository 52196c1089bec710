from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley.calibration import (
    as_calibration_tensors,
    draw_few_shot,
    few_shot_indices,
    split_per_class,
    spread_subset,
)


def test_tensors_loaders_and_datasets_give_the_same_tensors():
    x, y = torch.randn(7, 2), torch.arange(7)
    dataset = TensorDataset(x, y)
    for data in ((x, y), DataLoader(dataset, batch_size=3), dataset):
        inputs, targets = as_calibration_tensors(data)
        assert torch.equal(inputs, x) and torch.equal(targets, y)


def test_empty_or_malformed_data_is_refused():
    with pytest.raises(ValueError, match="empty"):
        as_calibration_tensors(DataLoader(TensorDataset(torch.empty(0, 2), torch.empty(0))))
    with pytest.raises(ValueError, match="pairs"):
        as_calibration_tensors(DataLoader(torch.randn(4, 2)))
    with pytest.raises(TypeError, match="calibration data must be"):
        as_calibration_tensors([torch.randn(3, 2)])
    with pytest.raises(ValueError, match="empty"):
        as_calibration_tensors(torch.empty(0, 2))


def test_inputs_alone_and_reference_logits_are_calibration_data():
    x = torch.randn(3, 2)
    inputs, targets = as_calibration_tensors(x)
    assert inputs is x and targets is None
    logits = torch.randn(3, 4)
    assert as_calibration_tensors((x, logits))[1].shape == (3, 4)


def test_few_shot_indices_are_balanced_and_reproducible():
    targets = torch.arange(30) % 3
    chosen = few_shot_indices(targets, 4, seed=1)
    assert torch.equal(torch.bincount(targets[chosen]), torch.tensor([4, 4, 4]))
    assert torch.equal(chosen, few_shot_indices(targets, 4, seed=1))
    assert not torch.equal(chosen, few_shot_indices(targets, 4, seed=2))
    with pytest.raises(ValueError, match="fewer than shots=11"):
        few_shot_indices(targets, 11)
    with pytest.raises(ValueError, match="at least 1"):
        few_shot_indices(targets, 0)


def dict_batches(items):
    return {
        "image": torch.stack([x for x, _ in items]) * 2,
        "label": torch.stack([y for _, y in items]),
    }


def test_dict_batches_need_batch_to_xy_and_keep_the_collate():
    x, y = torch.rand(12, 3), torch.arange(12) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=5, collate_fn=dict_batches)
    with pytest.raises(
        ValueError, match=r"dict with keys \['image', 'label'\].*batch_to_xy=.*calibration="
    ):
        as_calibration_tensors(loader)
    with pytest.raises(ValueError, match="batch_to_xy="):
        draw_few_shot(loader, 2)
    to_xy = lambda batch: (batch["image"], batch["label"])  # noqa: E731
    inputs, targets = as_calibration_tensors(loader, batch_to_xy=to_xy)
    assert torch.equal(inputs, x * 2) and torch.equal(targets, y)  # the collate's doubling
    drawn, labels = draw_few_shot(loader, 2, batch_to_xy=to_xy)
    assert torch.equal(torch.bincount(labels), torch.tensor([2, 2, 2])) and drawn.max() > 1
    with pytest.raises(ValueError, match="must return an \\(inputs, targets\\) pair"):
        as_calibration_tensors(loader, batch_to_xy=lambda batch: batch["image"])


def test_split_per_class_is_balanced_disjoint_and_reproducible():
    x, y = torch.arange(30.0), torch.arange(30) % 3
    (cx, cy), (hx, hy) = split_per_class(x, y, 4, seed=1)
    assert torch.equal(torch.bincount(cy), torch.tensor([4, 4, 4]))
    assert torch.equal(torch.bincount(hy), torch.tensor([6, 6, 6]))
    assert not set(cx.tolist()) & set(hx.tolist())
    assert torch.equal(split_per_class(x, y, 4, seed=1)[0][0], cx)


@pytest.mark.parametrize(
    "targets",
    [torch.randn(12), torch.randint(0, 2, (12, 5)).float(), torch.randint(0, 3, (12, 2))],
    ids=["regression", "multi-label", "two-labels"],
)
def test_a_few_shot_draw_refuses_targets_that_are_not_class_labels(targets):
    loader = DataLoader(TensorDataset(torch.randn(12, 3), targets), batch_size=4)
    with pytest.raises(ValueError, match=r"one integer class label per example.*calibration="):
        draw_few_shot(loader, 2)


def test_spread_subset_is_balanced_reproducible_and_whole_when_small():
    classes = torch.tensor([0] * 10 + [1] * 3 + [2] * 1)
    picked = spread_subset(classes, 7, seed=1)
    assert classes[picked].bincount().tolist() == [3, 3, 1]
    assert torch.equal(picked, spread_subset(classes, 7, seed=1))
    assert len(picked.unique()) == 7
    assert torch.equal(spread_subset(classes, 20), torch.arange(14))
    with pytest.raises(ValueError, match="size"):
        spread_subset(classes, 0)

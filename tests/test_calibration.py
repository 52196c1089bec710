from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley.calibration import as_calibration_tensors, few_shot_indices


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

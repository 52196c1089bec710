from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_shapley.lab.datasets import load_digits, load_mnist_idx, split_indices
from lightning_shapley.lab.models import CifarResNet, DigitsCNN, LeNet5, cifar_vgg

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-test10k"


def test_models_produce_logits():
    assert DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert LeNet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert cifar_vgg("vgg11", width=0.25)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert CifarResNet(20)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6k \\+ 2"):
        CifarResNet(21)


def test_digits_and_splits():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    parts = split_indices(len(y), (0.5, 0.3, 0.2), seed=0)
    assert [len(p) for p in parts] == [898, 539, 360]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(1797))


@pytest.mark.skipif(not MNIST.exists(), reason="MNIST test files not present")
def test_mnist_idx_files():
    x, y = load_mnist_idx(MNIST)
    assert x.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist()[:3] == [980, 1135, 1032]


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MNIST t10k IDX files"):
        load_mnist_idx(tmp_path)

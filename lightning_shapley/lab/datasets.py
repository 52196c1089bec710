"""Real data that works offline: scikit-learn's digits and MNIST's original IDX files."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_cifar10", "load_digits", "load_mnist_idx", "split_indices"]


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits: ``(images [1797, 1, 8, 8] in [0, 1], labels [1797])``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(bunch.target, dtype=torch.long)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_mnist_idx(root: str | Path, split: str = "t10k") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from its original IDX files: ``(images [N, 1, 28, 28], labels [N])``.

    Images are scaled to [0, 1] and normalised with MNIST's mean 0.1307 and std 0.3081.

    Args:
        root: A folder holding ``{split}-images-idx3-ubyte[.gz]`` and the labels file, or a
            torchvision-style root (``root/MNIST/raw/...``).
        split: ``"t10k"`` (test set) or ``"train"``.

    Raises:
        FileNotFoundError: If the files are not there.
    """
    root = Path(root)
    for folder in (root, root / "MNIST" / "raw"):
        for suffix in (".gz", ""):
            images = folder / f"{split}-images-idx3-ubyte{suffix}"
            labels = folder / f"{split}-labels-idx1-ubyte{suffix}"
            if images.exists() and labels.exists():
                x = torch.tensor(_read_idx(images), dtype=torch.float32).unsqueeze(1) / 255.0
                y = torch.tensor(_read_idx(labels), dtype=torch.long)
                return (x - 0.1307) / 0.3081, y
    raise FileNotFoundError(f"no MNIST {split} IDX files under {root} (or {root}/MNIST/raw)")


def split_indices(n: int, fractions: tuple[float, ...], *, seed: int = 0) -> list[torch.Tensor]:
    """A seeded random split of ``range(n)`` into parts of the given fractions (the last takes
    the rest)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(f * n) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    return list(order.split(sizes))


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(
    root: str | Path, train: bool, *, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from torchvision's on-disk format (``root/cifar-10-batches-py``).

    Returns normalised images ``[N, 3, 32, 32]`` and labels ``[N]``. With ``download=True``
    torchvision fetches and verifies the archive first (where there is a network).

    Raises:
        FileNotFoundError: If the batches are not there and ``download`` is off.
    """
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    if download and not all((folder / n).exists() for n in names):
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=train, download=True)
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {missing} not found under {folder}; set download: true where "
            "there is a network, or point root at a folder holding cifar-10-batches-py"
        )
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    x = torch.from_numpy(np.concatenate(images)).float() / 255.0
    mean, std = (
        torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1),
        torch.tensor(CIFAR10_STD).view(1, 3, 1, 1),
    )
    return (x - mean) / std, torch.tensor(labels, dtype=torch.long)

"""The data a recipe names: a training set, a calibration pool and a test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_shapley.lab.datasets import load_cifar10, load_digits, load_mnist_idx, split_indices
from lightning_shapley.recipes.schema import DataSpec, import_class

__all__ = ["RecipeData", "load_data"]


@dataclass
class RecipeData:
    """Datasets of ``(input, label)`` pairs.

    Attributes:
        train: Where the recipe trains its model.
        pool: Where calibration examples are drawn from (never the test set).
        test: Held-out data every pruned model is judged on.
        num_classes: Number of labels.
        input_shape: Shape of one input, e.g. ``(1, 8, 8)``.
    """

    train: Dataset
    pool: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


def load_data(spec: DataSpec) -> RecipeData:
    """Load the data of a recipe (offline unless ``download`` is set)."""
    if spec.class_path:
        return _data_module(spec)
    if spec.dataset in ("digits", "mnist"):
        x, y = load_digits() if spec.dataset == "digits" else load_mnist_idx(spec.root)
        train, pool, test = split_indices(len(y), tuple(spec.split), seed=spec.split_seed)
        full = TensorDataset(x, y)
        return RecipeData(Subset(full, train), Subset(full, pool), Subset(full, test),
                          int(y.max()) + 1, tuple(x.shape[1:]))  # fmt: skip
    if spec.dataset == "cifar10":
        train = TensorDataset(*load_cifar10(spec.root, True, download=spec.download))
        test = TensorDataset(*load_cifar10(spec.root, False, download=spec.download))
        return RecipeData(train, train, test, 10, (3, 32, 32))
    return _image_folder(spec)


def _data_module(spec: DataSpec) -> RecipeData:
    """The user's ``LightningDataModule``: its train, val and test datasets."""
    module = import_class(spec.class_path, (Path.cwd(),))(**spec.init_args)
    module.prepare_data()
    module.setup("fit")
    train, pool = module.train_dataloader().dataset, module.val_dataloader().dataset
    module.setup("test")
    test = module.test_dataloader().dataset
    example = pool[0]
    if not (isinstance(example, tuple | list) and len(example) == 2):
        raise TypeError(
            f"{spec.class_path}'s datasets must yield (input, label) pairs for a recipe; "
            f"its val dataset yields {type(example).__name__}"
        )
    labels = torch.cat([targets_of(part) for part in (train, pool, test)])
    shape = tuple(torch.as_tensor(example[0]).shape)
    return RecipeData(train, pool, test, int(labels.max()) + 1, shape)


def _image_folder(spec: DataSpec) -> RecipeData:
    """ImageNet-style folders: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``."""
    from torchvision import datasets, transforms

    root = Path(spec.root)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"image folder {root / part} not found (need train/ and val/)")
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    size = spec.image_size
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
         transforms.ToTensor(), normalize]
    )  # fmt: skip
    eval_tf = transforms.Compose(
        [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
         transforms.ToTensor(), normalize]
    )  # fmt: skip
    train = datasets.ImageFolder(str(root / "train"), train_tf)
    pool = datasets.ImageFolder(str(root / "train"), eval_tf)
    test = datasets.ImageFolder(str(root / "val"), eval_tf)
    return RecipeData(train, pool, test, len(train.classes), (3, size, size))


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Labels ``[N]`` of a dataset, without decoding inputs where the dataset knows them."""
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]

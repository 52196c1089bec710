"""ShapleyPruningCallback under LightningCLI: every choice is checked when the config is parsed.

``criterion: greddy`` in the config fails at parse time with the list of valid names, before
any training. Needs ``jsonargparse`` (``pip install "lightning[pytorch-extra]"``).

Run: ``python examples/lightning_cli.py fit --config examples/lightning_cli.yaml``
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI
from lightning_digits import DigitsClassifier
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley.lab.datasets import load_digits, split_indices


class DigitsData(pl.LightningDataModule):
    """scikit-learn's digits, split 70/30 into training and validation."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        x, y = load_digits()
        train, val = split_indices(len(y), (0.7, 0.3), seed=0)
        self.train, self.val = TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=256)


if __name__ == "__main__":
    LightningCLI(DigitsClassifier, DigitsData)

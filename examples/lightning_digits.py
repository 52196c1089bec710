"""ShapleyPruningCallback in a plain Lightning run on scikit-learn's digits (offline, ~30 s).

Trains a small CNN for 4 epochs, prunes half of every layer's channels at the end of epoch 3's
validation (the default criterion on 10 calibration digits per class drawn from the validation
set, then the least-squares refit), and fine-tunes the smaller model for 3 more epochs.

Run: ``python examples/lightning_digits.py``
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley import ShapleyPruningCallback, restore_pruning
from lightning_shapley.datasets import load_digits, split_indices
from lightning_shapley.models import DigitsCNN


class DigitsClassifier(pl.LightningModule):
    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = DigitsCNN(width=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_load_checkpoint(self, checkpoint):
        restore_pruning(self, checkpoint)


def main() -> None:
    pl.seed_everything(0)
    x, y = load_digits()
    train, val = split_indices(len(y), (0.7, 0.3), seed=0)
    train_loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[val], y[val]), batch_size=256)
    pruning = ShapleyPruningCallback(ratio=0.5, epochs=3, shots=10)
    trainer = pl.Trainer(max_epochs=7, callbacks=[pruning], logger=False,
                         enable_checkpointing=False, accelerator="cpu")  # fmt: skip
    model = DigitsClassifier()
    trainer.fit(model, train_loader, val_loader)
    print(f"validation accuracy after fine-tuning: {trainer.callback_metrics['val_acc']:.3f}")


if __name__ == "__main__":
    main()

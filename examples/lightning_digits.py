"""ShapleyPruningCallback in a plain Lightning run on scikit-learn's digits (offline, ~1 min).

Trains a small CNN, prunes three quarters of every layer's channels at the end of epoch 3's
training (the default criterion on 10 calibration digits per class drawn from the validation
set, then the least-squares refit), and fine-tunes the smaller model. Epoch 3's validation
already sees the pruned model, so ``ModelCheckpoint`` and ``EarlyStopping`` judge it by its
own score: the script reloads every checkpoint and validates it again to show that.

Run: ``python examples/lightning_digits.py [OUTPUT_DIR]`` (default ``runs/lightning_digits``);
the metrics are in ``OUTPUT_DIR/lightning_logs/version_*/metrics.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley import ShapleyPruningCallback, restore_pruning
from lightning_shapley.lab.datasets import load_digits, split_indices
from lightning_shapley.lab.models import DigitsCNN


class DigitsClassifier(pl.LightningModule):
    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = DigitsCNN(width=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_load_checkpoint(self, checkpoint):
        restore_pruning(self, checkpoint)


def main(out: Path) -> None:
    pl.seed_everything(0)
    x, y = load_digits()
    train, val = split_indices(len(y), (0.7, 0.3), seed=0)
    train_loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[val], y[val]), batch_size=256)
    # a large ratio, so that the pruning epoch's score visibly belongs to the pruned model
    pruning = ShapleyPruningCallback(ratio=0.75, epochs=3, shots=10)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_acc", mode="max",
                                 save_top_k=-1, filename="{epoch}-{val_acc:.4f}")  # fmt: skip
    stopping = EarlyStopping(monitor="val_acc", mode="max", patience=3)
    trainer = pl.Trainer(max_epochs=7, callbacks=[pruning, checkpoint, stopping],
                         logger=CSVLogger(out), default_root_dir=out,
                         accelerator="cpu")  # fmt: skip
    trainer.fit(DigitsClassifier(), train_loader, val_loader)

    check = pl.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
    print("checkpoint: saved val_acc / val_acc of the weights it holds")
    for path, score in sorted(checkpoint.best_k_models.items()):
        model = DigitsClassifier.load_from_checkpoint(path, weights_only=True)
        real = check.validate(model, val_loader, verbose=False)[0]["val_acc"]
        channels = model.net[0].out_channels
        print(f"  {Path(path).name}: {float(score):.4f} / {real:.4f} ({channels} channels)")
    print(f"metrics: {trainer.logger.log_dir}/metrics.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/lightning_digits"))

"""Small LightningModules on real bundled data, shared by the callback tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley import restore_pruning
from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.lab.models import DigitsCNN


class DigitsModule(pl.LightningModule):
    """A digits CNN with SGD + a step LR schedule; restores pruning when loaded."""

    def __init__(self, width: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = DigitsCNN(width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    def on_load_checkpoint(self, checkpoint):
        restore_pruning(self, checkpoint)


def digits_loaders(n_train: int = 600, n_val: int = 300) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits()
    train = TensorDataset(x[:n_train], y[:n_train])
    val = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=128)


def trainer(tmp_path, callbacks, max_epochs: int = 3, **options) -> pl.Trainer:
    defaults = dict(
        default_root_dir=tmp_path, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    return pl.Trainer(callbacks=callbacks, **{**defaults, **options})


class PlainDigitsModule(DigitsModule):
    """The digits module without the ``on_load_checkpoint`` hook, as a user writes it."""

    on_load_checkpoint = pl.LightningModule.on_load_checkpoint


class DictDigitsModule(DigitsModule):
    """Dict batches ``{"image", "label"}``, and a forward that returns a dict."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x), "features": x.flatten(1)}

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["image"])["logits"], batch["label"])

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"])["logits"]
        self.log("val_acc", (logits.argmax(1) == batch["label"]).float().mean())


class TupleDigitsModule(DigitsModule):
    """A forward that returns ``(logits, features)``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x.flatten(1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x)[0], y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x)[0].argmax(1) == y).float().mean())


def dict_collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collates ``(image, label)`` items into a dict batch, scaling the images to ``[0, 16]``."""
    return {
        "image": torch.stack([x for x, _ in items]) * 16,
        "label": torch.stack([y for _, y in items]),
    }

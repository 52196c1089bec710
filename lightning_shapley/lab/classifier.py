"""A plain classifier as a ``LightningModule``: what the recipes prune and fine-tune through
``Trainer`` and :class:`~lightning_shapley.ShapleyPruningCallback`."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.callback import restore_pruning

__all__ = ["Classifier"]


class Classifier(pl.LightningModule):
    """A plain classifier as a ``LightningModule``: cross-entropy, Adam, what recipes fine-tune.

    Args:
        model: The network (its forward maps inputs ``[B, ...]`` to logits ``[B, classes]``).
        lr: Adam's learning rate.
        skip_epochs: Epochs whose training steps are skipped (a recipe's pruning epoch: the
            callback prunes at its end, and the model is not trained before).
        freeze_batchnorm: Keep batch-norm statistics while training (few-shot fine-tuning).
    """

    def __init__(
        self, model: nn.Module, *, lr: float = 1e-3, skip_epochs: int = 0,
        freeze_batchnorm: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.model, self.lr, self.skip_epochs = model, lr, skip_epochs
        self.freeze_batchnorm = freeze_batchnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        if self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        if self.current_epoch < self.skip_epochs:
            return None  # no forward, no step
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_pruning(self, checkpoint)

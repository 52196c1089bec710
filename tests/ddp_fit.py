"""Fit a small model with ShapleyPruningCallback; run by test_callback_ddp.py, one or two ranks.

Usage: python tests/ddp_fit.py OUT_DIR DEVICES [greedy|bandit]
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_shapley import ShapleyPruningCallback
from tests.lightning_modules import DigitsModule, digits_loaders


class WrapCheck(pl.Callback):
    """Records, after the prune, whether DDP wraps the pruned parameters."""

    wraps_pruned = True

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1 and trainer.world_size > 1:
            wrapped = trainer.strategy.model
            self.wraps_pruned = isinstance(wrapped, DistributedDataParallel) and {
                id(p) for p in wrapped.parameters()
            } == {id(p) for p in module.parameters()}


def main(out: Path, devices: int, criterion: str = "greedy") -> None:
    pl.seed_everything(0, verbose=False)
    module = DigitsModule(lr=0.0)  # weights and BN statistics stay as initialised, so the
    for layer in module.modules():  # scores of one- and two-process runs are comparable
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = 0.0
    train, val = digits_loaders(n_train=256, n_val=200)
    if criterion == "bandit":  # a budget at which the bandit samples these narrow layers
        from lightning_shapley.criteria import BanditShapleyCriterion

        criterion = BanditShapleyCriterion(evaluations_per_channel=16, screen=None)
    callback = ShapleyPruningCallback(0.5, epochs=0, criterion=criterion, shots=5, verbose=False)
    check = WrapCheck()
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out, callbacks=[callback, check],
    )  # fmt: skip
    trainer.fit(module, train, val)
    torch.save(
        {
            "scores": callback.scores,
            "history": callback.history,
            "state": {k: v.clone() for k, v in module.state_dict().items()},
            "ddp_wraps_pruned_model": check.wraps_pruned,
            "steps": trainer.global_step,
        },
        out / f"rank{trainer.global_rank}-of-{devices}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])

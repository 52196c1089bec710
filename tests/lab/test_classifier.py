from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley.lab.classifier import Classifier


def test_skipped_epochs_leave_the_weights_and_frozen_statistics_stay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))), batch_size=8)
    start = {k: v.clone() for k, v in net.state_dict().items()}

    def fit(epochs: int) -> None:
        module = Classifier(net, lr=0.1, skip_epochs=1)
        trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(module, data)

    fit(1)
    assert all(torch.equal(v, start[k]) for k, v in net.state_dict().items())
    fit(2)
    assert not torch.equal(net[0].weight, start["0.weight"])  # trained in the second epoch
    assert torch.equal(net[1].running_mean, start["1.running_mean"])  # statistics kept

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.lab.training import evaluate, train


def test_training_learns_digits_and_can_freeze_batchnorm():
    x, y = load_digits()
    data = TensorDataset(x[:400], y[:400])
    torch.manual_seed(0)  # an initialisation that is not already good by chance
    model = DigitsCNN(width=8)
    before, _ = evaluate(model, data)
    train(model, data, epochs=3, lr=3e-3, batch_size=64, seed=0)
    after, loss = evaluate(model, data)
    assert after > before + 0.3 and loss > 0
    stats = model[1].running_mean.clone()
    train(model, data, epochs=1, lr=1e-3, batch_size=64, seed=0, freeze_batchnorm=True)
    assert torch.equal(model[1].running_mean, stats)
    assert not model.training


def test_demo_runs_and_reports_every_ranking(capsys):
    from lightning_shapley.lab.demo import run_demo

    report = run_demo(layer="3", shots=2, epochs=2, width=4)
    assert report["exact"].shape == (4,)
    assert set(report["kept_accuracy"]) >= {"exact Shapley", "weight L1", "random"}
    assert "Exact Shapley: 16 coalitions" in capsys.readouterr().out

"""Pruned models saved without pickled code and loaded onto a fresh model."""

from __future__ import annotations

import pytest
import torch

from lightning_shapley.checkpoint import load_pruned, save_pruned
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.plan import make_plan
from lightning_shapley.prune import prune


def test_a_pruned_model_loads_onto_a_fresh_one_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN(width=6).eval()
    x = torch.randn(6, 1, 8, 8)
    report = prune(model, make_plan({"0": torch.arange(6.0), "3": torch.arange(6.0)}, 0.5), x)
    path = tmp_path / "pruned.pt"
    save_pruned(model, report.history, path)
    fresh = DigitsCNN(width=6).eval()
    assert load_pruned(fresh, path, x[:1]) == report.history
    assert fresh[0].out_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_a_file_that_is_not_a_pruned_model_or_does_not_fit_is_refused(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(ValueError, match="is not a lightning-shapley pruned model"):
        load_pruned(DigitsCNN(width=6), other, x[:1])
    model = DigitsCNN(width=6).eval()
    report = prune(model, make_plan({"0": torch.arange(6.0)}, 0.5), x)
    path = tmp_path / "pruned.pt"
    save_pruned(model, report.history, path)
    wider = DigitsCNN(width=8)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit the model"):
        load_pruned(wider, path, x[:1])
    assert wider[0].out_channels == 8  # the replayed pruning is rolled back
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_shapley.metrics import value_function


def test_built_in_metrics_are_higher_is_better_per_example():
    logits = torch.randn(3, 5, 4)
    targets = torch.tensor([0, 1, 2, 3, 0])
    ce = value_function("cross_entropy")
    for row, value in zip(logits, ce(logits, targets), strict=True):
        assert value.item() == pytest.approx(-F.cross_entropy(row, targets).item(), rel=1e-6)
    accuracy = value_function("accuracy").per_example_values(logits, targets)
    assert torch.equal(accuracy, (logits.argmax(-1) == targets).float())


def test_callables_and_errors():
    fn = value_function(lambda logits, targets: logits[:, 0].mean())
    assert fn(torch.ones(2, 3, 4), torch.zeros(3, dtype=torch.long)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="no per-example values"):
        fn.per_example_values(torch.ones(2, 3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="cross_entropy"):
        value_function("f1")
    with pytest.raises(TypeError, match="metric must be"):
        value_function(3)


def test_label_free_values_compare_with_reference_logits():
    reference = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    same = value_function("kl")(reference.unsqueeze(0), reference)
    assert same.tolist() == pytest.approx([0.0], abs=1e-6)
    shifted = reference + 5.0  # the same distribution: logits are shift-invariant
    assert value_function("kl")(shifted.unsqueeze(0), reference).item() == pytest.approx(
        0, abs=1e-6
    )
    other = torch.tensor([[[0.0, 0.0, 3.0], [1.0, 0.0, 0.0]]])
    p = reference.softmax(-1)
    expected = -(p * (p.log() - other[0].log_softmax(-1))).sum(-1).mean()
    assert value_function("kl")(other, reference).item() == pytest.approx(expected.item(), rel=1e-5)
    mse = value_function("logit_mse")(other, reference).item()
    assert mse == pytest.approx(-(other[0] - reference).pow(2).mean().item())
    assert value_function("kl").label_free and not value_function("cross_entropy").label_free

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_shapley.metrics import choose_metric, value_function


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


def test_regression_values_and_a_clear_error_for_class_metrics_on_float_targets():
    outputs, targets = torch.randn(3, 5, 1), torch.randn(5)
    mse = value_function("mse")(outputs, targets)
    for row, value in zip(outputs, mse, strict=True):
        assert value.item() == pytest.approx(-F.mse_loss(row[:, 0], targets).item(), rel=1e-6)
    assert torch.equal(value_function("auto")(outputs, targets), mse)
    several = torch.randn(2, 5, 3), torch.randn(5, 3)  # multi-output regression
    expected = -(several[0] - several[1]).pow(2).mean(dim=(1, 2))
    assert torch.allclose(value_function("auto")(*several), expected)
    for name in ("cross_entropy", "accuracy"):
        with pytest.raises(ValueError, match=r"needs integer class labels.*float32 \[5\].*'mse'"):
            value_function(name)(outputs, targets)
    with pytest.raises(ValueError, match="same size"):
        value_function("mse")(outputs, torch.randn(4))


def test_multi_label_values_are_binary_cross_entropy_of_the_logits():
    logits = torch.randn(2, 6, 4)
    labels = torch.randint(0, 2, (6, 4)).float()
    bce = value_function("bce")(logits, labels)
    for row, value in zip(logits, bce, strict=True):
        reference = F.binary_cross_entropy_with_logits(row, labels)
        assert value.item() == pytest.approx(-reference.item(), rel=1e-5)
    assert torch.equal(value_function("auto")(logits, labels), bce)
    with pytest.raises(ValueError, match=r"needs integer class labels.*'bce'"):
        value_function("cross_entropy")(logits, labels)
    with pytest.raises(ValueError, match="0/1 multi-label"):
        value_function("bce")(logits, labels + 0.5)


def test_auto_is_cross_entropy_for_class_labels():
    logits, labels = torch.randn(2, 5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert torch.equal(
        value_function("auto")(logits, labels), value_function("cross_entropy")(logits, labels)
    )
    assert choose_metric(labels, 3) == "cross_entropy"
    assert choose_metric(torch.tensor([3, 1, 4]), 1) == "mse"  # integer-valued regression
    assert choose_metric(torch.tensor([0, 1, 1]), 1) == "bce"  # binary, one logit
    one_logit, binary = torch.randn(2, 3, 1), torch.tensor([0, 1, 1])
    expected = -F.binary_cross_entropy_with_logits(one_logit[1, :, 0], binary.float())
    assert value_function("auto")(one_logit, binary)[1].item() == pytest.approx(expected.item())


def test_label_free_agreement_of_a_one_output_model_is_the_squared_difference():
    reference = torch.tensor([[0.5], [-1.0], [2.0]])
    outputs = torch.stack([reference, reference + 1.0, reference * 0])
    values = value_function("kl")(outputs, reference)
    assert values.tolist() == pytest.approx([0.0, -1.0, -(0.25 + 1 + 4) / 3])
    assert value_function("kl")(outputs, reference.flatten()).tolist() == values.tolist()

"""The least-squares refit: exact where removed inputs are combinations of kept ones, group by
group for grouped convolutions, and solves that cannot fail."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.refit import (
    input_grams,
    kept_columns,
    reference_targets,
    refit_parameters,
    refittable,
    spd_solve,
)


def test_spd_solve_solves_and_survives_singular_systems():
    torch.manual_seed(0)
    a = torch.randn(3, 5, 5, dtype=torch.float64)
    system = a @ a.mT + torch.eye(5, dtype=torch.float64)
    right = torch.randn(3, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(system @ spd_solve(system, right), right)
    singular = torch.ones(1, 4, 4, dtype=torch.float64)  # rank one
    solved = spd_solve(singular, torch.ones(1, 4, 1, dtype=torch.float64))
    assert torch.isfinite(solved).all()
    torch.testing.assert_close(singular @ solved, torch.ones(1, 4, 1, dtype=torch.float64))


def test_a_removed_input_that_kept_ones_stand_in_for_is_refit_exactly():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(50, 4)
    x[:, 3] = 2 * x[:, 0] - x[:, 1]  # the last input, a combination of two kept ones
    ((gram, _),) = input_grams(layer, {"": layer}, [x]).values()
    kept = kept_columns(layer, torch.tensor([[True, True, True, False]]))
    weights, biases = refit_parameters(gram[0], layer, kept, ridge=1e-9)
    assert weights[0, :, 3].abs().max() == 0  # nothing left on the removed input
    with torch.no_grad():
        refit = F.linear(x, weights[0], biases[0])
        torch.testing.assert_close(refit, layer(x), rtol=1e-4, atol=1e-4)


def test_a_grouped_convolution_is_refit_group_by_group_toward_a_reference():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    assert refittable(conv) and not refittable(
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
    )
    x = torch.randn(8, 4, 6, 6)
    ((gram, count),) = input_grams(conv, {"": conv}, [x]).values()
    assert gram.shape == (1, 2, 2 * 9 + 1, 2 * 9 + 1) and count == 8 * 36
    reference = copy.deepcopy(conv)
    with torch.no_grad():
        reference.weight.mul_(1.5)
    targets = reference_targets(conv, reference, {"": conv}, [x])[""]
    everything = kept_columns(conv, torch.ones(1, 4, dtype=torch.bool))
    weights, biases = refit_parameters(gram[0], conv, everything, ridge=1e-9, targets=targets)
    with torch.no_grad():  # all inputs kept: the refit reproduces the reference
        torch.testing.assert_close(
            F.conv2d(x, weights[0], biases[0], padding=1, groups=2), reference(x),
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip
    half = kept_columns(conv, torch.tensor([[True, False, True, True]]))
    weights, _ = refit_parameters(gram[0], conv, half)
    assert weights[0, :2, 1].abs().max() == 0  # the first group lost its second input
    assert weights[0, 2:].abs().min() > 0  # the second group lost nothing

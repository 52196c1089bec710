"""Consumer input statistics: means, and linear predictions of removed channels that cannot fail
on dead, constant and duplicated channels or on fewer samples than channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_shapley.pruning import channel_group
from lightning_shapley.statistics import (
    LinearImputation,
    consumer_input_means,
    linear_imputations,
)


def reference_fill(x: torch.Tensor, kept: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """``μ_R + Σ_RK (Σ_KK + λI)⁻¹ (x_K − μ_K)`` straight from the formula, rows ``[S, p]``."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    sigma = centred.T @ centred / len(x)
    lam = ridge * sigma.diagonal().mean()
    k, r = kept, ~kept
    inverse = torch.linalg.pinv(sigma[k][:, k] + lam * torch.eye(int(k.sum()), dtype=x.dtype))
    filled = x.clone()
    filled[:, r] = mean[r] + centred[:, k] @ inverse @ sigma[k][:, r]
    return filled


@pytest.mark.parametrize("samples", [3, 40])  # fewer rows than channels, and more
def test_imputation_matches_the_formula_on_degenerate_channels(samples):
    torch.manual_seed(1)
    base = torch.randn(samples, 4)
    x = torch.cat(
        [
            base,
            base[:, :1],
            torch.zeros(samples, 2),
            torch.full((samples, 1), 0.5),
            2 * base[:, 1:2],
        ],
        dim=1,
    )  # duplicate, dead, constant, scaled copy
    p = x.shape[1]
    centred = (x - x.mean(0)).double()
    imputation = LinearImputation.from_samples(
        torch.arange(p).view(p, 1), torch.arange(p), x.mean(0).view(p, 1),
        centred.T @ centred, samples, centred if samples <= p else None,
    )  # fmt: skip
    assert imputation.rank <= min(samples, 4)
    kept = torch.tensor([True, False, True, False, False, True, True, True, False])
    filled = imputation.fill(x.view(1, samples, p, 1), kept.unsqueeze(0))[0, :, :, 0]
    torch.testing.assert_close(filled.double(), reference_fill(x, kept), rtol=1e-4, atol=1e-5)
    assert torch.allclose(filled[:, 4], x[:, 0], atol=1e-2)  # the copy is predicted back


def test_consumer_means_and_imputations_are_read_where_the_consumer_reads_its_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)).eval()
    with torch.no_grad():  # channel 3 twice channel 2
        net[0].weight[3], net[0].bias[3] = 2 * net[0].weight[2], 2 * net[0].bias[2].abs()
        net[0].bias[2] = net[0].bias[2].abs()
    x = torch.randn(16, 2, 5, 5)
    consumers = {c.name: c for c in channel_group(net, "0", x[:1]).consumers}
    batches = list(x.split(5))  # several batches: the statistics pool over them
    means = consumer_input_means(net, consumers, batches)
    with torch.no_grad():
        features = net[:3](x)  # [16, 36]: what the linear consumer reads
    torch.testing.assert_close(means["3"], features.mean(0))
    imputation = linear_imputations(net, consumers, batches, means)["3"]
    assert imputation.layout.shape == (4, 9)  # each channel owns its 9 flattened positions
    kept = torch.tensor([[True, True, True, False]])
    y = features.view(1, 16, 4, 9)
    filled = imputation.fill(y, kept)
    torch.testing.assert_close(filled[0, :, 3], 2 * y[0, :, 2], rtol=0, atol=1e-2)  # the ridge
    torch.testing.assert_close(filled[0, :, :3], y[0, :, :3])  # kept channels untouched

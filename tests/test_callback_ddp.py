"""Two CPU processes (gloo): shared evaluations, one plan, identical models, training goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("ddp_fit.py")


def run(out: Path, devices: int, criterion: str = "greedy") -> None:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), criterion], check=True,
                   env=env, timeout=300, capture_output=True)  # fmt: skip


def test_ddp_ranks_share_evaluations_and_end_identical(tmp_path):
    run(tmp_path, 2)
    run(tmp_path, 1)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}-of-2.pt") for r in (0, 1))
    single = torch.load(tmp_path / "rank0-of-1.pt")
    assert rank0["history"] == rank1["history"]
    assert rank0["ddp_wraps_pruned_model"] and rank1["ddp_wraps_pruned_model"]
    assert rank0["steps"] == rank1["steps"] > 0  # training went on after the prune
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key
    # the shared-out game gives the single-process scores (float sums in another order)
    for layer, scores in single["scores"].items():
        torch.testing.assert_close(torch.tensor(rank0["scores"][layer]), torch.tensor(scores),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip
    assert rank0["history"] == single["history"]


def test_under_ddp_the_bandit_samples_shared_coalitions_and_ranks_end_identical(tmp_path):
    run(tmp_path, 2, "bandit")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}-of-2.pt") for r in (0, 1))
    assert rank0["history"] == rank1["history"]
    assert rank0["scores"] == rank1["scores"]
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key

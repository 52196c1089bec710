from __future__ import annotations

import pytest
import torch

from lightning_shapley.criteria import criterion_by_name
from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.pruning import prunable_layer_names
from lightning_shapley.session import PruningSession


def setup_model():
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    x, y = load_digits()
    return model, x[:60], y[:60]


def test_a_session_prunes_layer_by_layer_to_the_target_of_the_original_channels():
    model, x, y = setup_model()
    layers = prunable_layer_names(model, x[:1])
    steps = []
    session = PruningSession(criterion_by_name("l1"), on_step=lambda s, i, n: steps.append((s, n)))
    result = session.run(model, layers, x, y, 0.5)
    assert steps == [([layer], 4) for layer in layers]
    assert result.channels == {"0": 4, "3": 4, "7": 8, "12": 32}
    assert session.original_channels == {"0": 8, "3": 8, "7": 16, "12": 64}
    assert [s["layer"] for s in result.history if s["op"] == "prune"] == layers
    # a second session goes on from there, counted against the original channels
    assert session.run(model, layers, x, y, 0.75).channels == {"0": 2, "3": 2, "7": 4, "12": 16}


def test_a_stop_between_layers_leaves_the_model_as_it_was():
    model, x, y = setup_model()
    layers = prunable_layer_names(model, x[:1])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 3:  # after two layers were pruned
            raise KeyboardInterrupt

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        PruningSession(criterion_by_name("l1"), stop=stop).run(model, layers, x, y, 0.5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model[0].out_channels == 8
    # the same parameter objects: the optimizer built before still trains the model
    assert [id(p) for p in model.parameters()] == [
        id(p) for p in optimizer.param_groups[0]["params"]
    ]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, state["0.weight"])


def test_the_result_counts_the_channels_the_bandit_settled():
    from torch import nn

    from lightning_shapley.criteria import BanditShapleyCriterion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what settles depends on the last bits of the games' values
    try:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(1, 96, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96 * 36, 4))
        x = torch.randn(32, 1, 8, 8)
        criterion = BanditShapleyCriterion()
        result = PruningSession(criterion).run(model, ["0"], x, None, 0.5)
        assert result.settled == criterion.settled_channels > 0
        plain = PruningSession(criterion_by_name("l1")).run(model, ["0"], x, None, 0.25)
        assert plain.settled == 0
    finally:
        torch.set_num_threads(threads)

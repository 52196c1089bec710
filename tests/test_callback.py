from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_shapley import ShapleyPruningCallback
from lightning_shapley.criteria import Criterion, ImportanceCriterion
from tests.lightning_modules import DigitsModule, digits_loaders, trainer


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_prunes_at_the_chosen_epoch_and_keeps_training(tmp_path):
    torch.manual_seed(0)
    module = DigitsModule()
    train, val = digits_loaders()
    before = n_params(module)
    callback = ShapleyPruningCallback(0.5, epochs=1, shots=5)
    fit = trainer(tmp_path, [callback], logger=CSVLogger(tmp_path))
    fit.fit(module, train, val)
    assert callback.pruned_epochs == [1]
    assert n_params(module) < 0.6 * before
    assert module.net[0].out_channels == 4
    # the optimizer trains the new parameters and the LR schedule went on (3 steps of × 0.5)
    optimizer = fit.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()
    }
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    assert fit.global_step == 3 * len(train)  # training went on after the prune
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    keys = ("pruning/params", "pruning/macs", "pruning/loss_before", "pruning/accuracy_after",
            "pruning/estimation_seconds", "pruning/evaluations",
            "pruning/channels/net.0", "pruning/settled_by_bandit")  # fmt: skip
    assert all(key in logged for key in keys)
    assert 0.2 < fit.validate(module, val, verbose=False)[0]["val_acc"] <= 1  # above chance
    assert callback.pruned_epochs == [1]  # validate does not prune


def test_iterative_schedule_and_global_scope(tmp_path):
    module = DigitsModule()
    train, val = digits_loaders()
    callback = ShapleyPruningCallback(
        lambda epoch: 0.25 * (epoch + 1), epochs=(0, 1), criterion="l1", scope="layer"
    )
    trainer(tmp_path, [callback]).fit(module, train, val)
    assert [module.net[i].out_channels for i in (0, 3, 7)] == [4, 4, 8]  # 50 % after two steps
    assert module.net[12].out_features == 32
    assert len([s for s in callback.history if s["op"] == "prune"]) == 8  # 4 layers, 2 steps

    module = DigitsModule()
    callback = ShapleyPruningCallback(0.5, scope="global", fine_tune=False)
    fit = trainer(tmp_path, [callback], max_epochs=5)
    fit.fit(module, train, val)
    assert fit.current_epoch == 1  # stopped after the prune at epoch 0
    total = sum(module.net[i].out_channels for i in (0, 3, 7)) + module.net[12].out_features
    assert total == pytest.approx(0.5 * (8 + 8 + 16 + 64), abs=1)


def test_a_global_parameter_budget_prunes_where_parameters_are(tmp_path):
    train, val = digits_loaders()
    left = {}
    for cost in ("channels", "params"):
        torch.manual_seed(0)
        module = DigitsModule()
        callback = ShapleyPruningCallback(
            0.5, scope="global", cost=cost, criterion="greedy", schedule="one_shot",
            compensation="none", fine_tune=False, shots=3,
        )  # fmt: skip
        trainer(tmp_path, [callback], max_epochs=2).fit(module, train, val)
        left[cost] = n_params(module)
    # half of the summed channel costs removes far more parameters than half of the channels
    assert left["params"] < 0.8 * left["channels"]


def test_resume_rebuilds_the_pruned_model_and_load_from_checkpoint_works(tmp_path):
    torch.manual_seed(0)
    module = DigitsModule()
    train, val = digits_loaders()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = ShapleyPruningCallback(0.5, epochs=0, criterion="l1")
    trainer(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        module, train, val
    )
    x = next(iter(val))[0]
    module.eval()
    with torch.no_grad():
        expected = module(x)
    last = str(tmp_path / "ckpt" / "last.ckpt")

    resumed, callback2 = DigitsModule(), ShapleyPruningCallback(0.5, epochs=0, criterion="l1")
    fit = trainer(tmp_path, [callback2], max_epochs=2)
    fit.fit(resumed, train, val, ckpt_path=last)  # nothing left to train: state as saved
    resumed.eval()
    with torch.no_grad():
        assert torch.equal(resumed(x), expected)
    assert callback2.pruned_epochs == [0] and callback2.history == callback.history

    trainer(tmp_path, [ShapleyPruningCallback(0.5, epochs=0)], max_epochs=3).fit(
        DigitsModule(), train, val, ckpt_path=last
    )  # and training can go on

    loaded = DigitsModule.load_from_checkpoint(last, weights_only=True)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_runs_under_no_grad_validation_and_restores_modes(tmp_path):
    module = DigitsModule()
    train, val = digits_loaders()
    callback = ShapleyPruningCallback(0.25, criterion="taylor")
    trainer(tmp_path, [callback], max_epochs=1, inference_mode=False).fit(module, train, val)
    assert module.training
    assert all(p.requires_grad and not p.is_inference() for p in module.parameters())


class Exploding(Criterion):
    name = "exploding"

    def _score(self, model, layers, inputs, targets, seed):
        raise RuntimeError("boom")


def test_a_failure_in_estimation_leaves_the_model_unpruned(tmp_path):
    module = DigitsModule()
    train, val = digits_loaders()
    before = n_params(module)
    with pytest.raises(RuntimeError, match="left unpruned"):
        trainer(tmp_path, [ShapleyPruningCallback(0.5, criterion=Exploding())]).fit(
            module, train, val
        )
    assert n_params(module) == before
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_nan_outputs_are_reported(tmp_path):
    module = DigitsModule()
    train, val = digits_loaders()
    with torch.no_grad():
        module.net[12].weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="NaN or infinite"):
        trainer(tmp_path, [ShapleyPruningCallback(0.5)], max_epochs=1).fit(module, train, val)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"ratio": -0.5}, r"ratio must be in \[0, 1\)"),
        ({"epochs": -1}, "epochs must be non-negative"),
        ({"epochs": ()}, "epochs must be non-negative"),
        ({"scope": "everything"}, "scope='everything' is invalid"),
        ({"criterion": "l3"}, "criterion 'l3' is unknown"),
        ({"estimator": "magic"}, "estimator='magic' is invalid"),
        ({"budget": 0}, "budget must be a positive"),
        ({"shots": 0}, "shots must be a positive"),
        ({"held_out": -1}, "held_out must be a non-negative"),
        ({"prune_on": "validation_start"}, "prune_on='validation_start' is invalid"),
        ({"ablation": "noise"}, "ablation='noise' is invalid"),
        ({"metric": "f1"}, "metric='f1' is unknown"),
        ({"min_channels": 0}, "min_channels"),
        ({"round_to": 0}, "round_to"),
        ({"compensation": "refit"}, "compensation='refit' is invalid"),
        ({"cost": "flops"}, "cost='flops' is invalid"),
        ({"cost": "params"}, "cost='params' needs scope='global'"),
    ],
)
def test_misconfiguration_raises_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapleyPruningCallback(**kwargs)


def test_state_dict_round_trip():
    callback = ShapleyPruningCallback(0.5)
    callback.pruned_epochs, callback.history = [0], [{"op": "prune", "layer": "a", "channels": [1]}]
    other = ShapleyPruningCallback(0.5)
    other.load_state_dict(callback.state_dict())
    assert other.state_dict() == callback.state_dict()
    other.load_state_dict({})
    assert other.pruned_epochs == []


class ExplodesOnSecondLayer(Criterion):
    name = "explodes_later"

    def _score(self, model, layers, inputs, targets, seed):
        if layers != ["net.0"]:
            raise RuntimeError("boom")
        return {"net.0": torch.arange(8.0)}, 0


def test_layer_by_layer_failure_rolls_back_the_layers_already_pruned(tmp_path):
    module = DigitsModule()
    train, val = digits_loaders()
    before = n_params(module)
    callback = ShapleyPruningCallback(0.5, criterion=ExplodesOnSecondLayer())
    with pytest.raises(RuntimeError, match="left unpruned"):
        trainer(tmp_path, [callback]).fit(module, train, val)
    assert n_params(module) == before and module.net[0].out_channels == 8
    assert callback.history == []


@pytest.mark.parametrize("schedule", ["one_shot", "layer_by_layer"])
def test_one_shot_scores_all_layers_on_the_unpruned_model_and_layer_by_layer_one_at_a_time(
    tmp_path, monkeypatch, schedule
):
    seen = []  # (layers scored, channels of the first two layers then) per call
    score = ImportanceCriterion.score

    def spy(self, model, layers, data, **options):
        seen.append((list(layers), model.net[0].out_channels, model.net[3].out_channels))
        return score(self, model, layers, data, **options)

    monkeypatch.setattr(ImportanceCriterion, "score", spy)
    module = DigitsModule()
    train, val = digits_loaders()
    callback = ShapleyPruningCallback(0.5, schedule=schedule, criterion="l1")
    trainer(tmp_path, [callback], max_epochs=1).fit(module, train, val)
    assert [module.net[i].out_channels for i in (0, 3, 7)] == [4, 4, 8]
    if schedule == "one_shot":
        assert seen == [(["net.0", "net.3", "net.7", "net.12"], 8, 8)]
    else:
        steps = [(["net.0"], 8, 8), (["net.3"], 4, 8), (["net.7"], 4, 4), (["net.12"], 4, 4)]
        assert seen == steps


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule='sometimes' is invalid"):
        ShapleyPruningCallback(schedule="sometimes")


def test_unlabelled_calibration_inputs_prune_with_the_label_free_default(tmp_path):
    torch.manual_seed(0)
    module = DigitsModule()
    train, val = digits_loaders()
    images = val.dataset.tensors[0][:60]  # inputs alone, no labels
    callback = ShapleyPruningCallback(0.5, epochs=0, calibration=images, fine_tune=False)
    fit = trainer(tmp_path, [callback], max_epochs=1, logger=CSVLogger(tmp_path))
    fit.fit(module, train, val)
    assert module.net[0].out_channels == 4
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "pruning/kl_after" in logged  # agreement with the unpruned model, held out
    needs_labels = ShapleyPruningCallback(0.5, epochs=0, calibration=images, criterion="taylor")
    with pytest.raises(ValueError, match="needs labelled calibration data"):
        trainer(tmp_path, [needs_labels], max_epochs=1).fit(DigitsModule(), train, val)

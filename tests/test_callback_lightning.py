"""The callback as a Lightning user's other callbacks, loggers and tools expect it."""

from __future__ import annotations

import csv
import signal
import typing
import warnings
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from lightning_shapley import ShapleyPruningCallback, load_pruned_checkpoint
from lightning_shapley.calibration import draw_few_shot, split_per_class
from lightning_shapley.compensation import COMPENSATIONS
from lightning_shapley.criteria import CRITERIA, EliminationCriterion
from lightning_shapley.criteria.classic import ImportanceCriterion
from lightning_shapley.estimators import ESTIMATORS
from lightning_shapley.games.channel import ABLATIONS
from lightning_shapley.metrics import BUILT_IN
from tests.lightning_modules import (
    DictDigitsModule,
    DigitsModule,
    PlainDigitsModule,
    TupleDigitsModule,
    dict_collate,
    digits_loaders,
    trainer,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def accuracy(module, x: torch.Tensor, y: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        return float((module(x).argmax(1) == y).float().mean())


def test_the_checkpoint_of_the_pruning_epoch_holds_the_pruned_models_score(tmp_path):
    torch.manual_seed(0)
    train, val = digits_loaders(n_train=256, n_val=200)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max",
                                 save_top_k=-1, filename="{epoch}-{val_acc:.4f}")  # fmt: skip
    stopping = EarlyStopping(monitor="val_acc", mode="max", patience=5)
    callback = ShapleyPruningCallback(0.75, epochs=1, criterion="l1", compensation="none")
    fit = trainer(tmp_path, [callback, checkpoint, stopping], max_epochs=2,
                  enable_checkpointing=True, limit_train_batches=3)  # fmt: skip
    fit.fit(DigitsModule(), train, val)
    saved = {Path(p).name: float(score) for p, score in checkpoint.best_k_models.items()}
    pruning_epoch = next(path for path in checkpoint.best_k_models if "epoch=1" in path)
    loaded = load_pruned_checkpoint(DigitsModule, pruning_epoch, weights_only=True)
    assert loaded.net[0].out_channels == 2  # the checkpoint holds the pruned model ...
    real = trainer(tmp_path, []).validate(loaded, val, verbose=False)[0]["val_acc"]
    assert saved[Path(pruning_epoch).name] == pytest.approx(real, abs=1e-6)  # ... and its score
    assert stopping.best_score.item() == pytest.approx(max(saved.values()))

    # after validation: that epoch's checkpoint is the unpruned model with its own score
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "late", monitor="val_acc", mode="max",
                                 save_top_k=-1, filename="{epoch}")  # fmt: skip
    late = ShapleyPruningCallback(0.75, epochs=0, criterion="l1", prune_on="validation_end")
    module = DigitsModule()
    trainer(tmp_path, [late, checkpoint], max_epochs=2, enable_checkpointing=True,
            limit_train_batches=2).fit(module, train, val)  # fmt: skip
    path, score = next((p, s) for p, s in checkpoint.best_k_models.items() if "epoch=0" in p)
    unpruned = load_pruned_checkpoint(DigitsModule, path, weights_only=True)
    assert unpruned.net[0].out_channels == 8 and module.net[0].out_channels == 2
    real = trainer(tmp_path, []).validate(unpruned, val, verbose=False)[0]["val_acc"]
    assert float(score) == pytest.approx(real, abs=1e-6)


@pytest.mark.parametrize("module_type", [TupleDigitsModule, DictDigitsModule])
def test_tuple_and_dict_outputs_prune_and_are_measured(tmp_path, module_type):
    torch.manual_seed(0)
    train, val = digits_loaders(n_train=256, n_val=200)
    if module_type is DictDigitsModule:
        train = DataLoader(train.dataset, batch_size=64, collate_fn=dict_collate)
        val = DataLoader(val.dataset, batch_size=128, collate_fn=dict_collate)
    options = {"shots": 3, "fine_tune": False, "criterion": "l1"}
    if module_type is DictDigitsModule:
        options["batch_to_xy"] = lambda b: (b["image"], b["label"])
    callback = ShapleyPruningCallback(0.5, **options)
    fit = trainer(tmp_path, [callback], max_epochs=2)
    module = module_type()
    fit.fit(module, train, val)
    assert module.net[0].out_channels == 4
    assert 0 <= fit.callback_metrics["pruning/accuracy_after"] <= 1
    assert fit.callback_metrics["pruning/loss_after"] > 0


def test_before_after_metrics_are_held_out_with_the_epoch_and_a_positive_loss(tmp_path):
    torch.manual_seed(0)
    train, val = digits_loaders(n_train=256, n_val=300)
    callback = ShapleyPruningCallback(0.75, epochs=1, shots=5, criterion="l1", fine_tune=False)
    fit = trainer(tmp_path, [callback], max_epochs=3, logger=CSVLogger(tmp_path))
    module = DigitsModule()
    fit.fit(module, train, val)
    row = next(r for r in rows(Path(fit.logger.log_dir) / "metrics.csv") if r["pruning/params"])
    assert row["epoch"] == "1"  # logged through the module, at the pruning epoch
    assert float(row["pruning/loss_before"]) > 0 and float(row["pruning/loss_after"]) > 0
    # measured on validation examples the calibration set (and so the refit) did not see
    x, y = draw_few_shot(DataLoader(val.dataset, batch_size=256), 5 + 20, seed=0)
    (calib_x, _), (held_x, held_y) = split_per_class(x, y, 5, seed=0)
    assert not (calib_x.flatten(1)[:, None] == held_x.flatten(1)[None]).all(-1).any()
    assert float(row["pruning/accuracy_after"]) == pytest.approx(accuracy(module, held_x, held_y))


class Recording(ImportanceCriterion):
    """L1 scores; records the calibration inputs it was given."""

    def __init__(self) -> None:
        super().__init__("l1")
        self.inputs: list[torch.Tensor] = []

    def _score(self, model, layers, inputs, targets, seed):
        self.inputs.append(inputs)
        return super()._score(model, layers, inputs, targets, seed)


def test_dict_batches_and_custom_collate_go_through_the_users_pipeline(tmp_path):
    train, val = digits_loaders(n_train=256, n_val=200)
    train = DataLoader(train.dataset, batch_size=64, collate_fn=dict_collate)
    val = DataLoader(val.dataset, batch_size=128, collate_fn=dict_collate)
    with pytest.raises(
        ValueError, match=r"got a dict with keys \['image', 'label'\].*batch_to_xy=.*calibration="
    ):
        trainer(tmp_path, [ShapleyPruningCallback(0.5, criterion="l1")], max_epochs=1).fit(
            DictDigitsModule(), train, val
        )  # fmt: skip
    recording = Recording()
    callback = ShapleyPruningCallback(0.5, criterion=recording, shots=3,
                                      batch_to_xy=lambda b: (b["image"], b["label"]))  # fmt: skip
    module = DictDigitsModule()
    trainer(tmp_path, [callback], max_epochs=1).fit(module, train, val)
    assert module.net[0].out_channels == 4
    assert recording.inputs[0].max() > 1  # the collate's scaling, as the model sees the data
    assert len(recording.inputs[0]) == 30

    # the default collate of (x, y) pairs still works, and so does calibration= with batch_to_xy
    pairs = TensorDataset(*val.dataset.tensors)
    calibration = DataLoader(pairs, batch_size=50, collate_fn=dict_collate)
    callback = ShapleyPruningCallback(0.5, criterion="l1", calibration=calibration,
                                      batch_to_xy=lambda b: (b["image"], b["label"]))  # fmt: skip
    trainer(tmp_path, [callback], max_epochs=1).fit(DictDigitsModule(), train, val)
    assert callback.pruned_epochs == [0]


def test_options_reach_the_criterion_or_are_refused():
    assert ShapleyPruningCallback(criterion="cut_shapley", budget=7)._criterion().budget == 7
    shapley = ShapleyPruningCallback(criterion="shapley", estimator="bandit", budget=9,
                                     metric="accuracy", ablation="mean")._criterion()  # fmt: skip
    assert type(shapley.estimator).__name__ == "BanditShapley"
    assert (shapley.budget, shapley.metric, shapley.ablation) == (9, "accuracy", "mean")
    default = ShapleyPruningCallback(ablation="zero")._criterion()
    assert (default.name, default.ablation) == ("bandit_shapley", "zero")
    assert ShapleyPruningCallback()._criterion().ablation == "regression"
    greedy = ShapleyPruningCallback(criterion="greedy", scope="global", ablation="zero")
    assert (greedy._criterion().scope, greedy._criterion().ablation) == ("global", "zero")
    default = ShapleyPruningCallback(scope="global", metric="cross_entropy")._criterion()
    assert (default.scope, default.metric) == ("global", "cross_entropy")
    with pytest.raises(ValueError, match="criterion 'bandit_shapley' takes no budget"):
        ShapleyPruningCallback(budget=7)
    with pytest.raises(ValueError, match="criterion 'l1' takes no estimator"):
        ShapleyPruningCallback(criterion="l1", estimator="bandit")
    with pytest.raises(ValueError, match="set them on the Recording object"):
        ShapleyPruningCallback(criterion=Recording(), metric="kl")


def test_a_module_without_the_hook_warns_and_loads_its_pruned_checkpoint(tmp_path):
    torch.manual_seed(0)
    train, val = digits_loaders(n_train=256, n_val=200)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = PlainDigitsModule()
    callback = ShapleyPruningCallback(0.5, criterion="l1")
    with pytest.warns(UserWarning, match=r"restore_pruning\(self, checkpoint\)"):
        trainer(tmp_path, [callback, checkpoint], max_epochs=1, enable_checkpointing=True).fit(
            module, train, val
        )
    loaded = load_pruned_checkpoint(PlainDigitsModule, tmp_path / "ckpt" / "last.ckpt",
                                    weights_only=True)  # fmt: skip
    assert type(loaded) is PlainDigitsModule and loaded.net[0].out_channels == 4
    x = val.dataset.tensors[0][:16]
    module.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))


def test_a_torch_pruning_importance_is_a_criterion(tmp_path):
    train, val = digits_loaders(n_train=256, n_val=200)
    by_name, by_importance = DigitsModule(), DigitsModule()
    by_importance.load_state_dict(by_name.state_dict())
    for module, criterion in (
        (by_name, "l1"),
        (by_importance, tp.importance.MagnitudeImportance(p=1, normalizer=None)),
    ):
        callback = ShapleyPruningCallback(0.5, criterion=criterion, fine_tune=False)
        torch.manual_seed(0)  # the same batches before the prune
        trainer(tmp_path, [callback], max_epochs=1).fit(module, train, val)  # fmt: skip
    assert by_importance.net[0].out_channels == 4
    assert [s for s in by_importance._lightning_shapley_history if s["op"] == "prune"] == [
        s for s in by_name._lightning_shapley_history if s["op"] == "prune"
    ]  # the same channels as the built-in l1
    taylor = ShapleyPruningCallback(
        0.5, criterion=tp.importance.TaylorImportance(), fine_tune=False
    )
    module = DigitsModule()
    trainer(tmp_path, [taylor], max_epochs=1).fit(module, train, val)  # reads gradients
    assert module.net[0].out_channels == 4


class WarnsPerLayer(ImportanceCriterion):
    def __init__(self) -> None:
        super().__init__("l1")

    def _score(self, model, layers, inputs, targets, seed):
        warnings.warn(f"few samples for {layers[0]}", UserWarning, stacklevel=1)
        return super()._score(model, layers, inputs, targets, seed)


def test_scoring_uses_the_trainers_bar_and_warns_once(tmp_path, capsys):
    train, val = digits_loaders(n_train=256, n_val=200)
    callback = ShapleyPruningCallback(0.5, scope="global", criterion="loo", fine_tune=False)
    trainer(tmp_path, [callback], max_epochs=1, enable_progress_bar=True).fit(
        DigitsModule(), train, val
    )
    out = capsys.readouterr().out
    assert "Pruning (loo): 4 layers at once" in out and " evaluations" in out

    callback = ShapleyPruningCallback(0.5, criterion=WarnsPerLayer(), fine_tune=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [callback], max_epochs=1).fit(DigitsModule(), train, val)
    mine = [str(w.message) for w in caught if "few samples" in str(w.message)]
    assert len(mine) == 1 and "4 warning(s)" in mine[0] and "3 more like it" in mine[0]


class SigtermWhileScoring(EliminationCriterion):
    """The greedy search; SIGTERM arrives as it starts (the handler Lightning installed)."""

    evaluations = 0

    def _score(self, model, layers, inputs, targets, seed):
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            pytest.skip("no SIGTERM handler installed by Lightning here")
        signal.raise_signal(signal.SIGTERM)
        return super()._score(model, layers, inputs, targets, seed)


class InterruptedOnSecondLayer(ImportanceCriterion):
    def __init__(self) -> None:
        super().__init__("l1")

    def _score(self, model, layers, inputs, targets, seed):
        if layers != ["net.0"]:
            raise KeyboardInterrupt
        return super()._score(model, layers, inputs, targets, seed)


def test_sigterm_and_ctrl_c_stop_scoring_with_the_model_unpruned(tmp_path):
    train, val = digits_loaders(n_train=256, n_val=200)
    module = DigitsModule()
    before = [p.shape for p in module.parameters()]
    callback = ShapleyPruningCallback(0.5, criterion=SigtermWhileScoring())
    fit = trainer(tmp_path, [callback])
    with pytest.raises(SIGTERMException):
        fit.fit(module, train, val)
    assert [p.shape for p in module.parameters()] == before and callback.history == []
    assert fit.current_epoch == 0  # stopped inside the first prune, before any evaluation

    sigint = signal.getsignal(signal.SIGINT)
    callback = ShapleyPruningCallback(0.5, criterion=InterruptedOnSecondLayer())
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
            trainer(tmp_path, [callback]).fit(module, train, val)
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert [p.shape for p in module.parameters()] == before and callback.history == []


def test_compiled_frozen_late_and_unvalidated_epochs(tmp_path):
    train, val = digits_loaders(n_train=256, n_val=200)
    compiled = DigitsModule()
    compiled.net = torch.compile(compiled.net)
    with pytest.raises(ValueError, match=r"torch.compile'd submodule\(s\) \['net'\].*original"):
        trainer(tmp_path, [ShapleyPruningCallback(0.5, criterion="l1")]).fit(compiled, train, val)
    with pytest.raises(ValueError, match=r"never prune: epochs=\(3,\).*max_epochs=3"):
        trainer(tmp_path, [ShapleyPruningCallback(0.5, epochs=3)]).fit(DigitsModule(), train, val)
    with pytest.raises(ValueError, match=r"has none: pass val_dataloaders.*calibration="):
        trainer(tmp_path, [ShapleyPruningCallback(0.5)]).fit(DigitsModule(), train)

    frozen = DigitsModule()
    frozen.net[0].requires_grad_(False)
    callback = ShapleyPruningCallback(0.5, epochs=0, criterion="l1", fine_tune=False)
    fit = trainer(tmp_path, [callback], check_val_every_n_epoch=2, num_sanity_val_steps=0)
    fit.fit(frozen, train, val)  # epoch 0 has no validation: it prunes at its end all the same
    assert callback.pruned_epochs == [0] and frozen.net[0].out_channels == 4
    assert not any(p.requires_grad for p in frozen.net[0].parameters())  # still frozen
    assert all(p.requires_grad for p in frozen.net[3].parameters())


def _literal(annotation) -> set[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    found = set()
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            found.update(typing.get_args(arg))
    return found


def test_every_choice_is_a_literal_and_the_cli_example_uses_valid_ones():
    # LightningCLI (jsonargparse) validates Literal choices; jsonargparse is not installed in
    # the test environment, so the annotations it reads are checked here
    hints = typing.get_type_hints(ShapleyPruningCallback.__init__)
    assert _literal(hints["criterion"]) == set(CRITERIA)
    assert _literal(hints["estimator"]) == set(ESTIMATORS)
    assert _literal(hints["ablation"]) == set(ABLATIONS)
    assert _literal(hints["compensation"]) == {*COMPENSATIONS, "auto"}
    assert _literal(hints["metric"]) == set(BUILT_IN)
    assert _literal(hints["scope"]) == {"layer", "global"}
    assert _literal(hints["schedule"]) == {"layer_by_layer", "one_shot"}
    assert _literal(hints["prune_on"]) == {"train_epoch_end", "validation_end"}
    assert "greddy" not in _literal(hints["criterion"])

    config = yaml.safe_load((EXAMPLES / "lightning_cli.yaml").read_text())
    (pruning,) = [c for c in config["trainer"]["callbacks"] if "ShapleyPruning" in c["class_path"]]
    for key, value in pruning["init_args"].items():
        choices = _literal(hints[key])
        assert not choices or value in choices, (key, value)
    ShapleyPruningCallback(**pruning["init_args"])


class FakeRichProgress:
    """What ``RichProgressBar.progress`` offers (rich itself is not installed here)."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=100.0, **options):
        assert total == float("inf")  # Lightning's progress needs a number: inf is open-ended
        self.tasks[len(self.tasks)] = {"description": description, "completed": 0}
        return len(self.tasks) - 1

    def update(self, task, advance=0, description=None):
        self.tasks[task]["completed"] += advance
        if description is not None:
            self.tasks[task]["description"] = description

    def remove_task(self, task):
        self.tasks[task]["removed"] = True

    def refresh(self):
        pass

    soft_refresh = refresh


def test_under_rich_the_scoring_is_a_task_of_the_rich_bar(capsys):
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import RichProgressBar

    from lightning_shapley.callback import _ScoringBar

    rich = RichProgressBar.__new__(RichProgressBar)  # rich is not installed: no __init__
    rich.progress = FakeRichProgress()
    bar = _ScoringBar(SimpleNamespace(progress_bar_callback=rich, is_global_zero=True), "Pruning")
    bar.layer(["net.3"], 1, 4)
    bar.advance(10)
    bar.advance(5)
    bar.close()
    assert rich.progress.tasks == {
        0: {"description": "Pruning: layer 2/4 (net.3)", "completed": 15, "removed": True}
    }
    assert capsys.readouterr().out == ""  # no ASCII bar printed under Rich


def test_a_time_budget_ends_the_scoring_with_the_decision_so_far(tmp_path):
    with pytest.raises(ValueError, match="max_seconds needs a criterion that can stop"):
        ShapleyPruningCallback(0.5, criterion="l1", max_seconds=10)
    with pytest.raises(ValueError, match="max_seconds must be"):
        ShapleyPruningCallback(0.5, max_seconds=-1)
    train, val = digits_loaders(n_train=256, n_val=200)
    spent, params = {}, {}
    for seconds in (0, None):
        fit = trainer(tmp_path, [ShapleyPruningCallback(0.5, max_seconds=seconds)], max_epochs=1)
        fit.fit(DigitsModule(), train, val)
        spent[seconds] = fit.callback_metrics["pruning/evaluations"].item()
        params[seconds] = fit.callback_metrics["pruning/params"].item()
    assert spent[0] == 0 < spent[None]  # out of time at once: the surrogate's decision
    assert params[0] == params[None]  # the same ratio reached either way

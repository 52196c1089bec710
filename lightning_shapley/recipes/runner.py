"""Run a recipe: obtain the model, then prune it every way the recipe asks and judge each."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lightning_shapley.calibration import few_shot_indices
from lightning_shapley.callback import ShapleyPruningCallback
from lightning_shapley.criteria import CRITERION_OPTIONS
from lightning_shapley.lab.classifier import Classifier
from lightning_shapley.lab.models import CifarResNet, DigitsCNN, LeNet5, cifar_vgg, small_vgg
from lightning_shapley.lab.training import evaluate, train
from lightning_shapley.modes import restored_modes
from lightning_shapley.pruning import count_params_and_macs
from lightning_shapley.recipes.data import RecipeData, load_data, targets_of
from lightning_shapley.recipes.report import write_report
from lightning_shapley.recipes.schema import ModelSpec, Recipe, import_class

__all__ = ["build_model", "run_recipe"]


def build_model(spec: ModelSpec, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A freshly initialised model of the recipe's architecture, or of the user's class."""
    if spec.class_path:
        return import_class(spec.class_path, (Path.cwd(),))(**spec.init_args)
    w, channels = spec.width, input_shape[0]
    builders = {
        "digits_cnn": lambda: DigitsCNN(width=max(1, int(16 * w)), num_classes=num_classes),
        "lenet5": lambda: LeNet5(num_classes=num_classes),
        "small_vgg": lambda: small_vgg(channels, num_classes, width=w),
        "cifar_resnet20": lambda: CifarResNet(20, num_classes, width=max(1, int(16 * w))),
        "cifar_resnet56": lambda: CifarResNet(56, num_classes, width=max(1, int(16 * w))),
        "cifar_vgg11": lambda: cifar_vgg("vgg11", num_classes, width=w),
        "cifar_vgg16": lambda: cifar_vgg("vgg16", num_classes, width=w),
        "resnet18": lambda: torchvision.models.resnet18(num_classes=num_classes),
        "resnet50": lambda: torchvision.models.resnet50(num_classes=num_classes),
        "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=num_classes),
    }
    return builders[spec.architecture]()


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning-shapley"
    return Path(os.environ.get("LIGHTNING_SHAPLEY_CACHE", default)) / "models"


def obtain_model(recipe: Recipe, data: RecipeData, instance: int) -> nn.Module:
    """The model to prune: loaded from ``model.checkpoint``, or trained once and cached."""
    spec = recipe.model
    model = build_model(spec, data.num_classes, data.input_shape)
    if spec.checkpoint:
        if not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(
                f"model checkpoint {spec.checkpoint} not found (model.checkpoint)"
            )
        state = torch.load(spec.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = set(model.state_dict())
        if not own & set(state):  # a LightningModule's keys carry the attribute's name
            state = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
        model.load_state_dict(state)
        return model.eval()
    key = json.dumps({"data": asdict(recipe.data), "model": asdict(spec), "instance": instance},
                     sort_keys=True)  # fmt: skip
    path = _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    train(model, data.train, spec.epochs, spec.lr, spec.batch_size, seed=1000 + instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x, _ in pairs]), torch.tensor(
        [int(y) for _, y in pairs]
    )


def run_recipe(recipe: Recipe, output: str | Path | None = None, *, progress: bool = True) -> Path:
    """Run every combination the recipe names and write the report; returns its folder."""
    out = Path(output or recipe.output.format(name=recipe.name))
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(recipe.data)
    p = recipe.pruning
    pool_targets = targets_of(data.pool)
    jobs = recipe.model.instances * len(p.shots) * len(p.seeds) * len(p.criteria)
    bar = tqdm(total=jobs, desc=f"{recipe.name}", disable=not progress, dynamic_ncols=True)
    rows: list[dict] = []
    for instance in range(recipe.model.instances):
        bar.set_postfix_str(f"model {instance}: training or loading")
        model = obtain_model(recipe, data, instance).to(recipe.device)
        accuracy, loss = evaluate(model, data.test)
        example = _tensors(Subset(data.pool, [0]))[0].to(recipe.device)
        params, macs = count_params_and_macs(model, example)
        rows.append(dict(instance=instance, criterion="unpruned", ratio=0.0, shots=0, seed=0,
                         fine_tune_epochs=0, accuracy=accuracy, loss=loss, params=params,
                         macs=macs, seconds=0.0, evaluations=0))  # fmt: skip
        for shots in p.shots:
            for seed in p.seeds:
                chosen = few_shot_indices(pool_targets, shots, seed=seed).tolist()
                calibration = Subset(data.pool, chosen)
                for name in p.criteria:
                    bar.set_postfix_str(f"model {instance}, {shots} shots, seed {seed}: {name}")
                    rows += _prune_and_judge(model, name, recipe, calibration, data.test, seed,
                                             instance, shots)  # fmt: skip
                    bar.update(1)
    bar.close()
    write_report(rows, out, recipe)
    return out


def _prune_and_judge(model, name, recipe, calibration, test, seed, instance, shots):
    """Prune a copy of ``model`` at every ratio as a user would: ``Trainer.fit`` with
    :class:`ShapleyPruningCallback` pruning at the end of epoch 0 (whose training steps are
    skipped), then the fine-tuning epochs; the test set judged after each count of them."""
    p, ft = recipe.pruning, recipe.fine_tune
    options = {"estimator": p.estimator, "budget": p.budget, "ablation": p.ablation}
    takes = CRITERION_OPTIONS.get(name, ())
    options = {k: v for k, v in options.items() if k in takes and v is not None}
    judged = sorted(set(ft.epochs))
    inputs, labels = _tensors(calibration)
    rows = []
    for ratio in p.ratios:
        module = Classifier(copy.deepcopy(model), lr=ft.lr, skip_epochs=1)
        pruning = ShapleyPruningCallback(
            ratio, epochs=0, scope=p.scope, cost=p.cost, schedule=p.schedule, criterion=name,
            calibration=(inputs, labels), compensation=p.compensation,
            ignored_layers=[f"model.{layer}" for layer in p.ignored_layers],
            fine_tune=judged[-1] > 0, held_out=0, seed=seed, verbose=False, **options,
        )  # fmt: skip
        judge = _Judge(test, judged)
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(calibration, batch_size=ft.batch_size, shuffle=True,
                            generator=generator)  # fmt: skip
        with _quiet():
            trainer = pl.Trainer(
                accelerator="gpu" if recipe.device.startswith("cuda") else "cpu", devices=1,
                max_epochs=1 + judged[-1], callbacks=[pruning, judge], logger=False,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False,
            )  # fmt: skip
            torch.manual_seed(seed)
            trainer.fit(module, loader)
        metrics = trainer.callback_metrics
        params, macs = count_params_and_macs(module.model, inputs[:1].to(module.device))
        for epochs, (accuracy, loss) in zip(judged, judge.results, strict=True):
            rows.append(dict(instance=instance, criterion=name, shots=shots, seed=seed,
                             ratio=ratio, fine_tune_epochs=epochs, accuracy=accuracy, loss=loss,
                             params=params, macs=macs,
                             seconds=float(metrics["pruning/estimation_seconds"]),
                             evaluations=int(metrics["pruning/evaluations"])))  # fmt: skip
    return rows


@contextmanager
def _quiet() -> Iterator[None]:
    """No per-fit banners (devices, tips, why the fit stopped): a recipe runs hundreds of fits."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
            warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _Judge(Callback):
    """Accuracy and loss on ``test`` after the pruning epoch (0) and after ``epochs`` of
    fine-tuning, in order."""

    def __init__(self, test: Dataset, epochs: list[int]) -> None:
        self.test, self.epochs = test, epochs
        self.results: list[tuple[float, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch in self.epochs:
            with restored_modes(module):
                self.results.append(evaluate(module, self.test))

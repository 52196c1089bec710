"""Every recipe parses and runs a tiny configuration end to end on data made in its format."""

from __future__ import annotations

import csv
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_shapley.cli import main
from lightning_shapley.recipes import DEFAULT_RECIPE, RecipeError, load_recipe, run_recipe
from lightning_shapley.recipes.schema import parse_recipe_text

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_SHAPLEY_CACHE", str(tmp_path / "cache"))


def tiny_mnist(root: Path) -> None:
    generator = np.random.default_rng(0)
    images = generator.integers(0, 255, (200, 28, 28), dtype=np.uint8)
    labels = np.arange(200, dtype=np.uint8) % 10
    root.mkdir(parents=True)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array([200, 28, 28], ">u4").tobytes() + images.tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + np.array([200], ">u4").tobytes() + labels.tobytes())


def tiny_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": generator.integers(0, 255, (20, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(20)]}  # fmt: skip
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def tiny_image_folder(root: Path) -> None:
    from PIL import Image

    generator = np.random.default_rng(0)
    for part, count in (("train", 4), ("val", 2)):
        for label in ("cat", "dog", "fish"):
            folder = root / part / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = generator.integers(0, 255, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def shrink(recipe, tmp_path: Path):
    """The same recipe at a size CI can afford, on data made in the recipe's format."""
    data, model, pruning, fine_tune = recipe.data, recipe.model, recipe.pruning, recipe.fine_tune
    if data.dataset == "mnist":
        tiny_mnist(tmp_path / "mnist")
        data.root = str(tmp_path / "mnist")
    elif data.dataset == "cifar10":
        tiny_cifar10(tmp_path / "cifar")
        data.root, data.download = str(tmp_path / "cifar"), False
    elif data.dataset == "imagefolder":
        tiny_image_folder(tmp_path / "images")
        data.root, data.image_size = str(tmp_path / "images"), 32
        model.checkpoint = None
    model.instances, model.epochs, model.width = 1, 1, 0.25
    small = model.architecture in ("digits_cnn", "lenet5", "small_vgg", "cifar_resnet20")
    pruning.criteria = ["shapley", "l1"] if small else ["l1"]  # Shapley on big nets: elsewhere
    pruning.ratios, pruning.shots, pruning.seeds, pruning.budget = [0.5], [1], [0], 24
    fine_tune.epochs = [0, 1]
    return recipe


@pytest.mark.parametrize("path", [DEFAULT_RECIPE, *RECIPES], ids=lambda p: p.stem)
def test_every_recipe_parses_and_runs_tiny(path, tmp_path):
    recipe = shrink(load_recipe(path), tmp_path)
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    criteria = recipe.pruning.criteria
    assert len(rows) == 1 + len(criteria) * 2  # unpruned + criterion × fine-tune settings
    assert {r["criterion"] for r in rows} == {"unpruned", *criteria}
    pruned = [r for r in rows if r["criterion"] != "unpruned"]
    unpruned = next(r for r in rows if r["criterion"] == "unpruned")
    assert all(int(r["params"]) < int(unpruned["params"]) for r in pruned)
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    summary = (out / "summary.md").read_text()
    assert "50% removed" in summary and "1 fine-tuning epochs" in summary
    assert (out / "accuracy_vs_ratio.png").stat().st_size > 0 and (out / "cost.png").exists()


def test_default_recipe_results_are_consistent(tmp_path):
    recipe = load_recipe(DEFAULT_RECIPE)
    recipe.model.instances, recipe.model.epochs = 1, 3
    recipe.pruning.seeds, recipe.pruning.budget = [0, 1], 64
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    p = recipe.pruning
    assert len(rows) == 1 + len(p.criteria) * len(p.ratios) * len(p.seeds) * 2
    # more channels removed, fewer parameters left
    l1 = sorted((float(r["ratio"]), int(r["params"])) for r in rows if r["criterion"] == "l1")
    assert [params for _, params in l1] == sorted((params for _, params in l1), reverse=True)
    # the cached model is reused: a second run trains nothing and gives the same numbers
    again = run_recipe(recipe, tmp_path / "again", progress=False)
    assert (again / "results.csv").read_text().split("\n")[1] == (
        out / "results.csv"
    ).read_text().split("\n")[1]


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "pruning:\n  criteria: [shapley, magic]\n",
            r"<t>:2: pruning.criteria: 'magic' is not one of",
        ),
        (
            "pruning:\n  critera: [l1]\n",
            r"<t>:2: pruning.critera: unknown key \(did you mean 'criteria'\?\)",
        ),
        ("model:\n  epochs: many\n", r"<t>:2: model.epochs: expected a int, got 'many'"),
        (
            "pruning:\n  ratios: [0.5, 1.5]\n",
            r"<t>:2: pruning.ratios: every ratio must be in \[0, 1\)",
        ),
        ("data:\n  dataset: mnist\n", r"<t>:2: data.root: dataset 'mnist' needs a root folder"),
        ("data: [1, 2]\n", r"<t>:1: data: expected a mapping"),
        ("colour: blue\n", r"<t>:1: colour: unknown key; known keys"),
        (
            "pruning:\n  scope: global\n  schedule: layer_by_layer\n",
            r"<t>:2: pruning.scope: a global ranking needs schedule: one_shot",
        ),
        (
            "pruning:\n  cost: params\n",
            r"<t>:2: pruning.cost: a parameter or MAC budget needs scope: global",
        ),
    ],
)
def test_bad_recipes_name_the_key_and_line(text, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe_text(text, "<t>")


def test_missing_dataset_path_fails_clearly(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  dataset: mnist\n  root: nowhere\n")
    assert main(["run", str(recipe), "--quiet", "--output", str(tmp_path / "out")]) == 2
    assert "no MNIST t10k IDX files under" in capsys.readouterr().err
    recipe.write_text("pruning:\n  criteria: [l9]\n")
    assert main(["run", str(recipe)]) == 2
    assert "r.yaml:2: pruning.criteria: 'l9' is not one of" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2


def test_show_default_prints_the_embedded_recipe(capsys):
    assert main(["show-default"]) == 0
    assert "name: digits" in capsys.readouterr().out


def test_checkpoint_models_are_loaded(tmp_path):
    from lightning_shapley.lab.models import DigitsCNN

    torch.save({"state_dict": {f"net.{k}": v for k, v in DigitsCNN().state_dict().items()}},
               tmp_path / "module.ckpt")  # fmt: skip
    text = "model:\n  checkpoint: module.ckpt\npruning:\n  criteria: [l1]\n  seeds: [0]\n"
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.model.checkpoint == str(tmp_path / "module.ckpt")
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    assert (out / "results.csv").exists()


def test_a_parameter_budget_is_allocated_by_the_network_wide_game(tmp_path):
    recipe = load_recipe(DEFAULT_RECIPE)
    recipe.model.instances, recipe.model.epochs = 1, 2
    p = recipe.pruning
    p.criteria, p.ratios, p.seeds, p.shots = ["greedy", "l1"], [0.25, 0.5], [0], [2]
    p.scope, p.schedule, p.cost, p.compensation = "global", "one_shot", "params", "least_squares"
    recipe.fine_tune.epochs = [0]
    out = run_recipe(recipe, tmp_path / "global", progress=False)
    with open(out / "results.csv") as f:
        rows = {(r["criterion"], float(r["ratio"])): int(r["params"]) for r in csv.DictReader(f)}
    unpruned = rows[("unpruned", 0.0)]
    for name in ("greedy", "l1"):  # a larger parameter budget removes more parameters
        assert unpruned > rows[(name, 0.25)] > rows[(name, 0.5)], name


def test_each_pruning_is_a_lightning_fit_with_the_callback(tmp_path, monkeypatch):
    from lightning_shapley.callback import ShapleyPruningCallback
    from lightning_shapley.recipes.data import load_data
    from lightning_shapley.recipes.runner import obtain_model

    seen = []
    real = ShapleyPruningCallback._prune

    def spy(self, trainer, module, epoch):
        weights = torch.cat([w.flatten() for w in module.model.state_dict().values()])
        seen.append((self.criterion, self.ratio, epoch, trainer.max_epochs, weights))
        real(self, trainer, module, epoch)

    monkeypatch.setattr(ShapleyPruningCallback, "_prune", spy)
    recipe = load_recipe(DEFAULT_RECIPE)
    recipe.model.instances, recipe.model.epochs = 1, 2
    p = recipe.pruning
    p.criteria, p.ratios, p.seeds, p.shots = ["bandit_shapley", "l1"], [0.25, 0.5], [0], [2]
    recipe.fine_tune.epochs = [0, 2]
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    # pruned at the end of epoch 0, then fine-tuned for 2 epochs
    assert [s[:4] for s in seen] == [(c, r, 0, 3) for c in p.criteria for r in p.ratios]
    trained = obtain_model(recipe, load_data(recipe.data), 0).state_dict().values()
    trained = torch.cat([w.flatten() for w in trained])
    assert all(torch.equal(s[4], trained) for s in seen)  # untouched by epoch 0's steps
    with open(out / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["criterion"] == "bandit_shapley"]
    assert {int(r["fine_tune_epochs"]) for r in rows} == {0, 2}
    assert all(int(r["evaluations"]) > 0 and float(r["seconds"]) > 0 for r in rows)


USER_PACKAGE = """
import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class UserNet(pl.LightningModule):
    def __init__(self, width=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class UserDigits(pl.LightningDataModule):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def setup(self, stage):
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16 * self.scale
        data = TensorDataset(x, torch.tensor(y))
        self.parts = torch.utils.data.random_split(data, [0.6, 0.2, 0.2],
                                                   torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.parts[0], batch_size=64)

    def val_dataloader(self):
        return DataLoader(self.parts[1], batch_size=64)

    def test_dataloader(self):
        return DataLoader(self.parts[2], batch_size=64)
"""


def test_a_recipe_prunes_the_users_own_module_and_datamodule(tmp_path):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text(USER_PACKAGE)
    text = (
        "data:\n  class_path: userpkg.UserDigits\n  init_args: {scale: 1.0}\n"
        "model:\n  class_path: userpkg.UserNet\n  init_args: {width: 5}\n  epochs: 3\n"
        "pruning:\n  criteria: [l1]\n  ratios: [0.4]\n  seeds: [0]\n  shots: [2]\n"
    )
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml")  # found beside the recipe file
    out = run_recipe(recipe, tmp_path / "run", progress=False)
    with open(out / "results.csv") as f:
        rows = {r["criterion"]: r for r in csv.DictReader(f)}
    assert int(rows["l1"]["params"]) < int(rows["unpruned"]["params"])
    assert float(rows["unpruned"]["accuracy"]) > 0.5  # trained on the user's data
    assert "userpkg.UserNet on userpkg.UserDigits" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("model:\n  class_path: userpkg.Nowhere\n", "model.class_path: module 'userpkg' has no"),
        ("model:\n  class_path: nopkg.Net\n", "model.class_path: cannot import 'nopkg'"),
        ("model:\n  class_path: userpkg.UserDigits\n", "is not a torch.nn.modules.module.Module"),
        ("data:\n  class_path: userpkg.UserNet\n", "is not a lightning.pytorch.core.datamodule"),
        ("model:\n  architecture: lenet5\n  class_path: userpkg.UserNet\n", "either"),
        ("model:\n  class_path: userpkg.UserNet\n  init_args: [1]\n", "expected a mapping"),
    ],
)
def test_user_classes_are_checked_when_the_recipe_is_read(tmp_path, section, problem):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text(USER_PACKAGE)
    (tmp_path / "r.yaml").write_text(section)
    with pytest.raises(RecipeError, match=r"r\.yaml:") as error:
        load_recipe(tmp_path / "r.yaml")
    assert problem in str(error.value)

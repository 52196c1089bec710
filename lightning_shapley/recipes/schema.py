"""Recipe files: YAML read into dataclasses, every error naming the key and the line.

A recipe says which model on which data, how it is obtained, and which pruning comparison to
run. Unknown keys, wrong types and bad values are reported as ``file:line: key: problem``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_shapley.criteria import CRITERIA, DEFAULT_CRITERION
from lightning_shapley.estimators import ESTIMATORS
from lightning_shapley.options import ABLATIONS, COMPENSATIONS, COSTS, SCHEDULES, SCOPES

__all__ = [
    "DataSpec",
    "FineTuneSpec",
    "ModelSpec",
    "PruningSpec",
    "Recipe",
    "RecipeError",
    "load_recipe",
]

DATASETS = ("digits", "mnist", "cifar10", "imagefolder")
ARCHITECTURES = ("digits_cnn", "lenet5", "small_vgg", "cifar_resnet20", "cifar_resnet56",
                 "cifar_vgg11", "cifar_vgg16", "resnet18", "resnet50", "mobilenet_v2")  # fmt: skip


class RecipeError(ValueError):
    """A recipe that cannot run, with where and why."""


@dataclass
class DataSpec:
    """Where the examples come from.

    ``digits`` and ``mnist`` are split deterministically (seeded permutation) into training,
    calibration pool and test parts of the given fractions; ``cifar10`` and ``imagefolder`` use
    their own train/test (``val``) parts, the calibration pool being the training part.
    ``class_path`` names the user's own ``LightningDataModule`` instead (built with
    ``init_args``): its train, val and test datasets are the training set, the calibration pool
    and the test set.
    """

    dataset: str = "digits"
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    download: bool = False
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0
    image_size: int = 224


@dataclass
class ModelSpec:
    """How the model to prune is obtained: trained by the recipe (and cached) or loaded.

    ``class_path`` names the user's own ``nn.Module`` or ``LightningModule`` class instead of a
    reference ``architecture`` (built with ``init_args``; its weights from ``checkpoint``).
    """

    architecture: str = "digits_cnn"
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    width: float = 1.0
    checkpoint: str | None = None
    epochs: int = 15
    lr: float = 0.003
    batch_size: int = 64
    instances: int = 1


@dataclass
class PruningSpec:
    """The comparison: criteria × ratios × shots × calibration seeds."""

    criteria: list[str] = field(default_factory=lambda: [DEFAULT_CRITERION, "random", "l1"])
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    shots: list[int] = field(default_factory=lambda: [10])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    scope: str = "layer"
    schedule: str = "one_shot"
    estimator: str = "permutation"
    budget: int = 512
    ablation: str | None = None
    compensation: str = "least_squares"
    cost: str = "channels"
    ignored_layers: list[str] = field(default_factory=list)


@dataclass
class FineTuneSpec:
    """Few-shot fine-tuning after pruning, on the calibration set only (0 epochs = none)."""

    epochs: list[int] = field(default_factory=lambda: [0])
    lr: float = 0.001
    batch_size: int = 32


@dataclass
class Recipe:
    """A whole recipe."""

    name: str = "recipe"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    fine_tune: FineTuneSpec = field(default_factory=FineTuneSpec)
    output: str = "runs/{name}"
    device: str = "cpu"


CHOICES = {
    "data.dataset": DATASETS,
    "model.architecture": ARCHITECTURES,
    "pruning.scope": SCOPES,
    "pruning.schedule": SCHEDULES,
    "pruning.estimator": tuple(ESTIMATORS),
    "pruning.ablation": ABLATIONS,
    "pruning.compensation": COMPENSATIONS,
    "pruning.cost": COSTS,
    "pruning.criteria": tuple(CRITERIA),
}


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Relative ``data.root`` and ``model.checkpoint`` paths
    are taken relative to the file's folder.

    Raises:
        RecipeError: ``file:line: key: problem`` for the first thing wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if node is None:
        raise RecipeError(f"{path}: the recipe is empty")
    recipe = _build(Recipe, node, path, "")
    _check_values(recipe, node, path, search=(Path.cwd(), path.parent.resolve()))
    # relative paths in a recipe are relative to the recipe file
    if recipe.data.root and not Path(recipe.data.root).is_absolute():
        recipe.data.root = str(path.parent / recipe.data.root)
    if recipe.model.checkpoint and not Path(recipe.model.checkpoint).is_absolute():
        recipe.model.checkpoint = str(path.parent / recipe.model.checkpoint)
    return recipe


def parse_recipe_text(text: str, name: str = "<recipe>") -> Recipe:
    """Validate a recipe given as text (``name`` is used in error messages)."""
    node = yaml.compose(text)
    recipe = _build(Recipe, node, Path(name), "")
    _check_values(recipe, node, Path(name))
    return recipe


def _fail(path: Path, node: yaml.Node, key: str, problem: str) -> RecipeError:
    key = key.rstrip(".") or "recipe"
    return RecipeError(f"{path}:{node.start_mark.line + 1}: {key}: {problem}")


def _build(cls: type, node: yaml.Node, path: Path, prefix: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, prefix, f"expected a mapping of {cls.__name__} fields")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key_node, value_node in node.value:
        key = key_node.value
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            )
            raise _fail(path, key_node, dotted, f"unknown key{hint}")
        values[key] = _convert(hints[key], value_node, path, dotted)
    return cls(**values)


def _convert(hint: Any, node: yaml.Node, path: Path, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, node, path, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        is_null = isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")
        if is_null and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(node, yaml.MappingNode):
            raise _fail(path, node, key, "expected a mapping")
        return yaml.safe_load(yaml.serialize(node))
    if origin is list:
        if not isinstance(node, yaml.SequenceNode):
            raise _fail(path, node, key, "expected a list")
        (item,) = typing.get_args(hint)
        return [_convert(item, child, path, key) for child in node.value]
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(path, node, key, f"expected a {hint.__name__}")
    value = yaml.safe_load(yaml.serialize(node))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _fail(path, node, key, f"expected a {hint.__name__}, got {value!r}")
    return value


def _node_at(root: yaml.Node, dotted: str) -> yaml.Node:
    node = root
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            return node
        match = [v for k, v in node.value if k.value == part]
        if not match:
            return node
        node = match[0]
    return node


def import_class(dotted: str, search: tuple[Path, ...] = ()) -> type:
    """The class ``package.module.Name`` names, looked up in ``search`` folders first.

    Raises:
        ImportError: What was not found, or why the module failed to import.
    """
    module_name, _, name = dotted.rpartition(".")
    if not module_name:
        raise ImportError(f"{dotted!r} is not a dotted path such as 'mypackage.MyModel'")
    added = [str(folder) for folder in search if str(folder) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"cannot import {module_name!r}: {error}") from None
    finally:
        for folder in added:
            sys.path.remove(folder)
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise ImportError(f"module {module_name!r} has no class {name!r}")
    return found


def _check_class(dotted: str, base: type, search: tuple[Path, ...]) -> str | None:
    """Why ``dotted`` is not an importable subclass of ``base``; ``None`` if it is."""
    try:
        cls = import_class(dotted, search)
    except ImportError as error:
        return str(error)
    if not issubclass(cls, base):
        return f"{dotted} is not a {base.__module__}.{base.__qualname__}"
    return None


def _check_values(
    recipe: Recipe, root: yaml.Node, path: Path, search: tuple[Path, ...] = ()
) -> None:
    """Range and choice checks, each naming the key and its line."""

    def fail(key: str, problem: str) -> RecipeError:
        return _fail(path, _node_at(root, key), key, problem)

    for section, reference in (("model", "architecture"), ("data", "dataset")):
        if getattr(recipe, section).class_path is None:
            continue
        if _node_at(root, f"{section}.{reference}") is not _node_at(root, section):
            raise fail(f"{section}.{reference}", f"give either {reference} or class_path")
        if section == "model":
            from torch import nn

            problem = _check_class(recipe.model.class_path, nn.Module, search)
        else:
            from lightning.pytorch import LightningDataModule

            problem = _check_class(recipe.data.class_path, LightningDataModule, search)
        if problem:
            raise fail(f"{section}.class_path", problem)

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in choices:
                raise fail(key, f"{item!r} is not one of {', '.join(choices)}")
    p = recipe.pruning
    if not p.criteria:
        raise fail("pruning.criteria", "name at least one criterion")
    if not p.ratios or not all(0 <= r < 1 for r in p.ratios):
        raise fail("pruning.ratios", f"every ratio must be in [0, 1), got {p.ratios}")
    if not p.shots or not all(s >= 1 for s in p.shots):
        raise fail("pruning.shots", f"shots per class must be at least 1, got {p.shots}")
    if not p.seeds:
        raise fail("pruning.seeds", "name at least one calibration seed")
    if p.budget < 1:
        raise fail("pruning.budget", f"must be a positive number of evaluations, got {p.budget}")
    if p.scope == "global" and p.schedule != "one_shot":
        raise fail("pruning.scope", "a global ranking needs schedule: one_shot")
    if p.cost != "channels" and p.scope != "global":
        raise fail("pruning.cost", "a parameter or MAC budget needs scope: global")
    d = recipe.data
    if len(d.split) != 3 or abs(sum(d.split) - 1) > 1e-6 or min(d.split) <= 0:
        raise fail("data.split", f"three positive fractions summing to 1, got {d.split}")
    if d.dataset in ("mnist", "cifar10", "imagefolder") and not d.root:
        raise fail("data.root", f"dataset {d.dataset!r} needs a root folder")
    m = recipe.model
    if m.instances < 1 or m.epochs < 0 or m.lr <= 0 or m.batch_size < 1 or m.width <= 0:
        raise fail("model", "instances ≥ 1, epochs ≥ 0, lr > 0, batch_size ≥ 1, width > 0")
    f = recipe.fine_tune
    if not f.epochs or min(f.epochs) < 0 or f.lr <= 0 or f.batch_size < 1:
        raise fail("fine_tune", "epochs: a list of counts ≥ 0 (0 = none); lr > 0; batch_size ≥ 1")

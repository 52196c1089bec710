"""End to end: seconds and game evaluations to prune 50 % of every layer, every criterion side by
side in one run (read the ratios; the seconds depend on the machine and its load).

Each model is pruned layer by layer, first to last, each layer scored on the partly pruned model
from 128 calibration samples, and every criterion's plan is followed by the same least-squares
refit of the consumers. The criteria: the default (``bandit_shapley``), its ingredients taken out
one at a time, ``greedy``, ``shapley`` (antithetic permutations), weight L1, and TorchPruner's
5-permutation Shapley values (Ancona et al. 2020) where its model form allows (a sequential model,
given a ``forward_partial``): it runs when ``TORCHPRUNER`` points to a checkout of
https://github.com/marcoancona/TorchPruner, and is skipped otherwise.

    TORCHPRUNER=/path/to/TorchPruner python benchmarks/end_to_end.py --threads 1
    python benchmarks/end_to_end.py --models lenet vgg8 --out /tmp/e2e

Models: a 20-50-500 LeNet-5 trained for one epoch on 8,000 MNIST test images (accuracy on the
other 2,000 reported), a CIFAR VGG-8 (convolutions of 32, 32, 64, 64, 128, 128 and 256 channels,
one linear layer) and CIFAR ResNet-20 and ResNet-56 with random weights, and torchvision's
resnet18 and mobilenet_v3_small at 32×32 with random weights (random inputs for all but LeNet).
The random models get batch-norm statistics from their calibration inputs and a classifier
scaled so that their logits vary across inputs with unit spread, as a trained model's do.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.criteria import (
    DEFAULT_CRITERION,
    BanditShapleyCriterion,
    Criterion,
    EliminationCriterion,
    ImportanceCriterion,
    ShapleyCriterion,
)
from lightning_shapley.lab.models import CifarResNet
from lightning_shapley.metrics import reference_logits
from lightning_shapley.plan import make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import prunable_layer_names

HERE = Path(__file__).parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist-test10k"
SAMPLES, RATIO = 128, 0.5


class Sequential(nn.Sequential):
    """``nn.Sequential`` with TorchPruner's ``forward_partial`` (its fast Shapley path)."""

    def forward_partial(self, x, to_module=None, from_module=None):
        started = from_module is None
        for module in self:
            if started:
                x = module(x)
            if module is to_module:
                return x
            if module is from_module:
                started = True
        return x


def lenet_20_50_500() -> Sequential:
    return Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip


def vgg8() -> Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in (32, 32, "M", 64, 64, "M", 128, 128, "M", 256, "M"):
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
        channels = item
    return Sequential(*layers, nn.Flatten(), nn.Linear(256 * 2 * 2, 10))


def _randomized(model: nn.Module) -> nn.Module:
    """Random weights with batch-norm statistics that keep activations in range."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(0)
        return _randomized(getattr(torchvision.models, name)(weights=None, num_classes=10))

    return build


def mnist_lenet() -> tuple[nn.Module, torch.Tensor, torch.Tensor, tuple]:
    from lightning_shapley.lab.datasets import load_mnist_idx
    from lightning_shapley.lab.training import train

    x, y = load_mnist_idx(MNIST)
    x = x.float().view(-1, 1, 28, 28) if x.dim() == 3 else x.float()
    torch.manual_seed(0)
    model = lenet_20_50_500()
    train(model, torch.utils.data.TensorDataset(x[:8000], y[:8000]), 1, 0.002, 64, seed=0)
    model.eval()
    return model, x[8000 : 8000 + SAMPLES], y[8000 : 8000 + SAMPLES], (x[8000:], y[8000:])


def random_model(build: Callable[[], nn.Module]) -> Callable:
    def make() -> tuple[nn.Module, torch.Tensor, torch.Tensor, None]:
        torch.manual_seed(0)
        x = torch.randn(SAMPLES, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        model = _calibrated(_randomized(build()), x)
        with torch.no_grad():
            y = model(x).argmax(1)
        return model, x, y, None

    return make


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A random model that behaves like a trained one on ``x``: batch-norm statistics from
    ``x`` (activations neither vanish nor explode with depth) and a classifier scaled so the
    logits vary across examples with unit spread. Without it, torchvision's fresh
    mobilenet_v3_small gives logits that differ by 1e-9 between inputs, and the games of half
    its layers are blind in float32."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one pass sets the statistics of x
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    with torch.no_grad():
        logits = model(x)
        scale = 1 / max(float((logits - logits.mean(0)).std()), 1e-12)
        head.weight.mul_(scale)
        if head.bias is not None:
            head.bias.mul_(scale)
    return model


MODELS = {
    "lenet": ("LeNet-5 20-50-500, MNIST", mnist_lenet),
    "vgg8": ("CIFAR VGG-8", random_model(vgg8)),
    "resnet20": ("CIFAR ResNet-20", random_model(lambda: CifarResNet(20))),
    "resnet56": ("CIFAR ResNet-56", random_model(lambda: CifarResNet(56))),
    "resnet18": ("torchvision resnet18, 32×32", random_model(torchvision_model("resnet18"))),
    "mobilenet_v3_small": (
        "torchvision mobilenet_v3_small, 32×32",
        random_model(torchvision_model("mobilenet_v3_small")),
    ),
}


def criteria() -> dict[str, Callable[[], Criterion]]:
    return {
        DEFAULT_CRITERION: BanditShapleyCriterion,
        "l1": lambda: ImportanceCriterion("l1"),
        "default without refine": lambda: BanditShapleyCriterion(refine=False),
        "default without sampling (the search decides every channel)": lambda: (
            BanditShapleyCriterion(evaluations_per_channel=0.1)
        ),
        "default without screening": lambda: BanditShapleyCriterion(screen=None),
        "default on every calibration example": lambda: BanditShapleyCriterion(max_examples=None),
        "default without surrogate": lambda: BanditShapleyCriterion(surrogate=False),
        "greedy": EliminationCriterion,
        "shapley (antithetic)": lambda: ShapleyCriterion("permutation"),
    }


class TorchPrunerShapley(Criterion):
    """TorchPruner's ``ShapleyAttributionMetric`` (5 permutations, removal direction, per-example
    loss, mean over examples), behind our criterion interface."""

    name = "torchpruner_shapley"

    def __init__(self, permutations: int = 5) -> None:
        self.permutations = permutations

    def _score(self, model, layers, inputs, targets, seed):
        from torchpruner.attributions import ShapleyAttributionMetric

        np_seed = __import__("numpy").random.seed
        np_seed(seed)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(inputs, targets), batch_size=len(inputs)
        )
        metric = ShapleyAttributionMetric(
            model, loader, F.cross_entropy, inputs.device, sv_samples=self.permutations
        )
        scores, evaluations = {}, 0
        for layer in layers:
            module = model.get_submodule(layer)
            values = metric.run(module)
            scores[layer] = torch.as_tensor(values, dtype=torch.float64)
            evaluations += 2 + self.permutations * len(values)
        return scores, evaluations


def prune_all(model, inputs, targets, criterion: Criterion) -> tuple[nn.Module, float, int, str]:
    """Layer by layer, 50 % each, the least-squares refit after each; (model, seconds, evals,
    channels the bandit settled / channels scored, or "–")."""
    pruned = copy.deepcopy(model)
    layers = prunable_layer_names(pruned, inputs[:1])
    scoring_targets = reference_logits(model, inputs) if criterion.label_free else targets
    began, evaluations, settled, scored = time.perf_counter(), 0, 0, 0
    for layer in layers:
        scores = criterion.score(pruned, [layer], (inputs, scoring_targets), seed=0, cut=RATIO)
        evaluations += scores.n_evals
        settled += getattr(criterion, "settled_channels", 0)
        scored += getattr(criterion, "scored_channels", 0)
        plan = make_plan(scores.values, RATIO)
        prune(pruned, plan, inputs, compensation="least_squares", reference=model,
              count_macs=False)  # fmt: skip
    return (
        pruned,
        time.perf_counter() - began,
        evaluations,
        f"{settled}/{scored}" if scored else "–",
    )


def accuracy(model: nn.Module, test: tuple | None) -> float | None:
    if test is None:
        return None
    with torch.no_grad():
        return float((model(test[0]).argmax(1) == test[1]).float().mean())


def main() -> None:
    global SAMPLES  # one setting for the whole run
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--criteria", nargs="+", default=None, help="a subset, by name")
    parser.add_argument("--slow-on", nargs="*", default=["lenet", "vgg8", "resnet20"],
                        help="models on which greedy and shapley also run")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="calibration samples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    SAMPLES = args.samples
    pruner = os.environ.get("TORCHPRUNER")
    if pruner:
        sys.path.insert(0, pruner)
    rows = []
    for key in args.models:
        title, make = MODELS[key]
        model, inputs, targets, test = make()
        named = criteria()
        if pruner and isinstance(model, Sequential):  # beside ours, before the slow ones
            items = list(named.items())
            named = dict([*items[:2], ("torchpruner 5-perm shapley", TorchPrunerShapley),
                          *items[2:]])  # fmt: skip
        for name, build in named.items():
            if args.criteria and name not in args.criteria:
                continue
            slow = name in ("greedy", "shapley (antithetic)") or name.startswith("default,")
            slow = slow or name.startswith(("default with", "default on"))
            if slow and key not in args.slow_on:
                continue
            pruned, seconds, evaluations, settled = prune_all(model, inputs, targets, build())
            row = dict(model=title, criterion=name, seconds=round(seconds, 2),
                       evaluations=evaluations, settled_by_bandit=settled,
                       accuracy=accuracy(pruned, test))  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, args.out, args.threads)  # after every row: a long run keeps its part


def write(rows: list[dict], out: Path, threads: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "end_to_end.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "end_to_end.md").write_text(report(rows, threads))


def report(rows: list[dict], threads: int) -> str:
    lines = ["# End to end: pruning 50 % of every layer", "",
             f"{SAMPLES} calibration samples, layer by layer, the least-squares refit after every "
             f"criterion; {threads} thread(s), all rows in one run (`benchmarks/end_to_end.py`). "
             "Ratios: seconds over weight L1's and over TorchPruner's 5-permutation Shapley "
             "(same run). Accuracy: MNIST, the 2,000 test images not used for training "
             "(no fine-tuning). Settled by the bandit: channels whose side of the cut the "
             "bandit sampler settled, of those it scored (the guided search decided the "
             "rest).", "",
             "| model | criterion | seconds | evaluations | settled by the bandit | × L1 "
             "| × TorchPruner | accuracy |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in dict.fromkeys(r["model"] for r in rows):
        part = [r for r in rows if r["model"] == model]
        l1 = next((r["seconds"] for r in part if r["criterion"] == "l1"), None)
        tp = next((r["seconds"] for r in part if r["criterion"].startswith("torchpruner")), None)
        for r in part:
            ratio_l1 = f"{r['seconds'] / l1:.1f}" if l1 else "–"
            ratio_tp = f"{r['seconds'] / tp:.2f}" if tp else "–"
            acc = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
            lines.append(f"| {model} | {r['criterion']} | {r['seconds']:.1f} "
                         f"| {r['evaluations']:,} | {r['settled_by_bandit']} | {ratio_l1} "
                         f"| {ratio_tp} | {acc} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

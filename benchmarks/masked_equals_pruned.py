"""Masked = pruned, measured: the channel game's value against the physically pruned model.

For each architecture, every prunable group loses a random 30 % of its channels (a player of a
group with grouped convolutions is one channel in each block). The
network-wide ``ChannelGame`` (zero ablation) evaluates that coalition; the model is then pruned
through torch-pruning and its logits and loss are compared on the same data. It also reports
parameters and MACs of torchvision's ResNet-18 (CIFAR-size input) at 30 % and 50 % of every
group's channels removed by weight L1, and checks the save/load round trip bit for bit.

Run: ``python benchmarks/masked_equals_pruned.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.checkpoint import load_pruned, save_pruned
from lightning_shapley.criteria import criterion_by_name
from lightning_shapley.lab.models import CifarResNet, DigitsCNN, LeNet5, cifar_vgg
from lightning_shapley.plan import PruningPlan, make_plan
from lightning_shapley.prune import prune
from lightning_shapley.pruning import prunable_layer_names

RESULTS = Path(__file__).parent / "results"


class ConcatNet(nn.Module):
    """Two branches joined by ``torch.cat``, a conv, a flatten→linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 24, 3, padding=1)
        self.bn, self.mix = nn.BatchNorm2d(40), nn.Conv2d(40, 32, 3, padding=1)
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.left(x), self.right(x)], dim=1)))
        return self.head(F.max_pool2d(torch.relu(self.mix(y)), 2).flatten(1))


def vit() -> nn.Module:
    """A small torchvision VisionTransformer, its (zero-initialised) head drawn at random."""
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


def randomized(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


ARCHITECTURES = {
    "Sequential CNN (digits), flatten→linear": (lambda: DigitsCNN(), (1, 8, 8)),
    "LeNet-5": (LeNet5, (1, 28, 28)),
    "CIFAR VGG-11-BN": (lambda: cifar_vgg("vgg11"), (3, 32, 32)),
    "CIFAR ResNet-20": (lambda: CifarResNet(20), (3, 32, 32)),
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "torchvision mobilenet_v2 (depthwise)": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
    "torchvision vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), (3, 32, 32)),
    "torch.cat branches": (ConcatNet, (3, 8, 8)),
    "torchvision regnet_y_400mf (grouped convs)": (
        lambda: torchvision.models.regnet_y_400mf(num_classes=10), (3, 32, 32)),
    "torchvision convnext_tiny (channels-last LayerNorm)": (
        lambda: torchvision.models.convnext_tiny(num_classes=10), (3, 32, 32)),
    "torchvision VisionTransformer (2×64, MLPs only)": (vit, (3, 32, 32)),
}  # fmt: skip


def masked_vs_pruned(build, shape) -> dict:
    torch.manual_seed(0)
    model = randomized(build())
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a transformer's attention groups are left out
        layers = prunable_layer_names(model, x[:1])
    game = ChannelGame(model, layers, (x, y), metric=lambda logits, t: logits)  # logits as value
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(game.n_players, dtype=torch.bool)
    removed, offset = {}, 0
    for group in game.groups:
        chosen = torch.randperm(group.n_channels, generator=generator)[
            : int(0.3 * group.n_channels)
        ]
        removed[group.layer] = sorted(chosen.tolist())
        mask[offset + chosen] = False
        offset += group.n_channels
    masked_logits = game._logits(mask.unsqueeze(0))[0]
    loss_game = F.cross_entropy(masked_logits, y).item()
    plan = PruningPlan(removed, {g.layer: g.n_channels for g in game.groups}, 0.3)
    report = prune(model, plan, x)
    with torch.no_grad():
        logits = model(x)
    return {
        "groups": len(layers),
        "players": game.n_players,
        "strategy": game.strategy,
        "max_abs_logit_diff": (logits - masked_logits).abs().max().item(),
        "max_relative_logit_diff": (
            (logits - masked_logits).abs().max() / logits.abs().max()
        ).item(),
        "loss_diff": abs(F.cross_entropy(logits, y).item() - loss_game),
        "params_kept": report.params_after / report.params_before,
    }


def resnet18_sizes() -> list[dict]:
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    rows = []
    for ratio in (0.3, 0.5):
        model = torchvision.models.resnet18(num_classes=10).eval()
        pristine = copy.deepcopy(model)
        layers = prunable_layer_names(model, x[:1])
        scores = criterion_by_name("l1").score(model, layers, (x, y)).values
        report = prune(model, make_plan(scores, ratio), x)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "pruned.pt"
            save_pruned(model, report.history, path)
            load_pruned(pristine, path, x[:1])
        with torch.no_grad():
            bitwise = torch.equal(pristine(x), model(x))
        rows.append({"ratio": ratio, "report": report, "round_trip_bitwise": bitwise})
    return rows


def main() -> None:
    lines = ["# Masked = pruned", "",
             "Every prunable group loses a random 30 % of its channels; the network-wide game's",
             "logits for that coalition against the physically pruned model's (16 inputs).", "",
             "| architecture | groups | players | game strategy | max abs logit diff | relative "
             "| loss diff | params kept |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, (build, shape) in ARCHITECTURES.items():
        r = masked_vs_pruned(build, shape)
        lines.append(f"| {name} | {r['groups']} | {r['players']} | {r['strategy']} | "
                     f"{r['max_abs_logit_diff']:.2e} | {r['max_relative_logit_diff']:.1e} | "
                     f"{r['loss_diff']:.2e} | "
                     f"{r['params_kept']:.1%} |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += ["", "# torchvision ResNet-18 (10 classes, 32×32), every group pruned by weight L1",
              "", "| removed per group | params before | params after | MACs before | MACs after "
              "| save/load round trip |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in resnet18_sizes():
        rep = row["report"]
        lines.append(f"| {row['ratio']:.0%} | {rep.params_before:,} | {rep.params_after:,} "
                     f"({rep.params_after / rep.params_before:.1%}) | {rep.macs_before:,} | "
                     f"{rep.macs_after:,} ({rep.macs_after / rep.macs_before:.1%}) | "
                     f"{'bitwise' if row['round_trip_bitwise'] else 'DIFFERS'} |")  # fmt: skip
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "masked_equals_pruned.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

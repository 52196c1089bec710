"""Small reference networks used by the demo, the benchmarks and the recipes."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CifarResNet", "DigitsCNN", "LeNet5", "cifar_vgg", "small_vgg"]


class DigitsCNN(nn.Sequential):
    """A small CNN for 8×8 digits ``[B, 1, 8, 8]`` → logits ``[B, 10]``.

    Example:
        >>> import torch
        >>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )  # fmt: skip


class LeNet5(nn.Sequential):
    """LeNet-5 for 28×28 digits ``[B, 1, 28, 28]`` → logits ``[B, 10]``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )  # fmt: skip


def small_vgg(in_channels: int = 1, num_classes: int = 10, width: float = 1.0) -> nn.Sequential:
    """A small VGG-style network for 28×28 digits ``[B, 1, 28, 28]``: two conv stages of two
    3×3 convolutions with batch norm, then flatten→linear→linear."""
    a, b = max(1, int(32 * width)), max(1, int(64 * width))
    return nn.Sequential(
        nn.Conv2d(in_channels, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(),
        nn.Conv2d(a, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
        nn.Conv2d(b, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(b * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )  # fmt: skip


VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
}  # fmt: skip


def cifar_vgg(config: str = "vgg11", num_classes: int = 10, width: float = 1.0) -> nn.Sequential:
    """VGG with batch norm for 32×32 images ``[B, 3, 32, 32]``: conv stages, flatten, linear.

    Args:
        config: ``"vgg11"`` or ``"vgg16"``.
        num_classes: Classifier outputs.
        width: Multiplier of every layer's channels.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG_CONFIGS[config]:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(1, int(item * width))
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, num_classes))


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (depth 6k + 2: 20, 32, 56, …) for ``[B, 3, 32, 32]``.

    Example:
        >>> import torch
        >>> CifarResNet(20)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6k + 2 with k >= 1 (20, 32, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, channels = [], width
        for stage in range(3):
            out = width * 2**stage
            stride = 1 if stage == 0 else 2
            stages.append(nn.Sequential(*[
                _BasicBlock(channels if i == 0 else out, out, stride if i == 0 else 1)
                for i in range(blocks)
            ]))  # fmt: skip
            channels = out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))

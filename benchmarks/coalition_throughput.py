"""Coalition evaluations per second of ``ChannelGame``, four ways, with 128 calibration samples.

For every prunable layer of LeNet-5 (trained here on real MNIST), CIFAR VGG-11-BN and CIFAR
ResNet-20 (both randomly initialised: weights do not change throughput), the same game is built
four ways and timed side by side, layer after layer:

* ``ours``: ``strategy="auto", chunk_size="auto"`` (prefix cache, stacked coalitions with a
  timed chunk size, first consumer as a matrix product when memory allows);
* ``naive``: ``strategy="full", chunk_size=1`` (one whole masked forward per coalition);
* ``suffix_loop``: ``strategy="suffix", chunk_size=1`` (one forward of the dependent part per
  coalition, the anchor to beat);
* ``stacked``: ``strategy="suffix", chunk_size=16`` (the dependent part on 16 coalitions at once).

All four play the game with the default criterion's ablation (regression: a removed channel
becomes its least-squares prediction from the kept ones; ``--ablation`` times another); its
other cost per layer, the surrogate (``ChannelGame.surrogate``: one forward and a backward per
class), is timed once per layer and reported in seconds and in ``ours`` evaluations.

Each way is warmed up with one call on 8 fixed coalitions, which also checks that the four ways
agree; ``ours`` gets a few more warm-up calls so that its chunk tuner settles. Then random
coalitions (each player kept with probability 0.5) are evaluated in calls of up to 64, round-robin
over the four ways, until each way has spent at least 2 calls and ``--seconds`` seconds. Calls are
shortened for slow ways. Construction time is left out of the throughput.

Run from the repository root::

    python benchmarks/coalition_throughput.py            # full run, a few minutes on 2 cores
    python benchmarks/coalition_throughput.py --quick    # 0.3 s per way and layer

Results go to ``benchmarks/results/coalition_throughput.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightning_shapley import ChannelGame
from lightning_shapley.criteria import BanditShapleyCriterion
from lightning_shapley.lab.datasets import load_mnist_idx, split_indices
from lightning_shapley.lab.models import CifarResNet, LeNet5, cifar_vgg
from lightning_shapley.options import ABLATIONS
from lightning_shapley.pruning import prunable_layer_names

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-test10k"
DEFAULT_OUT = REPO / "benchmarks" / "results"

N_CALIBRATION = 128
SANITY_MASKS = 8
MAX_CALL = 64
MAX_DIFF = 1e-4
SEED = 0


@dataclass(frozen=True)
class Way:
    """One way of evaluating coalitions: a ``ChannelGame`` strategy and chunk size."""

    name: str
    label: str
    strategy: str
    chunk_size: int | str


WAYS = (
    Way("ours", "ours (auto)", "auto", "auto"),
    Way("naive", "naive loop (full, 1)", "full", 1),
    Way("suffix_loop", "suffix loop (suffix, 1)", "suffix", 1),
    Way("stacked", "stacked (suffix, 16)", "suffix", 16),
)


@dataclass
class Timing:
    """Timed calls of one way on one layer."""

    way: Way
    game: ChannelGame
    generator: torch.Generator
    call_size: int = MAX_CALL
    seconds: float = 0.0
    evals: int = 0
    calls: int = 0

    def step(self) -> None:
        masks = random_masks(self.call_size, self.game.n_players, self.generator)
        began = time.perf_counter()
        self.game(masks)
        self.seconds += time.perf_counter() - began
        self.evals += len(masks)
        self.calls += 1

    def done(self, target_seconds: float) -> bool:
        return self.calls >= 2 and self.seconds >= target_seconds

    @property
    def rate(self) -> float:
        return self.evals / self.seconds


@dataclass
class Row:
    """The measurements of one layer."""

    model: str
    layer: str
    n_players: int
    factorized: bool
    ours_chunk: int | None
    stacked_chunk: int | None
    ours_build_s: float
    surrogate_s: float
    linear_consumers: bool
    last_stage: bool
    rates: dict[str, float] = field(default_factory=dict)
    max_diff: float = 0.0
    call_sizes: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def ratio(self, numerator: str, denominator: str) -> float:
        return self.rates[numerator] / self.rates[denominator]

    def as_csv(self) -> dict[str, object]:
        return {
            "model": self.model,
            "layer": self.layer,
            "n_players": self.n_players,
            "first_consumer_factorized": self.factorized,
            "ours_chunk_size": "" if self.ours_chunk is None else self.ours_chunk,
            "stacked_chunk_size": "" if self.stacked_chunk is None else self.stacked_chunk,
            "ours_build_s": f"{self.ours_build_s:.3f}",
            "surrogate_s": f"{self.surrogate_s:.3f}",
            "first_consumers_linear": self.linear_consumers,
            "last_stage": self.last_stage,
            **{f"evals_per_s_{way.name}": f"{self.rates[way.name]:.4g}" for way in WAYS},
            "ours_vs_suffix_loop": f"{self.ratio('ours', 'suffix_loop'):.3f}",
            "ours_vs_naive": f"{self.ratio('ours', 'naive'):.3f}",
            "stacked_vs_suffix_loop": f"{self.ratio('stacked', 'suffix_loop'):.3f}",
            "max_abs_diff": f"{self.max_diff:.2e}",
            **{f"call_size_{way.name}": self.call_sizes[way.name] for way in WAYS},
        }


@dataclass
class Benchmark:
    """A model, its calibration data and a note for the report."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    note: str


# -- models -----------------------------------------------------------------------------------


def train_lenet(mnist: Path, epochs: int = 3) -> Benchmark:
    """LeNet-5 trained with Adam on 8,000 MNIST test images, scored on the other 2,000."""
    torch.manual_seed(SEED)
    images, labels = load_mnist_idx(mnist)
    train, test = split_indices(len(images), (0.8, 0.2), seed=SEED)
    model = LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    began = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    calibration = train[:N_CALIBRATION]
    note = (
        f"Trained {epochs} epochs (Adam, batch 64) on {len(train)} MNIST test images in "
        f"{time.perf_counter() - began:.1f} s; accuracy on the other {len(test)}: "
        f"{100 * accuracy:.2f} %. Calibration: {N_CALIBRATION} of the training images."
    )
    return Benchmark("LeNet-5", model, images[calibration], labels[calibration], note)


def random_cifar(name: str, build: Callable[[], nn.Module]) -> Benchmark:
    """A randomly initialised CIFAR network with random 32×32 inputs and labels."""
    torch.manual_seed(SEED)
    model = build().eval()
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(N_CALIBRATION, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (N_CALIBRATION,), generator=generator)
    note = f"Random initialisation (seed {SEED}), random 32×32 inputs and labels."
    return Benchmark(name, model, inputs, targets, note)


def benchmarks(names: Sequence[str], mnist: Path) -> list[Benchmark]:
    builders: dict[str, Callable[[], Benchmark]] = {
        "lenet5": lambda: train_lenet(mnist),
        "vgg11": lambda: random_cifar("VGG-11-BN", lambda: cifar_vgg("vgg11")),
        "resnet20": lambda: random_cifar("ResNet-20", lambda: CifarResNet(20)),
    }
    return [builders[name]() for name in names]


def output_sizes(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Spatial size (elements per channel) of each conv output; 1 for linear layers."""
    sizes: dict[str, int] = {}
    names = {module: name for name, module in model.named_modules()}

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        sizes[names[module]] = output[0, 0].numel() if output.dim() > 2 else 0

    handles = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def last_stage_layers(model: nn.Module, layers: list[str], example: torch.Tensor) -> set[str]:
    """Layers at the network's smallest feature-map resolution, and fully connected layers."""
    sizes = output_sizes(model, example)
    conv_sizes = [sizes[name] for name in layers if sizes[name] > 0]
    smallest = min(conv_sizes, default=0)
    return {name for name in layers if sizes[name] in (0, smallest)}


# -- measuring --------------------------------------------------------------------------------


def random_masks(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(m, n, generator=generator) < 0.5


def build(bench: Benchmark, layer: str, way: Way, ablation: str) -> tuple[ChannelGame, float]:
    began = time.perf_counter()
    game = ChannelGame(
        bench.model,
        layer,
        (bench.inputs, bench.targets),
        ablation=ablation,
        strategy=way.strategy,
        chunk_size=way.chunk_size,
    )
    return game, time.perf_counter() - began


def timed_call(game: ChannelGame, masks: torch.Tensor) -> tuple[torch.Tensor, float]:
    began = time.perf_counter()
    values = game(masks)
    return values, time.perf_counter() - began


def call_size(
    game: ChannelGame, seconds_per_eval: float, call_seconds: float, chunk_seconds: float
) -> int:
    """Coalitions per call: ``call_seconds`` worth (1 to 64), rounded up to the game's next
    chunk when one chunk takes at most ``chunk_seconds``."""
    size = max(1, min(MAX_CALL, int(call_seconds / max(seconds_per_eval, 1e-9))))
    chunk = min(MAX_CALL, game._tuner.next_size())
    return chunk if chunk > size and chunk * seconds_per_eval <= chunk_seconds else size


def settle_ours(timing: Timing, call_seconds: float, chunk_seconds: float) -> None:
    """Warm-up calls until the chunk tuner of ``ours`` has settled: at least two calls, at most
    eight or ``2 * chunk_seconds`` seconds."""
    game, spent, calls = timing.game, 0.0, 0
    while calls < 2 or (game._tuner.size is None and calls < 8 and spent < 2 * chunk_seconds):
        masks = random_masks(timing.call_size, game.n_players, timing.generator)
        _, seconds = timed_call(game, masks)
        spent += seconds
        calls += 1
        timing.call_size = call_size(game, seconds / len(masks), call_seconds, chunk_seconds)


def measure_layer(
    bench: Benchmark,
    layer: str,
    last_stage: bool,
    target_seconds: float,
    index: int,
    ablation: str,
) -> Row:
    """Build the four games of ``layer``, check they agree, and time them round-robin."""
    phases, began = {}, time.perf_counter()
    built = {way.name: build(bench, layer, way, ablation) for way in WAYS}
    phases["build"], began = time.perf_counter() - began, time.perf_counter()
    games = {name: game for name, (game, _) in built.items()}
    n_players = games["ours"].n_players
    sanity = random_masks(SANITY_MASKS, n_players, torch.Generator().manual_seed(SEED + index))
    call_seconds = target_seconds / 4
    timings, values = [], {}
    for offset, way in enumerate(WAYS):
        game = games[way.name]
        values[way.name], seconds = timed_call(game, sanity)  # the warm-up call
        generator = torch.Generator().manual_seed(1000 * (index + 1) + offset)
        size = call_size(game, seconds / SANITY_MASKS, call_seconds, target_seconds)
        timings.append(Timing(way, game, generator, size))
    settle_ours(timings[0], call_seconds, target_seconds)
    phases["warm-up"], began = time.perf_counter() - began, time.perf_counter()
    while not all(t.done(target_seconds) for t in timings):
        for timing in timings:
            if not timing.done(target_seconds):
                timing.step()
    phases["timed"] = time.perf_counter() - began
    ours = games["ours"]
    began = time.perf_counter()
    ours.surrogate()  # the default criterion's only other cost per layer
    surrogate_s = time.perf_counter() - began
    consumers = [bench.model.get_submodule(c.name) for c in ours.groups[0].consumers]
    return Row(
        model=bench.name,
        layer=layer,
        n_players=n_players,
        factorized=bool(ours._caches and ours._caches[0].factorized),
        ours_chunk=ours._tuner.size,
        stacked_chunk=games["stacked"]._tuner.size,
        ours_build_s=built["ours"][1],
        surrogate_s=surrogate_s,
        linear_consumers=all(isinstance(c, nn.Linear) for c in consumers),
        last_stage=last_stage,
        rates={t.way.name: t.rate for t in timings},
        max_diff=max((values[name] - values["naive"]).abs().max().item() for name in values),
        call_sizes={t.way.name: t.call_size for t in timings},
        phase_seconds=phases,
    )


def measure_model(
    bench: Benchmark, target_seconds: float, first_index: int, ablation: str
) -> list[Row]:
    example = bench.inputs[:1]
    layers = prunable_layer_names(bench.model, example)
    last = last_stage_layers(bench.model, layers, example)
    rows = []
    for offset, layer in enumerate(layers):
        began = time.perf_counter()
        row = measure_layer(
            bench, layer, layer in last, target_seconds, first_index + offset, ablation
        )
        rows.append(row)
        print(
            f"{bench.name:>10} {layer:<16} n={row.n_players:<4} "
            + " ".join(f"{name}={rate:9.1f}/s" for name, rate in row.rates.items())
            + f" ours/suffix={row.ratio('ours', 'suffix_loop'):6.2f}"
            f" diff={row.max_diff:.1e} ("
            + ", ".join(f"{phase} {s:.1f}" for phase, s in row.phase_seconds.items())
            + f"; {time.perf_counter() - began:.1f} s)",
            flush=True,
        )
    return rows


# -- reporting --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> str:
    """The commit of the checkout, and whether the package has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "lightning_shapley"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    suffix = " + uncommitted changes in lightning_shapley" if dirty else ""
    return f"{commit or 'unknown'}{suffix}"


def load_average() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def machine_info(load_at_start: str, threads_set: bool) -> list[str]:
    threads = f"{torch.get_num_threads()}" + (" (set by --threads)" if threads_set else "")
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, torch.get_num_threads() = {threads}, "
        f"Python {platform.python_version()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
        f"- code: {code_version()}",
        f"- load average (1, 5, 15 min) at start: {load_at_start}; at end: {load_average()}",
    ]


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0].as_csv()))
        writer.writeheader()
        writer.writerows(row.as_csv() for row in rows)


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def fmt_chunk(chunk: int | None, call: int) -> str:
    """The chunk size, and the call size when calls were smaller than one chunk."""
    text = "unsettled" if chunk is None else str(chunk)
    return text if chunk is not None and call >= chunk else f"{text}, calls of {call}"


def layer_kind(row: Row) -> str:
    kinds = ["linear consumer"] if row.linear_consumers else []
    return ", ".join([*kinds, "last stage"] if row.last_stage else kinds) or "–"


TABLE_HEADER = (
    "| layer | players | kind | factorized | ours chunk | ours build s | surrogate s (evals) "
    "| ours evals/s "
    "| naive evals/s | suffix loop evals/s | stacked evals/s (chunk) | ours/suffix loop "
    "| ours/naive | stacked/suffix loop | max diff |\n"
    "|---|--:|---|:-:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def table_line(row: Row) -> str:
    r = row.rates
    cells = [
        f"`{row.layer}`",
        str(row.n_players),
        layer_kind(row),
        "yes" if row.factorized else "no",
        fmt_chunk(row.ours_chunk, row.call_sizes["ours"]),
        f"{row.ours_build_s:.2f}",
        f"{row.surrogate_s:.2f} ({row.surrogate_s * r['ours']:,.0f})",
        fmt_rate(r["ours"]),
        fmt_rate(r["naive"]),
        fmt_rate(r["suffix_loop"]),
        f"{fmt_rate(r['stacked'])} ({fmt_chunk(row.stacked_chunk, row.call_sizes['stacked'])})",
        f"{row.ratio('ours', 'suffix_loop'):.2f}×",
        f"{row.ratio('ours', 'naive'):.1f}×",
        f"{row.ratio('stacked', 'suffix_loop'):.2f}×",
        f"{row.max_diff:.1e}" + ("" if row.max_diff < MAX_DIFF else " ⚠"),
    ]
    return "| " + " | ".join(cells) + " |"


def target_line(
    title: str, rows: list[Row], ratio: Callable[[Row], float], goal: float, noise: float = 0.0
) -> str:
    """One summary line: whether ``rows`` reach ``goal``, and which do not.

    Misses within ``noise`` (a fraction of ``goal``) are starred as inside the timing noise.
    """
    if not rows:
        return f"- **{title}**: no such layer."
    missed = [row for row in rows if ratio(row) < goal]
    if not missed:
        lowest = min(rows, key=ratio)
        return (
            f"- **{title}**: met on all {len(rows)} layers (lowest {ratio(lowest):.2f}×, "
            f"{lowest.model} `{lowest.layer}`)."
        )
    detail = ", ".join(
        f"{row.model} `{row.layer}` ({ratio(row):.2f}×"
        + ("*" if ratio(row) >= (1 - noise) * goal else "")
        + ")"
        for row in missed
    )
    starred = sum(ratio(row) >= (1 - noise) * goal for row in missed)
    note = f" (* = within {100 * noise:.0f} %, inside the timing noise)" if starred else ""
    return f"- **{title}**: missed on {len(missed)} of {len(rows)} layers: {detail}{note}."


def summary(rows: list[Row]) -> list[str]:
    def ours_suffix(row: Row) -> float:
        return row.ratio("ours", "suffix_loop")

    def ours_naive(row: Row) -> float:
        return row.ratio("ours", "naive")

    return [
        target_line(
            "Never slower than the suffix loop on any layer", rows, ours_suffix, 1.0, noise=0.1
        ),
        target_line(
            "≥10× the suffix loop on layers whose first consumers dominate (every consumer "
            "linear: linear layers, the last conv before a flatten→linear head)",
            [row for row in rows if row.linear_consumers],
            ours_suffix,
            10.0,
        ),
        target_line(
            "≥100× the naive loop on last-stage layers (smallest feature-map resolution, and "
            "linear layers)",
            [row for row in rows if row.last_stage],
            ours_naive,
            100.0,
        ),
    ]


def write_markdown(
    rows: list[Row],
    notes: dict[str, str],
    path: Path,
    target_seconds: float,
    total_s: float,
    load_at_start: str,
    threads_set: bool,
    ablation: str,
) -> None:
    lines = [
        "# Coalition throughput of `ChannelGame`",
        "",
        f"Coalition evaluations per second with {N_CALIBRATION} calibration samples, four ways "
        f"side by side per layer; ≥ {target_seconds:g} s and ≥ 2 timed calls per way and layer "
        f"(calls of up to {MAX_CALL} random coalitions), `{ablation}` ablation. Total run "
        f"time {total_s:.0f} s.",
        "",
        *machine_info(load_at_start, threads_set),
        "",
        "Ways: **ours** = `strategy='auto', chunk_size='auto'`; **naive** = `strategy='full', "
        "chunk_size=1`; **suffix loop** = `strategy='suffix', chunk_size=1`; **stacked** = "
        "`strategy='suffix', chunk_size=16` (the chunk in parentheses is the one actually used "
        "after the game's memory cap). *max diff* is the largest |value − naive value| over 8 "
        "fixed coalitions.",
        "",
        "## Targets",
        "",
        *summary(rows),
        "",
    ]
    for model in dict.fromkeys(row.model for row in rows):
        lines += [f"## {model}", ""]
        lines += [notes[model], ""]
        lines += [TABLE_HEADER, *(table_line(r) for r in rows if r.model == model), ""]
    path.write_text("\n".join(lines))


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row.model for row in rows))
    figure, axes = plt.subplots(len(models), 1, figsize=(12, 3.6 * len(models)), squeeze=False)
    width = 0.8 / len(WAYS)
    for ax, model in zip(axes[:, 0], models, strict=True):
        subset = [row for row in rows if row.model == model]
        for k, way in enumerate(WAYS):
            positions = [i + (k - (len(WAYS) - 1) / 2) * width for i in range(len(subset))]
            ax.bar(positions, [row.rates[way.name] for row in subset], width, label=way.label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(subset)), [row.layer for row in subset], rotation=30, ha="right")
        ax.set_ylabel("coalition evals / s")
        ax.set_title(f"{model} ({N_CALIBRATION} calibration samples)")
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0, 0].legend(ncol=len(WAYS), fontsize="small", loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per way and layer")
    parser.add_argument("--seconds", type=float, help="timed seconds per way and layer")
    parser.add_argument(
        "--models", nargs="+", default=["lenet5", "vgg11", "resnet20"],
        choices=["lenet5", "vgg11", "resnet20"],
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's own default)"
    )
    parser.add_argument(
        "--ablation", default=BanditShapleyCriterion().ablation, choices=ABLATIONS,
        help="the game's ablation (default: the default criterion's)",
    )  # fmt: skip
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST t10k IDX folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    target_seconds = args.seconds or (0.3 if args.quick else 1.0)
    if args.threads:
        torch.set_num_threads(args.threads)
    began, load_at_start = time.perf_counter(), load_average()
    rows: list[Row] = []
    notes: dict[str, str] = {}
    for bench in benchmarks(args.models, args.mnist):
        print(f"{bench.name}: {bench.note}", flush=True)
        notes[bench.name] = bench.note
        rows += measure_model(bench, target_seconds, len(rows), args.ablation)
    total = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "coalition_throughput.csv")
    markdown = args.out / "coalition_throughput.md"
    write_markdown(rows, notes, markdown, target_seconds, total, load_at_start, bool(args.threads),
                   args.ablation)  # fmt: skip
    plot(rows, args.out / "coalition_throughput.png")
    print("\n".join(summary(rows)))
    print(f"total {total:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()

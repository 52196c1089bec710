"""Does it run on the user's model? Every criterion family on common architectures.

Random weights (the classifier scaled so that the logits spread as a trained model's do: fresh
heads predict nearly uniformly, and every channel game would be blind), ``--images``
calibration images of ``--size``² (random, with random labels),
``--ratio`` of the channels of every prunable group removed; one cell per (architecture,
criterion): the layers found by ``prunable_layer_names`` are scored on the unpruned model, cut
by one plan (``make_plan``, the same share of every layer), and pruned with the default
compensation (``least_squares``). Criteria:

* ``default``: whatever ``ShapleyPruningCallback`` uses by default (built as the callback
  builds it, so a change of default shows here);
* ``shapley``: ``ShapleyPruningCallback(criterion="shapley")``'s criterion (permutation
  sampling, the callback's budget per layer unless ``--budget`` caps it);
* ``l1``, ``taylor``: torch-pruning's magnitude and Taylor importances;
* ``tp``: plain torch-pruning, ``MetaPruner`` with an L1 magnitude importance at the same ratio
  (the classifier head ignored), for comparison.

Each cell runs in its own process, stopped after ``--time-cap`` seconds or at ``--memory-gb``,
and appends a row to the CSV as it ends, so the grid can be run in pieces (cells already in the
CSV are skipped). Recorded: outcome (``works``, ``clear error`` — a ``ValueError`` from the
library before any surgery —, ``unhandled`` — any other exception —, ``timeout``, ``memory``),
the message, seconds, game evaluations, parameters and MACs before and after, the requested and
reached share of channels, and ``masked_vs_pruned``: the largest logit difference, relative to
the largest logit, between the network-wide game (zero ablation) for the plan's coalition and
the model pruned by that plan without compensation (it must be below 1e-4).

Run: ``python benchmarks/zoo.py`` (everything: hours on 2 CPU cores), or a piece:
``python benchmarks/zoo.py --models resnet18,regnet_y_400mf --criteria l1,tp``;
``python benchmarks/zoo.py --table`` rewrites ``results/zoo.md`` from ``results/zoo.csv`` (the
Markdown file sits beside ``--csv``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import multiprocessing as mp
import os
import platform
import resource
import time
import traceback
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
CRITERIA = ("default", "shapley", "l1", "taylor", "tp")
FIELDS = ["model", "criterion", "outcome", "message", "seconds", "evaluations", "budget",
          "layers", "params_before", "params_after", "macs_before", "macs_after",
          "requested_ratio", "reached_ratio", "masked_vs_pruned", "warnings"]  # fmt: skip
CLASSES = 10


def _vit():
    import torchvision

    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=CLASSES,
    )  # fmt: skip
    torch.nn.init.normal_(model.heads.head.weight, std=0.1)  # zero at init: all logits 0
    return model


def _torchvision(name: str):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(num_classes=CLASSES)

    return build


def _timm(name: str):
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES)

    return build


MODELS = {
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "densenet121": _torchvision("densenet121"),
    "regnet_y_400mf": _torchvision("regnet_y_400mf"),
    "squeezenet1_1": _torchvision("squeezenet1_1"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "vit_tiny": _vit,
    "swin_t": _torchvision("swin_t"),
    "timm/resnet18": _timm("resnet18"),
    "timm/mobilenetv3_small_050": _timm("mobilenetv3_small_050"),
    "timm/efficientnet_b0": _timm("efficientnet_b0"),
    "timm/convnext_atto": _timm("convnext_atto"),
    "timm/regnetx_002": _timm("regnetx_002"),
    "timm/ghostnet_050": _timm("ghostnet_050"),
}


def _data(images: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, size, size, generator=generator)
    return x, torch.randint(0, CLASSES, (images,), generator=generator)


def _criterion(name: str, budget: int | None):
    """The callback's own criterion for ``default``/``shapley`` (so a changed default shows)."""
    from lightning_shapley.callback import ShapleyPruningCallback
    from lightning_shapley.criteria import criterion_by_name

    if name == "default":
        default = inspect.signature(ShapleyPruningCallback).parameters["criterion"].default
        callback = ShapleyPruningCallback(criterion=default)
    elif name == "shapley":
        options = {} if budget is None else {"budget": budget}
        callback = ShapleyPruningCallback(criterion="shapley", **options)
    else:
        return criterion_by_name(name), None
    criterion = callback._criterion()
    if budget is not None and hasattr(criterion, "budget") and criterion.budget is not None:
        criterion.budget = min(criterion.budget, budget)
    return criterion, getattr(criterion, "budget", None)


def _masked_vs_pruned(model, layers, plan, x) -> float:
    """Largest |game logit − pruned logit| / largest |pruned logit| for the plan's coalition."""
    from lightning_shapley import ChannelGame
    from lightning_shapley.prune import prune

    game = ChannelGame(model, layers, x[:8], metric="kl")
    mask = torch.ones(game.n_players, dtype=torch.bool)
    offset = 0
    for group in game.groups:
        mask[offset + torch.as_tensor(plan.removed[group.layer], dtype=torch.long)] = False
        offset += group.n_channels
    masked = game._logits(mask.unsqueeze(0))[0]
    pruned = copy.deepcopy(model)
    prune(pruned, plan, x[:8], count_macs=False)
    with torch.no_grad():
        logits = pruned(x[:8])
    return float((logits - masked).abs().max() / logits.abs().max().clamp_min(1e-12))


def _ours(model, criterion_name, x, y, ratio, budget) -> dict:
    from lightning_shapley.plan import make_plan
    from lightning_shapley.prune import prune
    from lightning_shapley.pruning import count_params_and_macs, prunable_layer_names

    row = {}
    row["params_before"], row["macs_before"] = count_params_and_macs(model, x[:1])
    layers = prunable_layer_names(model, x[:1])
    row["layers"] = len(layers)
    criterion, row["budget"] = _criterion(criterion_name, budget)
    data = x if criterion.label_free else (x, y)
    scores = criterion.score(model, layers, data, cut=ratio)
    row["evaluations"] = scores.n_evals
    plan = make_plan(scores.values, ratio)
    row["requested_ratio"], row["reached_ratio"] = ratio, plan.achieved_ratio
    row["masked_vs_pruned"] = _masked_vs_pruned(model, layers, plan, x)
    report = prune(model, plan, x, compensation="least_squares")
    row["params_after"], row["macs_after"] = report.params_after, report.macs_after
    with torch.no_grad():
        if not torch.isfinite(model(x)).all():
            raise RuntimeError("the pruned model's outputs are not finite")
    return row


def _torch_pruning(model, x, ratio) -> dict:
    import torch_pruning as tp
    from torch import nn

    from lightning_shapley.pruning import count_params_and_macs

    row = {}
    row["params_before"], row["macs_before"] = count_params_and_macs(model, x[:1])
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == CLASSES]
    heads += [m for m in model.modules()
              if isinstance(m, nn.Conv2d) and m.out_channels == CLASSES]  # fmt: skip
    pruner = tp.pruner.MetaPruner(
        model, x[:1], importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
        ignored_layers=heads,
    )  # fmt: skip
    before = {m: getattr(m, "out_channels", getattr(m, "out_features", 0))
              for m in model.modules() if isinstance(m, tp.ops.TORCH_CONV | nn.Linear)}  # fmt: skip
    pruner.step()
    after = {m: getattr(m, "out_channels", getattr(m, "out_features", 0)) for m in before}
    with torch.no_grad():
        if not torch.isfinite(model(x)).all():
            raise RuntimeError("the pruned model's outputs are not finite")
    row["params_after"], row["macs_after"] = count_params_and_macs(model, x[:1])
    row["requested_ratio"] = ratio
    row["reached_ratio"] = 1 - sum(after.values()) / sum(before.values())
    return row


def _spread_logits(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Scale the classifier (the last linear or convolutional layer) so that the random model's
    logits on ``x`` have unit spread, as a trained model's do: freshly initialised heads give
    nearly uniform predictions, whose agreement with the unpruned model no channel changes in
    float32, and every channel game would be blind."""
    with torch.no_grad():
        spread = float(model(x).float().std())
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)][-1]
        if spread > 0:
            head.weight.mul_(1 / spread)
            if head.bias is not None:
                head.bias.mul_(1 / spread)


def run_cell(model_name, criterion_name, images, size, ratio, budget, threads, queue) -> None:
    """One (architecture, criterion) cell, in its own process; puts its row on ``queue``."""
    torch.set_num_threads(threads)
    row = {"model": model_name, "criterion": criterion_name}
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.manual_seed(0)
            model = MODELS[model_name]().eval()
            x, y = _data(images, size)
            _spread_logits(model, x)
            if criterion_name == "tp":
                row.update(_torch_pruning(model, x, ratio))
            else:
                row.update(_ours(model, criterion_name, x, y, ratio, budget))
            row["outcome"], row["message"] = "works", ""
        except ValueError as error:
            row["outcome"], row["message"] = "clear error", f"{type(error).__name__}: {error}"
        except Exception as error:  # the point is to record it
            out_of_memory = isinstance(error, MemoryError) or "can't allocate memory" in str(error)
            row["outcome"] = "memory" if out_of_memory else "unhandled"
            frames = [f for f in traceback.extract_tb(error.__traceback__)
                      if not f.filename.startswith("<")]  # fmt: skip
            where = ", ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:])
            row["message"] = f"{type(error).__name__}: {error} (in {where})"
    row["seconds"] = round(time.perf_counter() - began, 1)
    ours = [w for w in caught if "lightning_shapley" in w.filename or "zoo" in w.filename]
    row["warnings"] = " | ".join(dict.fromkeys(str(w.message).split("\n")[0][:300] for w in ours))
    queue.put(row)


def _limited(memory_gb: float):
    def limit() -> None:
        size = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return limit


def run(args: argparse.Namespace) -> None:
    path = Path(args.csv)
    done = set()
    if path.exists():
        with path.open() as file:
            done = {(r["model"], r["criterion"]) for r in csv.DictReader(file)}
    context = mp.get_context("fork")
    for model_name in args.models:
        for criterion_name in args.criteria:
            if (model_name, criterion_name) in done:
                continue
            queue = context.Queue()
            budget = args.budget if criterion_name in ("default", "shapley") else None
            if criterion_name in ("default", "shapley") and model_name in args.big:
                budget = args.big_budget if budget is None else min(budget, args.big_budget)
            process = context.Process(
                target=_in_limits,
                args=(args.memory_gb, model_name, criterion_name, args.images, args.size,
                      args.ratio, budget, args.threads, queue),
            )  # fmt: skip
            began = time.perf_counter()
            process.start()
            process.join(args.time_cap)
            if process.is_alive():
                process.kill()
                process.join()
                row = {"model": model_name, "criterion": criterion_name, "outcome": "timeout",
                       "message": f"stopped after {args.time_cap} s", "budget": budget}  # fmt: skip
            elif not queue.empty():
                row = queue.get()
            else:
                row = {"model": model_name, "criterion": criterion_name, "outcome": "memory",
                       "message": f"the process died (exit {process.exitcode}) at the "
                       f"{args.memory_gb} GB limit", "budget": budget}  # fmt: skip
            row.setdefault("seconds", round(time.perf_counter() - began, 1))
            new = not path.exists()
            with path.open("a", newline="") as file:
                writer = csv.DictWriter(file, FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow({k: row.get(k, "") for k in FIELDS})
            print(f"{model_name:30s} {criterion_name:8s} {row['outcome']:12s} "
                  f"{row.get('seconds', '')!s:>7} s  {str(row.get('message', ''))[:120]}",
                  flush=True)  # fmt: skip


def _in_limits(memory_gb, *args) -> None:
    _limited(memory_gb)()
    run_cell(*args)


def _number(value: str, spec: str = ",") -> str:
    try:
        return format(float(value), spec) if spec != "," else f"{int(float(value)):,}"
    except ValueError:
        return value or "–"


def table(csv_path: Path, out: Path, notes: str) -> None:
    with csv_path.open() as file:
        rows = list(csv.DictReader(file))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["criterion"]): r for r in rows}
    criteria = [c for c in CRITERIA if any(r["criterion"] == c for r in rows)]

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        if r["outcome"] != "works":
            return f"**{r['outcome']}**"
        evals = f", {int(float(r['evaluations'])):,} ev" if r.get("evaluations") not in ("", "0") \
            else ""  # fmt: skip
        return f"works ({float(r['seconds']):.0f} s{evals})"

    lines = ["# Zoo: does the pipeline run on common architectures?", "", notes, "",
             "## Outcome per architecture and criterion", "",
             "| architecture | " + " | ".join(criteria) + " |",
             "|---" * (len(criteria) + 1) + "|"]  # fmt: skip
    for model in models:
        lines.append(f"| {model} | " + " | ".join(cell(by.get((model, c))) for c in criteria)
                     + " |")  # fmt: skip
    lines += ["", "## Sizes, ratio and masked = pruned", "",
              "Parameters and MACs (one 32×32 image) before → after; `masked vs pruned`: largest "
              "logit difference between the network-wide game for the plan's coalition and the "
              "model pruned by that plan, relative to the largest logit.", "",
              "| architecture | criterion | layers | params before → after | MACs before → after | "
              "requested / reached | masked vs pruned | evaluations (budget) | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in models:
        for c in criteria:
            r = by.get((model, c))
            if r is None or r["outcome"] != "works":
                continue
            budget = f" ({_number(r['budget'])})" if r.get("budget") else ""
            reached = f"{float(r['requested_ratio']):.0%} / {float(r['reached_ratio']):.1%}"
            lines.append(
                f"| {model} | {c} | {r['layers'] or '–'} | {_number(r['params_before'])} → "
                f"{_number(r['params_after'])} | {_number(r['macs_before'])} → "
                f"{_number(r['macs_after'])} | {reached} | {_number(r['masked_vs_pruned'], '.1e')} "
                f"| {_number(r['evaluations'])}{budget} | {_number(r['seconds'], '.0f')} |"
            )
    lines += ["", "## Errors and messages", "", "| architecture | criterion | outcome | message |",
              "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["outcome"] != "works":
            message = r["message"].replace("|", "\\|").replace("\n", " ")[:600]
            lines.append(f"| {r['model']} | {r['criterion']} | {r['outcome']} | {message} |")
    lines += ["", "## Warnings the library gave (first line of each)", "",
              "| architecture | criterion | warnings |", "|---|---|---|"]  # fmt: skip
    for r in rows:
        if r.get("warnings"):
            lines.append(f"| {r['model']} | {r['criterion']} | "
                         f"{r['warnings'].replace('|', '/')[:700]} |")  # fmt: skip
    out.write_text("\n".join(lines) + "\n")


def _capped_big_cells(path: Path, big: set[str]) -> bool:
    if not path.exists():
        return False
    with path.open() as file:
        return any(r["model"] in big and r["budget"] for r in csv.DictReader(file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="all",
                        help=f"comma-separated, from: {', '.join(MODELS)}")  # fmt: skip
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="cap on game evaluations per layer (default/shapley criteria)",
    )
    parser.add_argument(
        "--big",
        default="resnet50,densenet121,convnext_tiny,swin_t",
        help="models whose default/shapley budget is capped by --big-budget",
    )
    parser.add_argument("--big-budget", type=int, default=256)
    parser.add_argument("--time-cap", type=float, default=1800, help="seconds per cell")
    parser.add_argument("--memory-gb", type=float, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", default=str(RESULTS / "zoo.csv"))
    parser.add_argument("--table", action="store_true", help="only rewrite the Markdown table")
    parser.add_argument("--note", default="", help="a paragraph added to the table's notes")
    args = parser.parse_args()
    args.models = list(MODELS) if args.models == "all" else args.models.split(",")
    args.criteria = args.criteria.split(",")
    args.big = set(args.big.split(","))
    unknown = [m for m in args.models if m not in MODELS]
    unknown += [c for c in args.criteria if c not in CRITERIA]
    if unknown:
        parser.error(f"unknown: {unknown}")
    notes = (
        "Random weights, the classifier scaled so that the logits on the calibration images "
        f"have unit spread; {args.images} random calibration images of {args.size}×{args.size} "
        f"with random labels; {args.ratio:.0%} of every prunable group's channels removed "
        "(one plan, scores from the unpruned model), then the default compensation "
        "(`least_squares`). `vit_tiny` is torchvision's `VisionTransformer` with 32×32 images, "
        "8×8 patches, 2 layers, hidden 64, MLP 128, 4 heads. "
        f"torch {torch.__version__}, {args.threads} thread(s) per cell on "
        f"{os.cpu_count()} shared CPU cores ({platform.processor() or platform.machine()}); "
        f"cells stopped after {args.time_cap:.0f} s or {args.memory_gb:g} GB."
    )
    if _capped_big_cells(Path(args.csv), args.big):
        notes += (
            f" The `default` and `shapley` criteria on {', '.join(sorted(args.big))} ran with at "
            f"most {args.big_budget} game evaluations per layer where the criterion has a budget."
        )
    if args.note:
        notes += "\n\n" + args.note
    if not args.table:
        run(args)
    table(Path(args.csv), Path(args.csv).with_suffix(".md"), notes)


if __name__ == "__main__":
    main()

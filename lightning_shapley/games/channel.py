"""The channel game: players are the channels of a prunable group, values are model quality."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn

from lightning_shapley.calibration import CalibrationData, as_calibration_tensors
from lightning_shapley.games.base import check_masks
from lightning_shapley.games.masking import ConsumerMask, ConsumerRefit
from lightning_shapley.games.suffix import PrefixCache, SuffixProgram
from lightning_shapley.games.surrogate import QuadraticGame, fisher_gram
from lightning_shapley.hooks import attached
from lightning_shapley.metrics import MetricLike, first_logits, reference_logits, value_function
from lightning_shapley.modes import evaluating
from lightning_shapley.normalisation import NormMask, norm_masks
from lightning_shapley.options import ABLATIONS, check_choice
from lightning_shapley.pruning import (
    ChannelGraph,
    ChannelGroup,
    channel_group,
    check_distinct_groups,
    merged_consumers,
)
from lightning_shapley.refit import input_grams, refittable
from lightning_shapley.statistics import consumer_input_means, linear_imputations

__all__ = ["ABLATIONS", "STRATEGIES", "ChannelGame"]

STRATEGIES = ("auto", "suffix", "full")

_SELF_CHECK_TOLERANCE = 1e-4


class ChannelGame:
    """How well the network does when only some channels of one or more layers are kept.

    Players are the output channels of ``layer``'s torch-pruning group (the layer with every
    layer coupled to it: batch norms, residual partners, concatenation branches). A removed
    channel is masked at the input of the group's *consumers*, which gives exactly the outputs
    of the physically pruned model. Several layers make one network-wide game whose players are
    their channels, group after group.

    Evaluation strategies:

    * ``"auto"``: trace the model with ``torch.fx``, compute everything that does not depend on
      the coalition once, run only the dependent suffix on many coalitions per forward, and
      replace a consumer that reads prefix values by a matrix product (it is linear in its mask).
      Falls back to ``"full"`` with a warning when the model cannot be traced.
    * ``"suffix"``: as ``"auto"`` without the matrix-product consumers.
    * ``"full"``: the whole model per chunk of coalitions, masking with forward hooks.

    Args:
        model: The network; it is evaluated in eval mode, and its modes are restored.
        layer: A convolution or linear layer (qualified name or module), or a sequence of them.
        data: Calibration data: ``(inputs, targets)`` tensors, a ``DataLoader`` or a ``Dataset``.
        metric: ``"cross_entropy"`` (value = −mean loss, the default), ``"accuracy"``, a
            torchmetrics ``Metric`` or a callable ``(logits, targets) → scalar``, higher is better;
            or a label-free ``"kl"`` / ``"logit_mse"``: agreement with reference logits ``[N, K]``
            passed as the targets, or else with the unmasked model's own outputs (the data may
            then be inputs alone).
        ablation: ``"zero"``, ``"mean"`` (the channel's mean over the calibration set) or
            ``"regression"`` (its least-squares prediction from the kept channels, see
            :class:`~lightning_shapley.statistics.LinearImputation`), or ``"refit"`` (no
            stand-in: each consumer is refit by least squares to its full output on the kept
            channels, which is what pruning with ``compensation="least_squares"`` gives; see
            :mod:`~lightning_shapley.refit`).
        strategy: ``"auto"``, ``"suffix"`` or ``"full"``.
        chunk_size: Coalitions per forward, or ``"auto"`` to settle it by timing the first calls.
        memory_budget_mb: Bound on the memory of one chunk and of the cached matrix products.
        batch_size: Calibration examples per forward.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
        >>> game = ChannelGame(net, "0", (x, y))
        >>> game.n_players
        4
        >>> game(torch.tensor([[True, True, True, True], [False, True, False, True]])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | Sequence[str | nn.Module],
        data: CalibrationData,
        *,
        metric: MetricLike = "cross_entropy",
        ablation: str = "zero",
        strategy: str = "auto",
        chunk_size: int | str = "auto",
        memory_budget_mb: float = 1024,
        batch_size: int = 256,
    ) -> None:
        check_choice("ablation", ablation, ABLATIONS)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is invalid; use one of {STRATEGIES}")
        if not (chunk_size == "auto" or (isinstance(chunk_size, int) and chunk_size >= 1)):
            raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.value_function = value_function(metric)
        self.ablation = ablation
        self.memory_budget = int(memory_budget_mb * 2**20)
        self.n_evals = 0

        device = _device_of(model)
        inputs, targets = as_calibration_tensors(data)
        self._batches = list(inputs.to(device).split(batch_size))
        self.targets = self._targets(targets, device)

        layers = list(layer) if isinstance(layer, list | tuple) else [layer]
        if not layers:
            raise ValueError("layer must name at least one layer")
        self.groups = _groups(model, layers, self._batches[0][:1])
        self.n_players = sum(g.n_channels for g in self.groups)
        with evaluating(model):
            self._masks = {**self._consumer_masks(), **norm_masks(self.groups)}
            self._module_names = {model.get_submodule(name): name for name in self._masks}
            self._program, self._caches = self._build_program(strategy)
            per_coalition = (
                self._program.peak_bytes(self._caches[0], self._ones(1))
                if self._program is not None
                else _activation_bytes(model, self._batches[0])
            )
        self.strategy = strategy if self._program is not None else "full"
        max_chunk = max(1, min(4096, self.memory_budget // per_coalition))
        self._tuner = _ChunkTuner(chunk_size, max_chunk)

    @property
    def batches(self) -> list[torch.Tensor]:
        """The calibration inputs ``[B, ...]``, batch by batch, on the model's device."""
        return self._batches

    @property
    def example_input(self) -> torch.Tensor:
        """``[1, ...]`` one calibration input."""
        return self._batches[0][:1]

    def surrogate(self, *, seed: int = 0) -> QuadraticGame:
        """The game's second-order stand-in, with exact Shapley values (see
        :mod:`~lightning_shapley.games.surrogate`); it models zero ablation."""
        consumers = {name: mask.consumer for name, mask in self._masks.items()}
        gram = fisher_gram(self.model, consumers, self._batches, self.n_players, seed=seed)
        return QuadraticGame(gram)

    # -- evaluation ---------------------------------------------------------------------------

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of the coalitions ``masks`` ``[m, n_players]`` (True = kept)."""
        masks = check_masks(masks, self.n_players)
        if len(masks) == 0:
            return torch.empty(0)
        return self.value_function(self._logits(masks), self.targets).cpu()

    def per_example(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m, N]`` per coalition and calibration example (built-in metrics only)."""
        masks = check_masks(masks, self.n_players)
        if len(masks) == 0:
            return torch.empty(0, len(self.targets))
        return self.value_function.per_example_values(self._logits(masks), self.targets).cpu()

    def _logits(self, masks: torch.Tensor) -> torch.Tensor:
        """Logits ``[m, N, K]`` of every coalition on every calibration example."""
        floats = masks.to(device=self.targets.device, dtype=self._batches[0].dtype)
        chunks = []
        with evaluating(self.model):
            start = 0
            while start < len(floats):
                size = self._tuner.next_size()
                chunk = floats[start : start + size]
                began = time.perf_counter()
                chunks.append(self._chunk_logits(chunk))
                self._tuner.record(len(chunk), time.perf_counter() - began)
                start += len(chunk)
        self.n_evals += len(masks)
        return torch.cat(chunks)

    def _conv_consumers(self) -> set[str]:
        return {
            n
            for n, mask in self._masks.items()
            if isinstance(mask, ConsumerMask)
            and not isinstance(self.model.get_submodule(n), nn.Linear)
        }

    def _ones(self, m: int) -> torch.Tensor:
        """Float masks ``[m, n_players]`` keeping everyone, on the data's device and dtype."""
        first = self._batches[0]
        return torch.ones(m, self.n_players, dtype=first.dtype, device=first.device)

    def _chunk_logits(self, masks: torch.Tensor) -> torch.Tensor:
        m = len(masks)
        if self._program is None:
            outputs = [self._full_forward(x, masks) for x in self._batches]
        else:
            outputs = [self._program.run_suffix(cache, masks) for cache in self._caches]
        return torch.cat(
            [out.reshape(m, len(x), -1) for out, x in zip(outputs, self._batches, strict=True)],
            dim=1,
        )

    def _full_forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The whole model on ``m`` copies of ``x`` ``[B, ...]``, masked by forward hooks."""
        m, batch = len(masks), len(x)

        def mask_input(module: nn.Module, args: tuple) -> tuple:
            name = self._module_names[module]
            first = args[0].view(m, batch, *args[0].shape[1:])
            return (self._masks[name].apply(first, masks).flatten(0, 1), *args[1:])

        def replace_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            mask = self._masks[self._module_names[module]]
            if isinstance(mask, NormMask):
                return mask.forward(module, args, masks)
            x = args[0].view(m, batch, *args[0].shape[1:])
            return mask.refit.outputs(x, mask.consumer.feature_masks(masks).bool())

        inputs = [
            n for n, k in self._masks.items() if isinstance(k, ConsumerMask) and k.refit is None
        ]
        outputs = [n for n in self._masks if n not in inputs]
        modules = self.model.get_submodule
        with (
            attached(map(modules, inputs), before=mask_input),
            attached(map(modules, outputs), after=replace_output),
        ):
            return first_logits(self.model(x.repeat(m, *[1] * (x.dim() - 1))))

    # -- construction -------------------------------------------------------------------------

    def _targets(self, targets: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Labels ``[N]``, or for a label-free value the reference logits ``[N, K]``: given, or
        the unmasked model's own."""
        if not self.value_function.label_free:
            if targets is None:
                raise ValueError(
                    f"metric {self.value_function.name!r} needs targets; unlabelled "
                    "calibration data needs a label-free metric ('kl' or 'logit_mse')"
                )
            return targets.to(device)
        if targets is not None and targets.dim() == 2 and targets.is_floating_point():
            return targets.to(device)
        return reference_logits(self.model, torch.cat(self._batches), len(self._batches[0]))

    def _consumer_masks(self) -> dict[str, ConsumerMask]:
        """One mask per consumer; players numbered group after group."""
        consumers = merged_consumers(self.groups)
        if self.ablation == "zero":
            return {name: ConsumerMask(c) for name, c in consumers.items()}
        if self.ablation == "refit":
            modules = {name: self.model.get_submodule(name) for name in consumers}
            fixed = [name for name, module in modules.items() if not refittable(module)]
            if fixed:
                warnings.warn(
                    f"refit ablation: {', '.join(map(repr, fixed))} cannot be refit (neither "
                    "linear nor zero-padded 2-d convolutions); removed channels are zeroed there, "
                    "as pruning leaves them",
                    stacklevel=3,
                )
            refit = {name: m for name, m in modules.items() if name not in fixed}
            grams = input_grams(self.model, refit, self._batches, folds=2)
            return {
                name: ConsumerMask(c, refit=ConsumerRefit(refit[name], grams[name][0]))
                if name in refit
                else ConsumerMask(c)
                for name, c in consumers.items()
            }
        means = consumer_input_means(self.model, consumers, self._batches)
        if self.ablation == "mean":
            return {name: ConsumerMask(c, means[name]) for name, c in consumers.items()}
        imputations = linear_imputations(self.model, consumers, self._batches, means)
        return {
            name: ConsumerMask(c, imputation=imputations[name])
            if name in imputations
            else ConsumerMask(c, means[name])
            for name, c in consumers.items()
        }

    def _build_program(self, strategy: str) -> tuple[SuffixProgram | None, list[PrefixCache]]:
        """Trace the model, cache the prefix, check the suffix against full forwards.

        Returns ``(None, [])`` for the ``full`` strategy or when the model cannot be cached.
        """
        if strategy == "full":
            return None, []
        budget = self.memory_budget // 2 // len(self._batches) if strategy == "auto" else 0
        first = self._batches[0]
        try:
            graph = _LeafTracer(set(self._masks)).trace(self.model)
            program = SuffixProgram(self.model, graph, self._masks, self.n_players, budget)
            cache = program.run_prefix(first)
            masks = self._ones(2)
            masks[1, ::2] = 0
            cached, full = program.run_suffix(cache, masks), self._full_forward(first, masks)
            if not torch.allclose(
                cached, full, rtol=_SELF_CHECK_TOLERANCE, atol=_SELF_CHECK_TOLERANCE
            ):
                raise ValueError(
                    f"cached outputs differ from full ones by {(cached - full).abs().max():.3g}"
                )
        except Exception as error:
            warnings.warn(
                f"ChannelGame cannot cache the prefix of {type(self.model).__name__} ({error}); "
                "it runs the whole model for every coalition instead, which is correct but slower",
                stacklevel=3,
            )
            return None, []
        convolutions = {n for n in cache.factorized if n.target in self._conv_consumers()}
        if convolutions and not _factorized_is_faster(program, cache, self._ones(4), convolutions):
            program.skip = convolutions
            cache = PrefixCache(
                cache.batch_size,
                cache.values,
                {n: parts for n, parts in cache.factorized.items() if n not in convolutions},
            )
        return program, [cache] + [program.run_prefix(x) for x in self._batches[1:]]

    def __repr__(self) -> str:
        layers = ", ".join(g.layer for g in self.groups)
        return (
            f"ChannelGame(layers=[{layers}], n_players={self.n_players}, "
            f"strategy={self.strategy!r}, ablation={self.ablation!r}, n_evals={self.n_evals})"
        )


class _LeafTracer(fx.Tracer):
    """``torch.fx`` tracing that keeps the masked modules whole (a ``LayerNorm2d`` defined
    outside ``torch.nn`` would otherwise be traced into and its mask lost)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


class _ChunkTuner:
    """Chooses coalitions per forward: fixed, or by timing doubling sizes against one at a time.

    Stacking coalitions into one batch is not free on a CPU (cache pressure), and a busy machine
    makes any single timing unreliable. So ``"auto"`` times each trial size interleaved with
    one-coalition chunks in the same window (at least two chunks of each and 5 ms, keeping the
    fastest of each to shrug off noise), doubles the size while its time per coalition stays
    within 10 % of the best ratio seen, and keeps a chunk size only if it beat one coalition at a
    time by ``MARGIN``; otherwise it keeps one at a time. All timed chunks are real work. Calls
    too small to fill the trial size settle it at the best so far.
    """

    TRIES = 2
    MIN_SECONDS = 0.005  # a trial size is timed until both: sub-millisecond chunks are noise
    MARGIN = 0.9  # a chunk size must cost at most this share of one coalition at a time

    def __init__(self, chunk_size: int | str, max_chunk: int) -> None:
        self.max_chunk = max_chunk
        self.size = min(chunk_size, max_chunk) if isinstance(chunk_size, int) else None
        if self.size is None and max_chunk < 2:
            self.size = 1
        self._trial, self._times, self._ones, self._short = 2, [], [], 0
        self._best, self._best_ratio, self._asked = 1, 1.0, 1

    def next_size(self) -> int:
        if self.size is not None:
            return self.size
        # alternate: trial size, then one coalition, so both see the same load
        self._asked = 1 if len(self._ones) < len(self._times) else self._trial
        return self._asked

    def record(self, size: int, seconds: float) -> None:
        if self.size is not None:
            return
        if size < self._asked:  # the call ran out of coalitions before the asked size
            self._short += 1
            if self._short >= 3:
                self.size = self._best
            return
        (self._ones if self._asked == 1 else self._times).append(seconds / size)
        enough = min(len(self._times), len(self._ones)) >= self.TRIES
        if not enough or sum(self._times) * self._trial < self.MIN_SECONDS:
            return
        ratio = min(self._times) / min(self._ones)
        self._times, self._ones = [], []
        if ratio < self._best_ratio * (self.MARGIN if self._best == 1 else 1.0):
            self._best, self._best_ratio = self._trial, ratio
        if ratio <= 1.1 * self._best_ratio and self._trial * 2 <= self.max_chunk:
            self._trial *= 2
        else:
            self.size = self._best


def _factorized_is_faster(
    program: SuffixProgram, cache: PrefixCache, masks: torch.Tensor, nodes: set
) -> bool:
    """Time the suffix with and without the matrix-product form of convolution ``nodes``.

    The product saves a k×k convolution's FLOPs, but it reads all per-player parts for every
    chunk, which on a CPU can cost more than the convolution when few coalitions fit in memory
    at once. (A linear consumer's product costs its layer's FLOPs and always pays off.)
    """
    plain = PrefixCache(
        cache.batch_size,
        cache.values,
        {n: p for n, p in cache.factorized.items() if n not in nodes},
    )
    seconds = [float("inf"), float("inf")]
    for _ in range(2):  # the faster of two runs each, alternating, to even out warm-up
        for index, candidate in enumerate((cache, plain)):
            began = time.perf_counter()
            program.run_suffix(candidate, masks)
            seconds[index] = min(seconds[index], time.perf_counter() - began)
    return seconds[0] <= seconds[1]


def _activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the layer outputs of one forward on ``x``: a bound on one coalition's memory
    when the whole model runs per coalition."""
    total = 0

    def count(module: nn.Module, args: tuple, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    with attached(leaves, after=count):
        model(x)
    return max(1, 2 * total)


def _groups(model: nn.Module, layers: list, example: torch.Tensor) -> list[ChannelGroup]:
    if len(layers) == 1:
        groups = [channel_group(model, layers[0], example)]
    else:
        graph = ChannelGraph(model, example)
        groups = [graph.group(layer) for layer in layers]
    check_distinct_groups(groups)
    return groups


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")

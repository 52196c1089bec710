"""``ShapleyPruningCallback``: prune a LightningModule's channels inside a Lightning run."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_shapley.calibration import as_calibration_tensors, draw_few_shot
from lightning_shapley.compensation import resolve_compensation
from lightning_shapley.criteria import (
    DEFAULT_CRITERION,
    Criterion,
    EliminationCriterion,
    ShapleyCriterion,
    criterion_by_name,
)
from lightning_shapley.criteria.game_based import ESTIMATORS
from lightning_shapley.games.channel import ABLATIONS
from lightning_shapley.games.distributed import ShardedGame
from lightning_shapley.metrics import MetricLike, reference_logits, value_function
from lightning_shapley.modes import evaluating
from lightning_shapley.plan import PruningPlan, make_plan
from lightning_shapley.prune import PruningReport, prune
from lightning_shapley.pruning import (
    count_params_and_macs,
    prunable_layer_names,
    replay,
    restore,
)

__all__ = ["ShapleyPruningCallback", "restore_pruning"]

SCOPES = ("layer", "global")
SCHEDULES = ("layer_by_layer", "one_shot")
CHECKPOINT_KEY = "lightning_shapley"


class ShapleyPruningCallback(Callback):
    """Prune channels by what they are worth to the model, at the end of chosen validation
    epochs.

    When it fires it draws a few-shot calibration set (``shots`` examples per class from the
    validation data, reproducibly, unless ``calibration`` is given), plays the channel game of
    every prunable layer, removes the channels the game finds least needed physically through
    torch-pruning, refits what feeds on them (least squares, no training), rebuilds the
    optimizers (carrying the LR schedulers' state), and lets training go on (fine-tuning) or
    stops it. Under DDP the game's evaluations are shared across ranks and every rank applies
    the identical plan; the model is then wrapped in DDP again.

    Args:
        ratio: Share of channels removed by the end of a pruning epoch, counted against the
            original model: a number in ``[0, 1)``, or a function ``epoch -> ratio`` for an
            iterative schedule (e.g. ``lambda e: 0.25 * (e + 1)`` with ``epochs=(0, 1, 2)``).
        epochs: The epoch(s) at whose validation end to prune, or a function ``epoch -> bool``.
        scope: ``"layer"`` (every layer loses the ratio) or ``"global"`` (one ranking over all
            layers; Shapley then plays one network-wide game).
        schedule: ``"layer_by_layer"`` (default: layers scored and pruned first to last, each on
            the partly pruned model, as Ancona et al. do; it kept the most accuracy in the
            committed comparisons) or ``"one_shot"`` (every layer scored on the unpruned model).
        criterion: ``"bandit_shapley"`` (default: Shapley values by the bandit sampler, see
            :class:`~lightning_shapley.criteria.BanditShapleyCriterion`), ``"greedy"``
            (backward elimination on the game of the kept set), ``"shapley"`` (Shapley
            values from ``estimator``), any name of
            :data:`~lightning_shapley.criteria.CRITERIA`, or a ``Criterion``.
        estimator: Estimator of the ``"shapley"`` criterion, by name.
        budget: Game evaluations per game for the ``"shapley"`` criterion.
        shots: Calibration examples per class.
        calibration: Calibration data to use whole instead of the drawn few-shot set: a
            ``Dataset``, a ``DataLoader``, an ``(inputs, targets)`` pair, or unlabelled inputs
            alone (for a label-free criterion such as the default).
        metric: The game's value for ``"greedy"`` and ``"shapley"``: ``"kl"`` (agreement with
            the unpruned model, the default of ``"greedy"``), ``"cross_entropy"`` (the default
            of ``"shapley"``), ``"accuracy"``, a torchmetrics ``Metric`` or a callable
            ``(logits, targets) -> scalar`` (higher is better). ``None``: the criterion's own.
        ablation: What the game puts in place of removed channels: ``"zero"`` (the default of
            ``"shapley"``), ``"mean"``, ``"regression"`` (the default of ``"greedy"``) or
            ``"refit"`` (see :class:`~lightning_shapley.games.ChannelGame`). ``None``: the
            criterion's own.
        compensation: What the pruned consumers get back: ``"least_squares"`` (default),
            ``"none"``, ``"mean"``, ``"regression"`` (see
            :mod:`~lightning_shapley.compensation`), or ``"auto"``: what makes the pruned model
            the game's.
        ignored_layers: Layers never pruned (the classifier head is always left out).
        min_channels: Channels every layer keeps at least.
        round_to: Round kept channel counts up to a multiple of this.
        fine_tune: Keep training after pruning (``False`` stops the fit after the last prune).
        seed: Seed of the calibration draw and the estimators.
        verbose: Report each prune in the log.

    Example:
        >>> callback = ShapleyPruningCallback(ratio=0.5, epochs=2, shots=10)
        >>> callback.epochs
        (2,)
    """

    def __init__(
        self,
        ratio: float | Callable[[int], float] = 0.5,
        *,
        epochs: int | Sequence[int] | Callable[[int], bool] = 0,
        scope: str = "layer",
        schedule: str = "layer_by_layer",
        criterion: str | Criterion = DEFAULT_CRITERION,
        estimator: str = "permutation",
        budget: int = 1024,
        shots: int = 10,
        calibration: Dataset
        | DataLoader
        | tuple[torch.Tensor, torch.Tensor]
        | torch.Tensor
        | None = None,
        metric: MetricLike | None = None,
        ablation: str | None = None,
        compensation: str = "least_squares",
        ignored_layers: Sequence[str] = (),
        min_channels: int = 1,
        round_to: int | None = None,
        fine_tune: bool = True,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        if not callable(ratio) and (not isinstance(ratio, int | float) or not 0 <= ratio < 1):
            raise ValueError(f"ratio must be in [0, 1) or a function of the epoch, got {ratio!r}")
        if isinstance(epochs, int):
            epochs = (epochs,)
        if not callable(epochs):
            epochs = tuple(epochs)
            if not epochs or not all(isinstance(e, int) and e >= 0 for e in epochs):
                raise ValueError(
                    f"epochs must be non-negative integers or a function, got {epochs!r}"
                )
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is invalid; use one of {SCOPES}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule={schedule!r} is invalid; use one of {SCHEDULES}")
        if isinstance(criterion, str):
            criterion_by_name(criterion)  # validates the name
        elif not isinstance(criterion, Criterion):
            raise TypeError(
                f"criterion must be a name or a Criterion, got {type(criterion).__name__}"
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator={estimator!r} is unknown; use one of {tuple(ESTIMATORS)}")
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(
                f"budget must be a positive number of game evaluations, got {budget!r}"
            )
        if not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be a positive integer, got {shots!r}")
        if ablation is not None and ablation not in ABLATIONS:
            raise ValueError(f"ablation={ablation!r} is invalid; use one of {ABLATIONS}")
        resolve_compensation(compensation, ablation or "zero")  # validates it
        if metric is not None:
            value_function(metric)  # validates the metric
        if not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"min_channels must be a positive integer, got {min_channels!r}")
        if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
        self.ratio, self.epochs, self.scope, self.schedule = ratio, epochs, scope, schedule
        self.criterion, self.estimator, self.budget = criterion, estimator, budget
        self.shots, self.calibration, self.metric, self.ablation = (
            shots,
            calibration,
            metric,
            ablation,
        )
        self.compensation = compensation
        self.ignored_layers = tuple(ignored_layers)
        self.min_channels, self.round_to = min_channels, round_to
        self.fine_tune, self.seed, self.verbose = fine_tune, seed, verbose
        # state kept in checkpoints
        self.pruned_epochs: list[int] = []
        self.history: list[dict] = []
        self.original_channels: dict[str, int] = {}
        self.scores: dict[str, list[float]] = {}
        self.example_shape: list[int] = []

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """On resume, prune the fresh model as the checkpoint's was, before weights load."""
        path = trainer.ckpt_path
        if stage != "fit" or path is None:
            return
        checkpoint = trainer.strategy.load_checkpoint(path)
        restore_pruning(pl_module, checkpoint)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune if this epoch is scheduled (never during the sanity check)."""
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not self._is_due(trainer, epoch):
            return
        with torch.inference_mode(False), torch.enable_grad():
            self._prune(trainer, pl_module, epoch)
        self.pruned_epochs.append(epoch)
        if not self.fine_tune and not self._more_to_come(epoch):
            trainer.should_stop = True

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Also store the history at the top level, for ``load_from_checkpoint``."""
        checkpoint[CHECKPOINT_KEY] = {"history": self.history, "example_shape": self.example_shape}

    def state_dict(self) -> dict[str, Any]:
        return {
            "pruned_epochs": list(self.pruned_epochs),
            "history": self.history,
            "original_channels": dict(self.original_channels),
            "scores": self.scores,
            "example_shape": list(self.example_shape),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_epochs = list(state_dict.get("pruned_epochs", []))
        self.history = list(state_dict.get("history", []))
        self.original_channels = dict(state_dict.get("original_channels", {}))
        self.scores = dict(state_dict.get("scores", {}))
        self.example_shape = list(state_dict.get("example_shape", []))

    # -- pruning -----------------------------------------------------------------------------

    def _is_due(self, trainer: pl.Trainer, epoch: int) -> bool:
        if trainer.state.fn != "fit" or epoch in self.pruned_epochs:
            return False
        return self.epochs(epoch) if callable(self.epochs) else epoch in self.epochs

    def _more_to_come(self, epoch: int) -> bool:
        if callable(self.epochs):
            return False
        return any(e > epoch for e in self.epochs)

    def _target_ratio(self, epoch: int) -> float:
        ratio = self.ratio(epoch) if callable(self.ratio) else self.ratio
        if not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            raise ValueError(f"ratio({epoch}) must be in [0, 1), got {ratio!r}")
        return float(ratio)

    def _calibration_data(
        self, trainer: pl.Trainer, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.calibration is not None:
            inputs, targets = as_calibration_tensors(self.calibration)
        else:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            if loader is None:
                raise ValueError("ShapleyPruningCallback needs validation data or `calibration=`")
            if isinstance(getattr(loader, "dataset", None), Dataset):
                # the whole dataset, not this rank's shard: every rank draws the same set
                loader = DataLoader(loader.dataset, batch_size=256, shuffle=False)
            inputs, targets = draw_few_shot(loader, self.shots, seed=self.seed)
        # clones: tensors made under inference mode cannot take part in autograd
        return inputs.clone().to(device), None if targets is None else targets.clone().to(device)

    def _criterion(self) -> Criterion:
        if isinstance(self.criterion, Criterion):
            return self.criterion
        scope = "network" if self.scope == "global" else "layer"
        options = {"metric": self.metric, "ablation": self.ablation}
        options = {k: v for k, v in options.items() if v is not None}
        if self.criterion == "shapley":
            return ShapleyCriterion(self.estimator, self.budget, scope=scope, **options)
        if self.criterion == "greedy":
            return EliminationCriterion(scope=scope, **options)
        return criterion_by_name(self.criterion)

    def _prune(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        device = module.device
        inputs, targets = self._calibration_data(trainer, device)
        self.example_shape = list(inputs[:1].shape)
        layers = prunable_layer_names(module, inputs[:1], ignored=self.ignored_layers)
        if not layers:
            raise ValueError("ShapleyPruningCallback found no prunable layer in the model")
        criterion = self._criterion()
        shard = None
        if trainer.world_size > 1:
            strategy = trainer.strategy

            def shard(game):
                return ShardedGame(
                    game.n_players,
                    game,
                    strategy.all_gather,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                )

        if targets is None and not criterion.label_free:
            raise ValueError(
                f"criterion {criterion.name!r} needs labelled calibration data: pass (inputs, "
                "targets), or use a label-free criterion (greedy, or metric='kl')"
            )
        reference = reference_logits(module, inputs)
        measures = _measures(self.metric, targets, reference)
        before = {name: _evaluate(module, inputs, t, fn) for name, (fn, t) in measures.items()}
        params_before, macs_before = count_params_and_macs(module, inputs[:1])
        target = self._target_ratio(epoch)
        one_step = self.schedule == "one_shot" or self.scope == "global"
        steps = [layers] if one_step else [[layer] for layer in layers]
        backup = None if one_step else copy.deepcopy(module)
        compensation = resolve_compensation(
            self.compensation, getattr(criterion, "ablation", None) or "zero"
        )
        # a label-free value compares with the unpruned model, however far pruning has gone
        scoring_targets = reference if criterion.label_free else targets
        bar = Tqdm(
            total=len(steps), desc=f"Pruning: scoring channels ({criterion.name})", leave=False,
            disable=trainer.progress_bar_callback is None or not trainer.is_global_zero,
            dynamic_ncols=True, file=sys.stdout,
        )  # fmt: skip
        seconds, n_evals, channels, history = 0.0, 0, {}, list(self.history)
        try:
            for index, step in enumerate(steps):
                began = time.perf_counter()
                try:
                    seed = self.seed + 1000 * epoch + index
                    current = {n: module.get_submodule(n).weight.shape[0] for n in step}
                    ratio = self._ratios(current, target)
                    shares = set(ratio.values()) if isinstance(ratio, dict) else {ratio}
                    cut = shares.pop() if len(shares) == 1 else None
                    scores = criterion.score(
                        module, step, (inputs, scoring_targets), seed=seed, shard=shard, cut=cut
                    )
                except Exception as error:
                    raise RuntimeError(
                        f"ShapleyPruningCallback: scoring channels failed at epoch {epoch} "
                        f"({error}); the model was left unpruned"
                    ) from error
                seconds += time.perf_counter() - began
                n_evals += scores.n_evals
                plan = self._plan(scores.values, ratio, criterion)
                removed = trainer.strategy.broadcast(plan.removed, src=0)  # one decision, all ranks
                plan = PruningPlan(removed, plan.n_channels, plan.requested_ratio)
                report = prune(module, plan, inputs, compensation=compensation, reference=backup,
                               count_macs=False)  # fmt: skip
                self.history += report.history
                channels.update(report.channels_after)
                self.scores.update({k: v.tolist() for k, v in scores.values.items()})
                bar.update(1)
        except Exception:
            if backup is not None:
                restore(module, backup)
            self.history = history
            raise
        finally:
            bar.close()
        module._lightning_shapley_history = list(self.history)
        _rebuild_training(trainer, module)
        params_after, macs_after = count_params_and_macs(module, inputs[:1])
        values = {
            name: (before[name], _evaluate(module, inputs, t, fn))
            for name, (fn, t) in measures.items()
        }
        original = {k: self.original_channels[k] for k in channels}
        achieved = 1 - sum(channels.values()) / sum(original.values())
        report = PruningReport(params_before, params_after, macs_before, macs_after, original,
                               channels, target, achieved, [])  # fmt: skip
        self._log(trainer, epoch, report, seconds, n_evals, values)

    def _ratios(self, current: dict[str, int], target: float) -> float | dict[str, float]:
        """What each layer (or all, in global scope) must lose now to reach ``target`` of the
        original channels."""
        for name, n in current.items():
            self.original_channels.setdefault(name, n)
        if self.scope == "global":
            total0 = sum(self.original_channels[n] for n in current)
            total = sum(current.values())
            return max(0.0, (total - (1 - target) * total0) / total)
        return {
            n: max(0.0, (current[n] - (1 - target) * self.original_channels[n]) / current[n])
            for n in current
        }

    def _plan(
        self, scores: dict[str, torch.Tensor], ratio: float | dict[str, float], criterion: Criterion
    ) -> PruningPlan:
        normalize = "none" if getattr(criterion, "scope", "layer") == "network" else "mean"
        return make_plan(scores, ratio, scope=self.scope, normalize=normalize,
                         min_channels=self.min_channels, round_to=self.round_to)  # fmt: skip

    def _log(self, trainer, epoch, report, seconds, n_evals, values) -> None:
        """Metrics to the Trainer's loggers, one line to the console (rank zero)."""
        metrics = {
            "pruning/params": float(report.params_after),
            "pruning/macs": float(report.macs_after),
            "pruning/estimation_seconds": seconds,
            "pruning/evaluations": float(n_evals),
            **{f"pruning/channels/{k}": float(v) for k, v in report.channels_after.items()},
        }
        for name, (before, after) in values.items():
            metrics[f"pruning/{name}_before"], metrics[f"pruning/{name}_after"] = before, after
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            changes = ", ".join(f"{name} {b:.4f} → {a:.4f}" for name, (b, a) in values.items())
            rank_zero_info(
                f"ShapleyPruningCallback (epoch {epoch}): removed {report.achieved_ratio:.1%} of "
                f"the channels; params {report.params_before:,} → {report.params_after:,}, MACs "
                f"{report.macs_before:,} → {report.macs_after:,}; on the calibration set: "
                f"{changes}; estimation {seconds:.1f} s, {n_evals:,} evaluations"
            )


def _measures(metric, targets: torch.Tensor | None, reference: torch.Tensor) -> dict:
    """What the log reports before and after: the labelled value and accuracy on the
    calibration set, or without labels the agreement with the unpruned model."""
    if targets is None:
        return {"kl": (value_function("kl"), reference)}
    value = value_function(metric or "cross_entropy")
    if value.label_free:
        value = value_function("cross_entropy")
    return {value.name: (value, targets), "accuracy": (value_function("accuracy"), targets)}


def _evaluate(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, value) -> float:
    with evaluating(module):
        logits = torch.cat([module(x) for x in inputs.split(256)])
    return float(value(logits.unsqueeze(0), targets)[0])


def _rebuild_training(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """New parameters need new optimizers (LR schedules carried over) and a new DDP wrapper."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and strategy.model is not module:
        strategy.model = strategy._setup_model(module)
    schedules = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    strategy.setup_optimizers(trainer)
    configs = trainer.lr_scheduler_configs
    if len(configs) == len(schedules):
        for config, state in zip(configs, schedules, strict=True):
            config.scheduler.load_state_dict(state)
            for group, lr in zip(config.scheduler.optimizer.param_groups,
                                 config.scheduler.get_last_lr(), strict=True):  # fmt: skip
                group["lr"] = lr


def restore_pruning(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Prune a freshly built ``module`` as recorded in a checkpoint, before its weights load.

    Call it from ``LightningModule.on_load_checkpoint`` so that ``load_from_checkpoint`` works
    for a pruned run (``ShapleyPruningCallback`` calls it itself when a fit resumes). Nothing
    happens when the checkpoint holds no pruning or the module is already pruned that way.
    """
    saved = checkpoint.get(CHECKPOINT_KEY) or {}
    history = list(saved.get("history", []))
    if not history or getattr(module, "_lightning_shapley_history", []) == history:
        return
    example = torch.zeros(saved["example_shape"], device=next(module.parameters()).device)
    replay(module, history, example)
    module._lightning_shapley_history = history

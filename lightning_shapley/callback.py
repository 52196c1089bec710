"""``ShapleyPruningCallback``: prune a LightningModule's channels inside a Lightning run."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, get_args

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchmetrics import Metric

from lightning_shapley.calibration import (
    BatchToXY,
    as_calibration_tensors,
    draw_few_shot,
    split_per_class,
)
from lightning_shapley.criteria import (
    CRITERION_OPTIONS,
    DEFAULT_CRITERION,
    BanditShapleyCriterion,
    Criterion,
    ImportanceCriterion,
    make_criterion,
    stop_after,
)
from lightning_shapley.games.distributed import ShardedGame
from lightning_shapley.metrics import first_logits, value_function
from lightning_shapley.modes import evaluating
from lightning_shapley.options import (
    ABLATIONS,
    COMPENSATIONS,
    COSTS,
    PRUNE_ON,
    SCHEDULES,
    SCOPES,
    Ablation,
    Compensation,
    Cost,
    CriterionName,
    EstimatorName,
    MetricName,
    PruneOn,
    Schedule,
    Scope,
    check_choice,
)
from lightning_shapley.prune import PruningReport
from lightning_shapley.pruning import (
    channel_costs,
    count_params_and_macs,
    is_importance,
    prunable_layer_names,
    replay,
)
from lightning_shapley.session import PruningSession

__all__ = ["ShapleyPruningCallback", "load_pruned_checkpoint", "restore_pruning"]

CHECKPOINT_KEY = "lightning_shapley"


class ShapleyPruningCallback(Callback):
    """Prune channels by what they are worth to the model, at the end of chosen training epochs.

    When it fires it draws a few-shot calibration set (``shots`` examples per class from the
    validation data, through its own loader's ``collate_fn``, reproducibly, unless
    ``calibration`` is given), plays the channel game of every prunable layer, removes the
    channels the game finds least needed physically through torch-pruning, refits what feeds on
    them (least squares, no training), rebuilds the optimizers (carrying the LR schedulers'
    state), and lets training go on (fine-tuning) or stops it. Under DDP the game's evaluations
    are shared across ranks and every rank applies the identical plan; the model is then
    wrapped in DDP again.

    Args:
        ratio: Share of channels removed by the end of a pruning epoch, counted against the
            original model: a number in ``[0, 1)``, or a function ``epoch -> ratio`` for an
            iterative schedule (e.g. ``lambda e: 0.25 * (e + 1)`` with ``epochs=(0, 1, 2)``).
        epochs: The epoch(s) at whose end to prune, or a function ``epoch -> bool``.
        prune_on: ``"train_epoch_end"`` (default): after the epoch's last training batch,
            before its validation, so that the epoch's validation metrics, ``ModelCheckpoint``
            and ``EarlyStopping`` judge the pruned model (an epoch without validation prunes at
            its end). ``"validation_end"``: after the epoch's validation and its checkpoints,
            which then hold the unpruned model and its score; the pruning happens as the next
            epoch starts, so the pruned model is first validated an epoch later.
        scope: ``"layer"`` (every layer loses the ratio) or ``"global"`` (one ranking over all
            layers; the game-based criteria then play one network-wide game).
        cost: What the ratio is a share of in global scope: ``"channels"`` (default),
            ``"params"`` or ``"macs"`` (what each layer's channels cost, measured on the
            calibration inputs; ``greedy`` then searches at that budget too).
        schedule: ``"layer_by_layer"`` (default: layers scored and pruned first to last, each on
            the partly pruned model, as Ancona et al. do) or ``"one_shot"`` (every layer scored
            on the unpruned model).
        criterion: ``"bandit_shapley"`` (default: channel Shapley values at the cut, each
            channel settled by the bandit sampler where it can, those left in doubt decided by
            a guided kept-set search, see
            :class:`~lightning_shapley.criteria.BanditShapleyCriterion`),
            ``"greedy"`` (backward elimination on the game of the kept set), ``"shapley"``
            (Shapley values from ``estimator``), any name of
            :data:`~lightning_shapley.criteria.CRITERIA`, a ``Criterion``, or a torch-pruning
            importance (``tp.importance.MagnitudeImportance(p=1)``, ...).
        estimator: Estimator of the criteria that take one (``"shapley"``,
            ``"iterated_shapley"``). ``None``: the criterion's own.
        budget: Game evaluations per game of the Shapley criteria. ``None``: the criterion's own.
        shots: Calibration examples per class.
        held_out: Validation examples per class, drawn besides the calibration set, on which
            the loss and accuracy before and after pruning are measured (0: none). With
            ``calibration`` given they are drawn from the validation data all the same, and
            not checked against it.
        calibration: Calibration data to use whole instead of the drawn few-shot set: a
            ``Dataset``, a ``DataLoader``, an ``(inputs, targets)`` pair, or unlabelled inputs
            alone (for a label-free criterion such as the default).
        batch_to_xy: Where the inputs and targets are in a batch of the validation loader (or
            of ``calibration``), e.g. ``lambda batch: (batch["image"], batch["label"])`` for
            dict batches. ``None``: a batch's first two items.
        metric: The game's value for the game-based criteria: ``"kl"`` (agreement with the
            unpruned model), ``"cross_entropy"``, ``"accuracy"``, ``"logit_mse"``, a
            torchmetrics ``Metric`` or a callable ``(logits, targets) -> scalar`` (higher is
            better). ``None``: the criterion's own.
        ablation: What the game puts in place of removed channels: ``"zero"``, ``"mean"``,
            ``"regression"`` or ``"refit"`` (see :class:`~lightning_shapley.games.ChannelGame`).
            ``None``: the criterion's own.
        compensation: What the pruned consumers get back: ``"least_squares"`` (default),
            ``"none"``, ``"mean"``, ``"regression"`` (see
            :mod:`~lightning_shapley.compensation`), or ``"auto"``: what makes the pruned model
            the game's.
        ignored_layers: Layers never pruned (the classifier head is always left out).
        min_channels: Channels every layer keeps at least.
        round_to: Round kept channel counts up to a multiple of this.
        fine_tune: Keep training after pruning (``False`` stops the fit after the last prune).
        max_seconds: Time budget of each prune's scoring (``bandit_shapley`` only, one process):
            once spent, the decision so far stands (the search's removals so far, the
            surrogate's values for the layers not reached yet) and the prune goes on with it.
        seed: Seed of the calibration draw and the estimators.
        verbose: Report each prune in the log.

    Raises:
        ValueError: On an invalid argument, or an option (``estimator``, ``budget``,
            ``metric``, ``ablation``) the criterion does not take.

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
        prune_on: PruneOn = "train_epoch_end",
        scope: Scope = "layer",
        cost: Cost = "channels",
        schedule: Schedule = "layer_by_layer",
        criterion: CriterionName | Criterion | Callable[..., torch.Tensor] = DEFAULT_CRITERION,
        estimator: EstimatorName | None = None,
        budget: int | None = None,
        shots: int = 10,
        held_out: int = 20,
        calibration: Dataset
        | DataLoader
        | tuple[torch.Tensor, torch.Tensor]
        | torch.Tensor
        | None = None,
        batch_to_xy: BatchToXY | None = None,
        metric: MetricName | Metric | Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
        ablation: Ablation | None = None,
        compensation: Compensation = "least_squares",
        ignored_layers: Sequence[str] = (),
        min_channels: int = 1,
        round_to: int | None = None,
        fine_tune: bool = True,
        max_seconds: float | None = None,
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
        check_choice("prune_on", prune_on, PRUNE_ON)
        check_choice("scope", scope, SCOPES)
        check_choice("cost", cost, COSTS)
        if cost != "channels" and scope != "global":
            raise ValueError(f"cost={cost!r} needs scope='global' (one budget over all layers)")
        check_choice("schedule", schedule, SCHEDULES)
        if estimator is not None:
            check_choice("estimator", estimator, get_args(EstimatorName))
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ValueError(
                f"budget must be a positive number of game evaluations, got {budget!r}"
            )
        if not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be a positive integer, got {shots!r}")
        if not isinstance(held_out, int) or held_out < 0:
            raise ValueError(f"held_out must be a non-negative integer, got {held_out!r}")
        if ablation is not None:
            check_choice("ablation", ablation, ABLATIONS)
        check_choice("compensation", compensation, COMPENSATIONS)
        if metric is not None:
            value_function(metric)  # validates the metric
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise TypeError(f"batch_to_xy must be a function batch -> (inputs, targets), got "
                            f"{type(batch_to_xy).__name__}")  # fmt: skip
        if not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"min_channels must be a positive integer, got {min_channels!r}")
        if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
            raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
        if max_seconds is not None and (
            not isinstance(max_seconds, int | float) or max_seconds < 0
        ):
            raise ValueError(
                f"max_seconds must be non-negative seconds or None, got {max_seconds!r}"
            )
        self.ratio, self.epochs, self.scope, self.schedule = ratio, epochs, scope, schedule
        self.prune_on, self.cost = prune_on, cost
        self.criterion, self.estimator, self.budget = criterion, estimator, budget
        self.shots, self.calibration, self.batch_to_xy = shots, calibration, batch_to_xy
        self.held_out = held_out
        self.metric, self.ablation = metric, ablation
        self.compensation = compensation
        self.ignored_layers = tuple(ignored_layers)
        self.min_channels, self.round_to = min_channels, round_to
        self.fine_tune, self.seed, self.verbose = fine_tune, seed, verbose
        self.max_seconds = max_seconds
        self._criterion()  # validates the criterion, its options and the time budget
        # state kept in checkpoints
        self.pruned_epochs: list[int] = []
        self.history: list[dict] = []
        self.original_channels: dict[str, int] = {}
        self.scores: dict[str, list[float]] = {}
        self.example_shape: list[int] = []

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse what could never prune, before any training; on resume, prune the fresh model
        as the checkpoint's was, before the weights load."""
        if stage != "fit":
            return
        _refuse_compiled(pl_module)
        self._check_schedule(trainer)
        if self.calibration is None and not _has_validation_data(trainer):
            raise ValueError(
                "ShapleyPruningCallback draws its calibration set from the validation data, and "
                "this fit has none: pass val_dataloaders, or the calibration data with "
                "calibration="
            )
        path = trainer.ckpt_path
        if path is not None:
            restore_pruning(pl_module, trainer.strategy.load_checkpoint(path))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """With ``prune_on="train_epoch_end"``: prune after the epoch's last batch, before its
        validation."""
        if (
            self.prune_on == "train_epoch_end"
            and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        ):
            self._maybe_prune(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``prune_on="train_epoch_end"``, where the last batch was not known: prune now."""
        if self.prune_on == "train_epoch_end":
            self._maybe_prune(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``prune_on="validation_end"``: prune for the previous epoch, once its validation
        and its checkpoints (saved as late as ``on_train_epoch_end``) are done."""
        if self.prune_on == "validation_end" and trainer.current_epoch > 0:
            self._maybe_prune(trainer, pl_module, trainer.current_epoch - 1)

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

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        """An epoch list that the fit never reaches would never prune: say so up front."""
        last = trainer.max_epochs
        if callable(self.epochs) or last is None or last < 0:
            return
        # validation_end prunes when the next epoch starts
        reach = last - 1 if self.prune_on == "validation_end" else last
        why = " (prune_on='validation_end' prunes as the next epoch starts)" if reach < last else ""
        late = [e for e in self.epochs if e >= reach and e not in self.pruned_epochs]
        if late and len(late) == len(self.epochs):
            raise ValueError(
                f"ShapleyPruningCallback would never prune: epochs={self.epochs} are all at or "
                f"beyond {reach} with max_epochs={last} (epochs count from 0){why}; lower "
                "epochs or raise max_epochs"
            )
        if late:
            rank_zero_warn(
                f"ShapleyPruningCallback: epochs {late} are at or beyond {reach} with "
                f"max_epochs={last} (epochs count from 0){why}: no pruning there"
            )

    def _maybe_prune(
        self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int | None = None
    ) -> None:
        epoch = trainer.current_epoch if epoch is None else epoch
        if trainer.sanity_checking or not self._is_due(trainer, epoch):
            return
        with torch.inference_mode(False), torch.enable_grad():
            self._prune(trainer, module, epoch)
        self.pruned_epochs.append(epoch)
        if not self.fine_tune and not self._more_to_come(epoch):
            trainer.should_stop = True

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
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(inputs, targets, held_out)``: the calibration set, and labelled validation
        examples it does not hold, for the before/after metrics (``None`` without any)."""
        loader = _validation_loader(trainer)
        held_out = None
        if self.calibration is not None:
            inputs, targets = as_calibration_tensors(self.calibration, batch_to_xy=self.batch_to_xy)
            if loader is not None and self.held_out:
                try:
                    held_out = draw_few_shot(loader, self.held_out, seed=self.seed + 1,
                                             batch_to_xy=self.batch_to_xy)  # fmt: skip
                except ValueError:  # unlabelled validation batches: no held-out metrics
                    held_out = None
        else:
            if loader is None:
                raise ValueError("ShapleyPruningCallback needs validation data or `calibration=`")
            x, y = draw_few_shot(loader, self.shots + self.held_out, seed=self.seed,
                                 batch_to_xy=self.batch_to_xy)  # fmt: skip
            (inputs, targets), held_out = split_per_class(x, y, self.shots, seed=self.seed)
            if len(held_out[0]) == 0:
                held_out = None
        # clones: tensors made under inference mode cannot take part in autograd
        inputs = inputs.clone().to(device)
        targets = None if targets is None else targets.clone().to(device)
        if held_out is not None:
            held_out = (held_out[0].clone().to(device), held_out[1].clone().to(device))
        return inputs, targets, held_out

    def _criterion(self) -> Criterion:
        criterion = self._named_criterion()
        if self.max_seconds is not None and not isinstance(criterion, BanditShapleyCriterion):
            raise ValueError(
                "max_seconds needs a criterion that can stop with its decision so far "
                f"(bandit_shapley), not {criterion.name!r}"
            )
        return criterion

    def _named_criterion(self) -> Criterion:
        options = {"estimator": self.estimator, "budget": self.budget, "metric": self.metric,
                   "ablation": self.ablation}  # fmt: skip
        given = sorted(k for k, v in options.items() if v is not None)
        if isinstance(self.criterion, Criterion) or is_importance(self.criterion):
            if given:
                raise ValueError(
                    f"{', '.join(given)} configure a criterion given by name; set them on the "
                    f"{type(self.criterion).__name__} object instead"
                )
            if isinstance(self.criterion, Criterion):
                return self.criterion
            return ImportanceCriterion(self.criterion)
        if not isinstance(self.criterion, str):
            raise TypeError(
                "criterion must be a name, a Criterion or a torch-pruning importance, got "
                f"{type(self.criterion).__name__}"
            )
        takes = CRITERION_OPTIONS.get(self.criterion, ())
        if self.scope == "global" and "scope" in takes:
            options["scope"] = "global"
        if self.cost != "channels" and "cost" in takes:
            options["cost"] = self.cost
        return make_criterion(self.criterion, **options)

    def _timed_criterion(self, world_size: int) -> Criterion:
        """The criterion, stopping its scoring ``max_seconds`` from now if there is a budget."""
        criterion = self._criterion()
        if self.max_seconds is None:
            return criterion
        if world_size > 1:  # every process must stop at the same evaluation
            raise ValueError("max_seconds needs a single process; leave it out under DDP")
        timed = copy.copy(criterion)
        deadline, own = stop_after(self.max_seconds), criterion.should_stop
        timed.should_stop = deadline if own is None else lambda: deadline() or bool(own())
        return timed

    def _prune(self, trainer: pl.Trainer, module: pl.LightningModule, epoch: int) -> None:
        if not self.pruned_epochs and not is_overridden(
            "on_load_checkpoint", module, pl.LightningModule
        ):
            rank_zero_warn(
                f"{type(module).__name__} has no on_load_checkpoint hook: its pruned checkpoints "
                "load with lightning_shapley.load_pruned_checkpoint(Model, path), or with "
                "Model.load_from_checkpoint once it has `def on_load_checkpoint(self, "
                "checkpoint): restore_pruning(self, checkpoint)`"
            )
        device = module.device
        inputs, targets, held_out = self._calibration_data(trainer, device)
        self.example_shape = list(inputs[:1].shape)
        layers = prunable_layer_names(module, inputs[:1], ignored=self.ignored_layers)
        if not layers:
            raise ValueError("ShapleyPruningCallback found no prunable layer in the model")
        criterion = self._timed_criterion(trainer.world_size)
        if targets is None and not criterion.label_free:
            raise ValueError(
                f"criterion {criterion.name!r} needs labelled calibration data: pass (inputs, "
                "targets), or use a label-free criterion (greedy, or metric='kl')"
            )
        frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
        before = _measures(module, held_out)
        params_before, macs_before = count_params_and_macs(module, inputs[:1])
        target = self._target_ratio(epoch)
        cost = None
        if self.cost != "channels":
            cost = channel_costs(module, layers, inputs[:1], self.cost)
        bar = _ScoringBar(trainer, f"Pruning ({criterion.name})")
        stop = _stop_check(trainer)
        session = PruningSession(
            criterion,
            scope=self.scope,
            schedule=self.schedule,
            compensation=self.compensation,
            original_channels=self.original_channels,
            min_channels=self.min_channels,
            round_to=self.round_to,
            cost=cost,
            shard=_watching(trainer, bar, stop),
            decide=lambda removed: trainer.strategy.broadcast(removed, src=0),  # one decision
            stop=stop,
            on_step=bar.layer,
        )
        try:
            with _one_summary_warning(epoch):
                result = session.run(module, layers, inputs, targets, target,
                                     seed=self.seed + 1000 * epoch)  # fmt: skip
        finally:
            bar.close()
        for name in frozen:  # torch-pruning's new parameters are trainable
            module.get_parameter(name).requires_grad_(False)
        self.history += result.history
        self.scores.update(result.scores)
        module._lightning_shapley_history = list(self.history)
        _rebuild_training(trainer, module)
        params_after, macs_after = count_params_and_macs(module, inputs[:1])
        after = _measures(module, held_out, before.pop("_logits", None))
        after.pop("_logits", None)
        channels = result.channels
        original = {k: self.original_channels[k] for k in channels}
        achieved = 1 - sum(channels.values()) / sum(original.values())
        report = PruningReport(params_before, params_after, macs_before, macs_after, original,
                               channels, target, achieved, [])  # fmt: skip
        self._log(module, epoch, report, result, before, after)

    def _log(self, module, epoch, report, result, before, after) -> None:
        """Metrics through the module's ``log_dict`` (epoch-level), one line to the console."""
        metrics = {
            "pruning/params": float(report.params_after),
            "pruning/macs": float(report.macs_after),
            "pruning/estimation_seconds": result.seconds,
            "pruning/evaluations": float(result.n_evals),
            "pruning/settled_by_bandit": float(result.settled),
            **{f"pruning/channels/{k}": float(v) for k, v in report.channels_after.items()},
        }
        for name, value in after.items():
            if name in before:
                metrics[f"pruning/{name}_before"] = before[name]
            metrics[f"pruning/{name}_after"] = value
        module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
        if self.verbose:
            changes = ", ".join(
                f"{name} {before[name]:.4f} → {value:.4f}"
                if name in before
                else f"{name} {value:.4f}"
                for name, value in after.items()
            )
            where = f"on held-out validation examples: {changes}; " if after else ""
            rank_zero_info(
                f"ShapleyPruningCallback (epoch {epoch}): removed {report.achieved_ratio:.1%} of "
                f"the channels; params {report.params_before:,} → {report.params_after:,}, MACs "
                f"{report.macs_before:,} → {report.macs_after:,}; {where}estimation "
                f"{result.seconds:.1f} s, {result.n_evals:,} evaluations"
                + (f", {result.settled:,} channels settled by the bandit" if result.settled else "")
            )


def _measures(
    module: nn.Module,
    held_out: tuple[torch.Tensor, torch.Tensor] | None,
    unpruned: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The before/after metrics on held-out examples: cross-entropy ``loss`` (positive) and
    ``accuracy`` for class labels, ``mse`` for other targets, and the ``kl`` divergence of the
    pruned model's predictions from the ``unpruned`` logits; the logits under ``"_logits"``."""
    if held_out is None:
        return {}
    inputs, targets = held_out
    with evaluating(module):
        logits = torch.cat([first_logits(module(x)) for x in inputs.split(256)]).float()
    values: dict[str, Any] = {"_logits": logits}
    classes = logits.dim() == 2 and logits.shape[1] > 1
    if classes and targets.dim() == 1 and not targets.is_floating_point():
        values["loss"] = float(F.cross_entropy(logits, targets))
        values["accuracy"] = float((logits.argmax(dim=1) == targets).float().mean())
    elif targets.numel() == logits.numel():
        values["mse"] = float(F.mse_loss(logits.flatten(), targets.float().flatten()))
    if unpruned is not None and classes:
        log_p, log_ref = F.log_softmax(logits, dim=1), F.log_softmax(unpruned, dim=1)
        values["kl"] = float((log_ref.exp() * (log_ref - log_p)).sum(dim=1).mean())
    return values


class _ScoringBar:
    """The Trainer's own progress bar while channels are scored: a TQDM bar under the main one,
    or a task of the Rich bar; it counts game evaluations (their total is unknown up front)."""

    def __init__(self, trainer: pl.Trainer, description: str) -> None:
        self.description, self._tqdm, self._rich, self._task = description, None, None, None
        callback = trainer.progress_bar_callback
        if callback is None or not trainer.is_global_zero:
            return
        if isinstance(callback, RichProgressBar) and callback.progress is not None:
            self._rich = callback
            self._task = callback.progress.add_task(description, total=float("inf"))
        elif isinstance(callback, TQDMProgressBar):
            self._tqdm = Tqdm(desc=description, unit=" evaluations", leave=False,
                              position=2 * callback.process_position + 1, dynamic_ncols=True,
                              file=sys.stdout)  # fmt: skip

    def layer(self, layers: list[str], index: int, total: int) -> None:
        """Say which layer(s) are being scored."""
        where = f"layer {index + 1}/{total} ({layers[0]})" if len(layers) == 1 else (
            f"{len(layers)} layers at once")  # fmt: skip
        text = f"{self.description}: {where}"
        if self._tqdm is not None:
            self._tqdm.set_description_str(text)
        elif self._rich is not None:
            self._rich.progress.update(self._task, description=text)
            self._rich.refresh()

    def advance(self, evaluations: int) -> None:
        if self._tqdm is not None:
            self._tqdm.update(evaluations)
        elif self._rich is not None:
            self._rich.progress.update(self._task, advance=evaluations)
            self._rich.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            self._rich.progress.remove_task(self._task)
            self._rich.refresh()


def _stop_check(trainer: pl.Trainer) -> Callable[[], None]:
    """Raises Lightning's ``SIGTERMException`` once the Trainer has received SIGTERM."""

    def stop() -> None:
        if trainer.received_sigterm:
            raise SIGTERMException()

    return stop


class _Watched:
    """A game that advances the scoring bar and stops on SIGTERM between evaluations; every
    other attribute is the wrapped game's."""

    def __init__(self, game: Any, bar: _ScoringBar, stop: Callable[[], None]) -> None:
        self.game, self.n_players, self._bar, self._stop = game, game.n_players, bar, stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["game"], name)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self._stop()
        values = self.game(masks)
        self._bar.advance(len(masks))
        return values


def _watching(trainer: pl.Trainer, bar: _ScoringBar, stop: Callable[[], None]):
    """Wraps every game a criterion plays: progress and stop checks, shared across DDP ranks."""

    def wrap(game: Any) -> Any:
        if trainer.world_size > 1:
            game = ShardedGame(game.n_players, game, trainer.strategy.all_gather,
                               rank=trainer.global_rank, world_size=trainer.world_size)  # fmt: skip
        return _Watched(game, bar, stop)

    return wrap


@contextmanager
def _one_summary_warning(epoch: int) -> Iterator[None]:
    """Collect the warnings of one prune (one per layer, often) into one summary warning."""
    with warnings.catch_warnings(record=True) as caught:  # the user's filters still apply
        yield
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if messages:
        more = f" (and {len(messages) - 1} more like it)" if len(messages) > 1 else ""
        rank_zero_warn(
            f"ShapleyPruningCallback: {len(caught)} warning(s) while pruning at epoch {epoch}; "
            f"the first: {messages[0]}{more}"
        )


def _has_validation_data(trainer: pl.Trainer) -> bool:
    source = getattr(trainer.fit_loop.epoch_loop.val_loop, "_data_source", None)
    return source is None or source.is_defined()


def _validation_loader(trainer: pl.Trainer) -> DataLoader | None:
    """The first validation loader, rebuilt to read its whole map-style dataset in order (with
    its own ``collate_fn``): every rank draws the same examples, as the model sees them."""
    loaders = trainer.val_dataloaders
    if loaders is None and _has_validation_data(trainer):
        trainer.fit_loop.epoch_loop.val_loop.setup_data()  # not loaded yet: no validation so far
        loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=256, shuffle=False, collate_fn=loader.collate_fn,
                          num_workers=loader.num_workers,
                          worker_init_fn=loader.worker_init_fn)  # fmt: skip
    return loader


def _refuse_compiled(module: nn.Module) -> None:
    compiled = [
        name or "the module" for name, m in module.named_modules() if hasattr(m, "_orig_mod")
    ]
    if compiled:
        raise ValueError(
            f"ShapleyPruningCallback cannot prune the torch.compile'd submodule(s) {compiled}: "
            "pruning changes parameter shapes under the compiled graph. Prune the original "
            "module: keep it uncompiled while pruning and compile it afterwards"
        )


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


def load_pruned_checkpoint(cls: type[pl.LightningModule], checkpoint_path: Any, **kwargs: Any):
    """``cls.load_from_checkpoint(checkpoint_path, **kwargs)`` for a run that
    ``ShapleyPruningCallback`` pruned, with or without an ``on_load_checkpoint`` hook that
    calls :func:`restore_pruning`.

    Lightning builds ``cls`` from the saved hyperparameters and loads the weights right after
    the module's own ``on_load_checkpoint``; the pruned architecture is rebuilt there.
    """
    own = cls.on_load_checkpoint

    def on_load_checkpoint(self: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        own(self, checkpoint)
        restore_pruning(self, checkpoint)

    restoring = type(cls.__name__, (cls,), {"on_load_checkpoint": on_load_checkpoint,
                                            "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})  # fmt: skip
    model = restoring.load_from_checkpoint(checkpoint_path, **kwargs)
    model.__class__ = cls
    return model

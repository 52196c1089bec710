"""Value functions of a game: logits of many coalitions → one value per coalition.

Every value is *higher is better*. Built-in metrics are per-example, so estimators that need the
spread over examples can have it; a torchmetrics metric or any callable is applied coalition by
coalition.

Beyond classification (``"cross_entropy"``, ``"accuracy"``, integer labels ``[N]``):
``"mse"`` for regression (float targets ``[N]`` or ``[N, K]``), ``"bce"`` for multi-label
models (0/1 targets ``[N, K]``, one logit per label), and ``"auto"``, which picks one of
``"cross_entropy"``, ``"mse"`` and ``"bce"`` from the targets and the model's outputs.

Two built-in values need no labels: ``"kl"`` (−KL divergence of the pruned model's predictive
distribution from the reference's; for a model with one output, which has no distribution over
classes, −squared difference) and ``"logit_mse"`` (−mean squared output difference: agreement
for regression outputs). Their targets are the *reference logits* ``[N, K]`` of the unpruned
model; a game computes them itself when it is given labels or no targets at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric

from lightning_shapley.modes import evaluating
from lightning_shapley.options import METRICS

__all__ = [
    "BUILT_IN",
    "LABEL_FREE",
    "ValueFunction",
    "choose_metric",
    "first_logits",
    "reference_logits",
    "value_function",
]

MetricLike = str | Metric | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

BUILT_IN = METRICS
LABEL_FREE = ("kl", "logit_mse")


@dataclass(frozen=True)
class ValueFunction:
    """Turns logits ``[m, N, K]`` and targets ``[N]`` into values ``[m]`` (higher is better).

    Attributes:
        name: Readable name for reports.
        per_example: Whether :meth:`per_example_values` is available.
        label_free: Whether the targets are reference logits ``[N, K]`` rather than labels.
    """

    name: str
    per_example: bool
    _fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    label_free: bool = False

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of ``m`` coalitions from logits ``[m, N, K]`` and targets ``[N]``
        (reference logits ``[N, K]`` for a label-free value)."""
        if self.per_example:
            return self._fn(logits, targets).mean(dim=1)
        return torch.stack([torch.as_tensor(self._fn(row, targets)).float() for row in logits])

    def per_example_values(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Values ``[m, N]``, one per coalition and example (built-in metrics only)."""
        if not self.per_example:
            raise ValueError(f"metric {self.name!r} has no per-example values")
        return self._fn(logits, targets)


def _class_labels(logits: torch.Tensor, targets: torch.Tensor, name: str) -> torch.Tensor:
    """``targets`` as class indices ``[N]`` for logits ``[m, N, K]``, or a ``ValueError`` that
    says which value fits them."""
    if targets.is_floating_point() or targets.dim() != 1 or logits.shape[-1] < 2:
        raise ValueError(
            f"metric {name!r} needs integer class labels [N] and a model with several outputs; "
            f"got {_describe(targets)} targets and {logits.shape[-1]} output(s). Use "
            f"metric={choose_metric(targets, logits.shape[-1])!r} (or 'auto', which chooses "
            "from the targets)"
        )
    return targets


def _describe(targets: torch.Tensor) -> str:
    return f"{str(targets.dtype).removeprefix('torch.')} {list(targets.shape)}"


def _negative_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logsumexp − gather: the same as −cross_entropy, several times faster on CPU for few classes
    targets = _class_labels(logits, targets, "cross_entropy")
    logits = logits.float()
    picked = logits.gather(-1, targets.view(1, -1, 1).expand(len(logits), -1, 1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == _class_labels(logits, targets, "accuracy")).float()


def _as_outputs(logits: torch.Tensor, targets: torch.Tensor, name: str) -> torch.Tensor:
    """``targets`` as ``[N, K]``, shaped like one coalition's outputs ``[N, K]``."""
    n, k = logits.shape[-2:]
    if targets.numel() != n * k:
        raise ValueError(
            f"metric {name!r} compares the outputs [N={n}, K={k}] with targets of the same "
            f"size; got {_describe(targets)}"
        )
    return targets.reshape(n, k).float()


def _negative_mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    targets = _as_outputs(logits, targets, "mse")
    return -(logits.float() - targets).pow(2).mean(dim=-1)


def _negative_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    targets = _as_outputs(logits, targets, "bce")
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("metric 'bce' needs 0/1 multi-label targets [N, K]; use 'mse' otherwise")
    logits = logits.float()
    # −BCE-with-logits per label: y·log σ(z) + (1 − y)·log(1 − σ(z)), averaged over labels
    loss = torch.nn.functional.softplus(logits) - targets * logits
    return -loss.mean(dim=-1)


def choose_metric(targets: torch.Tensor, n_outputs: int) -> str:
    """The built-in value that fits ``targets`` and a model with ``n_outputs`` outputs.

    Integer labels ``[N]`` with several outputs: ``"cross_entropy"``; 0/1 targets shaped as
    the outputs (``[N, K]``, or ``[N]`` for one logit): ``"bce"`` (multi-label or binary); any
    other numeric targets: ``"mse"`` (regression, one output or several).

    Example:
        >>> choose_metric(torch.tensor([0, 2, 1]), 3), choose_metric(torch.randn(3), 1)
        ('cross_entropy', 'mse')
        >>> choose_metric(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 2)
        'bce'
    """
    if targets.dim() == 1 and not targets.is_floating_point() and n_outputs > 1:
        return "cross_entropy"
    binary = bool(((targets == 0) | (targets == 1)).all())
    if binary and targets.numel() == len(targets) * n_outputs:
        return "bce"
    return "mse"


def _auto(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _PER_EXAMPLE[choose_metric(targets, logits.shape[-1])](logits, targets)


def _negative_kl(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    # −KL(p_ref ‖ p) = Σ_k p_ref,k (log p_k − log p_ref,k), per coalition and example
    reference = _as_outputs(logits, reference, "kl")
    if logits.shape[-1] == 1:  # no distribution over one class: agreement of the output itself
        return _negative_logit_mse(logits, reference)
    log_ref = torch.log_softmax(reference, dim=-1)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return (log_ref.exp() * (log_p - log_ref)).sum(dim=-1)


def _negative_logit_mse(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    reference = _as_outputs(logits, reference, "logit_mse")
    return -(logits.float() - reference).pow(2).mean(dim=-1)


_PER_EXAMPLE = {
    "cross_entropy": _negative_cross_entropy,
    "accuracy": _accuracy,
    "mse": _negative_mse,
    "bce": _negative_bce,
    "auto": _auto,
    "kl": _negative_kl,
    "logit_mse": _negative_logit_mse,
}


def _torchmetric(metric: Metric) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def compute(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        metric.reset()
        metric.update(logits, targets)
        value = metric.compute()
        metric.reset()
        return value

    return compute


def value_function(metric: MetricLike) -> ValueFunction:
    """Build the value function for ``metric``.

    Args:
        metric: ``"cross_entropy"`` (value = −mean loss), ``"accuracy"``, ``"mse"``
            (regression: −mean squared error), ``"bce"`` (multi-label: −binary cross-entropy
            of the logits), ``"auto"`` (one of these three, from the targets: see
            :func:`choose_metric`), the label-free ``"kl"`` or ``"logit_mse"`` (agreement with
            reference logits), a torchmetrics ``Metric`` (its ``compute()``), or a callable
            ``(logits [N, K], targets [N]) → scalar``.
            Metrics and callables must be *higher is better*: negate a loss.

    Example:
        >>> fn = value_function("accuracy")
        >>> fn(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]), torch.tensor([0, 0]))
        tensor([0.5000])
    """
    if isinstance(metric, str):
        if metric in _PER_EXAMPLE:
            return ValueFunction(
                metric, True, _PER_EXAMPLE[metric], label_free=metric in LABEL_FREE
            )
        raise ValueError(
            f"metric={metric!r} is unknown; use one of {BUILT_IN}, a torchmetrics "
            "Metric or a callable (logits, targets) -> scalar"
        )
    if isinstance(metric, Metric):
        return ValueFunction(type(metric).__name__, False, _torchmetric(metric))
    if callable(metric):
        return ValueFunction(getattr(metric, "__name__", type(metric).__name__), False, metric)
    raise TypeError(
        f"metric must be a name, a torchmetrics Metric or a callable, got {type(metric).__name__}"
    )


def reference_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's eval-mode logits ``[N, K]`` on ``inputs`` ``[N, ...]``: the targets of a
    label-free value (its modes are restored; an output ``[N]`` or ``[N, ...]`` is flattened to
    ``[N, K]``)."""
    with evaluating(model), torch.no_grad():
        outputs = [first_logits(model(x)) for x in inputs.split(batch_size)]
    return torch.cat(outputs).detach().reshape(len(inputs), -1)


def first_logits(output: Any, kind: type = torch.Tensor) -> Any:
    """The logits in a model output: the output itself, or the first item of a tuple or list,
    or a dict's ``"logits"`` (else its first value), looked for until an object of ``kind``."""
    while not isinstance(output, kind):
        if isinstance(output, dict):
            output = output.get("logits", next(iter(output.values())))
        elif isinstance(output, tuple | list):
            output = output[0]
        else:
            raise TypeError(f"the model returned {type(output).__name__}, not logits")
    return output

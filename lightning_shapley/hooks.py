"""Forward hooks that are always removed: on layers' inputs and outputs, and watching what
layers receive while a model runs over calibration batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["attached", "watch_inputs"]


@contextmanager
def attached(
    modules: Iterable[nn.Module],
    *,
    before: Callable[[nn.Module, tuple], object] | None = None,
    after: Callable[[nn.Module, tuple, object], object] | None = None,
) -> Iterator[None]:
    """Within it, ``before(module, args)`` sees (and may replace) each of ``modules``' inputs and
    ``after(module, args, output)`` its output; the hooks are removed on the way out, whatever
    happens.

    Example:
        >>> net, seen = nn.Linear(2, 1), []
        >>> with attached([net], before=lambda module, args: seen.append(args[0].shape)):
        ...     _ = net(torch.zeros(3, 2))
        >>> _ = net(torch.zeros(4, 2))  # no longer watched
        >>> seen
        [torch.Size([3, 2])]
    """
    modules = list(modules)
    handles = [m.register_forward_pre_hook(before) for m in modules] if before else []
    handles += [m.register_forward_hook(after) for m in modules] if after else []
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def watch_inputs(
    model: nn.Module,
    modules: Iterable[nn.Module],
    batches: list[torch.Tensor],
    hook: Callable[[nn.Module, tuple], None],
) -> None:
    """Run ``model`` on every batch (no grad) with ``hook(module, args)`` seeing each of
    ``modules``' inputs; the hooks are removed afterwards, whatever happens."""
    with attached(modules, before=hook), torch.no_grad():
        for x in batches:
            model(x)

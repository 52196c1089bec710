"""Names of layers given by the user, checked against the model's."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_names", "valid_names"]


def valid_names(unknown: str, valid: Iterable[str], limit: int = 30) -> str:
    """``valid`` as one string, the names closest to ``unknown`` first (at most ``limit``).

    Example:
        >>> valid_names("layer1.conv", ["conv1", "layer1.0.conv1", "fc"])
        "'layer1.0.conv1', 'conv1', 'fc'"
    """
    valid = list(dict.fromkeys(valid))
    similarity = {name: difflib.SequenceMatcher(None, unknown, name).ratio() for name in valid}
    close = sorted((n for n in valid if similarity[n] >= 0.6), key=lambda n: -similarity[n])
    ordered = close[:5] + [name for name in valid if name not in close[:5]]
    shown = ", ".join(repr(name) for name in ordered[:limit]) or "none"
    return shown + (f" (and {len(ordered) - limit} more)" if len(ordered) > limit else "")


def check_names(
    names: Iterable[str], known: Iterable[str], what: str, shown: Iterable[str] | None = None
) -> None:
    """Raise ``ValueError`` naming the first of ``names`` not in ``known``, and the valid ones.

    Args:
        names: The names given.
        known: The names that exist.
        what: What the names are, for the message (e.g. ``"ignored"``).
        shown: The names to list in the message (default: ``known``).

    Example:
        >>> check_names(["fc"], ["fc1", "c"], "skip")
        Traceback (most recent call last):
        ...
        ValueError: skip names 'fc', which is not a layer of the model; valid names: 'fc1', 'c'
    """
    known = list(known)
    shown = known if shown is None else list(shown)
    exists = set(known)
    for name in names:
        if name not in exists:
            raise ValueError(
                f"{what} names {name!r}, which is not a layer of the model; valid names: "
                f"{valid_names(name, shown)}"
            )

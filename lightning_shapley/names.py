"""Names of layers given by the user, checked against the model's."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_names", "valid_names"]


def valid_names(unknown: str, valid: Iterable[str]) -> str:
    """``valid`` as one string, the names closest to ``unknown`` first.

    Example:
        >>> valid_names("layer1.conv", ["conv1", "layer1.0.conv1", "fc"])
        "'layer1.0.conv1', 'conv1', 'fc'"
    """
    valid = list(dict.fromkeys(valid))
    close = difflib.get_close_matches(unknown, valid, n=len(valid), cutoff=0.5)
    ordered = close + [name for name in valid if name not in close]
    return ", ".join(repr(name) for name in ordered) if ordered else "none"


def check_names(names: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` not in ``valid``, and the valid ones.

    Args:
        names: The names given.
        valid: The names that exist.
        what: What the names are, for the message (e.g. ``"ignored_layers"``).
    """
    valid = list(valid)
    known = set(valid)
    for name in names:
        if name not in known:
            raise ValueError(
                f"{what} names {name!r}, which is not a layer of the model; valid names: "
                f"{valid_names(name, valid)}"
            )

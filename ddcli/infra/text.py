"""Counts in messages: "1 step", "2 steps", never "1 steps" or "1 net(s)"."""

from __future__ import annotations

# The few irregular plurals our messages use; every other word takes an "s".
_IRREGULAR = {"process": "processes", "pass": "passes"}


def count(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1: ``count(1, "thread") == "1 thread"``.

    Example:
        >>> count(3, "step"), count(1, "net"), count(2, "process")
        ('3 steps', '1 net', '2 processes')
    """
    return f"{n} {word if n == 1 else _IRREGULAR.get(word, word + 's')}"

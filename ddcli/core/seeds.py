"""Stable seeds: every random draw in ddcli is seeded by a pure function of named parts."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (independent of PYTHONHASHSEED and platform).

    Example:
        >>> derive_seed(0, "net", 3) == derive_seed(0, "net", 3)
        True
    """
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)

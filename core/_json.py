"""JSON that others wrote: refused as malformed when nested too deeply."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(data: str | bytes | bytearray) -> Any:
    """``json.loads(data)``, except that JSON nested past Python's recursion
    limit (a couple of kilobytes of ``[``) raises :class:`ValueError`, as any
    other text that is not JSON does, not :class:`RecursionError`, which a
    caller catching malformed input does not expect."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None

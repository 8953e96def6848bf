"""Reading a service's log (stderr) in tests."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)")


def log_lines(text: str) -> list[str]:
    """The lines of a service's log, each checked to start with the UTC time it
    was written (within the last hour) and returned without it."""
    lines = []
    for line in text.strip().splitlines():
        match = _STAMP.fullmatch(line)
        assert match, f"no time stamp: {line!r}"
        when = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - when).total_seconds()) < 3600, line
        lines.append(match[2])
    return lines

"""Output formats shared by the CLI views: systemd's byte and time formats, tables."""

from __future__ import annotations

import time

_SUFFIXES = ("E", "P", "T", "G", "M", "K")  # largest first, base 1024


def format_bytes(n: int | None) -> str:
    """Bytes as systemd prints them: base 1024, one decimal truncated, ``B`` below 1024.

    1536 → ``1.5K``, 1024 → ``1.0K``, 252 → ``252B``; None → ``[no data]``.
    """
    if n is None:
        return "[no data]"
    for i, suffix in enumerate(_SUFFIXES):
        factor = 1024 ** (len(_SUFFIXES) - i)
        if n >= factor:
            # systemd's exact arithmetic: truncate to the next unit first, except for K.
            if suffix == "K":
                decimal = n * 10 // factor % 10
            else:
                decimal = n // (factor // 1024) * 10 // 1024 % 10
            return f"{n // factor}.{decimal}{suffix}"
    return f"{n}B"


def format_timestamp(ts: float) -> str:
    """``Thu 2026-11-26 01:32:09 UTC`` (local time zone, like systemctl)."""
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def format_timespan(seconds: float) -> str:
    """A rounded span like systemd's: ``2s``, ``5min 3s``, ``1h 2min``, ``3 days 4h``."""
    s = int(seconds)
    if s < 60:
        return f"{max(s, 0)}s"
    units = (("month", 2629800), ("week", 604800), ("day", 86400), ("h", 3600), ("min", 60),
             ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if s >= size:
            count, s = divmod(s, size)
            if name in ("month", "week", "day"):
                parts.append(f"{count} {name}{'s' if count != 1 else ''}")
            else:
                parts.append(f"{count}{name}")
        if len(parts) == 2:
            break
    return " ".join(parts)


def format_relative(ts: float, now: float | None = None) -> str:
    """``2s ago`` / ``1h 3min ago``."""
    return f"{format_timespan((now if now is not None else time.time()) - ts)} ago"


def table(header: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> str:
    """Columns aligned like ``systemctl list-units``; ``right`` holds right-aligned columns."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)

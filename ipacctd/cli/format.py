"""Output formats shared by the CLI views: systemd's byte and time formats, tables."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from ipacctd.cli.terminal import UNDERLINE, cescape, color, ellipsize, width_of

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


def dump_json(data: object, mode: str) -> str:
    """``--json=pretty`` (indented) or ``--json=short`` (one line), as systemctl's."""
    if mode == "short":
        return json.dumps(data, separators=(",", ":"))
    return json.dumps(data, indent=2)


def plural(n: int, word: str) -> str:
    """``1 packet``, ``2 packets``, ``0 packets``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def table(header: list[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset(),
          *, width: int | None = None, styles: Sequence[Sequence[str]] | None = None,
          legend: bool = True, colors: bool = False, sep: str = " ") -> str:
    """Columns aligned like ``systemctl list-units``.

    Every cell is escaped (:func:`~ipacctd.cli.terminal.cescape`): a newline in a
    description cannot break a row. ``right``: right-aligned columns. ``width``: the
    terminal's; the last column is cut with ``…`` so that no line runs past it (systemd
    shrinks the DESCRIPTION column the same way). ``styles``: an ANSI sequence per cell
    ("" for none), used with ``colors``. ``legend``: the header line (``--no-legend``
    drops it). The header is underlined in colour, as systemd's.
    """
    body = [[cescape(c) for c in r] for r in rows]
    head = list(header)
    shown = [head, *body] if legend else body
    if not shown:
        return ""
    n = len(header)
    widths = [max(width_of(r[i]) for r in shown) for i in range(n)]
    if width is not None:
        fixed = sum(widths[:-1]) + len(sep) * (n - 1)
        # the header stays whole, as systemd's: a terminal narrower than that wraps
        widths[-1] = max(min(widths[-1], width - fixed), width_of(header[-1]))
    lines = []
    for r, row in enumerate(shown):
        is_head = legend and r == 0
        cells = []
        for i, cell in enumerate(row):
            text = ellipsize(cell, widths[i])
            pad = " " * (widths[i] - width_of(text))
            text = pad + text if i in right else text + pad
            if is_head:
                text = color(text, UNDERLINE, colors)
            elif styles is not None and styles[r - (1 if legend else 0)][i]:
                text = color(text, styles[r - (1 if legend else 0)][i], colors)
            cells.append(text)
        lines.append(sep.join(cells).rstrip())
    return "\n".join(lines)

"""The terminal, as systemctl treats it: colours, the pager, the width, safe text.

What systemd 252 does (``src/basic/terminal-util.c``, ``src/shared/pager.c``), and so what
an operator's habits and environment expect here:

* **colours** when standard output is a terminal (or, under the pager, was one), unless
  ``NO_COLOR`` is set or ``TERM`` is unset or ``dumb``; ``SYSTEMD_COLORS`` (a boolean)
  overrides both ways.
* **the pager** only when standard output is a terminal that is not dumb (``TERM`` set and
  not ``dumb``) and ``--no-pager`` is not given:
  ``$SYSTEMD_PAGER``, else ``$PAGER``, else ``less``, else ``more``; an empty value or
  ``cat`` means none. ``less`` gets ``LESS=$SYSTEMD_LESS`` (default ``FRSXMK``: quit when
  the text fits one screen, keep colours, chop long lines, no init sequence, long prompt,
  quit on Ctrl-C), so a short listing prints and returns as without a pager.
* **the width**: ``$COLUMNS``, else the terminal's; tables are cut to it only on a
  terminal (a pipe gets whole lines, as systemd gives it).
* **text from users** (descriptions) has its control characters escaped C-style before it
  reaches a terminal, so a newline or an escape sequence in a description cannot break a
  table row or drive the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import unicodedata
from collections.abc import Iterator

# systemd's ANSI sequences (terminal-util.h), byte for byte.
NORMAL = "\x1b[0m"
HIGHLIGHT_RED = "\x1b[0;1;31m"
HIGHLIGHT_GREEN = "\x1b[0;1;32m"
HIGHLIGHT = "\x1b[0;1;39m"
GREY = "\x1b[0;38;5;245m"
UNDERLINE = "\x1b[0;4m"

DEFAULT_LESS = "FRSXMK"

#: The environment read here, as the manual page ``ipacctd(1)`` lists it.
ENVIRONMENT = {
    "SYSTEMD_COLORS": "a boolean: colours on (1) or off (0) whatever the output is",
    "NO_COLOR": "set: no colours (unless SYSTEMD_COLORS says otherwise)",
    "SYSTEMD_PAGER": "the pager (before PAGER); empty or cat: none",
    "PAGER": "the pager when SYSTEMD_PAGER is not set (default less, else more)",
    "SYSTEMD_LESS": f"the options less gets in LESS (default {DEFAULT_LESS})",
    "TERM": "unset or dumb: neither colours (unless SYSTEMD_COLORS) nor a pager",
    "COLUMNS": "the width tables are cut to on a terminal (default: the terminal's)",
    "SYSTEMD_EDITOR": "the editor of edit (before EDITOR and VISUAL; default editor, nano, "
    "vim, vi)",
}

_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")

#: Set while the pager runs: colours follow the terminal behind it, not the pipe to it.
_paging = False


def _boolean(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def on_tty() -> bool:
    try:
        return _paging or sys.stdout.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdout
        return False


def terminal_is_dumb() -> bool:
    """``TERM`` unset or ``dumb`` (systemd's ``getenv_terminal_is_dumb()``): a terminal that
    cannot move the cursor — an editor's shell buffer, a serial console, a script on a pty —
    gets neither colours nor a pager, which would stop at ``--More--`` and wait there."""
    return os.environ.get("TERM", "dumb") == "dumb"


def colors_enabled() -> bool:
    """Whether to colour what goes to standard output, as systemd's ``colors_enabled()``."""
    forced = _boolean(os.environ.get("SYSTEMD_COLORS", ""))
    if forced is not None:
        return forced
    if "NO_COLOR" in os.environ:
        return False
    if terminal_is_dumb():
        return False
    return on_tty()


def color(text: str, sequence: str, enabled: bool) -> str:
    return f"{sequence}{text}{NORMAL}" if enabled and text else text


def columns() -> int | None:
    """The width to cut lines to: None (no cutting) unless output goes to a terminal."""
    if not on_tty():
        return None
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    import shutil  # on a terminal only (shutil loads bz2, lzma and fnmatch with it)

    return shutil.get_terminal_size((80, 24)).columns


def cescape(text: str) -> str:
    """Control characters as C escapes (``\\n``, ``\\t``, ``\\x1b``), as systemd's
    ``cescape()`` writes them; printable text (any script) unchanged. A backslash stays
    one: the texts escaped here (commands, descriptions) carry ipacctd's own escapes
    already (:func:`~ipacctd.manager.unit.escape_command`), which must read the same."""
    if text.isascii() and text.isprintable():  # nothing to escape (and fast: 80,000 cells
        return text  # of list-units at 10,000 units took 0.7 s one character at a time)
    out = []
    for ch in text:
        if ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def printable(text: str) -> bool:
    """No control characters (systemctl show prints ``[unprintable]`` otherwise)."""
    return all(unicodedata.category(ch)[0] != "C" for ch in text)


def width_of(text: str) -> int:
    """Columns the text takes on a terminal (wide East Asian characters take two)."""
    if text.isascii():  # one column each (neither combining nor wide): 2.4 s of CPU one
        return len(text)  # character at a time for list-units at 10,000 units
    return sum(
        0
        if unicodedata.combining(ch)
        else 2
        if unicodedata.east_asian_width(ch) in ("W", "F")
        else 1
        for ch in text
    )


def ellipsize(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns with ``…`` at the end, as systemd's tables do."""
    if width_of(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for ch in text:
        w = width_of(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def pager_command() -> list[str] | None:
    """The pager systemd would start, or None for none."""
    for var in ("SYSTEMD_PAGER", "PAGER"):
        if var in os.environ:
            value = os.environ[var].strip()
            if value in ("", "cat"):
                return None
            return ["sh", "-c", value]
    import shutil

    for candidate in ("less", "more"):
        if shutil.which(candidate):
            return [candidate]
    return None


@contextlib.contextmanager
def pager(enabled: bool = True) -> Iterator[None]:
    """Standard output through the pager for the block (when systemd would use one)."""
    global _paging
    wanted = enabled and not _paging and sys.stdout.isatty() and not terminal_is_dumb()
    cmd = pager_command() if wanted else None
    if cmd is None:
        yield
        return
    env = dict(os.environ)
    env["LESS"] = os.environ.get("SYSTEMD_LESS", DEFAULT_LESS)
    env.setdefault("LESSCHARSET", "utf-8")
    sys.stdout.flush()
    import subprocess  # a pager only on a terminal: a script's read never loads it

    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env)
    except OSError:  # no pager after all: print as if none was asked for
        yield
        return
    assert proc.stdin is not None
    saved = os.dup(sys.stdout.fileno())
    os.dup2(proc.stdin.fileno(), sys.stdout.fileno())
    proc.stdin.close()
    _paging = True
    try:
        yield
    finally:
        _paging = False
        with contextlib.suppress(BrokenPipeError, OSError):
            sys.stdout.flush()
        os.dup2(saved, sys.stdout.fileno())
        os.close(saved)
        # the pager exits when the user quits it; an interrupt there is the user's, too
        with contextlib.suppress(KeyboardInterrupt):
            proc.wait()

"""Log lines the systemd journal files at their real priority.

systemd connects a service's stdout/stderr to journald and announces it in
``JOURNAL_STREAM=<device>:<inode>`` (systemd.exec(5)). journald stores each line at the
priority of a leading ``<N>`` (``SyslogLevelPrefix=yes``, the default; sd-daemon(3)) and at the
unit's ``SyslogLevel=`` (info) otherwise — so without the prefix ``journalctl -p err`` would
never show an error. The variable is inherited by children whose stderr may go elsewhere
(a pipe, a file), so it counts only while stderr still is that stream, as systemd.exec(5)
asks. Everywhere else (a terminal, a test's log file) the lines carry the level's name.
"""

from __future__ import annotations

import logging
import os
import sys

# syslog(3) priorities of the logging levels (between two levels, the lower priority).
PRIORITIES = (
    (logging.CRITICAL, 2),  # LOG_CRIT
    (logging.ERROR, 3),  # LOG_ERR
    (logging.WARNING, 4),  # LOG_WARNING
    (logging.INFO, 6),  # LOG_INFO
)
LOG_ERR = 3
LOG_DEBUG = 7
PLAIN_FORMAT = "%(levelname)s %(name)s: %(message)s"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    return next((prio for level, prio in PRIORITIES if levelno >= level), LOG_DEBUG)


def stderr_is_journal(fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal (``JOURNAL_STREAM``)."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def prefix_lines(text: str, prio: int) -> str:
    """``<prio>`` before every line: journald files each line as an entry of its own, so a
    traceback's lines must carry the priority too."""
    return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


class JournalFormatter(logging.Formatter):
    """``<N>message``: the journal adds time, identifier and PID itself."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return prefix_lines(super().format(record), priority(record.levelno))


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr: with ``<N>`` prefixes when it is the journal, level names elsewhere.
    Does nothing when logging is set up already (as ``logging.basicConfig``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JournalFormatter() if stderr_is_journal() else logging.Formatter(PLAIN_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler])


def error_line(text: str) -> str:
    """A one-line error message for stderr, filed as an error when stderr is the journal."""
    return prefix_lines(text, LOG_ERR) if stderr_is_journal() else text

"""Log lines reach the journal at their priority (``<N>`` prefixes when stderr is the
journal stream), and ``ipacctd daemon`` without its dependencies says what to install."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from ipacctd import journal

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _record(level: int, msg: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("ipacctd.test", level, __file__, 1, msg, None, exc_info)


@pytest.mark.parametrize(
    ("level", "prio"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (logging.ERROR + 5, 3),  # between two levels: the lower priority
        (logging.INFO - 1, 7),
    ],
)
def test_levels_map_to_syslog_priorities(level: int, prio: int) -> None:
    assert journal.priority(level) == prio
    assert journal.JournalFormatter().format(_record(level, "x")) == f"<{prio}>x"


def test_every_line_of_a_traceback_carries_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record(logging.CRITICAL, "daemon failed\nsecond line", sys.exc_info())
    lines = journal.JournalFormatter().format(record).split("\n")
    assert lines[:2] == ["<2>daemon failed", "<2>second line"]
    assert lines[2] == "<2>Traceback (most recent call last):"
    assert lines[-1] == "<2>RuntimeError: boom"
    assert all(line.startswith("<2>") for line in lines)


def test_journal_stream_counts_only_for_that_stream(tmp_path, monkeypatch) -> None:
    with open(tmp_path / "journal", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.stderr_is_journal(stream.fileno())
        # A child whose stderr was sent elsewhere inherits the variable: no prefixes there.
        assert not journal.stderr_is_journal(other.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not journal.stderr_is_journal(stream.fileno())
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.stderr_is_journal(stream.fileno())


def _run_cli(args: list[str], stderr_path: str, journal_stream: bool, code: str = "") -> tuple:
    """``python -m ipacctd ARGS`` with stderr in a file, announced as the journal or not;
    ``code`` runs first in the same interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    base = os.path.dirname(stderr_path)
    env.update(  # nothing of the host's installation is read or made
        PYTHONPATH=REPO,
        IPACCTD_STATE_DIR=f"{base}/state",
        IPACCTD_UNIT_DIR=f"{base}/units",
        IPACCTD_BPF_DIR=f"/sys/fs/bpf/ipacctd-test-{os.path.basename(base)}",
        IPACCTD_CGROUP_ROOT=f"/ipacctd-test-{os.path.basename(base)}",
    )
    with open(stderr_path, "w") as err:
        if journal_stream:
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        prog = f"{code}\nimport sys\nfrom ipacctd.cli.main import main\nsys.exit(main({args!r}))"
        proc = subprocess.run(
            [sys.executable, "-c", prog], stderr=err, stdout=subprocess.PIPE, env=env, timeout=60
        )
    with open(stderr_path) as f:
        return proc.returncode, f.read()


# Makes the daemon's dependency unimportable in that interpreter, as on a CLI-only install.
WITHOUT_DBUS_FAST = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "dbus_fast":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Missing())
"""


@pytest.mark.parametrize("journal_stream", [False, True])
def test_daemon_without_its_dependencies_says_what_to_install(tmp_path, journal_stream) -> None:
    conf = tmp_path / "none.conf"
    conf.write_text("[daemon]\n")
    rc, err = _run_cli(
        ["daemon", "--config", str(conf)], str(tmp_path / "err"), journal_stream, WITHOUT_DBUS_FAST
    )
    assert rc == 69, err
    assert "Traceback" not in err
    assert "dbus-fast" in err and "contrib/install.sh" in err, err
    lines = err.strip().split("\n")
    assert len(lines) == 1, err
    # In the journal the CLI's error line is an error (priority 3), not info.
    assert lines[0].startswith("<3>ipacctd: " if journal_stream else "ipacctd: "), err


def test_an_error_of_any_verb_is_an_error_in_the_journal(tmp_path) -> None:
    rc, err = _run_cli(["show", "no such unit!"], str(tmp_path / "err"), True)
    assert rc == 2
    assert err.startswith("<3>ipacctd: ") and err.count("\n") == 1, err

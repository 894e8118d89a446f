"""``ipacctd daemon`` and ``ipacctd reload``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ipacctd.errors import NotFound, NotSupported

# What the daemon imports beyond the standard library: the "daemon" extra (contrib/install.sh
# installs it). A CLI-only install lacks them; the CLI itself works without.
DAEMON_PACKAGES = {"dbus_fast": "dbus-fast", "prometheus_client": "prometheus-client"}


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "daemon":
        from ipacctd.daemon.config import DaemonConfig

        main = _daemon_main()

        config = DaemonConfig.load(
            args.config, state_dir=args.state_dir, bpf_dir=args.bpf_dir,
            cgroup_root=args.cgroup_root, unit_dir=args.unit_dir, bus=args.bus,
            listen=args.listen, poll_interval=args.poll_interval, retention=args.retention)
        return main(config)
    from ipacctd.cli.main import manager_for

    pid = daemon_pid(manager_for(args).config.state_dir)
    if pid is None:
        raise NotFound("no ipacctd daemon is running (nothing to reload)")
    os.kill(pid, signal.SIGHUP)
    return 0


def _daemon_main():
    """The daemon's entry point, or a clear error naming what to install (exit 69)."""
    try:
        from ipacctd.daemon.service import main
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if top not in DAEMON_PACKAGES:
            raise
        raise NotSupported(
            f"the daemon needs the Python package {DAEMON_PACKAGES[top]}, which "
            f"{sys.executable} cannot import: install ipacctd with its daemon dependencies "
            "(contrib/install.sh, or pip install 'ipacctd[daemon]' in a virtual environment)"
        ) from None
    return main


def daemon_pid(state_dir: str) -> int | None:
    """PID of the running daemon from its runtime file, if it is alive."""
    try:
        with open(os.path.join(state_dir, "daemon.json")) as f:
            pid = int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"ipacctd" not in f.read():
                return None
    except OSError:
        return None
    return pid

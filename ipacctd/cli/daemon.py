"""``ipacctd daemon`` and ``ipacctd reload``."""

from __future__ import annotations

import argparse
import signal
import sys

from ipacctd.daemon import runtime
from ipacctd.errors import NotSupported

# What the daemon imports beyond the standard library: the "daemon" extra (contrib/install.sh
# installs it). A CLI-only install lacks them; the CLI itself works without.
DAEMON_PACKAGES = {"dbus_fast": "dbus-fast", "prometheus_client": "prometheus-client"}


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "daemon":
        from ipacctd.daemon.config import DaemonConfig

        main = _daemon_main()

        config = DaemonConfig.load(
            args.config, state_dir=args.state_dir, bpf_dir=args.bpf_dir,
            cgroup_root=args.cgroup_root, unit_dir=args.unit_dir,
            bus="" if args.no_bus else args.bus,
            listen=args.listen, poll_interval=args.poll_interval, retention=args.retention)
        return main(config)
    from ipacctd.cli.engine import config_for
    from ipacctd.cli.remote import DaemonManager, manager

    # The daemon proven on the bus (root's, serving this installation) gets a D-Bus call;
    # one without a bus (--no-bus) a SIGHUP, but only when the runtime file's PID still
    # names the process that wrote it (PID and start time, checked on a pidfd): after a
    # kill -9 and PID reuse, the stranger keeps running.
    mgr = manager(config_for(args), write=True)
    if isinstance(mgr, DaemonManager):
        mgr.reload()
        return 0
    runtime.send_signal(mgr.config.runtime_file, signal.SIGHUP)
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

"""``ipacctd daemon`` and ``ipacctd reload``."""

from __future__ import annotations

import argparse
import signal

from ipacctd.daemon import runtime


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "daemon":
        from ipacctd.daemon.config import DaemonConfig
        from ipacctd.daemon.service import main

        config = DaemonConfig.load(
            args.config, state_dir=args.state_dir, bpf_dir=args.bpf_dir,
            cgroup_root=args.cgroup_root, unit_dir=args.unit_dir,
            bus="" if args.no_bus else args.bus,
            listen=args.listen, poll_interval=args.poll_interval, retention=args.retention)
        return main(config)
    from ipacctd.cli.main import config_for
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

"""The engine a verb works with, from its command line: the paths, then the manager (local,
or through the daemon when one serves this installation).

Verbs import this, not :mod:`ipacctd.cli.main`: the dispatcher imports the verbs, never the
other way round.
"""

from __future__ import annotations

import os

from ipacctd.manager.config import Config

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse  # the namespace of the command line (or runline's, alike)


def config_for(args: argparse.Namespace) -> Config:
    """The paths: defaults, the configuration file, the environment, then the options."""
    return Config.from_env(
        state_dir=args.state_dir,
        bpf_dir=args.bpf_dir,
        cgroup_root=args.cgroup_root,
        unit_dir=args.unit_dir,
    )


def manager_for(args: argparse.Namespace, write: bool = True):
    """The engine for the paths given on the command line (or the configured ones);
    through the daemon when one serves this installation (see :mod:`ipacctd.cli.remote`)."""
    config = config_for(args)
    if os.geteuid() == 0 and not os.path.lexists(config.runtime_file):
        # No daemon serves this installation: a serving daemon writes its runtime file
        # (under its lock, see ipacctd.daemon.runtime) before it answers anyone, and only
        # root may use the state directly. So no system bus connection is tried (the
        # D-Bus client, asyncio and a round trip to the bus cost more than a whole run).
        from ipacctd.manager.engine import Manager

        return Manager(config)
    # Imported here: the D-Bus client (dbus_fast) loads only for verbs that use an engine.
    from ipacctd.cli.remote import manager

    return manager(config, write=write)

"""An isolated ipacctd installation for the in-tree benchmarks: state and unit files in a
temporary directory (on /dev/shm, a tmpfs as /run is on a normal host: common.py's
default_state_parent), pins under ``/sys/fs/bpf/ipacctd-bench-<id>``, cgroups under
``/ipacctd-bench-<id>``; :meth:`Installation.close` removes all of it, also after a failure.
(Apart from common.py, which cli.py imports without the package on its path.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from common import default_state_parent  # beside this script

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf import bpffs  # noqa: E402
from ipacctd.manager.config import Config  # noqa: E402
from ipacctd.manager.engine import Manager  # noqa: E402


class Installation:
    """The engine on its own paths, and the environment that points a daemon or the CLI at
    them. Subclasses list further cgroups to remove in :attr:`extra_cgroups`."""

    def __init__(self, make_unit_dir: bool = False, state_parent: str | None = None) -> None:
        self.id = uuid.uuid4().hex[:8]
        parent = state_parent or default_state_parent()
        self.tmp = tempfile.mkdtemp(prefix=f"ipacctd-bench-{self.id}-", dir=parent)
        self.config = Config(
            state_dir=os.path.join(self.tmp, "state"),
            bpf_dir=f"/sys/fs/bpf/ipacctd-bench-{self.id}",
            cgroup_root=f"/ipacctd-bench-{self.id}",
            unit_dir=os.path.join(self.tmp, "units"),
        )
        if make_unit_dir:
            os.makedirs(self.config.unit_dir)
        self.manager = Manager(self.config)
        self.root_fs = cgroup.fs_path(self.config.cgroup_root)
        self.extra_cgroups: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IPACCTD_")}
        self.env.update(
            IPACCTD_STATE_DIR=self.config.state_dir,
            IPACCTD_BPF_DIR=self.config.bpf_dir,
            IPACCTD_CGROUP_ROOT=self.config.cgroup_root,
            IPACCTD_UNIT_DIR=self.config.unit_dir,
            PYTHONPATH=str(ROOT),
        )

    def close(self) -> None:
        # Unpinning the links detaches the programs; the cgroups are empty directories.
        with contextlib.suppress(Exception):
            bpffs.remove_tree(self.config.bpf_dir)
        cgroups = [*self.extra_cgroups, self.root_fs]
        for fs in cgroups:
            with contextlib.suppress(Exception):
                cgroup.remove(fs, timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = [p for p in (self.config.bpf_dir, *cgroups) if os.path.exists(p)]
        if left:
            print(f"warning: left behind: {left}", file=sys.stderr)

"""Where ipacctd keeps its state: bpffs pins, metadata, cgroups, unit files.

Defaults suit a host; each can be moved with an environment variable (tests and
containers use that) or, for the daemon, its configuration file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

DEFAULT_STATE_DIR = "/run/ipacctd"
DEFAULT_BPF_DIR = "/sys/fs/bpf/ipacctd"
DEFAULT_CGROUP_ROOT = "/ipacctd"
DEFAULT_UNIT_DIR = "/etc/ipacctd/units"

ENV = {
    "state_dir": "IPACCTD_STATE_DIR",
    "bpf_dir": "IPACCTD_BPF_DIR",
    "cgroup_root": "IPACCTD_CGROUP_ROOT",
    "unit_dir": "IPACCTD_UNIT_DIR",
}


@dataclass(frozen=True)
class Config:
    """Paths of one ipacctd installation.

    ``cgroup_root`` is a cgroup path relative to the cgroup2 mount under which ipacctd
    creates the cgroups of its own units (``/ipacctd/run-u1.service``).
    """

    state_dir: str = DEFAULT_STATE_DIR
    bpf_dir: str = DEFAULT_BPF_DIR
    cgroup_root: str = DEFAULT_CGROUP_ROOT
    unit_dir: str = DEFAULT_UNIT_DIR

    @classmethod
    def from_env(cls, **overrides: str | None) -> Config:
        """Defaults, then environment variables, then explicit (non-None) overrides."""
        cfg = cls()
        env = {k: os.environ[v] for k, v in ENV.items() if os.environ.get(v)}
        cfg = replace(cfg, **env)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(cfg, **given)

    @property
    def units_dir(self) -> str:
        """Directory of the per-unit metadata files."""
        return os.path.join(self.state_dir, "units")

    @property
    def lock_path(self) -> str:
        return os.path.join(self.state_dir, "lock")

    @property
    def pins_dir(self) -> str:
        """bpffs directory holding one pin directory per unit."""
        return os.path.join(self.bpf_dir, "units")

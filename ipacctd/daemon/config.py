"""The daemon's settings: defaults, then ``/etc/ipacctd/ipacctd.conf`` (TOML), then options.

Example file::

    [daemon]
    bus = "system"              # "system", "session" or a D-Bus address
    listen = "127.0.0.1:9813"   # Prometheus endpoint; "" turns it off
    poll_interval = 1.0         # seconds between counter polls
    retention = 600             # seconds an inactive unit's counters stay readable
    program_stats = true        # export program run time when BPF stats are on

    [paths]
    state_dir = "/run/ipacctd"
    bpf_dir = "/sys/fs/bpf/ipacctd"
    cgroup_root = "/ipacctd"
    unit_dir = "/etc/ipacctd/units"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ipacctd.errors import InvalidInput
from ipacctd.manager.config import Config

DEFAULT_FILE = "/etc/ipacctd/ipacctd.conf"
DEFAULT_PORT = 9813


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``ipacctd daemon`` needs to know."""

    paths: Config = field(default_factory=Config.from_env)
    bus: str = "system"
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    poll_interval: float = 1.0
    retention: float = 600.0
    program_stats: bool = True

    @property
    def listen_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics endpoint, or None when turned off."""
        if not self.listen:
            return None
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"listen={self.listen!r}: expected HOST:PORT")
        return host.strip("[]") or "127.0.0.1", int(port)

    @classmethod
    def load(cls, path: str | None = None, **overrides: Any) -> DaemonConfig:
        """Read the config file (missing default file = defaults), then apply overrides."""
        cfg = cls()
        file = path or DEFAULT_FILE
        if path is not None or os.path.exists(file):
            cfg = cfg._merge_file(file)
        path_over = {k: overrides.pop(k) for k in ("state_dir", "bpf_dir", "cgroup_root",
                                                    "unit_dir") if overrides.get(k) is not None}
        if path_over:
            cfg = replace(cfg, paths=replace(cfg.paths, **path_over))
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def _merge_file(self, file: str) -> DaemonConfig:
        try:
            with open(file, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise InvalidInput(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{file}: {exc}") from None
        unknown = set(data) - {"daemon", "paths"}
        if unknown:
            raise InvalidInput(f"{file}: unknown section(s) {', '.join(sorted(unknown))}")
        daemon = dict(data.get("daemon", {}))
        known = {f.name for f in fields(self)} - {"paths"}
        bad = set(daemon) - known
        if bad:
            raise InvalidInput(f"{file}: unknown key(s) in [daemon]: {', '.join(sorted(bad))}")
        paths = dict(data.get("paths", {}))
        bad = set(paths) - {f.name for f in fields(Config)}
        if bad:
            raise InvalidInput(f"{file}: unknown key(s) in [paths]: {', '.join(sorted(bad))}")
        return replace(self, paths=replace(self.paths, **paths), **daemon)

    def validate(self) -> None:
        """Check types and ranges; InvalidInput names the setting."""
        poll = self.poll_interval
        if not isinstance(poll, int | float) or not 0.05 <= poll <= 3600:
            raise InvalidInput(f"poll_interval={self.poll_interval!r}: expected 0.05 to 3600 s")
        if not isinstance(self.retention, int | float) or self.retention < 0:
            raise InvalidInput(f"retention={self.retention!r}: expected seconds >= 0")
        if not isinstance(self.bus, str) or not self.bus:
            raise InvalidInput("bus must be 'system', 'session' or a D-Bus address")
        self.listen_address  # noqa: B018 — raises on a malformed value

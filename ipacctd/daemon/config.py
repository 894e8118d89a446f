"""The daemon's settings: defaults, then ``/etc/ipacctd/ipacctd.conf`` (TOML), then options.

Example file::

    [daemon]
    bus = "system"              # "system", "session", a D-Bus address, "" = no D-Bus
    listen = "127.0.0.1:9813"   # Prometheus endpoint; "" turns it off
    poll_interval = 1.0         # seconds between counter polls
    retention = 600             # seconds an inactive unit's counters stay readable
    program_stats = true        # export program run time when BPF stats are on

    [paths]
    state_dir = "/run/ipacctd"
    bpf_dir = "/sys/fs/bpf/ipacctd"
    cgroup_root = "auto"        # under systemd: the delegated subtree; else /ipacctd
    unit_dir = "/etc/ipacctd/units"
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ipacctd.errors import InvalidInput
from ipacctd.manager.config import DEFAULT_FILE, Config, config_file, file_paths, read_file

__all__ = ["DEFAULT_FILE", "DEFAULT_PORT", "DaemonConfig"]
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
        """Read the config file (missing default file = defaults), then apply overrides.

        The ``[paths]`` come from the same file, environment and resolution as the CLI's
        (:meth:`Config.from_env`), so both agree on every directory and the cgroup root.
        """
        data = read_file(path)
        file = path or config_file()
        daemon = dict(data.get("daemon", {}))
        known = {f.name for f in fields(cls)} - {"paths"}
        bad = set(daemon) - known
        if bad:
            raise InvalidInput(f"{file}: unknown key(s) in [daemon]: {', '.join(sorted(bad))}")
        path_over = {k: overrides.pop(k) for k in ("state_dir", "bpf_dir", "cgroup_root",
                                                    "unit_dir") if overrides.get(k) is not None}
        paths = Config.load(file_paths(data), **path_over)
        cfg = replace(cls(paths=paths), **daemon)
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check types and ranges; InvalidInput names the setting."""
        poll = self.poll_interval
        if not isinstance(poll, int | float) or not 0.05 <= poll <= 3600:
            raise InvalidInput(f"poll_interval={self.poll_interval!r}: expected 0.05 to 3600 s")
        if not isinstance(self.retention, int | float) or self.retention < 0:
            raise InvalidInput(f"retention={self.retention!r}: expected seconds >= 0")
        if not isinstance(self.bus, str):
            raise InvalidInput("bus must be 'system', 'session', a D-Bus address or '' (none)")
        self.listen_address  # noqa: B018 — raises on a malformed value

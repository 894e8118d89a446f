"""The CLI's way through a running daemon: mutations as D-Bus calls, reads from the kernel.

When ``ipacctd daemon`` runs (its runtime file names a live process), changes made with
the CLI go over D-Bus so that the daemon's clients see them at once and the daemon's own
checks apply; reads still come straight from the pins. When no daemon runs, or its bus
cannot be reached, the CLI uses the engine directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ipacctd.errors import (
    AlreadyExists,
    Error,
    InvalidInput,
    NotFound,
    NotSupported,
    PermissionDenied,
)
from ipacctd.manager.config import Config
from ipacctd.manager.engine import Manager
from ipacctd.manager.unit import Unit
from ipacctd.policy.properties import Properties, property_spec

BUS_NAME = "org.ipacctd1"
ROOT = "/org/ipacctd1"
MANAGER_IFACE = "org.ipacctd1.Manager"
ENV_DIRECT = "IPACCTD_NO_DAEMON"  # "1": never go through the daemon
CONNECT_TIMEOUT = 2.0


class _Unreachable(Exception):
    """The daemon's bus or name cannot be reached: fall back to the engine."""

_ERRORS: dict[str, type[Error]] = {
    "org.freedesktop.DBus.Error.InvalidArgs": InvalidInput,
    "org.ipacctd1.Error.NoSuchUnit": NotFound,
    "org.ipacctd1.Error.UnitExists": AlreadyExists,
    "org.ipacctd1.Error.NotSupported": NotSupported,
    "org.freedesktop.DBus.Error.AccessDenied": PermissionDenied,
}


def daemon_bus(state_dir: str) -> str | None:
    """The bus of the daemon serving this installation, if one is running."""
    if os.environ.get(ENV_DIRECT) == "1":
        return None
    try:
        with open(os.path.join(state_dir, "daemon.json")) as f:
            info = json.load(f)
        pid = int(info["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"ipacctd" not in f.read():
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info.get("bus") or "system")


def assignments_to_dbus(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Text assignments → (name, Variant) items with the same append/reset meaning."""
    from dbus_fast import Variant

    items = []
    for name, value in pairs:
        spec = property_spec(name)
        if value.strip():
            sig, dbus_value = Properties().apply([(name, value)]).to_dbus()[spec.name]
        else:  # an empty assignment resets: an empty array, or the default
            sig, dbus_value = Properties().to_dbus()[spec.name]
        items.append((spec.name, Variant(sig, dbus_value)))
    return items


class DaemonManager(Manager):
    """A :class:`Manager` whose mutations are D-Bus calls to the running daemon."""

    def __init__(self, config: Config, bus: str) -> None:
        super().__init__(config)
        self.bus_spec = bus

    def _call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        """Call a Manager method; raises _Unreachable when the bus cannot be reached."""
        import asyncio  # only here: a CLI without a daemon never pays for it

        # An event loop needs descriptors (epoll, a self-pipe) and the bus a socket; when
        # they cannot be had (RLIMIT_NOFILE), asyncio fails half-built and its finaliser
        # prints a traceback. Say so plainly instead, before anything is started.
        _need_descriptors(4)
        return asyncio.run(self._acall(member, signature, body))

    async def _acall(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        import asyncio

        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus

        if self.bus_spec == "system":
            bus = MessageBus(bus_type=BusType.SYSTEM)
        elif self.bus_spec == "session":
            bus = MessageBus(bus_type=BusType.SESSION)
        else:
            bus = MessageBus(bus_address=self.bus_spec)
        try:
            await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise _Unreachable(str(exc)) from exc
        try:
            reply = await bus.call(Message(destination=BUS_NAME, path=ROOT,
                                           interface=MANAGER_IFACE, member=member,
                                           signature=signature, body=body))
        finally:
            bus.disconnect()
        if reply.message_type == MessageType.ERROR and reply.error_name in (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner"):
            raise _Unreachable(f"{BUS_NAME} is not on the bus")
        if reply.message_type == MessageType.ERROR:
            cls = _ERRORS.get(reply.error_name or "", Error)
            text = reply.body[0] if reply.body else reply.error_name
            raise cls(str(text))
        return list(reply.body)

    def start_transient(self, assignments: Sequence[tuple[str, str]] = (), *,
                        name: str | None = None, description: str | None = None,
                        command: Sequence[str] = (), allow_unenforced: bool = False,
                        dbus_items: Sequence[tuple[str, str, object]] = (),
                        owned_by: tuple[int, int] | None = None) -> Unit:
        from dbus_fast import Variant

        if allow_unenforced:  # an override the D-Bus API does not offer: act directly
            return super().start_transient(assignments, name=name, description=description,
                                           command=command, allow_unenforced=True,
                                           owned_by=owned_by)
        items = assignments_to_dbus(assignments)
        if description is not None:
            items.append(("Description", Variant("s", description)))
        items.append(("ExecCommand", Variant("as", list(command))))
        if owned_by is not None:  # the daemon asks the bus who we are: it must be us
            items.append(("CallerStartsCommand", Variant("b", True)))
        try:
            path = self._call("StartTransientUnit", "sa(sv)", [name or "", items])[0]
        except _Unreachable:
            return super().start_transient(assignments, name=name, description=description,
                                           command=command, owned_by=owned_by)
        return self.unit(self._name_of(path))

    def _name_of(self, path: str) -> str:
        from ipacctd.daemon.bus import unescape_label

        return unescape_label(path.rsplit("/", 1)[-1])

    def attach(self, cgroup_path: str, assignments: Sequence[tuple[str, str]] = (), *,
               name: str | None = None, allow_unenforced: bool = False,
               dbus_items: Sequence[tuple[str, str, object]] = (),
               base: Properties | None = None, source: str | None = None) -> Unit:
        if allow_unenforced or base is not None:
            return super().attach(cgroup_path, assignments, name=name,
                                  allow_unenforced=allow_unenforced, base=base, source=source)
        try:
            path = self._call("AttachUnit", "ssa(sv)",
                              [cgroup_path, name or "", assignments_to_dbus(assignments)])[0]
        except _Unreachable:
            return super().attach(cgroup_path, assignments, name=name)
        return self.unit(self._name_of(path))

    def set_properties(self, name: str, assignments: Sequence[tuple[str, str]]) -> Unit:
        try:
            self._call("SetUnitProperties", "sba(sv)",
                       [name, True, assignments_to_dbus(assignments)])
        except _Unreachable:
            return super().set_properties(name, assignments)
        return self.unit(name)

    def stop(self, name: str, timeout: float = 5.0) -> list[int]:
        try:
            self._call("StopUnit", "ss", [name, "replace"])
        except _Unreachable:
            return super().stop(name, timeout)
        return []

    def reset(self, name: str) -> None:
        try:
            self._call("ResetUnit", "s", [name])
        except _Unreachable:
            super().reset(name)

    def detach(self, name: str) -> None:
        try:
            self._call("DetachUnit", "s", [name])
        except _Unreachable:
            super().detach(name)


def _need_descriptors(n: int) -> None:
    """Raise OSError(EMFILE) unless ``n`` more file descriptors can be opened now."""
    fds: list[int] = []
    try:
        for _ in range(n):
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    finally:
        for fd in fds:
            os.close(fd)


def manager(config: Config) -> Manager:
    """The daemon-backed manager when a daemon serves ``config``, else the plain engine."""
    bus = daemon_bus(config.state_dir)
    if bus is None:
        return Manager(config)
    try:
        import dbus_fast  # noqa: F401 — the daemon extra may be missing on a CLI-only host
    except ImportError:
        return Manager(config)
    return DaemonManager(config, bus)

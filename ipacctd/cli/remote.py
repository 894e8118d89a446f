"""The CLI's way to the daemon: found by its bus name, proven to be root's, then used.

The daemon is the owner of ``org.ipacctd1`` on the system bus (``$DBUS_SYSTEM_BUS_ADDRESS``
or the standard socket) — never a file in the state directory that a second daemon, a
crash or another user could leave behind. So a daemon on a private bus (tests, a second
instance) never captures the host's CLI. Before anything is sent, the owner must prove
itself: its unique connection's uid (``GetConnectionUnixUser``) must be 0, and it must
serve the CLI's own installation (its ``StateDirectory``). Every call then goes to that
unique connection name, so the name cannot change hands between the check and the call.
A name owned by anyone but root is refused outright (a permissive bus policy lets any
user take it): nothing of root's goes to an impostor.

Root's reads come straight from the kernel and the metadata. Users who may not read them
(the state is root's) read through the daemon's D-Bus API, which everyone may read: the
daemon returns the engine's own view, so the output is the same. Changes go through the
daemon when it runs so that its clients see them at once and its checks apply; when it
does not, root's CLI uses the engine directly. ``IPACCTD_NO_DAEMON=1`` skips the daemon.
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
from ipacctd.manager.counters import Counters
from ipacctd.manager.engine import Manager
from ipacctd.manager.unit import Unit, UnitStatus
from ipacctd.policy.properties import Properties, property_spec

BUS_NAME = "org.ipacctd1"
ROOT = "/org/ipacctd1"
MANAGER_IFACE = "org.ipacctd1.Manager"
DBUS = "org.freedesktop.DBus"
ENV_DIRECT = "IPACCTD_NO_DAEMON"  # "1": never go through the daemon
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 60.0
_GONE = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")

#: Why the last :func:`connect` found no daemon (for messages that say what is missing).
why_no_daemon = ""


class _Unreachable(Exception):
    """The daemon's bus or name cannot be reached: fall back to the engine."""


_ERRORS: dict[str, type[Error]] = {
    "org.freedesktop.DBus.Error.InvalidArgs": InvalidInput,
    "org.ipacctd1.Error.NoSuchUnit": NotFound,
    "org.ipacctd1.Error.UnitExists": AlreadyExists,
    "org.ipacctd1.Error.NotSupported": NotSupported,
    "org.freedesktop.DBus.Error.AccessDenied": PermissionDenied,
}


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


class DaemonLink:
    """A connection to the system bus and the proven owner of ``org.ipacctd1`` on it."""

    def __init__(self, address: str) -> None:
        import asyncio

        from dbus_fast.aio import MessageBus

        async def connect() -> MessageBus:  # dbus-fast wants a running loop from the start
            return await MessageBus(bus_address=address).connect()

        # An event loop needs descriptors (epoll, a self-pipe) and the bus a socket; when
        # they cannot be had (RLIMIT_NOFILE), asyncio fails half-built and its finaliser
        # prints a traceback. Say so plainly instead, before anything is started.
        _need_descriptors(4)
        self.address = address
        self.loop = asyncio.new_event_loop()
        try:
            self.bus = self.loop.run_until_complete(asyncio.wait_for(connect(),
                                                                     CONNECT_TIMEOUT))
        except BaseException:
            self.loop.close()
            raise
        self.owner = ""
        self.uid = self.pid = -1
        self.state_dir = self.cgroup_root = ""

    def raw(self, destination: str, path: str, iface: str, member: str, signature: str = "",
            body: Sequence[Any] = ()) -> Any:
        import asyncio

        from dbus_fast import Message

        msg = Message(destination=destination, path=path, interface=iface, member=member,
                      signature=signature, body=list(body))
        return self.loop.run_until_complete(asyncio.wait_for(self.bus.call(msg), CALL_TIMEOUT))

    def bus_call(self, member: str, *args: str) -> Any:
        """A call to the bus daemon itself; its return value (None on an error)."""
        from dbus_fast import MessageType

        reply = self.raw(DBUS, "/org/freedesktop/DBus", DBUS, member, "s" * len(args), args)
        return reply.body[0] if reply.message_type == MessageType.METHOD_RETURN else None

    def prove(self) -> bool:
        """Find the name's owner and check it; False when nobody owns the name."""
        owner = self.bus_call("GetNameOwner", BUS_NAME)
        if owner is None:
            return False
        uid = self.bus_call("GetConnectionUnixUser", owner)
        pid = self.bus_call("GetConnectionUnixProcessID", owner)
        self.owner, self.uid, self.pid = owner, -1 if uid is None else uid, pid or 0
        if self.uid != 0:
            raise PermissionDenied(
                f"{BUS_NAME} on the system bus ({self.address}) is owned by uid {self.uid} "
                f"(pid {self.pid}), not root: refusing to talk to it — it is not the ipacctd "
                f"daemon. Stop that process (and check the bus policy), or set {ENV_DIRECT}=1 "
                "to act without the daemon")
        props = self.call("org.freedesktop.DBus.Properties", "GetAll", "s", [MANAGER_IFACE])
        values = {k: v.value for k, v in props[0].items()}
        self.state_dir = str(values.get("StateDirectory", ""))
        self.cgroup_root = str(values.get("ControlGroupRoot", ""))
        return True

    def call(self, iface: str, member: str, signature: str = "", body: Sequence[Any] = (),
             path: str = ROOT) -> list[Any]:
        """A method call to the proven owner; ipacctd errors raised as such."""
        from dbus_fast import MessageType

        reply = self.raw(self.owner, path, iface, member, signature, body)
        if reply.message_type == MessageType.ERROR and reply.error_name in _GONE:
            raise _Unreachable(f"{BUS_NAME} left the bus")
        if reply.message_type == MessageType.ERROR:
            cls = _ERRORS.get(reply.error_name or "", Error)
            text = reply.body[0] if reply.body else reply.error_name
            raise cls(str(text))
        return list(reply.body)

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.bus.disconnect()
        self.loop.close()


def connect(config: Config) -> DaemonLink | None:
    """The proven daemon serving ``config``'s installation on the system bus, or None (the
    reason in :data:`why_no_daemon`). PermissionDenied when an impostor owns the name."""
    global why_no_daemon
    if os.environ.get(ENV_DIRECT) == "1":
        why_no_daemon = f"{ENV_DIRECT}=1 is set"
        return None
    address = system_bus_address()
    if address.startswith("unix:path=") and "," not in address \
            and not os.path.exists(address[len("unix:path="):]):
        why_no_daemon = f"no system bus at {address}"
        return None
    try:
        import dbus_fast  # noqa: F401 — the daemon extra may be missing on a CLI-only host
    except ImportError:
        why_no_daemon = "the Python package dbus-fast is not installed"
        return None
    try:
        link = DaemonLink(address)
    except Exception as exc:  # any failure to connect: no daemon for us
        why_no_daemon = f"cannot connect to the system bus {address}: {exc}"
        return None
    try:
        if not link.prove():
            why_no_daemon = f"no ipacctd daemon owns {BUS_NAME} on the system bus {address}"
            link.close()
            return None
    except _Unreachable:  # the owner left between the name lookup and its checks
        why_no_daemon = f"the ipacctd daemon left the system bus {address}"
        link.close()
        return None
    except BaseException:
        link.close()
        raise
    if os.path.realpath(link.state_dir) != os.path.realpath(config.state_dir):
        why_no_daemon = (f"the ipacctd daemon on {address} serves {link.state_dir}, not "
                         f"{config.state_dir}")
        link.close()
        return None
    why_no_daemon = ""
    return link


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
    """A :class:`Manager` whose mutations are D-Bus calls to the running daemon; with
    ``remote_reads``, its views come from the daemon too (users who cannot read the pins)."""

    def __init__(self, config: Config, link: DaemonLink, remote_reads: bool = False) -> None:
        super().__init__(config)
        self.link = link
        self.remote_reads = remote_reads
        self._denied: dict[str, list[dict]] = {}

    def _call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        """Call a Manager method; raises _Unreachable when the daemon has gone."""
        return self.link.call(MANAGER_IFACE, member, signature, body)

    # -- reads (remote_reads) --------------------------------------------------------------

    def describe(self, names: Sequence[str]) -> list[UnitStatus]:
        from ipacctd.daemon.bus import status_from_wire

        (text,) = self._call("DescribeUnits", "asu", [list(names), 5])
        out = []
        for d in json.loads(text):
            st = status_from_wire(d)
            self._denied[st.name] = list(d.get("denied", []))
            out.append(st)
        return out

    def names(self) -> list[str]:
        if not self.remote_reads:
            return super().names()
        return [s.name for s in self.describe([])]

    def unit(self, name: str) -> Unit:
        if not self.remote_reads:
            return super().unit(name)
        return self.status(name).unit

    def status(self, name: str) -> UnitStatus:
        if not self.remote_reads:
            return super().status(name)
        return self.describe([name])[0]

    def statuses(self, names: Sequence[str] | None = None) -> list[UnitStatus]:
        if not self.remote_reads:
            return super().statuses(names)
        return self.describe(list(names or []))

    def counters(self, name: str) -> Counters | None:
        if not self.remote_reads:
            return super().counters(name)
        return self.status(name).counters

    def denied(self, name: str, limit: int | None = None) -> list[dict]:
        if not self.remote_reads:
            return super().denied(name, limit)
        if name not in self._denied:
            self.status(name)
        entries = self._denied.get(name, [])
        return entries[:limit] if limit is not None else entries

    def inspect(self, name: str, instructions: bool = False) -> dict[str, Any]:
        (text,) = self._call("InspectUnit", "sb", [name, instructions])
        return json.loads(text)

    # -- changes ---------------------------------------------------------------------------

    def start_transient(self, assignments: Sequence[tuple[str, str]] = (), *,
                        name: str | None = None, description: str | None = None,
                        command: Sequence[str] = (), allow_unenforced: bool = False,
                        dbus_items: Sequence[tuple[str, str, object]] = (),
                        owned_by: tuple[int, int] | None = None) -> Unit:
        from dbus_fast import Variant

        # An override the D-Bus API does not offer, or a cgroup root that is not the
        # daemon's (``run`` inside another delegated service keeps the command in that
        # service's tree): act directly.
        if allow_unenforced or self.config.cgroup_root != self.link.cgroup_root:
            return super().start_transient(assignments, name=name, description=description,
                                           command=command, allow_unenforced=allow_unenforced,
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

    def reload(self) -> None:
        self._call("Reload", "", [])

def _need_descriptors(n: int) -> None:
    """Raise OSError(EMFILE) unless ``n`` more file descriptors can be opened now."""
    fds: list[int] = []
    try:
        for _ in range(n):
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    finally:
        for fd in fds:
            os.close(fd)


def manager(config: Config, write: bool = True) -> Manager:
    """The engine for ``config``: through the daemon for changes (when one serves this
    installation) and, for users who cannot read the state themselves, for reads."""
    remote_reads = os.geteuid() != 0
    if not write and not remote_reads:
        return Manager(config)  # root reads the kernel directly: no bus round trip
    link = connect(config)
    if link is None:
        return Manager(config)
    return DaemonManager(config, link, remote_reads=remote_reads)

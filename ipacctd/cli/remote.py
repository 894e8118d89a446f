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

import contextlib
import os
from collections.abc import Sequence

from ipacctd import jsontext  # json.loads's own parser, without json's import of re
from ipacctd.daemon.contract import (
    BUS_NAME,
    DBUS,
    GONE,
    MANAGER_IFACE,
    PROPS_IFACE,
    ROOT,
    error_from_reply,
    status_from_wire,
    system_bus_address,
    unit_name,
)
from ipacctd.errors import AccessDenied, Error, NotFound
from ipacctd.manager.config import Config
from ipacctd.manager.counters import Counters
from ipacctd.manager.engine import Manager
from ipacctd.manager.unit import Unit, UnitStatus
from ipacctd.policy.properties import Properties, property_spec

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from typing import Any

ENV_DIRECT = "IPACCTD_NO_DAEMON"  # "1": never go through the daemon
CONNECT_TIMEOUT = 2.0
CALL_TIMEOUT = 60.0
#: Units per DescribeUnits when a user's view reads all units through the daemon: ~30 ms
#: of the daemon's loop a page at 10,000 units (bench/results-daemon.txt: 1.1 s for all).
DESCRIBE_PAGE = 256
#: The job modes of the CLI's starts and stops: systemd-run's and systemctl's defaults.
START_MODE, STOP_MODE = "fail", "replace"

#: Why the last :func:`connect` found no daemon (for messages that say what is missing).
why_no_daemon = ""


class _Unreachable(Exception):
    """The daemon's bus or name cannot be reached: fall back to the engine."""


class DaemonLink:
    """A connection to the system bus and the proven owner of ``org.ipacctd1`` on it.

    Blocking, with the CLI's own client (:mod:`ipacctd.cli.busclient`): a command makes a
    call or two and waits for a job, and an event loop (asyncio, dbus-fast's) cost more to
    import than the rest of the command."""

    def __init__(self, address: str) -> None:
        from ipacctd.cli.busclient import Connection

        self.address = address
        self.conn = Connection(address, CONNECT_TIMEOUT)
        self.owner = ""
        self.uid = self.pid = -1
        self.state_dir = self.cgroup_root = ""
        self.ended: dict[str, tuple[str, str]] | None = None  # job path → (unit, result)
        self.gone = False  # the daemon's connection closed

    @staticmethod
    def message(destination: str, path: str, iface: str, member: str, signature: str = "",
                body: Sequence[Any] = ()) -> Any:
        from ipacctd.cli.busclient import METHOD_CALL, Message

        return Message(METHOD_CALL, destination=destination, path=path, interface=iface,
                       member=member, signature=signature, body=list(body))

    def raw(self, destination: str, path: str, iface: str, member: str, signature: str = "",
            body: Sequence[Any] = ()) -> Any:
        return self.conn.call(self.message(destination, path, iface, member, signature, body),
                              CALL_TIMEOUT)

    def bus_call(self, member: str, *args: str) -> Any:
        """A call to the bus daemon itself; its return value (None on an error)."""
        return self.bus_calls([(member, *args)])[0]

    def bus_calls(self, calls: Sequence[tuple[str, ...]]) -> list[Any]:
        """Calls to the bus daemon itself, (member, *string args) each, sent back to back;
        their return values (None for an error)."""
        from ipacctd.cli.busclient import METHOD_RETURN

        msgs = [self.message(DBUS, "/org/freedesktop/DBus", DBUS, member, "s" * len(args), args)
                for member, *args in calls]
        replies = self.conn.calls(msgs, CALL_TIMEOUT)
        return [r.body[0] if r.message_type == METHOD_RETURN else None for r in replies]

    def prove(self) -> bool:
        """Find the name's owner and check it; False when nobody owns the name."""
        owner = self.bus_call("GetNameOwner", BUS_NAME)
        if owner is None:
            return False
        uid, pid = self.bus_calls([("GetConnectionUnixUser", owner),
                                   ("GetConnectionUnixProcessID", owner)])
        self.owner, self.uid, self.pid = owner, -1 if uid is None else uid, pid or 0
        if self.uid != 0:
            raise AccessDenied(
                f"{BUS_NAME} on the system bus ({self.address}) is owned by uid {self.uid} "
                f"(pid {self.pid}), not root: refusing to talk to it — it is not the ipacctd "
                f"daemon. Stop that process (and check the bus policy), or set {ENV_DIRECT}=1 "
                "to act without the daemon")
        props = self.call(PROPS_IFACE, "GetAll", "s", [MANAGER_IFACE])
        values = {k: v.value for k, v in props[0].items()}
        self.state_dir = str(values.get("StateDirectory", ""))
        self.cgroup_root = str(values.get("ControlGroupRoot", ""))
        return True

    def call(self, iface: str, member: str, signature: str = "", body: Sequence[Any] = (),
             path: str = ROOT) -> list[Any]:
        """A method call to the proven owner; ipacctd errors raised as such."""
        return self._result(self.raw(self.owner, path, iface, member, signature, body))

    @staticmethod
    def _result(reply: Any) -> list[Any]:
        """A reply's values; ipacctd errors raised as such."""
        from ipacctd.cli.busclient import ERROR

        if reply.message_type == ERROR and reply.error_name in GONE:
            raise _Unreachable(f"{BUS_NAME} left the bus")
        if reply.message_type == ERROR:
            # The daemon's message is plain; the hint (what to type next) is the CLI's to add.
            raise error_from_reply(reply.error_name, list(reply.body))
        return list(reply.body)

    def job(self, member: str, signature: str, body: Sequence[Any],
            path: str = ROOT, iface: str = MANAGER_IFACE) -> tuple[str, str]:
        """Call a method that returns a job, as systemctl does: wait for the job's
        ``JobRemoved`` and return (unit, result) — the unit as the daemon named it.
        _Unreachable when the daemon leaves the bus before the job ends."""
        import time

        from ipacctd.cli.busclient import SIGNAL

        msgs = []
        if self.ended is None:  # listen before the first call, so no end is missed
            for rule in (f"type='signal',sender='{self.owner}',path='{ROOT}',"
                         f"interface='{MANAGER_IFACE}',member='JobRemoved'",
                         f"type='signal',sender='{DBUS}',member='NameOwnerChanged',"
                         f"arg0='{self.owner}'"):
                msgs.append(self.message(DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s",
                                         [rule]))
            self.ended = {}
        ended = self.ended
        # The rules and the call back to back: the bus adds the rules before it routes the
        # call (one connection's messages are handled in order), so the job's end cannot
        # pass them, and the call does not wait for their two round trips.
        msgs.append(self.message(self.owner, path, iface, member, signature, body))
        (job,) = self._result(self.conn.calls(msgs, CALL_TIMEOUT)[-1])
        deadline = time.monotonic() + CALL_TIMEOUT
        while job not in ended and not self.gone:
            try:
                msg = self.conn.receive(deadline)
            except TimeoutError:
                raise Error(f"job {job} did not end within {CALL_TIMEOUT:.0f}s") from None
            if msg.message_type != SIGNAL:
                continue
            if (msg.sender == self.owner and msg.path == ROOT
                    and msg.interface == MANAGER_IFACE and msg.member == "JobRemoved"):
                ended[msg.body[1]] = (msg.body[2], msg.body[3])
            elif (msg.sender == DBUS and msg.member == "NameOwnerChanged"
                    and msg.body[0] == self.owner and not msg.body[2]):
                self.gone = True  # the daemon's connection closed (it ended, or crashed)
        if job not in ended:
            raise _Unreachable(f"{BUS_NAME} left the bus while its job {job} ran")
        return ended.pop(job)

    def close(self) -> None:
        self.conn.close()


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
    from ipacctd.cli.busclient import Variant

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

    def _job(self, member: str, signature: str, body: list[Any]) -> str:
        """Call a Manager method that returns a job; the unit once the job is done."""
        unit, result = self.link.job(member, signature, body)
        if result != "done":
            raise Error(f"{member} job for {unit} ended with result '{result}'",
                        hint="see the daemon's log ('journalctl -u ipacctd')")
        return unit

    # -- reads (remote_reads) --------------------------------------------------------------

    def describe(self, names: Sequence[str]) -> list[UnitStatus]:
        (text,) = self._call("DescribeUnits", "asu", [list(names), 5])
        out = []
        for d in jsontext.loads(text):
            st = status_from_wire(d)
            self._denied[st.name] = list(d.get("denied", []))
            out.append(st)
        return out

    def names(self) -> list[str]:
        if not self.remote_reads:
            return super().names()
        # ListUnits: ten short fields a unit (the daemon's view of the same names,
        # Manager.names()), not DescribeUnits of every unit — 12.6 MB of JSON at 10,000
        # units, each status read and parsed — only to learn which names a glob matches.
        (rows,) = self._call("ListUnits", "", [])
        return [str(row[0]) for row in rows]

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
        if names:
            return self._pages(list(names), gone_ok=False)
        # All units: their names (ListUnits, sorted as Manager.names() sorts them), then
        # DescribeUnits a page at a time, not DescribeUnits([]) of all at once: at 10,000
        # units that one call held the daemon's loop for 1.1 s (its bus and metrics
        # waited) and built a 12.6 MB reply; a page of DESCRIBE_PAGE holds it ~30 ms.
        return self._pages(sorted(self.names()), gone_ok=True)

    def _pages(self, names: list[str], gone_ok: bool) -> list[UnitStatus]:
        """DescribeUnits of ``names``, DESCRIBE_PAGE at a time. ``gone_ok``: a unit reset
        since its name was listed is left out (its page asked again a unit at a time),
        as Manager.statuses() leaves out a unit removed while it reads."""
        out: list[UnitStatus] = []
        for i in range(0, len(names), DESCRIBE_PAGE):
            page = names[i : i + DESCRIBE_PAGE]
            try:
                out += self.describe(page)
            except NotFound:
                if not gone_ok:
                    raise
                for name in page:
                    with contextlib.suppress(NotFound):
                        out += self.describe([name])
        return out

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
        return jsontext.loads(text)

    # -- changes ---------------------------------------------------------------------------

    def start_transient(self, assignments: Sequence[tuple[str, str]] = (), *,
                        name: str | None = None, description: str | None = None,
                        command: Sequence[str] = (), allow_unenforced: bool = False,
                        dbus_items: Sequence[tuple[str, str, object]] = (),
                        owned_by: tuple[int, int] | None = None) -> Unit:
        from ipacctd.cli.busclient import Variant

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
            # systemd's signature; an empty name asks the daemon to pick one (ipacctd's).
            made = self._job("StartTransientUnit", "ssa(sv)a(sa(sv))",
                             [name or "", START_MODE, items, []])
        except _Unreachable:
            return super().start_transient(assignments, name=name, description=description,
                                           command=command, owned_by=owned_by)
        return self.unit(made)

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
        return self.unit(unit_name(path))

    def set_properties(self, name: str, assignments: Sequence[tuple[str, str]]) -> Unit:
        try:
            self._call("SetUnitProperties", "sba(sv)",
                       [name, True, assignments_to_dbus(assignments)])
        except _Unreachable:
            return super().set_properties(name, assignments)
        return self.unit(name)

    def stop(self, name: str, timeout: float = 5.0) -> list[int]:
        try:
            self._job("StopUnit", "ss", [name, STOP_MODE])
        except _Unreachable:
            return super().stop(name, timeout)
        return []

    def reset(self, name: str) -> None:
        try:
            self._call("ResetFailedUnit", "s", [name])
        except _Unreachable:
            super().reset(name)

    def detach(self, name: str) -> None:
        try:
            self._call("DetachUnit", "s", [name])
        except _Unreachable:
            super().detach(name)

    def reload(self) -> None:
        self._call("Reload", "", [])

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

"""The D-Bus contract between the daemon and its clients, the CLI among them: written once.

Both ends import this module: ``ipacctd.daemon.bus`` serves what it names and
``ipacctd.cli.remote`` calls it. It holds the names (bus name, object paths, interfaces),
the error table and its inverse, the reader of the daemon's runtime file and the bus
connection. It imports the standard library and ipacctd's leaf modules only; ``dbus_fast``
(the "daemon" extra, which a CLI-only host may lack) is imported when a bus is opened, so
the CLI imports this module on any host.

Names::

    bus name   org.ipacctd1
    /org/ipacctd1                   org.ipacctd1.Manager
    /org/ipacctd1/unit/<label>      org.ipacctd1.Unit   (label: systemd's bus-label escape)
    /org/ipacctd1/job/<id>          org.ipacctd1.Job    (while a job runs, as systemd's)

Where a member has systemd's name it has systemd's signature and meaning (checked against
systemd 252's introspection in ``tests/daemon/data/``); ipacctd's additions have names of
their own.
"""

from __future__ import annotations

# signal.py's C core (as ipacctd.cli.run takes it): the numbers and pidfd_send_signal,
# without the enums signal.py builds at import; the CLI imports this module.
import _signal as signal
import contextlib
import os

from ipacctd import jsontext  # json.loads's own parser, without json's import of re
from ipacctd.errors import (
    AccessDenied,
    AlreadyExists,
    Busy,
    Error,
    InvalidInput,
    NotFound,
    NotSupported,
)
from ipacctd.manager.owner import start_time  # one home for "process identity"

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from typing import Any

BUS_NAME = "org.ipacctd1"
ROOT = "/org/ipacctd1"
UNIT_PREFIX = ROOT + "/unit/"
JOB_PREFIX = ROOT + "/job/"
MANAGER_IFACE = "org.ipacctd1.Manager"
UNIT_IFACE = "org.ipacctd1.Unit"
JOB_IFACE = "org.ipacctd1.Job"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
PEER_IFACE = "org.freedesktop.DBus.Peer"
DBUS = "org.freedesktop.DBus"
#: systemd's "unknown" for a counter property (``t``).
UINT64_MAX = (1 << 64) - 1
#: Where the system bus listens unless ``$DBUS_SYSTEM_BUS_ADDRESS`` says otherwise.
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"


class NoSuchJob(NotFound):
    """A job path or id that names no running job (it ended, or never was)."""


#: Exception → D-Bus error name, first match wins (subclasses before their bases). The
#: message of the error is the exception's plain message; a hint for the CLI (what to type
#: next), when the exception has one, travels as a second string that D-Bus tools ignore.
ERRORS: list[tuple[type[Exception], str]] = [
    (NoSuchJob, "org.ipacctd1.Error.NoSuchJob"),
    (InvalidInput, "org.freedesktop.DBus.Error.InvalidArgs"),
    (NotFound, "org.ipacctd1.Error.NoSuchUnit"),
    (AlreadyExists, "org.ipacctd1.Error.UnitExists"),
    (NotSupported, "org.ipacctd1.Error.NotSupported"),
    (Busy, "org.ipacctd1.Error.Busy"),
    (PermissionError, "org.freedesktop.DBus.Error.AccessDenied"),
    (Error, "org.ipacctd1.Error.Failed"),
]
#: The inverse, for clients: D-Bus error name → the exception it raises.
ERROR_CLASSES: dict[str, type[Error]] = {
    "org.freedesktop.DBus.Error.InvalidArgs": InvalidInput,
    "org.ipacctd1.Error.NoSuchUnit": NotFound,
    "org.ipacctd1.Error.NoSuchJob": NoSuchJob,
    "org.ipacctd1.Error.UnitExists": AlreadyExists,
    "org.ipacctd1.Error.NotSupported": NotSupported,
    "org.ipacctd1.Error.Busy": Busy,
    "org.freedesktop.DBus.Error.AccessDenied": AccessDenied,
    "org.ipacctd1.Error.Failed": Error,
}
#: The bus saying that the daemon is not (or no longer) there.
GONE = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")


def error_name(exc: BaseException) -> str | None:
    """The D-Bus error name of an ipacctd error (None: not one of ours)."""
    return next((name for cls, name in ERRORS if isinstance(exc, cls)), None)


def error_body(exc: BaseException) -> tuple[str, list[str]]:
    """An error reply's signature and body: the plain message, and the hint if any."""
    hint = getattr(exc, "hint", "")
    if hint and isinstance(exc, Error):
        return "ss", [exc.plain, hint]
    return "s", [str(exc)]


def error_from_reply(name: str | None, body: list[Any]) -> Error:
    """The exception a client raises for an error reply (:func:`error_body`'s inverse)."""
    cls = ERROR_CLASSES.get(name or "", Error)
    text = str(body[0]) if body else str(name)
    hint = str(body[1]) if len(body) > 1 and isinstance(body[1], str) else ""
    return cls(text, hint=hint)


# -- object paths ----------------------------------------------------------------------------


#: Each byte as a label keeps it: itself when an ASCII letter or digit, else ``_XX``. Made
#: at the first escape (64 µs), not at import: every CLI command imports this module.
_LABEL: list[str] | None = None


def escape_label(name: str) -> str:
    """systemd's bus_label_escape: keep [A-Za-z0-9] (a digit not first), others as _XX
    (hex) — by a table of the 256 bytes: a loop testing each character cost ~15 µs a unit
    name, on every unit's ``UnitNew`` and every row of a ``ListUnits``."""
    if not name:
        return "_"
    global _LABEL
    label = _LABEL
    if label is None:  # made whole, then published (two threads may both make it)
        label = [
            chr(b) if chr(b).isascii() and chr(b).isalnum() else f"_{b:02x}" for b in range(256)
        ]
        _LABEL = label
    raw = name.encode()
    first = raw[0]
    head = f"_{first:02x}" if 0x30 <= first <= 0x39 else label[first]
    return head + "".join([label[b] for b in raw[1:]])


def unescape_label(label: str) -> str:
    """Inverse of :func:`escape_label`."""
    if label == "_":
        return ""
    out = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_" and i + 3 <= len(label):
            try:
                out.append(int(label[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(ord(label[i]))
        i += 1
    return out.decode(errors="replace")


def unit_path(name: str) -> str:
    """Object path of a unit."""
    return UNIT_PREFIX + escape_label(name)


def unit_name(path: str) -> str:
    """The unit an object path names (inverse of :func:`unit_path`)."""
    return unescape_label(path.rsplit("/", 1)[-1])


def job_path(job_id: int) -> str:
    """Object path of a job (systemd's ``/org/freedesktop/systemd1/job/<id>``)."""
    return f"{JOB_PREFIX}{job_id}"


# -- the bus -------------------------------------------------------------------------------


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


async def open_bus(where: str = "system") -> Any:
    """A connected ``dbus_fast.aio.MessageBus``: ``where`` is "system", "session" or an
    address. The daemon serves on it; the CLI calls through it."""
    from dbus_fast import BusType
    from dbus_fast.aio import MessageBus

    if where == "session":
        bus = await MessageBus(bus_type=BusType.SESSION).connect()
    else:
        address = system_bus_address() if where == "system" else where
        bus = await MessageBus(bus_address=address).connect()
    return wait_when_full(bus)


class _WaitWhenFull:
    """The bus socket as dbus-fast's writer uses it, but a send that finds the socket's
    buffer full writes nothing instead of raising ``BlockingIOError``.

    dbus-fast's writer (5.2.0, inherited from python-dbus-next: its issue #153, still open)
    sends a new message at once when its queue is empty, also while the message before is
    only partly written; the socket, non-blocking and full, raises EAGAIN, and the writer
    takes any exception for a broken connection: it closes the bus. The daemon sending a
    unit's properties with a long address list and then another message lost its bus that
    way (the CLI saw "Message recipient disconnected from message bus without replying").
    Written nothing, the writer keeps the rest of the message and waits until the socket is
    writable, as it does after a partial write."""

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send(self, data: Any, *flags: int) -> int:
        try:
            return self._sock.send(data, *flags)
        except BlockingIOError:
            return 0

    def sendmsg(self, *args: Any) -> int:
        try:
            return self._sock.sendmsg(*args)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def wait_when_full(bus: Any) -> Any:
    """``bus`` (a connected ``dbus_fast.aio.MessageBus``) with its writer's socket wrapped
    in :class:`_WaitWhenFull`. A dbus-fast without that writer (its internals changed) is
    left as it is."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if sock is not None and not isinstance(sock, _WaitWhenFull):
        with contextlib.suppress(AttributeError, TypeError):  # a compiled, typed writer
            writer.sock = _WaitWhenFull(sock)
    return bus


# -- the runtime file ------------------------------------------------------------------------
# ``<state>/daemon.json`` says which process serves an installation (for a daemon without a
# bus, which ``reload`` signals). Only the daemon holding the installation's lock writes it
# (``ipacctd.daemon.runtime.write``). A file outlives a daemon killed with ``kill -9`` and its
# PID may be reused by any process, so a PID read from it proves nothing alone: it counts
# only together with the process's start time (``/proc/PID/stat`` field 22; two processes
# never share PID and start time), checked on a pidfd, so that the process we checked is
# the process we signal.


def read_runtime(path: str) -> dict[str, Any] | None:
    """The runtime file's content when it is well-formed, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as f:
            data = jsontext.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("pid"), int)
        or not isinstance(data.get("starttime"), int)
        or data["pid"] <= 0
    ):
        return None
    return data


def runtime_alive(info: dict[str, Any]) -> bool:
    """True when the process the file names still runs (same PID *and* start time)."""
    return start_time(info["pid"]) == info["starttime"]


def signal_daemon(path: str, sig: int = signal.SIGHUP) -> int:
    """Signal the daemon named by the runtime file; its PID. NotFound (nothing signalled)
    when there is no file or its process is gone, even if the PID now names another."""
    info = read_runtime(path)
    if info is None:
        raise NotFound(f"no ipacctd daemon is running ({path} is missing or unreadable)")
    pid = info["pid"]
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is None:
        raise NotFound(f"no ipacctd daemon is running (stale {path}: pid {pid} is gone)")
    try:
        # Checked after the pidfd pins the process: a PID reused in between fails here.
        if start_time(pid) != info["starttime"]:
            raise NotFound(
                f"no ipacctd daemon is running (stale {path}: pid {pid} is now "
                "another process, which was left alone)"
            )
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)
    return pid


# -- DescribeUnits' JSON -----------------------------------------------------------------------
# What the CLI's views need of a unit, for users who may not read the pins and metadata.


def status_to_wire(st: Any) -> dict[str, Any]:
    """A ``UnitStatus`` as plain data (inverse: :func:`status_from_wire`)."""
    return {
        "unit": _unit_to_wire(st.unit),
        "active_state": st.active_state,
        "sub_state": st.sub_state,
        "pids": list(st.pids),
        "counters": st.counters.to_dict() if st.counters is not None else None,
        "attached": st.attached,
        "kernel_generation": st.kernel_generation,
        "broken": st.broken,
        "enforcement": {
            "enforced": st.enforcement.enforced,
            "problem": st.enforcement.problem,
            "live": st.enforcement.live,
            "cgroup_id": st.enforcement.cgroup_id,
        },
    }


def _unit_to_wire(unit: Any) -> dict[str, Any]:
    """The unit's metadata, each list in it whole: a list the store keeps in a file of its
    own (named there by its digest, see ipacctd.manager.store) goes as its text and digest,
    as an inline one does — the reader has no access to the file."""
    data = unit.to_json()
    for section, props in (("properties", unit.properties), ("rollback", unit.rollback)):
        values = data.get(section)
        if not isinstance(values, dict) or props is None:
            continue
        for name, value in values.items():
            if isinstance(value, dict) and "canonical" not in value and "sha256" in value:
                from ipacctd.policy.properties import property_spec

                text = str(getattr(props, property_spec(name).attr))  # read, digest checked
                values[name] = {"canonical": text, "sha256": value["sha256"]}
    return data


def status_from_wire(d: dict[str, Any]) -> Any:
    """The ``UnitStatus`` a :func:`status_to_wire` dict describes."""
    # Imported here: the model is not needed to name things or to connect.
    from ipacctd.manager.counters import Counters
    from ipacctd.manager.unit import Enforcement, Unit, UnitStatus

    c = d.get("counters")
    e = d.get("enforcement")
    if isinstance(e, dict):
        cid = e.get("cgroup_id")
        enforcement = Enforcement(
            bool(e.get("enforced")),
            str(e.get("problem", "")),
            live=bool(e.get("live", True)),
            cgroup_id=cid if isinstance(cid, int) else None,
        )
    else:
        # Never fail open: a reply without the field (an older daemon) is "not known to be
        # in force", not "enforced".
        enforcement = Enforcement(False, "unknown: the daemon did not say")
    return UnitStatus(
        Unit.from_json(d["unit"]),
        str(d["active_state"]),
        str(d["sub_state"]),
        tuple(int(p) for p in d.get("pids", ())),
        Counters(**c) if c is not None else None,
        bool(d.get("attached")),
        d.get("kernel_generation"),
        broken=str(d["broken"]) if d.get("broken") is not None else None,
        enforcement=enforcement,
    )

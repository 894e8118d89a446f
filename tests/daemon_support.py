"""The ipacctd daemon under test: a private bus, an isolated installation, the daemon.

:class:`DaemonEnv` gives

* its own ``dbus-daemon`` (:class:`support.PrivateBus`: every local user may connect, own,
  send and receive — so that refusing a non-root caller is the ipacctd daemon's own doing);
* an isolated ipacctd installation (:class:`e2e_helpers.Installation`: state and unit
  directories under ``tmp_path``, ``IPACCTD_BPF_DIR=/sys/fs/bpf/ipacctd-test-<id>``,
  ``IPACCTD_CGROUP_ROOT=/ipacctd-test-<id>``);
* ``python -m ipacctd daemon --bus <addr> --listen 127.0.0.1:<free port>`` as a
  subprocess, started (and restarted) on demand and ended by its PID;
* :class:`Client`: synchronous dbus-fast connections to the bus;
* the installation's CLI (``inst.cli``) with ``DBUS_SYSTEM_BUS_ADDRESS`` set to the bus, so
  that it finds the daemon by its bus name as on a host.

Closing it ends the daemon, then the processes, units, cgroups and pins of the
installation, then the bus daemon. Used by tests/daemon and tests/reliability.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from e2e_helpers import REPO, Installation
from support import PrivateBus, free_port, stop_process, wait_for

from ipacctd.daemon.contract import BUS_NAME, ROOT, unit_path
from ipacctd.daemon.contract import MANAGER_IFACE as MANAGER
from ipacctd.daemon.contract import PROPS_IFACE as PROPS
from ipacctd.daemon.contract import UNIT_IFACE as UNIT

__all__ = [
    "ALLOWED",
    "BUS_NAME",
    "DENIED",
    "MANAGER",
    "PROPS",
    "ROOT",
    "UNIT",
    "Client",
    "DaemonEnv",
    "Recorder",
    "addr_list",
    "entries",
    "unit_path",
]


#: Test addresses the daemon tests put on a namespace's lo: one a policy allows, one it denies.
ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"


class Recorder:
    """A bus connection as the daemon's bus service uses it, for tests that drive the
    service in-process: the handler it adds, and the messages it sends (kept)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def add_message_handler(self, handler: Callable[..., Any]) -> None:
        self.handler = handler

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def addr_list(*addrs: str) -> Any:
    """systemd's a(iayu) form of host addresses."""
    from dbus_fast import Variant

    items = []
    for a in addrs:
        ip = ipaddress.ip_address(a)
        items.append([2 if ip.version == 4 else 10, ip.packed, ip.max_prefixlen])
    return Variant("a(iayu)", items)


def entries(value: list) -> list[tuple]:
    """An ``a(iayu)`` value as tuples (dbus-fast may give structs as lists or tuples)."""
    return [tuple(v) for v in value]


class Client:
    """A synchronous face on a dbus-fast connection (its own event loop).

    Signals that the bus routes to us are collected in :attr:`signals` whenever the loop
    runs (during calls and :meth:`pump`).
    """

    def __init__(self, address: str) -> None:
        from dbus_fast import MessageType
        from dbus_fast.aio import MessageBus

        async def connect() -> Any:  # dbus-fast wants a running loop from the start
            return await MessageBus(bus_address=address).connect()

        self.loop = asyncio.new_event_loop()
        self.bus = self.run(connect())
        self.signals: list[Any] = []

        def on_message(msg: Any) -> None:
            if msg.message_type == MessageType.SIGNAL:
                self.signals.append(msg)

        self.bus.add_message_handler(on_message)

    def run(self, coro: Any, timeout: float = 15.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def pump(self, seconds: float = 0.05) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def call(
        self,
        path: str,
        iface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        destination: str = BUS_NAME,
    ) -> Any:
        """Send a method call and return the reply message (a return or an error)."""
        from dbus_fast import Message

        return self.run(
            self.bus.call(
                Message(
                    destination=destination,
                    path=path,
                    interface=iface,
                    member=member,
                    signature=signature,
                    body=list(body),
                )
            )
        )

    def ok(
        self,
        path: str,
        iface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        destination: str = BUS_NAME,
    ) -> list[Any]:
        """The body of a successful call (AssertionError with the D-Bus error otherwise)."""
        from dbus_fast import MessageType

        reply = self.call(path, iface, member, signature, body, destination)
        assert reply.message_type == MessageType.METHOD_RETURN, (
            member,
            reply.error_name,
            reply.body,
        )
        return reply.body

    def error(
        self, path: str, iface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> tuple[str, str]:
        """(error name, message) of a call that must fail."""
        from dbus_fast import MessageType

        reply = self.call(path, iface, member, signature, body)
        assert reply.message_type == MessageType.ERROR, (member, reply.body)
        return reply.error_name, (reply.body[0] if reply.body else "")

    def manager(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        return self.ok(ROOT, MANAGER, member, signature, body)

    def manager_error(self, member: str, signature: str = "", *body: Any) -> tuple[str, str]:
        return self.error(ROOT, MANAGER, member, signature, body)

    def props(self, unit: str) -> dict[str, Any]:
        """GetAll of a unit object, values unpacked."""
        (props,) = self.ok(unit_path(unit), PROPS, "GetAll", "s", [UNIT])
        return {k: v.value for k, v in props.items()}

    def units(self) -> dict[str, tuple]:
        """ListUnits as {name: row}."""
        (rows,) = self.manager("ListUnits")
        return {row[0]: tuple(row) for row in rows}

    def has_owner(self, name: str = BUS_NAME) -> bool:
        (owned,) = self.ok(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            [name],
            destination="org.freedesktop.DBus",
        )
        return bool(owned)

    def add_match(self, rule: str) -> None:
        self.ok(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [rule],
            destination="org.freedesktop.DBus",
        )

    def wait(
        self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
    ) -> Any:
        """Like :func:`support.wait_for`, running the loop in between (signals keep arriving)."""
        return wait_for(predicate, timeout, what, step=lambda: self.pump(0.05))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bus.disconnect()
            self.pump(0.01)
        self.loop.close()


class DaemonEnv:
    """A private bus, an isolated installation and the ipacctd daemon serving them."""

    def __init__(self, tmp_path: Path, bus_config: str | None = None) -> None:
        self.tmp = tmp_path
        self.inst = Installation(tmp_path)
        self.bus = PrivateBus() if bus_config is None else PrivateBus(bus_config)
        self.address = self.bus.address
        # The CLI finds the daemon as the owner of org.ipacctd1 on the system bus: in the
        # tests, "the system bus" of the installation's CLI is this private bus.
        self.inst.env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp_path / "daemon.log"
        self.clients: list[Client] = []
        self._client: Client | None = None

    # -- the daemon ----------------------------------------------------------------------

    def start(self, *extra: str, timeout: float = 20.0, nofile_soft: int | None = None) -> None:
        """Start the daemon and wait until it owns its bus name (unless ``--no-bus`` is among
        ``extra``) and /metrics answers.

        ``nofile_soft`` starts it with that soft RLIMIT_NOFILE (as a login shell's 1,024).
        """
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.port = free_port()
        argv = [
            sys.executable,
            "-m",
            "ipacctd",
            "daemon",
            "--bus",
            self.address,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--poll-interval",
            "0.2",
            *extra,
        ]

        def limit() -> None:
            if nofile_soft is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=self.inst.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=limit,
            )
        on_bus = "--no-bus" not in extra  # --no-bus: /metrics alone tells it is up
        client = self.client

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if on_bus and not client.has_owner():
                return False
            try:
                self.scrape_text(timeout=2)
            except OSError:
                return False
            return True

        try:
            wait_for(ready, timeout, "the daemon to own org.ipacctd1 and serve /metrics", step=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon's log:\n{self.log()}") from None

    def kill9(self) -> None:
        """SIGKILL the daemon (by PID) and reap it."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the daemon (by PID); SIGKILL if it lingers."""
        if self.proc is not None:
            stop_process(self.proc)

    def sighup(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGHUP)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- clients -------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """A shared dbus-fast connection to the private bus."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self) -> Client:
        c = Client(self.address)
        self.clients.append(c)
        return c

    def scrape_text(self, timeout: float = 5.0) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        """/metrics as {(sample name, labels): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[tuple[str, frozenset], float] = {}
        for fam in text_string_to_metric_families(self.scrape_text()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def tool(
        self, argv: Sequence[str], as_nobody: bool = False, timeout: float = 15.0
    ) -> subprocess.CompletedProcess:
        """Run busctl/dbus-send/gdbus (as uid/gid 65534 when asked)."""
        prefix = (
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "SYSTEMD_COLORS": "0",
            "SYSTEMD_PAGER": "",
        }
        return subprocess.run(
            [*prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            cwd="/",
        )

    def gdbus_call(self, member: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
        """``gdbus call`` of a Manager method without arguments (GLib's client)."""
        return self.tool(
            ["gdbus", "call", f"--address={self.address}", "--dest", BUS_NAME,
             "--object-path", ROOT, "--method", f"{MANAGER}.{member}"],
            as_nobody=as_nobody,
        )  # fmt: skip

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        try:
            self.stop()
        except Exception as exc:
            errors.append(f"daemon: {exc!r}")
        for c in self.clients:
            c.close()
        try:
            self.inst.close()
        except Exception as exc:
            errors.append(f"installation: {exc!r}")
        self.bus.close()
        assert not errors, errors

    def __enter__(self) -> DaemonEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def egress_progs(fs: str) -> tuple[int, ...]:
    """The ids of the programs attached to cgroup ``fs``'s egress hook (PROG_QUERY)."""
    from ipacctd.bpf.links import open_cgroup, prog_query
    from ipacctd.bpf.types import AttachType

    fd = open_cgroup(fs)
    try:
        return prog_query(fd, AttachType.CGROUP_INET_EGRESS).prog_ids
    finally:
        os.close(fd)


def glob_unit(inst: Installation, service: str = "IPAddressDeny=198.51.100.1",
              unit: str = "") -> str:
    """The glob tests' unit file ``gb.unit``: ``ControlGroup=<ext>/gb-*`` with ``service``
    (and a ``[Unit]`` section's ``unit`` lines); ``<ext>``, a cgroup of the test's own made
    beside ipacctd's, is returned."""
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    head = f"[Unit]\n{unit}\n\n" if unit else ""
    with open(os.path.join(inst.unit_dir, "gb.unit"), "w") as f:
        f.write(f"{head}[Match]\nControlGroup={ext}/gb-*\n\n[Service]\n{service}\n")
    return ext

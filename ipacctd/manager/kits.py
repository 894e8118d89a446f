"""Kits made ahead by a helper process: binding a glob's thousands of cgroups on two CPUs.

A cgroup's binding (:meth:`Manager.attach_many`) is ~1.2 ms in the engine, of which the
kit — a fresh counters map, the denied-address log, and the two programs loaded on them
(:class:`~ipacctd.datapath.unit.Kit`) — is ~0.6 ms, nearly all of it the kernel's
(the verifier). For one policy bound to many cgroups the kits are all alike, so a helper
process makes them while the engine does the rest, and hands each over as its file
descriptors (SCM_RIGHTS). The engine takes a kit when one is ready and makes its own when
none is, so both CPUs load programs. Measured on this host's two CPUs
(bench/results-globbind.txt): ``Manager.attach_many`` of 1,000 cgroups, 1.01-1.11 ms a
cgroup alone, 0.52-0.61 ms with the helper; the daemon binding 10,000 cgroups of a glob,
13.1-16.7 s before it, 8.0-8.3 s with it (session 9's final runs). A thread in the daemon
was tried first and is slower than none (1.18-1.47 ms a cgroup, CPU 1.6-2.0 ms): the two
share the GIL and the daemon's address space.

The kits are made for the exact policy of the units they serve: the helper gets the
policy as the same canonical text a unit's record keeps (and rebuilds its programs from
after any restart), and the engine takes a kit only for a unit whose policy equals the one
the maker was started with (:meth:`KitMaker.take`). A kit is anonymous — file descriptors,
nothing pinned — so one never used, or a helper that dies, leaves nothing behind; the
engine then makes the kit itself, as without a helper. A helper never holds more than
``depth`` kits ahead of their use; it exits when its socket closes (the daemon closed it,
or died).

Protocol, on a SOCK_SEQPACKET socket pair (the helper: ``python -m ipacctd.manager.kits FD``
with this file's directory's package on its path):

* daemon → helper: first the policy, ``P`` + JSON (``{"allow": text, "deny": text,
  "accounting": bool, "audit": bool}``); then credits, one per byte of each later message
  (the first ``depth`` with the policy);
* helper → daemon: ``K`` with a kit's descriptors in :meth:`Kit.fds` order, once per
  credit; or ``E`` + a reason, when it cannot make them (then it exits).
"""

from __future__ import annotations

import array
import errno
import os
import socket
import subprocess
import sys

from ipacctd import jsontext
from ipacctd.datapath.unit import Kit, Spec
from ipacctd.manager.logs import LazyLogger
from ipacctd.policy.addresses import AddressList, format_network

log = LazyLogger(__name__)

#: Kits the helper makes ahead of their use: enough to cover the engine's pace between two
#: takes; at the end of a burst, at most these are made for nothing.
DEPTH = 4
#: Descriptors of one kit at most (counters, the log's hash and slots, two programs).
MAX_FDS = 5
#: How long :meth:`KitMaker.close` waits for the helper to exit before it ends it.
EXIT_WAIT = 2.0
#: The helper's nice value (see _idle_priority).
HELPER_NICE = 10


def _text(addresses: object) -> str:
    """An address list's canonical text (what a unit's record keeps)."""
    if isinstance(addresses, AddressList):
        return str(addresses)
    return " ".join(format_network(n) for n in addresses)  # type: ignore[attr-defined]


def crosses(spec: Spec) -> bool:
    """Whether kits of ``spec`` can cross processes: its lookups are inline (no table maps),
    which lists of at most INLINE_MAX networks in all are sure to be (so is the policy
    message small)."""
    from ipacctd.datapath.lookup import INLINE_MAX

    return len(spec.allow) + len(spec.deny) <= INLINE_MAX


def policy_message(spec: Spec) -> bytes:
    """The helper's policy message for ``spec`` (filters are attached by the engine)."""
    return b"P" + jsontext.dumps({
        "allow": _text(spec.allow), "deny": _text(spec.deny),
        "accounting": spec.accounting, "audit": spec.audit,
    }).encode()


def spec_from_message(msg: bytes) -> Spec:
    """The policy of a ``P`` message (the helper's side)."""
    if msg[:1] != b"P":
        raise ValueError("expected the policy first")
    data = jsontext.loads(msg[1:])
    return Spec(allow=AddressList.from_canonical(data["allow"], "IPAddressAllow"),
                deny=AddressList.from_canonical(data["deny"], "IPAddressDeny"),
                accounting=bool(data["accounting"]), audit=bool(data["audit"]))


class KitMaker:
    """A helper process making kits for ``spec`` (see the module's docstring)."""

    def __init__(self, spec: Spec, depth: int = DEPTH) -> None:
        self.spec = spec
        self.made = 0  # kits taken
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        try:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            # -I -S: nothing from the environment, the working directory or site decides
            # what the helper runs; it needs ipacctd and the standard library only.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c",
                 f"import sys; sys.path.insert(0, {root!r}); "
                 "from ipacctd.manager.kits import main; main()", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True)
            ours.send(policy_message(spec))
            ours.send(b"c" * depth)
        except BaseException:
            ours.close()  # a helper started gets EOF and exits: collected here
            self.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    @property
    def alive(self) -> bool:
        """Whether kits may still come (the helper has not failed or gone)."""
        return self.sock is not None

    def take(self, spec: Spec) -> Kit | None:
        """A kit for ``spec`` if one is ready now; None otherwise (another policy, none made
        yet, or the helper gone): the caller makes its own then."""
        if self.sock is None or spec != self.spec:
            return None
        try:
            msg, fds = receive(self.sock)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._give_up(f"its socket failed: {exc}")
            return None
        if msg[:1] != b"K":
            for fd in fds:
                os.close(fd)
            reason = msg[1:].decode(errors="replace") if msg[:1] == b"E" else \
                "it exited" if not msg else "it sent what is not a kit"
            self._give_up(reason)
            return None
        try:
            kit = Kit.from_fds(self.spec, fds)
        except (OSError, ValueError) as exc:  # BPFError is an OSError
            self._give_up(f"its kit was not one: {exc}")
            return None
        self.made += 1
        try:
            self.sock.send(b"c")
        except OSError:
            pass  # gone: the next take says so
        return kit

    def _give_up(self, reason: str) -> None:
        log.warning("the kit helper stopped after %d kits (%s); the engine makes its own",
                    self.made, reason)
        self.stop()

    def stop(self) -> None:
        """Close the socket — the helper makes no more and exits — and drop the kits made
        for nothing. Returns at once: :meth:`reap` or :meth:`close` collects the helper."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        sock.shutdown(socket.SHUT_WR)  # EOF to the helper
        for _ in range(DEPTH + 1):  # bounded: the helper made at most DEPTH ahead
            try:
                msg, fds = receive(sock)
            except OSError:
                break
            for fd in fds:
                os.close(fd)
            if not msg:
                break
        sock.close()

    def reap(self) -> bool:
        """Whether the helper has exited (collected then); stops it first."""
        self.stop()
        if self.proc is not None and self.proc.poll() is None:
            return False
        self.proc = None
        return True

    def close(self) -> None:
        """:meth:`stop`, then wait for the helper (ended by its PID after EXIT_WAIT)."""
        self.stop()
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> KitMaker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message of the helper's and the descriptors it carries, close-on-exec, without
    waiting: BlockingIOError when none is ready.

    Not ``socket.recv_fds``: CPython 3.11's drops its ``flags`` argument, so a take asked
    with MSG_DONTWAIT waited for the helper's next kit (420 µs a take measured, 22 µs of it
    CPU: the daemon's loop held while the helper at nice 10 waited for a CPU, and for good
    if it hung), and the descriptors it gave were inherited by the daemon's children."""
    fds = array.array("i")
    msg, ancdata, flags, _addr = sock.recvmsg(
        4096, socket.CMSG_LEN(MAX_FDS * fds.itemsize),
        socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):  # more than a kit: not the helper's
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EMSGSIZE, "a message larger than a kit")
    return msg, list(fds)


def main() -> None:
    """The helper: make kits for the policy it is sent, one per credit, until EOF; then exit
    without the interpreter's teardown (nothing is left to flush or close)."""
    try:
        _idle_priority()
        _serve(socket.socket(fileno=int(sys.argv[1])))
    finally:
        os._exit(0)


def _idle_priority() -> None:
    """Yield the CPU to everything else of normal priority (nice HELPER_NICE): the daemon's
    loop, the bus daemon, the host's services. Measured (bench/results-globbind.txt,
    10,000 cgroups, both CPUs busy): at nice 0 the bus's Ping took up to 134-160 ms; under
    SCHED_IDLE the helper, preempted inside the kernel's program loads, slowed the daemon's
    own (15-22 s); at nice 10, 10.1-10.5 s and a Ping max of 96-100 ms."""
    try:
        os.nice(HELPER_NICE)
    except OSError:
        pass


def _serve(sock: socket.socket) -> None:
    try:
        spec = spec_from_message(sock.recv(1 << 24))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sock.send(b"E" + f"no policy: {exc}".encode())
        return
    credits = 0
    while True:
        while credits == 0:
            got = sock.recv(4096)
            if not got:
                return  # the daemon closed its end (or died)
            credits += len(got)
        try:
            kit = Kit.build(spec)
        except Exception as exc:  # e.g. out of memory or locked memory: the engine's to see
            sock.send(b"E" + f"{type(exc).__name__}: {exc}".encode())
            return
        try:
            if not kit.portable:
                sock.send(b"E" + b"the policy's lookups need table maps")
                return
            socket.send_fds(sock, [b"K"], kit.fds())
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            kit.close()
        credits -= 1


if __name__ == "__main__":
    main()

"""``ipacctd daemon``: the asyncio service tying registry, D-Bus, metrics and watchers.

At start it rebuilds its view from the kernel pins and the metadata files (units made by
the CLI while it was down appear; nothing is lost), binds the unit files to live cgroups,
then polls counters every interval and announces changes. SIGHUP reloads the unit files;
SIGTERM/SIGINT stop the daemon — counting and enforcement go on in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import time
from collections.abc import Callable

from dbus_fast import DBusError, RequestNameReply
from dbus_fast.aio import MessageBus

from ipacctd import __version__, cgroup
from ipacctd.daemon import metrics, runtime
from ipacctd.daemon.binder import Binder
from ipacctd.daemon.bus import BusService
from ipacctd.daemon.config import DaemonConfig
from ipacctd.daemon.contract import BUS_NAME, open_bus, read_runtime, runtime_alive
from ipacctd.daemon.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from ipacctd.daemon.registry import Registry
from ipacctd.errors import Busy, Error, NotFound, NotSupported, PermissionDenied
from ipacctd.journal import setup_logging
from ipacctd.manager.engine import Manager
from ipacctd.manager.store import SUFFIX

log = logging.getLogger("ipacctd.daemon")

STATE_EVERY = 5  # re-check active states every this many polls
DEBOUNCE = 0.05
# At most this many units named by the events of one settle are read one by one; more (a
# burst of changes) get the full pass, which reads only the records whose time changed.
SETTLE_RECORDS = 256
# Events that say a watched directory is gone (its watch with it): nothing it names is
# known any more.
WATCH_GONE = IN_DELETE_SELF | IN_IGNORED
# Binding a glob's matches runs in slices of about this long, the loop serving D-Bus and
# metrics between them (thousands of cgroups made at once would block it for seconds).
BIND_SLICE = 0.03


class Daemon:
    """One running daemon."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.manager = Manager(config.paths)
        self.registry = Registry(self.manager)
        self.binder = Binder(self.manager, self._current_units, self.registry.bound)
        self.bus: MessageBus | None = None
        self.service: BusService | None = None
        self.http: metrics.MetricsServer | None = None
        self.inotify: Inotify | None = None
        self.stopping = asyncio.Event()
        self._pending: asyncio.Handle | None = None
        self._binding: asyncio.Handle | None = None  # the next slice of pending bindings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rebind = False
        # The cgroups made in the watched directories since the binder's last pass, when
        # the events named every change there (None: a full pass is due — anything else
        # happened, events were lost, or no pass followed the watches yet).
        self._made: set[str] | None = None
        # The units whose records the state directory's events named since the last settle
        # (None: a full pass is due — the queue overflowed, or the directory itself went).
        self._records: set[str] | None = set()
        self._reported: dict[str, str] = {}  # unit → enforcement problem last logged
        self._lock_fd: int | None = None
        self._pins_fd: int | None = None
        # When gc() has work at the earliest: no unit's retention ends before, unless a
        # unit is new or changed (the registry says so), which makes gc() look again.
        self._gc_next: float | None = None
        self.registry.listeners.append(self._on_unit_event)

    def _current_units(self) -> list:
        """Every unit as recorded now: the registry, brought up to date (a stat per unit;
        only changed metadata files are read again)."""
        self.registry.sync()
        return [entry.status.unit for entry in self.registry.units.values()]

    async def start(self) -> None:
        """Claim the installation, rebuild state, connect to D-Bus, serve metrics, watch."""
        self._loop = asyncio.get_running_loop()
        self._claim()
        self._own_leaf()
        self.manager.store.ensure_dirs()
        self._repair_at_start()
        self.binder.load()
        try:  # an engine failure here is logged, and the next pass (inotify, reload) retries
            self.binder.reconcile()
        except Error as exc:
            log.error("binding unit files: %s", exc)
        self.registry.sync()
        # Every unit's status was read just now, enforcement included: check and repair
        # from it rather than asking the kernel about each unit's links a second time
        # (a quarter of the start-up's CPU at 10,000 units).
        self.check_enforcement(list(self.registry.units), just_read=True)
        if self.config.bus:  # bus = "" (--no-bus): /metrics and unit files alone
            self.bus = await self._connect()
            self.service = BusService(
                self.bus, self.registry, __version__, self.config.poll_interval, self.reload
            )
            try:
                reply = await self.bus.request_name(BUS_NAME)
            except DBusError as exc:  # the bus policy (contrib/dbus) is not installed/loaded
                raise PermissionDenied(
                    f"the D-Bus name {BUS_NAME} on the {self.config.bus} bus "
                    f"is refused to us: {exc}"
                ) from None
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise Error(
                    f"the D-Bus name {BUS_NAME} is taken: is another ipacctd daemon running?"
                )
        addr = self.config.listen_address
        if addr is not None:
            units = metrics.UnitCollector(
                self.registry, self.config.program_stats, asyncio.get_running_loop()
            )
            self.http = metrics.serve(units, *addr)
        self._start_watching()
        self._write_runtime_file()
        # What start-up made lives as long as the daemon (a status, unit and paths per
        # unit): out of the cyclic collector's sight, which otherwise walks all of it at
        # every full collection (0.1-0.2 s at 10,000 units, at random moments: a poll, a
        # GetCounters, a scrape). What comes later is collected as usual.
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info(
            "ipacctd %s: %d units in %s, D-Bus %s, metrics %s, cgroups under %s",
            __version__,
            len(self.registry.units),
            self.manager.config.state_dir,
            f"{BUS_NAME} on {self.config.bus}" if self.config.bus else "off",
            self.config.listen or "off",
            self.manager.config.cgroup_root,
        )

    def _repair_at_start(self) -> None:
        """Finish what a crashed ipacctd left half done (policy changes, removals), from
        every unit's status read once: only the units whose status shows something to
        repair (:func:`recovery.due`) are reconciled and read again. Reconciling every unit
        asked the kernel the same questions as its status does, doubling the start-up
        (~0.5 ms a unit). Datapaths half built by a crashed creator are swept first, so that
        no status reads them."""
        from ipacctd.manager import recovery

        try:
            self.manager.reconcile(only=())  # the sweep alone
        except Error as exc:
            log.error("reconciling units: %s", exc)
        self.registry.sync()
        due = [n for n, e in self.registry.units.items() if recovery.due(e.status)]
        if not due:
            return
        try:
            repaired = self.manager.reconcile(only=due)
            if repaired:
                log.warning("repaired after a crash: %s", ", ".join(repaired))
        except Error as exc:
            log.error("reconciling units: %s", exc)
        for name in due:  # as they are now (gone, repaired, or still not in force)
            self.registry.refresh(name)
        self.registry.sync()  # units a repair removed or made

    def _claim(self) -> None:
        """Take the installation's daemon lock for our whole life, before touching any
        unit: a second daemon on the same state directory stops here, having changed
        nothing (no reconcile, no GC, no runtime file written or removed)."""
        state = self.manager.config.state_dir
        try:
            os.makedirs(state, mode=0o755, exist_ok=True)
            fd = os.open(
                self.manager.config.daemon_lock_path,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except PermissionError as exc:
            raise PermissionDenied(f"cannot open {exc.filename or state}: run as root") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_runtime(self.manager.config.runtime_file)
            who = f" (pid {holder['pid']})" if holder and runtime_alive(holder) else ""
            raise Busy(
                f"another ipacctd daemon{who} serves {state} already: refusing to "
                "start a second one on the same state directory"
            ) from None
        self._lock_fd = fd
        # The pins are per installation too: a daemon with another state directory but the
        # same pin directory would garbage-collect units it does not know. bpffs directories
        # take an flock like any file.
        bpf_dir = self.manager.config.bpf_dir
        try:
            os.makedirs(bpf_dir, mode=0o700, exist_ok=True)
            pfd = os.open(bpf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return  # no bpffs here: units are unenforced, nothing of another daemon's to lose
        try:
            fcntl.flock(pfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(pfd)
            raise Busy(
                f"another ipacctd daemon uses the pin directory {bpf_dir} (with another "
                "state directory): refusing to start a second one on it"
            ) from None
        self._pins_fd = pfd

    def _own_leaf(self) -> None:
        """Under systemd with our units in our own delegated service cgroup, move this
        process into the leaf ``<service>/daemon`` (the no-internal-process rule)."""
        root = self.manager.config.cgroup_root
        own = cgroup.own_cgroup()
        if cgroup.service_cgroup(own) != root or own != root:
            return  # not in the delegated cgroup our units live in (or in the leaf already)
        try:
            leaf = cgroup.move_self_to_leaf(root)
        except (Error, OSError) as exc:
            log.warning("cannot move into a leaf cgroup of %s: %s", root, exc)
            return
        log.info("delegated cgroup %s: units below it, the daemon in %s", root, leaf)

    async def _connect(self) -> MessageBus:
        bus = self.config.bus
        try:
            return await open_bus(bus)
        except (OSError, ValueError) as exc:
            raise NotSupported(f"cannot connect to the D-Bus {bus} bus: {exc}") from exc

    def _start_watching(self) -> None:
        self.inotify = Inotify()
        self.inotify.watch(self.manager.config.units_dir)
        self._watch_unit_dirs()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.inotify.fd, self._on_inotify)
        # A cgroup made between the start's pass and these watches was seen by neither: a
        # full pass now that they are in place.
        self._made, self._rebind = None, True
        if self._pending is None:
            self._pending = loop.call_soon(self._settle)

    def _watch_unit_dirs(self) -> None:
        assert self.inotify is not None
        for path in self.binder.watch_dirs():
            self.inotify.watch(path)

    def _on_inotify(self) -> None:
        assert self.inotify is not None
        units_dir = self.manager.config.units_dir
        made: set[str] = set()
        gone: set[str] = set()
        for path, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW or (path == units_dir and (not name or mask & WATCH_GONE)):
                self._records = None  # events were lost, or the directory went: read all
            elif path == units_dir:
                if self._records is not None and name.endswith(SUFFIX) and name[0] != ".":
                    self._records.add(name[: -len(SUFFIX)])  # (temporary files: ".*")
                continue
            if path != units_dir:
                self._rebind = True
                if mask & IN_CREATE and mask & IN_ISDIR and name:  # a cgroup made
                    made.add(os.path.join(path, name))
                elif mask & IN_DELETE and name:  # a cgroup removed (its unit's exit below)
                    gone.add(os.path.join(path, name))
                else:  # anything else (a rename, a watched directory gone, lost events)
                    self._made = None
        if self._made is not None:
            self._made |= made  # the binder's next pass binds these alone
        if made or gone:
            # A cgroup made at a unit's path: re-bind now, without the debounce (every
            # moment unbound is a moment unfiltered). The settle below binds new matches.
            # One removed: its unit turns inactive, its exit recorded.
            self.check_enforcement(self.registry.units_at(made | gone))
        if self._pending is None:  # coalesce bursts (a CLI writes temp file + rename)
            self._pending = asyncio.get_running_loop().call_later(DEBOUNCE, self._settle)

    def _settle(self) -> None:
        self._pending = None
        # While slices of bindings are pending the binder's list stands: the last slice
        # settles, and the pass then takes what was made meanwhile.
        if self.binder.full_due:  # the cgroups made held one only a full pass can judge
            self._rebind, self._made = True, None
        if self._rebind and not self.binder.busy:
            self._rebind = False
            made, self._made = self._made, set()
            if made is None or not self._bind_made(made) or (
                    self.binder.full_due and not self.binder.busy):
                self._bind_and_watch()  # (one due while slices are left: after the last)
        if self.binder.busy:
            # A binding under way writes a record per unit, each an event here: the passes
            # over every unit wait for its last slice (which settles), or they would run
            # once per slice, each as long as a slice at ten thousand units.
            return
        records, self._records = self._records, set()
        if records is not None and len(records) <= SETTLE_RECORDS:
            # The units the events named: a CLI's change reads one unit again, not all
            # (a full pass lists both directories and stats every record: ~50 ms of the
            # loop at 10,000 units, after every change anyone made).
            self.registry.sync_names(sorted(records))
        else:
            self.registry.sync()
        self.check_enforcement(self.registry.enforcement_due())

    def _bind_and_watch(self) -> None:
        """Watch first, then bind: a cgroup made before its directory is watched is found
        by the binder's scan, one made after by the watch. Binding can make directories
        worth watching appear (a parent made later): repeat while the watches grow."""
        for _ in range(4):  # bounded: each round adds at least one level of watches
            before = set(self.inotify.wds) if self.inotify is not None else set()
            if self.inotify is not None:
                self._watch_unit_dirs()
            try:
                with self.registry.held():  # the units' signals after the slice
                    self.binder.reconcile(BIND_SLICE)
            except Error as exc:
                log.error("binding unit files: %s", exc)
            self._bind_later()
            if self.inotify is None:
                return
            self._watch_unit_dirs()
            if set(self.inotify.wds) <= before:
                return

    def _bind_made(self, made: set[str]) -> bool:
        """The binder's pass for the cgroups ``made`` alone (:meth:`Binder.reconcile_made`);
        False where a full pass is to be made instead (none made yet)."""
        if not made:
            return True
        try:
            with self.registry.held():  # the units' signals after the slice
                if self.binder.reconcile_made(made, BIND_SLICE) is None:
                    return False
        except Error as exc:
            log.error("binding unit files: %s", exc)
        self._bind_later()
        return True

    def _bind_later(self) -> None:
        """Bind the binder's pending matches slice by slice, the loop serving between (also
        when called from a D-Bus Reload's worker thread)."""
        if self.binder.busy and self._binding is None and self._loop is not None:
            self._binding = self._loop.call_soon_threadsafe(self._bind_after_io)

    def _bind_after_io(self) -> None:
        # A timer due now runs after the I/O the loop's next poll finds, where a handle
        # queued now would run before it: a D-Bus call waits for one slice, not two.
        assert self._loop is not None
        self._binding = self._loop.call_later(0, self._bind_slice)

    def _bind_slice(self) -> None:
        self._binding = None
        try:
            with self.registry.held():  # the units' signals after the slice, back to back
                self.binder.bind_pending(BIND_SLICE)
        except Error as exc:
            log.error("binding unit files: %s", exc)
        if self.binder.busy:
            self._bind_later()
            return
        if self._pending is None:  # the settle the slices held back (a full pass if needed)
            assert self._loop is not None
            self._pending = self._loop.call_later(0, self._settle)

    def reload(self) -> None:
        """Re-read the unit files, re-bind, and repair every unit whose policy is not in
        force on the cgroup now at its path (SIGHUP, D-Bus Reload, ``ipacctd reload``).
        New matches of a glob beyond one slice are bound after it returns, slice by slice
        on the loop (as those of an inotify event are)."""
        log.info("reloading unit files from %s", self.manager.config.unit_dir)
        self.binder.load()
        self._bind_and_watch()
        try:
            repaired = self.manager.reconcile()
            if repaired:
                log.warning("repaired on reload: %s", ", ".join(repaired))
        except Error as exc:
            log.error("reconciling units: %s", exc)
        self.registry.sync()
        self.check_enforcement(list(self.registry.units))

    def check_enforcement(self, names: list[str], just_read: bool = False) -> list[str]:
        """Verify that each named unit's recorded policy is in force on the cgroup now at
        its path, repair it where not (re-bind, rebuild lost pins), and report what stays
        unenforced: the status (D-Bus, metrics) at once, the log at ERROR once per change.
        ``just_read``: the units' statuses were read a moment ago; their enforcement is
        taken from them (a unit found wrong is asked about again before any repair).
        Returns the units repaired."""
        repaired = []
        for gone in set(self._reported) - set(self.registry.units):
            del self._reported[gone]  # a later unit of that name is reported afresh
        for name in names:
            entry = self.registry.units.get(name)
            if entry is None:
                continue
            if entry.status.broken is not None:  # its policy is unknown: nothing to repair
                self._report(name, entry.status.enforcement)  # but say it is not in force
                continue
            try:
                unit = entry.status.unit  # as last read: parsing metadata costs more
                enf = (
                    entry.status.enforcement
                    if just_read
                    else self.registry.lister.enforcement(name, unit)
                )
                if enf.alarming or enf.disarmed:  # be sure, with the metadata as it is now
                    unit = self.manager.unit(name)
                    enf = self.manager.enforcement(name, unit)
                if (enf.alarming or enf.disarmed) and unit.enforced:
                    if self.manager.reconcile(name):  # waits for the lock: a CLI's change
                        repaired.append(name)  # in flight completes first
                        self.registry.reader.forget(name)  # the counters map may be new
                    enf = self.manager.enforcement(name)
                elif not enf.live and not unit.transient and unit.exited_at is None:
                    self.manager.record_exit(name, 0)  # an attached unit's cgroup vanished
            except NotFound:
                continue
            except Error as exc:
                log.error("unit %s: cannot check or repair its firewall: %s", name, exc)
                enf = None
            self._report(name, enf)
            old = entry.status.enforcement
            if (
                enf is None
                or name in repaired
                or (enf.enforced, enf.problem, enf.live) != (old.enforced, old.problem, old.live)
            ):
                self.registry.refresh(name)
            elif name in self.registry.units and not just_read:  # (read with the status)
                self.registry.units[name].identity = self.registry.identity(
                    name, entry.status.unit.cgroup
                )
        if repaired:
            log.warning("repaired: %s", ", ".join(repaired))
        return repaired

    def _report(self, name: str, enf) -> None:
        """Log a unit's enforcement at ERROR when it turns (or stays, with another cause)
        not enforced on a live cgroup, and once when it is in force again."""
        problem = enf.problem if enf is not None and (enf.alarming or enf.disarmed) else ""
        before = self._reported.get(name, "")
        if problem == before:
            return
        if problem:
            log.error("unit %s: firewall NOT ENFORCED on its live cgroup: %s", name, problem)
            self._reported[name] = problem
        else:
            log.warning("unit %s: firewall in force again", name)
            self._reported.pop(name, None)

    def _on_unit_event(self, event: str, name: str, entry) -> None:
        if event != "counters":
            self._gc_next = None

    def gc(self, now: float | None = None) -> list[str]:
        """Forget inactive units whose retention time has passed.

        Not a unit systemd arms: it is bound to the service, not to one run's cgroup, and
        its drop-in arms every later start; forgetting it would let the next start run
        without the firewall. It stays (counting on across runs) until detached or its
        unit file goes.

        The units are looked through only when one's retention may have ended (or a unit
        came or changed since): at 10,000 units the walk cost 30 ms every state poll."""
        now = time.time() if now is None else now
        if self._gc_next is not None and now < self._gc_next:
            return []
        removed = []
        next_due = float("inf")
        for name, entry in list(self.registry.units.items()):
            st = entry.status
            ended = st.unit.exited_at
            if st.active_state == "active" or ended is None:
                continue
            if st.unit.systemd_service is not None and st.unit.enforced:
                continue  # armed by systemd: kept across the service's stops (see below)
            next_due = min(next_due, ended + self.config.retention)
            if now - ended >= self.config.retention:
                try:
                    if st.unit.transient:
                        self.manager.reset(name)
                    else:
                        self.manager.detach(name)
                    removed.append(name)
                except Error as exc:
                    log.error("gc of %s: %s", name, exc)
        self._gc_next = next_due if not removed else None  # removals: look again next time
        if removed:
            log.info("retention over, removed: %s", ", ".join(removed))
            self.registry.sync()
        return removed

    def poll(self, cycle: int) -> list[str]:
        """One poll: enforcement (cheap identity checks, repair where needed) and counters
        always, states every few cycles. Returns the units whose counters changed."""
        return [step() for step in self._poll_steps(cycle)][1]

    def _poll_steps(self, cycle: int) -> list[Callable[[], object]]:
        """The steps of one poll, each complete in itself: :meth:`run` lets the bus and
        /metrics in between them, so that a call waits for one step, not a whole poll (at
        10,000 units a poll took ~100 ms, and GetCounters waited for it)."""
        steps: list[Callable[[], object]] = [
            lambda: self.check_enforcement(self.registry.enforcement_due()),
            self._poll_counters,
        ]
        if cycle % STATE_EVERY == 0:
            steps += [self.registry.poll_states, self.gc]
        steps.append(self.binder.tick)  # stops an idle kit helper
        return steps

    def _poll_counters(self) -> list[str]:
        changed = self.registry.poll_counters()
        if self.service is not None:
            self.service.counters_changed(changed)
        return changed

    async def run(self) -> None:
        """Poll until asked to stop."""
        cycle = 0
        while not self.stopping.is_set():
            cycle += 1
            for step in self._poll_steps(cycle):
                try:
                    step()
                except (Error, OSError) as exc:  # a unit vanishing mid-poll must not end us
                    log.error("poll: %s", exc)
                await asyncio.sleep(0)  # D-Bus calls and events queued meanwhile
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.poll_interval)

    async def close(self) -> None:
        """Stop serving; the kernel keeps counting and enforcing."""
        if self._binding is not None:
            self._binding.cancel()
        self.binder.close()
        if self.http is not None:  # its thread waits up to 0.5 s to see the shutdown
            await asyncio.get_running_loop().run_in_executor(None, self.http.close)
        if self.inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.inotify.fd)
            self.inotify.close()
        if self.bus is not None:
            self.bus.disconnect()
        self.registry.close()
        if self._lock_fd is not None:  # only the lock holder's file is ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.runtime_file)
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._pins_fd is not None:
            os.close(self._pins_fd)
            self._pins_fd = None

    @property
    def runtime_file(self) -> str:
        return self.manager.config.runtime_file

    def _write_runtime_file(self) -> None:
        runtime.write(
            self.runtime_file,
            {"bus": self.config.bus, "listen": self.config.listen, "version": __version__},
        )


async def serve(config: DaemonConfig) -> None:
    """Run a daemon until SIGTERM/SIGINT."""
    daemon = Daemon(config)
    started = False
    try:
        await daemon.start()
        started = True
        await daemon.run()
    finally:
        await daemon.close()
        if started:  # a start that failed says why instead (the CLI prints the error)
            log.info("ipacctd stopped; its units keep counting and enforcing in the kernel")


#: The fd limit the daemon asks for (the systemd unit's LimitNOFILE=): a counters-map fd
#: a unit, and while BPF statistics are on two program fds a unit for /metrics.
WANT_NOFILE = 65536


def raise_fd_limit() -> None:
    """Lift RLIMIT_NOFILE: the daemon keeps one counters-map fd open per unit (and two
    program fds a unit while BPF statistics are on), and a shell's usual soft limit of
    1,024 would make the counters of units beyond it unreadable. The soft limit goes to
    the hard one, and both to :data:`WANT_NOFILE` where the hard one is lower and we may
    raise it (root); the systemd unit sets LimitNOFILE= itself."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < WANT_NOFILE:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANT_NOFILE, WANT_NOFILE))
            return
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_malloc() -> None:
    """Keep glibc's heap from holding on to what a scrape or a DescribeUnits of 10,000 units
    allocated for a moment (megabytes of strings): one arena besides the main one for the
    server threads (each thread's own arena kept its peak), and blocks of 128 KiB and more
    from mmap, returned at free (glibc raises that threshold as large blocks are freed,
    after which they stay in the heap). bench/daemon.py at 10,000 units: RSS after the
    scrapes MB lower (bench/results-daemon.txt). Not glibc (no mallopt): nothing to do."""
    from ipacctd.libc import libc

    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return
    for param, value in (
        (M_ARENA_MAX, 2),
        (M_MMAP_THRESHOLD, 128 << 10),
        (M_TRIM_THRESHOLD, 256 << 10),
    ):
        mallopt(param, value)


M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def main(config: DaemonConfig) -> int:
    """Entry point of ``ipacctd daemon``. Under systemd its lines reach the journal at their
    priority (``ipacctd.journal``); an ipacctd error ends it through the CLI's one-line
    message and exit code, anything unexpected is logged as critical with its traceback."""
    setup_logging()
    raise_fd_limit()
    tune_malloc()
    try:
        asyncio.run(serve(config))
    except (Error, OSError):
        raise
    except Exception:
        log.critical("ipacctd daemon failed", exc_info=True)
        return 1
    return 0

"""systemd services armed by systemd itself: a runtime drop-in names ipacctd's pinned programs.

A service's cgroup is made again at every start (``systemctl restart``, ``Restart=always``),
and its first process runs at once. ipacctd cannot win that race from outside, so it hands
the programs to the one that makes the cgroup: for a unit bound to a systemd service,
ipacctd pins the unit's two programs (``prog_ingress``/``prog_egress`` in its pin directory;
they count into the unit's own counters map, so counting carries on across restarts) and
writes::

    /run/systemd/system/NAME.service.d/50-ipacctd.conf
        [Service]
        IPIngressFilterPath=<pin dir>/prog_ingress
        IPEgressFilterPath=<pin dir>/prog_egress

then ``systemctl daemon-reload``. systemd (verified on 252) then attaches the pinned
programs (BPF_PROG_ATTACH, BPF_F_ALLOW_MULTI) to the service's cgroup at every start,
before it forks the first process, and — at that daemon-reload — to the running cgroup
too. So ipacctd makes no links of its own for such a unit: systemd's attachment is the
only one, and no packet is counted twice. Removing the drop-in and reloading makes systemd
detach them from the running cgroup (also verified). ``systemctl set-property`` refuses
these two properties in 252, hence the drop-in; ``/run`` makes it vanish at reboot, with
the pins (bpffs) it names.

Which cgroups: systemd is PID 1 (``/run/systemd/system`` exists, as ``sd_booted(3)``
checks), the cgroup's last component is ``NAME.service``, and either systemd reports
exactly that cgroup as ``NAME.service``'s ``ControlGroup`` (a running service), or — a
service that is not running has no cgroup, and systemd reports its ``ControlGroup`` empty —
``NAME.service`` is loaded (``LoadState=loaded``: a unit file exists, it is not masked) and
the cgroup its ``Slice=`` gives it is exactly that path (``a-b.slice`` is
``/a.slice/a-b.slice``, ``-.slice`` the root, as systemd's ``cg_slice_to_path()`` builds
it: the place where its next start makes the cgroup). Such a service is armed at once,
before its cgroup exists, so that its FIRST start is enforced before its first instruction
too — with or without the daemon. A path that names no loaded service is not one: it
stays "does not exist". A ``.scope`` is not armed this way: systemd
makes a scope around processes that exist already (``systemd-run --scope``, a container
runtime, a login session), never starts it again, and a new scope has a new name — there
is no later start to arm, and ipacctd's own links hold its programs for its whole life.
"""

from __future__ import annotations

import contextlib
import os

from ipacctd.errors import AlreadyExists, Error, NotSupported

#: Where systemd reads runtime unit files and drop-ins (gone at reboot, as the pins are).
RUNTIME_DIR = "/run/systemd/system"
DROPIN = "50-ipacctd.conf"
#: The systemctl to run; a test points it at a wrapper to make daemon-reload fail.
ENV_SYSTEMCTL = "IPACCTD_SYSTEMCTL"
#: daemon-reload re-reads every unit; generous, a busy host may take seconds.
TIMEOUT = 120.0


def booted() -> bool:
    """True when systemd is PID 1 of this host (its runtime unit directory exists)."""
    return os.path.isdir(RUNTIME_DIR)


def service_for(cgroup_rel: str) -> str | None:
    """``NAME.service`` when the cgroup at ``cgroup_rel`` (relative to the cgroup2 root) is a
    systemd service's own cgroup on this host; None otherwise."""
    rel = cgroup_rel.rstrip("/")
    name = rel.rsplit("/", 1)[-1]
    if not name.endswith(".service") or not booted():
        return None
    try:  # (--value would print in systemd's order, not ours: parse KEY=VALUE)
        out = _systemctl("show", "-p", "ControlGroup,Slice,LoadState", "--", name)
    except Error:
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    group = props.get("ControlGroup", "")
    if group:  # running (or its cgroup still being emptied): systemd says where
        return name if group == rel else None
    if props.get("LoadState") != "loaded" or not props.get("Slice"):
        return None
    return name if f"{slice_path(props['Slice'])}/{name}" == rel else None


def slice_path(slice_name: str) -> str:
    """The cgroup (relative to the cgroup2 root, no trailing slash; "" for ``-.slice``)
    systemd makes for a slice: each dash-separated prefix is a parent slice, as
    ``cg_slice_to_path()`` builds it (``a-b.slice`` → ``/a.slice/a-b.slice``)."""
    stem = slice_name.removesuffix(".slice")
    if stem in ("", "-"):
        return ""
    parts = stem.split("-")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def dropin_path(service: str) -> str:
    """The runtime drop-in ipacctd owns for ``service``."""
    return os.path.join(RUNTIME_DIR, f"{service}.d", DROPIN)


def dropin_text(unit: str, pin_dir: str, ingress: tuple[str, ...], egress: tuple[str, ...]) -> str:
    """The drop-in: ipacctd's programs first, then the unit's own filter programs."""
    lines = [
        f"# Written by ipacctd for its unit {unit} (pins in {pin_dir}).",
        "# systemd attaches these programs at every start of the service, before its first",
        f"# process runs. Remove with: ipacctd detach {unit}",
        "[Service]",
        *(f"IPIngressFilterPath={p}" for p in ingress),
        *(f"IPEgressFilterPath={p}" for p in egress),
    ]
    return "\n".join(lines) + "\n"


def owner_line(unit: str, pin_dir: str) -> str:
    """The first line of the drop-in: whose it is."""
    return dropin_text(unit, pin_dir, (), ()).splitlines()[0]


def arm(service: str, text: str) -> str | None:
    """Install the drop-in for ``service`` and daemon-reload; returns the text it replaced
    (None: there was none). On failure the previous drop-in is back (and reloaded) and an
    Error says what failed."""
    path = dropin_path(service)
    previous = read(service)
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _write(path, text)
    except OSError as exc:
        raise Error(f"cannot write the systemd drop-in {path}: {exc.strerror}") from None
    try:
        daemon_reload()
    except BaseException:
        restore(service, previous)
        raise
    return previous


def disarm(service: str) -> None:
    """Remove the drop-in and daemon-reload (systemd then detaches the programs from the
    running cgroup, and no later start attaches them). On a failed reload the drop-in is
    put back, so what systemd does and what is on disk stay the same."""
    previous = read(service)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dropin_path(service))
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(dropin_path(service)))  # only when empty
    try:
        daemon_reload()
    except BaseException:
        if previous is not None:
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(dropin_path(service)), mode=0o755, exist_ok=True)
                _write(dropin_path(service), previous)
        raise


def restore(service: str, previous: str | None) -> None:
    """Best effort: put back the drop-in that was there (or none), and reload."""
    path = dropin_path(service)
    with contextlib.suppress(OSError):
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))
        else:
            _write(path, previous)
    with contextlib.suppress(Error):
        daemon_reload()


def read(service: str) -> str | None:
    """The drop-in's text, or None when there is none."""
    try:
        with open(dropin_path(service), encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):  # no drop-in (nor its directory)
        return None
    except OSError as exc:
        raise Error(f"cannot read {dropin_path(service)}: {exc.strerror}") from None


def check_owner(service: str, unit: str, pin_dir: str) -> None:
    """Refuse a service another ipacctd unit (or installation) has armed already."""
    text = read(service)
    if text is not None and not text.startswith(owner_line(unit, pin_dir)):
        first = text.splitlines()[0] if text else "(empty)"
        raise AlreadyExists(
            f"{service} is armed already by {dropin_path(service)} "
            f"({first.lstrip('# ')}); detach that unit first"
        )


def daemon_reload() -> None:
    """``systemctl daemon-reload``; an Error with systemctl's message when it fails."""
    _systemctl("daemon-reload")


def _systemctl(*args: str) -> str:
    # Imported here: only arming a systemd service runs systemctl, and subprocess (with
    # threading, selectors, ...) would weigh on every CLI command's start-up.
    import shutil
    import subprocess

    exe = os.environ.get(ENV_SYSTEMCTL) or shutil.which("systemctl")
    if not exe:
        raise NotSupported("systemctl not found: cannot tell systemd to attach the programs")
    try:
        res = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Error(f"systemctl {' '.join(args)} failed: {exc}") from None
    if res.returncode != 0:
        why = res.stderr.strip() or res.stdout.strip() or f"exit status {res.returncode}"
        raise Error(f"systemctl {' '.join(args)} failed: {why}")
    return res.stdout


def _write(path: str, text: str) -> None:
    """Write atomically (temporary file, fsync, rename): systemd never reads half of it."""
    tmp = f"{path}.~{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

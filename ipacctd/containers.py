"""Containers: who a container cgroup belongs to, and the unit name people will know it by.

A container engine puts each container in a cgroup whose last component carries the
container's 64-hex id (podman with cgroupfs: ``/libpod_parent/libpod-<id>``; with systemd:
``…/libpod-<id>.scope``; docker ``…/docker-<id>.scope`` or ``/docker/<id>``; CRI-O
``…/crio-<id>.scope``; containerd ``…/cri-containerd-<id>.scope``). The id alone is what
the cgroup tells; the name comes from, in this order:

1. the OCI state's annotations (what an OCI hook is given on stdin): CRI-O and containerd's
   CRI plugin put the Kubernetes container and pod names there, nerdctl its own name, and
   anyone may set ``org.ipacctd.container.name`` (``podman run --annotation …``);
2. podman's ``conmon``, whose command line carries ``-c <id>`` and ``-n <name>`` (podman
   4.x passes no name to the runtime): the OCI hook's grandparent, or found in ``/proc``.

A container unit is named ``<engine>-<name>-<short id>.service`` (``podman-web-5522d0d1ae87``),
or ``<engine>-<short id>.service`` when no name is known. The OCI hook and the daemon's
binder derive it the same way, so one container gets one unit; the binder also prefers the
name a unit already recorded for that container id.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ipacctd.policy.names import validate_unit_name

#: Last cgroup component of a container → (engine prefix in the cgroup name, id).
_CGROUP_NAME = re.compile(r"(?:(libpod|docker|crio|cri-containerd)-)?([0-9a-f]{64})(?:\.scope)?")
#: Engine prefix in the cgroup name → engine shown in unit names.
_ENGINES = {"libpod": "podman", "docker": "docker", "crio": "crio", "cri-containerd": "containerd"}
#: Parent directories that name the engine of bare ``<id>`` cgroups (docker with cgroupfs).
_PARENT_ENGINES = {"docker": "docker", "libpod_parent": "podman"}

#: Annotations holding a container's name, most specific first.
NAME_ANNOTATIONS = (
    "org.ipacctd.container.name",  # set by the user: always wins
    "io.kubernetes.cri-o.ContainerName",  # CRI-O (k8s_<container>_<pod>_…)
    "io.kubernetes.container.name",  # CRI-O, Kubernetes' container name
    "io.kubernetes.cri.container-name",  # containerd's CRI plugin
    "nerdctl/name",  # nerdctl
    "io.podman.annotations.name",
)
#: Annotations holding the pod's name.
POD_ANNOTATIONS = ("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name")
#: Annotation values → engine (when the cgroup name does not tell).
_MANAGER_ANNOTATION = {"libpod": "podman", "cri-o": "crio"}

SHORT_ID = 12
MAX_NAME = 100  # characters of the container name kept in a unit name
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ContainerInfo:
    """What ipacctd records about the container behind a unit (in its metadata)."""

    engine: str  # podman, docker, crio, containerd, or "container" when unknown
    id: str  # the full 64-hex id
    name: str | None = None
    pod: str | None = None

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    def unit_name(self) -> str:
        """``podman-web-5522d0d1ae87.service`` (``podman-5522d0d1ae87.service`` unnamed)."""
        parts = [self.engine]
        if self.name:
            parts.append(_UNSAFE.sub("_", self.name)[:MAX_NAME].lstrip(".-_") or "_")
        parts.append(self.short_id)
        return validate_unit_name("-".join(parts))

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "id": self.id, "name": self.name, "pod": self.pod}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> ContainerInfo | None:
        if not d:
            return None
        return cls(
            engine=d.get("engine", "container"), id=d["id"], name=d.get("name"), pod=d.get("pod")
        )


def from_cgroup(rel: str) -> ContainerInfo | None:
    """The container a cgroup path belongs to, by its last component (None: not one)."""
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return None
    m = _CGROUP_NAME.fullmatch(parts[-1])
    if m is None:
        return None
    prefix, cid = m.groups()
    if prefix:
        engine = _ENGINES[prefix]
    else:
        parent = parts[-2] if len(parts) > 1 else ""
        engine = _PARENT_ENGINES.get(parent, "container")
    return ContainerInfo(engine, cid)


def from_state(state: Mapping[str, Any], rel: str) -> ContainerInfo:
    """The container of an OCI state (an OCI hook's stdin) whose process is in ``rel``."""
    annotations = state.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        annotations = {}
    cid = str(state.get("id") or "")
    info = from_cgroup(rel)
    if info is None or (cid and info.id != cid):
        engine = _MANAGER_ANNOTATION.get(
            str(annotations.get("io.container.manager", "")), info.engine if info else "container"
        )
        # The runtime's id is the container's name for runc; keep it short and safe.
        info = ContainerInfo(engine, cid or (info.id if info else "unknown"))
    name = _first(annotations, NAME_ANNOTATIONS)
    pod = _first(annotations, POD_ANNOTATIONS)
    if name is None and info.engine == "podman":
        name = conmon_name(info.id, start=os.getppid())
    return replace(info, name=name, pod=pod)


def identify(rel: str) -> ContainerInfo | None:
    """The container of a cgroup with its name where it can be found (for the daemon)."""
    info = from_cgroup(rel)
    if info is not None and info.engine == "podman":
        info = replace(info, name=conmon_name(info.id))
    return info


def _first(annotations: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = annotations.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def conmon_name(cid: str, start: int | None = None) -> str | None:
    """The ``-n NAME`` of the podman ``conmon`` monitoring container ``cid``.

    With ``start``, its ancestors are looked at first (an OCI hook runs under ``runc
    create`` under conmon: two reads); otherwise, or when not found there, ``/proc`` is
    scanned for a conmon whose ``-c`` is ``cid``.
    """
    if start is not None:
        pid = start
        for _ in range(4):  # hook → runc → conmon; bounded
            if pid <= 1:
                break
            found = _conmon_args(pid, cid)
            if found is not None:
                return found or None
            pid = _ppid(pid)
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                found = _conmon_args(int(entry.name), cid)
                if found is not None:
                    return found or None
    return None


def _conmon_args(pid: int, cid: str) -> str | None:
    """The name argument when ``pid`` is conmon for ``cid`` ("" without one), else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return conmon_argv_name([a.decode(errors="replace") for a in argv], cid)


def conmon_argv_name(argv: list[str], cid: str) -> str | None:
    """From a command line: the ``-n``/``--name`` value when it is conmon's for container
    ``cid`` ("" when it has no name), else None."""
    if not argv or not argv[0].endswith("conmon"):
        return None
    args = argv[1:]
    if _option(args, "-c", "--cid") != cid:
        return None
    return _option(args, "-n", "--name") or ""


def _option(args: list[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in (short, long) and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg[len(long) + 1 :]
    return None


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def process_cgroup(pid: int) -> str:
    """A process's cgroup v2 path (the ``0::`` line of ``/proc/PID/cgroup``)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise LookupError(f"process {pid} has no cgroup v2 entry in /proc/{pid}/cgroup")

"""Unit metadata on disk and the lock that serialises mutations.

Each unit has a small JSON file beside its pins (``<state>/units/<name>.json``), written
atomically (temporary file, fsync, rename) and readable by root only; inside
:meth:`Store.batch` (a glob's slice of attaches) the fsyncs become one syncfs at its end.
Readers need no lock; writers hold an exclusive ``flock`` on ``<state>/lock`` so that
concurrent CLIs and the daemon cannot interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

from ipacctd.errors import Busy, Corrupt, NotFound, PermissionDenied
from ipacctd.manager.config import Config
from ipacctd.policy.names import pin_name, unpin_name, validate_unit_name

SUFFIX = ".json"

#: Largest metadata file read (a unit with 10k prefixes in two lists is ~0.5 MB).
MAX_META_BYTES = 16 << 20


def _syncfs(fd: int) -> None:
    """syncfs(2) of the filesystem holding ``fd`` (Python's os module has none)."""
    from ipacctd.libc import last_error, libc  # only writers in batches need it

    if libc.syncfs(fd) != 0:
        raise last_error("syncfs")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@functools.lru_cache(maxsize=4096)
def canonical(unit: str) -> str:
    """The unit's full name as systemctl would mangle it (``web`` → ``web.service``).

    Also the one check that keeps a name from escaping the state and pin directories:
    anything that is not a valid unit name (``/``, ``..``, NUL, ...) is refused here.
    """
    return validate_unit_name(unit)


def _denied(path: str, exc: OSError) -> PermissionDenied:
    return PermissionDenied(f"cannot access {path}: {exc.strerror}; run as root")


class Store:
    """Metadata files and the mutation lock of one :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Inside :meth:`batch`, the thread in it: its durable writes wait for the end (one
        # syncfs for them all), and whether there were any. Other threads write as always.
        self._batch: tuple[int, list[bool]] | None = None

    def ensure_dirs(self) -> None:
        """Create the state directories (root-only)."""
        try:
            os.makedirs(self.config.units_dir, mode=0o700, exist_ok=True)
        except PermissionError as exc:
            raise PermissionDenied(f"cannot create {self.config.units_dir}: run as root") \
                from exc

    def meta_path(self, unit: str) -> str:
        return os.path.join(self.config.units_dir, canonical(unit) + SUFFIX)

    def pin_dir(self, unit: str) -> str:
        return os.path.join(self.config.pins_dir, pin_name(canonical(unit)))

    def names(self) -> list[str]:
        """Names of all units with a metadata file, sorted."""
        try:
            entries = os.listdir(self.config.units_dir)
        except FileNotFoundError:
            return []
        except PermissionError as exc:
            raise _denied(self.config.units_dir, exc) from None
        return sorted(e[: -len(SUFFIX)] for e in entries
                      if e.endswith(SUFFIX) and not e.startswith("."))

    def exists(self, unit: str) -> bool:
        return os.path.lexists(self.meta_path(unit))

    def pinned_names(self) -> list[str]:
        """Names of the units with a pin directory (temporary ones left out), sorted."""
        try:
            entries = os.listdir(self.config.pins_dir)
        except OSError:
            return []
        names = []
        for entry in entries:
            name = unpin_name(entry) if not entry.startswith("~") else None
            if name is None:
                continue
            try:
                names.append(canonical(name))
            except ValueError:  # not a name of ours
                continue
        return sorted(names)

    def read(self, unit: str) -> dict[str, Any]:
        """The unit's metadata; NotFound when there is none, Corrupt when it cannot be read.

        Read with a size cap and never through a FIFO or device planted at its name.
        """
        path = self.meta_path(unit)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"unit {unit} not found",
                           hint="see 'ipacctd list-units --all'") from None
        except PermissionError as exc:
            raise _denied(path, exc) from None
        except OSError as exc:  # a symlink (ELOOP), ...
            raise Corrupt(f"metadata {path} cannot be opened: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Corrupt(f"metadata {path} is not a regular file")
            # Reads sized by the file, up to the cap: one read(2) for a whole file, where
            # a buffered read of the cap allocated (mmap) 16 MiB for every unit's status.
            chunks, size = [], 0
            while size <= MAX_META_BYTES:
                want = max(st.st_size - size, 0) + 4096  # the end seen by a second read
                chunk = os.read(fd, min(want, MAX_META_BYTES + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            raise Corrupt(f"metadata {path} cannot be read: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > MAX_META_BYTES:
            raise Corrupt(f"metadata {path} is larger than {MAX_META_BYTES} bytes")
        try:
            value = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise Corrupt(f"metadata {path} is not valid JSON ({_short(str(exc))})") from None
        if not isinstance(value, dict):
            raise Corrupt(f"metadata {path} is not a JSON object")
        return value

    def write(self, unit: str, data: dict[str, Any], durable: bool = True) -> None:
        """Write the unit's metadata atomically (write + fsync + rename), mode 0600.

        ``durable=False`` skips the fsync: still all-or-nothing for readers (rename), but
        a host crash may lose the update. For records whose loss is harmless (the main
        PID and exit status of a run, written on every ``ipacctd run``); creation and
        policy changes stay durable.
        """
        self.ensure_dirs()
        path = self.meta_path(unit)
        tmp = self._tmp_path(unit, os.getpid())
        text = json.dumps(data, indent=1, sort_keys=True)
        held = self._batch
        batch = held[1] if held is not None and held[0] == threading.get_ident() else None
        # A stale temporary file (a crashed writer with our pid) goes first; then the file
        # is created exclusively and never through a symlink planted at its predictable name.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                if durable and batch is None:
                    os.fsync(f.fileno())
            os.rename(tmp, path)
            if durable and batch is not None:
                batch[0] = True
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Durable writes inside the block are made durable together when it ends: one
        ``syncfs`` of the state filesystem (their data and the renames into place) instead
        of an fsync per file — binding thousands of cgroups of one glob writes a record for
        each. Until the block ends a record is what a crash of this process leaves (the
        rename made it visible: a new process reads it), and what a host crash may lose —
        together with everything it describes in the kernel (pins, links, cgroups made by
        others live in memory only). So the caller ends the block before it reports any of
        those writes as done. Also ends on an exception: what was written is synced."""
        if self._batch is not None and self._batch[0] == threading.get_ident():
            yield  # nested: the outer block syncs
            return
        batch: list[bool] = [False]
        self._batch = (threading.get_ident(), batch)
        try:
            yield
        finally:
            self._batch = None
            if batch[0]:
                self.sync()

    def sync(self) -> None:
        """Make every write to the state filesystem durable (``syncfs`` of the filesystem
        of the units directory: the files' data and their directory entries)."""
        fd = os.open(self.config.units_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    def delete(self, unit: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.meta_path(unit))

    def _tmp_path(self, unit: str, pid: int) -> str:
        return os.path.join(self.config.units_dir, f".{canonical(unit)}.{pid}.tmp")

    def delete_tmp(self, unit: str) -> None:
        """Remove this process's temporary metadata file of ``unit`` (a failed write)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp_path(unit, os.getpid()))

    def sweep_tmp(self) -> list[str]:
        """Remove temporary metadata files of writers that died (kill -9 mid-write).

        A temporary file is ``.NAME.PID.tmp``: one whose PID runs is being written now.
        """
        removed = []
        try:
            entries = os.listdir(self.config.units_dir)
        except OSError:
            return removed
        for entry in entries:
            if not (entry.startswith(".") and entry.endswith(".tmp")):
                continue
            try:
                pid = int(entry[: -len(".tmp")].rsplit(".", 1)[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
                continue  # being written now (ours: write() replaces it itself)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.config.units_dir, entry))
                removed.append(entry)
        return removed

    @contextlib.contextmanager
    def locked(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the exclusive mutation lock (waits up to ``timeout`` seconds)."""
        self.ensure_dirs()
        try:
            fd = os.open(self.config.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except PermissionError as exc:
            raise _denied(self.config.lock_path, exc) from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Busy(f"another ipacctd holds {self.config.lock_path} for more "
                                   f"than {timeout:.0f}s") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing releases the lock

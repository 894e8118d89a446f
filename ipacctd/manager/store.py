"""Unit metadata on disk and the lock that serialises mutations.

Each unit has a small JSON file beside its pins (``<state>/units/<name>.json``), written
atomically (temporary file, fsync, rename) and readable by root only; inside
:meth:`Store.batch` (a glob's slice of attaches) the fsyncs become one syncfs at its end.
Readers need no lock; writers hold an exclusive ``flock`` on ``<state>/lock`` so that
concurrent CLIs and the daemon cannot interleave.

**Address lists of more than** :data:`INLINE_LIST_BYTES` live in files of their own,
``<state>/lists/<name>/<sha256>`` (the canonical text, named by its SHA-256), and the
metadata names them by digest and length: ``{"sha256": ..., "count": ...}``. A unit with a
200k-prefix list has a 1 KB metadata file beside a 3 MB list, so reading its counters or
state (``show``, ``status``, ``list-units``, every daemon poll) reads, decodes and hashes
none of the list, and a change that leaves the list as it is (``Description=``) writes,
hashes and fsyncs none of it. A list is read — and checked against its digest — only when
its text or networks are needed (:class:`StoredList`). Shorter lists stay inline as
``{"canonical": text, "sha256": ...}`` (what 0.2.1 wrote for every list; read as before).

A list file is written (fsynced) before the metadata that names it is renamed into place,
and never changed: its name is its content. One that no metadata names any more is removed
by a later write of the unit once it has been unnamed for :data:`LIST_GRACE` seconds, so a
reader holding the previous metadata (the daemon's view, a CLI mid-read) can still load it.
"""

from __future__ import annotations

import _thread  # not threading: the run path imports neither (see ipacctd.record)
import contextlib
import fcntl
import functools
import os
import stat
import time
from collections.abc import Iterator

from ipacctd import jsontext  # json's format and C parts, without json's import of re
from ipacctd.errors import Busy, Corrupt, NotFound, PermissionDenied
from ipacctd.manager.config import Config
from ipacctd.policy.addresses import AddressList
from ipacctd.policy.names import pin_name, unpin_name, validate_unit_name
from ipacctd.policy.properties import PROPERTIES

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

SUFFIX = ".json"

#: Address lists whose canonical text is longer than this (bytes; about 60 prefixes) are
#: kept in a file of their own; shorter ones inline in the metadata.
INLINE_LIST_BYTES = 1024

#: Seconds a list file no metadata names is kept, for readers of the previous metadata (a
#: CLI mid-read, the daemon until its next look: seconds). Short, for /run is memory: a
#: 200k-prefix blocklist replaced every minute keeps two or three 3 MB files, not sixty.
LIST_GRACE = 120

#: The address-list properties (the D-Bus type of systemd's IPAddressAllow=/Deny=).
LIST_PROPERTIES = tuple(n for n, spec in PROPERTIES.items() if spec.signature == "a(iayu)")

#: The sections of a unit's metadata that hold properties.
_PROPERTY_SECTIONS = ("properties", "rollback")


def _replace(tmp: str, path: str, data: bytes, fsync: bool) -> tuple[int, int, int]:
    """Put ``data`` at ``path`` whole or not at all: written to ``tmp`` (a name of this
    process's own: a stale one, left by a crashed writer with our pid, goes first), synced
    when ``fsync``, renamed into place. The temporary file is created exclusively and never
    through a symlink planted at its predictable name (0600: the state is root's).
    Returns the file's (inode, size, mtime in ns), which the rename keeps: the file at
    ``path`` is this one for as long as a stat of it gives the same."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.rename(tmp, path)
        return st.st_ino, st.st_size, st.st_mtime_ns
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _list_slots(data: object) -> Iterator[tuple[str, dict[str, Any], str, Any]]:
    """(section name, its properties, list property name, its value or None) for each
    address list a unit's metadata may hold: where a list is inline, named by digest, or
    absent."""
    if not isinstance(data, dict):
        return
    for section in _PROPERTY_SECTIONS:
        props = data.get(section)
        if isinstance(props, dict):
            for name in LIST_PROPERTIES:
                yield section, props, name, props.get(name)

#: Largest list file read (a 200k-prefix IPv6 list is about 6 MB).
MAX_LIST_BYTES = 256 << 20

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


#: Where an :class:`AddressList` keeps its canonical text (the slot's own descriptor).
_TEXT = AddressList._text  # type: ignore[attr-defined]


def _sha256(data: bytes) -> str:
    import hashlib  # only when a list is read or written

    return hashlib.sha256(data).hexdigest()


class StoredList(AddressList):
    """An address list kept in a file of its own (see the module's doc): its length comes
    from the metadata, its text is read from the file — and checked against the digest the
    metadata names — the first time it is needed (to show it, to compare it with another
    list, to build programs), never to read counters or state.

    Raises (when the text is needed):
        Corrupt: the file is missing (removed by hand, or the unit changed more than
            :data:`LIST_GRACE` seconds after this list was read) or does not match its
            digest (edited by hand or damaged).
    """

    __slots__ = ("_count", "_path", "_sha256")

    @classmethod
    def at(cls, path: str, sha256: str, count: int, prop: str) -> StoredList:
        new = cls.__new__(cls)
        new._parts = new._networks = new._words = None
        _TEXT.__set__(new, None)
        new._prop, new._path, new._sha256, new._count = prop, path, sha256, count
        return new

    # AddressList's methods read its text from the ``_text`` slot; this property stands in
    # front of the slot (a subclass's descriptor comes first), so that each of them reads
    # the file on first use — and none has to know that a list may live in one.
    @property  # type: ignore[override]
    def _text(self) -> str | None:
        text = _TEXT.__get__(self, StoredList)
        if text is None and self._networks is None and self._parts is None:
            text = self.load()
        return text

    @_text.setter
    def _text(self, value: str | None) -> None:
        _TEXT.__set__(self, value)

    @property
    def loaded(self) -> bool:
        """Whether the text has been read (or the networks made from it)."""
        return _TEXT.__get__(self, StoredList) is not None or self.parsed

    def load(self) -> str:
        """Read the list's text (once), checked against its digest."""
        text = _TEXT.__get__(self, StoredList)
        if text is not None:
            return text
        try:
            data = _read_file(self._path, MAX_LIST_BYTES, what=f"{self._prop}= list")
        except FileNotFoundError:
            raise Corrupt(f"{self._prop}= list {self._path} is missing (removed by hand, or "
                          "the unit changed since it was read: read it again)") from None
        if _sha256(data) != self._sha256:
            raise Corrupt(f"{self._prop}= list {self._path} does not match its sha256 "
                          "(edited by hand or damaged)")
        text = data.decode("ascii", errors="replace")
        _TEXT.__set__(self, text)
        return text

    @property
    def kept(self) -> dict[str, Any]:
        """The list as the metadata names it (see :func:`_address_list_to_json`): never
        read, written or hashed again while it stays the unit's."""
        return {"sha256": self._sha256, "count": self._count, "path": self._path}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredList):  # the digests name the texts: neither is read
            return self._sha256 == other._sha256
        return super().__eq__(other)

    __hash__ = AddressList.__hash__

    def __len__(self) -> int:
        return super().__len__() if self.loaded else self._count

    def __bool__(self) -> bool:
        return super().__bool__() if self.loaded else self._count > 0


def _read_file(path: str, limit: int, what: str) -> bytes:
    """A regular file's content, up to ``limit`` bytes, never through a symlink, FIFO or
    device planted at its name; Corrupt when it cannot be read, PermissionDenied when it may
    not be (FileNotFoundError as it is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise  # the caller says what that means
    except PermissionError as exc:
        raise _denied(path, exc) from None
    except OSError as exc:  # a symlink (ELOOP), ...
        raise Corrupt(f"{what} {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Corrupt(f"{what} {path} is not a regular file")
        # Reads sized by the file, up to the cap: one read(2) for a whole file, where
        # a buffered read of the cap allocated (mmap) 16 MiB for every unit's status.
        chunks, size = [], 0
        while size <= limit:
            want = max(st.st_size - size, 0) + 4096  # the end seen by a second read
            chunk = os.read(fd, min(want, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise Corrupt(f"{what} {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise Corrupt(f"{what} {path} is larger than {limit} bytes")
    return b"".join(chunks)


class Store:
    """Metadata files and the mutation lock of one :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Inside :meth:`batch`, the thread in it: its durable writes wait for the end (one
        # syncfs for them all), and whether there were any. Other threads write as always.
        self._batch: tuple[int, list[bool]] | None = None
        # The records the last batch wrote (unit → the file's inode, size, mtime in ns), set
        # when it ended, their sync done: a reader holding what was written (the daemon's
        # registry, given the units a binding made) knows from one stat that the file on
        # disk is still that record, and need not read it back.
        self.written: dict[str, tuple[int, int, int]] = {}
        self._written: dict[str, tuple[int, int, int]] = {}

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
            data = _read_file(path, MAX_META_BYTES, what="metadata")
        except FileNotFoundError:
            raise NotFound(f"unit {unit} not found",
                           hint="see 'ipacctd list-units --all'") from None
        try:
            value = jsontext.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise Corrupt(f"metadata {path} is not valid JSON ({_short(str(exc))})") from None
        if not isinstance(value, dict):
            raise Corrupt(f"metadata {path} is not a JSON object")
        self._stored_lists(unit, value)
        return value

    # -- address lists in files of their own -----------------------------------------------

    @property
    def lists_root(self) -> str:
        """The directory of every unit's directory of list files."""
        return os.path.join(self.config.state_dir, "lists")

    def lists_dir(self, unit: str) -> str:
        """The directory of the unit's list files."""
        return os.path.join(self.lists_root, canonical(unit))

    def _stored_lists(self, unit: str, data: dict[str, Any]) -> None:
        """Replace each list the metadata names by digest with a :class:`StoredList` (not
        read now); Corrupt when the reference is malformed or its file is missing."""
        for section, props, name, ref in _list_slots(data):
            if not (isinstance(ref, dict) and "canonical" not in ref):
                continue  # inline, or not there: Properties.from_json reads (or refuses) it
            digest, count = ref.get("sha256"), ref.get("count")
            if not (isinstance(digest, str) and len(digest) == 64 and digest.isalnum()
                    and isinstance(count, int) and count > 0):
                raise Corrupt(f"metadata {self.meta_path(unit)}: {section} {name} names "
                              "no valid list file (expected 'sha256' and 'count')")
            path = os.path.join(self.lists_dir(unit), digest)
            if not os.path.isfile(path):
                raise Corrupt(f"{name}= list {path} of unit {unit} is missing")
            props[name] = StoredList.at(path, digest, count, name)

    def _keep_lists(self, unit: str, data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
        """``data`` as the metadata file holds it: long lists written to files of their own
        (fsynced; one already there is not written again) and named by digest; and the
        digests named."""
        named: set[str] = set()
        out = {**data, **{s: dict(data[s]) for s in _PROPERTY_SECTIONS
                          if isinstance(data.get(s), dict)}}
        for _section, props, name, value in _list_slots(out):
            if not isinstance(value, dict):
                continue
            if "path" in value:  # a StoredList's: kept as it is
                digest, count = value["sha256"], value["count"]
                if os.path.dirname(value["path"]) != self.lists_dir(unit):
                    # another unit's list (a policy taken over): this unit's own copy
                    self._write_list(unit, digest, StoredList.at(
                        value["path"], digest, count, name).load())
            elif len(value.get("canonical", "")) > INLINE_LIST_BYTES:
                text, digest = value["canonical"], value["sha256"]
                count = text.count(" ") + 1
                self._write_list(unit, digest, text)
            else:
                continue
            props[name] = {"sha256": digest, "count": count}
            named.add(digest)
        return out, named

    def _write_list(self, unit: str, digest: str, text: str) -> None:
        directory = self.lists_dir(unit)
        path = os.path.join(directory, digest)
        if os.path.isfile(path):
            return  # named by its content: the same text
        os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)  # root's, as units/
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(directory, f".{digest}.{os.getpid()}.tmp")
        # Always synced: the metadata about to name it may be.
        _replace(tmp, path, text.encode("ascii"), fsync=True)

    def _named_on_disk(self, unit: str) -> set[str]:
        """The list digests the unit's metadata on disk names now (before it is replaced)."""
        try:
            data = jsontext.loads(_read_file(self.meta_path(unit), MAX_META_BYTES, "metadata"))
        except (Corrupt, PermissionDenied, OSError, ValueError):
            return set()
        return {v["sha256"] for _s, _p, _n, v in _list_slots(data)
                if isinstance(v, dict) and "canonical" not in v
                and isinstance(v.get("sha256"), str)}

    def _prune_lists(self, unit: str, named: set[str], unnamed_now: set[str]) -> None:
        """Remove the unit's list files no metadata has named for :data:`LIST_GRACE`
        seconds (and temporary files of dead writers); those the write just replaced
        (``unnamed_now``) start their grace now."""
        directory = self.lists_dir(unit)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        now = time.time()
        for entry in entries:
            name = entry.name
            if name in named:
                continue
            with contextlib.suppress(FileNotFoundError):
                if name.startswith("."):  # .DIGEST.PID.tmp of a writer
                    pid = name.rsplit(".", 2)[-2]
                    if not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
                        os.unlink(entry.path)
                elif name in unnamed_now:
                    os.utime(entry.path)
                elif entry.stat(follow_symlinks=False).st_mtime < now - LIST_GRACE:
                    os.unlink(entry.path)

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
        has_lists = os.path.isdir(self.lists_dir(unit))
        data, named = self._keep_lists(unit, data)
        before = self._named_on_disk(unit) - named if has_lists else set()
        text = jsontext.dumps(data)
        held = self._batch
        batch = held[1] if held is not None and held[0] == _thread.get_ident() else None
        key = _replace(tmp, path, text.encode(), fsync=durable and batch is None)
        if durable and batch is not None:
            batch[0] = True
            self._written[canonical(unit)] = key
        if has_lists or named:
            self._prune_lists(unit, named, before)

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
        if self._batch is not None and self._batch[0] == _thread.get_ident():
            yield  # nested: the outer block syncs
            return
        batch: list[bool] = [False]
        self._written = {}
        self._batch = (_thread.get_ident(), batch)
        try:
            yield
        finally:
            self._batch = None
            if batch[0]:
                self.sync()
            self.written, self._written = self._written, {}

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
        directory = self.lists_dir(unit)
        if os.path.isdir(directory):
            import shutil

            shutil.rmtree(directory, ignore_errors=True)

    def _tmp_path(self, unit: str, pid: int) -> str:
        return os.path.join(self.config.units_dir, f".{canonical(unit)}.{pid}.tmp")

    def delete_tmp(self, unit: str) -> None:
        """Remove this process's temporary metadata file of ``unit`` (a failed write)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp_path(unit, os.getpid()))

    def sweep_tmp(self) -> list[str]:
        """Remove temporary metadata files of writers that died (kill -9 mid-write), and
        the list files of units without metadata (a creator killed between writing a list
        and the metadata naming it; metadata deleted by hand). Lock held: every writer
        holds it from a list file's write to the rename of the metadata that names it.

        A temporary file is ``.NAME.PID.tmp``: one whose PID runs is being written now.
        """
        removed = self._sweep_lists()
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

    def _sweep_lists(self) -> list[str]:
        top = self.lists_root
        try:
            entries = os.listdir(top)
        except OSError:
            return []
        removed = []
        for entry in entries:
            try:
                orphan = not os.path.lexists(self.meta_path(entry))
            except ValueError:  # not a unit's name: not ours
                continue
            if orphan:
                import shutil

                shutil.rmtree(os.path.join(top, entry), ignore_errors=True)
                removed.append(os.path.join(top, entry))
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

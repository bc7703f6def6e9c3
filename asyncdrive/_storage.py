"""The bytes of a drive on the shared disk, and the metadata beside them.

Layout under the root::

    <root>/drives/<name>/<component>/<path>                       the bytes of each file
    <root>/drives/<name>/.tmp/                                    uploads in progress
    <root>/drives/<name>/<component>/<folder>/.asyncdrive-backup.<id>.<file>  while replaced

Each file carries its metadata (size, mtime, checksum, version: with its place on disk,
enough to rebuild the Redis index) in an extended attribute, ``user.asyncdrive.meta`` (53
packed bytes, which ext4 keeps inside the inode; JSON where they do not fit), set on the
upload before its one fsync and moved into place with it by the same rename. Where
the filesystem has no user extended attributes (some NFS servers, macOS), the metadata goes
to a file beside it instead, ``<folder>/.asyncdrive-meta.<file>.json``, fsynced too.

A replacement hard-links the previous bytes beside the file before the rename (see
`DiskStore.install`), so a refused or interrupted commit can put them back; its place names
the file it backs up, so `gc` can finish the job after a crash.

Every method here is blocking and meant to run in a worker thread. Writes go to a temporary
file on the same filesystem, are flushed and fsynced, then renamed into place, so a reader
always opens a complete old or a complete new file. A small upload is created without a name
where the disk allows (``O_TMPFILE``) and linked into place, or into ``.tmp`` first when it
must replace a file: its fsync then writes no folder out, and a crash leaves nothing behind.
A new small file, where no file is at its path yet, is written straight there on disks
where its fsync makes its name durable too (`DiskStore.open_new`): until its commit the
index does not know it, so no reader of the drive opens it half-written.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import secrets
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ._config import is_valid_name
from ._exceptions import ExplainedOSError, InvalidPathError
from ._models import CHECKSUM_ALGORITHM, FileInfo
from ._paths import RESERVED_PREFIX, normalize
from ._progress import OnCopied
from ._threads import raise_if_requested

logger = logging.getLogger("asyncdrive")

CHUNK = 1 << 20
META_PREFIX = RESERVED_PREFIX + "-meta."
TMP_PREFIX = RESERVED_PREFIX + "-tmp."
#: Beside a file being replaced: a hard link to its previous bytes (and metadata file).
BACKUP_PREFIX = RESERVED_PREFIX + "-backup."
#: Written beside a drive's folders once it has committed a file: if the index is missing
#: while this exists, the Redis server lost the drive's index.
DRIVE_MARKER = RESERVED_PREFIX + "-drive"
#: The extended attribute holding a file's metadata (JSON: size, mtime, checksum, version).
META_XATTR = "user.asyncdrive.meta"
#: Errors of ``setxattr`` meaning "this filesystem keeps no user attributes": use a file.
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS})


def _read_umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the only way to read it is to set it (no Linux: no files without a name).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The mode asyncdrive asks for when it creates a file by name: the kernel takes the umask
#: in force off it, as for a plain ``open(path, "w")``.
CREATE_MODE = 0o666


def _kernel_at_least(major: int, minor: int, release: str | None = None) -> bool:
    """Whether this Linux kernel is ``major.minor`` or newer (``release``: as `os.uname`)."""
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= (major, minor)
    except (IndexError, ValueError):
        return False


#: Whether the kernel takes the umask off files made without a name (``O_TMPFILE``) too:
#: from Linux 6.0 (``mode_strip_umask``; 6.2 here, to be safe). Before, only filesystems
#: with ACLs did, so the umask was read and applied by hand.
_UNNAMED_FILES_GET_THE_UMASK = sys.platform == "linux" and _kernel_at_least(6, 2)


def unnamed_file_mode() -> int:
    """Return the mode to make a file without a name with: as ``open(path, "w")`` would.

    The umask in force when it is made (a program may set it after importing us), taken
    off by the kernel where it does, else read from ``/proc`` (never by setting it, which
    races with other threads' own setting of it).
    """
    return CREATE_MODE if _UNNAMED_FILES_GET_THE_UMASK else CREATE_MODE & ~_read_umask()


@dataclass(frozen=True, slots=True)
class DiskFile:
    """One file found on disk by `DiskStore.scan`, with what its metadata says."""

    component: str
    path: str
    size: int
    mtime: float
    checksum: str
    version: int
    age: float
    #: False for a new file still being written in place (`DiskStore.open_new`), or left
    #: so by a writer that died: never committed, so `Drive.rebuild_index` skips it (and
    #: `Drive.gc` removes it once older than its grace).
    finished: bool = True


@dataclass(frozen=True, slots=True)
class Staged:
    """An upload written to a temporary file, ready for `DiskStore.install`."""

    tmp: Path
    size: int
    checksum: str
    #: The upload, still open for writing, when staged with ``sync=False`` or without a
    #: name: `install` sets its metadata and fsyncs it through this descriptor, then closes
    #: it (as `discard` does), which saves reopening it by its path. None once closed.
    fd: int | None = None
    #: False while the upload has no name (created with ``O_TMPFILE``, see `_stage`): ``tmp``
    #: is then the name it gets if `install` needs one (`DiskStore._name_upload`), and the
    #: upload lives only as long as ``fd`` is open.
    named: bool = True
    #: True for a new file written straight at its path (`DiskStore.open_new`): ``tmp`` is
    #: that path, and `DiskStore.settle_new`, not `install`, finishes it.
    in_place: bool = False

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # A safety net: an upload dropped while open (a put cancelled just as its worker
        # thread staged it) is closed, which frees it at once if it has no name. (``os``
        # is bound early: at interpreter exit, module globals may be gone.)
        if self.fd is not None:
            try:
                _close(self.fd)
            except OSError:  # not contextlib.suppress: a global too
                return


class NewFile(NamedTuple):
    """A file `DiskStore.open_new` created at its path: open for writing, not yet synced."""

    fd: int
    path: Path
    identity: FileIdentity


#: What `DiskStore.stage_file` calls for a new file to write in place, if any (see `_stage`).
OpenNew = Callable[[], NewFile | None]


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _copy_fd(
    src: int, dst: int, chunk: int, expected: int = -1, on_copied: OnCopied | None = None
) -> tuple[int, str]:
    """Copy descriptor ``src`` to ``dst`` in reads of ``chunk`` bytes; return (size, digest).

    Until a read returns nothing; or, for a regular file of ``expected`` bytes (its size
    when opened), until a read returns less than asked having brought the copy to that
    size: the end, without the read that would say so (a small put's file comes in one
    read). A file that grew since goes on to the end. ``on_copied(n)`` after each write.
    """
    hasher = hashlib.new(CHECKSUM_ALGORITHM)
    size = 0
    while data := os.read(src, chunk):
        hasher.update(data)
        _write_all(dst, data)
        size += len(data)
        if on_copied is not None:
            on_copied(len(data))
        if size == expected and len(data) < chunk:
            break
    return size, hasher.hexdigest()


def _close_upload(staged: Staged) -> None:
    """Close the upload's descriptor, if `Staged.fd` holds one (once: it is then None)."""
    if staged.fd is not None:
        fd = staged.fd
        object.__setattr__(staged, "fd", None)
        os.close(fd)


def discard_upload(staged: Staged) -> None:
    """Remove an upload that will not be installed (`DiskStore.discard`)."""
    assert not staged.in_place, "settle_new's, not an upload"
    _close_upload(staged)
    staged.tmp.unlink(missing_ok=True)


#: Uploads at least this big are copied inside the kernel while a second thread hashes what
#: was written; below it, one pass through a buffer costs less than starting a thread.
#: Measured on a 1 GiB put (bench/large_files.py): one pass copies then hashes each chunk,
#: about the sum of the two costs; overlapping them costs about the larger one.
PARALLEL_HASH_MIN = 8 * CHUNK
#: How much one kernel copy call moves, and how much the hasher maps at a time: it bounds
#: the memory a put holds (the mapped window counts in its resident size).
_KERNEL_STEP = 8 * CHUNK


#: A large upload is handed to the disk in ranges of this size as it is written.
WRITEBACK_STEP = 8 * CHUNK
_HASH_WINDOW = 8 * CHUNK
#: Errors meaning "this kind of kernel copy does not apply here": fall back to the next one.
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF,
     errno.ETXTBSY, errno.EPERM, errno.ESPIPE}
)  # fmt: skip


class NotARegularFileError(FileExistsError):
    """A local path a get would write is a device, a pipe or a socket: never replaced."""


def _in_the_way(dest: Path) -> OSError:
    """Return the error for a local ``dest`` a get must not replace: a folder, or other bytes."""
    try:
        mode = os.lstat(dest).st_mode
    except OSError:
        mode = stat.S_IFREG
    if stat.S_ISDIR(mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(dest))
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        return NotARegularFileError(errno.EEXIST, "not a regular file", os.fspath(dest))
    return FileExistsError(dest)


def _refuse_unreplaceable(dest: Path) -> None:
    """Raise if ``dest`` is a folder (`IsADirectoryError`), a device, pipe or socket.

    Even with ``overwrite``, a get replaces files and links to files, never such a path
    (as root, ``to="/dev/null"`` would otherwise replace the device with a file); a folder,
    or a link to one (replaced, where the caller most likely meant a file in it), is
    refused before the copy (``"."`` or ``".."`` would else be refused only by the
    rename, as "busy").
    """
    error = _in_the_way(dest)
    if isinstance(error, NotARegularFileError | IsADirectoryError):
        raise error
    if os.path.islink(dest) and os.path.isdir(dest):  # as the folder: never followed
        raise IsADirectoryError(errno.EISDIR, "a link to a folder", os.fspath(dest))


class _FdCopier:
    """Copy from one descriptor's offset to another's, inside the kernel where it can.

    ``copy_file_range`` first (on one filesystem, the kernel moves the pages itself, and
    some filesystems share them), then ``sendfile``, then ``read``/``write`` through a
    buffer. Each step continues from both descriptors' current offsets, so a method found
    not to apply midway hands over to the next without losing a byte.
    """

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.methods = [m for m in ("copy_file_range", "sendfile") if hasattr(os, m)]
        self.methods.append("read")
        self._buffer: bytearray | None = None

    def step(self, count: int = _KERNEL_STEP) -> int:
        """Copy up to ``count`` bytes; return how many (0 at the end of the source)."""
        raise_if_requested()  # a cancelled caller's (see `_threads.stop_request`)
        while True:
            method = self.methods[0]
            try:
                if method == "copy_file_range":
                    n = os.copy_file_range(self.src, self.dst, count)
                elif method == "sendfile":
                    n = os.sendfile(self.dst, self.src, None, count)
                else:
                    return self._read_write(count)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                self.methods.pop(0)
                continue
            if n == 0 and self._source_has_more():
                # Some filesystems (FUSE, procfs-like) report an end that is not there.
                self.methods.pop(0)
                continue
            return n

    def _source_has_more(self) -> bool:
        try:
            return os.lseek(self.src, 0, os.SEEK_CUR) < os.fstat(self.src).st_size
        except OSError:
            return True

    def _read_write(self, count: int) -> int:
        if self._buffer is None:
            self._buffer = bytearray(CHUNK)
        view = memoryview(self._buffer)[: min(count, CHUNK)]
        n = os.readv(self.src, [view])
        written = 0
        while written < n:
            written += os.write(self.dst, view[written:n])
        return n

    def copy_all(self, size: int | None = None, on_copied: OnCopied | None = None) -> int:
        """Copy to the end of the source; return the bytes copied.

        ``size``: copy at most this much, such as the size of a file no writer changes: the
        copy then stops there, without the call that finds the end and the checks that it
        is one. ``on_copied(n)`` after each step.
        """
        total = 0
        while (size is None or total < size) and (
            n := self.step(_KERNEL_STEP if size is None else min(_KERNEL_STEP, size - total))
        ):
            total += n
            if on_copied is not None:
                on_copied(n)
        return total


class BehindHasher:
    """Hash a file being written, from the page cache, behind the writer, in its own thread.

    The writer reports its progress with `advance` and the end with `finish`; the hasher
    maps each completed window of the file read-only and hashes it (hashlib releases the
    GIL), so hashing overlaps the copy. Hashing what was written, not the source, makes the
    checksum that of the stored bytes even if the source changes meanwhile.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hasher = hashlib.new(CHECKSUM_ALGORITHM)
        self._written = 0
        self._finished = False
        self._stop = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="asyncdrive-hash", daemon=True)
        self._thread.start()

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()
        if self._error is not None:
            raise self._error

    def finish(self, written: int) -> str:
        """Wait for the hash of the first ``written`` bytes; return its hex digest."""
        with self._cond:
            self._written = written
            self._finished = True
            self._cond.notify()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.hasher.hexdigest()

    def abandon(self) -> None:
        """Stop hashing (the copy failed) and wait for the thread to end."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        pos = 0
        try:
            while True:
                with self._cond:
                    want = pos + _HASH_WINDOW
                    while not (self._stop or self._finished or self._written >= want):
                        self._cond.wait()
                    if self._stop:
                        return
                    end = self._written if self._finished else pos + _HASH_WINDOW
                # Windows start at multiples of _HASH_WINDOW, so mmap offsets are aligned.
                while pos < end:
                    length = min(_HASH_WINDOW, end - pos)
                    self._hash_window(pos, length)
                    pos += length
                if self._finished and pos >= self._written:
                    return
        except BaseException as exc:
            self._error = exc

    def _hash_window(self, offset: int, length: int) -> None:
        try:
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            window = mmap.mmap(self.fd, length, flags=flags, prot=mmap.PROT_READ, offset=offset)
        except (OSError, ValueError):  # a filesystem that cannot map: read it instead
            self.hasher.update(os.pread(self.fd, length, offset))
            return
        with window:
            self.hasher.update(window)


def _c_path(path: str | os.PathLike[str]) -> bytes:
    r"""Return ``path`` for a C library call: refused with a NUL in it, as Python's own are.

    (C would take the name only up to it: ``"a\0b"`` is ``"a"``.)
    """
    name = os.fsencode(path)
    if b"\0" in name:
        raise ValueError(f"embedded null byte in the path {os.fspath(path)!r}")
    return name


def _libc_function(name: str, argtypes: list[Any], restype: Any) -> Any:
    """Return the C library's function ``name``, typed, keeping errno (None: none here)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


_sync_file_range: Callable[[int, int, int, int], int] | None = _libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
)
_SYNC_FILE_RANGE_WRITE = 2
_syncfs: Callable[[int], int] | None = _libc_function("syncfs", [ctypes.c_int], ctypes.c_int)


#: Whether syncfs(2) is here and returns the writeback errors it meets (Linux 5.8+: before,
#: it returned 0 whatever happened).
_SYNCFS_REPORTS_ERRORS = _syncfs is not None and _kernel_at_least(5, 8)

#: A batch's syncfs is made only where the page cache holds at most this much data not yet
#: written to disk (the whole machine's, `unwritten_bytes`): a syncfs writes all of the
#: filesystem's, and must not wait for someone's 1 GiB checkpoint to make 32 small files
#: durable (measured here: a syncfs with 300 MiB unwritten ~110 ms, an fsync ~0.2 ms). Less
#: is common (logs, other writers: ~12 MiB on this machine at rest), and once a syncfs has
#: written it, the next ones of a busy put find only what was written since.
_SYNC_TOGETHER_MAX_UNWRITTEN = 32 << 20


#: A syncfs that took longer than this, and than `_SYNC_TOGETHER_SLOW_PER_FILE` a file of its
#: call (more than an fsync of each would take on a local disk), turns the syncfs of calls
#: off on its filesystem in this process for `_SYNC_TOGETHER_PAUSE` seconds: a filesystem
#: whose syncfs is costly, or other writers' data that keeps coming to wait. (The first
#: syncfs of a busy put may write up to `_SYNC_TOGETHER_MAX_UNWRITTEN` of others' data:
#: ~15 ms here, which must not count as slow.)
_SYNC_TOGETHER_SLOW = 0.05
_SYNC_TOGETHER_SLOW_PER_FILE = 0.002
_SYNC_TOGETHER_PAUSE = 10.0
#: Until when (`time.monotonic`) the syncfs of calls stays off, by device number.
_slow_syncfs_until: dict[int, float] = {}


def unwritten_bytes(meminfo: str | None = None) -> int | None:
    r"""Return the page cache's data not yet on disk (``Dirty`` + ``Writeback``), or None.

    Read from ``/proc/meminfo`` (or the text given); None where it cannot be read.

    Example:
        >>> unwritten_bytes("Dirty:  12 kB\nWriteback:  4 kB\n")
        16384

    """
    if meminfo is None:
        try:  # a few system calls, not a Python file's dozen: once a worker-thread call
            fd = os.open("/proc/meminfo", os.O_RDONLY | os.O_CLOEXEC)
            try:
                meminfo = os.read(fd, 1 << 16).decode("ascii", "replace")
            finally:
                os.close(fd)
        except OSError:
            return None
    found = 0
    for line in meminfo.splitlines():
        name, _, value = line.partition(":")
        if name in ("Dirty", "Writeback"):
            try:
                found += int(value.split()[0]) * 1024
            except (IndexError, ValueError):  # not as Linux writes it: unknown
                return None
    return found


class SyncTogether:
    """Make many new files durable with one syncfs(2) of their filesystem, not an fsync each.

    For the files one worker-thread call writes at once (concurrent puts of new small
    files, a folder put's batch). An fsync costs ~170 us of CPU here (the file's blocks,
    its inode and a flush of the disk's cache, each a request of its own); one syncfs
    writes all the files in a few large requests and flushes once. Measured here, 32 new
    files of 4 KiB installed in one call: ~120 us a file, against ~260 with an fsync each
    (and ~210 when each file also starts its writing as written, as it does for the
    fsyncs: `planned` tells the caller not to).

    Made (`sync`) only on this machine's disks, on Linux 5.8+ (where syncfs reports the
    writeback errors it meets), for two files or more, all on the root's filesystem, with
    little other data waiting to be written (see `_SYNC_TOGETHER_MAX_UNWRITTEN`), and not
    for a while after a slow one there (`_SYNC_TOGETHER_SLOW`). Opened
    before the files are written, so that its syncfs reports any writeback error of the
    filesystem since; on one (maybe not one of these files'), or where it does not apply,
    `sync` returns False and the caller fsyncs each file, which reports each file's own.

    Example:
        >>> with store.sync_together(len(files)) as together:
        ...     identities = [write_new_file(f, start_writing=not together.planned) for f in files]
        ...     if not together.sync(identities):
        ...         ...  # fsync each

    """

    def __init__(self, folder: Path | None, files: int) -> None:
        self._fd: int | None = None
        self._device = -1
        #: Whether `sync` is expected to apply to the ``files`` about to be written.
        self.planned = False
        if folder is None or files < 2 or not _SYNCFS_REPORTS_ERRORS:
            return
        try:
            self._fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._device = os.fstat(self._fd).st_dev
        except OSError:
            self.close()
            return
        if time.monotonic() < _slow_syncfs_until.get(self._device, 0.0):
            return  # a syncfs here was slow a moment ago
        unwritten = unwritten_bytes()  # looked at once: the files are written in ~1-10 ms
        self.planned = unwritten is not None and unwritten <= _SYNC_TOGETHER_MAX_UNWRITTEN

    def __repr__(self) -> str:
        if self._fd is None:
            return "<SyncTogether closed>"
        return f"<SyncTogether on device {self._device}, planned={self.planned}>"

    def __enter__(self) -> SyncTogether:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def sync(self, identities: list[FileIdentity]) -> bool:
        """Make the files durable with one syncfs if that applies; False where it did not."""
        if self._fd is None or not self.planned or len(identities) < 2 or _syncfs is None:
            return False
        if any(device != self._device for device, _ in identities):
            return False
        started = time.monotonic()
        synced = _syncfs(self._fd) == 0
        finished = time.monotonic()
        slow = max(_SYNC_TOGETHER_SLOW, len(identities) * _SYNC_TOGETHER_SLOW_PER_FILE)
        if finished - started > slow:
            _slow_syncfs_until[self._device] = finished + _SYNC_TOGETHER_PAUSE
        return synced


#: openat2(2)'s resolve flags: fail with ELOOP at any symbolic link on the way, and with
#: EXDEV on a way out of the starting folder. Its number is the same on every Linux (5.6+).
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_BENEATH_NO_SYMLINKS = _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH


def _load_openat2() -> Callable[..., tuple[int, int]] | None:
    """Return ``openat2(dir_fd, path, flags, mode, resolve=...) -> (fd, errno)``, or None.

    It opens ``path`` under ``dir_fd`` with ``openat2`` and RESOLVE_NO_SYMLINKS (and, unless
    ``resolve`` says otherwise, RESOLVE_BENEATH): one path walk by the kernel that fails
    with ELOOP at any link, where an ``lstat`` of each part walks the path once per part
    (measured: ~7 against ~20 us for a file six folders deep, more in a put's mix of
    calls). ``fd`` is -1 on an error. None on other systems, older kernels, or where a
    sandbox refuses the call (seccomp): then the parts are checked one by one.
    """
    if not hasattr(os, "O_PATH"):
        return None
    syscall = _libc_function(
        "syscall",
        [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t],
        ctypes.c_long,
    )
    if syscall is None:
        return None
    hows: dict[tuple[int, int, int], tuple[Any, int]] = {}

    def openat2(
        dir_fd: int, path: bytes, flags: int, mode: int, resolve: int = _BENEATH_NO_SYMLINKS
    ) -> tuple[int, int]:
        found = hows.get((flags, mode, resolve))
        if found is None:
            how = _OpenHow(flags, mode, resolve)
            found = hows[flags, mode, resolve] = (how, ctypes.sizeof(how))  # kept with its pointer
        fd = syscall(_SYS_OPENAT2, dir_fd, path, ctypes.byref(found[0]), found[1])
        return (fd, 0) if fd >= 0 else (-1, ctypes.get_errno())

    fd, _ = openat2(_AT_FDCWD, b".", _PROBE_FLAGS, 0)
    if fd < 0:
        return None
    os.close(fd)
    return openat2


_AT_FDCWD = -100
_PROBE_FLAGS = os.O_PATH | os.O_CLOEXEC if hasattr(os, "O_PATH") else 0
_openat2 = _load_openat2()
#: Errors of `_openat2` for a path the walk of `DiskStore._refuse_links` would
#: pass: a part that is missing or not a folder (where the walk stops).
_NO_LINK_ON_THE_WAY = frozenset({errno.ENOENT, errno.ENOTDIR})


def _load_renameat2() -> Callable[[int, bytes, int, bytes], int] | None:
    """Return ``rename_noreplace(old_dir_fd, old, new_dir_fd, new) -> errno`` (0: done), or None.

    ``renameat2`` with RENAME_NOREPLACE (Linux 3.15+, glibc 2.28+): a rename that fails
    with EEXIST, atomically, where a file or folder already has the new name; EINVAL where
    the filesystem cannot do that (the caller then links and unlinks instead).
    """
    function = _libc_function(
        "renameat2",
        [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint],
        ctypes.c_int,
    )
    if function is None:
        return None

    def rename_noreplace(old_dir_fd: int, old: bytes, new_dir_fd: int, new: bytes) -> int:
        if function(old_dir_fd, old, new_dir_fd, new, _RENAME_NOREPLACE) == 0:
            return 0
        return ctypes.get_errno()

    return rename_noreplace


#: Whether an upload can be created without a name (``O_TMPFILE``), and linked into place
#: later through ``/proc/self/fd``.
_CAN_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_TMPFILE_FLAGS = os.O_RDWR | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
#: Errors of an ``O_TMPFILE`` open meaning "not on this filesystem or kernel".
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})


def _link_open_file(fd: int, folder: int, name: str) -> None:
    """Give the open, unnamed file ``fd`` the name ``name`` in the open ``folder``.

    Atomic, and never replaces: `FileExistsError` if the name exists. Other errors name
    the path the file was to have (the file's own is a ``/proc/self/fd`` one, of no use).
    """
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
    except OSError as exc:
        if not isinstance(exc, FileExistsError | FileNotFoundError):
            with contextlib.suppress(OSError):
                exc.filename = os.path.join(os.readlink(f"/proc/self/fd/{folder}"), name)
        raise


_RENAME_NOREPLACE = 1
_renameat2 = _load_renameat2()
#: Errors of `_renameat2` meaning "this filesystem or kernel has no such rename".
_NO_NOREPLACE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def _rename_unless_there(source: str, target: str) -> bool:
    """Rename ``source`` to ``target`` unless a file or folder has that name: False then.

    Atomic either way, as `_move_new`; ``source`` stays where it was when False.
    """
    if _renameat2 is not None:
        error = _renameat2(_AT_FDCWD, _c_path(source), _AT_FDCWD, _c_path(target))
        if error == 0:
            return True
        if error == errno.EEXIST:
            return False
        if error not in _NO_NOREPLACE:
            raise OSError(error, os.strerror(error), target)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        return False
    os.unlink(source)
    return True


def _move_new(source: Path, folder: int, name: str) -> bool:
    """Rename ``source`` to ``name`` in the open ``folder`` unless that name exists: False then.

    Atomic either way: ``renameat2(RENAME_NOREPLACE)``, or where the filesystem lacks it
    (NFS), a hard link, which fails as atomically on an existing name, then an unlink.
    False too if a delete removed the folder since it was opened (see `_replace_in`).
    """
    try:
        if _renameat2 is not None:
            error = _renameat2(_AT_FDCWD, os.fsencode(source), folder, os.fsencode(name))
            if error == 0:
                return True
            if error not in _NO_NOREPLACE:
                raise OSError(error, os.strerror(error), str(source))
        os.link(source, name, dst_dir_fd=folder, follow_symlinks=False)
    except (FileExistsError, IsADirectoryError):
        return False
    except FileNotFoundError:
        if not os.path.lexists(source):
            raise
        return False
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        return False
    with contextlib.suppress(OSError):  # moved in: a name left in .tmp is gc()'s to remove
        os.unlink(source)
    return True


def _link_new(fd: int, folder: int, name: str) -> bool:
    """Link the unnamed upload ``fd`` in as ``name`` unless that name exists: False then.

    As `_move_new`, for an upload without a name: False too if the folder is gone.
    """
    try:
        _link_open_file(fd, folder, name)
    except (FileExistsError, FileNotFoundError):
        return False
    return True


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to the disk now, without waiting (Linux).

    Measured on a 1 GiB put: the final fsync then finds most of the file written, so the
    disk works during the copy and the hashing instead of after them (~1.6x faster here).
    A hint only: where it is missing or fails, the fsync does all the writing.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _copy_hashed(src: int, dst: int, on_copied: OnCopied | None = None) -> tuple[int, str]:
    """Copy descriptor ``src`` to ``dst`` in the kernel, hashing ``dst`` in parallel.

    ``on_copied(n)`` after each step.
    """
    copier = _FdCopier(src, dst)
    hasher = BehindHasher(dst)
    size = 0
    try:
        while n := copier.step():
            start_writeback(dst, size, n)
            size += n
            hasher.advance(size)
            if on_copied is not None:
                on_copied(n)
    except BaseException:
        hasher.abandon()
        raise
    return size, hasher.finish(size)


def _same_content(local: Path, size: int, checksum: str) -> bool:
    """Whether ``local`` is a regular file of ``size`` bytes with this checksum.

    Read only if it may be: a local file of another size can be large, and a get of a
    small file may run in the event loop's thread.
    """
    try:
        found = local.stat()
    except OSError:  # a link to nowhere, or gone again: something else in the way
        return False
    return (
        stat.S_ISREG(found.st_mode) and found.st_size == size and file_checksum(local) == checksum
    )


def file_checksum(path: Path) -> str:
    """Return the SHA-256 hex digest of a local file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, CHECKSUM_ALGORITHM).hexdigest()


def _meta_beside(target: Path) -> Path:
    return target.with_name(f"{META_PREFIX}{target.name}.json")


def _backup_parts(name: str) -> tuple[str, str] | None:
    """Split a backup's name (see `DiskStore.install`) into its id and the file's name."""
    if not name.startswith(BACKUP_PREFIX):
        return None
    token, _, file = name.removeprefix(BACKUP_PREFIX).partition(".")
    return (token, file) if token and file else None


#: The most system calls take in a path (bytes, with its NUL: Linux's PATH_MAX).
PATH_MAX = 4096
#: The most a name the store makes beside a file adds to the file's own name (the backup
#: of its metadata file, ``.asyncdrive-backup.<id>..asyncdrive-meta.<file>.json``).
_LONGEST_DERIVED = len(f"{BACKUP_PREFIX}00000000.{META_PREFIX}.json")


def disk_path_bytes(root: Path, drive: str, component: str, path: str) -> int:
    """Return the length of the longest path the store may make for ``path`` (bytes)."""
    folder = os.fsencode(root / "drives" / drive / component)
    return len(folder) + 1 + len(path.encode()) + _LONGEST_DERIVED


def _meta_backup(backup: Path) -> Path:
    """Return where the backup ``backup`` keeps its file's metadata file, if it had one."""
    token, file = _backup_parts(backup.name) or ("", backup.name)
    return backup.with_name(f"{BACKUP_PREFIX}{token}.{META_PREFIX}{file}.json")


_META_KEYS = ("checksum", "mtime", "size", "version")


def _meta_json(meta: dict[str, object]) -> bytes:
    """Return ``meta`` as compact JSON, its keys sorted (``json.dumps``, faster for a put's)."""
    checksum, mtime, size, version = (meta.get(key) for key in _META_KEYS)
    if (
        len(meta) == len(_META_KEYS)
        and type(checksum) is str
        and checksum.isalnum()
        and checksum.isascii()
        and type(mtime) is float
        and math.isfinite(mtime)
        and type(size) is int
        and type(version) is int
    ):
        return b'{"checksum":"%s","mtime":%r,"size":%d,"version":%d}' % (
            checksum.encode(),
            mtime,
            size,
            version,
        )
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


#: The metadata attribute's compact form: a format byte (1), then the checksum's 32 bytes,
#: mtime (a double), size and version (unsigned): 53 bytes. ext4 keeps a value this small
#: inside the file's inode (its 256-byte inodes hold up to 56 bytes of this attribute); the
#: JSON form (~130 bytes) takes a 4 KiB block of its own, one more block to allocate and
#: write at every put's fsync (~60 us of a small put's ~300 us of disk work, measured
#: 2026-12-04) and twice the disk space of a 4 KiB file.
_META_PACKED = struct.Struct("<B32sdQI")
_META_PACKED_FORMAT = 1


def _meta_attribute(meta: dict[str, object]) -> bytes:
    """Return ``meta`` as the value of the metadata attribute: packed if it fits, else JSON.

    It fits with exactly the four keys, a SHA-256 checksum in lower-case hex, and a size and
    version that fit their fields; `_parse_meta_attribute` reads either form.
    """
    checksum, mtime, size, version = (meta.get(key) for key in _META_KEYS)
    if (
        len(meta) == len(_META_KEYS)
        and type(checksum) is str
        and len(checksum) == 64
        and type(mtime) is float
        and type(size) is int
        and type(version) is int
        and 0 <= size < 1 << 64
        and 0 <= version < 1 << 32
    ):
        try:
            digest = bytes.fromhex(checksum)
        except ValueError:
            digest = b""
        if digest.hex() == checksum:
            return _META_PACKED.pack(_META_PACKED_FORMAT, digest, mtime, size, version)
    return _meta_json(meta)


#: The metadata of a new file while it is written at its path (`DiskStore.open_new`).
_UNFINISHED = "unfinished"
_UNFINISHED_ATTRIBUTE = json.dumps({_UNFINISHED: True}).encode()


def _parse_meta_attribute(value: bytes) -> object:
    """Return the metadata of an attribute `_meta_attribute` wrote (ValueError if it is neither)."""
    if len(value) == _META_PACKED.size and value[0] == _META_PACKED_FORMAT:
        _, digest, mtime, size, version = _META_PACKED.unpack(value)
        return {"checksum": digest.hex(), "mtime": mtime, "size": size, "version": version}
    return json.loads(value)


def meta_on_disk(fd: int) -> dict[str, object] | None:
    """Return the metadata attribute of the open file ``fd``, if it has one.

    None without the attribute (a disk that keeps metadata files).
    """
    try:
        meta = _parse_meta_attribute(os.getxattr(fd, META_XATTR))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def committed_version(meta: dict[str, object] | None) -> int | None:
    """Return the version a file's metadata names, None for a file not finished (or none)."""
    version = None if meta is None or meta.get(_UNFINISHED) else meta.get("version")
    return version if isinstance(version, int) else None


def is_version(meta: dict[str, object] | None, size: int, expected: FileInfo) -> bool:
    """Return whether a file of ``size`` bytes and metadata ``meta`` is version ``expected``.

    Told by its metadata: that version and checksum (the checksum tells apart two writers
    that both made the version, one whose lease ran out: see `Drive.put`), and not a new
    file still being written. Without metadata (a new file in the moment before it is
    marked, still empty; a metadata file missing): by the size.
    """
    if meta is None:
        return size == expected.size
    return (
        not meta.get(_UNFINISHED)
        and meta.get("version") == expected.version
        and meta.get("checksum") == expected.checksum
    )


def _read_json(name: Path, folder: int) -> dict[str, object] | None:
    """Return the JSON object in the file ``name`` of the open ``folder``, if it holds one."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=folder)
    except OSError:
        return None
    try:
        found = json.loads(os.read(fd, 1 << 16))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return found if isinstance(found, dict) else None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_into(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, creating target's folders (again, if a delete raced)."""
    for _attempt in range(10):
        try:
            os.replace(source, target)
            return
        except FileNotFoundError:
            if not os.path.lexists(source):
                raise
        # Missing, or pruned meanwhile: made again; one above pruned as they are made, by a
        # delete of their last file (its mkdir's ENOENT), is made at the next attempt.
        with contextlib.suppress(FileNotFoundError):
            _make_folders(target.parent)
    os.replace(source, target)


def _replace_in(source: Path, folder: int, name: str) -> bool:
    """Rename ``source`` to ``name`` in the open ``folder``; False if that folder is gone.

    A delete may have removed the folder since it was opened (see `DiskStore._prune`):
    the caller then renames by path, which makes the folder again.
    """
    try:
        os.replace(source, name, dst_dir_fd=folder)
    except FileNotFoundError:
        if not os.path.lexists(source):
            raise
        return False
    return True


#: Which file a path names: its (device, inode).
FileIdentity = tuple[int, int]


def file_identity(path: Path) -> FileIdentity:
    """Return the (device, inode) of ``path`` itself (a link is not followed)."""
    found = os.lstat(path)
    return found.st_dev, found.st_ino


def upload_identity(staged: Staged) -> FileIdentity:
    """Return the `file_identity` of a staged upload (from its descriptor, if still open)."""
    found = os.lstat(staged.tmp) if staged.fd is None else os.fstat(staged.fd)
    return found.st_dev, found.st_ino


def _identity_or_none(path: Path) -> FileIdentity | None:
    try:
        return file_identity(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_file(path: Path) -> bool:
    """Tell whether ``path`` is a regular file: not a folder, not a link, not missing."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _unlink_regular_file(folder_fd: int, name: str) -> int:
    """Remove ``name`` of the folder opened as ``folder_fd`` if it is a regular file.

    Returns the type of what stood there (`stat.S_IFMT`: `stat.S_IFREG` for a file now
    removed), 0 if nothing did (removed meanwhile, by another gc, say).
    """
    try:
        kind = stat.S_IFMT(os.lstat(name, dir_fd=folder_fd).st_mode)
        if kind == stat.S_IFREG:
            os.unlink(name, dir_fd=folder_fd)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return kind


#: Whether `os.access` can ask as the effective user (as `open` does), not the real one.
ACCESS_AS_EFFECTIVE = os.access in os.supports_effective_ids


def _may_change(folder: Path) -> bool:
    """Tell whether this process may add or remove entries of ``folder`` (as `open` asks)."""
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=ACCESS_AS_EFFECTIVE)


def _refusal_to_change(folder: Path) -> OSError | None:
    """Return the error removing an entry of ``folder`` would meet, None if it may succeed.

    (A missing folder has nothing to remove, nor a file where the folder was: a put or a
    delete of another process meanwhile.) Not a promise: permissions may change, and a
    sticky folder or an immutable file refuses what this cannot tell.
    """
    if _may_change(folder):
        return None
    # Refused: by the folder, unless it is gone or is a file now (`os.access` says no to
    # those too); and if one was made again since, it is asked again.
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode) or _may_change(folder):
            return None
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    return OSError(code, os.strerror(code), str(folder))


def _walk_every_folder(top: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` of ``top`` that raises where a folder cannot be read (``os.walk`` skips it).

    For the passes that must see the whole drive: a rebuild of the index from part of the
    files would drop the others, and gc would take them for deleted. A folder gone
    meanwhile (removed by a delete) is skipped.
    """

    def refuse(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError | NotADirectoryError):
            raise exc

    return os.walk(top, onerror=refuse)


def _aged(stamp: float, now: float, grace: float) -> bool:
    """Tell whether a file stamped ``stamp`` (its mtime, or ctime) is ``grace`` s old.

    At ``now`` on the disk's clock (`DiskStore.disk_time`); or stamped ``grace`` s ahead
    of it: in the future, the time of a broken clock, which would otherwise never age. The
    stamp is to be read after ``now``: one read before, and a file written since (a
    stamp taken early in a long pass), would be aged by a time it has since left.
    """
    return abs(now - stamp) >= grace


def _aged_now(path: Path, clock: str, now: float, grace: float) -> bool:
    """`_aged`, by ``path``'s ``clock`` (``st_mtime``, ``st_ctime``) read now; False if gone."""
    try:
        return _aged(float(getattr(path.lstat(), clock)), now, grace)
    except FileNotFoundError:
        return False


class PathClash(Exception):
    """An install met a folder where its file goes, or a file where a folder of it goes."""


class _TempNames:
    """New names for temporary files: this process's 64 random bits, then a counter.

    As unlikely to clash between processes of any machines sharing the disk as 64 random
    bits per file, which `secrets` reads from the kernel at each call: one system call less
    per file. A forked child draws bits of its own.
    """

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = f"{TMP_PREFIX}{secrets.token_hex(8)}."
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


_temp_names = _TempNames()
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the root opens at once (then refused as no regular file)
# instead of waiting for a writer; a regular file's reads ignore it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: A file written in place (`DiskStore.open_new`) is made with the sticky bit, which no
#: other of the drive's files has (it means nothing on a file to Linux), and its attribute
#: "unfinished" set next: a writer killed between the two left a file with no metadata,
#: which `DiskStore.scan` took for one put by hand, finished (an empty version 1).
_NEW_FILE_MODE = CREATE_MODE | stat.S_ISVTX


def temp_fd_in(folder: Path) -> tuple[int, Path]:
    """Create a temporary file in ``folder``, with the mode a plain ``open(path, "w")`` gives.

    Returns its descriptor, open for writing, and its path.
    """
    # As tempfile.mkstemp does (a new name, O_EXCL, no link followed), at half its cost; a
    # name that exists all the same is skipped. The mode goes through the umask, as it does
    # for open(path, "w").
    while True:
        name = f"{folder}/{_temp_names.next()}"
        try:
            return os.open(name, _TEMP_FLAGS, CREATE_MODE), Path(name)
        except FileExistsError:
            continue


_UNNAMED_LOCAL_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
#: linkat(2), called as is: `os.link` without a folder descriptor calls link(2), which links
#: a ``/proc/self/fd`` entry itself (EXDEV) rather than the file it leads to.
_linkat: Callable[[int, bytes, int, bytes, int], int] | None = _libc_function(
    "linkat",
    [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int],
    ctypes.c_int,
)
_AT_SYMLINK_FOLLOW = 0x400


def _new_local_file(folder: Path) -> tuple[int, Path | None]:
    """Create a file in the local ``folder`` to copy into; return its descriptor and path.

    Without a name (``O_TMPFILE``, path None) where the filesystem can make one, to be
    linked into place (`_link_unless_there`): nothing to remove if the copy fails or the
    process dies, and one name made instead of two (a temporary name, then the rename):
    ~45 against ~60 µs a 4 KiB copy on ext4 (measured). Else as `temp_fd_in`.
    """
    if _CAN_TMPFILE and _linkat is not None:
        try:
            return os.open(folder, _UNNAMED_LOCAL_FLAGS, unnamed_file_mode()), None
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
    return temp_fd_in(folder)


def _not_a_folder(path: Path) -> OSError:
    """Return the error of a folder to make where ``path`` is no folder.

    A file there; or nothing any more (removed meanwhile: a delete pruned it), which a
    retry makes.
    """
    if not os.path.lexists(path):
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
    return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path))


def _make_folders(folder: Path) -> list[Path]:
    """Make the local ``folder`` and the missing ones above it; return those made, deepest first.

    Raises `NotADirectoryError` naming the local file that stands where a folder must be.
    """
    missing = []
    above = folder
    while not os.path.lexists(above) and above.parent != above:
        missing.append(above)
        above = above.parent
    if not above.is_dir():
        raise _not_a_folder(above)
    made: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:  # made meanwhile (by another get, say), or a file
                if not path.is_dir():
                    raise _not_a_folder(path) from None
                continue
            made.insert(0, path)
    except BaseException:
        _remove_empty(made, own=folder)
        raise
    return made


class _FoldersInUse:
    """The local folders the gets of this process are copying into, by how many of them.

    A failed get removes the folders it made, if empty (`_remove_empty`), but never one
    another get copies into: that one's file has no name until linked in (`O_TMPFILE`),
    so the folder looks empty, and its link would fail.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._counts: collections.Counter[Path] = collections.Counter()

    @contextlib.contextmanager
    def using(self, folder: Path) -> Iterator[None]:
        """Hold ``folder`` (and the folders above it) for the duration of a copy into it."""
        with self.lock:
            self._counts[folder] += 1
        try:
            yield
        finally:
            with self.lock:
                self._counts[folder] -= 1
                if not self._counts[folder]:
                    del self._counts[folder]

    def holds(self, folder: Path, own: Path | None) -> bool:
        """Return whether another copy goes into ``folder`` or below it (with `lock` held).

        ``own``: where the caller's own copy went, not counted.
        """
        return any(
            count - (used == own) > 0 and (used == folder or folder in used.parents)
            for used, count in self._counts.items()
        )


_folders_in_use = _FoldersInUse()


def _remove_empty(folders: list[Path], own: Path | None = None) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; keep the others.

    Nor one that another get of this process copies into (see `_FoldersInUse`; ``own``:
    the folder the caller's own copy went into, registered there).
    """
    with _folders_in_use.lock:
        for folder in folders:
            if _folders_in_use.holds(folder, own):
                return
            try:
                os.rmdir(folder)
            except OSError:  # another get's file in it meanwhile, or gone
                return


def _link_unless_there(fd: int, target: Path) -> bool:
    """Give the open, unnamed file ``fd`` the name ``target``, unless that name exists: False.

    Atomic either way; a link at ``target`` counts as a name, never followed.
    """
    assert _linkat is not None  # as `_new_local_file` checked
    proc_path = f"/proc/self/fd/{fd}".encode()
    if _linkat(_AT_FDCWD, proc_path, _AT_FDCWD, _c_path(target), _AT_SYMLINK_FOLLOW) == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EEXIST:
        return False
    raise OSError(error, os.strerror(error), os.fspath(target))


def _link_under_a_temporary_name(fd: int, folder: Path) -> Path:
    """Give the open, unnamed file ``fd`` a new temporary name in ``folder``; return it."""
    while True:
        name = Path(f"{folder}/{_temp_names.next()}")
        if _link_unless_there(fd, name):
            return name


def _temp_beside(folder: Path) -> tuple[BinaryIO, Path]:
    fd, path = temp_fd_in(folder)
    return os.fdopen(fd, "wb"), path


#: A get copies a file up to this size before it looks for a local file in its way (in
#: the same link or rename, which never replaces one): most often there is none, and
#: looking would add a system call to each (a folder get looks first once it found one).
_COPY_BEFORE_LOOKING_MAX = 1 << 20

#: Filesystems on a disk of this machine (or in its memory): their calls cost CPU, not
#: waiting. Any other (NFS, SMB, FUSE, Ceph, Lustre, 9p, or unknown) may be far away.
_LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs", "jfs", "nilfs2",
     "reiserfs", "tmpfs", "ramfs", "overlay"}
)  # fmt: skip


#: Filesystems where the fsync of a file just created also makes its name durable: the
#: folder entry was made with the file, in the same transaction of the journal (ext3,
#: ext4), the log (XFS) or the log tree (Btrfs), which that fsync commits; an ext4 without a
#: journal writes the folder of a new file out at its first fsync (``ext4_sync_parent``).
#: A rename or link into a folder is not covered: it needs the folder's own fsync.
_NEW_NAMES_DURABLE = frozenset({"ext3", "ext4", "xfs", "btrfs"})


def is_local_filesystem(path: str) -> bool:
    """Whether ``path`` (or its nearest folder that exists) is on a filesystem of this machine.

    Example:
        >>> is_local_filesystem("/tmp")
        True

    """
    return filesystem_type(Path(path)) in _LOCAL_FILESYSTEMS


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """Return the type of the filesystem that holds ``path`` ("ext4", "nfs4", ...), or None.

    Read from the mount table (``/proc/self/mountinfo``, or the text given), by the
    device number of ``path``, or of its nearest folder that exists (a root made only at
    the first put): None where there is no such table (not Linux), ``path`` cannot be
    looked at, or no mount has its device (a btrfs subvolume).

    Example:
        >>> filesystem_type(Path("/proc"))
        'proc'

    """
    try:
        existing = next((p for p in (path, *path.parents) if p.exists()), path)
        device = os.stat(existing).st_dev
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for line in mountinfo.splitlines():
        # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        fields, _, after = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 2 and parts[2] == wanted and after:
            return after.split()[0]
    return None


class OtherVersionError(FileNotFoundError):
    """The bytes of the version asked for are not at the path, nor in a backup beside it.

    Raised by `DiskStore.open_file` where the file's metadata attribute names another
    version: one committed since the index was read (the backup of the one asked for
    dropped), one being written over a path deleted since (not committed, maybe never), a
    new file still being written there. The caller reads the index again.
    """


class LocalPathGoneError(OSError):
    """A local folder a get writes into went away during it (errno ENOENT).

    Not a `FileNotFoundError`, which a get reads as its drive file missing.
    """


class DiskStore:
    """The files of one drive under ``<root>/drives/<name>``."""

    def __init__(self, root: Path, drive: str) -> None:
        self.root = root
        self.drive = drive
        self.base = root / "drives" / drive
        self.tmp_dir = self.base / ".tmp"
        #: The time (seconds since the epoch) a new version is stamped with: its drive's
        #: connection sets the Redis server's, which its events carry.
        self.clock: Callable[[], float] = time.time
        #: Whether metadata goes into an extended attribute (None: not tried yet), else a file.
        self.meta_in_xattr: bool | None = None if hasattr(os, "setxattr") else False
        #: Whether unsynced uploads are created without a name (see `_stage`).
        self.unnamed_uploads = _CAN_TMPFILE
        #: Whether the root is on a filesystem of this machine: None until `on_local_disk`
        #: is first read (in a worker thread: it looks at the disk).
        self.local_disk: bool | None = None
        #: Whether the fsync of a new file makes its name durable too, so a new small file
        #: is written straight at its path (`open_new`): set with `local_disk`.
        self.new_names_durable = False

    @property
    def on_local_disk(self) -> bool:
        """Whether the root is on a filesystem of this machine (see `filesystem_type`).

        Its calls then cost CPU, not waiting: concurrent copies of small files go faster
        together in one thread than side by side (see `Drive.get`). False where unknown.
        Looked up once (a blocking look at the disk), then kept in `local_disk`.
        """
        if self.local_disk is None:
            kind = filesystem_type(self.root)
            self.new_names_durable = kind in _NEW_NAMES_DURABLE
            self.local_disk = kind in _LOCAL_FILESYSTEMS
        return self.local_disk

    def file_path(self, component: str, path: str) -> Path:
        """Where ``component``'s copy of ``path`` lives.

        Raises `InvalidPathError` if a symbolic link stands anywhere between the root and
        the file: asyncdrive never follows a link, so nothing planted inside the root can
        lead a read or a write out of it.
        """
        self._refuse_links(self._parts(component, path), path)
        return self.base / component / path

    def _parts(self, component: str, path: str) -> list[str]:
        """Return the parts of the path of ``component``'s copy of ``path``, below the root."""
        return ["drives", self.drive, component, *path.split("/")]

    def _open_in_root(self, parts: list[str], path: str, flags: int, mode: int = 0) -> int:
        """Open ``<root>/<parts>`` with ``flags``, following no link below the root.

        Raises `InvalidPathError` if a link stands on the way, else the open's own error
        (`FileNotFoundError`, ...). One ``openat2`` where the system has it (see
        `_load_openat2`), else the check of each part, then a plain open.
        """
        found = self._open_without_links(parts, flags, mode)
        if found >= 0:
            return found
        self._refuse_links(parts, path)
        return os.open("/".join((os.fspath(self.root), *parts)), flags | os.O_NOFOLLOW, mode)

    def _open_without_links(self, parts: list[str], flags: int, mode: int = 0) -> int:
        """Open as `_open_in_root` does, by ``openat2``; -1 if that cannot say.

        It cannot without openat2, with a link on the way, or a root it cannot open.
        """
        if _openat2 is None:
            return -1
        # The root's path has no link in it (the settings resolve it): the whole path, from
        # the top, with no link anywhere, is the file below the root, in one system call
        # (not three: open the root, open below it, close it; measured: 64 concurrent small
        # puts ~9% and gets ~4% faster). A link found may be on the root's own way (made
        # since), and a long path may not fit: then below the root, opened, as before.
        name = "/".join((os.fspath(self.root), *parts))
        fd, error = _openat2(_AT_FDCWD, os.fsencode(name), flags, mode, _RESOLVE_NO_SYMLINKS)
        if fd >= 0:
            return fd
        if error not in (errno.ELOOP, errno.ENAMETOOLONG):
            raise OSError(error, os.strerror(error), name)
        try:
            root_fd = os.open(self.root, _PROBE_FLAGS | os.O_DIRECTORY)
        except OSError:
            return -1  # the walk then says what is wrong, as it would have
        try:
            fd, error = _openat2(root_fd, os.fsencode("/".join(parts)), flags, mode)
        finally:
            os.close(root_fd)
        if fd >= 0 or error in (errno.ELOOP, errno.EXDEV):
            return fd
        raise OSError(error, os.strerror(error), name)  # FileNotFoundError for ENOENT, ...

    def _refuse_links(self, parts: list[str], path: str) -> None:
        current = os.fspath(self.root)  # plain strings: this runs for every file touched
        try:
            probe = self._open_without_links(parts, _PROBE_FLAGS)
        except OSError as exc:
            if exc.errno in _NO_LINK_ON_THE_WAY:
                return
            probe = -1  # such as a folder it may not search: the walk raises as before
        if probe >= 0:
            os.close(probe)
            return
        # A link, or no openat2: the walk names the link in its error.
        for part in parts:
            current = f"{current}/{part}"
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return  # what does not exist yet is created as plain folders and files
            if stat.S_ISLNK(mode):
                raise self._link_refused(path, current)

    def _link_refused(self, path: str, link: str) -> InvalidPathError:
        """Return the error of ``path`` refused for the ``link`` on its way (or at it)."""
        return InvalidPathError(
            f"Drive {self.drive!r}: refusing {path!r}: {link!r} is a symbolic link, and "
            "asyncdrive never follows links inside its root. Remove it."
        )

    def meta_path(self, component: str, path: str) -> Path:
        """Where the metadata file of ``component``'s copy of ``path`` goes, if it has one."""
        return _meta_beside(self.file_path(component, path))

    # -- writing -----------------------------------------------------------------------------

    def _new_upload(self) -> tuple[int, Path]:
        """Create an empty temporary upload in ``.tmp`` (made on first use): its fd and path.

        Created as `temp_fd_in` does, through `_open_in_root`: the check that no link leads
        there is the open itself.
        """
        made_folder = False
        while True:
            name = _temp_names.next()
            parts = ["drives", self.drive, ".tmp", name]
            try:
                fd = self._open_in_root(parts, ".tmp", _TEMP_FLAGS, CREATE_MODE)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if made_folder:
                    raise
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                made_folder = True
                continue
            return fd, self.tmp_dir / name

    def _new_unnamed_upload(self) -> int:
        """Create an upload without a name (``O_TMPFILE``) on the disk of ``.tmp``: its fd.

        -1 where the filesystem or kernel cannot (then never tried again by this store).
        """
        parts = ["drives", self.drive, ".tmp"]
        for _attempt in range(2):
            try:
                return self._open_in_root(parts, ".tmp", _TMPFILE_FLAGS, unnamed_file_mode())
            except FileNotFoundError:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
                break
        self.unnamed_uploads = False
        return -1

    def _stage(
        self,
        write: Callable[[int], tuple[int, str]],
        sync: bool,
        into: OpenNew | None = None,
    ) -> Staged:
        """Write a new upload with ``write(fd) -> (size, checksum)``; fsync it if ``sync``.

        Unsynced, it stays open for `install` (see `Staged.fd`). Where the disk allows it has
        no name yet (`Staged.named`), and stays open synced or not: its fsync then writes out
        no folder (ext4 writes the folder of a new name at the first fsync of its file: a
        folder the upload leaves at once), and a process that dies, or a crash, leaves
        nothing in ``.tmp`` (a large upload cut short, GiBs until `gc` otherwise). On any
        error it is removed.

        ``into()``, called once the source is open, may return a new file at its path
        (`DiskStore.open_new`; ``sync`` is then False), which is written instead: left
        unsynced and open, and on an error closed but left for the caller to remove.
        """
        new = None if into is None else into()
        if new is not None:
            try:
                size, checksum = write(new.fd)
            except BaseException:
                os.close(new.fd)  # the file itself is the caller's to remove
                raise
            return Staged(new.path, size, checksum, new.fd, in_place=True)
        fd = self._new_unnamed_upload() if self.unnamed_uploads else -1
        named = fd < 0
        if named:
            fd, tmp = self._new_upload()
        else:
            tmp = self.tmp_dir / _temp_names.next()
        try:
            size, checksum = write(fd)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            if named:
                tmp.unlink(missing_ok=True)
            raise
        if sync and named:
            os.close(fd)
            return Staged(tmp, size, checksum)
        return Staged(tmp, size, checksum, fd, named)

    def _name_upload(self, staged: Staged) -> None:
        """Link an unnamed upload into ``.tmp`` as ``staged.tmp`` (see `Staged.named`)."""
        if staged.named or staged.fd is None:
            return
        folder = self._open_in_root(["drives", self.drive, ".tmp"], ".tmp", _FOLDER_FLAGS)
        try:
            _link_open_file(staged.fd, folder, staged.tmp.name)
        finally:
            os.close(folder)
        object.__setattr__(staged, "named", True)

    def stage_file(
        self,
        source: Path,
        sync: bool = True,
        into: OpenNew | None = None,
        *,
        on_copied: OnCopied | None = None,
    ) -> Staged:
        """Copy a local file into a temporary upload, and hash it.

        A large file is copied inside the kernel while another thread hashes the upload
        behind the copy; a small one goes through one buffer, hashed in the same pass.
        Memory stays bounded (a few MiB) whatever the size. ``sync=False`` leaves the fsync
        to `install` (one fsync then covers the bytes and the metadata). ``into``: see
        `_stage`. ``on_copied(n)`` as the bytes are copied (for ``progress=``).
        """
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(src)
            if stat.S_ISDIR(st.st_mode):  # as open() refuses it
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(source))
            if stat.S_ISREG(st.st_mode) and st.st_size >= PARALLEL_HASH_MIN:
                return self._stage(lambda fd: _copy_hashed(src, fd, on_copied), sync, into)
            if not stat.S_ISREG(st.st_mode):
                return self._stage(
                    lambda fd: _copy_fd(src, fd, CHUNK, on_copied=on_copied), sync, into
                )
            chunk = min(st.st_size + 1, CHUNK)
            return self._stage(
                lambda fd: _copy_fd(src, fd, chunk, st.st_size, on_copied), sync, into
            )
        finally:
            os.close(src)

    def stage_bytes(
        self, data: bytes | bytearray | memoryview, sync: bool = True, into: OpenNew | None = None
    ) -> Staged:
        """Write ``data`` into a temporary upload (``sync``, ``into``: as for `stage_file`)."""

        def write(fd: int) -> tuple[int, str]:
            _write_all(fd, data)
            return len(data), hashlib.new(CHECKSUM_ALGORITHM, data).hexdigest()

        return self._stage(write, sync, into)

    def open_upload(self) -> tuple[BinaryIO, Path, bool]:
        """Create an empty temporary upload: return it open for writing, and its name.

        And whether it has that name yet: where the disk allows, it has none (see
        `Staged.named`), and goes with its descriptor.
        """
        fd = self._new_unnamed_upload() if self.unnamed_uploads else -1
        if fd >= 0:
            return os.fdopen(fd, "wb"), self.tmp_dir / _temp_names.next(), False
        fd, tmp = self._new_upload()
        return os.fdopen(fd, "wb"), tmp, True

    def discard(self, staged: Staged) -> None:
        """Remove an upload that will not be installed."""
        discard_upload(staged)

    def install(
        self,
        staged: Staged,
        component: str,
        path: str,
        meta: dict[str, object],
        *,
        sync_folder: bool = True,
    ) -> Path | None:
        """Move a staged upload into place with its metadata; return a backup of what it replaced.

        The metadata (see `read_meta`) is attached to the upload, the upload fsynced, renamed
        into place, and its folder fsynced: once this returns, the file survives a crash.
        The backup, or None when the path held no file, lets `restore` undo the install if
        the index refuses the commit: a hard link to the previous bytes beside them,
        ``.asyncdrive-backup.<id>.<file>`` (and one to their metadata file, if they have
        one), made and fsynced with the rename, so no crash leaves a replaced file without
        its backup. The id is this install's own: the next put of the path may back up
        before this one's `drop_backup` (after the commit, without the lock) is done.

        All or nothing: if the upload cannot be moved into place (a put of a path above or
        below it, in the same component, holds the spot), what was moved is put back and
        `PathClash` is raised.

        ``sync_folder=False`` leaves the folder's fsync to the caller (`sync_folder_of`),
        which makes one for the installs of many files into one folder.
        """
        parts = self._parts(component, path)
        folder = self._open_folder(parts[:-1])
        try:
            return self._install(staged, component, path, meta, parts, folder, sync_folder)
        finally:
            if folder >= 0:
                os.close(folder)

    def install_new(
        self,
        staged: Staged,
        component: str,
        path: str,
        meta: dict[str, object],
        *,
        sync_folder: bool = True,
    ) -> FileIdentity | None:
        """Install ``staged`` where no file is yet, as `install` does; return its identity.

        For a put that holds no commit lock: the link (of an upload without a name) or the
        rename fails, atomically, if any file has the name by then, so it never replaces
        one (another writer's, or one of the index); with nothing to replace there is no
        backup. Returns None, having moved nothing (the upload stays staged, for `install`
        under the lock), where this way does not apply:
        a file or folder at the path, a link or a file on the way, a disk without extended
        attributes, or a system without ``openat2`` (the folder is opened through it).
        Missing folders of the path are made (and pruned again by `restore`). On an error
        the new file is removed again. ``sync_folder=False``: as for `install` (the caller
        fsyncs the folder, and takes the file back if that fails).
        """
        if self.meta_in_xattr is False:
            return None
        parts = self._parts(component, path)
        folder = self._open_folder(parts[:-1])
        if folder < 0:
            folder = self._make_folder(parts, path)
            if folder < 0:
                return None
        try:
            try:  # taken anyway if the rename refuses: skip the fsync before it, mostly
                os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
                return None
            except FileNotFoundError:
                pass
            moved = False
            try:
                attached = self._attach_meta(staged, meta)
                identity = upload_identity(staged)
                if attached and not staged.named:
                    assert staged.fd is not None
                    moved = _link_new(staged.fd, folder, parts[-1])
            finally:
                if staged.named or moved:
                    _close_upload(staged)  # else it stays open: `install` names it
            if staged.named:
                moved = attached and _move_new(staged.tmp, folder, parts[-1])
            if not moved:
                return None
            try:
                if sync_folder:
                    os.fsync(folder)
            except BaseException:
                self.restore(None, component, path, installed=identity)
                raise
            return identity
        finally:
            os.close(folder)

    def open_new(self, component: str, path: str) -> NewFile | None:
        """Create ``component``'s ``path`` as a new, empty file open for writing, if none is.

        For a new small file, written there (`stage_file` ``into=``) and finished by
        `settle_new`: no upload to name, and no fsync of the folder, where the disk makes a
        new file's name durable with the file's fsync (`new_names_durable`) and keeps
        metadata in an attribute. None where this way does not apply (such a disk not
        known yet, a file or anything at the path, a link on the way, no ``openat2``): the
        put then stages an upload (`install_new`). Missing folders of the path are made
        (and pruned again by `restore`). The caller removes the file if it is not settled
        (`restore` with its identity).
        """
        if not (self.new_names_durable and self.meta_in_xattr) or _openat2 is None:
            return None
        parts = self._parts(component, path)
        try:
            fd = self._open_without_links(parts, _NEW_FILE_FLAGS, _NEW_FILE_MODE)
        except FileNotFoundError:
            folder = self._make_folder(parts, path)
            if folder < 0:
                return None
            try:
                flags = _NEW_FILE_FLAGS | os.O_NOFOLLOW
                fd = os.open(parts[-1], flags, _NEW_FILE_MODE, dir_fd=folder)
            except OSError:
                return None
            finally:
                os.close(folder)
        except OSError:  # a file, folder or link at the path, a file on the way, ...
            return None
        if fd < 0:
            return None
        found = os.fstat(fd)
        new = NewFile(fd, self.base / component / path, (found.st_dev, found.st_ino))
        try:  # until `settle_new` sets the real one (see `DiskFile.finished`)
            os.setxattr(fd, META_XATTR, _UNFINISHED_ATTRIBUTE)
        except BaseException:
            os.close(fd)
            self.restore(None, component, path, installed=new.identity)
            raise
        # The attribute says "unfinished" now: the sticky bit, which said so from the
        # file's creation, goes (left where refused: the attribute decides wherever set).
        with contextlib.suppress(OSError):
            os.fchmod(fd, stat.S_IMODE(found.st_mode) & ~stat.S_ISVTX)
        return new

    def settle_new(
        self,
        staged: Staged,
        meta: dict[str, object],
        *,
        sync: bool = True,
        start_writing: bool = True,
    ) -> bool:
        """Attach the metadata to a file written in place (`open_new`), fsync and close it.

        Once this returns True, the file and its name survive a crash. False (still at
        its path: the caller removes it) where the disk refused the attribute after all.
        ``sync=False`` leaves the fsync and the close to `sync_new`, the disk starting to
        write the file meanwhile (unless not ``start_writing``: for a `SyncTogether`): for
        many files, written one after the other, then fsynced one after the other
        (measured, 32 new files of 4 KiB: ~1.7-2x as fast as an fsync after each, most of
        their writing done by the first fsync's wait).
        """
        if sync:
            try:
                return self._attach_meta(staged, meta)
            finally:
                _close_upload(staged)
        assert staged.fd is not None
        try:
            if not self._set_meta_attribute(staged.fd, meta):
                _close_upload(staged)
                return False
            if start_writing:
                start_writeback(staged.fd, 0, 0)
        except BaseException:
            _close_upload(staged)
            raise
        return True

    def sync_new(self, staged: Staged) -> None:
        """Fsync and close a file `settle_new` left open (``sync=False``).

        An error names the file (an fsync's own does not): one of many in the caller's call.
        """
        try:
            assert staged.fd is not None
            os.fsync(staged.fd)
        except OSError as exc:
            exc.filename = exc.filename or str(staged.tmp)
            raise
        finally:
            _close_upload(staged)

    def close_new(self, staged: Staged) -> None:
        """Close a file `settle_new` left open, made durable otherwise (`SyncTogether`)."""
        _close_upload(staged)

    def sync_together(self, files: int) -> SyncTogether:
        """Return a `SyncTogether` for the ``files`` new files of one call (inert off local disks).

        Example:
            >>> store.sync_together(32)
            <SyncTogether on device 64768, planned=True>

        """
        return SyncTogether(self.base if self.on_local_disk else None, files)

    def _make_folder(self, parts: list[str], path: str) -> int:
        """Make the folders of ``parts[:-1]`` that are missing, then open the last (`_open_folder`).

        -1 where that fails: a link or a file on the way, or a delete that pruned it again;
        at once where it cannot be opened (no ``openat2``).
        """
        if _openat2 is None:
            return -1
        try:
            self._refuse_links(parts, path)
            _make_folders(Path(self.root, *parts[:-1]))
        except (OSError, InvalidPathError):
            return -1
        return self._open_folder(parts[:-1])

    def sync_folder_of(self, component: str, path: str) -> None:
        """Fsync the folder of ``component``'s ``path``: what `install` does, unless told not to."""
        _fsync_dir((self.base / component / path).parent)

    def _open_folder(self, parts: list[str]) -> int:
        """Open the existing folder ``<root>/<parts>`` through openat2 (no link followed).

        Returns -1 where that cannot be had (no openat2, a link on the way, the folder
        missing): the install then goes by paths, which make the folders or name the link.
        """
        try:
            return self._open_without_links(parts, _FOLDER_FLAGS)
        except OSError:
            return -1

    def _install(
        self,
        staged: Staged,
        component: str,
        path: str,
        meta: dict[str, object],
        parts: list[str],
        folder: int,
        sync_folder: bool = True,
    ) -> Path | None:
        """`install`, with ``folder`` the target's folder opened by `_open_folder`, or -1.

        Through the open folder, the last part's check, the rename and the folder's fsync
        take three system calls and no path walk; by paths, the check of every part,
        the rename (making the folders) and an open, fsync and close of the folder.
        """
        if folder >= 0:
            target = self.base / component / path
            try:
                mode: int | None = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and stat.S_ISLNK(mode):
                self._refuse_links(parts, path)  # raises, naming the link
            replaces_file = mode is not None and stat.S_ISREG(mode)
        else:
            target = self.file_path(component, path)
            mode = None
            replaces_file = _is_file(target)
        meta_target = _meta_beside(target)
        # Where nothing is at the path (a folder put's new files, mostly), an upload without
        # a name is linked in, as by `install_new`; anything else moves in from `.tmp`.
        link_in = folder >= 0 and mode is None and not staged.named
        backup, had_meta_file = self._backup(target) if replaces_file else (None, False)
        meta_tmp: Path | None = None
        moved = False  # whether anything of the drive's files has changed yet
        try:
            linked = False
            try:
                attached = self._attach_meta(staged, meta)
                if link_in and attached:
                    assert staged.fd is not None
                    linked = _link_new(staged.fd, folder, parts[-1])
                if not linked:
                    self._name_upload(staged)
            finally:
                _close_upload(staged)
            if not attached:
                meta_tmp = self._put_meta_file(meta, meta_target)
                moved = True
            if linked or (folder >= 0 and _replace_in(staged.tmp, folder, parts[-1])):
                moved = True
                if attached and had_meta_file:  # that of the bytes replaced: stale now
                    with contextlib.suppress(FileNotFoundError):  # (backed up: `restore`)
                        os.unlink(meta_target.name, dir_fd=folder)
                if sync_folder:
                    os.fsync(folder)
            else:
                _replace_into(staged.tmp, target)
                moved = True
                if attached and had_meta_file:
                    meta_target.unlink(missing_ok=True)
                if sync_folder:
                    _fsync_dir(target.parent)
        except BaseException as exc:
            # Whatever stopped it (a clash, a full disk), the previous file goes back.
            if meta_tmp is not None:
                meta_tmp.unlink(missing_ok=True)
            if moved:
                self.restore(backup, component, path)
            else:  # the previous file never left: just drop the backup, and new folders
                if backup is not None:
                    self.drop_backup(backup)
                self._prune(target.parent, component)
            # A folder or a file in the way. A PermissionError is the disk's refusal (read
            # only, no access, an immutable folder): reported as such, not as a clash.
            if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
                raise PathClash(exc) from exc
            raise
        return backup

    def _backup(self, target: Path) -> tuple[Path, bool]:
        """Hard-link ``target`` and its metadata file beside them, under a new id.

        Returns the backup, and whether ``target`` had a metadata file (backed up too).
        """
        backup = target.with_name(f"{BACKUP_PREFIX}{secrets.token_hex(4)}.{target.name}")
        try:
            os.link(target, backup, follow_symlinks=False)
        except PermissionError as exc:
            if exc.errno == errno.EPERM and os.stat(target).st_uid != os.geteuid():
                raise ExplainedOSError(
                    errno.EPERM, str(target),
                    "it is another user's file, and replacing it takes access to read and "
                    "write it (its backup, kept until the commit, is a hard link: "
                    "fs.protected_hardlinks allows no other)",
                    "Give this user read and write access to the file (umask 002 for every "
                    "user of a group-shared drive), or replace it as its owner.",
                ) from exc  # fmt: skip
            raise
        meta_target = _meta_beside(target)
        if not _is_file(meta_target):
            return backup, False
        os.link(meta_target, _meta_backup(backup), follow_symlinks=False)
        return backup, True

    def _attach_meta(self, staged: Staged, meta: dict[str, object]) -> bool:
        """Set the metadata attribute on the upload, and fsync it; False if the disk keeps none.

        The upload is fsynced either way (its bytes, if staged with ``sync=False``, and the
        attribute: one fsync), through `Staged.fd` if it is still open. Once a filesystem
        has refused user attributes, this store uses metadata files.
        """
        fd = staged.fd
        if fd is None:
            fd = os.open(staged.tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            attached = self.meta_in_xattr is not False and self._set_meta_attribute(fd, meta)
            os.fsync(fd)
        finally:
            if staged.fd is None:
                os.close(fd)
        return attached

    def _set_meta_attribute(self, fd: int, meta: dict[str, object]) -> bool:
        try:
            os.setxattr(fd, META_XATTR, _meta_attribute(meta))
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:
                raise
            self.meta_in_xattr = False
            return False
        self.meta_in_xattr = True
        return True

    def read_meta(self, component: str, path: str) -> dict[str, object] | None:
        """Return the metadata stored with ``component``'s copy of ``path``, if any."""
        target = self.file_path(component, path)
        try:
            if self.meta_in_xattr is not False:
                with contextlib.suppress(OSError):
                    value = os.getxattr(target, META_XATTR, follow_symlinks=False)
                    found = _parse_meta_attribute(value)
                    if isinstance(found, dict):
                        return found
            found = json.loads(_meta_beside(target).read_bytes())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def restore(
        self,
        backup: Path | None,
        component: str,
        path: str,
        *,
        installed: FileIdentity | None = None,
    ) -> None:
        """Undo an `install`: put the previous bytes and metadata back, or remove the new ones.

        Where a folder now stands at the path, or a file above it, there is nothing of this
        install left to undo: the backup is just dropped. So too where ``installed``, the
        `file_identity` of the upload this install moved into place, is no longer the file
        at the path: another writer installed over it (its commit lock's lease had run out),
        and that file is the other writer's to keep or undo.
        """
        target = self.file_path(component, path)
        if installed is not None and _identity_or_none(target) != installed:
            if backup is not None:
                self.drop_backup(backup)
            return
        meta_target = _meta_beside(target)
        meta_saved = None if backup is None else _meta_backup(backup)
        if backup is not None and meta_saved is not None and not _is_file(meta_saved):
            with contextlib.suppress(OSError):
                if os.path.samestat(os.lstat(backup), os.lstat(target)):
                    # The install stopped before it moved anything (it had no metadata
                    # file to back up, or had not backed it up yet): leave the file be.
                    self.drop_backup(backup)
                    return
        for current, saved in ((target, backup), (meta_target, meta_saved)):
            with contextlib.suppress(IsADirectoryError, NotADirectoryError):
                if saved is not None and _is_file(saved):
                    os.replace(saved, current)  # a no-op if both are the same file
                elif _is_file(current):
                    current.unlink()
        if backup is not None:
            self.drop_backup(backup)
        self._prune(target.parent, component)

    def installed_version(self, component: str, path: str) -> int | None:
        """Return the version the metadata of ``component``'s ``path`` records, if any."""
        version = (self.read_meta(component, path) or {}).get("version")
        return version if isinstance(version, int) else None

    def drop_backup(self, backup: Path) -> None:
        """Remove the backup left by `install` (the bytes last: see `leftovers`)."""
        _meta_backup(backup).unlink(missing_ok=True)
        backup.unlink(missing_ok=True)

    def in_the_way(self, component: str, path: str) -> list[str]:
        """Return the files of ``component`` on disk that keep ``path`` from being a file.

        A file where a folder of ``path`` goes, or the files in a folder standing at
        ``path`` (their drive paths). After a `PathClash`.
        """
        parts = path.split("/")
        for end in range(1, len(parts) + 1):
            prefix = "/".join(parts[:end])
            current = self.base / component / prefix
            try:
                mode = current.lstat().st_mode
            except (FileNotFoundError, NotADirectoryError):
                return []
            if stat.S_ISREG(mode):
                return [prefix]
            if not stat.S_ISDIR(mode):
                return []
        found: list[str] = []  # a folder where the file goes: what it holds
        for dirpath, dirnames, filenames in os.walk(self.base / component / path):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            found.extend(
                (Path(dirpath) / name).relative_to(self.base / component).as_posix()
                for name in filenames
                if not name.startswith(RESERVED_PREFIX)
            )
        return found

    def disk_time(self) -> float:
        """Return the time on the disk's clock: the modification time of a file made now.

        What `Drive.gc` ages files by (and `leftovers`, `remove_empty_folders`): the disk
        (a file server) stamps them, by a clock that need not be this machine's. By this
        one's, a gc 2 h ahead took a put 3 s old for one 2 h old, and removed it before its
        commit. This machine's clock where no file can be made (a read-only root), or
        where the drive has no folder yet (nothing to age: none is made for it).
        """
        if not self.base.is_dir():
            return time.time()
        try:
            fd = self._new_unnamed_upload() if self.unnamed_uploads else -1
            made = None
            if fd < 0:
                fd, made = self._new_upload()
        except OSError:
            return time.time()
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            if made is not None:
                made.unlink(missing_ok=True)

    def remove_empty_folders(self, grace: float) -> int:
        """Remove the drive's empty folders unchanged for ``grace`` s; return how many.

        Left by writers that died between making a file's folder and installing it (or
        by hand): a folder, even empty, stands in the way of a file of its name. A
        folder emptied by this pass goes too, if it was unchanged that long before it.
        Aged by the disk's clock (`disk_time`), read once a component's are found, and
        their stamps after it (see `_aged`).
        """
        removed = 0
        for component_dir in self._component_dirs():
            found: list[str] = []
            for dirpath, dirnames, _ in os.walk(component_dir):
                dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
                found.extend(os.path.join(dirpath, name) for name in dirnames)
            now = self.disk_time()
            for folder in sorted(found, key=len, reverse=True):  # (the deepest first)
                if _aged_now(Path(folder), "st_mtime", now, grace):
                    with contextlib.suppress(OSError):  # not empty (or gone): kept
                        os.rmdir(folder)
                        removed += 1
        return removed

    def removal_refused(self, component: str, paths: Sequence[str]) -> dict[str, OSError]:
        """Return, by path, why this process could not remove ``component``'s copies now.

        Asked before a delete lets files go from the index, which it does before their
        bytes (a reader never finds an entry without them): a folder this user may not
        change (no write or search access, a read-only mount, an immutable folder) would
        otherwise lose its files from the drive, bytes kept, by a delete that fails.
        """
        verdicts: dict[Path, OSError | None] = {}
        refused: dict[str, OSError] = {}
        for path in paths:
            folder = (self.base / component / path).parent
            if folder not in verdicts:
                verdicts[folder] = _refusal_to_change(folder)
            verdict = verdicts[folder]
            if verdict is not None:
                refused[path] = verdict
        return refused

    def remove(self, component: str, path: str) -> bool:
        """Remove ``component``'s copy of ``path`` and its metadata, then empty folders.

        Returns whether there was a file to remove. Backups of it (see `install`) stay for
        their writers, or `DiskStore.leftovers`.
        """
        (removed,) = self.remove_many(component, [path])
        if isinstance(removed, Exception):
            raise removed
        return removed

    def missing_files(self, component: str, paths: Sequence[str]) -> list[str]:
        """Return those of ``paths`` of which ``component`` has no file on disk."""
        return [path for path in paths if not self.file_path(component, path).exists()]

    def remove_many(self, component: str, paths: Sequence[str]) -> list[bool | Exception]:
        """`remove` each path, then each folder left empty (once a folder, not once a file).

        Returns, for each path, whether there was a file to remove, or why it could not be
        removed (an `OSError`; `InvalidPathError` for a link planted at it or on its way):
        a path that cannot be removed does not stop the others.
        """
        by_folder: dict[str, list[tuple[int, str]]] = {}
        for at, path in enumerate(paths):
            folder, _, name = path.rpartition("/")
            by_folder.setdefault(folder, []).append((at, name))
        removed: list[bool | Exception] = [False] * len(paths)
        # Each folder is opened once (no link on its way, as `file_path` checks) and its
        # files removed by name in it: ~3 system calls a file, not ~7 (a recursive delete
        # of many files is mostly these calls).
        for folder, names in by_folder.items():
            parts = self._parts(component, folder) if folder else ["drives", self.drive, component]
            try:
                fd = self._open_in_root(parts, folder or ".", _PROBE_FLAGS | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):  # (its files gone meanwhile)
                continue
            except (OSError, InvalidPathError) as exc:  # (a link on the way, ...)
                for at, _ in names:
                    removed[at] = exc
                continue
            try:
                for at, name in names:
                    try:
                        removed[at] = self._remove_file_in(fd, component, folder, name)
                    except (OSError, InvalidPathError) as exc:
                        removed[at] = exc
            finally:
                os.close(fd)
        for folder in sorted(by_folder, key=lambda folder: folder.count("/"), reverse=True):
            if folder:
                self._prune(self.base / component / folder, component)
        return removed

    def _remove_file_in(self, folder_fd: int, component: str, folder: str, name: str) -> bool:
        """Remove the file ``name`` of ``folder`` (opened as ``folder_fd``) and its metadata file.

        Tells whether the file was there to remove. A link at its path is refused, as
        `file_path` refuses one; a folder there is left as it is.
        """
        path = f"{folder}/{name}" if folder else name
        try:
            kind = _unlink_regular_file(folder_fd, name)
            if kind == stat.S_IFLNK:
                raise self._link_refused(path, os.fspath(self.base / component / path))
            _unlink_regular_file(folder_fd, f"{META_PREFIX}{name}.json")  # (`_meta_beside`)
        except OSError as exc:  # (named by its folder's descriptor: name the whole path)
            if isinstance(exc.filename, str):
                exc.filename = os.fspath(self.base / component / folder / exc.filename)
            raise
        return kind == stat.S_IFREG

    def _prune(self, folder: Path, component: str) -> None:
        stop = self.base / component
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    # -- whole-drive maintenance ----------------------------------------------------------

    def mark_in_use(self) -> None:
        """Write the drive marker (see `DRIVE_MARKER`) if it is not there yet, fsynced."""
        marker = self.base / DRIVE_MARKER
        if marker.exists():
            return
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, CREATE_MODE)
        try:
            os.write(fd, b"asyncdrive drive: its files are indexed in Redis\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.base)

    def in_use(self) -> bool:
        """Tell whether this drive has ever committed a file (its marker exists)."""
        return (self.base / DRIVE_MARKER).exists()

    def _component_dirs(self) -> list[Path]:
        """Return the folders of the drive's components (not ``.tmp``, not links), sorted."""
        if not self.base.is_dir():
            return []
        return [
            entry
            for entry in sorted(self.base.iterdir())
            # not .tmp, nor anything else that is no component's folder
            if is_valid_name(entry.name) and entry.is_dir() and not entry.is_symlink()
        ]

    def scan(self, *, verify: bool, fix_meta: bool = False) -> list[DiskFile]:
        """Return every file of the drive on disk, with its metadata.

        The checksum comes from the metadata when it is there and its size matches, else
        (or with ``verify``) from the bytes. Symbolic links are never followed, nor are
        files whose names are no drive paths (not UTF-8, say: put there by hand) listed.
        ``fix_meta`` (for a rebuild, while no one writes): where the checksum of the bytes
        is not the metadata's (bytes changed by hand), the metadata is made to say it.
        A folder that cannot be read raises (`PermissionError`): its files would be missed.
        """
        found: list[DiskFile] = []
        now = time.time()
        for component, path in self._drive_files():
            try:
                found.append(self._describe(component, path, now, verify, fix_meta))
            except (FileNotFoundError, InvalidPathError):  # gone, or a link, since listed
                continue
        return found

    def file_paths(self) -> dict[str, set[str]]:
        """Return the path of every file of the drive on disk, by component.

        What `Drive.gc` compares with the index: the files `scan` finds, without their
        metadata (~120 bytes a file, not ~1 KiB).
        """
        paths: dict[str, set[str]] = {}
        for component, path in self._drive_files():
            paths.setdefault(component, set()).add(path)
        return paths

    def aged_files(self, component: str, paths: Sequence[str], grace: float) -> list[str]:
        """Return those of ``component``'s files ``paths`` ``grace`` s old (see `_aged`)."""
        now = self.disk_time()
        base = self.base / component
        return [path for path in paths if _aged_now(base / path, "st_mtime", now, grace)]

    def _drive_files(self) -> Iterator[tuple[str, str]]:
        """Yield (component, path) for each file of the drive on disk.

        As `_files_below` finds them; a name that is no drive path (not UTF-8, say: put
        there by hand) is skipped, and said in the log.
        """
        for component_dir in self._component_dirs():
            for path in self._files_below(component_dir.name):
                try:
                    normalize(path, drive=self.drive)
                except InvalidPathError:
                    name = f"{component_dir}/{path}"
                    logger.warning("skipped %r: its name is no drive path", name)
                    continue
                yield component_dir.name, path

    def _files_below(self, component: str) -> Iterator[str]:
        """Yield the path of each file of ``component``.

        No link is followed, nor yielded (each folder is opened by a path with no link on
        the way, and listed by its descriptor: a folder made a link after its parent was
        listed is skipped), nor any name reserved for asyncdrive's own files, nor anything
        but regular files. A folder that cannot be read raises: its files would be missed.
        One gone meanwhile (removed by a delete) is skipped, as is a file gone between its
        folder's listing and its `lstat`. (Strings and `os.scandir`, not `os.walk` and
        `Path`s, whose making took most of a scan's time: ~30 µs a file.)
        """
        below = [""]
        while below:
            folder = below.pop()
            parts = ["drives", self.drive, component, *(folder.split("/") if folder else [])]
            try:
                fd = self._open_in_root(parts, folder, _FOLDER_FLAGS)
            except (FileNotFoundError, NotADirectoryError, InvalidPathError):
                continue  # gone, or made a link, since its parent was listed
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name.startswith(RESERVED_PREFIX):
                            continue
                        rel = f"{folder}/{entry.name}" if folder else entry.name
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                below.append(rel)
                                continue
                            found = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISREG(found.st_mode):
                            yield rel
            finally:
                os.close(fd)

    def _describe(
        self, component: str, path: str, now: float, verify: bool, fix_meta: bool
    ) -> DiskFile:
        # Opened with no link on the way: a file made a link since it was listed raises
        # InvalidPathError. One replaced since by another file is described (the file at
        # the path now); by something else (a folder, a pipe), it is not there.
        fd = self._open_in_root(self._parts(component, path), path, _READ_FLAGS)
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise FileNotFoundError(errno.ENOENT, "replaced while scanned", path)
            meta: dict[str, Any] = meta_on_disk(fd) or {}
            if not meta:  # its metadata file, if any (as readers look: see `open_file`)
                meta.update(self.read_meta(component, path) or {})
            # No metadata and the sticky bit: made in place, its writer killed at once.
            made_in_place_by_the_dead = not meta and bool(found.st_mode & stat.S_ISVTX)
            trusted = not verify and meta.get("size") == found.st_size and "checksum" in meta
            if trusted:
                checksum = str(meta["checksum"])
            else:
                with open(fd, "rb", closefd=False) as f:
                    checksum = hashlib.file_digest(f, CHECKSUM_ALGORITHM).hexdigest()
        finally:
            os.close(fd)
        described = DiskFile(
            component=component,
            path=path,
            size=found.st_size,
            mtime=float(meta.get("mtime", found.st_mtime)),
            checksum=checksum,
            version=int(meta.get("version", 1)),
            age=now - found.st_mtime,
            finished=not (meta.get(_UNFINISHED) or made_in_place_by_the_dead),
        )
        stale = meta and described.finished and meta.get("checksum") != described.checksum
        if fix_meta and stale:
            # Bytes changed behind asyncdrive's back: the metadata says so too now, so that
            # readers take them for the version the index will have (see `is_version`).
            new_meta: dict[str, object] = {
                "checksum": described.checksum, "mtime": described.mtime,
                "size": described.size, "version": described.version,
            }  # fmt: skip
            try:
                self._rewrite_meta(self.file_path(component, path), found, new_meta)
            except OSError as exc:  # a read-only root, say: readers will say what is wrong
                logger.warning("could not fix the metadata of %r: %s", path, exc)
        return described

    def _rewrite_meta(self, data: Path, found: os.stat_result, meta: dict[str, object]) -> None:
        """Replace the metadata of the file ``data`` (its attribute, or its file).

        Unless ``data`` is no longer the file ``found`` described (replaced since).
        """
        fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) != (
                found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns
            ):  # fmt: skip
                return
            if self.meta_in_xattr is not False and self._set_meta_attribute(fd, meta):
                _meta_beside(data).unlink(missing_ok=True)  # (stale, were it read again)
                return
        finally:
            os.close(fd)
        self._put_meta_file(meta, _meta_beside(data))

    def _put_meta_file(self, meta: dict[str, object], meta_target: Path) -> Path:
        """Write ``meta`` to the metadata file ``meta_target``, whole: fsynced, then renamed.

        Returns the temporary name it had (gone: for a caller undoing a failure after it).
        """
        meta_out, meta_tmp = _temp_beside(self.tmp_dir)
        try:
            with meta_out:
                meta_out.write(_meta_json(meta))
                meta_out.flush()
                os.fsync(meta_out.fileno())
            _replace_into(meta_tmp, meta_target)
        except BaseException:
            meta_tmp.unlink(missing_ok=True)
            raise
        return meta_tmp

    def leftovers(self, grace: float) -> tuple[list[Path], list[Path]]:
        """Return the temporary uploads and the install backups older than ``grace`` s.

        Uploads are the files of ``.tmp``; backups (see `install`) are found beside the
        files they back up, aged by the time their link was made (``st_ctime``). Both by
        the disk's clock (`disk_time`), read once all are found, and their stamps after it
        (see `_aged`).
        """
        found: list[Path] = []
        for component_dir in self._component_dirs():
            for dirpath, dirnames, filenames in _walk_every_folder(component_dir):
                dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
                for name in filenames:
                    parts = _backup_parts(name)
                    if parts is not None and not parts[1].startswith(META_PREFIX):
                        found.append(Path(dirpath) / name)
        now = self.disk_time()
        uploads = list(self.tmp_dir.iterdir()) if self.tmp_dir.is_dir() else []
        return (
            [upload for upload in uploads if _aged_now(upload, "st_mtime", now, grace)],
            [backup for backup in found if _aged_now(backup, "st_ctime", now, grace)],
        )

    def backup_target(self, backup: Path) -> tuple[str, str] | None:
        """Return the (component, path) an install backup was made for, if it is one."""
        try:
            component, *folders, name = backup.relative_to(self.base).parts
        except ValueError:
            return None
        parts = _backup_parts(name)
        if parts is None or parts[1].startswith(META_PREFIX):
            return None
        return component, "/".join([*folders, parts[1]])

    # -- reading -----------------------------------------------------------------------------

    def open_file(
        self, component: str, path: str, expected: FileInfo | None = None
    ) -> tuple[int, int]:
        """Open ``component``'s copy of ``path`` for reading; return (descriptor, size).

        ``expected``: the version the index has (see `is_version`). Where the file at the
        path is another (a replacement between its rename and its commit, or whose writer
        died there) and the backup of that version is beside it (see `install`), the
        backup is opened instead, so that a reader reads committed bytes. Without the
        backup, `OtherVersionError` (the caller looks the path up again): the bytes there
        may be of a version never committed.

        Raises `FileNotFoundError` if it is missing or not a regular file.
        """
        fd = self._open_component_file(component, path)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise FileNotFoundError(path)
        meta = None if self.meta_in_xattr is False else meta_on_disk(fd)
        if meta is None and expected is not None:
            # Its metadata file, where the disk keeps no attributes: by the size alone, a
            # dead writer's replacement of the same size passed for the version indexed.
            meta = self._meta_file_of(component, path)
        if expected is None or is_version(meta, st.st_size, expected):
            if expected is not None and st.st_size != expected.size:
                os.close(fd)
                raise self._changed_by_hand(path, expected, st.st_size)
            return fd, st.st_size
        os.close(fd)
        backup = self._open_backup(component, path, expected)
        if backup is None:
            raise OtherVersionError(
                errno.ENOENT, f"version {expected.version} is not on disk", path
            )
        return backup

    def _changed_by_hand(self, path: str, expected: FileInfo, size: int) -> ExplainedOSError:
        """Return the error of a file whose bytes on disk are not of its version's size.

        Its metadata names the version the index has, but not its bytes: written, cut or
        extended outside asyncdrive (or lost by the disk). Served, a get would copy them as
        if they were that version.
        """
        return ExplainedOSError(
            errno.EIO,
            "/".join((os.fspath(self.root), *self._parts(expected.component_name, path))),
            f"it is {size} bytes on disk, where its version {expected.version} has "
            f"{expected.size}: its bytes were changed outside asyncdrive (or lost by the disk)",
            "Put it again, or run rebuild_index() to index the bytes as they are.",
        )

    def _meta_file_of(self, component: str, path: str) -> dict[str, object] | None:
        """Return what the metadata file beside ``component``'s ``path`` holds, if any.

        Read after the file was opened: a writer renames the metadata file in before the
        bytes, so one found naming another version than the index's (a replacement not
        committed) sends the reader to the backup (or to look the path up again).
        """
        opened = self._folder_of(component, path)
        if opened is None:
            return None
        name, folder = opened
        try:
            return _read_json(_meta_beside(Path(name)), folder)
        finally:
            os.close(folder)

    def _folder_of(self, component: str, path: str) -> tuple[str, int] | None:
        """Open the folder of ``component``'s ``path`` (no link on the way): (name, fd)."""
        parts = self._parts(component, path)
        try:
            return parts[-1], self._open_in_root(parts[:-1], path, _FOLDER_FLAGS)
        except (OSError, InvalidPathError):
            return None

    def _open_backup(self, component: str, path: str, expected: FileInfo) -> tuple[int, int] | None:
        """Open the backup of version ``expected`` of ``component``'s ``path``, if there is one."""
        opened = self._folder_of(component, path)
        if opened is None:
            return None
        file_name, folder = opened
        try:
            for name in os.listdir(folder):
                if (_backup_parts(name) or ("", ""))[1] != file_name:
                    continue
                try:
                    fd = os.open(name, _READ_FLAGS, dir_fd=folder)
                except OSError:
                    continue  # dropped meanwhile, or not a file
                st = os.fstat(fd)
                # Told by its metadata only, its attribute or its file: never by its size.
                meta = meta_on_disk(fd) or _read_json(_meta_backup(Path(name)), folder)
                if stat.S_ISREG(st.st_mode) and meta and is_version(meta, st.st_size, expected):
                    return fd, st.st_size
                os.close(fd)
            return None
        finally:
            os.close(folder)

    def _open_component_file(self, component: str, path: str) -> int:
        try:
            return self._open_in_root(self._parts(component, path), path, _READ_FLAGS)
        except NotADirectoryError as exc:
            # A file where a folder of the path was (deleted, and a file put in its place
            # since it was looked up): the file is gone, as a reader looks again to find.
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exc.filename) from exc

    def read(self, component: str, path: str, expected: FileInfo | None = None) -> bytes:
        """Return the bytes of ``component``'s copy of ``path`` (``expected``: see `open_file`)."""
        fd, size = self.open_file(component, path, expected)
        try:
            chunks = []
            while chunk := os.read(fd, max(size + 1, 1 << 16)):  # one read, and the end
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def copy_out(
        self,
        component: str,
        path: str,
        dest: Path,
        checksum: str,
        overwrite: bool,
        on_copied: OnCopied | None = None,
        expected: FileInfo | None = None,
        *,
        look_first: bool = False,
    ) -> bool:
        """Copy ``component``'s ``path`` to local ``dest``; return False if dest already matched.

        ``dest`` appears whole or not at all: the copy is made in a file without a name
        where the local filesystem allows, then linked at ``dest`` (with ``overwrite``,
        linked under a temporary name once copied, then renamed over it); else in a
        temporary file beside it, then renamed. An existing ``dest`` with other content (or a
        link, a folder), even one made during the copy, raises `FileExistsError` unless
        ``overwrite``: neither the link nor the rename replaces it then. `FileNotFoundError`
        means the drive's file is missing; a local path that goes away during the copy
        raises `LocalPathGoneError` instead. ``on_copied(n)`` as the bytes are copied, the
        last count once ``dest`` is in place (or found to match already): for
        ``progress=``, whose last report comes with the file in place. ``expected``: see
        `open_file`. ``look_first``: look for a local file in the way before copying, whatever
        the size (where one was just found at another copy's path: a folder got again).
        """
        src, size = self.open_file(component, path, expected)
        counted = 0

        def count_all_but_the_end(n: int) -> None:
            nonlocal counted
            if on_copied is not None and counted + n < size:
                counted += n
                on_copied(n)

        def count_the_rest() -> None:
            if on_copied is not None:
                on_copied(size - counted)

        try:
            # A large file is not copied if a local file is in the way; a small one is
            # copied first (most often none is), then placed only if none is.
            looks = look_first or size > _COPY_BEFORE_LOOKING_MAX
            if not overwrite and looks and dest.exists():
                if _same_content(dest, size, checksum):
                    count_the_rest()
                    return False
                raise _in_the_way(dest)
            if overwrite:
                _refuse_unreplaceable(dest)
            with _folders_in_use.using(dest.parent):
                made: list[Path] = []  # the local folders this copy made: gone if it fails
                try:
                    out, tmp = _new_local_file(dest.parent)
                except FileNotFoundError:  # made only now: a failed open leaves no folders
                    made = _make_folders(dest.parent)
                    try:
                        out, tmp = _new_local_file(dest.parent)
                    except BaseException:
                        _remove_empty(made, own=dest.parent)
                        raise
                try:
                    try:
                        # In the kernel: no buffer in this process, whatever the size.
                        _FdCopier(src, out).copy_all(size, count_all_but_the_end)
                        if overwrite:
                            # A replacement is renamed over the old file: named only now,
                            # so that a process killed while it copied leaves nothing.
                            if tmp is None:
                                tmp = _link_under_a_temporary_name(out, dest.parent)
                            os.replace(tmp, dest)
                            count_the_rest()
                            return True
                        if tmp is None:
                            placed = _link_unless_there(out, dest)
                        else:
                            placed = _rename_unless_there(os.fspath(tmp), os.fspath(dest))
                    finally:
                        os.close(out)
                except BaseException:
                    if tmp is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                    if not (dest.exists() or os.path.islink(dest)):  # not in place after all
                        _remove_empty(made, own=dest.parent)
                    raise
                if placed:
                    count_the_rest()
                    return True
                if tmp is not None:
                    os.unlink(tmp)
                if _same_content(dest, size, checksum):
                    count_the_rest()
                    return False
                raise _in_the_way(dest)
        except FileNotFoundError as gone:  # local: the drive's file is open
            raise LocalPathGoneError(
                errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(dest)
            ) from gone
        finally:
            os.close(src)

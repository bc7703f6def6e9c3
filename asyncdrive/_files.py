"""Streaming file objects of a drive: `DriveReader` and `DriveWriter`, from `Drive.open`.

A reader holds an open descriptor of one complete version of the file: a replacement renames
a new file into place and never changes the old one, so every byte a reader returns belongs
to the version it opened. A writer streams into a temporary upload beside the drive's files,
hashing as it goes, and commits it like `Drive.put` when closed: nothing is visible before,
and nothing is left behind if the block it is used in fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Generic, Self, TypeVar

from ._exceptions import (
    ConfigTypeError,
    DriveClosedError,
    DriveTypeError,
    InvalidConfigError,
    storage_error,
)
from ._models import CHECKSUM_ALGORITHM, Buffer, FileInfo
from ._storage import (
    CHUNK,
    WRITEBACK_STEP,
    BehindHasher,
    Staged,
    discard_upload,
    start_writeback,
)
from ._tasks import to_its_end
from ._threads import in_a_disk_thread

__all__ = ["DriveReader", "DriveWriter", "Opening", "byte_view", "check_mode"]


def byte_view(data: Buffer) -> memoryview:
    """Return the bytes of ``data`` as a flat view; a copy only of a buffer with gaps.

    Example:
        >>> byte_view(array.array("i", [1])).nbytes, byte_view(memoryview(b"abcd")[::2]).tobytes()
        (4, b'ac')

    """
    view = memoryview(data)
    if not view.c_contiguous:  # (a strided slice, a numpy array's transposed view)
        view = memoryview(view.tobytes())
    return view.cast("B")


def check_data_type(drive_name: str, data: object) -> None:
    """Raise `DriveTypeError` unless ``data`` is bytes-like (a str: encode it).

    Example:
        >>> check_data_type("d", b"abc")

    """
    if isinstance(data, str):
        raise DriveTypeError(
            f"Drive {drive_name!r}: the data to write is a str, where a drive stores bytes: "
            "encode it (data.encode())."
        )
    if not isinstance(data, bytes | bytearray | memoryview):
        try:
            memoryview(data).release()  # type: ignore[arg-type]
        except TypeError:
            raise DriveTypeError(
                f"Drive {drive_name!r}: the data to write must be bytes-like (bytes, "
                f"bytearray, memoryview, an array), not {type(data).__name__}."
            ) from None


#: What an `Opening` opens (covariant: an Opening[DriveReader] is an Opening of a file).
FileT = TypeVar("FileT", bound="DriveReader | DriveWriter", covariant=True)
T = TypeVar("T")

#: A read of less than this, and readline(), read ahead this much into the reader's buffer:
#: the next small reads and lines come from it, without a worker-thread call each.
_READ_AHEAD = 64 * 1024


def _closed_error(drive_name: str, path: str, mode: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"Drive {drive_name!r}: I/O on a closed file {path!r}; open it again with "
        f"drive.open({path!r}, {mode!r})."
    )


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes at ``offset``, fewer only at the end of the file."""
    first = os.pread(fd, size, offset)
    if len(first) == size or not first:
        return first
    parts = [first]
    got = len(first)
    while got < size:
        part = os.pread(fd, size - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def _in_a_thread(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in a worker thread to its end, even if the caller is cancelled.

    A file's disk call must not go on behind its caller's back: a write cut short would
    leave bytes on disk the hash has not seen, or a close meet a write still going.
    """
    return await to_its_end(in_a_disk_thread(func, *args))


async def _read_in_a_thread(fd: int, size: int, offset: int) -> bytes:
    """`_pread_exactly` in a worker thread.

    A cancelled caller waits for it all the same (the file may not be closed under it),
    without `_in_a_thread`'s task more per read: a read changes nothing, what it read is
    dropped.
    """
    return await in_a_disk_thread(_pread_exactly, fd, size, offset)


def _count(drive_name: str, path: str, name: str, value: int) -> int:
    """Return ``value`` as an int, as `io` takes one (TypeError for a float, say)."""
    try:
        return operator.index(value)
    except TypeError:
        raise DriveTypeError(
            f"Drive {drive_name!r}: {name} for {path!r} must be an integer, not "
            f"{type(value).__name__}"
        ) from None


class DriveReader:
    """A drive file open for reading, from ``drive.open(path)`` (aiofiles-style).

    Example:
        >>> async with drive.open("big.bin") as f:
        ...     header = await f.read(16)
        ...     await f.seek(-4, os.SEEK_END)
        ...     trailer = await f.read()
        ...     middle = await f.read_range(1024, 2048)  # leaves the position alone

    Attributes:
        info: the `FileInfo` of the version opened.
        path: the drive path.

    """

    mode = "rb"

    def __init__(self, drive_name: str, info: FileInfo, fd: int) -> None:
        self.info = info
        self.path = info.path
        self._drive_name = drive_name
        self._fd: int | None = fd
        self._pid = os.getpid()  # (a forked child's copy is not its to warn about)
        self._position = 0
        #: Bytes of the file read ahead, from ``_buffer_start`` (the version never changes).
        self._buffer = b""
        self._buffer_start = 0

    @property
    def size(self) -> int:
        """The size of the file in bytes."""
        return self.info.size

    @property
    def closed(self) -> bool:
        """Whether the file was closed."""
        return self._fd is None

    def __reduce__(self) -> Any:
        raise DriveTypeError(
            f"cannot pickle {self!r}: it holds an open file of this process; pass the path "
            f"and open it where it is needed: drive.open({self.path!r})"
        )

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"position={self._position}"
        return (
            f"<DriveReader lit://{self._drive_name}/{self.path} version={self.info.version} "
            f"size={self.info.size} {state}>"
        )

    def readable(self) -> bool:
        """Return True: a reader reads."""
        return True

    def writable(self) -> bool:
        """Return False: a reader never writes (open with ``"wb"`` to write)."""
        return False

    def seekable(self) -> bool:
        """Return True: a reader can seek anywhere."""
        return True

    def _open_fd(self) -> int:
        if self._fd is None:
            raise _closed_error(self._drive_name, self.path, "rb")
        return self._fd

    def _limit(self, name: str, size: int | None) -> int:
        """Return how many bytes a read of ``size`` may take (the rest: negative, None)."""
        rest = max(0, self.info.size - self._position)
        if size is None:
            return rest
        size = _count(self._drive_name, self.path, name, size)
        return rest if size < 0 else min(size, rest)

    def _buffered(self, start: int, end: int) -> bytes | None:
        """Return the bytes from ``start`` to ``end`` if all are in the buffer."""
        offset = start - self._buffer_start
        if offset < 0 or end - self._buffer_start > len(self._buffer):
            return None
        return self._buffer[offset : end - self._buffer_start]

    async def _fill(self, fd: int, start: int) -> None:
        """Read up to `_READ_AHEAD` bytes from ``start`` into the buffer (fewer at the end)."""
        want = min(_READ_AHEAD, self.info.size - start)
        self._buffer = await _read_in_a_thread(fd, want, start)
        self._buffer_start = start

    async def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes from the position (all the rest if negative or None).

        Small reads come from a buffer read ahead, as `io.BufferedReader`'s do.
        """
        fd = self._open_fd()
        size = self._limit("read()'s size", size)
        if size == 0:
            return b""
        start = self._position
        data = self._buffered(start, start + size)
        if data is None and size < _READ_AHEAD:
            await self._fill(fd, start)
            data = self._buffer[:size]
        elif data is None:
            data = await _read_in_a_thread(fd, size, start)
        self._position = start + len(data)
        return data

    async def readinto(self, buffer: Buffer) -> int:
        """Read up to ``len(buffer)`` bytes into ``buffer``; return how many (0: the end).

        As `io.RawIOBase.readinto`, which `io.BufferedReader` and readers that fill their
        own arrays call.
        """
        view = memoryview(buffer).cast("B")  # (contiguous and writable, as io's want it)
        data = await self.read(len(view))
        view[: len(data)] = data
        return len(data)

    async def read_range(self, start: int, end: int | None = None) -> bytes:
        """Return the bytes from ``start`` to ``end`` (exclusive; None: the end of the file).

        Negative offsets count from the end, like slices. The position does not move, so
        several tasks may read ranges of one reader at once.
        """
        fd = self._open_fd()
        start = _count(self._drive_name, self.path, "read_range()'s start", start)
        size = self.info.size
        first = min(size, max(0, start + size if start < 0 else start))
        if end is None:
            last = size
        else:
            end = _count(self._drive_name, self.path, "read_range()'s end", end)
            last = min(size, max(0, end + size if end < 0 else end))
        if last <= first:
            return b""
        data = self._buffered(first, last)
        if data is not None:
            return data
        return await _read_in_a_thread(fd, last - first, first)

    async def readline(self, size: int | None = -1) -> bytes:
        """Read one line, newline included (at most ``size`` bytes if not negative or None).

        Lines come from a buffer read ahead: one worker-thread call per 64 KiB, not per line.
        """
        fd = self._open_fd()
        limit = self._limit("readline()'s size", size)
        parts: list[bytes] = []
        start = position = self._position
        while position - start < limit:
            offset = position - self._buffer_start
            if not 0 <= offset < len(self._buffer):
                await self._fill(fd, position)
                offset = 0
                if not self._buffer:
                    break  # the file on disk ends early
            stop = min(len(self._buffer), offset + limit - (position - start))
            end = self._buffer.find(b"\n", offset, stop)
            part = self._buffer[offset : stop if end < 0 else end + 1]
            parts.append(part)
            position += len(part)
            if end >= 0:
                break
        self._position = position
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        """Return the next line (`readline`), as ``async for line in f`` iterates."""
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    async def flush(self) -> None:
        """Do nothing: a reader has nothing to write (as `io.IOBase.flush` of a reader)."""

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position like `io.IOBase.seek` and return it."""
        self._open_fd()
        offset = _count(self._drive_name, self.path, "seek()'s offset", offset)
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._position + offset
        elif whence == os.SEEK_END:
            target = self.info.size + offset
        else:
            raise InvalidConfigError(
                f"Drive {self._drive_name!r}: seek in {self.path!r} with whence={whence!r}; "
                "pass os.SEEK_SET, os.SEEK_CUR or os.SEEK_END."
            )
        if target < 0:
            raise InvalidConfigError(
                f"Drive {self._drive_name!r}: seek in {self.path!r} to {target}, before the "
                "start of the file; seek to 0 or later."
            )
        self._position = target
        return target

    async def tell(self) -> int:
        """Return the position."""
        self._open_fd()
        return self._position

    async def aclose(self) -> None:
        """Close the file. Idempotent."""
        self._let_go()

    close = aclose

    def _let_go(self) -> None:
        """Close the descriptor, which needs no event loop (``__del__``, a closed drive)."""
        fd, self._fd = self._fd, None
        self._buffer = b""
        if fd is not None:
            os.close(fd)

    def _check_open(self) -> None:
        """Raise the error of I/O on a closed file if it is closed (entering it again)."""
        self._open_fd()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_fd", None) is not None:
            if getattr(self, "_pid", None) != os.getpid():  # a forked child's copy: the
                self._let_go()  # parent's to close (this closes the child's descriptor)
                return
            try:
                _warn(f"unclosed {self!r}", ResourceWarning, source=self)
            finally:  # also where warnings are errors
                self._let_go()


class DriveWriter:
    """A drive file open for writing, from ``drive.open(path, "wb")``; commits on close.

    The bytes stream into a temporary upload, hashed on the way. Closing the file (leaving
    its ``async with`` block) commits it like `Drive.put`: readers then see the new file,
    complete. Leaving the block by an exception, or `abort`, drops it: the drive is left as
    it was. The preconditions (``if_version``, ``exist_ok``, ownership) are checked once at
    open, to fail before any bytes are written, and again atomically at the commit.

    Example:
        >>> async with drive.open("out/result.bin", "wb") as f:
        ...     for chunk in chunks:
        ...         await f.write(chunk)
        >>> f.info.version if f.info else None  # committed on leaving the block
        1

    Attributes:
        info: the `FileInfo` of the committed file, once closed (None before).
        path: the drive path.

    """

    mode = "wb"

    def __init__(
        self,
        drive_name: str,
        path: str,
        out: BinaryIO,
        tmp: Path,
        named: bool,
        commit: Callable[[Staged, Callable[[FileInfo], None]], Awaitable[FileInfo]],
        drive_closed: Callable[[], bool],
    ) -> None:
        self.path = path
        self.info: FileInfo | None = None
        self._pid = os.getpid()  # (a forked child's copy leaves the upload alone)
        self._drive_name = drive_name
        self._out: BinaryIO | None = out
        self._tmp = tmp
        self._named = named  # else the upload has no name: it goes when ``out`` is closed
        self._commit = commit
        #: Whether its drive was closed: nothing more is taken then (see `_refuse_if_closed`).
        self._drive_closed = drive_closed
        #: Hashes the upload from the page cache, in a thread of its own, behind the writes,
        #: from the first block written (see `_drain`); a file that never fills one block is
        #: hashed in one go by `_finish`.
        self._behind: BehindHasher | None = None
        self._pending = bytearray()
        self._size = 0
        self._drained = 0  # bytes written to the upload
        self._handed = 0  # of them, how many were handed to the disk (see _drain)

    @property
    def closed(self) -> bool:
        """Whether the file was committed or aborted."""
        return self._out is None

    def __reduce__(self) -> Any:
        raise DriveTypeError(
            f"cannot pickle {self!r}: it writes an upload of this process; write the file "
            "where its bytes are, or pass them along."
        )

    def __repr__(self) -> str:
        state = "closed" if self._out is None else f"written={self._size}"
        return f"<DriveWriter lit://{self._drive_name}/{self.path} {state}>"

    def readable(self) -> bool:
        """Return False: a writer never reads (open with ``"rb"`` to read)."""
        return False

    def writable(self) -> bool:
        """Return True: a writer writes."""
        return True

    def seekable(self) -> bool:
        """Return False: a writer only appends."""
        return False

    def _open_out(self) -> BinaryIO:
        if self._out is None:
            raise _closed_error(self._drive_name, self.path, "wb")
        return self._out

    def _drain(self, out: BinaryIO, data: bytes | bytearray | memoryview) -> None:
        if self._behind is None:
            # As a large put does: hashing (~2 GB/s on one core) overlaps the writes instead
            # of taking turns with them (a 1 GiB stream in 4 MiB writes ~850 -> ~1,500 MB/s
            # measured), and the checksum is that of the bytes stored.
            self._behind = BehindHasher(out.fileno())
        out.write(data)
        out.flush()  # the hasher reads the file: nothing may wait in the buffer
        self._drained += len(data)
        self._behind.advance(self._drained)
        if self._drained - self._handed >= WRITEBACK_STEP:
            # As a large put does: the disk writes while more comes, and the fsync of
            # the commit finds little left.
            start_writeback(out.fileno(), self._handed, self._drained - self._handed)
            self._handed = self._drained

    def _drain_all(self, out: BinaryIO, pending: bytearray, data: memoryview) -> None:
        if len(data) < CHUNK:  # small: one write of both
            pending += data
            self._drain(out, pending)
            return
        if pending:
            self._drain(out, pending)
        self._drain(out, data)

    async def write(self, data: Buffer) -> int:
        """Append ``data`` and return how many bytes that was.

        Small writes gather in memory (up to 1 MiB) and go to disk together.
        """
        out = self._open_out()
        if self._drive_closed():
            await self._refuse_if_closed()
        check_data_type(self._drive_name, data)
        view = byte_view(data)
        written = len(view)
        self._size += written
        if len(self._pending) + written < CHUNK:
            self._pending += view
            return written
        # A block or more: what was pending, then these bytes as they are (a large write
        # is never copied into the buffer).
        pending, self._pending = self._pending, bytearray()
        try:
            await _in_a_thread(self._drain_all, out, pending, view)
        except OSError as exc:
            # Part of the bytes may be on disk, all of them in the hash: never commit that.
            await self.abort()
            raise storage_error(self._drive_name, exc, "write", self.path) from exc
        return written

    async def tell(self) -> int:
        """Return how many bytes were written."""
        self._open_out()
        return self._size

    async def flush(self) -> None:
        """Do nothing: the bytes are committed, fsynced, when the file is closed."""
        self._open_out()
        await self._refuse_if_closed()

    async def _refuse_if_closed(self) -> None:
        """Drop the upload and raise `DriveClosedError` if its drive was closed.

        Its commit would be refused: taking more bytes (a loop writing GiBs) and fsyncing
        them first only made the refusal later.
        """
        if self._drive_closed():
            await self.abort()
            raise DriveClosedError(
                f"Drive {self._drive_name!r} was closed before {self.path!r} was committed, "
                "so nothing was stored: close a writer before its drive, or write the file "
                "again with a new Drive."
            )

    def _finish(self, out: BinaryIO) -> Staged:
        with out:
            if self._behind is None:  # less than one block in all: hashed here
                checksum = hashlib.new(CHECKSUM_ALGORITHM, self._pending).hexdigest()
                out.write(self._pending)
            else:
                if self._pending:
                    self._drain(out, self._pending)
                checksum = self._behind.finish(self._drained)
            self._pending = bytearray()
            out.flush()
            os.fsync(out.fileno())
            # Without a name, the upload lives on in a descriptor of the `Staged`'s own.
            fd = None if self._named else os.dup(out.fileno())
        return Staged(self._tmp, self._size, checksum, fd, self._named)

    async def aclose(self) -> None:
        """Commit the file: after this, every reader sees it. Idempotent.

        Raises what `Drive.put` raises when the commit is refused (the upload is dropped).
        """
        if self._out is None:
            return
        await self._refuse_if_closed()
        out, self._out = self._out, None
        try:
            staged = await to_its_end(in_a_disk_thread(self._finish, out), _dropped)
        except BaseException as exc:
            await _in_a_thread(self._discard, out)
            if isinstance(exc, OSError):
                raise storage_error(self._drive_name, exc, "close", self.path) from exc
            raise
        self.info = await self._commit(staged, self._committed)

    def _committed(self, info: FileInfo) -> None:
        # Committed, its close cancelled meanwhile (the commit ends all the same): said.
        self.info = info

    close = aclose

    async def abort(self) -> None:
        """Drop what was written without committing it. Idempotent."""
        out, self._out = self._out, None
        if out is not None:  # to its end, whatever cancels the caller: no upload left
            await _in_a_thread(self._discard, out)

    def _discard(self, out: BinaryIO) -> None:
        if self._behind is not None:
            self._behind.abandon()  # before the close: it reads through the descriptor
        out.close()
        self._tmp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        """Raise the error of I/O on a closed file if it is closed (entering it again)."""
        self._open_out()

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            await self.abort()

    def _let_go(self) -> None:
        """Drop the upload, which needs no event loop (``__del__``, a closed drive)."""
        out, self._out = self._out, None
        if out is not None:
            self._discard(out)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_out", None) is not None:
            if getattr(self, "_pid", None) != os.getpid():
                # A forked child's copy: the upload is the parent's, to commit or drop (its
                # name, where it has one, must stay): only the child's descriptor goes.
                out, self._out = self._out, None
                with contextlib.suppress(OSError):
                    if out is not None:
                        out.close()  # (nothing waits in its buffer: each write is flushed)
                return
            try:
                _warn(f"unclosed {self!r}: nothing was committed", ResourceWarning, source=self)
            finally:  # also where warnings are errors
                self._let_go()


async def _dropped(staged: Staged) -> None:
    """Drop an upload finished for a commit its cancelled caller will not make."""
    await in_a_disk_thread(discard_upload, staged)


class Opening(Coroutine[Any, Any, FileT], Generic[FileT]):
    """What `Drive.open` returns: await it, or use it as an async context manager.

    It is a coroutine too, so it can be handed to whatever takes one, as the call of an
    ``async def`` would be: ``asyncio.create_task(drive.open(path))``, a `TaskGroup`'s
    ``create_task``, ``asyncio.run``.

    Example:
        >>> f = await drive.open("a.txt")
        >>> async with drive.open("a.txt") as f: ...
        >>> task = asyncio.create_task(drive.open("a.txt"))

    """

    def __init__(self, open_file: Callable[[], Coroutine[Any, Any, FileT]], what: str = "") -> None:
        self._open_file = open_file
        self._what = what
        self._file: FileT | None = None
        self._running: Coroutine[Any, Any, FileT] | None = None

    def __repr__(self) -> str:
        return f"<Opening {self._what}>" if self._what else "<Opening>"

    async def open(self) -> FileT:
        """Open the file (what awaiting this object does)."""
        return await self._open_file()

    def __await__(self) -> Generator[Any, None, FileT]:
        return self.open().__await__()

    # The coroutine protocol, run by a task (which sends and throws rather than awaits): the
    # opening starts at the first of them, not when `Drive.open` is called, so an object
    # that is never run leaves no coroutine behind to warn "never awaited".
    def _started(self) -> Coroutine[Any, Any, FileT]:
        if self._running is None:
            self._running = self.open()
        return self._running

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._started().throw(typ)
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        if self._running is not None:
            self._running.close()

    async def __aenter__(self) -> FileT:
        self._file = await self.open()
        return self._file

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        await self._file.__aexit__(exc_type, exc, tb)


def check_mode(drive_name: str, path: str, mode: str) -> str:
    """Return ``mode`` normalised to ``"rb"`` or ``"wb"``, or raise `InvalidConfigError`."""
    normal = (
        {"rb": "rb", "br": "rb", "wb": "wb", "bw": "wb"}.get(mode)
        if isinstance(mode, str)
        else None
    )
    if normal is None:
        raise (InvalidConfigError if isinstance(mode, str) else ConfigTypeError)(
            f"Drive {drive_name!r}: cannot open {path!r} with mode {mode!r}: drive files open "
            "in binary, as 'rb' (read) or 'wb' (write, committed on close). For text, wrap "
            "read_bytes()/write_bytes() or the file in a decoder."
        )
    return normal

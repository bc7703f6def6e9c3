"""Streaming files: `Drive.open` and `SyncDrive.open`; writers commit on close."""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import hashlib
import io
import os
import random
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncdrive import (
    AmbiguousPathError,
    Change,
    Drive,
    DriveClosedError,
    DriveError,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveReader,
    DriveWriter,
    InvalidConfigError,
    SyncDrive,
    SyncDriveReader,
    SyncDriveWriter,
    VersionConflictError,
    _drive,
    _threads,
)
from asyncdrive._storage import DiskStore

from .conftest import collect_until, hold_commits, uploads_in_progress, warnings_as_errors

MiB = 1 << 20


@pytest.fixture
async def drive(env: dict[str, str], workdir: Path, drive_id: str) -> AsyncIterator[Drive]:
    async with Drive(drive_id) as drive:
        yield drive


@pytest.fixture
def sync_drive(env: dict[str, str], workdir: Path, drive_id: str) -> Iterator[SyncDrive]:
    with SyncDrive(drive_id) as drive:
        yield drive


# -- reading ---------------------------------------------------------------------------------


async def test_reader_reads_seeks_and_reads_ranges(drive: Drive) -> None:
    data = bytes(range(256)) * 40
    written = await drive.write_bytes("d/data.bin", data)
    async with drive.open("d/data.bin") as f:
        assert isinstance(f, DriveReader)
        assert f.info == written and f.size == len(data) and f.path == "d/data.bin"
        assert (f.readable(), f.writable(), f.seekable()) == (True, False, True)
        assert await f.read(10) == data[:10]
        assert await f.tell() == 10
        assert await f.seek(100) == 100
        assert await f.read(5) == data[100:105]
        assert await f.seek(-6, os.SEEK_END) == len(data) - 6
        assert await f.read() == data[-6:]
        assert await f.read() == b""
        assert await f.seek(-1, os.SEEK_CUR) == len(data) - 1
        # Ranges leave the position alone.
        assert await f.read_range(1000, 1300) == data[1000:1300]
        assert await f.read_range(-50) == data[-50:]
        assert await f.read_range(-50, -10) == data[-50:-10]
        assert await f.read_range(20, 10) == b""
        assert await f.read_range(len(data) - 3, len(data) + 100) == data[-3:]
        assert await f.tell() == len(data) - 1
        with pytest.raises(InvalidConfigError, match="before the start"):
            await f.seek(-1)
        with pytest.raises(InvalidConfigError, match="whence"):
            await f.seek(0, 7)
        assert "version=1" in repr(f) and "d/data.bin" in repr(f)
    assert f.closed
    with pytest.raises(InvalidConfigError, match="closed file") as closed:
        await f.read(1)
    assert "d/data.bin" in str(closed.value) and isinstance(closed.value, ValueError)


async def test_reader_lines_and_await_form(drive: Drive) -> None:
    long_line = b"x" * (200 * 1024) + b"\n"
    text = b"first\nsecond\n" + long_line + b"last, no newline"
    await drive.write_bytes("lines.txt", text)
    opening = drive.open("lines.txt")
    assert repr(opening) == f"<Opening lit://{drive.name}/lines.txt 'rb'>"
    f = await opening  # awaiting works too
    try:
        assert await f.readline() == b"first\n"
        assert await f.readline(3) == b"sec"
        assert await anext(f) == b"ond\n"  # an async iterator of its lines
        assert [line async for line in f] == [long_line, b"last, no newline"]
        await f.flush()  # nothing to write: as io's readers
    finally:
        await f.aclose()
    await f.aclose()  # idempotent


async def test_opening_is_a_coroutine_a_task_can_run(drive: Drive) -> None:
    """`drive.open(...)` goes wherever an ``async def``'s call goes: a task, a TaskGroup."""
    await drive.write_bytes("t.txt", b"task")
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(drive.open("t.txt")) for _ in range(3)]
        writing = group.create_task(drive.open("w.txt", "wb"))
    for task in tasks:
        async with task.result() as f:
            assert await f.read() == b"task"
    async with writing.result() as w:
        await w.write(b"written")
    assert await drive.read_bytes("w.txt") == b"written"
    cancelled = asyncio.create_task(drive.open("t.txt"))
    cancelled.cancel()  # before it ever ran: nothing was opened
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    drive.open("t.txt").close()  # never run: no "never awaited" warning (warnings are errors)


async def test_reader_reads_as_a_buffered_file_does(
    drive: Drive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any sequence of reads, lines, seeks and ranges returns what `io.BytesIO` returns for
    the same bytes; small reads and lines come from a buffer read ahead (64 KiB a call)."""
    rng = random.Random(7)
    lines = [bytes(rng.choices(b"abc ", k=rng.randrange(0, 90))) + b"\n" for _ in range(4000)]
    lines[100] = b"x" * 150_000 + b"\n"  # longer than the buffer
    data = b"".join(lines) + b"no newline at the end"
    await drive.write_bytes("text.txt", data)
    thread_calls = 0
    run_sync = anyio.to_thread.run_sync

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal thread_calls
        thread_calls += 1
        return await run_sync(*args, **kwargs)

    async with drive.open("text.txt") as f:
        monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
        assert [line async for line in f] == data.splitlines(keepends=True)
        assert thread_calls <= len(data) // (64 * 1024) + 2  # not one per line
        monkeypatch.undo()
        expected = io.BytesIO(data)
        await f.seek(0)
        for _ in range(3000):
            step = rng.randrange(6)
            if step == 0:
                size = rng.choice([-1, None, 0, 1, 100, 70_000, 1 << 62])
                if size == -1 and rng.random() < 0.9:
                    size = 5  # whole reads only now and then
                assert await f.read(size) == expected.read(size)
            elif step == 1:
                limit = rng.choice([-1, None, 0, 3, 50, 100_000])
                assert await f.readline(limit) == expected.readline(limit)
            elif step == 2:
                where = rng.randrange(len(data) + 10)
                assert await f.seek(where) == expected.seek(where)
            elif step == 3:
                back = rng.randrange(0, 200)
                where = max(0, expected.tell() - back)
                assert await f.seek(where) == expected.seek(where)
            elif step == 4:
                start, end = rng.randrange(-len(data), len(data)), rng.choice([None, 1 << 62])
                assert await f.read_range(start, end) == data[start:end]
            else:
                start = rng.randrange(len(data))
                end = start + rng.randrange(0, 300)
                assert await f.read_range(start, end) == data[start:end]
            assert await f.tell() == expected.tell()
        with pytest.raises(TypeError, match=r"text\.txt.*float"):
            await f.seek(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await f.read(2.0)  # type: ignore[arg-type]


async def test_reader_keeps_the_version_it_opened(drive: Drive) -> None:
    old, new = os.urandom(3 * MiB), os.urandom(MiB)
    await drive.write_bytes("model.pt", old)
    async with drive.open("model.pt") as before:
        await drive.write_bytes("model.pt", new)  # replaced while open
        await drive.delete("model.pt")  # and even deleted
        assert before.info.version == 1
        assert await before.read() == old
    await drive.write_bytes("model.pt", new)
    async with drive.open("model.pt") as after:
        assert await after.read() == new
        assert after.info.checksum == hashlib.sha256(new).hexdigest()


async def test_reader_errors(drive: Drive, env: dict[str, str], drive_id: str) -> None:
    with pytest.raises(DriveFileNotFoundError, match="missing"):
        await drive.open("missing.bin")
    await drive.write_bytes("folder/a", b"a")
    with pytest.raises(DriveIsADirectoryError):
        await drive.open("folder")
    with pytest.raises(InvalidConfigError, match="'r'") as bad_mode:
        drive.open("folder/a", "r")
    assert isinstance(bad_mode.value, ValueError) and drive.name in str(bad_mode.value)
    with pytest.raises(InvalidConfigError, match="'wb'"):
        drive.open("folder/a", "rb", exist_ok=False)
    with pytest.raises(InvalidConfigError, match="component_name"):
        drive.open("folder/a", "wb", component_name="x")
    with pytest.raises(ValueError, match="would leave the drive"):
        drive.open("../escape")
    async with (
        Drive(drive_id, component_name="one", allow_duplicates=True) as one,
        Drive(drive_id, component_name="two", allow_duplicates=True) as two,
    ):
        await one.write_bytes("shared.txt", b"from one")
        await two.write_bytes("shared.txt", b"from two!")
        with pytest.raises(AmbiguousPathError, match="'one', 'two'"):
            await one.open("shared.txt")
        async with one.open("shared.txt", component_name="two") as f:
            assert await f.read() == b"from two!"
            assert f.info.component_name == "two"


# -- writing ---------------------------------------------------------------------------------


async def test_a_large_write_is_never_copied(drive: Drive) -> None:
    """After small writes, a large one goes to disk as it is: no copy of it in memory."""
    large = os.urandom(64 * MiB)
    tracemalloc.start()
    try:
        async with drive.open("big.bin", "wb") as f:
            await f.write(b"header")
            await f.write(large)
            await f.write(b"trailer")
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{peak / MiB:.0f} MiB allocated"
    assert await drive.read_bytes("big.bin") == b"header" + large + b"trailer"


@pytest.mark.parametrize("size", [10, 300_000])  # a small write, and more than 1 MiB
async def test_bytes_of_any_buffer_count_in_bytes(drive: Drive, size: int) -> None:
    """A memoryview of 4-byte items, or an array: stored and sized by its bytes."""
    items = array.array("i", range(size))
    expected = items.tobytes()
    info = await drive.write_bytes("array.bin", memoryview(items))
    assert info.size == len(expected) == 4 * size
    assert (await drive.write_bytes("array.bin", items)).size == info.size  # any buffer
    assert (await drive.write_bytes("gaps.bin", memoryview(b"abcdef")[::2])).size == 3
    assert await drive.read_bytes("gaps.bin") == b"ace"  # a strided view: its items
    assert info.checksum == hashlib.sha256(expected).hexdigest()
    assert await drive.read_bytes("array.bin") == expected
    async with drive.open("written.bin", "wb") as f:
        assert await f.write(memoryview(items)) == len(expected)
    assert f.info is not None and f.info.size == len(expected)
    assert await drive.read_bytes("written.bin") == expected


async def test_writer_commits_on_close_only(drive: Drive, root: Path) -> None:
    watch = drive.watch()
    await watch.pin_start()
    async with drive.open("out/result.bin", "wb") as f:
        assert isinstance(f, DriveWriter)
        assert (f.readable(), f.writable(), f.seekable()) == (False, True, False)
        assert await f.write(b"hello ") == 6
        assert await f.write(memoryview(b"world")) == 5
        await f.flush()
        assert await f.tell() == 11
        # Nothing is visible before the close.
        assert not await drive.exists("out/result.bin")
        assert await drive.list("out") == []
        assert f.info is None
        assert uploads_in_progress(root, drive) == 1
    assert f.closed and f.info is not None
    assert f.info.size == 11 and f.info.version == 1
    assert f.info.checksum == hashlib.sha256(b"hello world").hexdigest()
    assert await drive.read_bytes("out/result.bin") == b"hello world"
    assert await drive.info("out/result.bin") == f.info
    assert uploads_in_progress(root, drive) == 0
    event = await watch.next(5)
    assert event is not None and (event.change, event.path) == (Change.ADDED, "out/result.bin")
    assert event.version == 1 and event.size == 11
    assert await watch.next(0.2) is None  # one event, for the one commit
    await watch.aclose()


def hash_threads() -> list[threading.Thread]:
    """The threads hashing uploads behind their writers: none once each writer is done."""
    return [t for t in threading.enumerate() if t.name == "asyncdrive-hash"]


async def test_writer_streams_large_files_in_chunks(drive: Drive) -> None:
    hasher = hashlib.sha256()
    async with drive.open("big.bin", "wb") as f:
        for i in range(40):
            # Chunks of odd sizes, below and above the writer's 1 MiB gathering size.
            chunk = os.urandom(MiB + 7 if i % 3 == 0 else 4096 * (i + 1))
            hasher.update(chunk)
            await f.write(chunk)
        assert len(hash_threads()) == 1  # hashing behind the writes, in a thread of its own
    assert f.info is not None and f.info.checksum == hasher.hexdigest()
    assert hash_threads() == []
    async with drive.open("big.bin") as r:
        got = hashlib.sha256()
        while chunk := await r.read(3 * MiB):
            got.update(chunk)
    assert got.hexdigest() == hasher.hexdigest()


async def test_writer_failure_leaves_nothing(drive: Drive, root: Path) -> None:
    await drive.write_bytes("keep.txt", b"old")
    watch = drive.watch()
    await watch.pin_start()  # exactly after the write above
    with pytest.raises(RuntimeError, match="boom"):
        async with drive.open("keep.txt", "wb") as f:
            await f.write(b"half of a new")
            raise RuntimeError("boom")
    assert f.closed and f.info is None
    assert await drive.read_bytes("keep.txt") == b"old"
    assert (await drive.info("keep.txt")).version == 1
    assert uploads_in_progress(root, drive) == 0
    # Cancelled in the middle of writing: the same.
    with anyio.move_on_after(0.2):
        async with drive.open("new.bin", "wb") as g:
            while True:
                await g.write(os.urandom(MiB))
    assert g.closed and not await drive.exists("new.bin")
    assert uploads_in_progress(root, drive) == 0 and hash_threads() == []
    # abort() drops it explicitly.
    h = await drive.open("new.bin", "wb")
    await h.write(b"x")
    await h.abort()
    await h.abort()
    await h.aclose()  # nothing left to commit
    assert h.info is None and not await drive.exists("new.bin")
    with pytest.raises(ValueError, match="closed file"):
        await h.write(b"more")
    assert await watch.next(0.3) is None  # no event for any of them
    await watch.aclose()


async def test_a_writer_whose_drive_is_closed_first_says_so(
    env: dict[str, str], workdir: Path, drive_id: str, root: Path
) -> None:
    """And takes no more bytes: a loop writing GiBs after the close wrote them all, fsynced
    them at its close, and then heard "what it changed may stand", of nothing stored."""
    drive = Drive(drive_id)
    f = await drive.open("late.bin", "wb")
    g = await drive.open("later.bin", "wb")
    for writer in (f, g):
        await writer.write(b"written before the drive was closed")
    await drive.aclose()
    # Not "cannot reach Redis, check the server": the caller closed the drive itself.
    with pytest.raises(DriveError, match=r"'late.bin'.*new Drive") as caught:
        await f.aclose()
    assert type(caught.value) is DriveClosedError and "nothing was stored" in str(caught.value)
    with pytest.raises(DriveClosedError, match=r"'later.bin'.*nothing was stored"):
        await g.write(b"x" * (8 << 20))  # (a block: it went to the disk)
    await g.aclose()  # (dropped already)
    for writer in (f, g):
        assert writer.closed and writer.info is None
    assert uploads_in_progress(root, drive) == 0
    async with Drive(drive_id) as again:
        assert not await again.exists("late.bin") and not await again.exists("later.bin")


async def test_a_reader_after_its_drives_close(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """As the README says: an async reader reads on (its open file needs no connection);
    a SyncDriveReader raises DriveClosedError once its SyncDrive is closed."""
    drive = Drive(drive_id)
    await drive.write_bytes("r.bin", b"0123456789")
    reader = await drive.open("r.bin")
    await drive.aclose()
    assert await reader.read(4) == b"0123" and await reader.read_range(-2) == b"89"
    await reader.aclose()

    def blocking() -> None:
        sync_drive = SyncDrive(drive_id)
        sync_reader = sync_drive.open("r.bin")
        assert sync_reader.read(2) == b"01"
        sync_drive.close()
        with pytest.raises(DriveClosedError):
            sync_reader.read(2)
        sync_reader.close()

    await anyio.to_thread.run_sync(blocking)


@pytest.mark.parametrize("operation", ["replace", "put", "delete"])
async def test_closing_a_drive_under_calls_in_flight_leaves_no_lock_or_backup(
    env: dict[str, str], workdir: Path, drive_id: str, root: Path, operation: str
) -> None:
    """aclose() while another task's call runs: the call is cancelled and ends its steps
    (raising DriveClosedError) before the connections close. They were closed under it:
    the path's lock stayed until its lease ended (30 s for every writer of the path, in
    every process), a replaced file's backup stayed on the disk."""
    big = os.urandom(3 << 20)
    Path("big.bin").write_bytes(big)
    for turns in range(0, 40, 3):  # where the close comes: each step of the call, in turn
        drive = Drive(drive_id)
        await drive.write_bytes("p", b"old")
        calls = {
            "replace": drive.write_bytes("p", b"new"),
            "put": drive.put("big.bin", to="p"),
            "delete": drive.delete("p"),
        }
        call = asyncio.create_task(calls.pop(operation))
        for unused in calls.values():
            unused.close()
        for _ in range(turns):
            await asyncio.sleep(0)
        await drive.aclose()
        try:
            await call
        except DriveClosedError as exc:  # (before it started, the drive "is closed")
            assert "closed (aclose()) before its " in str(exc) or turns == 0, str(exc)
        async with Drive(drive_id) as again:
            conn = await again._connection()
            assert not await conn.client.exists(conn.index.keys.lock("default", "p")), turns
            folder = root / "drives" / drive_id[len("lit://") :]
            assert list(folder.rglob(".asyncdrive-backup*")) == [], turns
            now = await again.read_bytes("p") if await again.exists("p") else None
            assert now in ({b"old", b"new"} if operation == "replace" else {b"old", big, None})


async def test_closing_a_drive_waits_for_its_calls_not_for_the_tasks_that_made_them(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """aclose() waits for the calls it cancels to leave the drive: a task that goes on
    after its call (here, until the close is done) or that awaits the close itself is not
    waited for (it was, up to the lock lease: 30 s). Its own cancellation stays its own."""
    drive = Drive(drive_id)
    await drive.write_bytes("a", b"x")
    closed = asyncio.Event()
    cancellings: list[int] = []

    async def worker() -> None:
        with contextlib.suppress(DriveClosedError):
            await drive.get("never", timeout=60)
        cancellings.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]
        await closed.wait()  # goes on, off the drive, until the close is done

    working = asyncio.create_task(worker())
    user_cancelled = asyncio.create_task(drive.get("never either", timeout=60))
    await _in_calls(drive, working, user_cancelled)
    user_cancelled.cancel()  # by the user, before the close: a CancelledError
    await asyncio.wait_for(asyncio.gather(drive.aclose(), drive.aclose()), 10)
    closed.set()
    await working
    assert cancellings == [0]  # cancelled once, and that taken back: no stray request
    with pytest.raises(asyncio.CancelledError):
        await user_cancelled
    # A task awaiting the close, whose own call the close cut short.
    drive = Drive(drive_id)
    await drive.exists("a")
    closer: asyncio.Task[None] | None = None

    async def call_then_await_the_close() -> None:
        with contextlib.suppress(DriveClosedError):
            await drive.get("never", timeout=60)
        assert closer is not None
        await closer

    calling = asyncio.create_task(call_then_await_the_close())
    await _in_calls(drive, calling)
    closer = asyncio.create_task(drive.aclose())
    await asyncio.wait_for(calling, 10)


async def _in_calls(drive: Drive, *tasks: asyncio.Task[Any]) -> None:
    """Wait until each task is in a call of ``drive`` (what its aclose() cancels)."""
    while not all(task in drive._calls for task in tasks):
        await asyncio.sleep(0)


async def test_a_writer_cancelled_again_while_dropping_its_upload_waits_for_it(
    drive: Drive, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second cancellation by asyncio (``task.cancel()``) while the writer drops its
    upload does not cut that short: the task ends once the upload is gone."""
    dropped: list[bool] = []
    discard = DriveWriter._discard

    def slow_discard(self: DriveWriter, out: Any) -> None:
        time.sleep(0.3)
        discard(self, out)
        dropped.append(True)

    monkeypatch.setattr(DriveWriter, "_discard", slow_discard)
    writing = asyncio.Event()

    async def write_forever() -> None:
        async with drive.open("w.bin", "wb") as f:
            await f.write(b"x" * 1000)
            writing.set()
            await asyncio.sleep(30)

    task = asyncio.ensure_future(write_forever())
    await writing.wait()
    task.cancel()  # the writer drops its upload, in a worker thread
    await asyncio.sleep(0.1)
    task.cancel()  # and again, meanwhile
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dropped == [True]  # done before the task ended
    assert uploads_in_progress(root, drive) == 0 and not await drive.exists("w.bin")


async def test_writer_preconditions(drive: Drive, root: Path, drive_id: str) -> None:
    first = await drive.write_bytes("cfg.json", b"{}")
    # Refused at open, before any byte is written.
    with pytest.raises(DriveFileExistsError, match="exist_ok=False"):
        await drive.open("cfg.json", "wb", exist_ok=False)
    async with Drive(drive_id, component_name="other") as other:
        with pytest.raises(DriveFileExistsError, match="owned by component 'default'"):
            await other.open("cfg.json", "wb")
    # Checked again, atomically, at the commit: a replacement meanwhile wins.
    f = await drive.open("cfg.json", "wb", if_version=first.version)
    await f.write(b'{"mine": true}')
    await drive.write_bytes("cfg.json", b'{"theirs": true}')
    with pytest.raises(VersionConflictError, match="version 2"):
        await f.aclose()
    assert await drive.read_bytes("cfg.json") == b'{"theirs": true}'
    assert uploads_in_progress(root, drive) == 0
    async with drive.open("cfg.json", "wb", if_version=2) as g:
        await g.write(b"{}")
    assert g.info is not None and g.info.version == 3


@pytest.mark.parametrize("warnings_are", ["recorded", "errors"])
async def test_unclosed_files_warn_and_clean_up(
    drive: Drive, root: Path, warnings_are: str
) -> None:
    await drive.write_bytes("a.txt", b"a")
    reader = await drive.open("a.txt")
    writer = await drive.open("b.txt", "wb")
    await writer.write(b"never committed" * MiB)  # hashed behind: a thread to stop
    with (
        pytest.warns(ResourceWarning) if warnings_are == "recorded" else warnings_as_errors()
    ) as caught:
        del reader, writer
        # Until both warned: the last one may be finalized in another thread (a worker
        # that held the writer a moment, or a collection that thread started).
        collect_until(lambda: len(caught) >= 2)
    messages = sorted(str(getattr(w, "message", w)) for w in caught)
    assert len(messages) == 2, messages
    assert "DriveReader" in messages[0], messages
    assert "DriveWriter" in messages[1] and "nothing was committed" in messages[1], messages
    # Cleaned up all the same where the warning was raised as an error (right after the
    # warning, in the thread that finalized it).
    collect_until(lambda: uploads_in_progress(root, drive) == 0 and hash_threads() == [])
    assert not await drive.exists("b.txt")


# -- blocking --------------------------------------------------------------------------------


def test_sync_reader_and_writer(sync_drive: SyncDrive, root: Path) -> None:
    with sync_drive.open("logs/run.txt", "wb") as w:
        assert isinstance(w, SyncDriveWriter)
        for i in range(3):
            w.write(f"line {i}\n".encode())
        assert w.tell() == 21 and not sync_drive.exists("logs/run.txt")
    assert w.closed and w.info is not None and w.info.size == 21
    with sync_drive.open("logs/run.txt") as r:
        assert isinstance(r, SyncDriveReader)
        assert r.info == w.info and r.size == 21
        assert list(r) == [b"line 0\n", b"line 1\n", b"line 2\n"]
        assert r.seek(5) == 5 and r.read(1) == b"0" and r.tell() == 6
        assert r.read_range(-2) == b"2\n"
        assert r.readline() == b"\n"
        assert "SyncDriveReader" in repr(r)
    assert r.closed
    with sync_drive.open("logs/run.txt") as r:
        assert next(r) == b"line 0\n"  # an iterator of its lines
        assert (r.name, r.isatty()) == ("logs/run.txt", False)
        refusals: list[Callable[[], object]] = [lambda: r.write(b"x"), r.fileno, r.truncate]
        for refused in refusals:
            with pytest.raises(io.UnsupportedOperation):
                refused()
        with io.TextIOWrapper(r, encoding="utf-8") as text:  # closing it flushes, then closes r
            assert text.readline() == "line 1\n"
    assert r.closed
    with sync_drive.open("logs/run.txt") as r:  # readinto: as raw files fill buffers
        into = bytearray(4)
        assert r.readinto(into) == 4 and into == b"line" and r.tell() == 4
        assert r.readinto(memoryview(into)[1:3]) == 2 and into == b"l 0e"
        r.seek(-2, os.SEEK_END)
        assert r.readinto(into) == 2 and into[:2] == b"2\n" and r.readinto(into) == 0
        with pytest.raises(TypeError):
            r.readinto(b"read-only")
        r.seek(0)
        with io.BufferedReader(r) as buffered:  # (closing it closes r)
            assert buffered.read() == sync_drive.read_bytes("logs/run.txt")
    assert r.closed
    with pytest.raises(KeyError), sync_drive.open("logs/run.txt", "wb") as w2:
        w2.write(b"lost")
        raise KeyError("stop")
    assert w2.closed and sync_drive.read_bytes("logs/run.txt").startswith(b"line 0")
    assert uploads_in_progress(root, sync_drive) == 0
    with pytest.raises(DriveFileNotFoundError):
        sync_drive.open("nope")


async def test_sync_open_refuses_a_running_event_loop(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    with SyncDrive(drive_id) as drive, pytest.raises(RuntimeError, match="await"):
        drive.open("a.txt", "wb")


def test_open_errors_are_drive_errors(sync_drive: SyncDrive) -> None:
    calls: list[Callable[[], object]] = [
        lambda: sync_drive.open("x", "a"),
        lambda: sync_drive.open("missing"),
    ]
    for call in calls:
        with pytest.raises(DriveError) as caught:
            call()
        assert sync_drive.name in str(caught.value)


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rb", "wb"])
async def test_an_open_cancelled_as_its_file_opens_leaves_nothing_open(
    drive: Drive, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The caller cancelled while the disk call opens the file gets no file: the one opened
    is closed (a reader's descriptor), or dropped (a writer's upload), not leaked."""
    await drive.write_bytes("f.bin", b"bytes")
    loop = asyncio.get_running_loop()
    entered, release = asyncio.Event(), threading.Event()
    opened: list[int] = []
    if mode == "rb":
        open_version = _drive._open_version

        def slow_open(store: Any, info: Any) -> int:
            loop.call_soon_threadsafe(entered.set)
            release.wait(10)
            fd = open_version(store, info)
            opened.append(fd)
            return fd

        monkeypatch.setattr(_drive, "_open_version", slow_open)
    else:
        open_upload = DiskStore.open_upload

        def slow_upload(self: DiskStore) -> Any:
            loop.call_soon_threadsafe(entered.set)
            release.wait(10)
            upload = open_upload(self)
            opened.append(upload[0].fileno())
            return upload

        monkeypatch.setattr(DiskStore, "open_upload", slow_upload)
    with warnings_as_errors() as raised:
        opening = asyncio.create_task(drive.open("f.bin", mode).open())
        await entered.wait()
        opening.cancel()
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await opening
        gc.collect()
    assert raised == []
    (fd,) = opened
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


async def test_a_cancelled_write_finishes_before_anything_else_touches_the_upload(
    drive: Drive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short by its caller's cancellation still ends (to its end) before the
    call returns: what the file commits is what its hash saw."""
    loop = asyncio.get_running_loop()
    entered, release = asyncio.Event(), threading.Event()
    drain_all = DriveWriter._drain_all

    def slow_drain(self: DriveWriter, *args: Any) -> None:
        loop.call_soon_threadsafe(entered.set)
        release.wait(10)
        drain_all(self, *args)

    monkeypatch.setattr(DriveWriter, "_drain_all", slow_drain)
    async with drive.open("f.bin", "wb") as f:
        await f.write(b"a" * 100)
        writing = asyncio.create_task(f.write(b"b" * (2 * MiB)))
        await entered.wait()
        writing.cancel()
        await asyncio.sleep(0.01)
        assert not writing.done()  # waiting for its disk call, cancelled or not
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await writing
        await f.write(b"c" * 10)
    data = await drive.read_bytes("f.bin")
    assert data == b"a" * 100 + b"b" * (2 * MiB) + b"c" * 10  # the cancelled write is in
    assert f.info is not None and f.info.checksum == hashlib.sha256(data).hexdigest()
    assert [t for t in threading.enumerate() if t.name == "asyncdrive-hash"] == []


async def test_a_close_cancelled_during_its_commit_says_what_it_committed(
    drive: Drive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit ends whatever cancels the caller (a put's too): the file is committed,
    and the writer's ``info`` says so (it stayed None: a retry wrote the file twice)."""
    await drive.write_bytes("f.bin", b"old")  # (a replacement: the locked way, as a writer)
    entered, answer = hold_commits(monkeypatch)
    f = await drive.open("f.bin", "wb")
    await f.write(b"new")
    closing = asyncio.create_task(f.aclose())
    await entered.wait()
    closing.cancel()
    await asyncio.sleep(0)  # (one turn: the cancellation reaches the close, held in its commit)
    assert not closing.done()  # (waiting for its commit, cancelled or not)
    answer.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert f.info is not None and f.info == await drive.info("f.bin")
    assert (f.info.version, await drive.read_bytes("f.bin")) == (2, b"new")


async def test_a_file_used_after_its_drive_closed_starts_no_threads_per_call(
    env: dict[str, str], drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its reads borrowed the shared disk threads, which no drive kept any more: a pool
    was made, and a thread started and stopped, for each read (8x slower)."""
    made: list[object] = []
    init = _threads.DiskThreads.__init__

    def counted(self: _threads.DiskThreads, max_threads: int) -> None:
        made.append(self)
        init(self, max_threads)

    async with Drive(drive_id) as drive:
        await drive.write_bytes("f.bin", bytes(range(256)) * 8)
        reader = await drive.open("f.bin")
    monkeypatch.setattr(_threads.DiskThreads, "__init__", counted)
    try:
        for i in range(20):
            assert await reader.read_range(i, i + 4) == bytes(range(i, i + 4))
    finally:
        await reader.aclose()
    assert made == []

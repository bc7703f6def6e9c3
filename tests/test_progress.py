"""Progress of puts and gets (``progress=``), and the command line's bars built on it.

The callback runs in the thread that awaits the transfer (an async `Drive`'s event loop, a
`SyncDrive`'s caller), whichever thread copies; an exception it raises stops the transfer
and leaves nothing half-written. The bars are checked on a real terminal (tmux), with the
installed ``asyncdrive`` console script on a file big enough to take a few seconds.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from asyncdrive import Drive, SyncDrive
from asyncdrive import _storage as storage
from asyncdrive._bar import TransferBar
from asyncdrive._progress import ProgressStopped, reporting
from asyncdrive._storage import _KERNEL_STEP, PARALLEL_HASH_MIN, TMP_PREFIX, DiskStore, Staged

from .conftest import MakeDrive, uploads_in_progress

MiB = 1 << 20
BIG = 400  # MiB: a put of it takes a second or two here, long enough to see the bar move
SCRIPT = Path(sys.executable).with_name("asyncdrive")  # the console script pip installed
LARGE = 5 * _KERNEL_STEP + 12345  # copied in several steps, each reported
assert LARGE >= PARALLEL_HASH_MIN


class Reports(list[tuple[int, int]]):
    """A progress callback (`ProgressCallback`) that records its calls and their threads."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.stop_at = stop_at

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))
        self.threads.add(threading.get_ident())
        if self.stop_at is not None and done >= self.stop_at:
            raise Stop(done)

    def check(self, total: int, *, first: bool = True, partial: bool = False) -> None:
        """Done only grows, the total never changes, and the last call says all is done."""
        assert self, "no progress reported"
        assert self[-1] == (total, total)
        if first:
            assert self[0] == (0, total)
        dones = [done for done, _ in self]
        assert dones == sorted(set(dones)), dones
        assert {t for _, t in self} == {total}
        if partial:
            assert any(0 < done < total for done in dones), dones
        assert len(self.threads) == 1


class Stop(Exception):
    """What the callbacks below raise to stop a transfer."""


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def test_a_large_put_and_get_report_in_the_loop_as_they_copy(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    data = write_random(workdir / "big.bin", LARGE)
    put, got = Reports(), Reports()
    async with Drive(drive_id) as drive:
        await drive.put("big.bin", progress=put)
        await drive.get("big.bin", to="out/big.bin", progress=got)
    put.check(LARGE, partial=True)
    assert put.threads == {threading.get_ident()}  # this event loop's, not a disk thread's
    got.check(LARGE, partial=True)
    assert got.threads == {threading.get_ident()}
    assert (workdir / "out" / "big.bin").read_bytes() == data


async def test_folders_report_every_byte_once(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files in batches, large ones on their own, a file already there: all counted."""
    stage_file = DiskStore.stage_file
    counting: dict[str, bool] = {}  # local file -> staged with a count of its bytes

    def staging(self: DiskStore, source: Path, *args: Any, **kwargs: Any) -> Staged:
        counting[source.as_posix()] = kwargs.get("on_copied") is not None
        return stage_file(self, source, *args, **kwargs)

    monkeypatch.setattr(DiskStore, "stage_file", staging)
    sizes = {f"d/small/{n:02}.bin": 1000 + n for n in range(70)}  # three batches
    sizes |= {"d/empty.bin": 0, "d/mid.bin": 2 * MiB, "d/sub/large.bin": LARGE}
    for path, size in sizes.items():
        write_random(Path(path), size)
    total = sum(sizes.values())
    drive = make_drive(drive_id)
    put = Reports()
    await drive.put("d", progress=put)
    put.check(total, partial=True)
    assert sorted(await drive.list("d", recursive=True)) == sorted(sizes)
    assert counting == dict.fromkeys(sizes, True)  # each file's bytes, as they are copied
    # A local file with the same content is left as it is, and counts as copied.
    Path("out/d").mkdir(parents=True)
    shutil.copyfile("d/mid.bin", "out/d/mid.bin")
    got = Reports()
    await drive.get("d", to="out/d", progress=got)
    got.check(total, partial=True)
    for path in sizes:
        assert filecmp.cmp(path, f"out/{path}", shallow=False)
    if isinstance(drive, Drive):
        assert put.threads == got.threads == {threading.get_ident()}
    else:  # a SyncDrive's caller: the worker thread the test runs it in
        assert put.threads == got.threads != {threading.get_ident()}


class Replacing(Reports):
    """Reports that, at the first (before any byte is copied), change the drive: ``calls``
    of a `SyncDrive` in another thread, such as another worker's, done when it returns."""

    def __init__(self, drive_id: str, *calls: tuple[Any, ...]) -> None:
        super().__init__()
        self.drive_id = drive_id
        self.calls = calls

    def __call__(self, done: int, total: int) -> None:
        super().__call__(done, total)
        if len(self) == 1:
            thread = threading.Thread(target=self.change)
            thread.start()
            thread.join()

    def change(self) -> None:
        with SyncDrive(self.drive_id) as other:
            for method, *args in self.calls:
                getattr(other, method)(*args)


async def test_a_get_reports_what_it_copied_of_files_changed_as_it_starts(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a.bin", b"a" * 1000)
        for name in ("keep", "grows", "gone"):
            await drive.write_bytes(f"d/{name}.bin", b"d" * 100)
        got = Replacing(drive_id, ("write_bytes", "a.bin", b"b" * 3000))
        await drive.get("a.bin", to="out/a.bin", progress=got)
        assert Path("out/a.bin").read_bytes() == b"b" * 3000
        assert got[0] == (0, 1000) and got[-1] == (3000, 3000)
        got = Replacing(
            drive_id, ("write_bytes", "d/grows.bin", b"e" * 500), ("delete", "d/gone.bin")
        )
        await drive.get("d", to="out/d", progress=got)
        assert sorted(os.listdir("out/d")) == ["grows.bin", "keep.bin"]
        assert got[0] == (0, 300) and got[-1] == (600, 600)
        assert [done for done, _ in got] == sorted(done for done, _ in got)


async def test_small_files_report_once_done(make_drive: MakeDrive, drive_id: str) -> None:
    Path("a.txt").write_bytes(b"hello")
    Path("empty.txt").write_bytes(b"")
    drive = make_drive(drive_id)
    put, put_empty = Reports(), Reports()
    await drive.put("a.txt", progress=put)
    await drive.put("empty.txt", progress=put_empty)
    assert put == [(5, 5)] and put_empty == [(0, 0)]
    got, got_empty = Reports(), Reports()
    await drive.get("a.txt", to="out/a.txt", progress=got)
    await drive.get("empty.txt", to="out/empty.txt", progress=got_empty)
    assert got == [(0, 5), (5, 5)] and got_empty == [(0, 0)]
    assert Path("out/a.txt").read_bytes() == b"hello"


async def test_an_error_on_a_small_files_report_stops_its_put_before_the_commit(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    """A small file is reported once staged whole, before its commit: a callback that
    fails then leaves the drive as it was, for a new file and for a replacement."""
    Path("a.txt").write_bytes(b"hello")
    drive = make_drive(drive_id)
    stopping = Reports(stop_at=0)
    with pytest.raises(Stop):
        await drive.put("a.txt", progress=stopping)  # a new file: committed without a lock
    assert stopping == [(5, 5)]
    assert not await drive.exists("a.txt")
    await drive.put("a.txt")
    Path("a.txt").write_bytes(b"hello again")
    stopping = Reports(stop_at=0)
    with pytest.raises(Stop):
        await drive.put("a.txt", progress=stopping)  # a replacement: under the commit lock
    assert stopping == [(11, 11)]
    assert await drive.read_bytes("a.txt") == b"hello"
    assert (await drive.info("a.txt")).version == 1
    # On disk too: the old bytes back in place, no backup of them left beside.
    folder = root / "drives" / drive.name / drive.component_name
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    assert (folder / "a.txt").read_bytes() == b"hello"
    sync = drive.sync if hasattr(drive, "sync") else drive
    assert uploads_in_progress(root, sync) == 0
    # The path is not left locked: the next put goes through at once.
    await drive.put("a.txt", progress=Reports())
    assert await drive.read_bytes("a.txt") == b"hello again"
    assert (await drive.info("a.txt")).version == 2


async def test_an_error_in_the_callback_stops_a_put_and_leaves_nothing(
    make_drive: MakeDrive, drive_id: str, root: Path
) -> None:
    write_random(Path("big.bin"), LARGE)
    drive = make_drive(drive_id)
    stopping = Reports(stop_at=1)  # at the first bytes copied
    with pytest.raises(Stop):
        await drive.put("big.bin", progress=stopping)
    # Midway (the count reaches an async Drive's callback a moment after the disk thread
    # copied the bytes; a SyncDrive's at once), or, where the copy ended first, before the
    # commit all the same.
    assert stopping[-1][0] > 0
    if not isinstance(drive, Drive):
        assert stopping[-1][0] < LARGE
    assert not await drive.exists("big.bin")
    sync = drive.sync if hasattr(drive, "sync") else drive
    assert uploads_in_progress(root, sync) == 0
    # Raised before the first byte of a folder: nothing of it is stored.
    write_random(Path("d/a.bin"), 100)
    write_random(Path("d/b.bin"), LARGE)
    with pytest.raises(Stop):
        await drive.put("d", progress=Reports(stop_at=0))
    assert await drive.list(".", recursive=True) == []
    assert uploads_in_progress(root, sync) == 0


async def test_an_error_reported_after_the_copy_still_stops_the_put_before_its_commit(
    make_drive: MakeDrive, drive_id: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count of the last bytes copied can reach the callback after the copy returned:
    the put looks once more before its commit."""
    copy_hashed = storage._copy_hashed

    def counted_at_the_end(src: int, dst: int, on_copied: Any = None) -> tuple[int, str]:
        size, digest = copy_hashed(src, dst)
        if on_copied is not None:
            on_copied(size)  # reported from the disk thread, then the copy returns
        return size, digest

    monkeypatch.setattr(storage, "_copy_hashed", counted_at_the_end)
    write_random(Path("big.bin"), LARGE)
    drive = make_drive(drive_id)
    stopping = Reports(stop_at=1)
    with pytest.raises(Stop):
        await drive.put("big.bin", progress=stopping)
    assert stopping == [(0, LARGE), (LARGE, LARGE)]
    assert not await drive.exists("big.bin")
    sync = drive.sync if hasattr(drive, "sync") else drive
    assert uploads_in_progress(root, sync) == 0


async def test_an_error_in_the_callback_stops_a_get_and_leaves_nothing(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    write_random(Path("big.bin"), LARGE)
    drive = make_drive(drive_id)
    await drive.put("big.bin")
    (workdir / "out").mkdir()
    stopping = Reports(stop_at=1)
    with pytest.raises(Stop):
        await drive.get("big.bin", to="out/big.bin", progress=stopping)
    if stopping[-1][0] < LARGE or not isinstance(drive, Drive):  # (see the put's test)
        assert 0 < stopping[-1][0] < LARGE
        assert os.listdir(workdir / "out") == []  # no partial copy, no temporary file
    else:  # the copy ended before the count reached the callback: whole, then the error
        assert filecmp.cmp("big.bin", "out/big.bin", shallow=False)
        os.unlink(workdir / "out" / "big.bin")
    await drive.get("big.bin", to="out/big.bin")  # and nothing in the way of the next
    assert filecmp.cmp("big.bin", "out/big.bin", shallow=False)


async def test_a_gets_last_report_comes_with_its_file_in_place(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    """An error on the last report stops the get with the file in place, whole."""
    data = write_random(Path("big.bin"), LARGE)
    drive = make_drive(drive_id)
    await drive.put("big.bin")
    seen_at_the_end: list[bytes] = []

    class StopAtTheEnd(Reports):
        def __call__(self, done: int, total: int) -> None:
            super().__call__(done, total)
            if done == total:
                seen_at_the_end.append((workdir / "out" / "big.bin").read_bytes())
                raise Stop(done)

    for overwrite in (False, True):
        stopping = StopAtTheEnd()
        with pytest.raises(Stop):
            await drive.get("big.bin", to="out/big.bin", progress=stopping, overwrite=overwrite)
        stopping.check(LARGE)
        assert seen_at_the_end.pop() == data
        assert os.listdir(workdir / "out") == ["big.bin"]  # no temporary file beside it


def test_a_copy_out_counts_its_last_bytes_once_its_file_is_in_place(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "root", "d")
    data = os.urandom(LARGE)
    store.install(store.stage_bytes(data), "c", "f.bin", {"version": 1})
    checksum = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "out" / "f.bin"
    for overwrite, copied in ((False, True), (True, True), (False, False)):  # last: same
        if overwrite:
            dest.write_bytes(b"older")
        counted = [0]

        def on_copied(n: int, counted: list[int] = counted) -> None:
            counted[0] += n
            assert (counted[0] == LARGE) == (dest.exists() and dest.stat().st_size == LARGE)

        assert store.copy_out("c", "f.bin", dest, checksum, overwrite, on_copied) is copied
        assert counted[0] == LARGE and dest.read_bytes() == data


async def test_a_put_of_a_file_that_shrank_reports_its_end_before_the_commit(
    make_drive: MakeDrive, drive_id: str, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured at LARGE bytes, then cut to half before its copy: the last report says so,
    before the commit, so that an error there leaves the file unstored."""
    write_random(Path("big.bin"), LARGE)
    stage_file = DiskStore.stage_file

    def shrunk_first(self: DiskStore, local: Path, *args: Any, **kwargs: Any) -> Staged:
        os.truncate(local, LARGE // 2)
        return stage_file(self, local, *args, **kwargs)

    monkeypatch.setattr(DiskStore, "stage_file", shrunk_first)

    class StopAtTheEnd(Reports):
        def __call__(self, done: int, total: int) -> None:
            super().__call__(done, total)
            if done == total:
                raise Stop(done)

    drive = make_drive(drive_id)
    stopping = StopAtTheEnd()
    with pytest.raises(Stop):
        await drive.put("big.bin", progress=stopping)
    assert stopping[0] == (0, LARGE) and stopping[-1] == (LARGE // 2, LARGE // 2)
    assert not await drive.exists("big.bin")
    sync = drive.sync if hasattr(drive, "sync") else drive
    assert uploads_in_progress(root, sync) == 0
    reports = Reports()
    await drive.put("big.bin", progress=reports)
    assert reports[-1] == (LARGE // 2, LARGE // 2)
    assert (await drive.info("big.bin")).size == LARGE // 2


def test_sync_drive_reports_in_the_calling_thread(env: dict[str, str], workdir: Path,
                                                  drive_id: str) -> None:  # fmt: skip
    write_random(workdir / "big.bin", LARGE)
    reports: list[Reports] = []

    def transfer() -> None:
        with SyncDrive(drive_id) as drive:
            put, got = Reports(), Reports()
            drive.put("big.bin", progress=put)
            drive.get("big.bin", to="out/big.bin", progress=got)
            reports.extend([put, got])

    thread = threading.Thread(target=transfer)
    thread.start()
    thread.join()
    assert len(reports) == 2
    for report in reports:
        report.check(LARGE, partial=True)
        assert report.threads == {thread.ident}


def test_a_sync_drive_called_from_its_own_callback_says_so(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    write_random(workdir / "a.bin", LARGE)
    with SyncDrive(drive_id) as drive:

        def lists(done: int, total: int) -> None:
            drive.list(".")

        with pytest.raises(RuntimeError, match=r"SyncDrive\.list\(\).*progress= callback"):
            drive.put("a.bin", progress=lists)  # at (0, total): before any byte is copied
        assert not drive.exists("a.bin")
        drive.put("a.bin")  # and the drive works on
        assert drive.info("a.bin").size == LARGE


async def test_the_reporter_hands_counts_from_any_thread_to_the_loop() -> None:
    reports = Reports()
    with reporting(reports) as reporter:
        assert reporter is not None
        reporter.expect(100)
        await anyio.to_thread.run_sync(reporter.add, 30)  # reported before this returns
        assert reports == [(0, 100), (30, 100)]
        reporter.add(20)  # in the loop's own thread: at once
        assert reports[-1] == (50, 100)
        reporter.add(90)  # past the total (a file that grew since it was measured)
        assert reports[-1] == (100, 100)
        reporter.finish()
    assert reports == [(0, 100), (30, 100), (50, 100), (100, 100)]
    assert reports.threads == {threading.get_ident()}
    with reporting(None) as nothing:
        assert nothing is None


async def test_the_reporter_stops_the_copies_once_the_callback_fails() -> None:
    def fails(done: int, total: int) -> None:
        if done:
            raise Stop(done)

    with pytest.raises(Stop) as raised, reporting(fails) as reporter:
        assert reporter is not None
        reporter.expect(10)
        await anyio.to_thread.run_sync(reporter.add, 3)  # the callback fails meanwhile
        with pytest.raises(ProgressStopped):
            await anyio.to_thread.run_sync(reporter.add, 3)  # the copy's next count
        raise ProgressStopped  # as the copy's error comes out of the transfer
    assert raised.value.args == (3,)  # the callback's own, once

    def interrupted(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    # Raised in a callback of the loop's, it would leave the loop (and the transfer's task
    # unfinished): it stops the transfer like any error instead, and is raised by it.
    with pytest.raises(KeyboardInterrupt), reporting(interrupted) as reporter:
        assert reporter is not None
        reporter.expect(10)
        await anyio.to_thread.run_sync(reporter.add, 3)
        with pytest.raises(ProgressStopped):
            reporter.add(3)
        raise ProgressStopped

    # A small file's put completes the count itself, inside its steps (a task of their
    # own): the same, ProgressStopped there, the callback's KeyboardInterrupt out of it.
    stopped: list[ProgressStopped] = []
    with pytest.raises(KeyboardInterrupt), reporting(interrupted) as reporter:
        assert reporter is not None
        try:
            reporter.complete(5)
        except ProgressStopped as exc:
            stopped.append(exc)
            raise
    assert stopped


def test_a_bar_counts_each_transfer_after_the_ones_before() -> None:
    bar = TransferBar("put 2 files", total=300)
    first = bar.part()
    first(0, 100)
    first(60, 100)
    assert (bar.completed, bar.total) == (60, 300)
    first(100, 100)
    second = bar.part()
    second(0, 200)
    second(150, 200)
    assert (bar.completed, bar.total) == (250, 300)
    second(200, 200)
    assert (bar.completed, bar.total) == (300, 300)
    # Without a total known in advance (a get), each transfer's own counts once reported.
    get = TransferBar("get d")
    assert (get.completed, get.total) == (0, None)
    report = get.part()
    report(10, 40)
    assert (get.completed, get.total) == (10, 40)
    with get:  # ends full when the transfer returns
        pass
    assert (get.completed, get.total) == (40, 40)


def test_piped_and_json_show_no_bar(env: dict[str, str], workdir: Path, drive_id: str) -> None:
    Path("big.bin").write_bytes(b"\x01" * (8 * MiB))
    Path("d").mkdir()
    Path("d/one.bin").write_bytes(b"1" * MiB)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
        )

    put = run("put", "big.bin", "d", f"{drive_id}/in/")
    assert (put.returncode, put.stderr) == (0, "")
    assert put.stdout == f"big.bin -> {drive_id}/in/big.bin\nd -> {drive_id}/in/d\n"
    got = run("get", f"{drive_id}/in", "out/")
    assert (got.returncode, got.stderr, got.stdout) == (0, "", f"{drive_id}/in -> out/in\n")
    assert filecmp.cmp("big.bin", "out/in/big.bin", shallow=False)
    assert Path("out/in/d/one.bin").read_bytes() == b"1" * MiB
    quiet = run("get", "--json", f"{drive_id}/in/big.bin", "copy.bin")
    assert (quiet.stderr, json.loads(quiet.stdout)) == ("", {"got": "copy.bin"})


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """The tmux command on a private server (its own socket), killed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="adtmux-"))  # short: socket paths are limited
    command = ["tmux", "-S", str(folder / "sock"), "-f", "/dev/null"]
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder)  # tmux leaves its socket behind


BAR = re.compile(r"^(put|get) big\.bin +[━╸╺]+ +([\d.]+)/([\d.]+) MiB", re.MULTILINE)


@pytest.mark.slow
def test_bar_on_a_terminal(
    env: dict[str, str], workdir: Path, drive_id: str, tmux: list[str]
) -> None:
    block = bytes(range(256)) * (MiB // 256)
    with open("big.bin", "wb") as f:
        for i in range(BIG):
            f.write(i.to_bytes(4, "big") + block[4:])
    Path("small.txt").write_text("small")
    # Before the put and the get, the file they read leaves the page cache, so that they
    # read it from the disk: from memory (2 GB/s on some machines) either can end before
    # the bar's first refresh is captured.
    stored = Path(env["ASYNCDRIVE_ROOT"]) / "drives" / drive_id[6:] / "default" / "big.bin"

    def evict(path: Path) -> str:
        code = (
            f"import os; fd = os.open({str(path)!r}, os.O_RDONLY); os.fsync(fd); "
            "os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)"
        )
        return f"{sys.executable} -c {shlex.quote(code)}"

    steps = [
        evict(workdir / "big.bin"),
        f"{SCRIPT} put big.bin {drive_id}/",
        evict(stored),
        f"{SCRIPT} get {drive_id}/big.bin out/",
        f"{SCRIPT} put --json small.txt {drive_id}/",
        f"{SCRIPT} put small.txt {drive_id}/again.txt > put.out",  # stdout not the terminal
    ]
    exports = "".join(
        f"export {key}={shlex.quote(env[key])}\n"
        for key in ("ASYNCDRIVE_ROOT", "ASYNCDRIVE_REDIS_URL", "PATH")
    )
    body = "".join(f"{step}\necho $? >> rcs\n" for step in steps)
    Path("run.sh").write_text(f"{exports}{body}touch finished\nsleep 120\n")
    started = subprocess.run(
        [*tmux, "new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "-c", str(workdir),
         "sh run.sh"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    running: list[str] = []  # screens captured while a transfer was going on
    deadline = time.monotonic() + 120
    while not Path("finished").exists():
        assert time.monotonic() < deadline, "the transfers did not finish in 120 s"
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "t"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        if not Path("finished").exists():
            running.append(screen)
        time.sleep(0.02)
    final = subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "t"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert Path("rcs").read_text().split() == ["0"] * len(steps), final
    # While each transfer ran, its bar showed part of the file copied, only moving forward.
    for verb in ("put", "get"):
        partial = [
            float(m[2])
            for screen in running
            for m in BAR.finditer(screen)
            if m[1] == verb and m[3] == f"{BIG}.0" and 0 < float(m[2]) < BIG
        ]
        assert partial, f"no partial {verb} bar seen:\n" + "\n----\n".join(running[-5:])
        assert partial == sorted(partial)
    # Each finished bar stays complete; the --json put drew none.
    done = [(m[1], m[2], m[3]) for m in BAR.finditer(final)]
    assert done == [("put", f"{BIG}.0", f"{BIG}.0"), ("get", f"{BIG}.0", f"{BIG}.0")], final
    assert final.count(" MiB ") == 2, final  # no other bar
    assert f"big.bin -> {drive_id}/big.bin" in final
    assert f"{drive_id}/big.bin -> out/big.bin" in final
    assert '{"put": "small.txt", "to": "small.txt"}' in final
    assert Path("put.out").read_text() == f"small.txt -> {drive_id}/again.txt\n"
    assert "put small.txt" in final  # its bar still on the terminal
    # And the transfers really completed.
    assert filecmp.cmp("big.bin", "out/big.bin", shallow=False)
    with SyncDrive(drive_id) as drive:
        assert drive.info("big.bin").size == BIG * MiB
        assert drive.read_bytes("small.txt") == b"small"
    assert not list(Path(env["ASYNCDRIVE_ROOT"], "drives").glob(f"*/.tmp/{TMP_PREFIX}*"))


def test_the_callback_type_documents_itself() -> None:
    """A plain alias of Callable: help(asyncdrive.ProgressCallback) showed typing's help."""
    from asyncdrive import ProgressCallback

    assert "progress(done, total)" in (ProgressCallback.__doc__ or "")
    seen: list[tuple[int, int]] = []

    def record(done: int, total: int) -> None:
        seen.append((done, total))

    callback: ProgressCallback = record  # any function of (done, total) is one
    callback(0, 3)
    assert seen == [(0, 3)]

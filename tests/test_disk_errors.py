"""A disk that refuses to write: a clear DriveStorageError, and nothing left half-written.

The refusal is real: a child process lowers its own file-size limit (RLIMIT_FSIZE), so the
kernel fails its writes past 1 MiB with EFBIG, as a full disk fails them with ENOSPC.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncdrive import Drive, DrivePermissionError, DriveStorageError, GcReport, SyncDrive
from asyncdrive._storage import DiskStore

from .conftest import run_python
from .procs import read_line, spawn

LIMIT = 1 << 20

CHILD = """
    import asyncio, errno, json, os, resource, signal
    from asyncdrive import Drive, DriveError

    async def main():
        async with Drive({drive_id!r}) as drive:
            await drive.write_bytes("small.txt", b"ok")
            await drive.write_bytes("kept.bin", os.urandom(3 * {limit}))
            with open("big.bin", "wb") as f:
                f.write(os.urandom(3 * {limit}))
            os.mkdir("tree")  # a folder: a small file, and one too large
            with open("tree/a.txt", "wb") as f:
                f.write(b"small")
            with open("tree/z.bin", "wb") as f:
                f.write(os.urandom(3 * {limit}))
            # From here, no file of this process may grow past the limit.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))

            async def stream():
                async with drive.open("streamed.bin", "wb") as out:
                    for _ in range(3):
                        await out.write(os.urandom({limit}))

            calls = {{
                "put": lambda: drive.put("big.bin"),
                "replace": lambda: drive.put("big.bin", to="kept.bin"),
                "write_bytes": lambda: drive.write_bytes("bytes.bin", b"x" * 3 * {limit}),
                "open": stream,
                "get": lambda: drive.get("kept.bin", to="got.bin"),
                "folder": lambda: drive.put("tree"),
            }}
            for name, call in calls.items():
                try:
                    await call()
                except DriveError as exc:
                    print(json.dumps([name, type(exc).__name__, isinstance(exc, OSError),
                                      exc.errno == errno.EFBIG, str(exc)]), flush=True)
                else:
                    print(json.dumps([name, "no error"]), flush=True)
            # A writer whose write failed commits nothing, even if closed as if all was well.
            out = await drive.open("poisoned.bin", "wb")
            try:
                await out.write(os.urandom(3 * {limit}))
            except DriveError:
                pass
            await out.aclose()
            print(json.dumps([out.closed, out.info is None]), flush=True)
            print(json.dumps(await drive.list(".")), flush=True)

    asyncio.run(main())
"""


def test_a_refused_write_is_a_drive_storage_error_that_leaves_nothing(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    name = drive_id.removeprefix("lit://")
    proc = spawn(CHILD.format(drive_id=drive_id, limit=LIMIT), env, workdir)
    try:
        reports = {}
        for _ in range(6):
            call, *report = json.loads(read_line(proc))
            reports[call] = report
        poisoned = json.loads(read_line(proc))
        listed = json.loads(read_line(proc))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    for call, target in [
        ("put", "big.bin"),
        ("replace", "kept.bin"),
        ("write_bytes", "bytes.bin"),
        ("open", "streamed.bin"),
        ("get", "kept.bin"),
        ("folder", "tree"),
    ]:
        kind, is_os_error, is_efbig, message = reports[call]
        assert (kind, is_os_error, is_efbig) == ("DriveStorageError", True, True), (call, message)
        assert f"Drive {name!r}" in message and repr(target) in message, message
        assert "ulimit -f" in message, message  # the fix
    assert "was not stored" in reports["put"][3]
    assert "left as it was" in reports["get"][3]
    assert "upload was dropped" in reports["open"][3]
    # A folder's: what was stored and what not (it said "That file was not stored").
    assert reports["folder"][3].startswith(f"Drive {name!r}: cannot put a folder 'tree' to")
    assert reports["folder"][3].endswith(
        "That file ('tree/z.bin') was not stored; of the folder's 2 files, those stored "
        "before it or beside it stay (see list('tree', recursive=True)), the rest were not "
        "stored."
    )
    assert poisoned == [True, True]

    # Nothing half-written: the drive holds what it held, with its old bytes, and no
    # upload or backup is left on its disk; the get left no local file, nor a temporary.
    assert [path for path in listed if path != "tree"] == ["kept.bin", "small.txt"]
    with SyncDrive(drive_id) as drive:
        assert drive.info("kept.bin").size == 3 * LIMIT
        assert drive.info("kept.bin").version == 1
        assert drive.read_bytes("small.txt") == b"ok"
    base = root / "drives" / name
    tmp = base / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    stored = sorted(p.name for p in base.rglob("*") if p.is_file() and ".tmp" not in p.parts)
    stored = [n for n in stored if not n.startswith(".asyncdrive") and n != "a.txt"]
    assert stored == ["kept.bin", "small.txt"]  # (the folder's small file may be stored)
    assert sorted(p.name for p in workdir.iterdir()) == ["big.bin", "tree"]


def test_storage_errors_say_what_an_errno_means() -> None:
    from asyncdrive._exceptions import storage_error

    full = storage_error("d", OSError(errno.ENOSPC, "No space", "/mnt/x"), "put", "a.txt")
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert full.filename == "/mnt/x"
    assert str(full) == (
        "Drive 'd': cannot put 'a.txt': no space left on the disk (/mnt/x). Free space on "
        "it, then retry. That file was not stored: its copy in the drive, if any, is as it was."
    )
    denied = storage_error("d", OSError(errno.EACCES, "Permission denied"), "get", "c")
    assert isinstance(denied, PermissionError) and isinstance(denied, DriveStorageError)
    assert not isinstance(
        storage_error("d", OSError(errno.EIO, "I/O"), "get", "c"), PermissionError
    )
    local = storage_error("d", OSError(errno.EACCES, "Denied", "/home/me/out/c"), "get", "c",
                          drive_dir="/shared/drives/d")  # fmt: skip
    assert "write access to that local folder" in str(local)
    drive_side = storage_error("d", OSError(errno.EACCES, "Denied", "/shared/drives/d/c/p"),
                               "get", "p", drive_dir="/shared/drives/d")  # fmt: skip
    # The drive side of a get is read: access to read it is what is missing.
    assert "local folder" not in str(drive_side) and "read access there" in str(drive_side)
    reading_local = storage_error("d", OSError(errno.EACCES, "Denied", "/home/me/in/c"), "put",
                                  "c", drive_dir="/shared/drives/d")  # fmt: skip
    writing_drive = storage_error("d", OSError(errno.EACCES, "Denied", "/shared/drives/d/c"),
                                  "put", "c", drive_dir="/shared/drives/d")  # fmt: skip
    assert "read access there" in str(reading_local), str(reading_local)
    assert "write access there" in str(writing_drive), str(writing_drive)
    # Refused first in the uploads' folder: the whole drive is what needs the access.
    uploads = storage_error("d", OSError(errno.EACCES, "Denied", "/shared/drives/d/.tmp/x"),
                            "put", "c", drive_dir="/shared/drives/d")  # fmt: skip
    assert "write access to the drive's folders (/shared/drives/d and those" in str(uploads)
    odd = storage_error("d", OSError(errno.ETXTBSY, "Text file busy"), "open", "b")
    assert str(odd) == (
        "Drive 'd': cannot open 'b': Text file busy. Check the disk (or the mount), then retry."
    )
    long = storage_error("d", OSError(errno.ENAMETOOLONG, "File name too long"), "open", "b")
    assert str(long) == (
        "Drive 'd': cannot open 'b': a name or path is too long for the filesystem. Use "
        "shorter names, or fewer folders above the file."
    )
    # An fd-based call (os.setxattr(fd, ...)) names its descriptor: not a file name.
    attribute = storage_error("d", OSError(errno.ENOSPC, "No space", 8), "write_bytes", "b",
                              drive_dir="/shared/drives/d")  # fmt: skip
    assert isinstance(attribute, DriveStorageError) and attribute.errno == errno.ENOSPC
    assert attribute.filename is None and "(8)" not in str(attribute)
    many = storage_error("d", OSError(errno.EMFILE, "Too many open files"), "put", "b")
    assert "too many files open" in str(many) and "ulimit -n" in str(many)


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def set_immutable(folder: Path, immutable: bool) -> None:
    """Set or clear the immutable flag of a folder (or file): even root cannot change it."""
    fd = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))
        flags = flags | FS_IMMUTABLE_FL if immutable else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags))
    finally:
        os.close(fd)


async def test_a_folder_refusing_renames_is_a_storage_error_not_a_clash(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    """EPERM on the rename into place: reported as the disk's refusal, the old file kept."""
    name = drive_id.removeprefix("lit://")
    async with Drive(drive_id) as drive:
        await drive.write_bytes("d/kept.txt", b"old")
        folder = root / "drives" / name / "default" / "d"
        set_immutable(folder, True)
        try:
            Path("kept.txt").write_bytes(b"new")
            calls: list[tuple[Callable[[], Awaitable[object]], str]] = [
                (lambda: drive.put("kept.txt", to="d/kept.txt"), "d/kept.txt"),
                (lambda: drive.write_bytes("d/new.txt", b"new"), "d/new.txt"),
            ]
            for call, target in calls:
                with pytest.raises(DrivePermissionError) as refused:
                    await call()
                assert isinstance(refused.value, DriveStorageError | PermissionError)
                assert refused.value.errno == errno.EPERM
                message = str(refused.value)
                assert f"Drive {name!r}" in message and repr(target) in message, message
                assert "permission denied" in message and "write access" in message, message
                # Not the /proc/self/fd name through which a new file is linked into place.
                assert "/proc/self/fd" not in message, message
                # The folder that refused is named (a link into place named nothing).
                assert refused.value.filename is not None, message
                assert str(folder) in os.fsdecode(refused.value.filename), message
        finally:
            set_immutable(folder, False)
        # Nothing changed: the old bytes and version, no new file, nothing left in .tmp.
        assert await drive.read_bytes("d/kept.txt") == b"old"
        assert (await drive.info("d/kept.txt")).version == 1
        assert await drive.list("d") == ["d/kept.txt"]
        tmp = root / "drives" / name / ".tmp"
        assert list(tmp.iterdir()) == []
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
            "kept.txt"
        ]
        await drive.write_bytes("d/kept.txt", b"after")  # and the drive works on
        assert (await drive.info("d/kept.txt")).version == 2


async def test_a_get_into_a_local_folder_refusing_it_says_what_to_do_there(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """The fix named is the local side's (another folder, to=), not the drive root's."""
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a.txt", b"drive bytes")
        (workdir / "locked").mkdir()
        set_immutable(workdir / "locked", True)
        try:
            with pytest.raises(DrivePermissionError) as refused:
                await drive.get("a.txt", to="locked/a.txt")
        finally:
            set_immutable(workdir / "locked", False)
        message = str(refused.value)
        assert "'a.txt'" in message and "permission denied" in message, message
        assert "write access to that local folder" in message and "(to=)" in message, message
        assert "root=" not in message and "The local file was left as it was." in message
        assert os.listdir(workdir / "locked") == []


async def test_a_delete_the_disk_would_refuse_is_refused_before_the_index_changes(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    """As `rm`: a file whose folder may not change stays in the drive; a failed delete
    took it out of the index (and gc() then removed its bytes for good)."""
    name = drive_id.removeprefix("lit://")
    async with Drive(drive_id) as drive:
        for path in ("d/a.txt", "d/b.txt", "e/c.txt", "f.txt"):
            await drive.write_bytes(path, path.encode())
        folder = root / "drives" / name / "default" / "d"
        set_immutable(folder, True)
        try:
            with pytest.raises(DrivePermissionError) as refused:
                await drive.delete("d/a.txt")
            message = str(refused.value)
            assert "cannot delete 'd/a.txt'" in message and str(folder) in message, message
            assert "write access" in message and "the drive still lists it" in message, message
            with pytest.raises(DrivePermissionError) as refused:
                await drive.delete(".", recursive=True)
            message = str(refused.value)
            assert "cannot delete 'd/a.txt'" in message, message
            assert "'d/a.txt' and 1 other file(s) in folders this user may not change" in message
            assert "the other 2 are deleted" in message, message
        finally:
            set_immutable(folder, False)
        assert await drive.list(".", recursive=True) == ["d/a.txt", "d/b.txt"]
        assert await drive.read_bytes("d/b.txt") == b"d/b.txt"
        assert not (folder.parent / "e").exists() and not (folder.parent / "f.txt").exists()
        assert await drive.gc(grace=0) == GcReport(0, 0, 0, 0, 0, 0)  # nothing stray


async def test_a_delete_whose_bytes_stay_all_the_same_says_so_and_gc_removes_them(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    """What the check before cannot tell (an immutable file): the index lets it go first,
    readers see it deleted, the message says its bytes stay until gc()."""
    name = drive_id.removeprefix("lit://")
    async with Drive(drive_id) as drive:
        await drive.write_bytes("d/a.txt", b"a")
        await drive.write_bytes("d/b.txt", b"b")
        folder = root / "drives" / name / "default" / "d"
        for file in ("a.txt", "b.txt"):
            set_immutable(folder / file, True)
        try:
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: drive.delete("d/a.txt"),
                lambda: drive.delete("d", recursive=True),
            ]
            for call in calls:
                with pytest.raises(DrivePermissionError, match="no longer lists it") as refused:
                    await call()
                assert "'d" in str(refused.value) and "gc()" in str(refused.value)
        finally:
            for file in ("a.txt", "b.txt"):
                set_immutable(folder / file, False)
        # The index let them go first: readers see them deleted, as the message says.
        assert await drive.list(".") == [] and not await drive.exists("d/a.txt")
        assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
        report = await drive.gc(grace=0)
        assert report.orphans_removed == 2 and not folder.exists()  # empty folders go too


def test_a_folder_another_process_changed_meanwhile_does_not_refuse_a_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a delete lets files go from the index, it asks whether their folders may
    change. A folder that a put of another process made a file, or a delete removed, or
    that was made again as it was asked (`os.access` says no to those too) refuses
    nothing: it was a false DrivePermissionError. One that may not change still refuses."""
    store = DiskStore(tmp_path, "d")
    folder = store.base / "c"
    folder.mkdir(parents=True)
    (folder / "a").write_bytes(b"a file, where a folder was")
    assert store.removal_refused("c", ["a/b", "gone/x", "a/b/c"]) == {}
    real_access = os.access

    def made_again_as_asked(path: Path, *args: Any, **kwargs: Any) -> bool:
        if Path(path) == folder / "later" and not Path(path).exists():
            Path(path).mkdir()
            return False  # asked while it was gone
        return real_access(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", made_again_as_asked)
    assert store.removal_refused("c", ["later/x"]) == {}
    monkeypatch.undo()
    set_immutable(folder / "later", True)
    try:
        refused = store.removal_refused("c", ["later/x", "later/y"])
    finally:
        set_immutable(folder / "later", False)
    assert sorted(refused) == ["later/x", "later/y"]
    assert refused["later/x"].errno == errno.EACCES


async def test_a_folder_get_stopped_midway_says_what_it_copied(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    async with Drive(drive_id) as drive:
        for path in ("f/b1.txt", "f/b2.txt", "f/sub/x.txt"):
            await drive.write_bytes(path, b"x")
        (workdir / "out" / "sub").mkdir(parents=True)
        set_immutable(workdir / "out" / "sub", True)
        try:
            with pytest.raises(DrivePermissionError) as refused:
                await drive.get("f", to="out")
        finally:
            set_immutable(workdir / "out" / "sub", False)
        message = str(refused.value)
        assert "cannot get a folder 'f' to 'out'" in message, message
        assert "The files got before it stay" in message, message
        assert "write access to that local folder" in message, message
        assert sorted(os.listdir(workdir / "out")) == ["b1.txt", "b2.txt", "sub"]


UNREADABLE_FOLDER = """
    import ctypes, os, pty, select, subprocess, sys
    if os.geteuid() == 0:  # root reads anything: leave the capabilities that let it
        assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0  # CLONE_NEWUSER
    from asyncdrive import DrivePermissionError, SyncDrive

    os.makedirs("f/locked")
    for name in ("f/ok", "f/locked/in", "f/secret"):
        open(name, "w").write("x")
    os.chmod("f/locked", 0)
    os.chmod("f/secret", 0)
    os.makedirs("g")
    for i in range(7):
        open(f"g/{{i}}", "w").write("x")
        os.chmod(f"g/{{i}}", 0)
    try:
        with SyncDrive({drive_id!r}) as drive:
            for folder in ("f", "g"):
                try:
                    drive.put(folder)
                except DrivePermissionError as exc:
                    print("refused:", exc)
            print("stored:", drive.list(".", recursive=True))
        # The command line, on a terminal (where it draws a bar, after looking at the files).
        terminal, its_end = pty.openpty()
        done = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "put", "f", {drive_id!r} + "/"],
            stderr=its_end, stdout=subprocess.DEVNULL,
        )
        os.close(its_end)
        shown = b""
        while select.select([terminal], [], [], 1)[0]:
            try:
                shown += os.read(terminal, 65536)
            except OSError:  # the other end closed
                break
        print("cli:", done.returncode, b"Traceback" in shown, b"permission denied" in shown)
    finally:
        os.chmod("f/locked", 0o755)
"""


def test_a_folder_put_refuses_a_folder_it_cannot_read(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    done = run_python(
        textwrap.dedent(UNREADABLE_FOLDER.format(drive_id=drive_id)), cwd=workdir, env=env
    )
    refused, refused_more, stored, cli = done.stdout.splitlines()
    # Not stored without the files it could not read, as before: refused, naming them all
    # (it named only the first it met).
    assert refused.startswith("refused: ") and "permission denied" in refused, done.stdout
    assert "f/locked" in refused and "f/secret" in refused and "cannot put 'f'" in refused
    assert "to read 2 files or folders" in refused, refused
    assert "to read 7 files or folders: " in refused_more, refused_more
    assert "g/4 and 2 more. " in refused_more and "g/5" not in refused_more, refused_more
    assert stored == "stored: []"
    assert cli == "cli: 1 False True"  # one line, no traceback from the bar's look first


async def test_gc_removes_what_it_may_and_says_what_it_could_not(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    """One stray file that gc could not remove stopped it (the others stayed); `gc --all`
    stopped at the first drive that failed (the next were never visited)."""
    other_id, third_id = f"{drive_id}b", f"{drive_id}c"  # listed after this one
    for one in (drive_id, other_id, third_id):
        async with Drive(one) as drive:
            await drive.write_bytes("kept.txt", b"indexed")
        files = root / "drives" / one.removeprefix("lit://") / "default"
        (files / "locked").mkdir()
        for stray in ("locked/stray.txt", "loose.txt"):
            (files / stray).write_bytes(b"put there by hand")
    locked = root / "drives" / drive_id.removeprefix("lit://") / "default" / "locked"
    third_locked = root / "drives" / third_id.removeprefix("lit://") / "default" / "locked"
    set_immutable(locked, True)
    set_immutable(third_locked, True)
    try:
        async with Drive(drive_id) as drive:
            with pytest.raises(DrivePermissionError) as refused:
                await drive.gc(grace=0)
        message = str(refused.value)
        assert "cannot gc: permission denied" in message and str(locked) in message, message
        assert "1 orphans removed" in message and "the 1 stray file(s)" in message, message
        assert not (locked.parent / "loose.txt").exists() and (locked / "stray.txt").exists()
        every = subprocess.run(
            [sys.executable, "-m", "asyncdrive", "gc", "--all", "--grace", "0"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        set_immutable(locked, False)
        set_immutable(third_locked, False)
    assert every.returncode == 1 and "Traceback" not in every.stderr, every.stderr
    failed = every.stderr.splitlines()  # each drive that failed, said
    assert len(failed) == 2, every.stderr
    assert failed[0].startswith(f"asyncdrive: error: Drive {drive_id[6:]!r}: cannot gc")
    assert failed[1].startswith(f"asyncdrive: error: Drive {third_id[6:]!r}: cannot gc")
    assert every.stdout.startswith(f"{other_id}: 0 uploads removed, "), every.stdout
    assert "2 orphans removed" in every.stdout  # the next drive's gc ran, whole


AS_A_USER_WITHOUT_ACCESS = """
    import ctypes, os
    if os.geteuid() == 0:  # root reads anything: leave the capabilities that let it
        assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0  # CLONE_NEWUSER
    from asyncdrive import DriveError, SyncDrive

    def attempt(what, call):
        try:
            print(what, "->", call())
        except DriveError as exc:
            print(what, "->", type(exc).__name__, exc)
"""

REBUILD_AND_GC_OF_A_DRIVE_PARTLY_UNREADABLE = """
    with SyncDrive({drive_id!r}) as drive:
        attempt("rebuild", drive.rebuild_index)
        attempt("gc", lambda: drive.gc(grace=0))
        attempt("list", lambda: drive.list(".", recursive=True))
"""


async def test_rebuild_and_gc_refuse_a_drive_they_cannot_read_whole(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str
) -> None:
    """A rebuild by a user who could not read one folder replaced the index with the rest
    (and said so nowhere); gc then took that folder's files for deleted."""
    name = drive_id.removeprefix("lit://")
    async with Drive(drive_id) as drive:
        await drive.write_bytes("pub/p.txt", b"public")
        await drive.write_bytes("priv/s.txt", b"private")
    private = root / "drives" / name / "default" / "priv"
    private.chmod(0)
    try:
        code = AS_A_USER_WITHOUT_ACCESS + REBUILD_AND_GC_OF_A_DRIVE_PARTLY_UNREADABLE
        done = run_python(textwrap.dedent(code.format(drive_id=drive_id)), cwd=workdir, env=env)
    finally:
        private.chmod(0o755)
    rebuild, gc, listed = done.stdout.splitlines()
    assert rebuild.startswith("rebuild -> DrivePermissionError") and str(private) in rebuild
    assert "Nothing was changed" in rebuild and "read, and write, all of" in rebuild, rebuild
    assert gc.startswith("gc -> DrivePermissionError") and "gc() stopped there" in gc, gc
    assert listed == "list -> ['priv/s.txt', 'pub/p.txt']"
    async with Drive(drive_id) as drive:
        assert await drive.gc(grace=0) == GcReport(0, 0, 0, 0, 0, 0)
        assert await drive.read_bytes("priv/s.txt") == b"private"


FOLDER_PUTS_OF_WHAT_CANNOT_BE_READ = """
    for folder, blocked in (("a", "a/x"), ("b", "b/secret.txt")):
        os.makedirs(f"{{folder}}/x")
        for name in ("1.txt", "x/2.txt", "secret.txt"):
            open(f"{{folder}}/{{name}}", "w").write("x")
        os.chmod(blocked, 0o600 if folder == "a" else 0)  # a/x: listed, not searchable
    with SyncDrive({drive_id!r}) as drive:
        attempt("put a", lambda: drive.put("a"))
        attempt("put b", lambda: drive.put("b"))
        attempt("list", lambda: drive.list(".", recursive=True))
    os.chmod("a/x", 0o755)
"""


def test_a_folder_put_refuses_files_it_cannot_reach_or_read_before_storing_any(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """A folder that lists but cannot be searched had its files left out without a word;
    a file that cannot be read was found only once the files before it were stored."""
    code = AS_A_USER_WITHOUT_ACCESS + FOLDER_PUTS_OF_WHAT_CANNOT_BE_READ
    done = run_python(textwrap.dedent(code.format(drive_id=drive_id)), cwd=workdir, env=env)
    put_a, put_b, listed = done.stdout.splitlines()
    assert put_a.startswith("put a -> DrivePermissionError") and "a/x/2.txt" in put_a, put_a
    assert put_b.startswith("put b -> DrivePermissionError") and "b/secret.txt" in put_b, put_b
    assert "read access there" in put_b, put_b
    assert listed == "list -> []"


async def test_a_commit_made_is_never_reported_failed_by_what_follows_it(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a drive's first commit, its marker is written: a disk refusing it (full, say)
    made the put raise "Nothing was stored" though its file was committed and listed."""
    name = drive_id.removeprefix("lit://")
    base = root / "drives" / name
    for folder in (base / "default", base / ".tmp"):
        folder.mkdir(parents=True)
    set_immutable(base, True)  # no new entry there: the marker cannot be made
    try:
        async with Drive(drive_id) as drive:
            info = await drive.write_bytes("a.txt", b"committed")
            assert info.version == 1 and await drive.read_bytes("a.txt") == b"committed"
    finally:
        set_immutable(base, False)
    assert "marker not written" in caplog.text
    async with Drive(drive_id) as drive:  # written after the next commit
        await drive.write_bytes("b.txt", b"2")
    assert (base / ".asyncdrive-drive").exists()


FOLDER_PUT_UNDER_A_LOW_FD_LIMIT = """
import asyncio, os, resource
from asyncdrive import Drive

async def main():
    os.mkdir("src")
    for i in range(300):
        with open(f"src/f{{i:03}}", "wb") as f:
            f.write(b"x" * 100)
    async with Drive("{drive_id}") as drive:
        await drive.list(".")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
        await drive.put("src", to="folder")
        print(len(await drive.list("folder")))

asyncio.run(main())
"""


def test_a_folder_put_keeps_within_the_open_file_limit(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """8 batches of 32 files at once kept ~220 descriptors open: EMFILE midway under
    ``ulimit -n 128``, part of the folder stored. The batches at once follow the limit."""
    code = FOLDER_PUT_UNDER_A_LOW_FD_LIMIT.format(drive_id=drive_id)
    done = run_python(textwrap.dedent(code), cwd=workdir, env=env)
    assert done.stdout.split() == ["300"]


UMASK_SET_AFTER_IMPORT = """
    import os, stat
    os.umask(0o022)
    from asyncdrive import SyncDrive, _storage

    # False: as on kernels before 6.0, which gave files without a name no umask.
    _storage._UNNAMED_FILES_GET_THE_UMASK = {kernel_masks}
    os.umask(0o002)  # set by the program once its modules are imported: to share with a group
    with open("local.bin", "wb") as f:
        f.write(os.urandom(3 << 20))
    with SyncDrive({drive_id!r}) as drive:
        drive.write_bytes("d/small.txt", b"in place")  # a new file made at its name
        drive.put("local.bin", to="d/large.bin")  # an upload without a name, linked in
        with drive.open("d/streamed.bin", "wb") as f:
            f.write(b"streamed")
        drive.get("d/small.txt", to="got.txt")  # a local copy without a name, linked in
    files = [os.path.join({files!r}, "d", name) for name in sorted(os.listdir({files!r} + "/d"))]
    for path in [{files!r} + "/d", *files, "got.txt"]:
        print(os.path.basename(path), oct(stat.S_IMODE(os.stat(path).st_mode)))
"""


@pytest.mark.parametrize("kernel_masks", [True, False])
def test_files_take_the_umask_in_force_not_the_one_at_import(
    env: dict[str, str], workdir: Path, root: Path, drive_id: str, kernel_masks: bool
) -> None:
    """The mode was reckoned once, at import: a program that then set umask 002 to share
    with its group made drive files (and got files) 0644 all the same."""
    files = str(root / "drives" / drive_id.removeprefix("lit://") / "default")
    code = UMASK_SET_AFTER_IMPORT.format(drive_id=drive_id, files=files, kernel_masks=kernel_masks)
    done = run_python(textwrap.dedent(code), cwd=workdir, env=env)
    assert done.stdout.splitlines() == [
        "d 0o775",
        "large.bin 0o664",
        "small.txt 0o664",
        "streamed.bin 0o664",
        "got.txt 0o664",
    ]


REPLACE_ANOTHER_USERS_FILE = """
    import os
    from asyncdrive import DriveError, SyncDrive

    drive = SyncDrive({drive_id!r}, root={root!r})
    drive.write_bytes("d/x.txt", b"root's")  # root's file, 0644, in a folder all may write
    for folder, _, _ in os.walk({root!r} + "/drives"):
        os.chmod(folder, 0o777)
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)  # from here, another user (its connection open)
    try:
        drive.write_bytes("d/x.txt", b"nobody's")
    except DriveError as exc:
        print(type(exc).__name__, exc)
    else:
        print("replaced")
    print(drive.read_bytes("d/x.txt"))
    drive.close()
"""


def test_replacing_another_users_file_says_why_it_is_refused(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """Its folder writable, `mv` over it works, but its backup (a hard link) is refused by
    fs.protected_hardlinks: the message asked for write access to the folder."""
    top = Path(tempfile.mkdtemp(prefix="asyncdrive-users-"))  # (pytest's is root's alone)
    top.chmod(0o755)
    try:
        code = REPLACE_ANOTHER_USERS_FILE.format(drive_id=drive_id, root=str(top / "root"))
        done = run_python(textwrap.dedent(code), cwd=workdir, env=env)
    finally:
        shutil.rmtree(top)
    outcome, content = done.stdout.splitlines()
    if Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "0":
        assert (outcome, content) == ("replaced", 'b"nobody\'s"')
        return
    assert outcome.startswith("DrivePermissionError Drive "), outcome
    assert "it is another user's file" in outcome and "fs.protected_hardlinks" in outcome
    assert "read and write access to the file" in outcome and "d/x.txt" in outcome, outcome
    assert content == 'b"root\'s"'  # kept, whole

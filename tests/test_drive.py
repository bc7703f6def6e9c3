"""The semantics of every drive operation, run once on `Drive` and once on `SyncDrive`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import functools
import gc
import hashlib
import itertools
import os
import pickle
import re
import shutil
import stat
import threading
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy
import pytest
import redis.exceptions
from redis.crc import key_slot

import asyncdrive
from asyncdrive import (
    AmbiguousPathError,
    Drive,
    DriveError,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveNotADirectoryError,
    DriveStorageError,
    DriveTimeoutError,
    FileInfo,
    FolderInfo,
    InvalidConfigError,
    InvalidPathError,
    VersionConflictError,
    _drive,
    _index,
    _threads,
)
from asyncdrive import _drive as drive_module
from asyncdrive import _storage as storage
from asyncdrive._drive import FOLDER_CONCURRENCY
from asyncdrive._storage import META_XATTR, DiskStore, Staged, _parse_meta_attribute
from asyncdrive._threads import DISK_THREADS

from .conftest import MakeDrive, opens, quiet_syncfs, raw_redis, run_python, warnings_as_errors

HELLO = b"Hello World !"


def write(path: str, data: bytes = HELLO) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


async def test_seed_basics(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    assert await drive.list(".") == []
    write("a.txt")
    await drive.put("a.txt")
    assert await drive.list(".") == ["a.txt"]
    await drive.get("a.txt")  # the local file is identical: a no-op success
    await drive.delete("a.txt")
    assert await drive.list(".") == []


async def test_put_get_roundtrip_new_cwd(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    drive = make_drive(drive_id)
    write("ckpt/sub/model.bin", os.urandom(3 * 1024 * 1024 + 7))
    expected = Path("ckpt/sub/model.bin").read_bytes()
    await drive.put("ckpt/sub/model.bin")
    other = workdir.parent / "elsewhere"
    other.mkdir()
    os.chdir(other)
    await drive.get("ckpt/sub/model.bin")
    assert (other / "ckpt/sub/model.bin").read_bytes() == expected


async def test_info(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id, component_name="w1")
    write("a.txt")
    await drive.put("a.txt")
    info = await drive.info("./a.txt")
    assert isinstance(info, FileInfo)
    assert info.path == "a.txt"
    assert info.size == len(HELLO)
    assert info.checksum == hashlib.sha256(HELLO).hexdigest()
    assert info.component_name == "w1"
    assert info.version == 1
    assert abs(info.mtime - Path("a.txt").stat().st_mtime) < 60
    with pytest.raises(AttributeError):
        info.size = 3  # type: ignore[misc]


async def test_reput_is_new_version(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    versions = []
    for content in (b"one", b"two", b"three"):
        write("a.txt", content)
        await drive.put("a.txt")
        info = await drive.info("a.txt")
        versions.append(info.version)
        assert await drive.read_bytes("a.txt") == content
    assert versions == sorted(set(versions))
    # A delete and re-put keeps counting up: versions are never reused.
    await drive.delete("a.txt")
    await drive.put("a.txt")
    assert (await drive.info("a.txt")).version > versions[-1]


async def test_write_and_read_bytes(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    info = await drive.write_bytes("b/c.bin", b"\x00\x01binary")
    assert info.size == 8
    assert info == await drive.info("b/c.bin")
    assert await drive.read_bytes("b/c.bin") == b"\x00\x01binary"
    assert await drive.exists("b/c.bin")
    assert await drive.exists("b")
    assert not await drive.exists("c")
    assert await drive.list("b") == ["b/c.bin"]


async def test_list_folders(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    for path in ("ckpt/x.txt", "ckpt/sub/y.txt", "ckpt/sub/z.txt", "top.txt"):
        await drive.write_bytes(path, b"x")
    assert await drive.list(".") == ["ckpt", "top.txt"]
    assert await drive.list("ckpt") == ["ckpt/sub", "ckpt/x.txt"]
    assert await drive.list("./ckpt/") == ["ckpt/sub", "ckpt/x.txt"]
    assert await drive.list("ckpt", recursive=True) == [
        "ckpt/sub/y.txt",
        "ckpt/sub/z.txt",
        "ckpt/x.txt",
    ]
    assert await drive.list(".", recursive=True) == [
        "ckpt/sub/y.txt",
        "ckpt/sub/z.txt",
        "ckpt/x.txt",
        "top.txt",
    ]
    assert await drive.list("missing") == []
    assert await drive.list("missing", recursive=True) == []
    with pytest.raises(DriveNotADirectoryError, match=r"top\.txt"):
        await drive.list("top.txt")
    with pytest.raises(NotADirectoryError):
        await drive.list("top.txt", recursive=True)
    # A folder disappears from listings with its last file.
    await drive.delete("ckpt", recursive=True)
    assert await drive.list(".") == ["top.txt"]


async def test_listings_start_no_thread(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing runs on the caller's loop, whatever the server. On a Cluster, redis-py ran
    each command of a transaction on a thread and event loop of its own, joined from the
    caller's loop (blocked meanwhile, and left waiting for good, the process unable to
    exit, where a SIGTERM handler's sys.exit() interrupted the join)."""
    drive = make_drive(drive_id)
    await drive.write_bytes("ckpt/a.txt", b"x")
    assert await drive.list("ckpt") == ["ckpt/a.txt"]  # (connected, the drive's threads started)
    started: list[str] = []
    start = threading.Thread.start

    def recorded(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recorded)
    assert await drive.list("ckpt") == ["ckpt/a.txt"]
    assert await drive.list("ckpt", recursive=True) == ["ckpt/a.txt"]
    assert await drive.list(".") == ["ckpt"]
    assert started == []


async def test_list_info(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    w1 = make_drive(drive_id, component_name="w1", allow_duplicates=True)
    w2 = make_drive(drive_id, component_name="w2", allow_duplicates=True)
    await w2.write_bytes("ckpt/x.txt", b"w2's x, longer")  # first: w2 first in its HASH
    for path in ("ckpt/x.txt", "ckpt/sub/y.txt", "top.txt"):
        await w1.write_bytes(path, path.encode())
    await w2.write_bytes("ckpt/only2/z.txt", b"z")
    x1 = await w1.info("ckpt/x.txt", component_name="w1")
    x2 = await w1.info("ckpt/x.txt", component_name="w2")
    assert (x1.size, x2.size) == (10, 14)
    # The entries of list(), in order: a folder, and each component's copy of a file.
    assert await w1.list("ckpt") == ["ckpt/only2", "ckpt/sub", "ckpt/x.txt"]
    assert await w1.list_info("ckpt") == [
        FolderInfo("ckpt/only2"),
        FolderInfo("ckpt/sub"),
        x1,
        x2,
    ]
    # One component's view: its copies, and only its folders.
    assert await w1.list_info("ckpt", component_name="w2") == [FolderInfo("ckpt/only2"), x2]
    assert await w1.list_info("ckpt", component_name="w1") == [FolderInfo("ckpt/sub"), x1]
    assert await w1.list_info(".") == [FolderInfo("ckpt"), await w1.info("top.txt")]
    assert await w1.list_info("ckpt", recursive=True) == [
        await w1.info("ckpt/only2/z.txt"),
        await w1.info("ckpt/sub/y.txt"),
        x1,
        x2,
    ]
    assert await w1.list_info("ckpt", recursive=True, component_name="w2") == [
        await w1.info("ckpt/only2/z.txt"),
        x2,
    ]
    # The same answers as list() for what is missing or a file.
    assert await w1.list_info("missing") == []
    assert await w1.list_info("missing", recursive=True) == []
    with pytest.raises(DriveNotADirectoryError, match=r"top\.txt"):
        await w1.list_info("top.txt")
    # A replaced file shows its new version.
    await w1.write_bytes("top.txt", b"v2")
    top = (await w1.list_info(".", component_name="w1"))[-1]
    assert (top.path, top.size, top.version) == ("top.txt", 2, 2)
    # Looked up a few entries at a time (a large folder's 1,000), the same answers.
    asked = [("ckpt", False, None), (".", True, None), (".", True, "w2")]
    whole = [await w1.list_info(p, recursive=r, component_name=c) for p, r, c in asked]
    monkeypatch.setattr(drive_module, "_LOOKUP_CHUNK", 2)
    assert [await w1.list_info(p, recursive=r, component_name=c) for p, r, c in asked] == whole


async def test_list_info_leaves_out_what_goes_while_it_looks(
    make_drive: MakeDrive, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = make_drive(drive_id)
    for path in ("d/gone.txt", "d/kept.txt", "d/emptied/only.txt", "d/sub/y.txt"):
        await drive.write_bytes(path, b"x")
    looked = _index.Index.describe_many

    async def delete_first(self: _index.Index, *args: Any, **kwargs: Any) -> Any:
        # Between list_info's two round trips: a file and a folder's last file go.
        async with Drive(drive_id) as other:  # on the loop list_info runs on
            await other.delete("d/gone.txt")
            await other.delete("d/emptied/only.txt")
        return await looked(self, *args, **kwargs)

    monkeypatch.setattr(_index.Index, "describe_many", delete_first)
    entries = await drive.list_info("d")
    assert [e.path for e in entries] == ["d/kept.txt", "d/sub"]
    assert isinstance(entries[1], FolderInfo)


async def test_list_prefix_is_not_a_folder(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    for path in ("a/x", "a-b/y", "a.c", "ab/z"):
        await drive.write_bytes(path, b"x")
    assert await drive.list("a", recursive=True) == ["a/x"]
    assert await drive.list("a") == ["a/x"]


async def test_put_folder_and_get_folder(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    drive = make_drive(drive_id)
    write("data/one.txt", b"1")
    write("data/deep/two.txt", b"2")
    await drive.put("data")
    assert await drive.list("data", recursive=True) == ["data/deep/two.txt", "data/one.txt"]
    os.chdir(workdir.parent)
    await drive.get("data")
    assert Path("data/one.txt").read_bytes() == b"1"
    assert Path("data/deep/two.txt").read_bytes() == b"2"


async def test_components_and_duplicates(make_drive: MakeDrive, drive_id: str) -> None:
    w1 = make_drive(drive_id, component_name="w1")
    w2 = make_drive(drive_id, component_name="w2")
    write("a.txt", b"from w1")
    await w1.put("a.txt")
    with pytest.raises(DriveFileExistsError, match="'w1'") as refused:
        await w2.write_bytes("a.txt", b"from w2")
    assert "allow_duplicates" in str(refused.value)
    assert await w1.read_bytes("a.txt") == b"from w1"

    d1 = make_drive(drive_id, component_name="w1", allow_duplicates=True)
    d2 = make_drive(drive_id, component_name="w2", allow_duplicates=True)
    await d2.write_bytes("a.txt", b"from w2")
    assert await d1.list(".") == ["a.txt"]  # de-duplicated
    assert await d1.list(".", component_name="w2") == ["a.txt"]
    with pytest.raises(AmbiguousPathError, match="'w1', 'w2'") as ambiguous:
        await d1.get("a.txt", overwrite=True)
    assert ambiguous.value.owners == ["w1", "w2"]
    assert isinstance(ambiguous.value, LookupError)
    with pytest.raises(AmbiguousPathError):
        await d1.read_bytes("a.txt")
    with pytest.raises(AmbiguousPathError):
        await d1.info("a.txt")
    assert await d1.read_bytes("a.txt", component_name="w2") == b"from w2"
    assert (await d1.info("a.txt", component_name="w1")).component_name == "w1"
    await d1.get("a.txt", component_name="w2", overwrite=True)
    assert Path("a.txt").read_bytes() == b"from w2"
    assert await d1.exists("a.txt", component_name="w2")
    assert not await d1.exists("a.txt", component_name="w3")

    # Each component deletes only its own copy.
    await d1.delete("a.txt")
    assert await d1.list(".") == ["a.txt"]
    assert await d1.list(".", component_name="w1") == []
    with pytest.raises(DriveFileNotFoundError, match="'w2'"):
        await d1.delete("a.txt")
    assert await d1.read_bytes("a.txt") == b"from w2"
    # A folder of others' files: the message names them, and deleting as one of them.
    await d2.write_bytes("ckpt/1.pt", b"x")
    with pytest.raises(DriveFileNotFoundError) as none_of_ours:
        await d1.delete("ckpt", recursive=True)
    assert str(none_of_ours.value) == (
        f"Drive {d1.name!r}: component 'w1' has no file in folder 'ckpt' (its files are owned "
        "by 'w2'; a component deletes only its own copies: use a Drive created with that "
        "component_name)."
    )
    assert await d1.list("ckpt") == ["ckpt/1.pt"]
    with pytest.raises(DriveFileNotFoundError, match=r"has no file in the drive \(its files are"):
        await d1.delete(".", recursive=True)


async def test_recursive_delete_climbing_to_the_top_is_refused(
    make_drive: MakeDrive, drive_id: str
) -> None:
    """As ``rm -r sub/..`` refuses: only '.' deletes a component's every file."""
    drive = make_drive(drive_id)
    await drive.write_bytes("sub/a.txt", b"a")
    await drive.write_bytes("b.txt", b"b")
    for path in ("sub/..", "sub/../", "./sub/x/../..", Path("sub/..")):
        with pytest.raises(InvalidPathError) as climbing:
            await drive.delete(path, recursive=True)
        assert str(climbing.value) == (
            f"Drive {drive.name!r}: {os.fspath(path)!r} climbs back to the whole drive "
            "through '..'; to delete every file of this component, pass '.'."
        )
    assert await drive.list(".", recursive=True) == ["b.txt", "sub/a.txt"]
    await drive.delete("sub/x/..", recursive=True)  # a folder inside: as before
    await drive.delete("./", recursive=True)
    assert await drive.list(".", recursive=True) == []


async def test_get_missing_and_component_missing(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id, component_name="w1")
    with pytest.raises(DriveFileNotFoundError, match=drive_id[6:]):
        await drive.get("nope.txt")
    await drive.write_bytes("a.txt", b"x")
    with pytest.raises(FileNotFoundError, match="'w1'") as not_w9s:
        await drive.get("a.txt", component_name="w9")
    assert str(not_w9s.value).endswith(
        "component 'w9' has no file 'a.txt' (owned by 'w1': pass component_name='w1')."
    )


async def test_a_local_path_with_a_nul_is_refused_before_anything_is_written(
    make_drive: MakeDrive, drive_id: str
) -> None:
    """A get to "a\\0b" wrote the file at "a" (C takes a name up to its NUL), or raised a
    bare ValueError with overwrite=True; a put from it, given to=, a bare ValueError."""
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"x")
    await drive.write_bytes("f/b.txt", b"y")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: drive.get("a.txt", to="a\0b"),
        lambda: drive.get("a.txt", to="a\0b", overwrite=True),
        lambda: drive.get("a.txt", to="a\0b/"),
        lambda: drive.get("f", to="a\0b"),
        lambda: drive.put("a\0b", to="c.txt"),
    ]
    for call in calls:
        nul = r"the local path 'a\\x00b/?' \((to|path)=\) holds a NUL"
        with pytest.raises(InvalidPathError, match=nul):
            await call()
    assert os.listdir(".") == []
    assert await drive.list(".", recursive=True) == ["a.txt", "f/b.txt"]

    class BytesPath:  # (a PathLike of bytes: a bare TypeError)
        def __fspath__(self) -> bytes:
            return b"a.txt"

    for call in (lambda: drive.get("a.txt", to=BytesPath()),
                 lambda: drive.put(BytesPath(), to="c.txt")):  # fmt: skip
        with pytest.raises(asyncdrive.DriveTypeError, match="is bytes: pass a str"):
            await call()


async def test_get_local_conflict(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"drive content")
    write("a.txt", b"local content")
    with pytest.raises(DriveFileExistsError, match="overwrite=True"):
        await drive.get("a.txt")
    assert Path("a.txt").read_bytes() == b"local content"
    await drive.get("a.txt", overwrite=True)
    assert Path("a.txt").read_bytes() == b"drive content"
    assert [p.name for p in Path().iterdir()] == ["a.txt"]  # no temporary left behind
    # A local folder in the way (even with overwrite), or a local file above the target.
    Path("folder").mkdir()
    for overwrite in (False, True):
        with pytest.raises(DriveIsADirectoryError, match=r"to='folder/a\.txt'"):
            await drive.get("a.txt", to="folder", overwrite=overwrite)
        # The current folder and its parent: as any folder (a rename onto them is "busy").
        for to, named in [(".", "a.txt"), ("folder/..", "folder/../a.txt"), ("..", "../a.txt")]:
            with pytest.raises(DriveIsADirectoryError, match=f"to='{re.escape(named)}'"):
                await drive.get("a.txt", to=to, overwrite=overwrite)
    await drive.write_bytes("ckpt/1.pt", b"one")
    for to, overwrite in [("a.txt", False), ("a.txt", True), ("a.txt/x", False)]:
        with pytest.raises(DriveNotADirectoryError, match=r"is a local file \('a.txt'\)") as above:
            await drive.get("ckpt", to=to, overwrite=overwrite)  # the file, not a name below
        assert "disk" not in str(above.value)
    assert sorted(p.name for p in Path().iterdir()) == ["a.txt", "folder"]
    assert not any(Path("folder").iterdir()) and Path("a.txt").read_bytes() == b"drive content"
    # A pipe (or a device: to='/dev/null' as root) is never replaced, even with overwrite.
    os.mkfifo("pipe")
    await drive.write_bytes("empty", b"")  # as empty as the pipe: not read for content
    for name, overwrite in [("a.txt", False), ("a.txt", True), ("empty", False)]:
        with pytest.raises(DriveFileExistsError, match=r"'pipe' .* is not a regular file") as no:
            await drive.get(name, to="pipe", overwrite=overwrite)
        assert "never replaces, even with overwrite=True" in str(no.value)
    assert stat.S_ISFIFO(os.lstat("pipe").st_mode)
    with pytest.raises(DriveFileExistsError) as absolute:  # named whole: not "in <cwd>"
        await drive.get("a.txt", to=Path("pipe").absolute())
    assert f"the local path {str(Path('pipe').absolute())!r} is not a regular" in str(
        absolute.value
    )
    # A link is never followed: to a folder, named as a folder is (it said "other content",
    # and overwrite=True, its advice, replaced the link); a broken one, said so.
    os.symlink("folder", "to-folder")
    os.symlink("missing", "broken")
    for overwrite in (False, True):  # (overwrite=True replaced the link with the file)
        with pytest.raises(DriveIsADirectoryError, match=r"a link to a folder.*'to-folder/a\.txt'"):
            await drive.get("a.txt", to="to-folder", overwrite=overwrite)
    with pytest.raises(DriveFileExistsError, match=r"'broken' .* is a symbolic link"):
        await drive.get("a.txt", to="broken")
    assert os.path.islink("to-folder") and os.path.islink("broken")


@pytest.mark.parametrize("disk", ["local", "network"])
async def test_concurrent_gets_of_small_files_share_calls_and_keep_their_own_outcomes(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch, disk: str
) -> None:
    """On a local disk the copies of concurrent gets share worker-thread calls; on a
    network filesystem (where copies mostly wait) each has its own, side by side."""
    if disk == "network":
        monkeypatch.setattr(storage, "filesystem_type", lambda path: "nfs4")
    calls: list[int] = []
    copy_each = _drive._copy_each

    def counted(store: DiskStore, quick: Any, copies: list[Any]) -> list[Any]:
        calls.append(len(copies))
        return copy_each(store, quick, copies)

    monkeypatch.setattr(_drive, "_copy_each", counted)
    monkeypatch.setattr(_drive, "_QUICK_COPY_MAX", 0)  # none in the loop's thread (see below)
    async with Drive(drive_id) as drive:
        for i in range(40):
            await drive.write_bytes(f"f/{i}.txt", f"file {i}".encode())
        write("out/5.txt", b"in the way")
        (lost,) = Path(env["ASYNCDRIVE_ROOT"]).rglob("7.txt")  # behind the drive's back
        lost.unlink()
        await drive.get("f/0.txt", to="first/0.txt")  # a first look at the disk's kind
        calls.clear()
        outcomes = await asyncio.gather(
            *(drive.get(f"f/{i}.txt", to=f"out/{i}.txt") for i in range(40)),
            return_exceptions=True,
        )
    assert isinstance(outcomes[5], DriveFileExistsError) and "out/5.txt" in str(outcomes[5])
    assert isinstance(outcomes[7], DriveFileNotFoundError) and "f/7.txt" in str(outcomes[7])
    for i, outcome in enumerate(outcomes):
        if i not in (5, 7):
            assert outcome is None and Path(f"out/{i}.txt").read_bytes() == f"file {i}".encode()
    assert Path("out/5.txt").read_bytes() == b"in the way" and not Path("out/7.txt").exists()
    if disk == "local":  # one call for the first, then the others together, in calls of many
        assert sum(calls) == 40 and calls[0] == 1 and len(calls) < 10, calls
    else:
        assert calls == []


async def test_a_folder_got_again_is_looked_at_before_it_is_copied(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder got again, its files already in place: once a copy finds the local file
    there, the next ones of its call look before they copy (no new file made and
    dropped each); a file changed locally is still in the way, and a missing one copied."""
    made: list[Path] = []
    new_local_file = storage._new_local_file

    def counted(folder: Path) -> Any:
        made.append(folder)
        return new_local_file(folder)

    calls = 0
    copy_each = _drive._copy_each

    def counted_calls(*args: Any) -> Any:  # (bound as the drive connects: patched before)
        nonlocal calls
        calls += 1
        return copy_each(*args)

    monkeypatch.setattr(_drive, "_copy_each", counted_calls)
    async with Drive(drive_id) as drive:
        for i in range(20):
            write(f"f/{i}.txt", f"file {i}".encode())
        await drive.put("f")
        Path("f/9.txt").unlink()
        monkeypatch.setattr(storage, "_new_local_file", counted)
        await drive.get("f")
        assert len(made) == 2, made  # the first file's copy (found in place), the missing one's
        assert Path("f/9.txt").read_bytes() == b"file 9"
        # Gets of one file each, at once: their copies share calls, which look alike.
        monkeypatch.setattr(_drive, "_QUICK_COPY_MAX", 0)  # (none in the loop's thread)
        made.clear()
        calls = 0
        await asyncio.gather(*(drive.get(f"f/{i}.txt") for i in range(20)))
        assert calls < 20  # (shared: the first get's call is alone, the next ones wait)
        assert len(made) <= calls, made  # the first copy of each call, at most
        write("f/3.txt", b"changed here")
        with pytest.raises(DriveFileExistsError, match=r"f/3\.txt"):
            await drive.get("f")
    assert Path("f/3.txt").read_bytes() == b"changed here"
    assert sorted(p.name for p in Path("f").iterdir()) == sorted(f"{i}.txt" for i in range(20))


async def test_small_gets_and_reads_run_in_the_event_loops_thread_where_safe(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A get of one small file copies it with no hop to a worker thread (which costs more
    than the copy) once a worker thread has found its local folder on this machine's disks;
    a larger file, a folder not looked at yet, or one on a network filesystem, in a worker
    thread; read_bytes of a small file as well; a slow call sends the next ones to the
    threads. Outcomes are the same."""
    remote = workdir / "remote"
    filesystem_type = storage.filesystem_type
    monkeypatch.setattr(  # "remote" is on a network filesystem
        storage,
        "filesystem_type",
        lambda path, *a: "nfs4" if path.is_relative_to(remote) else filesystem_type(path, *a),
    )
    copied_in: list[tuple[str, str]] = []
    copy_out = DiskStore.copy_out

    def recording(
        self: DiskStore, component: str, path: str, dest: Path, *args: Any, **kwargs: Any
    ) -> bool:
        where = "loop" if threading.current_thread() is loop_thread else "worker"
        copied_in.append((os.path.relpath(dest, workdir), where))
        return copy_out(self, component, path, dest, *args, **kwargs)

    read_in: list[tuple[str, str]] = []
    read = DiskStore.read

    def recording_reads(self: DiskStore, component: str, path: str, *args: Any) -> bytes:
        read_in.append((path, "loop" if threading.current_thread() is loop_thread else "worker"))
        return read(self, component, path, *args)

    monkeypatch.setattr(DiskStore, "copy_out", recording)
    monkeypatch.setattr(DiskStore, "read", recording_reads)
    loop_thread = threading.current_thread()
    big = os.urandom(_drive._QUICK_COPY_MAX + 1)
    async with Drive(drive_id) as drive:
        await drive.write_bytes("a.txt", HELLO)
        await drive.write_bytes("big.bin", big)
        conn = drive._conn
        assert conn is not None
        conn.quick_calls.slow = 60.0  # none counts as slow here (but at the end)
        for dest in ["out/1", "out/2", "out/3", "out/sub/1", "out/sub/2", "remote/1", "remote/2"]:
            await drive.get("a.txt", to=dest)
            assert Path(dest).read_bytes() == HELLO
        await drive.get("big.bin", to="out/big")
        assert Path("out/big").read_bytes() == big
        assert copied_in == [
            ("out/1", "worker"),  # a folder not looked at yet
            ("out/2", "loop"),
            ("out/3", "loop"),
            ("out/sub/1", "worker"),
            ("out/sub/2", "loop"),
            ("remote/1", "worker"),  # never in the loop's thread
            ("remote/2", "worker"),
            ("out/big", "worker"),  # larger than a quick copy
        ]
        # Refusals are the same in the loop's thread: nothing changed, the same errors.
        write("out/4", b"other content")
        with pytest.raises(DriveFileExistsError, match=r"cannot get 'a\.txt'.*overwrite=True"):
            await drive.get("a.txt", to="out/4")
        assert Path("out/4").read_bytes() == b"other content"
        await drive.get("a.txt", to="out/4", overwrite=True)
        assert Path("out/4").read_bytes() == HELLO
        (stored,) = Path(env["ASYNCDRIVE_ROOT"]).rglob("a.txt")
        stored.unlink()  # behind the drive's back
        with pytest.raises(DriveFileNotFoundError, match=r"'a\.txt'"):
            await drive.get("a.txt", to="out/5")
        assert copied_in[-3:] == [("out/4", "loop")] * 2 + [("out/5", "loop")]
        assert sorted(os.listdir("out")) == ["1", "2", "3", "4", "big", "sub"]  # no temp file

        # read_bytes of a small file too, the root being on this machine's disks.
        await drive.write_bytes("b.txt", b"b")
        assert await drive.read_bytes("b.txt") == b"b"
        assert await drive.read_bytes("big.bin") == big
        with pytest.raises(DriveFileNotFoundError, match=r"'a\.txt'"):
            await drive.read_bytes("a.txt")  # its bytes are gone (above)
        assert read_in == [("b.txt", "loop"), ("big.bin", "worker"), ("a.txt", "loop")]

        # A call slower than `slow` that waited (as if each did: a copy from the page cache
        # need not) sends the next ones to the worker threads for a while.
        conn.quick_calls.slow = 0.0
        monkeypatch.setattr(_threads, "_thread_waits", itertools.count().__next__)
        await drive.get("b.txt", to="out/6")
        await drive.get("b.txt", to="out/7")
        assert await drive.read_bytes("b.txt") == b"b"
        assert copied_in[-2:] == [("out/6", "loop"), ("out/7", "worker")]
        assert read_in[-1] == ("b.txt", "worker")
        assert repr(conn.quick_calls) == "<QuickCalls 3 folders (paused)>"

    # A drive that only reads learns where the root is at its first read (in a worker).
    read_in.clear()
    async with Drive(drive_id) as drive:
        for _ in range(2):
            assert await drive.read_bytes("b.txt") == b"b"
    assert read_in == [("b.txt", "worker"), ("b.txt", "loop")]


@pytest.mark.parametrize("way", ["in place", "uploads"])
async def test_concurrent_new_files_share_calls_and_keep_their_own_outcomes(
    env: dict[str, str],
    workdir: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    """New small files put by concurrent tasks are installed together, a worker-thread call
    at a time: written in place with no folder fsynced, or, where the disk needs it (the
    way of uploads), each folder fsynced once per call; each put keeps its own outcome,
    and those that find a file at the path, or no small local file, go their own way."""
    kind = storage.filesystem_type(workdir)
    durable = frozenset({kind}) if way == "in place" and kind is not None else frozenset()
    monkeypatch.setattr(storage, "_NEW_NAMES_DURABLE", durable)
    calls: list[list[str]] = []
    install_each = _drive._install_new_each

    def counted(store: DiskStore, files: list[Any]) -> list[Any]:
        calls.append([path for _, path, _, _ in files])
        return install_each(store, files)

    synced: list[str] = []
    sync_folder_of = DiskStore.sync_folder_of

    def count_syncs(self: DiskStore, component: str, path: str) -> None:
        synced.append(path.rpartition("/")[0])
        sync_folder_of(self, component, path)

    monkeypatch.setattr(_drive, "_install_new_each", counted)
    monkeypatch.setattr(DiskStore, "sync_folder_of", count_syncs)
    for i in range(30):
        write(f"local/{i}.txt", f"file {i}".encode())
    write("local/folder/inner.txt", b"a folder")
    async with Drive(drive_id) as drive:
        await drive.write_bytes("first.txt", b"looks at the disk's kind")
        await drive.write_bytes("b/3.txt", b"there before")  # by this drive: the locked way
        other = Drive(drive_id, component_name="other")
        await other.write_bytes("a/4.txt", b"another's")  # owned by another: refused
        await other.aclose()
        calls.clear()
        synced.clear()
        targets = [f"{'ab'[i % 2]}/{i}.txt" for i in range(30)]  # even in a/, odd in b/
        outcomes = await asyncio.gather(
            *(drive.put(f"local/{i}.txt", to=target) for i, target in enumerate(targets)),
            drive.put("local/missing.txt", to="a/missing.txt"),
            drive.put("local/folder", to="a/folder"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[4], DriveFileExistsError) and "'other'" in str(outcomes[4])
        assert outcomes[:4] + outcomes[5:30] == [None] * 29, outcomes
        assert isinstance(outcomes[30], DriveFileNotFoundError)
        assert outcomes[31] is None  # a folder: put the general way
        for i, target in enumerate(targets):
            if i != 4:
                assert await drive.read_bytes(target) == f"file {i}".encode()
        assert await drive.read_bytes("a/4.txt") == b"another's"
        assert await drive.read_bytes("a/folder/inner.txt") == b"a folder"
        assert (await drive.info("b/3.txt")).version == 2
        assert not await drive.exists("a/missing.txt")
        assert drive._conn is not None
        if drive._conn.index.wire is None:  # a Cluster: every file goes the locked way
            assert calls == []
            return
    # The first alone, then the others together (b/3.txt, put by this drive before, went
    # the locked way at once); each folder fsynced once per call that installed in it.
    put_together = [path for call in calls for path in call]
    assert "b/3.txt" not in put_together and len(put_together) >= 28, calls
    assert calls[0] and len(calls) < 10, calls
    if durable:  # (the folder put, a batch of its own, still fsyncs its folder)
        assert set(synced) <= {"a/folder"}, synced
    else:
        assert 0 < len(synced) < 28 and set(synced) <= {"a", "b", "a/folder"}, synced


async def test_new_files_put_together_are_made_durable_by_a_syncfs(
    env: dict[str, str], workdir: Path, drive_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent puts of new files, and a folder put: a syncfs for each call's files, fewer
    fsyncs than files (the first put alone, and what stages an upload, fsync their own)."""
    for i in range(40):
        write(f"local/{i}.txt", f"file {i}".encode())
    async with Drive(drive_id) as drive:
        await drive.write_bytes("first.txt", b"looks at the disk's kind")
        assert drive._conn is not None
        calls = SyncCalls(monkeypatch)
        if drive._conn.index.wire is not None:  # (a Cluster: each new file the locked way)
            await asyncio.gather(*(drive.put(f"local/{i}.txt", to=f"t/{i}.txt") for i in range(40)))
            assert calls.syncfs >= 1 and len(calls.fsynced) < 40, vars(calls)
        await drive.write_bytes("folder/7.txt", b"there before")  # replaced in the batch
        calls.syncfs, calls.fsynced = 0, []
        await drive.put("local", to="folder")
        assert calls.syncfs >= 1 and len(calls.fsynced) < 40, vars(calls)
        assert not any(path.endswith("/folder") for path in calls.fsynced)  # nor its folder
        assert (await drive.info("folder/7.txt")).version == 2
        for i in range(40):
            assert await drive.read_bytes(f"folder/{i}.txt") == f"file {i}".encode()
            if drive._conn.index.wire is not None:
                assert await drive.read_bytes(f"t/{i}.txt") == f"file {i}".encode()


def test_new_files_installed_together_are_taken_back_if_their_folder_fsync_fails(
    workdir: Path, root: Path, monkeypatch: pytest.MonkeyPatch, fsync_each: None
) -> None:
    store = DiskStore(root, "d")
    store.local_disk = True  # where the disk needs the folder's fsync (NFS, ext2, ...)
    sync_folder_of = DiskStore.sync_folder_of

    def failing_in_a(self: DiskStore, component: str, path: str) -> None:
        if path.startswith("a/"):
            raise OSError(errno.EIO, "I/O error")
        sync_folder_of(self, component, path)

    monkeypatch.setattr(DiskStore, "sync_folder_of", failing_in_a)
    files = new_local_files(store, ["a/0.txt", "b/1.txt", "a/2.txt", "b/3.txt"])
    outcomes = _drive._install_new_each(store, files)
    for number in (0, 2):
        assert isinstance(outcomes[number], OSError), outcomes
        assert not (store.base / "c" / files[number][1]).exists()  # taken back
    for number in (1, 3):
        info, _identity, _ = outcomes[number]  # type: ignore[misc]
        assert info.path == files[number][1] and info.version == 1
        assert (store.base / "c" / files[number][1]).read_bytes() == f"file {number}".encode()
    assert store.leftovers(grace=0)[0] == []  # no upload left behind


def new_local_files(store: DiskStore, targets: list[str]) -> list[_drive._NewFile]:
    """Local files ``local/<i>.txt`` (``file <i>``), to install as new files at ``targets``."""
    files: list[_drive._NewFile] = []
    for i, target in enumerate(targets):
        write(f"local/{i}.txt", f"file {i}".encode())
        stage = functools.partial(_drive._stage_small_file, store, Path(f"local/{i}.txt"))
        files.append(("c", target, stage, 1))
    return files


@pytest.fixture
def in_place(root: Path) -> DiskStore:
    """A store that writes new small files in place (see `DiskStore.open_new`)."""
    if storage._openat2 is None:
        pytest.skip("this kernel or sandbox has no openat2")
    store = DiskStore(root, "d")
    store.local_disk, store.new_names_durable = True, True
    staged = store.stage_bytes(b"first", False)  # the first put finds out about attributes
    assert not isinstance(_drive._install_new(store, "c", "first", lambda *_: staged, 1), Staged)
    if not store.meta_in_xattr:
        pytest.skip("this filesystem keeps no user attributes")
    return store


@pytest.fixture
def fsync_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """As where much data waits to be written: an fsync of each new file, not one syncfs."""
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_MAX_UNWRITTEN", -1)


class SyncCalls:
    """The fsyncs (their files' paths) and syncfs calls made meanwhile; ``fail`` syncfs.

    The syncfs of new files applies as where little data waits (see `quiet_syncfs`).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        syncfs = quiet_syncfs(monkeypatch)
        self.fsynced: list[str] = []
        self.syncfs = 0
        fsync = os.fsync

        def counted_fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            fsync(fd)

        def counted_syncfs(fd: int) -> int:
            self.syncfs += 1
            return -1 if fail else syncfs(fd)

        monkeypatch.setattr(os, "fsync", counted_fsync)
        monkeypatch.setattr(storage, "_syncfs", counted_syncfs)


def test_a_new_file_in_place_takes_one_fsync_and_leaves_no_upload(
    workdir: Path, in_place: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    fsync = os.fsync

    def counted(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    write("local.txt", b"new bytes")
    stage = functools.partial(_drive._stage_small_file, in_place, Path("local.txt"))
    created = _drive._install_new(in_place, "c", "a/f", stage, 1)
    assert not isinstance(created, Staged)
    info, identity, folder_to_sync = created
    target = in_place.base / "c" / "a" / "f"
    assert storage.file_identity(target) == identity and not folder_to_sync
    assert target.read_bytes() == b"new bytes" and in_place.read_meta("c", "a/f") == {
        "size": 9, "mtime": info.mtime, "checksum": info.checksum, "version": 1}  # fmt: skip
    assert len(synced) == 1  # the file's: its name with it, on this disk
    assert in_place.leftovers(grace=0) == ([], [])


@pytest.mark.parametrize("failing", ["no small local file", "while writing", "at its fsync"])
def test_a_new_file_in_place_that_fails_is_removed_with_its_new_folders(
    workdir: Path, in_place: DiskStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    write("local.txt", b"new bytes")
    opened: list[tuple[int, int]] = []
    open_new = DiskStore.open_new

    def spied(self: DiskStore, component: str, path: str) -> Any:
        new = open_new(self, component, path)
        assert new is not None
        opened.append(new.identity)
        return new

    def half_written(fd: int, data: bytes) -> None:
        os.write(fd, data[:4])
        raise OSError(errno.EIO, "I/O error")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(DiskStore, "open_new", spied)
    stage: Any = functools.partial(_drive._stage_small_file, in_place, Path("local.txt"))
    if failing == "no small local file":  # found before any file is made at the path
        stage = functools.partial(_drive._stage_small_file, in_place, Path("missing.txt"))
    elif failing == "while writing":
        monkeypatch.setattr(storage, "_write_all", half_written)
        stage = functools.partial(in_place.stage_bytes, b"new bytes")
    else:
        monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises((OSError, _drive._NotASmallFile)):
        _drive._install_new(in_place, "c", "a/b/f", stage, 1)
    assert len(opened) == (0 if failing == "no small local file" else 1)
    assert not any(opens(identity) for identity in opened)
    assert not (in_place.base / "c" / "a").exists()  # the folders it made, pruned
    assert [f.path for f in in_place.scan(verify=False)] == ["first"]


def test_new_files_written_in_place_together_are_fsynced_once_all_are_written(
    workdir: Path,
    in_place: DiskStore,
    monkeypatch: pytest.MonkeyPatch,
    fsync_each: None,
) -> None:
    """In one call, files written in place are all written (the disk starts on each), then
    fsynced one after the other; a file whose fsync fails is taken back, the others stand."""
    events: list[str] = []
    open_new, sync_new = DiskStore.open_new, DiskStore.sync_new

    def opened(self: DiskStore, component: str, path: str) -> Any:
        events.append(f"open {path}")
        return open_new(self, component, path)

    def synced(self: DiskStore, staged: Staged) -> None:
        path = staged.tmp.relative_to(self.base / "c").as_posix()
        events.append(f"sync {path}")
        if path == "a/2.txt":
            os.close(staged.fd)  # type: ignore[arg-type]
            object.__setattr__(staged, "fd", None)
            raise OSError(errno.EIO, "I/O error")
        sync_new(self, staged)

    monkeypatch.setattr(DiskStore, "open_new", opened)
    monkeypatch.setattr(DiskStore, "sync_new", synced)
    targets = ["a/0.txt", "b/1.txt", "a/2.txt", "b/3.txt"]
    files = new_local_files(in_place, targets)
    outcomes = _drive._install_new_each(in_place, files)
    assert events == [f"open {t}" for t in targets] + [f"sync {t}" for t in targets]
    assert isinstance(outcomes[2], OSError) and not (in_place.base / "c" / "a" / "2.txt").exists()
    for number in (0, 1, 3):
        info, identity, unsynced = outcomes[number]  # type: ignore[misc]
        assert unsynced is None and not opens(identity)
        assert (in_place.base / "c" / targets[number]).read_bytes() == f"file {number}".encode()
        assert in_place.read_meta("c", targets[number]) == {
            "size": 6, "mtime": info.mtime, "checksum": info.checksum, "version": 1}  # fmt: skip


@pytest.mark.parametrize("way", ["in place", "uploads"])
@pytest.mark.parametrize("syncfs_fails", [False, True])
def test_new_files_installed_together_are_made_durable_by_one_syncfs(
    workdir: Path,
    in_place: DiskStore,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
    syncfs_fails: bool,
) -> None:
    """One syncfs for the files of one call, no fsync of any file or folder; where the
    syncfs fails (the filesystem's error, maybe another file's), an fsync of each, which
    tells each file's own."""
    in_place.new_names_durable = way == "in place"
    calls = SyncCalls(monkeypatch, fail=syncfs_fails)
    targets = ["a/0.txt", "b/1.txt", "a/2.txt", "b/3.txt"]
    files = new_local_files(in_place, targets)
    outcomes = _drive._install_new_each(in_place, files)
    assert calls.syncfs == 1
    placed = sorted(str(in_place.base / "c" / target) for target in targets)
    folders = [str(in_place.base / "c" / "a"), str(in_place.base / "c" / "b")]
    # The way of uploads fsyncs each upload as it attaches the metadata, before linking it
    # in (in .tmp, nameless): only the folders' fsyncs are left for the end.
    uploads = [path for path in calls.fsynced if path.startswith(f"{in_place.tmp_dir}/")]
    assert len(uploads) == (0 if way == "in place" else 4)
    at_the_end = sorted(path for path in calls.fsynced if path not in uploads)
    if not syncfs_fails:
        assert at_the_end == []
    else:
        assert at_the_end == (placed if way == "in place" else folders)
    for number, target in enumerate(targets):
        info, identity, unsynced = outcomes[number]  # type: ignore[misc]
        assert unsynced is None and not opens(identity)  # closed, nothing left to do
        assert (in_place.base / "c" / target).read_bytes() == f"file {number}".encode()
        assert in_place.read_meta("c", target) == {
            "size": 6, "mtime": info.mtime, "checksum": info.checksum, "version": 1}  # fmt: skip
    assert in_place.leftovers(grace=0) == ([], [])


def test_new_files_are_fsynced_each_where_much_data_waits_to_be_written(
    workdir: Path, in_place: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = SyncCalls(monkeypatch)
    monkeypatch.setattr(storage, "_SYNC_TOGETHER_MAX_UNWRITTEN", -1)  # as `fsync_each`
    files = new_local_files(in_place, [f"{i}.txt" for i in range(3)])
    _drive._install_new_each(in_place, files)
    assert calls.syncfs == 0
    assert sorted(calls.fsynced) == [str(in_place.base / "c" / f"{i}.txt") for i in range(3)]


@pytest.mark.parametrize("failing", [False, True])
async def test_a_folder_put_writes_its_new_files_in_place_and_fsyncs_them_after(
    env: dict[str, str],
    workdir: Path,
    root: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    failing: bool,
    fsync_each: None,
) -> None:
    """A folder put's new files are written in place, then fsynced once all of its batch
    are written (where a syncfs does not apply); a file already there is replaced the
    locked way, its folder fsynced. A
    file whose fsync fails is not committed and leaves nothing: the put raises its error,
    the files done stay done."""
    if storage.filesystem_type(root) not in storage._NEW_NAMES_DURABLE:
        pytest.skip("this disk needs the folder's fsync: new files go through uploads")
    synced: list[str] = []
    folders: list[str] = []
    sync_new, sync_folder_of = DiskStore.sync_new, DiskStore.sync_folder_of

    def spied_sync_new(self: DiskStore, staged: Staged) -> None:
        synced.append(staged.tmp.name)
        if failing and staged.tmp.name == "2.txt":
            monkeypatch.setattr(os, "fsync", failing_fsync)  # this file's fsync only
            try:
                sync_new(self, staged)
            finally:
                monkeypatch.setattr(os, "fsync", fsync)
        sync_new(self, staged)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    fsync = os.fsync

    def spied_sync_folder_of(self: DiskStore, component: str, path: str) -> None:
        folders.append(path)
        sync_folder_of(self, component, path)

    for i in range(5):
        write(f"local/{i}.txt", f"file {i}".encode())
    async with Drive(drive_id) as drive:
        await drive.write_bytes("out/3.txt", b"there before")
        await drive.write_bytes("first", b"finds out what the disk keeps")
        monkeypatch.setattr(DiskStore, "sync_new", spied_sync_new)
        monkeypatch.setattr(DiskStore, "sync_folder_of", spied_sync_folder_of)
        if failing:
            with pytest.raises(asyncdrive.DriveStorageError, match="I/O error") as raised:
                await drive.put("local", to="out")
            # The drive, the put, and the file the disk failed on (its place on disk).
            assert drive.name in str(raised.value) and "out/2.txt" in str(raised.value)
        else:
            await drive.put("local", to="out")
        assert sorted(synced) == ["0.txt", "1.txt", "2.txt", "4.txt"]
        assert folders == ["out/3.txt"]  # the replacement's
        done = ["0.txt", "1.txt", "3.txt", "4.txt"] if failing else [f"{i}.txt" for i in range(5)]
        assert await drive.list("out") == [f"out/{name}" for name in done]
        for name in done:
            assert await drive.read_bytes(f"out/{name}") == f"file {name[0]}".encode()
    on_disk = sorted(p.name for p in (root / "drives" / drive_id[6:] / "default" / "out").iterdir())
    assert on_disk == done


async def test_a_get_whose_local_folder_goes_names_it_not_the_drive_file(
    make_drive: MakeDrive, drive_id: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"drive bytes")
    await drive.write_bytes("d/b.txt", b"more")
    copy_all = storage._FdCopier.copy_all
    local = workdir / "out"

    def folder_goes(self: Any, size: int | None = None, on_copied: Any = None) -> Any:
        shutil.rmtree(local, ignore_errors=True)
        return copy_all(self, size)

    monkeypatch.setattr(storage._FdCopier, "copy_all", folder_goes)
    for path, to in (("a.txt", local / "a.txt"), ("d", local)):  # a file, a folder
        local.mkdir()
        with pytest.raises(asyncdrive.DriveStorageError, match="went away") as raised:
            await drive.get(path, to=to)
        assert not isinstance(raised.value, FileNotFoundError)
        assert drive_id[6:] in str(raised.value) and str(local) in str(raised.value)
    monkeypatch.undo()
    await drive.get("a.txt", to=local / "a.txt")  # the drive's file was there all along
    assert (local / "a.txt").read_bytes() == b"drive bytes"


async def test_a_folder_put_whose_folder_fsync_fails_takes_back_the_files_renamed_into_it(
    env: dict[str, str],
    workdir: Path,
    root: Path,
    drive_id: str,
    monkeypatch: pytest.MonkeyPatch,
    fsync_each: None,
) -> None:
    """Files that replaced others in a folder put need their folder's fsync: if it fails,
    the files they replaced come back (version and bytes), and the put raises the error."""
    sync_folder_of = DiskStore.sync_folder_of

    def failing_in_out(self: DiskStore, component: str, path: str) -> None:
        if path.startswith("out/"):
            raise OSError(errno.EIO, "I/O error")
        sync_folder_of(self, component, path)

    for i in range(4):
        write(f"local/{i}.txt", f"file {i}".encode())
    async with Drive(drive_id) as drive:
        for i in (1, 3):
            await drive.write_bytes(f"out/{i}.txt", b"there before")
        monkeypatch.setattr(DiskStore, "sync_folder_of", failing_in_out)
        with pytest.raises(asyncdrive.DriveStorageError, match="I/O error"):
            await drive.put("local", to="out")
        monkeypatch.undo()
        for i in (1, 3):  # taken back: the files they replaced are there again
            assert await drive.read_bytes(f"out/{i}.txt") == b"there before"
            assert (await drive.info(f"out/{i}.txt")).version == 1
        new = [i for i in (0, 2) if await drive.exists(f"out/{i}.txt")]
        if storage.filesystem_type(root) in storage._NEW_NAMES_DURABLE:
            assert new == [0, 2]  # written in place: no folder fsync needed
        for i in new:
            assert await drive.read_bytes(f"out/{i}.txt") == f"file {i}".encode()
    on_disk = sorted(p.name for p in (root / "drives" / drive_id[6:] / "default" / "out").iterdir())
    assert on_disk == sorted(["1.txt", "3.txt", *(f"{i}.txt" for i in new)])  # no backup left


def test_a_new_file_in_place_whose_attribute_is_refused_goes_the_way_of_uploads(
    workdir: Path, in_place: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that refuses the attribute after all (as one mounted over the root might): the
    file written in place goes, and the upload is left staged for the locked way."""

    def refused(self: DiskStore, fd: int, meta: dict[str, object]) -> bool:
        self.meta_in_xattr = False
        return False

    monkeypatch.setattr(DiskStore, "_set_meta_attribute", refused)
    write("local.txt", b"new bytes")
    stage = functools.partial(_drive._stage_small_file, in_place, Path("local.txt"))
    staged = _drive._install_new(in_place, "c", "a/f", stage, 1)
    assert isinstance(staged, Staged) and not staged.in_place
    assert not (in_place.base / "c" / "a").exists()
    in_place.discard(staged)
    assert in_place.open_new("c", "a/f") is None  # metadata files from now on


async def test_get_waits_for_the_file(make_drive: MakeDrive, drive_id: str) -> None:
    reader = make_drive(drive_id)
    writer = make_drive(drive_id, component_name="writer")
    async with anyio.create_task_group() as tg:

        async def wait_and_get() -> None:
            await reader.get("later/x.bin", timeout=30)

        tg.start_soon(wait_and_get)
        # Unrelated events must not end the wait.
        await writer.write_bytes("other.bin", b"noise")
        await writer.write_bytes("later/x.bin", b"arrived")
    assert Path("later/x.bin").read_bytes() == b"arrived"


async def test_get_timeout(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    with pytest.raises(DriveTimeoutError, match=r"never\.txt") as timed_out:
        await drive.get("never.txt", timeout=0.2)
    assert isinstance(timed_out.value, TimeoutError)
    assert not Path("never.txt").exists()


async def test_delete_rules(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    with pytest.raises(DriveFileNotFoundError):
        await drive.delete("nope.txt")
    await drive.write_bytes("f/a", b"1")
    await drive.write_bytes("f/g/b", b"2")
    with pytest.raises(DriveIsADirectoryError, match="recursive=True"):
        await drive.delete("f")
    assert await drive.list("f", recursive=True) == ["f/a", "f/g/b"]
    await drive.delete("f", recursive=True)
    assert await drive.list(".") == []
    assert not await drive.exists("f")


async def test_paths_too_long_for_the_disk_under_the_root_are_refused_up_front(
    env: dict[str, str], tmp_path: Path, workdir: Path, drive_id: str
) -> None:
    """A path within the drive's limit, under a long root, makes disk paths past the
    system's: its replacement committed, then failed to drop its backup ("nothing was
    stored"), and every gc() after failed on that backup."""
    async with Drive(drive_id, root=tmp_path / ("r" * 200)) as drive:
        longest = "/".join(["s" * 99] * 40)  # 3999 bytes: a drive path may have 4000
        with pytest.raises(InvalidPathError, match=r"too long to store under") as refused:
            await drive.write_bytes(longest, b"1")
        found = re.search(r"at most (\d+) bytes there", str(refused.value))
        assert found is not None, str(refused.value)
        fits = longest[: int(found.group(1))].rstrip("/")
        await drive.write_bytes(fits, b"1")
        await drive.write_bytes(fits, b"2")  # replaced: its backups' names fit too
        assert await drive.read_bytes(fits) == b"2"
        report = await drive.gc(grace=0)
        assert report == type(report)()  # nothing left behind
        assert await drive.list(".", recursive=True) == [fits]
        # A folder put's files too, before anything is stored.
        inside = Path(longest[:-2])  # "f/" + this: 3999 bytes, too long on the disk
        (workdir / "src" / inside.parent).mkdir(parents=True)
        (workdir / "src" / inside).write_bytes(b"1")
        with pytest.raises(InvalidPathError, match=r"cannot put the folder .*too long to st"):
            await drive.put(workdir / "src", to="f")
        assert not await drive.exists("f")
    # Under a root of ~3,700 bytes, a path of a few hundred: checked too (only paths of
    # over 512 characters were, whatever the root).
    async with Drive(f"{drive_id}-deep", root=tmp_path.joinpath(*["d" * 240] * 15)) as drive:
        short = "/".join(["p" * 190] * 2)
        with pytest.raises(InvalidPathError, match=r"too long to store under"):
            await drive.write_bytes(short, b"1")
        assert await drive.list(".") == []


async def test_a_local_folder_deeper_than_python_recursion_is_refused_by_name(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    """Its walk (os.walk, recursive) raised RecursionError ~1000 folders down."""
    drive = make_drive(drive_id)
    top = os.open(workdir, os.O_RDONLY)
    fds = [top]
    try:  # 1100 folders, made and later removed one below the other (no deep path names)
        for _ in range(1100):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1]), "wb"):
            pass
        with pytest.raises(InvalidPathError, match="more than 255 folders above its file"):
            await drive.put("d")
        assert await drive.list(".") == []
    finally:
        os.unlink("f.txt", dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            os.rmdir("d", dir_fd=fds[-1])
        os.close(top)


async def test_file_folder_conflicts(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("x", b"file")
    with pytest.raises(DriveNotADirectoryError, match="'x' is a file"):
        await drive.write_bytes("x/y", b"below a file")
    await drive.write_bytes("dir/y", b"1")
    with pytest.raises(DriveFileExistsError, match="folder"):
        await drive.write_bytes("dir", b"where a folder is")
    with pytest.raises(DriveIsADirectoryError):
        await drive.info("dir")
    # Nothing of the refused writes is left.
    assert await drive.list(".", recursive=True) == ["dir/y", "x"]


@pytest.mark.parametrize(
    "bad",
    [
        "/etc/passwd", "..", "../x", "a/../../x", "", "a\x00b", "a\nb", "a\x7fb",
        "a\x85b", "a\u2028b",  # a C1 control character, a line separator
        "s\udc80", "a/" + "\udc80" * 60,  # not UTF-8 (a local name os gave as it was)
        ".asyncdrive-x", "a/b/.asyncdrive-x/c",
        "a/" + "é" * 101,  # 202 bytes in one name, of 101 characters
        "/".join(["abcdefghi"] * 401),  # 4009 bytes
    ],
)  # fmt: skip
async def test_invalid_paths(make_drive: MakeDrive, drive_id: str, bad: str) -> None:
    drive = make_drive(drive_id)
    with pytest.raises(InvalidPathError) as refused:
        await drive.write_bytes(bad, b"x")
    assert isinstance(refused.value, ValueError) and refused.value.reason
    assert drive_id[6:] in str(refused.value)
    if bad not in ("a\x85b", "a\u2028b"):  # else refused for new files only
        for call in (drive.exists, drive.read_bytes, drive.delete, drive.get):
            with pytest.raises(InvalidPathError):
                await call(bad)
    assert await drive.list(".", recursive=True) == []


async def test_refusals_say_the_fix(make_drive: MakeDrive, drive_id: str, workdir: Path) -> None:
    """A local file outside the current folder, put without to=, was told to drop its '/'
    (or stay inside the drive); a bad component_name named neither drive nor path."""
    drive = make_drive(drive_id)
    write("data/m.pt")
    for local in (str(workdir / "data" / "m.pt"), "../work/data/m.pt"):
        with pytest.raises(InvalidPathError, match=r"with to= \(to='m\.pt', say\)") as told:
            await drive.put(local)
        assert "drop the leading" not in str(told.value) and "inside" not in str(told.value)
    with pytest.raises(InvalidPathError, match="choose a shorter name"):
        await drive.write_bytes("é" * 101, b"x")
    with pytest.raises(InvalidConfigError, match=rf"'{drive_id[6:]}': cannot read 'a\.txt'"):
        await drive.info("a.txt", component_name="a/b")
    assert await drive.list(".", recursive=True) == []


async def test_arguments_of_a_wrong_type_are_drive_type_errors(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    """None, an int or bytes as a path, a str as data, a number as a callback: a bare
    TypeError from deep in the call named neither the drive, nor the argument, nor the fix."""
    drive = make_drive(drive_id)
    await drive.write_bytes("f.txt", b"x")
    write("local.txt")
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        *((f"{name}({bad!r})", functools.partial(getattr(drive, name), bad))
          for name in ("exists", "info", "list", "list_info", "read_bytes", "delete", "get",
                       "put")
          for bad in (None, 5, b"f.txt")),
        ("put(to=5)", functools.partial(drive.put, "local.txt", to=5)),
        ("get(to=5)", functools.partial(drive.get, "f.txt", to=5)),
        ("write_bytes(str)", functools.partial(drive.write_bytes, "s.txt", "text")),
        ("write_bytes(int)", functools.partial(drive.write_bytes, "s.txt", 5)),
        ("put(progress=5)", functools.partial(drive.put, "local.txt", progress=5)),
        # A flag given as a str: "false" is true (it replaced the file, the local file).
        ("exist_ok='false'", functools.partial(drive.write_bytes, "f.txt", b"y",
                                                exist_ok="false")),
        ("overwrite='false'", functools.partial(drive.get, "f.txt", to="local.txt",
                                                 overwrite="false")),
        ("recursive=None", functools.partial(drive.delete, "f.txt", recursive=None)),
        ("verify='false'", functools.partial(drive.rebuild_index, verify="false")),
        ("force='false'", functools.partial(drive.remove_group, "g", force="false")),
        # nan was true, an empty list false: a flag is a bool (or an int, numpy's bool).
        ("recursive=nan", functools.partial(drive.delete, "f.txt", recursive=float("nan"))),
        ("exist_ok=[]", functools.partial(drive.write_bytes, "f.txt", b"y", exist_ok=[])),
        # Settings of a wrong type: DriveTypeErrors too (and InvalidConfigErrors, as ever).
        ("timeout='5'", functools.partial(drive.get, "f.txt", timeout="5")),
        ("timeout=True", functools.partial(drive.get, "f.txt", timeout=True)),  # (an int)
        ("if_version='1'", functools.partial(drive.write_bytes, "f.txt", b"y", if_version="1")),
        ("remove_group(5)", functools.partial(drive.remove_group, 5)),
    ]  # fmt: skip
    for what, call in calls:
        with pytest.raises(asyncdrive.DriveTypeError) as refused:
            await call()
        assert isinstance(refused.value, TypeError), what
        assert drive_id[6:] in str(refused.value), (what, refused.value)
    if isinstance(drive, Drive):  # (not wrapped: checked all the same)
        with pytest.raises(asyncdrive.DriveTypeError, match="exist_ok"):
            drive.open("f.txt", "wb", exist_ok="false")  # type: ignore[call-overload]
        with pytest.raises(asyncdrive.DriveTypeError, match="recursive"):
            drive.watch("sub", recursive="false")  # type: ignore[arg-type]
        with pytest.raises(asyncdrive.DriveTypeError) as none:  # (no word of str for None)
            await drive.write_bytes("f.txt", b"x", exist_ok=None)  # type: ignore[arg-type]
        assert str(none.value).endswith("exist_ok=None must be True or False, not NoneType.")
        # A number of seconds of another type (numpy's) is one: taken.
        async with drive.watch("sub", timeout=numpy.float32(0.05)) as quiet:  # type: ignore[arg-type]
            assert [event async for event in quiet] == []
    with pytest.raises(InvalidPathError):  # (bytes were one: they are both now)
        await drive.exists(b"f.txt")
    with pytest.raises(asyncdrive.DriveTypeError, match="encode it"):
        await drive.write_bytes("s.txt", "text")
    for setting in ({"root": 5}, {"root": b"/tmp"}, {"redis_url": 5}, {"allow_duplicates": "no"}):
        with pytest.raises(asyncdrive.DriveTypeError, match=next(iter(setting))):
            Drive(drive_id, **setting)
    with pytest.raises(asyncdrive.InvalidDriveIdError) as no_id:
        Drive(None)  # type: ignore[arg-type]
    assert isinstance(no_id.value, TypeError)
    assert await drive.list(".", recursive=numpy.True_) == ["f.txt"]  # (a numpy bool: taken)
    assert await drive.list(".", recursive=numpy.int64(1)) == ["f.txt"]  # (an int: taken)
    assert await drive.list(".", recursive=True) == ["f.txt"]  # nothing stored meanwhile
    assert (await drive.info("f.txt")).version == 1 and Path("local.txt").read_bytes() == HELLO


@pytest.mark.parametrize(
    "bad",
    [".asyncdrive-meta.x.json", ".asyncdrive-drive", "new\nline.txt", "c\x01.txt",
     "x" * 230, b"lat\xe9.bin"],
)  # fmt: skip
async def test_a_folder_put_refuses_a_name_no_drive_path_may_have(
    make_drive: MakeDrive, drive_id: str, root: Path, workdir: Path, bad: str | bytes
) -> None:
    """Checked before anything is stored, naming the local file; nothing is stored."""
    for i in range(40):
        write(f"src/sub/{i}.txt", b"fine")
    name = os.fsencode("src/sub/") + (bad if isinstance(bad, bytes) else os.fsencode(bad))
    with open(name, "wb"):
        pass
    drive = make_drive(drive_id)
    with pytest.raises(InvalidPathError, match="cannot put the folder 'src': its file") as refused:
        await drive.put("src")
    assert "nothing was stored" in str(refused.value) and refused.value.reason
    assert await drive.list(".", recursive=True) == []
    assert not (root / "drives" / drive.name / "default").exists()


async def test_a_trailing_slash_names_a_folder(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    """As for cp and POSIX: a destination ending in '/' is a folder to go into, and a file
    cannot be named with one."""
    drive = make_drive(drive_id)
    write("a.txt", b"a")
    write("src/x.txt", b"x")
    await drive.put("a.txt", to="dir/")
    await drive.put("src", to="dir/")
    await drive.put("a.txt", to="./")
    await drive.put("src/", to="other")  # a local folder's '/': that folder, as before
    puts: list[Callable[[], Any]] = [
        lambda: drive.put("a.txt/"),
        lambda: drive.put("a.txt/", to="elsewhere"),
    ]
    for put in puts:
        with pytest.raises(DriveNotADirectoryError, match=r"'a\.txt/' ends with '/'"):
            await put()  # a local file's '/', as cp refuses it
    expected = ["a.txt", "dir/a.txt", "dir/src/x.txt", "other/x.txt"]
    assert await drive.list(".", recursive=True) == expected
    file_calls: list[Callable[[], Any]] = [
        lambda: drive.write_bytes("t/", b"x"),
        lambda: drive.read_bytes("dir/a.txt/"),
        lambda: drive.info("dir/a.txt/"),
        lambda: drive.open("dir/a.txt/"),
        lambda: drive.open("new/", "wb"),
    ]
    for call in file_calls:
        with pytest.raises(InvalidPathError, match="ends with '/', which names a folder"):
            await call()
    for call in (drive.get, drive.delete):
        with pytest.raises(DriveNotADirectoryError, match=r"'dir/a\.txt' is a file; drop the"):
            await call("dir/a.txt/")
    assert not await drive.exists("dir/a.txt/")
    assert await drive.exists("dir/") and await drive.exists("dir/a.txt")
    await drive.get("dir/a.txt", to="out/")
    await drive.get("dir/src", to="out/")
    await drive.get("dir/src/", to="out2")
    assert Path("out/a.txt").read_bytes() == b"a" and Path("out/src/x.txt").read_bytes() == b"x"
    assert Path("out2/x.txt").read_bytes() == b"x"
    assert await drive.list(".", recursive=True) == expected
    await drive.delete("dir/", recursive=True)
    assert await drive.list(".", recursive=True) == ["a.txt", "other/x.txt"]


async def test_invalid_seconds_and_component_names(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"x")
    calls: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: drive.get("a.txt", timeout=-1), "timeout=-1"),
        (lambda: drive.get("a.txt", timeout=float("nan")), "timeout=nan"),
        (lambda: drive.gc(grace=-5), "grace=-5"),  # would touch work in progress
        (lambda: drive.info("a.txt", component_name=".x"), "'.x'"),
        (lambda: drive.read_bytes("a.txt", component_name="a b"), "'a b'"),
    ]
    for call, named in calls:
        with pytest.raises(InvalidConfigError, match=re.escape(named)) as refused:
            await call()
        assert isinstance(refused.value, ValueError)
    for kwargs in ({"timeout": -1.0}, {"claim_idle": -1.0}):
        with pytest.raises(InvalidConfigError, match="0 or more"):
            drive.watch(**kwargs)
    assert not Path("a.txt").exists()  # no get went ahead


async def test_long_paths_within_the_limits(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    longest_name = "é" * 100  # 200 bytes
    deep = "/".join(["abcdefghi"] * 256)  # 255 folders above the file, 2559 bytes
    for path in (f"a/{longest_name}", deep, "a.asyncdrive/b"):
        await drive.write_bytes(path, b"x")
        assert await drive.read_bytes(path) == b"x"


async def test_dotted_paths_normalise(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a/../b.txt", b"x")
    assert await drive.list(".") == ["b.txt"]
    assert await drive.read_bytes("./b.txt") == b"x"


async def test_put_missing_local_file(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    with pytest.raises(DriveFileNotFoundError, match="current directory"):
        await drive.put("absent.txt")
    with pytest.raises(DriveFileNotFoundError) as absolute:
        await drive.put("/no/such/file.txt", to="f.txt")
    assert "'/no/such/file.txt'." in str(absolute.value)
    assert "current directory" not in str(absolute.value)  # not relative: no such hint
    # The local file put is the one the system opens: 'missing/../a.txt' is none, and
    # 'link/../a.txt' is the a.txt beside the link's folder (both were ./a.txt).
    Path("a.txt").write_bytes(b"here")
    with pytest.raises(DriveFileNotFoundError):
        await drive.put("missing/../a.txt")
    Path("other/dir").mkdir(parents=True)
    Path("other/a.txt").write_bytes(b"beside the link's folder")
    os.symlink("other/dir", "link")
    await drive.put("link/../a.txt")
    assert await drive.read_bytes("a.txt") == b"beside the link's folder"
    os.mkfifo("fifo")
    os.symlink("nowhere", "broken")
    special = [("fifo", "a FIFO"), ("/dev/null", "a character device"), ("broken", "a broken")]
    for local, kind in special:
        with pytest.raises(InvalidPathError, match=f"is {kind}.*not a regular file or folder"):
            await drive.put(local, to="f.txt")
    Path("empty").mkdir()
    with pytest.raises(DriveFileNotFoundError, match="local folder 'empty' holds no files"):
        await drive.put("empty")
    assert await drive.list(".", recursive=True) == ["a.txt"]  # (the link's one, above)


async def test_a_message_names_a_long_path_by_its_ends(
    make_drive: MakeDrive, drive_id: str
) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"a")
    long = "/".join(["d" * 250] * 20) + "/a.txt"  # too long for the local filesystem
    with pytest.raises(DriveStorageError, match="too long for the filesystem") as refused:
        await drive.get("a.txt", to=long)
    assert len(str(refused.value)) < 800 and "..." in str(refused.value)
    with pytest.raises(InvalidPathError) as invalid:
        await drive.write_bytes("/".join(["abcdefghi"] * 401), b"x")
    assert len(str(invalid.value)) < 400


async def _leftovers(redis_url: str, root: Path, drive_id: str) -> tuple[list[Any], list[Path]]:
    """Return the commit locks held in the drive's index, and what its `.tmp` holds."""
    name = drive_id[6:]
    async with raw_redis(redis_url) as client:
        locks = [k async for k in client.scan_iter(match=f"*{name}*lock:*")]
    tmp = root / "drives" / name / ".tmp"
    return locks, sorted(tmp.iterdir()) if tmp.exists() else []


async def test_put_takes_the_general_way_for_all_but_a_small_file(
    make_drive: MakeDrive,
    drive_id: str,
    redis_url: str,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A put first takes the lock as for one small local file, finding out what is at the
    # local path only in the worker-thread call after it. Whatever else is there must come
    # out as if it had been looked at first, with no lock left behind.
    monkeypatch.setattr(asyncdrive._drive, "_SMALL_WRITE", 64)  # "large" from 65 bytes
    drive = make_drive(drive_id)
    await drive.write_bytes("taken.txt", b"x")
    with pytest.raises(DriveFileNotFoundError, match="no local file"):
        await drive.put("taken.txt", exist_ok=False)  # the missing local file comes first
    write("big.bin", b"b" * 1000)
    await drive.put("big.bin")
    await drive.put("big.bin", if_version=1)
    assert (await drive.info("big.bin")).version == 2
    assert await drive.read_bytes("big.bin") == b"b" * 1000
    write("data/one.txt")
    write("data/sub/two.txt")
    await drive.put("data")
    write("data/one.txt", b"again")
    await drive.put("data")  # over a folder of the drive: the lock check refuses "data"
    assert await drive.read_bytes("data/one.txt") == b"again"
    assert (await drive.info("data/one.txt")).version == 2
    with pytest.raises(asyncdrive.InvalidConfigError, match="local folder"):
        await drive.put("data", to="fresh", if_version=0)
    os.mkfifo("pipe")
    with pytest.raises(InvalidPathError, match="is a FIFO"):
        await drive.put("pipe")  # never opened: opening a FIFO would wait for a writer
    assert not await drive.exists("fresh")
    assert not await drive.exists("pipe")
    assert await _leftovers(redis_url, root, drive_id) == ([], [])


@pytest.mark.parametrize("unnamed", [True, False])
async def test_uploads_with_and_without_a_name(
    env: dict[str, str],
    drive_id: str,
    root: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    unnamed: bool,
) -> None:
    """Every way of writing works where uploads have no name (O_TMPFILE) and where they do
    (NFS, older kernels), and leaves nothing in .tmp."""
    from asyncdrive import _storage

    if unnamed and not _storage._CAN_TMPFILE:
        pytest.skip("this system has no O_TMPFILE")
    monkeypatch.setattr(_storage, "_CAN_TMPFILE", unnamed)
    made: list[int] = []
    new_unnamed_upload = DiskStore._new_unnamed_upload

    def spy(self: DiskStore) -> int:
        made.append(new_unnamed_upload(self))
        return made[-1]

    monkeypatch.setattr(DiskStore, "_new_unnamed_upload", spy)
    async with Drive(drive_id) as drive:
        await _write_every_way(drive, workdir)
    # Every upload without a name where the disk allows, none otherwise (44 uploads; 4
    # where the folder's 40 new files are written in place).
    uploads = 4 if storage.filesystem_type(root) in storage._NEW_NAMES_DURABLE else 44
    assert len(made) == (uploads if unnamed else 0) and all(fd >= 0 for fd in made)
    tmp = root / "drives" / drive_id[6:] / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


async def _write_every_way(drive: Drive, workdir: Path) -> None:
    big = os.urandom(3 * (1 << 20))
    Path("big.bin").write_bytes(big)
    Path("small.bin").write_bytes(b"small")
    (workdir / "folder").mkdir()
    for i in range(40):
        (workdir / "folder" / f"{i}.txt").write_bytes(b"%d" % i)
    await drive.put("small.bin")  # new, without the lock
    await drive.put("small.bin")  # a replacement, under it
    await drive.put("big.bin")  # staged before the lock
    await drive.put("folder")  # in batches, under the lock
    async with drive.open("streamed.bin", "wb") as f:
        await f.write(big)
    assert await drive.read_bytes("small.bin") == b"small"
    assert (await drive.info("small.bin")).version == 2
    assert await drive.read_bytes("big.bin") == big == await drive.read_bytes("streamed.bin")
    assert await drive.read_bytes("folder/39.txt") == b"39"
    assert len(await drive.list("folder")) == 40


async def test_disk_layout_and_metadata(make_drive: MakeDrive, drive_id: str, root: Path) -> None:
    drive = make_drive(drive_id, component_name="w1")
    info = await drive.write_bytes("m/n.bin", b"payload")
    name = drive_id[6:]
    data = root / "drives" / name / "w1" / "m" / "n.bin"
    assert data.read_bytes() == b"payload"
    # The metadata travels with the bytes, in an extended attribute: no file beside them.
    meta = _parse_meta_attribute(os.getxattr(data, META_XATTR))
    assert meta == {
        "size": 7,
        "mtime": info.mtime,
        "checksum": info.checksum,
        "version": info.version,
    }
    assert meta == DiskStore(root, name).read_meta("w1", "m/n.bin")
    assert sorted(p.name for p in data.parent.iterdir()) == ["n.bin"]
    assert list((root / "drives" / name / ".tmp").iterdir()) == []
    await drive.delete("m/n.bin")
    assert not (root / "drives" / name / "w1" / "m").exists()


async def test_index_keys_share_one_hash_tag(
    make_drive: MakeDrive, drive_id: str, redis_url: str
) -> None:
    drive = make_drive(drive_id)
    await drive.write_bytes("a/b.txt", b"x")
    name = drive_id[6:]
    async with raw_redis(redis_url) as client:
        keys = [k async for k in client.scan_iter(match=f"*{name}*")]
        events: Any = await client.xrange(f"asyncdrive:{{{name}}}:events")
    assert keys
    assert all(k.startswith(f"asyncdrive:{{{name}}}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1  # one Redis Cluster slot
    assert [e[1]["change"] for e in events] == ["added"]


async def test_events_one_per_successful_change(
    make_drive: MakeDrive, drive_id: str, redis_url: str
) -> None:
    w1 = make_drive(drive_id, component_name="w1")
    w2 = make_drive(drive_id, component_name="w2")
    await w1.write_bytes("a", b"1")
    await w1.write_bytes("a", b"2")
    with pytest.raises(DriveFileExistsError):
        await w2.write_bytes("a", b"3")
    with pytest.raises(DriveFileNotFoundError):
        await w2.delete("a")
    await w1.delete("a")
    async with raw_redis(redis_url) as client:
        events: Any = await client.xrange(f"asyncdrive:{{{drive_id[6:]}}}:events")
    assert [(e[1]["change"], e[1]["path"], e[1]["version"]) for e in events] == [
        ("added", "a", "1"),
        ("modified", "a", "2"),
        ("deleted", "a", "2"),
    ]


async def test_drive_identity(make_drive: MakeDrive, drive_id: str, root: Path) -> None:
    drive = make_drive(drive_id)
    assert drive.id == drive_id
    assert drive.name == drive_id[6:]
    assert drive.component_name == "default"
    assert drive.root == root.resolve()
    assert drive_id in repr(drive)


async def test_errors_are_drive_errors(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    failures: list[Any] = []
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: drive.get("missing"),
        lambda: drive.delete("missing"),
        lambda: drive.info("missing"),
        lambda: drive.read_bytes("missing"),
        lambda: drive.put("missing"),
        lambda: drive.list("/abs"),
    ]
    for call in calls:
        with pytest.raises(DriveError) as caught:
            await call()
        failures.append(caught.value)
    assert all(drive_id[6:] in str(exc) for exc in failures)


def test_public_names() -> None:
    assert sorted(asyncdrive.__all__) == asyncdrive.__all__
    for name in asyncdrive.__all__:
        assert hasattr(asyncdrive, name)
    assert "DriveFileSystem" in dir(asyncdrive)  # imported when asked for: fsspec is optional
    assert asyncdrive.DriveFileSystem.protocol == "lit"  # (typed: mypy checks this file)
    for method in (
        Drive.write_bytes,
        asyncdrive.SyncDrive.write_bytes,
        asyncdrive.DriveWriter.write,
    ):
        assert "data" in typing.get_type_hints(method)  # annotations resolve at run time


def test_errors_pickle_with_what_they_carry() -> None:
    """As a process pool's worker sends them back to the parent (else: BrokenProcessPool)."""
    errors: list[asyncdrive.DriveError] = [
        VersionConflictError("Drive 'd': at version 3", 3),
        AmbiguousPathError("Drive 'd': owned by a and b", ["a", "b"]),
        asyncdrive.DrivePermissionError("Drive 'd': denied", OSError(errno.EACCES, "no", "/x")),
        asyncdrive.DriveStorageError("Drive 'd': full", OSError(errno.ENOSPC, "full", "/y")),
        DriveFileNotFoundError("Drive 'd': no file"),
    ]
    for error in errors:
        for back in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
            assert type(back) is type(error) and str(back) == str(error)
            assert vars(back) == vars(error)
    conflict, ambiguous, denied, full, _ = (pickle.loads(pickle.dumps(e)) for e in errors)
    assert conflict.current_version == 3 and ambiguous.owners == ["a", "b"]
    assert (denied.errno, denied.filename) == (errno.EACCES, "/x")
    assert (full.errno, full.strerror) == (errno.ENOSPC, "full")


async def test_errors_carry_the_errno_of_their_builtin(
    make_drive: MakeDrive, drive_id: str, tmp_path: Path
) -> None:
    """As the operating system's would: code checking ``exc.errno == errno.ENOENT`` works."""
    drive = make_drive(drive_id)
    await drive.write_bytes("a.txt", b"1")
    await drive.write_bytes("folder/b.txt", b"2")
    calls: list[tuple[Awaitable[object], type[OSError], int]] = [
        (drive.get("missing.txt", to=tmp_path / "x"), FileNotFoundError, errno.ENOENT),
        (drive.write_bytes("a.txt", b"3", exist_ok=False), FileExistsError, errno.EEXIST),
        (drive.write_bytes("a.txt/c", b"3"), NotADirectoryError, errno.ENOTDIR),
        (drive.read_bytes("folder"), IsADirectoryError, errno.EISDIR),
    ]
    for call, kind, number in calls:
        with pytest.raises(kind) as raised:
            await call
        assert isinstance(raised.value, asyncdrive.DriveError)
        assert (raised.value.errno, raised.value.strerror) == (number, os.strerror(number))
        back = pickle.loads(pickle.dumps(raised.value))
        assert (back.errno, str(back)) == (number, str(raised.value))
        assert "Drive " in str(raised.value) and str(raised.value) != os.strerror(number)


def test_a_drive_outlives_its_event_loops(env: dict[str, str], drive_id: str) -> None:
    """Each ``asyncio.run()`` is a new event loop: a drive's connections close with the loop
    they were opened in (at its end), and it connects afresh in the next one."""

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    drive = Drive(drive_id)
    files = open_files()
    with warnings_as_errors() as raised:
        asyncio.run(drive.write_bytes("a.txt", b"1"))
        assert open_files() == files  # its sockets closed with the loop
        assert asyncio.run(drive.read_bytes("a.txt")) == b"1"  # (was: "another event loop")
        with asyncio.Runner() as runner:
            assert runner.run(drive.exists("a.txt"))
            assert open_files() > files
        assert open_files() == files
        # Files opened in one loop are written, read and closed in the next.
        writer = asyncio.run(drive.open("b.bin", "wb").open())
        asyncio.run(writer.write(b"2"))
        asyncio.run(writer.aclose())  # (was: "the drive's connection was closed")
        assert writer.info is not None and writer.info.size == 1
        reader = asyncio.run(drive.open("b.bin").open())
        assert asyncio.run(reader.read()) == b"2"
        asyncio.run(reader.aclose())
        asyncio.run(drive.aclose())  # (was: "Event loop is closed", and its sockets leaked)
        gc.collect()
    assert raised == [] and repr(drive).endswith("[closed]")
    with pytest.raises(asyncdrive.DriveClosedError):
        asyncio.run(drive.exists("a.txt"))

    async def enter() -> None:
        async with drive:  # (a closed drive is not entered: it raised at each call inside)
            pass

    with pytest.raises(asyncdrive.DriveClosedError, match="is closed"):
        asyncio.run(enter())


@pytest.mark.parametrize("earlier_loop", [True, False])
def test_a_drive_used_by_two_running_loops_at_once_refuses_the_second(
    env: dict[str, str], drive_id: str, earlier_loop: bool
) -> None:
    """Each thread in its own asyncio.run(): the drive belongs to the loop that connects
    it first, and the other loop's calls raise (its connect waited for ever on a lock of an
    earlier loop, which the first loop's release could not wake)."""
    drive = Drive(drive_id)
    if earlier_loop:  # connected in a loop that has ended: either may take it now
        asyncio.run(drive.write_bytes("before", b"x"))
    both = threading.Barrier(2)
    outcomes: dict[str, list[str]] = {}

    def run(name: str) -> None:
        async def calls() -> list[str]:
            both.wait()
            done = []
            for i in range(20):
                try:
                    await drive.write_bytes(f"{name}{i}", b"x")
                    done.append("ok")
                except RuntimeError as exc:
                    assert "used in another event loop" in str(exc)
                    done.append("refused")
            return done

        outcomes[name] = asyncio.run(calls())

    threads = [threading.Thread(target=run, args=(name,)) for name in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "hung"
    assert sorted(",".join(sorted(set(done))) for done in outcomes.values()) == ["ok", "refused"]
    asyncio.run(drive.aclose())


def test_aclose_in_another_loop_than_its_running_one_changes_nothing(
    env: dict[str, str], drive_id: str
) -> None:
    """It marked the drive closed, then failed on the other loop's connection with
    asyncio's "attached to a different loop"; the owner's watch ended only ~10 s later."""
    drive = Drive(drive_id)
    connected, stop = threading.Event(), threading.Event()
    owner: list[asyncio.AbstractEventLoop] = []
    ended: list[str] = []

    async def own() -> None:
        owner.append(asyncio.get_running_loop())
        await drive.write_bytes("a.txt", b"x")
        connected.set()
        try:
            async for _ in drive.watch():
                pass
        except asyncdrive.DriveClosedError:
            ended.append("closed")
        while not stop.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=asyncio.run, args=(own(),))
    thread.start()
    try:
        assert connected.wait(30)
        with pytest.raises(RuntimeError, match=r"close it in that loop .* Nothing was closed"):
            asyncio.run(drive.aclose())
        assert not drive._closed and ended == []
        asyncio.run_coroutine_threadsafe(drive.aclose(), owner[0]).result(30)
        assert drive._closed
    finally:
        stop.set()
        thread.join(30)
    assert ended == ["closed"]


async def test_a_closed_drives_connections_never_open_again(
    drive_id: str, env: dict[str, str]
) -> None:
    """A command sent through a closed drive's client, as a watch's next read just after
    the close, reconnected: on a Cluster the socket stayed open after the drive closed (its
    loop closed later), collected with a ResourceWarning (a CI run failed on it)."""
    drive = Drive(drive_id)
    await drive.write_bytes("a.txt", b"x")
    conn = drive._conn
    assert conn is not None and conn.connected.connections
    await drive.aclose()
    # (A Cluster's client says no node is reachable: the watch takes both as a closed drive.)
    refused = (redis.exceptions.ConnectionError, redis.exceptions.RedisClusterException)
    with pytest.raises(refused, match="connection was closed"):
        await conn.connected.client.ping()
    with pytest.raises(refused, match="connection was closed"):
        await conn.index.read_events("0-0", 10, 10)  # (a watch's read: a pipeline on a Cluster)
    gc.collect()
    kind = tuple(conn.connected.connections)
    still_open = [c for c in gc.get_objects() if isinstance(c, kind) and c.is_connected]
    assert still_open == []


async def test_a_close_while_the_first_call_connects_leaves_nothing_open(
    drive_id: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose() as the first call was measuring the server's clock (its connection's first
    command) cancelled it there: the client it had made was left open (found by review)."""
    measuring, measured = asyncio.Event(), asyncio.Event()
    clients: list[Any] = []
    clock_of = drive_module._clock_of

    async def held(client: Any, *args: Any, **kwargs: Any) -> Any:
        clients.append(client)
        measuring.set()
        await measured.wait()  # (cancelled here by the close)
        return await clock_of(client, *args, **kwargs)

    monkeypatch.setattr(drive_module, "_clock_of", held)
    drive = Drive(drive_id)
    call = asyncio.create_task(drive.list("."))
    await asyncio.wait_for(measuring.wait(), 30)
    await drive.aclose()
    with pytest.raises(asyncdrive.DriveClosedError):
        await call
    gc.collect()
    kind = type(clients[0]).__name__
    connections = [c for c in gc.get_objects() if type(c).__name__.startswith("Lean")]
    assert not [c for c in connections if getattr(c, "is_connected", False)], kind


def test_a_drive_outside_asyncio_says_so(env: dict[str, str], drive_id: str) -> None:
    """Run by another framework (trio: here, by hand), not a server fault or a TypeError."""
    drive = Drive(drive_id)
    call = drive.exists("a.txt")
    with pytest.raises(RuntimeError, match="runs in an asyncio event loop") as refused:
        call.send(None)
    assert not isinstance(refused.value, ConnectionError) and "trio" in str(refused.value)
    assert drive._conn is None and repr(drive).endswith(")")  # nothing to close


LOOP_CLOSED_BY_HAND = """
import asyncio
from asyncdrive import Drive

drive = Drive("{drive_id}")
loop = asyncio.new_event_loop()
loop.run_until_complete(drive.write_bytes("a.txt", b"1"))
loop.close()  # without loop.shutdown_asyncgens(), which closes the drive's connections
try:
    asyncio.run(drive.exists("a.txt"))
except RuntimeError as exc:
    print(exc)
asyncio.run(drive.aclose())  # (closes without error: nothing left it can close)
print("closed")
"""


def test_a_loop_closed_by_hand_is_named_as_such(
    env: dict[str, str], workdir: Path, drive_id: str
) -> None:
    """Not "used in another event loop (each asyncio.run() makes a new loop)": says how."""
    done = run_python(LOOP_CLOSED_BY_HAND.format(drive_id=drive_id), cwd=workdir, env=env)
    said = done.stdout.strip()
    assert "closed without shutting down its async generators" in said, done.stdout
    assert "await drive.aclose() before closing that loop" in said
    assert said.endswith("create a new Drive.\nclosed"), said


async def test_conditional_writes(make_drive: MakeDrive, drive_id: str) -> None:
    drive = make_drive(drive_id)
    first = await drive.write_bytes("a", b"1", exist_ok=False)
    with pytest.raises(DriveFileExistsError, match="exist_ok=False") as exists:
        await drive.write_bytes("a", b"2", exist_ok=False)
    assert "if_version=1" in str(exists.value)
    second = await drive.write_bytes("a", b"2", if_version=first.version)
    with pytest.raises(VersionConflictError, match="version 2") as conflict:
        await drive.write_bytes("a", b"3", if_version=first.version)
    assert conflict.value.current_version == second.version
    assert isinstance(conflict.value, FileExistsError)
    assert await drive.read_bytes("a") == b"2"
    with pytest.raises(DriveFileExistsError):
        await drive.write_bytes("a", b"4", if_version=0)
    write("local.txt", b"local")
    with pytest.raises(VersionConflictError):
        await drive.write_bytes("a", b"5", if_version=7)
    await drive.put("local.txt", if_version=0)
    await drive.delete("a")
    with pytest.raises(DriveFileNotFoundError, match=r"has no copy of it \(never put, or deleted"):
        await drive.write_bytes("a", b"6", if_version=second.version)
    with pytest.raises(DriveFileNotFoundError, match="put without if_version= to create it"):
        await drive.write_bytes("never", b"6", if_version=1)
    with pytest.raises(ValueError, match="contradict"):
        await drive.write_bytes("a", b"7", if_version=3, exist_ok=False)
    with pytest.raises(ValueError, match="version number"):
        await drive.write_bytes("a", b"7", if_version=-1)
    assert (await drive.info("local.txt")).version == 1
    # Refused conditional writes leave no event and no bytes behind.
    assert await drive.list(".") == ["local.txt"]


async def test_conditional_writes_race(make_drive: MakeDrive, drive_id: str) -> None:
    # Ten writers all read version 1 and try to replace it: exactly one may win.
    drives = [make_drive(drive_id) for _ in range(10)]
    base = await drives[0].write_bytes("counter", b"0")
    outcomes: list[str] = []

    async def attempt(drive: Any, n: int) -> None:
        try:
            await drive.write_bytes("counter", str(n).encode(), if_version=base.version)
            outcomes.append("won")
        except VersionConflictError:
            outcomes.append("lost")

    async with anyio.create_task_group() as tg:
        for n, drive in enumerate(drives):
            tg.start_soon(attempt, drive, n)
    assert sorted(outcomes) == ["lost"] * 9 + ["won"]
    assert (await drives[0].info("counter")).version == base.version + 1


async def test_put_and_get_to_another_path(
    make_drive: MakeDrive, drive_id: str, workdir: Path, tmp_path: Path
) -> None:
    drive = make_drive(drive_id)
    outside = tmp_path / "elsewhere" / "model.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"weights")
    await drive.put(outside, to="ckpt/7.pt")
    write("local/dir/a.txt", b"a")
    await drive.put("local", to="data")
    assert await drive.list(".", recursive=True) == ["ckpt/7.pt", "data/dir/a.txt"]
    await drive.get("ckpt/7.pt", to=tmp_path / "out" / "m.bin")
    assert (tmp_path / "out" / "m.bin").read_bytes() == b"weights"
    await drive.get("data", to=tmp_path / "copy")
    assert (tmp_path / "copy" / "dir" / "a.txt").read_bytes() == b"a"
    assert not Path("ckpt").exists() and not Path("data").exists()


async def test_disk_calls_use_a_bounded_number_of_threads(
    drive_id: str, root: Path, redis_url: str
) -> None:
    """Many concurrent operations share a few worker threads, not one thread each."""
    async with Drive(drive_id, root=root, redis_url=redis_url) as drive:
        await drive.write_bytes("warm.txt", b"w")
        inside: set[int] = set()
        busiest = 0
        lock = threading.Lock()
        full = threading.Event()  # DISK_THREADS installs are running at once

        def note_thread() -> None:
            nonlocal busiest
            with lock:
                inside.add(threading.get_ident())
                busiest = max(busiest, len(inside))
                if len(inside) == DISK_THREADS:
                    full.set()

        store = drive._conn.store  # type: ignore[union-attr]

        def counted(original: Callable[..., Any]) -> Callable[..., Any]:
            def install(*args: Any, **kwargs: Any) -> Any:
                note_thread()
                try:
                    full.wait(timeout=30)  # the first ones wait until as many run as may
                    return original(*args, **kwargs)
                finally:
                    with lock:
                        inside.discard(threading.get_ident())

            return install

        # Replacements, each installed under its lock in a call of its own (new files of
        # concurrent puts share calls instead: see test_concurrent_new_files_share_calls...).
        for i in range(4 * DISK_THREADS):
            await drive.write_bytes(f"many/{i}.txt", b"x")
        store.install = counted(store.install)  # type: ignore[method-assign]
        async with anyio.create_task_group() as group:
            for i in range(4 * DISK_THREADS):
                group.start_soon(drive.write_bytes, f"many/{i}.txt", b"y")
        assert busiest == DISK_THREADS
        assert [await drive.read_bytes(f"many/{i}.txt") for i in range(4 * DISK_THREADS)] == [
            b"y"
        ] * (4 * DISK_THREADS)


MEETING_TIMEOUT = 30.0


def spy_on_installs(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> None:
    """Call ``before()`` in every install of a file into ``dataset/`` (all new there: each
    goes through `_install_new`, written in place or linked in), then the real install."""
    original = _drive._install_new

    def install(store: DiskStore, component: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if path.startswith("dataset/"):  # not the try of `put` as one small file
            before()
        return original(store, component, path, *args, **kwargs)

    monkeypatch.setattr(_drive, "_install_new", install)


async def test_a_folder_put_stores_its_files_side_by_side(
    make_drive: MakeDrive, drive_id: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first installs wait for one another: one batch at a time could never pass this."""
    monkeypatch.setattr(asyncdrive._drive, "_PUT_BATCH_FILES", 3)  # 8 batches of 24 files
    meeting = threading.Barrier(FOLDER_CONCURRENCY, timeout=MEETING_TIMEOUT)
    busiest = started = inside = 0
    lock = threading.Lock()

    def before() -> None:
        nonlocal busiest, started, inside
        with lock:
            started += 1
            first = started <= FOLDER_CONCURRENCY
            inside += 1
            busiest = max(busiest, inside)
        try:
            if first:  # the first ones wait until all of them run
                with contextlib.suppress(threading.BrokenBarrierError):
                    meeting.wait()
        finally:
            with lock:
                inside -= 1

    spy_on_installs(monkeypatch, before)
    folder = workdir / "dataset"
    folder.mkdir()
    for i in range(3 * FOLDER_CONCURRENCY):
        (folder / f"{i:02d}.bin").write_bytes(os.urandom(100) + bytes([i]))
    drive = make_drive(drive_id)
    await drive.put("dataset")
    assert not meeting.broken  # FOLDER_CONCURRENCY installs (one per batch) ran at once
    assert busiest == FOLDER_CONCURRENCY
    names = sorted(p.name for p in folder.iterdir())
    assert await drive.list("dataset") == [f"dataset/{n}" for n in names]
    for name in names:
        assert await drive.read_bytes(f"dataset/{name}") == (folder / name).read_bytes()


async def test_a_failing_file_stops_a_folder_put_with_its_own_error(
    make_drive: MakeDrive, drive_id: str, workdir: Path, root: Path
) -> None:
    """The error is the failing file's (no exception group); what was stored is whole."""
    drive = make_drive(drive_id)
    await drive.write_bytes("dataset/sub", b"a file where the folder's subfolder goes")
    folder = workdir / "dataset"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.bin").write_bytes(b"x")
    for i in range(40):
        (folder / f"{i:02d}.bin").write_bytes(bytes([i]) * 10)
    with pytest.raises(DriveNotADirectoryError, match="'dataset/sub' is a file"):
        await drive.put("dataset")
    stored = await drive.list("dataset")
    assert "dataset/sub" in stored
    for path in stored:
        if path != "dataset/sub":
            assert await drive.read_bytes(path) == (workdir / path).read_bytes()
    tmp = root / "drives" / drive_id.removeprefix("lit://") / ".tmp"
    assert list(tmp.iterdir()) == []
    await drive.delete("dataset/sub")
    await drive.put("dataset")  # once the way is clear, the whole folder goes in
    assert len(await drive.list("dataset", recursive=True)) == 41


def local_folder(folder: Path, count: int) -> dict[str, bytes]:
    """Fill ``folder`` with ``count`` small files; return their contents by drive path."""
    folder.mkdir(parents=True)
    contents = {}
    for i in range(count):
        data = f"file {i} of {folder.name}".encode()
        (folder / f"{i:03d}.bin").write_bytes(data)
        contents[f"{folder.name}/{i:03d}.bin"] = data
    return contents


async def test_a_folder_put_in_batches_stores_each_file_or_refuses_it_alone(
    make_drive: MakeDrive,
    drive_id: str,
    workdir: Path,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file refused in a batch (owned by another component; a link where it goes) takes
    only itself down: the rest of its batch is committed, the batches after it never start,
    and the error raised is the first refused file's."""
    monkeypatch.setattr(asyncdrive._drive, "_PUT_BATCH_FILES", 4)  # 25 batches
    owner = make_drive(drive_id, component_name="owner")
    drive = make_drive(drive_id)
    contents = local_folder(workdir / "ds", 100)
    await owner.write_bytes("ds/005.bin", b"the owner's")
    with pytest.raises(DriveFileExistsError, match=r"'ds/005\.bin'.*owned by component 'owner'"):
        await drive.put("ds")
    stored = await drive.list("ds", component_name="default")
    assert "ds/004.bin" in stored and "ds/006.bin" in stored  # the same batch as the refusal
    assert "ds/005.bin" not in stored
    assert len(stored) < 99  # the batches after the refusal's did not start
    for path in stored:
        assert await drive.read_bytes(path, component_name="default") == contents[path]
    assert await owner.read_bytes("ds/005.bin") == b"the owner's"
    drive_dir = root / "drives" / drive_id.removeprefix("lit://")
    assert list((drive_dir / ".tmp").iterdir()) == []

    await owner.delete("ds/005.bin")
    target = drive_dir / "default" / "ds" / "007.bin"
    if await drive.exists("ds/007.bin"):
        await drive.delete("ds/007.bin")
    target.symlink_to(workdir / "elsewhere")  # planted where the file goes
    with pytest.raises(InvalidPathError, match=r"ds/007\.bin"):
        await drive.put("ds")
    assert target.is_symlink() and not (workdir / "elsewhere").exists()
    stored = await drive.list("ds", component_name="default")
    assert "ds/005.bin" in stored and "ds/007.bin" not in stored
    assert await drive.read_bytes("ds/005.bin") == contents["ds/005.bin"]
    assert list((drive_dir / ".tmp").iterdir()) == []


async def test_a_folder_put_waits_for_the_lock_of_a_file_being_put(
    make_drive: MakeDrive, drive_id: str, workdir: Path
) -> None:
    """A file of a batch whose commit lock another writer holds is waited for, then put."""
    drive = make_drive(drive_id)
    contents = local_folder(workdir / "ds", 40)
    async with Drive(drive_id) as other:  # the same component: its writer of ds/010.bin
        await other.write_bytes("ds/010.bin", b"older")
        conn = await other._connection()
        token = await conn.index.lock("default", "ds/010.bin", ttl=30, timeout=5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive.put, "ds")
            await anyio.sleep(0.3)
            assert await drive.read_bytes("ds/010.bin") == b"older"  # waiting for the lock
            await conn.index.unlock("default", "ds/010.bin", token)
    for path, data in contents.items():
        assert await drive.read_bytes(path) == data
    assert (await drive.info("ds/010.bin")).version == 2


async def test_a_folder_put_after_the_server_lost_its_scripts(
    make_drive: MakeDrive, drive_id: str, workdir: Path, redis_url: str
) -> None:
    """A batch's pipelined script calls meet NOSCRIPT (a restarted or flushed server)."""
    drive = make_drive(drive_id)
    await drive.write_bytes("warm.txt", b"w")  # the scripts are loaded, the drive connected
    contents = local_folder(workdir / "ds", 40)
    async with raw_redis(redis_url) as client:
        await client.script_flush()
    await drive.put("ds")
    for path, data in contents.items():
        assert await drive.read_bytes(path) == data


async def test_a_recursive_delete_in_batches_removes_each_file_once(
    make_drive: MakeDrive, drive_id: str, workdir: Path, root: Path, redis_url: str
) -> None:
    """Three batches of files in nested folders, one of them being put meanwhile; another
    component's copies and the paths beside the folder stay."""
    drive = make_drive(drive_id, allow_duplicates=True)
    other = make_drive(drive_id, component_name="other", allow_duplicates=True)
    local_folder(workdir / "ds", 100)
    local_folder(workdir / "ds" / "deep", 50)
    paths = [f"ds/{i:03d}.bin" for i in range(100)] + [f"ds/deep/{i:03d}.bin" for i in range(50)]
    await drive.put("ds")
    await drive.write_bytes("ds-beside.txt", b"beside")
    await other.write_bytes("ds/000.bin", b"the other's")
    name = drive_id.removeprefix("lit://")
    async with raw_redis(redis_url) as client:
        before = await client.xlen(f"asyncdrive:{{{name}}}:events")
    async with Drive(drive_id, allow_duplicates=True) as writer:  # the same component
        conn = await writer._connection()
        token = await conn.index.lock("default", "ds/deep/020.bin", ttl=30, timeout=5)

        async def delete_folder() -> None:
            await drive.delete("ds", recursive=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete_folder)
            await anyio.sleep(0.3)
            assert await drive.exists("ds/deep/020.bin")  # waiting for the lock
            assert not await drive.exists("ds/deep/019.bin")
            await conn.index.unlock("default", "ds/deep/020.bin", token)
    assert await drive.list("ds", component_name="default") == []
    assert await drive.read_bytes("ds-beside.txt") == b"beside"
    assert await drive.read_bytes("ds/000.bin", component_name="other") == b"the other's"
    async with raw_redis(redis_url) as client:
        events: Any = await client.xrange(f"asyncdrive:{{{name}}}:events", "-", "+")
    deleted = [fields["path"] for _, fields in events[before:] if fields["change"] == "deleted"]
    assert sorted(deleted) == sorted(paths)  # one event per file
    component_dir = root / "drives" / name / "default"
    assert not (component_dir / "ds").exists()  # its folders pruned
    assert (component_dir / "ds-beside.txt").is_file()


async def test_a_folder_get_copies_in_batches_and_stops_at_the_first_refusal(
    make_drive: MakeDrive, drive_id: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker-thread call copies a batch, bounded by files and by bytes, in order."""
    drive = make_drive(drive_id)
    folder = workdir / "many"
    folder.mkdir()
    for i in range(150):
        (folder / f"{i:03d}.bin").write_bytes(i.to_bytes(2, "big") * 50)  # 100 bytes each
    await drive.put("many")
    batches: list[list[str]] = []
    copy_out = Drive._copy_out

    async def recording(
        self: Drive, conn: Any, copies: Any, overwrite: bool, *args: Any, **kwargs: Any
    ) -> list[FileInfo]:
        batches.append([info.path for info, _ in copies])
        return await copy_out(self, conn, copies, overwrite, *args, **kwargs)

    monkeypatch.setattr(Drive, "_copy_out", recording)
    out = workdir / "out"
    (out / "many").mkdir(parents=True)
    (out / "many" / "100.bin").write_bytes(b"another file, in the way")
    with pytest.raises(DriveFileExistsError, match=r"'many/100\.bin'"):
        await drive.get("many", to=out / "many")
    assert [len(batch) for batch in batches] == [64, 64]  # the third never started
    assert [p for batch in batches for p in batch] == [f"many/{i:03d}.bin" for i in range(128)]
    for i in range(100):  # copied before the refusal, whole
        assert (out / "many" / f"{i:03d}.bin").read_bytes() == i.to_bytes(2, "big") * 50
    assert (out / "many" / "100.bin").read_bytes() == b"another file, in the way"
    assert not (out / "many" / "101.bin").exists()  # the rest of its batch was not copied

    batches.clear()
    monkeypatch.setattr(asyncdrive._drive, "_COPY_BATCH_BYTES", 250)  # 3 files reach it
    await drive.get("many", to=out / "again")
    assert [len(batch) for batch in batches] == [3] * 50
    assert sorted(p.name for p in (out / "again").iterdir()) == sorted(
        p.name for p in folder.iterdir()
    )

    # The owners are looked up a chunk at a time (memory follows a chunk, not the folder),
    # and a file two other components own, none named, is refused before any is copied.
    looked_up: list[int] = []
    owners_many = asyncdrive._index.Index.owners_many
    between: list[Callable[[], Awaitable[object]]] = []  # run as the second look-up starts

    async def counted(self: Any, paths: Any) -> Any:
        looked_up.append(len(paths))
        if len(looked_up) == 5:
            for change in between:
                await change()
        return await owners_many(self, paths)

    monkeypatch.setattr(asyncdrive._index.Index, "owners_many", counted)
    monkeypatch.setattr(asyncdrive._drive, "_LOOKUP_CHUNK", 40)
    await drive.get("many", to=out / "chunked")
    assert looked_up == [40, 40, 40, 30] * 2  # (twice: what is refused first, then copies)
    assert len(list((out / "chunked").iterdir())) == 150
    # Changed between the two look-ups: copied as first looked up, or skipped if deleted
    # (not refused midway, its copies half made: a copy another component made since, of a
    # file the first owned alone, made the path ambiguous).
    w1, w2 = (
        make_drive(drive_id, component_name=name, allow_duplicates=True) for name in ("w1", "w2")
    )
    await w1.write_bytes("many/ww.bin", b"w1's")  # (151 files: chunks of 40, 40, 40, 31)
    between[:] = [
        lambda: w2.write_bytes("many/ww.bin", b"w2's"),
        lambda: drive.delete("many/149.bin"),
    ]
    looked_up.clear()
    await drive.get("many", to=out / "changed")
    assert len(looked_up) == 8
    assert (out / "changed" / "ww.bin").read_bytes() == b"w1's"
    assert not (out / "changed" / "149.bin").exists()
    assert len(list((out / "changed").iterdir())) == 150
    between.clear()
    with pytest.raises(AmbiguousPathError, match=r"'many/ww\.bin'"):  # (now w1's and w2's)
        await drive.get("many", to=out / "refused")
    assert not (out / "refused").exists()  # nothing copied


# -- reads racing a delete and a new put -------------------------------------------------------


@pytest.mark.parametrize("op", ["read_bytes", "get", "open", "get folder"])
@pytest.mark.parametrize("meanwhile", ["written again in place", "put again", "replaced"])
async def test_a_read_never_returns_bytes_no_commit_made(
    drive_id: str,
    root: Path,
    redis_url: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    op: str,
    meanwhile: str,
) -> None:
    """Between a read's look-up and its open of the bytes, the path is deleted and written
    again (a new small file written at its path, marked unfinished; a large one renamed
    into place before its commit), or replaced by a committed newer version: the read
    finds the path gone, or reads the newer version, never bytes not committed."""
    if meanwhile == "written again in place" and storage._openat2 is None:
        pytest.skip("this kernel or sandbox has no openat2: no new file is written in place")
    async with (
        Drive(drive_id, root=root, redis_url=redis_url) as reader,
        Drive(drive_id, root=root, redis_url=redis_url) as writer,
    ):
        await writer.write_bytes("d/f.bin", b"version 1")
        store = writer._conn.store  # type: ignore[union-attr]
        left_open: list[int] = []

        async def interfere() -> None:
            if meanwhile == "replaced":  # committed: its backup of version 1 dropped
                await writer.write_bytes("d/f.bin", b"version 2, committed")
                return
            await writer.delete("d/f.bin")
            if meanwhile == "written again in place":  # as a put of a new small file would
                store.new_names_durable = True  # (not on a Cluster: a put takes the lock)
                new = store.open_new("default", "d/f.bin")
                assert new is not None, "this disk writes no new file in place"
                os.write(new.fd, b"half-done")  # as long as version 1
                left_open.append(new.fd)
            else:
                staged = store.stage_bytes(b"version 2, not committed")
                store.install(staged, "default", "d/f.bin", {"version": 2})

        armed = True
        owners = _index.Index.owners

        async def looked_up_then_interfere(self: _index.Index, path: str) -> Any:
            nonlocal armed
            found = await owners(self, path)
            if armed and path == "d/f.bin":
                armed = False
                await interfere()
            return found

        monkeypatch.setattr(_index.Index, "owners", looked_up_then_interfere)
        if op == "get folder":
            owners_many = _index.Index.owners_many

            async def listed_then_interfere(self: _index.Index, paths: list[str]) -> Any:
                nonlocal armed
                found = await owners_many(self, paths)
                if armed:
                    armed = False
                    await interfere()
                return found

            monkeypatch.setattr(_index.Index, "owners_many", listed_then_interfere)
        try:
            if op == "read_bytes":
                outcome: Any = reader.read_bytes("d/f.bin")
            elif op == "open":

                async def read_opened() -> bytes:
                    async with reader.open("d/f.bin") as f:
                        return await f.read()

                outcome = read_opened()
            elif op == "get":
                outcome = reader.get("d/f.bin", to="out/f.bin")
            else:
                outcome = reader.get("d", to="out")
            if meanwhile == "replaced":
                got = await outcome
                if op.startswith("get"):
                    got = Path("out/f.bin").read_bytes()
                assert got == b"version 2, committed"
            elif op == "get folder":  # deleted once listed: left out
                await outcome
                assert not Path("out/f.bin").exists()
            else:
                with pytest.raises(DriveFileNotFoundError, match=r"no file 'd/f\.bin'"):
                    await outcome
                assert not Path("out/f.bin").exists()
            assert not armed
        finally:
            for fd in left_open:
                os.close(fd)


async def test_a_read_of_a_file_whose_bytes_are_gone_says_so(
    drive_id: str, root: Path, redis_url: str, workdir: Path
) -> None:
    async with Drive(drive_id, root=root, redis_url=redis_url) as drive:
        await drive.write_bytes("d/f.bin", b"version 1")
        (root / "drives" / drive.name / "default" / "d" / "f.bin").unlink()  # by hand
        for read in (drive.read_bytes, drive.get, drive.open):
            with pytest.raises(DriveFileNotFoundError) as missing:
                await read("d/f.bin")
            assert re.search(
                r"the index has 'd/f\.bin' \(version 1 of component 'default'\), but its "
                r"bytes are not at '.*/default/d/f\.bin'\. Check that this machine's root",
                str(missing.value),
            ), missing.value
            assert "gc() drops its entry" in str(missing.value)
        assert not Path("d").exists()
        # A file where a folder of its path was (deleted, and a file put there meanwhile,
        # in a race; here by hand): gone as well, not the disk failing (ENOTDIR).
        await drive.write_bytes("e/g/h.bin", b"version 1")
        folder = root / "drives" / drive.name / "default" / "e" / "g"
        (folder / "h.bin").unlink()
        folder.rmdir()
        folder.write_bytes(b"a file now")
        for read in (drive.read_bytes, drive.get, drive.open):
            with pytest.raises(DriveFileNotFoundError, match=r"bytes are not at '.*/e/g/h\.bin'"):
                await read("e/g/h.bin")


async def test_a_read_gives_up_on_bytes_the_index_never_catches_up_with(
    drive_id: str, root: Path, redis_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes of another version at the path, and none of the index's (a writer died after
    renaming its file in, its backup gone): a few looks, then DriveTimeoutError saying so.
    A path replaced on every look: reads go on while writers make progress, then give up."""
    async with Drive(drive_id, root=root, redis_url=redis_url) as drive:
        await drive.write_bytes("stuck.bin", b"version 1")
        store = drive._conn.store  # type: ignore[union-attr]
        backup = store.install(store.stage_bytes(b"never committed"), "default", "stuck.bin",
                               {"version": 2})  # fmt: skip
        assert backup is not None
        store.drop_backup(backup)
        for read in (drive.read_bytes, drive.get, drive.open):
            with pytest.raises(DriveTimeoutError, match=r"however often looked up.*gc\(\)"):
                await read("stuck.bin")
        assert not Path("stuck.bin").exists()

        await drive.write_bytes("busy.bin", b"version 1")
        monkeypatch.setattr(_drive, "_REPLACED_FOR", 0.3)
        owners = _index.Index.owners
        replacing = True

        async def replaced_after_each_look(self: _index.Index, path: str) -> Any:
            found = await owners(self, path)
            if replacing and path == "busy.bin":
                await drive.write_bytes("busy.bin", os.urandom(10))
            return found

        monkeypatch.setattr(_index.Index, "owners", replaced_after_each_look)
        for read in (drive.read_bytes, drive.get, drive.open):
            with pytest.raises(DriveTimeoutError, match="replaced faster than it could be read"):
                await read("busy.bin")
        replacing = False
        assert len(await drive.read_bytes("busy.bin")) == 10
